//! The public gRPC API (`faas.v1`): validation, persistence, and hand-off of
//! calls to the broker.

mod access;
pub mod admission;
mod calls;
mod cluster;
mod functions;
mod layers;
mod namespaces;
mod runtimes;
mod secrets;
mod stats;
mod versions;

use std::sync::Arc;

use futures::StreamExt;
use tokio::sync::watch;
use tonic::{Status, Streaming};

use crate::broker::BrokerHandle;
use crate::config::Limits;
use crate::error::ApiError;
use crate::registry::Registry;
use crate::store::Store;
use crate::watch::CallWatch;

/// Shared by every service; cheap to clone.
#[derive(Clone)]
pub struct Api {
    pub store: Store,
    pub registry: Registry,
    pub limits: Arc<Limits>,
    pub calls: Arc<CallWatch>,
    /// Set while this replica leads and runs the broker.
    pub broker: watch::Receiver<Option<BrokerHandle>>,
    pub replica: Arc<str>,
    /// How a follower reaches the leader.
    pub leader: LeaderLink,
    /// API tokens and joined nodes, as every request checks them.
    pub credentials: crate::auth::Credentials,
    /// The cluster CA, which signs the nodes' certificates.
    pub pki: Arc<Pki>,
    /// Namespaces and their quotas, as every request checks them.
    pub tenants: crate::tenants::Tenants,
    /// Secrets, sealed; opened for the calls that need them.
    pub secrets: crate::secrets::Secrets,
    /// Functions and runtimes as calls are accepted against them.
    pub catalog: Arc<crate::catalog::Catalog>,
}

pub struct Pki {
    pub ca: faas_pki::ClusterCa,
    /// How long a node certificate is valid (agents renew at two thirds).
    pub node_cert_ttl: std::time::Duration,
    /// Handed to nodes with their certificate (see `JoinResponse`).
    pub registry_ca_pem: Option<String>,
}

/// Metadata set on a request a follower forwards, so that a request never
/// bounces between replicas that both believe the other leads.
pub const FORWARDED: &str = "x-faas-forwarded";

/// A follower's way to the leader: the election's value is the leader's
/// advertised URL; the channel is kept while the leader stays the same.
#[derive(Clone)]
pub struct LeaderLink {
    store: Store,
    own: Arc<str>,
    /// The cluster CA and this replica's certificate: the leader trusts a
    /// forwarded request's mark only from a replica.
    tls: faas_pki::client::ClientTls,
    cached: Arc<tokio::sync::Mutex<Option<(String, tonic::transport::Channel)>>>,
}

impl LeaderLink {
    pub fn new(store: Store, own: String, tls: faas_pki::client::ClientTls) -> LeaderLink {
        LeaderLink {
            store,
            own: own.into(),
            tls,
            cached: Default::default(),
        }
    }

    /// The leader's URL, if there is a leader.
    pub async fn url(&self) -> Result<Option<String>, ApiError> {
        let election = format!("{}/election", self.store.prefix());
        match self.store.client().leader(election).await {
            Ok(resp) => Ok(resp
                .kv()
                .map(|kv| String::from_utf8_lossy(kv.value()).to_string())),
            // etcd answers an error when nobody campaigns.
            Err(etcd_client::Error::GRpcStatus(s)) if s.message().contains("no leader") => Ok(None),
            Err(e) => Err(ApiError::Store(e.into())),
        }
    }

    /// A channel to the leader, when it is another replica.
    pub async fn channel(&self) -> Result<tonic::transport::Channel, ApiError> {
        let url = self.url().await?.ok_or_else(|| {
            ApiError::Unavailable(
                "no control-plane replica leads the cluster right now; retry shortly".into(),
            )
        })?;
        if url == *self.own {
            return Err(ApiError::Unavailable(
                "this replica is being elected leader; retry shortly".into(),
            ));
        }
        let mut cached = self.cached.lock().await;
        if let Some((u, ch)) = cached.as_ref() {
            if *u == url {
                return Ok(ch.clone());
            }
        }
        let channel = faas_pki::client::endpoint(&url, &self.tls)
            .map_err(|e| ApiError::Unavailable(format!("leader URL {url:?}: {e}")))?
            .connect_timeout(std::time::Duration::from_secs(3))
            .tcp_nodelay(true)
            .connect_lazy();
        *cached = Some((url, channel.clone()));
        Ok(channel)
    }
}

/// An error of a request forwarded to the leader, as the client sees it: a
/// failure to reach the leader at all (it just died; the election has not
/// caught up) means nothing was sent, so it is marked safe to retry, like
/// our own "no leader" answers.
pub fn forward_failed(status: tonic::Status) -> tonic::Status {
    let detail = format!("{status:?}");
    let not_sent = status.code() == tonic::Code::Unavailable
        && (detail.contains("ConnectError") || detail.contains("Connection refused"));
    if !not_sent {
        return status;
    }
    ApiError::Unavailable(format!(
        "the leader could not be reached (it may just have stopped); retry shortly: {}",
        status.message()
    ))
    .into()
}

/// The request to forward to the leader, marked as forwarded; refused if it
/// was forwarded to us already.
/// The W3C trace-context header a client may send with a call.
pub const TRACEPARENT: &str = "traceparent";

/// The client's trace, if it sent a valid `traceparent` (an invalid one is
/// ignored, as the W3C specification asks: the call starts a trace).
pub fn traceparent_of<T>(request: &tonic::Request<T>) -> Option<faas_telemetry::TraceParent> {
    request
        .metadata()
        .get(TRACEPARENT)
        .and_then(|v| v.to_str().ok())
        .and_then(faas_telemetry::TraceParent::parse)
}

pub fn forwarded<T>(request: tonic::Request<T>) -> Result<tonic::Request<T>, ApiError> {
    if request.metadata().contains_key(FORWARDED) {
        return Err(ApiError::Unavailable(
            "forwarded to a replica that does not lead either; retry shortly".into(),
        ));
    }
    // The leader authenticates the client's token itself.
    let authorization = request
        .metadata()
        .get(faas_pki::client::AUTHORIZATION)
        .cloned();
    // The call's trace goes on with it.
    let traceparent = request.metadata().get(TRACEPARENT).cloned();
    let mut out = tonic::Request::new(request.into_inner());
    if let Some(value) = authorization {
        out.metadata_mut()
            .insert(faas_pki::client::AUTHORIZATION, value);
    }
    if let Some(value) = traceparent {
        out.metadata_mut().insert(TRACEPARENT, value);
    }
    out.metadata_mut()
        .insert(FORWARDED, tonic::metadata::MetadataValue::from_static("1"));
    Ok(out)
}

impl Api {
    fn broker(&self) -> Result<BrokerHandle, ApiError> {
        self.broker.borrow().clone().ok_or_else(|| {
            ApiError::Unavailable(
                "this control-plane replica does not lead the cluster (yet); retry or use the leader".into(),
            )
        })
    }
}

/// A function's environment is stored in its record and sent with every
/// call: its total size (names and values) is bounded.
pub(crate) fn check_env_bytes(
    env: &std::collections::HashMap<String, String>,
    max: u64,
) -> Result<(), ApiError> {
    let total: u64 = env.iter().map(|(k, v)| (k.len() + v.len()) as u64).sum();
    if total > max {
        return Err(ApiError::ResourceExhausted(format!(
            "the environment is {total} bytes (names and values), over the limit of {max} bytes (max_env_bytes)"
        )));
    }
    Ok(())
}

/// Reads a package upload (a function's, a layer's: `what`) from the chunks
/// that follow the stream's first message, within the package limits and
/// `package.upload_timeout_secs`, and normalizes it (every check a
/// package gets).
async fn read_package<M>(
    stream: &mut Streaming<M>,
    limits: &Limits,
    what: &'static str,
    chunk_of: impl Fn(M) -> Option<Vec<u8>>,
) -> Result<Vec<u8>, Status>
where
    M: Send + 'static,
{
    let upload = read_upload(stream, limits.max_package_bytes, what, chunk_of, |head| {
        crate::package::check_format(head).map_err(ApiError::from)
    });
    let upload_timeout = limits.package.upload_timeout();
    let upload = tokio::time::timeout(upload_timeout, upload)
        .await
        .map_err(|_| {
            ApiError::DeadlineExceeded(format!(
                "the {what} upload took longer than {upload_timeout:?} (limit package.upload_timeout_secs)"
            ))
        })??;
    let package_limits = limits.package.limits(limits.max_package_bytes);
    tokio::task::spawn_blocking(move || crate::package::normalize(&upload, package_limits))
        .await
        .map_err(|e| Status::internal(format!("{what} check panicked: {e}")))?
        .map_err(|e| functions::package_error(what, e).into())
}

/// Reads a client stream made of a header message followed by chunks of
/// bytes, refusing more than `limit` bytes in total. `check_head` sees the
/// first bytes (at least 512 or the whole upload if shorter) as soon as
/// they arrive, so that an upload of the wrong kind is refused before the
/// rest of it is read.
async fn read_upload<M>(
    stream: &mut Streaming<M>,
    limit: u64,
    what: &str,
    chunk_of: impl Fn(M) -> Option<Vec<u8>>,
    check_head: impl Fn(&[u8]) -> Result<(), ApiError>,
) -> Result<Vec<u8>, ApiError>
where
    M: Send + 'static,
{
    const HEAD: usize = 512;
    let mut data = Vec::new();
    let mut head_checked = false;
    while let Some(message) = stream.next().await {
        let message =
            message.map_err(|e| ApiError::InvalidArgument(format!("upload interrupted: {e}")))?;
        let Some(chunk) = chunk_of(message) else {
            return Err(ApiError::InvalidArgument(format!(
                "only chunks of the {what} may follow the first message"
            )));
        };
        if data.len() as u64 + chunk.len() as u64 > limit {
            return Err(ApiError::ResourceExhausted(format!(
                "{what} is larger than the limit of {limit} bytes"
            )));
        }
        data.extend_from_slice(&chunk);
        if !head_checked && data.len() >= HEAD {
            check_head(&data)?;
            head_checked = true;
        }
    }
    if !head_checked && !data.is_empty() {
        check_head(&data)?;
    }
    Ok(data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn environments_are_bounded_in_total() {
        let mut env = std::collections::HashMap::new();
        env.insert("A".to_string(), "x".repeat(9));
        assert!(check_env_bytes(&env, 10).is_ok());
        env.insert("B".to_string(), String::new());
        let e = check_env_bytes(&env, 10).unwrap_err();
        assert!(matches!(e, ApiError::ResourceExhausted(_)), "{e}");
    }
}
