//! The policies against simulated agents on a simulated clock: the thesis's
//! scenarios (5.1.6) and the edge cases around them. Every test also checks
//! the simulator's invariants: each operation valid for what its spot really
//! holds, no operation for a gone spot, the broker's view of idle spots
//! equal to the truth, no call stranded.

use faas_broker::sim::{workload, Arrival, Costs, FunctionSpec, Sim, StartKind};
use faas_broker::{policy_by_name, Event, Millis, SpotState, POLICY_NAMES};

/// The policies that preload.
const PRELOADING: &[&str] = &["preload-runtime", "preload-function", "adaptive"];

/// Hot-path costs without jitter, so times are exact: runtime 80 ms,
/// function +30 ms, run 5 ms, clear 40 ms, tear-down 50 ms.
fn costs() -> Costs {
    Costs {
        jitter: 0.0,
        ..Costs::hot_path()
    }
}

/// A simulation with the catalog registered and the nodes joined at 0.
fn setup(policy: &str, costs: Costs, nodes: &[(&str, u32)], functions: &[FunctionSpec]) -> Sim {
    let mut sim = Sim::new(policy_by_name(policy).expect("known policy"), costs, 1);
    let mut runtimes: Vec<&str> = Vec::new();
    for f in functions {
        if !runtimes.contains(&f.runtime.as_str()) {
            runtimes.push(&f.runtime);
        }
    }
    for r in runtimes {
        sim.register_runtime(r);
    }
    for f in functions {
        sim.register_function(f.clone());
    }
    for (node, spots) in nodes {
        sim.join_node(node, *spots);
    }
    sim
}

fn f(name: &str, runtime: &str) -> FunctionSpec {
    FunctionSpec::new(name, runtime)
}

/// A function whose run takes `run` ms.
fn slow(name: &str, runtime: &str, run: Millis) -> FunctionSpec {
    FunctionSpec {
        run: Some(run),
        ..f(name, runtime)
    }
}

fn at(function: &str, times: &[Millis]) -> Vec<Arrival> {
    times
        .iter()
        .map(|t| Arrival {
            at: *t,
            function: function.into(),
        })
        .collect()
}

fn assert_clean(sim: &Sim, policy: &str) {
    assert!(
        sim.violations().is_empty(),
        "{policy}: violations: {:#?}",
        sim.violations()
    );
    let s = sim.summary();
    assert_eq!(s.unfinished, 0, "{policy}: stranded calls: {s:?}");
}

/// Spots really holding a preload of the runtime (`PreloadedRuntime`).
fn runtime_preloads(sim: &Sim, runtime: &str) -> usize {
    sim.spots()
        .filter(|(_, s)| matches!(s, SpotState::PreloadedRuntime { runtime: r } if r == runtime))
        .count()
}

/// Spots holding or loading the function or its runtime.
fn holding(sim: &Sim, name: &str, runtime: &str) -> usize {
    sim.spots()
        .filter(|(_, s)| match s {
            SpotState::PreloadedRuntime { runtime: r } => r == runtime,
            SpotState::PreloadedFunction { function } => function.name == name,
            SpotState::Preloading { runtime: r, .. } => r == runtime,
            _ => false,
        })
        .count()
}

fn function_preloads(sim: &Sim, name: &str, version: u64) -> usize {
    sim.spots()
        .filter(|(_, s)| {
            matches!(s, SpotState::PreloadedFunction { function }
                if function.name == name && function.version == version)
        })
        .count()
}

// ---- the thesis's scenarios ----

#[test]
fn preload_runtime_converges_to_the_window_proportion_then_refreshes_to_the_base() {
    let mut sim = setup(
        "preload-runtime",
        costs(),
        &[("n0", 5), ("n1", 5)],
        &[f("fa", "A"), f("fb", "B")],
    );
    sim.run_until(1_000);
    // Empty window: the base target, 5 A and 5 B.
    assert_eq!(
        (runtime_preloads(&sim, "A"), runtime_preloads(&sim, "B")),
        (5, 5)
    );
    // 100 calls over 20 s, 40 for A and 60 for B.
    for i in 0..100u64 {
        let name = if i % 5 < 2 { "fa" } else { "fb" };
        sim.schedule_arrivals(&at(name, &[1_000 + i * 200]));
    }
    sim.run_until(26_000);
    assert_eq!(
        (runtime_preloads(&sim, "A"), runtime_preloads(&sim, "B")),
        (4, 6)
    );
    let s = sim.summary();
    assert_eq!(
        s.prewarm_runtime, 100,
        "every call found its runtime: {s:?}"
    );
    // Past the 30 s window the target is the base again and the spots
    // refresh toward it without any call.
    sim.run_until(60_000);
    assert_eq!(
        (runtime_preloads(&sim, "A"), runtime_preloads(&sim, "B")),
        (5, 5)
    );
    assert_clean(&sim, "preload-runtime");
}

#[test]
fn empty_window_refresh_moves_idle_spots_back_to_the_base() {
    for policy in ["preload-runtime", "preload-function"] {
        let mut sim = setup(policy, costs(), &[("n0", 4)], &[f("fa", "A"), f("fb", "B")]);
        // Bursts of four calls of A: two find A, two clear B and run cold,
        // and freed spots go to A once the target follows the window.
        for b in 0..20 {
            let t = 1_000 + b * 500;
            sim.schedule_arrivals(&at("fa", &[t, t, t, t]));
        }
        sim.run_until(12_000);
        assert_eq!(holding(&sim, "fa", "A"), 4, "{policy}: the window is all A");
        // At the first recompute with the window empty (t ≥ 41 s) every
        // idle spot refreshes toward the base: 2 A, 2 B.
        sim.run_until(40_000);
        assert_eq!(holding(&sim, "fa", "A"), 4, "{policy}: not yet");
        sim.run_until(50_000);
        assert_eq!(
            (holding(&sim, "fa", "A"), holding(&sim, "fb", "B")),
            (2, 2),
            "{policy}: refreshed to the base"
        );
        assert_clean(&sim, policy);
    }
}

#[test]
fn a_call_runs_on_its_preload_when_there_is_one() {
    for (policy, kind) in [
        ("preload-runtime", StartKind::PrewarmRuntime),
        ("preload-function", StartKind::PrewarmFunction),
        ("adaptive", StartKind::PrewarmFunction),
    ] {
        let mut sim = setup(policy, costs(), &[("n0", 2)], &[f("fa", "A")]);
        sim.schedule_arrivals(&at("fa", &[1_000]));
        sim.run_to_completion(10_000);
        let c = sim.calls().next().expect("one call");
        assert_eq!(c.start, Some(kind), "{policy}");
        assert_eq!(c.queue_ms(), Some(0), "{policy}");
        let expected = if kind == StartKind::PrewarmRuntime {
            35
        } else {
            5
        };
        assert_eq!(c.latency_ms(), Some(expected), "{policy}");
        assert_clean(&sim, policy);
    }
}

#[test]
fn a_call_finding_only_other_preloads_clears_one_and_runs_cold() {
    for policy in PRELOADING {
        // Two runtimes with two functions each: the base holds runtimes (or,
        // for preload-function, the first functions registered).
        let mut sim = setup(
            policy,
            costs(),
            &[("n0", 2)],
            &[
                f("a1", "A"),
                f("a2", "A"),
                f("b1", "B"),
                f("b2", "B"),
                f("c1", "C"),
            ],
        );
        sim.run_until(1_000);
        assert!(sim.spots().all(|(_, s)| s.is_preloaded()), "{policy}");
        // Nothing holds C: the call clears a spot and runs cold there.
        sim.schedule_arrivals(&at("c1", &[1_000]));
        sim.run_to_completion(10_000);
        let c = sim.calls().next().expect("one call");
        assert_eq!(c.start, Some(StartKind::Cold), "{policy}");
        assert_eq!(sim.sent("ClearSpot"), 1, "{policy}");
        // Waited for the clear only, then ran cold: 40 + 80 + 30 + 5.
        assert_eq!(c.queue_ms(), Some(40), "{policy}");
        assert_eq!(c.latency_ms(), Some(155), "{policy}");
        assert_clean(&sim, policy);
    }
}

#[test]
fn calls_queue_when_every_spot_runs_and_freed_spots_serve_the_queue_in_order() {
    for policy in POLICY_NAMES {
        let mut sim = setup(policy, costs(), &[("n0", 2)], &[slow("fa", "A", 1_000)]);
        sim.schedule_arrivals(&at("fa", &[1_000, 1_001, 1_002, 1_003, 1_004, 1_005]));
        sim.run_until(1_010);
        assert_eq!(sim.broker().cluster().queue().len(), 4, "{policy}");
        sim.run_to_completion(60_000);
        let calls: Vec<_> = sim.calls().collect();
        // First in, first started.
        for pair in calls.windows(2) {
            assert!(
                pair[0].started_at <= pair[1].started_at,
                "{policy}: {pair:?}"
            );
        }
        // A freed spot takes the head of the queue at once, on that spot
        // (cold: nothing is preloaded anywhere else).
        let first = calls[0];
        let third = calls[2];
        let freed_at = first.finished_at.expect("finished") + 50;
        assert_eq!(third.started_at, Some(freed_at), "{policy}");
        assert_eq!(third.spot, first.spot, "{policy}");
        assert_eq!(third.start, Some(StartKind::Cold), "{policy}");
        assert!(
            calls[2..].iter().all(|c| c.queue_ms() > Some(0)),
            "{policy}"
        );
        assert_clean(&sim, policy);
    }
}

#[test]
fn a_preload_finishing_after_its_call_arrived_serves_that_call() {
    for (policy, kind, ready) in [
        ("preload-runtime", StartKind::PrewarmRuntime, 80),
        ("preload-function", StartKind::PrewarmFunction, 110),
        ("adaptive", StartKind::PrewarmFunction, 110),
    ] {
        let mut sim = setup(policy, costs(), &[("n0", 1)], &[f("fa", "A")]);
        // The spot is preloading since 0 when the call arrives.
        sim.schedule_arrivals(&at("fa", &[10]));
        sim.run_to_completion(10_000);
        let c = sim.calls().next().expect("one call");
        assert_eq!(c.start, Some(kind), "{policy}");
        assert_eq!(
            c.started_at,
            Some(ready),
            "{policy}: ran when the preload was done"
        );
        assert_eq!(sim.sent("ClearSpot"), 0, "{policy}: nothing cleared");
        assert_eq!(sim.sent("ExecuteNoPreload"), 0, "{policy}: nothing cold");
        assert_clean(&sim, policy);
    }
}

// ---- edge cases ----

#[test]
fn more_runtimes_than_spots() {
    for policy in POLICY_NAMES {
        let mut sim = setup(
            policy,
            costs(),
            &[("n0", 2)],
            &[f("fa", "A"), f("fb", "B"), f("fc", "C")],
        );
        sim.run_until(1_000);
        // Calls for every runtime, the unrepresented one included.
        let arrivals = workload::poisson_mix(
            &[("fa", 1.0), ("fb", 1.0), ("fc", 1.0)],
            1_000,
            20.0,
            10_000,
            3,
        );
        sim.schedule_arrivals(&arrivals);
        sim.run_to_completion(60_000);
        let s = sim.summary();
        assert_eq!(s.finished, arrivals.len(), "{policy}: {s:?}");
        assert_clean(&sim, policy);
    }
}

#[test]
fn overload_queues_everything_and_loses_nothing() {
    for policy in POLICY_NAMES {
        let mut sim = setup(
            policy,
            costs(),
            &[("n0", 2), ("n1", 2)],
            &[f("fa", "A"), f("fb", "B")],
        );
        // 400 calls/s for 2 s against a capacity of ~40/s.
        let arrivals = workload::poisson_mix(&[("fa", 3.0), ("fb", 1.0)], 500, 400.0, 2_000, 5);
        sim.schedule_arrivals(&arrivals);
        sim.run_to_completion(600_000);
        let s = sim.summary();
        assert_eq!(s.finished, arrivals.len(), "{policy}: {s:?}");
        assert!(s.mean_queue_ms > 1_000.0, "{policy}: it did queue: {s:?}");
        assert_clean(&sim, policy);
    }
}

#[test]
fn a_call_for_a_runtime_no_spot_holds_still_runs() {
    for policy in POLICY_NAMES {
        // Only A is registered at start; B arrives with its first call (no
        // catalog event), while every spot holds A.
        let mut sim = setup(policy, costs(), &[("n0", 2)], &[f("fa", "A")]);
        sim.run_until(1_000);
        sim.register_function(f("fb", "B"));
        sim.schedule_arrivals(&at("fb", &[1_000, 1_500]));
        sim.run_to_completion(10_000);
        let s = sim.summary();
        assert_eq!(s.finished, 2, "{policy}: {s:?}");
        assert_clean(&sim, policy);
    }
}

#[test]
fn a_node_leaving_with_preloaded_spots_takes_them_out_and_others_serve_the_queue() {
    for policy in POLICY_NAMES {
        let mut sim = setup(
            policy,
            costs(),
            &[("n0", 2), ("n1", 2)],
            &[slow("fa", "A", 1_000)],
        );
        sim.run_until(500);
        sim.schedule_node_leave(500, "n1");
        // Six calls for the two spots left: four wait for them.
        sim.schedule_arrivals(&at("fa", &[600, 601, 602, 603, 604, 605]));
        sim.run_to_completion(60_000);
        let s = sim.summary();
        assert_eq!((s.finished, s.lost), (6, 0), "{policy}: {s:?}");
        assert!(
            sim.calls()
                .all(|c| c.spot.as_ref().is_some_and(|s| s.node == "n0")),
            "{policy}"
        );
        assert_eq!(sim.broker().cluster().spot_count(), 2, "{policy}");
        assert_clean(&sim, policy);
    }
}

#[test]
fn a_node_leaving_mid_call_loses_its_calls_and_the_queue_moves_on() {
    for policy in POLICY_NAMES {
        let mut sim = setup(
            policy,
            costs(),
            &[("n0", 2), ("n1", 2)],
            &[slow("fa", "A", 2_000)],
        );
        sim.schedule_arrivals(&at("fa", &[200, 201, 202, 203, 300, 301]));
        sim.schedule_node_leave(1_000, "n1");
        // A node comes back later and takes its share.
        sim.schedule_node_join(1_500, "n2", 2);
        sim.run_to_completion(60_000);
        let s = sim.summary();
        assert_eq!((s.finished, s.lost), (4, 2), "{policy}: {s:?}");
        let queued: Vec<_> = sim.calls().filter(|c| c.arrived_at >= 300).collect();
        assert!(
            queued.iter().all(|c| c.finished_at.is_some() && !c.lost),
            "{policy}: {queued:?}"
        );
        assert_clean(&sim, policy);
    }
}

#[test]
fn a_function_updated_while_preloaded_never_runs_its_old_version() {
    for policy in ["preload-function", "adaptive"] {
        // Updated once its preloads are done, and again while new ones load.
        for update_at in [1_000, 1_060] {
            let mut sim = setup(policy, costs(), &[("n0", 4)], &[f("fa", "A")]);
            sim.run_until(999);
            assert_eq!(function_preloads(&sim, "fa", 1), 4, "{policy}");
            sim.schedule_function_update(1_000, "fa");
            if update_at != 1_000 {
                sim.schedule_function_update(update_at, "fa");
            }
            let times: Vec<Millis> = (0..40).map(|i| 1_001 + i * 100).collect();
            sim.schedule_arrivals(&at("fa", &times));
            sim.run_to_completion(60_000);
            let latest = if update_at == 1_000 { 2 } else { 3 };
            // The simulator refuses (as a violation) any exec of a version
            // other than the call's; calls after the update carry the new one.
            assert!(sim
                .calls()
                .filter(|c| c.arrived_at >= update_at)
                .all(|c| c.function.version == latest));
            assert_eq!(function_preloads(&sim, "fa", 1), 0, "{policy}");
            assert_eq!(function_preloads(&sim, "fa", latest), 4, "{policy}");
            assert!(sim.summary().prewarm_function > 0, "{policy}");
            assert_clean(&sim, policy);
        }
    }
}

#[test]
fn a_removed_function_or_runtime_is_cleared_from_its_spots() {
    for policy in PRELOADING {
        let mut sim = setup(policy, costs(), &[("n0", 4)], &[f("fa", "A"), f("fb", "B")]);
        sim.run_until(1_000);
        let holds = |sim: &Sim, name: &str, runtime: &str| {
            runtime_preloads(sim, runtime) + function_preloads(sim, name, 1)
        };
        assert!(holds(&sim, "fa", "A") > 0, "{policy}");
        // What the control plane sends on removal.
        sim.inject(Event::RuntimeRemoved { name: "A".into() });
        sim.run_until(3_000);
        assert_eq!(holds(&sim, "fa", "A"), 0, "{policy}");
        assert_eq!(holds(&sim, "fb", "B"), 4, "{policy}");
        assert_clean(&sim, policy);
    }
}

#[test]
fn a_failing_preload_is_not_retried_in_a_loop_and_calls_still_run() {
    for policy in PRELOADING {
        let mut sim = setup(policy, costs(), &[("n0", 2)], &[f("fa", "A")]);
        sim.schedule_preload_failures(0, "A", true);
        sim.schedule_preload_failures(0, "fa", true);
        sim.schedule_arrivals(&at("fa", &[5_000, 12_000]));
        sim.run_to_completion(20_000);
        let preloads = sim.sent("PreloadRuntime") + sim.sent("PreloadFunction");
        // Without a back-off a spot would retry every 80-110 ms (~400 times).
        assert!(preloads <= 40, "{policy}: {preloads} preloads");
        assert_eq!(sim.summary().finished, 2, "{policy}");
        assert_clean(&sim, policy);
    }
}

#[test]
fn no_preload_only_ever_runs_cold() {
    let mut sim = setup("no-preload", costs(), &[("n0", 4)], &[f("fa", "A")]);
    sim.schedule_arrivals(&workload::uniform_interval("fa", 0, 10, 40, 200, 9));
    sim.run_to_completion(60_000);
    let s = sim.summary();
    assert_eq!((s.cold, s.finished), (200, 200));
    assert_eq!(sim.sent("PreloadRuntime") + sim.sent("PreloadFunction"), 0);
    assert_clean(&sim, "no-preload");
}

// ---- adaptive ----

#[test]
fn adaptive_mixes_function_preloads_for_hot_functions_and_runtime_preloads_for_the_tail() {
    let functions: Vec<FunctionSpec> = (0..8).map(|i| f(&format!("p{i}"), "py")).collect();
    let mut sim = setup(
        "adaptive",
        Costs::thesis(),
        &[("n0", 4), ("n1", 4)],
        &functions,
    );
    // p0 takes most of the traffic; the others are a thin tail.
    let mix: Vec<(String, f64)> = (0..8)
        .map(|i| (format!("p{i}"), if i == 0 { 8.0 } else { 0.3 }))
        .collect();
    let mix: Vec<(&str, f64)> = mix.iter().map(|(n, w)| (n.as_str(), *w)).collect();
    sim.schedule_arrivals(&workload::poisson_mix(&mix, 1_000, 1.0, 60_000, 11));
    sim.run_until(61_000);
    // Let the last calls' spots be preloaded again.
    sim.run_until(66_000);
    let hot = function_preloads(&sim, "p0", 1);
    let runtime = runtime_preloads(&sim, "py");
    assert!(
        hot >= 1 && runtime >= 1,
        "p0 {hot}, py {runtime}: {:?}",
        sim.spots().collect::<Vec<_>>()
    );
    let s = sim.summary();
    assert!(
        s.prewarm_runtime > 0 && s.prewarm_function > s.prewarm_runtime,
        "{s:?}"
    );
    assert_clean(&sim, "adaptive");
}

#[test]
fn adaptive_follows_a_shift_of_the_mix_within_seconds() {
    let mut sim = setup(
        "adaptive",
        costs(),
        &[("n0", 4), ("n1", 4)],
        &[f("fa", "A"), f("fb", "B")],
    );
    sim.schedule_arrivals(&workload::poisson_mix(
        &[("fa", 1.0)],
        1_000,
        20.0,
        20_000,
        1,
    ));
    sim.schedule_arrivals(&workload::poisson_mix(
        &[("fb", 1.0)],
        21_000,
        20.0,
        20_000,
        2,
    ));
    sim.run_until(20_500);
    // Spots not running hold fa (or its runtime), none fb.
    assert_eq!(holding(&sim, "fb", "B"), 0, "while fa is called");
    assert!(holding(&sim, "fa", "A") >= 4);
    // The rates' time constant is 10 s: by then fb has caught up, by 2τ
    // it holds most spots.
    sim.run_until(31_000);
    let (a, b) = (holding(&sim, "fa", "A"), holding(&sim, "fb", "B"));
    assert!(b >= 3, "10 s after the shift: fa {a}, fb {b}");
    sim.run_until(41_000);
    let (a, b) = (holding(&sim, "fa", "A"), holding(&sim, "fb", "B"));
    assert!(b >= 5 && a <= 2, "20 s after the shift: fa {a}, fb {b}");
    let late: Vec<_> = sim.calls().filter(|c| c.arrived_at >= 26_000).collect();
    let hits = late
        .iter()
        .filter(|c| c.start == Some(StartKind::PrewarmFunction))
        .count();
    assert!(hits * 10 >= late.len() * 9, "{hits} of {}", late.len());
    sim.run_to_completion(120_000);
    assert_clean(&sim, "adaptive");
}

#[test]
fn adaptive_never_clears_a_spot_that_a_waiting_call_counts_on() {
    // One spot preloading fa when fa's call and fb's call arrive: fa waits
    // for it; fb must not take it away by clearing it once it is ready.
    let mut sim = setup(
        "adaptive",
        costs(),
        &[("n0", 1)],
        &[f("fa", "A"), f("fb", "B")],
    );
    sim.schedule_arrivals(&at("fa", &[10]));
    sim.schedule_arrivals(&at("fb", &[11]));
    sim.run_to_completion(10_000);
    let fa = sim.calls().find(|c| c.function.name == "fa").expect("fa");
    assert_eq!(fa.start, Some(StartKind::PrewarmFunction));
    assert_clean(&sim, "adaptive");
}

/// Calls through an alias run an earlier version: preload-function keeps
/// that version preloaded while an alias names it, and clears it after.
#[test]
fn preload_function_follows_the_versions_aliases_name() {
    use faas_broker::{Broker, FunctionRef, Operation, PendingCall, SpotId};
    let v = |version| FunctionRef {
        name: "f".into(),
        version,
        runtime: "A".into(),
    };
    let mut broker = Broker::new(policy_by_name("preload-function").unwrap());
    broker.handle(Event::RuntimeRegistered { name: "A".into() }, 0);
    broker.handle(Event::FunctionRegistered { function: v(2) }, 0);
    broker.handle(
        Event::AliasTargets {
            name: "f".into(),
            versions: vec![v(1)],
        },
        0,
    );
    let ops = broker.handle(
        Event::NodeJoined {
            node: "n".into(),
            spots: 2,
        },
        0,
    );
    // Before any call, each served version gets its share: 1 and 2.
    let mut preloaded: Vec<(SpotId, u64)> = ops
        .iter()
        .filter_map(|op| match op {
            Operation::PreloadFunction { spot, function } => Some((spot.clone(), function.version)),
            _ => None,
        })
        .collect();
    preloaded.sort_by_key(|(_, version)| *version);
    assert_eq!(
        preloaded.iter().map(|(_, v)| *v).collect::<Vec<_>>(),
        [1, 2],
        "{ops:?}"
    );
    for (spot, version) in &preloaded {
        broker.handle(
            Event::SpotReported {
                spot: spot.clone(),
                state: SpotState::PreloadedFunction {
                    function: v(*version),
                },
            },
            100,
        );
    }
    // A call through the alias (version 1) runs on version 1's preload.
    let ops = broker.handle(
        Event::CallArrived(PendingCall {
            id: "c1".into(),
            function: v(1),
            arrived_at: 200,
        }),
        200,
    );
    assert!(
        ops.iter().any(|op| matches!(op,
            Operation::ExecFunctionPreloaded { spot, call } if *spot == preloaded[0].0 && call.id == "c1")),
        "{ops:?}"
    );
    broker.handle(
        Event::SpotReported {
            spot: preloaded[0].0.clone(),
            state: SpotState::Free,
        },
        300,
    );
    // The alias moves to version 2: version 1 is never preloaded again,
    // and a preload of it would be cleared.
    broker.handle(
        Event::AliasTargets {
            name: "f".into(),
            versions: vec![],
        },
        400,
    );
    assert!(!broker.cluster().catalog().serves(&v(1)));
    for t in (500..40_000).step_by(500) {
        for op in broker.handle(Event::Tick, t) {
            if let Operation::PreloadFunction { function, .. } = &op {
                assert_eq!(function.version, 2, "{op:?}");
            }
        }
    }
}
