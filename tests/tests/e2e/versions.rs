//! Function versions and aliases on the real stack: every deploy and
//! configuration update is a version that can still be invoked
//! (NAME:VERSION), aliases pick a version or split calls between two
//! (NAME:ALIAS), a rollback makes an earlier version current again, old
//! versions are pruned except those an alias names, and deleting the
//! function takes its versions and aliases with it.

use std::collections::BTreeMap;
use std::path::Path;

use faas_proto::v1::call_service_client::CallServiceClient;
use faas_proto::v1::function_service_client::FunctionServiceClient;
use faas_proto::v1::{
    deploy_function_request, Call, CallStatus, DeployFunctionRequest, Function, FunctionSpec,
    InvokeRequest, SubmitResponse, WaitCallRequest,
};
use faas_tests::{fixture_dir, stdout_of, Channel, Stack, StackOptions};
use serde_json::Value;
use tokio_stream::StreamExt;

/// Versions kept in this test's control plane: small, so that pruning is
/// reached after a few deploys.
const KEPT: &str = "3";

fn write_version(dir: &Path, text: &str) {
    std::fs::write(dir.join("VERSION"), text).unwrap();
}

/// Invokes `function` ("NAME[:QUALIFIER]"); the call, or the gRPC status.
async fn invoke(
    calls: &mut CallServiceClient<Channel>,
    function: &str,
) -> Result<Call, tonic::Status> {
    calls
        .invoke(InvokeRequest {
            function: function.into(),
            params_json: "{}".into(),
            ..Default::default()
        })
        .await
        .map(|r| r.into_inner())
}

/// What the py-version handler answered: (its VERSION file, the function
/// version its context names), and the version the call record names.
async fn ran(calls: &mut CallServiceClient<Channel>, function: &str) -> (String, String, u64) {
    let call = invoke(calls, function)
        .await
        .unwrap_or_else(|e| panic!("invoke {function}: {e}"));
    assert_eq!(call.status(), CallStatus::Succeeded, "{function}: {call:?}");
    let result: Value = serde_json::from_str(&call.result_json).unwrap();
    (
        result["version"].as_str().unwrap().to_string(),
        result["function_version"].as_str().unwrap().to_string(),
        call.function_version,
    )
}

fn faasctl_json(stack: &Stack, args: &[&str]) -> Value {
    let out = stack
        .faasctl()
        .args(args)
        .args(["-o", "json"])
        .output()
        .unwrap();
    serde_json::from_str(&stdout_of(out, &args.join(" "))).unwrap()
}

/// `faasctl ARGS`: exit code and stderr.
fn faasctl_fails(stack: &Stack, args: &[&str]) -> (i32, String) {
    let out = stack.faasctl().args(args).output().unwrap();
    assert!(!out.status.success(), "{args:?} succeeded");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn versions_of(stack: &Stack, name: &str) -> Vec<u64> {
    faasctl_json(stack, &["fn", "versions", name])
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["version"].as_u64().unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn versions_aliases_rollback_and_pruning() -> anyhow::Result<()> {
    let stack = Stack::start(StackOptions {
        runtimes: vec!["python3"],
        controlplane_args: vec!["--max-function-versions".into(), KEPT.into()],
        ..StackOptions::default()
    })
    .await?;
    let mut calls = CallServiceClient::new(stack.channel().await);
    let source = tempfile::tempdir()?;
    std::fs::copy(
        fixture_dir("py-version").join("handler.py"),
        source.path().join("handler.py"),
    )?;

    // Version 1 and 2 by deploy, 3 by a configuration-only update.
    write_version(source.path(), "one");
    stack.deploy("hello", "python3", source.path(), &[])?;
    write_version(source.path(), "two");
    stack.deploy("hello", "python3", source.path(), &[])?;
    stdout_of(
        stack
            .faasctl()
            .args(["fn", "update", "hello", "--memory", "192Mi"])
            .output()?,
        "fn update",
    );
    assert_eq!(versions_of(&stack, "hello"), vec![1, 2, 3]);

    // The current version, by name and as "latest"; an earlier one by its
    // number: its own package and its own configuration.
    assert_eq!(
        ran(&mut calls, "hello").await,
        ("two".into(), "3".into(), 3)
    );
    assert_eq!(ran(&mut calls, "hello:latest").await.2, 3);
    assert_eq!(
        ran(&mut calls, "hello:1").await,
        ("one".into(), "1".into(), 1)
    );
    let v1 = faasctl_json(&stack, &["fn", "get", "hello:1"]);
    let v3 = faasctl_json(&stack, &["fn", "get", "hello"]);
    assert_eq!(v1["version"], 1);
    assert_eq!(v3["memory_bytes"], 192u64 << 20);
    assert_ne!(v1["memory_bytes"], v3["memory_bytes"]);

    // A version that does not exist, and qualifiers that are no version
    // or alias: NOT_FOUND and INVALID_ARGUMENT, nothing recorded.
    assert_eq!(
        invoke(&mut calls, "hello:9").await.unwrap_err().code(),
        tonic::Code::NotFound
    );
    assert_eq!(
        invoke(&mut calls, "hello:nope").await.unwrap_err().code(),
        tonic::Code::NotFound
    );
    for bad in ["hello:", "hello:0", "hello:Live", "hello:a:b"] {
        assert_eq!(
            invoke(&mut calls, bad).await.unwrap_err().code(),
            tonic::Code::InvalidArgument,
            "{bad}"
        );
    }
    assert_eq!(faasctl_fails(&stack, &["invoke", "hello:9"]).0, 3);

    // An alias on version 1: calls through it run version 1, and their
    // records say through which alias.
    let alias = faasctl_json(&stack, &["fn", "alias", "set", "hello", "live", "1"]);
    assert_eq!(alias["version"], 1);
    assert_eq!(
        ran(&mut calls, "hello:live").await,
        ("one".into(), "1".into(), 1)
    );
    let call = faasctl_json(&stack, &["invoke", "hello:live"]);
    assert_eq!(call["alias"], "live");
    assert_eq!(call["function_version"], 1);
    assert_eq!(
        faasctl_json(&stack, &["fn", "get", "hello:live"])["version"],
        1
    );

    // Bad aliases: a version's name, a version that does not exist, a
    // weight outside (0, 1) (refused by faasctl, and by the server).
    let (code, err) = faasctl_fails(&stack, &["fn", "alias", "set", "hello", "42", "1"]);
    assert_eq!(code, 2, "{err}");
    let (code, err) = faasctl_fails(&stack, &["fn", "alias", "set", "hello", "live", "99"]);
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("no version 99"), "{err}");
    let (code, _) = faasctl_fails(
        &stack,
        &[
            "fn", "alias", "set", "hello", "live", "1", "--weight", "2=1.5",
        ],
    );
    assert_eq!(code, 2);
    let refused =
        faas_proto::v1::function_service_client::FunctionServiceClient::new(stack.channel().await)
            .set_alias(faas_proto::v1::SetAliasRequest {
                function: "hello".into(),
                alias: "live".into(),
                version: 1,
                additional_version: 2,
                additional_weight: 1.0,
                ..Default::default()
            })
            .await
            .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused:?}");
    // The alias is unchanged by the refusals.
    assert_eq!(ran(&mut calls, "hello:live").await.2, 1);

    // A weighted alias: version 2 gets half of the calls. 30 calls all
    // on one side would happen by chance once in 5e8 runs.
    faasctl_json(
        &stack,
        &[
            "fn", "alias", "set", "hello", "live", "1", "--weight", "2=0.5",
        ],
    );
    let mut seen: BTreeMap<u64, usize> = BTreeMap::new();
    for _ in 0..30 {
        let (text, context_version, version) = ran(&mut calls, "hello:live").await;
        let expected = if version == 1 { "one" } else { "two" };
        assert_eq!(text, expected);
        assert_eq!(context_version, version.to_string());
        *seen.entry(version).or_default() += 1;
    }
    eprintln!("calls through the weighted alias, by version: {seen:?}");
    assert_eq!(
        seen.keys().copied().collect::<Vec<_>>(),
        vec![1, 2],
        "{seen:?}"
    );

    // Rollback to version 1: a new version 4 with version 1's package and
    // configuration. Kept: 3 at most, but 1 and 2 are aliased: 3 goes.
    let rolled = faasctl_json(&stack, &["fn", "rollback", "hello", "--to", "1"]);
    assert_eq!(rolled["version"], 4);
    assert_eq!(
        ran(&mut calls, "hello").await,
        ("one".into(), "4".into(), 4)
    );
    assert_eq!(
        faasctl_json(&stack, &["fn", "get", "hello"])["memory_bytes"],
        v1["memory_bytes"]
    );
    assert_eq!(versions_of(&stack, "hello"), vec![1, 2, 4]);
    assert_eq!(
        invoke(&mut calls, "hello:3").await.unwrap_err().code(),
        tonic::Code::NotFound
    );
    // The pruned version's package manifest went with it.
    for (tag, status) in [("v1", 200), ("v2", 200), ("v3", 404), ("v4", 200)] {
        let path = format!("/v2/faas/functions/hello/manifests/{tag}");
        assert_eq!(stack.registry_status(&path).await?, status, "{path}");
    }

    // A call accepted for version 1 runs version 1, even though a deploy
    // made version 5 current before it ran.
    let SubmitResponse { call_id } = calls
        .submit(InvokeRequest {
            function: "hello:1".into(),
            params_json: "{}".into(),
            ..Default::default()
        })
        .await?
        .into_inner();
    write_version(source.path(), "five");
    stack.deploy("hello", "python3", source.path(), &[])?;
    let mut waited = calls
        .wait_call(WaitCallRequest {
            id: call_id.clone(),
            ..Default::default()
        })
        .await?
        .into_inner();
    let mut last = None;
    while let Some(call) = waited.next().await {
        last = Some(call?);
    }
    let call = last.expect("the wait ends with the call");
    assert_eq!(call.status(), CallStatus::Succeeded, "{call:?}");
    assert!(call.result_json.contains("\"one\""), "{}", call.result_json);
    // Version 5 made, and with 1, 2 aliased and 5 current, 4 went.
    assert_eq!(versions_of(&stack, "hello"), vec![1, 2, 5]);

    // Aliases listed, deleted; then version 1 is no longer protected.
    let aliases = faasctl_json(&stack, &["fn", "alias", "ls", "hello"]);
    assert_eq!(aliases.as_array().unwrap().len(), 1);
    assert_eq!(aliases[0]["additional_version"], 2);
    stdout_of(
        stack
            .faasctl()
            .args(["fn", "alias", "rm", "hello", "live"])
            .output()?,
        "fn alias rm",
    );
    assert_eq!(
        invoke(&mut calls, "hello:live").await.unwrap_err().code(),
        tonic::Code::NotFound
    );
    assert_eq!(
        faasctl_fails(&stack, &["fn", "alias", "rm", "hello", "live"]).0,
        3
    );

    // Deleting the function takes its versions and aliases: nothing of it
    // is left in etcd, and the same name starts again at version 1.
    faasctl_json(&stack, &["fn", "alias", "set", "hello", "stable", "2"]);
    stdout_of(
        stack.faasctl().args(["fn", "rm", "hello"]).output()?,
        "fn rm",
    );
    let mut etcd = stack.etcd_client().await?;
    let left = etcd
        .get(
            "/faas/v1/",
            Some(
                etcd_client::GetOptions::new()
                    .with_prefix()
                    .with_keys_only(),
            ),
        )
        .await?;
    let left: Vec<String> = left
        .kvs()
        .iter()
        .map(|kv| String::from_utf8_lossy(kv.key()).into_owned())
        .filter(|k| k.contains("/function-versions/") || k.contains("/function-aliases/"))
        .collect();
    assert!(left.is_empty(), "left in etcd: {left:?}");
    write_version(source.path(), "again");
    stack.deploy("hello", "python3", source.path(), &[])?;
    assert_eq!(versions_of(&stack, "hello"), vec![1]);
    assert_eq!(ran(&mut calls, "hello:1").await.0, "again");
    assert_eq!(
        invoke(&mut calls, "hello:stable").await.unwrap_err().code(),
        tonic::Code::NotFound
    );
    stack.shutdown().await
}

/// A tar.gz of the py-version handler with `version` as its VERSION file.
fn version_package(version: &str) -> Vec<u8> {
    let handler = std::fs::read(fixture_dir("py-version").join("handler.py")).unwrap();
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let mut tar = tar::Builder::new(gz);
    for (name, content) in [
        ("handler.py", handler.as_slice()),
        ("VERSION", version.as_bytes()),
    ] {
        let mut header = tar::Header::new_gnu();
        header.set_size(content.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        tar.append_data(&mut header, name, content).unwrap();
    }
    tar.into_inner().unwrap().finish().unwrap()
}

/// A deploy whose spec is sent now and whose package is sent by
/// `finish`: the control plane reads the function's current version
/// before it reads the package.
async fn open_deploy(
    stack: &Stack,
    name: &str,
) -> (
    tokio::sync::mpsc::Sender<DeployFunctionRequest>,
    tokio::task::JoinHandle<Result<tonic::Response<Function>, tonic::Status>>,
) {
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    tx.send(DeployFunctionRequest {
        part: Some(deploy_function_request::Part::Spec(FunctionSpec {
            name: name.into(),
            runtime: "python3".into(),
            ..Default::default()
        })),
    })
    .await
    .unwrap();
    let mut client = FunctionServiceClient::new(stack.channel().await);
    let deploy = tokio::spawn(async move {
        client
            .deploy_function(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
    });
    (tx, deploy)
}

async fn finish(
    (tx, deploy): (
        tokio::sync::mpsc::Sender<DeployFunctionRequest>,
        tokio::task::JoinHandle<Result<tonic::Response<Function>, tonic::Status>>,
    ),
    package: Vec<u8>,
) -> Result<Function, tonic::Status> {
    tx.send(DeployFunctionRequest {
        part: Some(deploy_function_request::Part::Chunk(package)),
    })
    .await
    .unwrap();
    drop(tx);
    deploy.await.unwrap().map(|r| r.into_inner())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_deploys_make_one_version_not_two_records_of_it() -> anyhow::Result<()> {
    let stack = Stack::start(StackOptions {
        runtimes: vec!["python3"],
        ..StackOptions::default()
    })
    .await?;
    let mut calls = CallServiceClient::new(stack.channel().await);
    let first = finish(open_deploy(&stack, "race").await, version_package("one")).await?;
    assert_eq!(first.version, 1);
    // Both read version 1 as current, then both would make version 2.
    let a = open_deploy(&stack, "race").await;
    let b = open_deploy(&stack, "race").await;
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let won = finish(a, version_package("two")).await?;
    assert_eq!(won.version, 2);
    let lost = finish(b, version_package("three")).await.unwrap_err();
    assert_eq!(lost.code(), tonic::Code::Aborted, "{lost:?}");
    assert!(lost.message().contains("retry"), "{lost:?}");
    // Version 2 is the winner's, as the current record and as NAME:2.
    assert_eq!(versions_of(&stack, "race"), vec![1, 2]);
    assert_eq!(ran(&mut calls, "race").await, ("two".into(), "2".into(), 2));
    assert_eq!(ran(&mut calls, "race:2").await.0, "two");
    let path = "/v2/faas/functions/race/manifests/v2";
    assert_eq!(stack.registry_status(path).await?, 200, "{path}");
    // Retried, the loser makes version 3.
    let retried = finish(open_deploy(&stack, "race").await, version_package("three")).await?;
    assert_eq!(retried.version, 3);
    assert_eq!(ran(&mut calls, "race").await.0, "three");
    stack.shutdown().await
}

/// With preload-function, calls through an alias that names an earlier
/// version find that version preloaded (before: only the current version
/// was ever preloaded, and every call through the alias started cold).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preloads_follow_the_version_an_alias_names() -> anyhow::Result<()> {
    let stack = Stack::start(StackOptions {
        runtimes: vec!["python3"],
        spots: 2,
        policy: Some("preload-function".into()),
        ..StackOptions::default()
    })
    .await?;
    let mut calls = CallServiceClient::new(stack.channel().await);
    let source = tempfile::tempdir()?;
    std::fs::copy(
        fixture_dir("py-version").join("handler.py"),
        source.path().join("handler.py"),
    )?;
    write_version(source.path(), "one");
    stack.deploy("hello", "python3", source.path(), &[])?;
    write_version(source.path(), "two");
    stack.deploy("hello", "python3", source.path(), &[])?;
    stdout_of(
        stack
            .faasctl()
            .args(["fn", "alias", "set", "hello", "stable", "1"])
            .output()?,
        "fn alias set",
    );
    let mut kinds = Vec::new();
    for _ in 0..6 {
        // Time for the spot a call used to be preloaded again.
        tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
        let call = invoke(&mut calls, "hello:stable").await?;
        assert_eq!(call.status(), CallStatus::Succeeded, "{call:?}");
        assert_eq!(call.function_version, 1);
        let result: Value = serde_json::from_str(&call.result_json)?;
        assert_eq!(result["version"], "one");
        kinds.push(call.timings.unwrap_or_default().start_kind());
    }
    let prewarm = kinds
        .iter()
        .filter(|k| **k == faas_proto::v1::StartKind::PrewarmFunction)
        .count();
    assert!(prewarm >= 4, "calls through the alias: {kinds:?}");
    // The current version still runs as itself.
    let call = invoke(&mut calls, "hello").await?;
    assert_eq!(call.function_version, 2);
    Ok(())
}
