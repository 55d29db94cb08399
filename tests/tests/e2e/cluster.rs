//! Cluster smoke test: a stack with two agents shows both nodes connected,
//! each with the spots it was started with.

use faas_tests::{Stack, StackOptions};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_agents_are_listed_connected_with_their_spots() -> anyhow::Result<()> {
    let stack = Stack::start(StackOptions {
        agents: 2,
        spots: 3,
        ..StackOptions::default()
    })
    .await?;

    let nodes = stack.list_nodes().await?;
    for i in 0..2 {
        let name = stack.agent_node(i);
        let node = nodes
            .nodes
            .iter()
            .find(|node| node.name == name)
            .unwrap_or_else(|| panic!("{name} missing from ListNodes: {nodes:?}"));
        assert!(node.connected, "{name} not connected: {node:?}");
        assert_eq!(node.spots.len(), 3, "{name} spots: {node:?}");
        let mut indexes: Vec<u32> = node.spots.iter().map(|spot| spot.index).collect();
        indexes.sort();
        assert_eq!(indexes, vec![0, 1, 2], "{name} spot indexes");
        // The version its agent reported (these binaries are one build).
        assert_eq!(node.version, faas_proto::VERSION, "{name}: {node:?}");
    }
    assert_eq!(nodes.replica_version, faas_proto::VERSION);

    // The user's view of the same: `faasctl node ls -o json` names both nodes.
    let output = stack
        .faasctl()
        .args(["node", "ls", "-o", "json"])
        .output()?;
    assert!(
        output.status.success(),
        "faasctl node ls failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let listing = String::from_utf8_lossy(&output.stdout);
    for i in 0..2 {
        assert!(listing.contains(&stack.agent_node(i)), "node ls: {listing}");
    }
    // And its table has a VERSION column with each node's.
    let output = stack.faasctl().args(["node", "ls"]).output()?;
    let table = String::from_utf8_lossy(&output.stdout);
    assert!(
        table.starts_with("NODE") && table.contains("VERSION"),
        "{table}"
    );
    for i in 0..2 {
        let row = table
            .lines()
            .find(|l| l.starts_with(&stack.agent_node(i)))
            .unwrap_or_else(|| panic!("no row for node {i}: {table}"));
        assert!(row.contains(faas_proto::VERSION), "{row}");
    }

    stack.shutdown().await
}

/// The harness itself: etcd, the registry and containerd start on private
/// ports and sockets, containerd answers with nothing in the namespace, and
/// shutdown stops every process it started.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn infrastructure_starts_and_stops_cleanly() -> anyhow::Result<()> {
    let stack = Stack::start_infra().await?;
    assert!(stack.containerd_socket.exists());
    assert!(stack.etcd_endpoint().starts_with("https://127.0.0.1:"));
    assert!(stack.registry_addr().starts_with("127.0.0.1:"));
    assert_eq!(stack.containerd_leftovers().await?, Vec::<String>::new());
    leave_and_detect_leftovers(&stack).await?;
    let dir = stack.dir.path().to_path_buf();
    let socket = stack.containerd_socket.clone();
    stack.shutdown().await?;
    assert!(
        !dir.exists(),
        "stack directory {} not removed",
        dir.display()
    );
    assert!(
        std::os::unix::net::UnixStream::connect(&socket).is_err(),
        "containerd still answers"
    );
    Ok(())
}

/// Leaves a lease, an active snapshot and a container record in the stack's
/// namespace through containerd's API, checks `containerd_leftovers` names
/// each of them, then removes them again.
async fn leave_and_detect_leftovers(stack: &Stack) -> anyhow::Result<()> {
    use containerd_client::services::v1::containers_client::ContainersClient;
    use containerd_client::services::v1::{
        container::Runtime, leases_client::LeasesClient,
        snapshots::snapshots_client::SnapshotsClient, snapshots::PrepareSnapshotRequest,
        snapshots::RemoveSnapshotRequest, Container, CreateContainerRequest, CreateRequest,
        DeleteContainerRequest, DeleteRequest,
    };
    use containerd_client::tonic::Request;
    use containerd_client::with_namespace;

    let ns = stack.namespace.as_str();
    let channel = containerd_client::connect(&stack.containerd_socket).await?;
    LeasesClient::new(channel.clone())
        .create(with_namespace!(
            CreateRequest {
                id: "harness-lease".into(),
                labels: Default::default()
            },
            ns
        ))
        .await?;
    // Prepared under the lease: an active snapshot nothing references is
    // containerd's garbage to collect, and a collection that ran before the
    // listing below made this test fail now and then (seen in CI).
    let mut prepare = with_namespace!(
        PrepareSnapshotRequest {
            snapshotter: "overlayfs".into(),
            key: "harness-snapshot".into(),
            ..Default::default()
        },
        ns
    );
    prepare
        .metadata_mut()
        .insert("containerd-lease", "harness-lease".parse()?);
    SnapshotsClient::new(channel.clone())
        .prepare(prepare)
        .await?;
    ContainersClient::new(channel.clone())
        .create(with_namespace!(
            CreateContainerRequest {
                container: Some(Container {
                    id: "harness-container".into(),
                    runtime: Some(Runtime {
                        name: "io.containerd.runc.v2".into(),
                        options: None,
                    }),
                    spec: Some(prost_types::Any {
                        type_url: "types.containerd.io/opencontainers/runtime-spec/1/Spec".into(),
                        value: b"{}".to_vec(),
                    }),
                    ..Default::default()
                }),
            },
            ns
        ))
        .await?;

    let mut leftovers = stack.containerd_leftovers().await?;
    leftovers.sort();
    assert_eq!(
        leftovers,
        vec![
            "container harness-container".to_string(),
            "lease harness-lease".to_string(),
            "snapshot harness-snapshot".to_string(),
        ]
    );

    ContainersClient::new(channel.clone())
        .delete(with_namespace!(
            DeleteContainerRequest {
                id: "harness-container".into()
            },
            ns
        ))
        .await?;
    SnapshotsClient::new(channel.clone())
        .remove(with_namespace!(
            RemoveSnapshotRequest {
                snapshotter: "overlayfs".into(),
                key: "harness-snapshot".into()
            },
            ns
        ))
        .await?;
    LeasesClient::new(channel)
        .delete(with_namespace!(
            DeleteRequest {
                id: "harness-lease".into(),
                sync: false
            },
            ns
        ))
        .await?;
    stack
        .assert_no_leftovers(std::time::Duration::from_secs(5))
        .await
}

/// The harness registers the requested runtimes, and `Stack::faasctl` drives
/// the stack: deploy a fixture, invoke it, list the runtime.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn harness_registers_runtimes_and_faasctl_reaches_the_stack() -> anyhow::Result<()> {
    let stack = Stack::start(StackOptions {
        runtimes: vec!["python3"],
        ..StackOptions::default()
    })
    .await?;

    let runtimes = stack
        .faasctl()
        .args(["runtime", "ls", "-o", "json"])
        .output()?;
    assert!(runtimes.status.success(), "{runtimes:?}");
    assert!(String::from_utf8_lossy(&runtimes.stdout).contains("\"python3\""));

    let deploy = stack
        .faasctl()
        .args(["fn", "deploy", "harness-hello", "--runtime", "python3"])
        .arg(faas_tests::fixture_dir("py-hello"))
        .output()?;
    assert!(deploy.status.success(), "deploy: {deploy:?}");
    let invoke = stack
        .faasctl()
        .args(["invoke", "harness-hello", "--data", r#"{"name":"harness"}"#])
        .output()?;
    assert!(invoke.status.success(), "invoke: {invoke:?}");
    let result: serde_json::Value = serde_json::from_slice(&invoke.stdout)?;
    assert_eq!(result["greeting"], "hello harness");

    stack.shutdown().await
}
