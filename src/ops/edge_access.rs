//! What containers may open at the edges and through published ports, evaluated from a
//! [`View`] the way [`super::access::matrix`] evaluates the pairs: the edges' lines as
//! [`super::edges`] reads them, the group sets, and for a published port judged as the
//! container behind it, the pair lines.

use super::access::View;
use super::edges::{Edge, EdgeRule, Outside, Published};
use super::service::{Access, Matrix, PairAccess, Service};
use crate::plan::ruleset::Elem;
use crate::plan::{Plan, names};
use std::collections::BTreeSet;
use std::net::IpAddr;

/// The address blocks the lines of `edge` name in any of `views`, plus the world: the
/// pieces in which what a container may open can differ.
pub fn outside_blocks(views: &[&View], edge: Edge) -> Vec<Outside> {
    let mut b: BTreeSet<Outside> = views
        .iter()
        .filter_map(|v| v.edges.get(edge))
        .flatten()
        .filter_map(|r| r.nets.as_ref())
        .flatten()
        .map(|n| Outside::Net(*n))
        .collect();
    b.insert(Outside::World);
    b.into_iter().collect()
}

/// A managed container's endpoint on a managed network: what an edge judges.
struct EdgeEp<'a> {
    container: &'a str,
    bridge: &'a str,
    addr: IpAddr,
}

fn edge_endpoints(plan: &Plan) -> Vec<EdgeEp<'_>> {
    let mut out = Vec::new();
    for c in plan.containers.iter().filter(|c| c.managed) {
        for e in c.endpoints.iter().filter(|e| e.managed) {
            for addr in e.addresses() {
                out.push(EdgeEp {
                    container: &c.name,
                    bridge: &e.bridge,
                    addr,
                });
            }
        }
    }
    out
}

fn elem_of(bridge: &str, addr: IpAddr) -> Elem {
    match addr {
        IpAddr::V4(a) => Elem::IfnameV4(bridge.to_string(), a),
        IpAddr::V6(a) => Elem::IfnameV6(bridge.to_string(), a),
    }
}

impl View {
    /// Whether `edge` judges traffic of an endpoint on `bridge`: closed, and the bridge is
    /// a managed one of this table.
    fn edge_judges(&self, edge: Edge, bridge: &str) -> Option<&[EdgeRule]> {
        let rules = self.edges.get(edge)?;
        self.sets
            .get(names::MANAGED)
            .is_some_and(|s| s.contains(&Elem::Ifname(bridge.to_string())))
            .then_some(rules)
    }

    /// What an endpoint may open at `edge` (towards `outside` for egress, from it for
    /// ingress; ignored for host).
    pub fn edge_access(&self, edge: Edge, bridge: &str, addr: IpAddr, outside: Outside) -> Access {
        let Some(rules) = self.edge_judges(edge, bridge) else {
            return Access::everything();
        };
        let me = elem_of(bridge, addr);
        let mut acc = Access::default();
        for r in rules.iter().filter(|r| r.v6 == addr.is_ipv6()) {
            let member = self.sets.get(&r.set).is_some_and(|s| s.contains(&me));
            let covers = edge == Edge::Host || outside.covered_by(r.nets.as_deref());
            if member && covers {
                acc.add(&r.service);
            }
        }
        acc
    }

    /// Whether `addr` on `bridge` is in the group set `set` or its twin of the other IP
    /// version (a container is one member of a group, whatever address it uses).
    fn in_group_any_family(&self, set: &str, c: &crate::plan::PlannedContainer) -> bool {
        let twin = twin_set(set);
        c.endpoints.iter().any(|e| {
            e.addresses().any(|a| {
                let me = elem_of(&e.bridge, a);
                [set, twin.as_str()]
                    .iter()
                    .any(|s| self.sets.get(*s).is_some_and(|els| els.contains(&me)))
            })
        })
    }

    /// Whether an endpoint may open `proto`/`port` to the container `to` by the pair
    /// lines (isolate's rules), wherever the two are: a published port judged as the
    /// container behind it.
    fn pair_allows(
        &self,
        bridge: &str,
        addr: IpAddr,
        to: &crate::plan::PlannedContainer,
        proto: &str,
        port: u16,
    ) -> bool {
        let me = elem_of(bridge, addr);
        self.rules
            .iter()
            .filter(|r| r.v6 == addr.is_ipv6())
            .any(|r| {
                let mut acc = Access::default();
                acc.add(&r.service);
                self.sets.get(&r.src_set).is_some_and(|s| s.contains(&me))
                    && self.in_group_any_family(&r.dst_set, to)
                    && acc.allows(proto, port)
            })
    }
}

fn twin_set(set: &str) -> String {
    if let Some(s) = set.strip_suffix("_4") {
        format!("{s}_6")
    } else if let Some(s) = set.strip_suffix("_6") {
        format!("{s}_4")
    } else {
        set.to_string()
    }
}

/// `(from, to)` → what `from` may open to `to` at one edge, per IP version: host
/// (`(container, "host")`), egress (`(container, block)`), ingress (`(block, container)`).
pub fn edge_matrix(view: &View, plan: &Plan, edge: Edge, blocks: &[Outside]) -> Matrix {
    let mut m = Matrix::new();
    for ep in edge_endpoints(plan) {
        let v6 = ep.addr.is_ipv6();
        let targets: Vec<Outside> = match edge {
            Edge::Host => vec![Outside::World],
            _ => blocks.iter().copied().filter(|b| b.fits(v6)).collect(),
        };
        for t in targets {
            let acc = view.edge_access(edge, ep.bridge, ep.addr, t);
            let key = match edge {
                Edge::Host => (ep.container.to_string(), "host".to_string()),
                Edge::Egress => (ep.container.to_string(), t.label()),
                Edge::Ingress => (t.label(), ep.container.to_string()),
            };
            let pair = m.entry(key).or_default();
            union_into(pair, v6, &acc);
        }
    }
    m
}

fn union_into(pair: &mut PairAccess, v6: bool, acc: &Access) {
    let slot = if v6 { &mut pair.v6 } else { &mut pair.v4 };
    slot.get_or_insert_with(Access::default).union(acc);
}

/// `(from, to)` → the host ports of `to`'s published mappings that `from` may open, per
/// IP version of `from`'s address. A mapping the view's published sets hold is judged as
/// the container behind it (the pair lines, on the container port); any other as a
/// connection to this host (the `host` edge, on the host port). Only the mappings in
/// `known` are evaluated: those either table judges as their container (the others are
/// the host's in both, which the host edge already shows).
pub fn published_matrix(view: &View, plan: &Plan, known: &BTreeSet<Published>) -> Matrix {
    let mut m = Matrix::new();
    for ep in edge_endpoints(plan) {
        let v6 = ep.addr.is_ipv6();
        for to in plan.containers.iter().filter(|c| c.name != ep.container) {
            for p in &to.published {
                let key = Published::of(p);
                if !known.contains(&key) || key.addr.is_some_and(|a| a.is_ipv6() != v6) {
                    continue;
                }
                let proto = p.proto.as_str();
                let open = if view.published.contains(&key) {
                    view.pair_allows(ep.bridge, ep.addr, to, proto, p.container_port)
                } else {
                    view.edge_access(Edge::Host, ep.bridge, ep.addr, Outside::World)
                        .allows(proto, p.host_port)
                };
                let mut acc = Access::default();
                if open {
                    acc.add(&Service::Ports {
                        proto: proto.to_string(),
                        ranges: vec![(p.host_port, p.host_port)],
                    });
                }
                let pair = m
                    .entry((ep.container.to_string(), to.name.clone()))
                    .or_default();
                union_into(pair, v6, &acc);
            }
        }
    }
    m
}
