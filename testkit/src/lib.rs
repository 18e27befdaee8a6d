//! Test support kept out of the production libraries: sample routing tables and frames (benchmarks,
//! fuzzing, tests), network namespace helpers, and the lab of namespaces behind `lb lab` and the
//! end-to-end tests.
#![forbid(unsafe_code)]

pub mod lab;
pub mod netns;
pub mod sample;
pub mod shared;

/// True when this process runs as root (namespaces, TAP devices and raw sockets need it).
pub fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// Panics with a clear message unless running as root. Root-only tests call it first: they are
/// `#[ignore]`d (so a plain `cargo test` lists them as ignored), and when someone runs them anyway
/// without root they fail instead of passing without having tested anything.
pub fn require_root() {
    assert!(
        is_root(),
        "this test needs root (network namespaces, TAP, raw sockets); it is #[ignore]d for that \
         reason: run `sudo bash scripts/test.sh`, which runs the ignored tests as root"
    );
}

/// Panics with a clear message unless every program is on the PATH. Tests that run real peers
/// (nginx, wrk, openssl) call it first: they are `#[ignore]`d, so a plain `cargo test` on a machine
/// without them lists them as ignored, and scripts/test.sh (which installs scripts/packages.txt)
/// runs them; run anyway without the programs, they fail instead of passing untested.
pub fn require_programs(programs: &[&str]) {
    let path = std::env::var_os("PATH").unwrap_or_default();
    for program in programs {
        let found = std::env::split_paths(&path).any(|dir| dir.join(program).is_file());
        assert!(
            found,
            "this test runs `{program}`, which is not installed: install the packages of \
             scripts/packages.txt (scripts/test.sh does, as root)"
        );
    }
}
