//! Every program a test, the lab or a script executes is installed on a fresh Debian 12 machine.
//!
//! `scripts/test.sh` and `.ci/run` install the packages of `scripts/packages.txt` (the lines without
//! `bench:`); benchmark scripts install their `bench:` packages themselves. This test scans the
//! sources for executed programs (Rust: `Command::new("prog")`, the netns helpers' `run("prog", ..)`
//! and `run_in(ns, "prog", ..)`; shell: the first word of every command) and checks each against
//! that list, so a new `Command::new("tcpdump")` fails here, not on a fresh machine.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Programs that are on every Debian 12 system (Essential or `required` packages) or that the
/// toolchain brings (cargo, rustup; git checked the tree out).
const PRESENT: &[&str] = &[
    // coreutils, bash, grep, sed, mawk, findutils, util-linux, dpkg/apt, debianutils
    "awk", "basename", "bash", "cat", "chmod", "cp", "cut", "date", "dirname", "env", "find",
    "grep", "head", "id", "ln", "ls", "mkdir", "mktemp", "mv", "nproc", "rm", "rmdir", "sed",
    "seq", "sh", "sleep", "sort", "tail", "taskset", "tee", "touch", "tr", "uniq", "wc", "xargs",
    "nice", "timeout", "uname", "stdbuf", "paste", "apt-get", "which", "dpkg", "stat", "mount",
    "umount", "chroot", // the toolchain and the checkout
    "cargo", "rustup", "rustc", "git",
];

/// The Debian package that provides each program the project runs. A program missing here fails
/// the test: add it with its package, and the package to scripts/packages.txt.
const PACKAGE_OF: &[(&str, &str)] = &[
    ("ip", "iproute2"),
    ("mkfifo", "coreutils"),
    ("ethtool", "ethtool"),
    ("kill", "procps"),
    ("pgrep", "procps"),
    ("sysctl", "procps"),
    ("nft", "nftables"),
    ("trafgen", "netsniff-ng"),
    ("wrk", "wrk"),
    ("nginx", "nginx-light"),
    ("valgrind", "valgrind"),
    ("callgrind_annotate", "valgrind"),
    ("ping", "iputils-ping"),
    ("conntrack", "conntrack"),
    ("curl", "curl"),
    ("openssl", "openssl"),
    ("haproxy", "haproxy"),
    ("cc", "build-essential"),
    ("pkg-config", "pkg-config"),
    ("debootstrap", "debootstrap"),
    ("dpdk-testpmd", "dpdk-dev"),
    ("perf", "linux-perf"),
];

/// Shell words that are not programs: keywords and builtins.
const SHELL_WORDS: &[&str] = &[
    "if", "then", "else", "elif", "fi", "for", "while", "until", "do", "done", "case", "esac",
    "in", "function", "return", "exit", "local", "export", "set", "unset", "shift", "cd", "echo",
    "printf", "read", "readonly", "wait", "trap", "true", "false", "test", "[", "[[", "]]",
    "command", "exec", "source", ".", "eval", "break", "continue", "time", "declare", "type",
    "pushd", "popd", "let", "!", "{", "}",
];

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The install list: (always-installed packages, benchmark-only packages).
fn install_list() -> (BTreeSet<String>, BTreeSet<String>) {
    let path = root().join("scripts/packages.txt");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (the one install list)", path.display()));
    let (mut always, mut bench) = (BTreeSet::new(), BTreeSet::new());
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or_default().trim();
        if let Some(p) = line.strip_prefix("bench:") {
            bench.insert(p.trim().to_owned());
        } else if !line.is_empty() {
            always.insert(line.to_owned());
        }
    }
    (always, bench)
}

fn files_under(dir: &Path, keep: &dyn Fn(&Path) -> bool, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        let name = e.file_name();
        if p.is_dir() {
            if name != "target" && name != ".git" && name != "fixtures" {
                files_under(&p, keep, out);
            }
        } else if keep(&p) {
            out.push(p);
        }
    }
}

/// Programs a Rust source executes by name (string literals only; `env!("CARGO_BIN_EXE_lb")`
/// and other paths are the project's own binaries).
fn rust_programs(text: &str) -> BTreeSet<String> {
    // Squash whitespace so calls formatted over several lines read like one.
    let flat: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    let flat = flat.replace("( ", "(");
    let mut found = BTreeSet::new();
    for pat in ["Command::new(\"", "run(\"", "run_in(&", "run_in("] {
        for (at, _) in flat.match_indices(pat) {
            let rest = &flat[at + pat.len()..];
            let rest = if pat.starts_with("run_in") {
                // skip the namespace argument
                match rest.split_once(", \"") {
                    Some((ns, r)) if !ns.contains(')') => r,
                    _ => continue,
                }
            } else {
                rest
            };
            if let Some((prog, _)) = rest.split_once('"') {
                if !prog.is_empty() && !prog.contains('/') && !prog.contains('{') {
                    found.insert(prog.to_owned());
                }
            }
        }
    }
    found
}

/// The code of a shell script without heredoc bodies: comments, single- and double-quoted text,
/// `${..}` and `$((..))` become a `$Q` placeholder word; command substitutions (also inside double
/// quotes) and `case` patterns end a command, so their first words read as commands too.
fn shell_code(body: &str) -> String {
    #[derive(PartialEq)]
    enum Ctx {
        Code(usize), // open parentheses
        DQuote,
    }
    let chars: Vec<char> = body.chars().collect();
    let mut stack = vec![Ctx::Code(0)];
    let mut code = String::new();
    let mut i = 0;
    // Skips from `open` (at i) to its matching `close`, nesting included.
    let skip = |i: usize, open: char, close: char| -> usize {
        let mut depth = 0;
        let mut j = i;
        while j < chars.len() {
            if chars[j] == open {
                depth += 1;
            } else if chars[j] == close {
                depth -= 1;
                if depth == 0 {
                    return j + 1;
                }
            }
            j += 1;
        }
        j
    };
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied().unwrap_or(' ');
        let after = chars.get(i + 2).copied().unwrap_or(' ');
        let top = stack.last().unwrap_or(&Ctx::Code(0));
        if *top == Ctx::DQuote {
            match c {
                '\\' => i += 1,
                '"' => {
                    stack.pop();
                }
                '$' if next == '(' && after != '(' => {
                    stack.push(Ctx::Code(0));
                    code.push('\n');
                    i += 1;
                }
                _ => {}
            }
            i += 1;
            continue;
        }
        let prev = if i == 0 { '\n' } else { chars[i - 1] };
        match c {
            '#' if prev.is_whitespace() => {
                while i < chars.len() && chars[i] != '\n' {
                    i += 1;
                }
                continue;
            }
            '\'' => {
                i += 1;
                while i < chars.len() && chars[i] != '\'' {
                    i += 1;
                }
                code.push_str("$Q");
            }
            '"' => {
                stack.push(Ctx::DQuote);
                code.push_str("$Q");
            }
            '$' if next == '{' => {
                i = skip(i + 1, '{', '}');
                code.push_str("$Q");
                continue;
            }
            '$' if next == '(' && after == '(' => {
                i = skip(i + 1, '(', ')');
                code.push_str("$Q");
                continue;
            }
            '(' if prev == '=' => {
                // an array value: `xs=(a b)`, `xs+=(c)`
                i = skip(i, '(', ')');
                code.push_str("$Q");
                continue;
            }
            '(' => {
                if let Some(Ctx::Code(n)) = stack.last_mut() {
                    *n += 1;
                }
                code.push('\n');
            }
            ')' => match (stack.len(), stack.last_mut()) {
                (_, Some(Ctx::Code(n))) if *n > 0 => {
                    *n -= 1;
                    code.push('\n');
                }
                (depth, _) if depth > 1 => {
                    // the end of a `$(..)` inside double quotes
                    stack.pop();
                    code.push('\n');
                }
                _ => {
                    // a `case` pattern: what came before it on this line is not a command
                    let start = code.rfind(['\n', ';']).map_or(0, |p| p + 1);
                    code.truncate(start);
                    code.push('\n');
                }
            },
            _ => code.push(c),
        }
        i += 1;
    }
    code
}

/// Programs a shell script runs: the first word of each command, after assignments and the
/// wrappers that run another program (`ip netns exec NS`, `taskset -c N`, `nice -n N`, ...).
fn shell_programs(text: &str) -> BTreeSet<String> {
    let mut body = String::new();
    let mut heredoc_end: Option<String> = None;
    for line in text.lines() {
        if let Some(end) = &heredoc_end {
            if line.trim() == end {
                heredoc_end = None;
            }
            continue;
        }
        // `<<<` is a here-string and `$((1 << n))` a shift, not heredocs.
        let heredoc = line.find("<<").filter(|&at| {
            let before = &line[..at];
            !line[at..].starts_with("<<<")
                && before.matches("$((").count() <= before.matches("))").count()
        });
        if let Some(at) = heredoc {
            let tag = line[at + 2..]
                .trim_start_matches(['-', '<'])
                .trim()
                .trim_matches(['\'', '"']);
            let tag: String = tag
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if !tag.is_empty() {
                heredoc_end = Some(tag);
            }
        }
        body.push_str(line);
        body.push('\n');
    }
    let code = shell_code(&body);
    let functions: BTreeSet<&str> = body
        .lines()
        .filter_map(|l| l.trim().split_once("()").map(|(n, _)| n.trim()))
        .filter(|n| !n.is_empty() && n.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'))
        .collect();
    let mut found = BTreeSet::new();
    let seps = [
        "\n", ";", "|", "&", "(", ")", "`", "{", "}", " then ", " do ", " else ",
    ];
    let mut segments = vec![code.as_str().to_owned()];
    for sep in seps {
        segments = segments
            .iter()
            .flat_map(|s| s.split(sep).map(str::to_owned).collect::<Vec<_>>())
            .collect();
    }
    for seg in &segments {
        let mut words = seg.split_whitespace().map(|w| w.trim_matches('"'));
        let mut word = words.next();
        loop {
            match word {
                Some(w) if w.contains('=') || w == "$NICE" => {}
                Some("sudo" | "exec" | "time" | "then" | "do" | "else" | "if" | "while" | "!") => {}
                Some("nice") => {
                    // `nice -n -10 prog`
                    let _ = (words.next(), words.next());
                }
                Some("timeout") => {
                    // `timeout [-s SIG] [-k T] DURATION prog`
                    let mut w = words.next();
                    while let Some(opt) = w.filter(|w| w.starts_with('-')) {
                        if opt == "-s" || opt == "-k" {
                            let _ = words.next();
                        }
                        w = words.next();
                    }
                }
                Some("taskset") => {
                    found.insert("taskset".to_owned());
                    let _ = (words.next(), words.next());
                }
                Some("ip") => {
                    found.insert("ip".to_owned());
                    let rest: Vec<&str> = words.clone().collect();
                    if rest.get(..2) == Some(&["netns", "exec"]) {
                        let _ = (words.next(), words.next(), words.next());
                    } else {
                        break;
                    }
                }
                Some("nsx") => {
                    // perf/compare's `nsx NS prog ...` = `ip netns exec NS prog ...`
                    let _ = words.next();
                }
                _ => break,
            }
            word = words.next();
        }
        let Some(w) = word else { continue };
        if w.starts_with('$')
            || w.starts_with('-')
            || w.contains('/')
            || w.contains('=')
            || SHELL_WORDS.contains(&w)
            || functions.contains(w)
            || !w.chars().next().is_some_and(|c| c.is_ascii_lowercase())
            || !w
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            continue;
        }
        found.insert(w.to_owned());
    }
    found
}

/// Every executed program and the files that run it; `bench` says whether the file is a
/// benchmark script (under perf/), whose programs may be benchmark-only packages.
fn executed_programs() -> BTreeMap<String, Vec<(PathBuf, bool)>> {
    let root = root();
    let mut files = Vec::new();
    for dir in ["dataplane", "controlplane", "testkit", "fuzz", "examples"] {
        files_under(
            &root.join(dir),
            &|p| p.extension().is_some_and(|e| e == "rs"),
            &mut files,
        );
    }
    let is_shell = |p: &Path| {
        std::fs::read_to_string(p).is_ok_and(|t| {
            t.starts_with("#!/usr/bin/env bash")
                || t.starts_with("#!/bin/sh")
                || t.starts_with("#!/bin/bash")
        })
    };
    for dir in ["scripts", "perf", ".ci"] {
        files_under(&root.join(dir), &is_shell, &mut files);
    }
    let this = Path::new(file!()).file_name().unwrap_or_default();
    let mut programs: BTreeMap<String, Vec<(PathBuf, bool)>> = BTreeMap::new();
    for f in files {
        if f.file_name() == Some(this) {
            continue; // the lists above are not executions
        }
        let text = std::fs::read_to_string(&f).unwrap_or_default();
        let found = if f.extension().is_some_and(|e| e == "rs") {
            rust_programs(&text)
        } else {
            shell_programs(&text)
        };
        let rel = f.strip_prefix(&root).unwrap_or(&f).to_path_buf();
        let bench = rel.starts_with("perf");
        for p in found {
            programs.entry(p).or_default().push((rel.clone(), bench));
        }
    }
    programs
}

#[test]
fn every_executed_program_is_installed() {
    let (always, bench) = install_list();
    let programs = executed_programs();
    assert!(
        programs.contains_key("ip") && programs.contains_key("ethtool"),
        "the scan finds nothing: {programs:?}"
    );
    let mut problems = Vec::new();
    for (prog, used_in) in &programs {
        if PRESENT.contains(&prog.as_str()) {
            continue;
        }
        let files: Vec<String> = used_in
            .iter()
            .map(|(f, _)| f.display().to_string())
            .collect();
        let Some((_, package)) = PACKAGE_OF.iter().find(|(p, _)| p == prog) else {
            problems.push(format!(
                "`{prog}` (run by {}) has no package in PACKAGE_OF of {}",
                files.join(", "),
                file!()
            ));
            continue;
        };
        let only_bench = used_in.iter().all(|(_, b)| *b);
        let installed = always.contains(*package) || (only_bench && bench.contains(*package));
        if !installed {
            problems.push(format!(
                "`{prog}` (run by {}) needs package {package}, which scripts/packages.txt does not install{}",
                files.join(", "),
                if only_bench { " (not even as bench:)" } else { "" }
            ));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn benchmark_packages_are_installed_by_their_scripts() {
    let (_, bench) = install_list();
    let mut perf = Vec::new();
    files_under(&root().join("perf"), &|_| true, &mut perf);
    let scripts: Vec<String> = perf
        .iter()
        .filter_map(|p| std::fs::read_to_string(p).ok())
        .collect();
    for package in &bench {
        assert!(
            scripts
                .iter()
                .any(|s| s.contains("apt-get") && s.contains(package.as_str())),
            "bench package {package} is installed by no script under perf/"
        );
    }
}

#[test]
fn the_scanners_find_programs() {
    let rust = "let a = Command::new(\"kill\").arg(x);\n ns.run(\n \"ip\", &[\"link\"]);\n \
                netns::run_in(&peer, \"ethtool\", &[]); Command::new(env!(\"CARGO_BIN_EXE_lb\"));";
    let got: Vec<String> = rust_programs(rust).into_iter().collect();
    assert_eq!(got, ["ethtool", "ip", "kill"]);
    let sh = "#!/usr/bin/env bash\nnsx() { ip netns exec \"$1\" \"$@\"; }\n\
              X=1 nsx \"$NS\" $NICE taskset -c 0 nginx -c f # wrk here is a comment\n\
              cat <<EOF | nft -f -\ntable ip x { trafgen }\nEOF\n\
              awk '{ print sleepy }' f && [ -n \"$A\" ] || valgrind --tool=x\n";
    let got: Vec<String> = shell_programs(sh).into_iter().collect();
    assert_eq!(
        got,
        ["awk", "cat", "ip", "nft", "nginx", "taskset", "valgrind"]
    );
}
