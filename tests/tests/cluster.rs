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
    }

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

    stack.shutdown().await
}

/// The harness itself: etcd, the registry and containerd start on private
/// ports and sockets, containerd answers with nothing in the namespace, and
/// shutdown stops every process it started.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn infrastructure_starts_and_stops_cleanly() -> anyhow::Result<()> {
    let stack = Stack::start_infra().await?;
    assert!(stack.containerd_socket.exists());
    assert!(stack.etcd_endpoint().starts_with("http://127.0.0.1:"));
    assert!(stack.registry_addr().starts_with("127.0.0.1:"));
    assert_eq!(stack.containerd_leftovers().await?, Vec::<String>::new());
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
