//! The policies compared on the thesis's random workload and a mixed one,
//! under the thesis's (Docker) costs and this project's hot-path costs.
//! `cargo test -p faas-broker --test compare -- --nocapture` prints the
//! table; `cargo run -p faas-broker --example compare` prints a longer one.

use faas_broker::policy_by_name;
use faas_broker::sim::{scenario, Costs, Summary};

const SEED: u64 = 7;
const PRELOADERS: &[&str] = &["preload-runtime", "preload-function", "adaptive"];

fn compare(costs: &Costs, scenario: &scenario::Scenario) -> Vec<(&'static str, Summary)> {
    PRELOADERS
        .iter()
        .map(|name| {
            let policy = policy_by_name(name).expect("known");
            let (summary, violations) = scenario::summarise(policy, scenario, costs, SEED);
            assert!(
                violations.is_empty(),
                "{name} on {}: {violations:#?}",
                scenario.name
            );
            assert_eq!(summary.unfinished + summary.lost, 0, "{name}: {summary:?}");
            eprintln!("{:<17} {:<17} {summary}", scenario.name, name);
            (*name, summary)
        })
        .collect()
}

/// The adaptive policy's mean latency, and the best of the thesis's.
fn means(results: &[(&str, Summary)]) -> (f64, f64) {
    let ours = results
        .iter()
        .find(|(n, _)| *n == "adaptive")
        .expect("ran")
        .1
        .mean_ms;
    let best_thesis = results
        .iter()
        .filter(|(n, _)| *n != "adaptive")
        .map(|(_, s)| s.mean_ms)
        .fold(f64::INFINITY, f64::min);
    (ours, best_thesis)
}

#[test]
fn adaptive_beats_the_thesis_heuristics_on_the_random_and_mixed_workloads() {
    eprintln!("{:<17} {:<17} {}", "workload", "policy", Summary::HEADER);
    let thesis = Costs::thesis();
    let (ours, best) = means(&compare(&thesis, &scenario::random(SEED)));
    assert!(
        ours < best,
        "random 0.1-0.4 s, thesis costs: {ours} vs {best}"
    );
    let (ours, best) = means(&compare(&thesis, &scenario::mixed(SEED, 2.5)));
    assert!(ours < best, "mixed, thesis costs: {ours} vs {best}");

    let hot = Costs::hot_path();
    let (ours, best) = means(&compare(&hot, &scenario::mixed(SEED, 40.0)));
    assert!(ours < best, "mixed, hot-path costs: {ours} vs {best}");
    // Where one function's preloads already serve every call, there is
    // nothing left to win: adaptive must simply not lose.
    let (ours, best) = means(&compare(&hot, &scenario::random_gaps(SEED, 5, 20)));
    assert!(
        ours <= best * 1.05 + 1.0,
        "random 5-20 ms, hot path: {ours} vs {best}"
    );
}

#[test]
fn adaptive_does_not_lose_on_the_constant_load() {
    for costs in [Costs::thesis(), Costs::hot_path()] {
        let (ours, best) = means(&compare(&costs, &scenario::interval(SEED)));
        assert!(
            ours <= best * 1.05 + 1.0,
            "interval 0.25 s: {ours} vs {best}"
        );
    }
}

/// faas-workload's mixed workload with the stack's measured costs, where a
/// function preload reports before its runtime process has imported the
/// handler (so the preload's report understates what it saves). Adaptive
/// learns the real saving from the executes (ratio 0.62 here; 0.75 when it
/// trusted the preload reports: its runtime preloads then took spots from
/// node functions, whose load is the largest).
#[test]
fn adaptive_beats_the_thesis_heuristics_on_the_stack_calibrated_mixed_workload() {
    let mut ours_total = 0.0;
    let mut best_total = 0.0;
    for seed in [SEED, SEED + 1, SEED + 2] {
        let scenario = scenario::stack_mixed(seed, 600);
        let (ours, best) = means(&compare(&Costs::stack(), &scenario));
        ours_total += ours;
        best_total += best;
    }
    assert!(
        ours_total < best_total * 0.7,
        "stack-calibrated mixed, 3 seeds: {ours_total} vs {best_total}"
    );
}
