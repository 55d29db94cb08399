//! End to end on the real stack: runtimes and functions registered, calls
//! invoked synchronously and asynchronously, results, logs and timings read
//! back, bad input refused with precise codes, failures reported honestly,
//! and every call served by a fresh container that containerd no longer has
//! afterwards.

use std::time::{Duration, Instant};

use faas_proto::v1::call_service_client::CallServiceClient;
use faas_proto::v1::function_service_client::FunctionServiceClient;
use faas_proto::v1::runtime_service_client::RuntimeServiceClient;
use faas_proto::v1::{
    deploy_function_request, register_runtime_request, Call, CallStatus, DeleteRuntimeRequest,
    DeployFunctionRequest, FunctionSpec, GetCallLogsRequest, GetCallRequest, InvokeRequest,
    ListCallsRequest, RegisterRuntimeRequest, RuntimeSpec, StartKind, WaitCallRequest,
};
use faas_tests::{fixture_dir, Stack, StackOptions};
use tokio_stream::StreamExt;
use tonic::Code;

/// Deploys a fixture directory with faasctl (so the CLI's packing is
/// exercised too).
fn deploy(stack: &Stack, name: &str, runtime: &str, fixture: &str, extra: &[&str]) {
    stack
        .deploy(name, runtime, &fixture_dir(fixture), extra)
        .expect("deploying a fixture");
}

async fn calls(stack: &Stack) -> CallServiceClient<faas_tests::Channel> {
    CallServiceClient::new(stack.channel().await)
}

async fn invoke(stack: &Stack, function: &str, params: &str) -> Result<Call, tonic::Status> {
    calls(stack)
        .await
        .invoke(InvokeRequest {
            function: function.into(),
            params_json: params.into(),
            ..Default::default()
        })
        .await
        .map(|r| r.into_inner())
}

fn result(call: &Call) -> serde_json::Value {
    assert_eq!(
        call.status(),
        CallStatus::Succeeded,
        "call failed: {call:?}"
    );
    serde_json::from_str(&call.result_json).expect("result is JSON")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_and_node_functions_run_sync_and_async_with_logs_and_timings() -> anyhow::Result<()>
{
    // Cold starts, phase by phase (tests/tests/e2e/policies.rs covers preloads).
    let stack = Stack::start(StackOptions {
        runtimes: vec!["python3", "node"],
        policy: Some("no-preload".into()),
        ..StackOptions::default()
    })
    .await?;
    deploy(&stack, "hello-py", "python3", "py-hello", &[]);
    deploy(
        &stack,
        "hello-node",
        "node",
        "node-hello",
        &["--handler", "index.handler"],
    );

    for (function, name) in [("hello-py", "ana"), ("hello-node", "bo")] {
        // Synchronous: the record comes back with the result and timings.
        let call = invoke(&stack, function, &format!(r#"{{"name":"{name}"}}"#)).await?;
        assert_eq!(result(&call)["greeting"], format!("hello {name}"));
        assert!(!call.id.is_empty());
        assert_eq!(call.function, function);
        assert_eq!(call.function_version, 1);
        assert_eq!(call.node, stack.agent_node(0));
        let t = call.timings.expect("timings");
        assert_eq!(t.start_kind(), StartKind::Cold);
        assert!(t.runtime_load_ms > 0.0, "{t:?}");
        assert!(t.execution_ms > 0.0, "{t:?}");
        assert!(t.total_ms >= t.execution_ms + t.runtime_load_ms, "{t:?}");

        // Logs hold what the function printed.
        let logs = calls(&stack)
            .await
            .get_call_logs(GetCallLogsRequest {
                id: call.id.clone(),
            })
            .await?
            .into_inner();
        let text = String::from_utf8_lossy(&logs.logs);
        assert!(text.contains(&format!("greeting {name}")), "logs: {text:?}");

        // Asynchronous: an id at once, then wait and get.
        let id = calls(&stack)
            .await
            .submit(InvokeRequest {
                function: function.into(),
                params_json: r#"{"name":"async"}"#.into(),
                ..Default::default()
            })
            .await?
            .into_inner()
            .call_id;
        let mut stream = calls(&stack)
            .await
            .wait_call(WaitCallRequest {
                id: id.clone(),
                timeout_ms: 60_000,
            })
            .await?
            .into_inner();
        let mut last = None;
        while let Some(update) = stream.next().await {
            last = Some(update?);
        }
        let waited = last.expect("wait streamed at least one record");
        assert_eq!(result(&waited)["greeting"], "hello async");
        let got = calls(&stack)
            .await
            .get_call(GetCallRequest { id: id.clone() })
            .await?
            .into_inner();
        assert_eq!(got.status(), CallStatus::Succeeded);
        assert_eq!(got.result_json, waited.result_json);
    }

    // Listing: newest first, filtered by function and status.
    let listed = calls(&stack)
        .await
        .list_calls(ListCallsRequest {
            function: "hello-node".into(),
            status: CallStatus::Succeeded as i32,
            page_size: 10,
            page_token: String::new(),
            ..Default::default()
        })
        .await?
        .into_inner();
    assert_eq!(listed.calls.len(), 2, "{listed:?}");
    assert!(listed.calls.iter().all(|c| c.function == "hello-node"));
    assert!(listed.calls[0].id > listed.calls[1].id, "newest first");
    let page = calls(&stack)
        .await
        .list_calls(ListCallsRequest {
            page_size: 1,
            ..Default::default()
        })
        .await?
        .into_inner();
    assert_eq!(page.calls.len(), 1);
    let next = calls(&stack)
        .await
        .list_calls(ListCallsRequest {
            page_size: 100,
            page_token: page.next_page_token.clone(),
            ..Default::default()
        })
        .await?
        .into_inner();
    assert_eq!(next.calls.len(), 3, "4 calls in all, 1 on the first page");
    assert!(!next.calls.iter().any(|c| c.id == page.calls[0].id));

    stack.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_precise_status_codes_and_loses_nothing() -> anyhow::Result<()> {
    let stack = Stack::start(StackOptions {
        runtimes: vec!["python3"],
        ..StackOptions::default()
    })
    .await?;
    deploy(&stack, "hello", "python3", "py-hello", &[]);

    let code = |r: Result<Call, tonic::Status>| r.map(|c| format!("{c:?}")).unwrap_err().code();
    assert_eq!(
        code(invoke(&stack, "no-such-fn", "{}").await),
        Code::NotFound
    );
    assert_eq!(
        code(invoke(&stack, "hello", "{oops").await),
        Code::InvalidArgument
    );
    // A name outside the API's rule, or an id that is not a UUID, can name
    // nothing: refused as invalid before it becomes a key.
    assert_eq!(
        code(invoke(&stack, "Bad_Name", "{}").await),
        Code::InvalidArgument
    );
    let huge = format!(r#"{{"x":"{}"}}"#, "a".repeat(300 << 10));
    assert_eq!(
        code(invoke(&stack, "hello", &huge).await),
        Code::ResourceExhausted
    );
    let status = calls(&stack)
        .await
        .get_call(GetCallRequest { id: "nope".into() })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    let status = calls(&stack)
        .await
        .get_call(GetCallRequest {
            id: "0192f1a0-0000-7000-8000-000000000000".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);

    // Packages: garbage, a truncated zip, and a runtime that does not exist.
    let deploy_raw = |name: &str, runtime: &str, bytes: Vec<u8>| {
        let messages = vec![
            DeployFunctionRequest {
                part: Some(deploy_function_request::Part::Spec(FunctionSpec {
                    name: name.into(),
                    runtime: runtime.into(),
                    ..Default::default()
                })),
            },
            DeployFunctionRequest {
                part: Some(deploy_function_request::Part::Chunk(bytes)),
            },
        ];
        let channel = stack.channel();
        async move {
            FunctionServiceClient::new(channel.await)
                .deploy_function(tokio_stream::iter(messages))
                .await
        }
    };
    let garbage = deploy_raw("corrupt", "python3", b"this is not an archive".to_vec()).await;
    assert_eq!(garbage.unwrap_err().code(), Code::InvalidArgument);
    let mut truncated_zip = b"PK\x03\x04".to_vec();
    truncated_zip.extend_from_slice(&[0u8; 40]);
    let truncated = deploy_raw("corrupt", "python3", truncated_zip).await;
    assert_eq!(truncated.unwrap_err().code(), Code::InvalidArgument);
    let missing_runtime = deploy_raw("orphan", "cobol", b"x".to_vec()).await;
    assert_eq!(missing_runtime.unwrap_err().code(), Code::NotFound);
    let bad_name = deploy_raw("Not_Valid", "python3", b"x".to_vec()).await;
    assert_eq!(bad_name.unwrap_err().code(), Code::InvalidArgument);
    // Nothing of the refused deploys was kept.
    let listed = FunctionServiceClient::new(stack.channel().await)
        .list_functions(faas_proto::v1::ListFunctionsRequest::default())
        .await?
        .into_inner();
    let names: Vec<_> = listed.functions.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(names, vec!["hello"]);

    // Runtimes: a second registration of the same name, and deleting one in use.
    let again = RuntimeServiceClient::new(stack.channel().await)
        .register_runtime(tokio_stream::iter(vec![RegisterRuntimeRequest {
            part: Some(register_runtime_request::Part::Spec(RuntimeSpec {
                name: "python3".into(),
                path: "/var/task".into(),
                run: "true".into(),
                image_ref: "faas/runtimes/python3:latest".into(),
                ..Default::default()
            })),
        }]))
        .await;
    assert_eq!(again.unwrap_err().code(), Code::AlreadyExists);
    let in_use = RuntimeServiceClient::new(stack.channel().await)
        .delete_runtime(DeleteRuntimeRequest {
            name: "python3".into(),
        })
        .await;
    assert_eq!(in_use.unwrap_err().code(), Code::FailedPrecondition);

    // After all that, the function still runs.
    let call = invoke(&stack, "hello", r#"{"name":"still"}"#).await?;
    assert_eq!(result(&call)["greeting"], "hello still");
    stack.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_functions_end_with_a_reason_and_their_log_tail() -> anyhow::Result<()> {
    let stack = Stack::start(StackOptions {
        runtimes: vec!["python3"],
        ..StackOptions::default()
    })
    .await?;
    deploy(&stack, "raises", "python3", "py-raise", &[]);
    deploy(&stack, "exits", "python3", "py-exit", &[]);
    deploy(
        &stack,
        "sleeps",
        "python3",
        "py-sleep",
        &["--timeout", "1s"],
    );
    deploy(&stack, "hello", "python3", "py-hello", &[]);

    let raised = invoke(&stack, "raises", r#"{"why":"test"}"#).await?;
    assert_eq!(raised.status(), CallStatus::Failed);
    let error = raised.error.clone().expect("error");
    assert_eq!(error.reason, "error");
    assert!(error.message.contains("boom: test"), "{error:?}");
    assert!(error.log_tail.contains("about to raise"), "{error:?}");

    let exited = invoke(&stack, "exits", r#"{"code":7}"#).await?;
    assert_eq!(exited.status(), CallStatus::Failed);
    let error = exited.error.clone().expect("error");
    assert!(error.message.contains('7'), "{error:?}");
    assert!(error.log_tail.contains("exiting with 7"), "{error:?}");

    let started = Instant::now();
    let slow = invoke(&stack, "sleeps", r#"{"seconds":60}"#).await?;
    let took = started.elapsed();
    assert_eq!(slow.status(), CallStatus::Timeout, "{slow:?}");
    assert_eq!(slow.error.clone().expect("error").reason, "timeout");
    assert!(
        took < Duration::from_secs(10),
        "the timeout fired after {took:?}"
    );

    // The node keeps serving.
    let call = invoke(&stack, "hello", r#"{"name":"after"}"#).await?;
    assert_eq!(result(&call)["greeting"], "hello after");
    stack.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_with_no_agent_connected_is_refused() -> anyhow::Result<()> {
    let stack = Stack::start(StackOptions {
        agents: 0,
        runtimes: vec!["python3"],
        ..StackOptions::default()
    })
    .await?;
    deploy(&stack, "hello", "python3", "py-hello", &[]);
    let refused = invoke(&stack, "hello", "{}").await.unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    assert!(refused.message().contains("agent"), "{refused:?}");
    stack.shutdown().await
}

/// Every call gets a container nobody else touched, and that container is
/// gone from containerd once the call is over: checked through containerd's
/// own API, not the platform's bookkeeping.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_call_runs_in_its_own_container_which_is_destroyed_after() -> anyhow::Result<()> {
    // No preloaded containers beside the call's: containerd's list is then
    // exactly the call's container.
    let stack = Stack::start(StackOptions {
        runtimes: vec!["python3"],
        policy: Some("no-preload".into()),
        ..StackOptions::default()
    })
    .await?;
    deploy(&stack, "sleeps", "python3", "py-sleep", &[]);
    deploy(&stack, "marker", "python3", "py-marker", &[]);

    let mut seen = Vec::new();
    for _ in 0..2 {
        let id = calls(&stack)
            .await
            .submit(InvokeRequest {
                function: "sleeps".into(),
                params_json: r#"{"seconds":1.5}"#.into(),
                ..Default::default()
            })
            .await?
            .into_inner()
            .call_id;
        // While the call runs, containerd has exactly one container of ours.
        let deadline = Instant::now() + Duration::from_secs(20);
        let container = loop {
            let containers: Vec<String> = stack
                .containerd_leftovers()
                .await?
                .into_iter()
                .filter_map(|l| l.strip_prefix("container ").map(str::to_string))
                .collect();
            if let [one] = containers.as_slice() {
                break one.clone();
            }
            assert!(
                containers.len() < 2,
                "one call, several containers: {containers:?}"
            );
            assert!(
                Instant::now() < deadline,
                "no container appeared for call {id}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let mut stream = calls(&stack)
            .await
            .wait_call(WaitCallRequest {
                id,
                timeout_ms: 60_000,
            })
            .await?
            .into_inner();
        let mut last = None;
        while let Some(update) = stream.next().await {
            last = Some(update?);
        }
        assert_eq!(last.expect("final").status(), CallStatus::Succeeded);
        // ... and after it, that container is gone.
        stack.assert_no_leftovers(Duration::from_secs(10)).await?;
        seen.push(container);
    }
    assert_ne!(seen[0], seen[1], "two calls shared a container");

    // Nothing written by one call is visible to the next.
    let first = result(&invoke(&stack, "marker", r#"{"tag":"one"}"#).await?);
    let second = result(&invoke(&stack, "marker", r#"{"tag":"two"}"#).await?);
    assert_eq!(first["found"], serde_json::json!([]), "{first}");
    assert_eq!(second["found"], serde_json::json!([]), "{second}");
    assert!(
        !second["written"].as_array().expect("list").is_empty(),
        "{second}"
    );

    stack.shutdown().await
}
