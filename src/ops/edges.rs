//! The edges of the managed networks as facts read from nftables objects, the way
//! [`super::access`] reads the pairs: which edges a table closes (`host`, `egress`,
//! `ingress`), the allow lines each keeps open, and which published mappings it judges as
//! the container behind them. `diff` evaluates a live and a desired table through this one
//! model, so a difference it shows is a difference in enforcement.

use super::service::{Service, port_ranges};
use crate::nft::live::{LiveExpr, LiveStmt, LiveTable};
use crate::nft::render::comment_text;
use crate::plan::ruleset::*;
use crate::plan::{EDGE_DENY_PREFIX, names};
use crate::policy::Net;
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

/// The catch-all sets of published mappings judged as the container behind them (host
/// side: `[address .] proto . port`), as the plan names them.
use crate::plan::names::{PUBLISHED_4, PUBLISHED_6, PUBLISHED_W};

/// One edge of the managed networks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Edge {
    /// Managed container -> an address of this host (`input` hook).
    Host,
    /// Managed container -> out of a non-engine interface.
    Egress,
    /// Outside -> a managed container.
    Ingress,
}

impl Edge {
    pub const ALL: [Edge; 3] = [Edge::Host, Edge::Egress, Edge::Ingress];

    pub fn as_str(self) -> &'static str {
        match self {
            Edge::Host => "host",
            Edge::Egress => "egress",
            Edge::Ingress => "ingress",
        }
    }

    pub fn chain(self) -> &'static str {
        match self {
            Edge::Host => names::INPUT,
            Edge::Egress => names::EGRESS,
            Edge::Ingress => names::INGRESS,
        }
    }

    /// The container side of its lines: the source (host, egress) or the destination.
    fn container_iface(self) -> IfSide {
        match self {
            Edge::Ingress => IfSide::Oif,
            _ => IfSide::Iif,
        }
    }
}

/// One allow line of a closed edge, reduced to what it opens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EdgeRule {
    pub v6: bool,
    /// The container side's set (`iifname . saddr` for host and egress, `oifname . daddr`
    /// for ingress).
    pub set: String,
    /// The outside side's addresses (egress: destination, ingress: source); `None`: any.
    pub nets: Option<Vec<Net>>,
    pub service: Service,
    pub comment: String,
}

/// The edges a table closes (`None`: open, netguard adds nothing there) and their lines.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Edges {
    pub host: Option<Vec<EdgeRule>>,
    pub egress: Option<Vec<EdgeRule>>,
    pub ingress: Option<Vec<EdgeRule>>,
}

impl Edges {
    pub fn get(&self, e: Edge) -> Option<&[EdgeRule]> {
        match e {
            Edge::Host => self.host.as_deref(),
            Edge::Egress => self.egress.as_deref(),
            Edge::Ingress => self.ingress.as_deref(),
        }
    }

    fn slot(&mut self, e: Edge) -> &mut Option<Vec<EdgeRule>> {
        match e {
            Edge::Host => &mut self.host,
            Edge::Egress => &mut self.egress,
            Edge::Ingress => &mut self.ingress,
        }
    }
}

/// A published mapping as the published sets hold it: host address (`None`: every local
/// address), protocol, host port.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct Published {
    pub addr: Option<IpAddr>,
    pub proto: String,
    pub port: u16,
}

impl Published {
    pub fn of(p: &crate::inventory::PublishedPort) -> Published {
        Published {
            addr: p.host_ip,
            proto: p.proto.as_str().to_string(),
            port: p.host_port,
        }
    }
}

/// The mappings the published sets hold. Read through the element's nft form
/// (`[ADDR . ]PROTO . PORT`, the protocol by name or number), so this reader does not
/// depend on how the plan's element type spells them.
pub fn published_of(sets: &BTreeMap<String, BTreeSet<Elem>>) -> BTreeSet<Published> {
    let mut out = BTreeSet::new();
    for (name, wild) in [
        (PUBLISHED_W, true),
        (PUBLISHED_4, false),
        (PUBLISHED_6, false),
    ] {
        for e in sets.get(name).into_iter().flatten() {
            if let Some(p) = parse_published(&e.to_string(), wild) {
                out.insert(p);
            }
        }
    }
    out
}

fn parse_published(text: &str, wild: bool) -> Option<Published> {
    let parts: Vec<&str> = text.split(" . ").map(|p| p.trim_matches('"')).collect();
    let (addr, proto, port) = match (wild, parts.as_slice()) {
        (true, [proto, port]) => (None, *proto, *port),
        (false, [addr, proto, port]) => (Some(addr.parse().ok()?), *proto, *port),
        _ => return None,
    };
    let proto = match proto {
        "6" | "tcp" => "tcp",
        "17" | "udp" => "udp",
        "132" | "sctp" => "sctp",
        _ => return None,
    };
    Some(Published {
        addr,
        proto: proto.to_string(),
        port: port.parse().ok()?,
    })
}

fn deny_comment(e: Edge) -> String {
    format!("{EDGE_DENY_PREFIX}{}", e.as_str())
}

/// The edges a desired ruleset closes. An edge is closed when its chain holds its final
/// drop (`edge deny EDGE`) and, for the regular chains, `forward` jumps to it.
pub fn edges_of_table(t: &Table) -> Edges {
    let mut out = Edges::default();
    let forward_jumps: BTreeSet<&str> = t
        .chains
        .iter()
        .filter(|c| c.name == names::FORWARD)
        .flat_map(|c| &c.rules)
        .filter_map(|r| match &r.verdict {
            Verdict::Jump(j) => Some(j.as_str()),
            _ => None,
        })
        .collect();
    for e in Edge::ALL {
        let Some(ch) = t.chains.iter().find(|c| c.name == e.chain()) else {
            continue;
        };
        let reached = match e {
            Edge::Host => ch.base.is_some_and(|b| b.hook == Hook::Input),
            _ => forward_jumps.contains(e.chain()),
        };
        let closes = ch
            .rules
            .iter()
            .any(|r| r.verdict == Verdict::Drop && r.comment == deny_comment(e));
        if !(reached && closes) {
            continue;
        }
        let lines = ch
            .rules
            .iter()
            .filter(|r| r.verdict == Verdict::Accept)
            .filter_map(|r| desired_line(e, r))
            .collect();
        *out.slot(e) = Some(lines);
    }
    out
}

fn desired_line(e: Edge, r: &Rule) -> Option<EdgeRule> {
    let mut set = None;
    let mut nets = None;
    let mut service = Service::All;
    for m in &r.matches {
        match m {
            Match::SaddrInSet { ip, iface, set: s } | Match::DaddrInSet { ip, iface, set: s }
                if *iface == e.container_iface()
                    && matches!(
                        (m, e),
                        (Match::SaddrInSet { .. }, Edge::Host | Edge::Egress)
                            | (Match::DaddrInSet { .. }, Edge::Ingress)
                    ) =>
            {
                set = Some((*ip == IpVersion::V6, s.clone()))
            }
            Match::DaddrNets { nets: n, .. } if e == Edge::Egress => {
                nets = Some(
                    n.iter()
                        .map(|(a, p)| Net {
                            addr: *a,
                            prefix: *p,
                        })
                        .collect(),
                )
            }
            Match::SaddrNets { nets: n, .. } if e == Edge::Ingress => {
                nets = Some(
                    n.iter()
                        .map(|(a, p)| Net {
                            addr: *a,
                            prefix: *p,
                        })
                        .collect(),
                )
            }
            Match::L4 { proto, dports, .. } => {
                service = Service::Ports {
                    proto: proto.clone(),
                    ranges: if dports.is_empty() {
                        vec![(0, 65535)]
                    } else {
                        dports.clone()
                    },
                }
            }
            Match::IcmpEcho(_) => service = Service::Icmp,
            _ => {}
        }
    }
    let (v6, set) = set?;
    Some(EdgeRule {
        v6,
        set,
        nets,
        service,
        comment: r.comment.clone(),
    })
}

/// The edges a live table closes, read as [`edges_of_table`] reads a desired one. Lines
/// netguard cannot read are returned apart (reported by `diff`, and open nothing here).
pub fn edges_of_live(t: &LiveTable) -> (Edges, Vec<String>) {
    let mut out = Edges::default();
    let mut unreadable = Vec::new();
    let forward_jumps: BTreeSet<&str> = t
        .chains
        .get(names::FORWARD)
        .into_iter()
        .flat_map(|c| &c.rules)
        .flat_map(|r| &r.expr)
        .filter_map(|st| match st {
            LiveStmt::Jump(j) => Some(j.as_str()),
            _ => None,
        })
        .collect();
    let sets: BTreeMap<String, BTreeSet<Elem>> = t
        .sets
        .iter()
        .map(|(n, s)| (n.clone(), s.elements.clone()))
        .collect();
    for e in Edge::ALL {
        let Some(ch) = t.chains.get(e.chain()) else {
            continue;
        };
        let reached = match e {
            Edge::Host => ch.base.is_some_and(|b| b.hook == Hook::Input),
            _ => forward_jumps.contains(e.chain()),
        };
        let closes = ch.rules.iter().any(|r| {
            r.comment
                .as_deref()
                .is_some_and(|c| comment_text(c) == deny_comment(e))
        });
        if !(reached && closes) {
            continue;
        }
        let mut lines = Vec::new();
        for r in &ch.rules {
            let comment = comment_text(r.comment.as_deref().unwrap_or("")).to_string();
            match live_line(e, &r.expr, &sets, &comment) {
                LiveLine::Line(l) => lines.push(l),
                LiveLine::Unreadable => unreadable.push(comment),
                LiveLine::Other => {}
            }
        }
        *out.slot(e) = Some(lines);
    }
    (out, unreadable)
}

enum LiveLine {
    Line(EdgeRule),
    Unreadable,
    Other,
}

/// Reads one live rule of an edge chain: `[ip daddr|saddr NETS] iifname . ip saddr @S
/// (or oifname . ip daddr @D) [meta l4proto P th dport PORTS | icmp type echo-request]
/// accept`. Rules without a container set (the chain's head: replies, not from a managed
/// bridge, neighbour discovery) and the drops are not lines.
fn live_line(
    e: Edge,
    expr: &[LiveStmt],
    sets: &BTreeMap<String, BTreeSet<Elem>>,
    comment: &str,
) -> LiveLine {
    let mut accept = false;
    let mut unknown = false;
    let mut set: Option<(bool, String)> = None;
    let mut nets: Option<Vec<Net>> = None;
    let mut nets_unlisted = false;
    let mut service = Service::All;
    let (want_meta, want_field) = match e.container_iface() {
        IfSide::Oif => ("oifname", "daddr"),
        _ => ("iifname", "saddr"),
    };
    let outside_field = match e {
        Edge::Egress => Some("daddr"),
        Edge::Ingress => Some("saddr"),
        Edge::Host => None,
    };
    for st in expr {
        let (left, right) = match st {
            LiveStmt::Accept => {
                accept = true;
                continue;
            }
            LiveStmt::Passive => continue,
            LiveStmt::Match { op, left, right } if op == "==" => (left, right),
            _ => {
                unknown = true;
                continue;
            }
        };
        match left {
            LiveExpr::Concat(parts) => {
                let meta = match parts.first() {
                    Some(LiveExpr::Meta(k)) => Some(k.as_str()),
                    _ => None,
                };
                let (proto, field) = match parts.get(1) {
                    Some(LiveExpr::Payload { protocol, field }) => {
                        (Some(protocol.as_str()), Some(field.as_str()))
                    }
                    _ => (None, None),
                };
                match (meta, proto, field, right.set_ref()) {
                    (Some(m), Some(p @ ("ip" | "ip6")), Some(f), Some(s))
                        if m == want_meta && f == want_field =>
                    {
                        set = Some((p == "ip6", s.to_string()))
                    }
                    _ => unknown = true,
                }
            }
            LiveExpr::Payload { protocol, field }
                if matches!(protocol.as_str(), "ip" | "ip6")
                    && Some(field.as_str()) == outside_field =>
            {
                // One address lists as itself; a prefix or several as forms the live
                // reader does not keep: those come from the line's comment below.
                match right.as_str().and_then(|a| Net::parse(a).ok()) {
                    Some(n) => nets = Some(vec![n]),
                    None => nets_unlisted = true,
                }
            }
            LiveExpr::Payload { protocol, field } => match (protocol.as_str(), field.as_str()) {
                (pr @ ("tcp" | "udp" | "sctp" | "th"), "dport") => match port_ranges(right, sets) {
                    Some(ranges) => {
                        let proto = match (pr, &service) {
                            ("th", Service::Ports { proto, .. }) => proto.clone(),
                            _ => pr.to_string(),
                        };
                        service = Service::Ports { proto, ranges }
                    }
                    None => unknown = true,
                },
                ("icmp" | "icmpv6", "type") if right.as_str() == Some("echo-request") => {
                    service = Service::Icmp
                }
                _ => unknown = true,
            },
            LiveExpr::Meta(key) if key == "l4proto" && right.as_str().is_some() => {
                if let (Some(p), Service::All) = (right.as_str(), &service) {
                    service = Service::Ports {
                        proto: p.to_string(),
                        ranges: vec![(0, 65535)],
                    };
                }
            }
            _ => unknown = true,
        }
    }
    let Some((v6, set)) = set else {
        return LiveLine::Other;
    };
    if !accept {
        return LiveLine::Other;
    }
    if nets_unlisted {
        // netguard writes the line's addresses into its comment (`allow A -> NETS PORTS
        // (FILE:LINE)`, egress; `allow NETS -> G ...`, ingress); nft caps comments, so a
        // list that does not read back whole leaves the line unreadable.
        match comment_nets(e, comment, v6) {
            Some(n) => nets = Some(n),
            None => return LiveLine::Unreadable,
        }
    }
    if unknown {
        return LiveLine::Unreadable;
    }
    LiveLine::Line(EdgeRule {
        v6,
        set,
        nets,
        service,
        comment: comment.to_string(),
    })
}

fn comment_nets(e: Edge, comment: &str, v6: bool) -> Option<Vec<Net>> {
    // A whole comment ends with the line's origin; a cut one may end inside an address.
    if !comment.ends_with(')') {
        return None;
    }
    let rest = comment.strip_prefix("allow ")?;
    let (from, rest) = rest.split_once(" -> ")?;
    let list = match e {
        Edge::Egress => rest.split(' ').next()?,
        Edge::Ingress => from,
        Edge::Host => return None,
    };
    let nets: Vec<Net> = list
        .split(',')
        .map(Net::parse)
        .collect::<Result<_, _>>()
        .ok()?;
    let nets: Vec<Net> = nets.into_iter().filter(|n| n.is_v6() == v6).collect();
    (!nets.is_empty()).then_some(nets)
}

/// A destination (egress) or source (ingress) outside: an address block a line names, or
/// the rest of the world.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Outside {
    Net(Net),
    World,
}

impl Outside {
    pub fn label(&self) -> String {
        match self {
            Outside::Net(n) => n.to_string(),
            Outside::World => "world".to_string(),
        }
    }

    pub(super) fn fits(&self, v6: bool) -> bool {
        match self {
            Outside::Net(n) => n.is_v6() == v6,
            Outside::World => true,
        }
    }

    /// Whether a line naming `nets` (`None`: any address) covers all of this block.
    pub(super) fn covered_by(&self, nets: Option<&[Net]>) -> bool {
        match (nets, self) {
            (None, _) => true,
            (Some(_), Outside::World) => false,
            (Some(ns), Outside::Net(n)) => ns
                .iter()
                .any(|l| l.prefix <= n.prefix && l.contains(n.addr)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn published_elements_read_in_their_nft_form() {
        assert_eq!(
            parse_published("tcp . 15432", true),
            Some(Published {
                addr: None,
                proto: "tcp".into(),
                port: 15432
            })
        );
        assert_eq!(
            parse_published("192.0.2.2 . 17 . 53", false),
            Some(Published {
                addr: Some("192.0.2.2".parse().unwrap()),
                proto: "udp".into(),
                port: 53
            })
        );
        assert_eq!(
            parse_published("2001:db8::1 . sctp . 9", false).map(|p| p.addr),
            Some(Some("2001:db8::1".parse().unwrap()))
        );
        assert_eq!(parse_published("tcp . 15432", false), None);
        assert_eq!(parse_published("\"br-x\" . 10.0.0.1", false), None);
    }

    #[test]
    fn comment_nets_of_each_edge() {
        let c = "allow web -> 203.0.113.0/24,2001:db8:1::/48,198.51.100.7 443/tcp (p.toml:3)";
        assert_eq!(
            comment_nets(Edge::Egress, c, false).map(|n| n.len()),
            Some(2)
        );
        assert_eq!(
            comment_nets(Edge::Egress, c, true).map(|n| n[0].to_string()),
            Some("2001:db8:1::/48".to_string())
        );
        let i = "allow 198.51.100.0/24 -> web 443/tcp (p.toml:9)";
        assert_eq!(
            comment_nets(Edge::Ingress, i, false).map(|n| n[0].to_string()),
            Some("198.51.100.0/24".to_string())
        );
        assert_eq!(comment_nets(Edge::Ingress, i, true), None);
        // Cut short by the comment limit (`10.0.0.0/1` would parse): not guessed.
        assert_eq!(
            comment_nets(Edge::Egress, "allow web -> 10.0.0.0/1", false),
            None
        );
        assert_eq!(
            comment_nets(Edge::Egress, "allow web -> 203.0.113.", false),
            None
        );
    }

    #[test]
    fn blocks_are_covered_by_wider_lines_only() {
        let n = |s: &str| Net::parse(s).unwrap();
        let b = Outside::Net(n("203.0.113.5"));
        assert!(b.covered_by(Some(&[n("203.0.113.0/24")])));
        assert!(!Outside::Net(n("203.0.113.0/24")).covered_by(Some(&[n("203.0.113.5")])));
        assert!(!Outside::World.covered_by(Some(&[n("0.0.0.0/0")])));
        assert!(Outside::World.covered_by(None));
    }
}
