//! The agent's side of the host boundary, end to end: every container runs
//! as a host uid of its own (from the agent's pool, never 65534 shared),
//! its io directory is root-owned with its entries pre-created for that
//! uid, and its input is a FIFO whatever the start kind.

use std::collections::HashSet;

use faas_proto::v1::call_service_client::CallServiceClient;
use faas_tests::{fixture_dir, invoke_succeeded, Stack, StackOptions};

/// The agent's default uid pool (`uid_base`, `uid_count`).
const UID_BASE: u64 = 200_000;
const UID_COUNT: u64 = 65_536;

fn result(call: &faas_proto::v1::Call) -> serde_json::Value {
    serde_json::from_str(&call.result_json).expect("result is JSON")
}

/// Checks one call's report: its own uid from the pool, owning /tmp and
/// the files it writes; the io directory root-owned and closed to new files.
fn check_report(r: &serde_json::Value) -> u64 {
    let uid = r["uid"].as_u64().expect("uid");
    assert!(
        (UID_BASE..UID_BASE + UID_COUNT).contains(&uid),
        "uid {uid} is not from the pool: {r}"
    );
    assert_eq!(r["gid"].as_u64(), Some(uid), "{r}");
    assert_eq!(r["tmp"]["uid"].as_u64(), Some(uid), "/tmp: {r}");
    assert_eq!(r["output"]["uid"].as_u64(), Some(uid), "output.json: {r}");
    assert_eq!(r["input"]["uid"].as_u64(), Some(uid), "input.json: {r}");
    assert_eq!(r["io"]["uid"].as_u64(), Some(0), "/faas/io: {r}");
    assert_eq!(r["io"]["mode"], "0o755", "/faas/io: {r}");
    assert_eq!(r["planted"], "Permission denied", "{r}");
    assert_eq!(r["input_is_fifo"], true, "{r}");
    uid
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_calls_run_as_different_uids() -> anyhow::Result<()> {
    let stack = Stack::start(StackOptions {
        runtimes: vec!["python3"],
        policy: Some("no-preload".into()),
        spots: 2,
        ..StackOptions::default()
    })
    .await?;
    stack.deploy("uid", "python3", &fixture_dir("py-uid"), &[])?;
    let channel = stack.channel().await;
    // Two at once (each sleeps so that they overlap), then one more.
    let (a, b) = tokio::join!(
        async {
            let mut c = CallServiceClient::new(channel.clone());
            invoke_succeeded(&mut c, "uid", r#"{"seconds": 1.5}"#).await
        },
        async {
            let mut c = CallServiceClient::new(channel.clone());
            invoke_succeeded(&mut c, "uid", r#"{"seconds": 1.5}"#).await
        },
    );
    let (a, b) = (a?, b?);
    let mut c = CallServiceClient::new(channel.clone());
    let third = invoke_succeeded(&mut c, "uid", "{}").await?;
    let uids: Vec<u64> = [&a, &b, &third]
        .iter()
        .map(|call| check_report(&result(call)))
        .collect();
    assert_ne!(uids[0], uids[1], "two concurrent calls shared a uid");
    // Not reused right away either: the pool rotates.
    assert_eq!(
        uids.iter().collect::<HashSet<_>>().len(),
        3,
        "a uid came back right away: {uids:?}"
    );
    stack.shutdown().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preloaded_calls_see_the_same_io_as_cold_ones() -> anyhow::Result<()> {
    let stack = Stack::start(StackOptions {
        runtimes: vec!["python3"],
        spots: 2,
        ..StackOptions::default()
    })
    .await?;
    stack.deploy("uid", "python3", &fixture_dir("py-uid"), &[])?;
    let mut c = CallServiceClient::new(stack.channel().await);
    // Whatever the policy preloads, every call sees the same io files.
    for _ in 0..4 {
        let call = invoke_succeeded(&mut c, "uid", "{}").await?;
        check_report(&result(&call));
    }
    stack.shutdown().await?;
    Ok(())
}
