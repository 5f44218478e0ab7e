//! The pure core: (policy, inventory) → who belongs to which group, which flows are
//! allowed, and the exact nftables objects that enforce it. No I/O, deterministic.

mod binding;
mod edges;
mod inet;
pub mod ruleset;

pub use edges::{
    EDGE_DENY_PREFIX, EDGES, LOG_PREFIX_EGRESS, LOG_PREFIX_HOST, LOG_PREFIX_INGRESS,
    LOG_PREFIX_PUBLISHED, PublishedTarget, published_targets,
};
pub use inet::{DENY_COUNTER_MAX_GROUPS, DENY_COUNTER_PREFIX, HOLD_COMMENT};

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
    /// Bridges of the managed networks (the edges' chains start from them).
    pub const MANAGED: &str = "managed";
    /// Every bridge of the engine's networks, managed or not: not the outside.
    pub const ENGINE: &str = "engine";
    pub const ALL_4: &str = "all_4";
    pub const ALL_6: &str = "all_6";
    pub const VETHS: &str = "veths";
    pub const BIND_4: &str = "bind_4";
    pub const BIND_6: &str = "bind_6";
    pub const ADDRS_4: &str = "addrs_4";
    pub const ADDRS_6: &str = "addrs_6";
    pub const BIND_MAC: &str = "bind_mac";
    pub const MACS: &str = "macs";
    pub const MAC_VETHS: &str = "mac_veths";
    /// `ifname . ether_addr . ipv4_addr` (and `ipv6_addr`): each endpoint's veth, bound MAC
    /// and address together, so that a genuine frame is accepted by one lookup in the
    /// bridge table's `prerouting` (src/plan/binding.rs says why that changes no verdict).
    pub const GENUINE_4: &str = "genuine_4";
    pub const GENUINE_6: &str = "genuine_6";
    pub const FORWARD: &str = "forward";
    pub const ISOLATE: &str = "isolate";
    pub const HOLD: &str = "hold";
    pub const INPUT: &str = "input";
    pub const EGRESS: &str = "egress";
    pub const INGRESS: &str = "ingress";
    pub const PREROUTING: &str = "prerouting";
    pub const POSTROUTING: &str = "postrouting";
    pub const FOREIGN_MAC: &str = "foreign_mac";
    /// IPv6 neighbour discovery from a bridge port (src/plan/binding.rs, `nd_rules`).
    pub const ND: &str = "nd";
    /// `bind_6`, `addrs_6`, `bind_mac` and `macs` again, keyed as raw transport-header
    /// bytes: what a neighbour advertisement's target and a link-layer option are looked up
    /// in (`SetKind::RawIfnameV6` says why they are separate sets).
    pub const ND_BIND_6: &str = "nd_bind_6";
    pub const ND_ADDRS_6: &str = "nd_addrs_6";
    pub const ND_BIND_MAC: &str = "nd_bind_mac";
    pub const ND_MACS: &str = "nd_macs";

    /// The raw-keyed sets and their kinds: the bridge table declares them from here, and
    /// the live readers tell them apart by name through `raw_kind`.
    pub const RAW_SETS: [(&str, super::SetKind); 4] = [
        (ND_ADDRS_6, super::SetKind::RawV6),
        (ND_BIND_6, super::SetKind::RawIfnameV6),
        (ND_BIND_MAC, super::SetKind::RawIfnameMac),
        (ND_MACS, super::SetKind::RawMac),
    ];

    /// The kind of a raw-keyed set, by its name: nft's JSON lists all of them as `integer`
    /// keys of no stated length, so the name is what tells them apart there.
    pub fn raw_kind(set: &str) -> Option<super::SetKind> {
        RAW_SETS.iter().find(|(n, _)| *n == set).map(|(_, k)| *k)
    }
    /// Every published mapping of an admitted managed container, host side, in
    /// `table inet netguard`: `inet_proto . inet_service` for a wildcard host address
    /// (every local address), `ipv4_addr . inet_proto . inet_service` and
    /// `ipv6_addr . inet_proto . inet_service` for a bound one. An element means "this
    /// published mapping is judged as the container behind it, on its container port";
    /// `diff` reads them back from the live table and the plan.
    pub const PUBLISHED_W: &str = "published_w";
    pub const PUBLISHED_4: &str = "published_4";
    pub const PUBLISHED_6: &str = "published_6";
    /// The chain judging a managed container's new connection to a published port of a
    /// managed container (`input` jumps to it for members of the sets above).
    pub const PUBLISHED: &str = "published";
    /// The chain judging an outside client of such a port when docker-proxy serves it
    /// (`ingress = "deny"`).
    pub const PUBLISHED_INGRESS: &str = "published_in";

    /// The published-port sets of one allow target (`to` containers and ports), `id` its
    /// content hash: wildcard, IPv4-bound and IPv6-bound mappings.
    pub fn published_target_sets(id: &str) -> [String; 3] {
        [
            format!("pubw_{id}"),
            format!("pub4_{id}"),
            format!("pub6_{id}"),
        ]
    }

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
    pub mac_binding: MacBinding,
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

/// Whether admitted endpoints' MACs are bound to their veths, and which groups opted out
/// (`mac_binding = false`): what `status` shows and `audit` reads.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MacBinding {
    /// On with `anti_spoofing` (the MAC is bound where the addresses are).
    pub enabled: bool,
    /// Groups whose members may send from MACs not their own, sorted.
    pub opt_out_groups: Vec<String>,
}

impl MacBinding {
    pub fn of(policy: &Policy) -> MacBinding {
        MacBinding {
            enabled: policy.settings.anti_spoofing,
            opt_out_groups: policy
                .groups
                .values()
                .filter(|g| !g.mac_binding)
                .map(|g| g.name.clone())
                .collect(),
        }
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
    /// Its published ports, as the inventory has them (for `status`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub published: Vec<crate::inventory::PublishedPort>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PlannedEndpoint {
    pub network: String,
    pub bridge: String,
    pub veth: Option<String>,
    pub ipv4: Option<Ipv4Addr>,
    pub ipv6: Option<Ipv6Addr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mac: Option<Mac>,
    /// Its veth may send only from `mac` (and no other port from it). `false` for a
    /// member of a group with `mac_binding = false` (its MAC is still its own: no other
    /// port may send from it), for an endpoint whose MAC is not known, and without
    /// `anti_spoofing`.
    pub mac_binding: bool,
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
    /// The policy's peers (the strings above are their names).
    #[serde(skip)]
    pub from_peers: Peers,
    #[serde(skip)]
    pub to_peers: Peers,
}

impl Flow {
    /// Between managed containers (both sides groups or `"*"`), as opposed to an edge line.
    pub fn between_containers(&self) -> bool {
        self.from_peers.is_containers() && self.to_peers.is_containers()
    }
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
        Peers::Host => vec!["host".to_string()],
        Peers::World => vec!["world".to_string()],
        Peers::Nets(n) => n.iter().map(|n| n.to_string()).collect(),
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
            if ep.admitted && policy.settings.anti_spoofing && ep.mac.is_none() {
                warnings.push(format!(
                    "{} on {}: MAC unknown: its addresses are bound, its MAC is not",
                    c.name, ep.network
                ));
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
            from_peers: a.from.clone(),
            to_peers: a.to.clone(),
        })
        .collect();

    let ruleset = build_ruleset(policy, &networks, &containers, &flows, inventory.engine);
    Plan {
        networks: networks.into_values().collect(),
        containers,
        unisolable: inventory.unisolable.clone(),
        flows,
        mac_binding: MacBinding::of(policy),
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
    let groups = groups_of(policy, c);
    let opted_out = groups
        .iter()
        .any(|g| policy.groups.get(g).is_some_and(|g| !g.mac_binding));
    let mut endpoints = Vec::new();
    for ep in &c.endpoints {
        let managed = networks.get(&ep.network).is_some_and(|n| n.managed);
        let mac = ep.mac.as_deref().map(str::parse::<Mac>);
        let reason = if !managed {
            None
        } else if let (true, Some(Err(e))) = (policy.settings.anti_spoofing, &mac) {
            Some(format!("cannot bind its MAC: {e}"))
        } else if let (true, Some(Ok(m))) = (policy.settings.anti_spoofing, &mac)
            && !m.is_ownable()
        {
            Some(format!("cannot bind its MAC: {m} is not a unicast address"))
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
        let admitted = managed && reason.is_none();
        let mac = mac.and_then(Result::ok);
        endpoints.push(PlannedEndpoint {
            network: ep.network.clone(),
            bridge: ep.bridge.clone(),
            veth: ep.veth.clone(),
            ipv4: ep.ipv4,
            ipv6: ep.ipv6,
            mac,
            mac_binding: admitted
                && policy.settings.anti_spoofing
                && mac.is_some()
                && ep.veth.is_some()
                && !opted_out,
            managed,
            admitted,
            reason,
        });
    }
    PlannedContainer {
        id: c.id.clone(),
        name: c.name.clone(),
        managed: endpoints.iter().any(|e| e.managed),
        groups,
        endpoints,
        published: c.published.clone(),
    }
}

/// The set elements one planned container contributes: (table, set, element). Two
/// containers may contribute the same element (a shared endpoint).
pub fn container_elements(pc: &PlannedContainer, policy: &Policy) -> Vec<(Family, String, Elem)> {
    let anti_spoofing = policy.settings.anti_spoofing;
    let mut out = published_elements(pc, policy);
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
            // An opted-out endpoint's MAC stays bound to it (no one else sends from it);
            // only its own veth is not held to it.
            if let Some(m) = ep.mac {
                out.push((
                    Family::Bridge,
                    names::BIND_MAC.into(),
                    Elem::IfnameMac(v.clone(), m),
                ));
                out.push((Family::Bridge, names::MACS.into(), Elem::Mac(m)));
                out.push((
                    Family::Bridge,
                    names::ND_BIND_MAC.into(),
                    Elem::RawIfnameMac(v.clone(), m),
                ));
                out.push((Family::Bridge, names::ND_MACS.into(), Elem::RawMac(m)));
                // Exactly the (veth, MAC) of `bind_mac` with the (veth, address) of `bind_4`
                // and `bind_6` below, never a pair of them not both there.
                if let Some(a) = ep.ipv4 {
                    out.push((
                        Family::Bridge,
                        names::GENUINE_4.into(),
                        Elem::IfnameMacV4(v.clone(), m, a),
                    ));
                }
                if let Some(a) = ep.ipv6 {
                    out.push((
                        Family::Bridge,
                        names::GENUINE_6.into(),
                        Elem::IfnameMacV6(v.clone(), m, a),
                    ));
                }
            }
            if ep.mac_binding {
                out.push((
                    Family::Bridge,
                    names::MAC_VETHS.into(),
                    Elem::Ifname(v.clone()),
                ));
            }
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
                out.push((
                    Family::Bridge,
                    names::ND_BIND_6.into(),
                    Elem::RawIfnameV6(v.clone(), a),
                ));
                out.push((Family::Bridge, names::ND_ADDRS_6.into(), Elem::RawV6(a)));
            }
        }
    }
    out
}

/// The published-port elements of one planned container: each mapping, host side, in the
/// catch-all sets when the container is managed, and in the sets of every line target that
/// holds it (its groups, its container port) when it is admitted. A managed container that
/// is not admitted is in the catch-all sets only: through its published ports it reaches
/// as little as directly (fail closed). An unmanaged container's ports are in none: they
/// count as the host.
pub fn published_elements(pc: &PlannedContainer, policy: &Policy) -> Vec<(Family, String, Elem)> {
    if pc.published.is_empty() || !pc.managed {
        return vec![];
    }
    let targets = if pc.endpoints.iter().any(|e| e.admitted) {
        published_targets(policy)
    } else {
        vec![]
    };
    let mut out = Vec::new();
    for p in &pc.published {
        let (kind, elem) = match p.host_ip {
            None => (0, Elem::ProtoPort(p.proto, p.host_port)),
            Some(IpAddr::V4(a)) => (1, Elem::V4ProtoPort(a, p.proto, p.host_port)),
            Some(IpAddr::V6(a)) => (2, Elem::V6ProtoPort(a, p.proto, p.host_port)),
        };
        let catch_all = [names::PUBLISHED_W, names::PUBLISHED_4, names::PUBLISHED_6];
        out.push((Family::Inet, catch_all[kind].to_string(), elem.clone()));
        for t in targets
            .iter()
            .filter(|t| t.holds(&pc.groups, p.proto, p.container_port))
        {
            let [w, v4, v6] = t.sets();
            let set = match kind {
                0 => w,
                1 => v4,
                _ => v6,
            };
            out.push((Family::Inet, set, elem.clone()));
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
    let mut tables = vec![inet::table(policy, networks, flows, engine)];
    if policy.settings.anti_spoofing {
        tables.push(binding::table());
    }
    fill_container_elements(&mut tables, containers, policy);
    Ruleset { tables }
}

/// Container elements last, into whichever table holds the set.
fn fill_container_elements(tables: &mut [Table], containers: &[PlannedContainer], policy: &Policy) {
    for c in containers {
        for (family, set, e) in container_elements(c, policy) {
            if let Some(s) = tables
                .iter_mut()
                .find(|t| t.family == family)
                .and_then(|t| t.sets.iter_mut().find(|s| s.name == set))
            {
                s.elements.insert(e);
            }
        }
    }
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

#[cfg(test)]
mod published_tests {
    use super::*;
    use crate::inventory::{Endpoint, PortProto, PublishedPort};
    use crate::policy::parse_policy;
    use std::path::Path;

    const POLICY: &str = r#"
[settings]
networks = ["m"]
[groups.api]
match = { name = "api*" }
[groups.db]
match = { name = "db*" }
[[allow]]
from = "api"
to = "db"
ports = ["5432/tcp"]
[[allow]]
from = ["198.51.100.0/24"]
to = "db"
ports = ["5432/tcp"]
[[allow]]
from = "api"
to = "*"
ports = ["icmp"]
[[allow]]
from = "db"
to = "*"
"#;

    fn container(name: &str, network: &str, ip: u8, published: &[&str]) -> Container {
        Container {
            id: format!("id-{name}"),
            name: name.into(),
            image: String::new(),
            labels: Default::default(),
            endpoints: vec![Endpoint {
                network: network.into(),
                network_id: None,
                bridge: format!("br-{network}"),
                veth: Some(format!("veth-{name}")),
                ipv4: Some(Ipv4Addr::new(10, 0, 0, ip)),
                ipv6: None,
                mac: Some(format!("02:00:00:00:00:{ip:02x}")),
            }],
            published: published
                .iter()
                .map(|p| p.parse::<PublishedPort>().expect("published"))
                .collect(),
        }
    }

    fn sets_of(p: &Plan, elem: &Elem) -> Vec<String> {
        p.ruleset
            .elements()
            .into_iter()
            .filter(|(_, _, e)| e == elem)
            .map(|(_, s, _)| s)
            .collect()
    }

    fn plan_of(containers: Vec<Container>) -> (Policy, Plan) {
        let policy = parse_policy(Path::new("p.toml"), POLICY).expect("policy");
        let inv = Inventory {
            containers,
            ..Default::default()
        };
        let p = plan(&policy, &inv);
        (policy, p)
    }

    #[test]
    fn targets_are_shared_by_content_and_need_a_published_protocol() {
        let policy = parse_policy(Path::new("p.toml"), POLICY).expect("policy");
        let t = published_targets(&policy);
        // api -> db 5432/tcp and 198.51.100.0/24 -> db 5432/tcp share one target; the
        // ICMP-only line has none; db -> * (all traffic) has its own.
        assert_eq!(t.len(), 2, "{t:?}");
        let db = |g: &[&str]| Peers::Groups(g.iter().map(|s| s.to_string()).collect());
        let ports = Some(vec![
            crate::policy::PortSpec::parse("5432/tcp").expect("spec"),
        ]);
        let a = PublishedTarget::of(&db(&["db", "api"]), &ports).expect("target");
        let b = PublishedTarget::of(&db(&["api", "db", "api"]), &ports).expect("target");
        assert_eq!(
            a.id, b.id,
            "group order and repeats do not name a new target"
        );
        let icmp = Some(vec![crate::policy::PortSpec::parse("icmp").expect("spec")]);
        assert!(PublishedTarget::of(&Peers::Any, &icmp).is_none());
        assert!(PublishedTarget::of(&Peers::Host, &None).is_none());
    }

    #[test]
    fn a_managed_containers_mappings_fill_the_catch_all_and_its_line_targets() {
        let (policy, p) = plan_of(vec![
            container(
                "db-1",
                "m",
                3,
                &[
                    "15432:5432/tcp",
                    "192.0.2.2:15433:5432/tcp",
                    "[2001:db8::2]:15434:5432/tcp",
                    "16000:6000/udp",
                ],
            ),
            container("api-1", "m", 4, &["18080:8080/tcp"]),
        ]);
        let t = published_targets(&policy);
        let to_db = t
            .iter()
            .find(|t| matches!(&t.ports, Some(p) if p.len() == 1))
            .expect("db target");
        let to_any = t.iter().find(|t| t.ports.is_none()).expect("* target");
        let [dw, d4, d6] = to_db.sets();
        let [aw, a4, a6] = to_any.sets();
        let sorted = |mut v: Vec<String>| {
            v.sort();
            v
        };
        let tcp = PortProto::Tcp;
        assert_eq!(
            sets_of(&p, &Elem::ProtoPort(tcp, 15432)),
            sorted(vec![names::PUBLISHED_W.into(), dw.clone(), aw.clone()])
        );
        assert_eq!(
            sets_of(
                &p,
                &Elem::V4ProtoPort(Ipv4Addr::new(192, 0, 2, 2), tcp, 15433)
            ),
            sorted(vec![names::PUBLISHED_4.into(), d4, a4])
        );
        assert_eq!(
            sets_of(
                &p,
                &Elem::V6ProtoPort("2001:db8::2".parse().expect("v6"), tcp, 15434)
            ),
            sorted(vec![names::PUBLISHED_6.into(), d6, a6])
        );
        // Container port 6000/udp is on no line to db, but `db -> *` takes all traffic.
        assert_eq!(
            sets_of(&p, &Elem::ProtoPort(PortProto::Udp, 16000)),
            sorted(vec![names::PUBLISHED_W.into(), aw.clone()])
        );
        // api's own port: `*` holds it, the line to db does not.
        assert_eq!(
            sets_of(&p, &Elem::ProtoPort(tcp, 18080)),
            sorted(vec![names::PUBLISHED_W.into(), aw])
        );
        // The elements the daemon adds for one container are the plan's.
        let db = p.containers.iter().find(|c| c.name == "db-1").expect("db");
        let from_one: BTreeSet<_> = published_elements(db, &policy).into_iter().collect();
        assert_eq!(from_one.len(), 11);
        assert!(from_one.iter().all(|k| p.ruleset.elements().contains(k)));
    }

    #[test]
    fn unadmitted_is_caught_all_and_unmanaged_counts_as_host() {
        // Two claims of one address on one bridge: neither is admitted.
        let (_, p) = plan_of(vec![
            container("db-1", "m", 3, &["15432:5432/tcp"]),
            container("db-2", "m", 3, &["15435:5432/tcp"]),
            container("db-3", "other", 5, &["15436:5432/tcp"]),
        ]);
        assert!(
            p.containers
                .iter()
                .all(|c| c.endpoints.iter().all(|e| !e.admitted))
        );
        let tcp = PortProto::Tcp;
        assert_eq!(
            sets_of(&p, &Elem::ProtoPort(tcp, 15432)),
            vec![names::PUBLISHED_W.to_string()]
        );
        assert_eq!(
            sets_of(&p, &Elem::ProtoPort(tcp, 15435)),
            vec![names::PUBLISHED_W.to_string()]
        );
        assert!(sets_of(&p, &Elem::ProtoPort(tcp, 15436)).is_empty());
    }
}
