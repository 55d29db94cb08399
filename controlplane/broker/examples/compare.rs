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
    for (costs_name, costs, mixed_rate) in [
        ("thesis costs (docker)", Costs::thesis(), 2.5),
        ("hot-path costs (containerd)", Costs::hot_path(), 40.0),
    ] {
        println!("## {costs_name}, seed {seed}\n");
        println!("{:<17} {:<17} {}", "workload", "policy", Summary::HEADER);
        let scenarios = [
            scenario::interval(seed),
            scenario::random(seed),
            scenario::mixed(seed, mixed_rate),
        ];
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
