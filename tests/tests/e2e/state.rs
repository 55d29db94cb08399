//! The cluster's state holds up under big and many records: listing,
//! statistics, restarts and takeovers work with a thousand calls of 200 KiB
//! params and results (etcd's responses stay under the decode limit); a
//! full etcd gives clear errors and comes back with no person involved;
//! submits over the admission bounds are refused with a retry hint.

use std::time::{Duration, Instant};

use etcd_client::{AlarmAction, AlarmType, Txn, TxnOp};
use faas_proto::v1::call_service_client::CallServiceClient;
use faas_proto::v1::{
    Call, CallStatus, GetCallRequest, GetCallStatsRequest, InvokeRequest, ListCallsRequest, Timings,
};
use faas_tests::Channel;
use faas_tests::{fixture_dir, wait_final, Stack, StackOptions};
use prost::Message;

fn channel(stack: &Stack, url: &str) -> Channel {
    stack
        .auth
        .channel_with(url, Some(&stack.auth.token), Some(Duration::from_secs(60)))
}

/// A function that returns its params: its result is as big as they are.
fn echo_dir() -> anyhow::Result<tempfile::TempDir> {
    let dir = tempfile::tempdir()?;
    std::fs::write(
        dir.path().join("handler.py"),
        "def handler(event, context):\n    return event\n",
    )?;
    Ok(dir)
}

/// JSON params of about `bytes` bytes.
fn big_params(bytes: usize, tag: &str) -> String {
    format!(r#"{{"tag":"{tag}","pad":"{}"}}"#, "x".repeat(bytes))
}

/// The RESOURCE_EXHAUSTED answer's retry hint, in ms.
fn retry_after_ms(status: &tonic::Status) -> Option<u64> {
    status
        .metadata()
        .get("retry-after-ms")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

/// Lists every call page by page (1000 a page); the calls and the time
/// each page took.
async fn list_all(
    client: &mut CallServiceClient<Channel>,
) -> anyhow::Result<(Vec<Call>, Vec<Duration>)> {
    let mut calls = Vec::new();
    let mut took = Vec::new();
    let mut token = String::new();
    loop {
        let started = Instant::now();
        let page = client
            .list_calls(ListCallsRequest {
                page_size: 1000,
                page_token: token.clone(),
                ..Default::default()
            })
            .await?
            .into_inner();
        took.push(started.elapsed());
        calls.extend(page.calls);
        if page.next_page_token.is_empty() {
            return Ok((calls, took));
        }
        token = page.next_page_token;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_big_calls_list_restart_and_take_over() -> anyhow::Result<()> {
    const OLD_CALLS: usize = 1000;
    const PAYLOAD: usize = 200 << 10;
    const QUEUED: usize = 10;
    let mut stack = Stack::start(StackOptions {
        controlplanes: 2,
        spots: 2,
        runtimes: vec!["python3"],
        ..StackOptions::default()
    })
    .await?;
    let echo = echo_dir()?;
    stack.deploy("echo", "python3", echo.path(), &[])?;
    let mut client0 = CallServiceClient::new(channel(&stack, &stack.controlplane_url(0)));

    // New calls: params and result of 200 KiB each, stored beside their
    // small record, returned by GetCall, never by ListCalls.
    let mut fresh = Vec::new();
    for i in 0..3 {
        let params = big_params(PAYLOAD, &format!("fresh-{i}"));
        let call = client0
            .invoke(InvokeRequest {
                function: "echo".into(),
                params_json: params.clone(),
                ..Default::default()
            })
            .await?
            .into_inner();
        assert_eq!(call.status(), CallStatus::Succeeded, "{:?}", call.error);
        let got = client0
            .get_call(GetCallRequest {
                id: call.id.clone(),
            })
            .await?
            .into_inner();
        assert_eq!(got.params_json, params);
        let result: serde_json::Value = serde_json::from_str(&got.result_json)?;
        let sent: serde_json::Value = serde_json::from_str(&params)?;
        assert_eq!(result, sent, "the echo's result comes back whole");
        fresh.push(call.id);
    }
    let mut etcd = stack.etcd_client().await?;
    for id in &fresh {
        let record = etcd.get(format!("/faas/v1/calls/{id}"), None).await?;
        let size = record.kvs()[0].value().len();
        assert!(
            size < 4096,
            "the record of {id} is {size} bytes: payloads are beside it"
        );
        for dir in ["call-params", "call-results", "logs"] {
            let beside = etcd.get(format!("/faas/v1/{dir}/{id}"), None).await?;
            assert_eq!(beside.kvs().len(), 1, "{dir}/{id} is stored");
        }
    }

    // A thousand finished calls as a cluster running the previous version
    // stored them (params and result inline in the record: 400 KiB each),
    // and a few queued ones that a leader must run after a takeover.
    let started = Instant::now();
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis() as i64;
    let mut queued_ids = Vec::new();
    let mut ops = Vec::new();
    for i in 0..OLD_CALLS + QUEUED {
        let id = uuid::Uuid::now_v7().to_string();
        let params = big_params(
            if i < OLD_CALLS { PAYLOAD } else { 1000 },
            &format!("old-{i}"),
        );
        let call = if i < OLD_CALLS {
            Call {
                id: id.clone(),
                function: "echo".into(),
                function_version: 1,
                result_json: params.clone(),
                params_json: params,
                status: CallStatus::Succeeded as i32,
                timings: Some(Timings {
                    total_ms: 10.0 + (i % 50) as f64,
                    execution_ms: 5.0,
                    ..Default::default()
                }),
                node: "node-0".into(),
                created_at_ms: now_ms,
                finished_at_ms: now_ms,
                policy: "adaptive".into(),
                attempts: 1,
                ..Default::default()
            }
        } else {
            queued_ids.push((id.clone(), params.clone()));
            Call {
                id: id.clone(),
                function: "echo".into(),
                function_version: 1,
                params_json: params,
                status: CallStatus::Queued as i32,
                created_at_ms: now_ms,
                ..Default::default()
            }
        };
        ops.push(TxnOp::put(
            format!("/faas/v1/calls/{id}"),
            call.encode_to_vec(),
            None,
        ));
        // Three records (1.2 MB) a transaction: under etcd's request limit.
        if ops.len() == 3 {
            etcd.txn(Txn::new().and_then(std::mem::take(&mut ops)))
                .await?;
        }
    }
    if !ops.is_empty() {
        etcd.txn(Txn::new().and_then(ops)).await?;
    }
    eprintln!(
        "wrote {} old-format calls ({} MiB) in {:?}",
        OLD_CALLS + QUEUED,
        (OLD_CALLS * 2 * PAYLOAD) >> 20,
        started.elapsed()
    );

    // Listing: every call, none with its payloads; a page of a thousand.
    let (listed, took) = list_all(&mut client0).await?;
    assert_eq!(listed.len(), OLD_CALLS + QUEUED + fresh.len());
    assert!(
        listed
            .iter()
            .all(|c| c.params_json.is_empty() && c.result_json.is_empty()),
        "a listing never carries params or results"
    );
    eprintln!(
        "ListCalls, {} calls in pages of 1000: {took:?}",
        listed.len()
    );
    let started = Instant::now();
    let out = stack
        .faasctl()
        .args(["call", "ls", "--limit", "50"])
        .output()?;
    let cli_took = started.elapsed();
    assert!(
        out.status.success(),
        "faasctl call ls: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!(
        "faasctl call ls (50 newest of {}): {cli_took:?}",
        listed.len()
    );
    let started = Instant::now();
    let stats = client0
        .get_call_stats(GetCallStatsRequest {
            function: String::new(),
            last: 10_000,
            ..Default::default()
        })
        .await?
        .into_inner();
    eprintln!(
        "GetCallStats over {} calls: {:?}",
        stats.overall.as_ref().map(|o| o.calls).unwrap_or(0),
        started.elapsed()
    );
    let overall = stats.overall.expect("overall");
    assert_eq!(overall.calls as usize, OLD_CALLS + fresh.len());
    // An old call's payloads are still there for GetCall.
    let old = listed
        .iter()
        .find(|c| c.status() == CallStatus::Succeeded && !fresh.contains(&c.id))
        .expect("an old call");
    let old = client0
        .get_call(GetCallRequest { id: old.id.clone() })
        .await?
        .into_inner();
    assert!(old.params_json.len() > PAYLOAD && old.result_json.len() > PAYLOAD);

    // Takeover: the leader stops; the other replica leads, reloads the
    // pending calls among the thousand (it reads them all) and runs the
    // queued ones.
    let leader = stack.leader_index().await?;
    let started = Instant::now();
    assert!(stack.stop_controlplane(leader).await, "the leader stops");
    let other = 1 - leader;
    let mut client_other = CallServiceClient::new(channel(&stack, &stack.controlplane_url(other)));
    for (id, params) in &queued_ids {
        let call = wait_final(&mut client_other, id, Duration::from_secs(90)).await?;
        assert_eq!(call.status(), CallStatus::Succeeded, "{call:?}");
        let result: serde_json::Value = serde_json::from_str(&call.result_json)?;
        assert_eq!(result, serde_json::from_str::<serde_json::Value>(params)?);
    }
    eprintln!(
        "takeover: the queued calls ran {:?} after the leader stopped",
        started.elapsed()
    );
    let (listed, took) = list_all(&mut client_other).await?;
    assert_eq!(listed.len(), OLD_CALLS + QUEUED + fresh.len());
    eprintln!("ListCalls after the takeover: {took:?}");

    // Restart: the stopped replica comes back (a follower now, forwarding
    // what only the leader does), then the leader is killed: the
    // restarted one leads over the same thousand records.
    stack.start_controlplane(leader).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    stack.kill_controlplane(other);
    let started = Instant::now();
    let mut client_back = CallServiceClient::new(channel(&stack, &stack.controlplane_url(leader)));
    let deadline = Instant::now() + Duration::from_secs(60);
    let call = loop {
        match client_back
            .invoke(InvokeRequest {
                function: "echo".into(),
                params_json: big_params(PAYLOAD, "after-restart"),
                ..Default::default()
            })
            .await
        {
            Ok(call) => break call.into_inner(),
            Err(e) => {
                anyhow::ensure!(
                    Instant::now() < deadline,
                    "no service after the restart: {e}"
                );
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        }
    };
    assert_eq!(call.status(), CallStatus::Succeeded, "{:?}", call.error);
    eprintln!(
        "restarted replica leads and serves {:?} after the kill",
        started.elapsed()
    );
    let stats = client_back
        .get_call_stats(GetCallStatsRequest::default())
        .await?
        .into_inner();
    assert_eq!(stats.overall.map(|o| o.calls), Some(1000));
    stack.start_controlplane(other).await?;
    stack.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_etcd_gives_clear_errors_and_recovers_by_itself() -> anyhow::Result<()> {
    let stack = Stack::start(StackOptions {
        spots: 2,
        runtimes: vec!["python3"],
        etcd_quota_bytes: 24 << 20,
        // Finished calls are deleted quickly: space is reclaimable once
        // compacted, as on a cluster that keeps a bounded history.
        controlplane_args: vec![
            "--call-retention-count".into(),
            "5".into(),
            "--call-retention-every".into(),
            "1s".into(),
        ],
        ..StackOptions::default()
    })
    .await?;
    let small = tempfile::tempdir()?;
    std::fs::write(
        small.path().join("handler.py"),
        "def handler(event, context):\n    return {\"n\": len(event.get(\"pad\", \"\"))}\n",
    )?;
    stack.deploy("sink", "python3", small.path(), &[])?;
    let params = big_params(250 << 10, "fill");

    // Fill etcd with calls of 250 KiB params, until it is full.
    let started = Instant::now();
    let mut client = CallServiceClient::new(stack.channel().await);
    let mut accepted = 0;
    let full = loop {
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(120),
            "etcd not full after {accepted} calls"
        );
        match client
            .invoke(InvokeRequest {
                function: "sink".into(),
                params_json: params.clone(),
                ..Default::default()
            })
            .await
        {
            Ok(_) => accepted += 1,
            Err(status) if status.code() == tonic::Code::ResourceExhausted => break status,
            Err(status) => anyhow::bail!("unexpected answer after {accepted} calls: {status:?}"),
        }
    };
    eprintln!(
        "etcd full after {accepted} calls in {:?}: {}",
        started.elapsed(),
        full.message()
    );
    assert!(
        full.message().starts_with("cluster storage is full"),
        "{}",
        full.message()
    );
    assert!(retry_after_ms(&full).is_some_and(|ms| ms > 0), "{full:?}");

    // No person acts: the control plane compacts, defragments and
    // disarms, and service returns.
    let full_at = Instant::now();
    let deadline = full_at + Duration::from_secs(90);
    let mut errors = 0;
    loop {
        match client
            .invoke(InvokeRequest {
                function: "sink".into(),
                params_json: r#"{"pad": "back"}"#.into(),
                ..Default::default()
            })
            .await
        {
            Ok(call) => {
                let call = call.into_inner();
                assert_eq!(call.status(), CallStatus::Succeeded, "{:?}", call.error);
                break;
            }
            Err(status) => {
                errors += 1;
                assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
                assert!(status.message().starts_with("cluster storage is full"));
                anyhow::ensure!(
                    Instant::now() < deadline,
                    "still full {:?} later",
                    full_at.elapsed()
                );
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
    eprintln!(
        "service back {:?} after etcd was full ({errors} refusals meanwhile)",
        full_at.elapsed()
    );
    let mut etcd = stack.etcd_client().await?;
    let alarms = etcd.alarm(AlarmAction::Get, AlarmType::None, None).await?;
    assert!(
        alarms.alarms().is_empty(),
        "alarms left: {:?}",
        alarms.alarms().len()
    );
    stack.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submits_over_the_admission_bounds_are_refused_with_a_retry_hint() -> anyhow::Result<()> {
    let stack = Stack::start(StackOptions {
        spots: 1,
        runtimes: vec!["python3"],
        controlplane_args: [
            "--max-queued-per-function",
            "3",
            "--max-queued-calls",
            "5",
            "--submit-rate",
            "2",
            "--submit-burst",
            "30",
        ]
        .map(String::from)
        .to_vec(),
        ..StackOptions::default()
    })
    .await?;
    for name in ["a", "b"] {
        stack.deploy(name, "python3", &fixture_dir("py-sleep"), &[])?;
    }
    let client = CallServiceClient::new(stack.channel().await);
    let submit = |function: &'static str| {
        let mut client = client.clone();
        async move {
            client
                .submit(InvokeRequest {
                    function: function.into(),
                    params_json: r#"{"seconds": 4}"#.into(),
                    ..Default::default()
                })
                .await
        }
    };

    // Per function: at most 3 wait (one more may be running already).
    let mut refused = None;
    let mut accepted_a = 0;
    for _ in 0..6 {
        match submit("a").await {
            Ok(_) => accepted_a += 1,
            Err(status) => refused = Some(status),
        }
    }
    let refused = refused.expect("a submit over the per-function bound is refused");
    assert_eq!(
        refused.code(),
        tonic::Code::ResourceExhausted,
        "{refused:?}"
    );
    assert!(
        refused.message().contains("max_queued_per_function"),
        "{}",
        refused.message()
    );
    assert!(retry_after_ms(&refused).is_some_and(|ms| ms > 0));
    assert!((3..=4).contains(&accepted_a), "{accepted_a} accepted");

    // Cluster-wide: 5 in all.
    let mut refused = None;
    for _ in 0..3 {
        if let Err(status) = submit("b").await {
            refused = Some(status);
            break;
        }
    }
    let refused = refused.expect("a submit over the cluster bound is refused");
    assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
    assert!(
        refused.message().contains("max_queued_calls"),
        "{}",
        refused.message()
    );
    assert!(retry_after_ms(&refused).is_some());

    // The submit rate: the burst goes, then 2 a second.
    let mut limited = None;
    for _ in 0..40 {
        if let Err(status) = submit("missing").await {
            if status.code() == tonic::Code::ResourceExhausted {
                limited = Some(status);
                break;
            }
        }
    }
    let limited = limited.expect("a burst over the submit rate is refused");
    assert!(
        limited.message().contains("submit_rate"),
        "{}",
        limited.message()
    );
    let wait = retry_after_ms(&limited).expect("retry-after-ms");
    assert!(wait > 0 && wait <= 500, "{wait} ms");
    tokio::time::sleep(Duration::from_millis(wait + 50)).await;
    let after = submit("missing").await.expect_err("no such function");
    assert_eq!(after.code(), tonic::Code::NotFound, "{after:?}");
    stack.shutdown().await
}

/// The leader holds queued calls' params in memory until they run: their
/// bytes together are bounded (10,000 calls of 256 KiB each would be
/// 2.5 GiB), and a submit over it is refused with a retry hint.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_params_are_bounded_in_bytes() -> anyhow::Result<()> {
    let stack = Stack::start(StackOptions {
        spots: 1,
        runtimes: vec!["python3"],
        controlplane_args: ["--max-queued-bytes", "300000"].map(String::from).to_vec(),
        ..StackOptions::default()
    })
    .await?;
    stack.deploy("sleeps", "python3", &fixture_dir("py-sleep"), &[])?;
    let mut client = CallServiceClient::new(stack.channel().await);
    // 100 kB of params each: the first runs, two more wait, the next one
    // would make the queue hold more than 300,000 bytes.
    let params = format!(r#"{{"seconds": 5, "pad": "{}"}}"#, "x".repeat(100_000));
    let request = || InvokeRequest {
        function: "sleeps".into(),
        params_json: params.clone(),
        ..Default::default()
    };
    let first = client.submit(request()).await?.into_inner().call_id;
    // It leaves the queue once it runs.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let call = client
            .get_call(GetCallRequest { id: first.clone() })
            .await?
            .into_inner();
        if call.status() == CallStatus::Running {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the first call never ran: {call:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    client.submit(request()).await?;
    client.submit(request()).await?;
    let refused = client
        .submit(request())
        .await
        .expect_err("a submit over the queued bytes bound is refused");
    assert_eq!(
        refused.code(),
        tonic::Code::ResourceExhausted,
        "{refused:?}"
    );
    assert!(
        refused.message().contains("max_queued_bytes"),
        "{}",
        refused.message()
    );
    assert!(retry_after_ms(&refused).is_some());
    // Small params still fit.
    client
        .submit(InvokeRequest {
            function: "sleeps".into(),
            params_json: r#"{"seconds": 0}"#.into(),
            ..Default::default()
        })
        .await?;
    stack.shutdown().await
}

/// Stored data carries its format. A replica records it at start; data
/// from before the record (as an older release left it) is taken as format
/// 1 and served unchanged; data of a newer format than this release reads
/// (a downgrade past a format change) makes the replica refuse to start,
/// saying which format and which version wrote it, and leaves it as it is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stored_data_carries_its_format_and_a_newer_one_is_refused() -> anyhow::Result<()> {
    use faas_proto::v1::StoreFormatRecord;
    let mut stack = Stack::start(StackOptions {
        spots: 1,
        runtimes: vec!["python3"],
        ..StackOptions::default()
    })
    .await?;
    let key = "/faas/v1/meta/format";
    let mut etcd = stack.etcd_client().await?;
    let read = |got: etcd_client::GetResponse| -> anyhow::Result<Option<StoreFormatRecord>> {
        got.kvs()
            .first()
            .map(|kv| StoreFormatRecord::decode(kv.value()))
            .transpose()
            .map_err(Into::into)
    };
    let recorded = read(etcd.get(key, None).await?)?.expect("a format recorded at start");
    assert_eq!(recorded.format, 1);
    assert!(!recorded.written_by.is_empty());

    let echo = echo_dir()?;
    stack.deploy("echo", "python3", echo.path(), &[])?;
    let before = invoke_echo(&stack, "before").await?;

    // As a release from before the record left the data: no record.
    assert!(stack.stop_controlplane(0).await);
    etcd.delete(key, None).await?;
    stack.start_controlplane(0).await?;
    stack.wait_agents_connected(Duration::from_secs(30)).await?;
    let again = read(etcd.get(key, None).await?)?.expect("recorded again");
    assert_eq!(again.format, 1);
    let mut calls = CallServiceClient::new(stack.channel().await);
    let old = calls
        .get_call(GetCallRequest { id: before })
        .await?
        .into_inner();
    assert_eq!(old.status(), CallStatus::Succeeded, "{old:?}");
    invoke_echo(&stack, "after").await?;

    // A newer format: refused at start, the record left alone.
    assert!(stack.stop_controlplane(0).await);
    let newer = StoreFormatRecord {
        format: 99,
        written_by: "9.9.9".into(),
        written_at_ms: 1,
    };
    etcd.put(key, newer.encode_to_vec(), None).await?;
    let refused = stack
        .start_controlplane(0)
        .await
        .expect_err("a replica on data of a newer format refuses to start");
    assert!(
        format!("{refused:#}").contains("exited early"),
        "{refused:#}"
    );
    let said = std::fs::read_to_string(stack.log_path("controlplane"))?;
    assert!(
        said.contains("format 99") && said.contains("9.9.9"),
        "the refusal names the format and who wrote it: {said}"
    );
    assert_eq!(read(etcd.get(key, None).await?)?, Some(newer));
    // Back on data it reads (the record as this release left it), it
    // starts, and the agent (holding no call) stops with it.
    etcd.put(key, again.encode_to_vec(), None).await?;
    assert!(stack.stop_controlplane(0).await, "it exited already");
    stack.start_controlplane(0).await?;
    stack.wait_agents_connected(Duration::from_secs(30)).await?;
    invoke_echo(&stack, "restored").await?;
    stack.shutdown().await
}

/// Invokes "echo" with `{"tag": tag}`: the call's id once it came back
/// with the tag.
async fn invoke_echo(stack: &Stack, tag: &str) -> anyhow::Result<String> {
    let call = CallServiceClient::new(stack.channel().await)
        .invoke(InvokeRequest {
            function: "echo".into(),
            params_json: format!(r#"{{"tag":"{tag}"}}"#),
            ..Default::default()
        })
        .await?
        .into_inner();
    anyhow::ensure!(
        call.status() == CallStatus::Succeeded && call.result_json.contains(tag),
        "{call:?}"
    );
    Ok(call.id)
}
