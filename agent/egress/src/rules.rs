//! The nftables side: two tables of faas's own (nothing else's rules,
//! iptables-nft's included, are touched), loaded in one atomic transaction
//! that keeps the elements calls already hold, and the set elements each
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

    /// The ruleset as one atomic nft transaction that leaves the calls'
    /// elements in place: the tables, sets and chains are declared if
    /// missing, the plan's own sets and every chain are emptied and
    /// filled again. So an agent starting beside another on the same host
    /// (or restarting while the kernel still holds its old tables) never
    /// takes away a running call's network.
    pub fn ruleset(&self) -> String {
        let tables = self.tables();
        let mut out = String::new();
        for t in &tables {
            t.declare(&mut out);
        }
        for t in &tables {
            t.reset(&mut out);
        }
        for t in &tables {
            t.fill(&mut out);
        }
        out
    }

    /// The ruleset replacing faas's tables whole (`add table; delete
    /// table`, so nothing else's rules, iptables-nft's included, are
    /// touched): every call's elements go with them. For when
    /// [`Plan::ruleset`] is refused, as it is when a set's type changed.
    pub fn ruleset_replacing(&self) -> String {
        let tables = self.tables();
        let mut out = String::new();
        for t in &tables {
            let _ = writeln!(out, "add table {}", t.family);
            let _ = writeln!(out, "delete table {}", t.family);
        }
        for t in &tables {
            t.declare(&mut out);
        }
        for t in &tables {
            t.fill(&mut out);
        }
        out
    }

    fn tables(&self) -> [Table; 2] {
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
        const ADDRESSES: &str = "type ipv4_addr; flags interval; auto-merge;";
        let inet = Table {
            family: "inet faas",
            sets: vec![
                Set::of_plan("always_deny", ADDRESSES, always),
                Set::of_plan("nonpublic", ADDRESSES, nonpublic),
                Set::of_plan("dns", ADDRESSES, dns),
                Set::of_calls("open_calls", "type ipv4_addr;"),
                Set::of_calls(
                    "allow",
                    "type ipv4_addr . ipv4_addr . inet_service; flags interval;",
                ),
            ],
            chains: vec![
                Chain {
                    name: "input",
                    hook: Some("type filter hook input priority filter; policy accept;"),
                    rules: vec![format!("iifname \"{bridge}\" jump call_to_host")],
                },
                Chain {
                    name: "call_to_host",
                    hook: None,
                    rules: vec![
                        "ct state established,related accept".into(),
                        "counter reject with icmpx admin-prohibited".into(),
                    ],
                },
                Chain {
                    name: "forward",
                    hook: Some("type filter hook forward priority filter; policy accept;"),
                    rules: vec![
                        format!("oifname \"{bridge}\" jump to_calls"),
                        format!("iifname \"{bridge}\" jump from_calls"),
                    ],
                },
                Chain {
                    name: "to_calls",
                    hook: None,
                    rules: vec![
                        // Call to call, when br_netfilter shows bridged
                        // frames to this hook.
                        format!("iifname \"{bridge}\" counter drop"),
                        "ct state established,related accept".into(),
                        "counter drop".into(),
                    ],
                },
                Chain {
                    name: "from_calls",
                    hook: None,
                    rules: vec![
                        "meta nfproto ipv6 counter drop".into(),
                        format!("ip saddr != {subnet} counter drop"),
                        "ip daddr @always_deny counter reject with icmpx admin-prohibited".into(),
                        "ip daddr @dns meta l4proto { udp, tcp } th dport 53 accept".into(),
                        "ip saddr @open_calls ip daddr @nonpublic counter reject with icmpx admin-prohibited".into(),
                        "ip saddr @open_calls accept".into(),
                        "meta l4proto { tcp, udp } ip saddr . ip daddr . th dport @allow accept".into(),
                        "counter reject with icmpx admin-prohibited".into(),
                    ],
                },
                Chain {
                    name: "postrouting",
                    hook: Some("type nat hook postrouting priority srcnat; policy accept;"),
                    rules: vec![format!(
                        "ip saddr {subnet} oifname != \"{bridge}\" masquerade"
                    )],
                },
            ],
        };
        let bridge_table = Table {
            family: "bridge faas",
            sets: vec![
                Set::of_calls("call_ifs", "type ifname;"),
                Set::of_calls("call_ports", "type ifname . ether_addr . ipv4_addr;"),
            ],
            chains: vec![
                Chain {
                    name: "prerouting",
                    hook: Some("type filter hook prerouting priority filter; policy accept;"),
                    rules: vec![
                        "iifname != @call_ifs accept".into(),
                        "ether type ip iifname . ether saddr . ip saddr @call_ports accept".into(),
                        "ether type arp iifname . ether saddr . arp saddr ip @call_ports \
                         iifname . arp saddr ether . arp saddr ip @call_ports accept"
                            .into(),
                        "counter drop".into(),
                    ],
                },
                Chain {
                    name: "forward",
                    hook: Some("type filter hook forward priority filter; policy accept;"),
                    rules: vec!["iifname @call_ifs counter drop".into()],
                },
            ],
        };
        [inet, bridge_table]
    }
}

/// One of faas's two tables, rendered as nft commands.
struct Table {
    family: &'static str,
    sets: Vec<Set>,
    chains: Vec<Chain>,
}

struct Set {
    name: &'static str,
    declaration: &'static str,
    /// The plan's elements; None for a set only calls fill (never
    /// emptied by a reload).
    of_plan: Option<Vec<String>>,
}

impl Set {
    fn of_plan(name: &'static str, declaration: &'static str, elements: Vec<String>) -> Set {
        Set {
            name,
            declaration,
            of_plan: Some(elements),
        }
    }

    fn of_calls(name: &'static str, declaration: &'static str) -> Set {
        Set {
            name,
            declaration,
            of_plan: None,
        }
    }
}

struct Chain {
    name: &'static str,
    /// A base chain's hook; None for a chain only jumped to.
    hook: Option<&'static str>,
    rules: Vec<String>,
}

impl Table {
    /// Creates what is missing (an `add` of what exists is a no-op).
    fn declare(&self, out: &mut String) {
        let family = self.family;
        let _ = writeln!(out, "add table {family}");
        for s in &self.sets {
            let _ = writeln!(out, "add set {family} {} {{ {} }}", s.name, s.declaration);
        }
        for c in &self.chains {
            match c.hook {
                Some(hook) => {
                    let _ = writeln!(out, "add chain {family} {} {{ {hook} }}", c.name);
                }
                None => {
                    let _ = writeln!(out, "add chain {family} {}", c.name);
                }
            }
        }
    }

    /// Empties the plan's sets and every chain (the calls' sets keep
    /// their elements).
    fn reset(&self, out: &mut String) {
        let family = self.family;
        for s in self.sets.iter().filter(|s| s.of_plan.is_some()) {
            let _ = writeln!(out, "flush set {family} {}", s.name);
        }
        for c in &self.chains {
            let _ = writeln!(out, "flush chain {family} {}", c.name);
        }
    }

    /// The plan's elements and every rule, in order.
    fn fill(&self, out: &mut String) {
        let family = self.family;
        for s in &self.sets {
            if let Some(items) = s.of_plan.as_ref().filter(|i| !i.is_empty()) {
                let _ = writeln!(
                    out,
                    "add element {family} {} {{ {} }}",
                    s.name,
                    items.join(", ")
                );
            }
        }
        for c in &self.chains {
            for rule in &c.rules {
                let _ = writeln!(out, "add rule {family} {} {rule}", c.name);
            }
        }
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
        // Only faas's own tables; nothing deleted, nothing else flushed.
        assert!(text.starts_with("add table inet faas\n"));
        assert!(!text.contains("delete"));
        assert!(!text.contains("flush ruleset"));
        assert!(text.contains(
            "add element inet faas always_deny { 0.0.0.0/8, 127.0.0.0/8, 169.254.0.0/16, 224.0.0.0/4, 240.0.0.0/4, 10.231.0.0/16 }"
        ));
        assert!(text.contains("198.18.0.0/15, 192.0.2.0/24 }"));
        assert!(text
            .contains("add set inet faas dns { type ipv4_addr; flags interval; auto-merge; }\n"));
        assert!(text.contains("add element inet faas dns { 10.255.255.53 }\n"));
        assert!(text.contains("add rule inet faas input iifname \"faas0\" jump call_to_host\n"));
        assert!(text.contains(
            "add rule inet faas postrouting ip saddr 10.231.0.0/16 oifname != \"faas0\" masquerade"
        ));
        // The deny of always-denied networks comes before anything that
        // accepts.
        let deny = text.find("ip daddr @always_deny").unwrap();
        let first_accept = text.find("th dport 53 accept").unwrap();
        assert!(deny < first_accept);
        // Every brace closes.
        assert_eq!(text.matches('{').count(), text.matches('}').count());
    }

    #[test]
    fn a_reload_empties_the_plans_sets_and_the_chains_but_not_the_calls_sets() {
        let text = plan().ruleset();
        for flushed in [
            "flush set inet faas always_deny",
            "flush set inet faas nonpublic",
            "flush set inet faas dns",
            "flush chain inet faas from_calls",
            "flush chain bridge faas prerouting",
        ] {
            assert!(text.contains(flushed), "{flushed}");
        }
        for kept in ["open_calls", "allow", "call_ifs", "call_ports"] {
            assert!(!text.contains(&format!("flush set inet faas {kept}\n")));
            assert!(!text.contains(&format!("flush set bridge faas {kept}\n")));
        }
        // Declared before anything is flushed or filled.
        let last_declaration = text.rfind("add chain").unwrap();
        assert!(last_declaration < text.find("flush").unwrap());
        // The replacing form deletes the two tables first.
        let replacing = plan().ruleset_replacing();
        assert!(replacing.starts_with(
            "add table inet faas\ndelete table inet faas\nadd table bridge faas\ndelete table bridge faas\n"
        ));
        assert!(!replacing.contains("flush"));
    }

    #[test]
    fn no_resolver_leaves_an_empty_set() {
        let text = Plan {
            dns: vec![],
            ..plan()
        }
        .ruleset();
        assert!(
            text.contains("add set inet faas dns { type ipv4_addr; flags interval; auto-merge; }")
        );
        assert!(!text.contains("add element inet faas dns"));
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
