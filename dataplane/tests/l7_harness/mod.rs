//! A fake transport around `l7::Conn`: runs its actions, records every byte that reaches the
//! backend and the client, and plays a backend that answers each complete request it parses.
//! The backend's parser is written here, independently of the core's.
#![allow(dead_code)]

use dataplane::l7::conn::{Action, Conn, ConnConfig, Router};
use dataplane::l7::errors::Status;
use dataplane::l7::headers::ClientInfo;
use dataplane::l7::route::{BackendId, Pick, RequestView};

/// A router with `n` backends: requests go to backend 0 (the retry to the next one).
pub struct FakeRouter {
    pub backends: u32,
}

impl Router for FakeRouter {
    fn route(&mut self, _request: &RequestView<'_>) -> Result<Pick, Status> {
        Ok(Pick {
            split: 0,
            service: 0,
            backend: BackendId(0),
            hash: 0,
        })
    }
    fn retry(&mut self, pick: &Pick) -> Option<Pick> {
        let next = pick.backend.0 + 1;
        (next < self.backends).then_some(Pick {
            backend: BackendId(next),
            ..*pick
        })
    }
    fn finished(&mut self, _pick: &Pick) {}
}

/// One request as the fake backend read it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub host: Option<String>,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// How the fake backend behaves.
#[derive(Clone, Debug)]
pub enum Reply {
    /// Answer each request with this response.
    Fixed(Vec<u8>),
    /// Read requests, never answer.
    Silent,
}

/// Parses complete requests off the front of `stream` (strict enough for a recorder).
fn parse_requests(stream: &mut Vec<u8>, out: &mut Vec<Seen>) {
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 128];
        let mut req = httparse::Request::new(&mut headers);
        let Ok(httparse::Status::Complete(len)) = req.parse(stream) else {
            return;
        };
        let fields: Vec<(String, String)> = req
            .headers
            .iter()
            .map(|h| {
                (
                    h.name.to_ascii_lowercase(),
                    String::from_utf8_lossy(h.value).into_owned(),
                )
            })
            .collect();
        let get = |n: &str| fields.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
        let mut body = Vec::new();
        let mut at = len;
        if get("transfer-encoding").is_some() {
            loop {
                let Some(eol) = find(&stream[at..], b"\r\n") else {
                    return;
                };
                let line = String::from_utf8_lossy(&stream[at..at + eol]).into_owned();
                let size = usize::from_str_radix(line.split(';').next().unwrap().trim(), 16)
                    .expect("the core sends valid chunk sizes");
                at += eol + 2;
                if size == 0 {
                    // Trailers up to the empty line.
                    loop {
                        let Some(eol) = find(&stream[at..], b"\r\n") else {
                            return;
                        };
                        at += eol + 2;
                        if eol == 0 {
                            break;
                        }
                    }
                    break;
                }
                if stream.len() < at + size + 2 {
                    return;
                }
                body.extend_from_slice(&stream[at..at + size]);
                assert_eq!(&stream[at + size..at + size + 2], b"\r\n");
                at += size + 2;
            }
        } else if let Some(cl) = get("content-length") {
            let n: usize = cl.parse().expect("the core sends valid lengths");
            if stream.len() < at + n {
                return;
            }
            body.extend_from_slice(&stream[at..at + n]);
            at += n;
        }
        out.push(Seen {
            method: req.method.unwrap().to_string(),
            path: req.path.unwrap().to_string(),
            host: get("host"),
            headers: fields,
            body,
        });
        stream.drain(..at);
    }
}

pub fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// The connection under test with its fake peers.
pub struct Harness<R: Router> {
    pub conn: Conn,
    pub router: R,
    pub now: u64,
    pub reply: Reply,
    /// Every byte the core wrote to any backend connection.
    pub to_backend: Vec<u8>,
    /// Every byte the core wrote to the client.
    pub to_client: Vec<u8>,
    /// Requests the backend read, in order.
    pub seen: Vec<Seen>,
    /// Backend connections asked for (new or pooled).
    pub connects: Vec<BackendId>,
    /// Backend connections reused from the pool.
    pub reused: usize,
    pub released: usize,
    pub backend_closes: usize,
    pub client_closed: bool,
    pub timer: Option<u64>,
    /// Why requests were refused, in order.
    pub refused: Vec<dataplane::l7::errors::RejectReason>,
    /// Backends that refuse connections.
    pub refuse: Vec<BackendId>,
    /// Leave every Connect unanswered (a backend that never completes the handshake).
    pub hold_connects: bool,
    stream: Vec<u8>,
    /// The backend answered 101: what follows is a tunnel, not HTTP.
    tunnel: bool,
    pooled: bool,
    connected: bool,
    pending: Vec<Action>,
}

impl<R: Router> Harness<R> {
    pub fn new(config: ConnConfig, router: R, reply: Reply) -> Self {
        let mut pending = Vec::new();
        let client = ClientInfo {
            addr: "192.0.2.10".parse().unwrap(),
            tls: false,
        };
        let conn = Conn::new(config, client, 0, &mut pending);
        let mut h = Harness {
            conn,
            router,
            now: 0,
            reply,
            to_backend: Vec::new(),
            to_client: Vec::new(),
            seen: Vec::new(),
            connects: Vec::new(),
            reused: 0,
            released: 0,
            backend_closes: 0,
            client_closed: false,
            timer: None,
            refused: Vec::new(),
            refuse: Vec::new(),
            hold_connects: false,
            stream: Vec::new(),
            tunnel: false,
            pooled: false,
            connected: false,
            pending,
        };
        h.run();
        h
    }

    /// The client sends `data`.
    pub fn client(&mut self, data: &[u8]) {
        let mut actions = std::mem::take(&mut self.pending);
        self.conn
            .client_data(self.now, data, &mut self.router, &mut actions);
        self.pending = actions;
        self.run();
    }

    /// The backend sends `data` on the current connection.
    pub fn backend(&mut self, data: &[u8]) {
        if self.connected && data.starts_with(b"HTTP/1.1 101") {
            self.tunnel = true;
        }
        let mut actions = std::mem::take(&mut self.pending);
        self.conn
            .backend_data(self.now, data, &mut self.router, &mut actions);
        self.pending = actions;
        self.run();
    }

    /// The backend closes the current connection.
    pub fn backend_close(&mut self) {
        self.connected = false;
        let mut actions = std::mem::take(&mut self.pending);
        self.conn
            .backend_closed(self.now, &mut self.router, &mut actions);
        self.pending = actions;
        self.run();
    }

    /// The client closes its side.
    pub fn client_close(&mut self) {
        let mut actions = std::mem::take(&mut self.pending);
        self.conn
            .client_closed(self.now, &mut self.router, &mut actions);
        self.pending = actions;
        self.run();
    }

    /// Time passes to `now`; the timer fires if due.
    pub fn advance(&mut self, now: u64) {
        self.now = now;
        if self.timer.is_some_and(|t| t <= now) {
            self.timer = None;
            let mut actions = std::mem::take(&mut self.pending);
            self.conn.timer(now, &mut self.router, &mut actions);
            self.pending = actions;
            self.run();
        }
    }

    /// Runs actions until nothing moves.
    pub fn run(&mut self) {
        for _ in 0..10_000 {
            let mut actions = std::mem::take(&mut self.pending);
            let mut moved = false;
            for action in actions.drain(..) {
                moved = true;
                match action {
                    Action::Connect(b) => {
                        self.connects.push(b);
                        let mut next = Vec::new();
                        if self.hold_connects {
                            // Nothing: the connect never completes.
                        } else if self.refuse.contains(&b) {
                            self.conn
                                .backend_failed(self.now, &mut self.router, &mut next);
                        } else {
                            if self.pooled {
                                self.reused += 1;
                            }
                            self.pooled = false;
                            self.connected = true;
                            self.tunnel = false;
                            self.stream.clear();
                            self.conn
                                .backend_connected(self.now, &mut self.router, &mut next);
                        }
                        self.pending.extend(next);
                    }
                    Action::ReleaseBackend => {
                        self.released += 1;
                        self.pooled = true;
                        self.connected = false;
                        assert!(self.stream.is_empty(), "released mid-request");
                    }
                    Action::CloseBackend => {
                        self.backend_closes += 1;
                        self.connected = false;
                        self.stream.clear();
                    }
                    Action::CloseClient => self.client_closed = true,
                    Action::ArmTimer(at) => self.timer = Some(at),
                    Action::Refused(reason) => self.refused.push(reason),
                    Action::WriteClient | Action::WriteBackend => {}
                    Action::RequestStarted | Action::ResponseStarted | Action::RequestEnded(_) => {}
                }
            }
            self.pending.extend(actions);
            // Drain outputs whether or not a Write action was seen (idempotent).
            let out = self.conn.backend_output().len();
            if out > 0 {
                moved = true;
                let bytes = self.conn.backend_output().to_vec();
                assert!(self.connected, "bytes for a backend that is not connected");
                self.to_backend.extend_from_slice(&bytes);
                self.stream.extend_from_slice(&bytes);
                let mut next = Vec::new();
                self.conn
                    .backend_written(self.now, out, &mut self.router, &mut next);
                self.pending.extend(next);
                let before = self.seen.len();
                if !self.tunnel {
                    parse_requests(&mut self.stream, &mut self.seen);
                }
                if let Reply::Fixed(answer) = &self.reply {
                    for _ in before..self.seen.len() {
                        let answer = answer.clone();
                        let mut next = Vec::new();
                        self.conn
                            .backend_data(self.now, &answer, &mut self.router, &mut next);
                        self.pending.extend(next);
                    }
                }
            }
            let out = self.conn.client_output().len();
            if out > 0 {
                moved = true;
                self.to_client.extend_from_slice(self.conn.client_output());
                let mut next = Vec::new();
                self.conn
                    .client_written(self.now, out, &mut self.router, &mut next);
                self.pending.extend(next);
            }
            if !moved && self.pending.is_empty() {
                return;
            }
        }
        panic!("the connection never settles");
    }

    /// Status codes of the responses the client got, in order.
    pub fn statuses(&self) -> Vec<u16> {
        let mut out = Vec::new();
        let mut rest = &self.to_client[..];
        loop {
            let mut headers = [httparse::EMPTY_HEADER; 64];
            let mut resp = httparse::Response::new(&mut headers);
            let Ok(httparse::Status::Complete(len)) = resp.parse(rest) else {
                return out;
            };
            let code = resp.code.unwrap();
            let cl: usize = resp
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                .map_or(0, |h| {
                    std::str::from_utf8(h.value).unwrap().parse().unwrap()
                });
            out.push(code);
            if rest.len() < len + cl {
                return out;
            }
            rest = &rest[len + cl..];
        }
    }
}
