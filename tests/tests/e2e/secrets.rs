//! Secrets (issue 11), on the real stack: sealed in etcd, delivered only
//! into the calls of the functions that reference them (a read-only file
//! of the call's uid, and an env variable when asked), never shown by the
//! API, the CLI or the logs, and rotated for the next call, preloaded or
//! not.

use std::time::Duration;

use faas_tests::{fixture_dir, stdout_of, Stack, StackOptions};

/// The `db` secret as a call of `reader` in `namespace` sees it.
fn read_secret(stack: &Stack, token: &str, namespace: &str) -> serde_json::Value {
    let out = stdout_of(
        stack.faasctl_as(token, &["-n", namespace, "invoke", "reader"]),
        "invoke reader",
    );
    serde_json::from_str(&out).expect("a JSON result")
}

const FIRST: &str = "s3cret-first-7f2a";
const SECOND: &str = "s3cret-second-91bc";
const OTHER: &str = "s3cret-other-team-55d0";

/// Preloading functions: a preloaded spot must hold the value current for
/// its function's version, and be replaced at a rotation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_reach_only_their_calls_and_rotate() -> anyhow::Result<()> {
    secrets_under("preload-function").await
}

/// Preloading runtimes: the secrets are written when the call arrives,
/// before the function's code starts (it reads them at import).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_reach_runtime_preloaded_calls() -> anyhow::Result<()> {
    secrets_under("preload-runtime").await
}

async fn secrets_under(policy: &str) -> anyhow::Result<()> {
    let stack = Stack::start(StackOptions {
        runtimes: vec!["python3"],
        policy: Some(policy.into()),
        ..StackOptions::default()
    })
    .await?;
    let admin = stack.auth.token.clone();
    for ns in ["team-a", "team-b"] {
        stdout_of(
            stack.faasctl_as(&admin, &["namespace", "create", ns]),
            "ns create",
        );
    }
    let token = |ns: &str| {
        stdout_of(
            stack.faasctl_as(
                &admin,
                &["token", "create", "--role", "developer", "--namespaces", ns],
            ),
            "token",
        )
        .trim()
        .to_string()
    };
    let (dev_a, dev_b) = (token("team-a"), token("team-b"));
    let reader = fixture_dir("py-secret");
    let reader = reader.to_str().unwrap();

    // A function cannot reference a secret that does not exist.
    let deploy = |token: &str, ns: &str| {
        stack.faasctl_as(
            token,
            &[
                "-n",
                ns,
                "fn",
                "deploy",
                "reader",
                "--runtime",
                "python3",
                "--secret",
                "db:DB_PASSWORD",
                reader,
            ],
        )
    };
    let out = deploy(&dev_a, "team-a");
    assert_eq!(out.status.code(), Some(5), "{out:?}");

    stdout_of(
        stack.faasctl_as(
            &dev_a,
            &[
                "-n",
                "team-a",
                "secret",
                "create",
                "db",
                "--from-literal",
                FIRST,
            ],
        ),
        "secret create",
    );
    // The same name again needs --replace.
    let out = stack.faasctl_as(
        &dev_a,
        &[
            "-n",
            "team-a",
            "secret",
            "create",
            "db",
            "--from-literal",
            "x",
        ],
    );
    assert_eq!(out.status.code(), Some(5), "{out:?}");
    // Another team's secret of the same name is its own.
    let value_file = stack.dir.path().join("other-value");
    std::fs::write(&value_file, OTHER)?;
    stdout_of(
        stack.faasctl_as(
            &dev_b,
            &[
                "-n",
                "team-b",
                "secret",
                "create",
                "db",
                "--from-file",
                value_file.to_str().unwrap(),
            ],
        ),
        "team-b secret",
    );
    stdout_of(deploy(&dev_a, "team-a"), "deploy team-a");
    stdout_of(deploy(&dev_b, "team-b"), "deploy team-b");

    // The call sees its own namespace's value: a file only it may read,
    // read-only, in a directory it cannot add to; and the env variable.
    for round in 0..3 {
        let seen = read_secret(&stack, &dev_a, "team-a");
        assert_eq!(seen["file"], FIRST, "round {round}: {seen}");
        assert_eq!(seen["at_import"], FIRST, "round {round}: {seen}");
        assert_eq!(seen["env"], FIRST, "round {round}: {seen}");
        assert_eq!(seen["mode"], "0o400", "{seen}");
        assert_eq!(seen["owner_is_me"], true, "{seen}");
        assert_eq!(seen["writable"], false, "{seen}");
        assert_eq!(seen["planted"], false, "{seen}");
        assert_eq!(seen["listed"], serde_json::json!(["db"]), "{seen}");
        let theirs = read_secret(&stack, &dev_b, "team-b");
        assert_eq!(theirs["file"], OTHER, "{theirs}");
    }

    // Rotation: the next call gets the new value, wherever it starts; the
    // function has a new version.
    stdout_of(
        stack.faasctl_as(
            &dev_a,
            &[
                "-n",
                "team-a",
                "secret",
                "create",
                "db",
                "--replace",
                "--from-literal",
                SECOND,
            ],
        ),
        "rotate",
    );
    for round in 0..4 {
        let seen = read_secret(&stack, &dev_a, "team-a");
        assert_eq!(seen["file"], SECOND, "round {round}: {seen}");
        assert_eq!(seen["at_import"], SECOND, "round {round}: {seen}");
        assert_eq!(seen["env"], SECOND, "round {round}: {seen}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let got = stdout_of(
        stack.faasctl_as(
            &dev_a,
            &["-n", "team-a", "fn", "get", "reader", "-o", "json"],
        ),
        "fn get",
    );
    let function: serde_json::Value = serde_json::from_str(&got)?;
    assert_eq!(function["version"], 2, "{function}");
    assert_eq!(function["secrets"][0]["name"], "db", "{function}");

    // Never shown: not by fn get, secret get/ls, call records and logs.
    let mut shown = got;
    for args in [
        vec!["-n", "team-a", "secret", "get", "db", "-o", "json"],
        vec!["-n", "team-a", "secret", "ls"],
        vec!["secret", "ls", "-A", "-o", "json"],
        vec!["-n", "team-a", "call", "ls", "-o", "json"],
    ] {
        shown.push_str(&stdout_of(stack.faasctl_as(&admin, &args), "read"));
    }
    let calls: serde_json::Value = serde_json::from_str(&stdout_of(
        stack.faasctl_as(&admin, &["-n", "team-a", "call", "ls", "-o", "json"]),
        "call ls",
    ))?;
    for call in calls.as_array().unwrap() {
        let id = call["id"].as_str().unwrap();
        shown.push_str(&stdout_of(
            stack.faasctl_as(&admin, &["call", "get", id, "-o", "json"]),
            "call get",
        ));
        shown.push_str(&stdout_of(
            stack.faasctl_as(&admin, &["call", "logs", id]),
            "logs",
        ));
    }
    // The policy's preloads served calls: the secrets reached preloaded
    // spots, not only cold ones.
    let wanted = match policy {
        "preload-runtime" => "prewarm_runtime",
        _ => "prewarm_function",
    };
    let preloaded = calls
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["timings"]["start_kind"] == wanted)
        .count();
    assert!(preloaded > 0, "no call started {wanted}: {calls}");
    for value in [FIRST, SECOND] {
        // Calls return the value (the fixture's choice): their results
        // aside, nothing shows it.
        let without_results = shown.replace(&format!("\"{value}\""), "");
        assert!(
            !without_results.contains(value),
            "a secret value is shown: {shown}"
        );
    }
    assert!(shown.contains("\"db\""), "names are shown");

    // Sealed at rest: no etcd value holds a secret's bytes.
    let mut etcd = stack.etcd_client().await?;
    let all = etcd
        .get("", Some(etcd_client::GetOptions::new().with_all_keys()))
        .await?;
    let mut sealed = 0;
    for kv in all.kvs() {
        let key = String::from_utf8_lossy(kv.key()).into_owned();
        if key.contains("/secrets/") {
            sealed += 1;
        }
        // Call results hold what the fixture returned; nothing else may.
        if key.contains("/call-results/") {
            continue;
        }
        for value in [FIRST, SECOND, OTHER] {
            assert!(
                !kv.value()
                    .windows(value.len())
                    .any(|w| w == value.as_bytes()),
                "{key} holds a secret value in the clear"
            );
        }
    }
    assert_eq!(sealed, 2, "both secrets are stored, sealed");
    // Nor do the platform's logs.
    for entry in std::fs::read_dir(stack.dir.path().join("logs"))? {
        let path = entry?.path();
        let text = std::fs::read(&path)?;
        for value in [FIRST, SECOND, OTHER] {
            assert!(
                !text.windows(value.len()).any(|w| w == value.as_bytes()),
                "{} holds a secret value",
                path.display()
            );
        }
    }

    // Namespaces keep their secrets: team-b neither lists nor removes
    // team-a's; a secret in use is not removed.
    let out = stack.faasctl_as(&dev_b, &["-n", "team-a", "secret", "ls"]);
    assert_eq!(out.status.code(), Some(7), "{out:?}");
    let out = stack.faasctl_as(&dev_b, &["-n", "team-a", "secret", "rm", "db"]);
    assert_eq!(out.status.code(), Some(7), "{out:?}");
    let out = stack.faasctl_as(&dev_a, &["-n", "team-a", "secret", "rm", "db"]);
    assert_eq!(out.status.code(), Some(5), "{out:?}");
    stdout_of(
        stack.faasctl_as(&dev_a, &["-n", "team-a", "fn", "rm", "reader"]),
        "fn rm",
    );
    stdout_of(
        stack.faasctl_as(&dev_a, &["-n", "team-a", "secret", "rm", "db"]),
        "secret rm",
    );
    stack.shutdown().await
}
