//! Which probes `netguard verify` sends, and what the policy says each must find. Pure:
//! (plan, choice) → probes with their expected verdicts.
//!
//! Sampling: containers in the same groups, equally admitted, on the same network are
//! judged by the same rules, so one (source, destination) pair per class of
//! (source groups, destination groups, network) shows what all of its pairs do. `sample`
//! is the number of pairs per class (0: every pair).

use crate::plan::{Flow, Plan, PlannedContainer, PlannedEndpoint};
use crate::policy::Proto;
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

/// The TCP port probed where the policy allows all traffic (any port would do; this one is
/// fixed so that two runs send the same probes).
pub const ALL_TRAFFIC_PORT: u16 = 80;

/// What a probe is. New kinds (published ports, the host, egress) are new variants.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// A SYN to a port: SYN-ACK or RST = reached (no listener needed), silence = blocked.
    Tcp,
    /// A datagram: an answer or an ICMP port unreachable = reached, silence = blocked.
    Udp,
    /// An ICMP (v6) echo request: an echo reply = reached.
    Icmp,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Tcp => "tcp",
            Kind::Udp => "udp",
            Kind::Icmp => "icmp",
        }
    }
}

/// What a probe is sent to: a container on the source's network, or (the edges,
/// docs/policy.md) an address of this host, an address outside, or a container's
/// published port on an address of this host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Target {
    #[default]
    Container,
    Host,
    Outside,
    Published,
}

impl Target {
    pub fn is_container(&self) -> bool {
        *self == Target::Container
    }
}

/// Reached or blocked: what the policy expects, and what a probe measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Reached,
    Blocked,
}

/// One probe to send and the verdict the policy predicts for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProbeSpec {
    /// Source container: name and id.
    pub from: String,
    pub from_id: String,
    pub to: String,
    pub to_id: String,
    pub network: String,
    pub src: IpAddr,
    pub dst: IpAddr,
    pub kind: Kind,
    /// Destination port (TCP, UDP).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    pub expected: Verdict,
    /// Why: the allow entry (`FILE:LINE`) that permits it, or why nothing does.
    pub why: String,
    /// Absent for a container on the source's network.
    #[serde(default, skip_serializing_if = "Target::is_container")]
    pub target: Target,
}

impl ProbeSpec {
    /// `8080/tcp`, `icmp`.
    pub fn service(&self) -> String {
        match self.port {
            Some(p) => format!("{p}/{}", self.kind.as_str()),
            None => self.kind.as_str().to_string(),
        }
    }

    pub fn family(&self) -> &'static str {
        if self.src.is_ipv6() { "ipv6" } else { "ipv4" }
    }
}

/// Which pairs to probe. `from`/`to` are container ids (the caller resolves names).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Choice {
    pub from: Option<String>,
    pub to: Option<String>,
    /// Pairs per class; 0 = all pairs.
    pub sample: usize,
}

/// The chosen probes, and how many pairs there were to choose from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selection {
    pub probes: Vec<ProbeSpec>,
    /// (source, destination, network) pairs netguard judges, after `from`/`to`.
    pub pairs_total: usize,
    pub pairs_probed: usize,
    /// Classes of pairs (see the module doc).
    pub classes: usize,
}

/// A (source, destination) pair on one managed network.
struct Pair<'a> {
    from: &'a PlannedContainer,
    from_ep: &'a PlannedEndpoint,
    to: &'a PlannedContainer,
    to_ep: &'a PlannedEndpoint,
}

type ClassKey = (Vec<String>, bool, Vec<String>, bool, String);

/// Every managed pair (both endpoints on one managed network, not the same netns), sorted
/// by network, source, destination.
fn pairs<'a>(plan: &'a Plan, choice: &Choice) -> Vec<Pair<'a>> {
    let mut on: BTreeMap<&str, Vec<(&PlannedContainer, &PlannedEndpoint)>> = BTreeMap::new();
    for c in &plan.containers {
        for e in c.endpoints.iter().filter(|e| e.managed) {
            on.entry(e.network.as_str()).or_default().push((c, e));
        }
    }
    let mut out = Vec::new();
    for members in on.values() {
        for &(a, ae) in members {
            if choice.from.as_ref().is_some_and(|f| *f != a.id) {
                continue;
            }
            for &(b, be) in members {
                if choice.to.as_ref().is_some_and(|t| *t != b.id) {
                    continue;
                }
                // The same container, or two sharing one network namespace (`--network
                // container:X`): their traffic never crosses the bridge.
                let shared = a.id == b.id
                    || (ae.veth.is_some() && ae.veth == be.veth)
                    || ae.addresses().any(|x| be.addresses().any(|y| x == y));
                if shared {
                    continue;
                }
                out.push(Pair {
                    from: a,
                    from_ep: ae,
                    to: b,
                    to_ep: be,
                });
            }
        }
    }
    out.sort_by(|x, y| {
        (&x.from_ep.network, &x.from.name, &x.to.name).cmp(&(
            &y.from_ep.network,
            &y.from.name,
            &y.to.name,
        ))
    });
    out
}

/// Up to `n` pairs of one class, preferring sources and destinations not chosen yet, so that
/// two pairs show two different containers on each side where the class has them.
fn sample<'a, 'b>(class: &'b [Pair<'a>], n: usize) -> Vec<&'b Pair<'a>> {
    if n == 0 || n >= class.len() {
        return class.iter().collect();
    }
    let mut chosen: Vec<usize> = Vec::new();
    let mut srcs = BTreeSet::new();
    let mut dsts = BTreeSet::new();
    // Three passes: both sides new, one side new, anything.
    for pass in 0..3 {
        for (i, p) in class.iter().enumerate() {
            if chosen.len() == n {
                break;
            }
            if chosen.contains(&i) {
                continue;
            }
            let fresh =
                usize::from(!srcs.contains(&p.from.id)) + usize::from(!dsts.contains(&p.to.id));
            if fresh + pass >= 2 {
                chosen.push(i);
                srcs.insert(p.from.id.clone());
                dsts.insert(p.to.id.clone());
            }
        }
    }
    chosen.sort_unstable();
    chosen.into_iter().filter_map(|i| class.get(i)).collect()
}

/// The probes for `plan` (see the module doc).
pub fn select(plan: &Plan, choice: &Choice) -> Selection {
    let all = pairs(plan, choice);
    let mut classes: BTreeMap<ClassKey, Vec<Pair>> = BTreeMap::new();
    let total = all.len();
    for p in all {
        let key = (
            p.from.groups.clone(),
            p.from_ep.admitted,
            p.to.groups.clone(),
            p.to_ep.admitted,
            p.from_ep.network.clone(),
        );
        classes.entry(key).or_default().push(p);
    }
    let udp_named = plan
        .flows
        .iter()
        .flat_map(|f| f.ports.iter().flatten())
        .any(|s| s.proto == Proto::Udp);
    let mut probes = Vec::new();
    let mut probed = 0;
    for class in classes.values() {
        for p in sample(class, choice.sample) {
            probed += 1;
            probes.extend(pair_probes(plan, p, udp_named));
        }
    }
    probes.sort_by(|a, b| {
        (&a.network, &a.from, &a.to, a.src.is_ipv6(), a.kind, a.port).cmp(&(
            &b.network,
            &b.from,
            &b.to,
            b.src.is_ipv6(),
            b.kind,
            b.port,
        ))
    });
    Selection {
        probes,
        pairs_total: total,
        pairs_probed: probed,
        classes: classes.len(),
    }
}

/// The first allow entry permitting `kind`/`port` from `from` to `to`.
fn permitted_by<'a>(
    flows: &'a [Flow],
    from: &[String],
    to: &[String],
    kind: Kind,
    port: u16,
) -> Option<&'a Flow> {
    let proto = match kind {
        Kind::Tcp => Proto::Tcp,
        Kind::Udp => Proto::Udp,
        Kind::Icmp => Proto::Icmp,
    };
    flows
        .iter()
        .find(|f| crate::plan::flow_permits(f, from, to, Some(proto), port))
}

/// What to send for one pair: each allowed TCP port (the first of a range; one port when all
/// traffic is allowed), one denied TCP port, the same for UDP where the policy names UDP,
/// and an echo; over IPv4 and IPv6 where both ends have the address.
fn pair_probes(plan: &Plan, p: &Pair, udp_named: bool) -> Vec<ProbeSpec> {
    let (fg, tg) = (&p.from.groups, &p.to.groups);
    let side =
        |names: &[String], groups: &[String]| names.iter().any(|n| n == "*" || groups.contains(n));
    let applying: Vec<&Flow> = plan
        .flows
        .iter()
        .filter(|f| side(&f.from, fg) && side(&f.to, tg))
        .collect();
    let all_traffic = applying.iter().any(|f| f.ports.is_none());
    let allowed_ports = |proto: Proto| -> BTreeSet<u16> {
        applying
            .iter()
            .flat_map(|f| f.ports.iter().flatten())
            .filter(|s| s.proto == proto)
            .map(|s| s.low)
            .collect()
    };
    let denied_port = |kind: Kind| {
        (1..=u16::MAX).find(|&port| permitted_by(&plan.flows, fg, tg, kind, port).is_none())
    };
    let mut services: Vec<(Kind, Option<u16>)> = Vec::new();
    let mut tcp = allowed_ports(Proto::Tcp);
    if all_traffic {
        tcp.insert(ALL_TRAFFIC_PORT);
    }
    services.extend(tcp.into_iter().map(|port| (Kind::Tcp, Some(port))));
    if let Some(port) = denied_port(Kind::Tcp) {
        services.push((Kind::Tcp, Some(port)));
    }
    let udp = allowed_ports(Proto::Udp);
    if udp_named {
        let denied = denied_port(Kind::Udp);
        services.extend(
            udp.into_iter()
                .chain(denied)
                .map(|port| (Kind::Udp, Some(port))),
        );
    }
    services.push((Kind::Icmp, None));
    services.dedup();

    let not_admitted = [(p.from, p.from_ep), (p.to, p.to_ep)]
        .into_iter()
        .find(|(_, e)| !e.admitted)
        .map(|(c, e)| {
            format!(
                "{} is not admitted on {}: {}",
                c.name,
                e.network,
                e.reason.as_deref().unwrap_or("unknown reason")
            )
        });
    let families = [
        (p.from_ep.ipv4.map(IpAddr::V4), p.to_ep.ipv4.map(IpAddr::V4)),
        (p.from_ep.ipv6.map(IpAddr::V6), p.to_ep.ipv6.map(IpAddr::V6)),
    ];
    let mut out = Vec::new();
    for (src, dst) in families {
        let (Some(src), Some(dst)) = (src, dst) else {
            continue;
        };
        for &(kind, port) in &services {
            let by = permitted_by(&plan.flows, fg, tg, kind, port.unwrap_or(0));
            let (expected, why) = match (&not_admitted, by) {
                (Some(reason), _) => (Verdict::Blocked, reason.clone()),
                (None, Some(f)) => (Verdict::Reached, format!("allowed by {}", f.origin)),
                (None, None) => (Verdict::Blocked, "no allow entry".to_string()),
            };
            out.push(ProbeSpec {
                from: p.from.name.clone(),
                from_id: p.from.id.clone(),
                to: p.to.name.clone(),
                to_id: p.to.id.clone(),
                network: p.from_ep.network.clone(),
                src,
                dst,
                kind,
                port,
                expected,
                why,
                target: Target::Container,
            });
        }
    }
    out
}

/// Where the edge probes go: an address of this host the containers reach (a bridge's
/// gateway: its ports, and the published ports on it) and an address outside.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EdgeTargets {
    pub host: Option<IpAddr>,
    pub outside: Option<IpAddr>,
}

/// The probes of the edges: from one source per class of (groups, admission, network)
/// (every source with `sample` 0), a TCP SYN to each port the policy's lines open towards
/// `targets.host` (`to = "host"`) and `targets.outside` (`to = "world"` or its block) and
/// one port they do not, and one to each TCP port published on every address of this host
/// or on `targets.host`. The expected verdict is `explain`'s for the same question, so a
/// published port is judged as the container behind it (or the host's, for a container
/// netguard does not admit).
pub fn select_edges(
    policy: &crate::policy::Policy,
    plan: &Plan,
    inv: &crate::inventory::Inventory,
    choice: &Choice,
    targets: &EdgeTargets,
) -> Vec<ProbeSpec> {
    use crate::ops::explain_edge::explain_any;
    let mut classes: BTreeSet<(Vec<String>, bool, String)> = BTreeSet::new();
    let mut out = Vec::new();
    for c in &plan.containers {
        if choice.from.as_ref().is_some_and(|f| *f != c.id) {
            continue;
        }
        for e in c.endpoints.iter().filter(|e| e.managed) {
            let class = (c.groups.clone(), e.admitted, e.network.clone());
            if choice.sample != 0 && !classes.insert(class) {
                continue;
            }
            let ask = |to: &str, port: u16| {
                explain_any(policy, plan, inv, &c.id, to, Some(&format!("{port}/tcp"))).ok()
            };
            let mut push = |target: Target, to: String, dst: IpAddr, port: u16, key: &str| {
                let Some(src) = e.addresses().find(|a| a.is_ipv6() == dst.is_ipv6()) else {
                    return;
                };
                let Some(x) = ask(key, port) else {
                    return;
                };
                let allowed = x.allowed();
                let why = match &x {
                    crate::ops::explain_edge::Answer::Edge(x) => x.reason.clone(),
                    crate::ops::explain_edge::Answer::Pair(x) => x.reason.clone(),
                };
                out.push(ProbeSpec {
                    from: c.name.clone(),
                    from_id: c.id.clone(),
                    to,
                    to_id: String::new(),
                    network: e.network.clone(),
                    src,
                    dst,
                    kind: Kind::Tcp,
                    port: Some(port),
                    expected: if allowed {
                        Verdict::Reached
                    } else {
                        Verdict::Blocked
                    },
                    why,
                    target,
                });
            };
            let published: BTreeSet<u16> = inv
                .containers
                .iter()
                .filter(|o| o.id != c.id)
                .flat_map(|o| &o.published)
                .filter(|p| p.proto == crate::inventory::PortProto::Tcp)
                .filter(|p| p.host_ip.is_none() || p.host_ip == targets.host)
                .map(|p| p.host_port)
                .collect();
            if let Some(host) = targets.host {
                let lines = edge_ports(plan, |f| matches!(f.to_peers, crate::policy::Peers::Host));
                for port in probe_ports(&lines, &published) {
                    push(Target::Host, "host".into(), host, port, "host");
                }
                for o in inv.containers.iter().filter(|o| o.id != c.id) {
                    for p in o.published.iter().filter(|p| {
                        p.proto == crate::inventory::PortProto::Tcp
                            && (p.host_ip.is_none() || p.host_ip == Some(host))
                    }) {
                        let to = format!("{} via {}", o.name, p.host_port);
                        push(Target::Published, to, host, p.host_port, "host");
                    }
                }
            }
            if let Some(world) = targets.outside {
                let lines = edge_ports(plan, |f| match &f.to_peers {
                    crate::policy::Peers::World => true,
                    crate::policy::Peers::Nets(n) => n.iter().any(|n| n.contains(world)),
                    _ => false,
                });
                let key = world.to_string();
                for port in probe_ports(&lines, &BTreeSet::new()) {
                    push(Target::Outside, key.clone(), world, port, &key);
                }
            }
        }
    }
    out
}

/// The first TCP port of each range the lines `pick` name (`ALL_TRAFFIC_PORT` for all
/// traffic).
fn edge_ports(plan: &Plan, pick: impl Fn(&Flow) -> bool) -> BTreeSet<u16> {
    let mut ports = BTreeSet::new();
    for f in plan
        .flows
        .iter()
        .filter(|f| f.from_peers.is_containers() && pick(f))
    {
        match &f.ports {
            None => {
                ports.insert(ALL_TRAFFIC_PORT);
            }
            Some(ps) => ports.extend(ps.iter().filter(|p| p.proto == Proto::Tcp).map(|p| p.low)),
        }
    }
    ports
}

/// The lines' ports and one port none of them names (nor a published port, probed apart).
fn probe_ports(lines: &BTreeSet<u16>, published: &BTreeSet<u16>) -> Vec<u16> {
    let other = (1..=u16::MAX).find(|p| !lines.contains(p) && !published.contains(p));
    lines.iter().copied().chain(other).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inventory::{Container, Endpoint, Inventory};
    use std::path::Path;

    const POLICY: &str = r#"
[settings]
networks = ["front"]

[groups.web]
match = { name = "web-*" }

[groups.api]
match = { name = "api-*" }

[groups.db]
match = { name = "db-*" }

[[allow]]
from = "web"
to = "api"
ports = ["8080/tcp", "9000-9010/tcp", "icmp"]

[[allow]]
from = "api"
to = "api"
ports = ["7000-7010/udp"]

[[allow]]
within = "db"
"#;

    fn container(name: &str, net: &str, host: u8, v6: bool) -> Container {
        Container {
            published: Vec::new(),
            id: format!("id-{name}"),
            name: name.into(),
            image: String::new(),
            labels: Default::default(),
            endpoints: vec![Endpoint {
                network: net.into(),
                network_id: None,
                bridge: format!("br-{net}"),
                veth: Some(format!("v{name}")),
                ipv4: Some(std::net::Ipv4Addr::new(10, 0, 0, host)),
                ipv6: v6.then(|| format!("fd00::{host}").parse().unwrap()),
                mac: None,
            }],
        }
    }

    fn plan_of(containers: Vec<Container>) -> Plan {
        let policy = crate::policy::parse_policy(Path::new("p.toml"), POLICY).unwrap();
        let mut inv = Inventory {
            containers,
            ..Default::default()
        };
        inv.normalize();
        crate::plan::plan(&policy, &inv)
    }

    fn shop() -> Plan {
        plan_of(vec![
            container("web-1", "front", 11, true),
            container("web-2", "front", 12, true),
            container("api-1", "front", 21, false),
            container("api-2", "front", 22, false),
            container("db-1", "front", 31, false),
            container("db-2", "front", 32, false),
            container("lonely", "front", 99, false),
            container("side", "side", 5, false),
        ])
    }

    fn services(probes: &[ProbeSpec], from: &str, to: &str) -> Vec<(String, Verdict)> {
        probes
            .iter()
            .filter(|p| p.from == from && p.to == to && p.src.is_ipv4())
            .map(|p| (p.service(), p.expected))
            .collect()
    }

    #[test]
    fn allowed_ports_one_denied_port_udp_where_named_and_an_echo() {
        let s = select(&shop(), &Choice::default());
        use Verdict::*;
        assert_eq!(
            services(&s.probes, "web-1", "api-1"),
            vec![
                ("1/tcp".into(), Blocked),
                ("8080/tcp".into(), Reached),
                ("9000/tcp".into(), Reached),
                ("1/udp".into(), Blocked),
                ("icmp".into(), Reached),
            ]
        );
        assert_eq!(
            services(&s.probes, "api-1", "api-2"),
            vec![
                ("1/tcp".into(), Blocked),
                ("1/udp".into(), Blocked),
                ("7000/udp".into(), Reached),
                ("icmp".into(), Blocked),
            ]
        );
        // All traffic: one sample port, nothing denied to probe.
        assert_eq!(
            services(&s.probes, "db-1", "db-2"),
            vec![("80/tcp".into(), Reached), ("icmp".into(), Reached)]
        );
        assert!(
            s.probes
                .iter()
                .filter(|p| p.expected == Reached)
                .all(|p| p.why.starts_with("allowed by p.toml:")),
            "{:#?}",
            s.probes
        );
        // Not on a managed network: never probed.
        assert!(s.probes.iter().all(|p| p.from != "side" && p.to != "side"));
        // IPv6 only where both ends have it.
        assert!(
            s.probes
                .iter()
                .filter(|p| p.src.is_ipv6())
                .all(|p| p.from.starts_with("web") && p.to.starts_with("web"))
        );
        assert!(s.probes.iter().any(|p| p.src.is_ipv6()));
    }

    #[test]
    fn one_pair_per_class_by_default_all_with_zero() {
        let plan = shop();
        let all = select(&plan, &Choice::default());
        assert_eq!(all.pairs_total, 7 * 6);
        assert_eq!(all.pairs_probed, all.pairs_total);
        let one = select(
            &plan,
            &Choice {
                sample: 1,
                ..Default::default()
            },
        );
        // Classes by group set: web, api, db, none → 4 × 4 minus... every (from, to) of
        // groups with at least one pair: web→web needs two webs (yes), none→none (no).
        assert_eq!(one.classes, 15);
        assert_eq!(one.pairs_probed, 15);
        assert_eq!(one.pairs_total, 42);
        let pairs: BTreeSet<(&str, &str)> = one
            .probes
            .iter()
            .map(|p| (p.from.as_str(), p.to.as_str()))
            .collect();
        assert_eq!(pairs.len(), 15);
        assert!(pairs.contains(&("web-1", "api-1")));
        assert!(!pairs.contains(&("web-1", "api-2")));
        let two = select(
            &plan,
            &Choice {
                sample: 2,
                ..Default::default()
            },
        );
        let pairs: BTreeSet<(&str, &str)> = two
            .probes
            .iter()
            .map(|p| (p.from.as_str(), p.to.as_str()))
            .collect();
        // web→api has four pairs; two of them, with two different sources and destinations.
        let web_api: Vec<_> = pairs
            .iter()
            .filter(|(f, t)| f.starts_with("web") && t.starts_with("api"))
            .collect();
        assert_eq!(web_api, vec![&("web-1", "api-1"), &("web-2", "api-2")]);
    }

    #[test]
    fn from_and_to_filter_the_pairs() {
        let plan = shop();
        let s = select(
            &plan,
            &Choice {
                from: Some("id-lonely".into()),
                to: None,
                sample: 0,
            },
        );
        assert_eq!(s.pairs_total, 6);
        assert!(s.probes.iter().all(|p| p.from == "lonely"));
        // In no group: reaches no one.
        assert!(s.probes.iter().all(|p| p.expected == Verdict::Blocked));
        let s = select(
            &plan,
            &Choice {
                from: Some("id-web-1".into()),
                to: Some("id-api-2".into()),
                sample: 1,
            },
        );
        assert_eq!(s.pairs_total, 1);
        assert!(
            s.probes
                .iter()
                .all(|p| p.from == "web-1" && p.to == "api-2")
        );
    }

    #[test]
    fn an_endpoint_not_admitted_is_expected_to_reach_no_one() {
        let mut web = container("web-1", "front", 11, false);
        web.endpoints[0].veth = None; // anti-spoofing needs the veth: not admitted
        let plan = plan_of(vec![web, container("api-1", "front", 21, false)]);
        let s = select(&plan, &Choice::default());
        let from_web: Vec<_> = s.probes.iter().filter(|p| p.from == "web-1").collect();
        assert!(!from_web.is_empty());
        assert!(
            from_web
                .iter()
                .all(|p| p.expected == Verdict::Blocked && p.why.contains("not admitted"))
        );
        // Still probed on the ports the policy would open: those are where a leak shows.
        assert!(from_web.iter().any(|p| p.port == Some(8080)));
    }

    #[test]
    fn containers_sharing_a_namespace_are_no_pair() {
        let a = container("web-1", "front", 11, false);
        let mut b = a.clone();
        b.id = "id-web-1-sidecar".into();
        b.name = "web-1-sidecar".into();
        let plan = plan_of(vec![a, b, container("api-1", "front", 21, false)]);
        let s = select(&plan, &Choice::default());
        assert!(
            !s.probes
                .iter()
                .any(|p| p.from.starts_with("web-1") && p.to.starts_with("web-1"))
        );
    }
}
