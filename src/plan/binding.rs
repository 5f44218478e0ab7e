//! The `bridge` table: each admitted address bound to its veth, in both directions, and
//! each admitted endpoint's MAC bound to its veth before the bridge learns from a frame.

use super::names;
use super::ruleset::*;
use std::collections::BTreeSet;
use std::net::Ipv6Addr;

/// Binds each admitted address to its veth, in both directions: a veth may only send from
/// its own addresses, and a bound address is only ever delivered to its own veth.
pub(super) fn table() -> Table {
    // Sorted by name, like the inet table's sets.
    let sets = [
        (names::ADDRS_4, SetKind::V4),
        (names::ADDRS_6, SetKind::V6),
        (names::BIND_4, SetKind::IfnameV4),
        (names::BIND_6, SetKind::IfnameV6),
        (names::BIND_MAC, SetKind::IfnameMac),
        (names::MAC_VETHS, SetKind::Ifname),
        (names::MACS, SetKind::Mac),
        (names::VETHS, SetKind::Ifname),
    ]
    .into_iter()
    .map(|(name, kind)| SetDef {
        name: name.into(),
        kind,
        elements: BTreeSet::new(),
    })
    .collect::<Vec<_>>();
    use EtherType::*;
    use IpVersion::*;
    let ll: Vec<(Ipv6Addr, u8)> = vec![
        (Ipv6Addr::UNSPECIFIED, 128),
        (Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0), 10),
    ];
    let arp = vec![
        Rule::new(
            vec![
                Match::EtherType(Arp),
                Match::ArpSaddrInSet {
                    iface: IfSide::Iif,
                    set: names::BIND_4.into(),
                },
            ],
            Verdict::Accept,
            "own address",
        ),
        Rule::new(
            vec![
                Match::EtherType(Arp),
                Match::ArpSaddrInSet {
                    iface: IfSide::None,
                    set: names::ADDRS_4.into(),
                },
            ],
            Verdict::Drop,
            "ARP for another container's address",
        )
        .counted(),
        Rule::new(
            vec![
                Match::EtherType(Arp),
                Match::IifInSet(names::VETHS.into()),
                Match::ArpSaddrIsZero,
            ],
            Verdict::Accept,
            "ARP probe",
        ),
        Rule::new(
            vec![Match::EtherType(Arp), Match::IifInSet(names::VETHS.into())],
            Verdict::Drop,
            "managed veth, ARP for an address not its own",
        )
        .counted(),
    ];
    let mut pre = bound_mac();
    pre.extend(bound_source(Ip, V4, names::BIND_4, names::ADDRS_4));
    pre.extend(arp);
    pre.push(Rule::new(
        vec![Match::EtherType(Ip6), Match::Saddr6In(ll.clone())],
        Verdict::Accept,
        "link-local and unspecified",
    ));
    pre.extend(bound_source(Ip6, V6, names::BIND_6, names::ADDRS_6));
    let mut post = bound_destination(Ip, V4, names::BIND_4, names::ADDRS_4);
    post.push(Rule::new(
        vec![Match::EtherType(Ip6), Match::Daddr6In(ll)],
        Verdict::Accept,
        "link-local",
    ));
    post.extend(bound_destination(Ip6, V6, names::BIND_6, names::ADDRS_6));
    Table {
        family: Family::Bridge,
        sets,
        chains: vec![
            Chain {
                name: names::PREROUTING.into(),
                base: Some(BaseChain {
                    hook: Hook::Prerouting,
                    priority: -200,
                }),
                rules: pre,
            },
            Chain {
                name: names::POSTROUTING.into(),
                base: Some(BaseChain {
                    hook: Hook::Postrouting,
                    priority: -200,
                }),
                rules: post,
            },
        ],
    }
}

/// First in `prerouting`, whose hook runs before the bridge learns a frame's source MAC:
/// a frame whose Ethernet source is another endpoint's MAC never moves that MAC's
/// forwarding entry to the sender's port (which would cut its owner off, the address
/// binding then dropping whatever reaches the wrong port), and a MAC-bound veth sends from
/// its own MAC only. ARP's sender hardware address is held to the same binding.
/// The bound lookup comes first in each rule: a genuine frame stops there, one lookup.
fn bound_mac() -> Vec<Rule> {
    let own = |negate| Match::EtherSaddrInSet {
        iface: IfSide::Iif,
        set: names::BIND_MAC.into(),
        negate,
    };
    let own_sha = |negate| Match::ArpShaInSet {
        iface: IfSide::Iif,
        set: names::BIND_MAC.into(),
        negate,
    };
    vec![
        Rule::new(
            vec![
                own(true),
                Match::EtherSaddrInSet {
                    iface: IfSide::None,
                    set: names::MACS.into(),
                    negate: false,
                },
            ],
            Verdict::Drop,
            "another container's MAC",
        )
        .counted(),
        Rule::new(
            vec![own(true), Match::IifInSet(names::MAC_VETHS.into())],
            Verdict::Drop,
            "MAC-bound veth, MAC not its own",
        )
        .counted(),
        Rule::new(
            vec![
                Match::EtherType(EtherType::Arp),
                own_sha(true),
                Match::ArpShaInSet {
                    iface: IfSide::None,
                    set: names::MACS.into(),
                    negate: false,
                },
            ],
            Verdict::Drop,
            "ARP with another container's MAC",
        )
        .counted(),
        Rule::new(
            vec![
                Match::EtherType(EtherType::Arp),
                own_sha(true),
                Match::IifInSet(names::MAC_VETHS.into()),
            ],
            Verdict::Drop,
            "MAC-bound veth, ARP sender MAC not its own",
        )
        .counted(),
    ]
}

/// A frame may leave a veth only with that veth's own address; a bound address coming from
/// any other port is someone pretending, and a managed veth has no other address to use.
fn bound_source(ether: EtherType, ip: IpVersion, bind: &str, addrs: &str) -> Vec<Rule> {
    vec![
        Rule::new(
            vec![
                Match::EtherType(ether),
                Match::SaddrInSet {
                    ip,
                    iface: IfSide::Iif,
                    set: bind.into(),
                },
            ],
            Verdict::Accept,
            "own address",
        ),
        Rule::new(
            vec![
                Match::EtherType(ether),
                Match::SaddrInSet {
                    ip,
                    iface: IfSide::None,
                    set: addrs.into(),
                },
            ],
            Verdict::Drop,
            "another container's address",
        )
        .counted(),
        Rule::new(
            vec![
                Match::EtherType(ether),
                Match::IifInSet(names::VETHS.into()),
            ],
            Verdict::Drop,
            "managed veth, address not its own",
        )
        .counted(),
    ]
}

/// A bound address is delivered only to its own veth, and a managed veth receives unicast
/// only for its own addresses: a veth that takes over an address gets nothing meant for it.
fn bound_destination(ether: EtherType, ip: IpVersion, bind: &str, addrs: &str) -> Vec<Rule> {
    vec![
        Rule::new(
            vec![
                Match::EtherType(ether),
                Match::DaddrInSet {
                    ip,
                    iface: IfSide::Oif,
                    set: bind.into(),
                },
            ],
            Verdict::Accept,
            "delivered to its owner",
        ),
        Rule::new(
            vec![
                Match::EtherType(ether),
                Match::DaddrInSet {
                    ip,
                    iface: IfSide::None,
                    set: addrs.into(),
                },
            ],
            Verdict::Drop,
            "bound address, wrong veth",
        )
        .counted(),
        Rule::new(
            vec![
                Match::EtherType(ether),
                Match::OifInSet(names::VETHS.into()),
                Match::Unicast,
            ],
            Verdict::Drop,
            "managed veth, address not its own",
        )
        .counted(),
    ]
}
