//! Namespaces (issue 11), on the real stack: a token acts only in its
//! namespaces, two namespaces' functions of one name never meet (not even
//! in a preloaded spot), and each namespace's quota holds.

use std::process::Output;
use std::time::Duration;

use faas_proto::v1::call_service_client::CallServiceClient;
use faas_proto::v1::*;
use faas_tests::{fixture_dir, stdout_of, wait_running, Stack, StackOptions};
use tonic::Code;

fn exit_code(out: &Output) -> Option<i32> {
    out.status.code()
}

/// A token made by the admin through faasctl.
fn token(stack: &Stack, role: &str, namespaces: &str) -> String {
    let admin = stack.auth.token.clone();
    let mut args = vec!["token", "create", "--role", role];
    if !namespaces.is_empty() {
        args.extend(["--namespaces", namespaces]);
    }
    stdout_of(stack.faasctl_as(&admin, &args), "token create")
        .trim()
        .to_string()
}

fn calls_as(stack: &Stack, token: &str) -> CallServiceClient<faas_tests::Channel> {
    CallServiceClient::new(stack.auth.channel_with(
        &stack.endpoint,
        Some(token),
        Some(Duration::from_secs(60)),
    ))
}

fn in_namespace(namespace: &str, function: &str, params: &str) -> InvokeRequest {
    InvokeRequest {
        function: function.into(),
        params_json: params.into(),
        namespace: namespace.into(),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespaces_keep_tenants_apart() -> anyhow::Result<()> {
    // Preloading functions: a spot holding one namespace's "svc" must
    // never serve the other's.
    let stack = Stack::start(StackOptions {
        runtimes: vec!["python3"],
        policy: Some("preload-function".into()),
        ..StackOptions::default()
    })
    .await?;
    let admin = stack.auth.token.clone();
    for ns in ["team-a", "team-b"] {
        stdout_of(
            stack.faasctl_as(&admin, &["namespace", "create", ns]),
            "create",
        );
    }
    // A token for a namespace that does not exist is refused.
    let out = stack.faasctl_as(
        &admin,
        &[
            "token",
            "create",
            "--role",
            "developer",
            "--namespaces",
            "nope",
        ],
    );
    assert_eq!(exit_code(&out), Some(3), "{out:?}");
    let dev_a = token(&stack, "developer", "team-a");
    let dev_b = token(&stack, "developer", "team-b");
    let inv_a = token(&stack, "invoker", "team-a");
    let hello = fixture_dir("py-hello");
    let sleep = fixture_dir("py-sleep");
    let (hello, sleep) = (hello.to_str().unwrap(), sleep.to_str().unwrap());
    let deploy = |token: &str, ns: &str, dir: &str| {
        stack.faasctl_as(
            token,
            &["-n", ns, "fn", "deploy", "svc", "--runtime", "python3", dir],
        )
    };
    stdout_of(deploy(&dev_a, "team-a", hello), "deploy team-a/svc");
    stdout_of(deploy(&dev_b, "team-b", sleep), "deploy team-b/svc");

    // Each developer acts only in its namespace: deploy, read, delete and
    // invoke elsewhere are refused (exit 7), and a listing of every
    // namespace holds only its own.
    let out = deploy(&dev_a, "team-b", hello);
    assert_eq!(exit_code(&out), Some(7), "{out:?}");
    let out = deploy(&dev_a, "default", hello);
    assert_eq!(exit_code(&out), Some(7), "{out:?}");
    for args in [
        vec!["-n", "team-b", "fn", "get", "svc"],
        vec!["-n", "team-b", "fn", "rm", "svc"],
        vec!["-n", "team-b", "fn", "ls"],
        vec!["-n", "team-b", "invoke", "svc"],
        vec!["-n", "team-b", "call", "ls"],
    ] {
        let out = stack.faasctl_as(&dev_a, &args);
        assert_eq!(exit_code(&out), Some(7), "{args:?}: {out:?}");
    }
    let listed = stdout_of(
        stack.faasctl_as(&dev_a, &["fn", "ls", "-A", "-o", "json"]),
        "ls -A",
    );
    let listed: serde_json::Value = serde_json::from_str(&listed)?;
    let namespaces: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["namespace"].as_str().unwrap())
        .collect();
    assert_eq!(namespaces, ["team-a"], "{listed}");
    let all = stdout_of(stack.faasctl_as(&admin, &["fn", "ls", "-A"]), "admin ls -A");
    assert!(all.contains("team-a") && all.contains("team-b"), "{all}");
    let ns_list = stdout_of(stack.faasctl_as(&dev_b, &["namespace", "ls"]), "ns ls");
    assert!(
        ns_list.contains("team-b") && !ns_list.contains("team-a"),
        "{ns_list}"
    );
    // Namespaces are an admin's to make.
    let out = stack.faasctl_as(&dev_a, &["namespace", "create", "mine"]);
    assert_eq!(exit_code(&out), Some(7), "{out:?}");

    // Same name, each its own code, preloaded or not.
    let mut a = calls_as(&stack, &dev_a);
    let mut b = calls_as(&stack, &dev_b);
    for round in 0..4 {
        let call = a
            .invoke(in_namespace("team-a", "svc", r#"{"name":"a"}"#))
            .await?
            .into_inner();
        assert_eq!(call.status(), CallStatus::Succeeded, "{call:?}");
        assert_eq!(call.namespace, "team-a");
        assert!(
            call.result_json.contains("hello a"),
            "round {round}: {call:?}"
        );
        let call = b
            .invoke(in_namespace("team-b", "svc", r#"{"seconds":0}"#))
            .await?
            .into_inner();
        assert_eq!(call.status(), CallStatus::Succeeded, "{call:?}");
        assert!(
            call.result_json.contains("slept"),
            "round {round}: {call:?}"
        );
    }
    // The broker knows preloads by namespace and name.
    let nodes = stack.list_nodes().await?;
    let preloaded: Vec<String> = nodes
        .nodes
        .iter()
        .flat_map(|n| n.spots.iter().map(|s| s.function.clone()))
        .filter(|f| !f.is_empty())
        .collect();
    assert!(
        preloaded.iter().all(|f| f.starts_with("team-")),
        "spots hold functions by namespace: {preloaded:?}"
    );

    // An invoker of team-a: invokes there, never reads team-b's calls.
    let theirs = b
        .invoke(in_namespace("team-b", "svc", r#"{"seconds":0}"#))
        .await?
        .into_inner();
    let mut inv = calls_as(&stack, &inv_a);
    let mine = inv
        .invoke(in_namespace("team-a", "svc", r#"{"name":"i"}"#))
        .await?
        .into_inner();
    assert_eq!(mine.status(), CallStatus::Succeeded, "{mine:?}");
    let refused = inv
        .get_call(GetCallRequest {
            id: theirs.id.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::NotFound, "{refused:?}");
    let refused = a
        .get_call(GetCallRequest {
            id: theirs.id.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::NotFound, "{refused:?}");
    let listed = a
        .list_calls(ListCallsRequest {
            namespace: "*".into(),
            ..Default::default()
        })
        .await?
        .into_inner();
    assert!(
        !listed.calls.is_empty() && listed.calls.iter().all(|c| c.namespace == "team-a"),
        "{listed:?}"
    );
    let refused = inv
        .invoke(in_namespace("team-b", "svc", "{}"))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");

    // A namespace holding functions is not deleted; empty, it is.
    let out = stack.faasctl_as(&admin, &["namespace", "rm", "team-b"]);
    assert_eq!(exit_code(&out), Some(5), "{out:?}");
    stdout_of(
        stack.faasctl_as(&dev_b, &["-n", "team-b", "fn", "rm", "svc"]),
        "rm",
    );
    stdout_of(
        stack.faasctl_as(&admin, &["namespace", "rm", "team-b"]),
        "ns rm",
    );
    let out = stack.faasctl_as(&admin, &["-n", "team-b", "fn", "ls"]);
    assert_eq!(
        exit_code(&out),
        Some(0),
        "listing a gone namespace is empty"
    );
    let out = deploy(&admin, "team-b", sleep);
    assert_eq!(exit_code(&out), Some(3), "no namespace, no deploy: {out:?}");
    stack.shutdown().await
}

/// Start and end (epoch ms) of a finished call's run.
fn run_interval(call: &Call) -> (f64, f64) {
    let t = call.timings.unwrap_or_default();
    (
        call.created_at_ms as f64 + t.queue_ms,
        call.finished_at_ms as f64,
    )
}

/// Submits `n` calls of 1.5 s to `function` in `namespace` and waits for
/// them; their run intervals, in start order.
async fn run_sleepers(
    client: &mut CallServiceClient<faas_tests::Channel>,
    namespace: &str,
    n: usize,
) -> anyhow::Result<Vec<(f64, f64)>> {
    let mut ids = Vec::new();
    for _ in 0..n {
        ids.push(
            client
                .submit(in_namespace(namespace, "nap", r#"{"seconds":1.5}"#))
                .await?
                .into_inner()
                .call_id,
        );
    }
    let mut intervals = Vec::new();
    for id in ids {
        let mut stream = client
            .wait_call(WaitCallRequest {
                id,
                timeout_ms: 60_000,
            })
            .await?
            .into_inner();
        let mut last = None;
        while let Some(call) = tokio_stream::StreamExt::next(&mut stream).await {
            last = Some(call?);
        }
        let call = last.expect("a record");
        assert_eq!(call.status(), CallStatus::Succeeded, "{call:?}");
        intervals.push(run_interval(&call));
    }
    intervals.sort_by(|x, y| x.0.total_cmp(&y.0));
    Ok(intervals)
}

fn overlaps(intervals: &[(f64, f64)]) -> bool {
    // 50 ms of slack: the next call's start is measured at its dispatch,
    // the last one's end when its result was taken.
    intervals.windows(2).any(|w| w[1].0 + 50.0 < w[0].1)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespace_quotas_hold() -> anyhow::Result<()> {
    let stack = Stack::start(StackOptions {
        runtimes: vec!["python3"],
        spots: 3,
        ..StackOptions::default()
    })
    .await?;
    let admin = stack.auth.token.clone();
    let sleep = fixture_dir("py-sleep");
    let sleep = sleep.to_str().unwrap();
    let setup = |ns: &str, quota: &[&str]| {
        let mut args = vec!["namespace", "create", ns];
        args.extend(quota);
        stdout_of(stack.faasctl_as(&admin, &args), "namespace create");
        stdout_of(
            stack.faasctl_as(
                &admin,
                &[
                    "-n",
                    ns,
                    "fn",
                    "deploy",
                    "nap",
                    "--runtime",
                    "python3",
                    sleep,
                ],
            ),
            "deploy nap",
        );
    };
    setup("small", &["--max-functions", "1"]);
    setup("serial", &["--max-concurrent", "1"]);
    setup("parallel", &[]);
    setup("queue", &["--max-concurrent", "1", "--max-queued", "1"]);
    setup("rate", &["--submit-rate", "0.5", "--submit-burst", "2"]);

    // max_functions: a second function is refused (exit 6); a new version
    // of the first is not a new function.
    let out = stack.faasctl_as(
        &admin,
        &[
            "-n",
            "small",
            "fn",
            "deploy",
            "other",
            "--runtime",
            "python3",
            sleep,
        ],
    );
    assert_eq!(exit_code(&out), Some(6), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("max_functions"));
    stdout_of(
        stack.faasctl_as(
            &admin,
            &[
                "-n",
                "small",
                "fn",
                "deploy",
                "nap",
                "--runtime",
                "python3",
                sleep,
            ],
        ),
        "redeploy",
    );

    // max_concurrent_calls: three calls on three spots run one at a time;
    // without the bound they overlap (the check can fail).
    let mut client = calls_as(&stack, &admin);
    let parallel = run_sleepers(&mut client, "parallel", 3).await?;
    assert!(
        overlaps(&parallel),
        "unbounded calls ran in parallel: {parallel:?}"
    );
    let serial = run_sleepers(&mut client, "serial", 3).await?;
    assert!(!overlaps(&serial), "one at a time: {serial:?}");
    let span = serial[2].1 - serial[0].0;
    assert!(span >= 3.0 * 1500.0, "{serial:?}");

    // max_queued_calls: one runs, one waits, the third is refused.
    let running = client
        .submit(in_namespace("queue", "nap", r#"{"seconds":3}"#))
        .await?
        .into_inner()
        .call_id;
    wait_running(&mut client, &running, Duration::from_secs(30)).await?;
    client
        .submit(in_namespace("queue", "nap", r#"{"seconds":0}"#))
        .await?;
    let refused = client
        .submit(in_namespace("queue", "nap", r#"{"seconds":0}"#))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(
        refused.message().contains("max_queued_calls"),
        "{refused:?}"
    );
    // Other namespaces are not held back by it.
    client
        .submit(in_namespace("parallel", "nap", r#"{"seconds":0}"#))
        .await?;

    // submit_rate: a burst of 2, then a wait of about 2 s is asked.
    for _ in 0..2 {
        client
            .submit(in_namespace("rate", "nap", r#"{"seconds":0}"#))
            .await?;
    }
    let refused = client
        .submit(in_namespace("rate", "nap", r#"{"seconds":0}"#))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    let wait_ms: u64 = refused
        .metadata()
        .get("retry-after-ms")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .expect("a retry hint");
    assert!((1000..=2000).contains(&wait_ms), "{wait_ms}");
    // The namespace's quota is shown, and a raised one applies at once.
    let shown = stdout_of(
        stack.faasctl_as(&admin, &["namespace", "get", "rate", "-o", "json"]),
        "get",
    );
    assert!(shown.contains("\"submit_rate\": 0.5"), "{shown}");
    stdout_of(
        stack.faasctl_as(&admin, &["namespace", "set", "rate", "--submit-rate", "0"]),
        "set",
    );
    client
        .submit(in_namespace("rate", "nap", r#"{"seconds":0}"#))
        .await?;
    stack.shutdown().await
}
