//! DNS for calls with egress: the host's resolvers that a call can reach
//! (never a loopback one: the call's loopback is its own), and the
//! `resolv.conf` bound read-only into its container, with nameservers
//! only (a `search` line would leak the node's internal domains).

use std::net::Ipv4Addr;

/// The IPv4 nameservers of a `resolv.conf` text that a call can reach:
/// loopback ones (systemd-resolved's 127.0.0.53, a local dnsmasq) are
/// left out. With systemd-resolved, read `/run/systemd/resolve/resolv.conf`
/// (its upstreams) instead of `/etc/resolv.conf`.
pub fn nameservers(resolv_conf: &str) -> Vec<Ipv4Addr> {
    let mut found = Vec::new();
    for line in resolv_conf.lines() {
        let mut words = line.split_whitespace();
        if words.next() != Some("nameserver") {
            continue;
        }
        let Some(Ok(ip)) = words.next().map(str::parse::<Ipv4Addr>) else {
            continue;
        };
        if !ip.is_loopback() && !ip.is_unspecified() && !found.contains(&ip) {
            found.push(ip);
        }
    }
    found
}

/// A call's `resolv.conf`.
pub fn resolv_conf(servers: &[Ipv4Addr]) -> String {
    let mut text = String::from("# written by the faas agent\n");
    for server in servers {
        text.push_str(&format!("nameserver {server}\n"));
    }
    text.push_str("options timeout:2 attempts:2\n");
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_and_ipv6_resolvers_are_left_out() {
        let host = "# comment\nsearch corp.internal\nnameserver 127.0.0.53\n\
                    nameserver 10.255.255.53\nnameserver ::1\nnameserver 10.255.255.53\n\
                    nameserver   192.0.2.53  \noptions edns0\n";
        let servers = nameservers(host);
        assert_eq!(
            servers,
            vec![
                "10.255.255.53".parse::<Ipv4Addr>().unwrap(),
                "192.0.2.53".parse().unwrap()
            ]
        );
        let text = resolv_conf(&servers);
        assert!(text.contains("nameserver 10.255.255.53\nnameserver 192.0.2.53\n"));
        assert!(!text.contains("search"));
        assert!(nameservers("nameserver 127.0.0.53\n").is_empty());
    }
}
