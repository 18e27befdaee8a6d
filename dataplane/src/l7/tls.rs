//! TLS glue: certificates from PEM files chosen by SNI (termination), client settings for TLS to
//! backends ([`client_config`]), and a session that sits between a transport and the HTTP core
//! (TLS records in, plaintext out, and back), server or client side.
//!
//! rustls is sans-IO already: [`TlsSession`] only narrows its API to what a transport needs and
//! turns its errors into values. Certificates are loaded whole before a listener uses them: a bad
//! or missing file is a [`TlsError`] naming the file, never a half-loaded certificate set.

use super::upstream::BackendTlsSpec;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{ClientConfig, ClientConnection};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::server::{ClientHello, ResolvesServerCert, ServerConfig, ServerConnection};
use rustls::sign::CertifiedKey;
use rustls::{Connection, DigitallySignedStruct, RootCertStore, SignatureScheme};
use rustls_pki_types::pem;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The only application protocol offered: the core speaks HTTP/1.1.
pub const ALPN_HTTP11: &[u8] = b"http/1.1";

/// One certificate (chain) and its key, and the host names it serves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertSpec {
    /// SNI names (exact, or `*.suffix` for one label); empty: only as the default.
    pub names: Vec<String>,
    /// PEM file with the certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM file with the private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

/// The certificates of one TLS listener.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TlsSpec {
    /// Certificates; the first is the default (no SNI, or a name no certificate has).
    pub certs: Vec<CertSpec>,
}

/// Why a listener's TLS settings could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// No certificate at all.
    #[error("a TLS listener needs at least one certificate")]
    NoCertificates,
    /// A file could not be read.
    #[error("{}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// A file is not the PEM it should be, or holds none of what it should.
    #[error("{}: {what}", path.display())]
    Pem {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        what: String,
    },
    /// The key cannot be used or does not belong to the certificate.
    #[error("{}: {what}", path.display())]
    Key {
        /// The key file.
        path: PathBuf,
        /// What is wrong.
        what: String,
    },
    /// rustls refused the configuration.
    #[error("TLS configuration: {0}")]
    Config(rustls::Error),
    /// TLS to a backend with neither a CA file nor `insecure_skip_verify`.
    #[error("TLS to a backend needs a CA file to verify it (or insecure_skip_verify)")]
    NoCa,
    /// A backend server name that is not a DNS name or an IP address.
    #[error("server name {0:?} is not a DNS name or an IP address")]
    ServerName(String),
}

/// Picks the certificate for a handshake by SNI: exact name, then `*.parent`, then the default.
#[derive(Debug)]
pub struct SniResolver {
    by_name: HashMap<String, Arc<CertifiedKey>>,
    default: Arc<CertifiedKey>,
}

impl SniResolver {
    /// The certificate for `sni` (lowercased by the caller or not: compared case-insensitively).
    pub fn pick(&self, sni: Option<&str>) -> &Arc<CertifiedKey> {
        let Some(name) = sni else {
            return &self.default;
        };
        let name = name.to_ascii_lowercase();
        if let Some(key) = self.by_name.get(&name) {
            return key;
        }
        // A wildcard certificate covers exactly one label.
        if let Some((_, parent)) = name.split_once('.') {
            if let Some(key) = self.by_name.get(&format!("*.{parent}")) {
                return key;
            }
        }
        &self.default
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.pick(hello.server_name()).clone())
    }
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_owned(),
        source,
    })
}

fn pem_error(path: &Path, e: pem::Error) -> TlsError {
    TlsError::Pem {
        path: path.to_owned(),
        what: e.to_string(),
    }
}

/// Loads one certificate chain and key, checking the key matches the leaf.
pub fn load_cert(spec: &CertSpec, provider: &CryptoProvider) -> Result<CertifiedKey, TlsError> {
    let pem = read(&spec.cert)?;
    let chain = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error(&spec.cert, e))?;
    if chain.is_empty() {
        return Err(TlsError::Pem {
            path: spec.cert.clone(),
            what: "no CERTIFICATE section".into(),
        });
    }
    let pem = read(&spec.key)?;
    let key = PrivateKeyDer::from_pem_slice(&pem).map_err(|e| match e {
        pem::Error::NoItemsFound => TlsError::Pem {
            path: spec.key.clone(),
            what: "no PRIVATE KEY section".into(),
        },
        e => pem_error(&spec.key, e),
    })?;
    CertifiedKey::from_der(chain, key, provider).map_err(|e| TlsError::Key {
        path: spec.key.clone(),
        what: e.to_string(),
    })
}

/// The crypto provider used everywhere: ring (no C toolchain beyond cc, no cmake).
// rustls 0.23.48 deprecates ring's provider for lacking post-quantum key exchange; aws-lc has it
// but needs cmake. Revisit when ring gains ML-KEM or the build can afford aws-lc.
#[allow(deprecated)]
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Loads every certificate of `spec` and builds the server configuration (TLS 1.2 and 1.3,
/// ALPN http/1.1, certificate by SNI).
pub fn server_config(spec: &TlsSpec) -> Result<Arc<ServerConfig>, TlsError> {
    let provider = provider();
    let mut keys = Vec::with_capacity(spec.certs.len());
    for cert in &spec.certs {
        keys.push(Arc::new(load_cert(cert, &provider)?));
    }
    let Some(default) = keys.first().cloned() else {
        return Err(TlsError::NoCertificates);
    };
    let mut by_name = HashMap::new();
    for (cert, key) in spec.certs.iter().zip(&keys) {
        for name in &cert.names {
            // The first certificate naming a host keeps it.
            by_name
                .entry(name.to_ascii_lowercase())
                .or_insert_with(|| key.clone());
        }
    }
    let resolver = SniResolver { by_name, default };
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(rustls::DEFAULT_VERSIONS)
        .map_err(TlsError::Config)?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(resolver));
    config.alpn_protocols = vec![ALPN_HTTP11.to_vec()];
    Ok(Arc::new(config))
}

/// Client settings for TLS to backends: verified against the CA file of `spec` (every
/// certificate in it is trusted), or not at all with `insecure_skip_verify`; TLS 1.2 and 1.3,
/// ALPN http/1.1, session resumption in memory.
pub fn client_config(spec: &BackendTlsSpec) -> Result<Arc<ClientConfig>, TlsError> {
    if let Some(name) = &spec.server_name {
        ServerName::try_from(name.as_str()).map_err(|_| TlsError::ServerName(name.clone()))?;
    }
    let provider = provider();
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(rustls::DEFAULT_VERSIONS)
        .map_err(TlsError::Config)?;
    let mut config = if spec.insecure_skip_verify {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerify(provider)))
            .with_no_client_auth()
    } else {
        let path = spec.ca.as_deref().ok_or(TlsError::NoCa)?;
        builder
            .with_root_certificates(load_roots(path)?)
            .with_no_client_auth()
    };
    config.alpn_protocols = vec![ALPN_HTTP11.to_vec()];
    Ok(Arc::new(config))
}

/// The name a backend connection verifies (and sends as SNI when it is a DNS name):
/// `server_name` when set, else the backend's address (verified against the certificate's IP
/// names; rustls sends no SNI for an address).
pub fn backend_name(spec: &BackendTlsSpec, addr: std::net::IpAddr) -> ServerName<'static> {
    spec.server_name
        .as_deref()
        .and_then(|n| ServerName::try_from(n.to_owned()).ok())
        .unwrap_or(ServerName::IpAddress(addr.into()))
}

/// Every certificate of a PEM file, as trust anchors.
fn load_roots(path: &Path) -> Result<RootCertStore, TlsError> {
    let pem = read(path)?;
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&pem) {
        let cert = cert.map_err(|e| pem_error(path, e))?;
        roots.add(cert).map_err(|e| TlsError::Pem {
            path: path.to_owned(),
            what: format!("not a usable CA certificate: {e}"),
        })?;
    }
    if roots.is_empty() {
        return Err(TlsError::Pem {
            path: path.to_owned(),
            what: "no CERTIFICATE section".into(),
        });
    }
    Ok(roots)
}

/// `insecure_skip_verify`: any certificate and name are accepted (the handshake signatures are
/// still checked, so the peer holds the key of the certificate it sent, whoever that is).
#[derive(Debug)]
struct NoVerify(Arc<CryptoProvider>);

impl ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// What the peer did, as seen through TLS.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Plain {
    /// This many plaintext bytes were copied out.
    Data(usize),
    /// Nothing decrypted is waiting.
    Empty,
    /// The peer closed the TLS session (close_notify).
    Closed,
}

/// One TLS session: server side (a client connection) or client side (a backend connection).
#[derive(Debug)]
pub struct TlsSession {
    conn: Connection,
}

impl TlsSession {
    /// A session for a just-accepted connection.
    pub fn new(config: Arc<ServerConfig>) -> Result<TlsSession, rustls::Error> {
        Ok(TlsSession {
            conn: Connection::Server(ServerConnection::new(config)?),
        })
    }

    /// A session for a new backend connection to `name` (see [`backend_name`]); the ClientHello
    /// is queued at once.
    pub fn client(
        config: Arc<ClientConfig>,
        name: ServerName<'static>,
    ) -> Result<TlsSession, rustls::Error> {
        Ok(TlsSession {
            conn: Connection::Client(ClientConnection::new(config, name)?),
        })
    }

    /// Reads TLS records from `from` (a socket, or a byte slice) and processes them. `Ok(0)`:
    /// end of stream. A protocol error is returned once its alert is queued: write it out
    /// ([`Self::write_tls`]) and close.
    pub fn read_tls(&mut self, from: &mut dyn Read) -> io::Result<usize> {
        let n = self.conn.read_tls(from)?;
        self.conn
            .process_new_packets()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        Ok(n)
    }

    /// True while decrypted bytes wait to be taken (read no more records until they are).
    pub fn has_plaintext(&mut self) -> bool {
        self.conn
            .process_new_packets()
            .is_ok_and(|s| s.plaintext_bytes_to_read() > 0)
    }

    /// Copies decrypted bytes into `buf`.
    pub fn read_plain(&mut self, buf: &mut [u8]) -> Plain {
        match self.conn.reader().read(buf) {
            Ok(0) => Plain::Closed,
            Ok(n) => Plain::Data(n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Plain::Empty,
            // UnexpectedEof: the peer closed without close_notify; treat it as a close.
            Err(_) => Plain::Closed,
        }
    }

    /// Takes plaintext to encrypt; returns how much was taken (less when the send buffer is
    /// full: write records out first).
    pub fn write_plain(&mut self, data: &[u8]) -> usize {
        self.conn.writer().write(data).unwrap_or(0)
    }

    /// True while records wait to be written.
    pub fn wants_write(&self) -> bool {
        self.conn.wants_write()
    }

    /// Writes pending records to `to`.
    pub fn write_tls(&mut self, to: &mut dyn Write) -> io::Result<usize> {
        self.conn.write_tls(to)
    }

    /// True until the handshake is complete.
    pub fn is_handshaking(&self) -> bool {
        self.conn.is_handshaking()
    }

    /// The name the client asked for (server side).
    pub fn sni(&self) -> Option<&str> {
        match &self.conn {
            Connection::Server(c) => c.server_name(),
            Connection::Client(_) => None,
        }
    }

    /// Queues a close_notify alert (write it out with [`Self::write_tls`]).
    pub fn close(&mut self) {
        self.conn.send_close_notify();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_and_bad_files_are_errors_naming_the_file() {
        let dir = std::env::temp_dir().join(format!("l7-tls-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let missing = CertSpec {
            names: vec![],
            cert: dir.join("missing.pem"),
            key: dir.join("missing.key"),
        };
        let err = server_config(&TlsSpec {
            certs: vec![missing],
        })
        .unwrap_err();
        assert!(matches!(err, TlsError::Read { .. }), "{err}");
        assert!(err.to_string().contains("missing.pem"), "{err}");

        let junk = dir.join("junk.pem");
        std::fs::write(&junk, "not a certificate\n").unwrap();
        let err = server_config(&TlsSpec {
            certs: vec![CertSpec {
                names: vec![],
                cert: junk.clone(),
                key: junk.clone(),
            }],
        })
        .unwrap_err();
        assert!(matches!(err, TlsError::Pem { .. }), "{err}");
        assert!(err.to_string().contains("junk.pem"), "{err}");

        assert!(matches!(
            server_config(&TlsSpec::default()),
            Err(TlsError::NoCertificates)
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
