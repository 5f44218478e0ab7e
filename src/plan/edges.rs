//! The edges of the managed networks (docs/policy.md, "Edges"): managed containers to this
//! host (`input` hook), to the outside (`egress`), and from the outside (`ingress`).
//!
//! Containers stay set elements: these rules name only the group sets, the bridge sets and
//! the addresses the policy itself writes, so a container event changes no rule here.
//! Every chain is drop-only: what it does not drop goes on to Docker's own rules.

use super::ruleset::*;
use super::{Flow, names};
use crate::policy::{EdgeDefault, Peers, Policy, Proto};
use std::collections::BTreeMap;
use std::net::IpAddr;

/// Kernel log prefixes of the edges' denials (`netguard log` names the edge by them).
pub const LOG_PREFIX_HOST: &str = "netguard-deny-host ";
pub const LOG_PREFIX_EGRESS: &str = "netguard-deny-egress ";
pub const LOG_PREFIX_INGRESS: &str = "netguard-deny-ingress ";

/// Comment prefix of the edges' final drop rules; the counter of each is read back by
/// `metrics` as `netguard_denied_total{edge="…"}`.
pub const EDGE_DENY_PREFIX: &str = "edge deny ";

/// The edges as they appear in metrics labels, with the chain that judges each.
pub const EDGES: [(&str, &str); 3] = [
    ("host", names::INPUT),
    ("egress", names::EGRESS),
    ("ingress", names::INGRESS),
];

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

/// The edge chains: `input` (a base chain) when `host = "deny"`, `egress` and `ingress`
/// when theirs is.
pub(super) fn chains(policy: &Policy, flows: &[Flow]) -> Vec<Chain> {
    let mut out = Vec::new();
    if policy.settings.host == EdgeDefault::Deny {
        out.push(Chain {
            name: names::INPUT.into(),
            base: Some(BaseChain {
                hook: Hook::Input,
                priority: -10,
            }),
            rules: input_rules(policy, flows),
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
    // Cheap exits first: replies, then everything not from a managed bridge (the host's
    // own traffic, the uplink), then the neighbour discovery every IPv6 endpoint needs
    // with its gateway.
    let head = vec![
        Rule::new(
            vec![Match::CtState(vec!["established".into(), "related".into()])],
            Verdict::Accept,
            "replies to allowed connections",
        ),
        Rule::new(
            vec![Match::IifNotInSet(names::MANAGED.into())],
            Verdict::Accept,
            "not from a managed bridge",
        ),
        Rule::new(
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
        ),
    ];
    let lines = flows.iter().flat_map(host_line_rules).collect();
    // Only what is addressed to this host: broadcasts and multicast are not connections
    // to one of its services.
    judged(
        policy,
        lines,
        "host",
        LOG_PREFIX_HOST,
        vec![Match::FibDaddrLocal],
    )
    .into_iter()
    .fold(head, |mut acc, r| {
        acc.push(r);
        acc
    })
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
