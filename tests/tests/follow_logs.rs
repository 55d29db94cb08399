//! Following a call's logs as they are written (issue 13, "live logs"):
//! `FollowCallLogs` and `faasctl call logs ID -f` show a running call's
//! lines before it ends, a queued call's once it runs, every line exactly
//! once in order, and an ended call's whole log.

use std::time::{Duration, Instant};

use faas_client::Client;
use faas_proto::v1::call_service_client::CallServiceClient;
use faas_proto::v1::*;
use faas_tests::{fixture_dir, wait_final, Stack, StackOptions};
use futures::StreamExt;

fn ticks(count: usize) -> String {
    (0..count).map(|i| format!("tick {i}\n")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn followed_logs_arrive_while_the_call_runs_each_line_once() -> anyhow::Result<()> {
    // One spot: the second call waits in the queue while it is followed.
    let stack = Stack::start(StackOptions {
        runtimes: vec!["python3"],
        spots: 1,
        policy: Some("no-preload".into()),
        ..StackOptions::default()
    })
    .await?;
    stack.deploy("ticks", "python3", &fixture_dir("py-ticks"), &[])?;
    let client = Client::connect(
        &[&stack.endpoint],
        Some(stack.auth.ca_pem.as_str()),
        Some(&stack.auth.token),
    )
    .await?;
    let mut calls = CallServiceClient::new(stack.channel().await);
    let submit = |count: usize| {
        let mut calls = calls.clone();
        async move {
            anyhow::Ok(
                calls
                    .submit(InvokeRequest {
                        function: "ticks".into(),
                        params_json: format!(r#"{{"count": {count}, "every": 0.4}}"#),
                        ..Default::default()
                    })
                    .await?
                    .into_inner()
                    .call_id,
            )
        }
    };
    let running = submit(10).await?;
    let queued = submit(4).await?;

    // The running call: its first line comes while it still runs.
    let t = Instant::now();
    let mut pieces = std::pin::pin!(client.follow_logs(&running));
    let mut text = Vec::new();
    let mut first_line_at = None;
    while let Some(piece) = pieces.next().await {
        text.extend_from_slice(&piece?.logs);
        if first_line_at.is_none() && text.starts_with(b"tick 0\n") {
            let call = calls
                .get_call(GetCallRequest {
                    id: running.clone(),
                })
                .await?
                .into_inner();
            assert_eq!(
                call.status(),
                CallStatus::Running,
                "the first line came only after the call ended: {call:?}"
            );
            first_line_at = Some(t.elapsed());
        }
    }
    eprintln!(
        "first followed line after {first_line_at:?}, stream ended after {:?}",
        t.elapsed()
    );
    assert!(
        first_line_at.is_some(),
        "{}",
        String::from_utf8_lossy(&text)
    );
    assert_eq!(String::from_utf8_lossy(&text), ticks(10));
    let ended = wait_final(&mut calls, &running, Duration::from_secs(10)).await?;
    assert_eq!(ended.status(), CallStatus::Succeeded, "{ended:?}");

    // The queued call, followed through faasctl: every line once, then
    // faasctl exits when the call ends.
    let out = stack
        .faasctl()
        .args(["call", "logs", &queued, "--follow"])
        .output()?;
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), ticks(4));

    // An ended call: its whole log, at once.
    let out = stack
        .faasctl()
        .args(["call", "logs", &running, "-f"])
        .output()?;
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), ticks(10));

    // Unknown and malformed ids are errors, not empty streams.
    let missing = stack
        .faasctl()
        .args(["call", "logs", "0192f1a0-0000-7000-8000-000000000000", "-f"])
        .output()?;
    assert!(!missing.status.success(), "{missing:?}");
    stack.shutdown().await
}
