//! The edges of the managed networks (docs/policy.md, "Edges"): managed containers to this
//! host (`input` hook), to the outside (`egress`), and from the outside (`ingress`); and
//! the published ports that docker-proxy serves in the `input` hook, judged as the
//! container behind them (`published`, `published_in`).
//!
//! Containers stay set elements: these rules name only the group sets, the bridge sets and
//! the addresses the policy itself writes, so a container event changes no rule here.
//! Every chain is drop-only: what it does not drop goes on to Docker's own rules.

use super::ruleset::*;
use super::{Flow, names};
use crate::inventory::PortProto;
use crate::policy::{EdgeDefault, Peers, Policy, PortSpec, Proto};
use std::collections::BTreeMap;
use std::net::IpAddr;

/// Kernel log prefixes of the edges' denials (`netguard log` names the edge by them).
pub const LOG_PREFIX_HOST: &str = "netguard-deny-host ";
pub const LOG_PREFIX_EGRESS: &str = "netguard-deny-egress ";
pub const LOG_PREFIX_INGRESS: &str = "netguard-deny-ingress ";
/// A managed container's connection to a published port of a managed container that no
/// line allows (docker-proxy path; the DNAT path is logged as a pair denial).
pub const LOG_PREFIX_PUBLISHED: &str = "netguard-deny-published ";

/// Comment prefix of the edges' final drop rules; the counter of each is read back by
/// `metrics` as `netguard_denied_total{edge="…"}`.
pub const EDGE_DENY_PREFIX: &str = "edge deny ";

/// The edges as they appear in metrics labels, with the chain that judges each. An edge's
/// drops may sit in more than one chain (the outside through docker-proxy is judged in
/// `published_in` under `ingress`): metrics sum every rule commented `edge deny EDGE`.
/// `published`: a managed container's connection through docker-proxy to a published port
/// of a managed container that no line allows (a pair denial, counted apart because the
/// pair counters of `isolate` never see it).
pub const EDGES: [(&str, &str); 4] = [
    ("host", names::INPUT),
    ("egress", names::EGRESS),
    ("ingress", names::INGRESS),
    ("published", names::PUBLISHED),
];

/// One target of the lines whose `to` is containers: the published mappings of the
/// containers in `to` whose container port is in `ports` are what such a line opens through
/// a published port. Lines with the same target share its sets (named by content).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishedTarget {
    /// 16 hex digits, a hash of the target's canonical text.
    pub id: String,
    /// `Peers::Any` or `Peers::Groups`.
    pub to: Peers,
    /// `None`: all traffic.
    pub ports: Option<Vec<PortSpec>>,
}

impl PublishedTarget {
    /// The target of a line with this `to` and these ports; `None` when no published port
    /// can match it (`to` is no containers, or its ports are ICMP only).
    pub fn of(to: &Peers, ports: &Option<Vec<PortSpec>>) -> Option<PublishedTarget> {
        let to_text = match to {
            Peers::Any => "*".to_string(),
            Peers::Groups(g) => {
                let mut g = g.clone();
                g.sort();
                g.dedup();
                g.join(",")
            }
            _ => return None,
        };
        let ports_text = match ports {
            None => "all".to_string(),
            Some(specs) => {
                let mut by_proto: BTreeMap<Proto, Vec<(u16, u16)>> = BTreeMap::new();
                for p in specs.iter().filter(|p| p.proto != Proto::Icmp) {
                    by_proto.entry(p.proto).or_default().push((p.low, p.high));
                }
                if by_proto.is_empty() {
                    return None;
                }
                by_proto
                    .into_iter()
                    .map(|(proto, r)| {
                        let r: Vec<String> = merge_ranges(r)
                            .iter()
                            .map(|(lo, hi)| format!("{lo}-{hi}"))
                            .collect();
                        format!("{}:{}", proto.as_str(), r.join(","))
                    })
                    .collect::<Vec<_>>()
                    .join(";")
            }
        };
        let text = format!("{to_text}|{ports_text}");
        let h = text.bytes().fold(0xcbf29ce484222325u64, |h, b| {
            (h ^ b as u64).wrapping_mul(0x100000001b3)
        });
        Some(PublishedTarget {
            id: format!("{h:016x}"),
            to: to.clone(),
            ports: ports.clone(),
        })
    }

    /// `[wildcard, IPv4-bound, IPv6-bound]` set names.
    pub fn sets(&self) -> [String; 3] {
        names::published_target_sets(&self.id)
    }

    /// Does a mapping to `container_port`/`proto` of an admitted container in `groups`
    /// belong to this target?
    pub fn holds(&self, groups: &[String], proto: PortProto, container_port: u16) -> bool {
        let to = match &self.to {
            Peers::Any => true,
            Peers::Groups(g) => g.iter().any(|g| groups.contains(g)),
            _ => false,
        };
        let proto = match proto {
            PortProto::Tcp => Proto::Tcp,
            PortProto::Udp => Proto::Udp,
            PortProto::Sctp => Proto::Sctp,
        };
        to && self
            .ports
            .as_ref()
            .is_none_or(|specs| specs.iter().any(|s| s.contains(proto, container_port)))
    }
}

/// Every distinct target of the policy's lines, sorted by id.
pub fn published_targets(policy: &Policy) -> Vec<PublishedTarget> {
    let mut out: BTreeMap<String, PublishedTarget> = BTreeMap::new();
    for a in &policy.allows {
        if let Some(t) = PublishedTarget::of(&a.to, &a.ports) {
            out.entry(t.id.clone()).or_insert(t);
        }
    }
    out.into_values().collect()
}

/// The catch-all sets and the match of a published port in each: wildcard, IPv4, IPv6.
fn published_matches(sets: [String; 3]) -> [Match; 3] {
    let [w, v4, v6] = sets;
    [
        Match::PublishedIn {
            daddr: None,
            set: w,
        },
        Match::PublishedIn {
            daddr: Some(IpVersion::V4),
            set: v4,
        },
        Match::PublishedIn {
            daddr: Some(IpVersion::V6),
            set: v6,
        },
    ]
}

fn catch_all() -> [String; 3] {
    [
        names::PUBLISHED_W.to_string(),
        names::PUBLISHED_4.to_string(),
        names::PUBLISHED_6.to_string(),
    ]
}

/// Sets the edge chains need beyond the isolation's own: the engine's bridges (managed
/// or not), only when an edge is closed.
pub(super) fn needs_engine_set(policy: &Policy) -> bool {
    policy.settings.egress == EdgeDefault::Deny || policy.settings.ingress == EdgeDefault::Deny
}

/// The rules `forward` gets after its isolation rules.
pub(super) fn forward_rules(policy: &Policy, engine: crate::inventory::Engine) -> Vec<Rule> {
    // A published port reached through DNAT from another managed bridge (userland-proxy
    // off, Docker 29): its destination is now the container, so it is judged exactly as a
    // direct connection. Same-bridge hairpins already reach `isolate` by the bridge pair.
    let mut rules = vec![Rule::new(
        vec![
            Match::IifInSet(names::MANAGED.into()),
            Match::OifInSet(names::MANAGED.into()),
            Match::CtStatusDnat,
        ],
        Verdict::Jump(names::ISOLATE.into()),
        "published port reached from another managed bridge",
    )];
    let patterns = engine.bridge_patterns();
    if policy.settings.ingress == EdgeDefault::Deny {
        let mut outside = vec![
            Match::OifInSet(names::MANAGED.into()),
            Match::IifNotInSet(names::ENGINE.into()),
        ];
        outside.extend(patterns.iter().map(|p| Match::IifNotPattern((*p).into())));
        rules.push(Rule::new(
            outside,
            Verdict::Jump(names::INGRESS.into()),
            "outside -> managed container",
        ));
        // A client on a network netguard does not manage counts as the world when Docker
        // DNATs it across bridges to a published port.
        rules.push(Rule::new(
            vec![
                Match::OifInSet(names::MANAGED.into()),
                Match::IifNotInSet(names::MANAGED.into()),
                Match::CtStatusDnat,
            ],
            Verdict::Jump(names::INGRESS.into()),
            "unmanaged network -> published port of a managed container",
        ));
    }
    if policy.settings.egress == EdgeDefault::Deny {
        let mut out = vec![
            Match::IifInSet(names::MANAGED.into()),
            Match::OifNotInSet(names::ENGINE.into()),
        ];
        out.extend(patterns.iter().map(|p| Match::OifNotPattern((*p).into())));
        rules.push(Rule::new(
            out,
            Verdict::Jump(names::EGRESS.into()),
            "managed container -> outside",
        ));
    }
    rules
}

/// The edge chains: `input` (a base chain) and `published` always (docker-proxy serves
/// published ports in the input hook whatever the settings), `published_in`, `egress` and
/// `ingress` when theirs is closed.
///
/// `input` exists without a managed network too: its rules do not depend on the
/// inventory, so a network or a container coming never changes a rule (and with no managed
/// bridge its first two rules accept everything).
pub(super) fn chains(policy: &Policy, flows: &[Flow]) -> Vec<Chain> {
    let mut out = vec![
        Chain {
            name: names::INPUT.into(),
            base: Some(BaseChain {
                hook: Hook::Input,
                priority: -10,
            }),
            rules: input_rules(policy, flows),
        },
        Chain {
            name: names::PUBLISHED.into(),
            base: None,
            rules: judged(
                policy,
                flows.iter().flat_map(published_line_rules).collect(),
                "published",
                LOG_PREFIX_PUBLISHED,
                vec![],
            ),
        },
    ];
    if policy.settings.ingress == EdgeDefault::Deny {
        out.push(Chain {
            name: names::PUBLISHED_INGRESS.into(),
            base: None,
            rules: judged(
                policy,
                flows.iter().flat_map(published_ingress_rules).collect(),
                "ingress",
                LOG_PREFIX_INGRESS,
                vec![],
            ),
        });
    }
    if policy.settings.egress == EdgeDefault::Deny {
        out.push(Chain {
            name: names::EGRESS.into(),
            base: None,
            rules: judged(
                policy,
                flows.iter().flat_map(egress_line_rules).collect(),
                "egress",
                LOG_PREFIX_EGRESS,
                vec![],
            ),
        });
    }
    if policy.settings.ingress == EdgeDefault::Deny {
        out.push(Chain {
            name: names::INGRESS.into(),
            base: None,
            rules: judged(
                policy,
                flows.iter().flat_map(ingress_line_rules).collect(),
                "ingress",
                LOG_PREFIX_INGRESS,
                vec![],
            ),
        });
    }
    out
}

fn input_rules(policy: &Policy, flows: &[Flow]) -> Vec<Rule> {
    // Replies first: established traffic pays one rule, as before the published ports.
    let mut rules = vec![Rule::new(
        vec![Match::CtState(vec!["established".into(), "related".into()])],
        Verdict::Accept,
        "replies to allowed connections",
    )];
    // The outside reaching a managed container's published port through docker-proxy (IPv6
    // on Docker 20.10, which does not DNAT it): judged by the ingress lines, on the
    // container's port. The host's own connections (`lo`) stay untouched.
    if policy.settings.ingress == EdgeDefault::Deny {
        for m in published_matches(catch_all()) {
            rules.push(Rule::new(
                vec![
                    Match::IifNotInSet(names::MANAGED.into()),
                    Match::IifNotPattern("lo".into()),
                    m,
                ],
                Verdict::Jump(names::PUBLISHED_INGRESS.into()),
                "outside -> published port of a managed container, through docker-proxy",
            ));
        }
    }
    rules.push(Rule::new(
        vec![Match::IifNotInSet(names::MANAGED.into())],
        Verdict::Accept,
        "not from a managed bridge",
    ));
    // A managed container's connection to a published port of a managed container,
    // through docker-proxy (which then connects from the gateway, host -> container, never
    // judged): the container behind it decides, whatever `host` says.
    for m in published_matches(catch_all()) {
        rules.push(Rule::new(
            vec![m],
            Verdict::Jump(names::PUBLISHED.into()),
            "managed container -> published port of a managed container",
        ));
    }
    if policy.settings.host != EdgeDefault::Deny {
        return rules;
    }
    // Then the neighbour discovery every IPv6 endpoint needs with its gateway.
    rules.push(Rule::new(
        vec![Match::Icmpv6Types(
            [
                "nd-neighbor-solicit",
                "nd-neighbor-advert",
                "nd-router-solicit",
                "mld-listener-query",
                "mld-listener-report",
                "mld-listener-done",
                "mld2-listener-report",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect(),
        )],
        Verdict::Accept,
        "IPv6 neighbour discovery with the gateway",
    ));
    let lines = flows.iter().flat_map(host_line_rules).collect();
    // Only what is addressed to this host: broadcasts and multicast are not connections
    // to one of its services.
    rules.extend(judged(
        policy,
        lines,
        "host",
        LOG_PREFIX_HOST,
        vec![Match::FibDaddrLocal],
    ));
    rules
}

/// Lines between containers, for the `published` chain: a source group's connection to a
/// published mapping of the line's target (per IP version: any local address, and the
/// bound address).
fn published_line_rules(f: &Flow) -> Vec<Rule> {
    if !f.between_containers() {
        return vec![];
    }
    let Some(t) = PublishedTarget::of(&f.to_peers, &f.ports) else {
        return vec![];
    };
    let to = f.to.join(",");
    let mut out = Vec::new();
    for from in &f.from {
        let comment = format!(
            "allow {from} -> {to} {} via published port ({})",
            ports_text(f),
            f.origin
        );
        for (ip, v6) in VERSIONS {
            let [w, v4m, v6m] = published_matches(t.sets());
            for m in [w, if v6 { v6m } else { v4m }] {
                out.push(
                    Rule::new(
                        vec![
                            Match::SaddrInSet {
                                ip,
                                iface: IfSide::Iif,
                                set: container_set(from, v6),
                            },
                            m,
                        ],
                        Verdict::Accept,
                        comment.clone(),
                    )
                    .counted(),
                );
            }
        }
    }
    out
}

/// `from = "world"` or addresses, to groups, for the `published_in` chain.
fn published_ingress_rules(f: &Flow) -> Vec<Rule> {
    if !matches!(f.from_peers, Peers::World | Peers::Nets(_)) || !f.to_peers.is_containers() {
        return vec![];
    }
    let Some(t) = PublishedTarget::of(&f.to_peers, &f.ports) else {
        return vec![];
    };
    let comment = format!(
        "allow {} -> {} {} via published port ({})",
        f.from.join(","),
        f.to.join(","),
        ports_text(f),
        f.origin
    );
    let rule = |m: Vec<Match>| Rule::new(m, Verdict::Accept, comment.clone()).counted();
    let [w, v4m, v6m] = published_matches(t.sets());
    if matches!(f.from_peers, Peers::World) {
        return vec![rule(vec![w]), rule(vec![v4m]), rule(vec![v6m])];
    }
    let mut out = Vec::new();
    for (ip, v6) in VERSIONS {
        let Some(nets) = nets_of(&f.from_peers, v6) else {
            continue;
        };
        let src = Match::SaddrNets { ip, nets };
        out.push(rule(vec![src.clone(), w.clone()]));
        out.push(rule(vec![src, if v6 { v6m.clone() } else { v4m.clone() }]));
    }
    out
}

/// `lines`, then the counted (and, with `log_denied`, logged) drop of the rest.
fn judged(
    policy: &Policy,
    lines: Vec<Rule>,
    edge: &str,
    log_prefix: &str,
    drop_matches: Vec<Match>,
) -> Vec<Rule> {
    let mut rules = vec![
        Rule::new(
            vec![Match::CtState(vec!["invalid".into()])],
            Verdict::Drop,
            "invalid",
        )
        .counted(),
    ];
    rules.extend(lines);
    if policy.settings.log_denied {
        rules.push(Rule {
            matches: drop_matches.clone(),
            counter: false,
            log_prefix: Some(log_prefix.to_string()),
            verdict: Verdict::Continue,
            comment: "log denied".into(),
        });
    }
    rules.push(
        Rule::new(
            drop_matches,
            Verdict::Drop,
            format!("{EDGE_DENY_PREFIX}{edge}"),
        )
        .counted(),
    );
    rules
}

fn container_set(group: &str, v6: bool) -> String {
    match (group, v6) {
        ("*", false) => names::ALL_4.to_string(),
        ("*", true) => names::ALL_6.to_string(),
        (g, v6) => names::group_set(g, v6),
    }
}

/// The line's addresses of one IP version, or `None` when it names none of it.
fn nets_of(p: &Peers, v6: bool) -> Option<Vec<(IpAddr, u8)>> {
    match p {
        Peers::Nets(n) => {
            let n: Vec<_> = n
                .iter()
                .filter(|n| n.is_v6() == v6)
                .map(|n| (n.addr, n.prefix))
                .collect();
            (!n.is_empty()).then_some(n)
        }
        _ => None,
    }
}

/// The line's port matches for one IP version: one entry per protocol (an empty one for
/// "all traffic").
fn port_matches(f: &Flow, ip: IpVersion) -> Vec<Vec<Match>> {
    let Some(ports) = &f.ports else {
        return vec![vec![]];
    };
    let mut by_proto: BTreeMap<Proto, Vec<(u16, u16)>> = BTreeMap::new();
    for p in ports {
        by_proto.entry(p.proto).or_default().push((p.low, p.high));
    }
    by_proto
        .into_iter()
        .map(|(proto, ranges)| {
            if proto == Proto::Icmp {
                vec![Match::IcmpEcho(ip)]
            } else {
                // Inline (an anonymous set for several): these lines are few and
                // never touched by events.
                vec![Match::L4 {
                    proto: proto.as_str().into(),
                    dports: merge_ranges(ranges),
                    set: None,
                }]
            }
        })
        .collect()
}

fn ports_text(f: &Flow) -> String {
    match &f.ports {
        None => "all".to_string(),
        Some(p) => p
            .iter()
            .map(|p| p.to_string())
            .collect::<Vec<_>>()
            .join(","),
    }
}

const VERSIONS: [(IpVersion, bool); 2] = [(IpVersion::V4, false), (IpVersion::V6, true)];

/// `to = "host"` lines: per source group and IP version.
fn host_line_rules(f: &Flow) -> Vec<Rule> {
    if !matches!(f.to_peers, Peers::Host) || !f.from_peers.is_containers() {
        return vec![];
    }
    let mut out = Vec::new();
    for from in &f.from {
        let comment = format!("allow {from} -> host {} ({})", ports_text(f), f.origin);
        for (ip, v6) in VERSIONS {
            for pm in port_matches(f, ip) {
                let mut m = vec![Match::SaddrInSet {
                    ip,
                    iface: IfSide::Iif,
                    set: container_set(from, v6),
                }];
                m.extend(pm);
                out.push(Rule::new(m, Verdict::Accept, comment.clone()).counted());
            }
        }
    }
    out
}

/// `to = "world"` or addresses: per source group and IP version.
fn egress_line_rules(f: &Flow) -> Vec<Rule> {
    if !matches!(f.to_peers, Peers::World | Peers::Nets(_)) || !f.from_peers.is_containers() {
        return vec![];
    }
    let to = f.to.join(",");
    let mut out = Vec::new();
    for from in &f.from {
        let comment = format!("allow {from} -> {to} {} ({})", ports_text(f), f.origin);
        for (ip, v6) in VERSIONS {
            let dst = match &f.to_peers {
                Peers::World => None,
                p => match nets_of(p, v6) {
                    Some(n) => Some(Match::DaddrNets { ip, nets: n }),
                    None => continue,
                },
            };
            for pm in port_matches(f, ip) {
                let mut m: Vec<Match> = dst.clone().into_iter().collect();
                m.push(Match::SaddrInSet {
                    ip,
                    iface: IfSide::Iif,
                    set: container_set(from, v6),
                });
                m.extend(pm);
                out.push(Rule::new(m, Verdict::Accept, comment.clone()).counted());
            }
        }
    }
    out
}

/// `from = "world"` or addresses, to groups: per destination group and IP version.
fn ingress_line_rules(f: &Flow) -> Vec<Rule> {
    if !matches!(f.from_peers, Peers::World | Peers::Nets(_))
        || !matches!(f.to_peers, Peers::Groups(_))
    {
        return vec![];
    }
    let from = f.from.join(",");
    let mut out = Vec::new();
    for to in &f.to {
        let comment = format!("allow {from} -> {to} {} ({})", ports_text(f), f.origin);
        for (ip, v6) in VERSIONS {
            let src = match &f.from_peers {
                Peers::World => None,
                p => match nets_of(p, v6) {
                    Some(n) => Some(Match::SaddrNets { ip, nets: n }),
                    None => continue,
                },
            };
            for pm in port_matches(f, ip) {
                let mut m = vec![Match::DaddrInSet {
                    ip,
                    iface: IfSide::Oif,
                    set: container_set(to, v6),
                }];
                m.extend(src.clone());
                m.extend(pm);
                out.push(Rule::new(m, Verdict::Accept, comment.clone()).counted());
            }
        }
    }
    out
}
