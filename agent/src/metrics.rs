//! The agent's Prometheus metrics (`--metrics-listen`): its calls, its
//! spots' states and every request it makes to containerd.
//!
//! Labels carry fixed words only (statuses, states, containerd method
//! names): prometheus-client writes label values unescaped.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use faas_metrics::{latency_histograms, Histograms, Registry};
use faas_proto::v1::{CallStatus, SpotState, StartKind};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CallLabels {
    pub status: String,
    pub start: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabels {
    pub state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MethodLabels {
    pub method: String,
}

pub struct Metrics {
    /// Calls this agent ran to an end, by status and start kind.
    pub calls: Family<CallLabels, Counter>,
    /// Spots by their last reported state.
    pub spots: Family<StateLabels, Gauge>,
    /// containerd requests by method, seconds until the response.
    pub containerd_requests: Histograms<MethodLabels>,
    /// containerd requests that failed, by method.
    pub containerd_errors: Family<MethodLabels, Counter>,
    /// The last state of each spot, to recount `spots` on each report.
    spot_states: Mutex<HashMap<u32, SpotState>>,
}

static METRICS: LazyLock<Metrics> = LazyLock::new(|| Metrics {
    calls: Family::default(),
    spots: Family::default(),
    containerd_requests: latency_histograms(),
    containerd_errors: Family::default(),
    spot_states: Mutex::default(),
});

pub fn metrics() -> &'static Metrics {
    &METRICS
}

/// A registry with every metric of this process, for `/metrics`; starts
/// timing containerd requests.
pub fn registry() -> Arc<Registry> {
    faas_driver::observe_requests(containerd_request);
    let m = metrics();
    let mut r = Registry::with_prefix("faas_agent");
    r.register(
        "calls",
        "Calls run to an end here, by status and start kind",
        m.calls.clone(),
    );
    r.register(
        "spots",
        "Spots by their last reported state",
        m.spots.clone(),
    );
    r.register(
        "containerd_request_seconds",
        "containerd requests by method, seconds until the response",
        m.containerd_requests.clone(),
    );
    r.register(
        "containerd_request_errors",
        "containerd requests that failed, by method",
        m.containerd_errors.clone(),
    );
    Arc::new(r)
}

fn containerd_request(method: &str, elapsed: Duration, ok: bool) {
    let m = metrics();
    let labels = MethodLabels {
        method: method.to_string(),
    };
    m.containerd_requests
        .get_or_create(&labels)
        .observe(elapsed.as_secs_f64());
    if !ok {
        m.containerd_errors.get_or_create(&labels).inc();
    }
}

/// Counts a call whose result this agent sends.
pub fn call_ended(status: CallStatus, start: Option<StartKind>) {
    let start = match start {
        Some(StartKind::Unspecified) | None => "none".to_string(),
        Some(kind) => kind.short_name(),
    };
    metrics()
        .calls
        .get_or_create(&CallLabels {
            status: status.short_name(),
            start,
        })
        .inc();
}

/// Notes a spot's reported state.
pub fn spot_reported(index: u32, state: SpotState) {
    let m = metrics();
    let mut states = m.spot_states.lock().expect("poisoned");
    states.insert(index, state);
    let mut counts: HashMap<SpotState, i64> = HashMap::new();
    for state in states.values() {
        *counts.entry(*state).or_default() += 1;
    }
    m.spots.clear();
    for (state, n) in counts {
        m.spots
            .get_or_create(&StateLabels {
                state: state.short_name(),
            })
            .set(n);
    }
}
