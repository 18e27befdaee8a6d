//! The `lb` binary: exit codes, stdout summaries and stderr errors.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const SHIPPED: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../lb.toml");

fn tmp(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("cli-{}-{name}", std::process::id()))
}

fn lb(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_lb"))
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

#[test]
fn check_accepts_the_shipped_config() {
    let out = lb(&["check", SHIPPED]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(
        stdout.starts_with("ok: 2 services, 5 backends\n"),
        "{stdout}"
    );
    // Then the memory the config needs, with its breakdown.
    let memory = stdout.lines().nth(1).unwrap_or("");
    assert!(
        memory.starts_with("memory: ")
            && memory.contains(" = conntrack 2 workers x ")
            && memory.contains("Maglev 2 tables"),
        "{stdout}"
    );
    assert_eq!(stdout.lines().count(), 2, "{stdout}");
}

#[test]
fn check_refuses_what_this_machine_cannot_run() {
    let cfg = tmp("machine.toml");
    let shipped = std::fs::read_to_string(SHIPPED).unwrap();
    // No machine has core 4000 online, or hundreds of GiB to spare for two workers' conntrack.
    let text = shipped
        .replace("# cores = [0, 1]", "cores = [0, 4000]")
        .replace("capacity = 262144", "capacity = 2147483648");
    assert!(text.contains("cores = [0, 4000]"));
    std::fs::write(&cfg, &text).unwrap();
    let out = lb(&["check", p(&cfg)]);
    assert_eq!(out.status.code(), Some(1));
    let err = self::text(&out.stderr);
    let line_of = |needle: &str| text.lines().position(|l| l.contains(needle)).unwrap() + 1;
    assert!(
        err.contains(&format!(
            "{}:{}:13: error: dataplane: core 4000 is not online",
            cfg.display(),
            line_of("cores = [0, 4000]")
        )),
        "{err}"
    );
    assert!(
        err.contains(&format!(
            "{}:{}:12: error: the config needs ",
            cfg.display(),
            line_of("capacity = 2147483648")
        )),
        "{err}"
    );
    assert!(
        err.contains("conntrack 2 workers x ") && err.contains(" GiB of memory, more than the "),
        "{err}"
    );
    assert!(out.stdout.is_empty());
    std::fs::remove_file(&cfg).unwrap();
}

#[test]
fn bad_config_fails_with_file_line_column() {
    let cfg = tmp("bad.toml");
    std::fs::write(
        &cfg,
        "[dataplane]\nmac = \"02:00:00:00:00:01\"\n\n[[services]]\nname = \"x\"\n  vipp = \"198.18.0.100\"\n",
    )
    .unwrap();
    for args in [
        vec!["check", p(&cfg)],
        vec![
            "sim",
            "--config",
            p(&cfg),
            "--in",
            "/nonexistent.pcap",
            "--out",
            "/dev/null",
        ],
    ] {
        let out = lb(&args);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let err = text(&out.stderr);
        assert!(err.contains(&format!("{}:6:3: ", cfg.display())), "{err}");
        assert!(err.contains("vipp"), "{err}");
        assert!(out.stdout.is_empty());
    }
}

#[test]
fn check_prints_every_compile_problem() {
    let cfg = tmp("uncompilable.toml");
    std::fs::write(
        &cfg,
        r#"
[dataplane]
mac = "02:00:00:00:00:01"
[[services]]
name = "web"
vip = "198.18.0.100"
protocol = "tcp"
[[services.pools]]
name = "pods"
mode = "fullnat"
backends = [{ addr = "198.18.1.10" }, { addr = "198.18.1.11" }]
"#,
    )
    .unwrap();
    let out = lb(&["check", p(&cfg)]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains("service web pool pods backend 198.18.1.10: no MAC"),
        "{err}"
    );
    assert!(
        err.contains("service web pool pods backend 198.18.1.11: no MAC"),
        "{err}"
    );
    assert!(err.contains("fullnat needs an IPv4 address"), "{err}");
}

#[test]
fn sim_summarises_and_writes_the_output_pcap() {
    let input = tmp("in.pcap");
    let output = tmp("out.pcap");
    let frames = vec![(10, vec![0u8; 60]), (20, vec![0u8; 2])];
    controlplane::sim::write_pcap(&input, &frames).unwrap();
    let out = lb(&[
        "sim",
        "--config",
        SHIPPED,
        "--in",
        p(&input),
        "--out",
        p(&output),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(stdout.starts_with("frames in: 2\ntx: "), "{stdout}");
    assert!(stdout.contains("\nto-host: "), "{stdout}");
    // The verdict lines ("name: count", up to the spread table) add up to the frames in.
    let lines: Vec<&str> = stdout.lines().collect();
    let spread = lines
        .iter()
        .position(|l| l.starts_with("spread"))
        .expect("a spread table");
    let verdict_sum: u64 = lines[1..spread]
        .iter()
        .map(|l| l.rsplit_once(": ").unwrap().1.parse::<u64>().unwrap())
        .sum();
    assert_eq!(verdict_sum, 2, "{stdout}");
    // One spread line per backend of the shipped config.
    let backends = lines[spread + 1..lines.len() - 1].len();
    assert_eq!(backends, 5, "{stdout}");
    let written = controlplane::sim::read_pcap(&output).unwrap();
    let tx: usize = lines[1].strip_prefix("tx: ").unwrap().parse().unwrap();
    assert_eq!(written.len(), tx);
}

#[test]
fn sim_with_a_missing_pcap_fails() {
    let out = lb(&[
        "sim",
        "--config",
        SHIPPED,
        "--in",
        "/nonexistent/in.pcap",
        "--out",
        p(&tmp("x.pcap")),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("/nonexistent/in.pcap"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn check_shows_the_line_a_caret_and_a_hint_then_the_count() {
    let cfg = tmp("typo.toml");
    std::fs::write(
        &cfg,
        "[dataplane]\nmac = \"02:00:00:00:00:01\"\nmttu = 1500\nworkers = 0\n",
    )
    .unwrap();
    let out = lb(&["check", p(&cfg)]);
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    let err = text(&out.stderr);
    let want = format!(
        "{}:3:1: error: unknown field `mttu`, expected one of",
        cfg.display()
    );
    assert!(err.starts_with(&want), "{err}");
    assert!(err.contains("3 | mttu = 1500\n"), "{err}");
    assert!(err.contains("  | ^^^^\n"), "{err}");
    assert!(err.contains("= hint: did you mean `mtu`?"), "{err}");
    // A schema error stops the rules that need the whole config: one problem.
    assert!(err.ends_with("\n1 error\n"), "{err}");

    // Fixed, the rule problem shows up with its own place.
    std::fs::write(
        &cfg,
        "[dataplane]\nmac = \"02:00:00:00:00:01\"\nmtu = 1500\nworkers = 0\n",
    )
    .unwrap();
    let err = text(&lb(&["check", p(&cfg)]).stderr);
    assert!(
        err.starts_with(&format!(
            "{}:4:11: error: dataplane: workers must be at least 1\n",
            cfg.display()
        )),
        "{err}"
    );
    assert!(err.ends_with("\n1 error\n"), "{err}");
}

#[test]
fn check_counts_several_errors_and_syntax_errors_render_the_same_way() {
    let cfg = tmp("several.toml");
    std::fs::write(
        &cfg,
        "[dataplane]\nmac = \"02:00:00:00:00:01\"\nmtu = 100\n[logging]\nlevel = \"inof\"\n",
    )
    .unwrap();
    let out = lb(&["check", p(&cfg)]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    let mtu = err.find(":3:7: error: dataplane: mtu 100").expect(&err);
    let level = err.find(":5:9: error: logging: ").expect(&err);
    assert!(mtu < level, "file order: {err}");
    assert!(err.ends_with("\n2 errors\n"), "{err}");

    std::fs::write(
        &cfg,
        "[dataplane]\nmac = \"02:00:00:00:00:01\"\nmtu = 15 00\n",
    )
    .unwrap();
    let out = lb(&["check", p(&cfg)]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.starts_with(&format!("{}:3:7: error: ", cfg.display())),
        "{err}"
    );
    assert!(err.contains("3 | mtu = 15 00\n"), "{err}");
    assert!(err.ends_with("\n1 error\n"), "{err}");
}

#[test]
fn run_refuses_what_this_machine_cannot_run_as_check_does() {
    // Core 4000 and hundreds of GiB of conntrack: refused before the interface (which does not exist
    // either) is touched and before anything is allocated, with `lb check`'s report.
    let cfg = tmp("run-machine.toml");
    let text = std::fs::read_to_string(SHIPPED)
        .unwrap()
        .replace("# cores = [0, 1]", "cores = [0, 4000]")
        .replace("capacity = 262144", "capacity = 2147483648")
        .replace("port = \"tap\"", "port = \"af_packet\"")
        .replace("interface = \"lb0\"", "interface = \"lbnosuch0\"");
    assert!(text.contains("cores = [0, 4000]") && text.contains("lbnosuch0"));
    std::fs::write(&cfg, &text).unwrap();
    let check = lb(&["check", p(&cfg)]);
    let run = lb(&["run", "--config", p(&cfg)]);
    assert_eq!(run.status.code(), Some(1));
    let err = self::text(&run.stderr);
    assert!(
        err.contains("error: dataplane: core 4000 is not online"),
        "{err}"
    );
    assert!(
        err.contains("error: the config needs ") && err.contains(" GiB of memory, more than "),
        "{err}"
    );
    assert!(!err.contains("lbnosuch0 does not exist"), "{err}");
    // The same report, but for the memory this machine had available at each moment (other
    // processes move it between the two commands).
    assert_eq!(
        without_available(&err),
        without_available(&self::text(&check.stderr))
    );
    std::fs::remove_file(&cfg).unwrap();
}

/// A report with the "more than the N GiB this machine has available" figure taken out.
fn without_available(report: &str) -> String {
    const AT: &str = "more than the ";
    let Some(start) = report.find(AT).map(|i| i + AT.len()) else {
        return report.to_owned();
    };
    let end = report[start..]
        .find(' ')
        .map_or(report.len(), |i| start + i);
    format!("{}N{}", &report[..start], &report[end..])
}

#[test]
fn run_with_a_bad_config_prints_the_same_report_and_serves_nothing() {
    // The config is refused before any port is opened, so this needs no privileges.
    let cfg = tmp("run-bad.toml");
    std::fs::write(
        &cfg,
        "[dataplane]\nmac = \"02:00:00:00:00:01\"\ninterface = \"not/a/name\"\n",
    )
    .unwrap();
    let check = lb(&["check", p(&cfg)]);
    let run = lb(&["run", "--config", p(&cfg)]);
    assert_eq!(run.status.code(), Some(1));
    let err = text(&run.stderr);
    assert!(
        err.contains(&format!(
            "{}:3:13: error: dataplane: interface \"not/a/name\"",
            cfg.display()
        )),
        "{err}"
    );
    assert!(err.ends_with(&text(&check.stderr)), "{err}");
}

#[test]
fn check_of_a_missing_file_names_it() {
    let out = lb(&["check", "/nonexistent/lb.toml"]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.starts_with("/nonexistent/lb.toml: error: cannot read the file"),
        "{err}"
    );
}

#[test]
fn check_refuses_a_device_a_fifo_and_a_directory_without_reading_them() {
    let fifo = tmp("fifo.toml");
    let _ = std::fs::remove_file(&fifo);
    let made = Command::new("mkfifo").arg(&fifo).status().unwrap();
    assert!(made.success());
    for (path, kind) in [
        ("/dev/zero", "a character device"),
        (p(&fifo), "a FIFO"),
        ("/", "a directory"),
    ] {
        // Before: /dev/zero grew without bound and the FIFO waited for a writer forever.
        let out = lb(&["check", path]);
        assert_eq!(out.status.code(), Some(1), "{path}");
        let err = text(&out.stderr);
        assert!(
            err.starts_with(&format!(
                "{path}: error: cannot read the file: it is {kind}"
            )),
            "{err}"
        );
        assert!(err.contains("regular file"), "{err}");
    }
    std::fs::remove_file(&fifo).unwrap();
}

#[test]
fn check_refuses_a_file_over_the_size_limit() {
    let cfg = tmp("huge.toml");
    let f = std::fs::File::create(&cfg).unwrap();
    // Sparse: 64 MiB + 1 of zero bytes without writing them.
    f.set_len(controlplane::config::MAX_CONFIG_BYTES + 1)
        .unwrap();
    let out = lb(&["check", p(&cfg)]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(err.contains("larger than 64 MiB"), "{err}");
    std::fs::remove_file(&cfg).unwrap();
}

#[test]
fn check_places_the_first_byte_that_is_not_utf8() {
    let cfg = tmp("latin1.toml");
    std::fs::write(&cfg, b"[dataplane]\nmtu = 1500\n# caf\xe9\n").unwrap();
    let out = lb(&["check", p(&cfg)]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.starts_with(&format!(
            "{}:3:6: error: byte 0xe9 is not UTF-8",
            cfg.display()
        )),
        "{err}"
    );
    assert!(err.contains("3 | # caf"), "{err}");
    std::fs::remove_file(&cfg).unwrap();
}
