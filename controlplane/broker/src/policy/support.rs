//! Spot queries and moves shared by the preloading policies.

use crate::cluster::{Cluster, FunctionRef, Operation, SpotId, SpotState};

/// Spots that can take an execute or a preload now: Free, or being cleared
/// by a clear this broker sent (the agent runs what follows after it).
pub fn empty_spots(cluster: &Cluster) -> Vec<SpotId> {
    cluster
        .spots()
        .filter(|(id, s)| match s {
            SpotState::Free => true,
            SpotState::Clearing => cluster.outstanding(id) > 0,
            _ => false,
        })
        .map(|(id, _)| id.clone())
        .collect()
}

/// Spots holding a finished preload that nothing uses.
pub fn idle_preloaded(cluster: &Cluster) -> Vec<(SpotId, SpotState)> {
    cluster
        .spots()
        .filter(|(_, s)| s.is_preloaded())
        .map(|(id, s)| (id.clone(), s.clone()))
        .collect()
}

/// Whether a finished preload must never serve a call again: a function
/// removed or updated since and no alias names its version (the old
/// version must never run but through its alias), or a runtime removed.
pub fn is_stale(cluster: &Cluster, state: &SpotState) -> bool {
    let catalog = cluster.catalog();
    match state {
        SpotState::PreloadedFunction { function }
        | SpotState::Preloading {
            function: Some(function),
            ..
        } => !catalog.serves(function),
        SpotState::PreloadedRuntime { runtime }
        | SpotState::Preloading {
            runtime,
            function: None,
        } => !catalog.has_runtime(runtime),
        _ => false,
    }
}

/// Clears every stale finished preload; the spots become empty for what
/// follows. (A stale preload still loading is cleared once it reports.)
pub fn clear_stale(cluster: &mut Cluster) {
    for (spot, state) in idle_preloaded(cluster) {
        if is_stale(cluster, &state) {
            cluster.send(Operation::ClearSpot { spot });
        }
    }
}

/// The exec that uses a preloaded spot for the call, if the preload fits
/// it exactly (same runtime; same function name and version).
pub fn prewarm_exec(
    spot: &SpotId,
    state: &SpotState,
    call: &crate::cluster::PendingCall,
) -> Option<Operation> {
    match state {
        SpotState::PreloadedRuntime { runtime } if *runtime == call.function.runtime => {
            Some(Operation::ExecRuntimePreloaded {
                spot: spot.clone(),
                call: call.clone(),
            })
        }
        SpotState::PreloadedFunction { function } if *function == call.function => {
            Some(Operation::ExecFunctionPreloaded {
                spot: spot.clone(),
                call: call.clone(),
            })
        }
        _ => None,
    }
}

/// What a spot holds or is loading, as a preload key.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Key {
    Runtime(String),
    /// A function version by name and version: the current one, or an
    /// earlier one an alias names.
    Function(String, u64),
}

impl Key {
    /// The key of a preloaded or preloading spot.
    pub fn of(state: &SpotState) -> Option<Key> {
        match state {
            SpotState::PreloadedRuntime { runtime }
            | SpotState::Preloading {
                runtime,
                function: None,
            } => Some(Key::Runtime(runtime.clone())),
            SpotState::PreloadedFunction { function }
            | SpotState::Preloading {
                function: Some(function),
                ..
            } => Some(Key::Function(function.name.clone(), function.version)),
            _ => None,
        }
    }

    /// The preload that puts this key on an empty spot, if the catalog
    /// still knows it.
    pub fn preload(&self, spot: SpotId, cluster: &Cluster) -> Option<Operation> {
        match self {
            Key::Runtime(runtime) => {
                cluster
                    .catalog()
                    .has_runtime(runtime)
                    .then(|| Operation::PreloadRuntime {
                        spot,
                        runtime: runtime.clone(),
                    })
            }
            Key::Function(name, version) => {
                cluster
                    .catalog()
                    .served_version(name, *version)
                    .map(|function: &FunctionRef| Operation::PreloadFunction {
                        spot,
                        function: function.clone(),
                    })
            }
        }
    }
}

/// How many spots hold or are loading each key (stale preloads, bound to
/// be cleared, count for nothing).
pub fn key_counts(cluster: &Cluster) -> std::collections::BTreeMap<Key, usize> {
    let mut counts = std::collections::BTreeMap::new();
    for (_, state) in cluster.spots() {
        if matches!(
            state,
            SpotState::Preloading { .. }
                | SpotState::PreloadedRuntime { .. }
                | SpotState::PreloadedFunction { .. }
        ) {
            if is_stale(cluster, state) {
                continue;
            }
            if let Some(key) = Key::of(state) {
                *counts.entry(key).or_insert(0) += 1;
            }
        }
    }
    counts
}
