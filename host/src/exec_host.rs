//! The execution-host rule: which hosts a spawn's server may be at.
//!
//! Two hosts come from outside the host and would be used by a spawn: the
//! host a plugin's `status` reports for a running job (`exec_host`), and the
//! host a job's callback names (or, without one, its peer address). Either
//! passes [`Policy::check`] before the spawn uses it; a refusal is shown on
//! the spawn and written to the audit log (capability `execution-host`).
//!
//! The rule, in order:
//!
//! 1. It is a host name or an IP address. A name the resolver would read as
//!    an IPv4 address (`127.1`, `0x7f000001`, `2130706433`, `0`: the
//!    `inet_aton` forms) is that address; an IPv4 address inside IPv6
//!    (`::ffff:a.b.c.d`, `::a.b.c.d`, `64:ff9b::a.b.c.d`) counts as the IPv4
//!    address.
//! 2. Never allowed, whatever the config says ([`Class`]): cloud metadata
//!    (169.254.169.254, fd00:ec2::254, 100.100.100.200, and the names
//!    `metadata`, `metadata.google.internal`, `metadata.goog`,
//!    `instance-data`, `instance-data.ec2.internal`), link-local
//!    (169.254.0.0/16, fe80::/10), unspecified (0.0.0.0/8, ::), multicast
//!    (224.0.0.0/4, ff00::/8), broadcast and reserved (240.0.0.0/4, which
//!    holds 255.255.255.255).
//! 3. Loopback (127.0.0.0/8, ::1, `localhost`, `*.localhost`,
//!    `localhost.localdomain`, `ip6-localhost`, `ip6-loopback`) only with
//!    `lifecycle.allow_loopback` (default: true only for a local instance,
//!    one without `submit_host` and `tunnel`: there the job runs on this
//!    host).
//! 4. When `lifecycle.execution_hosts` is not empty, the host matches one of
//!    its [`Rule`]s (exact names, `.suffix` domains, CIDR networks). For a
//!    callback, the instance's `lifecycle.callback_hosts` rules count too.
//!
//! Names are compared, never resolved: a name whose DNS record points at a
//! forbidden address passes step 2. An operator who cannot trust the names
//! a plugin reports lists the cluster's domains or networks in
//! `execution_hosts`.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// What the host never (or only with `allow_loopback`) lets a spawn use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    Metadata,
    LinkLocal,
    Unspecified,
    Multicast,
    Broadcast,
    Loopback,
    /// Anything else (allowed, subject to the instance's rules).
    Other,
}

impl Class {
    /// How a message names it.
    pub fn describe(self) -> &'static str {
        match self {
            Class::Metadata => "a cloud metadata service address",
            Class::LinkLocal => "a link-local address",
            Class::Unspecified => "an unspecified address",
            Class::Multicast => "a multicast address",
            Class::Broadcast => "a broadcast or reserved address",
            Class::Loopback => "a loopback address",
            Class::Other => "an ordinary address",
        }
    }

    /// Never allowed, whatever the config says.
    pub fn forbidden(self) -> bool {
        !matches!(self, Class::Loopback | Class::Other)
    }
}

/// IPv4 blocks, the more specific first.
const V4: &[(Ipv4Addr, u8, Class)] = &[
    (Ipv4Addr::new(169, 254, 169, 254), 32, Class::Metadata),
    // Alibaba Cloud's metadata service.
    (Ipv4Addr::new(100, 100, 100, 200), 32, Class::Metadata),
    (Ipv4Addr::new(0, 0, 0, 0), 8, Class::Unspecified),
    (Ipv4Addr::new(127, 0, 0, 0), 8, Class::Loopback),
    (Ipv4Addr::new(169, 254, 0, 0), 16, Class::LinkLocal),
    (Ipv4Addr::new(224, 0, 0, 0), 4, Class::Multicast),
    (Ipv4Addr::new(240, 0, 0, 0), 4, Class::Broadcast),
];

/// IPv6 blocks, the more specific first.
const V6: &[(Ipv6Addr, u8, Class)] = &[
    (
        Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254),
        128,
        Class::Metadata,
    ),
    (Ipv6Addr::UNSPECIFIED, 128, Class::Unspecified),
    (Ipv6Addr::LOCALHOST, 128, Class::Loopback),
    (
        Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0),
        10,
        Class::LinkLocal,
    ),
    (
        Ipv6Addr::new(0xff00, 0, 0, 0, 0, 0, 0, 0),
        8,
        Class::Multicast,
    ),
];

const METADATA_NAMES: &[&str] = &[
    "metadata",
    "metadata.google.internal",
    "metadata.goog",
    "instance-data",
    "instance-data.ec2.internal",
];

const LOOPBACK_NAMES: &[&str] = &[
    "localhost",
    "localhost.localdomain",
    "ip6-localhost",
    "ip6-loopback",
];

/// A host as the rule sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Ip(IpAddr),
    /// Lowercase, without a trailing dot.
    Name(String),
}

/// Reads a host: an IP address (IPv4-mapped IPv6 becomes IPv4; brackets
/// are dropped), a numeric name as the resolver would read it, or a DNS
/// name. `None`: neither.
pub fn target(host: &str) -> Option<Target> {
    let h = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    if let Ok(ip) = h.parse::<IpAddr>() {
        return Some(Target::Ip(canonical(ip)));
    }
    let h = h.to_ascii_lowercase();
    let h = h.strip_suffix('.').unwrap_or(&h);
    if !h.is_empty() && h.split('.').all(numeric_label) {
        return inet_aton(h).map(|a| Target::Ip(IpAddr::V4(a)));
    }
    crate::model::valid_host(h).then(|| Target::Name(h.to_string()))
}

fn numeric_label(l: &str) -> bool {
    match l.strip_prefix("0x") {
        Some(hex) => hex.bytes().all(|b| b.is_ascii_hexdigit()),
        None => !l.is_empty() && l.bytes().all(|b| b.is_ascii_digit()),
    }
}

/// `inet_aton`: 1 to 4 parts, each decimal, octal (leading 0) or hex (0x);
/// the last fills the remaining bytes.
fn inet_aton(s: &str) -> Option<Ipv4Addr> {
    let parts: Vec<&str> = s.split('.').collect();
    if parts.is_empty() || parts.len() > 4 {
        return None;
    }
    let mut nums = Vec::with_capacity(4);
    for p in &parts {
        let v = if let Some(hex) = p.strip_prefix("0x") {
            if hex.is_empty() {
                0
            } else {
                u64::from_str_radix(hex, 16).ok()?
            }
        } else if p.len() > 1 && p.starts_with('0') {
            u64::from_str_radix(&p[1..], 8).ok()?
        } else {
            p.parse::<u64>().ok()?
        };
        nums.push(v);
    }
    let (last, head) = nums.split_last()?;
    if head.iter().any(|&n| n > 255) || *last >= 1u64 << (8 * (4 - head.len())) {
        return None;
    }
    let mut v: u32 = 0;
    for (i, &n) in head.iter().enumerate() {
        v |= (n as u32) << (24 - 8 * i);
    }
    Some(Ipv4Addr::from(v | *last as u32))
}

/// IPv4-mapped IPv6 as IPv4; everything else as it is.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => ip,
        },
        v4 => v4,
    }
}

fn in_v4(a: Ipv4Addr, net: Ipv4Addr, prefix: u8) -> bool {
    let mask = if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - prefix as u32)
    };
    u32::from(a) & mask == u32::from(net) & mask
}

fn in_v6(a: Ipv6Addr, net: Ipv6Addr, prefix: u8) -> bool {
    let mask = if prefix == 0 {
        0
    } else {
        u128::MAX << (128 - prefix as u32)
    };
    u128::from(a) & mask == u128::from(net) & mask
}

fn in_net(a: IpAddr, net: IpAddr, prefix: u8) -> bool {
    match (canonical(a), net) {
        (IpAddr::V4(a), IpAddr::V4(n)) => in_v4(a, n, prefix),
        (IpAddr::V6(a), IpAddr::V6(n)) => in_v6(a, n, prefix),
        _ => false,
    }
}

/// The class of an address.
pub fn classify_ip(ip: IpAddr) -> Class {
    match canonical(ip) {
        IpAddr::V4(a) => V4
            .iter()
            .find(|(n, p, _)| in_v4(a, *n, *p))
            .map_or(Class::Other, |(_, _, c)| *c),
        IpAddr::V6(a) => {
            if let Some((_, _, c)) = V6.iter().find(|(n, p, _)| in_v6(a, *n, *p)) {
                return *c;
            }
            // IPv4-compatible (::a.b.c.d) and NAT64 (64:ff9b::a.b.c.d)
            // addresses reach the IPv4 address inside.
            let nat64 = Ipv6Addr::new(0x64, 0xff9b, 0, 0, 0, 0, 0, 0);
            if in_v6(a, Ipv6Addr::UNSPECIFIED, 96) || in_v6(a, nat64, 96) {
                let v4 = Ipv4Addr::from((u128::from(a) & 0xffff_ffff) as u32);
                return classify_ip(IpAddr::V4(v4));
            }
            Class::Other
        }
    }
}

/// The class of a (lowercase, dot-less) name.
pub fn classify_name(name: &str) -> Class {
    if METADATA_NAMES.contains(&name) {
        Class::Metadata
    } else if LOOPBACK_NAMES.contains(&name) || name.ends_with(".localhost") {
        Class::Loopback
    } else {
        Class::Other
    }
}

/// The class of a host (`None`: not a host name or address).
pub fn classify(host: &str) -> Option<Class> {
    Some(match target(host)? {
        Target::Ip(ip) => classify_ip(ip),
        Target::Name(n) => classify_name(&n),
    })
}

/// One entry of `lifecycle.execution_hosts` (or `callback_hosts`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rule {
    /// An exact host name (lowercase), e.g. `login1`.
    Name(String),
    /// A domain: any name ending in it (`.cluster.example.org` matches
    /// `node7.cluster.example.org`, not `cluster.example.org`). Lowercase,
    /// with its leading dot.
    Suffix(String),
    /// A network (`10.1.0.0/16`); an address alone is a /32 or /128.
    Net(IpAddr, u8),
}

impl Rule {
    /// Reads a rule: `name`, `.domain`, `addr` or `addr/prefix`.
    pub fn parse(s: &str) -> Result<Rule, String> {
        if let Some((addr, prefix)) = s.split_once('/') {
            let ip: IpAddr = addr
                .parse()
                .map_err(|_| format!("{s:?}: {addr:?} is not an IP address"))?;
            let max = if ip.is_ipv4() { 32 } else { 128 };
            let p: u8 = prefix
                .parse()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("{s:?}: the prefix length must be 0-{max}"))?;
            return Ok(Rule::net(ip, p));
        }
        if let Some(domain) = s.strip_prefix('.') {
            if !crate::model::valid_host(domain) || domain.parse::<IpAddr>().is_ok() {
                return Err(format!(
                    "{s:?} is not a domain suffix like \".cluster.example.org\""
                ));
            }
            return Ok(Rule::Suffix(format!(".{}", domain.to_ascii_lowercase())));
        }
        match target(s) {
            Some(Target::Ip(ip)) => Ok(Rule::net(ip, if ip.is_ipv4() { 32 } else { 128 })),
            Some(Target::Name(n)) => Ok(Rule::Name(n)),
            None => Err(format!(
                "{s:?} is not a host name, a suffix like \".cluster.example.org\", an IP address or a network like \"10.1.0.0/16\""
            )),
        }
    }

    /// A network with its host bits cleared; an IPv4-mapped IPv6 network
    /// (prefix 96 or more) as IPv4.
    fn net(ip: IpAddr, p: u8) -> Rule {
        match ip {
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) if p >= 96 => Rule::net(IpAddr::V4(v4), p - 96),
                _ => {
                    let mask = if p == 0 {
                        0
                    } else {
                        u128::MAX << (128 - p as u32)
                    };
                    Rule::Net(IpAddr::V6(Ipv6Addr::from(u128::from(v6) & mask)), p)
                }
            },
            IpAddr::V4(v4) => {
                let mask = if p == 0 {
                    0
                } else {
                    u32::MAX << (32 - p as u32)
                };
                Rule::Net(IpAddr::V4(Ipv4Addr::from(u32::from(v4) & mask)), p)
            }
        }
    }

    pub fn matches(&self, t: &Target) -> bool {
        match (self, t) {
            (Rule::Name(n), Target::Name(h)) => n == h,
            (Rule::Suffix(s), Target::Name(h)) => h.len() > s.len() && h.ends_with(s.as_str()),
            (Rule::Net(net, p), Target::Ip(ip)) => in_net(*ip, *net, *p),
            _ => false,
        }
    }

    /// The class every host this rule matches is in, when there is one (a
    /// rule naming only forbidden or loopback hosts is a config error).
    pub fn class(&self) -> Class {
        match self {
            Rule::Name(n) => classify_name(n),
            Rule::Suffix(s) if s == ".localhost" || s.ends_with(".localhost") => Class::Loopback,
            Rule::Suffix(_) => Class::Other,
            Rule::Net(ip, p) => {
                let within = |n: IpAddr, bp: u8| *p >= bp && in_net(*ip, n, bp);
                V4.iter()
                    .map(|(n, bp, c)| (IpAddr::V4(*n), *bp, *c))
                    .chain(V6.iter().map(|(n, bp, c)| (IpAddr::V6(*n), *bp, *c)))
                    .find(|(n, bp, _)| within(*n, *bp))
                    .map_or(Class::Other, |(_, _, c)| c)
            }
        }
    }

    /// Checks a configured rule: it must not name only hosts the rule never
    /// allows, nor only loopback hosts without `allow_loopback`.
    pub fn check_config(&self, allow_loopback: bool) -> Result<(), String> {
        match self.class() {
            Class::Other => Ok(()),
            Class::Loopback if allow_loopback => Ok(()),
            Class::Loopback => Err(format!(
                "{self} is loopback, which this instance does not allow; set lifecycle.allow_loopback = true (the default only for an instance without submit_host and tunnel)"
            )),
            c => Err(format!(
                "{self} is {}, which is never allowed as an execution host",
                c.describe()
            )),
        }
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Rule::Name(n) | Rule::Suffix(n) => f.write_str(n),
            Rule::Net(ip, p) if *p == if ip.is_ipv4() { 32 } else { 128 } => write!(f, "{ip}"),
            Rule::Net(ip, p) => write!(f, "{ip}/{p}"),
        }
    }
}

/// An instance's execution-host rule.
#[derive(Debug, Clone, Copy)]
pub struct Policy<'a> {
    pub instance: &'a str,
    /// `lifecycle.execution_hosts`.
    pub rules: &'a [Rule],
    /// `lifecycle.allow_loopback`.
    pub allow_loopback: bool,
}

impl<'a> Policy<'a> {
    pub fn of(instance: &'a str, lc: &'a crate::config::Lifecycle) -> Policy<'a> {
        Policy {
            instance,
            rules: &lc.execution_hosts,
            allow_loopback: lc.allow_loopback,
        }
    }

    /// `Ok` when a spawn may use `host`; else why not, for a person (the
    /// host quoted and sanitized, the config key named).
    pub fn check(&self, host: &str) -> Result<(), String> {
        self.check_with(host, &[])
    }

    /// The same, where `also` (the instance's `callback_hosts`) counts as
    /// allowed names besides `execution_hosts`.
    pub fn check_with(&self, host: &str, also: &[Rule]) -> Result<(), String> {
        let shown = crate::sanitize::text(host, 256);
        let Some(t) = target(host) else {
            return Err(format!("{shown:?} is not a host name or an IP address"));
        };
        let class = match &t {
            Target::Ip(ip) => classify_ip(*ip),
            Target::Name(n) => classify_name(n),
        };
        if class.forbidden() {
            return Err(format!(
                "{shown:?} is {}; the host never uses one for a spawn",
                class.describe()
            ));
        }
        if class == Class::Loopback && !self.allow_loopback {
            return Err(format!(
                "{shown:?} is {}, which instance `{}` does not allow (lifecycle.allow_loopback = false; the default is true only for an instance without submit_host and tunnel)",
                class.describe(),
                self.instance
            ));
        }
        if self.rules.is_empty() || self.rules.iter().chain(also).any(|r| r.matches(&t)) {
            return Ok(());
        }
        let mut listed: Vec<String> = self.rules.iter().take(8).map(|r| r.to_string()).collect();
        if self.rules.len() > 8 {
            listed.push("…".into());
        }
        Err(format!(
            "{shown:?} matches no lifecycle.execution_hosts rule of instance `{}` ({})",
            self.instance,
            listed.join(", ")
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(rules: &[&str], allow_loopback: bool) -> (Vec<Rule>, bool) {
        (
            rules.iter().map(|r| Rule::parse(r).unwrap()).collect(),
            allow_loopback,
        )
    }

    fn check(p: &(Vec<Rule>, bool), host: &str) -> Result<(), String> {
        Policy {
            instance: "x",
            rules: &p.0,
            allow_loopback: p.1,
        }
        .check(host)
    }

    #[test]
    fn forbidden_classes_are_refused_even_with_loopback_and_rules() {
        let open = policy(&["0.0.0.0/0", "::/0", ".internal", "metadata"], true);
        for h in [
            "169.254.169.254",
            "169.254.1.1",
            "fe80::1",
            "FE80::abcd",
            "fd00:ec2::254",
            "100.100.100.200",
            "0.0.0.0",
            "0.1.2.3",
            "::",
            "224.0.0.1",
            "239.255.255.250",
            "ff02::1",
            "255.255.255.255",
            "metadata",
            "METADATA.google.internal",
            "metadata.goog",
            "instance-data",
            "instance-data.ec2.internal",
            // IPv4 in disguise.
            "::ffff:169.254.169.254",
            "::169.254.169.254",
            "64:ff9b::a9fe:a9fe",
            "2852039166",
            "0xa9fea9fe",
            "0251.0376.0251.0376",
            "169.254.43518",
            "0",
            "[::]",
        ] {
            let e = check(&open, h).unwrap_err();
            assert!(e.contains("never uses one"), "{h}: {e}");
        }
    }

    #[test]
    fn loopback_only_when_allowed() {
        let local = policy(&[], true);
        let remote = policy(&[], false);
        for h in [
            "127.0.0.1",
            "127.3.4.5",
            "::1",
            "[::1]",
            "::ffff:127.0.0.1",
            "localhost",
            "LocalHost.",
            "foo.localhost",
            "localhost.localdomain",
            "ip6-localhost",
            "127.1",
            "0x7f000001",
            "2130706433",
            "017700000001",
        ] {
            assert_eq!(check(&local, h), Ok(()), "{h}");
            let e = check(&remote, h).unwrap_err();
            assert!(
                e.contains("loopback")
                    && e.contains("lifecycle.allow_loopback")
                    && e.contains("`x`"),
                "{h}: {e}"
            );
        }
    }

    #[test]
    fn empty_rules_allow_any_ordinary_name_or_address() {
        let p = policy(&[], false);
        for h in [
            "node7",
            "node7.cluster.example.org",
            "10.1.2.3",
            "2001:db8::7",
            "c-1",
        ] {
            assert_eq!(check(&p, h), Ok(()), "{h}");
        }
        for h in [
            "",
            "bad host",
            "a_b",
            "999.1.1.1",
            "1.2.3.4.5",
            "node\n",
            "-x",
        ] {
            assert!(
                check(&p, h).unwrap_err().contains("not a host name"),
                "{h:?}"
            );
        }
    }

    #[test]
    fn rules_exact_suffix_and_networks() {
        let p = policy(
            &[
                "login1",
                ".Cluster.Example.org",
                "10.1.0.0/16",
                "2001:db8::/32",
                "192.0.2.7",
            ],
            false,
        );
        for h in [
            "login1",
            "LOGIN1",
            "node7.cluster.example.org",
            "a.b.cluster.example.org",
            "10.1.200.3",
            "::ffff:10.1.0.9",
            "2001:db8::7",
            "192.0.2.7",
        ] {
            assert_eq!(check(&p, h), Ok(()), "{h}");
        }
        for h in [
            "login2",
            "cluster.example.org",
            "evilcluster.example.org",
            "10.2.0.1",
            "2001:db9::1",
            "192.0.2.8",
        ] {
            let e = check(&p, h).unwrap_err();
            assert!(
                e.contains("lifecycle.execution_hosts") && e.contains("10.1.0.0/16"),
                "{h}: {e}"
            );
        }
        // callback_hosts count for a callback.
        let extra = [Rule::parse("gateway1").unwrap()];
        let pol = Policy {
            instance: "x",
            rules: &p.0,
            allow_loopback: false,
        };
        assert_eq!(pol.check_with("gateway1", &extra), Ok(()));
        assert!(pol.check("gateway1").is_err());
        // ...but never for a forbidden host.
        let meta = [Rule::Net("169.254.169.254".parse().unwrap(), 32)];
        assert!(pol.check_with("169.254.169.254", &meta).is_err());
    }

    #[test]
    fn rule_parsing_and_config_checks() {
        assert_eq!(
            Rule::parse("10.1.2.3/16").unwrap(),
            Rule::Net("10.1.0.0".parse().unwrap(), 16)
        );
        assert_eq!(
            Rule::parse("10.1.0.0/16").unwrap().to_string(),
            "10.1.0.0/16"
        );
        assert_eq!(Rule::parse("10.1.2.3").unwrap().to_string(), "10.1.2.3");
        assert_eq!(
            Rule::parse("::ffff:10.0.0.0/104").unwrap(),
            Rule::Net("10.0.0.0".parse().unwrap(), 8)
        );
        for bad in [
            "10.0.0.0/33",
            "x/8",
            "bad host",
            ".",
            "..x",
            ".1.2.3.4",
            "a/b/c",
            "",
        ] {
            assert!(Rule::parse(bad).is_err(), "{bad}");
        }
        let never = |r: &str| Rule::parse(r).unwrap().check_config(true).unwrap_err();
        for r in [
            "169.254.169.254",
            "169.254.0.0/16",
            "169.254.1.0/24",
            "fe80::/64",
            "0.0.0.0",
            "metadata.google.internal",
            "224.0.0.0/8",
        ] {
            assert!(never(r).contains("never allowed"), "{r}");
        }
        for r in ["127.0.0.1", "127.0.0.0/8", "::1", "localhost", ".localhost"] {
            let rule = Rule::parse(r).unwrap();
            assert_eq!(rule.check_config(true), Ok(()), "{r}");
            assert!(
                rule.check_config(false)
                    .unwrap_err()
                    .contains("allow_loopback"),
                "{r}"
            );
        }
        // A wide network that holds forbidden addresses is fine: they stay refused.
        assert_eq!(
            Rule::parse("0.0.0.0/0").unwrap().check_config(false),
            Ok(())
        );
        assert_eq!(
            Rule::parse("169.0.0.0/8").unwrap().check_config(false),
            Ok(())
        );
    }

    #[test]
    fn the_host_in_a_message_is_sanitized() {
        let p = policy(&[], false);
        let e = check(&p, "evil\n\u{202e}host").unwrap_err();
        assert!(crate::sanitize::is_clean(&e), "{e:?}");
        let e = check(&p, &"a".repeat(100_000)).unwrap_err();
        assert!(e.len() < 1024, "{}", e.len());
    }
}
