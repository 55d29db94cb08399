//! Runs the faasctl binary against an in-process fake CallService that
//! answers like the control plane does for the acceptance functions, to pin
//! down what scripts see: stdout, stderr and exit codes of invoke and call.
//! (The real control plane is exercised by the end-to-end tests in tests/.)

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Mutex;

use faas_proto::v1::call_service_server::{CallService, CallServiceServer};
use faas_proto::v1::{
    Call, CallError, CallLogs, CallStatus, GetCallLogsRequest, GetCallRequest, InvokeRequest,
    ListCallsRequest, ListCallsResponse, StartKind, SubmitResponse, Timings, WaitCallRequest,
};
use futures::Stream;
use tonic::{Request, Response, Status};

#[derive(Default)]
struct FakeCalls {
    calls: Mutex<Vec<Call>>,
}

/// What the acceptance functions do: `hello` greets, `fail` raises, `slow`
/// times out, anything else does not exist.
fn run(id: String, request: &InvokeRequest) -> Result<Call, Status> {
    let params_json = if request.params_json.is_empty() {
        "{}".to_string()
    } else {
        request.params_json.clone()
    };
    let params: serde_json::Value = serde_json::from_str(&params_json)
        .map_err(|e| Status::invalid_argument(format!("params are not valid JSON: {e}")))?;
    let mut call = Call {
        id,
        function: request.function.clone(),
        function_version: 1,
        params_json,
        timings: Some(Timings {
            queue_ms: 1.0,
            execution_ms: 5.0,
            total_ms: 7.5,
            start_kind: StartKind::Cold as i32,
            ..Default::default()
        }),
        node: "node-0".into(),
        spot: 1,
        created_at_ms: 1_700_000_000_000,
        finished_at_ms: 1_700_000_000_008,
        ..Default::default()
    };
    match request.function.as_str() {
        "hello" => {
            call.status = CallStatus::Succeeded as i32;
            let name = params["name"].as_str().unwrap_or("world");
            call.result_json =
                serde_json::json!({ "greeting": format!("hello {name}") }).to_string();
        }
        "fail" => {
            call.status = CallStatus::Failed as i32;
            call.error = Some(CallError {
                reason: "error".into(),
                message: format!(
                    "RuntimeError: boom: {}",
                    params["why"].as_str().unwrap_or("")
                ),
                log_tail: "about to fail\nTraceback (most recent call last):\n".into(),
            });
        }
        "slow" => {
            call.status = CallStatus::Timeout as i32;
            call.error = Some(CallError {
                reason: "timeout".into(),
                message: "killed after 2000 ms".into(),
                log_tail: String::new(),
            });
        }
        other => return Err(Status::not_found(format!("function \"{other}\" not found"))),
    }
    Ok(call)
}

type CallStream = Pin<Box<dyn Stream<Item = Result<Call, Status>> + Send>>;

#[tonic::async_trait]
impl CallService for FakeCalls {
    async fn invoke(&self, request: Request<InvokeRequest>) -> Result<Response<Call>, Status> {
        let mut calls = self.calls.lock().unwrap();
        let call = run(format!("call-{:03}", calls.len()), request.get_ref())?;
        calls.push(call.clone());
        Ok(Response::new(call))
    }

    async fn submit(
        &self,
        request: Request<InvokeRequest>,
    ) -> Result<Response<SubmitResponse>, Status> {
        let response = self.invoke(request).await?;
        Ok(Response::new(SubmitResponse {
            call_id: response.into_inner().id,
        }))
    }

    async fn get_call(&self, request: Request<GetCallRequest>) -> Result<Response<Call>, Status> {
        let calls = self.calls.lock().unwrap();
        calls
            .iter()
            .find(|c| c.id == request.get_ref().id)
            .cloned()
            .map(Response::new)
            .ok_or_else(|| Status::not_found("no such call"))
    }

    type WaitCallStream = CallStream;

    async fn wait_call(
        &self,
        request: Request<WaitCallRequest>,
    ) -> Result<Response<CallStream>, Status> {
        let id = request.get_ref().id.clone();
        let final_record = self
            .get_call(Request::new(GetCallRequest { id }))
            .await?
            .into_inner();
        // The record on every status change, as the real service streams it.
        let mut updates = Vec::new();
        for status in [CallStatus::Queued, CallStatus::Running] {
            let mut record = final_record.clone();
            record.status = status as i32;
            record.result_json.clear();
            updates.push(Ok(record));
        }
        updates.push(Ok(final_record));
        Ok(Response::new(Box::pin(futures::stream::iter(updates))))
    }

    async fn list_calls(
        &self,
        request: Request<ListCallsRequest>,
    ) -> Result<Response<ListCallsResponse>, Status> {
        let request = request.into_inner();
        let calls = self.calls.lock().unwrap();
        let newest_first: Vec<Call> = calls
            .iter()
            .rev()
            .filter(|c| request.function.is_empty() || c.function == request.function)
            .filter(|c| request.status == 0 || c.status == request.status)
            .cloned()
            .collect();
        let start: usize = request.page_token.parse().unwrap_or(0);
        // A tiny page size, so the client has to follow page tokens.
        let size = (request.page_size as usize).clamp(1, 2);
        let end = (start + size).min(newest_first.len());
        let next_page_token = if end < newest_first.len() {
            end.to_string()
        } else {
            String::new()
        };
        Ok(Response::new(ListCallsResponse {
            calls: newest_first[start..end].to_vec(),
            next_page_token,
        }))
    }

    async fn get_call_stats(
        &self,
        _request: Request<faas_proto::v1::GetCallStatsRequest>,
    ) -> Result<Response<faas_proto::v1::GetCallStatsResponse>, Status> {
        Err(Status::unimplemented("not part of this fake"))
    }

    async fn cancel_call(
        &self,
        _: Request<faas_proto::v1::CancelCallRequest>,
    ) -> Result<Response<Call>, Status> {
        Err(Status::unimplemented("not used by these tests"))
    }

    type FollowCallLogsStream = std::pin::Pin<
        Box<dyn futures::Stream<Item = Result<faas_proto::v1::CallLogChunk, Status>> + Send>,
    >;

    async fn follow_call_logs(
        &self,
        _: Request<faas_proto::v1::FollowCallLogsRequest>,
    ) -> Result<Response<Self::FollowCallLogsStream>, Status> {
        Err(Status::unimplemented("not used by these tests"))
    }

    async fn get_call_logs(
        &self,
        request: Request<GetCallLogsRequest>,
    ) -> Result<Response<CallLogs>, Status> {
        let call = self
            .get_call(Request::new(GetCallRequest {
                id: request.into_inner().id,
            }))
            .await?
            .into_inner();
        let params: HashMap<String, String> =
            serde_json::from_str(&call.params_json).unwrap_or_default();
        let logs = format!(
            "greeting {}\n",
            params.get("name").cloned().unwrap_or_default()
        );
        Ok(Response::new(CallLogs {
            logs: logs.into_bytes(),
            truncated: false,
        }))
    }
}

struct Output {
    code: i32,
    stdout: String,
    stderr: String,
}

async fn faasctl(endpoint: &str, args: &[&str], stdin: Option<&str>) -> Output {
    use tokio::io::AsyncWriteExt;
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_faasctl"))
        .args(args)
        // A dead endpoint first: the list fails over to the next one.
        .env("FAAS_ENDPOINT", format!("127.0.0.1:1,{endpoint}"))
        // Not the user's own contexts (a cluster of theirs, or one gone).
        .env(
            "FAASCTL_CONFIG",
            std::env::temp_dir().join("faasctl-calls-test-no-such-config.toml"),
        )
        .env_remove("FAAS_CONTEXT")
        .env_remove("FAAS_TOKEN")
        .env_remove("FAAS_TOKEN_FILE")
        .env_remove("FAAS_CA_FILE")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("faasctl starts");
    let mut pipe = child.stdin.take().unwrap();
    if let Some(text) = stdin {
        pipe.write_all(text.as_bytes()).await.unwrap();
    }
    drop(pipe);
    let out = child.wait_with_output().await.unwrap();
    Output {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8(out.stdout).unwrap(),
        stderr: String::from_utf8(out.stderr).unwrap(),
    }
}

#[tokio::test]
async fn invoke_and_call_verbs_as_scripts_see_them() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(CallServiceServer::new(FakeCalls::default()))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let e = endpoint.as_str();

    // Sync success: the result alone on stdout.
    let out = faasctl(e, &["invoke", "hello", "--data", r#"{"name":"ana"}"#], None).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let result: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(result["greeting"], "hello ana");

    // Input from stdin and from a file.
    let out = faasctl(
        e,
        &["invoke", "hello", "--data", "-"],
        Some(r#"{"name":"bo"}"#),
    )
    .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stdout.contains("hello bo"));
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.json");
    std::fs::write(&input, r#"{"name":"file"}"#).unwrap();
    let out = faasctl(
        e,
        &["invoke", "hello", "-d", &format!("@{}", input.display())],
        None,
    )
    .await;
    assert!(out.stdout.contains("hello file"), "{}", out.stderr);

    // The whole record with -o json.
    let out = faasctl(
        e,
        &[
            "invoke",
            "hello",
            "--data",
            r#"{"name":"cy"}"#,
            "-o",
            "json",
        ],
        None,
    )
    .await;
    assert_eq!(out.code, 0);
    let record: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(record["status"], "succeeded");
    assert_eq!(record["result"]["greeting"], "hello cy");
    assert_eq!(record["params"]["name"], "cy");
    assert_eq!(record["timings"]["start_kind"], "cold");
    assert_eq!(record["timings"]["total_ms"], 7.5);

    // Async: the id alone on the last line; wait, get and logs find it.
    let out = faasctl(
        e,
        &["invoke", "hello", "--async", "--data", r#"{"name":"di"}"#],
        None,
    )
    .await;
    assert_eq!(out.code, 0);
    let id = out.stdout.lines().last().unwrap().trim().to_string();
    assert!(id.starts_with("call-"), "{}", out.stdout);
    let out = faasctl(e, &["call", "wait", &id, "-o", "json"], None).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stdout.contains("hello di"));
    let out = faasctl(e, &["call", "wait", &id], None).await;
    assert!(
        out.stdout.contains("status:") && out.stdout.contains("succeeded"),
        "{}",
        out.stdout
    );
    let out = faasctl(e, &["call", "get", &id, "-o", "json"], None).await;
    assert!(out.stdout.contains("hello di"));
    let out = faasctl(e, &["call", "logs", &id], None).await;
    assert_eq!(out.stdout, "greeting di\n");

    // Failures: reason, message and log tail on stderr; exit codes by kind.
    let out = faasctl(e, &["invoke", "fail", "--data", r#"{"why":"test"}"#], None).await;
    assert_eq!(out.code, 1);
    assert_eq!(out.stdout, "");
    assert!(
        out.stderr
            .contains("error: error: RuntimeError: boom: test"),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("Traceback"), "{}", out.stderr);
    let out = faasctl(e, &["invoke", "fail", "-o", "json"], None).await;
    assert_eq!(out.code, 1, "json output still fails the command");
    assert!(out.stdout.contains("\"failed\""));
    let out = faasctl(e, &["invoke", "slow"], None).await;
    assert_eq!(out.code, 1);
    assert!(
        out.stderr.contains("error: timeout: killed after 2000 ms"),
        "{}",
        out.stderr
    );
    let out = faasctl(e, &["invoke", "nope", "--data", "{}"], None).await;
    assert_eq!(out.code, 3);
    assert!(
        out.stderr.starts_with("error: NOT_FOUND: "),
        "{}",
        out.stderr
    );
    let out = faasctl(e, &["invoke", "hello", "--data", "{oops"], None).await;
    assert_eq!(out.code, 2);
    assert!(
        out.stderr.starts_with("error: INVALID_ARGUMENT: "),
        "{}",
        out.stderr
    );
    let failed_id = {
        let out = faasctl(e, &["invoke", "fail", "--async"], None).await;
        out.stdout.trim().to_string()
    };
    let out = faasctl(e, &["call", "wait", &failed_id], None).await;
    assert_eq!(out.code, 1, "wait exits like invoke");

    // Listing follows page tokens up to --limit, newest first, with filters.
    let out = faasctl(e, &["call", "ls", "-o", "json"], None).await;
    let all: Vec<serde_json::Value> = serde_json::from_str(&out.stdout).unwrap();
    assert!(all.len() >= 8, "{}", out.stdout);
    assert!(out.stdout.contains(&id));
    let out = faasctl(e, &["call", "ls", "--limit", "3", "-o", "json"], None).await;
    let three: Vec<serde_json::Value> = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(three.len(), 3);
    assert_eq!(three[0]["id"], all[0]["id"]);
    let out = faasctl(
        e,
        &["call", "ls", "--status", "failed", "--function", "fail"],
        None,
    )
    .await;
    assert_eq!(out.code, 0);
    let lines: Vec<_> = out.stdout.lines().collect();
    assert!(lines[0].starts_with("ID"));
    assert_eq!(
        lines.len(),
        4,
        "header + 3 failed calls of fail: {}",
        out.stdout
    );
    assert!(lines[1..].iter().all(|l| l.contains("failed")));
}
