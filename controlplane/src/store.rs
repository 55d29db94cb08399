//! Persistence in etcd: every object is a protobuf message under a versioned
//! key prefix (`<prefix>/<kind>/<name>`), so the stored form is the public
//! contract itself and needs no second schema.
//!
//! A call's params and result do not live in its record but beside it
//! (`call-params/<id>`, `call-results/<id>`), like its logs: listing N calls
//! never carries N payloads. Records written before that split carry them
//! inline; readers accept both forms. A result over [`RESULT_PART_BYTES`]
//! (up to 6 MiB, beyond etcd's 1.5 MiB request limit) is written in parts
//! (`call-results/<id>/<index>`) before the record, and its
//! `call-results/<id>` names how many there are ([`parts_marker`]).
//!
//! Every read of a prefix is paged by count, and the page size is adapted
//! to the size of the values seen, so that no response can exceed the
//! client's decode limit (etcd's values go up to its request limit, 1.5 MiB
//! by default: a fixed count of them has no fixed size).

use std::any::Any;

use etcd_client::{
    AlarmAction, AlarmOptions, AlarmType, Client, CompactionOptions, Compare, CompareOp, EventType,
    GetOptions, KvClient, SortOrder, SortTarget, Txn, TxnOp, TxnOpResponse, WatchClient,
    WatchOptions,
};
use faas_proto::v1::{Call, CallLogs, CallStatus};
use prost::Message;

/// The kinds of objects kept in etcd, each under its own key prefix.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Runtime,
    /// A function's current version, under its key (`namespace/name`, bare
    /// in "default").
    Function,
    /// Every kept version of a function, immutable once written, under
    /// `<function key>@<version, 12 digits>` (see [`version_name`]).
    FunctionVersion,
    /// A function's alias (`FunctionAlias`), under `<function key>@<alias>`.
    FunctionAlias,
    /// A call's record, without its params and result.
    Call,
    /// A call's logs, kept apart so that listing calls stays small.
    Logs,
    /// A call's params (the JSON text), beside its record.
    Params,
    /// A call's result (the JSON text), beside its record.
    Result,
    /// A node drained by an operator (a `Node` record): it stays drained
    /// across agent reconnects and leader changes until undrained.
    Drain,
    /// An API token (`ApiToken`, its secret's hash only), under its id.
    ApiToken,
    /// A join token (`JoinTokenRecord`), under its id.
    JoinToken,
    /// A node that joined (`NodeIdentity`), under its name.
    NodeIdentity,
    /// The cluster CA (`ClusterCaRecord`), under "ca".
    Pki,
    /// A namespace (`Namespace`), under its name.
    Namespace,
    /// A secret (`SecretRecord`, sealed), under its key (`namespace/name`,
    /// bare in "default").
    Secret,
    /// A layer version (`Layer`), under `<namespace>/<name>@<version, 12
    /// digits>` (the namespace always named; see [`version_name`]).
    Layer,
    /// Facts about the stored data itself (`StoreFormatRecord` under
    /// "format").
    Meta,
}

impl Kind {
    fn dir(self) -> &'static str {
        match self {
            Kind::Runtime => "runtimes",
            Kind::Function => "functions",
            Kind::FunctionVersion => "function-versions",
            Kind::FunctionAlias => "function-aliases",
            Kind::Call => "calls",
            Kind::Logs => "logs",
            Kind::Params => "call-params",
            Kind::Result => "call-results",
            Kind::Drain => "drains",
            Kind::ApiToken => "api-tokens",
            Kind::JoinToken => "join-tokens",
            Kind::NodeIdentity => "nodes",
            Kind::Pki => "pki",
            Kind::Namespace => "namespaces",
            Kind::Secret => "secrets",
            Kind::Layer => "layers",
            Kind::Meta => "meta",
        }
    }
}

/// The name of a function version's record: zero-padded, so that a
/// function's versions are in version order under its prefix. '@' is in no
/// name, so one function's prefix never covers another's.
pub fn version_name(function_key: &str, version: u64) -> String {
    format!("{function_key}@{version:012}")
}

/// The name of a function alias's record.
pub fn alias_name(function_key: &str, alias: &str) -> String {
    format!("{function_key}@{alias}")
}

/// The prefix every version and alias record of a function is under.
pub fn function_records_prefix(function_key: &str) -> String {
    format!("{function_key}@")
}

/// Largest response the store's clients decode. Pages are sized to stay far
/// below it; a page that still exceeds it is read again in halves.
pub const MAX_RESPONSE_BYTES: usize = 64 << 20;
/// What a page of a prefix read aims at, in bytes of values.
const PAGE_BYTES: usize = 8 << 20;
/// Most records a page holds, however small.
const MAX_PAGE: i64 = 1000;
/// The first page's count, before any value size is known. A prefix of
/// values near etcd's request limit overflows it: it is then halved.
const FIRST_PAGE: i64 = 128;
/// etcd's default `--max-txn-ops`: a transaction holds at most this many
/// operations.
pub const MAX_TXN_OPS: usize = 128;

/// How many records the next page asks for, given the largest value of the
/// last one: about [`PAGE_BYTES`] of them, at least one, at most
/// [`MAX_PAGE`].
pub fn next_page_limit(largest_value: usize) -> i64 {
    ((PAGE_BYTES / largest_value.max(256)) as i64).clamp(1, MAX_PAGE)
}

/// What [`Store::create_call_if_current`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Created {
    Recorded,
    /// Nothing recorded: this replica no longer leads.
    NotLeader,
    /// Nothing recorded: a record compared changed (or went) since it
    /// was read.
    Stale,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("etcd: {0}")]
    Etcd(etcd_client::Error),
    #[error("corrupt record at {key}: {source}")]
    Decode {
        key: String,
        source: prost::DecodeError,
    },
    /// etcd's space quota is reached (its NOSPACE alarm is raised): no
    /// write succeeds until the control plane has compacted, defragmented
    /// and disarmed it.
    #[error("cluster storage is full (etcd's space quota is reached); the control plane is reclaiming space: retry later")]
    NoSpace,
    /// The request is over etcd's request or transaction size limits: it
    /// can never succeed as it is.
    #[error("the record is too large for the state store: {0}")]
    TooLarge(String),
    /// A file of the TLS towards etcd cannot be read (only at connect).
    #[error("reading {0}: {1}")]
    TlsFile(std::path::PathBuf, std::io::Error),
    /// No connection to the member at `endpoint` (only at connect); the
    /// reason with its causes, down to the system's (tonic's own message
    /// is only "transport error").
    #[error("etcd at {endpoint} is unreachable: {reason}")]
    Unreachable { endpoint: String, reason: String },
}

impl StoreError {
    /// [`StoreError::Unreachable`] from a failed connect to `endpoint`.
    fn unreachable(endpoint: &str, error: etcd_client::Error) -> StoreError {
        let mut reason = error.to_string();
        // etcd-client's error names no source: start from tonic's.
        let mut source = match &error {
            etcd_client::Error::TransportError(transport) => std::error::Error::source(transport),
            other => std::error::Error::source(other),
        };
        while let Some(cause) = source {
            let cause_text = cause.to_string();
            if !reason.ends_with(&cause_text) {
                reason = format!("{reason}: {cause_text}");
            }
            source = cause.source();
        }
        StoreError::Unreachable {
            endpoint: endpoint.to_string(),
            reason,
        }
    }
}

impl StoreError {
    /// The same request cannot succeed on retry (not before an operator or
    /// the space reclaimer acts): a caller ends what it was doing instead
    /// of retrying forever.
    pub fn is_permanent(&self) -> bool {
        matches!(self, StoreError::NoSpace | StoreError::TooLarge(_))
    }
}

impl From<etcd_client::Error> for StoreError {
    fn from(e: etcd_client::Error) -> StoreError {
        if let etcd_client::Error::GRpcStatus(s) = &e {
            let message = s.message();
            if message.contains("database space exceeded") {
                return StoreError::NoSpace;
            }
            // etcd: "request is too large", "too many operations in txn
            // request"; gRPC: "received message larger than max".
            if message.contains("request is too large")
                || message.contains("too many operations")
                || message.contains("larger than max")
            {
                return StoreError::TooLarge(message.to_string());
            }
        }
        StoreError::Etcd(e)
    }
}

/// Whether a read failed because its response was over the decode limit.
fn response_too_large(e: &etcd_client::Error) -> bool {
    matches!(e, etcd_client::Error::GRpcStatus(s)
        if s.message().contains("decoded message length too large"))
}

/// The record of a call as stored: without its params and result.
fn strip_payloads(call: &Call) -> Call {
    Call {
        params_json: String::new(),
        result_json: String::new(),
        ..call.clone()
    }
}

/// Lambda's limit on a synchronous response: 6 MiB.
pub const DEFAULT_MAX_RESULT_BYTES: u64 = 6 << 20;

/// The largest piece of a result written in one etcd request: with the
/// record and 64 KiB of logs, within etcd's default 1.5 MiB request limit.
pub const RESULT_PART_BYTES: usize = 1 << 20;

/// A result cut into the pieces it is stored in: one (itself) if it fits
/// in one request. Cut on bytes: the parts are joined before decoding.
fn result_parts(result: &str) -> Vec<&[u8]> {
    result.as_bytes().chunks(RESULT_PART_BYTES).collect()
}

/// What `call-results/<id>` holds for a result in parts: a NUL (no JSON
/// text starts with one) and the count of parts.
fn parts_marker(parts: usize) -> Vec<u8> {
    format!("\0parts:{parts}").into_bytes()
}

/// The result a `call-results/<id>` value stands for: itself, or, for a
/// marker, its parts joined, if all of them are there (a record never
/// names a result whose parts are missing: none if it does).
fn join_result_parts(head: Vec<u8>, parts: Vec<Vec<u8>>) -> Option<Vec<u8>> {
    let Some(count) = head
        .strip_prefix(b"\0parts:")
        .and_then(|n| std::str::from_utf8(n).ok()?.parse::<usize>().ok())
    else {
        return Some(head);
    };
    if parts.len() < count {
        tracing::error!(
            expected = count,
            found = parts.len(),
            "a stored result is missing parts"
        );
        return None;
    }
    Some(parts.into_iter().take(count).flatten().collect())
}

/// Bounds on what a call's final write carries, so that it can always be
/// stored (logs within the record's request; a result in parts).
#[derive(Clone, Debug)]
pub struct PayloadLimits {
    pub max_result_bytes: u64,
    pub max_log_bytes: u64,
}

impl Default for PayloadLimits {
    fn default() -> Self {
        PayloadLimits {
            max_result_bytes: DEFAULT_MAX_RESULT_BYTES,
            max_log_bytes: 64 << 10,
        }
    }
}

/// Fits a final call and its logs within `limits`: a result over the limit
/// cannot be stored, so the call ends FAILED with reason `platform`; logs
/// over it are cut (keeping their end, where errors are) and marked
/// truncated. Pure: the broker may apply it before publishing.
pub fn bound_final(call: &mut Call, logs: &mut CallLogs, limits: &PayloadLimits) {
    let result_len = call.result_json.len() as u64;
    if result_len > limits.max_result_bytes {
        call.result_json.clear();
        call.result_base64 = false;
        call.status = CallStatus::Failed as i32;
        let log_tail = call.error.take().map(|e| e.log_tail).unwrap_or_default();
        call.error = Some(faas_proto::v1::CallError {
            reason: "platform".into(),
            message: format!(
                "the result is {result_len} bytes, over the limit of {} bytes (the control plane's max_result_bytes)",
                limits.max_result_bytes
            ),
            log_tail,
        });
    }
    if logs.logs.len() as u64 > limits.max_log_bytes {
        let cut = logs.logs.len() - limits.max_log_bytes as usize;
        logs.logs.drain(..cut);
        logs.truncated = true;
        call.logs_truncated = true;
    }
    if let Some(error) = call.error.as_mut() {
        // The tail is for a glance; the logs hold the rest.
        const MAX_TAIL: usize = 4 << 10;
        if error.log_tail.len() > MAX_TAIL {
            let mut start = error.log_tail.len() - MAX_TAIL;
            while !error.log_tail.is_char_boundary(start) {
                start += 1;
            }
            error.log_tail.drain(..start);
        }
        if error.message.len() > MAX_TAIL {
            let mut end = MAX_TAIL;
            while !error.message.is_char_boundary(end) {
                end -= 1;
            }
            error.message.truncate(end);
        }
    }
}

/// The end of the key range of every key starting with `prefix`.
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

#[derive(Clone)]
pub struct Store {
    /// One client per etcd member: etcd-client's own balancing keeps
    /// sending requests to a dead member, so the store moves to the next
    /// member itself when one stops answering.
    clients: std::sync::Arc<Vec<Client>>,
    /// Their KV and watch clients, with the decode limit raised to
    /// [`MAX_RESPONSE_BYTES`] (etcd-client's default is 4 MiB).
    kvs: std::sync::Arc<Vec<KvClient>>,
    watchers: std::sync::Arc<Vec<WatchClient>>,
    current: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    /// When the store last moved to another member (ms since `epoch`):
    /// a burst of concurrent failures on one dead member moves once, not
    /// once per failed request (which could cycle back to the dead one).
    switched_at_ms: std::sync::Arc<std::sync::atomic::AtomicU64>,
    epoch: std::time::Instant,
    prefix: String,
    /// Woken when a write meets etcd's NOSPACE alarm, so that the leader
    /// reclaims space at once rather than at its next periodic check.
    nospace: std::sync::Arc<tokio::sync::Notify>,
    payload_limits: std::sync::Arc<PayloadLimits>,
}

/// Failures closer together than this move to the next member only once.
const MEMBER_SWITCH_DAMPING_MS: u64 = 500;

/// Files of the TLS towards etcd: the CA its members chain to, and the
/// client certificate and key this replica shows (etcd's
/// --client-cert-auth).
#[derive(Clone, Debug)]
pub struct EtcdTls {
    pub ca: std::path::PathBuf,
    pub identity: Option<(std::path::PathBuf, std::path::PathBuf)>,
}

impl EtcdTls {
    fn options(&self) -> Result<etcd_client::TlsOptions, StoreError> {
        let read = |path: &std::path::Path| {
            std::fs::read(path).map_err(|e| StoreError::TlsFile(path.to_path_buf(), e))
        };
        let mut tls = etcd_client::TlsOptions::new()
            .ca_certificate(etcd_client::Certificate::from_pem(read(&self.ca)?));
        if let Some((cert, key)) = &self.identity {
            tls = tls.identity(etcd_client::Identity::from_pem(read(cert)?, read(key)?));
        }
        Ok(tls)
    }
}

/// An etcd endpoint on a unix socket: `unix://` and the socket's path.
pub const UNIX_PREFIX: &str = "unix://";

/// A client of the etcd member listening on the unix socket `socket`.
///
/// Why: etcd 3.4 serves its TLS clients through Go's HTTP server (etcd
/// issue #15402), which costs about half a millisecond per request here, on
/// the two writes every call makes (recorded, then its result). A member on
/// the same machine is reached on its socket instead: plain gRPC, the
/// socket's directory (root only, 0700) standing for the client
/// certificate, as containerd's socket does.
async fn connect_unix(socket: &str) -> Result<Client, etcd_client::Error> {
    let socket = std::path::PathBuf::from(socket);
    // The URI only names the HTTP/2 authority; the connector opens the socket.
    let channel = tonic::transport::Endpoint::from_static("http://etcd.local")
        .connect_timeout(std::time::Duration::from_secs(5))
        .timeout(std::time::Duration::from_secs(10))
        .http2_keep_alive_interval(std::time::Duration::from_secs(5))
        .keep_alive_timeout(std::time::Duration::from_secs(5))
        .keep_alive_while_idle(true)
        .connect_with_connector(tower::service_fn(move |_: http::Uri| {
            let socket = socket.clone();
            async move {
                tokio::net::UnixStream::connect(socket)
                    .await
                    .map(hyper_util::rt::TokioIo::new)
            }
        }))
        .await?;
    Client::from_channel(etcd_client::Channel::Tonic(channel), None).await
}

impl Store {
    pub async fn connect(
        endpoints: &[String],
        prefix: &str,
        tls: Option<&EtcdTls>,
    ) -> Result<Store, StoreError> {
        let mut options = etcd_client::ConnectOptions::new()
            .with_connect_timeout(std::time::Duration::from_secs(5))
            .with_timeout(std::time::Duration::from_secs(10))
            .with_keep_alive(
                std::time::Duration::from_secs(5),
                std::time::Duration::from_secs(5),
            );
        if let Some(tls) = tls {
            options = options.with_tls(tls.options()?);
        }
        let mut clients = Vec::new();
        let mut last_error = None;
        for endpoint in endpoints {
            let connected = match endpoint.strip_prefix(UNIX_PREFIX) {
                Some(socket) => connect_unix(socket).await,
                None => Client::connect([endpoint], Some(options.clone())).await,
            };
            match connected.map_err(|e| StoreError::unreachable(endpoint, e)) {
                Ok(c) => clients.push(c),
                Err(e) => {
                    tracing::warn!(%endpoint, error = %e, "etcd member not reachable");
                    last_error = Some(e);
                }
            }
        }
        if clients.is_empty() {
            return Err(last_error.unwrap_or_else(|| {
                StoreError::Etcd(etcd_client::Error::InvalidArgs(
                    "no etcd endpoint given".into(),
                ))
            }));
        }
        let kvs = clients
            .iter()
            .map(|c| c.kv_client().max_decoding_message_size(MAX_RESPONSE_BYTES))
            .collect();
        let watchers = clients
            .iter()
            .map(|c| {
                c.watch_client()
                    .max_decoding_message_size(MAX_RESPONSE_BYTES)
            })
            .collect();
        Ok(Store {
            clients: std::sync::Arc::new(clients),
            kvs: std::sync::Arc::new(kvs),
            watchers: std::sync::Arc::new(watchers),
            current: Default::default(),
            switched_at_ms: Default::default(),
            epoch: std::time::Instant::now(),
            prefix: prefix.trim_end_matches('/').to_string(),
            nospace: Default::default(),
            payload_limits: Default::default(),
        })
    }

    /// Sets the bounds [`Store::write_final_call`] applies.
    pub fn with_payload_limits(mut self, limits: PayloadLimits) -> Store {
        self.payload_limits = std::sync::Arc::new(limits);
        self
    }

    fn member(&self) -> usize {
        self.current.load(std::sync::atomic::Ordering::Relaxed) % self.clients.len()
    }

    /// A client of the etcd member in use.
    pub fn client(&self) -> Client {
        self.clients[self.member()].clone()
    }

    /// The KV client of the etcd member in use (large responses allowed).
    fn kv(&self) -> KvClient {
        self.kvs[self.member()].clone()
    }

    /// How many etcd members the store knows.
    pub fn members(&self) -> usize {
        self.clients.len()
    }

    /// The client of the member `offset` places after the one in use, for
    /// callers that must try every member in turn (lease renewal).
    pub fn client_after(&self, offset: usize) -> Client {
        let i = self.current.load(std::sync::atomic::Ordering::Relaxed) + offset;
        self.clients[i % self.clients.len()].clone()
    }

    /// Moves to the next etcd member (after an error of a call made with
    /// [`Store::client`] directly), unless another failure just did.
    pub fn next_member(&self) -> bool {
        use std::sync::atomic::Ordering;
        if self.clients.len() < 2 {
            return false;
        }
        let now = self.epoch.elapsed().as_millis() as u64 + MEMBER_SWITCH_DAMPING_MS;
        let last = self.switched_at_ms.load(Ordering::Relaxed);
        if now < last + MEMBER_SWITCH_DAMPING_MS
            || self
                .switched_at_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            return false;
        }
        self.current.fetch_add(1, Ordering::Relaxed);
        true
    }

    /// Passes a result through; on an error that says the member is gone
    /// (transport, unavailable, timeout), the next call goes to the next
    /// member. Errors are typed (NOSPACE, too large: see [`StoreError`]).
    pub fn check<T>(&self, result: Result<T, etcd_client::Error>) -> Result<T, StoreError> {
        if let Err(e) = &result {
            let gone = match e {
                etcd_client::Error::TransportError(_) => true,
                etcd_client::Error::GRpcStatus(s) => matches!(
                    s.code(),
                    tonic::Code::Unavailable
                        | tonic::Code::DeadlineExceeded
                        | tonic::Code::Cancelled
                        | tonic::Code::Unknown
                ),
                _ => false,
            };
            if gone && self.next_member() {
                tracing::warn!(error = %e, member = self.member(), "etcd member not answering; moving to the next");
            }
        }
        result.map_err(|e| {
            let error = StoreError::from(e);
            if matches!(error, StoreError::NoSpace) {
                self.nospace.notify_one();
            }
            error
        })
    }

    /// The key prefix everything lives under (e.g. `/faas/v1`).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub fn key(&self, kind: Kind, name: &str) -> String {
        format!("{}/{}/{}", self.prefix, kind.dir(), name)
    }

    fn dir(&self, kind: Kind) -> String {
        format!("{}/{}/", self.prefix, kind.dir())
    }

    /// A record with the revision it was last changed at (for a later
    /// compare, see [`Store::create_call_if_current`]).
    pub async fn get_versioned<M: Message + Default>(
        &self,
        kind: Kind,
        name: &str,
    ) -> Result<Option<(M, i64)>, StoreError> {
        let key = self.key(kind, name);
        let resp =
            self.check(crate::metrics::timed_etcd("get", self.kv().get(key.as_str(), None)).await)?;
        match resp.kvs().first() {
            None => Ok(None),
            Some(kv) => Ok(Some((decode(&key, kv.value())?, kv.mod_revision()))),
        }
    }

    pub async fn get<M: Message + Default>(
        &self,
        kind: Kind,
        name: &str,
    ) -> Result<Option<M>, StoreError> {
        Ok(self
            .get_versioned(kind, name)
            .await?
            .map(|(value, _)| value))
    }

    /// The object and its key's modification revision (for
    /// [`Store::put_if_mod_revision`]).
    pub async fn get_revision<M: Message + Default>(
        &self,
        kind: Kind,
        name: &str,
    ) -> Result<Option<(M, i64)>, StoreError> {
        let key = self.key(kind, name);
        let resp =
            self.check(crate::metrics::timed_etcd("get", self.kv().get(key.as_str(), None)).await)?;
        match resp.kvs().first() {
            None => Ok(None),
            Some(kv) => Ok(Some((decode(&key, kv.value())?, kv.mod_revision()))),
        }
    }

    /// Writes the object only if its key was last modified at `revision`
    /// (unlike a version, a revision is never reused after a delete and a
    /// new create); false if it changed or was deleted since.
    pub async fn put_if_mod_revision<M: Message + 'static>(
        &self,
        kind: Kind,
        name: &str,
        value: &M,
        revision: i64,
    ) -> Result<bool, StoreError> {
        self.if_mod_revision(kind, name, revision, self.put_ops(kind, name, value))
            .await
    }

    /// Runs `ops` only if the object's key was last modified at
    /// `revision`; false if it changed or was deleted since.
    async fn if_mod_revision(
        &self,
        kind: Kind,
        name: &str,
        revision: i64,
        ops: Vec<TxnOp>,
    ) -> Result<bool, StoreError> {
        let key = self.key(kind, name);
        let txn = Txn::new()
            .when([Compare::mod_revision(
                key.as_str(),
                CompareOp::Equal,
                revision,
            )])
            .and_then(ops);
        Ok(self
            .check(crate::metrics::timed_etcd("txn", self.kv().txn(txn)).await)?
            .succeeded())
    }

    /// The operations that write an object: a call's record is written
    /// without its params and result, and a result it carries goes beside
    /// it (params are written once, by [`Store::create_call_if_current`]).
    fn put_ops<M: Message + 'static>(&self, kind: Kind, name: &str, value: &M) -> Vec<TxnOp> {
        let key = self.key(kind, name);
        match (value as &dyn Any).downcast_ref::<Call>() {
            Some(call) if kind == Kind::Call => {
                let mut ops = vec![TxnOp::put(key, strip_payloads(call).encode_to_vec(), None)];
                if !call.result_json.is_empty() {
                    // A result in parts is written before, by
                    // [`Store::write_result_parts`]: here only its marker.
                    let parts = result_parts(&call.result_json);
                    let value = if parts.len() > 1 {
                        parts_marker(parts.len())
                    } else {
                        call.result_json.as_bytes().to_vec()
                    };
                    ops.push(TxnOp::put(self.key(Kind::Result, name), value, None));
                }
                ops
            }
            _ => vec![TxnOp::put(key, value.encode_to_vec(), None)],
        }
    }

    pub async fn put<M: Message + 'static>(
        &self,
        kind: Kind,
        name: &str,
        value: &M,
    ) -> Result<(), StoreError> {
        let ops = self.put_ops(kind, name, value);
        self.check(
            crate::metrics::timed_etcd("txn", self.kv().txn(Txn::new().and_then(ops))).await,
        )?;
        Ok(())
    }

    /// Writes several objects in one transaction (one Raft commit). Call
    /// records are split from their result as by [`Store::put`].
    pub async fn put_many(&self, items: Vec<(Kind, String, Vec<u8>)>) -> Result<(), StoreError> {
        let mut ops = Vec::new();
        for (kind, name, value) in items {
            if kind == Kind::Call {
                let call: Call = decode(&self.key(kind, &name), &value)?;
                ops.extend(self.put_ops(kind, &name, &call));
            } else {
                ops.push(TxnOp::put(self.key(kind, &name), value, None));
            }
        }
        self.check(
            crate::metrics::timed_etcd("txn", self.kv().txn(Txn::new().and_then(ops))).await,
        )?;
        Ok(())
    }

    /// Writes a function's new version: its current record and the
    /// version's own, in one transaction; with `expected`, only if the
    /// current record was last modified at that revision, 0 meaning it
    /// must not exist (false if not).
    pub async fn put_function(
        &self,
        key: &str,
        function: &faas_proto::v1::Function,
        expected: Option<i64>,
    ) -> Result<bool, StoreError> {
        let value = function.encode_to_vec();
        let ops = vec![
            TxnOp::put(self.key(Kind::Function, key), value.clone(), None),
            TxnOp::put(
                self.key(Kind::FunctionVersion, &version_name(key, function.version)),
                value,
                None,
            ),
        ];
        let mut txn = Txn::new();
        if let Some(revision) = expected {
            txn = txn.when([Compare::mod_revision(
                self.key(Kind::Function, key),
                CompareOp::Equal,
                revision,
            )]);
        }
        Ok(self
            .check(crate::metrics::timed_etcd("txn", self.kv().txn(txn.and_then(ops))).await)?
            .succeeded())
    }

    /// The records of a kind whose names start with `name_prefix`, with
    /// their names and revisions, in name order. For small sets (a
    /// function's versions and aliases, bounded by the limits): one read.
    pub async fn list_under<M: Message + Default>(
        &self,
        kind: Kind,
        name_prefix: &str,
    ) -> Result<Vec<(String, M, i64)>, StoreError> {
        let dir = self.dir(kind);
        let key = self.key(kind, name_prefix);
        let resp = self.check(
            crate::metrics::timed_etcd(
                "get",
                self.kv()
                    .get(key.as_str(), Some(GetOptions::new().with_prefix())),
            )
            .await,
        )?;
        resp.kvs()
            .iter()
            .map(|kv| {
                let full = String::from_utf8_lossy(kv.key()).into_owned();
                let value = decode(&full, kv.value())?;
                let name = full.strip_prefix(dir.as_str()).unwrap_or(&full).to_string();
                Ok((name, value, kv.mod_revision()))
            })
            .collect()
    }

    /// Deletes every record of a kind whose name starts with `name_prefix`;
    /// how many went.
    pub async fn delete_under(&self, kind: Kind, name_prefix: &str) -> Result<i64, StoreError> {
        let key = self.key(kind, name_prefix);
        let resp = self.check(
            crate::metrics::timed_etcd(
                "delete",
                self.kv().delete(
                    key.as_str(),
                    Some(etcd_client::DeleteOptions::new().with_prefix()),
                ),
            )
            .await,
        )?;
        Ok(resp.deleted())
    }

    /// Creates the object; false if one of that name already exists.
    pub async fn create<M: Message + 'static>(
        &self,
        kind: Kind,
        name: &str,
        value: &M,
    ) -> Result<bool, StoreError> {
        let key = self.key(kind, name);
        let txn = Txn::new()
            .when([Compare::create_revision(key.as_str(), CompareOp::Equal, 0)])
            .and_then(self.put_ops(kind, name, value));
        Ok(self
            .check(crate::metrics::timed_etcd("txn", self.kv().txn(txn)).await)?
            .succeeded())
    }

    /// Records a new call: its record and, beside it, its params, in one
    /// transaction; fenced by the leader's election key if given (false:
    /// this replica no longer leads, and nothing was written).
    /// Records a new call if this replica still leads (`fence`) and each
    /// of `current` (kind, name, revision) is still at that revision (a
    /// record that is gone is at none): one transaction.
    pub async fn create_call_if_current(
        &self,
        call: &Call,
        fence: Option<&crate::leader::LeaderFence>,
        current: &[(Kind, &str, i64)],
    ) -> Result<Created, StoreError> {
        let mut ops = self.put_ops(Kind::Call, &call.id, call);
        ops.push(TxnOp::put(
            self.key(Kind::Params, &call.id),
            call.params_json.as_bytes(),
            None,
        ));
        let mut compares: Vec<Compare> = current
            .iter()
            .map(|(kind, name, revision)| {
                Compare::mod_revision(self.key(*kind, name), CompareOp::Equal, *revision)
            })
            .collect();
        let mut otherwise = Vec::new();
        if let Some(fence) = fence {
            compares.push(Compare::create_revision(
                fence.key.clone(),
                CompareOp::Equal,
                fence.revision,
            ));
            // Which compare failed: the fence, or a record?
            otherwise.push(TxnOp::get(fence.key.clone(), None));
        }
        let resp = self.check(
            crate::metrics::timed_etcd(
                "txn",
                self.kv()
                    .txn(Txn::new().when(compares).and_then(ops).or_else(otherwise)),
            )
            .await,
        )?;
        if resp.succeeded() {
            return Ok(Created::Recorded);
        }
        let still_leads = match fence {
            None => true,
            Some(fence) => resp.op_responses().into_iter().any(|r| match r {
                TxnOpResponse::Get(get) => get
                    .kvs()
                    .first()
                    .is_some_and(|kv| kv.create_revision() == fence.revision),
                _ => false,
            }),
        };
        Ok(if still_leads {
            Created::Stale
        } else {
            Created::NotLeader
        })
    }

    /// Records a call's final state with its result and logs, each under
    /// its own key, in one transaction, first fitting them within the
    /// payload limits ([`bound_final`]). Returns the call as recorded (what
    /// waiters are to be told). A [`StoreError::is_permanent`] error
    /// (NOSPACE, too large) means it cannot be written as it is.
    pub async fn write_final_call(
        &self,
        mut call: Call,
        mut logs: CallLogs,
    ) -> Result<Call, StoreError> {
        bound_final(&mut call, &mut logs, &self.payload_limits);
        self.write_result_parts(&call).await?;
        let mut ops = self.put_ops(Kind::Call, &call.id, &call);
        ops.push(TxnOp::put(
            self.key(Kind::Logs, &call.id),
            logs.encode_to_vec(),
            None,
        ));
        self.check(
            crate::metrics::timed_etcd("txn", self.kv().txn(Txn::new().and_then(ops))).await,
        )?;
        Ok(call)
    }

    /// Writes a result too large for one etcd request in parts, one
    /// request each, before the record that makes them visible (a result
    /// that fits is written with the record). Parts left by a write that
    /// failed are overwritten by the retry, or deleted with the call.
    async fn write_result_parts(&self, call: &Call) -> Result<(), StoreError> {
        let parts = result_parts(&call.result_json);
        if parts.len() < 2 {
            return Ok(());
        }
        for (index, part) in parts.iter().enumerate() {
            self.check(
                crate::metrics::timed_etcd(
                    "put",
                    self.kv()
                        .put(self.result_part_key(&call.id, index), *part, None),
                )
                .await,
            )?;
        }
        Ok(())
    }

    /// `call-results/<id>/<index>`: zero-padded, so that key order is
    /// part order.
    fn result_part_key(&self, id: &str, index: usize) -> String {
        format!("{}{index:04}", self.result_parts_prefix(id))
    }

    fn result_parts_prefix(&self, id: &str) -> String {
        format!("{}/", self.key(Kind::Result, id))
    }

    /// The calls still queued or running, with their params (a new leader
    /// runs or awaits them). Finished calls are skipped as they are read.
    pub async fn pending_calls(&self) -> Result<Vec<Call>, StoreError> {
        let mut pending = Vec::new();
        self.scan(Kind::Call, Order::Ascending, None, |_, call: Call| {
            if matches!(call.status(), CallStatus::Queued | CallStatus::Running) {
                pending.push(call);
            }
            true
        })
        .await?;
        // Pending records from before payloads moved beside them carry
        // their params inline: they are moved beside now, as the record's
        // next write (RUNNING, final) stores it without them.
        for call in pending.iter().filter(|c| !c.params_json.is_empty()) {
            self.check(
                crate::metrics::timed_etcd(
                    "put",
                    self.kv().put(
                        self.key(Kind::Params, &call.id),
                        call.params_json.as_bytes(),
                        None,
                    ),
                )
                .await,
            )?;
        }
        self.fill_params(&mut pending).await?;
        Ok(pending)
    }

    /// A call with its params and result, read in one transaction. Records
    /// written before payloads moved beside them carry them inline.
    pub async fn get_call(&self, id: &str) -> Result<Option<Call>, StoreError> {
        let keys = [
            self.key(Kind::Call, id),
            self.key(Kind::Params, id),
            self.key(Kind::Result, id),
        ];
        let mut ops: Vec<TxnOp> = keys.iter().map(|k| TxnOp::get(k.as_str(), None)).collect();
        // A result in parts: read in the same transaction (the response
        // may hold 6 MiB; the client decodes up to MAX_RESPONSE_BYTES).
        ops.push(TxnOp::get(
            self.result_parts_prefix(id),
            Some(GetOptions::new().with_prefix()),
        ));
        let resp = self.check(
            crate::metrics::timed_etcd("txn", self.kv().txn(Txn::new().and_then(ops))).await,
        )?;
        let mut responses = resp.op_responses();
        let parts: Vec<Vec<u8>> = match responses.pop() {
            Some(TxnOpResponse::Get(g)) => g.kvs().iter().map(|kv| kv.value().to_vec()).collect(),
            _ => Vec::new(),
        };
        let mut values: Vec<Option<Vec<u8>>> = responses
            .into_iter()
            .map(|r| match r {
                TxnOpResponse::Get(g) => g.kvs().first().map(|kv| kv.value().to_vec()),
                _ => None,
            })
            .collect();
        if let Some(result) = values.get_mut(2) {
            *result = result.take().and_then(|v| join_result_parts(v, parts));
        }
        let Some(Some(record)) = values.first() else {
            return Ok(None);
        };
        let mut call: Call = decode(&keys[0], record)?;
        let text = |i: usize| {
            values
                .get(i)
                .cloned()
                .flatten()
                .map(|v| String::from_utf8_lossy(&v).into_owned())
        };
        if call.params_json.is_empty() {
            call.params_json = text(1).unwrap_or_default();
        }
        if call.result_json.is_empty() {
            call.result_json = text(2).unwrap_or_default();
        }
        Ok(Some(call))
    }

    /// The params of each call, read beside its record (or inline, for old
    /// records), a few per transaction so that no response is too large.
    pub async fn fill_params(&self, calls: &mut [Call]) -> Result<(), StoreError> {
        // Each value is at most etcd's request limit (1.5 MiB by default).
        const PER_TXN: usize = 16;
        let mut missing: Vec<&mut Call> = calls
            .iter_mut()
            .filter(|c| c.params_json.is_empty())
            .collect();
        for chunk in missing.chunks_mut(PER_TXN) {
            let txn = Txn::new().and_then(
                chunk
                    .iter()
                    .map(|c| TxnOp::get(self.key(Kind::Params, &c.id), None))
                    .collect::<Vec<_>>(),
            );
            let resp = self.check(crate::metrics::timed_etcd("txn", self.kv().txn(txn)).await)?;
            for (call, r) in chunk.iter_mut().zip(resp.op_responses()) {
                if let TxnOpResponse::Get(g) = r {
                    if let Some(kv) = g.kvs().first() {
                        call.params_json = String::from_utf8_lossy(kv.value()).into_owned();
                    }
                }
            }
        }
        Ok(())
    }

    /// Writes the object only if its key is at `version` (1: written once);
    /// false if it was changed since.
    pub async fn put_if_version<M: Message + 'static>(
        &self,
        kind: Kind,
        name: &str,
        value: &M,
        version: i64,
    ) -> Result<bool, StoreError> {
        let key = self.key(kind, name);
        let txn = Txn::new()
            .when([Compare::version(key.as_str(), CompareOp::Equal, version)])
            .and_then(self.put_ops(kind, name, value));
        Ok(self
            .check(crate::metrics::timed_etcd("txn", self.kv().txn(txn)).await)?
            .succeeded())
    }

    /// How many objects of a kind there are (from etcd's index: no value
    /// is read).
    pub async fn count(&self, kind: Kind) -> Result<i64, StoreError> {
        let dir = self.dir(kind);
        let opts = GetOptions::new().with_prefix().with_count_only();
        Ok(self
            .check(
                crate::metrics::timed_etcd("get", self.kv().get(dir.as_str(), Some(opts))).await,
            )?
            .count())
    }

    /// Deletes several objects, in transactions of at most
    /// [`MAX_TXN_OPS`] operations each.
    pub async fn delete_many(&self, items: &[(Kind, String)]) -> Result<(), StoreError> {
        for chunk in items.chunks(MAX_TXN_OPS) {
            let ops: Vec<TxnOp> = chunk
                .iter()
                .map(|(kind, name)| TxnOp::delete(self.key(*kind, name), None))
                .collect();
            match self.check(
                crate::metrics::timed_etcd("txn", self.kv().txn(Txn::new().and_then(ops))).await,
            ) {
                Ok(_) => {}
                // A full etcd refuses transactions, but not plain deletes:
                // deleting is how space is reclaimed.
                Err(StoreError::NoSpace) => {
                    for (kind, name) in chunk {
                        self.check(
                            crate::metrics::timed_etcd(
                                "delete",
                                self.kv().delete(self.key(*kind, name), None),
                            )
                            .await,
                        )?;
                    }
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Deletes calls with everything beside their records (params, result,
    /// logs).
    pub async fn delete_calls(&self, ids: &[String]) -> Result<(), StoreError> {
        let items: Vec<(Kind, String)> = ids
            .iter()
            .flat_map(|id| {
                [Kind::Call, Kind::Params, Kind::Result, Kind::Logs].map(|k| (k, id.clone()))
            })
            .collect();
        self.delete_many(&items).await?;
        // A result's parts, if it had any (one range delete a call: a
        // plain delete, which a full etcd still accepts).
        for id in ids {
            self.check(
                crate::metrics::timed_etcd(
                    "delete",
                    self.kv().delete(
                        self.result_parts_prefix(id),
                        Some(etcd_client::DeleteOptions::new().with_prefix()),
                    ),
                )
                .await,
            )?;
        }
        Ok(())
    }

    /// Deletes the object only if its key was last modified at
    /// `revision`; false if it changed or was deleted since.
    pub async fn delete_if_mod_revision(
        &self,
        kind: Kind,
        name: &str,
        revision: i64,
    ) -> Result<bool, StoreError> {
        let delete = vec![TxnOp::delete(self.key(kind, name), None)];
        self.if_mod_revision(kind, name, revision, delete).await
    }

    /// Deletes the object; false if it did not exist.
    pub async fn delete(&self, kind: Kind, name: &str) -> Result<bool, StoreError> {
        let resp = self.check(
            crate::metrics::timed_etcd("delete", self.kv().delete(self.key(kind, name), None))
                .await,
        )?;
        Ok(resp.deleted() > 0)
    }

    /// Every object of a kind, in key order (read page by page).
    pub async fn list<M: Message + Default>(&self, kind: Kind) -> Result<Vec<M>, StoreError> {
        let mut out = Vec::new();
        self.scan(kind, Order::Ascending, None, |_, m| {
            out.push(m);
            true
        })
        .await?;
        Ok(out)
    }

    /// Objects of a kind with their names, in `order`, starting strictly
    /// after `after` (a name) if given, handed to `visit` until it returns
    /// false. Read page by page at one revision (the first page's), which
    /// is returned.
    pub async fn scan<M: Message + Default>(
        &self,
        kind: Kind,
        order: Order,
        after: Option<&str>,
        mut visit: impl FnMut(String, M) -> bool,
    ) -> Result<i64, StoreError> {
        let dir = self.dir(kind);
        self.scan_raw(kind, order, after, |key, value| {
            let name = key.strip_prefix(dir.as_str()).unwrap_or(key).to_string();
            Ok(visit(name, decode(key, value)?))
        })
        .await
    }

    async fn scan_raw(
        &self,
        kind: Kind,
        order: Order,
        after: Option<&str>,
        mut visit: impl FnMut(&str, &[u8]) -> Result<bool, StoreError>,
    ) -> Result<i64, StoreError> {
        let dir = self.dir(kind);
        let (mut low, mut high) = match (order, after) {
            (_, None) => (dir.clone().into_bytes(), prefix_end(dir.as_bytes())),
            (Order::Ascending, Some(name)) => {
                let mut low = self.key(kind, name).into_bytes();
                low.push(0);
                (low, prefix_end(dir.as_bytes()))
            }
            (Order::Descending, Some(name)) => {
                (dir.clone().into_bytes(), self.key(kind, name).into_bytes())
            }
        };
        let mut limit = FIRST_PAGE;
        let mut revision = 0;
        loop {
            let mut options = GetOptions::new().with_range(high.clone()).with_limit(limit);
            let mut start = low.clone();
            if order == Order::Descending {
                options = options.with_sort(SortTarget::Key, SortOrder::Descend);
                start = self
                    .descending_window(&dir, &low, &high, limit, revision)
                    .await?;
            }
            if revision > 0 {
                options = options.with_revision(revision);
            }
            let resp = match crate::metrics::timed_etcd("get", self.kv().get(start, Some(options)))
                .await
            {
                Err(e) if response_too_large(&e) && limit > 1 => {
                    limit = (limit / 2).max(1);
                    tracing::debug!(
                        ?kind,
                        limit,
                        "page over the decode limit; reading smaller pages"
                    );
                    continue;
                }
                other => self.check(other)?,
            };
            if revision == 0 {
                revision = resp.header().map(|h| h.revision()).unwrap_or(0);
            }
            let mut largest = 0;
            for kv in resp.kvs() {
                largest = largest.max(kv.value().len());
                let key = String::from_utf8_lossy(kv.key());
                if !visit(&key, kv.value())? {
                    return Ok(revision);
                }
            }
            let Some(last) = resp.kvs().last() else {
                return Ok(revision);
            };
            if !resp.more() {
                return Ok(revision);
            }
            match order {
                Order::Ascending => {
                    low = last.key().to_vec();
                    low.push(0);
                }
                Order::Descending => high = last.key().to_vec(),
            }
            limit = next_page_limit(largest);
        }
    }
}

impl Store {
    /// Where a descending page of `limit` records below `high` starts. etcd
    /// sorts a range in descending order by reading all of it (its limit
    /// applies after the sort): over thousands of calls every page would
    /// read them all. Call names are UUIDv7, time first, so the range is
    /// narrowed by time, with counts (from etcd's index, no value read),
    /// to the last millisecond that still holds more than `limit` records
    /// below `high`. Names that are not UUIDv7 fall back to the whole range.
    async fn descending_window(
        &self,
        dir: &str,
        low: &[u8],
        high: &[u8],
        limit: i64,
        revision: i64,
    ) -> Result<Vec<u8>, StoreError> {
        let count = |from: Vec<u8>| {
            let mut options = GetOptions::new()
                .with_range(high.to_vec())
                .with_count_only();
            if revision > 0 {
                options = options.with_revision(revision);
            }
            let mut kv = self.kv();
            async move {
                self.check(crate::metrics::timed_etcd("get", kv.get(from, Some(options))).await)
                    .map(|r| r.count())
            }
        };
        if count(low.to_vec()).await? <= limit {
            return Ok(low.to_vec());
        }
        let mut options = GetOptions::new()
            .with_range(high.to_vec())
            .with_limit(1)
            .with_keys_only();
        if revision > 0 {
            options = options.with_revision(revision);
        }
        let first = self.check(
            crate::metrics::timed_etcd("get", self.kv().get(low.to_vec(), Some(options))).await,
        )?;
        let name_time = |key: &[u8]| {
            std::str::from_utf8(key)
                .ok()
                .and_then(|k| k.strip_prefix(dir))
                .and_then(uuid_time_ms)
        };
        let Some(first_ms) = first.kvs().first().and_then(|kv| name_time(kv.key())) else {
            return Ok(low.to_vec());
        };
        let high_ms = match name_time(high) {
            Some(ms) => ms,
            // No bound: up to now (a later name, from a clock ahead, only
            // widens the window).
            None if high == prefix_end(dir.as_bytes()).as_slice() => {
                crate::error::now_ms().max(0) as u64 + 1
            }
            None => return Ok(low.to_vec()),
        };
        // Kept: count(key(lo)) > limit, so the window holds the newest
        // `limit`; and (but for clocks ahead) count(key(hi)) <= limit.
        let (mut lo, mut hi) = (first_ms, high_ms.saturating_add(1).max(first_ms + 1));
        while hi - lo > 1 {
            let mid = lo + (hi - lo) / 2;
            if count(time_key(dir, mid)).await? <= limit {
                hi = mid;
            } else {
                lo = mid;
            }
        }
        Ok(time_key(dir, lo))
    }
}

/// The creation time (ms) in a UUIDv7 name.
fn uuid_time_ms(name: &str) -> Option<u64> {
    let high = name.get(0..8)?;
    let low = name.get(9..13)?;
    if name.get(8..9)? != "-" {
        return None;
    }
    let ms = (u64::from_str_radix(high, 16).ok()? << 16) | u64::from_str_radix(low, 16).ok()?;
    Some(ms)
}

/// The smallest key of a UUIDv7 name created at `ms` or later.
fn time_key(dir: &str, ms: u64) -> Vec<u8> {
    format!("{dir}{:08x}-{:04x}", ms >> 16, ms & 0xffff).into_bytes()
}

/// The order of a scan, by key (for calls: by time, their ids being
/// UUIDv7).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Order {
    Ascending,
    Descending,
}

/// A change to an object of a watched kind.
#[derive(Debug)]
pub enum Change<M> {
    Put(M),
    Deleted(String),
}

impl Store {
    /// Every object of a kind, then every later change, delivered to `f`
    /// in order; re-lists after a broken or compacted watch. Runs until `f`
    /// returns false.
    pub async fn follow<M: Message + Default>(
        &self,
        kind: Kind,
        mut f: impl FnMut(Change<M>) -> bool,
    ) {
        let dir = self.dir(kind);
        loop {
            let mut stopped = false;
            let listed = self
                .scan(kind, Order::Ascending, None, |_, m| {
                    stopped = !f(Change::Put(m));
                    !stopped
                })
                .await;
            if stopped {
                return;
            }
            let revision = match listed {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(error = %e, kind = ?kind, "listing for a watch failed; retrying");
                    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                    continue;
                }
            };
            let options = WatchOptions::new()
                .with_prefix()
                .with_start_revision(revision + 1);
            let mut watcher = self.watchers[self.member()].clone();
            let mut stream = match self.check(watcher.watch(dir.as_str(), Some(options)).await) {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, kind = ?kind, "watch failed; retrying");
                    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                    continue;
                }
            };
            loop {
                match stream.message().await {
                    Ok(Some(resp)) if resp.canceled() || resp.compact_revision() > 0 => break,
                    Ok(Some(resp)) => {
                        for event in resp.events() {
                            let Some(kv) = event.kv() else { continue };
                            let key = String::from_utf8_lossy(kv.key()).to_string();
                            let change = match event.event_type() {
                                EventType::Put => match decode(&key, kv.value()) {
                                    Ok(m) => Change::Put(m),
                                    Err(_) => continue,
                                },
                                EventType::Delete => Change::Deleted(
                                    key.strip_prefix(&dir).unwrap_or(&key).to_string(),
                                ),
                            };
                            if !f(change) {
                                return;
                            }
                        }
                    }
                    Ok(None) | Err(_) => break,
                }
            }
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
    }
}

/// Reclaiming space when etcd's quota is reached.
impl Store {
    /// Resolves when a write met the NOSPACE alarm.
    pub async fn nospace_seen(&self) {
        self.nospace.notified().await
    }

    /// Members with a NOSPACE alarm raised (etcd member ids).
    pub async fn nospace_alarms(&self) -> Result<Vec<u64>, StoreError> {
        let resp = self.check(
            self.client()
                .alarm(AlarmAction::Get, AlarmType::None, None)
                .await,
        )?;
        Ok(resp
            .alarms()
            .iter()
            .filter(|a| a.alarm() == AlarmType::Nospace)
            .map(|a| a.member_id())
            .collect())
    }

    /// Compacts the history up to the current revision, defragments every
    /// member (the file only shrinks then), and disarms the NOSPACE alarms.
    /// If the live data alone still fills the quota, etcd raises the alarm
    /// again at the next write.
    pub async fn reclaim_space(&self, alarmed: &[u64]) -> Result<(), StoreError> {
        let mut kv = self.kv();
        let revision = self
            .check(kv.get(self.prefix.as_str(), None).await)?
            .header()
            .map(|h| h.revision())
            .unwrap_or(0);
        match self.check(
            kv.compact(revision, Some(CompactionOptions::new().with_physical()))
                .await,
        ) {
            Ok(_) => {}
            // Compacted to there already (by etcd's auto-compaction).
            Err(StoreError::Etcd(etcd_client::Error::GRpcStatus(s)))
                if s.message().contains("compacted") => {}
            Err(e) => return Err(e),
        }
        for (i, client) in self.clients.iter().enumerate() {
            let mut client = client.clone();
            if let Err(e) = client.defragment().await {
                tracing::warn!(member = i, error = %e, "defragmenting an etcd member failed");
            }
        }
        for &member in alarmed {
            let mut options = AlarmOptions::new();
            options.with_member(member);
            self.check(
                self.client()
                    .alarm(AlarmAction::Deactivate, AlarmType::Nospace, Some(options))
                    .await,
            )?;
        }
        Ok(())
    }
}

impl Store {
    /// Whether a member this store reaches knows a Raft leader (what
    /// `faas-controlplane etcd-health` reports).
    pub async fn has_leader(&self) -> Result<bool, StoreError> {
        let mut last_error = None;
        for client in self.clients.iter() {
            match client.clone().status().await {
                Ok(status) if status.leader() != 0 => return Ok(true),
                Ok(_) => {}
                Err(e) => last_error = Some(e),
            }
        }
        match last_error {
            Some(e) => Err(e.into()),
            None => Ok(false),
        }
    }
}

fn decode<M: Message + Default>(key: &str, bytes: &[u8]) -> Result<M, StoreError> {
    M::decode(bytes).map_err(|source| StoreError::Decode {
        key: key.to_string(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_hold_about_the_byte_budget() {
        // Small records: the count cap.
        assert_eq!(next_page_limit(100), MAX_PAGE);
        assert_eq!(next_page_limit(0), MAX_PAGE);
        // Old call records with 256 KiB params and result inline.
        let big = next_page_limit(512 << 10);
        assert_eq!(big, 16);
        assert!(big as usize * (512 << 10) <= MAX_RESPONSE_BYTES / 4);
        // Values at etcd's request limit still fit several to a page, and
        // values beyond the budget one at a time.
        assert!(next_page_limit(3 << 19) as usize * (3 << 19) <= PAGE_BYTES);
        assert_eq!(next_page_limit(PAGE_BYTES * 2), 1);
        // The first page, before any size is known, at the largest value
        // etcd accepts by default, is within the decode limit once halved
        // at most twice.
        assert!((FIRST_PAGE / 4) as usize * (3 << 19) <= MAX_RESPONSE_BYTES);
    }

    #[test]
    fn uuid_names_give_their_time() {
        let id = uuid::Uuid::now_v7().to_string();
        let ms = uuid_time_ms(&id).expect("v7");
        let (secs, nanos) = uuid::Uuid::parse_str(&id)
            .unwrap()
            .get_timestamp()
            .unwrap()
            .to_unix();
        assert_eq!(ms, secs * 1000 + u64::from(nanos) / 1_000_000);
        let key = time_key("d/", ms);
        assert!(key.as_slice() <= format!("d/{id}").as_bytes());
        assert!(time_key("d/", ms + 1).as_slice() > format!("d/{id}").as_bytes());
        assert_eq!(uuid_time_ms("not-a-uuid"), None);
    }

    #[test]
    fn prefix_ends() {
        assert_eq!(prefix_end(b"/faas/v1/calls/"), b"/faas/v1/calls0".to_vec());
        assert_eq!(prefix_end(b"a\xff"), b"b".to_vec());
        assert_eq!(prefix_end(b"\xff"), vec![0]);
    }

    #[test]
    fn records_are_stored_without_payloads() {
        let call = Call {
            id: "x".into(),
            params_json: "{\"a\":1}".into(),
            result_json: "2".into(),
            status: CallStatus::Succeeded as i32,
            ..Default::default()
        };
        let stored = strip_payloads(&call);
        assert!(stored.params_json.is_empty() && stored.result_json.is_empty());
        assert_eq!(stored.status(), CallStatus::Succeeded);
    }

    #[test]
    fn results_over_a_request_are_cut_and_joined_whole() {
        // One part: stored as itself.
        let small = "\"abc\"";
        assert_eq!(result_parts(small), vec![small.as_bytes()]);
        assert_eq!(
            join_result_parts(small.as_bytes().to_vec(), vec![]),
            Some(small.as_bytes().to_vec())
        );
        // 2.5 parts: three, the marker names them, joined in order.
        let big: String = (0..RESULT_PART_BYTES * 5 / 2)
            .map(|i| char::from(b'a' + (i % 26) as u8))
            .collect();
        let parts = result_parts(&big);
        assert_eq!(parts.len(), 3);
        assert!(parts.iter().all(|p| p.len() <= RESULT_PART_BYTES));
        let stored: Vec<Vec<u8>> = parts.iter().map(|p| p.to_vec()).collect();
        assert_eq!(
            join_result_parts(parts_marker(3), stored.clone()),
            Some(big.as_bytes().to_vec())
        );
        // A part missing: no result rather than a cut one.
        assert_eq!(
            join_result_parts(parts_marker(3), stored[..2].to_vec()),
            None
        );
        // A marker is never JSON.
        assert!(serde_json::from_slice::<serde_json::Value>(&parts_marker(3)).is_err());
    }

    #[test]
    fn final_writes_are_bounded() {
        let limits = PayloadLimits {
            max_result_bytes: 10,
            max_log_bytes: 4,
        };
        let mut call = Call {
            status: CallStatus::Succeeded as i32,
            result_json: "\"0123456789\"".into(),
            ..Default::default()
        };
        let mut logs = CallLogs {
            logs: b"abcdefgh".to_vec(),
            truncated: false,
        };
        bound_final(&mut call, &mut logs, &limits);
        assert_eq!(call.status(), CallStatus::Failed);
        assert_eq!(
            call.error.as_ref().map(|e| e.reason.as_str()),
            Some("platform")
        );
        assert!(call.result_json.is_empty());
        assert_eq!(logs.logs, b"efgh");
        assert!(logs.truncated && call.logs_truncated);
        // Within the limits: untouched.
        let mut ok = Call {
            status: CallStatus::Succeeded as i32,
            result_json: "1".into(),
            ..Default::default()
        };
        let mut small = CallLogs::default();
        bound_final(&mut ok, &mut small, &limits);
        assert_eq!(
            (ok.status(), ok.result_json.as_str()),
            (CallStatus::Succeeded, "1")
        );
        assert!(!ok.logs_truncated);
    }

    #[test]
    fn errors_that_cannot_succeed_on_retry() {
        let status = |code, msg: &str| {
            StoreError::from(etcd_client::Error::GRpcStatus(tonic::Status::new(
                code, msg,
            )))
        };
        let nospace = status(
            tonic::Code::ResourceExhausted,
            "etcdserver: mvcc: database space exceeded",
        );
        assert!(matches!(nospace, StoreError::NoSpace) && nospace.is_permanent());
        let large = status(
            tonic::Code::InvalidArgument,
            "etcdserver: request is too large",
        );
        assert!(matches!(large, StoreError::TooLarge(_)) && large.is_permanent());
        let ops = status(
            tonic::Code::InvalidArgument,
            "etcdserver: too many operations in txn request",
        );
        assert!(ops.is_permanent());
        assert!(!status(tonic::Code::Unavailable, "etcdserver: leader changed").is_permanent());
        assert!(!status(tonic::Code::DeadlineExceeded, "context deadline exceeded").is_permanent());
        assert!(response_too_large(&etcd_client::Error::GRpcStatus(
            tonic::Status::out_of_range(
                "Error, decoded message length too large: found 5 bytes, the limit is: 4 bytes"
            )
        )));
    }
}
