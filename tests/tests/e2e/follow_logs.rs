//! Following a call's logs as they are written (issue 13, "live logs"):
//! `FollowCallLogs` and `faasctl call logs ID -f` show a running call's
//! lines before it ends, a queued call's once it runs, every line exactly
//! once in order, and an ended call's whole log.

use std::io::BufRead;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fn_logs_follow_shows_every_call_of_the_function_as_it_runs() -> anyhow::Result<()> {
    let stack = Stack::start(StackOptions {
        runtimes: vec!["python3"],
        spots: 2,
        policy: Some("no-preload".into()),
        ..StackOptions::default()
    })
    .await?;
    stack.deploy("ticks", "python3", &fixture_dir("py-ticks"), &[])?;
    let mut calls = CallServiceClient::new(stack.channel().await);
    // One call before: `fn logs` without -f prints its log, tagged.
    let earlier = calls
        .invoke(InvokeRequest {
            function: "ticks".into(),
            params_json: r#"{"count": 2, "every": 0}"#.into(),
            ..Default::default()
        })
        .await?
        .into_inner();
    let tag = |id: &str| id[id.len() - 8..].to_string();
    let out = stack.faasctl().args(["fn", "logs", "ticks"]).output()?;
    assert!(out.status.success(), "{out:?}");
    let e = tag(&earlier.id);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("{e} | tick 0\n{e} | tick 1\n")
    );

    // Following: two calls submitted afterwards, their lines as they come.
    let mut child = stack
        .faasctl()
        .args(["fn", "logs", "ticks", "--follow", "--last", "0"])
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    let stdout = child.stdout.take().expect("piped");
    let (line_tx, line_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if line_tx.send(line).is_err() {
                break;
            }
        }
    });
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut ids = Vec::new();
    for _ in 0..2 {
        ids.push(
            calls
                .submit(InvokeRequest {
                    function: "ticks".into(),
                    params_json: r#"{"count": 5, "every": 0.4}"#.into(),
                    ..Default::default()
                })
                .await?
                .into_inner()
                .call_id,
        );
    }
    let mut expected: Vec<String> = ids
        .iter()
        .flat_map(|id| (0..5).map(move |i| format!("{} | tick {i}", tag(id))))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut lines = Vec::new();
    let mut while_running = false;
    while lines.len() < expected.len() && Instant::now() < deadline {
        if let Ok(line) = line_rx.recv_timeout(Duration::from_millis(200)) {
            if lines.is_empty() {
                let first = calls
                    .get_call(GetCallRequest { id: ids[0].clone() })
                    .await?
                    .into_inner();
                let second = calls
                    .get_call(GetCallRequest { id: ids[1].clone() })
                    .await?
                    .into_inner();
                while_running =
                    first.status() == CallStatus::Running || second.status() == CallStatus::Running;
            }
            lines.push(line);
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(while_running, "the first line came after both calls ended");
    // Each call's lines in order, both calls' lines all there once.
    for id in &ids {
        let own: Vec<&String> = lines.iter().filter(|l| l.starts_with(&tag(id))).collect();
        let want: Vec<String> = (0..5).map(|i| format!("{} | tick {i}", tag(id))).collect();
        assert_eq!(own, want.iter().collect::<Vec<_>>(), "{lines:?}");
    }
    lines.sort();
    expected.sort();
    assert_eq!(lines, expected);
    stack.shutdown().await
}

/// The live log file is the container's to write: a function that extends
/// it past the bound, truncates it, or replaces it with a symlink to a
/// host file or a FIFO while it is followed gets its followers at most
/// the bound, never the host's file, and neither the follow nor the agent
/// hangs. (Measured: "extend" fills the call's own io tmpfs, so its
/// result cannot be written and the call fails; the io directory is not
/// the function's to replace entries in, so "symlink" and "fifo" get
/// EACCES: their checks stand behind that.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_function_tampering_with_its_live_log_gets_no_more_than_its_bound() -> anyhow::Result<()>
{
    let stack = Stack::start(StackOptions {
        runtimes: vec!["python3"],
        spots: 1,
        policy: Some("no-preload".into()),
        ..StackOptions::default()
    })
    .await?;
    stack.deploy("tamper", "python3", &fixture_dir("py-logtamper"), &[])?;
    stack.deploy("hello", "python3", &fixture_dir("py-hello"), &[])?;
    let mut calls = CallServiceClient::new(stack.channel().await);
    // The agent's log bound (its default) and the control plane's marker
    // of a cut log: what a follower may get at most, with room for both.
    let bound = 64 << 10;
    for mode in ["extend", "truncate", "symlink", "fifo"] {
        let id = calls
            .submit(InvokeRequest {
                function: "tamper".into(),
                params_json: format!(r#"{{"mode": "{mode}"}}"#),
                ..Default::default()
            })
            .await?
            .into_inner()
            .call_id;
        let mut follow = calls
            .follow_call_logs(FollowCallLogsRequest { id: id.clone() })
            .await?
            .into_inner();
        let followed = tokio::time::timeout(Duration::from_secs(60), async {
            let mut live = Vec::new();
            let mut all = Vec::new();
            while let Some(chunk) = follow.message().await? {
                all.extend_from_slice(&chunk.data);
                if chunk.r#final {
                    break;
                }
                live.extend_from_slice(&chunk.data);
            }
            anyhow::Ok((live, all))
        })
        .await;
        let (live, all) =
            followed.unwrap_or_else(|_| panic!("{mode}: the follow did not end within 60 s"))?;
        let call = wait_final(&mut calls, &id, Duration::from_secs(60)).await?;
        let text = String::from_utf8_lossy(&all);
        eprintln!(
            "{mode}: {:?} {} {:?}; followed {} bytes live, {} in all",
            call.status(),
            call.result_json,
            call.error.as_ref().map(|e| (&e.reason, &e.message)),
            live.len(),
            all.len()
        );
        assert!(
            live.len() <= bound,
            "{mode}: {} bytes streamed live, over the bound of {bound}",
            live.len()
        );
        assert!(
            all.len() <= 2 * bound + 1024,
            "{mode}: {} bytes followed in all",
            all.len()
        );
        assert!(
            !text.contains("root:x:0:0"),
            "{mode}: a host file was followed"
        );
        assert!(text.contains("before"), "{mode}: {text:?}");
    }
    // The agent still serves.
    let call = calls
        .invoke(InvokeRequest {
            function: "hello".into(),
            ..Default::default()
        })
        .await?
        .into_inner();
    assert_eq!(call.status(), CallStatus::Succeeded, "{call:?}");
    Ok(())
}
