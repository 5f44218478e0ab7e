//! The desired nftables objects, as plain data: what `plan` produces and the nft backend
//! renders, diffs and applies. Nothing here can carry nft syntax: names of interfaces are
//! values inside typed elements, never text spliced into a rule.

pub use crate::inventory::{Mac, PortProto};
use serde::Serialize;
use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

pub const TABLE_NAME: &str = "netguard";

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Family {
    Inet,
    Bridge,
}

impl Family {
    pub fn as_str(self) -> &'static str {
        match self {
            Family::Inet => "inet",
            Family::Bridge => "bridge",
        }
    }
}

/// netguard's complete desired state: the tables it owns. A family with no table here
/// means "this table must not exist".
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Ruleset {
    pub tables: Vec<Table>,
}

impl Ruleset {
    pub fn table(&self, family: Family) -> Option<&Table> {
        self.tables.iter().find(|t| t.family == family)
    }

    /// Every set element, as (table, set, element): what the kernel must hold.
    pub fn elements(&self) -> BTreeSet<(Family, String, Elem)> {
        self.tables
            .iter()
            .flat_map(|t| {
                t.sets.iter().flat_map(move |s| {
                    s.elements
                        .iter()
                        .map(move |e| (t.family, s.name.clone(), e.clone()))
                })
            })
            .collect()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Table {
    pub family: Family,
    pub sets: Vec<SetDef>,
    /// In the order they must be created (jump targets before the rules using them does
    /// not matter in one transaction, but a stable order keeps output deterministic).
    pub chains: Vec<Chain>,
}

impl Table {
    pub fn set(&self, name: &str) -> Option<&SetDef> {
        self.sets.iter().find(|s| s.name == name)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SetKind {
    Ifname,
    IfnamePair,
    IfnameV4,
    IfnameV6,
    /// `ifname . ether_addr`: a veth and the MAC bound to it.
    IfnameMac,
    /// `ifname . ether_addr . ipv4_addr`: a veth, the MAC bound to it and one of its
    /// addresses (the bridge table's one-lookup path for a genuine frame).
    IfnameMacV4,
    /// `ifname . ether_addr . ipv6_addr`.
    IfnameMacV6,
    /// `ether_addr`: every bound MAC.
    Mac,
    V4,
    V6,
    /// `typeof iifname . @th,64,128`: `IfnameV6`'s elements keyed as raw transport-header
    /// bytes, so that a neighbour advertisement's target address can be looked up (nft
    /// 1.0.6 has no named field for it, and its JSON can look a raw payload up only in a
    /// set declared `typeof` the same way). Created through nft's text syntax.
    RawIfnameV6,
    /// `typeof @th,64,128`: `V6`'s elements, raw.
    RawV6,
    /// `typeof iifname . @th,208,48`: `IfnameMac`'s elements, raw, for the MAC in a
    /// neighbour discovery link-layer option (looked up at whichever offset the message
    /// type puts it; the kernel compares bytes).
    RawIfnameMac,
    /// `typeof @th,208,48`: `Mac`'s elements, raw.
    RawMac,
    /// `type inet_service; flags interval`: one allow line's destination ports, shared by
    /// every rule with the same list. Written only through libnftables.
    Ports,
    /// `inet_proto . inet_service`: a published port bound on every local address.
    ProtoPort,
    /// `ipv4_addr . inet_proto . inet_service`: a published port bound on one address.
    V4ProtoPort,
    /// `ipv6_addr . inet_proto . inet_service`.
    V6ProtoPort,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SetDef {
    pub name: String,
    pub kind: SetKind,
    pub elements: BTreeSet<Elem>,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Elem {
    Ifname(String),
    IfnamePair(String, String),
    IfnameV4(String, Ipv4Addr),
    IfnameV6(String, Ipv6Addr),
    IfnameMac(String, Mac),
    IfnameMacV4(String, Mac, Ipv4Addr),
    IfnameMacV6(String, Mac, Ipv6Addr),
    Mac(Mac),
    V4(Ipv4Addr),
    V6(Ipv6Addr),
    /// The elements of the raw-keyed sets (`SetKind::RawIfnameV6` ...): the same values,
    /// written as the integers nft declares those keys to be.
    RawIfnameV6(String, Ipv6Addr),
    RawV6(Ipv6Addr),
    RawIfnameMac(String, Mac),
    RawMac(Mac),
    /// An inclusive port range (`lo == hi` for one port).
    Port(u16, u16),
    /// A published port's host side: (protocol, host port) for a wildcard binding, with
    /// the host address for a bound one.
    ProtoPort(PortProto, u16),
    V4ProtoPort(Ipv4Addr, PortProto, u16),
    V6ProtoPort(Ipv6Addr, PortProto, u16),
}

impl SetKind {
    /// A raw-keyed set (`RawIfnameV6` ...): declared in nft's text syntax, not its JSON.
    pub fn is_raw(self) -> bool {
        matches!(
            self,
            SetKind::RawIfnameV6 | SetKind::RawV6 | SetKind::RawIfnameMac | SetKind::RawMac
        )
    }
}

impl Elem {
    pub fn kind(&self) -> SetKind {
        match self {
            Elem::Ifname(_) => SetKind::Ifname,
            Elem::IfnamePair(..) => SetKind::IfnamePair,
            Elem::IfnameV4(..) => SetKind::IfnameV4,
            Elem::IfnameV6(..) => SetKind::IfnameV6,
            Elem::IfnameMac(..) => SetKind::IfnameMac,
            Elem::IfnameMacV4(..) => SetKind::IfnameMacV4,
            Elem::IfnameMacV6(..) => SetKind::IfnameMacV6,
            Elem::Mac(_) => SetKind::Mac,
            Elem::V4(_) => SetKind::V4,
            Elem::V6(_) => SetKind::V6,
            Elem::RawIfnameV6(..) => SetKind::RawIfnameV6,
            Elem::RawV6(_) => SetKind::RawV6,
            Elem::RawIfnameMac(..) => SetKind::RawIfnameMac,
            Elem::RawMac(_) => SetKind::RawMac,
            Elem::Port(..) => SetKind::Ports,
            Elem::ProtoPort(..) => SetKind::ProtoPort,
            Elem::V4ProtoPort(..) => SetKind::V4ProtoPort,
            Elem::V6ProtoPort(..) => SetKind::V6ProtoPort,
        }
    }
}

impl std::fmt::Display for Elem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Elem::Ifname(i) => write!(f, "{i:?}"),
            Elem::IfnamePair(a, b) => write!(f, "{a:?} . {b:?}"),
            Elem::IfnameV4(i, a) => write!(f, "{i:?} . {a}"),
            Elem::IfnameV6(i, a) | Elem::RawIfnameV6(i, a) => write!(f, "{i:?} . {a}"),
            Elem::IfnameMac(i, m) | Elem::RawIfnameMac(i, m) => write!(f, "{i:?} . {m}"),
            Elem::IfnameMacV4(i, m, a) => write!(f, "{i:?} . {m} . {a}"),
            Elem::IfnameMacV6(i, m, a) => write!(f, "{i:?} . {m} . {a}"),
            Elem::Mac(m) | Elem::RawMac(m) => write!(f, "{m}"),
            Elem::V4(a) => write!(f, "{a}"),
            Elem::V6(a) | Elem::RawV6(a) => write!(f, "{a}"),
            Elem::Port(lo, hi) if lo == hi => write!(f, "{lo}"),
            Elem::Port(lo, hi) => write!(f, "{lo}-{hi}"),
            Elem::ProtoPort(p, n) => write!(f, "{} . {n}", p.as_str()),
            Elem::V4ProtoPort(a, p, n) => write!(f, "{a} . {} . {n}", p.as_str()),
            Elem::V6ProtoPort(a, p, n) => write!(f, "{a} . {} . {n}", p.as_str()),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Hook {
    Prerouting,
    Input,
    Forward,
    Postrouting,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct BaseChain {
    pub hook: Hook,
    pub priority: i32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Chain {
    pub name: String,
    pub base: Option<BaseChain>,
    pub rules: Vec<Rule>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum IpVersion {
    V4,
    V6,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum EtherType {
    Ip,
    Ip6,
    Arp,
}

/// Which interface name (if any) is concatenated in front of the address in a set lookup.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum IfSide {
    None,
    Iif,
    Oif,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Match {
    /// `meta iifname . meta oifname @set`
    IfPairIn(String),
    IifInSet(String),
    IifNotInSet(String),
    OifInSet(String),
    OifNotInSet(String),
    /// `iifname "br-*"`: an nft interface-name pattern (netguard's own constants only).
    IifPattern(String),
    OifPattern(String),
    IifNotPattern(String),
    OifNotPattern(String),
    EtherType(EtherType),
    /// `ip saddr { nets }` / `ip6 saddr { nets }`: addresses a policy line names.
    SaddrNets {
        ip: IpVersion,
        nets: Vec<(IpAddr, u8)>,
    },
    DaddrNets {
        ip: IpVersion,
        nets: Vec<(IpAddr, u8)>,
    },
    /// `fib daddr type local`: addressed to this host.
    FibDaddrLocal,
    /// `ct status dnat`: the connection's destination was rewritten (a published port).
    CtStatusDnat,
    /// `[iifname .] ip saddr @set` (or `!=` when `negate`).
    SaddrInSet {
        ip: IpVersion,
        iface: IfSide,
        set: String,
    },
    DaddrInSet {
        ip: IpVersion,
        iface: IfSide,
        set: String,
    },
    /// `[iifname .] arp saddr ip @set`
    ArpSaddrInSet {
        iface: IfSide,
        set: String,
    },
    ArpSaddrIsZero,
    /// `[iifname .] ether saddr [!=] @set`
    EtherSaddrInSet {
        iface: IfSide,
        set: String,
        negate: bool,
    },
    /// `iifname . ether saddr . ip saddr @set` (`ip6 saddr` for `V6`): the frame's port,
    /// source MAC and source address, one lookup.
    IifMacSaddrInSet {
        ip: IpVersion,
        set: String,
    },
    /// `[iifname .] arp saddr ether [!=] @set`: the ARP sender hardware address.
    ArpShaInSet {
        iface: IfSide,
        set: String,
        negate: bool,
    },
    /// `[iifname .] @th,64,128 [!=] @set`: the target address of a neighbour
    /// advertisement (bytes 8-23 of the ICMPv6 message) in a raw-keyed set.
    NdTargetInSet {
        iface: IfSide,
        set: String,
        negate: bool,
    },
    /// `@th,64,10 != 0x3fa`: the target address is not link-local (fe80::/10).
    NdTargetNotLinkLocal,
    /// `@th,OFFSET*8,16 == TYPE << 8 | 1`: the neighbour discovery option at byte `offset`
    /// of the ICMPv6 message is of this type and 8 bytes long (an Ethernet link-layer
    /// address option, the only length Linux takes one of on Ethernet).
    NdOption {
        offset: u16,
        kind: u8,
    },
    /// `[iifname .] @th,(OFFSET+2)*8,48 [!=] @set`: the MAC in the option at byte `offset`,
    /// in a raw-keyed set.
    NdOptionMacInSet {
        offset: u16,
        iface: IfSide,
        set: String,
        negate: bool,
    },
    /// `ip6 length > N`: an IPv6 payload longer than N bytes.
    Ip6LengthOver(u16),
    /// `ip6 saddr { prefixes }`
    Saddr6In(Vec<(Ipv6Addr, u8)>),
    Daddr6In(Vec<(Ipv6Addr, u8)>),
    /// `ether daddr & 01:00:00:00:00:00 == 00:00:00:00:00:00`: the group bit of the
    /// destination MAC, which is right for frames the host sends too (their `pkttype` is
    /// `host` even when they are multicast).
    Unicast,
    /// `limit rate RATE/second burst BURST packets`: true for packets within the rate.
    Limit {
        rate: u32,
        burst: u32,
    },
    CtState(Vec<String>),
    /// `meta l4proto NAME` plus, when `dports` is non-empty, `th dport` matched against
    /// them: inline for one port or range, else against the named port set `set`.
    L4 {
        proto: String,
        dports: Vec<(u16, u16)>,
        #[serde(skip_serializing_if = "Option::is_none")]
        set: Option<String>,
    },
    /// `meta l4proto != N` (a protocol number: no name to resolve through /etc/protocols).
    L4ProtoNot(u8),
    /// `[ip daddr .] meta l4proto . th dport @set` (`ip6 daddr` for `V6`): a published
    /// port's host side in one of the published-port sets (`None`: a wildcard set).
    PublishedIn {
        daddr: Option<IpVersion>,
        set: String,
    },
    /// `icmp type echo-request` / `icmpv6 type echo-request` (and family implied).
    IcmpEcho(IpVersion),
    Icmpv6Types(Vec<String>),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Accept,
    Drop,
    Return,
    Jump(String),
    /// No verdict: evaluation goes on with the next rule (used for log rules).
    Continue,
    /// To the NFQUEUE of this number, without `bypass`: with no one listening the kernel
    /// drops the packet.
    Queue(u16),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Rule {
    pub matches: Vec<Match>,
    pub counter: bool,
    /// Rate-limited log with this prefix before the verdict.
    pub log_prefix: Option<String>,
    pub verdict: Verdict,
    /// What a human reading `nft list` should know, e.g. the policy line.
    pub comment: String,
}

impl Rule {
    pub fn new(matches: Vec<Match>, verdict: Verdict, comment: impl Into<String>) -> Rule {
        Rule {
            matches,
            counter: false,
            log_prefix: None,
            verdict,
            comment: comment.into(),
        }
    }

    pub fn counted(mut self) -> Rule {
        self.counter = true;
        self
    }
}

/// Sorted, overlapping and adjacent ranges merged: the form an interval set accepts.
pub fn merge_ranges(mut r: Vec<(u16, u16)>) -> Vec<(u16, u16)> {
    r.sort();
    let mut out: Vec<(u16, u16)> = Vec::with_capacity(r.len());
    for (lo, hi) in r {
        match out.last_mut() {
            Some(last) if lo <= last.1.saturating_add(1) => last.1 = last.1.max(hi),
            _ => out.push((lo, hi)),
        }
    }
    out
}

/// The named set for a list of two or more port ranges (merged): named by content, so
/// every rule with the same list shares it and its name does not move when lines do.
/// One named set instead of an anonymous one per rule: the kernel binds each anonymous set
/// by walking the whole transaction, which made large policies apply in quadratic time.
pub fn port_set_name(dports: &[(u16, u16)]) -> String {
    let h = dports.iter().fold(0xcbf29ce484222325u64, |h, (lo, hi)| {
        [lo.to_be_bytes(), hi.to_be_bytes()]
            .concat()
            .iter()
            .fold(h, |h, b| (h ^ *b as u64).wrapping_mul(0x100000001b3))
    });
    format!("ports_{h:016x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_merge_when_they_overlap_or_touch() {
        assert_eq!(
            merge_ranges(vec![
                (9005, 9005),
                (22, 22),
                (9000, 9010),
                (23, 30),
                (80, 80)
            ]),
            vec![(22, 30), (80, 80), (9000, 9010)]
        );
        assert_eq!(merge_ranges(vec![(0, 65535), (80, 80)]), vec![(0, 65535)]);
        assert_eq!(
            merge_ranges(vec![(65535, 65535), (65534, 65534)]),
            vec![(65534, 65535)]
        );
    }

    #[test]
    fn port_set_names_follow_the_content() {
        let a = port_set_name(&[(80, 80), (443, 443)]);
        assert_eq!(a, port_set_name(&[(80, 80), (443, 443)]));
        assert_ne!(a, port_set_name(&[(80, 80), (444, 444)]));
        assert_ne!(a, port_set_name(&[(80, 443)]));
        assert!(a.starts_with("ports_") && a.len() == 22);
    }
}
