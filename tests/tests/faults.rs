//! Fault injection under a steady load of calls (issue 5): an etcd member
//! killed, a follower control plane killed, containerd restarted under an
//! agent, an agent killed, and a rolling restart of every replica and
//! agent. In every case each call acknowledged to a client (Submit returned
//! its id) ends with a final status, and the time to recover is measured and
//! printed (`cargo test --release -p faas-tests --test faults -- --nocapture`).
//! The leader's loss (and an agent's, call by call) is covered by
//! failover.rs.
//!
//! The tests are heavy (up to 3 etcd members, 2 control planes, 2 agents
//! and 2 containerds on a 2-core machine): they run one at a time.

use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use faas_proto::v1::call_service_client::CallServiceClient;
use faas_proto::v1::{Call, CallStatus, GetCallRequest};
use faas_tests::{fixture_dir, invoke_succeeded, submit_to_any, ClientAuth, Stack, StackOptions};
use tokio::task::JoinHandle;

/// Held by each test for its whole run: the stacks must not overlap.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis() as i64
}

fn deploy(stack: &Stack, functions: &[(&str, &str)]) {
    for (name, fixture) in functions {
        stack
            .deploy(name, "python3", &fixture_dir(fixture), &[])
            .expect("deploying a fixture");
    }
}

/// What a steady load saw: the calls acknowledged (id, when) and how many
/// submissions no replica accepted.
struct LoadReport {
    acknowledged: Vec<(String, Instant)>,
    refused: usize,
    started: Instant,
}

impl LoadReport {
    /// The longest time without an acknowledged call, from the load's start
    /// (the time the cluster could not take calls, plus one interval).
    fn longest_gap(&self) -> Duration {
        let mut last = self.started;
        let mut longest = Duration::ZERO;
        for (_, at) in &self.acknowledged {
            longest = longest.max(*at - last);
            last = *at;
        }
        longest
    }
}

/// A call every ~100 ms for `length`, one in three a 0.5 s sleep (so calls
/// are running when the fault hits), submitted to the replicas in turn; a
/// replica that refuses is followed by the next one, as a client would.
fn steady_load(auth: ClientAuth, urls: Vec<String>, length: Duration) -> JoinHandle<LoadReport> {
    tokio::spawn(async move {
        let mut acknowledged = Vec::new();
        let mut refused = 0;
        let started = Instant::now();
        let mut i = 0usize;
        while started.elapsed() < length {
            let (function, params) = if i.is_multiple_of(3) {
                ("sleeps", r#"{"seconds": 0.5}"#)
            } else {
                ("hello", r#"{"name": "load"}"#)
            };
            match submit_to_any(&auth, &urls, i, function, params).await {
                Some(id) => acknowledged.push((id, Instant::now())),
                None => refused += 1,
            }
            i += 1;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        LoadReport {
            acknowledged,
            refused,
            started,
        }
    })
}

fn is_final(call: &Call) -> bool {
    call.status().is_final()
}

/// Waits until every acknowledged call is final (asking `url`, retrying
/// through transient errors); fails naming a call stuck after `within`.
/// Returns the final calls.
async fn wait_all_final(
    auth: &ClientAuth,
    url: &str,
    ids: &[(String, Instant)],
    within: Duration,
) -> Vec<Call> {
    let mut client = CallServiceClient::new(auth.channel(url));
    let deadline = Instant::now() + within;
    let mut finals = Vec::new();
    for (id, _) in ids {
        let call = loop {
            let last = match client.get_call(GetCallRequest { id: id.clone() }).await {
                Ok(call) if is_final(call.get_ref()) => break call.into_inner(),
                Ok(call) => format!("{:?}", call.into_inner()),
                Err(status) => format!("GetCall: {status:?}"),
            };
            assert!(
                Instant::now() < deadline,
                "acknowledged call {id} not final after {within:?}: {last}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        finals.push(call);
    }
    finals
}

/// Outcome counts, e.g. `{"Succeeded": 80, "Failed platform": 2}`.
fn outcomes(calls: &[Call]) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for call in calls {
        let key = match &call.error {
            Some(e) => {
                eprintln!(
                    "call {} {:?} on {}: {}: {}\n{}",
                    call.id,
                    call.status(),
                    call.node,
                    e.reason,
                    e.message,
                    e.log_tail
                );
                format!("{:?} {}", call.status(), e.reason)
            }
            None => format!("{:?}", call.status()),
        };
        *counts.entry(key).or_default() += 1;
    }
    counts
}

/// Fails unless every one of the `total` final calls succeeded.
fn assert_all_succeeded(counts: &HashMap<String, usize>, total: usize) {
    assert_eq!(
        counts.get("Succeeded").copied().unwrap_or(0),
        total,
        "every acknowledged call should succeed: {counts:?}"
    );
}

/// Runs one call of each function on every node (the others drained), so
/// that the runtime image is pulled everywhere before the fault: a first
/// pull takes seconds and would blur the measurement.
async fn warm_up(stack: &Stack, url: &str, agents: usize) {
    let faasctl = |args: &[&str]| {
        let out = stack
            .faasctl()
            .args(args)
            .output()
            .expect("running faasctl");
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    // The warm-up pays the first pull and unpack on purpose, which takes
    // seconds on a loaded machine: not the load's 5 s deadline.
    let mut client = CallServiceClient::new(stack.auth.channel_with(
        url,
        Some(&stack.auth.token),
        Some(Duration::from_secs(120)),
    ));
    for target in 0..agents {
        for other in (0..agents).filter(|o| *o != target) {
            faasctl(&["node", "drain", &stack.agent_node(other)]);
        }
        for (function, params) in [("hello", "{}"), ("sleeps", r#"{"seconds": 0.1}"#)] {
            let started = Instant::now();
            let call = invoke_succeeded(&mut client, function, params)
                .await
                .expect("warm-up call");
            eprintln!(
                "warm-up: {function} on {} in {:?}",
                call.node,
                started.elapsed()
            );
            assert_eq!(call.node, stack.agent_node(target));
        }
        for other in (0..agents).filter(|o| *o != target) {
            faasctl(&["node", "undrain", &stack.agent_node(other)]);
        }
    }
}

/// The Raft leader of a 3-member etcd is killed with SIGKILL under load and
/// restarted 6 s later: the control planes keep working through the other
/// two members, and every acknowledged call succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_an_etcd_member_under_load_loses_no_acknowledged_call() -> anyhow::Result<()> {
    let _serial = ONE_AT_A_TIME.lock().await;
    let mut stack = Stack::start(StackOptions {
        etcd_members: 3,
        controlplanes: 2,
        agents: 2,
        containerd_per_agent: true,
        runtimes: vec!["python3"],
        // Every call starts a container: the restart hits container
        // creation as well as running calls, and a container still there
        // once the calls are done is a leak, not a preload.
        policy: Some("no-preload".into()),
        ..StackOptions::default()
    })
    .await?;
    deploy(&stack, &[("hello", "py-hello"), ("sleeps", "py-sleep")]);
    let urls = vec![stack.controlplane_url(0), stack.controlplane_url(1)];

    let load = steady_load(stack.auth.clone(), urls.clone(), Duration::from_secs(11));
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let victim = stack.etcd_leader_member().await?;
    let killed_at = Instant::now();
    stack.kill_etcd_member(victim);
    tokio::time::sleep(Duration::from_secs(6)).await;
    stack.start_etcd_member(victim).await?;
    let rejoined = killed_at.elapsed();
    let report = load.await?;

    let first_after = report
        .acknowledged
        .iter()
        .filter(|(_, at)| *at > killed_at)
        .map(|(_, at)| *at - killed_at)
        .min()
        .expect("calls were acknowledged after the kill");
    let finals = wait_all_final(
        &stack.auth,
        &urls[0],
        &report.acknowledged,
        Duration::from_secs(90),
    )
    .await;
    let counts = outcomes(&finals);
    eprintln!(
        "etcd member loss (the Raft leader, etcd-{victim}): {} calls acknowledged, {} refused; \
         first acknowledged {first_after:?} after the kill; longest gap between acknowledged \
         calls {:?}; member rejoined {rejoined:?} after the kill; outcomes {counts:?}",
        report.acknowledged.len(),
        report.refused,
        report.longest_gap(),
    );
    assert!(report.acknowledged.len() > 40, "too few calls acknowledged");
    assert_all_succeeded(&counts, finals.len());
    // The member stays down 6 s. Typically the gap is 1.3-1.6 s (service
    // comes back through the other two members); once, on a loaded CI run,
    // a replica's request hung 5 s on the leaderless etcd pair. Bounded
    // well below an outage either way.
    assert!(
        report.longest_gap() < Duration::from_secs(10),
        "no call accepted for {:?} (the member was down 6 s)",
        report.longest_gap()
    );
    // shutdown() checks that nothing is left in either containerd.
    stack.shutdown().await
}

/// A follower control plane killed with SIGKILL under load: clients retry on
/// the leader, nothing else changes; restarted, it serves again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_a_follower_under_load_changes_nothing_for_calls() -> anyhow::Result<()> {
    let _serial = ONE_AT_A_TIME.lock().await;
    let mut stack = Stack::start(StackOptions {
        controlplanes: 2,
        agents: 2,
        runtimes: vec!["python3"],
        ..StackOptions::default()
    })
    .await?;
    deploy(&stack, &[("hello", "py-hello"), ("sleeps", "py-sleep")]);
    let leader = stack.leader_index().await?;
    let follower = 1 - leader;
    // The follower first: half the submissions go to it, then to the leader
    // once it is gone.
    let urls = vec![
        stack.controlplane_url(follower),
        stack.controlplane_url(leader),
    ];

    let load = steady_load(stack.auth.clone(), urls, Duration::from_secs(8));
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let killed_at = Instant::now();
    stack.kill_controlplane(follower);
    let report = load.await?;
    let leader_after = stack.leader_index().await?;

    let finals = wait_all_final(
        &stack.auth,
        &stack.controlplane_url(leader),
        &report.acknowledged,
        Duration::from_secs(60),
    )
    .await;
    let counts = outcomes(&finals);
    let gap_after_kill = report
        .acknowledged
        .windows(2)
        .filter(|w| w[1].1 > killed_at)
        .map(|w| w[1].1 - w[0].1)
        .max()
        .unwrap_or_default();
    eprintln!(
        "follower loss: {} calls acknowledged, {} refused; longest gap between acknowledged \
         calls {:?} ({gap_after_kill:?} after the kill); outcomes {counts:?}",
        report.acknowledged.len(),
        report.refused,
        report.longest_gap(),
    );
    assert_eq!(leader_after, leader, "the leader changed");
    assert_eq!(
        report.refused, 0,
        "a submission was refused by every replica"
    );
    assert_all_succeeded(&counts, finals.len());
    assert!(
        gap_after_kill < Duration::from_secs(2),
        "calls were held up {gap_after_kill:?} by the follower's loss"
    );

    // Back as a follower, it serves the API again.
    stack.start_controlplane(follower).await?;
    let mut client = CallServiceClient::new(stack.channel_to(&stack.controlplane_url(follower)));
    invoke_succeeded(&mut client, "hello", r#"{"name":"back"}"#).await?;
    assert_eq!(stack.leader_index().await?, leader);
    stack.shutdown().await
}

/// containerd under an agent is killed with SIGKILL and started again under
/// load (each agent has its own containerd). Calls running at that instant
/// may fail, honestly; none is stuck, the agent serves again at its usual
/// latency, and nothing leaks in containerd.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarting_containerd_under_load_leaves_no_call_stuck_and_nothing_behind(
) -> anyhow::Result<()> {
    let _serial = ONE_AT_A_TIME.lock().await;
    let mut stack = Stack::start(StackOptions {
        agents: 2,
        containerd_per_agent: true,
        runtimes: vec!["python3"],
        // Every call starts a container: the restart hits container
        // creation as well as running calls, and a container still there
        // once the calls are done is a leak, not a preload.
        policy: Some("no-preload".into()),
        ..StackOptions::default()
    })
    .await?;
    deploy(&stack, &[("hello", "py-hello"), ("sleeps", "py-sleep")]);
    let url = stack.controlplane_url(0);
    let victim_node = stack.agent_node(0);
    warm_up(&stack, &url, 2).await;

    let load = steady_load(
        stack.auth.clone(),
        vec![url.clone()],
        Duration::from_secs(12),
    );
    tokio::time::sleep(Duration::from_millis(3000)).await;
    let restart_ms = now_ms();
    let restarted_at = Instant::now();
    stack.restart_containerd(stack.agent_containerd(0)).await?;
    let containerd_back = restarted_at.elapsed();
    let report = load.await?;

    let finals = wait_all_final(
        &stack.auth,
        &url,
        &report.acknowledged,
        Duration::from_secs(90),
    )
    .await;
    let counts = outcomes(&finals);
    let on_victim: Vec<&Call> = finals.iter().filter(|c| c.node == victim_node).collect();
    // Latency (accepted to finished) of the quick calls on the victim node,
    // before the restart and from 2 s after it.
    let latency =
        |call: &&Call| Duration::from_millis((call.finished_at_ms - call.created_at_ms) as u64);
    let median = |mut v: Vec<Duration>| {
        v.sort();
        v.get(v.len() / 2).copied()
    };
    let quick_ok = |c: &&&Call| c.function == "hello" && c.status() == CallStatus::Succeeded;
    let before = median(
        on_victim
            .iter()
            .filter(quick_ok)
            .filter(|c| c.finished_at_ms < restart_ms)
            .map(latency)
            .collect(),
    );
    let after = median(
        on_victim
            .iter()
            .filter(quick_ok)
            .filter(|c| c.created_at_ms > restart_ms + 2000)
            .map(latency)
            .collect(),
    );
    // Recovery: from the kill to the end of the first call on this node
    // that was accepted after the kill and succeeded.
    let recovered = on_victim
        .iter()
        .filter(|c| c.created_at_ms >= restart_ms && c.status() == CallStatus::Succeeded)
        .map(|c| c.finished_at_ms - restart_ms)
        .min()
        .map(|ms| Duration::from_millis(ms as u64));
    let failed: Vec<String> = finals
        .iter()
        .filter(|c| c.status() != CallStatus::Succeeded)
        .map(|c| {
            format!(
                "{} on {} created {:+} ms from the restart: {:?}",
                c.function,
                c.node,
                c.created_at_ms - restart_ms,
                c.error
            )
        })
        .collect();
    eprintln!(
        "containerd restart under {victim_node}: containerd answering again {containerd_back:?} \
         after SIGKILL; {} calls acknowledged ({} on {victim_node}), {} refused; outcomes \
         {counts:?}; first call accepted after the kill to succeed on {victim_node} finished \
         {recovered:?} after the kill; median latency of quick calls there {before:?} before, \
         {after:?} after; longest gap between acknowledged calls {:?}; failures: {failed:#?}",
        report.acknowledged.len(),
        on_victim.len(),
        report.refused,
        report.longest_gap(),
    );
    for call in &finals {
        if let Some(error) = &call.error {
            assert!(
                !error.reason.is_empty(),
                "a failed call gives no reason: {call:?}"
            );
        }
    }
    let recovered = recovered.expect("the node ran calls again after the restart");
    assert!(recovered < Duration::from_secs(10), "{recovered:?}");
    if let (Some(before), Some(after)) = (before, after) {
        assert!(
            after < before * 3 + Duration::from_millis(500),
            "latency on {victim_node} after the restart {after:?}, before {before:?}"
        );
    }

    // The node still takes work at its usual pace: with the other node
    // drained, every call runs on it.
    let other = stack.agent_node(1);
    let out = stack.faasctl().args(["node", "drain", &other]).output()?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut client = CallServiceClient::new(stack.channel_to(&url));
    for _ in 0..5 {
        let call = invoke_succeeded(&mut client, "hello", "{}").await?;
        assert_eq!(call.node, victim_node);
    }
    stack.assert_no_leftovers(Duration::from_secs(20)).await?;
    stack.shutdown().await
}

/// A rolling restart under load: each control-plane replica, then each
/// agent, stopped with SIGTERM and started again, one at a time. No
/// acknowledged call fails, and the cluster keeps taking calls throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_under_load_fails_no_call() -> anyhow::Result<()> {
    let _serial = ONE_AT_A_TIME.lock().await;
    let mut stack = Stack::start(StackOptions {
        controlplanes: 2,
        agents: 2,
        runtimes: vec!["python3"],
        ..StackOptions::default()
    })
    .await?;
    deploy(&stack, &[("hello", "py-hello"), ("sleeps", "py-sleep")]);
    let urls = vec![stack.controlplane_url(0), stack.controlplane_url(1)];
    warm_up(&stack, &urls[0], 2).await;

    let load = steady_load(stack.auth.clone(), urls.clone(), Duration::from_secs(30));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut steps = Vec::new();
    for i in 0..2 {
        let started = Instant::now();
        assert!(
            stack.stop_controlplane(i).await,
            "replica {i} did not stop on SIGTERM"
        );
        stack.start_controlplane(i).await?;
        steps.push(format!("replica {i} {:?}", started.elapsed()));
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    for i in 0..2 {
        let started = Instant::now();
        assert!(
            stack.stop_agent(i).await,
            "agent {i} did not stop on SIGTERM"
        );
        stack.start_agent(i).await;
        steps.push(format!("agent {i} {:?}", started.elapsed()));
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let report = load.await?;
    let finals = wait_all_final(
        &stack.auth,
        &urls[0],
        &report.acknowledged,
        Duration::from_secs(60),
    )
    .await;
    let counts = outcomes(&finals);
    eprintln!(
        "rolling restart ({}): {} calls acknowledged, {} refused; longest gap between \
         acknowledged calls {:?}; outcomes {counts:?}",
        steps.join(", "),
        report.acknowledged.len(),
        report.refused,
        report.longest_gap(),
    );
    assert!(
        report.acknowledged.len() > 100,
        "too few calls acknowledged"
    );
    assert_all_succeeded(&counts, finals.len());
    assert!(
        report.longest_gap() < Duration::from_secs(3),
        "no call accepted for {:?}",
        report.longest_gap()
    );
    stack.shutdown().await
}

/// An agent killed with SIGKILL under load, its functions deployed
/// --idempotent: the calls it was running run again on the other node, so
/// every acknowledged call succeeds; the restarted agent cleans up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_an_agent_under_load_loses_no_idempotent_call() -> anyhow::Result<()> {
    let _serial = ONE_AT_A_TIME.lock().await;
    let mut stack = Stack::start(StackOptions {
        agents: 2,
        containerd_per_agent: true,
        runtimes: vec!["python3"],
        ..StackOptions::default()
    })
    .await?;
    for (name, fixture) in [("hello", "py-hello"), ("sleeps", "py-sleep")] {
        stack.deploy(name, "python3", &fixture_dir(fixture), &["--idempotent"])?;
    }
    let url = stack.controlplane_url(0);
    warm_up(&stack, &url, 2).await;

    let load = steady_load(
        stack.auth.clone(),
        vec![url.clone()],
        Duration::from_secs(10),
    );
    tokio::time::sleep(Duration::from_millis(3000)).await;
    let killed_at_ms = now_ms();
    stack.kill_agent(0).await;
    let report = load.await?;
    let finals = wait_all_final(
        &stack.auth,
        &url,
        &report.acknowledged,
        Duration::from_secs(60),
    )
    .await;
    let counts = outcomes(&finals);
    let victim = stack.agent_node(0);
    let rerun: Vec<&Call> = finals.iter().filter(|c| c.attempts > 1).collect();
    let last_rerun_done = rerun
        .iter()
        .map(|c| c.finished_at_ms)
        .max()
        .map(|at| Duration::from_millis((at - killed_at_ms).max(0) as u64));
    eprintln!(
        "agent loss under load: {} calls acknowledged, {} refused; {} ran again after \
         {victim} died (the last finished {:?} after the kill); longest gap between \
         acknowledged calls {:?}; outcomes {counts:?}",
        report.acknowledged.len(),
        report.refused,
        rerun.len(),
        last_rerun_done,
        report.longest_gap(),
    );
    assert_all_succeeded(&counts, finals.len());
    assert!(
        rerun.iter().all(|c| c.node != victim),
        "a call ran again on the dead node"
    );
    assert_eq!(report.refused, 0, "a submission was refused");
    stack.start_agent(0).await;
    // shutdown() checks that nothing is left in either containerd.
    stack.shutdown().await
}
