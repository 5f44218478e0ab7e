//! `netguard diff` for humans: which container pairs and ports become allowed or denied,
//! which containers join or leave which groups, then the nft objects that change.
//!
//! "Before" is what the live kernel enforces, read back from netguard's own table
//! ([`View::from_live`]); "after" is the plan's desired table read through the same
//! model. Before the first rollout there is no table and every pair of containers on a
//! managed network is open: the denied list is then the impact of the rollout.

use super::access::{Matrix, PairAccess, View, matrix};
use super::edge_access::{edge_matrix, outside_blocks, published_matrix};
use super::edges::{Edge, Published};
use super::style::Style;
use crate::inventory::Unisolable;
use crate::nft::{Changes, LiveState};
use crate::plan::Plan;
use crate::plan::ruleset::Elem;
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write;

/// One direction of one pair, and what changes for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FlowChange {
    pub from: String,
    pub to: String,
    /// `"ipv4+ipv6"`, `"ipv4"` or `"ipv6"`.
    pub family: String,
    /// `8080/tcp`, `9000-9010/udp`, `icmp`, `all`, `all except 8080/tcp`.
    pub services: Vec<String>,
    /// The pair also has addresses of the other IP version, where this does not change.
    #[serde(skip)]
    pub partial: bool,
    /// `None` between two containers; `host`, `egress`, `ingress` at an edge (`to` is
    /// `host` or an address block or `world`, or `from` is one for ingress), `published`
    /// for a container's published ports (`services` are their host ports).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub edge: Option<String>,
    /// The setting that decides it when no line does: `host = "deny"` on what an edge
    /// cuts, `host = "allow"` on what it opens once the setting is `allow`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub setting: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GroupChange {
    pub container: String,
    pub joins: Vec<String>,
    pub leaves: Vec<String>,
    /// `Some(true)`: enters netguard's sets; `Some(false)`: leaves them; `None`: unchanged.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub admitted: Option<bool>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Impact {
    /// No `inet netguard` table yet.
    pub first_rollout: bool,
    pub allowed: Vec<FlowChange>,
    pub denied: Vec<FlowChange>,
    pub groups: Vec<GroupChange>,
    /// Accept rules in the live `isolate` chain or the chains it jumps to that netguard could
    /// not read (they are replaced).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub unreadable_live_rules: Vec<String>,
    /// Containers no rule can confine (host network, shared namespace, macvlan, ...): a
    /// rollout leaves them exactly as open as before, which an operator must know.
    pub unisolable: Vec<Unisolable>,
}

fn changes_between(before: &Matrix, after: &Matrix) -> (Vec<FlowChange>, Vec<FlowChange>) {
    let keys: BTreeSet<&(String, String)> = before.keys().chain(after.keys()).collect();
    let empty = PairAccess::default();
    let mut allowed = Vec::new();
    let mut denied = Vec::new();
    for k in keys {
        let b = before.get(k).unwrap_or(&empty);
        let a = after.get(k).unwrap_or(&empty);
        let diff = |x: &Option<super::access::Access>, y: &Option<super::access::Access>| {
            let d = super::access::Access::default();
            x.as_ref().unwrap_or(&d).minus(y.as_ref().unwrap_or(&d))
        };
        let has4 = a.v4.is_some() || b.v4.is_some();
        let has6 = a.v6.is_some() || b.v6.is_some();
        for (out, g4, g6) in [
            (&mut allowed, diff(&a.v4, &b.v4), diff(&a.v6, &b.v6)),
            (&mut denied, diff(&b.v4, &a.v4), diff(&b.v6, &a.v6)),
        ] {
            let mut push = |family: &str, services: Vec<String>| {
                out.push(FlowChange {
                    from: k.0.clone(),
                    to: k.1.clone(),
                    family: family.into(),
                    services,
                    partial: has4 && has6 && family != "ipv4+ipv6",
                    edge: None,
                    setting: None,
                })
            };
            if !g4.is_empty() && g4 == g6 {
                push("ipv4+ipv6", g4);
            } else {
                if !g4.is_empty() {
                    push("ipv4", g4);
                }
                if !g6.is_empty() {
                    push("ipv6", g6);
                }
            }
        }
    }
    (allowed, denied)
}

fn group_changes(plan: &Plan, before: &View, after: &View) -> Vec<GroupChange> {
    let mut out = Vec::new();
    for c in &plan.containers {
        let mut b = (false, BTreeSet::new());
        let mut a = (false, BTreeSet::new());
        for e in &c.endpoints {
            for addr in e.addresses() {
                let (adm, g) = before.groups_of(&e.bridge, addr);
                b.0 |= adm;
                b.1.extend(g);
                let (adm, g) = after.groups_of(&e.bridge, addr);
                a.0 |= adm;
                a.1.extend(g);
            }
        }
        let joins: Vec<String> = a.1.difference(&b.1).cloned().collect();
        let leaves: Vec<String> = b.1.difference(&a.1).cloned().collect();
        let admitted = (a.0 != b.0).then_some(a.0);
        if !joins.is_empty() || !leaves.is_empty() || admitted.is_some() {
            out.push(GroupChange {
                container: c.name.clone(),
                joins,
                leaves,
                admitted,
            });
        }
    }
    out
}

/// What applying `plan` changes for the containers, given the live tables.
/// `unflagged`: bridges whose traffic the inet hook does not see today (`bridge::unseen_bridges`),
/// so whatever the live table says, they are open.
pub fn impact(plan: &Plan, live: &LiveState, unflagged: &BTreeSet<String>) -> Impact {
    let mut before = View::from_live(live);
    // Bridges the hook does not see are open whatever the table says.
    before.unseen = unflagged.clone();
    impact_between(plan, &before, &View::from_ruleset(&plan.ruleset))
}

/// What going from the enforcement `before` to `after` changes for `plan`'s containers.
pub fn impact_between(plan: &Plan, before: &View, after: &View) -> Impact {
    let (mut allowed, mut denied) =
        changes_between(&matrix(before, plan, true), &matrix(after, plan, true));
    let (a, d) = edge_changes(plan, before, after);
    allowed.extend(a);
    denied.extend(d);
    Impact {
        first_rollout: !before.present,
        allowed,
        denied,
        groups: group_changes(plan, before, after),
        unreadable_live_rules: before.unreadable_rules.clone(),
        unisolable: plan.unisolable.clone(),
    }
}

/// What changes at the edges: the host, egress and ingress lines and settings, per
/// container, then the published paths. A published mapping one table judges as its
/// container and the other as the host (e.g. a live table from before published ports
/// were judged as their container) shows exactly the pairs whose path it opens or cuts.
fn edge_changes(plan: &Plan, before: &View, after: &View) -> (Vec<FlowChange>, Vec<FlowChange>) {
    let mut allowed = Vec::new();
    let mut denied = Vec::new();
    for e in Edge::ALL {
        let blocks = outside_blocks(&[before, after], e);
        let (mut a, mut d) = changes_between(
            &edge_matrix(before, plan, e, &blocks),
            &edge_matrix(after, plan, e, &blocks),
        );
        if e != Edge::Host {
            a = fold_into_world(a, e);
            d = fold_into_world(d, e);
        }
        let name = e.as_str();
        for f in &mut a {
            f.edge = Some(name.into());
            if after.edges.get(e).is_none() {
                f.setting = Some(format!("{name} = \"allow\""));
            }
        }
        for f in &mut d {
            f.edge = Some(name.into());
            f.setting = Some(format!("{name} = \"deny\""));
        }
        allowed.extend(a);
        denied.extend(d);
    }
    let known: BTreeSet<Published> = before.published.union(&after.published).cloned().collect();
    if !known.is_empty() {
        let (mut a, mut d) = changes_between(
            &published_matrix(before, plan, &known),
            &published_matrix(after, plan, &known),
        );
        for f in a.iter_mut().chain(d.iter_mut()) {
            f.edge = Some("published".into());
        }
        allowed.append(&mut a);
        denied.append(&mut d);
    }
    (allowed, denied)
}

/// A block whose change for a container is the world's is not worth its own line: the
/// `world` line then stands for every address but the blocks still listed.
fn fold_into_world(changes: Vec<FlowChange>, e: Edge) -> Vec<FlowChange> {
    let container = |f: &FlowChange| match e {
        Edge::Ingress => f.to.clone(),
        _ => f.from.clone(),
    };
    let block = |f: &FlowChange| match e {
        Edge::Ingress => f.from.clone(),
        _ => f.to.clone(),
    };
    let world: BTreeMap<String, Vec<String>> = changes
        .iter()
        .filter(|f| block(f) == "world")
        .map(|f| (container(f), f.services.clone()))
        .collect();
    changes
        .into_iter()
        .filter(|f| block(f) == "world" || world.get(&container(f)) != Some(&f.services))
        .collect()
}

fn flow_line(f: &FlowChange) -> String {
    let fam = match f.family.as_str() {
        "ipv4" if f.partial => "  (IPv4 only)",
        "ipv6" if f.partial => "  (IPv6 only)",
        _ => "",
    };
    let setting = f
        .setting
        .as_ref()
        .map(|s| format!("  ({s})"))
        .unwrap_or_default();
    let services = f.services.join(", ");
    match f.edge.as_deref() {
        Some("published") => format!("{} → {} via published {services}{fam}", f.from, f.to),
        _ => format!("{} → {}  {services}{fam}{setting}", f.from, f.to),
    }
}

/// How the nft objects appear under the flows: one summary line (the default of `diff` and
/// `apply`), or the whole list (`--objects`, already rendered).
#[derive(Debug, Clone, Copy)]
pub enum Objects<'a> {
    Summary(&'a Changes),
    List(&'a str),
}

/// The human `diff`: flows, groups, then the nft objects (`objects`, already rendered).
pub fn render(impact: &Impact, objects: &str, in_sync: bool, style: Style) -> String {
    render_with(impact, Objects::List(objects), in_sync, style)
}

/// The human `diff`, with the objects as a summary line or a list.
pub fn render_with(impact: &Impact, objects: Objects, in_sync: bool, style: Style) -> String {
    let mut out = String::new();
    if in_sync {
        out.push_str(&style.green("in sync: no changes"));
        out.push('\n');
        render_unisolable(&mut out, impact, style);
        return out;
    }
    out.push_str(&render_flows(impact, style));
    match objects {
        Objects::Summary(changes) => {
            let _ = writeln!(
                out,
                "\n{} {} (`--objects` lists them)",
                style.bold("nftables objects:"),
                changes.summary(false)
            );
        }
        Objects::List(objects) => {
            let _ = writeln!(out, "\n{}", style.bold("nftables objects:"));
            for line in objects.lines() {
                let painted = if line.trim_start().starts_with('+') {
                    style.green(line)
                } else if line.trim_start().starts_with('-') {
                    style.red(line)
                } else {
                    line.to_string()
                };
                let _ = writeln!(out, "{painted}");
            }
        }
    }
    out
}

/// Flows, groups, warnings and the containers no rule can confine: what a change means for
/// the containers (`diff`, and `apply` once it is done).
pub fn render_flows(impact: &Impact, style: Style) -> String {
    let mut out = String::new();
    if impact.first_rollout {
        let _ = writeln!(
            out,
            "{}",
            style.bold("First rollout: netguard has no table on this host yet.")
        );
        let _ = writeln!(
            out,
            "Today every container can reach every other container on its network."
        );
        out.push('\n');
    }
    let cut = if impact.first_rollout {
        "Open today, cut by this rollout"
    } else {
        "Become denied"
    };
    let _ = writeln!(out, "{}", style.bold("Become allowed:"));
    if impact.allowed.is_empty() {
        let _ = writeln!(out, "  (none)");
    }
    for f in &impact.allowed {
        let _ = writeln!(out, "  {} {}", style.green("+"), flow_line(f));
    }
    let _ = writeln!(out, "{}", style.bold(&format!("{cut}:")));
    if impact.denied.is_empty() {
        let _ = writeln!(out, "  (none)");
    }
    for f in &impact.denied {
        let _ = writeln!(out, "  {} {}", style.red("-"), flow_line(f));
    }
    if !impact.groups.is_empty() {
        let _ = writeln!(out, "{}", style.bold("Group membership:"));
        for g in &impact.groups {
            let mut parts = Vec::new();
            match g.admitted {
                Some(true) => parts.push("admitted".to_string()),
                Some(false) => parts.push("no longer admitted".to_string()),
                None => {}
            }
            if !g.joins.is_empty() {
                parts.push(format!("joins {}", g.joins.join(", ")));
            }
            if !g.leaves.is_empty() {
                parts.push(format!("leaves {}", g.leaves.join(", ")));
            }
            let _ = writeln!(
                out,
                "  {} {}: {}",
                style.yellow("~"),
                g.container,
                parts.join("; ")
            );
        }
    }
    for r in &impact.unreadable_live_rules {
        let _ = writeln!(
            out,
            "{} live rule not made by netguard will be replaced: {r}",
            style.yellow("warning:")
        );
    }
    render_unisolable(&mut out, impact, style);
    out
}

/// Listed on every diff, in sync or not: being in sync says nothing about these.
fn render_unisolable(out: &mut String, impact: &Impact, style: Style) {
    if impact.unisolable.is_empty() {
        return;
    }
    let _ = writeln!(
        out,
        "{}",
        style.bold("Cannot be isolated (netguard does not filter their traffic):")
    );
    for u in &impact.unisolable {
        let _ = writeln!(out, "  {} {:<24} {}", style.yellow("!"), u.name, u.reason);
    }
}

/// Which container owns an element, for humans reading a diff.
fn owners(plan: &Plan) -> BTreeMap<String, String> {
    let mut m = BTreeMap::new();
    for c in &plan.containers {
        for e in &c.endpoints {
            for a in e
                .ipv4
                .map(|a| a.to_string())
                .into_iter()
                .chain(e.ipv6.map(|a| a.to_string()))
            {
                m.insert(a, c.name.clone());
            }
            if let Some(v) = &e.veth {
                m.insert(v.clone(), c.name.clone());
            }
        }
    }
    m
}

fn owner_of(owners: &BTreeMap<String, String>, e: &Elem) -> String {
    use Elem::*;
    let key = match e {
        IfnameV4(_, a) | V4(a) => a.to_string(),
        IfnameV6(_, a) | V6(a) | RawIfnameV6(_, a) | RawV6(a) => a.to_string(),
        Ifname(i)
        | IfnameMac(i, _)
        | IfnameMacV4(i, ..)
        | IfnameMacV6(i, ..)
        | RawIfnameMac(i, _) => i.clone(),
        IfnamePair(..) | Port(..) | Mac(_) | RawMac(_) | ProtoPort(..) | V4ProtoPort(..)
        | V6ProtoPort(..) => {
            return String::new();
        }
    };
    owners
        .get(&key)
        .map(|n| format!("  ({n})"))
        .unwrap_or_default()
}

/// The nft objects a diff or an apply changes, one per line, elements with their owner;
/// the last line is the summary. `render` shows it under "nftables objects:".
pub fn render_changes(plan: &Plan, changes: &Changes) -> String {
    let mut out = String::new();
    if changes.is_empty() {
        out.push_str("in sync: no changes\n");
        return out;
    }
    let owners = owners(plan);
    for t in changes.tables.iter().filter(|t| !t.is_empty()) {
        let fam = t.family.map(|f| f.as_str()).unwrap_or("?");
        let _ = writeln!(out, "table {fam} netguard:");
        if t.delete_table {
            let _ = writeln!(out, "  - delete table");
            continue;
        }
        if t.create_table {
            let _ = writeln!(out, "  + create table");
        }
        for (s, _) in &t.create_sets {
            let _ = writeln!(out, "  + set {s}");
        }
        for s in &t.delete_sets {
            let _ = writeln!(out, "  - set {s}");
        }
        for c in &t.create_chains {
            let _ = writeln!(out, "  + chain {c}");
        }
        for c in &t.delete_chains {
            let _ = writeln!(out, "  - chain {c}");
        }
        for r in &t.removed_rules {
            let _ = writeln!(out, "  - rule {r}");
        }
        for r in &t.added_rules {
            let _ = writeln!(out, "  + rule {r}");
        }
        for (set, elems) in &t.delete_elements {
            for e in elems {
                let _ = writeln!(out, "  - element {set} {{ {e} }}{}", owner_of(&owners, e));
            }
        }
        for (set, elems) in &t.add_elements {
            for e in elems {
                let _ = writeln!(out, "  + element {set} {{ {e} }}{}", owner_of(&owners, e));
            }
        }
    }
    let _ = writeln!(out, "{}", changes.summary(false));
    out
}

/// `diff --output json`: see docs/output.md.
pub fn json(impact: &Impact, changes: &Changes, warnings: &[String]) -> serde_json::Value {
    serde_json::json!({
        "ok": true,
        "in_sync": changes.is_empty(),
        "first_rollout": impact.first_rollout,
        "allowed": impact.allowed,
        "denied": impact.denied,
        "groups": impact.groups,
        "unreadable_live_rules": impact.unreadable_live_rules,
        "unisolable": impact.unisolable,
        "changes": changes,
        "warnings": warnings,
    })
}
