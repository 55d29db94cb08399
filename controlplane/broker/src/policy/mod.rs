//! Preload policies (thesis 5.1.6). A new policy is one file implementing
//! [`Policy`] plus a line in [`policy_from_config`].
//!
//! - `no-preload`: spots are free or running; calls run cold.
//! - `preload-runtime` / `preload-function`: the thesis's window heuristics
//!   ([`WindowPreload`]).
//! - `adaptive`: ours ([`Adaptive`]): rate-driven mixed preloading that
//!   picks, for each call, the start expected to begin running soonest.

use crate::cluster::{Cluster, Event, Millis};

mod adaptive;
mod apportion;
mod no_preload;
mod support;
mod window;

pub use adaptive::Adaptive;
pub use apportion::apportion;
pub use no_preload::NoPreload;
pub use window::{Granularity, WindowPreload};

/// A broker heuristic: sees every event, answers with spot operations.
///
/// The cluster view already reflects the event when `decide` runs; the
/// policy may take calls out of the queue or put them in, and sends
/// operations with [`Cluster::send`], which records the state each puts its
/// spot in so that later decisions of the same event see it. It must only
/// target spots whose state allows the operation ([`Cluster::allows`]).
pub trait Policy: Send {
    fn name(&self) -> &'static str;
    fn decide(&mut self, cluster: &mut Cluster, event: &Event, now: Millis);
}

/// Tunables of the preload policies (the control plane's configuration).
#[derive(Clone, Debug, PartialEq)]
pub struct PolicyConfig {
    /// Window heuristics: how far back calls count (the thesis's N).
    pub window_ms: Millis,
    /// Window heuristics: how often the target is recomputed (the thesis's M).
    pub recompute_ms: Millis,
    /// Adaptive: time constant of the exponentially weighted call rates;
    /// a change in the mix is mostly reflected after about this long.
    pub rate_time_constant_ms: Millis,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        PolicyConfig {
            window_ms: 30_000,
            recompute_ms: 5_000,
            rate_time_constant_ms: 10_000,
        }
    }
}

/// Names accepted by [`policy_by_name`] and [`policy_from_config`].
pub const POLICY_NAMES: &[&str] = &[
    "no-preload",
    "preload-runtime",
    "preload-function",
    "adaptive",
];

/// The named policy with default tunables.
pub fn policy_by_name(name: &str) -> Option<Box<dyn Policy>> {
    policy_from_config(name, &PolicyConfig::default())
}

/// The named policy with the given tunables.
pub fn policy_from_config(name: &str, config: &PolicyConfig) -> Option<Box<dyn Policy>> {
    match name {
        "no-preload" => Some(Box::new(NoPreload)),
        "preload-runtime" => Some(Box::new(WindowPreload::new(
            Granularity::Runtime,
            config.window_ms,
            config.recompute_ms,
        ))),
        "preload-function" => Some(Box::new(WindowPreload::new(
            Granularity::Function,
            config.window_ms,
            config.recompute_ms,
        ))),
        "adaptive" => Some(Box::new(Adaptive::new(config.rate_time_constant_ms))),
        _ => None,
    }
}
