//! The pure core: (policy, inventory) → who belongs to which group, which flows are
//! allowed, and the exact nftables objects that enforce it. No I/O, deterministic.

pub mod ruleset;

use crate::inventory::{Container, Inventory, Unisolable};
use crate::policy::{Allow, Peers, Policy, PortSpec, Proto, Selector};
use ruleset::*;
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Prefix of kernel log lines for denied connections (contract, docs/policy.md).
pub const LOG_PREFIX: &str = "netguard-deny ";

/// Names of netguard's sets. Kept here so the plan, status and tests agree on them.
pub mod names {
    pub const BRIDGE_PAIRS: &str = "bridges";
    pub const UNMANAGED: &str = "unmanaged";
    pub const ALL_4: &str = "all_4";
    pub const ALL_6: &str = "all_6";
    pub const VETHS: &str = "veths";
    pub const BIND_4: &str = "bind_4";
    pub const BIND_6: &str = "bind_6";
    pub const ADDRS_4: &str = "addrs_4";
    pub const ADDRS_6: &str = "addrs_6";
    pub const FORWARD: &str = "forward";
    pub const ISOLATE: &str = "isolate";
    pub const PREROUTING: &str = "prerouting";
    pub const POSTROUTING: &str = "postrouting";

    pub fn group_set(group: &str, v6: bool) -> String {
        format!("g_{group}_{}", if v6 { 6 } else { 4 })
    }

    /// The chain holding the allow rules whose source is `set` (`isolate` jumps to it).
    pub fn source_chain(set: &str) -> String {
        format!("from_{set}")
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Plan {
    pub networks: Vec<PlannedNetwork>,
    pub containers: Vec<PlannedContainer>,
    pub unisolable: Vec<Unisolable>,
    pub flows: Vec<Flow>,
    pub ruleset: Ruleset,
    pub warnings: Vec<String>,
}

impl Plan {
    /// The host bridges of the managed networks, sorted, each once: those whose nf_call
    /// switches `apply` and the daemon turn on, and whose health `status` reports.
    pub fn managed_bridges(&self) -> Vec<String> {
        let mut b: Vec<String> = self
            .networks
            .iter()
            .filter(|n| n.managed)
            .filter_map(|n| n.bridge.clone())
            .collect();
        b.sort();
        b.dedup();
        b
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PlannedNetwork {
    pub name: String,
    pub bridge: Option<String>,
    pub driver: String,
    pub managed: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PlannedContainer {
    pub id: String,
    pub name: String,
    /// Has an endpoint on a managed network.
    pub managed: bool,
    pub groups: Vec<String>,
    pub endpoints: Vec<PlannedEndpoint>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PlannedEndpoint {
    pub network: String,
    pub bridge: String,
    pub veth: Option<String>,
    pub ipv4: Option<Ipv4Addr>,
    pub ipv6: Option<Ipv6Addr>,
    pub managed: bool,
    /// Its addresses are in netguard's sets. A managed endpoint that is not admitted
    /// reaches no one (fail closed); `reason` says why.
    pub admitted: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl PlannedEndpoint {
    /// Its IPv4 and IPv6 addresses, whichever it has.
    pub fn addresses(&self) -> impl Iterator<Item = IpAddr> + use<> {
        self.ipv4
            .map(IpAddr::V4)
            .into_iter()
            .chain(self.ipv6.map(IpAddr::V6))
    }
}

/// One allow entry, resolved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Flow {
    /// Index of the allow entry in the policy.
    pub index: usize,
    /// `FILE:LINE` of the entry.
    pub origin: String,
    /// Group names, or `["*"]`.
    pub from: Vec<String>,
    pub to: Vec<String>,
    pub ports: Option<Vec<PortSpec>>,
    pub comment: Option<String>,
}

/// Does `sel` match container `c`? All keys given in the selector must match.
pub fn selector_matches(sel: &Selector, c: &Container) -> bool {
    sel.name.as_ref().is_none_or(|g| g.matches(&c.name))
        && sel.image.as_ref().is_none_or(|g| g.matches(&c.image))
        && sel
            .labels
            .iter()
            .all(|(k, g)| c.labels.get(k).is_some_and(|v| g.matches(v)))
        && sel
            .network
            .as_ref()
            .is_none_or(|g| c.endpoints.iter().any(|e| g.matches(&e.network)))
}

/// Groups `c` belongs to, sorted.
pub fn groups_of(policy: &Policy, c: &Container) -> Vec<String> {
    policy
        .groups
        .values()
        .filter(|g| g.selectors.iter().any(|s| selector_matches(s, c)))
        .map(|g| g.name.clone())
        .collect()
}

fn peers_names(p: &Peers) -> Vec<String> {
    match p {
        Peers::Any => vec!["*".to_string()],
        Peers::Groups(g) => g.clone(),
    }
}

fn origin(a: &Allow) -> String {
    let file = a
        .loc
        .file
        .file_name()
        .map(|f| f.to_string_lossy().into_owned());
    format!("{}:{}", file.unwrap_or_default(), a.loc.line)
}

/// Networks: those the source lists plus those only endpoints mention, managed or not.
pub fn plan_networks(policy: &Policy, inventory: &Inventory) -> BTreeMap<String, PlannedNetwork> {
    let mut networks: BTreeMap<String, PlannedNetwork> = BTreeMap::new();
    for n in &inventory.networks {
        networks.insert(
            n.name.clone(),
            PlannedNetwork {
                name: n.name.clone(),
                bridge: n.bridge.clone(),
                driver: n.driver.clone(),
                managed: manageable(policy, &n.name, &n.driver, n.bridge.as_deref()),
            },
        );
    }
    for ep in inventory.containers.iter().flat_map(|c| &c.endpoints) {
        networks
            .entry(ep.network.clone())
            .or_insert_with(|| implied_network(policy, ep));
    }

    networks
}

/// A network known only through an endpoint on it (an inventory file names no networks):
/// a bridge network, managed when the policy's globs match its name.
pub fn implied_network(policy: &Policy, ep: &crate::inventory::Endpoint) -> PlannedNetwork {
    PlannedNetwork {
        name: ep.network.clone(),
        bridge: Some(ep.bridge.clone()),
        driver: "bridge".into(),
        managed: manageable(policy, &ep.network, "bridge", Some(&ep.bridge)),
    }
}

/// A network netguard manages: a bridge network the policy selects, on a bridge whose name
/// nftables matches exactly (see `inventory::exact_ifname`).
fn manageable(policy: &Policy, name: &str, driver: &str, bridge: Option<&str>) -> bool {
    driver == "bridge"
        && bridge.is_some_and(crate::inventory::exact_ifname)
        && policy.settings.manages_network(name)
}

/// The plan. Pure and deterministic: equal inputs give equal output.
pub fn plan(policy: &Policy, inventory: &Inventory) -> Plan {
    let mut warnings = Vec::new();

    let networks = plan_networks(policy, inventory);
    for n in networks.values() {
        if let Some(b) = &n.bridge
            && n.driver == "bridge"
            && policy.settings.manages_network(&n.name)
            && !crate::inventory::exact_ifname(b)
        {
            warnings.push(format!(
                "network {}: bridge name {b:?} cannot be matched exactly by nftables \
                 (letters, digits, '-', '_', '.'): left unmanaged",
                n.name
            ));
        }
    }
    let claims = claims(&inventory.containers);
    let mut containers = Vec::new();
    for c in &inventory.containers {
        let pc = plan_container(policy, &networks, &claims, c);
        for ep in &pc.endpoints {
            if let Some(r) = &ep.reason {
                warnings.push(format!("{} on {}: not admitted: {r}", c.name, ep.network));
            }
        }
        containers.push(pc);
    }

    let flows: Vec<Flow> = policy
        .allows
        .iter()
        .enumerate()
        .map(|(index, a)| Flow {
            index,
            origin: origin(a),
            from: peers_names(&a.from),
            to: peers_names(&a.to),
            ports: a.ports.clone(),
            comment: a.comment.clone(),
        })
        .collect();

    let ruleset = build_ruleset(policy, &networks, &containers, &flows, inventory.engine);
    Plan {
        networks: networks.into_values().collect(),
        containers,
        unisolable: inventory.unisolable.clone(),
        flows,
        ruleset,
        warnings,
    }
}

/// Who claims each address on each bridge. The owner is the veth: a container started with
/// `--network container:X` shares X's veth, and so X's endpoint, and is no rival.
pub type Claims = BTreeMap<(String, IpAddr), BTreeSet<String>>;

/// The claims one container makes: ((bridge, address), owner).
pub fn claims_of(c: &Container) -> Vec<((String, IpAddr), String)> {
    let mut out = Vec::new();
    for ep in &c.endpoints {
        let owner = ep
            .veth
            .clone()
            .unwrap_or_else(|| format!("container {}", c.id));
        for a in ep.addresses() {
            out.push(((ep.bridge.clone(), a), owner.clone()));
        }
    }
    out
}

pub fn claims(containers: &[Container]) -> Claims {
    let mut m = Claims::new();
    for c in containers {
        for (k, owner) in claims_of(c) {
            m.entry(k).or_default().insert(owner);
        }
    }
    m
}

/// One container's groups and endpoints, admitted or not and why. Pure; the daemon calls it
/// for the containers an event touches, `plan` for all of them.
pub fn plan_container(
    policy: &Policy,
    networks: &BTreeMap<String, PlannedNetwork>,
    claims: &Claims,
    c: &Container,
) -> PlannedContainer {
    // Addresses claimed by two owners on one bridge cannot be bound to either: admit
    // neither (fail closed) rather than guess.
    let contested = |bridge: &str, a: IpAddr| {
        claims
            .get(&(bridge.to_string(), a))
            .is_some_and(|o| o.len() > 1)
    };
    let mut endpoints = Vec::new();
    for ep in &c.endpoints {
        let managed = networks.get(&ep.network).is_some_and(|n| n.managed);
        let reason = if !managed {
            None
        } else if policy.settings.anti_spoofing && ep.veth.is_none() {
            Some("host-side veth unknown: cannot bind its addresses".to_string())
        } else if let Some(v) = ep
            .veth
            .as_deref()
            .filter(|v| !crate::inventory::exact_ifname(v))
        {
            Some(format!(
                "host-side veth {v:?} cannot be matched exactly by nftables"
            ))
        } else if ep
            .ipv4
            .is_some_and(|a| contested(&ep.bridge, IpAddr::V4(a)))
            || ep
                .ipv6
                .is_some_and(|a| contested(&ep.bridge, IpAddr::V6(a)))
        {
            Some("address claimed by another endpoint on the same bridge".to_string())
        } else {
            None
        };
        endpoints.push(PlannedEndpoint {
            network: ep.network.clone(),
            bridge: ep.bridge.clone(),
            veth: ep.veth.clone(),
            ipv4: ep.ipv4,
            ipv6: ep.ipv6,
            managed,
            admitted: managed && reason.is_none(),
            reason,
        });
    }
    PlannedContainer {
        id: c.id.clone(),
        name: c.name.clone(),
        managed: endpoints.iter().any(|e| e.managed),
        groups: groups_of(policy, c),
        endpoints,
    }
}

/// The set elements one planned container contributes: (table, set, element). Two
/// containers may contribute the same element (a shared endpoint).
pub fn container_elements(
    pc: &PlannedContainer,
    anti_spoofing: bool,
) -> Vec<(Family, String, Elem)> {
    let mut out = Vec::new();
    for ep in pc.endpoints.iter().filter(|e| e.admitted) {
        let targets = std::iter::once((names::ALL_4.to_string(), names::ALL_6.to_string())).chain(
            pc.groups
                .iter()
                .map(|g| (names::group_set(g, false), names::group_set(g, true))),
        );
        for (s4, s6) in targets {
            if let Some(a) = ep.ipv4 {
                out.push((Family::Inet, s4, Elem::IfnameV4(ep.bridge.clone(), a)));
            }
            if let Some(a) = ep.ipv6 {
                out.push((Family::Inet, s6, Elem::IfnameV6(ep.bridge.clone(), a)));
            }
        }
        if let (true, Some(v)) = (anti_spoofing, &ep.veth) {
            out.push((Family::Bridge, names::VETHS.into(), Elem::Ifname(v.clone())));
            if let Some(a) = ep.ipv4 {
                out.push((
                    Family::Bridge,
                    names::BIND_4.into(),
                    Elem::IfnameV4(v.clone(), a),
                ));
                out.push((Family::Bridge, names::ADDRS_4.into(), Elem::V4(a)));
            }
            if let Some(a) = ep.ipv6 {
                out.push((
                    Family::Bridge,
                    names::BIND_6.into(),
                    Elem::IfnameV6(v.clone(), a),
                ));
                out.push((Family::Bridge, names::ADDRS_6.into(), Elem::V6(a)));
            }
        }
    }
    out
}

fn build_ruleset(
    policy: &Policy,
    networks: &BTreeMap<String, PlannedNetwork>,
    containers: &[PlannedContainer],
    flows: &[Flow],
    engine: crate::inventory::Engine,
) -> Ruleset {
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
    new_set(names::ALL_4, SetKind::IfnameV4);
    new_set(names::ALL_6, SetKind::IfnameV6);
    for g in policy.groups.keys() {
        new_set(&names::group_set(g, false), SetKind::IfnameV4);
        new_set(&names::group_set(g, true), SetKind::IfnameV6);
    }
    let mut add = |set: &str, e: Elem| {
        if let Some(s) = sets.get_mut(set) {
            s.elements.insert(e);
        }
    };
    for n in networks.values() {
        match (&n.bridge, n.managed) {
            (Some(b), true) => add(names::BRIDGE_PAIRS, Elem::IfnamePair(b.clone(), b.clone())),
            // A name nft would read as a pattern stays out: a Docker-shaped one is then
            // judged by the default-deny rule for unknown bridges (fail closed).
            (Some(b), false) if crate::inventory::exact_ifname(b) => {
                add(names::UNMANAGED, Elem::Ifname(b.clone()))
            }
            (Some(_), false) => {}
            (None, _) => {}
        }
    }
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
    // Allow rules sit in one chain per source set, reached from one dispatch rule each:
    // a new connection walks the dispatch rules and then only the lines whose source it
    // is in, not every line of the policy.
    let mut by_source: Vec<(Source, Vec<Rule>)> = Vec::new();
    for f in flows {
        for (src, rule) in flow_rules(f) {
            match by_source.iter_mut().find(|(s, _)| *s == src) {
                Some((_, rules)) => rules.push(rule),
                None => by_source.push((src, vec![rule])),
            }
        }
    }
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
            sets.entry(name.clone()).or_insert_with(|| SetDef {
                name: name.clone(),
                kind: SetKind::Ports,
                elements: dports.iter().map(|(lo, hi)| Elem::Port(*lo, *hi)).collect(),
            });
        }
    }
    // IPv4 dispatch first: one version's packets never match the other's rules.
    by_source.sort_by_key(|(src, _)| src.ip);
    for (src, _) in &by_source {
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

    let inet = Table {
        family: Family::Inet,
        sets: sets.into_values().collect(),
        chains: vec![
            Chain {
                name: names::FORWARD.into(),
                base: Some(BaseChain {
                    hook: Hook::Forward,
                    priority: -10,
                }),
                rules: forward_rules(engine),
            },
            Chain {
                name: names::ISOLATE.into(),
                base: None,
                rules: isolate,
            },
        ]
        .into_iter()
        .chain(by_source.into_iter().map(|(src, rules)| Chain {
            name: names::source_chain(&src.set),
            base: None,
            rules,
        }))
        .collect(),
    };

    let mut tables = vec![inet];
    if policy.settings.anti_spoofing {
        tables.push(bridge_table());
    }
    // Container elements last, into whichever table holds the set.
    for c in containers {
        for (family, set, e) in container_elements(c, policy.settings.anti_spoofing) {
            if let Some(s) = tables
                .iter_mut()
                .find(|t| t.family == family)
                .and_then(|t| t.sets.iter_mut().find(|s| s.name == set))
            {
                s.elements.insert(e);
            }
        }
    }
    Ruleset { tables }
}

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

/// Binds each admitted address to its veth, in both directions: a veth may only send from
/// its own addresses, and a bound address is only ever delivered to its own veth.
fn bridge_table() -> Table {
    // Sorted by name, like the inet table's sets.
    let sets = [
        (names::ADDRS_4, SetKind::V4),
        (names::ADDRS_6, SetKind::V6),
        (names::BIND_4, SetKind::IfnameV4),
        (names::BIND_6, SetKind::IfnameV6),
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
    let mut pre = bound_source(Ip, V4, names::BIND_4, names::ADDRS_4);
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

/// Does allow entry `f` let a container in `from_groups` open a `proto`/`port` connection to
/// one in `to_groups`? (Both managed, admitted and on one network: the caller's part.)
pub fn flow_permits(
    f: &Flow,
    from_groups: &[String],
    to_groups: &[String],
    proto: Option<Proto>,
    port: u16,
) -> bool {
    let side =
        |names: &[String], groups: &[String]| names.iter().any(|n| n == "*" || groups.contains(n));
    side(&f.from, from_groups)
        && side(&f.to, to_groups)
        && match (&f.ports, proto) {
            (None, _) => true,
            (Some(specs), Some(p)) => specs.iter().any(|s| s.contains(p, port)),
            // A protocol no port spec can name is only allowed by "all traffic".
            (Some(_), None) => false,
        }
}
