//! Prints the simulated comparison of the policies on the thesis's
//! workloads and a mixed one, under the thesis's costs and ours:
//! `cargo run -p faas-broker --example compare [seed]`.

#![allow(clippy::print_stdout)]

use faas_broker::sim::{scenario, Costs, Summary};
use faas_broker::{policy_by_name, POLICY_NAMES};

fn main() {
    let seed = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(7);
    // The hot path is ~20 times faster: its loads are scaled by as much.
    for (costs_name, costs, gaps, mixed_rate) in [
        ("thesis costs (docker)", Costs::thesis(), (100, 400), 2.5),
        (
            "hot-path costs (containerd)",
            Costs::hot_path(),
            (5, 20),
            40.0,
        ),
    ] {
        println!("## {costs_name}, seed {seed}\n");
        println!("{:<17} {:<17} {}", "workload", "policy", Summary::HEADER);
        let mut scenarios = vec![scenario::interval(seed), scenario::random(seed)];
        if gaps != (100, 400) {
            scenarios.push(scenario::random_gaps(seed, gaps.0, gaps.1));
        }
        scenarios.push(scenario::mixed(seed, mixed_rate));
        for sc in &scenarios {
            for name in POLICY_NAMES {
                let policy = policy_by_name(name).expect("listed");
                let (summary, violations) = scenario::summarise(policy, sc, &costs, seed);
                println!("{:<17} {:<17} {summary}", sc.name, name);
                for v in violations.iter().take(3) {
                    println!("    VIOLATION {v}");
                }
            }
        }
        println!();
    }
}
