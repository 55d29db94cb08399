//! How a joining agent learns the cluster CA: it reaches the control
//! plane over TLS without trusting anything yet, takes the CA the server
//! sends with its certificate, and keeps it only if its fingerprint is the
//! one the operator gave (`--ca-hash`, printed by `faasctl node token
//! create`). The join itself then runs over a channel that verifies the
//! server against that CA, so a server in the middle learns nothing (the
//! token goes only to a server the CA vouches for).

use std::sync::{Arc, Mutex};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use tokio::net::TcpStream;

use crate::PkiError;

/// Accepts any chain, keeping it: nothing is sent over this connection.
#[derive(Debug)]
struct CaptureChain {
    chain: Mutex<Vec<Vec<u8>>>,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl ServerCertVerifier for CaptureChain {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let mut chain = self.chain.lock().expect("poisoned");
        chain.push(end_entity.to_vec());
        chain.extend(intermediates.iter().map(|c| c.to_vec()));
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// The CA (PEM) that the server at `host:port` sends, if its fingerprint
/// is `pin` (`sha256:<hex>`).
pub async fn fetch_pinned_ca(host: &str, port: u16, pin: &str) -> Result<String, PkiError> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let capture = Arc::new(CaptureChain {
        chain: Mutex::new(Vec::new()),
        provider: provider.clone(),
    });
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| PkiError::Tls(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(capture.clone())
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        TcpStream::connect((host, port)),
    )
    .await
    .map_err(|_| PkiError::Tls(format!("{host}:{port}: connect timed out")))??;
    let name = ServerName::try_from(host.to_string())
        .map_err(|e| PkiError::Tls(format!("server name {host:?}: {e}")))?;
    tokio::time::timeout(
        std::time::Duration::from_secs(5),
        connector.connect(name, tcp),
    )
    .await
    .map_err(|_| PkiError::Tls(format!("{host}:{port}: TLS handshake timed out")))?
    .map_err(|e| PkiError::Tls(format!("{host}:{port}: {e}")))?;
    let chain = capture.chain.lock().expect("poisoned").clone();
    let ca = chain
        .iter()
        .find(|der| crate::fingerprint(der) == pin)
        .ok_or_else(|| {
            PkiError::Tls(format!(
                "the server at {host}:{port} does not present the CA {pin} (it sent {}): \
                 wrong --ca-hash, or not the cluster you meant",
                chain
                    .iter()
                    .map(|d| crate::fingerprint(d))
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        })?;
    Ok(pem::encode(&pem::Pem::new("CERTIFICATE", ca.clone())))
}
