//! The adversarial suite of issue 10 (the host boundary), on the real stack.
//! The attackers of tests/tests/isolation.rs stay inside their containers;
//! these go for what the host does with what a function leaves behind (the
//! files of /faas/io, read by the agent as root on the host), for kernel
//! limits shared between containers, and for the control plane as a client
//! (identifiers, packages, what faasctl prints). docs/isolation.md lists each
//! attack (findings 1-16 of the issue) with the defence that stops it and
//! the test here that checks it.
//!
//! Every test asserts, as far as it applies: nothing of the host or of
//! another call is read or written; the call ends, by its timeout plus a
//! grace at the latest; the node keeps serving; the agent's and the control
//! plane's memory stay bounded. Where an attack succeeds, the test gathers
//! every leak it saw before failing, so one run shows the whole picture.
//!
//! The tests take a lock so that they run one at a time (each starts a
//! stack, and their timing bounds would otherwise measure each other).

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write as _;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use faas_proto::v1::call_service_client::CallServiceClient;
use faas_proto::v1::function_service_client::FunctionServiceClient;
use faas_proto::v1::{
    deploy_function_request, Call, CallStatus, DeleteFunctionRequest, DeployFunctionRequest,
    FunctionSpec, GetCallLogsRequest, GetCallRequest, GetFunctionRequest, InvokeRequest, Spot,
    SpotState, StartKind, WaitCallRequest,
};
use faas_tests::{fixture_dir, repo_root, RssWatch, Stack, StackOptions};
use serde_json::{json, Value};
use tokio_stream::StreamExt;

static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The agent's default log bound (`--max-log-bytes`).
const MAX_LOG_BYTES: usize = 64 << 10;
/// How long after its timeout a call may take to end, whatever its agent
/// does: the control plane's deadline grace (10 s by default) with room
/// for a loaded machine.
const GRACE: Duration = Duration::from_secs(30);
/// How long an ordinary call may take once an attack is over (a cold
/// start on a loaded 2-core machine takes 1-3 s).
const SERVING: Duration = Duration::from_secs(20);
/// How much an attack may grow the agent's resident memory.
const AGENT_GROWTH: u64 = 64 << 20;
/// Past this growth an attack is stopped by killing the agent, before it
/// takes the machine (the test has failed by then anyway).
const AGENT_SAFETY: u64 = 768 << 20;
const UID_NOBODY: u32 = 65534;

fn attack_dir(case: &str) -> PathBuf {
    let dir = repo_root().join("tests/isolation/fns").join(case);
    assert!(dir.is_dir(), "no attack function {}", dir.display());
    dir
}

async fn stack(policy: &str, spots: u32, agents: usize) -> anyhow::Result<Stack> {
    Stack::start(StackOptions {
        agents,
        spots,
        runtimes: vec!["python3"],
        policy: Some(policy.into()),
        ..StackOptions::default()
    })
    .await
}

async fn calls(stack: &Stack) -> CallServiceClient<faas_tests::Channel> {
    CallServiceClient::new(stack.channel().await)
}

async fn submit(stack: &Stack, function: &str, params: &Value) -> anyhow::Result<String> {
    Ok(calls(stack)
        .await
        .submit(InvokeRequest {
            function: function.into(),
            params_json: params.to_string(),
            ..Default::default()
        })
        .await
        .with_context(|| format!("submitting a call of {function}"))?
        .into_inner()
        .call_id)
}

fn is_final(call: &Call) -> bool {
    call.status().is_final()
}

/// The call once final; an error if it is not final within `within` (or
/// if the control plane does not answer).
async fn wait_final(stack: &Stack, id: &str, within: Duration) -> anyhow::Result<Call> {
    let waited = async {
        let mut stream = calls(stack)
            .await
            .wait_call(WaitCallRequest {
                id: id.into(),
                timeout_ms: within.as_millis() as u64,
            })
            .await?
            .into_inner();
        let mut last = None;
        while let Some(update) = stream.next().await {
            match update {
                Ok(call) => last = Some(call),
                Err(status) if status.code() == tonic::Code::DeadlineExceeded => break,
                Err(status) => return Err(anyhow::Error::from(status)),
            }
        }
        Ok(last)
    };
    match tokio::time::timeout(within + Duration::from_secs(5), waited).await {
        Err(_) => bail!("the control plane said nothing of call {id} within {within:?}"),
        Ok(waited) => match waited.with_context(|| format!("waiting for call {id}"))? {
            Some(call) if is_final(&call) => Ok(call),
            Some(call) => bail!(
                "call {id} of {} still {:?} after {within:?} (node {}, spot {})",
                call.function,
                call.status(),
                call.node,
                call.spot
            ),
            None => bail!("waiting for call {id} streamed nothing"),
        },
    }
}

/// Submits a call and waits until it is final, within `within`.
async fn run_call(
    stack: &Stack,
    function: &str,
    params: Value,
    within: Duration,
) -> anyhow::Result<Call> {
    let id = submit(stack, function, &params).await?;
    wait_final(stack, &id, within).await
}

async fn logs_of(stack: &Stack, id: &str) -> anyhow::Result<Vec<u8>> {
    Ok(calls(stack)
        .await
        .get_call_logs(GetCallLogsRequest { id: id.into() })
        .await?
        .into_inner()
        .logs)
}

/// Everything of a call its caller can read: result, error, log tail, logs.
async fn visible_text(stack: &Stack, call: &Call) -> anyhow::Result<String> {
    let logs = logs_of(stack, &call.id).await?;
    let error = call.error.clone().unwrap_or_default();
    Ok(format!(
        "{}\n{}\n{}\n{}",
        call.result_json,
        error.message,
        error.log_tail,
        String::from_utf8_lossy(&logs)
    ))
}

/// A `hello` call succeeds within [`SERVING`].
async fn assert_serving(stack: &Stack, after: &str) -> anyhow::Result<()> {
    let started = Instant::now();
    let call = run_call(stack, "hello", json!({ "name": "after" }), SERVING)
        .await
        .with_context(|| format!("the node stopped serving after {after}"))?;
    ensure!(
        call.status() == CallStatus::Succeeded,
        "after {after}, hello did not succeed: {call:?}"
    );
    eprintln!("after {after}: hello served in {:?}", started.elapsed());
    Ok(())
}

fn deploy(stack: &Stack, name: &str, dir: &Path, extra: &[&str]) -> anyhow::Result<()> {
    stack.deploy(name, "python3", dir, extra)
}

/// Spots of agent 0 now.
async fn spots(stack: &Stack) -> anyhow::Result<Vec<Spot>> {
    let nodes = stack.list_nodes().await?;
    Ok(nodes
        .nodes
        .into_iter()
        .find(|n| n.name == stack.agent_node(0))
        .map(|n| n.spots)
        .unwrap_or_default())
}

/// Polls the spots of agent 0 until `wanted` holds; the spots then.
async fn wait_spots(
    stack: &Stack,
    within: Duration,
    what: &str,
    wanted: impl Fn(&[Spot]) -> bool,
) -> anyhow::Result<Vec<Spot>> {
    let deadline = Instant::now() + within;
    loop {
        let now = spots(stack).await?;
        if wanted(&now) {
            return Ok(now);
        }
        if Instant::now() > deadline {
            bail!("spots not {what} after {within:?}: {now:?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn preloaded_with(spot: &Spot, function: &str) -> bool {
    spot.state() == SpotState::PreloadedFunction
        && spot.function.split('@').next() == Some(function)
}

/// The host directory of the live container of agent 0 whose io/env says
/// it runs `function` (spot directories are named by container id, not
/// function).
fn container_dir_of(stack: &Stack, function: &str) -> Option<PathBuf> {
    let wanted = format!("FAAS_FUNCTION_NAME={function}\0");
    std::fs::read_dir(stack.agent_state_dir(0).join("spots"))
        .ok()?
        .flatten()
        .map(|e| e.path())
        .find(|dir| {
            std::fs::read(dir.join("io/env")).is_ok_and(|env| contains(&env, wanted.as_bytes()))
        })
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

fn marker(what: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("faas-{what}-{}-{nanos:x}", std::process::id())
}

/// The parts of `text` that come from somewhere they must not: each
/// `(needle, what it proves)` found.
fn leaks(text: &str, needles: &[(String, &str)]) -> Vec<String> {
    needles
        .iter()
        .filter(|(needle, _)| text.contains(needle.as_str()))
        .map(|(needle, what)| format!("{what} ({needle:?})"))
        .collect()
}

/// Excerpt of a text for a failure message.
fn excerpt(text: &str) -> String {
    let cut: String = text.chars().take(300).collect();
    format!("{cut:?}{}", if text.len() > 300 { "…" } else { "" })
}

/// Finding 1: /faas/io/log, output.json and error.json replaced by symlinks
/// to the host's files, the agent's own /proc files, a file of the host
/// holding a secret, another call's io/env and (through /proc/<pid>/root)
/// another call's /tmp. The agent must read none of them: nothing of them
/// in the call's result, error or logs; every call ends; the node serves.
/// Under no-preload and preload-function (the io directory of a preloaded
/// container is made ahead of the call).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn io_symlinks_reach_nothing_of_the_host_or_other_calls() -> anyhow::Result<()> {
    let _serial = ONE_AT_A_TIME.lock().await;
    let mut found = Vec::new();
    for policy in ["no-preload", "preload-function"] {
        let stack = stack(policy, 2, 1).await?;
        let checks = symlink_checks(&stack, policy, &mut found);
        if let Err(err) = checks.await {
            return Err(err.context(format!(
                "policy {policy}; leaks so far: {found:#?}\n{}",
                stack.log_tails()
            )));
        }
        stack.shutdown().await?;
    }
    ensure!(
        found.is_empty(),
        "the agent read through a function's symlinks:\n{}",
        found.join("\n")
    );
    Ok(())
}

async fn symlink_checks(
    stack: &Stack,
    policy: &str,
    found: &mut Vec<String>,
) -> anyhow::Result<()> {
    deploy(stack, "hello", &fixture_dir("py-hello"), &[])?;
    deploy(
        stack,
        "hostile-io",
        &attack_dir("hostile-io"),
        &["--timeout", "5s"],
    )?;
    let env_secret = marker("env-secret");
    deploy(
        stack,
        "holder",
        &attack_dir("hostile-io"),
        &["--timeout", "30s", "--env", &format!("HELD={env_secret}")],
    )?;
    // A secret file on the host, valid JSON so that it would pass as a
    // result or an error report.
    let file_secret = marker("file-secret");
    let secret_path = stack.dir.path().join("host-secret.json");
    std::fs::write(
        &secret_path,
        json!({ "type": "HostSecret", "message": file_secret, "secret": file_secret }).to_string(),
    )?;
    let tmp_secret = marker("tmp-secret");
    let needles = vec![
        (file_secret.clone(), "the host's secret file"),
        (env_secret.clone(), "another call's io/env"),
        (tmp_secret.clone(), "another call's /tmp"),
        ("root:".to_string(), "/etc/shadow"),
        ("RUST_LOG=".to_string(), "the agent's environment"),
        ("FAAS_BIN_DIR=".to_string(), "the agent's environment"),
        ("proc /proc proc".to_string(), "the agent's mount table"),
        (" tmpfs rw".to_string(), "the agent's mount table"),
        ("\0".to_string(), "an environ file (NUL-separated)"),
    ];

    // Another call, running meanwhile on the other spot: its env (from the
    // deploy) and a file in its /tmp hold secrets.
    let holder = submit(
        stack,
        "holder",
        &json!({ "mode": "hold", "s": 10, "tmp_secret": tmp_secret }),
    )
    .await?;
    let mut other_call_paths = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(8);
    while Instant::now() < deadline && other_call_paths.len() < 2 {
        other_call_paths.clear();
        if let Some(dir) = container_dir_of(stack, "holder") {
            other_call_paths.push(dir.join("io/env"));
        }
        if let Some(pid) = host_pids().into_iter().find(|pid| {
            std::fs::read(format!("/proc/{pid}/root/tmp/faas-held-secret"))
                .is_ok_and(|s| s == tmp_secret.as_bytes())
        }) {
            other_call_paths.push(PathBuf::from(format!(
                "/proc/{pid}/root/tmp/faas-held-secret"
            )));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!("{policy}: another call's files on the host: {other_call_paths:?}");
    ensure!(
        !other_call_paths.is_empty(),
        "the holder call's files were not found on the host"
    );

    let mut cases: Vec<(&str, String)> = other_call_paths
        .iter()
        .map(|p| ("log", p.display().to_string()))
        .collect();
    for target in [
        "/etc/shadow",
        "/proc/self/environ",
        "/proc/self/mounts",
        "/proc/1/environ",
    ] {
        cases.push(("log", target.to_string()));
    }
    cases.push(("log", secret_path.display().to_string()));
    for entry in ["output.json", "error.json"] {
        cases.push((entry, secret_path.display().to_string()));
        cases.push((entry, "/proc/self/environ".to_string()));
    }
    for (entry, target) in cases {
        let call = run_call(
            stack,
            "hostile-io",
            json!({ "mode": "symlink", "entry": entry, "target": target }),
            Duration::from_secs(5) + GRACE,
        )
        .await
        .with_context(|| format!("{entry} → {target}"))?;
        let text = visible_text(stack, &call).await?;
        for leak in leaks(&text, &needles) {
            // Not the text itself: the agent's environment is the host's.
            found.push(format!(
                "{policy}: {entry} → {target}: {leak} in the call ({:?}, {} bytes visible)",
                call.status(),
                text.len()
            ));
        }
    }
    let held = wait_final(stack, &holder, Duration::from_secs(30) + GRACE).await?;
    ensure!(
        held.status() == CallStatus::Succeeded,
        "the holder call did not succeed: {held:?}"
    );
    assert_serving(stack, "the symlink attacks").await
}

/// Every pid on the host.
fn host_pids() -> Vec<i32> {
    std::fs::read_dir("/proc")
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Finding 2: a preloaded attacker replaces its io/input.json with a
/// symlink to the input FIFO of a preloaded victim (the test hands it the
/// host path, standing in for the leak of finding 1); its call's params
/// must not reach the victim, whose own call must see its own params only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_cannot_write_another_calls_input() -> anyhow::Result<()> {
    let _serial = ONE_AT_A_TIME.lock().await;
    let stack = stack("preload-function", 2, 1).await?;
    let result = cross_input(&stack).await;
    if let Err(err) = result {
        return Err(err.context(stack.log_tails()));
    }
    stack.shutdown().await
}

async fn cross_input(stack: &Stack) -> anyhow::Result<()> {
    let dir = attack_dir("cross-input");
    deploy(stack, "victim", &dir, &["--timeout", "5s"])?;
    wait_spots(
        stack,
        Duration::from_secs(60),
        "both preloaded with victim",
        |s| s.len() == 2 && s.iter().all(|s| preloaded_with(s, "victim")),
    )
    .await?;
    deploy(
        stack,
        "attacker",
        &dir,
        &["--timeout", "5s", "--env", "ROLE=attacker"],
    )?;
    wait_spots(
        stack,
        Duration::from_secs(60),
        "one victim and one attacker",
        |s| {
            s.iter().any(|s| preloaded_with(s, "victim"))
                && s.iter().any(|s| preloaded_with(s, "attacker"))
        },
    )
    .await?;
    let victim_dir = container_dir_of(stack, "victim").context("the victim's directory")?;
    let attacker_dir = container_dir_of(stack, "attacker").context("the attacker's directory")?;
    let victim_input = victim_dir.join("io/input.json");
    // The attacker's import-time thread picks the path up from there.
    std::fs::write(
        attacker_dir.join("io/target"),
        victim_input.display().to_string(),
    )
    .context("handing the attacker its target")?;
    let deadline = Instant::now() + Duration::from_secs(10);
    let outcome = loop {
        if let Ok(outcome) = std::fs::read_to_string(attacker_dir.join("io/attack-result")) {
            break outcome;
        }
        if Instant::now() > deadline {
            break "(no report)".to_string();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    eprintln!(
        "the attacker's symlink of io/input.json to {}: {outcome}",
        victim_input.display()
    );

    let evil = marker("evil");
    let attacker = run_call(
        stack,
        "attacker",
        json!({ "evil": evil }),
        Duration::from_secs(5) + GRACE,
    )
    .await?;
    eprintln!(
        "the attacker's call: {:?} {:?}",
        attacker.status(),
        attacker.error
    );
    let mut found = Vec::new();
    // The victim's container, had it got the attacker's params, has run
    // and written them back already.
    tokio::time::sleep(Duration::from_secs(1)).await;
    if let Ok(output) = std::fs::read_to_string(victim_dir.join("io/output.json")) {
        if output.contains(&evil) {
            found.push(format!(
                "the victim's container ran on the attacker's params: {output}"
            ));
        }
    }
    let mine = marker("mine");
    let victim = run_call(
        stack,
        "victim",
        json!({ "mine": mine }),
        Duration::from_secs(5) + GRACE,
    )
    .await?;
    let text = visible_text(stack, &victim).await?;
    if text.contains(&evil) {
        found.push(format!(
            "the victim's call saw the attacker's params: {:?} {}",
            victim.status(),
            excerpt(&text)
        ));
    }
    if victim.status() != CallStatus::Succeeded
        || serde_json::from_str::<Value>(&victim.result_json).ok()
            != Some(json!({ "event": { "mine": mine }, "role": "victim" }))
    {
        found.push(format!(
            "the victim's call did not get its own params: {:?} result {} error {:?}",
            victim.status(),
            victim.result_json,
            victim.error
        ));
    }
    ensure!(
        found.is_empty(),
        "one call wrote another's input:\n{}",
        found.join("\n")
    );
    deploy(stack, "hello", &fixture_dir("py-hello"), &[])?;
    assert_serving(stack, "the cross-input attack").await
}

/// Finding 3 (and 13 from the function's side): /faas/io/log and
/// output.json turned into FIFOs that nobody writes. Both calls end by their
/// timeout plus the grace, and the node serves ordinary calls right after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifos_in_the_io_directory_do_not_freeze_the_agent() -> anyhow::Result<()> {
    let _serial = ONE_AT_A_TIME.lock().await;
    let stack = stack("no-preload", 2, 1).await?;
    deploy(&stack, "hello", &fixture_dir("py-hello"), &[])?;
    deploy(
        &stack,
        "hostile-io",
        &attack_dir("hostile-io"),
        &["--timeout", "2s"],
    )?;
    assert_serving(&stack, "start-up").await?;
    let mut problems = Vec::new();
    let mut ids = Vec::new();
    for entry in ["log", "output.json"] {
        ids.push((
            entry,
            submit(
                &stack,
                "hostile-io",
                &json!({ "mode": "fifo", "entry": entry }),
            )
            .await?,
        ));
    }
    let started = Instant::now();
    for (entry, id) in &ids {
        // Both were submitted together: each must end by the same bound
        // (at least a second is asked for; 0 would mean no bound at all).
        let within = (Duration::from_secs(2) + GRACE)
            .saturating_sub(started.elapsed())
            .max(Duration::from_secs(1));
        match wait_final(&stack, id, within).await {
            Ok(call) => eprintln!(
                "{entry} as a FIFO: {:?} after {:?} ({:?})",
                call.status(),
                started.elapsed(),
                call.error.map(|e| e.message)
            ),
            Err(err) => problems.push(format!("{entry} as a FIFO: {err:#}")),
        }
    }
    if let Err(err) = assert_serving(&stack, "two FIFO attacks").await {
        problems.push(format!("{err:#}"));
    }
    ensure!(
        problems.is_empty(),
        "FIFOs froze the agent:\n{}\n{}",
        problems.join("\n"),
        stack.log_tails()
    );
    stack.shutdown().await
}

/// Finding 4: hundreds of MiB without a newline into the notify FIFO. The
/// agent's resident memory grows by less than [`AGENT_GROWTH`]; the call
/// ends; the node serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_notify_flood_leaves_the_agent_bounded() -> anyhow::Result<()> {
    let _serial = ONE_AT_A_TIME.lock().await;
    let stack = stack("no-preload", 2, 1).await?;
    deploy(&stack, "hello", &fixture_dir("py-hello"), &[])?;
    deploy(
        &stack,
        "hostile-io",
        &attack_dir("hostile-io"),
        &["--timeout", "20s"],
    )?;
    assert_serving(&stack, "start-up").await?;
    let pid = stack.agent_pid(0).context("agent pid")?;
    let baseline = faas_tests::rss_bytes(pid).context("agent rss")?;
    let watch = RssWatch::start(pid, baseline + AGENT_SAFETY);
    let call = run_call(
        &stack,
        "hostile-io",
        json!({ "mode": "notify", "mib": 256, "hold_s": 2 }),
        Duration::from_secs(20) + GRACE,
    )
    .await;
    let rss = watch.finish();
    eprintln!(
        "notify flood of 256 MiB: agent {} → peak {} MiB{}; call {:?}",
        rss.baseline >> 20,
        rss.peak >> 20,
        if rss.killed { " (killed)" } else { "" },
        call.as_ref().map(|c| (c.status(), c.error.clone()))
    );
    ensure!(
        rss.growth() < AGENT_GROWTH,
        "256 MiB without a newline into io/notify grew the agent by {} MiB (bound {} MiB){}",
        rss.growth() >> 20,
        AGENT_GROWTH >> 20,
        if rss.killed {
            "; the test killed it"
        } else {
            ""
        }
    );
    call?;
    assert_serving(&stack, "the notify flood").await?;
    stack.shutdown().await
}

/// Finding 5: the log replaced by a symlink to a procfs file (size 0 in
/// stat, megabytes when read: /proc/kallsyms) along with a 200 KiB result
/// and 200 KiB params, which etcd would refuse to record in one piece; then
/// by a symlink to /dev/zero (endless). The logs kept stay within the
/// bound, hold nothing of the host, the calls end (never stuck RUNNING),
/// the agent's memory stays bounded, the node serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_stay_bounded_whatever_the_log_file_is() -> anyhow::Result<()> {
    let _serial = ONE_AT_A_TIME.lock().await;
    let stack = stack("no-preload", 2, 1).await?;
    deploy(&stack, "hello", &fixture_dir("py-hello"), &[])?;
    deploy(
        &stack,
        "hostile-io",
        &attack_dir("hostile-io"),
        &["--timeout", "5s"],
    )?;
    assert_serving(&stack, "start-up").await?;
    let mut problems = Vec::new();
    let pid = stack.agent_pid(0).context("agent pid")?;
    for target in ["/proc/kallsyms", "/dev/zero"] {
        let baseline = faas_tests::rss_bytes(pid).context("agent rss")?;
        let watch = RssWatch::start(pid, baseline + AGENT_SAFETY);
        let call = run_call(
            &stack,
            "hostile-io",
            json!({ "mode": "symlink", "entry": "log", "target": target,
                    "result_kb": 200, "padding": "q".repeat(200 << 10) }),
            Duration::from_secs(5) + GRACE,
        )
        .await;
        let rss = watch.finish();
        eprintln!(
            "log → {target}: agent {} → peak {} MiB{}; call {:?}",
            rss.baseline >> 20,
            rss.peak >> 20,
            if rss.killed { " (killed)" } else { "" },
            call.as_ref()
                .map(|c| (c.status(), c.error.clone().map(|e| e.reason)))
        );
        if rss.growth() >= AGENT_GROWTH {
            problems.push(format!(
                "log → {target}: the agent grew by {} MiB{}",
                rss.growth() >> 20,
                if rss.killed {
                    " (killed by the test)"
                } else {
                    ""
                }
            ));
        }
        let call = match call {
            Ok(call) => call,
            Err(err) => {
                problems.push(format!("log → {target}: {err:#}"));
                continue;
            }
        };
        if call.status() == CallStatus::Failed {
            let reason = call.error.as_ref().map(|e| e.reason.as_str());
            if reason != Some("platform") && reason != Some("error") {
                problems.push(format!("log → {target}: failed with {:?}", call.error));
            }
        }
        let logs = logs_of(&stack, &call.id).await?;
        if logs.len() > MAX_LOG_BYTES + 1024 {
            problems.push(format!(
                "log → {target}: {} bytes of logs kept (bound {MAX_LOG_BYTES})",
                logs.len()
            ));
        }
        let text = visible_text(&stack, &call).await?;
        for needle in ["startup_64", "_stext", "\0\0\0\0"] {
            if text.contains(needle) {
                problems.push(format!(
                    "log → {target}: the host's {target} in the call ({} bytes visible)",
                    text.len()
                ));
                break;
            }
        }
        if rss.killed {
            break;
        }
    }
    if !problems.iter().any(|p| p.contains("killed")) {
        if let Err(err) = assert_serving(&stack, "the log attacks").await {
            problems.push(format!("{err:#}"));
        }
    }
    ensure!(
        problems.is_empty(),
        "logs not bounded:\n{}\n{}",
        problems.join("\n"),
        stack.log_tails()
    );
    stack.shutdown().await
}

/// CPU time used by every container cgroup of `namespace` over `window`
/// (cgroups that appear meanwhile count from zero), seconds.
async fn containers_cpu_seconds(namespace: &str, window: Duration) -> f64 {
    let dir = Path::new("/sys/fs/cgroup/cpuacct/faas").join(namespace);
    let sample = || -> BTreeMap<String, u64> {
        std::fs::read_dir(&dir)
            .map(|entries| {
                entries
                    .flatten()
                    .filter(|e| e.path().is_dir())
                    .filter_map(|e| {
                        let usage = std::fs::read_to_string(e.path().join("cpuacct.usage")).ok()?;
                        Some((
                            e.file_name().to_string_lossy().into_owned(),
                            usage.trim().parse().ok()?,
                        ))
                    })
                    .collect()
            })
            .unwrap_or_default()
    };
    let first = sample();
    let mut last: BTreeMap<String, u64> = first.clone();
    let deadline = Instant::now() + window;
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
        for (id, usage) in sample() {
            let seen = last.entry(id).or_insert(0);
            *seen = (*seen).max(usage);
        }
    }
    let used: u64 = last
        .iter()
        .map(|(id, usage)| usage.saturating_sub(first.get(id).copied().unwrap_or(0)))
        .sum();
    used as f64 / 1e9
}

/// Finding 10: a preloaded function whose import starts a thread that burns
/// CPU, while no call of it runs. Its CPU use before the call is bounded
/// (a quota lifted when the call binds, or a budget after which the
/// preload fails): at most a quarter of a CPU over 8 s, against a whole
/// one unbounded. Its call, when it comes, still runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preloads_cannot_burn_cpu_before_their_call() -> anyhow::Result<()> {
    let _serial = ONE_AT_A_TIME.lock().await;
    let stack = stack("preload-function", 1, 1).await?;
    deploy(
        &stack,
        "preload-burn",
        &attack_dir("preload-burn"),
        &["--timeout", "10s"],
    )?;
    wait_spots(&stack, Duration::from_secs(60), "preloaded", |s| {
        s.iter().any(|s| preloaded_with(s, "preload-burn"))
    })
    .await?;
    // The burning thread starts at import, before the spot says preloaded.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let window = Duration::from_secs(8);
    let used = containers_cpu_seconds(&stack.agent_namespace(0), window).await;
    eprintln!("an idle preload with a burning thread used {used:.2} CPU-s in {window:?}");
    let call = run_call(
        &stack,
        "preload-burn",
        json!({}),
        Duration::from_secs(10) + GRACE,
    )
    .await?;
    eprintln!(
        "its call: {:?} ({:?})",
        call.status(),
        call.timings.map(|t| t.start_kind())
    );
    ensure!(
        used < 2.0,
        "an idle preload burned {used:.2} CPU-seconds in {window:?} (bound 2.0)"
    );
    ensure!(
        call.status() == CallStatus::Succeeded,
        "the burning function's call failed: {call:?}"
    );
    stack.shutdown().await
}

/// Finding 11: one call takes every inotify instance its uid may have
/// (fs.inotify.max_user_instances counts per host uid); a concurrent call
/// of another function can still create one, because it runs as another
/// host uid.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kernel_per_uid_limits_are_not_shared_between_calls() -> anyhow::Result<()> {
    let _serial = ONE_AT_A_TIME.lock().await;
    let stack = stack("no-preload", 2, 1).await?;
    let dir = attack_dir("inotify");
    deploy(&stack, "inotify-hog", &dir, &["--timeout", "30s"])?;
    deploy(&stack, "inotify-probe", &dir, &["--timeout", "10s"])?;
    // Warm the image and package caches: the probe must run while the hog holds.
    run_call(&stack, "inotify-probe", json!({}), SERVING).await?;
    let hog = submit(
        &stack,
        "inotify-hog",
        &json!({ "mode": "hog", "hold_s": 6 }),
    )
    .await?;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let call = calls(&stack)
            .await
            .get_call(GetCallRequest { id: hog.clone() })
            .await?
            .into_inner();
        if call.status() == CallStatus::Running {
            break;
        }
        ensure!(Instant::now() < deadline, "the hog did not start: {call:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Its container starts, then takes the instances in a few ms.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let probe = run_call(
        &stack,
        "inotify-probe",
        json!({ "mode": "probe" }),
        Duration::from_secs(10) + GRACE,
    )
    .await?;
    let hog = wait_final(&stack, &hog, Duration::from_secs(30) + GRACE).await?;
    let (probe_r, hog_r): (Value, Value) = (
        serde_json::from_str(&probe.result_json).unwrap_or_default(),
        serde_json::from_str(&hog.result_json).unwrap_or_default(),
    );
    eprintln!("hog: {hog_r}; probe: {probe_r}");
    ensure!(
        hog_r["held"].as_u64().unwrap_or(0) > 0,
        "the hog took nothing: {hog:?}"
    );
    ensure!(
        probe_r["probe"] == "ok",
        "a call of another function could not create an inotify instance while one \
         call held them all: {probe_r} (hog: {hog_r})"
    );
    ensure!(
        probe_r["uid"] != hog_r["uid"],
        "two concurrent calls ran as the same uid: {probe_r} {hog_r}"
    );
    stack.shutdown().await
}

/// Finding 12, as far as a client reaches: call ids that are paths (or
/// not ids at all) are refused with INVALID_ARGUMENT by every call method,
/// never looked up, and a function name that is a path is refused too.
/// (The agent's own check of ids on its stream is unit-tested there.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ids_that_are_paths_are_refused() -> anyhow::Result<()> {
    let _serial = ONE_AT_A_TIME.lock().await;
    let stack = Stack::start(StackOptions {
        agents: 0,
        ..StackOptions::default()
    })
    .await?;
    let mut problems = Vec::new();
    let long = "a".repeat(300);
    let ids = [
        "../../../../x",
        "call-1/../../../etc",
        "0192f1a0-0000-7000-8000-000000000000/..",
        "/etc/passwd",
        "x\u{0}y",
        long.as_str(),
        "",
    ];
    let mut client = calls(&stack).await;
    for id in ids {
        let got = client.get_call(GetCallRequest { id: id.into() }).await;
        check_invalid(&mut problems, "GetCall", id, got.map(|_| ()));
        let got = client
            .get_call_logs(GetCallLogsRequest { id: id.into() })
            .await;
        check_invalid(&mut problems, "GetCallLogs", id, got.map(|_| ()));
        let got = client
            .wait_call(WaitCallRequest {
                id: id.into(),
                timeout_ms: 1000,
            })
            .await;
        let got = match got {
            Ok(stream) => {
                let mut stream = stream.into_inner();
                match stream.next().await {
                    Some(Err(status)) => Err(status),
                    _ => Ok(()),
                }
            }
            Err(status) => Err(status),
        };
        check_invalid(&mut problems, "WaitCall", id, got);
    }
    for name in ["../../x", "a/b", "A", ""] {
        let got = client
            .submit(InvokeRequest {
                function: name.into(),
                params_json: "{}".into(),
                ..Default::default()
            })
            .await;
        check_invalid(&mut problems, "Submit", name, got.map(|_| ()));
    }
    ensure!(
        problems.is_empty(),
        "identifiers not refused as invalid:\n{}",
        problems.join("\n")
    );
    stack.shutdown().await
}

fn check_invalid(
    problems: &mut Vec<String>,
    method: &str,
    id: &str,
    got: Result<(), tonic::Status>,
) {
    match got {
        Err(status) if status.code() == tonic::Code::InvalidArgument => {}
        Err(status) => problems.push(format!(
            "{method}({id:?}): {:?} {:?}, not INVALID_ARGUMENT",
            status.code(),
            status.message()
        )),
        Ok(()) => problems.push(format!("{method}({id:?}) was answered")),
    }
}

/// Streams a package (zip or tar.gz bytes) to DeployFunction, in 1 MiB
/// chunks as faasctl does.
async fn deploy_bytes(stack: &Stack, name: &str, package: Vec<u8>) -> Result<(), tonic::Status> {
    let spec = DeployFunctionRequest {
        part: Some(deploy_function_request::Part::Spec(FunctionSpec {
            name: name.into(),
            runtime: "python3".into(),
            ..Default::default()
        })),
    };
    let chunks: Vec<DeployFunctionRequest> = package
        .chunks(1 << 20)
        .map(|c| DeployFunctionRequest {
            part: Some(deploy_function_request::Part::Chunk(c.to_vec())),
        })
        .collect();
    FunctionServiceClient::new(stack.channel().await)
        .deploy_function(futures::stream::iter(std::iter::once(spec).chain(chunks)))
        .await
        .map(|_| ())
}

const HANDLER: &[u8] = b"def handler(event, context):\n    return event\n";

/// A tar.gz of `entries` (path, contents), plus a valid handler.py.
fn tar_gz(entries: &[(String, Vec<u8>)]) -> Vec<u8> {
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    let mut tar = tar::Builder::new(gz);
    let mut add = |path: &str, data: &[u8]| {
        let mut header = tar::Header::new_gnu();
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        header.set_entry_type(tar::EntryType::Regular);
        tar.append_data(&mut header, path, data)
            .expect("appending to a tar in memory");
    };
    add("handler.py", HANDLER);
    for (path, data) in entries {
        add(path, data);
    }
    tar.into_inner()
        .and_then(|gz| gz.finish())
        .expect("finishing a tar.gz in memory")
}

/// A tar.gz holding handler.py and `size` bytes of zeros: a few hundred KiB.
fn zeros_tar_gz(size: u64) -> Vec<u8> {
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    let mut tar = tar::Builder::new(gz);
    let mut header = tar::Header::new_gnu();
    header.set_size(HANDLER.len() as u64);
    header.set_mode(0o644);
    tar.append_data(&mut header, "handler.py", HANDLER)
        .expect("tar");
    let mut header = tar::Header::new_gnu();
    header.set_size(size);
    header.set_mode(0o644);
    tar.append_data(
        &mut header,
        "zeros.bin",
        std::io::Read::take(std::io::repeat(0), size),
    )
    .expect("tar");
    tar.into_inner().and_then(|gz| gz.finish()).expect("tar.gz")
}

/// A zip holding handler.py and `size` bytes of zeros, deflated.
fn zeros_zip(size: u64) -> Vec<u8> {
    let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let options = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated)
        .large_file(false);
    zip.start_file("handler.py", options).expect("zip");
    zip.write_all(HANDLER).expect("zip");
    zip.start_file("zeros.bin", options).expect("zip");
    let block = vec![0u8; 1 << 20];
    for _ in 0..(size >> 20) {
        zip.write_all(&block).expect("zip");
    }
    zip.finish().expect("zip").into_inner()
}

/// Findings 8 and 9 at deploy: a tar.gz of 300 MiB of zeros (~300 KiB
/// sent), the same as a zip, and three of them at once, are refused and
/// leave the control plane's memory bounded; packages shaped to hurt the
/// agent (2,100 nested directories, a 256-byte name, a file beside a
/// directory of the same name) are refused with INVALID_ARGUMENT at
/// deploy, before any agent sees them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn package_bombs_and_bad_shapes_are_refused_at_deploy() -> anyhow::Result<()> {
    let _serial = ONE_AT_A_TIME.lock().await;
    let stack = Stack::start(StackOptions {
        agents: 0,
        runtimes: vec!["python3"],
        ..StackOptions::default()
    })
    .await?;
    let mut problems = Vec::new();
    let cp = stack.controlplane_pid(0).context("control-plane pid")?;
    let bomb = 300u64 << 20;
    let tar_bomb = zeros_tar_gz(bomb);
    let zip_bomb = zeros_zip(bomb);
    eprintln!(
        "bombs: tar.gz {} KiB, zip {} KiB, each 300 MiB unpacked",
        tar_bomb.len() >> 10,
        zip_bomb.len() >> 10
    );
    let cases: Vec<(&str, Vec<Vec<u8>>, u64)> = vec![
        ("tar.gz bomb", vec![tar_bomb.clone()], 100 << 20),
        ("zip bomb", vec![zip_bomb], 100 << 20),
        (
            "three tar.gz bombs at once",
            vec![tar_bomb.clone(), tar_bomb.clone(), tar_bomb],
            200 << 20,
        ),
    ];
    for (what, packages, bound) in cases {
        let baseline = faas_tests::rss_bytes(cp).context("control-plane rss")?;
        let watch = RssWatch::start(cp, baseline + (3 << 30));
        let deploys = packages
            .into_iter()
            .enumerate()
            .map(|(i, p)| {
                let stack = &stack;
                async move { deploy_bytes(stack, &format!("bomb-{i}"), p).await }
            })
            .collect::<Vec<_>>();
        let outcomes = futures::future::join_all(deploys).await;
        let rss = watch.finish();
        eprintln!(
            "{what}: control plane {} → peak {} MiB; {:?}",
            rss.baseline >> 20,
            rss.peak >> 20,
            outcomes
                .iter()
                .map(|o| o.as_ref().map_err(|s| (s.code(), s.message().to_string())))
                .collect::<Vec<_>>()
        );
        if outcomes.iter().any(Result::is_ok) {
            problems.push(format!("{what}: accepted"));
        }
        if rss.growth() >= bound {
            problems.push(format!(
                "{what}: the control plane grew by {} MiB (bound {} MiB){}",
                rss.growth() >> 20,
                bound >> 20,
                if rss.killed {
                    ", killed by the test"
                } else {
                    ""
                }
            ));
        }
        if rss.killed {
            break;
        }
    }
    if stack
        .controlplane_pid(0)
        .is_some_and(|p| faas_tests::rss_bytes(p).is_some())
    {
        let deep = format!("{}f.py", "d/".repeat(2100));
        // (what it is, the package's files as (path, content))
        type Shape<'a> = (&'a str, Vec<(String, Vec<u8>)>);
        let shapes: Vec<Shape> = vec![
            (
                "2,100 nested directories",
                vec![(deep, b"x = 1\n".to_vec())],
            ),
            (
                "a 256-byte name",
                vec![(format!("{}.py", "n".repeat(253)), b"x = 1\n".to_vec())],
            ),
            (
                "a file beside a directory of the same name",
                vec![
                    ("lib".to_string(), b"file\n".to_vec()),
                    ("lib/mod.py".to_string(), b"x = 1\n".to_vec()),
                ],
            ),
        ];
        for (i, (what, entries)) in shapes.into_iter().enumerate() {
            let got = deploy_bytes(&stack, &format!("shape-{i}"), tar_gz(&entries)).await;
            match got {
                Err(status) if status.code() == tonic::Code::InvalidArgument => {
                    eprintln!("{what}: refused: {}", status.message())
                }
                Err(status) => problems.push(format!(
                    "{what}: {:?} {:?}, not INVALID_ARGUMENT",
                    status.code(),
                    status.message()
                )),
                Ok(()) => problems.push(format!("{what}: accepted")),
            }
        }
    }
    ensure!(
        problems.is_empty(),
        "deploy attacks not contained:\n{}",
        problems.join("\n")
    );
    stack.shutdown().await
}

/// Finding 14: what a function leaves on the node and in the registry.
/// While a call runs its io directory is not owned by the host's nobody
/// (65534, shared by every container and more); the package cache is not
/// readable by others and holds no `.partial` leftovers; after `fn rm` the
/// registry serves the function's manifest no more and the agent's cache
/// drops the package.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removed_functions_leave_nothing_behind() -> anyhow::Result<()> {
    let _serial = ONE_AT_A_TIME.lock().await;
    let stack = stack("no-preload", 1, 1).await?;
    deploy(
        &stack,
        "leftover",
        &attack_dir("hostile-io"),
        &["--timeout", "20s"],
    )?;
    let mut problems = Vec::new();
    let id = submit(&stack, "leftover", &json!({ "mode": "hold", "s": 3 })).await?;
    let deadline = Instant::now() + Duration::from_secs(15);
    let call_dir = stack
        .agent_state_dir(0)
        .join("spots")
        .join(format!("call-{id}"));
    let io_dir = loop {
        if call_dir.join("io").is_dir() {
            break Some(call_dir.join("io"));
        }
        if let Some(dir) = container_dir_of(&stack, "leftover") {
            break Some(dir.join("io"));
        }
        if Instant::now() > deadline {
            break None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    match io_dir.map(|d| std::fs::metadata(&d).map(|m| (d, m))) {
        Some(Ok((dir, meta))) => {
            eprintln!(
                "io directory {} owned by {}:{} mode {:o}",
                dir.display(),
                meta.uid(),
                meta.gid(),
                meta.mode() & 0o7777
            );
            if meta.uid() == UID_NOBODY {
                problems.push(format!(
                    "the call's io directory {} is owned by the host's nobody ({UID_NOBODY})",
                    dir.display()
                ));
            }
        }
        other => eprintln!("no io directory of the running call found ({other:?})"),
    }
    let call = wait_final(&stack, &id, Duration::from_secs(20) + GRACE).await?;
    ensure!(
        call.status() == CallStatus::Succeeded,
        "the call failed: {call:?}"
    );
    let function = FunctionServiceClient::new(stack.channel().await)
        .get_function(GetFunctionRequest {
            name: "leftover".into(),
            ..Default::default()
        })
        .await?
        .into_inner();
    let hex = function
        .package_digest
        .strip_prefix("sha256:")
        .context("package digest")?
        .to_string();
    let cache = stack.agent_state_dir(0).join("packages");
    let meta = std::fs::metadata(&cache)?;
    eprintln!(
        "package cache {} mode {:o}",
        cache.display(),
        meta.mode() & 0o7777
    );
    if meta.permissions().mode() & 0o007 != 0 {
        problems.push(format!(
            "the package cache {} is open to others (mode {:o})",
            cache.display(),
            meta.mode() & 0o7777
        ));
    }
    let manifest = format!(
        "/v2/faas/functions/leftover/manifests/v{}",
        function.version
    );
    ensure!(
        stack.registry_status(&manifest).await? == 200,
        "the registry does not serve {manifest} before the removal"
    );
    FunctionServiceClient::new(stack.channel().await)
        .delete_function(DeleteFunctionRequest {
            name: "leftover".into(),
            ..Default::default()
        })
        .await?;
    // The leader accepted the earlier call against its own copy of the
    // function: gone from etcd, it is gone for calls at once.
    let refused = CallServiceClient::new(stack.channel().await)
        .invoke(InvokeRequest {
            function: "leftover".into(),
            params_json: "{}".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::NotFound, "{refused:?}");
    let deadline = Instant::now() + Duration::from_secs(15);
    let (mut manifest_status, mut cached) = (0, true);
    while Instant::now() < deadline {
        manifest_status = stack.registry_status(&manifest).await?;
        cached = cache.join(&hex).exists();
        if manifest_status == 404 && !cached {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let blob = stack
        .registry_status(&format!(
            "/v2/faas/functions/leftover/blobs/{}",
            function.package_digest
        ))
        .await?;
    eprintln!("after fn rm: manifest {manifest_status}, blob {blob}, cached {cached}");
    if manifest_status != 404 {
        problems.push(format!(
            "after fn rm the registry still answers {manifest_status} for {manifest}"
        ));
    }
    if cached {
        problems.push(format!(
            "after fn rm the agent still caches the package {}",
            cache.join(&hex).display()
        ));
    }
    let partial: Vec<String> = std::fs::read_dir(&cache)?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".partial"))
        .collect();
    if !partial.is_empty() {
        problems.push(format!("unfinished extractions left: {partial:?}"));
    }
    ensure!(problems.is_empty(), "leftovers:\n{}", problems.join("\n"));
    stack.shutdown().await
}

/// Finding 15: an error message and logs carrying OSC 52 (clipboard
/// write), OSC 0 (window title) and CSI sequences. What faasctl prints of
/// them (invoke, call get, call logs) holds no raw ESC byte, while the API
/// does return the function's text as it is (the attack is real).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faasctl_prints_no_terminal_escapes() -> anyhow::Result<()> {
    let _serial = ONE_AT_A_TIME.lock().await;
    let stack = stack("no-preload", 1, 1).await?;
    deploy(&stack, "escapes", &attack_dir("escapes"), &[])?;
    let mut problems = Vec::new();
    let mut printed = |what: String, out: std::process::Output| {
        for (stream, bytes) in [("stdout", &out.stdout), ("stderr", &out.stderr)] {
            if bytes.contains(&0x1b) || bytes.contains(&0x07) {
                problems.push(format!(
                    "faasctl {what} printed a control character on {stream}: {:?}",
                    String::from_utf8_lossy(bytes)
                ));
            }
        }
    };
    let out = stack.faasctl().args(["invoke", "escapes"]).output()?;
    printed("invoke (failing)".into(), out);
    let out = stack
        .faasctl()
        .args(["invoke", "escapes", "--data", r#"{"fail": false}"#])
        .output()?;
    printed("invoke (succeeding)".into(), out);
    let call = run_call(&stack, "escapes", json!({}), SERVING).await?;
    let text = visible_text(&stack, &call).await?;
    ensure!(
        text.contains("\x1b]52;"),
        "the API did not return the function's text as it was: {}",
        excerpt(&text)
    );
    for args in [
        vec!["call", "get", call.id.as_str()],
        vec!["call", "logs", call.id.as_str()],
        vec!["call", "ls"],
    ] {
        let out = stack.faasctl().args(&args).output()?;
        printed(args.join(" "), out);
    }
    ensure!(
        problems.is_empty(),
        "terminal escapes reached the terminal:\n{}",
        problems.join("\n")
    );
    stack.shutdown().await
}

/// Finding 16: /faas/io/input.json is the same kind of file for a cold
/// call and a preloaded one (under preload-function and preload-runtime),
/// and so is every other entry of the io directory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_input_looks_the_same_whatever_the_start_kind() -> anyhow::Result<()> {
    let _serial = ONE_AT_A_TIME.lock().await;
    let mut seen: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut kinds = BTreeSet::new();
    for policy in ["preload-function", "preload-runtime"] {
        let stack = stack(policy, 2, 1).await?;
        deploy(
            &stack,
            "startkind",
            &attack_dir("startkind"),
            &["--timeout", "10s"],
        )?;
        // Both spots preloaded, then four calls at once: two take the
        // preloads, two run cold on a spot freed meanwhile.
        for round in 0..3 {
            wait_spots(&stack, Duration::from_secs(60), "preloaded", |s| {
                s.iter().all(|s| {
                    matches!(
                        s.state(),
                        SpotState::PreloadedFunction | SpotState::PreloadedRuntime
                    )
                })
            })
            .await?;
            let mut ids = Vec::new();
            for i in 0..4 {
                ids.push(submit(&stack, "startkind", &json!({ "i": i })).await?);
            }
            for id in ids {
                let call = wait_final(&stack, &id, Duration::from_secs(10) + GRACE).await?;
                ensure!(call.status() == CallStatus::Succeeded, "{policy}: {call:?}");
                let kind = call
                    .timings
                    .as_ref()
                    .map(|t| t.start_kind())
                    .unwrap_or(StartKind::Unspecified);
                kinds.insert((policy, kind));
                seen.entry(format!("{kind:?}"))
                    .or_default()
                    .insert(call.result_json.clone());
            }
            let policy_kinds: BTreeSet<_> = kinds.iter().filter(|(p, _)| *p == policy).collect();
            if policy_kinds.len() >= 2 || round == 2 {
                break;
            }
        }
        stack.shutdown().await?;
    }
    eprintln!("start kinds: {kinds:?}; reports: {seen:#?}");
    ensure!(
        kinds.iter().any(|(_, k)| *k == StartKind::Cold)
            && kinds.iter().any(|(_, k)| *k != StartKind::Cold),
        "the calls did not start both cold and preloaded: {kinds:?}"
    );
    let distinct: BTreeSet<&String> = seen.values().flatten().collect();
    ensure!(
        distinct.len() == 1,
        "the io directory differs by start kind: {seen:#?}"
    );
    Ok(())
}
