//! Lease-based leader election against the in-process fake API server, with short timings
//! (lease 1 s, renew deadline 600 ms, retry 100 ms): one leader among candidates, failover
//! when it dies or leaves, 409 races, and stepping down when the API server is gone.

use std::time::{Duration, Instant};

use controlplane::sources::kubernetes::leader::{LeaderConfig, LeaderElector};
use k8s_openapi::api::coordination::v1::Lease;
use kubefake::FakeApiServer;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

const LEASE: Duration = Duration::from_secs(1);
const RENEW_DEADLINE: Duration = Duration::from_millis(600);
const RETRY: Duration = Duration::from_millis(100);
/// Bound of every wait in these tests.
const WAIT: Duration = Duration::from_secs(10);

struct Candidate {
    id: String,
    leading: watch::Receiver<bool>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl Candidate {
    fn start(fake: &FakeApiServer, lease: &str, id: &str) -> Self {
        let cfg = LeaderConfig {
            lease_duration: LEASE,
            renew_deadline: RENEW_DEADLINE,
            retry_period: RETRY,
            ..LeaderConfig::new("kube-system", lease, id)
        };
        assert_eq!(cfg.validate(), Ok(()));
        let elector = LeaderElector::new(fake.client(), cfg);
        let leading = elector.subscribe();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(elector.run(async move {
            let _ = stopped.await;
        }));
        Self {
            id: id.to_owned(),
            leading,
            stop: Some(stop),
            task,
        }
    }

    fn is_leader(&self) -> bool {
        !self.task.is_finished() && *self.leading.borrow()
    }

    /// Graceful stop: the elector gives the Lease up.
    async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        tokio::time::timeout(WAIT, &mut self.task)
            .await
            .expect("the elector stops in time")
            .expect("the elector task");
    }
}

fn leaders(cands: &[Candidate]) -> Vec<String> {
    cands
        .iter()
        .filter(|c| c.is_leader())
        .map(|c| c.id.clone())
        .collect()
}

/// Waits until `cond` holds on the candidates; returns how long it took.
async fn until(what: &str, cands: &[Candidate], cond: impl Fn(&[Candidate]) -> bool) -> Duration {
    let start = Instant::now();
    while !cond(cands) {
        assert!(
            start.elapsed() < WAIT,
            "timed out waiting for {what}; leaders: {:?}",
            leaders(cands)
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    start.elapsed()
}

fn holder(fake: &FakeApiServer, lease: &str) -> Option<String> {
    fake.get::<Lease>("kube-system", lease)
        .and_then(|l| l.spec)
        .and_then(|s| s.holder_identity)
}

/// Samples for `period`: never more than one leader.
async fn never_two_leaders(cands: &[Candidate], period: Duration) {
    let start = Instant::now();
    while start.elapsed() < period {
        let l = leaders(cands);
        assert!(l.len() <= 1, "two leaders at once: {l:?}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_candidates_one_leader_and_it_keeps_the_lease() {
    let fake = FakeApiServer::start();
    let cands = vec![
        Candidate::start(&fake, "lb", "a"),
        Candidate::start(&fake, "lb", "b"),
    ];
    until("a leader", &cands, |c| leaders(c).len() == 1).await;
    let first = leaders(&cands);
    // Three lease durations: the leader renews, the other never takes over.
    never_two_leaders(&cands, 3 * LEASE).await;
    assert_eq!(
        leaders(&cands),
        first,
        "leadership stays put while the leader renews"
    );
    assert_eq!(holder(&fake, "lb"), first.first().cloned());
    for c in cands {
        c.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_leader_is_replaced_within_lease_duration_and_retry() {
    let fake = FakeApiServer::start();
    let mut cands = vec![
        Candidate::start(&fake, "lb", "a"),
        Candidate::start(&fake, "lb", "b"),
    ];
    until("a leader", &cands, |c| leaders(c).len() == 1).await;
    let dead = cands
        .iter()
        .position(Candidate::is_leader)
        .expect("a leader");
    // A crash: no release, the Lease must expire.
    let crashed = cands.remove(dead);
    crashed.task.abort();
    let _ = crashed.task.await;
    let took = until("the other to take over", &cands, |c| leaders(c).len() == 1).await;
    // Expiry is counted from the last renewal seen (before the crash), then one retry (with
    // jitter), two requests and scheduling.
    assert!(
        took <= LEASE + 2 * RETRY + Duration::from_millis(500),
        "takeover took {took:?}"
    );
    assert_eq!(holder(&fake, "lb").as_deref(), Some(cands[0].id.as_str()));
    let transitions = fake
        .get::<Lease>("kube-system", "lb")
        .and_then(|l| l.spec)
        .and_then(|s| s.lease_transitions);
    assert_eq!(transitions, Some(1));
    for c in cands {
        c.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_that_leaves_releases_the_lease() {
    let fake = FakeApiServer::start();
    let mut cands = vec![
        Candidate::start(&fake, "lb", "a"),
        Candidate::start(&fake, "lb", "b"),
    ];
    until("a leader", &cands, |c| leaders(c).len() == 1).await;
    let leaving = cands
        .iter()
        .position(Candidate::is_leader)
        .expect("a leader");
    let left = cands.remove(leaving);
    let mut leading = left.leading.clone();
    left.shutdown().await;
    assert!(
        !*leading.borrow_and_update(),
        "a stopped elector does not lead"
    );
    let took = until("the other to take over", &cands, |c| leaders(c).len() == 1).await;
    // Released: no need to wait for the Lease to expire.
    assert!(took < LEASE, "takeover after a release took {took:?}");
    for c in cands {
        c.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_409_race_leaves_exactly_one_leader() {
    let fake = FakeApiServer::start();
    // Every answer takes 50 ms: the five candidates all read "no lease" before any writes,
    // so they all try to create it and the server must refuse all but one.
    fake.set_latency(Duration::from_millis(50));
    let cands: Vec<Candidate> = (0..5)
        .map(|i| Candidate::start(&fake, "race", &format!("c{i}")))
        .collect();
    until("a leader", &cands, |c| leaders(c).len() == 1).await;
    never_two_leaders(&cands, 2 * LEASE).await;
    assert_eq!(leaders(&cands).len(), 1);
    // By now every create has been answered.
    let log = fake.request_log();
    let creates: Vec<u16> = log
        .iter()
        .filter(|r| r.method == "POST" && r.path.ends_with("/leases"))
        .map(|r| r.status)
        .collect();
    assert_eq!(
        creates.iter().filter(|s| **s == 201).count(),
        1,
        "one create won: {creates:?}"
    );
    assert!(
        creates.iter().filter(|s| **s == 409).count() >= 1,
        "the others lost with 409: {creates:?}"
    );
    assert_eq!(holder(&fake, "race"), leaders(&cands).first().cloned());
    fake.set_latency(Duration::ZERO);
    for c in cands {
        c.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leader_steps_down_when_the_api_server_is_gone() {
    let fake = FakeApiServer::start();
    let cands = vec![
        Candidate::start(&fake, "lb", "a"),
        Candidate::start(&fake, "lb", "b"),
    ];
    until("a leader", &cands, |c| leaders(c).len() == 1).await;

    // Refused connections. The deadline runs from the last renewal, so the leader steps down
    // within it (plus scheduling), well before the Lease could expire for anyone else.
    fake.set_unreachable(true);
    let took = until("the leader to step down", &cands, |c| leaders(c).is_empty()).await;
    assert!(
        took <= RENEW_DEADLINE + Duration::from_millis(250),
        "stepping down took {took:?}"
    );
    // Nobody can lead without the API server.
    never_two_leaders(&cands, 2 * LEASE).await;
    assert!(
        leaders(&cands).is_empty(),
        "no leader while the API server is unreachable"
    );
    fake.set_unreachable(false);
    until("a leader again", &cands, |c| leaders(c).len() == 1).await;

    // A black hole: requests hang; the leader must not wait for them past its deadline.
    fake.set_unresponsive(true);
    let took = until("the leader to step down", &cands, |c| leaders(c).is_empty()).await;
    assert!(
        took <= RENEW_DEADLINE + Duration::from_millis(250),
        "stepping down took {took:?}"
    );
    fake.set_unresponsive(false);
    until("a leader again", &cands, |c| leaders(c).len() == 1).await;
    for c in cands {
        c.shutdown().await;
    }
}
