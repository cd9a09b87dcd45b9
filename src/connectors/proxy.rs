//! Which outbound requests go through an HTTP proxy, and how the private-network guard still
//! applies to the real target behind it.
//!
//! The rules come from `http.proxy` / `http.no_proxy`, or, when those are empty, from the usual
//! environment variables (`HTTPS_PROXY`, `HTTP_PROXY`, `NO_PROXY`, or their lowercase forms). One
//! [`ProxyRules`] decides for reqwest (`Proxy::custom`) and for the guard, so both always agree.
//!
//! Through a proxy, reqwest never resolves the target: it sends `CONNECT host:port` (https) or an
//! absolute-form request (`GET http://host/…`, http) and the proxy resolves and connects. So:
//! - the proxy's own address is not checked (it is infrastructure an operator configured, and is
//!   usually private): its host name is exempt in [`crate::net::GuardedResolver`];
//! - the target is checked before the request (and at each redirect hop to another host): its
//!   name is resolved here and refused if any address is forbidden, as without a proxy. The proxy
//!   resolves it again, so a name that changes its answer between the two lookups could still
//!   reach a private address: give the proxy its own egress rules (most refuse private ranges)
//!   when actions' URLs are not trusted.

use std::net::IpAddr;

use ipnet::IpNet;
use url::Url;

/// Where requests go through a proxy, and which hosts skip it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProxyRules {
    /// The proxy for `http://` targets.
    http: Option<Url>,
    /// The proxy for `https://` targets.
    https: Option<Url>,
    /// Hosts that never go through a proxy.
    bypass: Vec<Bypass>,
}

/// One `NO_PROXY` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Bypass {
    /// `*`: every host.
    All,
    /// A domain and its subdomains (`example.com`, `.example.com`).
    Domain(String),
    /// An address or network, for IP-literal hosts.
    Network(IpNet),
}

/// A proxy setting that is not a URL.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{source_name}: {value:?} is not a proxy URL such as http://proxy.internal:3128")]
pub struct BadProxy {
    /// Where it came from (`http.proxy`, `HTTPS_PROXY`…).
    pub source_name: &'static str,
    /// What was written (without credentials).
    pub value: String,
}

impl ProxyRules {
    /// The rules of `http.proxy` / `http.no_proxy`, or of the environment when they are empty.
    pub fn new(proxy: &str, no_proxy: &str) -> Result<ProxyRules, BadProxy> {
        ProxyRules::from(proxy, no_proxy, |name| std::env::var(name).ok())
    }

    /// As [`ProxyRules::new`], reading variables through `env`.
    pub fn from(
        proxy: &str,
        no_proxy: &str,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<ProxyRules, BadProxy> {
        let var = |names: [&'static str; 2]| {
            names.into_iter().find_map(|name| {
                env(name)
                    .filter(|v| !v.trim().is_empty())
                    .map(|v| (name, v))
            })
        };
        let (http, https) = if proxy.trim().is_empty() {
            (
                var(["HTTP_PROXY", "http_proxy"]),
                var(["HTTPS_PROXY", "https_proxy"]),
            )
        } else {
            let both = ("http.proxy", proxy.to_owned());
            (Some(both.clone()), Some(both))
        };
        let bypass = if no_proxy.trim().is_empty() {
            var(["NO_PROXY", "no_proxy"]).map(|(_, v)| v)
        } else {
            Some(no_proxy.to_owned())
        };
        Ok(ProxyRules {
            http: http.map(parse_proxy).transpose()?,
            https: https.map(parse_proxy).transpose()?,
            bypass: bypass.as_deref().map(parse_bypass).unwrap_or_default(),
        })
    }

    /// The proxy a request to `url` goes through, if any.
    pub fn proxy_for(&self, url: &Url) -> Option<&Url> {
        let proxy = match url.scheme() {
            "https" => self.https.as_ref(),
            "http" => self.http.as_ref(),
            _ => None,
        }?;
        let host = url.host_str()?;
        (!self.bypasses(host)).then_some(proxy)
    }

    /// Host names of the proxies (exempt from the guard: they are not an action's target).
    pub fn proxy_hosts(&self) -> Vec<String> {
        [&self.http, &self.https]
            .into_iter()
            .flatten()
            .filter_map(|p| p.host_str().map(str::to_owned))
            .collect()
    }

    /// Whether any proxy is configured.
    pub fn is_empty(&self) -> bool {
        self.http.is_none() && self.https.is_none()
    }

    fn bypasses(&self, host: &str) -> bool {
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let ip = host.parse::<IpAddr>().ok();
        let host = host.to_ascii_lowercase();
        self.bypass.iter().any(|entry| match entry {
            Bypass::All => true,
            Bypass::Domain(domain) => {
                host == *domain
                    || host
                        .strip_suffix(domain.as_str())
                        .is_some_and(|rest| rest.ends_with('.'))
            }
            Bypass::Network(net) => ip.is_some_and(|ip| net.contains(&ip)),
        })
    }
}

/// A proxy URL; a bare `host:port` means `http://host:port`.
fn parse_proxy((source_name, value): (&'static str, String)) -> Result<Url, BadProxy> {
    let value = value.trim();
    let with_scheme = if value.contains("://") {
        value.to_owned()
    } else {
        format!("http://{value}")
    };
    Url::parse(&with_scheme)
        .ok()
        .filter(|u| matches!(u.scheme(), "http" | "https") && u.host_str().is_some())
        .ok_or_else(|| BadProxy {
            source_name,
            // Credentials may be in it: never echo them.
            value: match Url::parse(&with_scheme) {
                Ok(mut u) => {
                    let _ = u.set_password(None);
                    let _ = u.set_username("");
                    u.to_string()
                }
                Err(_) => "(unparsable)".to_owned(),
            },
        })
}

/// `NO_PROXY`: comma- or space-separated hosts, domains, addresses, CIDRs, or `*`.
fn parse_bypass(text: &str) -> Vec<Bypass> {
    text.split([',', ' '])
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .map(|entry| {
            if entry == "*" {
                return Bypass::All;
            }
            if let Ok(net) = crate::net::parse_cidr(entry) {
                return Bypass::Network(net);
            }
            // `host:port` entries: the port is not matched.
            let host = entry.rsplit_once(':').map_or(entry, |(h, _)| h);
            Bypass::Domain(
                host.trim_start_matches("*.")
                    .trim_start_matches('.')
                    .to_ascii_lowercase(),
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(text: &str) -> Url {
        Url::parse(text).expect("url")
    }

    #[test]
    fn environment_variables_pick_a_proxy_per_scheme() {
        let env = |name: &str| match name {
            "HTTPS_PROXY" => Some("http://secure.proxy:3128".to_owned()),
            "http_proxy" => Some("plain.proxy:8080".to_owned()),
            "NO_PROXY" => Some("internal.example, .svc.cluster.local,10.0.0.0/8".to_owned()),
            _ => None,
        };
        let rules = ProxyRules::from("", "", env).expect("rules");
        let via = |u: &str| rules.proxy_for(&url(u)).map(Url::as_str);
        assert_eq!(
            via("https://api.example.com/x"),
            Some("http://secure.proxy:3128/")
        );
        assert_eq!(
            via("http://api.example.com/x"),
            Some("http://plain.proxy:8080/")
        );
        assert_eq!(via("https://internal.example/x"), None);
        assert_eq!(via("https://a.b.internal.example/x"), None);
        assert_eq!(
            via("https://notinternal.example/x"),
            Some("http://secure.proxy:3128/")
        );
        assert_eq!(via("http://api.ns.svc.cluster.local/x"), None);
        assert_eq!(via("http://10.1.2.3/x"), None);
        assert_eq!(via("http://11.1.2.3/x"), Some("http://plain.proxy:8080/"));
        assert_eq!(rules.proxy_hosts(), ["plain.proxy", "secure.proxy"]);
    }

    #[test]
    fn settings_override_the_environment() {
        let env = |name: &str| (name == "HTTPS_PROXY").then(|| "http://env.proxy:1".to_owned());
        let rules = ProxyRules::from("http://set.proxy:3128", "*", env).expect("rules");
        assert_eq!(rules.proxy_for(&url("https://api.example.com")), None);
        let rules = ProxyRules::from("http://set.proxy:3128", "", env).expect("rules");
        assert_eq!(
            rules
                .proxy_for(&url("https://api.example.com"))
                .map(Url::as_str),
            Some("http://set.proxy:3128/")
        );
        let none = ProxyRules::from("", "", |_| None).expect("rules");
        assert!(none.is_empty());
        assert_eq!(none.proxy_for(&url("https://api.example.com")), None);
    }

    #[test]
    fn a_bad_proxy_is_refused_without_its_password() {
        let error =
            ProxyRules::from("ftp://user:s3cret@proxy:21", "", |_| None).expect_err("not http");
        let text = error.to_string();
        assert!(text.starts_with("http.proxy:"), "{text}");
        assert!(!text.contains("s3cret"), "{text}");
    }
}
