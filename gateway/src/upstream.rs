//! The control plane, as the gateway reaches it: one long-lived HTTP/2
//! channel per replica (TLS with the cluster CA), over which every request
//! carries the caller's own API token, so the API's authorization applies
//! unchanged.
//!
//! Requests go to the replica that last answered. They move to the next
//! one only when they certainly were not acted on: the replica could not
//! be connected to, or it answered UNAVAILABLE with `faas-retry-safe`
//! (nothing recorded). Anything else is the answer: a call is never sent
//! twice.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use faas_proto::v1::call_service_client::CallServiceClient;
use faas_proto::v1::{Call, InvokeRequest, WaitCallRequest};
use faas_telemetry::TraceParent;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::Channel;
use tonic::{Code, Request, Status};

/// Replies carry results up to the control plane's max_result_bytes; this
/// only avoids refusing large ones (tonic's default is 4 MiB).
const MAX_DECODE_BYTES: usize = 64 << 20;
/// How long one replica may take to accept a connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a replica may take to start answering WaitCall.
const OPEN_TIMEOUT: Duration = Duration::from_secs(30);

/// A caller's API token, as gRPC metadata (`Bearer <token>`).
pub type Token = MetadataValue<Ascii>;

#[derive(Clone)]
pub struct Upstream {
    channels: Arc<[Channel]>,
    /// The replica requests go to first.
    preferred: Arc<AtomicUsize>,
}

impl Upstream {
    /// Lazily connected channels to `endpoints`.
    pub fn new(endpoints: &[String], ca_pem: Option<&str>) -> anyhow::Result<Upstream> {
        let tls = faas_pki::client::ClientTls {
            ca_pem: ca_pem.map(str::to_string),
            identity: None,
        };
        let channels = endpoints
            .iter()
            .map(|url| {
                Ok(faas_pki::client::endpoint(url, &tls)?
                    .connect_timeout(CONNECT_TIMEOUT)
                    .tcp_nodelay(true)
                    .http2_keep_alive_interval(Duration::from_secs(30))
                    .keep_alive_timeout(Duration::from_secs(10))
                    .keep_alive_while_idle(true)
                    .connect_lazy())
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        anyhow::ensure!(!channels.is_empty(), "no control-plane replica given");
        Ok(Upstream {
            channels: channels.into(),
            preferred: Arc::new(AtomicUsize::new(0)),
        })
    }

    /// A request with the caller's token. Its `grpc-timeout` is a little
    /// longer than `timeout`, which [`Upstream::send`] enforces, so that
    /// the gateway's own deadline ends it (tonic would end it as
    /// CANCELLED).
    fn request<T>(
        message: T,
        token: &Token,
        timeout: Duration,
        trace: Option<&TraceParent>,
    ) -> Request<T> {
        let mut request = Request::new(message);
        request
            .metadata_mut()
            .insert(faas_pki::client::AUTHORIZATION, token.clone());
        // The HTTP client's trace goes on with the call (validated: only
        // the exact W3C form is passed).
        if let Some(value) = trace.and_then(|t| t.to_string().parse().ok()) {
            request.metadata_mut().insert("traceparent", value);
        }
        request.set_timeout(timeout + Duration::from_secs(1));
        request
    }

    /// `send` to the preferred replica, then to the others while the
    /// request certainly was not acted on; the replica that answered
    /// becomes the preferred one. Each attempt gets at most `timeout`
    /// (enforced here: `grpc-timeout` only asks the server).
    async fn send<T, F, Fut>(&self, timeout: Duration, send: F) -> Result<T, Status>
    where
        F: Fn(CallServiceClient<Channel>) -> Fut,
        Fut: std::future::Future<Output = Result<T, Status>>,
    {
        let count = self.channels.len();
        let first = self.preferred.load(Ordering::Relaxed) % count;
        let mut answer = Err(Status::unavailable("no control-plane replica"));
        for k in 0..count {
            let i = (first + k) % count;
            let client = CallServiceClient::new(self.channels[i].clone())
                .max_decoding_message_size(MAX_DECODE_BYTES);
            answer = match tokio::time::timeout(timeout, send(client)).await {
                Ok(answer) => answer,
                Err(_) => Err(Status::deadline_exceeded(format!(
                    "no answer from the control plane within {timeout:?}"
                ))),
            };
            match &answer {
                Err(status) if not_acted_on(status) => {
                    tracing::debug!(replica = i, error = %status, "trying the next replica");
                }
                _ => {
                    if k > 0 {
                        self.preferred.store(i, Ordering::Relaxed);
                    }
                    return answer;
                }
            }
        }
        answer
    }

    /// Invoke, waiting for the final record.
    pub async fn invoke(
        &self,
        message: InvokeRequest,
        token: &Token,
        timeout: Duration,
        trace: Option<&TraceParent>,
    ) -> Result<Call, Status> {
        self.send(timeout, |mut client| {
            let request = Self::request(message.clone(), token, timeout, trace);
            async move { client.invoke(request).await.map(|r| r.into_inner()) }
        })
        .await
    }

    /// Submit: the call id once the call is durably accepted.
    pub async fn submit(
        &self,
        message: InvokeRequest,
        token: &Token,
        timeout: Duration,
        trace: Option<&TraceParent>,
    ) -> Result<String, Status> {
        self.send(timeout, |mut client| {
            let request = Self::request(message.clone(), token, timeout, trace);
            async move { client.submit(request).await.map(|r| r.into_inner().call_id) }
        })
        .await
    }

    /// The call's final record, waiting at most `max_wait`; a stream
    /// broken by a replica going away is opened again.
    pub async fn wait_final(
        &self,
        id: &str,
        token: &Token,
        max_wait: Duration,
    ) -> Result<Call, Status> {
        let deadline = tokio::time::Instant::now() + max_wait;
        let mut last_error = None;
        while tokio::time::Instant::now() < deadline {
            let left = deadline - tokio::time::Instant::now();
            let message = WaitCallRequest {
                id: id.to_string(),
                timeout_ms: left.as_millis().max(1) as u64,
            };
            let opened = self
                .send(OPEN_TIMEOUT, |mut client| {
                    let request =
                        Self::request(message.clone(), token, left + Duration::from_secs(5), None);
                    async move { client.wait_call(request).await }
                })
                .await;
            match opened {
                Ok(stream) => {
                    let mut stream = stream.into_inner();
                    let mut last = None;
                    loop {
                        let next = tokio::time::timeout_at(
                            deadline + Duration::from_secs(5),
                            stream.message(),
                        )
                        .await
                        .unwrap_or_else(|_| {
                            Err(Status::deadline_exceeded(format!(
                                "call {id} did not finish within {max_wait:?}"
                            )))
                        });
                        match next {
                            Ok(Some(call)) => last = Some(call),
                            Ok(None) => break,
                            Err(status) => {
                                last_error = Some(status);
                                break;
                            }
                        }
                    }
                    if let Some(call) = last.filter(is_final) {
                        return Ok(call);
                    }
                }
                Err(status) => last_error = Some(status),
            }
            match &last_error {
                Some(status) if !matches!(status.code(), Code::Unavailable | Code::Unknown) => {
                    return Err(status.clone())
                }
                _ => tokio::time::sleep(Duration::from_secs(1)).await,
            }
        }
        Err(last_error.unwrap_or_else(|| {
            Status::deadline_exceeded(format!("call {id} did not finish within {max_wait:?}"))
        }))
    }
}

fn is_final(call: &Call) -> bool {
    call.status().is_final()
}

/// Whether a request that failed with `status` certainly did nothing: the
/// replica said so (`faas-retry-safe`), or it could not be connected to.
fn not_acted_on(status: &Status) -> bool {
    if status.code() != Code::Unavailable {
        return false;
    }
    if status
        .metadata()
        .contains_key(faas_proto::RETRY_SAFE_METADATA)
    {
        return true;
    }
    let mut source = std::error::Error::source(status);
    while let Some(error) = source {
        if let Some(io) = error.downcast_ref::<std::io::Error>() {
            use std::io::ErrorKind::*;
            if matches!(
                io.kind(),
                ConnectionRefused | HostUnreachable | NetworkUnreachable | AddrNotAvailable
            ) {
                return true;
            }
        }
        // tonic's connect timeout.
        if error.to_string().contains("connect timeout")
            || error.to_string().contains("tcp connect error")
        {
            return true;
        }
        source = error.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_unreachable_replica_is_skipped_and_counts_as_not_acted_on() {
        // Port 1 on loopback: refused at once.
        let upstream = Upstream::new(
            &["http://127.0.0.1:1".into(), "http://127.0.0.1:1".into()],
            None,
        )
        .unwrap();
        let token: Token = "Bearer x.y".parse().unwrap();
        let status = upstream
            .invoke(
                InvokeRequest::default(),
                &token,
                Duration::from_secs(5),
                None,
            )
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
        assert!(not_acted_on(&status), "{status:?}");
        let mut safe = Status::unavailable("not leading");
        safe.metadata_mut()
            .insert(faas_proto::RETRY_SAFE_METADATA, "1".parse().unwrap());
        assert!(not_acted_on(&safe));
        assert!(!not_acted_on(&Status::unavailable("stream reset")));
        assert!(!not_acted_on(&Status::not_found("x")));
    }
}
