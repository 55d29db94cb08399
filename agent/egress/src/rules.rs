//! The nftables side: two tables of faas's own, loaded once and replaced
//! atomically (`add table; delete table; table { … }`, so nothing else's
//! rules, iptables-nft's included, are touched), and the set elements each
//! call adds and removes. It fails closed: a call's address in neither
//! `open_calls` nor `allow` is rejected, and a bridge port not in
//! `call_ports` is dropped.
//!
//! - `inet faas`: nothing from a call reaches the host (input), nothing
//!   unsolicited reaches a call (forward), a call reaches the resolvers on
//!   port 53, then either any public address (`open_calls`: egress with
//!   no allowlist) or exactly its allowlist (`allow`); always-denied
//!   networks first, whatever the allowlist. Masquerade on the way out.
//! - `bridge faas`: frames between two calls' ports are dropped, and a
//!   call's frames must carry its own MAC and IP (no spoofing another
//!   call's address to borrow its allowlist). Works with or without
//!   br_netfilter; port isolation on the veth is the third layer.

use std::fmt::Write as _;
use std::net::Ipv4Addr;

use crate::allow::{PortRange, ALWAYS_DENIED, NON_PUBLIC};
use crate::net::Ipv4Net;

/// The node's egress layout.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The host bridge calls hang off (`faas0`).
    pub bridge: String,
    /// The calls' addresses (`10.231.0.0/16`); the first is the bridge's.
    pub subnet: Ipv4Net,
    /// Resolvers the calls may ask (port 53 only).
    pub dns: Vec<Ipv4Addr>,
    /// The node's own networks (its LAN): denied to calls with no
    /// allowlist, as private ranges are.
    pub node_networks: Vec<Ipv4Net>,
}

/// What one call's network is, as the CNI result says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallNet {
    /// The host end of the call's veth.
    pub veth: String,
    /// The call's MAC address (`aa:bb:cc:dd:ee:ff`).
    pub mac: String,
    pub ip: Ipv4Addr,
}

/// What a call may reach: any public address, or exactly these.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reach {
    Public,
    Only(Vec<(Ipv4Net, PortRange)>),
}

impl Plan {
    /// The gateway: the bridge's address.
    pub fn gateway(&self) -> Ipv4Addr {
        self.subnet
            .nth(1)
            .expect("a subnet with room for a gateway")
    }

    /// The whole ruleset, one atomic nft transaction.
    pub fn ruleset(&self) -> String {
        let bridge = &self.bridge;
        let subnet = self.subnet;
        let always: Vec<String> = ALWAYS_DENIED
            .iter()
            .map(|n| n.to_string())
            .chain([subnet.to_string()])
            .collect();
        let nonpublic: Vec<String> = NON_PUBLIC
            .iter()
            .map(|n| n.to_string())
            .chain(self.node_networks.iter().map(Ipv4Net::to_string))
            .collect();
        let dns: Vec<String> = self.dns.iter().map(Ipv4Addr::to_string).collect();
        let elements = |items: &[String]| {
            if items.is_empty() {
                String::new()
            } else {
                format!(" elements = {{ {} }};", items.join(", "))
            }
        };
        let mut out = String::new();
        let _ = write!(
            out,
            r#"add table inet faas
delete table inet faas
table inet faas {{
  set always_deny {{ type ipv4_addr; flags interval; auto-merge;{always} }}
  set nonpublic {{ type ipv4_addr; flags interval; auto-merge;{nonpublic} }}
  set dns {{ type ipv4_addr; flags interval; auto-merge;{dns} }}
  set open_calls {{ type ipv4_addr; }}
  set allow {{ type ipv4_addr . ipv4_addr . inet_service; flags interval; }}
  chain input {{
    type filter hook input priority filter; policy accept;
    iifname "{bridge}" jump call_to_host
  }}
  chain call_to_host {{
    ct state established,related accept
    counter reject with icmpx admin-prohibited
  }}
  chain forward {{
    type filter hook forward priority filter; policy accept;
    oifname "{bridge}" jump to_calls
    iifname "{bridge}" jump from_calls
  }}
  chain to_calls {{
    iifname "{bridge}" counter drop
    ct state established,related accept
    counter drop
  }}
  chain from_calls {{
    meta nfproto ipv6 counter drop
    ip saddr != {subnet} counter drop
    ip daddr @always_deny counter reject with icmpx admin-prohibited
    ip daddr @dns meta l4proto {{ udp, tcp }} th dport 53 accept
    ip saddr @open_calls ip daddr @nonpublic counter reject with icmpx admin-prohibited
    ip saddr @open_calls accept
    meta l4proto {{ tcp, udp }} ip saddr . ip daddr . th dport @allow accept
    counter reject with icmpx admin-prohibited
  }}
  chain postrouting {{
    type nat hook postrouting priority srcnat; policy accept;
    ip saddr {subnet} oifname != "{bridge}" masquerade
  }}
}}
add table bridge faas
delete table bridge faas
table bridge faas {{
  set call_ifs {{ type ifname; }}
  set call_ports {{ type ifname . ether_addr . ipv4_addr; }}
  chain prerouting {{
    type filter hook prerouting priority filter; policy accept;
    iifname != @call_ifs accept
    ether type ip iifname . ether saddr . ip saddr @call_ports accept
    ether type arp iifname . ether saddr . arp saddr ip @call_ports iifname . arp saddr ether . arp saddr ip @call_ports accept
    counter drop
  }}
  chain forward {{
    type filter hook forward priority filter; policy accept;
    iifname @call_ifs counter drop
  }}
}}
"#,
            always = elements(&always),
            nonpublic = elements(&nonpublic),
            dns = elements(&dns),
        );
        out
    }
}

/// The elements of one call: `add` before its container starts, `delete`
/// once it is gone (each an atomic nft transaction).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallElements {
    pub add: String,
    pub delete: String,
}

/// The elements that let `call` out as `reach` says.
pub fn call_elements(call: &CallNet, reach: &Reach) -> CallElements {
    let port = format!("\"{}\" . {} . {}", call.veth, call.mac, call.ip);
    let mut lines = vec![
        format!("bridge faas call_ifs {{ \"{}\" }}", call.veth),
        format!("bridge faas call_ports {{ {port} }}"),
    ];
    match reach {
        Reach::Public => lines.push(format!("inet faas open_calls {{ {} }}", call.ip)),
        Reach::Only(entries) if !entries.is_empty() => {
            let items: Vec<String> = entries
                .iter()
                .map(|(net, ports)| format!("{} . {net} . {ports}", call.ip))
                .collect();
            lines.push(format!("inet faas allow {{ {} }}", items.join(", ")));
        }
        // Nothing resolved (every host name failed): DNS only.
        Reach::Only(_) => {}
    }
    let render = |verb: &str| {
        lines
            .iter()
            .map(|l| format!("{verb} element {l}\n"))
            .collect::<String>()
    };
    CallElements {
        add: render("add"),
        delete: render("delete"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan() -> Plan {
        Plan {
            bridge: "faas0".into(),
            subnet: "10.231.0.0/16".parse().unwrap(),
            dns: vec!["10.255.255.53".parse().unwrap()],
            node_networks: vec!["192.0.2.0/24".parse().unwrap()],
        }
    }

    #[test]
    fn the_ruleset_holds_the_layout() {
        let text = plan().ruleset();
        assert_eq!(plan().gateway(), "10.231.0.1".parse::<Ipv4Addr>().unwrap());
        // Only faas's own tables, replaced atomically.
        assert!(text.starts_with("add table inet faas\ndelete table inet faas\n"));
        assert!(!text.contains("flush ruleset"));
        assert!(text.contains(
            "elements = { 0.0.0.0/8, 127.0.0.0/8, 169.254.0.0/16, 224.0.0.0/4, 240.0.0.0/4, 10.231.0.0/16 }"
        ));
        assert!(text.contains("198.18.0.0/15, 192.0.2.0/24 }"));
        assert!(text.contains(
            "set dns { type ipv4_addr; flags interval; auto-merge; elements = { 10.255.255.53 }; }"
        ));
        assert!(text.contains("iifname \"faas0\" jump call_to_host"));
        assert!(text.contains("ip saddr 10.231.0.0/16 oifname != \"faas0\" masquerade"));
        // The deny of always-denied networks comes before anything that
        // accepts.
        let deny = text.find("ip daddr @always_deny").unwrap();
        let first_accept = text.find("th dport 53 accept").unwrap();
        assert!(deny < first_accept);
        // Every brace closes.
        assert_eq!(text.matches('{').count(), text.matches('}').count());
    }

    #[test]
    fn no_resolver_leaves_an_empty_set() {
        let text = Plan {
            dns: vec![],
            ..plan()
        }
        .ruleset();
        assert!(text.contains("set dns { type ipv4_addr; flags interval; auto-merge; }"));
    }

    #[test]
    fn a_call_gets_its_port_and_its_reach() {
        let call = CallNet {
            veth: "veth890295f2".into(),
            mac: "a2:1d:14:cc:95:b8".into(),
            ip: "10.231.0.3".parse().unwrap(),
        };
        let only = Reach::Only(vec![
            (
                "198.51.100.1/32".parse().unwrap(),
                PortRange {
                    first: 8080,
                    last: 8080,
                },
            ),
            (
                "203.0.113.0/24".parse().unwrap(),
                PortRange {
                    first: 8000,
                    last: 8099,
                },
            ),
        ]);
        let elements = call_elements(&call, &only);
        assert_eq!(
            elements.add,
            "add element bridge faas call_ifs { \"veth890295f2\" }\n\
             add element bridge faas call_ports { \"veth890295f2\" . a2:1d:14:cc:95:b8 . 10.231.0.3 }\n\
             add element inet faas allow { 10.231.0.3 . 198.51.100.1/32 . 8080, 10.231.0.3 . 203.0.113.0/24 . 8000-8099 }\n"
        );
        assert_eq!(
            elements.delete,
            elements.add.replace("add element", "delete element")
        );
        let open = call_elements(&call, &Reach::Public);
        assert!(open
            .add
            .ends_with("add element inet faas open_calls { 10.231.0.3 }\n"));
        assert!(!open.add.contains("allow"));
        let nothing = call_elements(&call, &Reach::Only(vec![]));
        assert!(!nothing.add.contains("inet faas"));
    }
}
