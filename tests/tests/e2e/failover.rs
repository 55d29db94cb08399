//! Nothing acknowledged is lost when the leader dies: under a steady load
//! of calls, the leading control-plane replica is killed with SIGKILL; the
//! other takes over, and every call that was acknowledged (Submit returned
//! its id) ends with its result.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use faas_proto::v1::call_service_client::CallServiceClient;
use faas_proto::v1::{CallStatus, GetCallRequest, InvokeRequest};
use faas_tests::{fixture_dir, invoke_succeeded, submit_to_any, wait_running, Stack, StackOptions};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_leader_under_load_loses_no_acknowledged_call() -> anyhow::Result<()> {
    let mut stack = Stack::start(StackOptions {
        controlplanes: 2,
        spots: 2,
        runtimes: vec!["python3"],
        ..StackOptions::default()
    })
    .await?;
    for (name, fixture) in [("hello", "py-hello"), ("sleeps", "py-sleep")] {
        stack.deploy(name, "python3", &fixture_dir(fixture), &[])?;
    }
    let leader = stack.leader_index().await?;
    let follower = 1 - leader;
    let urls = [
        stack.controlplane_url(follower),
        stack.controlplane_url(leader),
    ];

    // Steady load: a call every 100 ms (some of them 0.5 s long, so calls
    // are running when the leader dies), through the follower first.
    let load = tokio::spawn({
        let urls = urls.clone();
        let auth = stack.auth.clone();
        async move {
            let mut acknowledged = Vec::new();
            let mut refused = 0;
            let started = Instant::now();
            let mut i = 0u32;
            while started.elapsed() < Duration::from_secs(9) {
                let (function, params) = if i.is_multiple_of(3) {
                    ("sleeps", r#"{"seconds": 0.5}"#)
                } else {
                    ("hello", r#"{"name": "load"}"#)
                };
                i += 1;
                match submit_to_any(&auth, &urls, 0, function, params).await {
                    Some(id) => acknowledged.push((id, Instant::now())),
                    None => refused += 1,
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            (acknowledged, refused)
        }
    });

    tokio::time::sleep(Duration::from_millis(2500)).await;
    let killed_at = Instant::now();
    stack.kill_controlplane(leader);
    let (acknowledged, refused) = load.await?;
    assert!(
        acknowledged.len() > 40,
        "only {} calls acknowledged",
        acknowledged.len()
    );

    // The first call acknowledged after the kill tells how long the
    // cluster could not take calls.
    let gap = acknowledged
        .iter()
        .filter(|(_, at)| *at > killed_at)
        .map(|(_, at)| *at - killed_at)
        .min()
        .expect("calls were acknowledged after the failover");
    eprintln!(
        "failover: {} calls acknowledged, {refused} refused; first acknowledged {:?} after the kill",
        acknowledged.len(),
        gap
    );
    assert!(
        gap < Duration::from_secs(10),
        "no call accepted for {gap:?}"
    );

    // Every acknowledged call ends, with its result.
    let mut client = CallServiceClient::new(stack.channel_to(&stack.controlplane_url(follower)));
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut statuses: HashMap<String, usize> = HashMap::new();
    for (id, _) in &acknowledged {
        let call = loop {
            let call = client
                .get_call(GetCallRequest { id: id.clone() })
                .await?
                .into_inner();
            if call.status().is_final() {
                break call;
            }
            assert!(Instant::now() < deadline, "call {id} stuck: {call:?}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        let key = match &call.error {
            Some(e) => format!("{:?} {}", call.status(), e.reason),
            None => format!("{:?}", call.status()),
        };
        *statuses.entry(key).or_default() += 1;
    }
    eprintln!("failover: outcomes {statuses:?}");
    assert_eq!(
        statuses.get("Succeeded").copied().unwrap_or(0),
        acknowledged.len(),
        "every acknowledged call should succeed: {statuses:?}"
    );

    // The old leader comes back as a follower and serves the API.
    stack.start_controlplane(leader).await?;
    let mut client = CallServiceClient::new(stack.channel_to(&stack.controlplane_url(leader)));
    invoke_succeeded(&mut client, "hello", r#"{"name":"back"}"#).await?;
    stack.shutdown().await
}

/// Finished calls do not pile up in etcd: past the retention count the
/// oldest finished ones (and their logs) are deleted, the newest kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_calls_are_removed_past_the_retention_count() -> anyhow::Result<()> {
    let stack = Stack::start(StackOptions {
        runtimes: vec!["python3"],
        controlplane_args: vec![
            "--call-retention-count".into(),
            "5".into(),
            "--call-retention-every".into(),
            "1s".into(),
        ],
        ..StackOptions::default()
    })
    .await?;
    stack.deploy("hello", "python3", &fixture_dir("py-hello"), &[])?;
    let mut client = CallServiceClient::new(stack.channel().await);
    let mut ids = Vec::new();
    for _ in 0..12 {
        let call = invoke_succeeded(&mut client, "hello", "{}").await?;
        ids.push(call.id);
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let listed = client
            .list_calls(faas_proto::v1::ListCallsRequest {
                page_size: 100,
                ..Default::default()
            })
            .await?
            .into_inner()
            .calls;
        if listed.len() == 5 {
            let kept: Vec<&str> = listed.iter().map(|c| c.id.as_str()).collect();
            let newest: Vec<&str> = ids.iter().rev().take(5).map(String::as_str).collect();
            assert_eq!(kept, newest, "the newest calls are the ones kept");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "still {} calls listed",
            listed.len()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let gone = client.get_call(GetCallRequest { id: ids[0].clone() }).await;
    assert_eq!(gone.unwrap_err().code(), tonic::Code::NotFound);
    let logs = client
        .get_call_logs(faas_proto::v1::GetCallLogsRequest { id: ids[0].clone() })
        .await;
    assert_eq!(logs.unwrap_err().code(), tonic::Code::NotFound);
    stack.shutdown().await
}

/// Checks that `drained` is listed as draining and that `calls` calls all
/// succeed elsewhere.
async fn assert_drained_and_avoided(
    stack: &Stack,
    drained: &str,
    calls: usize,
) -> anyhow::Result<()> {
    let nodes = stack.list_nodes().await?;
    let node = nodes
        .nodes
        .iter()
        .find(|n| n.name == drained)
        .expect("listed");
    assert!(node.draining, "not draining: {node:?}");
    let mut client = CallServiceClient::new(stack.channel().await);
    for _ in 0..calls {
        let call = invoke_succeeded(&mut client, "hello", "{}").await?;
        assert_ne!(call.node, drained, "a drained node got a call");
    }
    Ok(())
}

/// A drained node takes no new work and gives its preloads back; the rest
/// of the cluster serves every call; the drain outlives the agent's restart
/// and the control plane's; undrained, it takes work again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drained_node_takes_no_new_work() -> anyhow::Result<()> {
    let mut stack = Stack::start(StackOptions {
        agents: 2,
        runtimes: vec!["python3"],
        ..StackOptions::default()
    })
    .await?;
    stack.deploy("hello", "python3", &fixture_dir("py-hello"), &[])?;
    let drained = stack.agent_node(0);
    let out = stack.faasctl().args(["node", "drain", &drained]).output()?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_drained_and_avoided(&stack, &drained, 6).await?;
    // Its preloads were cleared: it holds no container.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let leftovers = stack.containerd_leftovers().await?;
        let on_drained: Vec<_> = leftovers
            .iter()
            .filter(|l| l.starts_with("container ") && !l.contains("(namespace"))
            .collect();
        if on_drained.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "drained node still holds {on_drained:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The drain is recorded: a restarted agent and a restarted (new
    // leader) control plane keep the node out of the pool.
    stack.kill_agent(0).await;
    stack.start_agent(0).await;
    stack.kill_controlplane(0);
    stack.start_controlplane(0).await?;
    stack.wait_agents_connected(Duration::from_secs(20)).await?;
    assert_drained_and_avoided(&stack, &drained, 4).await?;
    let unknown = stack
        .faasctl()
        .args(["node", "drain", "no-such-node"])
        .output()?;
    assert_eq!(unknown.status.code(), Some(3), "NOT_FOUND exit code");

    let out = stack
        .faasctl()
        .args(["node", "undrain", &drained])
        .output()?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let nodes = stack.list_nodes().await?;
    assert!(!nodes.nodes.iter().any(|n| n.draining), "{nodes:?}");
    stack.shutdown().await
}

/// Two nodes of one spot each (no preloads), `sleeps` deployed with `flags`.
async fn two_single_spot_nodes_with_sleeps(flags: &[&str]) -> anyhow::Result<Stack> {
    let stack = Stack::start(StackOptions {
        agents: 2,
        spots: 1,
        runtimes: vec!["python3"],
        policy: Some("no-preload".into()),
        ..StackOptions::default()
    })
    .await?;
    stack.deploy("sleeps", "python3", &fixture_dir("py-sleep"), flags)?;
    Ok(stack)
}

/// Submits two 3 s calls on a 2-node cluster (1 spot each), kills the node
/// of the first with SIGKILL once it runs, and returns the first call's
/// final record, how long after the kill it was final, and the victim.
async fn kill_the_node_of_a_running_call(
    stack: &mut Stack,
    function: &str,
) -> anyhow::Result<(faas_proto::v1::Call, Duration, String)> {
    let mut client = CallServiceClient::new(stack.channel().await);
    let mut ids = Vec::new();
    for _ in 0..2 {
        ids.push(
            client
                .submit(InvokeRequest {
                    function: function.into(),
                    params_json: r#"{"seconds": 3}"#.into(),
                    ..Default::default()
                })
                .await?
                .into_inner()
                .call_id,
        );
    }
    // Both nodes run one call each; then the first call's node dies.
    let deadline = Instant::now() + Duration::from_secs(30);
    let victim = loop {
        let c = client
            .get_call(GetCallRequest { id: ids[0].clone() })
            .await?
            .into_inner();
        if c.status() == CallStatus::Running && !c.node.is_empty() {
            break c.node;
        }
        assert!(Instant::now() < deadline, "call never ran: {c:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let victim_index = if victim == stack.agent_node(0) { 0 } else { 1 };
    let killed_at = Instant::now();
    stack.kill_agent(victim_index).await;
    let mut resolved = None;
    let lost = loop {
        let c = client
            .get_call(GetCallRequest { id: ids[0].clone() })
            .await?
            .into_inner();
        if resolved.is_none() && (c.node != victim || c.status() != CallStatus::Running) {
            // Failed, or handed to another node.
            resolved = Some(killed_at.elapsed());
        }
        if c.status().is_final() {
            break c;
        }
        assert!(
            killed_at.elapsed() < Duration::from_secs(30),
            "never resolved: {c:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // The other call, on the surviving node, succeeds.
    let other = loop {
        let c = client
            .get_call(GetCallRequest { id: ids[1].clone() })
            .await?
            .into_inner();
        if c.status().is_final() {
            break c;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(other.status(), CallStatus::Succeeded, "{other:?}");
    // The agent comes back and removes what its predecessor left.
    stack.start_agent(victim_index).await;
    stack.assert_no_leftovers(Duration::from_secs(15)).await?;
    Ok((lost, resolved.expect("resolved"), victim))
}

/// An agent killed with SIGKILL while running a call: that call fails with
/// reason node_lost in under 5 s, the other node carries on, and the
/// restarted agent cleans up what its predecessor left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_agent_fails_its_running_calls_and_others_carry_on() -> anyhow::Result<()> {
    let mut stack = two_single_spot_nodes_with_sleeps(&[]).await?;
    let (lost, detected, _) = kill_the_node_of_a_running_call(&mut stack, "sleeps").await?;
    eprintln!("agent loss: call resolved {detected:?} after SIGKILL");
    assert_eq!(lost.status(), CallStatus::Failed, "{lost:?}");
    assert_eq!(
        lost.error.as_ref().map(|e| e.reason.as_str()),
        Some("node_lost")
    );
    assert_eq!(lost.attempts, 1, "{lost:?}");
    assert!(detected < Duration::from_secs(5), "{detected:?}");
    stack.shutdown().await
}

/// The same loss with a function deployed --idempotent: the call is run
/// again on the other node and succeeds there, after two attempts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotent_call_lost_with_its_node_runs_again_elsewhere() -> anyhow::Result<()> {
    let mut stack = two_single_spot_nodes_with_sleeps(&["--idempotent"]).await?;
    let (call, requeued, victim) = kill_the_node_of_a_running_call(&mut stack, "sleeps").await?;
    eprintln!(
        "agent loss, idempotent function: call run again {requeued:?} after SIGKILL; \
         final {:?} on {} after {} attempts",
        call.status(),
        call.node,
        call.attempts
    );
    assert_eq!(call.status(), CallStatus::Succeeded, "{call:?}");
    assert_ne!(call.node, victim, "{call:?}");
    assert_eq!(call.attempts, 2, "{call:?}");
    assert!(requeued < Duration::from_secs(5), "{requeued:?}");
    stack.shutdown().await
}

/// etcd unreachable for longer than the leader's lease: calls are refused
/// with a clear error meanwhile (no hang, no crash), and once etcd is back
/// the same processes serve calls again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cluster_survives_an_etcd_outage() -> anyhow::Result<()> {
    let stack = Stack::start(StackOptions {
        runtimes: vec!["python3"],
        ..StackOptions::default()
    })
    .await?;
    stack.deploy("hello", "python3", &fixture_dir("py-hello"), &[])?;
    let url = stack.controlplane_url(0);
    let auth = stack.auth.clone();
    let invoke = |url: String| {
        let auth = auth.clone();
        async move {
            let channel = auth.channel_with(&url, Some(&auth.token), Some(Duration::from_secs(20)));
            Ok::<_, anyhow::Error>(
                CallServiceClient::new(channel)
                    .invoke(InvokeRequest {
                        function: "hello".into(),
                        params_json: "{}".into(),
                        ..Default::default()
                    })
                    .await,
            )
        }
    };
    assert_eq!(
        invoke(url.clone()).await??.into_inner().status(),
        CallStatus::Succeeded
    );

    stack.freeze_etcd(true);
    let started = Instant::now();
    let during = invoke(url.clone()).await?;
    let took = started.elapsed();
    let status = during.expect_err("a call cannot be recorded while etcd is away");
    eprintln!(
        "etcd outage: refused after {took:?} with {:?}: {}",
        status.code(),
        status.message()
    );
    assert!(
        matches!(
            status.code(),
            tonic::Code::Unavailable | tonic::Code::DeadlineExceeded
        ),
        "{status:?}"
    );
    assert!(took < Duration::from_secs(20), "the refusal took {took:?}");
    // Longer than the lease: leadership is lost meanwhile.
    tokio::time::sleep(Duration::from_secs(8).saturating_sub(took)).await;
    stack.freeze_etcd(false);

    let thawed = Instant::now();
    loop {
        match invoke(url.clone()).await? {
            Ok(r) if r.get_ref().status() == CallStatus::Succeeded => break,
            other => {
                assert!(
                    thawed.elapsed() < Duration::from_secs(40),
                    "not serving 40 s after etcd returned: {other:?}"
                );
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
    eprintln!(
        "etcd outage: serving again {:?} after etcd returned",
        thawed.elapsed()
    );
    stack.shutdown().await
}

/// `faasctl invoke` issued right after the leader dies succeeds: the
/// surviving replica answers "retry shortly" (marked safe: nothing was
/// recorded) until it leads, and faasctl tries again meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faasctl_invoke_rides_through_a_leader_failover() -> anyhow::Result<()> {
    let mut stack = Stack::start(StackOptions {
        controlplanes: 2,
        runtimes: vec!["python3"],
        ..StackOptions::default()
    })
    .await?;
    stack.deploy("hello", "python3", &fixture_dir("py-hello"), &[])?;
    let leader = stack.leader_index().await?;
    stack.kill_controlplane(leader);
    let started = Instant::now();
    let out = stack
        .faasctl()
        .args(["invoke", "hello", "-d", r#"{"name":"failover"}"#])
        .output()?;
    let took = started.elapsed();
    eprintln!(
        "faasctl invoke through a leader failover: exit {:?} after {took:?}",
        out.status.code()
    );
    assert!(
        out.status.success(),
        "faasctl invoke failed during the failover: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("hello failover"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    stack.start_controlplane(leader).await?;
    stack.shutdown().await
}

/// A call longer than the failover: its node lists it (with its dispatch
/// proof) in the hello to the new leader, which waits for its result
/// rather than declaring it lost. Until the agent listed its running
/// calls, such a call failed `node_lost` two seconds after the reconnect.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_running_through_a_failover_keeps_its_result() -> anyhow::Result<()> {
    let mut stack = Stack::start(StackOptions {
        controlplanes: 2,
        spots: 1,
        runtimes: vec!["python3"],
        ..StackOptions::default()
    })
    .await?;
    stack.deploy("sleeps", "python3", &fixture_dir("py-sleep"), &[])?;
    let leader = stack.leader_index().await?;
    let follower = 1 - leader;
    let urls = [stack.controlplane_url(follower)];
    let id = submit_to_any(&stack.auth, &urls, 0, "sleeps", r#"{"seconds": 9}"#)
        .await
        .expect("acknowledged");
    let mut client = CallServiceClient::new(stack.channel_to(&stack.controlplane_url(follower)));
    wait_running(&mut client, &id, Duration::from_secs(30)).await?;
    stack.kill_controlplane(leader);
    let deadline = Instant::now() + Duration::from_secs(60);
    let call = loop {
        let call = client
            .get_call(GetCallRequest { id: id.clone() })
            .await?
            .into_inner();
        if !matches!(call.status(), CallStatus::Queued | CallStatus::Running) {
            break call;
        }
        assert!(Instant::now() < deadline, "stuck: {call:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(call.status(), CallStatus::Succeeded, "{call:?}");
    assert!(call.attempts <= 1, "it ran once: {call:?}");
    stack.shutdown().await
}
