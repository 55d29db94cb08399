//! The client libraries against the real stack: the Rust crate
//! (faas-client, which faasctl is built on) called here, and the Python
//! package built into a wheel, installed in a scratch directory and its
//! unittest suite run against the same kind of stack, pointed at it by a
//! faasctl context.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use faas_client::config::{resolve, ConfigFile, ContextEntry, Overrides};
use faas_client::{CallFilter, CallStatus, Client, Error};
use faas_tests::{fixture_dir, repo_root, Stack, StackOptions};
use futures::StreamExt;

/// Nothing listens on port 1 of loopback: a context that lists it first
/// exercises the failover to the next endpoint.
const DEAD_ENDPOINT: &str = "https://127.0.0.1:1";

async fn stack_with_functions() -> anyhow::Result<Stack> {
    let stack = Stack::start(StackOptions {
        runtimes: vec!["python3"],
        ..StackOptions::default()
    })
    .await?;
    for (name, fixture) in [
        ("hello", "py-hello"),
        ("fail", "py-raise"),
        ("sleep", "py-sleep"),
        ("ticks", "py-ticks"),
    ] {
        stack.deploy(name, "python3", &fixture_dir(fixture), &[])?;
    }
    Ok(stack)
}

/// A faasctl contexts file with context "it" for the stack (a dead
/// endpoint first), as `faasctl context set` writes it.
fn write_context(stack: &Stack) -> anyhow::Result<PathBuf> {
    let path = stack.dir.path().join("clients-config.toml");
    let mut file = ConfigFile::default();
    file.contexts.insert(
        "it".into(),
        ContextEntry {
            endpoint: Some(format!("{DEAD_ENDPOINT},{}", stack.endpoints())),
            ca_file: Some(stack.ca_file()),
            token_file: Some(stack.admin_token_file()),
            token: None,
            namespace: None,
        },
    );
    file.save(&path)?;
    Ok(path)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rust_client_invokes_waits_lists_and_names_errors() -> anyhow::Result<()> {
    let stack = stack_with_functions().await?;
    let config = write_context(&stack)?;
    let settings = resolve(&Overrides {
        config_file: Some(config),
        context: Some("it".into()),
        ..Overrides::default()
    })?;
    assert_eq!(settings.endpoints[0], DEAD_ENDPOINT);
    let client = Client::new(settings)?;
    assert_eq!(client.namespace(), "default");

    // Synchronous: the final record with the result and timings.
    let call = client.invoke("hello", r#"{"name":"ana"}"#).await?;
    assert_eq!(call.status(), CallStatus::Succeeded, "{call:?}");
    let result: serde_json::Value = serde_json::from_str(&call.result_json)?;
    assert_eq!(result["greeting"], "hello ana");
    assert!(call.timings.as_ref().is_some_and(|t| t.total_ms > 0.0));

    // Asynchronous: an id, the final record, the same by get, its logs.
    let id = client.submit("hello", r#"{"name":"bo"}"#).await?;
    let waited = client.wait(&id, Some(Duration::from_secs(60))).await?;
    assert_eq!(
        (waited.id.as_str(), waited.status()),
        (id.as_str(), CallStatus::Succeeded)
    );
    assert_eq!(client.get_call(&id).await?.result_json, waited.result_json);
    let logs = client.logs(&id).await?;
    assert!(
        String::from_utf8_lossy(&logs.logs).contains("greeting bo"),
        "{logs:?}"
    );
    // Follow: ends with the call, and holds what it printed.
    let id2 = client.submit("hello", r#"{"name":"cy"}"#).await?;
    let pieces: Vec<_> = client.follow_logs(&id2).collect().await;
    let followed: Vec<u8> = pieces
        .into_iter()
        .map(|p| p.map(|l| l.logs))
        .collect::<Result<Vec<_>, _>>()?
        .concat();
    assert!(String::from_utf8_lossy(&followed).contains("greeting cy"));

    // Listings.
    let calls = client
        .list_calls(&CallFilter {
            function: Some("hello".into()),
            ..CallFilter::default()
        })
        .await?;
    assert!(calls.iter().any(|c| c.id == id) && calls.iter().all(|c| c.function == "hello"));
    let one = client
        .list_calls(&CallFilter {
            limit: 1,
            ..CallFilter::default()
        })
        .await?;
    assert_eq!(one.len(), 1);
    let everywhere = client
        .with_namespace(faas_client::namespaces::ALL)
        .list_calls(&CallFilter {
            status: Some(CallStatus::Succeeded),
            ..CallFilter::default()
        })
        .await?;
    assert!(everywhere.iter().any(|c| c.id == id2));
    assert!(everywhere
        .iter()
        .all(|c| c.status() == CallStatus::Succeeded));
    let mut names: Vec<String> = client
        .list_functions(None)
        .await?
        .into_iter()
        .map(|f| f.name)
        .collect();
    names.sort();
    assert_eq!(names, ["fail", "hello", "sleep", "ticks"]);
    assert!(client.list_functions(Some("node")).await?.is_empty());

    // A failing function is a record, not an error.
    let failed = client.invoke("fail", r#"{"why":"test"}"#).await?;
    assert_eq!(failed.status(), CallStatus::Failed);
    let error = failed.error.clone().unwrap_or_default();
    assert_eq!(error.reason, "error");
    assert!(error.log_tail.contains("boom: test"), "{error:?}");

    // Errors by code.
    let e = client.invoke("nope", "{}").await.unwrap_err();
    assert!(matches!(e, Error::NotFound(_)), "{e}");
    let e = client.invoke("hello", "{oops").await.unwrap_err();
    assert!(matches!(e, Error::InvalidArgument(_)), "{e}");
    let e = client.get_call("no-such-call").await.unwrap_err();
    assert!(matches!(e, Error::InvalidArgument(_)), "{e}");
    let e = client
        .get_call("0192f1a0-0000-7000-8000-000000000000")
        .await
        .unwrap_err();
    assert!(matches!(e, Error::NotFound(_)), "{e}");
    let slow = client.submit("sleep", r#"{"seconds":2}"#).await?;
    let e = client
        .wait(&slow, Some(Duration::from_millis(200)))
        .await
        .unwrap_err();
    assert!(matches!(e, Error::DeadlineExceeded(_)), "{e}");
    assert_eq!(
        client.wait(&slow, None).await?.status(),
        CallStatus::Succeeded
    );
    let in_other = client.with_namespace("nowhere").invoke("hello", "{}").await;
    assert!(in_other.is_err(), "{in_other:?}");

    // Explicit connections: the right token, a wrong one, nothing listening.
    let ca = stack.auth.ca_pem.as_str();
    let direct = Client::connect(&[&stack.endpoint], Some(ca), Some(&stack.auth.token)).await?;
    assert_eq!(direct.get_call(&id).await?.id, id);
    let stranger = Client::connect(&[&stack.endpoint], Some(ca), Some("nobody.nothing")).await?;
    let e = stranger.invoke("hello", "{}").await.unwrap_err();
    assert!(matches!(e, Error::Unauthenticated(_)), "{e}");
    let e = Client::connect(&[DEAD_ENDPOINT], Some(ca), None)
        .await
        .err()
        .expect("nothing listens there");
    assert!(
        matches!(e, Error::Unreachable { ref attempts } if attempts.len() == 1),
        "{e}"
    );

    stack.shutdown().await
}

/// What the libraries' suites are told: the context "it" of `config` and
/// the functions of [`stack_with_functions`]; nothing of the environment
/// that would override the context.
fn suite_env<'a>(cmd: &'a mut Command, config: &Path) -> &'a mut Command {
    cmd.env("FAASCTL_CONFIG", config)
        .env("FAAS_CLIENT_TEST_CONTEXT", "it")
        .env("FAAS_CLIENT_TEST_HELLO", "hello")
        .env("FAAS_CLIENT_TEST_FAIL", "fail")
        .env("FAAS_CLIENT_TEST_SLEEP", "sleep")
        .env("FAAS_CLIENT_TEST_TICKS", "ticks");
    for name in [
        "FAAS_ENDPOINT",
        "FAAS_TOKEN",
        "FAAS_TOKEN_FILE",
        "FAAS_CA_FILE",
        "FAAS_NAMESPACE",
        "FAAS_CONTEXT",
    ] {
        cmd.env_remove(name);
    }
    cmd
}

/// The interpreter Debian's python3-grpcio is installed for.
fn python() -> &'static str {
    if Path::new("/usr/bin/python3").exists() {
        "/usr/bin/python3"
    } else {
        "python3"
    }
}

fn run(cmd: &mut Command, what: &str) -> anyhow::Result<String> {
    let out = cmd.output()?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    anyhow::ensure!(out.status.success(), "{what} failed:\n{text}");
    Ok(text)
}

/// clients/python built into a wheel (as `pip install` would build it)
/// and unpacked into `site`; its tests copied to `tests`.
fn install_python_package(dir: &Path) -> anyhow::Result<(PathBuf, PathBuf)> {
    let source = dir.join("source");
    let wheels = dir.join("wheels");
    let site = dir.join("site");
    std::fs::create_dir_all(&wheels)?;
    run(
        Command::new("cp")
            .arg("-r")
            .arg(repo_root().join("clients/python"))
            .arg(&source),
        "copying clients/python",
    )?;
    let script = format!(
        "import sys, zipfile\n\
         from setuptools import build_meta\n\
         name = build_meta.build_wheel({wheels:?})\n\
         zipfile.ZipFile({wheels:?} + '/' + name).extractall({site:?})\n\
         print(name)\n",
        wheels = wheels.display().to_string(),
        site = site.display().to_string(),
    );
    let name = run(
        Command::new(python())
            .arg("-c")
            .arg(script)
            .current_dir(&source),
        "building the wheel",
    )?;
    assert!(name.contains("faas_client-"), "{name}");
    for file in ["py.typed", "_proto/api_pb2.pyi", "_proto/api_pb2_grpc.py"] {
        assert!(
            site.join("faas_client").join(file).exists(),
            "{file} not in the wheel"
        );
    }
    Ok((site, source.join("tests")))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_package_passes_its_suite_against_the_stack() -> anyhow::Result<()> {
    let scratch = tempfile::tempdir()?;
    let (site, tests) = install_python_package(scratch.path())?;
    let stack = stack_with_functions().await?;
    let config = write_context(&stack)?;
    let mut suite = Command::new(python());
    suite
        .args(["-m", "unittest", "discover", "-v", "-s"])
        .arg(&tests)
        .current_dir(scratch.path())
        // Only the installed wheel: not the source tree, nor the user's
        // site-packages.
        .env("PYTHONPATH", &site)
        .env("PYTHONNOUSERSITE", "1");
    let out = suite_env(&mut suite, &config).output()?;
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "the Python suite failed:\n{text}");
    assert!(!text.contains("skipped"), "nothing may be skipped:\n{text}");
    assert!(
        text.contains("test_stack.StackTest.test_errors_are_precise) ... ok"),
        "the stack tests did not run:\n{text}"
    );
    let imported = run(
        Command::new(python())
            .args(["-c", "import faas_client; print(faas_client.__file__)"])
            .env("PYTHONPATH", &site)
            .current_dir(scratch.path()),
        "importing faas_client",
    )?;
    assert!(
        imported.trim().starts_with(&site.display().to_string()),
        "{imported}"
    );
    stack.shutdown().await
}

/// The generated Python modules are those of proto/faas/v1/api.proto today.
#[test]
fn python_stubs_match_the_proto() {
    let out = Command::new(python())
        .arg(repo_root().join("clients/python/scripts/gen_proto.py"))
        .arg("--check")
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The Node package (clients/node) built with its npm dependencies and its
/// node:test suite run against the stack. Ignored by default: `npm ci`
/// needs the npm registry, which the pristine CI root is not given
/// (`cargo test ... -- --ignored the_node_package` where npm reaches it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs node, npm and the npm registry"]
async fn the_node_package_passes_its_suite_against_the_stack() -> anyhow::Result<()> {
    let package = repo_root().join("clients/node");
    run(
        Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund"])
            .current_dir(&package),
        "npm ci",
    )?;
    run(
        Command::new("npm")
            .args(["run", "build"])
            .current_dir(&package),
        "npm run build",
    )?;
    let stack = stack_with_functions().await?;
    let config = write_context(&stack)?;
    let mut suite = Command::new("npm");
    suite.arg("test").current_dir(&package);
    let out = suite_env(&mut suite, &config).output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "the Node suite failed:\n{text}");
    assert!(
        text.contains("# skipped 0"),
        "nothing may be skipped:\n{text}"
    );
    assert!(
        text.contains("# fail 0") && text.contains("ok 5 - errors are precise"),
        "{text}"
    );
    stack.shutdown().await
}
