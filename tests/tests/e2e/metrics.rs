//! `/metrics` of the control plane and the agent (issue 13, "metrics and
//! traces"): scraped after a workload, the counters equal the calls made,
//! preload hits equal the calls started on preloads, and the agent saw
//! its containerd requests.

use std::time::Duration;

use faas_metrics::Sample;
use faas_proto::v1::call_service_client::CallServiceClient;
use faas_proto::v1::*;
use faas_tests::{fixture_dir, Stack, StackOptions};

/// Sum of the samples named `name` whose labels include all of `labels`.
fn sum(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|s| s.name == name && labels.iter().all(|(k, v)| s.label(k) == Some(*v)))
        .map(|s| s.value)
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scraped_counters_equal_the_calls_made() -> anyhow::Result<()> {
    let stack = Stack::start(StackOptions {
        runtimes: vec!["python3"],
        spots: 2,
        policy: Some("preload-function".into()),
        ..StackOptions::default()
    })
    .await?;
    stack.deploy("hello", "python3", &fixture_dir("py-hello"), &[])?;
    stack.deploy("fail", "python3", &fixture_dir("py-raise"), &[])?;
    let mut calls = CallServiceClient::new(stack.channel().await);

    // Before any call: no call counted, every spot and the leader there.
    let before = stack.controlplane_metrics(0).await?;
    assert_eq!(sum(&before, "faas_calls_total", &[]), 0.0);
    assert_eq!(sum(&before, "faas_leader", &[]), 1.0);
    assert_eq!(sum(&before, "faas_leader_changes_total", &[]), 1.0);

    let mut starts: std::collections::HashMap<String, f64> = Default::default();
    let (hellos, fails) = (7, 3);
    for (function, n) in [("hello", hellos), ("fail", fails)] {
        for i in 0..n {
            let call = calls
                .invoke(InvokeRequest {
                    function: function.into(),
                    params_json: format!(r#"{{"name": "m{i}", "why": "metrics"}}"#),
                    ..Default::default()
                })
                .await?
                .into_inner();
            let kind = call
                .timings
                .as_ref()
                .map(|t| t.start_kind().short_name())
                .unwrap_or_default();
            *starts.entry(kind).or_default() += 1.0;
            // Preloads follow each call: some calls start on them.
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }
    // Gauges are sampled every second.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let cp = stack.controlplane_metrics(0).await?;
    let calls_of = |function, status| {
        sum(
            &cp,
            "faas_calls_total",
            &[
                ("function", function),
                ("status", status),
                ("namespace", "default"),
            ],
        )
    };
    assert_eq!(calls_of("hello", "succeeded"), hellos as f64);
    assert_eq!(calls_of("fail", "failed"), fails as f64);
    assert_eq!(sum(&cp, "faas_calls_total", &[]), (hellos + fails) as f64);
    // By start kind, as each call's own record says.
    for (kind, n) in &starts {
        assert_eq!(
            sum(&cp, "faas_calls_total", &[("start", kind)]),
            *n,
            "start {kind}: {starts:?}"
        );
    }
    // Every ended call's phases, once each.
    assert_eq!(
        sum(&cp, "faas_call_phase_seconds_count", &[("phase", "total")]),
        (hellos + fails) as f64
    );
    assert_eq!(
        sum(
            &cp,
            "faas_call_phase_seconds_count",
            &[("phase", "execution")]
        ),
        (hellos + fails) as f64
    );
    // A call started on a function preload is a hit of one.
    let on_preloads = starts.get("prewarm_function").copied().unwrap_or(0.0);
    assert!(on_preloads > 0.0, "no call used a preload: {starts:?}");
    assert_eq!(
        sum(&cp, "faas_preload_hits_total", &[("kind", "function")]),
        on_preloads
    );
    let preloads = sum(&cp, "faas_preloads_total", &[]);
    let hits = sum(&cp, "faas_preload_hits_total", &[]);
    let wasted = sum(&cp, "faas_preloads_wasted_total", &[]);
    assert!(hits + wasted <= preloads, "{hits} + {wasted} > {preloads}");
    assert_eq!(sum(&cp, "faas_spots", &[]), 2.0);
    assert_eq!(sum(&cp, "faas_spots", &[("node", "node-0")]), 2.0);
    assert_eq!(sum(&cp, "faas_nodes", &[]), 1.0);
    assert_eq!(sum(&cp, "faas_queued_calls", &[]), 0.0);
    assert!(sum(&cp, "faas_etcd_request_seconds_count", &[("op", "txn")]) > 0.0);

    // The agent: the same calls, its spots, its containerd requests.
    let agent = stack.agent_metrics(0).await?;
    assert_eq!(
        sum(&agent, "faas_agent_calls_total", &[("status", "succeeded")]),
        hellos as f64
    );
    assert_eq!(
        sum(&agent, "faas_agent_calls_total", &[("status", "failed")]),
        fails as f64
    );
    assert_eq!(sum(&agent, "faas_agent_spots", &[]), 2.0);
    for method in [
        "Tasks.Create",
        "Tasks.Start",
        "Tasks.Delete",
        "Containers.Create",
    ] {
        assert!(
            sum(
                &agent,
                "faas_agent_containerd_request_seconds_count",
                &[("method", method)]
            ) >= 1.0,
            "no {method} timed"
        );
    }
    // One container per call at least (preloads make more).
    assert!(
        sum(
            &agent,
            "faas_agent_containerd_request_seconds_count",
            &[("method", "Tasks.Create")]
        ) >= (hellos + fails) as f64
    );
    stack.shutdown().await
}
