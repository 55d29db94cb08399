//! The thesis's window heuristics (5.1.6): "preload runtime" and "preload
//! function", one implementation at two granularities.
//!
//! - A *window* keeps the calls of the last N seconds. Every M seconds the
//!   *target* (spots per runtime, or per function) is recomputed in
//!   proportion to the window's calls: 10 spots, 40 calls of A and 60 of B
//!   → 4 A, 6 B (largest remainder, so the target always sums to the spot
//!   count; the proportions are kept and re-split when nodes come and go).
//! - With an empty window the *base target* spreads the registered runtimes
//!   (functions) evenly over the spots, earlier registrations first when
//!   they do not divide evenly (more runtimes than spots: the last ones are
//!   not represented), and all idle spots are refreshed toward it. Unlike the
//!   thesis's literal "clear every spot", a spot already holding what the
//!   base target wants is left alone: the outcome is the same target with
//!   less churn.
//! - A call that finds its runtime (function, same version) preloaded runs
//!   there (prewarm start); one that finds a Free spot runs cold there; one
//!   that finds only other preloads clears one (of the key most over its
//!   target) and runs cold there; one that finds no spot waits in the queue.
//! - A spot that becomes usable (freed, preloaded, node joined) serves the
//!   queue first, head first: the head takes a matching preload anywhere if
//!   there is one, else runs cold on the empty spot. With nothing queued an
//!   empty spot is preloaded toward the target: the key with the largest
//!   deficit = target − (preloaded + preloading).
//! - A spot counts as preloaded only once its agent reports it; a call
//!   queued while a matching preload finishes gets that spot when it reports.
//!
//! Beyond the thesis, needed for correctness: a preload of a function since
//! updated or removed (or of a removed runtime) is cleared and never run; a
//! preload that failed (reported Free) is not retried for that key before the
//! next recompute, so a broken image cannot spin a spot.

use std::collections::{BTreeMap, VecDeque};

use super::support::{clear_stale, empty_spots, idle_preloaded, key_counts, prewarm_exec, Key};
use super::{apportion, Policy};
use crate::cluster::{Cluster, Event, Millis, Operation, PendingCall, SpotId};

/// What the window heuristic preloads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Granularity {
    Runtime,
    Function,
}

pub struct WindowPreload {
    granularity: Granularity,
    window_ms: Millis,
    recompute_ms: Millis,
    /// Arrival time and key of the calls of the last `window_ms`.
    window: VecDeque<(Millis, Key)>,
    /// The window's counts at the last recompute; empty: base target.
    weights: Vec<(Key, f64)>,
    last_recompute: Option<Millis>,
    /// Keys whose preload failed, not retried before this time.
    failed_until: BTreeMap<Key, Millis>,
}

impl WindowPreload {
    pub fn new(granularity: Granularity, window_ms: Millis, recompute_ms: Millis) -> Self {
        WindowPreload {
            granularity,
            window_ms,
            recompute_ms: recompute_ms.max(1),
            window: VecDeque::new(),
            weights: Vec::new(),
            last_recompute: None,
            failed_until: BTreeMap::new(),
        }
    }

    fn key_of_call(&self, call: &PendingCall) -> Key {
        match self.granularity {
            Granularity::Runtime => Key::Runtime(call.function.runtime.clone()),
            Granularity::Function => {
                Key::Function(call.function.name.clone(), call.function.version)
            }
        }
    }

    fn is_own_key(&self, key: &Key) -> bool {
        matches!(
            (self.granularity, key),
            (Granularity::Runtime, Key::Runtime(_)) | (Granularity::Function, Key::Function(..))
        )
    }

    /// The registered keys, oldest registration first.
    fn registered_keys(&self, cluster: &Cluster) -> Vec<Key> {
        match self.granularity {
            Granularity::Runtime => cluster
                .catalog()
                .runtimes()
                .iter()
                .map(|r| Key::Runtime(r.clone()))
                .collect(),
            // Aliased earlier versions too: calls through an alias find
            // their version preloaded.
            Granularity::Function => cluster
                .catalog()
                .served()
                .map(|f| Key::Function(f.name.clone(), f.version))
                .collect(),
        }
    }

    /// The target: spots per key, summing to the spot count.
    pub fn target(&self, cluster: &Cluster) -> Vec<(Key, usize)> {
        let registered = self.registered_keys(cluster);
        let weights: Vec<(Key, f64)> = if self.weights.is_empty() {
            registered.into_iter().map(|k| (k, 1.0)).collect()
        } else {
            // Keys gone from the catalog since the recompute get nothing.
            self.weights
                .iter()
                .filter(|(k, _)| registered.contains(k))
                .cloned()
                .collect()
        };
        apportion(&weights, cluster.spot_count())
    }

    /// Recomputes the target every `recompute_ms`; true when the window is
    /// empty (base target: refresh every spot toward it).
    fn maybe_recompute(&mut self, cluster: &Cluster, now: Millis) -> bool {
        if self
            .last_recompute
            .is_some_and(|t| now < t + self.recompute_ms)
        {
            return false;
        }
        self.last_recompute = Some(now);
        let since = now.saturating_sub(self.window_ms);
        while self.window.front().is_some_and(|(at, _)| *at < since) {
            self.window.pop_front();
        }
        // Registration order first, so ties split the same way as the base.
        let mut weights: Vec<(Key, f64)> = self
            .registered_keys(cluster)
            .into_iter()
            .map(|k| (k, 0.0))
            .collect();
        for (_, key) in &self.window {
            match weights.iter_mut().find(|(k, _)| k == key) {
                Some((_, w)) => *w += 1.0,
                None => weights.push((key.clone(), 1.0)),
            }
        }
        weights.retain(|(_, w)| *w > 0.0);
        self.failed_until.retain(|_, until| *until > now);
        self.weights = weights;
        self.window.is_empty()
    }

    /// Serves the queue head first until a call finds no spot.
    fn serve_queue(&self, cluster: &mut Cluster, target: &[(Key, usize)]) {
        while let Some(call) = cluster.queue().front().cloned() {
            let Some(ops) = self.place(cluster, &call, target) else {
                break;
            };
            cluster.dequeue();
            for op in ops {
                cluster.send(op);
            }
        }
    }

    /// Where the call runs now, if anywhere: a matching preload, else an
    /// empty spot (cold), else a cleared preload (cold).
    fn place(
        &self,
        cluster: &Cluster,
        call: &PendingCall,
        target: &[(Key, usize)],
    ) -> Option<Vec<Operation>> {
        let idle = idle_preloaded(cluster);
        if let Some(op) = idle
            .iter()
            .find_map(|(spot, state)| prewarm_exec(spot, state, call))
        {
            return Some(vec![op]);
        }
        let cold = |spot: SpotId| Operation::ExecuteNoPreload {
            spot,
            call: call.clone(),
        };
        if let Some(spot) = empty_spots(cluster).into_iter().next() {
            return Some(vec![cold(spot)]);
        }
        // Clear the preload whose key is most over its target.
        let counts = key_counts(cluster);
        let surplus = |state| {
            let Some(key) = Key::of(state) else {
                return i64::MAX;
            };
            let want = target
                .iter()
                .find(|(k, _)| *k == key)
                .map_or(0, |(_, n)| *n);
            counts.get(&key).copied().unwrap_or(0) as i64 - want as i64
        };
        let mut best: Option<(&SpotId, i64)> = None;
        for (spot, state) in &idle {
            let s = surplus(state);
            if best.is_none_or(|(_, b)| s > b) {
                best = Some((spot, s));
            }
        }
        let (spot, _) = best?;
        Some(vec![
            Operation::ClearSpot { spot: spot.clone() },
            cold(spot.clone()),
        ])
    }

    /// The key with the largest positive deficit, earlier in the target on
    /// ties.
    fn most_wanted(
        &self,
        target: &[(Key, usize)],
        counts: &BTreeMap<Key, usize>,
        now: Millis,
    ) -> Option<Key> {
        let mut best: Option<(&Key, i64)> = None;
        for (key, want) in target {
            if self.failed_until.get(key).is_some_and(|t| *t > now) {
                continue;
            }
            let deficit = *want as i64 - counts.get(key).copied().unwrap_or(0) as i64;
            if deficit > 0 && best.is_none_or(|(_, d)| deficit > d) {
                best = Some((key, deficit));
            }
        }
        best.map(|(k, _)| k.clone())
    }

    /// Preloads every empty spot toward the target.
    fn fill(&self, cluster: &mut Cluster, target: &[(Key, usize)], now: Millis) {
        for spot in empty_spots(cluster) {
            let counts = key_counts(cluster);
            let Some(key) = self.most_wanted(target, &counts, now) else {
                return;
            };
            if let Some(op) = key.preload(spot, cluster) {
                cluster.send(op);
            }
        }
    }

    /// Moves idle preloads that are over their key's target (or of the
    /// other granularity) to keys under theirs.
    fn refresh(&self, cluster: &mut Cluster, target: &[(Key, usize)], now: Millis) {
        for (spot, state) in idle_preloaded(cluster) {
            let counts = key_counts(cluster);
            let over = match Key::of(&state) {
                Some(key) if self.is_own_key(&key) => {
                    let want = target
                        .iter()
                        .find(|(k, _)| *k == key)
                        .map_or(0, |(_, n)| *n);
                    counts.get(&key).copied().unwrap_or(0) > want
                }
                _ => true,
            };
            if !over {
                continue;
            }
            let Some(key) = self.most_wanted(target, &counts, now) else {
                return;
            };
            cluster.send(Operation::ClearSpot { spot: spot.clone() });
            if let Some(op) = key.preload(spot, cluster) {
                cluster.send(op);
            }
        }
    }
}

impl Policy for WindowPreload {
    fn name(&self) -> &'static str {
        match self.granularity {
            Granularity::Runtime => "preload-runtime",
            Granularity::Function => "preload-function",
        }
    }

    fn decide(&mut self, cluster: &mut Cluster, event: &Event, now: Millis) {
        if let Event::CallArrived(call) = event {
            self.window.push_back((now, self.key_of_call(call)));
            cluster.enqueue(call.clone());
        }
        if let Some(done) = cluster.completed() {
            let failed_preload = matches!(
                done.operation,
                Operation::PreloadRuntime { .. } | Operation::PreloadFunction { .. }
            ) && done.reported == crate::cluster::SpotState::Free;
            if failed_preload {
                if let Some(key) = Key::of(&done.operation.expected_state()) {
                    self.failed_until.insert(key, now + self.recompute_ms);
                }
            }
        }
        let refresh = self.maybe_recompute(cluster, now);
        let target = self.target(cluster);
        clear_stale(cluster);
        self.serve_queue(cluster, &target);
        if refresh && cluster.queue().is_empty() {
            self.refresh(cluster, &target, now);
        }
        self.fill(cluster, &target, now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster_with(spots: u32, runtimes: &[&str]) -> Cluster {
        let mut c = Cluster::default();
        c.apply(&Event::NodeJoined {
            node: "n".into(),
            spots,
        });
        for r in runtimes {
            c.apply(&Event::RuntimeRegistered { name: (*r).into() });
        }
        c
    }

    fn rt(name: &str) -> Key {
        Key::Runtime(name.into())
    }

    #[test]
    fn target_is_proportional_to_the_window() {
        let c = cluster_with(10, &["A", "B"]);
        let mut p = WindowPreload::new(Granularity::Runtime, 30_000, 5_000);
        for i in 0..100 {
            let key = if i % 5 < 2 { "A" } else { "B" };
            p.window.push_back((i * 10, rt(key)));
        }
        assert!(!p.maybe_recompute(&c, 1_000), "window not empty");
        assert_eq!(p.target(&c), vec![(rt("A"), 4), (rt("B"), 6)]);
    }

    #[test]
    fn target_sums_to_the_spot_count_when_shares_do_not_divide() {
        let c = cluster_with(4, &["A", "B", "C"]);
        let mut p = WindowPreload::new(Granularity::Runtime, 30_000, 5_000);
        for key in ["A", "B", "C"] {
            p.window.push_back((0, rt(key)));
        }
        p.maybe_recompute(&c, 0);
        let t = p.target(&c);
        assert_eq!(t.iter().map(|(_, n)| n).sum::<usize>(), 4);
        assert_eq!(t, vec![(rt("A"), 2), (rt("B"), 1), (rt("C"), 1)]);
    }

    #[test]
    fn empty_window_gives_the_base_target_and_asks_for_a_refresh() {
        let c = cluster_with(5, &["A", "B", "C"]);
        let mut p = WindowPreload::new(Granularity::Runtime, 30_000, 5_000);
        p.window.push_back((0, rt("A")));
        assert!(!p.maybe_recompute(&c, 1_000));
        assert_eq!(p.target(&c)[0], (rt("A"), 5));
        // Too early to recompute.
        assert!(!p.maybe_recompute(&c, 5_999));
        // The call left the window: base target, refresh.
        assert!(p.maybe_recompute(&c, 40_000));
        assert_eq!(p.target(&c), vec![(rt("A"), 2), (rt("B"), 2), (rt("C"), 1)]);
    }

    #[test]
    fn more_runtimes_than_spots_leaves_the_last_registered_out_of_the_base() {
        let c = cluster_with(2, &["A", "B", "C"]);
        let p = WindowPreload::new(Granularity::Runtime, 30_000, 5_000);
        assert_eq!(p.target(&c), vec![(rt("A"), 1), (rt("B"), 1), (rt("C"), 0)]);
    }
}
