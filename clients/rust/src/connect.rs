//! Connecting to the control plane: the first endpoint of a list that
//! accepts, TLS with the cluster CA, the API token on every request.

use std::time::Duration;

use faas_pki::client::{AuthChannel, Bearer, ClientTls};

use crate::error::Error;

/// How long one endpoint may take to accept the connection before the next
/// one in the list is tried.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Replies (call records with results, logs) may exceed tonic's 4 MiB
/// default; the server bounds them, this only avoids refusing them.
pub const MAX_DECODE_BYTES: usize = 64 << 20;

/// "127.0.0.1:7070" → "https://127.0.0.1:7070": users paste host:port,
/// and faas speaks TLS.
pub fn normalize_endpoint(text: &str) -> String {
    let text = text.trim();
    if text.contains("://") {
        text.to_string()
    } else {
        format!("https://{text}")
    }
}

/// What the client proves and trusts.
#[derive(Clone, Default)]
pub struct Credentials {
    pub tls: ClientTls,
    pub bearer: Bearer,
}

impl Credentials {
    /// The cluster CA (PEM) and the API token.
    pub fn new(ca_pem: Option<String>, token: Option<&str>) -> Result<Credentials, Error> {
        Ok(Credentials {
            tls: ClientTls {
                ca_pem,
                identity: None,
            },
            bearer: Bearer::new(token).map_err(|e| Error::InvalidToken(e.to_string()))?,
        })
    }
}

/// Connects to the first endpoint of the list that accepts a connection.
pub async fn connect(
    endpoints: &[String],
    credentials: &Credentials,
) -> Result<AuthChannel, Error> {
    let endpoints: Vec<String> = endpoints
        .iter()
        .map(|e| e.trim())
        .filter(|e| !e.is_empty())
        .map(normalize_endpoint)
        .collect();
    if endpoints.is_empty() {
        return Err(Error::NoEndpoint);
    }
    let mut attempts = Vec::new();
    for url in endpoints {
        if credentials.bearer.is_set() && !url.starts_with("https://") {
            return Err(Error::InvalidEndpoint {
                endpoint: url,
                message: "an API token is never sent over plain http: use an https:// endpoint"
                    .into(),
            });
        }
        let endpoint = faas_pki::client::endpoint(&url, &credentials.tls)
            .map_err(|e| Error::InvalidEndpoint {
                endpoint: url.clone(),
                message: e.to_string(),
            })?
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true);
        match endpoint.connect().await {
            Ok(channel) => {
                return Ok(faas_pki::client::authorized(
                    channel,
                    credentials.bearer.clone(),
                ))
            }
            Err(e) => attempts.push(format!("{url}: {}", error_chain(&e))),
        }
    }
    Err(Error::Unreachable { attempts })
}

/// Transport errors hide the useful part ("Connection refused") in their
/// sources.
fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut parts = vec![error.to_string()];
    let mut source = error.source();
    while let Some(cause) = source {
        let part = cause.to_string();
        // hyper and tonic repeat their wrapper's words at each level.
        if parts.last() != Some(&part) {
            parts.push(part);
        }
        source = cause.source();
    }
    parts.join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_get_a_scheme() {
        assert_eq!(
            normalize_endpoint("127.0.0.1:7070"),
            "https://127.0.0.1:7070"
        );
        assert_eq!(normalize_endpoint(" https://cp:443 "), "https://cp:443");
    }

    #[tokio::test]
    async fn unreachable_endpoints_are_all_reported() {
        // Port 1 on loopback: nothing listens there, so it is refused at once.
        let none = Credentials::default();
        let err = connect(&["127.0.0.1:1".into(), "http://127.0.0.1:1".into()], &none)
            .await
            .unwrap_err();
        let text = err.to_string();
        assert!(text.contains("http://127.0.0.1:1"), "{text}");
        assert!(matches!(err, Error::Unreachable { ref attempts } if attempts.len() == 2));
        assert!(matches!(
            connect(&[" ".into()], &none).await,
            Err(Error::NoEndpoint)
        ));
    }

    #[tokio::test]
    async fn a_token_never_goes_over_plain_http() {
        let creds = Credentials::new(None, Some("id.secret")).unwrap();
        let err = connect(&["http://127.0.0.1:1".into()], &creds)
            .await
            .unwrap_err();
        assert!(matches!(err, Error::InvalidEndpoint { .. }), "{err}");
        assert!(matches!(
            Credentials::new(None, Some("bad\ntoken")),
            Err(Error::InvalidToken(_))
        ));
    }
}
