use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use faas_proto::v1::call_service_client::CallServiceClient;
use faas_proto::v1::call_service_server::CallService;
use faas_proto::v1::{
    Call, CallLogChunk, CallLogs, CallStatus, CancelCallRequest, FollowCallLogsRequest, Function,
    GetCallLogsRequest, GetCallRequest, GetCallStatsRequest, GetCallStatsResponse, HttpAccess,
    InvokeRequest, ListCallsRequest, ListCallsResponse, Runtime, SubmitResponse, WaitCallRequest,
};
use faas_telemetry::{CallSpan, Kind as SpanKind, TraceParent};
use futures::Stream;
use tokio::sync::watch;
use tonic::{Request, Response, Status};
use tracing::{info_span, Instrument};

use super::admission::QUEUE_FULL_RETRY_AFTER;
use super::Api;
use crate::auth::Principal;
use crate::broker::{CallBundle, Input};
use crate::catalog::Versioned;
use crate::error::{now_ms_f64, ApiError};
use crate::store::{self, Created, Kind, Order};
use crate::versions::Qualifier;
use crate::watch::{is_final, QueueFull};

/// How often a waiter re-reads etcd in case the outcome was recorded by
/// another replica (or published before it subscribed).
const WAIT_POLL: Duration = Duration::from_secs(1);
/// How many times a submit reads a function or runtime that changed under
/// it before giving up (each read is etcd's latest: a second failure
/// means a deploy raced it twice).
const MAX_STALE_ATTEMPTS: u32 = 3;

/// What a submit resolved its function name to (see `Api::call_target`).
struct CallTarget {
    function: Versioned<Function>,
    runtime: Versioned<Runtime>,
    /// Where `function` was read: the current record or a version's.
    record: (Kind, String),
    /// The alias the version was picked through, and its revision.
    alias: Option<(String, i64)>,
    /// The function's key (its alias records are under it).
    key: String,
}

impl CallTarget {
    /// The records the call is recorded against, at the revisions read:
    /// a function, version, runtime or alias changed meanwhile makes the
    /// submit read them again.
    fn current_if(&self) -> Vec<(Kind, std::borrow::Cow<'_, str>, i64)> {
        let (function, runtime) = (&self.function, &self.runtime);
        let mut current = vec![
            (
                self.record.0,
                self.record.1.as_str().into(),
                function.revision,
            ),
            (
                Kind::Runtime,
                function.value.runtime.as_str().into(),
                runtime.revision,
            ),
        ];
        if let Some((alias, revision)) = &self.alias {
            current.push((
                Kind::FunctionAlias,
                store::alias_name(&self.key, alias).into(),
                *revision,
            ));
        }
        current
    }

    /// Drops the copies read, so that the next attempt reads etcd.
    fn forget(&self, catalog: &crate::catalog::Catalog) {
        let function = &self.function;
        catalog.functions.forget(&self.key);
        if self.record.0 == Kind::FunctionVersion {
            catalog.versions.forget(&self.record.1);
        }
        if let Some((alias, _)) = &self.alias {
            catalog.aliases.forget(&store::alias_name(&self.key, alias));
        }
        catalog.runtimes.forget(&function.value.runtime);
    }
}

/// A record from `cache`, or read from etcd and kept there; None if etcd
/// has none.
async fn cached<T: prost::Message + Default>(
    cache: &crate::catalog::Cache<T>,
    store: &crate::store::Store,
    kind: Kind,
    name: &str,
) -> Result<Option<Versioned<T>>, ApiError> {
    if let Some(found) = cache.get(name) {
        return Ok(Some(found));
    }
    let Some((value, revision)) = store.get_versioned::<T>(kind, name).await? else {
        return Ok(None);
    };
    let found = Versioned {
        value: Arc::new(value),
        revision,
    };
    cache.put(name, found.clone());
    Ok(Some(found))
}
/// How long a cancel waits for the CANCELLED record to be stored (etcd
/// away: the leader keeps writing it; the caller learns it is not stored
/// yet).
const CANCEL_RECORD_WAIT: Duration = Duration::from_secs(10);

impl Api {
    /// Validates, records (durably, before acknowledging) and hands a call
    /// to the broker. Returns the call and a receiver of its changes.
    async fn accept(
        &self,
        request: InvokeRequest,
        owner: &Principal,
        parent: Option<TraceParent>,
    ) -> Result<(Call, watch::Receiver<Call>), ApiError> {
        // The call's trace starts here (or joins the client's): the span
        // covers validation and the durable record.
        let mut span = CallSpan::start("faas.submit", SpanKind::Server, parent.as_ref());
        let accepted = self.record_call(request, owner, span.traceparent()).await;
        match &accepted {
            Ok((call, _)) => {
                span.attribute("faas.call_id", &call.id);
                span.attribute("faas.function", &call.function);
                span.attribute("faas.namespace", &call.namespace);
            }
            Err(e) => span.error(e),
        }
        span.end();
        accepted
    }

    async fn record_call(
        &self,
        request: InvokeRequest,
        owner: &Principal,
        trace: TraceParent,
    ) -> Result<(Call, watch::Receiver<Call>), ApiError> {
        // A name outside the API's rule can name no function: say so
        // before it becomes an etcd key. "NAME:VERSION" and "NAME:ALIAS"
        // name one of its versions.
        let (name, qualifier) = crate::versions::split(&request.function)?;
        let name = name.to_string();
        let namespace = owner.check_namespace(&request.namespace)?.to_string();
        // Read once: existence, submit rate and queue bound.
        let quota = self.namespace_quota(&namespace)?;
        let mut params = if request.params_json.trim().is_empty() {
            "{}".to_string()
        } else {
            request.params_json
        };
        if params.len() as u64 > self.limits.max_params_bytes {
            return Err(ApiError::ResourceExhausted(format!(
                "params are {} bytes, over the limit of {} bytes",
                params.len(),
                self.limits.max_params_bytes
            )));
        }
        if let Err(e) = serde_json::from_str::<serde::de::IgnoredAny>(&params) {
            return Err(ApiError::InvalidArgument(format!(
                "params are not valid JSON: {e}"
            )));
        }
        let client_context = check_client_context(request.client_context)?;
        let broker = self.broker()?;
        // On the leader, which every submit reaches: the rate holds over
        // the whole cluster.
        if let Err(wait) = self
            .tenants
            .admit_submit(&namespace, &quota, std::time::Instant::now())
        {
            return Err(ApiError::Overloaded {
                message: format!(
                    "too many submits in namespace {namespace:?}: its quota is {} per second (submit_rate), bursts of {} (submit_burst)",
                    quota.submit_rate,
                    crate::tenants::burst_of(&quota)
                ),
                retry_after: wait,
            });
        }
        let key = faas_proto::namespaces::function_key(&namespace, &name);
        // The function and runtime as this replica holds them; etcd checks
        // they are current when the call is recorded (see catalog.rs).
        let mut attempts = 0;
        let (call, function, runtime, secret_values, accepted_at_ms) = loop {
            attempts += 1;
            let target = match self.call_target(&namespace, &key, &name, &qualifier).await {
                Ok(target) => target,
                // To the gateway's public invoker, a version or alias
                // missing from a private function must not tell that the
                // function exists: the same answer as for no function.
                Err(ApiError::NotFound(_)) if owner.is_public_invoker() => {
                    return Err(ApiError::NotFound(format!(
                        "function {name:?} not found in namespace {namespace:?}"
                    )))
                }
                Err(e) => return Err(e),
            };
            let (function, runtime) = (target.function.clone(), target.runtime.clone());
            // The gateway's token for requests without one reaches public
            // functions only; to it a private one does not exist (the same
            // answer as for a missing one: no names learnt by probing).
            if owner.is_public_invoker() && function.value.http() != HttpAccess::Public {
                return Err(ApiError::NotFound(format!(
                    "function {name:?} not found in namespace {namespace:?}"
                )));
            }
            // Opened here, on the leader, from the copy it holds (etcd only
            // if that copy is behind the function's references).
            let secret_values = self.secrets.resolve(&self.store, &function.value).await?;
            if !broker.has_agents().await {
                return Err(ApiError::FailedPrecondition(
                    "no agent is connected and taking work: no node can run the call (start faas-agent, or undrain a node)".into(),
                ));
            }
            let accepted_at_ms = now_ms_f64();
            let call = Call {
                id: uuid::Uuid::now_v7().to_string(),
                function: function.value.name.clone(),
                function_version: function.value.version,
                // Moved, not copied (params may be megabytes); taken back
                // if the submit has to be tried again.
                params_json: std::mem::take(&mut params),
                status: CallStatus::Queued as i32,
                created_at_ms: accepted_at_ms as i64,
                owner: owner.token_id().to_string(),
                namespace: namespace.clone(),
                traceparent: trace.to_string(),
                client_context: client_context.clone(),
                alias: target
                    .alias
                    .as_ref()
                    .map(|(a, _)| a.clone())
                    .unwrap_or_default(),
                ..Default::default()
            };
            // Counted before it is recorded, so that concurrent submits
            // cannot all pass the same last free place.
            let admission = &self.limits.admission;
            let bounds = crate::watch::QueueBounds {
                per_namespace: quota.max_queued_calls,
                ..admission.queue_bounds()
            };
            if let Err(full) = self.calls.try_queue(&call, bounds) {
                let message = match full {
                    QueueFull::Function { queued, max } => format!(
                        "function {:?} has {queued} calls queued, its limit (max_queued_per_function) is {max}: retry later",
                        call.function
                    ),
                    QueueFull::Namespace { queued, max } => format!(
                        "namespace {namespace:?} has {queued} calls queued, its quota (max_queued_calls) is {max}: retry later"
                    ),
                    QueueFull::Cluster { queued, max } => format!(
                        "the cluster has {queued} calls queued, its limit (max_queued_calls) is {max}: retry later"
                    ),
                    QueueFull::Bytes { queued, max } => format!(
                        "the calls queued in the cluster hold {queued} bytes of params, their limit (max_queued_bytes) is {max}: retry later"
                    ),
                };
                return Err(ApiError::Overloaded {
                    message,
                    retry_after: QUEUE_FULL_RETRY_AFTER,
                });
            }
            let recorded = self
                .store
                .create_call_if_current(
                    &call,
                    broker.fence(),
                    &target
                        .current_if()
                        .iter()
                        .map(|(kind, name, revision)| (*kind, name.as_ref(), *revision))
                        .collect::<Vec<_>>(),
                )
                .await;
            if !matches!(recorded, Ok(Created::Recorded)) {
                self.calls.unqueue(&call.id);
            }
            match recorded? {
                Created::Recorded => {
                    break (call, function, runtime, secret_values, accepted_at_ms)
                }
                Created::NotLeader => {
                    return Err(ApiError::Unavailable(
                        "this replica stopped leading while accepting the call; nothing was recorded; retry"
                            .into(),
                    ))
                }
                // Changed since this replica read it: read again.
                Created::Stale if attempts < MAX_STALE_ATTEMPTS => {
                    params = call.params_json;
                    target.forget(&self.catalog);
                }
                Created::Stale => {
                    return Err(ApiError::Unavailable(format!(
                        "function {:?} or its runtime changed {attempts} times while the call was being accepted; nothing was recorded; retry",
                        request.function
                    )))
                }
            }
        };
        let (function, runtime) = (
            Arc::unwrap_or_clone(function.value),
            Arc::unwrap_or_clone(runtime.value),
        );
        let bundle = Arc::new(CallBundle::new(
            runtime,
            function,
            self.registry.host(),
            secret_values,
        ));
        let rx = self.calls.subscribe(&call);
        if !broker.send(Input::CallArrived {
            call: call.clone(),
            bundle,
            accepted_at_ms,
        }) {
            // Leadership was lost meanwhile. The call is recorded, so it is
            // acknowledged: the next leader runs it (an error here would
            // make a client submit it twice).
            tracing::warn!(call_id = %call.id, "broker stopped after the call was recorded; the next leader runs it");
        }
        Ok((call, rx))
    }

    /// What a call of `key` at `qualifier` runs: the version's record and
    /// its runtime, from the catalog or read from etcd (and kept), with
    /// what the call's record must be written against.
    async fn call_target(
        &self,
        namespace: &str,
        key: &str,
        name: &str,
        qualifier: &Qualifier,
    ) -> Result<CallTarget, ApiError> {
        let not_found = || {
            ApiError::NotFound(format!(
                "function {name:?} not found in namespace {namespace:?}"
            ))
        };
        let mut alias = None;
        let version = match qualifier {
            Qualifier::Latest => None,
            Qualifier::Version(v) => Some(*v),
            Qualifier::Alias(a) => {
                let record = store::alias_name(key, a);
                let found = cached(&self.catalog.aliases, &self.store, Kind::FunctionAlias, &record)
                    .await?
                    .ok_or_else(|| {
                        ApiError::NotFound(format!(
                            "function {name:?} in namespace {namespace:?} has no alias {a:?} (see `faasctl fn alias ls {name}`)"
                        ))
                    })?;
                let version = crate::versions::pick(&found.value, rand::random::<f64>());
                alias = Some((a.clone(), found.revision));
                Some(version)
            }
        };
        let (function, record) = match version {
            None => (
                cached(&self.catalog.functions, &self.store, Kind::Function, key)
                    .await?
                    .ok_or_else(not_found)?,
                (Kind::Function, key.to_string()),
            ),
            Some(v) => {
                let record = store::version_name(key, v);
                match cached(
                    &self.catalog.versions,
                    &self.store,
                    Kind::FunctionVersion,
                    &record,
                )
                .await?
                {
                    Some(f) => (f, (Kind::FunctionVersion, record)),
                    None => {
                        // A function deployed before versions were kept has
                        // no record of its current version: its own is it.
                        let current =
                            cached(&self.catalog.functions, &self.store, Kind::Function, key)
                                .await?
                                .ok_or_else(not_found)?;
                        if current.value.version != v {
                            return Err(ApiError::NotFound(format!(
                                "function {name:?} in namespace {namespace:?} has no version {v} (it is at {}; see `faasctl fn versions {name}`)",
                                current.value.version
                            )));
                        }
                        (current, (Kind::Function, key.to_string()))
                    }
                }
            }
        };
        let runtime_name = &function.value.runtime;
        let runtime = cached(
            &self.catalog.runtimes,
            &self.store,
            Kind::Runtime,
            runtime_name,
        )
        .await?
        .ok_or_else(|| {
            ApiError::FailedPrecondition(format!(
                "function {name:?} uses runtime {runtime_name:?}, which no longer exists"
            ))
        })?;
        Ok(CallTarget {
            function,
            runtime,
            record,
            alias,
            key: key.to_string(),
        })
    }

    /// A call with its params and result (read beside its record).
    async fn get_call(&self, id: &str) -> Result<Call, ApiError> {
        check_call_id(id)?;
        let stored = self.store.get_call(id).await?;
        self.live_or(id, stored).await
    }

    /// A call's record only, without its payloads: what polling needs.
    async fn get_call_status(&self, id: &str) -> Result<Call, ApiError> {
        check_call_id(id)?;
        let stored = self.store.get(Kind::Call, id).await?;
        self.live_or(id, stored).await
    }

    async fn live_or(&self, id: &str, stored: Option<Call>) -> Result<Call, ApiError> {
        let stored = stored.ok_or_else(|| ApiError::NotFound(format!("call {id:?} not found")))?;
        // etcd records acceptance and outcome; in between, the broker knows
        // better (e.g. that the call is running, and where).
        if !is_final(&stored) {
            if let Ok(broker) = self.broker() {
                if let Some(live) = broker.live_call(id).await {
                    return Ok(live);
                }
            }
        }
        Ok(stored)
    }

    /// Waits for the next change of a call: from the in-process watch, or
    /// by re-reading etcd every WAIT_POLL.
    async fn next_change(
        &self,
        rx: &mut watch::Receiver<Call>,
        last: &Call,
    ) -> Result<Call, ApiError> {
        loop {
            {
                let current = rx.borrow_and_update();
                if current.status != last.status || is_final(&current) {
                    return Ok(current.clone());
                }
            }
            tokio::select! {
                changed = rx.changed() => {
                    if changed.is_err() {
                        // Publisher gone: the last value is final, or this
                        // replica is not the one that will publish.
                        let current = rx.borrow().clone();
                        if is_final(&current) { return Ok(current); }
                        tokio::time::sleep(WAIT_POLL).await;
                        let stored = self.get_call_status(&last.id).await?;
                        if stored.status != last.status { return self.get_call(&last.id).await; }
                    }
                }
                _ = tokio::time::sleep(WAIT_POLL) => {
                    let stored = self.get_call_status(&last.id).await?;
                    if is_final(&stored) { return self.get_call(&last.id).await; }
                }
            }
        }
    }

    /// Reads calls newest first, strictly older than `after` if given,
    /// keeping those `keep` accepts, until `wanted` are kept or none are
    /// left. Returns them without their params and result (a listing never
    /// carries payloads; old records had them inline), and the name of the
    /// last one kept if the scan stopped because it had enough (where a
    /// next page starts).
    async fn scan_calls(
        &self,
        after: Option<String>,
        wanted: usize,
        keep: impl Fn(&Call) -> bool,
    ) -> Result<(Vec<Call>, Option<String>), ApiError> {
        let mut kept = Vec::new();
        let mut last = None;
        if wanted == 0 {
            return Ok((kept, None));
        }
        self.store
            .scan(
                Kind::Call,
                Order::Descending,
                after.as_deref(),
                |name, mut call: Call| {
                    if keep(&call) {
                        call.params_json = String::new();
                        call.result_json = String::new();
                        kept.push(call);
                        if kept.len() == wanted {
                            last = Some(name);
                            return false;
                        }
                    }
                    true
                },
            )
            .await?;
        Ok((kept, last))
    }

    /// The submit rate limit, applied by the replica the client reached
    /// (the leader does not limit what another replica forwarded: that
    /// replica did, per client, and the leader would see its address).
    fn admit_client<T>(&self, request: &Request<T>) -> Result<(), ApiError> {
        if request.metadata().contains_key(super::FORWARDED) {
            return Ok(());
        }
        let Some(peer) = request.remote_addr() else {
            return Ok(());
        };
        self.limits
            .submit_limiter
            .check(peer.ip(), std::time::Instant::now())
            .map_err(|wait| ApiError::Overloaded {
                message: format!(
                    "too many submits from {}: the limit is {} per second (submit_rate), bursts of {} (submit_burst)",
                    peer.ip(),
                    self.limits.admission.submit_rate,
                    self.limits.admission.submit_burst
                ),
                retry_after: wait,
            })
    }

    async fn wait_final(
        &self,
        mut rx: watch::Receiver<Call>,
        mut call: Call,
    ) -> Result<Call, ApiError> {
        while !is_final(&call) {
            call = self.next_change(&mut rx, &call).await?;
        }
        Ok(call)
    }
}

type CallStream = Pin<Box<dyn Stream<Item = Result<Call, Status>> + Send>>;
type LogStream = Pin<Box<dyn Stream<Item = Result<CallLogChunk, Status>> + Send>>;

#[tonic::async_trait]
impl CallService for Api {
    async fn invoke(&self, request: Request<InvokeRequest>) -> Result<Response<Call>, Status> {
        self.admit_client(&request)?;
        if self.broker().is_err() {
            let channel = self.leader.channel().await?;
            return CallServiceClient::new(channel)
                .invoke(super::forwarded(request)?)
                .await
                .map_err(super::forward_failed);
        }
        let principal = Principal::of(&request);
        let parent = super::traceparent_of(&request);
        let request = request.into_inner();
        let span =
            info_span!("invoke", function = %request.function, call_id = tracing::field::Empty);
        async move {
            let (call, rx) = self.accept(request, &principal, parent).await?;
            tracing::Span::current().record("call_id", call.id.as_str());
            let id = call.id.clone();
            let result = self.wait_final(rx, call).await;
            self.calls.forget_if_unused(&id);
            Ok(Response::new(result?))
        }
        .instrument(span)
        .await
    }

    async fn submit(
        &self,
        request: Request<InvokeRequest>,
    ) -> Result<Response<SubmitResponse>, Status> {
        self.admit_client(&request)?;
        if self.broker().is_err() {
            let channel = self.leader.channel().await?;
            return CallServiceClient::new(channel)
                .submit(super::forwarded(request)?)
                .await
                .map_err(super::forward_failed);
        }
        let principal = Principal::of(&request);
        let parent = super::traceparent_of(&request);
        let (call, _rx) = self
            .accept(request.into_inner(), &principal, parent)
            .await?;
        Ok(Response::new(SubmitResponse { call_id: call.id }))
    }

    async fn get_call(&self, request: Request<GetCallRequest>) -> Result<Response<Call>, Status> {
        let principal = Principal::of(&request);
        let call = Api::get_call(self, &request.into_inner().id).await?;
        Ok(Response::new(readable_by(&principal, call)?))
    }

    type WaitCallStream = CallStream;

    async fn wait_call(
        &self,
        request: Request<WaitCallRequest>,
    ) -> Result<Response<Self::WaitCallStream>, Status> {
        let principal = Principal::of(&request);
        let WaitCallRequest { id, timeout_ms } = request.into_inner();
        let first = readable_by(&principal, Api::get_call(self, &id).await?)?;
        let api = self.clone();
        let deadline = (timeout_ms > 0)
            .then(|| tokio::time::Instant::now() + Duration::from_millis(timeout_ms));
        let stream = async_stream(move |tx| async move {
            let mut call = first;
            if tx.send(Ok(call.clone())).await.is_err() {
                return;
            }
            let mut rx = api.calls.subscribe(&call);
            // Re-read once: the outcome may have been published before we
            // subscribed.
            if let Ok(stored) = Api::get_call_status(&api, &call.id).await {
                if stored.status != call.status {
                    call = Api::get_call(&api, &call.id).await.unwrap_or(stored);
                    if tx.send(Ok(call.clone())).await.is_err() {
                        return;
                    }
                }
            }
            while !is_final(&call) {
                let next = match deadline {
                    Some(d) => {
                        match tokio::time::timeout_at(d, api.next_change(&mut rx, &call)).await {
                            Ok(r) => r,
                            Err(_) => {
                                let _ = tx
                                    .send(Err(Status::deadline_exceeded(format!(
                                        "call {} is still {:?} after {timeout_ms} ms",
                                        call.id,
                                        call.status()
                                    ))))
                                    .await;
                                break;
                            }
                        }
                    }
                    None => api.next_change(&mut rx, &call).await,
                };
                match next {
                    Ok(c) => {
                        call = c;
                        if tx.send(Ok(call.clone())).await.is_err() {
                            break;
                        }
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e.into())).await;
                        break;
                    }
                }
            }
            drop(rx);
            api.calls.forget_if_unused(&call.id);
        });
        Ok(Response::new(stream))
    }

    async fn list_calls(
        &self,
        request: Request<ListCallsRequest>,
    ) -> Result<Response<ListCallsResponse>, Status> {
        let principal = Principal::of(&request);
        let owner = principal.call_owner_filter();
        let req = request.into_inner();
        let scope = principal.list_scope(&req.namespace)?;
        let page_size = match req.page_size {
            0 => 50,
            n => n.min(1000),
        } as usize;
        let status = req.status();
        let start = (!req.page_token.is_empty()).then(|| req.page_token.clone());
        let (calls, last) = self
            .scan_calls(start, page_size, |call| {
                (req.function.is_empty() || call.function == req.function)
                    && principal.lists(&scope, &call.namespace)
                    && (status == CallStatus::Unspecified || call.status() == status)
                    && owner.is_none_or(|o| call.owner == o)
            })
            .await?;
        let next_token = last.unwrap_or_default();
        Ok(Response::new(ListCallsResponse {
            calls,
            next_page_token: next_token,
        }))
    }

    async fn get_call_stats(
        &self,
        request: Request<GetCallStatsRequest>,
    ) -> Result<Response<GetCallStatsResponse>, Status> {
        let principal = Principal::of(&request);
        let req = request.into_inner();
        let scope = principal.list_scope(&req.namespace)?;
        let wanted = match req.last {
            0 => 1000,
            n => n.min(10_000),
        } as usize;
        let (finished, _) = self
            .scan_calls(None, wanted, |call| {
                is_final(call)
                    && principal.lists(&scope, &call.namespace)
                    && (req.function.is_empty() || call.function == req.function)
            })
            .await?;
        let (groups, overall) = super::stats::aggregate(&finished);
        let policy = self
            .broker()
            .map(|b| b.policy().to_string())
            .unwrap_or_default();
        Ok(Response::new(GetCallStatsResponse {
            groups,
            overall: Some(overall),
            policy,
        }))
    }

    type FollowCallLogsStream = LogStream;

    async fn follow_call_logs(
        &self,
        request: Request<FollowCallLogsRequest>,
    ) -> Result<Response<LogStream>, Status> {
        // The agents' streams end at the leader: follow from there.
        if self.broker().is_err() {
            use futures::StreamExt;
            let channel = self.leader.channel().await?;
            let stream = CallServiceClient::new(channel)
                .follow_call_logs(super::forwarded(request)?)
                .await
                .map_err(super::forward_failed)?
                .into_inner();
            return Ok(Response::new(Box::pin(
                stream.map(|r| r.map_err(super::forward_failed)),
            )));
        }
        let principal = Principal::of(&request);
        let id = request.into_inner().id;
        let first = readable_by(&principal, Api::get_call_status(self, &id).await?)?;
        let api = self.clone();
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        let span = info_span!("follow_call_logs", call_id = %id);
        tokio::spawn(
            async move {
                if let Err(e) = api.follow_logs(first, &tx).await {
                    let _ = tx.send(Err(e.into())).await;
                }
            }
            .instrument(span),
        );
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn cancel_call(
        &self,
        request: Request<CancelCallRequest>,
    ) -> Result<Response<Call>, Status> {
        if self.broker().is_err() {
            let channel = self.leader.channel().await?;
            return CallServiceClient::new(channel)
                .cancel_call(super::forwarded(request)?)
                .await
                .map_err(super::forward_failed);
        }
        let principal = Principal::of(&request);
        let id = request.into_inner().id;
        let span = info_span!("cancel_call", call_id = %id);
        async move {
            // Whoever may read the call may cancel it; to anyone else it
            // does not exist.
            let call = readable_by(&principal, Api::get_call_status(self, &id).await?)?;
            if is_final(&call) {
                return Err(has_ended(&call).into());
            }
            let mut rx = self.calls.subscribe(&call);
            let message = format!("cancelled on request (token {})", principal.token_id());
            let outcome = self.cancel_held(&id, message, &mut rx).await;
            drop(rx);
            self.calls.forget_if_unused(&id);
            Ok(Response::new(outcome?))
        }
        .instrument(span)
        .await
    }

    async fn get_call_logs(
        &self,
        request: Request<GetCallLogsRequest>,
    ) -> Result<Response<CallLogs>, Status> {
        let principal = Principal::of(&request);
        let id = request.into_inner().id;
        let call = readable_by(&principal, Api::get_call_status(self, &id).await?)?;
        if !is_final(&call) {
            return Ok(Response::new(CallLogs::default()));
        }
        let logs: Option<CallLogs> = self
            .store
            .get(Kind::Logs, &id)
            .await
            .map_err(ApiError::from)?;
        Ok(Response::new(logs.unwrap_or_default()))
    }
}

impl Api {
    /// Streams `call`'s output to `tx` while it runs, then the rest of its
    /// stored log; returns once the last chunk is sent (or the follower
    /// left).
    async fn follow_logs(
        &self,
        first: Call,
        tx: &tokio::sync::mpsc::Sender<Result<CallLogChunk, Status>>,
    ) -> Result<(), ApiError> {
        let id = first.id.clone();
        let mut call = first;
        let mut offset = 0u64;
        let mut rx = self.calls.subscribe(&call);
        let outcome = async {
            if !is_final(&call) {
                if let Some(mut chunks) = self.broker()?.follow_logs(&id).await {
                    while let Some(chunk) = chunks.recv().await {
                        let end = chunk.offset + chunk.data.len() as u64;
                        if end <= offset {
                            // Sent already (the call started over elsewhere).
                            continue;
                        }
                        let skip = offset.saturating_sub(chunk.offset) as usize;
                        let piece = CallLogChunk {
                            data: chunk.data[skip..].to_vec(),
                            offset: chunk.offset + skip as u64,
                            ..Default::default()
                        };
                        if tx.send(Ok(piece)).await.is_err() {
                            return Ok(());
                        }
                        offset = end;
                    }
                }
                while !is_final(&call) {
                    call = self.next_change(&mut rx, &call).await?;
                }
            }
            let logs: CallLogs = self
                .store
                .get(Kind::Logs, &id)
                .await
                .map_err(ApiError::from)?
                .unwrap_or_default();
            let _ = tx.send(Ok(final_rest(logs, offset))).await;
            Ok(())
        }
        .await;
        drop(rx);
        self.calls.forget_if_unused(&id);
        outcome
    }

    /// Has the broker cancel call `id`, then waits until the CANCELLED
    /// record is stored (published on `rx` after the write).
    async fn cancel_held(
        &self,
        id: &str,
        message: String,
        rx: &mut watch::Receiver<Call>,
    ) -> Result<Call, ApiError> {
        if self.broker()?.cancel(id, message).await.is_none() {
            // It ended meanwhile, or this leader does not hold it yet (a
            // takeover hands recorded calls over after a settle time).
            let stored = self.get_call_status(id).await?;
            return Err(if is_final(&stored) {
                has_ended(&stored)
            } else {
                ApiError::Unavailable(format!(
                    "call {id} is not held by the leader yet (it is taking over); try again"
                ))
            });
        }
        let recorded = tokio::time::timeout(CANCEL_RECORD_WAIT, async {
            loop {
                {
                    let current = rx.borrow_and_update();
                    if is_final(&current) {
                        return Some(current.clone());
                    }
                }
                if rx.changed().await.is_err() {
                    return None;
                }
            }
        })
        .await;
        let recorded = match recorded {
            Ok(Some(call)) => call,
            // (The publisher went away: the record says.)
            Ok(None) => self.get_call(id).await?,
            Err(_) => {
                return Err(ApiError::DeadlineExceeded(format!(
                    "call {id} is cancelled (its run is stopped) but its record is not stored \
                     yet; the leader keeps writing it"
                )))
            }
        };
        match recorded.status() {
            CallStatus::Cancelled => Ok(recorded),
            _ => Err(has_ended(&recorded)),
        }
    }
}

/// The error of a cancel that came too late.
fn has_ended(call: &Call) -> ApiError {
    ApiError::FailedPrecondition(format!(
        "call {} has ended already: {}",
        call.id,
        call.status().short_name()
    ))
}

/// The call, if the principal may read it: only in the namespaces it acts
/// in, and an invoker only the calls of its own token; to it, the others
/// do not exist.
fn readable_by(principal: &Principal, call: Call) -> Result<Call, ApiError> {
    if !principal.acts_in(call.namespace_name()) {
        return Err(ApiError::NotFound(format!("call {:?} not found", call.id)));
    }
    match principal.call_owner_filter() {
        Some(owner) if call.owner != owner => {
            Err(ApiError::NotFound(format!("call {:?} not found", call.id)))
        }
        _ => Ok(call),
    }
}

/// Call ids are UUIDs made by the platform: anything else (a path, a
/// control character) is refused before it becomes an etcd key.
fn check_call_id(id: &str) -> Result<(), ApiError> {
    if crate::ledger::is_call_id(id) {
        Ok(())
    } else {
        Err(ApiError::InvalidArgument(format!(
            "{:?} is not a call id (a UUID such as 0192f1a0-0000-7000-8000-000000000000)",
            id.chars().take(80).collect::<String>()
        )))
    }
}

/// A stream fed by a spawned task through a channel.
fn async_stream<F, Fut>(body: F) -> CallStream
where
    F: FnOnce(tokio::sync::mpsc::Sender<Result<Call, Status>>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    tokio::spawn(body(tx));
    Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))
}

/// The last chunk of a followed call: what its stored log adds to the
/// `streamed` bytes sent live. A log cut to its bound keeps its head (sent
/// live already) and its tail: the tail follows from the cut marker on.
fn final_rest(logs: CallLogs, streamed: u64) -> CallLogChunk {
    let streamed = streamed as usize;
    let data = if streamed == 0 {
        logs.logs
    } else if !logs.truncated && logs.logs.len() >= streamed {
        logs.logs[streamed..].to_vec()
    } else {
        let needle = faas_init_protocol::LOG_CUT_NEEDLE;
        match logs.logs.windows(needle.len()).position(|w| w == needle) {
            Some(at) => {
                let line = logs.logs[..at]
                    .iter()
                    .rposition(|b| *b == b'\n')
                    .map_or(0, |i| i + 1);
                let mut rest = b"\n".to_vec();
                rest.extend_from_slice(&logs.logs[line..]);
                rest
            }
            None => logs.logs,
        }
    };
    CallLogChunk {
        data,
        offset: streamed as u64,
        r#final: true,
        truncated: logs.truncated,
    }
}

/// Lambda's bound on a client context (its base64 form is 3583 bytes).
const MAX_CLIENT_CONTEXT_BYTES: usize = 3583;

/// A client context is a JSON object of at most
/// [`MAX_CLIENT_CONTEXT_BYTES`], stored compact (it is spliced into the
/// function's input as it is).
fn check_client_context(text: String) -> Result<String, ApiError> {
    if text.trim().is_empty() {
        return Ok(String::new());
    }
    if text.len() > MAX_CLIENT_CONTEXT_BYTES {
        return Err(ApiError::InvalidArgument(format!(
            "the client context is {} bytes, over the limit of {MAX_CLIENT_CONTEXT_BYTES} bytes",
            text.len()
        )));
    }
    match serde_json::from_str::<serde_json::Value>(&text) {
        Ok(value @ serde_json::Value::Object(_)) => Ok(value.to_string()),
        Ok(_) => Err(ApiError::InvalidArgument(
            "the client context must be a JSON object".into(),
        )),
        Err(e) => Err(ApiError::InvalidArgument(format!(
            "the client context is not valid JSON: {e}"
        ))),
    }
}

#[cfg(test)]
mod client_context_tests {
    use super::*;

    #[test]
    fn a_client_context_is_an_object_within_lambdas_bound() {
        assert_eq!(check_client_context(String::new()).unwrap(), "");
        assert_eq!(
            check_client_context(r#"{ "custom": {"a": 1} }"#.into()).unwrap(),
            r#"{"custom":{"a":1}}"#
        );
        for bad in ["[1]", "\"x\"", "{", "3"] {
            assert!(
                matches!(
                    check_client_context(bad.into()),
                    Err(ApiError::InvalidArgument(_))
                ),
                "{bad}"
            );
        }
        let big = format!(r#"{{"custom":"{}"}}"#, "a".repeat(4000));
        assert!(matches!(
            check_client_context(big),
            Err(ApiError::InvalidArgument(_))
        ));
    }
}
