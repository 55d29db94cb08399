//! Opt-in egress (`fn deploy --network egress [--allow ...]`) on the real
//! stack: the call gets out exactly as its allowlist says, never to the
//! host (whatever the allowlist), never to the node's networks without
//! an allowlist, and leaves nothing behind. "Outside" is a network
//! namespace of the test's own, routed from the host (198.51.100.0/24),
//! with listeners on ports 8080 and 8081.

use std::net::IpAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{ensure, Context};
use faas_proto::v1::call_service_client::CallServiceClient;
use faas_proto::v1::{Call, CallStatus, InvokeRequest};
use faas_tests::outside::{
    check_wheel, pure_wheel, wait_listening, Outside, PackageIndex, HOST_SIDE, OUTSIDE,
};
use faas_tests::{repo_root, wait_final, wait_running, Stack, StackOptions};
use serde_json::{json, Value};

/// The outside network with listeners on ports 8080 and 8081.
fn outside_with_listeners() -> anyhow::Result<Outside> {
    let mut outside = Outside::start()?;
    for port in ["8080", "8081"] {
        outside.spawn_in(&["python3", "-c", &listener_script("0.0.0.0", port)])?;
    }
    for port in [8080, 8081] {
        wait_listening(
            (OUTSIDE.parse::<IpAddr>()?, port).into(),
            Duration::from_secs(10),
        )?;
    }
    Ok(outside)
}

/// A TCP listener that accepts and closes.
fn listener_script(addr: &str, port: &str) -> String {
    format!(
        "import socket\ns=socket.socket()\ns.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n\
         s.bind(('{addr}', {port}))\ns.listen(64)\nwhile True:\n    c, _ = s.accept()\n    c.close()\n"
    )
}

/// A TCP listener on the host.
fn host_listener(addr: &str, port: &str) -> anyhow::Result<Child> {
    let child = Command::new("python3")
        .args(["-c", &listener_script(addr, port)])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    std::thread::sleep(Duration::from_millis(300));
    Ok(child)
}

async fn invoke(stack: &Stack, function: &str, params: Value) -> anyhow::Result<Call> {
    Ok(CallServiceClient::new(stack.channel().await)
        .invoke(InvokeRequest {
            function: function.into(),
            params_json: params.to_string(),
            ..Default::default()
        })
        .await
        .with_context(|| format!("invoking {function}"))?
        .into_inner())
}

fn outcomes(call: &Call) -> Value {
    assert_eq!(call.status(), CallStatus::Succeeded, "{call:?}");
    serde_json::from_str(&call.result_json).expect("JSON")
}

/// The addresses host-local has handed to calls on this host now.
fn call_addresses() -> Vec<String> {
    std::fs::read_dir("/run/faas/cni-ipam/faas-egress")
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.parse::<std::net::Ipv4Addr>().is_ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Two calls with egress, both running: one listens on every address,
/// the other tries every address the node has given to a call (the
/// listener's among them, and any preloaded spot's). Nothing gets
/// through: the bridge forwards no frame from one call's port to
/// another's. The listener reaching itself shows it was up.
async fn calls_cannot_reach_each_other(
    stack: &Stack,
    probe: &std::path::Path,
) -> anyhow::Result<()> {
    stack.deploy(
        "listener",
        "python3",
        probe,
        &["--network", "egress", "--timeout", "60s"],
    )?;
    let mut client = CallServiceClient::new(stack.channel().await);
    let listener_id = client
        .submit(InvokeRequest {
            function: "listener".into(),
            params_json: json!({"listen": 9000, "seconds": 12}).to_string(),
            ..Default::default()
        })
        .await?
        .into_inner()
        .call_id;
    wait_running(&mut client, &listener_id, Duration::from_secs(60)).await?;
    // RUNNING is reported as the handler starts; give it time to bind.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let addresses = call_addresses();
    ensure!(
        !addresses.is_empty(),
        "no call address in host-local's state"
    );
    let targets: Vec<Value> = addresses.iter().map(|a| json!([a, 9000])).collect();
    let prober =
        outcomes(&invoke(stack, "open", json!({"targets": targets, "timeout": 1.5})).await?);
    let listener = wait_final(&mut client, &listener_id, Duration::from_secs(60)).await?;
    assert_eq!(listener.status(), CallStatus::Succeeded, "{listener:?}");
    let listened: Value = serde_json::from_str(&listener.result_json)?;
    let address = listened["address"].as_str().unwrap_or("");
    assert_eq!(listened["itself"], "connected", "{listened}");
    assert!(
        addresses.iter().any(|a| a == address),
        "the listener's address {address} was not tried: {addresses:?}"
    );
    assert_eq!(listened["accepted_from"], json!([]), "{listened}");
    // Dropped on the bridge: no answer at all (a refusal would mean the
    // packet reached the other call).
    for (target, outcome) in prober["targets"].as_object().expect("targets") {
        let outcome = outcome.as_str().unwrap_or("");
        assert!(
            ["timeout", "EHOSTUNREACH"].contains(&outcome),
            "{target}: {outcome} ({prober})"
        );
    }
    Ok(())
}

fn faas_netns() -> Vec<String> {
    std::fs::read_dir("/run/netns")
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with("faas-"))
                .collect()
        })
        .unwrap_or_default()
}

/// The tests here share the host's egress (bridge, tables, the outside
/// network's names): one at a time.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn egress_goes_only_where_the_allowlist_says() -> anyhow::Result<()> {
    let _one = ONE_AT_A_TIME.lock().await;
    let _outside = outside_with_listeners()?;
    // A service of the host's, on every address.
    let mut host_service = host_listener("0.0.0.0", "18099")?;
    let stack = Stack::start(StackOptions {
        runtimes: vec!["python3"],
        ..StackOptions::default()
    })
    .await?;
    let probe = repo_root().join("tests/isolation/fns/network");
    stack.deploy(
        "allowed",
        "python3",
        &probe,
        &[
            "--network",
            "egress",
            "--allow",
            &format!("{OUTSIDE}:8080"),
            // The host's own address: allowed on paper, never in fact.
            "--allow",
            &format!("{HOST_SIDE}:18099"),
            "--timeout",
            "60s",
        ],
    )?;
    stack.deploy(
        "open",
        "python3",
        &probe,
        &["--network", "egress", "--timeout", "60s"],
    )?;
    stack.deploy("closed", "python3", &probe, &["--timeout", "60s"])?;
    // A bad allowlist is refused at deploy with a clear error.
    let err = stack
        .deploy(
            "bad",
            "python3",
            &probe,
            &["--network", "egress", "--allow", "127.0.0.1:80"],
        )
        .unwrap_err();
    assert!(err.to_string().contains("never reachable"), "{err}");

    let targets = json!({"targets": [
        [OUTSIDE, 8080], [OUTSIDE, 8081],
        [HOST_SIDE, 18099], ["10.231.0.1", 18099], ["127.0.0.1", 18099],
        ["169.254.169.254", 80],
    ]});
    let allowed = outcomes(&invoke(&stack, "allowed", targets.clone()).await?);
    let open = outcomes(&invoke(&stack, "open", targets.clone()).await?);
    let closed = outcomes(&invoke(&stack, "closed", targets.clone()).await?);
    let got = |r: &Value, host: &str, port: u16| {
        r["targets"][format!("{host}:{port}")]
            .as_str()
            .unwrap_or("")
            .to_string()
    };

    // The allowlist, exactly.
    assert_eq!(got(&allowed, OUTSIDE, 8080), "connected", "{allowed}");
    assert_ne!(got(&allowed, OUTSIDE, 8081), "connected", "{allowed}");
    // Never the host, whatever the allowlist; never metadata.
    for r in [&allowed, &open, &closed] {
        for (host, port) in [
            (HOST_SIDE, 18099),
            ("10.231.0.1", 18099),
            ("127.0.0.1", 18099),
            ("169.254.169.254", 80),
        ] {
            assert_ne!(got(r, host, port), "connected", "{host}:{port} {r}");
        }
    }
    // Without an allowlist: public addresses only, not the node's own
    // network (198.51.100.0/24 is the host's here).
    assert_ne!(got(&open, OUTSIDE, 8080), "connected", "{open}");
    // No network at all by default.
    assert_ne!(got(&closed, OUTSIDE, 8080), "connected", "{closed}");

    // No spoofing from inside: forging an address takes a raw socket.
    for r in [&allowed, &open] {
        assert_eq!(
            r["raw_sockets"],
            json!({"inet_raw": "EPERM", "packet": "EPERM"}),
            "{r}"
        );
    }

    calls_cannot_reach_each_other(&stack, &probe).await?;

    let _ = host_service.kill();
    // Nothing left once the agent has cleared its spots (a preloaded
    // function holds its namespace until then): no namespace, no
    // allowlist element.
    stack.shutdown().await?;
    assert!(faas_netns().is_empty(), "{:?}", faas_netns());
    let sets = Command::new("nft")
        .args(["list", "set", "inet", "faas", "allow"])
        .output()?;
    let sets = String::from_utf8_lossy(&sets.stdout);
    assert!(!sets.contains("elements"), "{sets}");
    Ok(())
}

/// Two agents on one host (as a test stack beside a user's cluster would
/// be): neither takes away the other's calls' networks, not when it loads
/// the ruleset at its first call with egress, and not when it starts again
/// after a crash and cleans up what it left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_sharing_a_host_keep_each_others_calls_networks() -> anyhow::Result<()> {
    let _one = ONE_AT_A_TIME.lock().await;
    let _outside = outside_with_listeners()?;
    let mut stack = Stack::start(StackOptions {
        agents: 2,
        spots: 1,
        runtimes: vec!["python3"],
        policy: Some("no-preload".into()),
        ..StackOptions::default()
    })
    .await?;
    let probe = repo_root().join("tests/isolation/fns/network");
    stack.deploy(
        "probe",
        "python3",
        &probe,
        &[
            "--network",
            "egress",
            "--allow",
            &format!("{OUTSIDE}:8080"),
            "--timeout",
            "60s",
        ],
    )?;
    let out = json!({"targets": [[OUTSIDE, 8080]]});
    let mut client = CallServiceClient::new(stack.channel().await);
    // A call that goes out only after the other agent has done its worst.
    let mut late = out.clone();
    late["delay"] = json!(15);
    let late_id = client
        .submit(InvokeRequest {
            function: "probe".into(),
            params_json: late.to_string(),
            ..Default::default()
        })
        .await?
        .into_inner()
        .call_id;
    let running = wait_running(&mut client, &late_id, Duration::from_secs(60)).await?;
    let other = (0..2)
        .find(|&i| stack.agent_node(i) != running.node)
        .context("the other agent")?;

    // One spot each, the first busy: these calls go to the other agent.
    // Its first call with egress loads the ruleset.
    let first = invoke(&stack, "probe", out.clone()).await?;
    assert_eq!(first.node, stack.agent_node(other), "{first:?}");
    assert_eq!(
        outcomes(&first)["targets"][format!("{OUTSIDE}:8080")],
        "connected"
    );
    // It crashes and starts again: it cleans up after itself, and loads
    // the ruleset once more at its next call.
    stack.kill_agent(other).await;
    stack.start_agent(other).await;
    let second = invoke(&stack, "probe", out.clone()).await?;
    assert_eq!(second.node, stack.agent_node(other), "{second:?}");
    assert_eq!(
        outcomes(&second)["targets"][format!("{OUTSIDE}:8080")],
        "connected"
    );

    // The first agent's call still had its network all along.
    let late = wait_final(&mut client, &late_id, Duration::from_secs(60)).await?;
    assert_eq!(
        outcomes(&late)["targets"][format!("{OUTSIDE}:8080")],
        "connected",
        "{late:?}"
    );
    stack.shutdown().await?;
    assert!(faas_netns().is_empty(), "{:?}", faas_netns());
    Ok(())
}

/// The package index fixture (for builds whose only egress is an index):
/// the host's pip installs a wheel from it over the outside network, and
/// the index counts the download.
#[test]
fn package_index_serves_wheels_with_their_hashes() -> anyhow::Result<()> {
    let _one = ONE_AT_A_TIME.blocking_lock();
    let (name, wheel) = pure_wheel(
        "Faas-Dep",
        "1.2.3",
        &[
            ("faas_dep/__init__.py", "VALUE = 'from the index'\n"),
            ("faas_dep/data.txt", "data\n"),
        ],
    )?;
    assert_eq!(name, "faas_dep-1.2.3-py3-none-any.whl");
    let scratch = tempfile::tempdir()?;
    std::fs::write(scratch.path().join(&name), &wheel)?;
    check_wheel(&scratch.path().join(&name))?;

    let mut outside = Outside::start()?;
    let index = PackageIndex::start(&mut outside, &[(name.clone(), wheel)])?;
    assert_eq!(index.url(), format!("http://{OUTSIDE}:8080/simple/"));
    assert_eq!(index.allow(), format!("{OUTSIDE}:8080"));
    assert_eq!(index.downloads(&name), 0);

    // What pip does, with the standard library only (the host need not
    // have pip; the build containers' pip is tested in builds.rs): the
    // project page, its link with the hash, the wheel unpacked as purelib.
    let target = scratch.path().join("site");
    let out = Command::new("/usr/bin/python3")
        .args([
            "-c",
            r##"
import hashlib, io, re, sys, urllib.parse, urllib.request, zipfile
index, project, target = sys.argv[1:]
page_url = urllib.parse.urljoin(index, project + "/")
page = urllib.request.urlopen(page_url).read().decode()
href = re.search(r'href="([^"]+)"', page).group(1)
url, _, fragment = urllib.parse.urljoin(page_url, href).partition("#")
wheel = urllib.request.urlopen(url).read()
algorithm, _, digest = fragment.partition("=")
assert algorithm == "sha256" and hashlib.sha256(wheel).hexdigest() == digest, fragment
zipfile.ZipFile(io.BytesIO(wheel)).extractall(target)
"##,
            &index.url(),
            "faas-dep",
            target.to_str().context("path")?,
        ])
        .output()?;
    ensure!(
        out.status.success(),
        "fetching from the index: {}\nindex log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        index.log()
    );
    let imported = Command::new("/usr/bin/python3")
        .args(["-c", "import faas_dep; print(faas_dep.VALUE)"])
        .env("PYTHONPATH", &target)
        .output()?;
    assert_eq!(
        String::from_utf8_lossy(&imported.stdout).trim(),
        "from the index",
        "{}",
        String::from_utf8_lossy(&imported.stderr)
    );
    assert_eq!(
        std::fs::read_to_string(target.join("faas_dep/data.txt"))?,
        "data\n"
    );
    assert!(target.join("faas_dep-1.2.3.dist-info/METADATA").exists());
    assert_eq!(index.downloads(&name), 1, "{}", index.log());
    assert!(
        index
            .log()
            .contains("\"GET /simple/faas-dep/ HTTP/1.1\" 200"),
        "{}",
        index.log()
    );
    drop(index);
    drop(outside);
    assert!(
        !std::path::Path::new(&format!("/run/netns/ftest-out-{}", std::process::id())).exists()
    );
    Ok(())
}
