//! The client side: TLS towards the control plane (its CA, and the
//! client's own certificate when it has one) and the API token on every
//! request.

use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::service::Interceptor;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use crate::PkiError;

/// The metadata key of API tokens (`authorization: Bearer <token>`).
pub const AUTHORIZATION: &str = "authorization";

/// A channel that sends the API token (if any) with every request.
pub type AuthChannel = InterceptedService<Channel, Bearer>;

/// Adds `authorization: Bearer <token>` to every request.
#[derive(Clone, Default)]
pub struct Bearer(Option<MetadataValue<Ascii>>);

impl Bearer {
    pub fn new(token: Option<&str>) -> Result<Bearer, PkiError> {
        token
            .map(|t| {
                format!("Bearer {}", t.trim())
                    .parse::<MetadataValue<Ascii>>()
                    .map_err(|_| PkiError::Token("a token must be printable ASCII"))
            })
            .transpose()
            .map(Bearer)
    }
}

impl Bearer {
    /// Whether a token is sent.
    pub fn is_set(&self) -> bool {
        self.0.is_some()
    }
}

impl Interceptor for Bearer {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(value) = &self.0 {
            request.metadata_mut().insert(AUTHORIZATION, value.clone());
        }
        Ok(request)
    }
}

/// What a client trusts and who it is.
#[derive(Clone, Debug, Default)]
pub struct ClientTls {
    /// The cluster CA (PEM); None: the system's roots are not used either,
    /// so `https` endpoints then fail to verify (faas has no public CA).
    pub ca_pem: Option<String>,
    /// The client's certificate chain and key (PEM), for nodes and
    /// replicas.
    pub identity: Option<(String, String)>,
}

/// An endpoint for `url`: `https://` gets TLS with the cluster CA (and the
/// client's certificate, if any); `http://` is plain (a cluster with TLS
/// refuses it).
pub fn endpoint(url: &str, tls: &ClientTls) -> Result<Endpoint, PkiError> {
    let endpoint = Endpoint::from_shared(url.to_string())
        .map_err(|e| PkiError::Tls(format!("endpoint {url:?}: {e}")))?;
    if !url.starts_with("https://") {
        return Ok(endpoint);
    }
    let mut config = ClientTlsConfig::new();
    if let Some(ca) = &tls.ca_pem {
        config = config.ca_certificate(Certificate::from_pem(ca));
    }
    if let Some((cert, key)) = &tls.identity {
        config = config.identity(Identity::from_pem(cert, key));
    }
    endpoint
        .tls_config(config)
        .map_err(|e| PkiError::Tls(format!("{url}: {e}")))
}

/// A channel with the token on every request.
pub fn authorized(channel: Channel, bearer: Bearer) -> AuthChannel {
    InterceptedService::new(channel, bearer)
}

/// A TLS connection to `host:port` whose certificate `ca_pem` signed (and
/// names `host`): how a test or a tool speaks HTTPS to the registry with
/// nothing more than the registry's own CA.
pub async fn connect_tls(
    host: &str,
    port: u16,
    ca_pem: &str,
) -> Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>, PkiError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, ServerName};
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        let cert = cert.map_err(|e| PkiError::Pem(e.to_string()))?;
        roots
            .add(cert)
            .map_err(|e| PkiError::Tls(format!("CA: {e}")))?;
    }
    let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| PkiError::Tls(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = ServerName::try_from(host.to_string())
        .map_err(|e| PkiError::Tls(format!("server name {host:?}: {e}")))?;
    let tcp = tokio::net::TcpStream::connect((host, port)).await?;
    tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
        .connect(name, tcp)
        .await
        .map_err(|e| PkiError::Tls(format!("{host}:{port}: {e}")))
}
