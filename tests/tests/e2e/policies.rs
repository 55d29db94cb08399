//! The broker's policies end to end: spots are preloaded before calls
//! arrive, calls take the preloaded spots (prewarm starts), a function
//! updated while preloaded never runs its old version, and every container
//! is still destroyed after its one call.

use std::time::{Duration, Instant};

use faas_proto::v1::call_service_client::CallServiceClient;
use faas_proto::v1::{Call, GetCallStatsRequest, SpotState, StartKind};
use faas_tests::{fixture_dir, invoke_call, invoke_succeeded, Stack, StackOptions};

fn deploy(stack: &Stack, name: &str, dir: &std::path::Path) {
    stack.deploy(name, "python3", dir, &[]).expect("deploying");
}

async fn invoke(stack: &Stack, function: &str) -> anyhow::Result<Call> {
    let mut client = CallServiceClient::new(stack.channel().await);
    invoke_succeeded(&mut client, function, r#"{"name":"p"}"#).await
}

/// Waits until every spot (or, with `all` false, at least one) is in `state`.
async fn wait_spots(stack: &Stack, state: SpotState, all: bool) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let nodes = stack.list_nodes().await?;
        let spots: Vec<_> = nodes.nodes.iter().flat_map(|n| n.spots.iter()).collect();
        let ready = if all {
            !spots.is_empty() && spots.iter().all(|s| s.state() == state)
        } else {
            spots.iter().any(|s| s.state() == state)
        };
        if ready {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "spots never all {state:?}: {spots:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `all`: the policy preloads every spot the same way (the thesis's
/// heuristics with one function); adaptive mixes function and runtime
/// preloads, so one preloaded function spot is what a call needs.
async fn run_policy(
    policy: &str,
    preloaded: SpotState,
    start: StartKind,
    all: bool,
) -> anyhow::Result<()> {
    let stack = Stack::start(StackOptions {
        spots: 2,
        runtimes: vec!["python3"],
        policy: Some(policy.into()),
        ..StackOptions::default()
    })
    .await?;
    let work = tempfile::tempdir()?;
    let v1 = work.path().join("v1");
    std::fs::create_dir(&v1)?;
    for f in ["handler.py", "VERSION"] {
        std::fs::copy(fixture_dir("py-version").join(f), v1.join(f))?;
    }
    deploy(&stack, "versioned", &v1);
    // Calls teach the policy which function is wanted; then its spots
    // preload it before the next calls arrive.
    invoke(&stack, "versioned").await?;
    wait_spots(&stack, preloaded, all).await?;
    for _ in 0..4 {
        let call = invoke(&stack, "versioned").await?;
        let t = call.timings.expect("timings");
        assert_eq!(t.start_kind(), start, "{policy}: {t:?}");
        if start == StartKind::PrewarmFunction {
            assert_eq!(t.runtime_load_ms, 0.0);
            assert_eq!(t.function_load_ms, 0.0);
        }
        let result: serde_json::Value = serde_json::from_str(&call.result_json)?;
        assert_eq!(result["version"], "1");
        wait_spots(&stack, preloaded, all).await?;
    }

    // A new version while spots hold the old one: its calls never run v1.
    let v2 = work.path().join("v2");
    std::fs::create_dir(&v2)?;
    std::fs::copy(
        fixture_dir("py-version").join("handler.py"),
        v2.join("handler.py"),
    )?;
    std::fs::write(v2.join("VERSION"), "2\n")?;
    deploy(&stack, "versioned", &v2);
    for _ in 0..4 {
        let call = invoke(&stack, "versioned").await?;
        let result: serde_json::Value = serde_json::from_str(&call.result_json)?;
        assert_eq!(call.function_version, 2, "{policy}");
        assert_eq!(
            result["version"], "2",
            "{policy}: an old version ran: {call:?}"
        );
        assert_eq!(result["function_version"], "2", "{policy}");
    }

    // The stats see the same calls under this policy.
    let stats = CallServiceClient::new(stack.channel().await)
        .get_call_stats(GetCallStatsRequest {
            function: "versioned".into(),
            last: 100,
            ..Default::default()
        })
        .await?
        .into_inner();
    assert_eq!(stats.policy, policy);
    let overall = stats.overall.expect("overall");
    assert_eq!(overall.calls, 9);
    match start {
        StartKind::PrewarmFunction => assert!(overall.prewarm_function >= 4, "{overall:?}"),
        StartKind::PrewarmRuntime => assert!(overall.prewarm_runtime >= 4, "{overall:?}"),
        _ => {}
    }
    // Preloaded containers count: shutdown drains the agent, which clears
    // them, and then asserts that containerd holds nothing of ours.
    stack.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preload_function_serves_calls_from_preloaded_spots() -> anyhow::Result<()> {
    run_policy(
        "preload-function",
        SpotState::PreloadedFunction,
        StartKind::PrewarmFunction,
        true,
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preload_runtime_serves_calls_from_preloaded_runtimes() -> anyhow::Result<()> {
    run_policy(
        "preload-runtime",
        SpotState::PreloadedRuntime,
        StartKind::PrewarmRuntime,
        true,
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adaptive_preloads_the_called_function() -> anyhow::Result<()> {
    run_policy(
        "adaptive",
        SpotState::PreloadedFunction,
        StartKind::PrewarmFunction,
        false,
    )
    .await
}

/// A function that fails at import, under preload-function: its preloads
/// never become ready (the runtime exits before it waits for its input),
/// and each call still gets the function's own error, not a platform
/// failure; the node keeps serving other functions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_function_broken_at_import_gets_its_own_error_under_preload_function(
) -> anyhow::Result<()> {
    let stack = Stack::start(StackOptions {
        spots: 2,
        runtimes: vec!["python3"],
        policy: Some("preload-function".into()),
        ..StackOptions::default()
    })
    .await?;
    let broken = tempfile::tempdir()?;
    std::fs::write(
        broken.path().join("handler.py"),
        "raise RuntimeError('broken at import')\n\ndef handler(event, context):\n    return 1\n",
    )?;
    deploy(&stack, "broken", broken.path());
    let mut client = CallServiceClient::new(stack.channel().await);
    for _ in 0..3 {
        let call = invoke_call(&mut client, "broken", "{}").await?;
        assert_eq!(
            call.status(),
            faas_proto::v1::CallStatus::Failed,
            "{call:?}"
        );
        let error = call.error.clone().expect("an error");
        assert_eq!(error.reason, "error", "{call:?}");
        assert!(
            error.message.contains("broken at import"),
            "the function's own error, not the platform's: {call:?}"
        );
    }
    deploy(&stack, "hello", &fixture_dir("py-hello"));
    invoke(&stack, "hello").await?;
    stack.shutdown().await
}

/// A function-preloaded spot is reported ready only once its runtime waits
/// for its input (imports done): a call placed on it as soon as it is
/// reported does not wait for the imports.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_preloaded_function_is_ready_only_after_its_imports() -> anyhow::Result<()> {
    let stack = Stack::start(StackOptions {
        spots: 1,
        runtimes: vec!["python3"],
        policy: Some("preload-function".into()),
        ..StackOptions::default()
    })
    .await?;
    let slow = tempfile::tempdir()?;
    std::fs::write(
        slow.path().join("handler.py"),
        "import time\ntime.sleep(1.5)\n\ndef handler(event, context):\n    return {'ok': True}\n",
    )?;
    deploy(&stack, "slow-import", slow.path());
    // The first call teaches the policy; then the spot preloads it.
    invoke(&stack, "slow-import").await?;
    for _ in 0..2 {
        wait_spots(&stack, SpotState::PreloadedFunction, true).await?;
        let call = invoke(&stack, "slow-import").await?;
        let t = call.timings.expect("timings");
        assert_eq!(t.start_kind(), StartKind::PrewarmFunction, "{t:?}");
        assert!(
            t.execution_ms < 750.0,
            "the call waited for the imports of a spot reported preloaded: {t:?}"
        );
    }
    stack.shutdown().await
}
