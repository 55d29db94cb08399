//! The Rust client of faas: connects as faasctl does (its contexts file,
//! the endpoint list with failover, TLS with the cluster CA, the API
//! token) and speaks the public API, `faas.v1` in `proto/faas/v1/api.proto`.
//!
//! ```no_run
//! # async fn example() -> Result<(), faas_client::Error> {
//! use faas_client::{CallStatus, Client};
//!
//! // The current context of ~/.config/faas/config.toml, with FAAS_* over it.
//! let client = Client::from_context(None)?;
//! let call = client.invoke("hello", r#"{"name":"ana"}"#).await?;
//! assert_eq!(call.status(), CallStatus::Succeeded);
//! println!("{}", call.result_json);
//!
//! let id = client.submit("hello", r#"{"name":"bo"}"#).await?;
//! let call = client.wait(&id, None).await?;
//! let logs = client.logs(&call.id).await?;
//! print!("{}", String::from_utf8_lossy(&logs.logs));
//! # Ok(()) }
//! ```
//!
//! The methods answer with the API's own messages ([`Call`], [`Function`],
//! [`CallLogs`]); errors are [`Error`], one variant per gRPC code the API
//! uses. Invoke and Submit are sent again, on the next endpoint, while the
//! control plane answers UNAVAILABLE with the retry-safe mark (a leader
//! change, a rolling restart: nothing was recorded), for up to 8 s; no
//! other failure is ever resent.

#![forbid(unsafe_code)]

pub mod config;
mod connect;
pub mod error;

use std::sync::Arc;
use std::time::Duration;

use faas_pki::client::AuthChannel;
use faas_proto::v1::{
    access_service_client::AccessServiceClient, call_service_client::CallServiceClient,
    cluster_service_client::ClusterServiceClient, function_service_client::FunctionServiceClient,
    layer_service_client::LayerServiceClient, namespace_service_client::NamespaceServiceClient,
    runtime_service_client::RuntimeServiceClient, secret_service_client::SecretServiceClient,
    CancelCallRequest, FollowCallLogsRequest, GetCallLogsRequest, GetCallRequest, InvokeRequest,
    ListCallsRequest, ListFunctionsRequest, WaitCallRequest,
};
use futures::{Stream, StreamExt, TryStreamExt};

pub use config::{ConfigFile, ContextEntry, Overrides, Settings};
pub use connect::{connect, normalize_endpoint, Credentials, MAX_DECODE_BYTES};
pub use error::{code_name, Error, Result};

/// What a call may carry besides its params.
#[derive(Clone, Debug, Default)]
pub struct CallOptions {
    /// Lambda's client context: a JSON object (at most 3583 bytes) the
    /// function reads as `context.client_context` / `context.clientContext`.
    pub client_context: Option<String>,
}
/// The API's messages, as the methods return them.
pub use faas_proto::v1::{Call, CallLogs, CallStatus, Function, StartKind, Timings};
/// The generated API, for what the small API here does not cover.
pub use faas_proto::{self as proto, namespaces};

/// The channel the service clients use: TLS, the token on every request.
pub type Channel = AuthChannel;

/// How long Invoke and Submit keep trying while the control plane answers
/// a retry-safe UNAVAILABLE.
pub const SAFE_RETRY_FOR: Duration = Duration::from_secs(8);

/// A connection to a faas cluster, acting in one namespace. Cheap to
/// clone; clones share the connection.
#[derive(Clone)]
pub struct Client {
    shared: Arc<Shared>,
    namespace: String,
    rpc_timeout: Option<Duration>,
}

struct Shared {
    endpoints: Vec<String>,
    credentials: Credentials,
    /// Connected on first use, so a client can be made before the cluster
    /// is reachable (and local mistakes are reported without the network).
    channel: tokio::sync::OnceCell<AuthChannel>,
}

/// Which calls [`Client::list_calls`] returns (in the client's namespace;
/// [`namespaces::ALL`] lists every namespace the token may read).
#[derive(Debug, Clone, Default)]
pub struct CallFilter {
    /// Only this function's calls.
    pub function: Option<String>,
    /// Only calls in this status.
    pub status: Option<CallStatus>,
    /// At most this many, newest first; 0: all of them.
    pub limit: u32,
}

impl Client {
    /// A client from resolved settings; it connects on its first request.
    pub fn new(settings: Settings) -> Result<Client> {
        let credentials = Credentials::new(settings.ca_pem, settings.token.as_deref())?;
        Ok(Client {
            shared: Arc::new(Shared {
                endpoints: settings.endpoints,
                credentials,
                channel: tokio::sync::OnceCell::new(),
            }),
            namespace: settings.namespace,
            rpc_timeout: settings.rpc_timeout,
        })
    }

    /// A client for the named context of faasctl's contexts file (None:
    /// the current one), with the `FAAS_*` variables over it as in
    /// faasctl. Connects on its first request.
    pub fn from_context(name: Option<&str>) -> Result<Client> {
        let mut overrides = Overrides::from_env();
        if let Some(name) = name {
            overrides.context = Some(name.to_string());
        }
        Client::new(config::resolve(&overrides)?)
    }

    /// Connects now to the first of `endpoints` that accepts, trusting
    /// `ca_pem` and sending `token`; acts in the "default" namespace.
    pub async fn connect(
        endpoints: &[&str],
        ca_pem: Option<&str>,
        token: Option<&str>,
    ) -> Result<Client> {
        let client = Client::new(Settings {
            endpoints: endpoints.iter().map(|e| e.to_string()).collect(),
            ca_pem: ca_pem.map(str::to_string),
            token: token.map(str::to_string),
            namespace: namespaces::DEFAULT.to_string(),
            rpc_timeout: None,
        })?;
        client.channel().await?;
        Ok(client)
    }

    /// The same connection, acting in `namespace` ([`namespaces::ALL`] for
    /// listings across every namespace the token may read).
    pub fn with_namespace(&self, namespace: impl Into<String>) -> Client {
        Client {
            namespace: namespace.into(),
            ..self.clone()
        }
    }

    /// The same connection with a deadline on each RPC (None: none).
    pub fn with_rpc_timeout(&self, timeout: Option<Duration>) -> Client {
        Client {
            rpc_timeout: timeout,
            ..self.clone()
        }
    }

    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The endpoints, as given.
    pub fn endpoints(&self) -> &[String] {
        &self.shared.endpoints
    }

    /// The connection (made on first use).
    pub async fn channel(&self) -> Result<AuthChannel> {
        let shared = &self.shared;
        let channel = shared
            .channel
            .get_or_try_init(|| connect::connect(&shared.endpoints, &shared.credentials))
            .await?;
        Ok(channel.clone())
    }

    /// `message` with the client's RPC deadline.
    pub fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        if let Some(timeout) = self.rpc_timeout {
            request.set_timeout(timeout);
        }
        request
    }

    // ------------------------------------------- the generated clients

    pub async fn calls(&self) -> Result<CallServiceClient<AuthChannel>> {
        Ok(CallServiceClient::new(self.channel().await?)
            .max_decoding_message_size(MAX_DECODE_BYTES))
    }

    pub async fn functions(&self) -> Result<FunctionServiceClient<AuthChannel>> {
        Ok(FunctionServiceClient::new(self.channel().await?)
            .max_decoding_message_size(MAX_DECODE_BYTES))
    }

    pub async fn runtimes(&self) -> Result<RuntimeServiceClient<AuthChannel>> {
        Ok(RuntimeServiceClient::new(self.channel().await?)
            .max_decoding_message_size(MAX_DECODE_BYTES))
    }

    pub async fn cluster(&self) -> Result<ClusterServiceClient<AuthChannel>> {
        Ok(ClusterServiceClient::new(self.channel().await?)
            .max_decoding_message_size(MAX_DECODE_BYTES))
    }

    pub async fn access(&self) -> Result<AccessServiceClient<AuthChannel>> {
        Ok(AccessServiceClient::new(self.channel().await?))
    }

    pub async fn namespaces(&self) -> Result<NamespaceServiceClient<AuthChannel>> {
        Ok(NamespaceServiceClient::new(self.channel().await?))
    }

    pub async fn secrets(&self) -> Result<SecretServiceClient<AuthChannel>> {
        Ok(SecretServiceClient::new(self.channel().await?))
    }

    pub async fn layers(&self) -> Result<LayerServiceClient<AuthChannel>> {
        Ok(LayerServiceClient::new(self.channel().await?))
    }

    // ------------------------------------------------------------ calls

    /// Runs `function` with `params_json` (JSON text; "" means {}) and
    /// returns the final record. A function that fails is not an error:
    /// the record says FAILED or TIMEOUT, with [`Call::error`].
    pub async fn invoke(&self, function: &str, params_json: impl Into<String>) -> Result<Call> {
        self.invoke_with(function, params_json, &CallOptions::default())
            .await
    }

    /// [`Client::invoke`] with the call's options (a client context).
    pub async fn invoke_with(
        &self,
        function: &str,
        params_json: impl Into<String>,
        options: &CallOptions,
    ) -> Result<Call> {
        let request = self.invoke_request(function, params_json.into(), options);
        self.retry_when_safe(|mut calls| {
            let request = self.request(request.clone());
            async move { calls.invoke(request).await }
        })
        .await
    }

    /// Records a call of `function` (durably) and returns its id at once.
    pub async fn submit(&self, function: &str, params_json: impl Into<String>) -> Result<String> {
        self.submit_with(function, params_json, &CallOptions::default())
            .await
    }

    /// [`Client::submit`] with the call's options (a client context).
    pub async fn submit_with(
        &self,
        function: &str,
        params_json: impl Into<String>,
        options: &CallOptions,
    ) -> Result<String> {
        let request = self.invoke_request(function, params_json.into(), options);
        let reply = self
            .retry_when_safe(|mut calls| {
                let request = self.request(request.clone());
                async move { calls.submit(request).await }
            })
            .await?;
        Ok(reply.call_id)
    }

    /// Follows call `id` to its final record (SUCCEEDED, FAILED or
    /// TIMEOUT); with `timeout`, gives up after it with
    /// [`Error::DeadlineExceeded`].
    pub async fn wait(&self, id: &str, timeout: Option<Duration>) -> Result<Call> {
        let request = WaitCallRequest {
            id: id.to_string(),
            timeout_ms: timeout.map(wait_timeout_ms).unwrap_or(0),
        };
        let mut stream = self
            .calls()
            .await?
            .wait_call(self.request(request))
            .await?
            .into_inner();
        let mut last: Option<Call> = None;
        while let Some(update) = stream.next().await {
            let call = update?;
            let done = is_final(call.status());
            last = Some(call);
            if done {
                break;
            }
        }
        match last {
            Some(call) if is_final(call.status()) => Ok(call),
            last => Err(Error::WaitEnded {
                id: id.to_string(),
                last_status: last.map(|c| status_name(c.status)),
            }),
        }
    }

    /// The record of call `id` as it is now.
    pub async fn get_call(&self, id: &str) -> Result<Call> {
        Ok(self
            .calls()
            .await?
            .get_call(self.request(GetCallRequest { id: id.to_string() }))
            .await?
            .into_inner())
    }

    /// Cancels call `id`: queued, it never runs; running, its container is
    /// killed. Returns its record, CANCELLED. A call that has ended is
    /// refused with FAILED_PRECONDITION (its record says how it ended).
    pub async fn cancel(&self, id: &str) -> Result<Call> {
        Ok(self
            .calls()
            .await?
            .cancel_call(self.request(CancelCallRequest { id: id.to_string() }))
            .await?
            .into_inner())
    }

    /// The logs of call `id` (stdout and stderr interleaved, bounded:
    /// `truncated` says they were cut) as recorded so far: a running call
    /// has none yet.
    pub async fn logs(&self, id: &str) -> Result<CallLogs> {
        Ok(self
            .calls()
            .await?
            .get_call_logs(self.request(GetCallLogsRequest { id: id.to_string() }))
            .await?
            .into_inner())
    }

    /// The logs of call `id` as they are written, ending with the call:
    /// a queued call's once it runs, a running call's from its start,
    /// and the rest of its final log when it ends (an ended call's whole
    /// log is one piece). Pieces skipped because this follower fell
    /// behind are marked in the text. The last piece's `truncated` says
    /// the final log was cut to its bound.
    pub fn follow_logs(&self, id: &str) -> impl Stream<Item = Result<CallLogs>> + Send + 'static {
        let client = self.clone();
        let id = id.to_string();
        futures::stream::once(async move {
            let stream = client
                .calls()
                .await?
                .follow_call_logs(client.request(FollowCallLogsRequest { id }))
                .await?
                .into_inner();
            let mut expected = 0u64;
            Ok::<_, Error>(stream.map(move |chunk| {
                let chunk = chunk?;
                let mut logs = Vec::new();
                if !chunk.r#final && chunk.offset > expected {
                    logs.extend_from_slice(
                        format!(
                            "\n[... {} bytes not followed ...]\n",
                            chunk.offset - expected
                        )
                        .as_bytes(),
                    );
                }
                expected = chunk.offset + chunk.data.len() as u64;
                logs.extend_from_slice(&chunk.data);
                Ok(CallLogs {
                    logs,
                    truncated: chunk.truncated,
                })
            }))
        })
        .try_flatten()
    }

    /// Calls in the client's namespace, newest first, without params and
    /// results (see [`Client::get_call`]); pages through ListCalls.
    pub async fn list_calls(&self, filter: &CallFilter) -> Result<Vec<Call>> {
        const MAX_PAGE: u32 = 1000;
        let limit = filter.limit;
        let mut calls = Vec::new();
        let mut page_token = String::new();
        let mut client = self.calls().await?;
        loop {
            let wanted = if limit == 0 {
                MAX_PAGE
            } else {
                (limit - calls.len() as u32).min(MAX_PAGE)
            };
            let request = ListCallsRequest {
                function: filter.function.clone().unwrap_or_default(),
                status: filter.status.map(|s| s as i32).unwrap_or(0),
                page_size: wanted,
                page_token: std::mem::take(&mut page_token),
                namespace: self.namespace.clone(),
            };
            let page = client.list_calls(self.request(request)).await?.into_inner();
            calls.extend(page.calls);
            if limit != 0 && calls.len() >= limit as usize {
                calls.truncate(limit as usize);
                break;
            }
            if page.next_page_token.is_empty() {
                break;
            }
            page_token = page.next_page_token;
        }
        Ok(calls)
    }

    /// The functions of the client's namespace; only those of `runtime` if
    /// given.
    pub async fn list_functions(&self, runtime: Option<&str>) -> Result<Vec<Function>> {
        let request = ListFunctionsRequest {
            runtime: runtime.unwrap_or_default().to_string(),
            namespace: self.namespace.clone(),
        };
        Ok(self
            .functions()
            .await?
            .list_functions(self.request(request))
            .await?
            .into_inner()
            .functions)
    }

    fn invoke_request(
        &self,
        function: &str,
        params_json: String,
        options: &CallOptions,
    ) -> InvokeRequest {
        InvokeRequest {
            function: function.to_string(),
            params_json,
            namespace: self.namespace.clone(),
            client_context: options.client_context.clone().unwrap_or_default(),
        }
    }

    /// Runs a call RPC; while the control plane answers UNAVAILABLE with
    /// the retry-safe mark (no leader for a moment, a replica stepping
    /// down: nothing was recorded) it is tried again, on the endpoints in
    /// turn, for up to SAFE_RETRY_FOR: a leader change or a rolling restart
    /// is not an error for the user. An UNAVAILABLE without the mark (the
    /// call may have been recorded) is reported, never resent.
    async fn retry_when_safe<T, F, Fut>(&self, mut op: F) -> Result<T>
    where
        F: FnMut(CallServiceClient<AuthChannel>) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let deadline = tokio::time::Instant::now() + SAFE_RETRY_FOR;
        let mut calls = self.calls().await?;
        let mut attempt = 0usize;
        loop {
            match op(calls.clone()).await {
                Err(status)
                    if status.code() == tonic::Code::Unavailable
                        && status
                            .metadata()
                            .contains_key(faas_proto::RETRY_SAFE_METADATA)
                        && tokio::time::Instant::now() < deadline =>
                {
                    attempt += 1;
                    tokio::time::sleep(Duration::from_millis(100 * attempt.min(5) as u64)).await;
                    // The endpoints from the next one on: a replica going
                    // away is left for another.
                    let mut rotated = self.shared.endpoints.clone();
                    if !rotated.is_empty() {
                        let n = attempt % rotated.len();
                        rotated.rotate_left(n);
                    }
                    if let Ok(channel) = connect::connect(&rotated, &self.shared.credentials).await
                    {
                        calls = CallServiceClient::new(channel)
                            .max_decoding_message_size(MAX_DECODE_BYTES);
                    }
                }
                other => return Ok(other?.into_inner()),
            }
        }
    }
}

/// A wait's timeout in ms: never 0 (which means none) for a timeout that
/// is not zero.
fn wait_timeout_ms(timeout: Duration) -> u64 {
    let ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
    if ms == 0 && !timeout.is_zero() {
        1
    } else {
        ms
    }
}

/// Whether a call in `status` is over (SUCCEEDED, FAILED, TIMEOUT or
/// CANCELLED).
pub fn is_final(status: CallStatus) -> bool {
    status.is_final()
}

/// The status as users read it: "succeeded", "queued", ...; "unknown(N)"
/// for a value this client does not know.
pub fn status_name(status: i32) -> String {
    match CallStatus::try_from(status) {
        Ok(status) => status.short_name(),
        Err(_) => format!("unknown({status})"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses() {
        assert!(is_final(CallStatus::Timeout));
        assert!(!is_final(CallStatus::Running));
        assert_eq!(status_name(CallStatus::Succeeded as i32), "succeeded");
        assert_eq!(status_name(99), "unknown(99)");
        assert_eq!(wait_timeout_ms(Duration::from_micros(10)), 1);
        assert_eq!(wait_timeout_ms(Duration::ZERO), 0);
    }
}
