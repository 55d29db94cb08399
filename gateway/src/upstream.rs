//! The control plane, as the gateway reaches it: one long-lived HTTP/2
//! channel (TLS with the cluster CA) over which every request carries the
//! caller's own API token, so the API's authorization applies unchanged.

use std::time::Duration;

use faas_proto::v1::call_service_client::CallServiceClient;
use faas_proto::v1::{Call, InvokeRequest, WaitCallRequest};
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::Channel;
use tonic::{Code, Request, Status};

/// Replies carry results up to the control plane's max_result_bytes; this
/// only avoids refusing large ones (tonic's default is 4 MiB).
const MAX_DECODE_BYTES: usize = 64 << 20;
/// How long one replica may take to accept a connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A caller's API token, as gRPC metadata (`Bearer <token>`).
pub type Token = MetadataValue<Ascii>;

#[derive(Clone)]
pub struct Upstream {
    channel: Channel,
}

impl Upstream {
    /// A lazily connected channel to `endpoints` (spread over them when
    /// there are several).
    pub fn new(endpoints: &[String], ca_pem: Option<&str>) -> anyhow::Result<Upstream> {
        let tls = faas_pki::client::ClientTls {
            ca_pem: ca_pem.map(str::to_string),
            identity: None,
        };
        let endpoints = endpoints
            .iter()
            .map(|url| {
                Ok(faas_pki::client::endpoint(url, &tls)?
                    .connect_timeout(CONNECT_TIMEOUT)
                    .tcp_nodelay(true)
                    .http2_keep_alive_interval(Duration::from_secs(30))
                    .keep_alive_timeout(Duration::from_secs(10))
                    .keep_alive_while_idle(true))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let channel = match endpoints.as_slice() {
            [one] => one.connect_lazy(),
            _ => Channel::balance_list(endpoints.into_iter()),
        };
        Ok(Upstream { channel })
    }

    fn client(&self) -> CallServiceClient<Channel> {
        CallServiceClient::new(self.channel.clone()).max_decoding_message_size(MAX_DECODE_BYTES)
    }

    fn request<T>(message: T, token: &Token, timeout: Duration) -> Request<T> {
        let mut request = Request::new(message);
        request
            .metadata_mut()
            .insert(faas_pki::client::AUTHORIZATION, token.clone());
        request.set_timeout(timeout);
        request
    }

    /// Invoke, waiting for the final record; sent again once if the
    /// replica said nothing was recorded (`faas-retry-safe`).
    pub async fn invoke(
        &self,
        message: InvokeRequest,
        token: &Token,
        timeout: Duration,
    ) -> Result<Call, Status> {
        let first = self
            .client()
            .invoke(Self::request(message.clone(), token, timeout))
            .await;
        match first {
            Err(status) if retry_safe(&status) => self
                .client()
                .invoke(Self::request(message, token, timeout))
                .await
                .map(|r| r.into_inner()),
            other => other.map(|r| r.into_inner()),
        }
    }

    /// Submit: the call id once the call is durably accepted.
    pub async fn submit(
        &self,
        message: InvokeRequest,
        token: &Token,
        timeout: Duration,
    ) -> Result<String, Status> {
        let first = self
            .client()
            .submit(Self::request(message.clone(), token, timeout))
            .await;
        match first {
            Err(status) if retry_safe(&status) => self
                .client()
                .submit(Self::request(message, token, timeout))
                .await
                .map(|r| r.into_inner().call_id),
            other => other.map(|r| r.into_inner().call_id),
        }
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
            let request = Self::request(
                WaitCallRequest {
                    id: id.to_string(),
                    timeout_ms: left.as_millis().max(1) as u64,
                },
                token,
                left + Duration::from_secs(5),
            );
            match self.client().wait_call(request).await {
                Ok(stream) => {
                    let mut stream = stream.into_inner();
                    let mut last = None;
                    loop {
                        match stream.message().await {
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
    use faas_proto::v1::CallStatus;
    matches!(
        call.status(),
        CallStatus::Succeeded | CallStatus::Failed | CallStatus::Timeout
    )
}

fn retry_safe(status: &Status) -> bool {
    status.code() == Code::Unavailable
        && status
            .metadata()
            .contains_key(faas_proto::RETRY_SAFE_METADATA)
}
