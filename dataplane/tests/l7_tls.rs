//! TLS termination through the mio transport: two SNI names with certificates made at test time
//! (rcgen, signed by a test CA; nothing is committed), checked with a rustls client (which
//! certificate each name gets) and with curl (`--resolve`, `--cacert`: routed by host).

mod l7_net;

use arc_swap::ArcSwap;
use dataplane::l7::tls::{server_config, CertSpec, TlsError, TlsSpec};
use dataplane::l7::{RouteTable, TableSpec};
use dataplane::net::{ListenerSpec, Proxy, ProxyConfig};
use l7_net::*;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
use rustls::pki_types::{CertificateDer, ServerName};
use std::io::{BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

/// A directory removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("l7-tls-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A CA and one leaf per name, written as PEM files; returns (CA PEM path, leaf DERs, specs).
fn make_certs(
    dir: &Path,
    names: &[&str],
) -> (PathBuf, Vec<CertificateDer<'static>>, Vec<CertSpec>) {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    // Distinct subjects: a leaf whose issuer equals its subject looks self-signed to OpenSSL.
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "lb test CA");
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let ca_path = dir.join("ca.pem");
    std::fs::write(&ca_path, ca.pem()).unwrap();
    let (mut ders, mut specs) = (Vec::new(), Vec::new());
    for name in names {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec![name.to_string()]).unwrap();
        params.distinguished_name.push(DnType::CommonName, *name);
        let cert = params.signed_by(&key, &ca, &ca_key).unwrap();
        let (cert_path, key_path) = (
            dir.join(format!("{name}.pem")),
            dir.join(format!("{name}.key")),
        );
        std::fs::write(&cert_path, cert.pem()).unwrap();
        std::fs::write(&key_path, key.serialize_pem()).unwrap();
        ders.push(cert.der().clone());
        specs.push(CertSpec {
            names: vec![name.to_string()],
            cert: cert_path,
            key: key_path,
        });
    }
    (ca_path, ders, specs)
}

fn tls_proxy(spec: &TableSpec, tls: TlsSpec) -> Proxy {
    let routes = Arc::new(ArcSwap::from_pointee(RouteTable::compile(spec)));
    let config = ProxyConfig {
        listeners: vec![ListenerSpec {
            addr: "127.0.0.1:0".parse().unwrap(),
            tls: Some(server_config(&tls).unwrap()),
        }],
        workers: 1,
        linger: 500,
        ..ProxyConfig::default()
    };
    Proxy::start(config, routes).unwrap()
}

/// Connects with rustls as `name`; returns the leaf certificate seen and the response to a GET.
fn rustls_get(addr: SocketAddr, ca: &Path, name: &str) -> (CertificateDer<'static>, Response) {
    let mut roots = rustls::RootCertStore::empty();
    let pem = std::fs::read(ca).unwrap();
    use rustls::pki_types::pem::PemObject;
    for c in CertificateDer::pem_slice_iter(&pem) {
        roots.add(c.unwrap()).unwrap();
    }
    let provider = dataplane::l7::tls::provider();
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let conn = rustls::ClientConnection::new(
        Arc::new(config),
        ServerName::try_from(name.to_owned()).unwrap(),
    )
    .unwrap();
    let sock = TcpStream::connect(addr).unwrap();
    sock.set_read_timeout(Some(IO_LIMIT)).unwrap();
    let mut tls = rustls::StreamOwned::new(conn, sock);
    tls.write_all(format!("GET / HTTP/1.1\r\nhost: {name}\r\n\r\n").as_bytes())
        .unwrap();
    tls.flush().unwrap();
    let leaf = tls.conn.peer_certificates().unwrap()[0]
        .clone()
        .into_owned();
    assert_eq!(tls.conn.alpn_protocol(), Some(&b"http/1.1"[..]));
    let r = read_response(&mut BufReader::new(tls)).expect("a response over TLS");
    (leaf, r)
}

#[test]
fn sni_picks_the_certificate_and_the_host_picks_the_route() {
    let dir = TempDir::new("sni");
    let names = ["one.test", "two.test"];
    let (ca, ders, certs) = make_certs(&dir.0, &names);
    let backends: Vec<Backend> = names
        .iter()
        .map(|n| Backend::start(n, Mode::Name))
        .collect();
    let spec = TableSpec {
        services: backends.iter().map(service).collect(),
        routes: names.iter().map(|n| route(&[n], "/", n)).collect(),
        default_backend: None,
    };
    let proxy = tls_proxy(&spec, TlsSpec { certs });
    let addr = proxy.local_addrs()[0];
    for (i, name) in names.iter().enumerate() {
        let (leaf, r) = rustls_get(addr, &ca, name);
        assert_eq!(leaf, ders[i], "{name} gets its own certificate");
        assert_eq!((r.status, r.text().as_str()), (200, *name));
        let seen = backends[i].seen().pop().unwrap();
        assert_eq!(seen.header("x-forwarded-proto"), Some("https"));
    }
    // curl, as a user would run it.
    let port = addr.port();
    for name in names {
        let out = Command::new("curl")
            .args(["-sS", "--max-time", "10", "--cacert"])
            .arg(&ca)
            .arg("--resolve")
            .arg(format!("{name}:{port}:127.0.0.1"))
            .arg(format!("https://{name}:{port}/"))
            .output()
            .expect("curl runs");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(String::from_utf8_lossy(&out.stdout), name);
    }
    // A name no certificate has gets the default (the first): curl refuses it.
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "10", "--cacert"])
        .arg(&ca)
        .arg("--resolve")
        .arg(format!("three.test:{port}:127.0.0.1"))
        .arg(format!("https://three.test:{port}/"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    proxy.stop().unwrap();
}

#[test]
fn garbage_instead_of_a_handshake_is_counted_and_closed() {
    let dir = TempDir::new("junk");
    let (_, _, certs) = make_certs(&dir.0, &["one.test"]);
    let b = Backend::start("one", Mode::Name);
    let proxy = tls_proxy(&catch_all(&b), TlsSpec { certs });
    let mut c = Client::connect(proxy.local_addrs()[0]);
    c.send(b"GET / HTTP/1.1\r\nhost: one.test\r\n\r\n");
    let mut rest = Vec::new();
    use std::io::Read;
    c.reader.read_to_end(&mut rest).expect("closed, not hung");
    assert!(b.seen().is_empty());
    assert_eq!(stop_and_count(proxy).tls_failed, 1);
}

#[test]
fn a_key_of_another_certificate_is_an_error_naming_the_key_file() {
    let dir = TempDir::new("mismatch");
    let (_, _, mut certs) = make_certs(&dir.0, &["one.test", "two.test"]);
    certs[0].key = certs[1].key.clone();
    let err = server_config(&TlsSpec {
        certs: certs[..1].to_vec(),
    })
    .unwrap_err();
    assert!(matches!(err, TlsError::Key { .. }), "{err}");
    assert!(err.to_string().contains("two.test.key"), "{err}");
}

#[test]
fn a_new_certificate_applies_to_new_handshakes_on_the_same_socket() {
    let dir = TempDir::new("renew");
    let (old_dir, new_dir) = (dir.0.join("old"), dir.0.join("new"));
    std::fs::create_dir_all(&old_dir).unwrap();
    std::fs::create_dir_all(&new_dir).unwrap();
    let (old_ca, old_ders, old_certs) = make_certs(&old_dir, &["one.test"]);
    let (new_ca, new_ders, new_certs) = make_certs(&new_dir, &["one.test"]);
    let b = Backend::start("one", Mode::Name);
    let mut proxy = tls_proxy(&catch_all(&b), TlsSpec { certs: old_certs });
    let addr = proxy.local_addrs()[0];
    assert_eq!(rustls_get(addr, &old_ca, "one.test").0, old_ders[0]);
    proxy
        .update_listeners(vec![ListenerSpec {
            addr,
            tls: Some(server_config(&TlsSpec { certs: new_certs }).unwrap()),
        }])
        .unwrap();
    assert_eq!(proxy.local_addrs(), [addr], "the same socket");
    let (leaf, r) = rustls_get(addr, &new_ca, "one.test");
    assert_eq!((leaf, r.status), (new_ders[0].clone(), 200));
    proxy.stop().unwrap();
}
