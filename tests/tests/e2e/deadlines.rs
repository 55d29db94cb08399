//! The leader's deadline: a call whose agent stops answering (frozen with
//! SIGSTOP, its stream still open) ends TIMEOUT by its function's timeout
//! plus the deadline grace, whatever the agent does; the spot it used takes
//! no other call until the agent reports it; the agent's late result is not
//! recorded; the node serves again once it answers.

use std::time::{Duration, Instant};

use faas_proto::v1::call_service_client::CallServiceClient;
use faas_proto::v1::{Call, CallStatus, GetCallRequest, InvokeRequest};
use faas_tests::{fixture_dir, Stack, StackOptions};

async fn get(stack: &Stack, id: &str) -> anyhow::Result<Call> {
    Ok(CallServiceClient::new(stack.channel().await)
        .get_call(GetCallRequest { id: id.into() })
        .await?
        .into_inner())
}

async fn wait_status(
    stack: &Stack,
    id: &str,
    want: impl Fn(CallStatus) -> bool,
    within: Duration,
) -> anyhow::Result<Call> {
    let until = Instant::now() + within;
    loop {
        let call = get(stack, id).await?;
        if want(call.status()) {
            return Ok(call);
        }
        if Instant::now() > until {
            anyhow::bail!(
                "call {id} still {:?} after {within:?}: {call:?}",
                call.status()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_whose_agent_stops_answering_ends_by_its_deadline() -> anyhow::Result<()> {
    let stack = Stack::start(StackOptions {
        runtimes: vec!["python3"],
        // One spot: whether the timed-out call's spot is reused shows.
        spots: 1,
        policy: Some("no-preload".into()),
        controlplane_args: vec![
            "--call-deadline-grace".into(),
            "2s".into(),
            "--call-load-allowance".into(),
            "3s".into(),
        ],
        ..StackOptions::default()
    })
    .await?;
    stack.deploy(
        "sleeps",
        "python3",
        &fixture_dir("py-sleep"),
        &["--timeout", "2s"],
    )?;
    stack.deploy("hello", "python3", &fixture_dir("py-hello"), &[])?;
    let mut client = CallServiceClient::new(stack.channel().await);
    // Warm the image and packages: the frozen call's start is quick.
    faas_tests::invoke_succeeded(&mut client, "hello", "{}").await?;

    let id = client
        .submit(InvokeRequest {
            function: "sleeps".into(),
            params_json: r#"{"seconds":30}"#.into(),
            ..Default::default()
        })
        .await?
        .into_inner()
        .call_id;
    wait_status(
        &stack,
        &id,
        |s| s == CallStatus::Running,
        Duration::from_secs(20),
    )
    .await?;
    stack.freeze_agent(0, true);
    let frozen_at = Instant::now();

    // Timeout 2 s + grace 2 s + load allowance 3 s, and a tick.
    let ended = wait_status(
        &stack,
        &id,
        |s| s != CallStatus::Running,
        Duration::from_secs(15),
    )
    .await;
    let waited = frozen_at.elapsed();
    let ended = match ended {
        Ok(call) => call,
        Err(e) => {
            stack.freeze_agent(0, false);
            return Err(e);
        }
    };
    assert_eq!(ended.status(), CallStatus::Timeout, "{ended:?}");
    let error = ended.error.clone().expect("an error");
    assert_eq!(error.reason, "timeout");
    assert!(
        error.message.contains("did not report"),
        "the leader's deadline, not the agent's timeout: {error:?}"
    );
    assert!(waited < Duration::from_secs(9), "ended after {waited:?}");

    // The spot is the agent's until it says otherwise: a new call waits.
    let next = client
        .submit(InvokeRequest {
            function: "hello".into(),
            params_json: "{}".into(),
            ..Default::default()
        })
        .await?
        .into_inner()
        .call_id;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let waiting = get(&stack, &next).await?;
    stack.freeze_agent(0, false);
    assert_eq!(
        waiting.status(),
        CallStatus::Queued,
        "dispatched to the frozen agent's busy spot: {waiting:?}"
    );

    // Thawed: the agent reports the old call (killed at its own timeout),
    // which is not recorded over the leader's outcome, frees the spot, and
    // runs the next call.
    let served = wait_status(
        &stack,
        &next,
        |s| s == CallStatus::Succeeded,
        Duration::from_secs(30),
    )
    .await?;
    assert_eq!(served.node, stack.agent_node(0));
    tokio::time::sleep(Duration::from_secs(1)).await;
    let kept = get(&stack, &id).await?;
    assert_eq!(kept.status(), CallStatus::Timeout);
    assert_eq!(kept.error, Some(error), "the late result was recorded");
    faas_tests::invoke_succeeded(&mut client, "hello", "{}").await?;
    stack.shutdown().await
}
