//! `adaptive`: our policy. The thesis's window heuristics leave time on the
//! table in four places; each rule below removes one.
//!
//! 1. **Slow reaction.** A 30 s window recomputed every 5 s lags bursts and
//!    shifts of the mix. Instead each function's arrival rate is an
//!    exponentially weighted count (time constant τ, default 10 s): every call
//!    adds 1, the count decays by e^(−Δt/τ), rate = count / τ. It moves within
//!    seconds of a change, and old traffic fades instead of falling off a
//!    cliff.
//!
//! 2. **All-or-nothing granularity, proportional targets.** Function
//!    preloads are the fastest start but serve one function; runtime
//!    preloads serve every function of the runtime but still pay the
//!    function load. Rather than a target proportional to counts, each spot
//!    goes where its *expected saving* is largest (the newsvendor rule): the
//!    (n+1)-th preload of function f is used only if more than n calls of f
//!    arrive before a consumed preload can be replaced, so it is worth
//!    L_f · P(N ≥ n+1), N ~ Poisson(λ_f · T_f), with L_f the measured function
//!    preload time (what a cold start pays that a function prewarm does not) and T_f the
//!    lead time (tear-down + preload): λ·T is Little's law for the calls in
//!    flight during a replacement. A runtime preload catches the *overflow* of
//!    its functions (their calls beyond their own preloads, including the
//!    long tail that has none) and is worth L_r · P(overflow ≥ n+1). The mix
//!    follows: a hot function gets function preloads until its next one is
//!    unlikely to be used, and the tail of each runtime shares runtime
//!    preloads, so a tail call is a runtime prewarm rather than a cold start.
//!    A runtime with a single function never gets runtime preloads (its
//!    function's preload serves the same calls faster). With no recent calls
//!    the spots hold the registered runtimes evenly (the most versatile
//!    preload; for a single-function runtime, that function).
//!
//! 3. **Blind placement.** The thesis runs a call cold as soon as its preload
//!    is not ready, even if one will be in 100 ms. Here every call (queue
//!    head first) takes the option expected to *start its run* soonest:
//!    its function preloaded (now), its runtime preloaded (+ function load), a
//!    preload of it finishing (its remaining time, + function load for a
//!    runtime), a Free spot (cold: runtime + function load), or clearing the
//!    least valuable idle preload (+ clear). A call that chooses to wait for a
//!    preload *claims* it, so later calls do not count on it and it is never
//!    evicted; claims are recomputed at every event, so a failed or overdue
//!    preload (expected to take as long again as it is late) sends its call
//!    elsewhere. Costs are measured from the agents' reports (EWMA of
//!    preload and clear durations), starting from priors.
//!
//! 4. **Slow replacement.** Every call consumes its container, and the next
//!    call is most likely for the same function. Values are computed
//!    against the preloads not claimed by waiting calls, so a consumed (or
//!    claimed) preload is replaced by the next empty spot at once. When the
//!    mix moves, the least valuable idle preload is cleared and preloaded for
//!    the key whose next preload is worth more than twice as much (the margin
//!    keeps noise in the rates from moving spots back and forth), at most
//!    S/8 moves per second, never while calls wait without a preload coming,
//!    never without traffic.
//!
//! 5. **Costs as reported, not as paid.** The agent reports a function
//!    preload once its dependencies ran; the runtime's process then starts
//!    and imports the handler, unseen. Judged by its report, a function
//!    preload of a Node function saves little more than a runtime preload
//!    (both ≈ a container), when a call on the runtime preload really pays
//!    ≈70 ms more here. So the saving of a function preload over a runtime
//!    one is also measured where it is paid: the mean length of the
//!    function's executes on each kind of preload, and the larger of the
//!    two estimates is used.
//!
//! Like the window heuristics it clears preloads of updated or removed
//! functions (the old version never runs) and backs off a key whose preload
//! failed.

use std::collections::{BTreeMap, BTreeSet};

use super::support::{clear_stale, empty_spots, idle_preloaded, is_stale, key_counts, Key};
use super::Policy;
use crate::cluster::{
    Cluster, Event, FunctionRef, Millis, Operation, PendingCall, SpotId, SpotState,
};

/// Priors for costs not measured yet (ms): a runtime preload, the function
/// load on top of it, a clear. Only their order matters until the first
/// reports replace them.
const PRIOR_RUNTIME_MS: f64 = 1000.0;
const PRIOR_FUNCTION_EXTRA_MS: f64 = 500.0;
const PRIOR_CLEAR_MS: f64 = 300.0;
/// Weight of a new measurement in the cost averages.
const COST_ALPHA: f64 = 0.3;
/// Below this many calls per τ the mix is noise: keep the idle base.
const MIN_RECENT_CALLS: f64 = 0.5;
/// A move of a preload must be expected to save at least this (ms) per
/// lead time.
const MIN_MOVE_GAIN_MS: f64 = 1.0;
/// How long a key whose preload failed is not preloaded again.
const FAILURE_BACKOFF_MS: Millis = 5_000;

pub struct Adaptive {
    tau_ms: f64,
    /// Per function name: decayed call count and when it was last decayed.
    demand: BTreeMap<String, (f64, Millis)>,
    /// Measured time of a runtime preload, per runtime.
    runtime_ms: BTreeMap<String, f64>,
    /// Measured time of a function preload (runtime included), per function.
    function_ms: BTreeMap<String, f64>,
    /// Measured length of the function's executes (start to spot free), on
    /// a runtime preload and on a function preload. Their difference is
    /// what a function preload really saves over a runtime one, which the
    /// preload's own duration can understate: the agent reports a function
    /// preload once its dependencies ran, before the runtime's process has
    /// started and imported the handler.
    exec_on_runtime_ms: BTreeMap<String, f64>,
    exec_on_function_ms: BTreeMap<String, f64>,
    clear_ms: f64,
    failed_until: BTreeMap<Key, Millis>,
}

/// Where a call can go, and what it costs before its run starts.
enum Choice {
    Send(Vec<Operation>),
    Wait(SpotId),
}

impl Adaptive {
    pub fn new(rate_time_constant_ms: Millis) -> Self {
        Adaptive {
            tau_ms: rate_time_constant_ms.max(1) as f64,
            demand: BTreeMap::new(),
            runtime_ms: BTreeMap::new(),
            function_ms: BTreeMap::new(),
            exec_on_runtime_ms: BTreeMap::new(),
            exec_on_function_ms: BTreeMap::new(),
            clear_ms: PRIOR_CLEAR_MS,
            failed_until: BTreeMap::new(),
        }
    }

    /// Decayed count of calls of the function (≈ calls in the last τ).
    fn recent_calls(&self, name: &str, now: Millis) -> f64 {
        self.demand.get(name).map_or(0.0, |(count, at)| {
            count * (-(now.saturating_sub(*at) as f64) / self.tau_ms).exp()
        })
    }

    fn record_call(&mut self, name: &str, now: Millis) {
        let count = self.recent_calls(name, now) + 1.0;
        self.demand.insert(name.to_string(), (count, now));
    }

    fn runtime_cost(&self, runtime: &str) -> f64 {
        self.runtime_ms
            .get(runtime)
            .copied()
            .unwrap_or(PRIOR_RUNTIME_MS)
    }

    /// How long a function preload takes until its spot reports preloaded.
    fn preload_cost(&self, function: &FunctionRef) -> f64 {
        self.function_ms
            .get(&function.name)
            .copied()
            .unwrap_or_else(|| self.runtime_cost(&function.runtime) + PRIOR_FUNCTION_EXTRA_MS)
    }

    /// The function load alone: what a runtime prewarm still pays. The
    /// larger of the preloads' difference and the executes' difference.
    fn function_extra(&self, function: &FunctionRef) -> f64 {
        let reported = self.preload_cost(function) - self.runtime_cost(&function.runtime);
        let observed = match (
            self.exec_on_runtime_ms.get(&function.name),
            self.exec_on_function_ms.get(&function.name),
        ) {
            (Some(on_runtime), Some(on_function)) => on_runtime - on_function,
            _ => 0.0,
        };
        reported.max(observed).max(0.0)
    }

    /// What a function prewarm saves over a cold start.
    fn function_cost(&self, function: &FunctionRef) -> f64 {
        self.runtime_cost(&function.runtime) + self.function_extra(function)
    }

    fn op_cost(&self, op: &Operation) -> f64 {
        match op {
            Operation::ClearSpot { .. } => self.clear_ms,
            Operation::PreloadRuntime { runtime, .. } => self.runtime_cost(runtime),
            Operation::PreloadFunction { function, .. } => self.preload_cost(function),
            // Calls are not waited on: their length is unknown.
            _ => 0.0,
        }
    }

    /// Learns costs and failures from the operation the event ended.
    fn observe(&mut self, cluster: &Cluster, now: Millis) {
        let Some(done) = cluster.completed() else {
            return;
        };
        let took = now.saturating_sub(done.started_at) as f64;
        let blend = |old: Option<f64>| match old {
            Some(old) => old + COST_ALPHA * (took - old),
            None => took,
        };
        match (&done.operation, &done.reported) {
            (Operation::PreloadRuntime { runtime, .. }, SpotState::PreloadedRuntime { .. }) => {
                let v = blend(self.runtime_ms.get(runtime).copied());
                self.runtime_ms.insert(runtime.clone(), v);
            }
            (Operation::PreloadFunction { function, .. }, SpotState::PreloadedFunction { .. }) => {
                let v = blend(self.function_ms.get(&function.name).copied());
                self.function_ms.insert(function.name.clone(), v);
            }
            (Operation::ClearSpot { .. }, SpotState::Free) => {
                self.clear_ms = blend(Some(self.clear_ms));
            }
            (Operation::ExecRuntimePreloaded { call, .. }, SpotState::Free) => {
                let v = blend(self.exec_on_runtime_ms.get(&call.function.name).copied());
                self.exec_on_runtime_ms
                    .insert(call.function.name.clone(), v);
            }
            (Operation::ExecFunctionPreloaded { call, .. }, SpotState::Free) => {
                let v = blend(self.exec_on_function_ms.get(&call.function.name).copied());
                self.exec_on_function_ms
                    .insert(call.function.name.clone(), v);
            }
            (op @ (Operation::PreloadRuntime { .. } | Operation::PreloadFunction { .. }), _) => {
                if let Some(key) = Key::of(&op.expected_state()) {
                    self.failed_until.insert(key, now + FAILURE_BACKOFF_MS);
                }
            }
            _ => {}
        }
    }

    /// Calls expected for the function per ms.
    fn rate(&self, name: &str, now: Millis) -> f64 {
        self.recent_calls(name, now) / self.tau_ms
    }

    /// How long a consumed preload of the function takes to be replaced: a
    /// tear-down (about a clear) and the preload.
    fn lead_time(&self, function: &FunctionRef) -> f64 {
        self.clear_ms + self.preload_cost(function)
    }

    /// Whether there is traffic to go by; without it the spots hold the
    /// idle base.
    fn has_traffic(&self, cluster: &Cluster, now: Millis) -> bool {
        let recent: f64 = cluster
            .catalog()
            .functions()
            .iter()
            .map(|f| self.recent_calls(&f.name, now))
            .sum();
        recent >= MIN_RECENT_CALLS
    }

    /// The idle base: the registered runtimes evenly (a runtime with one
    /// function: that function, which serves the same calls faster).
    fn base_shares(cluster: &Cluster) -> Vec<(Key, f64)> {
        let catalog = cluster.catalog();
        let runtimes = catalog.runtimes();
        let each = cluster.spot_count() as f64 / runtimes.len().max(1) as f64;
        runtimes
            .iter()
            .map(|r| {
                let mut functions = catalog.functions().iter().filter(|f| f.runtime == *r);
                match (functions.next(), functions.next()) {
                    (Some(only), None) => (Key::Function(only.name.clone(), only.version), each),
                    _ => (Key::Runtime(r.clone()), each),
                }
            })
            .collect()
    }

    /// Keys worth preloading: functions with recent calls, and their
    /// runtimes when they have more than one function (a runtime preload
    /// serves nothing that a preload of its only function would not serve
    /// faster).
    fn candidates(&self, cluster: &Cluster, now: Millis) -> Vec<Key> {
        let catalog = cluster.catalog();
        let mut keys = Vec::new();
        let mut runtimes = Vec::new();
        for f in catalog.functions() {
            if self.recent_calls(&f.name, now) > 0.0 {
                keys.push(Key::Function(f.name.clone(), f.version));
                let shared = catalog
                    .functions()
                    .iter()
                    .filter(|g| g.runtime == f.runtime)
                    .count()
                    > 1;
                if shared && !runtimes.contains(&f.runtime) {
                    runtimes.push(f.runtime.clone());
                }
            }
        }
        keys.extend(runtimes.into_iter().map(Key::Runtime));
        keys
    }

    /// The expected time saved by the key's (n+1)-th available preload: its
    /// saving per call times the chance that more than n calls need it
    /// before a consumed preload could be replaced (Poisson, mean = rate ×
    /// lead time, Little's law). A runtime preload catches the overflow of
    /// its functions' preloads: the calls beyond their counts.
    fn marginal_value(
        &self,
        cluster: &Cluster,
        counts: &BTreeMap<Key, f64>,
        key: &Key,
        n: f64,
        now: Millis,
    ) -> f64 {
        let catalog = cluster.catalog();
        let n = n.max(0.0) as usize;
        match key {
            // Rates are kept per function name: an aliased earlier version
            // is worth nothing here (the window policies preload those).
            Key::Function(name, version) => catalog
                .function(name)
                .filter(|f| f.version == *version)
                .map_or(0.0, |f| {
                    let mean = self.rate(name, now) * self.lead_time(f);
                    self.function_cost(f) * poisson_tail(mean, n + 1)
                }),
            Key::Runtime(runtime) => {
                let overflow: f64 = catalog
                    .functions()
                    .iter()
                    .filter(|f| f.runtime == *runtime)
                    .map(|f| {
                        let mean = self.rate(&f.name, now) * self.lead_time(f);
                        let held = counts
                            .get(&Key::Function(f.name.clone(), f.version))
                            .copied()
                            .unwrap_or(0.0);
                        poisson_excess(mean, held.max(0.0) as usize)
                    })
                    .sum();
                self.runtime_cost(runtime) * poisson_tail(overflow, n + 1)
            }
        }
    }

    /// When a preloading spot is expected to be ready: its pending
    /// operations' estimated costs from when the first started. An overdue
    /// preload is expected to take as long again as it is late.
    fn remaining(&self, cluster: &Cluster, spot: &SpotId, now: Millis) -> f64 {
        let mut ready = None::<f64>;
        for pending in cluster.pending_operations(spot) {
            let start = match (ready, pending.started_at) {
                (Some(r), _) => r,
                (None, Some(s)) => s as f64,
                (None, None) => now as f64,
            };
            ready = Some(start + self.op_cost(&pending.operation));
        }
        let ready = ready.unwrap_or(now as f64);
        (ready - now as f64).abs()
    }

    /// How much an idle preload is worth keeping: the marginal value of
    /// its key's last spot (0 for a stale preload or an unwanted key).
    fn value(
        &self,
        cluster: &Cluster,
        state: &SpotState,
        counts: &BTreeMap<Key, f64>,
        now: Millis,
    ) -> f64 {
        if is_stale(cluster, state) {
            return 0.0;
        }
        let Some(key) = Key::of(state) else {
            return 0.0;
        };
        let held = counts.get(&key).copied().unwrap_or(1.0);
        self.marginal_value(cluster, counts, &key, held - 1.0, now)
    }

    /// The fastest start for the call among spots not claimed, if any.
    fn choose(
        &self,
        cluster: &Cluster,
        call: &PendingCall,
        claimed: &BTreeSet<SpotId>,
        counts: &BTreeMap<Key, f64>,
        now: Millis,
    ) -> Option<Choice> {
        let f = &call.function;
        let cold = self.function_cost(f);
        let extra = self.function_extra(f);
        // (time before the run starts, tie-break rank, choice); lower wins.
        let mut best: Option<(f64, f64, Choice)> = None;
        let mut consider = |cost: f64, rank: f64, choice: Choice| {
            if best
                .as_ref()
                .is_none_or(|(c, r, _)| (cost, rank) < (*c, *r))
            {
                best = Some((cost, rank, choice));
            }
        };
        let send = |ops: Vec<Operation>| Choice::Send(ops);
        for (spot, state) in cluster.spots() {
            if claimed.contains(spot) {
                continue;
            }
            let exec_call = call.clone();
            match state {
                SpotState::PreloadedFunction { function } if function == f => consider(
                    0.0,
                    0.0,
                    send(vec![Operation::ExecFunctionPreloaded {
                        spot: spot.clone(),
                        call: exec_call,
                    }]),
                ),
                SpotState::PreloadedRuntime { runtime } if *runtime == f.runtime => consider(
                    extra,
                    1.0,
                    send(vec![Operation::ExecRuntimePreloaded {
                        spot: spot.clone(),
                        call: exec_call,
                    }]),
                ),
                SpotState::Preloading {
                    function: Some(function),
                    ..
                } if function == f => consider(
                    self.remaining(cluster, spot, now),
                    3.0,
                    Choice::Wait(spot.clone()),
                ),
                SpotState::Preloading {
                    runtime,
                    function: None,
                } if *runtime == f.runtime => consider(
                    self.remaining(cluster, spot, now) + extra,
                    4.0,
                    Choice::Wait(spot.clone()),
                ),
                SpotState::Free => consider(
                    cold,
                    2.0,
                    send(vec![Operation::ExecuteNoPreload {
                        spot: spot.clone(),
                        call: exec_call,
                    }]),
                ),
                SpotState::Clearing if cluster.outstanding(spot) > 0 => consider(
                    self.remaining(cluster, spot, now) + cold,
                    2.0,
                    send(vec![Operation::ExecuteNoPreload {
                        spot: spot.clone(),
                        call: exec_call,
                    }]),
                ),
                other if other.is_preloaded() => {
                    // Clearing another preload: the least valuable goes
                    // (rank grows with value, below 5 + 1).
                    let v = self.value(cluster, other, counts, now);
                    consider(
                        self.clear_ms + cold,
                        5.0 + v / (1.0 + v),
                        send(vec![
                            Operation::ClearSpot { spot: spot.clone() },
                            Operation::ExecuteNoPreload {
                                spot: spot.clone(),
                                call: exec_call,
                            },
                        ]),
                    )
                }
                _ => {}
            }
        }
        best.map(|(_, _, c)| c)
    }

    /// Gives each queued call, head first, its fastest start; calls that
    /// wait for a preload claim it. Returns the claimed spots.
    fn serve_queue(&self, cluster: &mut Cluster, now: Millis) -> BTreeSet<SpotId> {
        let mut claimed = BTreeSet::new();
        let mut index = 0;
        while index < cluster.queue().len() {
            let call = cluster.queue()[index].clone();
            let counts = Self::available_counts(cluster, &claimed);
            match self.choose(cluster, &call, &claimed, &counts, now) {
                Some(Choice::Send(ops)) => {
                    cluster.remove_queued(&call.id);
                    for op in ops {
                        cluster.send(op);
                    }
                }
                Some(Choice::Wait(spot)) => {
                    claimed.insert(spot);
                    index += 1;
                }
                None => {
                    // Nothing usable: later calls can only wait for their
                    // own preloads; stop once none is left to claim.
                    index += 1;
                    let any_unclaimed_preloading = cluster.spots().any(|(id, s)| {
                        matches!(s, SpotState::Preloading { .. }) && !claimed.contains(id)
                    });
                    if !any_unclaimed_preloading {
                        break;
                    }
                }
            }
        }
        claimed
    }

    /// Spots per key that are still free to serve a future call: preloaded
    /// or preloading, not claimed by a waiting call.
    fn available_counts(cluster: &Cluster, claimed: &BTreeSet<SpotId>) -> BTreeMap<Key, f64> {
        let mut counts: BTreeMap<Key, f64> = key_counts(cluster)
            .into_iter()
            .map(|(k, n)| (k, n as f64))
            .collect();
        for spot in claimed {
            if let Some(key) = cluster.spot(spot).and_then(Key::of) {
                if let Some(n) = counts.get_mut(&key) {
                    *n -= 1.0;
                }
            }
        }
        counts
    }

    /// The key whose next preload is worth most, and that worth; without
    /// traffic, the key furthest below its base share.
    fn most_wanted(
        &self,
        cluster: &Cluster,
        counts: &BTreeMap<Key, f64>,
        now: Millis,
    ) -> Option<(Key, f64)> {
        let usable = |key: &Key| self.failed_until.get(key).is_none_or(|t| *t <= now);
        let held = |key: &Key| counts.get(key).copied().unwrap_or(0.0);
        let mut best: Option<(Key, f64)> = None;
        if self.has_traffic(cluster, now) {
            for key in self.candidates(cluster, now) {
                if !usable(&key) {
                    continue;
                }
                let v = self.marginal_value(cluster, counts, &key, held(&key), now);
                if v > 0.0 && best.as_ref().is_none_or(|(_, b)| v > *b) {
                    best = Some((key, v));
                }
            }
        } else {
            for (key, share) in Self::base_shares(cluster) {
                let deficit = share - held(&key);
                if usable(&key) && deficit > 0.0 && best.as_ref().is_none_or(|(_, b)| deficit > *b)
                {
                    best = Some((key, deficit));
                }
            }
        }
        best
    }

    /// Preloads every empty spot with the key whose next preload is worth
    /// most.
    fn fill(&self, cluster: &mut Cluster, claimed: &BTreeSet<SpotId>, now: Millis) {
        for spot in empty_spots(cluster) {
            let counts = Self::available_counts(cluster, claimed);
            let Some((key, _)) = self.most_wanted(cluster, &counts, now) else {
                return;
            };
            if let Some(op) = key.preload(spot, cluster) {
                cluster.send(op);
            }
        }
    }

    /// Moves the least valuable idle preload to the key whose next preload
    /// is worth more than twice as much (the margin keeps noise in the
    /// rates from moving spots back and forth); false if none is worth it.
    fn rebalance(&self, cluster: &mut Cluster, claimed: &BTreeSet<SpotId>, now: Millis) -> bool {
        let counts = Self::available_counts(cluster, claimed);
        let mut victim: Option<(SpotId, Key, f64)> = None;
        for (spot, state) in idle_preloaded(cluster) {
            let Some(key) = Key::of(&state) else { continue };
            let v = self.value(cluster, &state, &counts, now);
            if victim.as_ref().is_none_or(|(_, _, b)| v < *b) {
                victim = Some((spot, key, v));
            }
        }
        let Some((spot, victim_key, loss)) = victim else {
            return false;
        };
        // Value the move as if the victim's spot were already gone.
        let mut without = counts.clone();
        if let Some(n) = without.get_mut(&victim_key) {
            *n -= 1.0;
        }
        let Some((wanted, gain)) = self.most_wanted(cluster, &without, now) else {
            return false;
        };
        if wanted == victim_key || gain <= 2.0 * loss || gain < MIN_MOVE_GAIN_MS {
            return false;
        }
        cluster.send(Operation::ClearSpot { spot: spot.clone() });
        if let Some(op) = wanted.preload(spot, cluster) {
            cluster.send(op);
        }
        true
    }
}

/// P(N ≥ k) for N ~ Poisson(mean).
fn poisson_tail(mean: f64, k: usize) -> f64 {
    if mean <= 0.0 {
        return if k == 0 { 1.0 } else { 0.0 };
    }
    let mut p = (-mean).exp();
    let mut below = 0.0;
    for i in 0..k {
        below += p;
        p *= mean / (i + 1) as f64;
    }
    (1.0 - below).max(0.0)
}

/// E[(N − held)⁺] for N ~ Poisson(mean): the calls beyond `held`.
fn poisson_excess(mean: f64, held: usize) -> f64 {
    if mean <= 0.0 {
        return 0.0;
    }
    // E[(N − a)⁺] = mean − a + Σ_{i<a} (a − i)·P(N = i)
    let mut p = (-mean).exp();
    let mut correction = 0.0;
    for i in 0..held {
        correction += (held - i) as f64 * p;
        p *= mean / (i + 1) as f64;
    }
    (mean - held as f64 + correction).max(0.0)
}

impl Policy for Adaptive {
    fn name(&self) -> &'static str {
        "adaptive"
    }

    fn decide(&mut self, cluster: &mut Cluster, event: &Event, now: Millis) {
        if let Event::CallArrived(call) = event {
            self.record_call(&call.function.name, now);
            cluster.enqueue(call.clone());
        }
        self.observe(cluster, now);
        self.failed_until.retain(|_, until| *until > now);
        clear_stale(cluster);
        let claimed = self.serve_queue(cluster, now);
        self.fill(cluster, &claimed, now);
        // Moves are paced by the clock (a few per second), not by the flow
        // of reports, which would otherwise convert every idle spot within
        // milliseconds of a change.
        let nobody_waits_without_a_claim = cluster.queue().len() <= claimed.len();
        if *event == Event::Tick
            && self.has_traffic(cluster, now)
            && nobody_waits_without_a_claim
            && empty_spots(cluster).is_empty()
        {
            for _ in 0..(cluster.spot_count() / 8).max(1) {
                if !self.rebalance(cluster, &claimed, now) {
                    break;
                }
            }
        }
    }
}
