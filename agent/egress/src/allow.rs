//! The allowlist of a function with egress: `CIDR:PORT`, `IP:PORT` or
//! `HOST:PORT`, a port or a range (`8000-8099`). TCP and UDP alike. A
//! function with egress and no allowlist may reach any public address
//! (see [`crate::rules`]).

use std::fmt;
use std::str::FromStr;

use crate::net::{Ipv4Net, NetError};

/// The most entries an allowlist may hold (each is a set element per
/// call, and a host name one DNS lookup per call).
pub const MAX_ENTRIES: usize = 64;

/// Networks no call may reach, whatever its allowlist says: "this"
/// network, loopback, link-local (cloud metadata lives there), multicast
/// and reserved. The calls' own subnet and the node's networks are added
/// by [`crate::rules::Plan`].
pub const ALWAYS_DENIED: &[&str] = &[
    "0.0.0.0/8",
    "127.0.0.0/8",
    "169.254.0.0/16",
    "224.0.0.0/4",
    "240.0.0.0/4",
];

/// Private and shared ranges: denied to a call with no allowlist (which
/// may reach public addresses only); an allowlist may name them.
pub const NON_PUBLIC: &[&str] = &[
    "10.0.0.0/8",
    "100.64.0.0/10",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "192.0.0.0/24",
    "192.0.2.0/24",
    "198.18.0.0/15",
];

/// Ports, inclusive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PortRange {
    pub first: u16,
    pub last: u16,
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.first == self.last {
            write!(f, "{}", self.first)
        } else {
            write!(f, "{}-{}", self.first, self.last)
        }
    }
}

/// Where an entry lets calls go.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Destination {
    Net(Ipv4Net),
    /// Resolved by the agent when each call starts (every A record).
    Host(String),
}

/// One allowlist entry.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Allow {
    pub destination: Destination,
    pub ports: PortRange,
}

impl fmt::Display for Allow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.destination {
            Destination::Net(net) if net.prefix() == 32 => write!(f, "{}", net.addr())?,
            Destination::Net(net) => write!(f, "{net}")?,
            Destination::Host(host) => write!(f, "{host}")?,
        }
        write!(f, ":{}", self.ports)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AllowError {
    #[error("{0:?}: expected CIDR:PORT, IP:PORT or HOST:PORT (a port or a range like 8000-8099)")]
    Shape(String),
    #[error("{0:?}: {1}")]
    Net(String, NetError),
    #[error("{0:?}: IPv6 is not supported; egress is IPv4 only")]
    Ipv6(String),
    #[error("{0:?}: {1:?} is not a port (1 to 65535) or a range of them")]
    Port(String, String),
    #[error("{0:?}: {1:?} is not a host name")]
    Host(String, String),
    #[error("{0:?}: {1} is never reachable from a call (loopback, link-local and metadata, multicast, reserved)")]
    Denied(String, Ipv4Net),
    #[error("an allowlist holds at most {MAX_ENTRIES} entries, not {0}")]
    TooMany(usize),
}

impl FromStr for Allow {
    type Err = AllowError;

    fn from_str(text: &str) -> Result<Allow, AllowError> {
        let shape = || AllowError::Shape(text.to_string());
        if text.starts_with('[') || text.matches(':').count() > 1 {
            return Err(AllowError::Ipv6(text.to_string()));
        }
        let (destination, ports) = text.rsplit_once(':').ok_or_else(shape)?;
        if destination.is_empty() {
            return Err(shape());
        }
        let ports =
            parse_ports(ports).ok_or_else(|| AllowError::Port(text.into(), ports.into()))?;
        let looks_numeric = destination
            .chars()
            .all(|c| c.is_ascii_digit() || c == '.' || c == '/');
        let destination = if looks_numeric {
            let net: Ipv4Net = destination
                .parse()
                .map_err(|e| AllowError::Net(text.to_string(), e))?;
            if let Some(denied) = ALWAYS_DENIED
                .iter()
                .map(|d| d.parse::<Ipv4Net>().expect("a constant network"))
                .find(|d| d.covers(&net))
            {
                return Err(AllowError::Denied(text.to_string(), denied));
            }
            Destination::Net(net)
        } else {
            if !is_host_name(destination) {
                return Err(AllowError::Host(text.into(), destination.into()));
            }
            Destination::Host(destination.to_ascii_lowercase())
        };
        Ok(Allow { destination, ports })
    }
}

/// Parses every entry; the first bad one is the error.
pub fn parse_all<S: AsRef<str>>(entries: &[S]) -> Result<Vec<Allow>, AllowError> {
    if entries.len() > MAX_ENTRIES {
        return Err(AllowError::TooMany(entries.len()));
    }
    entries.iter().map(|e| e.as_ref().trim().parse()).collect()
}

fn parse_ports(text: &str) -> Option<PortRange> {
    let port = |p: &str| p.parse::<u16>().ok().filter(|p| *p > 0);
    let (first, last) = match text.split_once('-') {
        Some((a, b)) => (port(a)?, port(b)?),
        None => (port(text)?, port(text)?),
    };
    (first <= last).then_some(PortRange { first, last })
}

/// A DNS name: labels of letters, digits and '-', not starting or ending
/// with '-', 63 bytes at most, 253 in all, with at least one letter (so
/// that a mistyped address is not looked up as a name).
fn is_host_name(name: &str) -> bool {
    let name = name.strip_suffix('.').unwrap_or(name);
    !name.is_empty()
        && name.len() <= 253
        && name.chars().any(|c| c.is_ascii_alphabetic())
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allow(text: &str) -> Allow {
        text.parse().unwrap_or_else(|e| panic!("{text}: {e}"))
    }

    #[test]
    fn entries_parse_and_print_back() {
        for text in [
            "198.51.100.1:8080",
            "203.0.113.0/24:443",
            "10.20.0.0/16:5432",
            "api.example.com:443",
            "0.0.0.0/0:53",
            "198.51.100.7:8000-8099",
        ] {
            assert_eq!(allow(text).to_string(), text);
        }
        assert_eq!(
            allow("API.Example.com:443").destination,
            Destination::Host("api.example.com".into())
        );
        assert_eq!(
            allow("198.51.100.7:8000-8099").ports,
            PortRange {
                first: 8000,
                last: 8099
            }
        );
    }

    #[test]
    fn bad_entries_get_a_clear_error() {
        let err = |text: &str| text.parse::<Allow>().unwrap_err();
        assert!(matches!(err("198.51.100.1"), AllowError::Shape(_)));
        assert!(matches!(err(":80"), AllowError::Shape(_)));
        assert!(matches!(err("198.51.100.1:0"), AllowError::Port(..)));
        assert!(matches!(err("198.51.100.1:65536"), AllowError::Port(..)));
        assert!(matches!(err("198.51.100.1:90-80"), AllowError::Port(..)));
        assert!(matches!(err("198.51.100.1:http"), AllowError::Port(..)));
        assert!(matches!(err("[2001:db8::1]:443"), AllowError::Ipv6(_)));
        assert!(matches!(err("2001:db8::1:443"), AllowError::Ipv6(_)));
        assert!(matches!(err("10.1.2.3/8:80"), AllowError::Net(..)));
        assert!(matches!(err("300.1.1.1:80"), AllowError::Net(..)));
        assert!(matches!(err("bad_host:80"), AllowError::Host(..)));
        assert!(matches!(err("-x.example:80"), AllowError::Host(..)));
        // Never reachable, so refused at deploy rather than silently dead
        // (a wider network that holds them is taken: its other addresses
        // are reachable, the denied ones stay denied).
        for denied in ["127.0.0.1:80", "169.254.169.254:80", "224.0.0.1:5353"] {
            assert!(matches!(err(denied), AllowError::Denied(..)), "{denied}");
        }
        let many: Vec<String> = (0..=MAX_ENTRIES)
            .map(|i| format!("198.51.100.{}:80", i % 250 + 1))
            .collect();
        assert!(matches!(parse_all(&many), Err(AllowError::TooMany(_))));
        assert_eq!(parse_all(&many[..2]).unwrap().len(), 2);
    }
}
