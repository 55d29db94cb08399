//! The rendered ruleset and per-call elements, loaded into a real kernel:
//! in a network namespace of the test's own (`unshare --net`), so the
//! host's tables are never touched. Needs root and nftables (installed by
//! deploy/lib/install-deps.sh); as another user it says so and passes.

use std::io::Write;
use std::process::{Command, Stdio};

use faas_egress::rules::{call_elements, CallNet, Plan, Reach};
use faas_egress::PortRange;

/// Runs `script` (one nft transaction) in a new network namespace, then
/// lists faas's tables there (a listing inside the transaction would show
/// the state before it); returns the listing.
fn nft_in_fresh_netns(script: &str) -> String {
    let mut child = Command::new("unshare")
        .args([
            "--net",
            "sh",
            "-c",
            "nft -f - && nft list table inet faas && nft list table bridge faas",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("unshare and nft (nftables) must be installed: deploy/lib/install-deps.sh");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(script.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "nft refused:\n{}\n--- script ---\n{script}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn the_kernel_takes_the_ruleset_and_a_calls_elements() {
    if !is_root() {
        eprintln!("not root: the kernel check of the nftables ruleset needs root; skipped");
        return;
    }
    let plan = Plan {
        bridge: "faas0".into(),
        subnet: "10.231.0.0/16".parse().unwrap(),
        dns: vec!["10.255.255.53".parse().unwrap()],
        node_networks: vec!["192.0.2.0/24".parse().unwrap()],
    };
    let call = CallNet {
        veth: "veth890295f2".into(),
        mac: "a2:1d:14:cc:95:b8".into(),
        ip: "10.231.0.3".parse().unwrap(),
    };
    let reach = Reach::Only(vec![(
        "198.51.100.1/32".parse().unwrap(),
        PortRange {
            first: 8080,
            last: 8080,
        },
    )]);
    let elements = call_elements(&call, &reach);
    let open = call_elements(
        &CallNet {
            veth: "veth0000aaaa".into(),
            mac: "a2:1d:14:cc:95:b9".into(),
            ip: "10.231.0.4".parse().unwrap(),
        },
        &Reach::Public,
    );
    // Loaded, a call's elements added, loaded again (another agent
    // starting on the host): the call's elements are still there, since
    // deleting them succeeds (nft refuses to delete a missing element).
    // A second call's are added; the first call's deleted.
    let script = format!(
        "{ruleset}{add}{ruleset}{open}{delete}",
        ruleset = plan.ruleset(),
        add = elements.add,
        open = open.add,
        delete = elements.delete,
    );
    let listing = nft_in_fresh_netns(&script);
    assert!(listing.contains("chain from_calls"), "{listing}");
    assert!(listing.contains("10.231.0.4"), "{listing}");
    assert!(!listing.contains("10.231.0.3"), "{listing}");
    assert!(!listing.contains("veth890295f2"), "{listing}");
    assert!(listing.contains("masquerade"), "{listing}");
    // Each rule once, however many loads.
    assert_eq!(listing.matches("jump call_to_host").count(), 1, "{listing}");
    assert_eq!(listing.matches("masquerade").count(), 1, "{listing}");

    // The replacing form takes every call's elements with the tables.
    let listing = nft_in_fresh_netns(&format!(
        "{ruleset}{open}{replacing}",
        ruleset = plan.ruleset(),
        open = open.add,
        replacing = plan.ruleset_replacing(),
    ));
    assert!(listing.contains("chain from_calls"), "{listing}");
    assert!(!listing.contains("10.231.0.4"), "{listing}");
}

fn is_root() -> bool {
    // The effective uid, read without a libc binding.
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|u| u == "0"))
        })
        .unwrap_or(false)
}
