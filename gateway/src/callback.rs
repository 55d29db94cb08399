//! Callbacks of async calls: when a call submitted with `X-Callback-Url`
//! ends, its HTTP answer (as a sync call would have had it) is POSTed to
//! that URL.
//!
//! A URL given by a caller makes the gateway send requests where the
//! caller says: server-side request forgery. So a callback may reach only
//! public addresses: loopback, link-local (cloud metadata), private,
//! shared (CGNAT), unspecified, multicast and broadcast addresses are
//! refused, whether written in the URL or resolved from its host name
//! (checked on the addresses actually connected to, so a name that
//! resolves differently later gains nothing), unless an operator allows a
//! network with `callback_allow_net`. Redirects are not followed and no
//! proxy from the environment is used.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::config::CallbackSettings;
use crate::response;
use crate::upstream::{Token, Upstream};

/// A network, `10.0.4.0/24` or `fd00::/8` (a bare address: just it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Net {
    addr: IpAddr,
    prefix: u8,
}

impl FromStr for Net {
    type Err = String;
    fn from_str(text: &str) -> Result<Net, String> {
        let (addr, prefix) = match text.trim().split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (text.trim(), None),
        };
        let addr: IpAddr = addr
            .parse()
            .map_err(|e| format!("{addr:?} is not an IP address: {e}"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("prefix {p:?} is not 0..={max}"))?,
            None => max,
        };
        Ok(Net { addr, prefix })
    }
}

impl Net {
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, canonical(ip)) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// An IPv4 address written as IPv6 (`::ffff:127.0.0.1`) is that IPv4
/// address.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        },
        v4 => v4,
    }
}

/// Addresses no callback may reach, whatever is allowed.
fn never(ip: IpAddr) -> bool {
    match canonical(ip) {
        IpAddr::V4(v4) => v4.is_unspecified() || v4.is_multicast() || v4.is_broadcast(),
        IpAddr::V6(v6) => v6.is_unspecified() || v6.is_multicast(),
    }
}

/// Addresses of this machine, its networks and its cloud: refused unless
/// allowed.
fn internal(ip: IpAddr) -> bool {
    match canonical(ip) {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || a == 0
                // Shared address space (carrier-grade NAT), 100.64.0.0/10.
                || (a == 100 && (64..128).contains(&b))
                // IETF protocol assignments, 192.0.0.0/24.
                || v4.octets()[..3] == [192, 0, 0]
                // Benchmarking, 198.18.0.0/15.
                || (a == 198 && (b == 18 || b == 19))
                || a >= 240
        }
        IpAddr::V6(v6) => {
            let first = v6.segments()[0];
            v6.is_loopback()
                // Unique local, fc00::/7.
                || (first & 0xfe00) == 0xfc00
                // Link-local, fe80::/10.
                || (first & 0xffc0) == 0xfe80
                // Site-local (deprecated), fec0::/10.
                || (first & 0xffc0) == 0xfec0
                // NAT64 and 6to4 embed IPv4 addresses of any kind.
                || (first == 0x64 && v6.segments()[1] == 0xff9b)
                || first == 0x2002
        }
    }
}

/// Which addresses callbacks may reach.
#[derive(Clone, Debug, Default)]
pub struct Guard {
    allow: Vec<Net>,
}

impl Guard {
    pub fn new(allow: Vec<Net>) -> Guard {
        Guard { allow }
    }

    pub fn permits(&self, ip: IpAddr) -> bool {
        if never(ip) {
            return false;
        }
        !internal(ip) || self.allow.iter().any(|net| net.contains(ip))
    }

    /// A callback URL checked as far as it can be before resolving it:
    /// http or https, a host, no credentials, and an address written in it
    /// permitted.
    pub fn check_url(&self, text: &str) -> Result<reqwest::Url, String> {
        let url = reqwest::Url::parse(text.trim()).map_err(|e| format!("not a URL: {e}"))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(format!("scheme {:?} is not http or https", url.scheme()));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err("credentials in a callback URL are not accepted".into());
        }
        let host = url.host_str().ok_or("no host")?;
        let literal = host.trim_start_matches('[').trim_end_matches(']');
        if let Ok(ip) = literal.parse::<IpAddr>() {
            if !self.permits(ip) {
                return Err(format!(
                    "{ip} is a loopback, link-local, private or otherwise internal address; callbacks go to public addresses only (an operator may allow a network with callback_allow_net)"
                ));
            }
        } else if host.eq_ignore_ascii_case("localhost")
            || host.to_ascii_lowercase().ends_with(".localhost")
        {
            let loopback = IpAddr::V4(Ipv4Addr::LOCALHOST);
            if !self.permits(loopback) && !self.permits(IpAddr::V6(Ipv6Addr::LOCALHOST)) {
                return Err(format!(
                    "{host} is this machine: callbacks go to public addresses only"
                ));
            }
        }
        Ok(url)
    }
}

/// The resolver of the callback client: the host's addresses, without
/// those the guard refuses.
struct GuardedResolver {
    guard: Arc<Guard>,
}

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let guard = self.guard.clone();
        let host = name.as_str().to_string();
        Box::pin(async move {
            let found: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let permitted: Vec<SocketAddr> = found
                .iter()
                .copied()
                .filter(|a| guard.permits(a.ip()))
                .collect();
            if permitted.is_empty() {
                let refused: Vec<String> = found.iter().map(|a| a.ip().to_string()).collect();
                return Err(format!(
                    "{host} resolves only to addresses callbacks may not reach ({})",
                    refused.join(", ")
                )
                .into());
            }
            let addrs: reqwest::dns::Addrs = Box::new(permitted.into_iter());
            Ok(addrs)
        })
    }
}

/// Where the callbacks of async calls are kept until their calls end.
#[derive(Clone)]
pub struct Callbacks {
    guard: Arc<Guard>,
    client: reqwest::Client,
    pending: Arc<Semaphore>,
    settings: CallbackSettings,
    upstream: Upstream,
}

/// What a callback needs to be delivered.
pub struct Pending {
    pub permit: OwnedSemaphorePermit,
    pub url: reqwest::Url,
    pub call_id: String,
    pub function: String,
    pub token: Token,
}

impl Callbacks {
    pub fn new(settings: CallbackSettings, upstream: Upstream) -> anyhow::Result<Callbacks> {
        let guard = Arc::new(Guard::new(settings.allow_nets.clone()));
        let client = reqwest::Client::builder()
            .dns_resolver(Arc::new(GuardedResolver {
                guard: guard.clone(),
            }))
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .connect_timeout(settings.timeout)
            .timeout(settings.timeout)
            .user_agent(concat!("faas-gateway/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Callbacks {
            guard,
            client,
            pending: Arc::new(Semaphore::new(settings.max_pending)),
            settings,
            upstream,
        })
    }

    pub fn guard(&self) -> &Guard {
        &self.guard
    }

    /// A place among the pending callbacks, if one is free.
    pub fn reserve(&self) -> Option<OwnedSemaphorePermit> {
        self.pending.clone().try_acquire_owned().ok()
    }

    /// Waits for the call in the background, then delivers.
    pub fn spawn(&self, pending: Pending) {
        let this = self.clone();
        let span = tracing::info_span!("callback", call_id = %pending.call_id, function = %pending.function);
        tokio::spawn(tracing::Instrument::instrument(
            async move { this.deliver(pending).await },
            span,
        ));
    }

    async fn deliver(&self, pending: Pending) {
        let reply = match self
            .upstream
            .wait_final(&pending.call_id, &pending.token, self.settings.max_wait)
            .await
        {
            Ok(call) => response::from_call(&call),
            Err(status) => crate::status::reply(&status),
        };
        // The token is not needed past this point.
        drop(pending.token);
        let mut wait = Duration::from_secs(1);
        for attempt in 1..=self.settings.attempts {
            let mut request = self
                .client
                .post(pending.url.clone())
                .header("X-Call-Id", &pending.call_id)
                .header("X-Function-Name", &pending.function)
                .header("X-Function-Status", reply.status.as_u16().to_string())
                .body(reply.body.clone());
            for (name, value) in &reply.headers {
                request = request.header(name.as_str(), value.as_bytes());
            }
            match request.send().await {
                Ok(answer) if !answer.status().is_server_error() => {
                    tracing::info!(
                        status = answer.status().as_u16(),
                        attempt,
                        "callback delivered"
                    );
                    drop(pending.permit);
                    return;
                }
                Ok(answer) => {
                    tracing::warn!(
                        status = answer.status().as_u16(),
                        attempt,
                        "callback answered with a server error"
                    )
                }
                Err(e) => {
                    tracing::warn!(attempt, error = %error_chain(&e), "callback not delivered")
                }
            }
            if attempt < self.settings.attempts {
                tokio::time::sleep(wait).await;
                wait *= 2;
            }
        }
        tracing::warn!(
            attempts = self.settings.attempts,
            "callback dropped after its last attempt"
        );
    }
}

/// An error with its causes (reqwest puts the useful part in them).
fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut parts = vec![error.to_string()];
    let mut source = error.source();
    while let Some(cause) = source {
        parts.push(cause.to_string());
        source = cause.source();
    }
    parts.join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn internal_addresses_are_refused_unless_allowed() {
        let guard = Guard::default();
        for refused in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "255.255.255.255",
            "224.0.0.1",
            "::1",
            "::",
            "fe80::1",
            "fd00::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "64:ff9b::7f00:1",
        ] {
            assert!(!guard.permits(ip(refused)), "{refused} permitted");
        }
        for public in ["93.184.216.34", "1.1.1.1", "2606:4700::1111"] {
            assert!(guard.permits(ip(public)), "{public} refused");
        }
        let guard = Guard::new(vec![
            "127.0.0.1/32".parse().unwrap(),
            "10.0.4.0/24".parse().unwrap(),
        ]);
        assert!(guard.permits(ip("127.0.0.1")));
        assert!(guard.permits(ip("::ffff:127.0.0.1")));
        assert!(!guard.permits(ip("127.0.0.2")));
        assert!(guard.permits(ip("10.0.4.200")));
        assert!(!guard.permits(ip("10.0.5.1")));
        // Never, whatever is allowed.
        let all = Guard::new(vec!["0.0.0.0/0".parse().unwrap()]);
        assert!(!all.permits(ip("0.0.0.0")));
        assert!(all.permits(ip("10.9.9.9")));
    }

    #[test]
    fn callback_urls_are_checked() {
        let guard = Guard::default();
        assert!(guard.check_url("https://hooks.example.com/done").is_ok());
        for bad in [
            "ftp://example.com/x",
            "file:///etc/passwd",
            "http://127.0.0.1:8080/",
            "http://[::1]/",
            "http://169.254.169.254/latest/meta-data",
            "http://localhost/",
            "http://user:pw@example.com/",
            "not a url",
        ] {
            assert!(guard.check_url(bad).is_err(), "{bad} accepted");
        }
        let loopback = Guard::new(vec!["127.0.0.0/8".parse().unwrap()]);
        assert!(loopback.check_url("http://127.0.0.1:9/x").is_ok());
        assert!(loopback.check_url("http://localhost:9/x").is_ok());
    }

    #[test]
    fn nets_parse() {
        assert!("10.0.0.0/33".parse::<Net>().is_err());
        assert!("nonsense/8".parse::<Net>().is_err());
        let net: Net = "fd00::/8".parse().unwrap();
        assert!(net.contains(ip("fd12::1")));
        assert!(!net.contains(ip("10.0.0.1")));
        let one: Net = "192.0.2.7".parse().unwrap();
        assert!(one.contains(ip("192.0.2.7")) && !one.contains(ip("192.0.2.8")));
    }

    #[tokio::test]
    async fn names_that_resolve_to_internal_addresses_are_refused() {
        use reqwest::dns::Resolve;
        let resolver = GuardedResolver {
            guard: Arc::new(Guard::default()),
        };
        let name = reqwest::dns::Name::from_str("localhost").unwrap();
        let err = match resolver.resolve(name).await {
            Ok(_) => panic!("localhost resolved to a permitted address"),
            Err(e) => e.to_string(),
        };
        assert!(err.contains("may not reach"), "{err}");
    }
}
