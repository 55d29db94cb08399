//! Lambda conformance (issue 14): handlers written the way functions
//! published for AWS Lambda are (tests/conformance/<runtime>-lambda/), run
//! on the real stack, one test per behaviour Lambda users rely on. What
//! still differs from Lambda is listed in docs/contract.md.

use std::path::Path;
use std::process::Command;

use faas_proto::v1::call_service_client::CallServiceClient;
use faas_proto::v1::{Call, CallStatus, GetCallLogsRequest, InvokeRequest};
use faas_tests::{repo_root, Stack, StackOptions};
use serde_json::{json, Value};

fn conformance_dir(name: &str) -> std::path::PathBuf {
    repo_root().join("tests/conformance").join(name)
}

fn deploy(stack: &Stack, name: &str, runtime: &str, dir: &Path, extra: &[&str]) {
    if let Err(e) = stack.deploy(name, runtime, dir, extra) {
        panic!("{e:#}");
    }
}

async fn stack_with(runtimes: Vec<&'static str>) -> Stack {
    Stack::start(StackOptions {
        runtimes,
        ..Default::default()
    })
    .await
    .expect("starting the stack")
}

async fn invoke_with(stack: &Stack, function: &str, params: Value, client_context: &str) -> Call {
    CallServiceClient::new(stack.channel().await)
        .invoke(InvokeRequest {
            function: function.into(),
            params_json: params.to_string(),
            client_context: client_context.into(),
            ..Default::default()
        })
        .await
        .unwrap_or_else(|e| panic!("invoking {function}: {e}"))
        .into_inner()
}

async fn invoke(stack: &Stack, function: &str, params: Value) -> Call {
    invoke_with(stack, function, params, "").await
}

fn result_of(call: &Call) -> Value {
    assert_eq!(call.status(), CallStatus::Succeeded, "{call:#?}");
    serde_json::from_str(&call.result_json).expect("the result is JSON")
}

async fn logs_of(stack: &Stack, call: &Call) -> String {
    let logs = CallServiceClient::new(stack.channel().await)
        .get_call_logs(GetCallLogsRequest {
            id: call.id.clone(),
        })
        .await
        .expect("GetCallLogs")
        .into_inner();
    String::from_utf8_lossy(&logs.logs).into_owned()
}

async fn python_stack() -> Stack {
    stack_with(vec!["python3"]).await
}

/// `[LEVEL]\t<UTC time>Z\t<request id>\t<message>`: Lambda's line.
fn is_lambda_line(line: &str, level: &str, call_id: &str, message: &str) -> bool {
    let parts: Vec<&str> = line.splitn(4, '\t').collect();
    parts.len() == 4
        && parts[0] == format!("[{level}]")
        && parts[1].len() == "2026-12-03T12:00:00.000Z".len()
        && parts[1].ends_with('Z')
        && parts[1].as_bytes()[10] == b'T'
        && parts[2] == call_id
        && parts[3] == message
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_logging_goes_to_the_call_log_in_lambdas_format() {
    let stack = python_stack().await;
    let dir = conformance_dir("py-lambda");
    deploy(
        &stack,
        "logs",
        "python3",
        &dir,
        &["--handler", "handler.logs"],
    );
    let call = invoke(&stack, "logs", json!({"word": "hello"})).await;
    result_of(&call);
    let logs = logs_of(&stack, &call).await;
    let lines: Vec<&str> = logs.lines().collect();
    assert!(
        lines
            .iter()
            .any(|l| is_lambda_line(l, "INFO", &call.id, "info hello")),
        "no Lambda-format INFO line: {logs}"
    );
    assert!(
        lines
            .iter()
            .any(|l| is_lambda_line(l, "WARNING", &call.id, "two")),
        "{logs}"
    );
    assert!(lines.contains(&"lines"), "a message's second line: {logs}");
    assert!(
        lines
            .iter()
            .any(|l| is_lambda_line(l, "ERROR", &call.id, "with a traceback")),
        "{logs}"
    );
    assert!(logs.contains("ValueError: caught"), "the traceback: {logs}");
    assert!(!logs.contains("not shown at INFO"), "{logs}");
    assert!(lines.contains(&"a print line"), "{logs}");

    // AWS_LAMBDA_LOG_FORMAT=JSON and AWS_LAMBDA_LOG_LEVEL, as Lambda's
    // logging configuration sets them.
    deploy(
        &stack,
        "logs-json",
        "python3",
        &dir,
        &[
            "--handler",
            "handler.logs",
            "--env",
            "AWS_LAMBDA_LOG_FORMAT=JSON",
            "--env",
            "AWS_LAMBDA_LOG_LEVEL=DEBUG",
        ],
    );
    let call = invoke(&stack, "logs-json", json!({"word": "json"})).await;
    result_of(&call);
    let logs = logs_of(&stack, &call).await;
    let entries: Vec<Value> = logs
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let info = entries
        .iter()
        .find(|e| e["message"] == "info json")
        .unwrap_or_else(|| panic!("no JSON entry: {logs}"));
    assert_eq!(info["level"], "INFO");
    assert_eq!(info["requestId"], call.id.as_str());
    assert!(info["timestamp"].as_str().unwrap().ends_with('Z'));
    // The handler's own setLevel(INFO) comes after the bootstrap's DEBUG.
    assert!(!logs.contains("not shown at INFO"), "{logs}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_of_a_call_killed_at_its_timeout_are_kept() {
    let stack = python_stack().await;
    let dir = conformance_dir("py-lambda");
    deploy(
        &stack,
        "slow",
        "python3",
        &dir,
        &["--handler", "handler.timeout_logs", "--timeout", "2s"],
    );
    let call = invoke(&stack, "slow", json!({"sleep": 30})).await;
    assert_eq!(call.status(), CallStatus::Timeout, "{call:#?}");
    let logs = logs_of(&stack, &call).await;
    assert!(logs.contains("printed before the timeout"), "{logs:?}");
    assert!(
        logs.lines()
            .any(|l| is_lambda_line(l, "WARNING", &call.id, "logged before the timeout")),
        "{logs:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn context_and_environment_are_lambdas() {
    let stack = stack_with(vec!["python3", "node"]).await;
    let py = conformance_dir("py-lambda");
    deploy(
        &stack,
        "ctx",
        "python3",
        &py,
        &["--handler", "handler.context_and_env", "--memory", "256Mi"],
    );
    let client_context =
        r#"{"custom": {"tenant": "t1"}, "env": {"locale": "es"}, "client": {"app_title": "demo"}}"#;
    let call = invoke_with(&stack, "ctx", json!({}), client_context).await;
    let got = result_of(&call);
    let env = &got["env"];
    assert_eq!(env["AWS_REGION"], "us-east-1", "{got}");
    assert_eq!(env["AWS_DEFAULT_REGION"], "us-east-1");
    assert_eq!(env["AWS_EXECUTION_ENV"], "AWS_Lambda_python3.11");
    assert_eq!(env["AWS_LAMBDA_FUNCTION_NAME"], "ctx");
    assert_eq!(env["AWS_LAMBDA_FUNCTION_VERSION"], "1");
    assert_eq!(env["AWS_LAMBDA_FUNCTION_MEMORY_SIZE"], "256");
    assert_eq!(env["AWS_LAMBDA_LOG_GROUP_NAME"], "/faas/ctx");
    assert_eq!(env["AWS_LAMBDA_LOG_STREAM_NAME"], call.id.as_str());
    assert_eq!(env["_HANDLER"], "handler.context_and_env");
    assert_eq!(env["TZ"], ":UTC");
    assert_eq!(env["LAMBDA_TASK_ROOT"], "/var/task");
    assert_eq!(got["aws_request_id"], call.id.as_str());
    assert_eq!(got["memory_limit_in_mb"], "256");
    assert_eq!(got["log_group_name"], "/faas/ctx");
    assert_eq!(got["identity"], json!([null, null]));
    assert_eq!(
        got["client_context"],
        json!({"custom": {"tenant": "t1"}, "env": {"locale": "es"}, "app_title": "demo"})
    );
    assert!(got["remaining_ms"].as_u64().unwrap() > 0, "{got}");
    // The record keeps what the caller passed.
    let stored: Value = serde_json::from_str(&call.client_context).unwrap();
    assert_eq!(stored["custom"]["tenant"], "t1");
    // Without one: None, as on Lambda.
    let call = invoke(&stack, "ctx", json!({})).await;
    assert_eq!(result_of(&call)["client_context"], Value::Null);

    // A function's own region and TZ win; the names Lambda reserves are
    // refused at deploy.
    deploy(
        &stack,
        "ctx-eu",
        "python3",
        &py,
        &[
            "--handler",
            "handler.context_and_env",
            "--env",
            "AWS_REGION=eu-west-1",
            "--env",
            "TZ=Europe/Madrid",
        ],
    );
    let got = result_of(&invoke(&stack, "ctx-eu", json!({})).await);
    assert_eq!(got["env"]["AWS_REGION"], "eu-west-1");
    assert_eq!(got["env"]["AWS_DEFAULT_REGION"], "us-east-1");
    assert_eq!(got["env"]["TZ"], "Europe/Madrid");
    let refused = stack
        .faasctl()
        .args(["fn", "deploy", "bad", "--runtime", "python3"])
        .args(["--env", "AWS_LAMBDA_FUNCTION_NAME=x"])
        .arg(&py)
        .output()
        .unwrap();
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("reserved"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );

    // A client context that is not a JSON object is refused, naming it.
    let refused = CallServiceClient::new(stack.channel().await)
        .invoke(InvokeRequest {
            function: "ctx".into(),
            params_json: "{}".into(),
            client_context: "[1, 2]".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    assert!(refused.message().contains("client context"), "{refused}");

    // faasctl passes one too.
    let out = stack
        .faasctl()
        .args([
            "invoke",
            "ctx",
            "--client-context",
            r#"{"custom":{"via":"faasctl"}}"#,
        ])
        .output()
        .unwrap();
    let printed: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|_| {
        panic!(
            "faasctl invoke: {} {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    assert_eq!(printed["client_context"]["custom"]["via"], "faasctl");

    // Node: the default handler is index.handler, as on Lambda.
    let node = conformance_dir("node-lambda");
    deploy(&stack, "node-ctx", "node", &node, &[]);
    let call = invoke_with(&stack, "node-ctx", json!({}), client_context).await;
    let got = result_of(&call);
    assert_eq!(got["env"]["_HANDLER"], "index.handler", "{got}");
    assert_eq!(got["env"]["AWS_EXECUTION_ENV"], "AWS_Lambda_nodejs18.x");
    assert_eq!(got["env"]["AWS_REGION"], "us-east-1");
    assert_eq!(got["env"]["AWS_LAMBDA_LOG_STREAM_NAME"], call.id.as_str());
    assert_eq!(got["env"]["TZ"], ":UTC");
    assert_eq!(
        got["env"]["NODE_PATH"],
        "/opt/nodejs/node18/node_modules:/opt/nodejs/node_modules"
    );
    assert_eq!(got["clientContext"]["custom"]["tenant"], "t1");
    let fn_get = stack
        .faasctl()
        .args(["fn", "get", "node-ctx", "-o", "json"])
        .output()
        .unwrap();
    let function: Value = serde_json::from_slice(&fn_get.stdout).unwrap();
    assert_eq!(function["handler"], "index.handler");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_callbacks_streaming_and_errors_behave_as_on_lambda() {
    let stack = stack_with(vec!["node"]).await;
    let dir = conformance_dir("node-lambda");
    for (name, handler) in [
        ("cb", "index.callback"),
        ("nowait", "index.noWait"),
        ("cberr", "index.callbackError"),
        ("stream", "index.stream"),
        ("logs", "index.logs"),
    ] {
        deploy(&stack, name, "node", &dir, &["--handler", handler]);
    }
    deploy(
        &stack,
        "jsonlogs",
        "node",
        &dir,
        &[
            "--handler",
            "index.logs",
            "--env",
            "AWS_LAMBDA_LOG_FORMAT=JSON",
            "--env",
            "AWS_LAMBDA_LOG_LEVEL=WARN",
        ],
    );

    // console: `<time>\t<request id>\t<LEVEL>\t<message>` lines, as on
    // Lambda ("undefined" before the call, at import).
    let call = invoke(&stack, "logs", json!({"word": "hello"})).await;
    assert_eq!(result_of(&call), json!("logged"));
    let logs = logs_of(&stack, &call).await;
    let node_line = |line: &str, id: &str, level: &str, message: &str| {
        let parts: Vec<&str> = line.splitn(4, '\t').collect();
        parts.len() == 4
            && parts[0].len() == "2026-12-03T12:00:00.000Z".len()
            && parts[0].ends_with('Z')
            && parts[1] == id
            && parts[2] == level
            && parts[3] == message
    };
    let lines: Vec<&str> = logs.lines().collect();
    for (id, level, message) in [
        ("undefined", "INFO", "at init"),
        (call.id.as_str(), "INFO", "log { n: 1 }"),
        (call.id.as_str(), "INFO", "info hello"),
        (call.id.as_str(), "WARN", "warn"),
        (call.id.as_str(), "ERROR", "error"),
        (call.id.as_str(), "DEBUG", "debug"),
    ] {
        assert!(
            lines.iter().any(|l| node_line(l, id, level, message)),
            "no {level} {message:?} line: {logs}"
        );
    }
    // JSON, filtered by AWS_LAMBDA_LOG_LEVEL.
    let call = invoke(&stack, "jsonlogs", json!({"word": "hello"})).await;
    let logs = logs_of(&stack, &call).await;
    let entries: Vec<Value> = logs
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l:?} in {logs}")))
        .collect();
    let levels: Vec<&str> = entries
        .iter()
        .map(|e| e["level"].as_str().unwrap())
        .collect();
    assert_eq!(levels, ["WARN", "ERROR"], "{logs}");
    assert_eq!(entries[0]["requestId"], call.id.as_str(), "{logs}");
    assert_eq!(entries[0]["message"], "warn", "{logs}");

    let call = invoke(&stack, "cb", json!({})).await;
    // The result object was passed before the timer and the code after
    // callback() changed it: both ran before it went.
    assert_eq!(
        result_of(&call),
        json!({"seen": ["after callback", "timer"]})
    );
    let logs = logs_of(&stack, &call).await;
    assert!(logs.contains("code after callback ran"), "{logs}");
    assert!(logs.contains("timer ran before the result went"), "{logs}");

    let call = invoke(&stack, "nowait", json!({})).await;
    assert_eq!(result_of(&call), json!("sent without waiting"));
    let total = call.timings.as_ref().unwrap().execution_ms;
    assert!(total < 2500.0, "did not wait for the 3 s timer: {total} ms");
    assert!(!logs_of(&stack, &call).await.contains("must not run"));

    let call = invoke(&stack, "cberr", json!({})).await;
    assert_eq!(call.status(), CallStatus::Failed, "{call:#?}");
    let error = call.error.unwrap();
    assert_eq!(error.reason, "error");
    assert!(error.message.contains("bad input"), "{error:?}");

    let call = invoke(&stack, "stream", json!({})).await;
    let got = result_of(&call);
    assert_eq!(got["statusCode"], 201, "{got}");
    assert_eq!(got["headers"]["x-streamed"], "yes");
    assert_eq!(got["isBase64Encoded"], false);
    assert_eq!(got["body"], format!("first {}", json!({"id": call.id})));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn native_libraries_and_the_system_are_lambdas() {
    // A vendored native library linking libstdc++, built here as a wheel's
    // would have been: lib/libfaasprobe.so beside the handler.
    let work = tempfile::tempdir().unwrap();
    let function = work.path().join("fn");
    std::fs::create_dir_all(function.join("lib")).unwrap();
    let source = conformance_dir("py-lambda");
    std::fs::copy(source.join("handler.py"), function.join("handler.py")).unwrap();
    let built = Command::new("c++")
        .args(["-shared", "-fPIC", "-O1", "-o"])
        .arg(function.join("lib/libfaasprobe.so"))
        .arg(source.join("probe.cpp"))
        .output()
        .expect("running c++ (build-essential, installed by tests/run.sh)");
    assert!(
        built.status.success(),
        "c++: {}",
        String::from_utf8_lossy(&built.stderr)
    );
    let needed = Command::new("readelf")
        .arg("-d")
        .arg(function.join("lib/libfaasprobe.so"))
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&needed.stdout).contains("libstdc++.so.6"),
        "the probe must link libstdc++"
    );
    // What a developer's directory also holds: left out of the package.
    std::fs::create_dir_all(function.join(".git/objects")).unwrap();
    std::fs::write(function.join(".git/objects/ab"), b"x").unwrap();
    std::fs::create_dir_all(function.join("__pycache__")).unwrap();
    std::fs::write(function.join("__pycache__/handler.cpython-311.pyc"), b"x").unwrap();
    std::fs::write(function.join("notes.md"), b"x").unwrap();
    std::fs::write(function.join(".faasignore"), b"*.md\n").unwrap();

    let stack = python_stack().await;
    deploy(
        &stack,
        "native",
        "python3",
        &function,
        &["--handler", "handler.native"],
    );
    let got = result_of(&invoke(&stack, "native", json!({"text": "héllo"})).await);
    assert_eq!(got["length"], "héllo".len());

    deploy(
        &stack,
        "system",
        "python3",
        &function,
        &["--handler", "handler.system"],
    );
    let got = result_of(&invoke(&stack, "system", json!({})).await);
    assert_eq!(got["madrid_offset_s"], 7200.0, "tzdata: {got}");
    assert_eq!(got["localtime_zone"], "UTC");
    // __pycache__ is the deploy's build's (the one in the directory was
    // left out by the packer).
    assert_eq!(got["ls"], json!(["__pycache__", "handler.py", "lib"]));
    assert_eq!(got["dd_bytes"], 8192);
}

fn function_json(stack: &Stack, name: &str) -> Value {
    let out = stack
        .faasctl()
        .args(["fn", "get", name, "-o", "json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configuration_updates_keep_what_they_are_not_told() {
    let stack = python_stack().await;
    let dir = conformance_dir("py-lambda");
    deploy(
        &stack,
        "cfg",
        "python3",
        &dir,
        &[
            "--handler",
            "handler.context_and_env",
            "--memory",
            "256Mi",
            "--timeout",
            "5s",
            "--env",
            "A=1",
            "--env",
            "B=2",
        ],
    );
    let v1 = function_json(&stack, "cfg");

    // A configuration-only update: a new version, the same package, only
    // what it names changed.
    let out = stack
        .faasctl()
        .args(["fn", "update", "cfg", "--timeout", "7s", "--env", "C=3"])
        .args(["--unset-env", "A"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v2 = function_json(&stack, "cfg");
    assert_eq!(v2["version"], 2, "{v2}");
    assert_eq!(v2["package_digest"], v1["package_digest"]);
    assert_eq!(v2["timeout_ms"], 7000);
    assert_eq!(v2["memory_bytes"], v1["memory_bytes"]);
    assert_eq!(v2["handler"], "handler.context_and_env");
    assert_eq!(v2["env"], json!({"B": "2", "C": "3"}));
    let got = result_of(&invoke(&stack, "cfg", json!({})).await);
    assert_eq!(got["env"]["AWS_LAMBDA_FUNCTION_VERSION"], "2", "{got}");
    assert_eq!(got["memory_limit_in_mb"], "256");

    // Deploying new code keeps the configuration it does not name.
    deploy(&stack, "cfg", "python3", &dir, &[]);
    let v3 = function_json(&stack, "cfg");
    assert_eq!(v3["version"], 3);
    assert_eq!(v3["timeout_ms"], 7000);
    assert_eq!(v3["env"], json!({"B": "2", "C": "3"}));
    assert_eq!(v3["handler"], "handler.context_and_env");
    result_of(&invoke(&stack, "cfg", json!({})).await);

    // Nothing to update, or no such function: refused, nothing changed.
    let out = stack
        .faasctl()
        .args(["fn", "update", "cfg"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let out = stack
        .faasctl()
        .args(["fn", "update", "nosuch", "--memory", "128Mi"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("NOT_FOUND"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(function_json(&stack, "cfg")["version"], 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_newest_debian_runtimes_run_the_same_handlers() {
    let stack = stack_with(vec!["python313", "node20"]).await;
    let py = conformance_dir("py-lambda");
    deploy(
        &stack,
        "ctx313",
        "python313",
        &py,
        &["--handler", "handler.context_and_env"],
    );
    let call = invoke_with(&stack, "ctx313", json!({}), r#"{"custom":{"a":1}}"#).await;
    let got = result_of(&call);
    assert_eq!(
        got["env"]["AWS_EXECUTION_ENV"], "AWS_Lambda_python3.13",
        "{got}"
    );
    assert_eq!(got["client_context"]["custom"]["a"], 1);
    deploy(
        &stack,
        "logs313",
        "python313",
        &py,
        &["--handler", "handler.logs"],
    );
    let call = invoke(&stack, "logs313", json!({"word": "new"})).await;
    result_of(&call);
    let logs = logs_of(&stack, &call).await;
    assert!(
        logs.lines()
            .any(|l| is_lambda_line(l, "INFO", &call.id, "info new")),
        "{logs}"
    );

    let node = conformance_dir("node-lambda");
    deploy(&stack, "node20-ctx", "node20", &node, &[]);
    let got = result_of(&invoke(&stack, "node20-ctx", json!({})).await);
    assert_eq!(
        got["env"]["AWS_EXECUTION_ENV"], "AWS_Lambda_nodejs20.x",
        "{got}"
    );
    assert_eq!(
        got["env"]["NODE_PATH"],
        "/opt/nodejs/node20/node_modules:/opt/nodejs/node_modules"
    );
    deploy(
        &stack,
        "node20-cb",
        "node20",
        &node,
        &["--handler", "index.callback"],
    );
    let got = result_of(&invoke(&stack, "node20-cb", json!({})).await);
    assert_eq!(got, json!({"seen": ["after callback", "timer"]}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn results_up_to_six_mebibytes_and_a_clear_error_past_it() {
    let stack = python_stack().await;
    deploy(
        &stack,
        "big",
        "python3",
        &conformance_dir("py-lambda"),
        &["--handler", "handler.big"],
    );
    // 600 KiB fits in one etcd request with the record; 5 MiB is stored in
    // parts (etcd takes at most 1.5 MiB a request).
    for kb in [600, 5 << 10] {
        let call = CallServiceClient::new(stack.channel().await)
            .max_decoding_message_size(64 << 20)
            .invoke(InvokeRequest {
                function: "big".into(),
                params_json: json!({ "kb": kb }).to_string(),
                ..Default::default()
            })
            .await
            .unwrap_or_else(|e| panic!("invoking big ({kb} KiB): {e}"))
            .into_inner();
        let got = result_of(&call);
        assert_eq!(got["data"].as_str().unwrap().len(), kb << 10);
        // Read back from the store too, not only from the invoke's answer.
        let out = stack
            .faasctl()
            .args(["call", "get", &call.id, "-o", "json"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        let record: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert!(record["result"] == got, "{kb} KiB not read back whole");
    }

    let call = invoke(&stack, "big", json!({"kb": 6656})).await;
    assert_eq!(call.status(), CallStatus::Failed, "{call:#?}");
    let error = call.error.unwrap();
    assert_eq!(error.reason, "invalid_output");
    assert!(
        error.message.contains("max_result_bytes") && error.message.contains("6291456"),
        "the error names the limit: {error:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_results_come_back_as_bytes() {
    use base64::Engine;
    let mut stack = stack_with(vec!["python3", "node"]).await;
    let py = conformance_dir("py-lambda");
    let node = conformance_dir("node-lambda");
    deploy(
        &stack,
        "pybytes",
        "python3",
        &py,
        &["--handler", "handler.raw_bytes"],
    );
    deploy(
        &stack,
        "forged",
        "python3",
        &py,
        &["--handler", "handler.forged_encoding"],
    );
    deploy(
        &stack,
        "buffer",
        "node",
        &node,
        &["--handler", "index.buffer"],
    );
    deploy(&stack, "view", "node", &node, &["--handler", "index.view"]);
    let decode = |call: &Call| -> Vec<u8> {
        assert_eq!(call.status(), CallStatus::Succeeded, "{call:#?}");
        assert!(call.result_base64, "not marked bytes: {call:#?}");
        let text: String = serde_json::from_str(&call.result_json).expect("a JSON string");
        base64::engine::general_purpose::STANDARD
            .decode(text)
            .expect("standard base64")
    };

    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    png.extend(0..=255u8);
    let call = invoke(&stack, "pybytes", json!({})).await;
    assert_eq!(decode(&call), png);
    // Stored with its flag.
    let out = stack
        .faasctl()
        .args(["call", "get", &call.id, "-o", "json"])
        .output()
        .unwrap();
    let record: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(record["result_base64"], true, "{record}");
    // faasctl writes the bytes themselves into a pipe.
    let out = stack
        .faasctl()
        .args(["invoke", "pybytes"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(out.stdout, png);

    assert_eq!(
        decode(&invoke(&stack, "buffer", json!({})).await),
        [0x89, 0x50, 0x4e, 0x47, 0x00, 0xff]
    );
    // Only the view's bytes, not its whole buffer.
    assert_eq!(decode(&invoke(&stack, "view", json!({})).await), [1, 2, 3]);

    // A result marked base64 that is not: the call fails, nothing passed on.
    let call = invoke(&stack, "forged", json!({})).await;
    assert_eq!(call.status(), CallStatus::Failed, "{call:#?}");
    let error = call.error.clone().unwrap();
    assert_eq!(error.reason, "invalid_output", "{error:?}");
    assert!(error.message.contains("base64"), "{error:?}");
    assert!(call.result_json.is_empty() && !call.result_base64);

    // The HTTP gateway answers with the bytes.
    let gateway = stack.start_gateway(&[]).await.expect("a gateway");
    let response = reqwest::Client::builder()
        .no_proxy()
        .build()
        .unwrap()
        .get(format!("{gateway}/function/pybytes"))
        .header("authorization", format!("Bearer {}", stack.auth.token))
        .send()
        .await
        .expect("the gateway answers");
    assert_eq!(response.status().as_u16(), 200);
    assert_eq!(
        response.headers()["content-type"],
        "application/octet-stream"
    );
    assert_eq!(response.bytes().await.unwrap().to_vec(), png);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tmp_is_sized_per_function_and_keeps_the_memory() {
    let stack = python_stack().await;
    let py = conformance_dir("py-lambda");
    let fill = |mb: u64| json!({ "mb": mb });
    // The default: 64 MiB, inside the function's memory.
    deploy(
        &stack,
        "tmpsmall",
        "python3",
        &py,
        &["--handler", "handler.fill_tmp", "--memory", "128Mi"],
    );
    let got = result_of(&invoke(&stack, "tmpsmall", fill(100)).await);
    assert_eq!(got["error"], "ENOSPC", "{got}");
    // The tmpfs holds exactly its size in file data, not a MiB more.
    assert_eq!(got["written_mb"], 64, "{got}");

    // 300 MiB with 128 MiB of memory: 200 MiB of files do not kill the
    // call (the extra /tmp is added to its limit); 400 fill it up.
    deploy(
        &stack,
        "tmpbig",
        "python3",
        &py,
        &[
            "--handler",
            "handler.fill_tmp",
            "--memory",
            "128Mi",
            "--tmp-size",
            "300Mi",
        ],
    );
    let got = result_of(&invoke(&stack, "tmpbig", fill(200)).await);
    assert_eq!(got, json!({"written_mb": 200, "error": null}));
    let got = result_of(&invoke(&stack, "tmpbig", fill(400)).await);
    assert_eq!(got["error"], "ENOSPC", "{got}");
    let written = got["written_mb"].as_u64().unwrap();
    assert_eq!(written, 300, "{got}");
    let out = stack
        .faasctl()
        .args(["fn", "get", "tmpbig", "-o", "json"])
        .output()
        .unwrap();
    let function: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(function["tmp_bytes"], 300u64 << 20, "{function}");

    // fn update changes it alone, keeping the rest.
    let out = stack
        .faasctl()
        .args(["fn", "update", "tmpsmall", "--tmp-size", "128Mi"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let got = result_of(&invoke(&stack, "tmpsmall", fill(100)).await);
    assert_eq!(got, json!({"written_mb": 100, "error": null}));

    // Past the control plane's max_tmp_bytes (512 MiB): refused, naming it.
    let out = stack
        .faasctl()
        .args(["fn", "update", "tmpsmall", "--tmp-size", "1Gi"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("max_tmp_bytes"), "{stderr}");
}

/// Writes `files` (path, text, executable) under a new directory.
fn tree(root: &Path, files: &[(&str, &str, bool)]) {
    use std::os::unix::fs::PermissionsExt;
    for (path, text, executable) in files {
        let path = root.join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, text).unwrap();
        if *executable {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
    }
}

fn faasctl_json(stack: &Stack, args: &[&str]) -> Value {
    let out = stack
        .faasctl()
        .args(args)
        .args(["-o", "json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "faasctl {args:?}: {out:?}");
    serde_json::from_slice(&out.stdout).unwrap()
}

/// faasctl's exit code and stderr.
fn faasctl_fails(stack: &Stack, args: &[&str]) -> (Option<i32>, String) {
    let out = stack.faasctl().args(args).output().unwrap();
    assert!(!out.status.success(), "faasctl {args:?} succeeded: {out:?}");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn layers_are_mounted_under_opt_as_on_lambda() {
    let stack = stack_with(vec!["python3", "node"]).await;
    let work = tempfile::tempdir().unwrap();
    let dir = |name: &str| work.path().join(name);
    let path = |name: &str| dir(name).to_string_lossy().into_owned();
    tree(
        &dir("pylib-1"),
        &[
            (
                "python/greet_lib.py",
                "def greet(name):\n    return 'hi ' + name\n",
                false,
            ),
            ("bin/layer-tool", "#!/bin/sh\necho tool\n", true),
        ],
    );
    let layer = faasctl_json(
        &stack,
        &[
            "layer",
            "publish",
            "pylib",
            &path("pylib-1"),
            "--description",
            "greetings",
        ],
    );
    assert_eq!(layer["version"], 1, "{layer}");
    assert_eq!(layer["directories"], json!(["bin", "python"]), "{layer}");

    // Python finds python/, PATH has bin/, /opt is read-only and still
    // holds the runtime's own files.
    let py = conformance_dir("py-lambda");
    deploy(
        &stack,
        "uselayer",
        "python3",
        &py,
        &["--handler", "handler.use_layer", "--layer", "pylib"],
    );
    let got = result_of(&invoke(&stack, "uselayer", json!({"name": "ana"})).await);
    assert_eq!(got["greeting"], "hi ana", "{got}");
    assert_eq!(got["tool"], "/opt/bin/layer-tool", "{got}");
    assert_eq!(got["write"], "EROFS", "{got}");
    assert_eq!(got["opt"], json!(["bin", "faas", "python"]), "{got}");

    // A new version changes no function until it is named again.
    tree(
        &dir("pylib-2"),
        &[(
            "python/greet_lib.py",
            "def greet(name):\n    return 'hello ' + name\n",
            false,
        )],
    );
    let layer = faasctl_json(&stack, &["layer", "publish", "pylib", &path("pylib-2")]);
    assert_eq!(layer["version"], 2, "{layer}");
    let got = result_of(&invoke(&stack, "uselayer", json!({"name": "ana"})).await);
    assert_eq!(got["greeting"], "hi ana", "{got}");
    let out = stack
        .faasctl()
        .args(["fn", "update", "uselayer", "--layer", "pylib"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let got = result_of(&invoke(&stack, "uselayer", json!({"name": "ana"})).await);
    assert_eq!(got["greeting"], "hello ana", "{got}");
    assert_eq!(got["tool"], Value::Null, "version 2 has no bin/: {got}");
    // A configuration-only update keeps the layers.
    let out = stack
        .faasctl()
        .args(["fn", "update", "uselayer", "--memory", "192Mi"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let function = faasctl_json(&stack, &["fn", "get", "uselayer"]);
    assert_eq!(function["layers"][0]["name"], "pylib", "{function}");
    assert_eq!(function["layers"][0]["version"], 2, "{function}");
    let versions = faasctl_json(&stack, &["layer", "ls", "pylib"]);
    assert_eq!(versions.as_array().unwrap().len(), 2, "{versions}");

    // Node finds nodejs/node_modules/.
    tree(
        &dir("nodelib"),
        &[(
            "nodejs/node_modules/wrap/index.js",
            "module.exports = (s) => '[' + s + ']';\n",
            false,
        )],
    );
    faasctl_json(&stack, &["layer", "publish", "nodelib", &path("nodelib")]);
    tree(
        &dir("nodefn"),
        &[(
            "index.js",
            "const wrap = require('wrap');\nexports.handler = async (event) => ({ wrapped: wrap(event.s) });\n",
            false,
        )],
    );
    deploy(
        &stack,
        "nodelayer",
        "node",
        &dir("nodefn"),
        &["--layer", "nodelib:1"],
    );
    let got = result_of(&invoke(&stack, "nodelayer", json!({"s": "x"})).await);
    assert_eq!(got, json!({"wrapped": "[x]"}));

    // What cannot be mounted, or would hide another layer: refused,
    // saying why.
    tree(&dir("flat"), &[("greet_lib.py", "x = 1\n", false)]);
    let (code, stderr) = faasctl_fails(&stack, &["layer", "publish", "flat", &path("flat")]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("only directories"), "{stderr}");
    tree(&dir("sneaky"), &[("faas/bootstrap.py", "x = 1\n", false)]);
    let (code, stderr) = faasctl_fails(&stack, &["layer", "publish", "sneaky", &path("sneaky")]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("\"faas\""), "{stderr}");
    tree(&dir("other"), &[("python/other.py", "x = 1\n", false)]);
    faasctl_json(&stack, &["layer", "publish", "other", &path("other")]);
    let (code, stderr) = faasctl_fails(
        &stack,
        &[
            "fn", "update", "uselayer", "--layer", "pylib", "--layer", "other",
        ],
    );
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("both have python/"), "{stderr}");
    let (code, stderr) = faasctl_fails(&stack, &["fn", "update", "uselayer", "--layer", "nope"]);
    assert_eq!(code, Some(5), "{stderr}");
    assert!(stderr.contains("does not exist"), "{stderr}");

    // A layer version a kept function version uses stays; others go.
    let (code, stderr) = faasctl_fails(&stack, &["layer", "rm", "pylib:1"]);
    assert_eq!(code, Some(5), "{stderr}");
    assert!(stderr.contains("uselayer:1"), "{stderr}");
    let out = stack
        .faasctl()
        .args(["layer", "rm", "other"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let left = faasctl_json(&stack, &["layer", "ls"]);
    let names: Vec<&str> = left
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["nodelib", "pylib"], "{left}");
}
