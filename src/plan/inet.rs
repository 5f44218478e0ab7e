//! The `inet` table: which bridges are managed, who is in which group, and the allow
//! rules between groups, each in the chain of its source.

use super::ruleset::*;
use super::{Flow, LOG_PREFIX, PlannedNetwork, edges, names};
use crate::policy::{Policy, Proto};
use std::collections::{BTreeMap, BTreeSet};

/// The whole `inet` table, its container elements not yet filled in.
pub(super) fn table(
    policy: &Policy,
    networks: &BTreeMap<String, PlannedNetwork>,
    flows: &[Flow],
    engine: crate::inventory::Engine,
) -> Table {
    let mut sets = sets(policy, networks);
    let by_source = source_chains(flows);
    for s in port_sets(&by_source) {
        sets.entry(s.name.clone()).or_insert(s);
    }
    let isolate = isolate_rules(policy, &by_source);
    Table {
        family: Family::Inet,
        sets: sets.into_values().collect(),
        chains: vec![
            Chain {
                name: names::FORWARD.into(),
                base: Some(BaseChain {
                    hook: Hook::Forward,
                    priority: -10,
                }),
                rules: forward_rules(engine)
                    .into_iter()
                    .chain(edges::forward_rules(policy, engine))
                    .collect(),
            },
            Chain {
                name: names::ISOLATE.into(),
                base: None,
                rules: isolate,
            },
        ]
        .into_iter()
        .chain(policy.settings.admission_hold.then(|| Chain {
            name: names::HOLD.into(),
            base: None,
            rules: hold_rules(policy.settings.admission_queue),
        }))
        .chain(edges::chains(policy, flows))
        .chain(by_source.into_iter().map(|(src, rules)| Chain {
            name: names::source_chain(&src.set),
            base: None,
            rules,
        }))
        .collect(),
    }
}

/// The table's sets by name: the bridge sets filled from the networks, the address sets
/// (every managed container, one pair per group) still empty.
fn sets(policy: &Policy, networks: &BTreeMap<String, PlannedNetwork>) -> BTreeMap<String, SetDef> {
    let mut sets: BTreeMap<String, SetDef> = BTreeMap::new();
    let mut new_set = |name: &str, kind: SetKind| {
        sets.insert(
            name.to_string(),
            SetDef {
                name: name.to_string(),
                kind,
                elements: BTreeSet::new(),
            },
        );
    };
    new_set(names::BRIDGE_PAIRS, SetKind::IfnamePair);
    new_set(names::UNMANAGED, SetKind::Ifname);
    new_set(names::MANAGED, SetKind::Ifname);
    let engine_set = edges::needs_engine_set(policy);
    if engine_set {
        new_set(names::ENGINE, SetKind::Ifname);
    }
    new_set(names::ALL_4, SetKind::IfnameV4);
    new_set(names::ALL_6, SetKind::IfnameV6);
    for g in policy.groups.keys() {
        new_set(&names::group_set(g, false), SetKind::IfnameV4);
        new_set(&names::group_set(g, true), SetKind::IfnameV6);
    }
    // Published ports: every managed container's mappings, and per line target those of
    // its containers on its ports (`plan::published_elements` fills them).
    for [w, v4, v6] in std::iter::once([
        names::PUBLISHED_W.to_string(),
        names::PUBLISHED_4.to_string(),
        names::PUBLISHED_6.to_string(),
    ])
    .chain(edges::published_targets(policy).iter().map(|t| t.sets()))
    {
        new_set(&w, SetKind::ProtoPort);
        new_set(&v4, SetKind::V4ProtoPort);
        new_set(&v6, SetKind::V6ProtoPort);
    }
    let mut add = |set: &str, e: Elem| {
        if let Some(s) = sets.get_mut(set) {
            s.elements.insert(e);
        }
    };
    for n in networks.values() {
        if let Some(b) = &n.bridge
            && crate::inventory::exact_ifname(b)
        {
            add(names::ENGINE, Elem::Ifname(b.clone()));
        }
        match (&n.bridge, n.managed) {
            (Some(b), true) => {
                add(names::BRIDGE_PAIRS, Elem::IfnamePair(b.clone(), b.clone()));
                add(names::MANAGED, Elem::Ifname(b.clone()));
            }
            // A name nft would read as a pattern stays out: a Docker-shaped one is then
            // judged by the default-deny rule for unknown bridges (fail closed).
            (Some(b), false) if crate::inventory::exact_ifname(b) => {
                add(names::UNMANAGED, Elem::Ifname(b.clone()))
            }
            (Some(_), false) => {}
            (None, _) => {}
        }
    }
    sets
}

/// Allow rules sit in one chain per source set, reached from one dispatch rule each:
/// a new connection walks the dispatch rules and then only the lines whose source it
/// is in, not every line of the policy.
fn source_chains(flows: &[Flow]) -> Vec<(Source, Vec<Rule>)> {
    let mut by_source: Vec<(Source, Vec<Rule>)> = Vec::new();
    for f in flows.iter().filter(|f| f.between_containers()) {
        for (src, rule) in flow_rules(f) {
            match by_source.iter_mut().find(|(s, _)| *s == src) {
                Some((_, rules)) => rules.push(rule),
                None => by_source.push((src, vec![rule])),
            }
        }
    }
    // IPv4 dispatch first: one version's packets never match the other's rules.
    by_source.sort_by_key(|(src, _)| src.ip);
    by_source
}

/// The named port sets the allow rules refer to, one per distinct list of ranges.
fn port_sets(by_source: &[(Source, Vec<Rule>)]) -> Vec<SetDef> {
    let mut out: Vec<SetDef> = Vec::new();
    for m in by_source
        .iter()
        .flat_map(|(_, rules)| rules.iter().flat_map(|r| &r.matches))
    {
        if let Match::L4 {
            dports,
            set: Some(name),
            ..
        } = m
        {
            if !out.iter().any(|s| s.name == *name) {
                out.push(SetDef {
                    name: name.clone(),
                    kind: SetKind::Ports,
                    elements: dports.iter().map(|(lo, hi)| Elem::Port(*lo, *hi)).collect(),
                });
            }
        }
    }
    out
}

/// `isolate`: what every packet between two ports of a managed bridge goes through.
fn isolate_rules(policy: &Policy, by_source: &[(Source, Vec<Rule>)]) -> Vec<Rule> {
    // Replies are accepted in `forward` itself, before any lookup (see `forward_rules`).
    let mut isolate = vec![
        Rule::new(
            vec![Match::CtState(vec!["invalid".into()])],
            Verdict::Drop,
            "invalid",
        )
        .counted(),
        Rule::new(
            vec![Match::Icmpv6Types(
                [
                    // Router solicitations and advertisements stay out: a container
                    // must not become its neighbours' IPv6 router.
                    "nd-neighbor-solicit",
                    "nd-neighbor-advert",
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
            "IPv6 neighbour discovery",
        ),
    ];
    for (src, _) in by_source {
        let version = match src.ip {
            IpVersion::V4 => "IPv4",
            IpVersion::V6 => "IPv6",
        };
        isolate.push(Rule::new(
            vec![Match::SaddrInSet {
                ip: src.ip,
                iface: IfSide::Iif,
                set: src.set.clone(),
            }],
            Verdict::Jump(names::source_chain(&src.set)),
            format!("allow lines from {}, {version}", src.group),
        ));
    }
    if policy.settings.admission_hold {
        isolate.push(Rule::new(
            vec![],
            Verdict::Jump(names::HOLD.into()),
            "not admitted yet: held for the daemon",
        ));
    }
    isolate.extend(deny_counter_rules(policy));
    if policy.settings.log_denied {
        isolate.push(Rule {
            matches: vec![],
            counter: false,
            log_prefix: Some(LOG_PREFIX.to_string()),
            verdict: Verdict::Continue,
            comment: "log denied".into(),
        });
    }
    isolate.push(
        Rule::new(
            vec![],
            Verdict::Drop,
            "default deny between managed containers",
        )
        .counted(),
    );

    isolate
}

/// Packets that reach the end of `isolate` (no line allowed them) come here. Between two
/// admitted endpoints they are denied: back to `isolate` and its drop. Anything else has
/// a source or destination netguard has not admitted yet, most often a container whose
/// process started before its admission was committed: it goes to the daemon's queue,
/// which holds it until the admission (then the kernel judges it again, with the rules
/// that are live by then) or drops it after `HOLD_MS`. No `bypass`: with no daemon
/// listening the kernel drops it, as `isolate` would. The limit keeps a container that is
/// never admitted from keeping the daemon busy; what exceeds it is dropped at once.
fn hold_rules(queue: u16) -> Vec<Rule> {
    let admitted = |ip: IpVersion, set: &str| {
        vec![
            Match::SaddrInSet {
                ip,
                iface: IfSide::Iif,
                set: set.into(),
            },
            Match::DaddrInSet {
                ip,
                iface: IfSide::Oif,
                set: set.into(),
            },
        ]
    };
    vec![
        Rule::new(
            admitted(IpVersion::V4, names::ALL_4),
            Verdict::Return,
            "both admitted, IPv4",
        ),
        Rule::new(
            admitted(IpVersion::V6, names::ALL_6),
            Verdict::Return,
            "both admitted, IPv6",
        ),
        Rule::new(
            vec![Match::Limit {
                rate: HOLD_RATE,
                burst: HOLD_RATE,
            }],
            Verdict::Queue(queue),
            HOLD_COMMENT,
        )
        .counted(),
    ]
}

/// The comment of the hold rule (read back by `metrics`).
pub const HOLD_COMMENT: &str = "held until admitted";

/// Packets per second the daemon is sent to hold, all containers together.
pub const HOLD_RATE: u32 = 500;

/// Above this many groups the per-pair deny counters are left out (they cost
/// 2 × groups² rules, evaluated only for packets about to be dropped).
pub const DENY_COUNTER_MAX_GROUPS: usize = 16;

/// Comment prefix of the per-group-pair deny counters (read back by `metrics`).
pub const DENY_COUNTER_PREFIX: &str = "denied ";

/// Counted rules without verdict, one per (source group, destination group, IP version),
/// just before the final drop: only packets about to be denied get here, so they count
/// denials per group pair for the metrics (`netguard_denied_packets_total`). A container
/// in several groups counts in each of its pairs.
fn deny_counter_rules(policy: &Policy) -> Vec<Rule> {
    if policy.groups.len() > DENY_COUNTER_MAX_GROUPS {
        return vec![];
    }
    let mut rules = Vec::new();
    for from in policy.groups.keys() {
        for to in policy.groups.keys() {
            for (ip, v6) in [(IpVersion::V4, false), (IpVersion::V6, true)] {
                rules.push(Rule {
                    matches: vec![
                        Match::SaddrInSet {
                            ip,
                            iface: IfSide::Iif,
                            set: names::group_set(from, v6),
                        },
                        Match::DaddrInSet {
                            ip,
                            iface: IfSide::Oif,
                            set: names::group_set(to, v6),
                        },
                    ],
                    counter: true,
                    log_prefix: None,
                    verdict: Verdict::Continue,
                    comment: format!("{DENY_COUNTER_PREFIX}{from} -> {to}"),
                });
            }
        }
    }
    rules
}

/// The forward hook's entry: replies first, then managed bridges, then the bridges of the
/// engine's shape that netguard does not know yet (`Engine::bridge_patterns`).
fn forward_rules(engine: crate::inventory::Engine) -> Vec<Rule> {
    let mut rules = vec![
        // First, before the bridge lookup and the jump: nearly every packet belongs to a
        // connection already admitted, and accepting it in this base chain changes nothing
        // (its policy is accept too) while sparing every such packet the rest of the path.
        Rule::new(
            vec![Match::CtState(vec!["established".into(), "related".into()])],
            Verdict::Accept,
            "replies to allowed connections",
        ),
        Rule::new(
            vec![Match::IfPairIn(names::BRIDGE_PAIRS.into())],
            Verdict::Jump(names::ISOLATE.into()),
            "traffic between two ports of one managed bridge",
        ),
    ];
    for &p in engine.bridge_patterns() {
        rules.push(Rule::new(
            vec![
                Match::IifPattern(p.into()),
                Match::OifPattern(p.into()),
                Match::IifNotInSet(names::UNMANAGED.into()),
            ],
            Verdict::Jump(names::ISOLATE.into()),
            format!("{p} bridge netguard does not know yet: default deny"),
        ));
    }
    rules
}

/// The source side of an allow rule: the set `isolate` dispatches on, and the chain it
/// jumps to holds the rule.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Source {
    ip: IpVersion,
    /// The group name as the policy wrote it (`*` for any managed container).
    group: String,
    set: String,
}

/// The rules of one allow entry, each with the source whose chain holds it.
fn flow_rules(f: &Flow) -> Vec<(Source, Rule)> {
    let set_for = |g: &str, v6: bool| match (g, v6) {
        ("*", false) => names::ALL_4.to_string(),
        ("*", true) => names::ALL_6.to_string(),
        (g, v6) => names::group_set(g, v6),
    };
    let ports_text = match &f.ports {
        None => "all".to_string(),
        Some(p) => p
            .iter()
            .map(|p| p.to_string())
            .collect::<Vec<_>>()
            .join(","),
    };
    // Per protocol, the port ranges of this entry; ICMP has none.
    let mut by_proto: BTreeMap<Proto, Vec<(u16, u16)>> = BTreeMap::new();
    if let Some(ports) = &f.ports {
        for p in ports {
            by_proto.entry(p.proto).or_default().push((p.low, p.high));
        }
    }
    let mut rules = Vec::new();
    for from in &f.from {
        for to in &f.to {
            let comment = format!("allow {from} -> {to} {ports_text} ({})", f.origin);
            for (ip, v6) in [(IpVersion::V4, false), (IpVersion::V6, true)] {
                let src = Source {
                    ip,
                    group: from.clone(),
                    set: set_for(from, v6),
                };
                // Destination first: in the source's chain the source lookup always
                // matches, so a rule for another destination costs one lookup. The source
                // stays in the rule so that it reads alone as what it permits.
                let base = vec![
                    Match::DaddrInSet {
                        ip,
                        iface: IfSide::Oif,
                        set: set_for(to, v6),
                    },
                    Match::SaddrInSet {
                        ip,
                        iface: IfSide::Iif,
                        set: src.set.clone(),
                    },
                ];
                if f.ports.is_none() {
                    rules.push((
                        src,
                        Rule::new(base.clone(), Verdict::Accept, comment.clone()).counted(),
                    ));
                    continue;
                }
                for (proto, ranges) in &by_proto {
                    let mut m = base.clone();
                    if *proto == Proto::Icmp {
                        m.push(Match::IcmpEcho(ip));
                    } else {
                        let r = merge_ranges(ranges.clone());
                        let set = (r.len() > 1).then(|| port_set_name(&r));
                        m.push(Match::L4 {
                            proto: proto.as_str().into(),
                            dports: r,
                            set,
                        });
                    }
                    rules.push((
                        src.clone(),
                        Rule::new(m, Verdict::Accept, comment.clone()).counted(),
                    ));
                }
            }
        }
    }
    rules
}
