//! `netguard explain` at the edges: a managed container and this host (`host`), an
//! address outside (`egress`), or the outside and a managed container (`ingress`, FROM
//! `world` or an address). Pure, like the pair's explanation: (policy, plan, inventory).
//!
//! The answer names what decides: the first allow line that permits it (FILE:LINE), or the
//! edge's setting (`host = "deny"`, or `host = "allow"`, the default, under which netguard
//! adds nothing there). A host port that is a managed container's published port is that
//! container (docs/policy.md, "Edges"), so it is answered as the pair.

use super::explain::{
    EntryCheck, ExplainError, Explanation, PublishedPath, Side, covers, explain, find, mark,
    parse_port, peers_match, ports_text, published_paths, render_side, side,
};
use super::style::Style;
use crate::inventory::{Container, Inventory};
use crate::plan::{Flow, Plan, PlannedContainer};
use crate::policy::{EdgeDefault, Peers, Policy, PortSpec, Proto};
use serde::Serialize;
use std::collections::BTreeSet;
use std::fmt::Write;
use std::net::IpAddr;

/// A side of the question.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Peer<'a> {
    Container(&'a Container),
    /// `host`: this host's own addresses.
    Host,
    /// `world`: any address outside the managed networks.
    World,
    /// An address (outside, unless a container has it).
    Addr(IpAddr),
}

/// `host` and `world` are the policy's reserved peers; an address is an address; anything
/// else names a container (name, id or unique id prefix).
pub fn peer<'a>(inv: &'a Inventory, key: &str) -> Result<Peer<'a>, ExplainError> {
    match key {
        "host" => return Ok(Peer::Host),
        "world" => return Ok(Peer::World),
        _ => {}
    }
    if let Ok(a) = key.parse::<IpAddr>() {
        return Ok(Peer::Addr(a));
    }
    find(inv, key).map(Peer::Container)
}

/// A side of an edge question as the answer shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EdgePeer {
    /// `container`, `host`, `world` or `address`.
    pub kind: String,
    /// The container's name, `host`, `world`, or the address.
    pub name: String,
    /// A container's groups and why (as for a pair).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container: Option<Side>,
}

/// The answer for one edge question.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EdgeExplanation {
    /// `host`, `egress`, `ingress`, or `none` (from this host: never filtered).
    pub edge: String,
    pub from: EdgePeer,
    pub to: EdgePeer,
    pub port: Option<String>,
    pub allowed: bool,
    pub reason: String,
    /// What decides: the origins of the lines that permit it (the first decides), or the
    /// setting (`host = "deny"`, `egress = "allow"`, ...) when no line does.
    pub decided_by: Vec<String>,
    /// The edge's setting as the policy has it (`host = "deny"`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub setting: Option<String>,
    /// The allow lines of this edge, each checked against the question.
    pub entries: Vec<EntryCheck>,
    /// Ingress: the container's published ports for the asked port (outside clients
    /// come in through them).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub published: Vec<PublishedPath>,
    pub hints: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub caveats: Vec<String>,
}

/// What `explain` answers: a pair of containers, or an edge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    Pair(Box<Explanation>),
    Edge(Box<EdgeExplanation>),
}

impl Answer {
    pub fn allowed(&self) -> bool {
        match self {
            Answer::Pair(x) => x.allowed,
            Answer::Edge(x) => x.allowed,
        }
    }

    pub fn set_caveats(&mut self, c: Vec<String>) {
        match self {
            Answer::Pair(x) => x.caveats = c,
            Answer::Edge(x) => x.caveats = c,
        }
    }

    pub fn render(&self, style: Style) -> String {
        match self {
            Answer::Pair(x) => super::explain::render(x, style),
            Answer::Edge(x) => render(x, style),
        }
    }

    pub fn json(&self) -> serde_json::Value {
        match self {
            Answer::Pair(x) => super::explain::json(x),
            Answer::Edge(x) => {
                let mut v = serde_json::to_value(x).unwrap_or(serde_json::Value::Null);
                if let Some(o) = v.as_object_mut() {
                    o.insert("ok".into(), serde_json::Value::Bool(true));
                }
                v
            }
        }
    }
}

/// The container whose endpoint has `addr`, if any.
fn owner_of(inv: &Inventory, addr: IpAddr) -> Option<&Container> {
    inv.containers
        .iter()
        .find(|c| c.endpoints.iter().any(|e| e.addresses().any(|a| a == addr)))
}

/// Explains FROM → TO where either side may be `host`, `world` or an address; two
/// containers (also an address a container has) are answered as a pair.
pub fn explain_any<'a>(
    policy: &Policy,
    plan: &Plan,
    inv: &'a Inventory,
    from: &str,
    to: &str,
    port: Option<&str>,
) -> Result<Answer, ExplainError> {
    let ask = port.map(parse_port).transpose()?;
    let resolve = |p: Peer<'a>| -> Peer<'a> {
        match p {
            Peer::Addr(a) => owner_of(inv, a)
                .map(Peer::Container)
                .unwrap_or(Peer::Addr(a)),
            p => p,
        }
    };
    let a = resolve(peer(inv, from)?);
    let b = resolve(peer(inv, to)?);
    let x = match (&a, &b) {
        (Peer::Container(a), Peer::Container(b)) => {
            return explain(policy, plan, inv, &a.id, &b.id, port)
                .map(|x| Answer::Pair(Box::new(x)));
        }
        (Peer::Container(c), Peer::Host) => to_host(policy, plan, inv, c, ask.as_ref())?,
        (Peer::Container(c), Peer::World | Peer::Addr(_)) => {
            egress(policy, plan, c, &b, ask.as_ref())
        }
        (Peer::World | Peer::Addr(_), Peer::Container(c)) => {
            ingress(policy, plan, &a, c, ask.as_ref())
        }
        (Peer::Host, Peer::Container(c)) => EdgeExplanation {
            edge: "none".into(),
            from: plain(&Peer::Host),
            to: container_peer(policy, plan, c),
            port: ask.map(|p| p.to_string()),
            allowed: true,
            reason: "connections from this host to containers are never filtered".into(),
            decided_by: vec![],
            setting: None,
            entries: vec![],
            published: vec![],
            hints: vec![],
            caveats: vec![],
        },
        _ => {
            return Err(ExplainError::NoContainer(format!("{from} → {to}")));
        }
    };
    Ok(Answer::Edge(Box::new(x)))
}

fn planned<'a>(plan: &'a Plan, c: &Container) -> Option<&'a PlannedContainer> {
    plan.containers.iter().find(|p| p.id == c.id)
}

fn plain(p: &Peer) -> EdgePeer {
    let (kind, name) = match p {
        Peer::Host => ("host", "host".to_string()),
        Peer::World => ("world", "world".to_string()),
        Peer::Addr(a) => ("address", a.to_string()),
        Peer::Container(c) => ("container", c.name.clone()),
    };
    EdgePeer {
        kind: kind.into(),
        name,
        container: None,
    }
}

fn container_peer(policy: &Policy, plan: &Plan, c: &Container) -> EdgePeer {
    EdgePeer {
        kind: "container".into(),
        name: c.name.clone(),
        container: Some(side(policy, c, planned(plan, c))),
    }
}

fn setting(name: &str, v: EdgeDefault) -> String {
    format!("{name} = \"{}\"", v.as_str())
}

/// How a container stands at an edge before any line is read: `Err` is the answer.
fn standing(plan: &Plan, c: &Container) -> Result<(), String> {
    let Some(pc) = planned(plan, c).filter(|p| p.managed) else {
        return Err(format!(
            "{} is on no managed network: netguard does not judge its traffic",
            c.name
        ));
    };
    if !pc.endpoints.iter().any(|e| e.managed && e.admitted) {
        let why = pc
            .endpoints
            .iter()
            .find_map(|e| e.reason.clone())
            .unwrap_or_else(|| "no endpoint is admitted".into());
        return Err(format!(
            "not admitted, so it reaches nothing beyond its network (fail closed): {why}"
        ));
    }
    Ok(())
}

fn groups_of(plan: &Plan, c: &Container) -> Vec<String> {
    planned(plan, c)
        .map(|p| p.groups.clone())
        .unwrap_or_default()
}

fn line_text(e: &EntryCheck) -> String {
    format!(
        "{} → {} {}",
        e.from.join(","),
        e.to.join(","),
        e.ports
            .as_ref()
            .map(|p| p.join(","))
            .unwrap_or_else(|| "all".into())
    )
}

/// Entries of one edge, checked: `from_ok`/`to_ok` say whether each side of a line covers
/// the question's.
fn checks<'p>(
    plan: &'p Plan,
    of_edge: impl Fn(&Flow) -> bool,
    from_ok: impl Fn(&Flow) -> bool,
    to_ok: impl Fn(&Flow) -> bool,
    ask: Option<&PortSpec>,
) -> Vec<(EntryCheck, &'p Flow)> {
    plan.flows
        .iter()
        .filter(|f| of_edge(f))
        .map(|f| {
            (
                EntryCheck {
                    origin: f.origin.clone(),
                    from: f.from.clone(),
                    to: f.to.clone(),
                    ports: ports_text(f),
                    from_matches: from_ok(f),
                    to_matches: to_ok(f),
                    port_matches: covers(f, ask),
                },
                f,
            )
        })
        .collect()
}

/// The common end: the first permitting line, or the closed edge's setting; with hints
/// for the near misses.
#[allow(clippy::too_many_arguments)]
fn decide(
    edge: &str,
    set: String,
    from: EdgePeer,
    to: EdgePeer,
    ask: Option<&PortSpec>,
    checked: Vec<(EntryCheck, &Flow)>,
    published: Vec<PublishedPath>,
    mut hints: Vec<String>,
) -> EdgeExplanation {
    let permit: Vec<&EntryCheck> = checked
        .iter()
        .map(|(e, _)| e)
        .filter(|e| e.from_matches && e.to_matches && e.port_matches)
        .collect();
    let (allowed, reason, decided_by) = match permit.first() {
        Some(first) => (
            true,
            format!("allowed by {} ({})", first.origin, line_text(first)),
            permit.iter().map(|e| e.origin.clone()).collect(),
        ),
        None => (
            false,
            format!("{set}: no allow line {} permits it", edge_phrase(edge)),
            vec![set.clone()],
        ),
    };
    // Near misses only for a denial, as for a pair.
    if allowed {
        hints.clear();
    } else {
        for (e, f) in &checked {
            if e.from_matches && e.to_matches && !e.port_matches {
                if let (Some(ask), Some(ps)) = (ask, &f.ports) {
                    let list: Vec<String> = ps.iter().map(|p| p.to_string()).collect();
                    hints.push(format!(
                        "{} allows {}, not {ask} ({})",
                        line_text(e),
                        list.join(", "),
                        e.origin
                    ));
                }
            }
        }
    }
    EdgeExplanation {
        edge: edge.into(),
        from,
        to,
        port: ask.map(|p| p.to_string()),
        allowed,
        reason,
        decided_by,
        setting: Some(set),
        entries: checked.into_iter().map(|(e, _)| e).collect(),
        published,
        hints,
        caveats: vec![],
    }
}

fn edge_phrase(edge: &str) -> &'static str {
    match edge {
        "host" => "to \"host\"",
        "egress" => "to this address",
        _ => "from this address",
    }
}

/// An answer decided before any line: the setting `allow`, not judged, fail closed.
fn settled(
    edge: &str,
    from: EdgePeer,
    to: EdgePeer,
    ask: Option<&PortSpec>,
    (allowed, reason): (bool, String),
    set: String,
    decided: bool,
) -> EdgeExplanation {
    EdgeExplanation {
        edge: edge.into(),
        from,
        to,
        port: ask.map(|p| p.to_string()),
        allowed,
        reason,
        decided_by: if decided { vec![set.clone()] } else { vec![] },
        setting: Some(set),
        entries: vec![],
        published: vec![],
        hints: vec![],
        caveats: vec![],
    }
}

/// The managed container (not `c`) whose published mapping serves `ask` on this host, and
/// that mapping's container port. Admitted or not: the kernel judges a managed container's
/// mapping as that container either way (not admitted: denied, fail closed).
fn published_owner<'a>(
    plan: &Plan,
    inv: &'a Inventory,
    c: &Container,
    ask: Option<&PortSpec>,
) -> Option<(&'a Container, crate::inventory::PublishedPort)> {
    let ask = ask.filter(|a| a.proto != Proto::Icmp)?;
    inv.containers
        .iter()
        .filter(|o| o.id != c.id)
        .find_map(|o| {
            let managed = planned(plan, o).is_some_and(|p| p.managed);
            o.published
                .iter()
                .find(|p| {
                    managed && p.proto.as_str() == ask.proto.as_str() && p.host_port == ask.low
                })
                .map(|p| (o, *p))
        })
}

fn to_host(
    policy: &Policy,
    plan: &Plan,
    inv: &Inventory,
    c: &Container,
    ask: Option<&PortSpec>,
) -> Result<EdgeExplanation, ExplainError> {
    let from = container_peer(policy, plan, c);
    let to = plain(&Peer::Host);
    let set = setting("host", policy.settings.host);
    if let Err(why) = standing(plan, c)
        && planned(plan, c).is_none_or(|p| !p.managed)
    {
        return Ok(settled("host", from, to, ask, (true, why), set, false));
    }
    // A published port of a managed container is that container, on its container port.
    if let Some((owner, p)) = published_owner(plan, inv, c, ask) {
        let port = format!("{}/{}", p.container_port, p.proto.as_str());
        let pair = explain(policy, plan, inv, &c.id, &owner.id, Some(&port))?;
        let label = super::explain::published_label(&p);
        return Ok(EdgeExplanation {
            edge: "published".into(),
            from,
            to,
            port: ask.map(|p| p.to_string()),
            allowed: pair.allowed,
            reason: format!(
                "{label} on this host is {}'s published port ({p}): judged as {} → {} {port}: {}",
                owner.name, c.name, owner.name, pair.reason
            ),
            decided_by: pair.decided_by.clone(),
            setting: None,
            entries: pair.entries.clone(),
            published: vec![PublishedPath {
                published: label,
                container_port: p.container_port,
                judged_as: "container".into(),
            }],
            hints: pair.hints.clone(),
            caveats: vec![],
        });
    }
    if policy.settings.host == EdgeDefault::Allow {
        let reason =
            format!("{set} (the default): netguard does not filter connections to this host");
        return Ok(settled("host", from, to, ask, (true, reason), set, true));
    }
    if let Err(why) = standing(plan, c) {
        return Ok(settled("host", from, to, ask, (false, why), set, false));
    }
    let groups = groups_of(plan, c);
    let checked = checks(
        plan,
        |f| matches!(f.to_peers, Peers::Host),
        |f| peers_match(&f.from, &groups),
        |_| true,
        ask,
    );
    let mut hints = Vec::new();
    if groups.is_empty() {
        hints.push(format!("{} is in no group", c.name));
    }
    Ok(decide("host", set, from, to, ask, checked, vec![], hints))
}

fn nets_cover(p: &Peers, addr: Option<IpAddr>) -> bool {
    match (p, addr) {
        (Peers::World, _) => true,
        (Peers::Nets(n), Some(a)) => n.iter().any(|n| n.contains(a)),
        _ => false,
    }
}

fn egress(
    policy: &Policy,
    plan: &Plan,
    c: &Container,
    dst: &Peer,
    ask: Option<&PortSpec>,
) -> EdgeExplanation {
    let from = container_peer(policy, plan, c);
    let to = plain(dst);
    let set = setting("egress", policy.settings.egress);
    if let Err(why) = standing(plan, c)
        && planned(plan, c).is_none_or(|p| !p.managed)
    {
        return settled("egress", from, to, ask, (true, why), set, false);
    }
    if policy.settings.egress == EdgeDefault::Allow {
        let reason =
            format!("{set} (the default): netguard does not filter connections out of this host");
        return settled("egress", from, to, ask, (true, reason), set, true);
    }
    if let Err(why) = standing(plan, c) {
        return settled("egress", from, to, ask, (false, why), set, false);
    }
    let addr = match dst {
        Peer::Addr(a) => Some(*a),
        _ => None,
    };
    let groups = groups_of(plan, c);
    let checked = checks(
        plan,
        |f| f.from_peers.is_containers() && matches!(f.to_peers, Peers::World | Peers::Nets(_)),
        |f| peers_match(&f.from, &groups),
        |f| nets_cover(&f.to_peers, addr),
        ask,
    );
    let mut hints = Vec::new();
    if addr.is_none() {
        for (e, _) in checked
            .iter()
            .filter(|(e, _)| e.from_matches && !e.to_matches)
        {
            hints.push(format!(
                "{} may open {} to {} only ({})",
                c.name,
                e.ports
                    .as_ref()
                    .map(|p| p.join(","))
                    .unwrap_or_else(|| "all".into()),
                e.to.join(", "),
                e.origin
            ));
        }
    }
    if groups.is_empty() {
        hints.push(format!("{} is in no group", c.name));
    }
    if addr.is_some() {
        hints.push(
            "an address of this host is the host edge: ask `explain FROM host PORT`".to_string(),
        );
    }
    decide("egress", set, from, to, ask, checked, vec![], hints)
}

fn ingress(
    policy: &Policy,
    plan: &Plan,
    src: &Peer,
    c: &Container,
    ask: Option<&PortSpec>,
) -> EdgeExplanation {
    let from = plain(src);
    let to = container_peer(policy, plan, c);
    let set = setting("ingress", policy.settings.ingress);
    let published = published_paths(c, planned(plan, c), ask);
    if let Err(why) = standing(plan, c)
        && planned(plan, c).is_none_or(|p| !p.managed)
    {
        let mut x = settled("ingress", from, to, ask, (true, why), set, false);
        x.published = published;
        return x;
    }
    if policy.settings.ingress == EdgeDefault::Allow {
        let reason =
            format!("{set} (the default): netguard does not filter connections from outside");
        let mut x = settled("ingress", from, to, ask, (true, reason), set, true);
        x.published = published;
        return x;
    }
    if let Err(why) = standing(plan, c) {
        let why = why.replace(
            "reaches nothing beyond its network",
            "nothing outside reaches it",
        );
        let mut x = settled("ingress", from, to, ask, (false, why), set, false);
        x.published = published;
        return x;
    }
    let addr = match src {
        Peer::Addr(a) => Some(*a),
        _ => None,
    };
    let groups = groups_of(plan, c);
    let checked = checks(
        plan,
        |f| {
            matches!(f.from_peers, Peers::World | Peers::Nets(_))
                && matches!(f.to_peers, Peers::Groups(_))
        },
        |f| nets_cover(&f.from_peers, addr),
        |f| peers_match(&f.to, &groups),
        ask,
    );
    let mut hints = Vec::new();
    if addr.is_none() {
        for (e, _) in checked
            .iter()
            .filter(|(e, _)| e.to_matches && !e.from_matches)
        {
            hints.push(format!(
                "{} is open to {} only ({})",
                c.name,
                e.from.join(", "),
                e.origin
            ));
        }
    }
    if groups.is_empty() {
        hints.push(format!("{} is in no group", c.name));
    }
    decide("ingress", set, from, to, ask, checked, published, hints)
}

/// The text of an edge answer.
pub fn render(x: &EdgeExplanation, style: Style) -> String {
    let mut out = String::new();
    let what = x.port.as_deref().unwrap_or("any new connection");
    let verdict = if x.allowed {
        style.green("ALLOWED")
    } else {
        style.red("DENIED")
    };
    let _ = writeln!(out, "{} → {} {what}: {verdict}", x.from.name, x.to.name);
    let _ = writeln!(out, "  {}", x.reason);
    if let Some(s) = &x.setting {
        let _ = writeln!(out, "  edge {}: {s}", x.edge);
    }
    let through: Vec<&str> = x.published.iter().map(|p| p.published.as_str()).collect();
    if x.edge == "ingress" && !through.is_empty() {
        let _ = writeln!(out, "  through published {}", through.join(", "));
    }
    for h in &x.hints {
        let _ = writeln!(out, "{} {h}", style.yellow("hint:"));
    }
    for c in &x.caveats {
        let _ = writeln!(out, "{} {c}", style.red("kernel:"));
    }
    out.push('\n');
    for p in [&x.from, &x.to] {
        if let Some(s) = &p.container {
            let relevant: BTreeSet<&str> = x
                .entries
                .iter()
                .flat_map(|e| e.from.iter().chain(&e.to).map(String::as_str))
                .collect();
            render_side(&mut out, s, &relevant, style);
        }
    }
    if !x.entries.is_empty() {
        let _ = writeln!(out, "{}", style.bold("allow entries:"));
        for e in &x.entries {
            let _ = writeln!(
                out,
                "  {:<24} {:<28} from {} to {} port {}",
                e.origin,
                line_text(e),
                mark(style, e.from_matches),
                mark(style, e.to_matches),
                mark(style, e.port_matches)
            );
        }
    }
    out
}
