//! IPv4 networks (`10.0.0.0/8`), as nftables and the allowlist write them.

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

/// An IPv4 network: an address and a prefix length, host bits zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Ipv4Net {
    addr: Ipv4Addr,
    prefix: u8,
}

impl Ipv4Net {
    /// The network of `addr`/`prefix` (host bits cleared); None for a
    /// prefix over 32.
    pub fn new(addr: Ipv4Addr, prefix: u8) -> Option<Ipv4Net> {
        (prefix <= 32).then(|| Ipv4Net {
            addr: Ipv4Addr::from(u32::from(addr) & mask(prefix)),
            prefix,
        })
    }

    /// The network holding exactly `addr`.
    pub fn host(addr: Ipv4Addr) -> Ipv4Net {
        Ipv4Net { addr, prefix: 32 }
    }

    pub fn addr(&self) -> Ipv4Addr {
        self.addr
    }

    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & mask(self.prefix) == u32::from(self.addr)
    }

    /// True if every address of `other` is in `self`.
    pub fn covers(&self, other: &Ipv4Net) -> bool {
        other.prefix >= self.prefix && self.contains(other.addr)
    }

    /// True if the two share at least one address.
    pub fn overlaps(&self, other: &Ipv4Net) -> bool {
        self.covers(other) || other.covers(self)
    }

    /// The `n`th address of the network (0: the network's own), if it
    /// holds that many.
    pub fn nth(&self, n: u32) -> Option<Ipv4Addr> {
        let size = 1u64 << (32 - u32::from(self.prefix));
        (u64::from(n) < size).then(|| Ipv4Addr::from(u32::from(self.addr) + n))
    }
}

fn mask(prefix: u8) -> u32 {
    match prefix {
        0 => 0,
        p => u32::MAX << (32 - u32::from(p)),
    }
}

impl fmt::Display for Ipv4Net {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// Why a network did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NetError {
    #[error("{0:?} is not an IPv4 address")]
    Address(String),
    #[error("{0:?} is not a prefix length (0 to 32)")]
    Prefix(String),
    #[error("{0} has bits set past its prefix; the network is {1}")]
    HostBits(String, Ipv4Net),
}

impl FromStr for Ipv4Net {
    type Err = NetError;

    /// `a.b.c.d/n` (host bits must be zero: `10.1.2.3/8` is refused
    /// rather than widened silently) or a bare address (`/32`).
    fn from_str(text: &str) -> Result<Ipv4Net, NetError> {
        let (addr_text, prefix) = match text.split_once('/') {
            Some((a, p)) => {
                let prefix: u8 = p
                    .parse()
                    .ok()
                    .filter(|p| *p <= 32)
                    .ok_or_else(|| NetError::Prefix(p.to_string()))?;
                (a, prefix)
            }
            None => (text, 32),
        };
        let addr: Ipv4Addr = addr_text
            .parse()
            .map_err(|_| NetError::Address(addr_text.to_string()))?;
        let net = Ipv4Net::new(addr, prefix).expect("prefix checked");
        if net.addr != addr {
            return Err(NetError::HostBits(text.to_string(), net));
        }
        Ok(net)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn networks_parse_print_and_contain() {
        let net: Ipv4Net = "10.231.0.0/16".parse().unwrap();
        assert_eq!(net.to_string(), "10.231.0.0/16");
        assert!(net.contains("10.231.255.1".parse().unwrap()));
        assert!(!net.contains("10.232.0.1".parse().unwrap()));
        assert_eq!(net.nth(1), Some("10.231.0.1".parse().unwrap()));
        assert_eq!(net.nth(1 << 16), None);
        let host: Ipv4Net = "198.51.100.1".parse().unwrap();
        assert_eq!(host.to_string(), "198.51.100.1/32");
        assert!(net.covers(&"10.231.7.0/24".parse().unwrap()));
        assert!(!"10.231.7.0/24".parse::<Ipv4Net>().unwrap().covers(&net));
        assert!("10.231.7.0/24".parse::<Ipv4Net>().unwrap().overlaps(&net));
        let all: Ipv4Net = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains("203.0.113.9".parse().unwrap()));
    }

    #[test]
    fn malformed_networks_are_refused() {
        for bad in ["10.0.0.0/33", "10.0.0/8", "10.0.0.0/x", "host", "::1", ""] {
            assert!(bad.parse::<Ipv4Net>().is_err(), "{bad}");
        }
        assert!(matches!(
            "10.1.2.3/8".parse::<Ipv4Net>(),
            Err(NetError::HostBits(..))
        ));
    }
}
