//! The outbound address policy: which IP addresses Latchkey may connect to when it talks
//! to a provider. Pure: the adapter resolves names and asks [`AddressRules::check`] about
//! every address before it connects to it.
//!
//! Only public addresses are allowed. Loopback is allowed only when the deployment says
//! so (tests, local development), and an operator may open other ranges for an internal
//! identity provider. Addresses that name no single host (unspecified, multicast,
//! broadcast) are never allowed.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

/// What kind of address an IP address is, as far as the outbound policy cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum AddressClass {
    /// A globally routable address: the only class allowed by default.
    Public,
    /// `0.0.0.0`, `::`: on most systems a connection to it reaches this machine.
    Unspecified,
    /// `0.0.0.0/8`.
    ThisNetwork,
    /// This machine (127.0.0.0/8, ::1).
    Loopback,
    /// RFC 1918, and the deprecated IPv6 site-local `fec0::/10`.
    Private,
    /// `100.64.0.0/10` (RFC 6598, carrier-grade NAT).
    SharedAddressSpace,
    /// Link-local (169.254.0.0/16, fe80::/10), where cloud metadata services live.
    LinkLocal,
    /// `fc00::/7`.
    UniqueLocal,
    /// Multicast.
    Multicast,
    /// The limited broadcast address.
    Broadcast,
    /// Ranges reserved for documentation.
    Documentation,
    /// Benchmarking, protocol assignments, future use, unallocated IPv6 outside `2000::/3`.
    Reserved,
}

impl AddressClass {
    /// The class's name, for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            AddressClass::Public => "public",
            AddressClass::Unspecified => "unspecified",
            AddressClass::ThisNetwork => "this-network",
            AddressClass::Loopback => "loopback",
            AddressClass::Private => "private",
            AddressClass::SharedAddressSpace => "shared (carrier-grade NAT)",
            AddressClass::LinkLocal => "link-local",
            AddressClass::UniqueLocal => "unique-local",
            AddressClass::Multicast => "multicast",
            AddressClass::Broadcast => "broadcast",
            AddressClass::Documentation => "documentation",
            AddressClass::Reserved => "reserved",
        }
    }
}

impl AddressClass {
    /// "a private address", "an unspecified address": for messages.
    pub fn an_address(self) -> String {
        let article = if self == AddressClass::Unspecified {
            "an"
        } else {
            "a"
        };
        format!("{article} {self} address")
    }
}

impl fmt::Display for AddressClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The class of `ip`. IPv6 forms that carry an IPv4 address (IPv4-mapped, IPv4-compatible,
/// NAT64 `64:ff9b::/96`, 6to4 `2002::/16`) are classified by that IPv4 address, since a
/// connection to them ends up there.
pub fn classify(ip: IpAddr) -> AddressClass {
    match ip {
        IpAddr::V4(v4) => classify_v4(v4),
        IpAddr::V6(v6) => classify_v6(v6),
    }
}

fn in_v4(ip: Ipv4Addr, net: [u8; 4], prefix: u32) -> bool {
    let mask = u32::MAX.checked_shl(32 - prefix).unwrap_or(0);
    u32::from(ip) & mask == u32::from(Ipv4Addr::from(net)) & mask
}

fn in_v6(ip: Ipv6Addr, net: u128, prefix: u32) -> bool {
    let mask = u128::MAX.checked_shl(128 - prefix).unwrap_or(0);
    u128::from(ip) & mask == net & mask
}

fn classify_v4(ip: Ipv4Addr) -> AddressClass {
    use AddressClass as C;
    let table: [([u8; 4], u32, AddressClass); 17] = [
        ([0, 0, 0, 0], 32, C::Unspecified),
        ([255, 255, 255, 255], 32, C::Broadcast),
        ([0, 0, 0, 0], 8, C::ThisNetwork),
        ([127, 0, 0, 0], 8, C::Loopback),
        ([10, 0, 0, 0], 8, C::Private),
        ([172, 16, 0, 0], 12, C::Private),
        ([192, 168, 0, 0], 16, C::Private),
        ([100, 64, 0, 0], 10, C::SharedAddressSpace),
        ([169, 254, 0, 0], 16, C::LinkLocal),
        ([224, 0, 0, 0], 4, C::Multicast),
        ([192, 0, 2, 0], 24, C::Documentation),
        ([198, 51, 100, 0], 24, C::Documentation),
        ([203, 0, 113, 0], 24, C::Documentation),
        ([192, 0, 0, 0], 24, C::Reserved),
        ([192, 88, 99, 0], 24, C::Reserved),
        ([198, 18, 0, 0], 15, C::Reserved),
        ([240, 0, 0, 0], 4, C::Reserved),
    ];
    table
        .iter()
        .find(|(net, prefix, _)| in_v4(ip, *net, *prefix))
        .map_or(C::Public, |(_, _, class)| *class)
}

/// The IPv4 address an IPv6 address stands for, when it has one.
fn embedded_v4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    let n = u128::from(ip);
    let low32 = Ipv4Addr::from((n & 0xffff_ffff) as u32);
    if in_v6(ip, 0xffff_0000_0000, 96) || in_v6(ip, 0, 96) {
        // IPv4-mapped (::ffff:a.b.c.d) and the deprecated IPv4-compatible (::a.b.c.d).
        return Some(low32);
    }
    if in_v6(ip, 0x0064_ff9b << 96, 96) {
        // NAT64 well-known prefix (RFC 6052).
        return Some(low32);
    }
    if in_v6(ip, 0x2002 << 112, 16) {
        // 6to4 (RFC 3056): the IPv4 address follows the prefix.
        return Some(Ipv4Addr::from(((n >> 80) & 0xffff_ffff) as u32));
    }
    None
}

fn classify_v6(ip: Ipv6Addr) -> AddressClass {
    use AddressClass as C;
    let n = u128::from(ip);
    if n == 0 {
        return C::Unspecified;
    }
    if n == 1 {
        return C::Loopback;
    }
    if let Some(v4) = embedded_v4(ip) {
        return classify_v4(v4);
    }
    let table: [(u128, u32, AddressClass); 10] = [
        (0xff00 << 112, 8, C::Multicast),
        (0xfe80 << 112, 10, C::LinkLocal),
        (0xfec0 << 112, 10, C::Private),
        (0xfc00 << 112, 7, C::UniqueLocal),
        // Local-use NAT64 (RFC 8215): translated into the operator's own network.
        (0x0064_ff9b_0001 << 80, 48, C::Private),
        (0x2001_0db8 << 96, 32, C::Documentation),
        (0x3fff << 112, 20, C::Documentation),
        (0x0100 << 112, 64, C::Reserved),
        // IETF protocol assignments (Teredo, benchmarking, ORCHID, ...).
        (0x2001 << 112, 23, C::Reserved),
        // Everything outside global unicast is unallocated or special.
        (0x2000 << 112, 3, C::Public),
    ];
    table
        .iter()
        .find(|(net, prefix, _)| in_v6(ip, *net, *prefix))
        .map_or(C::Reserved, |(_, _, class)| *class)
}

/// An IP network in CIDR notation (`10.0.0.0/8`, `fd00::/8`). A bare address is a
/// single-host network.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpNet {
    addr: IpAddr,
    prefix: u8,
}

impl IpNet {
    /// Whether `ip` lies in the range.
    pub fn contains(&self, ip: IpAddr) -> bool {
        // An IPv4 range also covers the IPv6 forms that carry its addresses.
        let ip = match ip {
            IpAddr::V6(v6) => embedded_v4(v6).map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => in_v4(ip, net.octets(), u32::from(self.prefix)),
            (IpAddr::V6(net), IpAddr::V6(ip)) => in_v6(ip, u128::from(net), u32::from(self.prefix)),
            _ => false,
        }
    }
}

impl FromStr for IpNet {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| format!("{s:?} is not an IP network such as 10.0.0.0/8 or fd00::/8"))?;
        let max: u8 = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("{s:?}: the prefix length must be 0 to {max}"))?,
        };
        let net = Self { addr, prefix };
        let network_addr = match addr {
            IpAddr::V4(a) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
                IpAddr::V4(Ipv4Addr::from(u32::from(a) & mask))
            }
            IpAddr::V6(a) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
                IpAddr::V6(Ipv6Addr::from(u128::from(a) & mask))
            }
        };
        if network_addr != addr {
            // 10.1.2.3/8 is most likely a typo; say what it would mean instead of guessing.
            return Err(format!(
                "{s:?} has bits set after the prefix; did you mean {network_addr}/{prefix}?"
            ));
        }
        Ok(net)
    }
}

impl fmt::Display for IpNet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// Parses a comma-separated list of networks (`LATCHKEY_ALLOW_PRIVATE_NETWORKS`).
pub fn parse_networks(list: &str) -> Result<Vec<IpNet>, String> {
    list.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(IpNet::from_str)
        .collect()
}

/// Which addresses may be connected to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AddressRules {
    /// Loopback addresses (tests, local development).
    pub allow_loopback: bool,
    /// Ranges opened by the operator, for an internal identity provider.
    pub allowed_networks: Vec<IpNet>,
}

impl AddressRules {
    /// `Ok` when `ip` may be connected to; else the class that forbids it.
    pub fn check(&self, ip: IpAddr) -> Result<(), AddressClass> {
        let class = classify(ip);
        match class {
            AddressClass::Public => Ok(()),
            // No single host answers there (or, for 0.0.0.0, this one does): never.
            AddressClass::Unspecified | AddressClass::Multicast | AddressClass::Broadcast => {
                Err(class)
            }
            AddressClass::Loopback if self.allow_loopback => Ok(()),
            _ if self.allowed_networks.iter().any(|n| n.contains(ip)) => Ok(()),
            _ => Err(class),
        }
    }
}

/// Whether a host name is this machine by definition (RFC 6761 §6.3): `localhost` and
/// any name under it, with or without the final dot.
pub fn is_localhost_name(name: &str) -> bool {
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    name == "localhost" || name.ends_with(".localhost")
}

#[cfg(test)]
mod tests {
    use super::*;
    use AddressClass as C;

    #[test]
    fn classification_of_many_addresses() {
        let table: &[(&str, AddressClass)] = &[
            // IPv4
            ("0.0.0.0", C::Unspecified),
            ("0.1.2.3", C::ThisNetwork),
            ("0.255.255.255", C::ThisNetwork),
            ("1.1.1.1", C::Public),
            ("8.8.8.8", C::Public),
            ("9.255.255.255", C::Public),
            ("10.0.0.0", C::Private),
            ("10.255.255.255", C::Private),
            ("11.0.0.0", C::Public),
            ("100.63.255.255", C::Public),
            ("100.64.0.0", C::SharedAddressSpace),
            ("100.127.255.255", C::SharedAddressSpace),
            ("100.128.0.0", C::Public),
            ("127.0.0.1", C::Loopback),
            ("127.255.255.254", C::Loopback),
            ("169.254.169.254", C::LinkLocal),
            ("169.253.255.255", C::Public),
            ("172.15.255.255", C::Public),
            ("172.16.0.0", C::Private),
            ("172.31.255.255", C::Private),
            ("172.32.0.0", C::Public),
            ("192.0.0.8", C::Reserved),
            ("192.0.2.1", C::Documentation),
            ("192.88.99.1", C::Reserved),
            ("192.167.255.255", C::Public),
            ("192.168.0.1", C::Private),
            ("192.168.255.255", C::Private),
            ("192.169.0.0", C::Public),
            ("198.18.0.1", C::Reserved),
            ("198.19.255.255", C::Reserved),
            ("198.20.0.0", C::Public),
            ("198.51.100.7", C::Documentation),
            ("203.0.113.9", C::Documentation),
            ("223.255.255.255", C::Public),
            ("224.0.0.1", C::Multicast),
            ("239.255.255.255", C::Multicast),
            ("240.0.0.1", C::Reserved),
            ("255.255.255.254", C::Reserved),
            ("255.255.255.255", C::Broadcast),
            // IPv6
            ("::", C::Unspecified),
            ("::1", C::Loopback),
            ("2606:4700:4700::1111", C::Public),
            ("2a00:1450:4001:82b::200e", C::Public),
            ("fe80::1", C::LinkLocal),
            ("febf:ffff::1", C::LinkLocal),
            ("fec0::1", C::Private),
            ("fc00::1", C::UniqueLocal),
            ("fd12:3456:789a::1", C::UniqueLocal),
            ("ff02::1", C::Multicast),
            ("ff0e::1", C::Multicast),
            ("2001:db8::1", C::Documentation),
            ("3fff::1", C::Documentation),
            ("100::1", C::Reserved),
            ("2001::1", C::Reserved),
            ("2001:2::1", C::Reserved),
            ("2001:200::1", C::Public),
            ("4000::1", C::Reserved),
            ("64:ff9b:1::1", C::Private),
            // IPv6 forms that carry an IPv4 address
            ("::ffff:127.0.0.1", C::Loopback),
            ("::ffff:10.1.2.3", C::Private),
            ("::ffff:169.254.169.254", C::LinkLocal),
            ("::ffff:0.0.0.0", C::Unspecified),
            ("::ffff:100.64.0.1", C::SharedAddressSpace),
            ("::ffff:8.8.8.8", C::Public),
            ("::127.0.0.1", C::Loopback),
            ("::10.0.0.1", C::Private),
            ("::0.0.0.2", C::ThisNetwork),
            ("64:ff9b::10.0.0.1", C::Private),
            ("64:ff9b::7f00:1", C::Loopback),
            ("64:ff9b::8.8.8.8", C::Public),
            ("2002:a00:1::1", C::Private),
            ("2002:7f00:1::", C::Loopback),
            ("2002:808:808::1", C::Public),
        ];
        for (raw, want) in table {
            let ip: IpAddr = raw.parse().unwrap();
            assert_eq!(classify(ip), *want, "{raw}");
        }
    }

    #[test]
    fn the_default_rules_allow_only_public_addresses() {
        let rules = AddressRules::default();
        for ok in ["8.8.8.8", "2606:4700:4700::1111", "::ffff:8.8.8.8"] {
            assert_eq!(rules.check(ok.parse().unwrap()), Ok(()), "{ok}");
        }
        for (bad, class) in [
            ("127.0.0.1", C::Loopback),
            ("::1", C::Loopback),
            ("10.0.0.1", C::Private),
            ("172.16.5.4", C::Private),
            ("192.168.1.1", C::Private),
            ("169.254.169.254", C::LinkLocal),
            ("fd00::1", C::UniqueLocal),
            ("100.64.1.1", C::SharedAddressSpace),
            ("0.0.0.0", C::Unspecified),
            ("::", C::Unspecified),
            ("0.1.2.3", C::ThisNetwork),
            ("224.0.0.1", C::Multicast),
            ("255.255.255.255", C::Broadcast),
            ("::ffff:127.0.0.1", C::Loopback),
            ("::ffff:192.168.0.1", C::Private),
        ] {
            assert_eq!(rules.check(bad.parse().unwrap()), Err(class), "{bad}");
        }
    }

    #[test]
    fn loopback_and_operator_ranges_open_only_what_they_name() {
        let rules = AddressRules {
            allow_loopback: true,
            allowed_networks: parse_networks("10.0.0.0/8, fd00::/8").unwrap(),
        };
        let table: &[(&str, Result<(), AddressClass>)] = &[
            ("127.0.0.1", Ok(())),
            ("::1", Ok(())),
            ("::ffff:127.0.0.1", Ok(())),
            ("10.20.30.40", Ok(())),
            ("::ffff:10.20.30.40", Ok(())),
            ("fd00::5", Ok(())),
            ("fc00::5", Err(C::UniqueLocal)),
            ("11.0.0.1", Ok(())),
            ("192.168.0.1", Err(C::Private)),
            ("169.254.169.254", Err(C::LinkLocal)),
            // Never, whatever the ranges say.
            ("0.0.0.0", Err(C::Unspecified)),
            ("::", Err(C::Unspecified)),
            ("224.0.0.1", Err(C::Multicast)),
        ];
        for (raw, want) in table {
            assert_eq!(rules.check(raw.parse().unwrap()), *want, "{raw}");
        }
        let everything = AddressRules {
            allow_loopback: false,
            allowed_networks: parse_networks("0.0.0.0/0").unwrap(),
        };
        assert_eq!(
            everything.check("0.0.0.0".parse().unwrap()),
            Err(C::Unspecified)
        );
        assert_eq!(everything.check("127.0.0.1".parse().unwrap()), Ok(()));
    }

    #[test]
    fn networks_parse_or_say_why_not() {
        let good: &[(&str, &str)] = &[
            ("10.0.0.0/8", "10.0.0.0/8"),
            (" 192.168.0.0/16 ", "192.168.0.0/16"),
            ("10.1.2.3", "10.1.2.3/32"),
            ("fd00::/8", "fd00::/8"),
            ("::1", "::1/128"),
            ("0.0.0.0/0", "0.0.0.0/0"),
        ];
        for (raw, want) in good {
            assert_eq!(raw.parse::<IpNet>().unwrap().to_string(), *want, "{raw}");
        }
        let bad: &[(&str, &str)] = &[
            ("10.0.0.0/33", "prefix length must be 0 to 32"),
            ("fd00::/129", "prefix length must be 0 to 128"),
            ("10.0.0.0/x", "prefix length"),
            ("10.0.0/8", "not an IP network"),
            ("intranet", "not an IP network"),
            ("10.1.2.3/8", "did you mean 10.0.0.0/8?"),
            ("", "not an IP network"),
        ];
        for (raw, want) in bad {
            let err = raw.parse::<IpNet>().unwrap_err();
            assert!(err.contains(want), "{raw}: {err}");
        }
        assert_eq!(parse_networks(" , ").unwrap(), vec![]);
        assert_eq!(parse_networks("10.0.0.0/8,172.16.0.0/12").unwrap().len(), 2);
        assert!(parse_networks("10.0.0.0/8,nope").is_err());
    }

    #[test]
    fn a_network_contains_its_addresses_only() {
        let n: IpNet = "172.16.0.0/12".parse().unwrap();
        assert!(n.contains("172.16.0.0".parse().unwrap()));
        assert!(n.contains("172.31.255.255".parse().unwrap()));
        assert!(!n.contains("172.32.0.0".parse().unwrap()));
        assert!(!n.contains("::1".parse().unwrap()));
        let v6: IpNet = "fd00::/8".parse().unwrap();
        assert!(!v6.contains("10.0.0.1".parse().unwrap()));
    }

    #[test]
    fn localhost_names() {
        for yes in ["localhost", "LOCALHOST", "localhost.", "a.b.localhost"] {
            assert!(is_localhost_name(yes), "{yes}");
        }
        for no in ["localhost.example", "mylocalhost", "example.com"] {
            assert!(!is_localhost_name(no), "{no}");
        }
    }
}
