//! `[[http]]` in lb.toml: every routing case of ../shared/testdata/routing/cases.json written as
//! lb.toml text routes as expected through the core's table; each rule's problem is placed at its
//! line and column; TLS files are read relative to the config and checked; compile maps every key.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use controlplane::compile::{self, Context, StatSlots};
use controlplane::config::BackendKey;
use controlplane::diag::ConfigReport;
use dataplane::l7::route::{HashKey, Policy, RouteTable};
use dataplane::l7::select::{Routing, SelectState};
use dataplane::table::MaglevCache;
use serde_json::Value;

const BASE: &str = r#"[dataplane]
mac = "02:00:00:00:00:01"
addresses = ["198.18.0.1"]
gateway_mac = "02:00:00:00:00:fe"
"#;

/// A TOML string (JSON's escapes are TOML's).
fn q(s: &str) -> String {
    serde_json::to_string(s).unwrap()
}

fn cases() -> Vec<Value> {
    testkit::shared::json_array("routing/cases.json")
}

/// One case group as an operator would write it in lb.toml. What a controller decides before
/// the table (class not ours: no routes; a backendRef it cannot resolve) becomes what lb.toml
/// says for it: no route, or a route with `upstreams = []` (which answers the error).
fn lb_toml(group: &Value) -> String {
    let kind = group["kind"].as_str().unwrap();
    let missing: BTreeSet<&str> = group["missing_backends"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    let served = group["ingress_class_exists"].as_bool().unwrap_or(true);
    // (match key, hosts, path, type, method, headers, upstream refs, any unresolvable ref)
    type Row = (
        String,
        Option<String>,
        String,
        String,
        Option<String>,
        Value,
        Vec<(String, u64)>,
        bool,
    );
    let mut routes: Vec<Row> = Vec::new();
    let mut names = BTreeSet::new();
    for row in group["routes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|_| served)
    {
        let path_type = match row["path_type"].as_str().unwrap() {
            "Exact" => "exact",
            "Prefix" => "prefix",
            _ => "implementation-specific",
        };
        let path = row["path"].as_str().unwrap().to_string();
        let backend = row["backend"].as_str();
        let resolvable =
            backend.is_some_and(|b| !missing.contains(b) && row["backend_kind"].is_null());
        let refs: Vec<(String, u64)> = match backend {
            Some(b) if resolvable => {
                names.insert(b.to_string());
                vec![(b.to_string(), row["weight"].as_u64().unwrap_or(1))]
            }
            _ => vec![],
        };
        let unresolved = backend.is_some() && !resolvable;
        let key = format!(
            "{}|{}|{}|{}|{path}|{path_type}",
            row["route"], row["rule"], row["match"], row["host"]
        );
        match routes.iter_mut().find(|r| kind == "gateway" && r.0 == key) {
            Some(r) => {
                r.6.extend(refs);
                r.7 |= unresolved;
            }
            None => routes.push((
                key,
                row["host"].as_str().map(str::to_string),
                path,
                path_type.into(),
                row["method"].as_str().map(str::to_string),
                row["headers"].clone(),
                refs,
                unresolved,
            )),
        }
    }
    if let Some(d) = group["default_backend"].as_str() {
        names.insert(d.to_string());
    }
    let mut t = format!(
        "{BASE}\n[[http]]\nname = {}\nlisten = [\"198.18.0.10:80\"]\n",
        q(group["id"].as_str().unwrap())
    );
    if let Some(d) = group["default_backend"].as_str() {
        writeln!(t, "default_upstream = {}", q(d)).unwrap();
    }
    for (s, name) in names.iter().enumerate() {
        let replicas = group["backend_replicas"][name.as_str()]
            .as_u64()
            .unwrap_or(1);
        let backends: Vec<String> = (0..replicas)
            .map(|i| format!("{{ addr = \"10.{s}.0.{i}\", port = 8080 }}"))
            .collect();
        writeln!(
            t,
            "\n[[http.upstreams]]\nname = {}\nbackends = [{}]",
            q(name),
            backends.join(", ")
        )
        .unwrap();
    }
    for (_, host, path, path_type, method, headers, refs, unresolved) in &routes {
        writeln!(
            t,
            "\n[[http.routes]]\nkind = \"{kind}\"\npath = {}\npath_type = \"{path_type}\"",
            q(path)
        )
        .unwrap();
        if let Some(h) = host {
            writeln!(t, "hosts = [{}]", q(h)).unwrap();
        }
        if let Some(m) = method {
            writeln!(t, "method = {}", q(m)).unwrap();
        }
        if let Some(h) = headers.as_object() {
            let pairs: Vec<String> = h
                .iter()
                .map(|(k, v)| format!("{} = {}", q(k), q(v.as_str().unwrap())))
                .collect();
            writeln!(t, "headers = {{ {} }}", pairs.join(", ")).unwrap();
        }
        // Gateway API: one unresolvable backendRef makes the whole rule answer 500.
        let refs: Vec<String> = if *unresolved {
            vec![]
        } else {
            refs.iter()
                .map(|(n, w)| format!("{{ name = {}, weight = {w} }}", q(n)))
                .collect()
        };
        writeln!(t, "upstreams = [{}]", refs.join(", ")).unwrap();
    }
    t
}

#[test]
fn every_routing_case_written_as_lb_toml_routes_as_expected() {
    let mut failures = Vec::new();
    let mut passed = 0;
    for group in cases() {
        let text = lb_toml(&group);
        let (_, compiled) = compile::check_str(&text, Path::new("lb.toml"))
            .unwrap_or_else(|r| panic!("{}: refused:\n{r}\n---\n{text}", group["id"]));
        assert_eq!(compiled.http.len(), 1);
        let table = RouteTable::compile(&compiled.http[0].routes);
        let mut state = SelectState::new(&table);
        let mut routing = Routing {
            table: &table,
            state: &mut state,
        };
        for request in group["requests"].as_array().unwrap() {
            match testkit::shared::check_routing_request(&mut routing, request) {
                Ok(()) => passed += 1,
                Err(e) => failures.push(format!(
                    "{} {} {}: {e}",
                    group["id"], request["host"], request["path"]
                )),
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert_eq!(passed, 160);
}

/// The text without `@@` markers and the (line, column) of each marker.
fn unmark(marked: &str) -> (String, Vec<(usize, usize)>) {
    let mut text = String::new();
    let mut at = Vec::new();
    for (i, part) in marked.split("@@").enumerate() {
        if i > 0 {
            at.push(controlplane::diag::line_column(&text, text.len()));
        }
        text.push_str(part);
    }
    (text, at)
}

fn report_at(text: &str, path: &Path) -> Option<ConfigReport> {
    compile::check_str(text, path).err()
}

/// Asserts `marked` (lb.toml after BASE) gets one problem per marker, at the marker, in file
/// order, each naming its word.
#[track_caller]
fn case(name: &str, marked: &str, words: &[&str]) {
    case_at(
        name,
        &format!("{BASE}{marked}"),
        words,
        Path::new("lb.toml"),
    );
}

#[track_caller]
fn case_at(name: &str, marked: &str, words: &[&str], path: &Path) {
    let (text, at) = unmark(marked);
    assert_eq!(at.len(), words.len(), "{name}: one word per marker");
    let Some(r) = report_at(&text, path) else {
        panic!("{name}: accepted, expected {} problem(s)\n{text}", at.len());
    };
    let got: Vec<(usize, usize)> = r.diagnostics.iter().map(|d| (d.line, d.column)).collect();
    assert_eq!(got, at, "{name}: places differ\n{r}\n---\n{text}");
    for (d, w) in r.diagnostics.iter().zip(words) {
        let said = format!("{} {}", d.message, d.hint.as_deref().unwrap_or(""));
        assert!(said.contains(w), "{name}: {said:?} does not name {w:?}");
    }
}

/// An `[[http]]` with upstream `app` (two backends) and `extra` after its first route.
fn http(extra: &str) -> String {
    format!(
        "[[http]]\nname = \"web\"\nlisten = [\"198.18.0.10:80\"]\n\
         [[http.upstreams]]\nname = \"app\"\nbackends = [{{ addr = \"198.18.1.10\", port = 8080 }}, {{ addr = \"198.18.1.11\", port = 8080 }}]\n\
         [[http.routes]]\nhosts = [\"www.example.com\"]\nupstreams = [{{ name = \"app\" }}]\n{extra}"
    )
}

#[test]
fn the_template_is_valid() {
    let text = format!("{BASE}{}", http(""));
    assert!(
        report_at(&text, Path::new("lb.toml")).is_none(),
        "{}",
        report_at(&text, Path::new("lb.toml")).unwrap()
    );
}

#[test]
fn names_listeners_and_upstream_references() {
    case(
        "duplicate name",
        &format!(
            "{}[[http]]\nname = @@\"web\"\nlisten = [\"198.18.0.11:80\"]\n",
            http("")
        ),
        &["already used"],
    );
    case(
        "empty listen",
        "[[http]]\nname = \"w\"\nlisten = @@[]\n",
        &["listen is empty"],
    );
    case(
        "port 0",
        "[[http]]\nname = \"w\"\nlisten = [@@\"198.18.0.10:0\"]\n",
        &["port 0"],
    );
    case(
        "same socket twice",
        &format!(
            "{}[[http]]\nname = \"b\"\nlisten = [@@\"198.18.0.10:80\"]\n",
            http("")
        ),
        &["by http web"],
    );
    case(
        "a wildcard address overlaps every address of its family",
        &format!(
            "{}[[http]]\nname = \"b\"\nlisten = [\"[::]:80\", @@\"0.0.0.0:80\", \"0.0.0.0:81\", @@\"0.0.0.0:81\"]\n",
            http("")
        ),
        &["198.18.0.10:80", "here"],
    );
    case(
        "an L4 service's VIP and port",
        &format!(
            "[[services]]\nname = \"l4\"\nvip = \"198.18.0.10\"\nprotocol = \"tcp\"\nports = [\"70-90\"]\n{}",
            http("").replace("listen = [\"198.18.0.10:80\"]", "listen = [@@\"198.18.0.10:80\"]")
        ),
        &["service l4"],
    );
    case(
        "a udp service on the same port is no clash",
        &format!(
            "[[services]]\nname = \"l4\"\nvip = \"198.18.0.10\"\nprotocol = \"udp\"\nports = [80]\n{}[[http.routes]]\nupstreams = [{{ name = @@\"ap\" }}]\n",
            http("")
        ),
        &["did you mean \"app\""],
    );
    case(
        "unknown default",
        &format!(
            "{}[[http]]\nname = \"x\"\nlisten = [\"[::1]:80\"]\ndefault_upstream = @@\"app\"\n",
            http("")
        ),
        &["define it"],
    );
    case(
        "upstream listed twice, weight too large, all zero",
        &http("[[http.routes]]\npath = \"/a\"\nupstreams = [{ name = \"app\" }, { name = @@\"app\" }, ]\n[[http.routes]]\npath = \"/b\"\nupstreams = [{ name = \"app\", weight = @@2000000 }]\n[[http.routes]]\npath = \"/c\"\nupstreams = @@[{ name = \"app\", weight = 0 }]\n"),
        &["listed twice", "above 1000000", "weight 0"],
    );
    case(
        "a route that can never match",
        &http("@@[[http.routes]]\nhosts = [\"WWW.example.com\"]\npath = \"/\"\nupstreams = []\n"),
        &["route #1"],
    );
}

#[test]
fn hosts_and_paths() {
    for (host, word) in [
        ("foo..com", "empty label"),
        ("a.*.com", "wildcard"),
        ("www.example.com:80", "port"),
        ("*", "bare wildcard"),
        ("", "empty"),
        ("b\u{e4}r.com", "punycode"),
    ] {
        case(
            host,
            &http(&format!(
                "[[http.routes]]\nhosts = [@@{}]\nupstreams = []\n",
                q(host)
            )),
            &[word],
        );
    }
    for (path, word) in [
        ("api", "'/'"),
        ("/a b", "spaces"),
        ("/a\u{1}b", "control"),
        ("/a?x=1", "query"),
    ] {
        case(
            path,
            &http(&format!(
                "[[http.routes]]\npath = @@{}\nupstreams = []\n",
                q(path)
            )),
            &[word],
        );
    }
    case(
        "ingress routes match no method or header",
        &http("[[http.routes]]\npath = \"/m\"\nmethod = @@\"GET\"\nheaders = @@{ x = \"1\" }\nupstreams = []\n"),
        &["kind = \"gateway\"", "kind = \"gateway\""],
    );
    case(
        "gateway matches are checked",
        &http("[[http.routes]]\nkind = \"gateway\"\nmethod = @@\"G T\"\nheaders = { \"x y\" = @@\"1\", X-A = \"1\", x-a = @@\"2\" }\nupstreams = []\n"),
        &["not an HTTP method", "not a header name", "twice"],
    );
    case(
        "ingress routes match no cookie",
        &http(
            "[[http.routes]]\npath = \"/c\"\ncookies = @@{ canary = \"always\" }\nupstreams = []\n",
        ),
        &["kind = \"gateway\""],
    );
    case(
        "cookie matches are checked",
        &http("[[http.routes]]\nkind = \"gateway\"\ncookies = { \"a b\" = @@\"1\", c = @@\"x;y\", d = @@\"\" }\nupstreams = []\n"),
        &["not a cookie name", "not a cookie value", "not a cookie value"],
    );
}

#[test]
fn upstreams_limits_and_timeouts() {
    case(
        "backends",
        "[[http]]\nname = \"w\"\nlisten = [\"198.18.0.10:80\"]\n[[http.upstreams]]\nname = \"a\"\nbackends = @@[]\n[[http.upstreams]]\nname = \"b\"\nbackends = [{ addr = \"198.18.1.1\", port = 80 }, { addr = @@\"198.18.1.1\", port = 80 }, { addr = @@\"0.0.0.0\", port = 80 }]\n",
        &["no backends", "twice", "unspecified"],
    );
    case(
        "hash_key without hash",
        "[[http]]\nname = \"w\"\nlisten = [\"198.18.0.10:80\"]\n[[http.upstreams]]\nname = \"a\"\nhash_key = @@\"client-ip\"\nbackends = [{ addr = \"198.18.1.1\", port = 80 }]\n",
        &["balance = \"hash\""],
    );
    case(
        "sticky without its cookie",
        "[[http]]\nname = \"w\"\nlisten = [\"198.18.0.10:80\"]\n[[http.upstreams]]\nname = \"a\"\nbalance = @@\"sticky\"\nhash_key = \"client-ip\"\nbackends = [{ addr = \"198.18.1.1\", port = 80 }]\n",
        &["needs the cookie it sets"],
    );
    case(
        "bad hash_key",
        "[[http]]\nname = \"w\"\nlisten = [\"198.18.0.10:80\"]\n[[http.upstreams]]\nname = \"a\"\nbalance = \"hash\"\nhash_key = @@\"query:x\"\nbackends = [{ addr = \"198.18.1.1\", port = 80 }]\n",
        &["header:NAME"],
    );
    case(
        "balance typo",
        "[[http]]\nname = \"w\"\nlisten = [\"198.18.0.10:80\"]\n[[http.upstreams]]\nname = \"a\"\nbalance = @@\"round_robin\"\nbackends = [{ addr = \"198.18.1.1\", port = 80 }]\n",
        &["did you mean `round-robin`"],
    );
    case(
        "route key typo",
        &http("[[http.routes]]\n@@path_typ = \"exact\"\nupstreams = []\n"),
        &["did you mean `path_type`"],
    );
    case(
        "health check rules",
        "[[http]]\nname = \"w\"\nlisten = [\"198.18.0.10:80\"]\n[[http.upstreams]]\nname = \"a\"\nbackends = [{ addr = \"198.18.1.1\", port = 80 }]\n[http.upstreams.health_check]\nkind = \"http\"\ninterval = @@\"0s\"\n",
        &["interval must be above 0"],
    );
    case(
        "limits",
        "[[http]]\nname = \"w\"\nlisten = [\"198.18.0.10:80\"]\n[http.limits]\nmax_headers = @@0\nmax_head = 8192\nbuffer = @@1024\n",
        &["max_headers", "must fit in the buffer"],
    );
    case(
        "timeouts",
        "[[http]]\nname = \"w\"\nlisten = [\"198.18.0.10:80\"]\n[http.timeouts]\nidle = @@\"0s\"\nconnect = @@\"2m\"\n",
        &["idle must be above 0", "no other backend"],
    );
}

/// A directory of its own under the temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("lb-http-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("certs")).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Writes a self-signed certificate for `name` and its key as `certs/{file}.pem` and `.key`.
fn write_cert(dir: &Path, file: &str, name: &str) {
    let c = rcgen::generate_simple_self_signed(vec![name.to_string()]).unwrap();
    std::fs::write(dir.join(format!("certs/{file}.pem")), c.cert.pem()).unwrap();
    std::fs::write(
        dir.join(format!("certs/{file}.key")),
        c.key_pair.serialize_pem(),
    )
    .unwrap();
}

fn tls_http(certs: &str) -> String {
    format!(
        "{BASE}[[http]]\nname = \"w\"\nlisten = [\"198.18.0.10:443\"]\ndefault_upstream = \"a\"\n\
         [[http.upstreams]]\nname = \"a\"\nbackends = [{{ addr = \"198.18.1.1\", port = 80 }}]\n{certs}"
    )
}

#[test]
fn tls_files_are_read_next_to_the_config_and_checked() {
    let dir = TempDir::new("tls");
    write_cert(&dir.0, "a", "a.example");
    write_cert(&dir.0, "b", "b.example");
    std::fs::write(dir.0.join("certs/junk.pem"), "hello\n").unwrap();
    let config = dir.0.join("lb.toml");

    let good = tls_http(
        "[[http.tls]]\ncert = \"certs/a.pem\"\nkey = \"certs/a.key\"\nsni = [\"a.example\"]\n\
         [[http.tls]]\ncert = \"certs/b.pem\"\nkey = \"certs/b.key\"\nsni = [\"b.example\", \"*.b.example\"]\ndefault = true\n",
    );
    let (_, compiled) = compile::check_str(&good, &config).unwrap_or_else(|r| panic!("{r}"));
    let names: Vec<(Vec<String>, PathBuf)> = compiled.http[0]
        .tls
        .iter()
        .map(|c| (c.names.clone(), c.cert.clone()))
        .collect();
    assert_eq!(
        names,
        vec![
            (
                vec!["b.example".into(), "*.b.example".into()],
                dir.0.join("certs/b.pem")
            ),
            (vec!["a.example".into()], dir.0.join("certs/a.pem")),
        ],
        "the default first, paths from the config's directory"
    );

    case_at(
        "missing, not PEM, foreign key",
        &tls_http(
            "[[http.tls]]\ncert = @@\"certs/none.pem\"\nkey = \"certs/a.key\"\n\
             [[http.tls]]\ncert = @@\"certs/junk.pem\"\nkey = \"certs/a.key\"\n\
             [[http.tls]]\ncert = \"certs/a.pem\"\nkey = @@\"certs/junk.pem\"\n\
             [[http.tls]]\ncert = \"certs/a.pem\"\nkey = @@\"certs/b.key\"\n",
        ),
        &[
            "cannot read",
            "no CERTIFICATE",
            "no PRIVATE KEY",
            "does not fit",
        ],
        &config,
    );
    case_at(
        "sni names and defaults",
        &tls_http(
            "[[http.tls]]\ncert = \"certs/a.pem\"\nkey = \"certs/a.key\"\nsni = [\"a.example\", @@\"a.*\"]\ndefault = @@true\n\
             [[http.tls]]\ncert = \"certs/b.pem\"\nkey = \"certs/b.key\"\nsni = [@@\"A.example\"]\ndefault = @@true\n",
        ),
        &["wildcard", "2 certificates", "already served", "2 certificates"],
        &config,
    );
}

#[test]
fn compile_maps_limits_timeouts_policies_and_runtime_weights() {
    let text = format!(
        "{BASE}[[http]]\nname = \"web\"\nlisten = [\"198.18.0.10:80\", \"[2001:db8::10]:80\"]\ndefault_upstream = \"h\"\n\
         [http.timeouts]\nrequest = \"30s\"\nconnect = \"250ms\"\n[http.limits]\nmax_body = 1024\n\
         [[http.upstreams]]\nname = \"h\"\nbalance = \"hash\"\nhash_key = \"cookie:session\"\n\
         backends = [{{ addr = \"198.18.1.10\", port = 8080, weight = 3 }}, {{ addr = \"198.18.1.11\", port = 8080 }}]\n\
         [[http.upstreams]]\nname = \"l\"\nbalance = \"least-requests\"\nbackends = [{{ addr = \"198.18.1.12\", port = 80 }}]\n\
         [[http.routes]]\nkind = \"gateway\"\nhosts = [\"*.example.com\"]\npath = \"/v2\"\npath_type = \"exact\"\nmethod = \"POST\"\n\
         headers = {{ X-Canary = \"1\" }}\nupstreams = [{{ name = \"h\", weight = 90 }}, {{ name = \"l\", weight = 10 }}]\n"
    );
    let (cfg, compiled) =
        compile::check_str(&text, Path::new("lb.toml")).unwrap_or_else(|r| panic!("{r}"));
    let l = &compiled.http[0];
    assert_eq!(l.name, "web");
    assert_eq!(l.listen.len(), 2);
    assert!(l.tls.is_empty());
    let core = dataplane::l7::ConnConfig::default();
    assert_eq!(l.conn.timeouts.total, 30_000);
    assert_eq!(l.conn.timeouts.connect, 250);
    assert_eq!(l.conn.timeouts.idle, core.timeouts.idle);
    assert_eq!(l.conn.limits.max_body, 1024);
    assert_eq!(l.conn.limits.max_head, core.limits.max_head);
    assert_eq!(l.conn.buffer, core.buffer);
    let s = &l.routes;
    assert_eq!(
        s.services[0].policy,
        Policy::Hash(HashKey::Cookie("session".into()))
    );
    assert_eq!(s.services[1].policy, Policy::LeastOutstanding);
    assert_eq!(
        s.services[0]
            .endpoints
            .iter()
            .map(|e| e.weight)
            .collect::<Vec<_>>(),
        vec![3, 1]
    );
    assert_eq!(
        s.default_backend.as_ref().map(|b| b.service.as_str()),
        Some("h")
    );
    let r = &s.routes[0];
    assert_eq!(r.method.as_deref(), Some("POST"));
    assert_eq!(r.headers, vec![("X-Canary".to_string(), "1".to_string())]);
    assert_eq!(
        r.backends
            .iter()
            .map(|b| (b.service.as_str(), b.weight))
            .collect::<Vec<_>>(),
        vec![("h", 90), ("l", 10)]
    );

    // Overrides and health reach L7 backends by their key, `http/upstream/addr:port`.
    let drained: BackendKey = "web/h/198.18.1.10:8080".parse().unwrap();
    let down: BackendKey = "web/h/198.18.1.11:8080".parse().unwrap();
    let adjust = |k: &BackendKey, w: u32| match k {
        k if *k == drained => Some(0),
        k if *k == down => None,
        _ => Some(w),
    };
    let again = compile::compile_with(
        &cfg,
        2,
        &mut Context {
            adjust: &adjust,
            slots: &mut StatSlots::default(),
            cache: &mut MaglevCache::default(),
            draining: &compile::Draining::default(),
        },
    )
    .unwrap();
    let endpoints: Vec<(String, u32)> = again.http[0].routes.services[0]
        .endpoints
        .iter()
        .map(|e| (e.addr.to_string(), e.weight))
        .collect();
    assert_eq!(endpoints, vec![("198.18.1.10:8080".to_string(), 0)]);
}

/// An `[[http]]` whose upstream `a` has `keys` (after its backends) and then `tls`.
fn upstream_http(keys: &str, tls: &str) -> String {
    format!(
        "{BASE}[[http]]\nname = \"w\"\nlisten = [\"198.18.0.10:80\"]\ndefault_upstream = \"a\"\n\
         [[http.upstreams]]\nname = \"a\"\nbackends = [{{ addr = \"198.18.1.1\", port = 443 }}]\n{keys}{tls}"
    )
}

#[test]
fn upstream_proxy_protocol_and_tls_are_compiled_and_checked() {
    use dataplane::l7::upstream::{BackendTlsSpec, ProxyProtocol, UpstreamSpec};
    let dir = TempDir::new("upstream-tls");
    write_cert(&dir.0, "ca", "ca.example");
    std::fs::write(dir.0.join("certs/junk.pem"), "hello\n").unwrap();
    let config = dir.0.join("lb.toml");

    let good = upstream_http(
        "proxy_protocol = \"v2\"\n",
        "[http.upstreams.tls]\nca = \"certs/ca.pem\"\nserver_name = \"api.internal\"\n",
    );
    let (_, compiled) = compile::check_str(&good, &config).unwrap_or_else(|r| panic!("{r}"));
    assert_eq!(
        compiled.http[0].routes.services[0].upstream,
        UpstreamSpec {
            proxy_protocol: Some(ProxyProtocol::V2),
            tls: Some(BackendTlsSpec {
                ca: Some(dir.0.join("certs/ca.pem")),
                server_name: Some("api.internal".into()),
                insecure_skip_verify: false,
            }),
        },
        "the CA path from the config's directory"
    );
    let insecure = upstream_http("", "[http.upstreams.tls]\ninsecure_skip_verify = true\n");
    assert!(compile::check_str(&insecure, &config).is_ok());

    for (name, tls, word) in [
        (
            "missing CA file",
            "[http.upstreams.tls]\nca = @@\"certs/none.pem\"\n",
            "cannot read",
        ),
        (
            "not PEM",
            "[http.upstreams.tls]\nca = @@\"certs/junk.pem\"\n",
            "no CERTIFICATE",
        ),
        (
            "bad server name",
            "[http.upstreams.tls]\nca = \"certs/ca.pem\"\nserver_name = @@\"not a name\"\n",
            "not a DNS name",
        ),
        (
            "ca and insecure",
            "[http.upstreams.tls]\nca = \"certs/ca.pem\"\ninsecure_skip_verify = @@true\n",
            "would not be used",
        ),
    ] {
        case_at(name, &upstream_http("", tls), &[word], &config);
    }
    // No CA and verification on: refused (the problem is the table's).
    let r = report_at(
        &upstream_http("", "[http.upstreams.tls]\nserver_name = \"x.example\"\n"),
        &config,
    )
    .expect("refused");
    assert!(r.to_string().contains("no ca"), "{r}");
    let r = report_at(&upstream_http("proxy_protocol = \"v1\"\n", ""), &config).expect("refused");
    assert!(r.to_string().contains("v2"), "{r}");
}

#[test]
fn redirect_and_request_headers_are_compiled() {
    use dataplane::l7::route::{
        HeaderModifier, PathRewrite, Redirect, RedirectStatus, RequestView, Scheme, Target,
    };
    let text = format!(
        "{}[[http.routes]]\nhosts = [\"old.example.com\"]\npath = \"/v1\"\n\
         redirect = {{ scheme = \"https\", host = \"new.example.com\", port = 8443, path_prefix = \"/v2\", status = 301 }}\n\
         [[http.routes]]\nhosts = [\"old.example.com\"]\npath = \"/home\"\npath_type = \"exact\"\nredirect = {{ path = \"/\" }}\n\
         [[http.routes]]\nhosts = [\"api.example.com\"]\nupstreams = [{{ name = \"app\" }}]\n\
         request_headers = {{ set = {{ X-Env = \"prod\" }}, add = {{ X-Tag = \"a b\" }}, remove = [\"X-Debug\"] }}\n",
        BASE.to_string() + &http("")
    );
    let (_, compiled) =
        compile::check_str(&text, Path::new("lb.toml")).unwrap_or_else(|r| panic!("{r}"));
    let routes = &compiled.http[0].routes.routes;
    assert_eq!(
        routes[1].redirect,
        Some(Redirect {
            scheme: Some(Scheme::Https),
            host: Some("new.example.com".into()),
            port: Some(8443),
            path: Some(PathRewrite::ReplacePrefix("/v2".into())),
            status: RedirectStatus::MovedPermanently,
        })
    );
    assert!(routes[1].backends.is_empty());
    assert_eq!(
        routes[2].redirect,
        Some(Redirect {
            path: Some(PathRewrite::ReplaceFull("/".into())),
            ..Default::default()
        })
    );
    assert_eq!(routes[1].request_headers, None);
    assert_eq!(
        routes[3].request_headers,
        Some(HeaderModifier {
            set: vec![("X-Env".into(), "prod".into())],
            add: vec![("X-Tag".into(), "a b".into())],
            remove: vec!["X-Debug".into()],
        })
    );
    // The table answers the redirects itself.
    let table = RouteTable::compile(&compiled.http[0].routes);
    let view = RequestView::from_parts("old.example.com", "/v1/x?y", "GET", &[]);
    let matched = table.matched(&view);
    let rule = matched.redirect.expect("a redirect");
    let mut location = Vec::new();
    rule.write_location(
        &dataplane::l7::filters::RedirectFrom {
            tls: false,
            host: b"old.example.com",
            target: b"/v1/x?y",
        },
        &mut location,
    );
    assert_eq!(location, b"https://new.example.com:8443/v2/x?y");
    let api = RequestView::from_parts("api.example.com", "/", "GET", &[]);
    assert!(table.matched(&api).request_headers.is_some());
    assert!(matches!(table.lookup(&api), Target::Split(_)));
}

#[test]
fn redirect_keys_are_checked() {
    case(
        "redirect with upstreams, bad status",
        &http("[[http.routes]]\npath = \"/r\"\nupstreams = @@[{ name = \"app\" }]\nredirect = { status = @@307 }\n"),
        &["redirects", "not 301 or 302"],
    );
    case(
        "redirect host, port, path",
        &http("[[http.routes]]\npath = \"/r\"\nredirect = { host = @@\"a.test:80\", port = @@0, path = @@\"new\" }\n"),
        &["not a host name", "port 0", "must start with '/'"],
    );
    case(
        "path and path_prefix",
        &http("[[http.routes]]\npath = \"/r\"\nredirect = { path = \"/a\", path_prefix = @@\"/b\" }\n"),
        &["both path and path_prefix"],
    );
    case(
        "path_prefix on an exact route",
        &http("[[http.routes]]\npath = \"/r\"\npath_type = \"exact\"\nredirect = { path_prefix = @@\"/b\" }\n"),
        &["use path ="],
    );
    case(
        "path_prefix with a query",
        &http("[[http.routes]]\npath = \"/r\"\nredirect = { path_prefix = @@\"/b?x\" }\n"),
        &["no query"],
    );
    case(
        "scheme typo",
        &http("[[http.routes]]\npath = \"/r\"\nredirect = { scheme = @@\"ftp\" }\n"),
        &["http"],
    );
    case(
        "redirect key typo",
        &http("[[http.routes]]\npath = \"/r\"\nredirect = { @@hostname = \"a.test\" }\n"),
        &["host"],
    );
}

#[test]
fn request_header_keys_are_checked() {
    case(
        "protected, bad names and values, repeated",
        &http("[[http.routes]]\npath = \"/h\"\nupstreams = [{ name = \"app\" }]\nrequest_headers = { set = { Content-Length = @@\"0\", X-A = \"1\", x-a = @@\"2\" }, add = { \"X B\" = @@\"1\", X-C = @@\"1\\r\\nX-Evil: 1\" }, remove = [@@\"Host\", \"X-D\", @@\"x-d\"] }\n"),
        &["Content-Length", "twice", "not a header name", "control", "Host", "twice"],
    );
    case(
        "request_headers on a redirect",
        &http("[[http.routes]]\npath = \"/h\"\nredirect = { host = \"a.test\" }\nrequest_headers = @@{ remove = [\"X-A\"] }\n"),
        &["no request is sent on"],
    );
    case(
        "request_headers key typo",
        &http("[[http.routes]]\npath = \"/h\"\nupstreams = []\nrequest_headers = { @@append = { X-A = \"1\" } }\n"),
        &["add"],
    );
}
