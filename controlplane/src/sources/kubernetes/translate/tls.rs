//! Certificates from Secrets of type kubernetes.io/tls: checked (the chain and key parse and
//! belong together, as the listener will load them) and written as PEM files named by their
//! content's hash.

use std::path::Path;

use k8s_openapi::api::core::v1::Secret;
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use super::PemFile;

/// Largest certificate chain or key read from a Secret.
const MAX_PEM: usize = 256 * 1024;

/// The chain and key files of a usable TLS Secret.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SecretPem {
    /// Certificate chain.
    pub cert: PemFile,
    /// Private key.
    pub key: PemFile,
}

/// The PEM files of `secret` under `dir`, or why it cannot serve.
pub fn secret_pem(secret: &Secret, dir: &Path) -> Result<SecretPem, String> {
    if secret.type_.as_deref() != Some("kubernetes.io/tls") {
        return Err("is not of type kubernetes.io/tls".into());
    }
    let data = secret.data.as_ref();
    let get = |k: &str| data.and_then(|d| d.get(k)).map(|b| b.0.as_slice());
    let (Some(cert), Some(key)) = (get("tls.crt"), get("tls.key")) else {
        return Err("has no tls.crt or tls.key".into());
    };
    if cert.len() > MAX_PEM || key.len() > MAX_PEM {
        return Err(format!("tls.crt or tls.key is larger than {MAX_PEM} bytes"));
    }
    check_pair(cert, key)?;
    let hash = hex(&ring::digest::digest(
        &ring::digest::SHA256,
        &[cert, b"\0", key].concat(),
    ));
    Ok(SecretPem {
        cert: PemFile {
            path: dir.join(format!("{}.crt", &hash[..32])),
            content: cert.to_vec(),
        },
        key: PemFile {
            path: dir.join(format!("{}.key", &hash[..32])),
            content: key.to_vec(),
        },
    })
}

/// The chain parses, the key parses and is the leaf's (what the listener checks on load).
fn check_pair(cert: &[u8], key: &[u8]) -> Result<(), String> {
    let chain = CertificateDer::pem_slice_iter(cert)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("tls.crt is not valid PEM: {e}"))?;
    if chain.is_empty() {
        return Err("tls.crt has no CERTIFICATE".into());
    }
    let key = PrivateKeyDer::from_pem_slice(key)
        .map_err(|e| format!("tls.key is not a PEM private key: {e}"))?;
    CertifiedKey::from_der(chain, key, &dataplane::l7::tls::provider())
        .map(|_| ())
        .map_err(|e| format!("tls.key does not fit tls.crt: {e}"))
}

fn hex(d: &ring::digest::Digest) -> String {
    d.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}
