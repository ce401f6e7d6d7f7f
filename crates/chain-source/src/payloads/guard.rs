//! The outbound address guard: executor URLs come from chain data, so without it any participant
//! could point the validator at its own network (cloud metadata, admin ports, the chain node).
//!
//! [`Guard::check_url`] refuses schemes other than `http` and `https` and literal IP hosts outside
//! the public unicast space; [`GuardedResolver`] resolves host names for the HTTP client, for
//! both schemes, and refuses an answer with any such address, so the address checked is the
//! address connected to and a rebinding DNS server gains nothing. The client follows no
//! redirects. Hosts and networks on the operator's allow-list pass unchecked.

use std::{
    future::Future,
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    pin::Pin,
    sync::Arc,
};

use crate::{Error, Result};

/// One entry of the operator's allow-list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AllowEntry {
    /// A network: addresses whose first `prefix` bits equal `network`'s.
    Network {
        /// The network address.
        network: IpAddr,
        /// The prefix length.
        prefix: u8,
    },
    /// A host name, lowercase, without a trailing dot.
    Host(String),
}

impl AllowEntry {
    /// Parses `10.0.0.0/8`, `fd00::/8`, a bare address (a /32 or /128) or a host name.
    pub fn parse(entry: &str) -> Result<Self> {
        let bad = || Error::InvalidConfig {
            key: format!("payloads.allow[{entry:?}]"),
            allowed: "a CIDR (10.0.0.0/8), an IP address or a host name",
        };
        let entry = entry.trim();
        if let Some((network, prefix)) = entry.split_once('/') {
            let network: IpAddr = network.parse().map_err(|_| bad())?;
            let prefix: u8 = prefix.parse().map_err(|_| bad())?;
            let max = if network.is_ipv4() { 32 } else { 128 };
            if prefix > max {
                return Err(bad());
            }
            return Ok(Self::Network { network, prefix });
        }
        if let Ok(network) = entry.trim_start_matches('[').trim_end_matches(']').parse::<IpAddr>() {
            let prefix = if network.is_ipv4() { 32 } else { 128 };
            return Ok(Self::Network { network, prefix });
        }
        let host = normalise_host(entry);
        let valid = !host.is_empty()
            && host.split('.').all(|label| {
                !label.is_empty()
                    && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            });
        if !valid {
            return Err(bad());
        }
        Ok(Self::Host(host))
    }

    fn admits_ip(&self, ip: IpAddr) -> bool {
        let Self::Network { network, prefix } = self else { return false };
        let ip = canonical(ip);
        match (canonical(*network), ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(*prefix)).unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(*prefix)).unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

fn normalise_host(host: &str) -> String {
    host.trim().trim_end_matches('.').to_ascii_lowercase()
}

/// An IPv4-mapped IPv6 address as the IPv4 address it stands for.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        IpAddr::V4(_) => ip,
    }
}

/// Whether `ip` is a public unicast address a remote executor may have.
///
/// Refused IPv4: `0.0.0.0/8`, `10/8`, `100.64/10`, `127/8`, `169.254/16`, `172.16/12`,
/// `192.0.0.0/24`, `192.0.2.0/24`, `192.88.99.0/24`, `192.168/16`, `198.18/15`,
/// `198.51.100/24`, `203.0.113/24`, `224/4` and `240/4` (with `255.255.255.255`). Refused IPv6:
/// `::`, `::1`, `100::/64`, `2001:db8::/32`, Teredo `2001::/32`, `64:ff9b:1::/48`, `fc00::/7`,
/// `fe80::/10`, `fec0::/10`, `ff00::/8`; and the IPv4-mapped (`::ffff:a.b.c.d`),
/// IPv4-compatible (`::a.b.c.d`), NAT64 (`64:ff9b::/96`) and 6to4 (`2002::/16`) forms of any
/// refused IPv4 address.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => is_public_v6(v6),
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    let refused = a == 0
        || a == 10
        || a == 127
        || a >= 224
        || (a == 100 && (64..128).contains(&b))
        || (a == 169 && b == 254)
        || (a == 172 && (16..32).contains(&b))
        || (a == 192 && b == 168)
        || (a == 192 && b == 0 && (c == 0 || c == 2))
        || (a == 192 && b == 88 && c == 99)
        || (a == 198 && (b == 18 || b == 19))
        || (a == 198 && b == 51 && c == 100)
        || (a == 203 && b == 0 && c == 113);
    !refused
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    let bits = u128::from(ip);
    let segments = ip.segments();
    let embedded = |value: u128| Ipv4Addr::from((value & 0xffff_ffff) as u32);
    if let Some(v4) = ip.to_ipv4_mapped() {
        return is_public_v4(v4);
    }
    // `::/96` holds `::`, `::1` and the deprecated IPv4-compatible addresses.
    if bits >> 32 == 0 {
        return bits > 1 && is_public_v4(embedded(bits));
    }
    if bits >> 32 == 0x0064_ff9b_u128 << 64 {
        return is_public_v4(embedded(bits));
    }
    if segments[0] == 0x2002 {
        let v4 = Ipv4Addr::from(((bits >> 80) & 0xffff_ffff) as u32);
        return is_public_v4(v4);
    }
    let refused = (segments[0] == 0x0100 && segments[1..4] == [0, 0, 0])
        || (segments[0] == 0x2001 && segments[1] == 0x0db8)
        || (segments[0] == 0x2001 && segments[1] == 0)
        || (segments[0] == 0x0064 && segments[1] == 0xff9b && segments[2] == 1)
        || (segments[0] & 0xfe00) == 0xfc00
        || (segments[0] & 0xffc0) == 0xfe80
        || (segments[0] & 0xffc0) == 0xfec0
        || (segments[0] & 0xff00) == 0xff00;
    !refused
}

/// The outbound address policy with the operator's allow-list.
#[derive(Debug, Clone, Default)]
pub struct Guard {
    allow: Vec<AllowEntry>,
}

impl Guard {
    /// A guard admitting the public address space and the listed entries
    /// (see [`AllowEntry::parse`]).
    pub fn new<S: AsRef<str>>(allow: &[S]) -> Result<Self> {
        let allow =
            allow.iter().map(|entry| AllowEntry::parse(entry.as_ref())).collect::<Result<_>>()?;
        Ok(Self { allow })
    }

    /// Whether the host name is on the allow-list.
    pub fn admits_host(&self, host: &str) -> bool {
        let host = normalise_host(host);
        self.allow
            .iter()
            .any(|entry| matches!(entry, AllowEntry::Host(allowed) if *allowed == host))
    }

    /// Whether a connection to `ip` may be made.
    pub fn admits_ip(&self, ip: IpAddr) -> bool {
        is_public(ip) || self.allow.iter().any(|entry| entry.admits_ip(ip))
    }

    /// Checks what can be checked before connecting: the scheme, and the address of a literal-IP
    /// host (which the client connects to without resolving). Host names are checked by
    /// [`GuardedResolver`] on the addresses they resolve to.
    pub fn check_url(&self, url: &reqwest::Url) -> Result<()> {
        match url.scheme() {
            "http" | "https" => {}
            scheme => return Err(Error::Refused(format!("{url}: scheme {scheme} is not allowed"))),
        }
        let Some(host) = url.host_str() else {
            return Err(Error::Refused(format!("{url}: no host")));
        };
        // The URL parser has already turned the numeric IPv4 spellings (`0x7f.1`, `2130706433`)
        // into dotted quads; IPv6 literals keep their brackets.
        let Ok(ip) = host.trim_start_matches('[').trim_end_matches(']').parse::<IpAddr>() else {
            return Ok(());
        };
        if self.admits_ip(ip) {
            Ok(())
        } else {
            Err(Error::Refused(format!("{url}: {ip} is not a public address")))
        }
    }

    /// Checks a resolver's answer for `host`: every address must be admitted, unless the host
    /// name itself is allowed. An empty answer is refused.
    pub fn check_resolved(&self, host: &str, addrs: &[SocketAddr]) -> Result<()> {
        if self.admits_host(host) {
            return Ok(());
        }
        if addrs.is_empty() {
            return Err(Error::Refused(format!("{host}: resolves to no address")));
        }
        match addrs.iter().find(|addr| !self.admits_ip(addr.ip())) {
            Some(addr) => Err(Error::Refused(format!(
                "{host}: resolves to {}, not a public address",
                addr.ip()
            ))),
            None => Ok(()),
        }
    }
}

/// A boxed future of a DNS lookup.
pub type LookupFuture = Pin<Box<dyn Future<Output = io::Result<Vec<SocketAddr>>> + Send>>;

/// A DNS lookup: a host name to its addresses (the port is replaced by the URL's).
pub type Lookup = Arc<dyn Fn(String) -> LookupFuture + Send + Sync>;

/// The HTTP client's resolver: looks a name up, then refuses the answer unless the [`Guard`]
/// admits it.
#[derive(Clone)]
pub struct GuardedResolver {
    guard: Arc<Guard>,
    lookup: Lookup,
}

impl GuardedResolver {
    /// A resolver over the system's resolver (`getaddrinfo` on a blocking thread).
    pub fn system(guard: Arc<Guard>) -> Self {
        let lookup: Lookup = Arc::new(|host: String| {
            Box::pin(async move { Ok(tokio::net::lookup_host((host, 0)).await?.collect()) })
        });
        Self { guard, lookup }
    }

    /// A resolver over `lookup`, for tests.
    pub fn with_lookup(guard: Arc<Guard>, lookup: Lookup) -> Self {
        Self { guard, lookup }
    }

    /// Resolves `host` and checks the answer.
    pub async fn resolve_checked(&self, host: &str) -> Result<Vec<SocketAddr>> {
        let addrs = (self.lookup)(host.to_owned())
            .await
            .map_err(|err| Error::Transport(format!("cannot resolve {host}: {err}")))?;
        self.guard.check_resolved(host, &addrs)?;
        Ok(addrs)
    }
}

impl std::fmt::Debug for GuardedResolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GuardedResolver").field("guard", &self.guard).finish_non_exhaustive()
    }
}

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let resolver = self.clone();
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let addrs = resolver.resolve_checked(&host).await?;
            let addrs: reqwest::dns::Addrs = Box::new(addrs.into_iter());
            Ok(addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn every_internal_range_is_refused_in_every_form() {
        let refused = [
            "0.0.0.0",
            "0.1.2.3",
            "10.0.0.1",
            "10.255.255.255",
            "100.64.0.1",
            "100.127.255.254",
            "127.0.0.1",
            "127.255.0.1",
            "169.254.169.254",
            "169.254.0.1",
            "172.16.0.1",
            "172.31.255.255",
            "192.0.0.8",
            "192.0.2.1",
            "192.88.99.1",
            "192.168.1.1",
            "198.18.0.1",
            "198.19.255.255",
            "198.51.100.7",
            "203.0.113.9",
            "224.0.0.1",
            "239.255.255.250",
            "240.0.0.1",
            "255.255.255.255",
            "::",
            "::1",
            "::ffff:127.0.0.1",
            "::ffff:10.1.2.3",
            "::ffff:169.254.169.254",
            "::ffff:0.0.0.0",
            "::127.0.0.1",
            "::10.0.0.1",
            "64:ff9b::7f00:1",
            "64:ff9b::a9fe:a9fe",
            "64:ff9b:1::1",
            "2002:7f00:1::1",
            "2002:c0a8:101::",
            "100::1",
            "2001:db8::1",
            "2001::1",
            "fc00::1",
            "fd12:3456::1",
            "fe80::1",
            "febf::1",
            "fec0::1",
            "ff02::1",
            "ff0e::1",
        ];
        for text in refused {
            assert!(!is_public(ip(text)), "{text} must be refused");
        }
    }

    #[test]
    fn public_addresses_pass() {
        let public = [
            "1.1.1.1",
            "8.8.8.8",
            "100.63.255.255",
            "100.128.0.1",
            "172.15.255.255",
            "172.32.0.1",
            "169.253.1.1",
            "192.167.1.1",
            "198.17.0.1",
            "198.20.0.1",
            "223.255.255.255",
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
            "2002:808:808::1",
            "2606:4700:4700::1111",
            "2a00:1450:4001::200e",
        ];
        for text in public {
            assert!(is_public(ip(text)), "{text} must pass");
        }
    }

    #[test]
    fn urls_are_checked_for_scheme_and_literal_addresses() {
        let guard = Guard::default();
        let check = |url: &str| guard.check_url(&reqwest::Url::parse(url).unwrap());
        for url in [
            "http://127.0.0.1:8080/",
            "http://[::1]/",
            "http://[::ffff:127.0.0.1]/",
            "http://[::ffff:7f00:1]/",
            "http://169.254.169.254/latest/meta-data",
            "http://10.0.0.5/",
            "http://0x7f.1/",
            "http://2130706433/",
            "http://0/",
            "https://127.0.0.1/",
            "https://[::ffff:10.0.0.1]:8443/",
            "ftp://8.8.8.8/",
            "file:///etc/passwd",
        ] {
            assert!(matches!(check(url), Err(Error::Refused(_))), "{url} must be refused");
        }
        for url in [
            "http://8.8.8.8:9000/",
            "http://[2606:4700::1111]/",
            "http://executor.example/",
            "https://8.8.8.8/",
            "https://executor.example:8443/api/",
        ] {
            assert!(check(url).is_ok(), "{url} must pass");
        }
    }

    #[test]
    fn the_allow_list_admits_listed_networks_and_hosts_only() {
        let guard =
            Guard::new(&["127.0.0.0/8", "fd00::/8", "10.1.2.3", "Executor.Internal."]).unwrap();
        for text in ["127.0.0.1", "::ffff:127.0.0.2", "fd00::5", "10.1.2.3", "8.8.8.8"] {
            assert!(guard.admits_ip(ip(text)), "{text}");
        }
        for text in ["10.1.2.4", "192.168.0.1", "fe80::1", "::1"] {
            assert!(!guard.admits_ip(ip(text)), "{text}");
        }
        assert!(guard.admits_host("executor.internal"));
        assert!(!guard.admits_host("other.internal"));
        let url = reqwest::Url::parse("http://127.0.0.1:1/").unwrap();
        assert!(guard.check_url(&url).is_ok());
        for bad in ["10.0.0.0/33", "::/129", "not a host!", "", "1.2.3.4/x"] {
            assert!(matches!(Guard::new(&[bad]), Err(Error::InvalidConfig { .. })), "{bad}");
        }
    }

    fn resolver(guard: Guard, answer: &'static [&'static str]) -> GuardedResolver {
        let lookup: Lookup = Arc::new(move |_host| {
            let addrs = answer.iter().map(|text| SocketAddr::new(ip(text), 0)).collect();
            Box::pin(async move { Ok(addrs) })
        });
        GuardedResolver::with_lookup(Arc::new(guard), lookup)
    }

    #[tokio::test]
    async fn resolved_addresses_are_checked_so_rebinding_cannot_reach_inside() {
        let table: [(&[&str], bool); 7] = [
            (&["93.184.216.34"], true),
            (&["93.184.216.34", "2606:2800:220:1::1"], true),
            (&["10.0.0.7"], false),
            (&["93.184.216.34", "127.0.0.1"], false),
            (&["::ffff:192.168.0.1"], false),
            (&["169.254.169.254"], false),
            (&[], false),
        ];
        for (answer, admitted) in table {
            let result =
                resolver(Guard::default(), answer).resolve_checked("executor.example").await;
            assert_eq!(result.is_ok(), admitted, "{answer:?}: {result:?}");
        }
        let allowed = Guard::new(&["localhost"]).unwrap();
        assert!(resolver(allowed, &["127.0.0.1"]).resolve_checked("LOCALHOST").await.is_ok());
        let failing: Lookup = Arc::new(|_| {
            Box::pin(async { Err(io::Error::new(io::ErrorKind::NotFound, "nxdomain")) })
        });
        let result = GuardedResolver::with_lookup(Arc::new(Guard::default()), failing)
            .resolve_checked("gone.example")
            .await;
        assert!(matches!(result, Err(Error::Transport(_))), "{result:?}");
    }

    #[tokio::test]
    async fn the_reqwest_resolver_refuses_a_private_answer() {
        use reqwest::dns::Resolve as _;
        let resolver = resolver(Guard::default(), &["192.168.1.20"]);
        let name: reqwest::dns::Name = "rebind.example".parse().unwrap();
        let err = resolver.resolve(name).await.err().unwrap();
        assert!(err.to_string().contains("not a public address"), "{err}");
    }
}
