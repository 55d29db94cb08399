//! The cluster's credentials, in one place so that the control plane, the
//! agents and `faasctl` agree on them:
//!
//! - [`ca`]: the cluster CA, and the certificates it issues: one per
//!   control-plane replica (server and client: replicas forward to the
//!   leader with it) and one per node (client only), named by their common
//!   name (`replica:<name>`, `node:<name>`).
//! - [`dispatch`]: proofs that a call was handed to a node.
//! - [`etcd`]: etcd's own CA, its members' certificates and the control
//!   plane's client certificate.
//! - [`registry`]: the tokens the OCI registry takes, and their signer.
//! - [`token`]: API and join tokens (`<id>.<secret>`), stored as a hash of
//!   the secret only.
//! - [`client`]: TLS and bearer tokens on the client side.
//! - [`pin`]: how a joining agent learns the CA from the server it reaches
//!   and checks it against the hash the operator gave it.

#![forbid(unsafe_code)]

pub mod ca;
pub mod client;
pub mod dispatch;
pub mod etcd;
mod files;
pub mod pin;
mod private_ca;
pub mod registry;
pub mod sealing;
pub mod token;

pub use ca::{ClusterCa, IssuedCert, PeerIdentity};
pub use token::Token;

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("invalid certificate signing request: {0}")]
    BadRequest(String),
    #[error("invalid PEM: {0}")]
    Pem(String),
    #[error("invalid token: {0}")]
    Token(&'static str),
    #[error("TLS: {0}")]
    Tls(String),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// `sha256:<hex>` of a certificate's DER: how a CA is pinned and how the
/// control plane recognises a node's current certificate.
pub fn fingerprint(der: &[u8]) -> String {
    use sha2::Digest;
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(der)))
}

/// The DER of the first certificate of a PEM text.
pub fn first_cert_der(pem: &str) -> Result<Vec<u8>, PkiError> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::pem_slice_iter(pem.as_bytes())
        .next()
        .ok_or_else(|| PkiError::Pem("no certificate in it".into()))?
        .map(|c| c.to_vec())
        .map_err(|e| PkiError::Pem(e.to_string()))
}
