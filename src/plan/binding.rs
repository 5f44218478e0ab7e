//! The `bridge` table: each admitted address bound to its veth, in both directions, and
//! each admitted endpoint's MAC bound to its veth before the bridge learns from a frame.

use super::names;
use super::ruleset::*;
use std::collections::BTreeSet;
use std::net::Ipv6Addr;

/// Binds each admitted address to its veth, in both directions: a veth may only send from
/// its own addresses, and a bound address is only ever delivered to its own veth.
pub(super) fn table() -> Table {
    let mut sets = vec![
        (names::ADDRS_4, SetKind::V4),
        (names::ADDRS_6, SetKind::V6),
        (names::BIND_4, SetKind::IfnameV4),
        (names::BIND_6, SetKind::IfnameV6),
        (names::BIND_MAC, SetKind::IfnameMac),
        (names::GENUINE_4, SetKind::IfnameMacV4),
        (names::GENUINE_6, SetKind::IfnameMacV6),
        (names::MAC_VETHS, SetKind::Ifname),
        (names::MACS, SetKind::Mac),
        (names::VETHS, SetKind::Ifname),
    ];
    sets.extend(names::RAW_SETS);
    // Sorted by name, like the inet table's sets.
    sets.sort_by_key(|(name, _)| *name);
    let sets = sets
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
    // Neighbour discovery right after the genuine paths, which leave ICMPv6 out (a genuine
    // frame may still advertise a neighbour's address): a genuine frame never pays for it.
    let mut pre = genuine();
    pre.push(Rule::new(
        vec![icmpv6_types(&ND_TYPES)],
        Verdict::Jump(names::ND.into()),
        "neighbour discovery",
    ));
    pre.extend(bound_mac());
    pre.extend(bound_source(Ip, V4, names::BIND_4, names::ADDRS_4));
    pre.extend(arp);
    // A bound source before the link-local test: both accept, so their order changes no
    // verdict, and a genuine frame is accepted by its first lookup.
    let mut v6 = bound_source(Ip6, V6, names::BIND_6, names::ADDRS_6);
    v6.insert(
        1,
        Rule::new(
            vec![Match::EtherType(Ip6), Match::Saddr6In(ll.clone())],
            Verdict::Accept,
            "link-local and unspecified",
        ),
    );
    pre.extend(v6);
    let mut post = bound_destination(Ip, V4, names::BIND_4, names::ADDRS_4);
    // As in prerouting: two accepts in a row, the bound destination first, so a genuine
    // delivery costs one lookup over IPv6 too.
    let mut v6 = bound_destination(Ip6, V6, names::BIND_6, names::ADDRS_6);
    v6.insert(
        1,
        Rule::new(
            vec![Match::EtherType(Ip6), Match::Daddr6In(ll)],
            Verdict::Accept,
            "link-local",
        ),
    );
    post.extend(v6);
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
            Chain {
                name: names::FOREIGN_MAC.into(),
                base: None,
                rules: foreign_mac(),
            },
            Chain {
                name: names::ND.into(),
                base: None,
                rules: nd_rules(),
            },
        ],
    }
}

/// First in `prerouting`: a frame whose (port, source MAC, source address) is an
/// endpoint's own, in one lookup (over IPv6, unless it is ICMPv6: see `nd_rules`). This
/// accept is exactly what the rules after it decide:
/// `genuine_4` holds (veth, MAC, address) only for an endpoint whose (veth, MAC) is in
/// `bind_mac` and whose (veth, address) is in `bind_4` (same for `genuine_6` and `bind_6`;
/// `container_elements` writes the three together, and the daemon's element updates are one
/// transaction). Such a frame does not jump to `foreign_mac` (its MAC is bound to its port),
/// is no ARP, and the `own address` accept (or, over IPv6, that or the link-local accept)
/// takes it. Every other frame (another MAC, another address, another port, ARP, an
/// endpoint without a known MAC) matches nothing here and meets the rules below unchanged.
/// An opted-out endpoint (`mac_binding = false`) has its own MAC in `bind_mac` too, so its
/// frames from that MAC are genuine here; those from other MACs take the long path.
fn genuine() -> Vec<Rule> {
    [
        (EtherType::Ip, IpVersion::V4, names::GENUINE_4),
        (EtherType::Ip6, IpVersion::V6, names::GENUINE_6),
    ]
    .into_iter()
    .map(|(ether, ip, set)| {
        let mut matches = vec![Match::EtherType(ether)];
        // ICMPv6 takes the long path, past the neighbour discovery checks (`nd_rules`):
        // one compare for a genuine IPv6 frame, where a jump before this rule cost a rule.
        if ip == IpVersion::V6 {
            matches.push(Match::L4ProtoNot(IPPROTO_ICMPV6));
        }
        matches.push(Match::IifMacSaddrInSet {
            ip,
            set: set.into(),
        });
        Rule::new(matches, Verdict::Accept, "own port, MAC and address")
    })
    .collect()
}

/// After `genuine`, in `prerouting`, whose hook runs before the bridge learns a frame's source MAC:
/// a frame whose Ethernet source is another endpoint's MAC never moves that MAC's
/// forwarding entry to the sender's port (which would cut its owner off, the address
/// binding then dropping whatever reaches the wrong port), and a MAC-bound veth sends from
/// its own MAC only. ARP's sender hardware address is held to the same binding.
/// A genuine IP frame never gets here (`genuine`); a frame that does costs one lookup to
/// tell whether its source is bound to its port, and only one that is not goes on to
/// `foreign_mac` to learn whether that is allowed.
fn bound_mac() -> Vec<Rule> {
    let own_sha = |negate| Match::ArpShaInSet {
        iface: IfSide::Iif,
        set: names::BIND_MAC.into(),
        negate,
    };
    vec![
        Rule::new(
            vec![Match::EtherSaddrInSet {
                iface: IfSide::Iif,
                set: names::BIND_MAC.into(),
                negate: true,
            }],
            Verdict::Jump(names::FOREIGN_MAC.into()),
            "source MAC not bound to this port",
        ),
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

/// A frame whose source MAC is not bound to the port it came from: dropped when the MAC
/// is another endpoint's, or when the port is a MAC-bound veth; anything else (a port
/// netguard does not manage, an opted-out group's unowned MAC) returns to `prerouting`.
fn foreign_mac() -> Vec<Rule> {
    vec![
        Rule::new(
            vec![Match::EtherSaddrInSet {
                iface: IfSide::None,
                set: names::MACS.into(),
                negate: false,
            }],
            Verdict::Drop,
            "another container's MAC",
        )
        .counted(),
        Rule::new(
            vec![Match::IifInSet(names::MAC_VETHS.into())],
            Verdict::Drop,
            "MAC-bound veth, MAC not its own",
        )
        .counted(),
    ]
}

const IPPROTO_ICMPV6: u8 = 58;
const NS: &str = "nd-neighbor-solicit";
const NA: &str = "nd-neighbor-advert";
const RS: &str = "nd-router-solicit";
const RA: &str = "nd-router-advert";
const REDIRECT: &str = "nd-redirect";
/// The ICMPv6 messages that make a receiver bind an address to a link-layer address.
const ND_TYPES: [&str; 5] = [RS, RA, NS, NA, REDIRECT];
/// Option types (RFC 4861 4.6.1): source and target link-layer address.
const SLL: u8 = 1;
const TLL: u8 = 2;

fn icmpv6_types(t: &[&str]) -> Match {
    Match::Icmpv6Types(t.iter().map(|t| t.to_string()).collect())
}

/// `nd`, jumped to from `prerouting` for the ND messages above: IPv6's ARP. What ARP's
/// sender addresses are held to, ND's target address and link-layer options are held to
/// here, so that no container can make a neighbour's or the host's cache send another
/// container's IPv6 traffic to itself (where `postrouting` would drop it: a cut-off).
/// - A neighbour advertisement is for the sender's own address: one bound to another
///   port is never advertised from this one, and a managed veth advertises only its own
///   bound addresses and link-local ones (which are not bound, and which the inet table
///   denies any connection).
/// - Router advertisements and redirects never come from a managed veth: on a Docker
///   bridge the host is the router.
/// - A link-layer option carries the sender's own MAC: never another endpoint's, and from
///   a MAC-bound veth only that veth's. Linux takes the first option of each type and only
///   an 8-byte one on Ethernet; a MAC-bound veth's solicitations and advertisements carry
///   no option after it, so the first is the only one (Linux's own carry one: the
///   link-layer address, or a DAD nonce).
///
/// The lookups key raw transport-header bytes (`SetKind::RawIfnameV6`). Every other frame
/// returns to `prerouting` unchanged, where the address and MAC binding judge it as any.
fn nd_rules() -> Vec<Rule> {
    let target = |iface, set: &str, negate| Match::NdTargetInSet {
        iface,
        set: set.into(),
        negate,
    };
    let mut rules = vec![
        Rule::new(
            vec![
                icmpv6_types(&[NA]),
                target(IfSide::None, names::ND_ADDRS_6, false),
                target(IfSide::Iif, names::ND_BIND_6, true),
            ],
            Verdict::Drop,
            "advertisement for another container's address",
        )
        .counted(),
        Rule::new(
            vec![
                icmpv6_types(&[NA]),
                Match::IifInSet(names::VETHS.into()),
                target(IfSide::Iif, names::ND_BIND_6, true),
                Match::NdTargetNotLinkLocal,
            ],
            Verdict::Drop,
            "managed veth, advertisement for an address not its own",
        )
        .counted(),
        Rule::new(
            vec![
                icmpv6_types(&[RA, REDIRECT]),
                Match::IifInSet(names::VETHS.into()),
            ],
            Verdict::Drop,
            "managed veth, router advertisement or redirect",
        )
        .counted(),
    ];
    // Where each message's options start (RFC 4861 4.1-4.5), and its link-layer option.
    let options: [(&str, u16, u8); 5] = [
        (NS, 24, SLL),
        (NA, 24, TLL),
        (RS, 8, SLL),
        (RA, 16, SLL),
        (REDIRECT, 40, TLL),
    ];
    for (t, offset, kind) in options {
        let mac = |iface, set: &str, negate| Match::NdOptionMacInSet {
            offset,
            iface,
            set: set.into(),
            negate,
        };
        rules.push(
            Rule::new(
                vec![
                    icmpv6_types(&[t]),
                    Match::NdOption { offset, kind },
                    mac(IfSide::None, names::ND_MACS, false),
                    mac(IfSide::Iif, names::ND_BIND_MAC, true),
                ],
                Verdict::Drop,
                "link-layer option with another container's MAC",
            )
            .counted(),
        );
        // Router advertisements and redirects from a managed veth were dropped above.
        if matches!(t, NS | NA | RS) {
            rules.push(
                Rule::new(
                    vec![
                        icmpv6_types(&[t]),
                        Match::NdOption { offset, kind },
                        Match::IifInSet(names::MAC_VETHS.into()),
                        mac(IfSide::Iif, names::ND_BIND_MAC, true),
                    ],
                    Verdict::Drop,
                    "MAC-bound veth, link-layer option not its own MAC",
                )
                .counted(),
            );
        }
    }
    for (t, len) in [(&[NS, NA][..], 32), (&[RS][..], 16)] {
        rules.push(
            Rule::new(
                vec![
                    icmpv6_types(t),
                    Match::IifInSet(names::MAC_VETHS.into()),
                    Match::Ip6LengthOver(len),
                ],
                Verdict::Drop,
                "MAC-bound veth, more than one option",
            )
            .counted(),
        );
    }
    rules
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

#[cfg(test)]
mod tests {
    use crate::inventory::parse_inventory;
    use crate::plan::{names, plan};
    use crate::policy::parse_policy;
    use std::path::Path;

    use super::*;

    const INV: &str = "[[container]]\nname = \"web\"\n[[container.endpoint]]\nnetwork = \"n\"\nbridge = \"br-n\"\nveth = \"vweb\"\nipv4 = \"10.0.0.2\"\nmac = \"02:00:00:00:00:02\"\n\
        [[container]]\nname = \"lb\"\n[[container.endpoint]]\nnetwork = \"n\"\nbridge = \"br-n\"\nveth = \"vlb\"\nipv4 = \"10.0.0.3\"\nmac = \"02:00:00:00:00:03\"\n\
        [[container]]\nname = \"old\"\n[[container.endpoint]]\nnetwork = \"n\"\nbridge = \"br-n\"\nveth = \"vold\"\nipv4 = \"10.0.0.4\"\n";

    fn elements(policy: &str) -> (crate::plan::Plan, BTreeSet<(String, Elem)>) {
        let p = parse_policy(Path::new("p.toml"), policy).expect("policy");
        let inv = parse_inventory(Path::new("i.toml"), INV).expect("inventory");
        let planned = plan(&p, &inv);
        let e = planned
            .ruleset
            .elements()
            .into_iter()
            .filter(|(f, s, _)| *f == Family::Bridge && s.contains("mac") && !s.starts_with("nd_"))
            .map(|(_, s, e)| (s, e))
            .collect();
        (planned, e)
    }

    fn mac(s: &str) -> Mac {
        s.parse().expect("mac")
    }

    /// `INV` and a dual-stack container `v6`, under a policy opting `lb` out of the MAC
    /// binding.
    fn dual_stack_and_lb_opted_out() -> (crate::policy::Policy, crate::inventory::Inventory) {
        let inv = format!(
            "{INV}[[container]]\nname = \"v6\"\n[[container.endpoint]]\nnetwork = \"n\"\n\
             bridge = \"br-n\"\nveth = \"vsix\"\nipv4 = \"10.0.0.6\"\nipv6 = \"fd00::6\"\n\
             mac = \"02:00:00:00:00:06\"\n"
        );
        let p = parse_policy(
            Path::new("p.toml"),
            "[groups.lb]\nmatch = { name = \"lb\" }\nmac_binding = false\n",
        )
        .expect("policy");
        let inv = parse_inventory(Path::new("i.toml"), &inv).expect("inventory");
        (p, inv)
    }

    /// The elements of the bridge table's set `set` among a plan's elements.
    fn bridge_set(all: &BTreeSet<(Family, String, Elem)>, set: &str) -> BTreeSet<Elem> {
        all.iter()
            .filter(|(f, s, _)| *f == Family::Bridge && s == set)
            .map(|(_, _, e)| e.clone())
            .collect()
    }

    #[test]
    fn opted_out_members_keep_their_mac_bound_but_not_their_veth() {
        let (p, got) = elements(
            "[groups.web]\nmatch = { name = \"web\" }\n\
             [groups.lb]\nmatch = { name = \"lb\" }\nmac_binding = false\n",
        );
        let want: BTreeSet<(String, Elem)> = [
            (
                names::BIND_MAC,
                Elem::IfnameMac("vweb".into(), mac("02:00:00:00:00:02")),
            ),
            (
                names::BIND_MAC,
                Elem::IfnameMac("vlb".into(), mac("02:00:00:00:00:03")),
            ),
            (names::MACS, Elem::Mac(mac("02:00:00:00:00:02"))),
            (names::MACS, Elem::Mac(mac("02:00:00:00:00:03"))),
            (names::MAC_VETHS, Elem::Ifname("vweb".into())),
        ]
        .into_iter()
        .map(|(s, e)| (s.to_string(), e))
        .collect();
        assert_eq!(got, want);
        assert_eq!(p.mac_binding.opt_out_groups, ["lb"]);
        assert!(p.mac_binding.enabled);
        // Without a MAC: admitted, addresses bound, MAC not, and said so.
        let old = &p
            .containers
            .iter()
            .find(|c| c.name == "old")
            .unwrap()
            .endpoints[0];
        assert!(old.admitted && !old.mac_binding && old.mac.is_none());
        assert!(
            p.warnings
                .iter()
                .any(|w| w.starts_with("old on n: MAC unknown")),
            "{:?}",
            p.warnings
        );
    }

    #[test]
    fn genuine_frames_are_the_bound_mac_and_address_of_one_endpoint() {
        let (p, inv) = dual_stack_and_lb_opted_out();
        let planned = plan(&p, &inv);
        let all = planned.ruleset.elements();
        let of = |set: &str| bridge_set(&all, set);
        let v4 = |s: &str| s.parse().expect("v4");
        // web and lb (opted out: its own MAC is still bound to its veth) and v6; old has
        // no known MAC and keeps the long path.
        assert_eq!(
            of(names::GENUINE_4),
            [
                Elem::IfnameMacV4("vlb".into(), mac("02:00:00:00:00:03"), v4("10.0.0.3")),
                Elem::IfnameMacV4("vsix".into(), mac("02:00:00:00:00:06"), v4("10.0.0.6")),
                Elem::IfnameMacV4("vweb".into(), mac("02:00:00:00:00:02"), v4("10.0.0.2")),
            ]
            .into_iter()
            .collect()
        );
        assert_eq!(
            of(names::GENUINE_6),
            [Elem::IfnameMacV6(
                "vsix".into(),
                mac("02:00:00:00:00:06"),
                "fd00::6".parse().expect("v6")
            )]
            .into_iter()
            .collect()
        );
        // The fast path's accept is the long path's: each element is a (veth, MAC) of
        // bind_mac together with a (veth, address) of bind_4 / bind_6.
        let (bind_mac, bind_4, bind_6) =
            (of(names::BIND_MAC), of(names::BIND_4), of(names::BIND_6));
        for e in of(names::GENUINE_4).into_iter().chain(of(names::GENUINE_6)) {
            let ok = match &e {
                Elem::IfnameMacV4(v, m, a) => {
                    bind_mac.contains(&Elem::IfnameMac(v.clone(), *m))
                        && bind_4.contains(&Elem::IfnameV4(v.clone(), *a))
                }
                Elem::IfnameMacV6(v, m, a) => {
                    bind_mac.contains(&Elem::IfnameMac(v.clone(), *m))
                        && bind_6.contains(&Elem::IfnameV6(v.clone(), *a))
                }
                _ => false,
            };
            assert!(ok, "{e}");
        }
        // First in prerouting, one rule a family, nowhere else; ICMPv6 left out of the IPv6
        // one, and neighbour discovery right after them.
        let t = planned.ruleset.table(Family::Bridge).expect("bridge table");
        let pre = &t.chains[0];
        assert_eq!(pre.name, names::PREROUTING);
        for (i, set) in [names::GENUINE_4, names::GENUINE_6].iter().enumerate() {
            assert!(
                matches!(pre.rules[i].matches.last(), Some(Match::IifMacSaddrInSet { set: s, .. }) if s == set)
                    && pre.rules[i].verdict == Verdict::Accept,
                "{:?}",
                pre.rules[i]
            );
        }
        assert!(
            pre.rules[1]
                .matches
                .contains(&Match::L4ProtoNot(IPPROTO_ICMPV6))
        );
        assert_eq!(pre.rules[2].verdict, Verdict::Jump(names::ND.into()));
        // Without anti_spoofing the sets stay empty.
        let off = parse_policy(Path::new("p.toml"), "[settings]\nanti_spoofing = false\n")
            .expect("policy");
        assert!(
            plan(&off, &inv)
                .ruleset
                .elements()
                .iter()
                .all(|(_, s, _)| !s.starts_with("genuine"))
        );
    }

    /// The raw-keyed sets neighbour discovery is judged by hold exactly what their typed
    /// twins hold: an ND check that disagreed with the address or MAC binding would either
    /// cut a container off or let a poisoning through.
    #[test]
    fn the_neighbour_discovery_sets_mirror_the_bindings() {
        let (p, inv) = dual_stack_and_lb_opted_out();
        let all = plan(&p, &inv).ruleset.elements();
        let of = |set: &str| bridge_set(&all, set);
        let typed = |raw: Elem| match raw {
            Elem::RawIfnameV6(v, a) => Elem::IfnameV6(v, a),
            Elem::RawV6(a) => Elem::V6(a),
            Elem::RawIfnameMac(v, m) => Elem::IfnameMac(v, m),
            Elem::RawMac(m) => Elem::Mac(m),
            other => panic!("not a raw element: {other:?}"),
        };
        for (raw, twin) in [
            (names::ND_BIND_6, names::BIND_6),
            (names::ND_ADDRS_6, names::ADDRS_6),
            (names::ND_BIND_MAC, names::BIND_MAC),
            (names::ND_MACS, names::MACS),
        ] {
            let mirrored: BTreeSet<Elem> = of(raw).into_iter().map(typed).collect();
            assert_eq!(mirrored, of(twin), "{raw} against {twin}");
            assert!(
                !mirrored.is_empty(),
                "{raw} is empty: the test proves nothing"
            );
        }
    }

    #[test]
    fn a_bound_destination_is_tested_before_the_link_local_one() {
        let p = parse_policy(Path::new("p.toml"), "").expect("policy");
        let inv = parse_inventory(Path::new("i.toml"), INV).expect("inventory");
        let planned = plan(&p, &inv);
        let t = planned.ruleset.table(Family::Bridge).expect("bridge table");
        for (chain, first) in [
            (names::PREROUTING, "own address"),
            (names::POSTROUTING, "delivered to its owner"),
        ] {
            let c = t.chains.iter().find(|c| c.name == chain).expect("chain");
            let v6: Vec<&str> = c
                .rules
                .iter()
                .filter(|r| r.matches.first() == Some(&Match::EtherType(EtherType::Ip6)))
                .map(|r| r.comment.as_str())
                .collect();
            let n = if chain == names::PREROUTING { 1 } else { 0 };
            assert_eq!(v6[n], first, "{chain}: {v6:?}");
            assert!(v6[n + 1].starts_with("link-local"), "{chain}: {v6:?}");
        }
    }

    #[test]
    fn without_anti_spoofing_nothing_is_bound() {
        let (p, got) = elements("[settings]\nanti_spoofing = false\n");
        assert!(got.is_empty(), "{got:?}");
        assert!(!p.mac_binding.enabled);
        assert!(p.warnings.is_empty(), "{:?}", p.warnings);
        assert!(
            p.containers
                .iter()
                .all(|c| c.endpoints.iter().all(|e| !e.mac_binding))
        );
    }

    #[test]
    fn a_mac_the_source_reports_badly_is_not_admitted() {
        let p = parse_policy(Path::new("p.toml"), "").expect("policy");
        let mut inv = parse_inventory(Path::new("i.toml"), INV).expect("inventory");
        inv.containers[0].endpoints[0].mac = Some("02:00:00:00:00".into());
        inv.containers[1].endpoints[0].mac = Some("33:33:00:00:00:01".into());
        let planned = plan(&p, &inv);
        for c in &planned.containers[..2] {
            let ep = &c.endpoints[0];
            assert!(!ep.admitted, "{}", c.name);
            assert!(
                ep.reason.as_deref().is_some_and(|r| r.contains("MAC")),
                "{:?}",
                ep.reason
            );
        }
    }
}
