//! Aggregated timings of recent calls, per function and policy.

use std::collections::BTreeMap;

use faas_proto::v1::{Call, CallStats, CallStatus, PhaseStats, StartKind, Timings};

/// Aggregates finished calls: one group per (function, policy), and the
/// overall aggregate. Groups are ordered by call count, largest first.
pub fn aggregate(calls: &[Call]) -> (Vec<CallStats>, CallStats) {
    let mut groups: BTreeMap<(&str, &str), Vec<&Call>> = BTreeMap::new();
    for call in calls {
        groups
            .entry((call.function.as_str(), call.policy.as_str()))
            .or_default()
            .push(call);
    }
    let mut out: Vec<CallStats> = groups
        .into_iter()
        .map(|((function, policy), calls)| stats(function, policy, &calls))
        .collect();
    out.sort_by(|a, b| b.calls.cmp(&a.calls).then(a.function.cmp(&b.function)));
    let all: Vec<&Call> = calls.iter().collect();
    (out, stats("", "", &all))
}

fn stats(function: &str, policy: &str, calls: &[&Call]) -> CallStats {
    let count = |pred: &dyn Fn(&Call) -> bool| calls.iter().filter(|c| pred(c)).count() as u64;
    let kind =
        |k: StartKind| move |c: &Call| c.timings.as_ref().is_some_and(|t| t.start_kind() == k);
    let phase = |f: fn(&Timings) -> f64| {
        let values: Vec<f64> = calls
            .iter()
            .filter_map(|c| c.timings.as_ref())
            .map(f)
            .collect();
        phase_stats(values)
    };
    CallStats {
        function: function.to_string(),
        policy: policy.to_string(),
        calls: calls.len() as u64,
        succeeded: count(&|c| c.status() == CallStatus::Succeeded),
        failed: count(&|c| c.status() == CallStatus::Failed),
        timed_out: count(&|c| c.status() == CallStatus::Timeout),
        cold: count(&kind(StartKind::Cold)),
        prewarm_runtime: count(&kind(StartKind::PrewarmRuntime)),
        prewarm_function: count(&kind(StartKind::PrewarmFunction)),
        queue: Some(phase(|t| t.queue_ms)),
        runtime_load: Some(phase(|t| t.runtime_load_ms)),
        function_load: Some(phase(|t| t.function_load_ms)),
        dependencies: Some(phase(|t| t.dependencies_ms)),
        execution: Some(phase(|t| t.execution_ms)),
        result_return: Some(phase(|t| t.result_return_ms)),
        total: Some(phase(|t| t.total_ms)),
    }
}

fn phase_stats(mut values: Vec<f64>) -> PhaseStats {
    if values.is_empty() {
        return PhaseStats::default();
    }
    values.sort_by(|a, b| a.total_cmp(b));
    let pct = |p: f64| values[((p / 100.0) * (values.len() - 1) as f64).round() as usize];
    PhaseStats {
        mean_ms: values.iter().sum::<f64>() / values.len() as f64,
        p50_ms: pct(50.0),
        p99_ms: pct(99.0),
        max_ms: *values.last().expect("not empty"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(function: &str, policy: &str, total: f64, kind: StartKind, status: CallStatus) -> Call {
        Call {
            function: function.into(),
            policy: policy.into(),
            status: status as i32,
            timings: Some(Timings {
                total_ms: total,
                start_kind: kind as i32,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn groups_by_function_and_policy_with_percentiles() {
        let mut calls: Vec<Call> = (1..=100)
            .map(|i| {
                call(
                    "a",
                    "p",
                    i as f64,
                    StartKind::PrewarmFunction,
                    CallStatus::Succeeded,
                )
            })
            .collect();
        calls.push(call("b", "p", 7.0, StartKind::Cold, CallStatus::Failed));
        let (groups, overall) = aggregate(&calls);
        assert_eq!(groups.len(), 2);
        let a = &groups[0];
        assert_eq!(
            (a.function.as_str(), a.calls, a.prewarm_function, a.cold),
            ("a", 100, 100, 0)
        );
        let total = a.total.expect("total");
        assert_eq!(total.p50_ms, 51.0);
        assert_eq!(total.p99_ms, 99.0);
        assert_eq!(total.max_ms, 100.0);
        assert!((total.mean_ms - 50.5).abs() < 1e-9);
        assert_eq!((groups[1].failed, groups[1].cold), (1, 1));
        assert_eq!(
            (overall.calls, overall.succeeded, overall.failed),
            (101, 100, 1)
        );
    }
}
