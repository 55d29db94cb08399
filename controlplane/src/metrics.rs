//! The control plane's Prometheus metrics (`--metrics-listen`).
//!
//! Calls, phases, queue, spots and preloads are the leader's: its broker
//! sees them. A follower reports its leadership and its etcd requests.
//! Counters count from this process's start; sum them over replicas (a
//! call is counted by the replica that led when it ended).
//!
//! Labels carry only validated names (namespaces, functions, nodes) and
//! fixed words: prometheus-client writes label values unescaped.

use std::sync::{Arc, LazyLock};
use std::time::Duration;

use faas_metrics::{latency_histograms, Histograms, Registry};
use faas_proto::v1::{Call, StartKind};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CallLabels {
    pub namespace: String,
    pub function: String,
    pub status: String,
    pub start: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PhaseLabels {
    pub phase: &'static str,
    pub start: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SpotLabels {
    pub node: String,
    pub state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OpLabels {
    pub op: &'static str,
}

pub struct Metrics {
    /// Ended calls, by how they ended and how they started.
    pub calls: Family<CallLabels, Counter>,
    /// Each phase of ended calls (queue, loads, execution, ...), seconds.
    pub phases: Histograms<PhaseLabels>,
    /// Calls accepted and waiting for a spot (or for their namespace's
    /// concurrency), sampled every second.
    pub queued: Gauge,
    /// The broker's view of every spot, sampled every second.
    pub spots: Family<SpotLabels, Gauge>,
    /// Nodes with a live session.
    pub nodes: Gauge,
    /// Preloads sent to spots, by what they load.
    pub preloads: Family<KindLabels, Counter>,
    /// Calls started on a spot preloaded for them.
    pub preload_hits: Family<KindLabels, Counter>,
    /// Preloads cleared, replaced or failed before serving a call.
    pub preloads_wasted: Family<KindLabels, Counter>,
    /// 1 while this replica leads.
    pub leader: Gauge,
    /// Times this replica became the leader.
    pub leader_changes: Counter,
    /// etcd requests, by operation, seconds (failed ones included).
    pub etcd_requests: Histograms<OpLabels>,
    /// etcd requests that failed, by operation.
    pub etcd_errors: Family<OpLabels, Counter>,
}

static METRICS: LazyLock<Metrics> = LazyLock::new(|| Metrics {
    calls: Family::default(),
    phases: latency_histograms(),
    queued: Gauge::default(),
    spots: Family::default(),
    nodes: Gauge::default(),
    preloads: Family::default(),
    preload_hits: Family::default(),
    preloads_wasted: Family::default(),
    leader: Gauge::default(),
    leader_changes: Counter::default(),
    etcd_requests: latency_histograms(),
    etcd_errors: Family::default(),
});

/// This process's metrics.
pub fn metrics() -> &'static Metrics {
    &METRICS
}

/// A registry with every metric of this process, for `/metrics`.
pub fn registry() -> Arc<Registry> {
    let m = metrics();
    let mut r = Registry::with_prefix("faas");
    r.register(
        "calls",
        "Ended calls by namespace, function, status and start kind",
        m.calls.clone(),
    );
    r.register(
        "call_phase_seconds",
        "Time ended calls spent in each phase (queue, runtime_load, function_load, dependencies, execution, result_return, total)",
        m.phases.clone(),
    );
    r.register(
        "queued_calls",
        "Calls accepted and not started yet",
        m.queued.clone(),
    );
    r.register(
        "spots",
        "Spots by node and state, as the broker sees them",
        m.spots.clone(),
    );
    r.register("nodes", "Nodes with a live session", m.nodes.clone());
    r.register(
        "preloads",
        "Preloads sent, by kind (runtime, function)",
        m.preloads.clone(),
    );
    r.register(
        "preload_hits",
        "Calls started on a spot preloaded for them, by kind",
        m.preload_hits.clone(),
    );
    r.register(
        "preloads_wasted",
        "Preloads cleared, replaced or failed before serving a call, by kind",
        m.preloads_wasted.clone(),
    );
    r.register("leader", "1 while this replica leads", m.leader.clone());
    r.register(
        "leader_changes",
        "Times this replica became the leader",
        m.leader_changes.clone(),
    );
    r.register(
        "etcd_request_seconds",
        "etcd requests by operation, seconds",
        m.etcd_requests.clone(),
    );
    r.register(
        "etcd_request_errors",
        "etcd requests that failed, by operation",
        m.etcd_errors.clone(),
    );
    Arc::new(r)
}

/// Counts an ended call and its phases (once, where its final record is
/// written).
pub fn call_ended(call: &Call) {
    let m = metrics();
    let timings = call.timings.as_ref();
    let start = match timings.map(|t| t.start_kind()) {
        Some(StartKind::Unspecified) | None => "none".to_string(),
        Some(kind) => kind.short_name(),
    };
    m.calls
        .get_or_create(&CallLabels {
            namespace: call.namespace_name().to_string(),
            function: call.function.clone(),
            status: call.status().short_name(),
            start: start.clone(),
        })
        .inc();
    let Some(t) = timings else { return };
    for (phase, ms) in [
        ("queue", t.queue_ms),
        ("runtime_load", t.runtime_load_ms),
        ("function_load", t.function_load_ms),
        ("dependencies", t.dependencies_ms),
        ("execution", t.execution_ms),
        ("result_return", t.result_return_ms),
        ("total", t.total_ms),
    ] {
        if ms.is_finite() && ms >= 0.0 {
            m.phases
                .get_or_create(&PhaseLabels {
                    phase,
                    start: start.clone(),
                })
                .observe(ms / 1000.0);
        }
    }
}

/// Records one etcd request.
pub fn etcd_request(op: &'static str, elapsed: Duration, ok: bool) {
    let m = metrics();
    m.etcd_requests
        .get_or_create(&OpLabels { op })
        .observe(elapsed.as_secs_f64());
    if !ok {
        m.etcd_errors.get_or_create(&OpLabels { op }).inc();
    }
}

/// Times an etcd request future and records it under `op`.
pub async fn timed_etcd<T, E>(
    op: &'static str,
    request: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T, E> {
    let start = std::time::Instant::now();
    let result = request.await;
    etcd_request(op, start.elapsed(), result.is_ok());
    result
}
