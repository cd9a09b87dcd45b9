//! The private-network guard for every outbound request (SPEC §6).
//!
//! Names are resolved by [`GuardedResolver`], which refuses a name if any of its addresses is
//! forbidden, and hands reqwest only checked addresses: the connection goes to what was checked,
//! so DNS rebinding cannot slip through. IP literals skip DNS, so [`Guard::check_url`] checks them
//! before the first request and at every redirect hop.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use ipnet::IpNet;

/// Parses a CIDR (`10.0.0.0/8`) or a single address (`127.0.0.1`, taken as /32 or /128).
pub fn parse_cidr(text: &str) -> Result<IpNet, String> {
    let text = text.trim();
    if let Ok(net) = text.parse::<IpNet>() {
        return Ok(net);
    }
    text.parse::<IpAddr>()
        .map(IpNet::from)
        .map_err(|_| "not a CIDR such as 10.0.0.0/8 or an address".to_owned())
}

/// A destination refused by the guard.
#[derive(Debug, Clone, thiserror::Error)]
#[error(
    "{host} resolves to {addr}, a {kind} address; outbound requests to it are blocked (http.allow_networks exempts CIDRs)"
)]
pub struct Blocked {
    /// The host as written in the URL.
    pub host: String,
    /// The forbidden address.
    pub addr: IpAddr,
    /// What kind of address it is.
    pub kind: &'static str,
}

/// Which addresses may be reached.
#[derive(Debug, Clone, Default)]
pub struct Guard {
    /// CIDRs exempt from the block.
    allow: Vec<IpNet>,
}

impl Guard {
    /// A guard exempting `allow_networks` (already validated by the config).
    pub fn new(allow_networks: &[String]) -> Guard {
        Guard {
            allow: allow_networks
                .iter()
                .filter_map(|c| parse_cidr(c).ok())
                .collect(),
        }
    }

    /// Refuses a forbidden address unless an allowed network contains it.
    pub fn check(&self, host: &str, addr: IpAddr) -> Result<(), Blocked> {
        let Some(kind) = forbidden(addr) else {
            return Ok(());
        };
        if self
            .allow
            .iter()
            .any(|net| net.contains(&addr) || net.contains(&canonical(addr)))
        {
            return Ok(());
        }
        Err(Blocked {
            host: host.to_owned(),
            addr,
            kind,
        })
    }

    /// Checks a URL whose host is an IP literal (names are checked when resolved).
    pub fn check_url(&self, url: &url::Url) -> Result<(), Blocked> {
        match url.host() {
            Some(url::Host::Ipv4(ip)) => self.check(&ip.to_string(), IpAddr::V4(ip)),
            Some(url::Host::Ipv6(ip)) => self.check(&ip.to_string(), IpAddr::V6(ip)),
            _ => Ok(()),
        }
    }
}

/// IPv4-mapped and NAT64 IPv6 addresses as the IPv4 address they carry.
fn canonical(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V6(v6) => match embedded_v4(v6) {
            Some(v4) => IpAddr::V4(v4),
            None => addr,
        },
        v4 => v4,
    }
}

fn embedded_v4(v6: Ipv6Addr) -> Option<Ipv4Addr> {
    if let Some(v4) = v6.to_ipv4_mapped() {
        return Some(v4);
    }
    let s = v6.segments();
    // NAT64 well-known prefix 64:ff9b::/96.
    if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        return Some(Ipv4Addr::new(
            (s[6] >> 8) as u8,
            s[6] as u8,
            (s[7] >> 8) as u8,
            s[7] as u8,
        ));
    }
    None
}

/// What kind of forbidden address this is, or `None` for a public one.
pub fn forbidden(addr: IpAddr) -> Option<&'static str> {
    match canonical(addr) {
        IpAddr::V4(ip) => {
            let o = ip.octets();
            if ip.is_loopback() {
                Some("loopback")
            } else if ip.is_private() {
                Some("private")
            } else if ip.is_link_local() {
                Some("link-local")
            } else if ip.is_unspecified() || o[0] == 0 {
                Some("unspecified")
            } else if ip.is_multicast() || ip.is_broadcast() || o[0] >= 240 {
                Some("multicast or reserved")
            } else if o[0] == 100 && (64..128).contains(&o[1]) {
                Some("shared (carrier-grade NAT)")
            } else {
                None
            }
        }
        IpAddr::V6(ip) => {
            let first = ip.segments()[0];
            if ip.is_loopback() {
                Some("loopback")
            } else if ip.is_unspecified() {
                Some("unspecified")
            } else if ip.is_multicast() {
                Some("multicast")
            } else if first & 0xffc0 == 0xfe80 {
                Some("link-local")
            } else if first & 0xfe00 == 0xfc00 {
                Some("unique-local")
            } else if first & 0xffc0 == 0xfec0 {
                Some("site-local")
            } else {
                None
            }
        }
    }
}

/// Why a name could not be resolved to checked addresses.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    /// The lookup failed.
    #[error(transparent)]
    Lookup(#[from] std::io::Error),
    /// An address is forbidden.
    #[error(transparent)]
    Blocked(#[from] Blocked),
}

impl ResolveError {
    /// The error itself, unwrapped, so that [`find_blocked`] finds a [`Blocked`] in the chain
    /// reqwest builds around it (a transparent wrapper would hide it).
    pub fn into_inner(self) -> Box<dyn std::error::Error + Send + Sync> {
        match self {
            ResolveError::Lookup(e) => Box::new(e),
            ResolveError::Blocked(b) => Box::new(b),
        }
    }
}

impl Guard {
    /// Resolves `host` and refuses it if any of its addresses is forbidden.
    pub async fn resolve(&self, host: &str) -> Result<Vec<SocketAddr>, ResolveError> {
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host, 0)).await?.collect();
        self.check_all(host, &addrs)?;
        Ok(addrs)
    }

    /// As [`Guard::resolve`], blocking: for reqwest's redirect policy, which cannot wait.
    pub fn resolve_blocking(&self, host: &str) -> Result<(), ResolveError> {
        use std::net::ToSocketAddrs;
        let addrs: Vec<SocketAddr> = (host, 0).to_socket_addrs()?.collect();
        Ok(self.check_all(host, &addrs)?)
    }

    fn check_all(&self, host: &str, addrs: &[SocketAddr]) -> Result<(), Blocked> {
        addrs
            .iter()
            .try_for_each(|addr| self.check(host, addr.ip()))
    }
}

/// A reqwest resolver that only ever returns checked addresses.
#[derive(Debug, Clone)]
pub struct GuardedResolver {
    /// The rules.
    guard: Arc<Guard>,
    /// Names resolved without the check: the HTTP proxies (infrastructure an operator set, not an
    /// action's target, which [`crate::connectors::proxy`] checks instead).
    exempt: Arc<[String]>,
}

impl GuardedResolver {
    /// A resolver applying `guard` to every name but `exempt`.
    pub fn new(guard: Arc<Guard>, exempt: Vec<String>) -> GuardedResolver {
        GuardedResolver {
            guard,
            exempt: exempt.into(),
        }
    }
}

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let guard = self.guard.clone();
        let exempt = self
            .exempt
            .iter()
            .any(|h| h.eq_ignore_ascii_case(name.as_str()));
        Box::pin(async move {
            let host = name.as_str();
            let addrs = if exempt {
                tokio::net::lookup_host((host, 0)).await?.collect()
            } else {
                guard
                    .resolve(host)
                    .await
                    .map_err(ResolveError::into_inner)?
            };
            let addrs: reqwest::dns::Addrs = Box::new(addrs.into_iter());
            Ok(addrs)
        })
    }
}

/// Finds a [`Blocked`] anywhere in an error's source chain.
pub fn find_blocked<'a>(error: &'a (dyn std::error::Error + 'static)) -> Option<&'a Blocked> {
    let mut current = Some(error);
    while let Some(e) = current {
        if let Some(blocked) = e.downcast_ref::<Blocked>() {
            return Some(blocked);
        }
        current = e.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidrs_and_single_addresses() {
        assert!(parse_cidr("127.0.0.1/32").is_ok());
        assert!(parse_cidr("::1").is_ok());
        assert!(parse_cidr("10.0.0.0/8").is_ok());
        assert!(parse_cidr("localhost").is_err());
    }

    #[test]
    fn forbidden_addresses() {
        let table: &[(&str, Option<&str>)] = &[
            ("127.0.0.1", Some("loopback")),
            ("127.5.6.7", Some("loopback")),
            ("10.1.2.3", Some("private")),
            ("172.16.0.1", Some("private")),
            ("172.31.255.255", Some("private")),
            ("192.168.1.1", Some("private")),
            ("169.254.169.254", Some("link-local")),
            ("0.0.0.0", Some("unspecified")),
            ("224.0.0.1", Some("multicast or reserved")),
            ("255.255.255.255", Some("multicast or reserved")),
            ("100.64.0.1", Some("shared (carrier-grade NAT)")),
            ("::1", Some("loopback")),
            ("::", Some("unspecified")),
            ("fe80::1", Some("link-local")),
            ("fc00::1", Some("unique-local")),
            ("fd12:3456::1", Some("unique-local")),
            ("ff02::1", Some("multicast")),
            ("::ffff:127.0.0.1", Some("loopback")),
            ("::ffff:169.254.169.254", Some("link-local")),
            ("64:ff9b::a00:1", Some("private")),
            ("8.8.8.8", None),
            ("172.32.0.1", None),
            ("2606:4700::1111", None),
            ("::ffff:8.8.8.8", None),
        ];
        for (addr, want) in table {
            let ip: IpAddr = addr.parse().expect("address");
            assert_eq!(forbidden(ip), *want, "{addr}");
        }
    }

    #[test]
    fn allow_networks_exempt() {
        let guard = Guard::new(&["127.0.0.1/32".into()]);
        assert!(guard.check("x", "127.0.0.1".parse().expect("ip")).is_ok());
        assert!(
            guard
                .check("x", "::ffff:127.0.0.1".parse().expect("ip"))
                .is_ok()
        );
        assert!(guard.check("x", "127.0.0.2".parse().expect("ip")).is_err());
        assert!(guard.check("x", "10.0.0.1".parse().expect("ip")).is_err());
    }
}
