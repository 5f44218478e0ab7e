//! `netguard explain FROM TO [PORT/PROTO]`: is a new connection allowed, which allow entry
//! decides, and why each side is (or is not) in each group. Pure: (policy, plan, inventory).

use super::style::Style;
use crate::bridge::Blind;
use crate::inventory::{Container, Inventory};
use crate::plan::{Flow, Plan, PlannedContainer};
use crate::policy::{Policy, PortSpec, Proto, Selector};
use serde::Serialize;
use std::collections::BTreeSet;
use std::fmt::Write;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ExplainError {
    #[error("no container {name:?}{}", hint(.close))]
    Unknown { name: String, close: Vec<String> },
    #[error("ambiguous container {key:?}: the id prefix matches {}", .matches.join(", "))]
    Ambiguous { key: String, matches: Vec<String> },
    #[error("bad PORT/PROTO {0:?}: {1}")]
    BadPort(String, String),
    #[error("{0:?} is a port range: ask about one port, e.g. \"8080/tcp\"")]
    Range(String),
    #[error(
        "FROM and TO are the same container ({0}): netguard never filters a container's traffic to itself"
    )]
    Same(String),
    #[error(
        "nothing to explain in {0}: netguard judges connections from or to managed containers, so one side must be a container"
    )]
    NoContainer(String),
}

fn hint(close: &[String]) -> String {
    if close.is_empty() {
        String::new()
    } else {
        format!(" (did you mean {}?)", close.join(", "))
    }
}

/// Containers whose name is close to `key` (edit distance, prefix or substring), best first.
pub fn close_matches(inv: &Inventory, key: &str) -> Vec<String> {
    let mut scored: Vec<(f64, String)> = inv
        .containers
        .iter()
        .map(|c| {
            let mut s = strsim::jaro_winkler(key, &c.name);
            if c.name.contains(key) || key.contains(c.name.as_str()) {
                s = s.max(0.9);
            }
            (s, c.name.clone())
        })
        .filter(|(s, _)| *s >= 0.75)
        .collect();
    scored.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
    scored.into_iter().take(3).map(|(_, n)| n).collect()
}

/// A container by name, id or unique id prefix, with close names when there is none.
pub fn find_container<'a>(inv: &'a Inventory, key: &str) -> Result<&'a Container, ExplainError> {
    find(inv, key)
}

pub(super) fn find<'a>(inv: &'a Inventory, key: &str) -> Result<&'a Container, ExplainError> {
    inv.lookup(key).map_err(|matches| {
        if matches.is_empty() {
            ExplainError::Unknown {
                name: key.to_string(),
                close: close_matches(inv, key),
            }
        } else {
            ExplainError::Ambiguous {
                key: key.to_string(),
                // Enough of each id to tell them apart, as `docker ps` shows them.
                matches: matches
                    .iter()
                    .map(|c| format!("{} ({})", c.name, c.id.get(..12).unwrap_or(&c.id)))
                    .collect(),
            }
        }
    })
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KeyCheck {
    /// `name`, `image`, `network`, `label KEY`.
    pub key: String,
    pub pattern: String,
    /// What the container has (`(absent)` for a missing label).
    pub value: String,
    pub matched: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SelectorCheck {
    pub origin: String,
    pub matched: bool,
    pub keys: Vec<KeyCheck>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GroupCheck {
    pub group: String,
    pub member: bool,
    pub selectors: Vec<SelectorCheck>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Side {
    pub name: String,
    pub id: String,
    pub groups: Vec<String>,
    pub checks: Vec<GroupCheck>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NetworkCheck {
    pub network: String,
    pub bridge: String,
    pub managed: bool,
    pub from_admitted: bool,
    pub to_admitted: bool,
    /// Why an endpoint is not admitted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EntryCheck {
    pub origin: String,
    pub from: Vec<String>,
    pub to: Vec<String>,
    /// `None`: all traffic.
    pub ports: Option<Vec<String>>,
    pub from_matches: bool,
    pub to_matches: bool,
    /// The asked port is covered (always true when no port was asked).
    pub port_matches: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Explanation {
    pub from: Side,
    pub to: Side,
    /// The asked `PORT/PROTO`, if any.
    pub port: Option<String>,
    pub allowed: bool,
    /// One sentence: why.
    pub reason: String,
    /// `FILE:LINE` of the allow entries that permit it (the first decides).
    pub decided_by: Vec<String>,
    /// Without a port: what FROM may open to TO.
    pub services: Vec<String>,
    pub networks: Vec<NetworkCheck>,
    pub entries: Vec<EntryCheck>,
    pub hints: Vec<String>,
    /// TO's published ports for the asked port (all of them without a port), and how each
    /// is judged: as TO itself (the same verdict) or, for a container netguard does not
    /// admit, as a connection to this host.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub published: Vec<PublishedPath>,
    /// Why the kernel may not do what the policy says right now (tables missing or stale,
    /// br_netfilter absent, a bridge the hook does not see). Filled in by the caller, which
    /// reads the kernel ([`kernel_caveats`]); the verdict
    /// itself is always the policy's.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub caveats: Vec<String>,
}

/// One published port of TO and how a connection to it is judged.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PublishedPath {
    /// The host side: `15432/tcp` (every address of the host) or `192.0.2.2:15432/tcp`.
    pub published: String,
    /// The container port it is carried to.
    pub container_port: u16,
    /// `container`: as a direct connection to TO on `container_port` (the verdict above);
    /// `host`: as a connection to this host (TO is on no managed network), see
    /// `explain FROM host`. A managed TO that is not admitted keeps `container`: its
    /// published ports reach it as little as its address does (fail closed).
    pub judged_as: String,
}

/// The host side of a published mapping, as `explain` and `diff` name it.
pub fn published_label(p: &crate::inventory::PublishedPort) -> String {
    match p.host_ip {
        Some(std::net::IpAddr::V6(a)) => format!("[{a}]:{}/{}", p.host_port, p.proto.as_str()),
        Some(a) => format!("{a}:{}/{}", p.host_port, p.proto.as_str()),
        None => format!("{}/{}", p.host_port, p.proto.as_str()),
    }
}

/// `to`'s published mappings carried to the asked port (all without one): judged as `to`
/// when it is on a managed network (admitted or not: the kernel's catch-all published sets
/// hold a managed container's mappings either way), else as the host.
pub(super) fn published_paths(
    to: &Container,
    pto: Option<&PlannedContainer>,
    ask: Option<&PortSpec>,
) -> Vec<PublishedPath> {
    let managed = pto.is_some_and(|p| p.managed);
    to.published
        .iter()
        .filter(|p| {
            ask.is_none_or(|a| a.proto.as_str() == p.proto.as_str() && a.low == p.container_port)
        })
        .map(|p| PublishedPath {
            published: published_label(p),
            container_port: p.container_port,
            judged_as: if managed { "container" } else { "host" }.into(),
        })
        .collect()
}

/// What may make the kernel disagree with an explanation: `live` is netguard's tables as
/// read (or why they could not be), `blind` the bridges of this pair the inet forward hook
/// does not see and why (`bridge::forward_hook_blind`).
pub fn kernel_caveats(
    plan: &Plan,
    live: Result<&crate::nft::LiveState, String>,
    blind: &[(String, Blind)],
) -> Vec<String> {
    use crate::plan::ruleset::Family;
    let mut out = Vec::new();
    let mut installed = true;
    match live {
        Err(e) => out.push(format!(
            "the kernel was not read ({e}): this is what the policy says, not what is enforced"
        )),
        Ok(live) if !super::status::live_has(live, Family::Inet) => {
            installed = false;
            out.push(
                "netguard's tables are not installed: nothing is enforced yet \
                 (`netguard diff`, then `netguard apply`)"
                    .into(),
            )
        }
        Ok(live) if !crate::nft::diff(&plan.ruleset, live).is_empty() => out.push(
            "the kernel is not in sync with this policy and these containers: packets follow \
             what was applied last (`netguard diff` shows the difference)"
                .into(),
        ),
        Ok(_) => {}
    }
    if blind.iter().any(|(_, why)| *why == Blind::NoBrNetfilter) {
        out.push(
            "br_netfilter is not loaded: traffic between two containers of one bridge is not \
             filtered at all"
                .into(),
        );
    }
    // Without tables the caveat above already says nothing is enforced, and the `apply` it
    // asks for turns these switches on; br_netfilter, which `apply` may fail to load, is
    // said either way.
    if installed {
        for (bridge, why) in blind {
            if *why == Blind::SwitchesOff {
                out.push(format!(
                    "bridge {bridge}: neither its nf_call_iptables/nf_call_ip6tables switches \
                     nor the host-wide bridge-nf-call sysctls are on, so its traffic is not \
                     filtered at all (`netguard apply` turns the switches on)"
                ));
            }
        }
    }
    out
}

impl Explanation {
    /// The bridges of the managed networks both sides share: where netguard's rules would
    /// have to see their traffic.
    pub fn managed_bridges(&self) -> Vec<&str> {
        let mut b: Vec<&str> = self
            .networks
            .iter()
            .filter(|n| n.managed)
            .map(|n| n.bridge.as_str())
            .collect();
        b.sort();
        b.dedup();
        b
    }
}

fn selector_check(sel: &Selector, c: &Container) -> SelectorCheck {
    let mut keys = Vec::new();
    if let Some(g) = &sel.name {
        keys.push(KeyCheck {
            key: "name".into(),
            pattern: g.as_str().into(),
            value: c.name.clone(),
            matched: g.matches(&c.name),
        });
    }
    if let Some(g) = &sel.image {
        keys.push(KeyCheck {
            key: "image".into(),
            pattern: g.as_str().into(),
            value: c.image.clone(),
            matched: g.matches(&c.image),
        });
    }
    for (k, g) in &sel.labels {
        let v = c.labels.get(k);
        keys.push(KeyCheck {
            key: format!("label {k}"),
            pattern: g.as_str().into(),
            value: v.cloned().unwrap_or_else(|| "(absent)".into()),
            matched: v.is_some_and(|v| g.matches(v)),
        });
    }
    if let Some(g) = &sel.network {
        let nets: Vec<&str> = c.endpoints.iter().map(|e| e.network.as_str()).collect();
        keys.push(KeyCheck {
            key: "network".into(),
            pattern: g.as_str().into(),
            value: nets.join(","),
            matched: nets.iter().any(|n| g.matches(n)),
        });
    }
    let file = sel
        .loc
        .file
        .file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_default();
    SelectorCheck {
        origin: format!("{file}:{}", sel.loc.line),
        matched: keys.iter().all(|k| k.matched),
        keys,
    }
}

pub(super) fn side(policy: &Policy, c: &Container, pc: Option<&PlannedContainer>) -> Side {
    let checks: Vec<GroupCheck> = policy
        .groups
        .values()
        .map(|g| {
            let selectors: Vec<SelectorCheck> =
                g.selectors.iter().map(|s| selector_check(s, c)).collect();
            GroupCheck {
                group: g.name.clone(),
                member: selectors.iter().any(|s| s.matched),
                selectors,
            }
        })
        .collect();
    Side {
        name: c.name.clone(),
        id: c.id.clone(),
        groups: pc.map(|p| p.groups.clone()).unwrap_or_default(),
        checks,
    }
}

pub(super) fn peers_match(peers: &[String], groups: &[String]) -> bool {
    peers.iter().any(|p| p == "*" || groups.contains(p))
}

pub(super) fn ports_text(f: &Flow) -> Option<Vec<String>> {
    f.ports
        .as_ref()
        .map(|p| p.iter().map(|p| p.to_string()).collect())
}

pub(super) fn covers(f: &Flow, ask: Option<&PortSpec>) -> bool {
    match (ask, &f.ports) {
        (None, _) | (_, None) => true,
        (Some(a), Some(ps)) => ps.iter().any(|p| p.contains(a.proto, a.low)),
    }
}

fn entries_for(
    plan: &Plan,
    from: &[String],
    to: &[String],
    ask: Option<&PortSpec>,
) -> Vec<EntryCheck> {
    plan.flows
        .iter()
        .map(|f| EntryCheck {
            origin: f.origin.clone(),
            from: f.from.clone(),
            to: f.to.clone(),
            ports: ports_text(f),
            from_matches: peers_match(&f.from, from),
            to_matches: peers_match(&f.to, to),
            port_matches: covers(f, ask),
        })
        .collect()
}

/// Parses `8080/tcp`, `tcp/8080` or `icmp` into a single-port spec.
pub fn parse_port(s: &str) -> Result<PortSpec, ExplainError> {
    let flipped = match s.split_once('/') {
        Some((a, b)) if a.chars().all(|c| c.is_ascii_alphabetic()) => format!("{b}/{a}"),
        _ => s.to_string(),
    };
    let p =
        PortSpec::parse(&flipped).map_err(|e| ExplainError::BadPort(s.into(), e.to_string()))?;
    if p.low != p.high {
        return Err(ExplainError::Range(s.into()));
    }
    Ok(p)
}

/// The two containers asked about, as the inventory and the plan know them.
struct Pair<'a> {
    a: &'a Container,
    b: &'a Container,
    /// `None`: not in the plan (no endpoint netguard knows of).
    pa: Option<&'a PlannedContainer>,
    pb: Option<&'a PlannedContainer>,
}

/// Finds FROM and TO (names, ids or unique id prefixes) and their planned endpoints.
fn resolve<'a>(
    plan: &'a Plan,
    inv: &'a Inventory,
    from: &str,
    to: &str,
) -> Result<Pair<'a>, ExplainError> {
    let a = find(inv, from)?;
    let b = find(inv, to)?;
    if a.id == b.id {
        return Err(ExplainError::Same(a.name.clone()));
    }
    Ok(Pair {
        a,
        b,
        pa: plan.containers.iter().find(|c| c.id == a.id),
        pb: plan.containers.iter().find(|c| c.id == b.id),
    })
}

/// The bridges both sides are on, with each side's admission there.
fn shared_networks(pair: &Pair) -> Vec<NetworkCheck> {
    let mut networks = Vec::new();
    let (Some(pa), Some(pb)) = (pair.pa, pair.pb) else {
        return networks;
    };
    for ea in &pa.endpoints {
        for eb in pb.endpoints.iter().filter(|e| e.bridge == ea.bridge) {
            // The same address (`--network container:X`) is one endpoint: no traffic
            // between them ever crosses the bridge.
            if ea.ipv4.is_some() && ea.ipv4 == eb.ipv4 || ea.ipv6.is_some() && ea.ipv6 == eb.ipv6 {
                continue;
            }
            let reason = ea
                .reason
                .as_ref()
                .map(|r| format!("{}: {r}", pair.a.name))
                .or_else(|| eb.reason.as_ref().map(|r| format!("{}: {r}", pair.b.name)));
            networks.push(NetworkCheck {
                network: ea.network.clone(),
                bridge: ea.bridge.clone(),
                managed: ea.managed,
                from_admitted: ea.admitted,
                to_admitted: eb.admitted,
                reason,
            });
        }
    }
    networks
}

/// The policy's answer for one direction.
struct Verdict {
    allowed: bool,
    reason: String,
    decided_by: Vec<String>,
    services: Vec<String>,
}

/// Judges FROM → TO: no path, an unmanaged network, the allow entries, or fail closed.
fn judge(
    plan: &Plan,
    pair: &Pair,
    networks: &[NetworkCheck],
    entries: &[EntryCheck],
    ask: Option<&PortSpec>,
) -> Verdict {
    let denied = |reason: String, services: Vec<String>| Verdict {
        allowed: false,
        reason,
        decided_by: vec![],
        services,
    };
    if networks.is_empty() {
        return denied(
            format!(
                "{} and {} share no network: there is no path between them",
                pair.a.name, pair.b.name
            ),
            vec![],
        );
    }
    if let Some(n) = networks.iter().find(|n| !n.managed) {
        return Verdict {
            allowed: true,
            reason: format!(
                "network {} is not managed by netguard: its traffic is left untouched",
                n.network
            ),
            decided_by: vec![],
            services: vec!["all".to_string()],
        };
    }
    if !networks.iter().any(|n| n.from_admitted && n.to_admitted) {
        let why = networks
            .iter()
            .find_map(|n| n.reason.clone())
            .unwrap_or_else(|| "an endpoint is not admitted".into());
        return denied(
            format!(
                "not admitted, so it reaches no one and no one reaches it (fail closed): {why}"
            ),
            vec![],
        );
    }
    entries_verdict(plan, entries, ask)
}

/// The allow entries' answer for two admitted containers.
fn entries_verdict(plan: &Plan, entries: &[EntryCheck], ask: Option<&PortSpec>) -> Verdict {
    let denied = |reason: String, services: Vec<String>| Verdict {
        allowed: false,
        reason,
        decided_by: vec![],
        services,
    };
    let services = if ask.is_none() {
        services(plan, entries)
    } else {
        vec![]
    };
    let permit: Vec<&EntryCheck> = entries
        .iter()
        .filter(|e| e.from_matches && e.to_matches && e.port_matches)
        .collect();
    let Some(first) = permit.first() else {
        return denied(
            "default deny: no allow entry permits it".to_string(),
            services,
        );
    };
    Verdict {
        allowed: true,
        reason: format!(
            "allowed by {} ({} → {} {})",
            first.origin,
            first.from.join(","),
            first.to.join(","),
            first
                .ports
                .as_ref()
                .map(|p| p.join(","))
                .unwrap_or_else(|| "all".into())
        ),
        decided_by: permit.iter().map(|e| e.origin.clone()).collect(),
        services,
    }
}

/// Without a port: everything the matching entries let FROM open to TO.
fn services(plan: &Plan, entries: &[EntryCheck]) -> Vec<String> {
    let mut acc = super::access::Access::default();
    for (e, f) in entries.iter().zip(&plan.flows) {
        if e.from_matches && e.to_matches {
            match &f.ports {
                None => acc.all = true,
                Some(ps) => {
                    for p in ps {
                        acc.add(&service_of(p));
                    }
                }
            }
        }
    }
    acc.labels()
}

/// Near misses of a denial the policy judged: other ports of the same direction, the
/// opposite direction, a side in no group.
fn hints(
    plan: &Plan,
    pair: &Pair,
    sides: (&[String], &[String]),
    entries: &[EntryCheck],
    ask: Option<&PortSpec>,
) -> Vec<String> {
    let (groups_a, groups_b) = sides;
    let (a, b) = (&pair.a.name, &pair.b.name);
    let arrow = format!("{a}→{b}");
    let mut hints = Vec::new();
    // Same direction, other ports.
    for (e, f) in entries.iter().zip(&plan.flows) {
        if e.from_matches && e.to_matches && !e.port_matches {
            if let (Some(ask), Some(ps)) = (ask, &f.ports) {
                let list: Vec<String> = ps.iter().map(|p| p.to_string()).collect();
                hints.push(format!(
                    "{arrow} allows {}, not {ask} ({})",
                    list.join(", "),
                    e.origin
                ));
            }
        }
    }
    // The other direction.
    let reverse = entries_for(plan, groups_b, groups_a, ask);
    if let Some(r) = reverse
        .iter()
        .find(|e| e.from_matches && e.to_matches && e.port_matches)
    {
        hints.push(format!(
            "{arrow} is denied but {b}→{a} is allowed{} ({}): allow entries are one-way",
            ask.map(|p| format!(" on {p}")).unwrap_or_default(),
            r.origin
        ));
    }
    if groups_a.is_empty() {
        hints.push(format!("{a} is in no group"));
    }
    if groups_b.is_empty() {
        hints.push(format!("{b} is in no group"));
    }
    hints
}

/// Explains `from → to` (names, ids or unique id prefixes).
pub fn explain(
    policy: &Policy,
    plan: &Plan,
    inv: &Inventory,
    from: &str,
    to: &str,
    port: Option<&str>,
) -> Result<Explanation, ExplainError> {
    let ask = port.map(parse_port).transpose()?;
    let pair = resolve(plan, inv, from, to)?;
    let from_side = side(policy, pair.a, pair.pa);
    let to_side = side(policy, pair.b, pair.pb);
    let networks = shared_networks(&pair);
    let entries = entries_for(plan, &from_side.groups, &to_side.groups, ask.as_ref());
    let published = published_paths(pair.b, pair.pb, ask.as_ref());
    let admitted =
        |p: Option<&PlannedContainer>| p.is_some_and(|p| p.endpoints.iter().any(|e| e.admitted));
    // No common network, but a published port of TO that is judged as TO: the allow
    // entries decide, wherever FROM sits (docker-proxy or a DNAT between bridges).
    let via_published = networks.is_empty() && published.iter().any(|p| p.judged_as == "container");
    let mut verdict = judge(plan, &pair, &networks, &entries, ask.as_ref());
    let through: Vec<&str> = published.iter().map(|p| p.published.as_str()).collect();
    if via_published && !(admitted(pair.pa) && admitted(pair.pb)) {
        // The kernel holds a managed container's mappings in the catch-all published sets
        // whether it is admitted or not, and only admitted members in the lines' sets.
        let who = if admitted(pair.pa) {
            &pair.b.name
        } else {
            &pair.a.name
        };
        verdict = Verdict {
            allowed: false,
            reason: format!(
                "{} and {} share no network; through published {} it is judged as a direct \
                 connection, and {who} is not admitted (fail closed)",
                pair.a.name,
                pair.b.name,
                through.join(", "),
            ),
            decided_by: vec![],
            services: vec![],
        };
    } else if via_published {
        let v = entries_verdict(plan, &entries, ask.as_ref());
        verdict = Verdict {
            reason: format!(
                "{} and {} share no network; through published {} it is judged as a direct \
                 connection: {}",
                pair.a.name,
                pair.b.name,
                through.join(", "),
                v.reason
            ),
            ..v
        };
    }
    // Hints only where the policy decided (managed, both admitted) and said no.
    let judged = via_published && admitted(pair.pa) && admitted(pair.pb)
        || !networks.is_empty()
            && networks.iter().all(|n| n.managed)
            && networks.iter().any(|n| n.from_admitted && n.to_admitted);
    let hints = if !verdict.allowed && judged {
        let sides = (&from_side.groups[..], &to_side.groups[..]);
        hints(plan, &pair, sides, &entries, ask.as_ref())
    } else {
        Vec::new()
    };
    Ok(Explanation {
        from: from_side,
        to: to_side,
        port: ask.map(|p| p.to_string()),
        allowed: verdict.allowed,
        reason: verdict.reason,
        decided_by: verdict.decided_by,
        services: verdict.services,
        networks,
        entries,
        hints,
        published,
        caveats: Vec::new(),
    })
}

fn service_of(p: &PortSpec) -> super::access::Service {
    match p.proto {
        Proto::Icmp => super::access::Service::Icmp,
        proto => super::access::Service::Ports {
            proto: proto.as_str().into(),
            ranges: vec![(p.low, p.high)],
        },
    }
}

pub(super) fn mark(style: Style, ok: bool) -> String {
    if ok {
        style.green("✓")
    } else {
        style.red("✗")
    }
}

/// Shows a side's member groups, and the groups an entry would need it in (`relevant`);
/// the JSON output has every group.
pub(super) fn render_side(out: &mut String, s: &Side, relevant: &BTreeSet<&str>, style: Style) {
    let groups = if s.groups.is_empty() {
        "no group".to_string()
    } else {
        format!("groups {}", s.groups.join(", "))
    };
    let id = if s.id != s.name {
        format!(" ({})", s.id.chars().take(12).collect::<String>())
    } else {
        String::new()
    };
    let _ = writeln!(out, "{}{id}: {groups}", style.bold(&s.name));
    let shown: Vec<&GroupCheck> = s
        .checks
        .iter()
        .filter(|g| g.member || relevant.contains(g.group.as_str()))
        .collect();
    let hidden = s.checks.len() - shown.len();
    for g in shown {
        let _ = writeln!(
            out,
            "  {} {:<12} {}",
            mark(style, g.member),
            g.group,
            if g.member { "member" } else { "not a member" }
        );
        for sel in &g.selectors {
            let keys: Vec<String> = sel
                .keys
                .iter()
                .map(|k| {
                    format!(
                        "{} {} {:?} (is {:?})",
                        k.key,
                        mark(style, k.matched),
                        k.pattern,
                        k.value
                    )
                })
                .collect();
            let _ = writeln!(out, "      selector {}: {}", sel.origin, keys.join(", "));
        }
    }
    if hidden > 0 {
        let _ = writeln!(
            out,
            "  ({hidden} unrelated group{} not shown; --output json lists all)",
            if hidden == 1 { "" } else { "s" }
        );
    }
}

pub fn render(x: &Explanation, style: Style) -> String {
    let mut out = String::new();
    let what = x.port.as_deref().unwrap_or("any new connection");
    let verdict = if x.allowed {
        style.green("ALLOWED")
    } else {
        style.red("DENIED")
    };
    let _ = writeln!(out, "{} → {} {what}: {verdict}", x.from.name, x.to.name);
    let _ = writeln!(out, "  {}", x.reason);
    if x.port.is_none() && !x.services.is_empty() {
        let _ = writeln!(out, "  may open: {}", x.services.join(", "));
    }
    render_published(&mut out, &x.from.name, &x.to.name, &x.published);
    for n in &x.networks {
        let state = if !n.managed {
            "not managed".to_string()
        } else if n.from_admitted && n.to_admitted {
            "managed, both admitted".to_string()
        } else {
            format!(
                "managed, NOT ADMITTED: {}",
                n.reason.as_deref().unwrap_or("?")
            )
        };
        let _ = writeln!(
            out,
            "  network {} (bridge {}): {state}",
            n.network, n.bridge
        );
    }
    for h in &x.hints {
        let _ = writeln!(out, "{} {h}", style.yellow("hint:"));
    }
    // Right under the verdict's details: a 3 a.m. reader must not miss that the kernel
    // may be doing something else.
    for c in &x.caveats {
        let _ = writeln!(out, "{} {c}", style.red("kernel:"));
    }
    out.push('\n');
    // Groups FROM would need to be in for an entry towards TO, and the other way round.
    let from_rel: BTreeSet<&str> = x
        .entries
        .iter()
        .filter(|e| e.to_matches)
        .flat_map(|e| e.from.iter().map(String::as_str))
        .collect();
    let to_rel: BTreeSet<&str> = x
        .entries
        .iter()
        .filter(|e| e.from_matches)
        .flat_map(|e| e.to.iter().map(String::as_str))
        .collect();
    render_side(&mut out, &x.from, &from_rel, style);
    render_side(&mut out, &x.to, &to_rel, style);
    if !x.entries.is_empty() {
        let _ = writeln!(out, "{}", style.bold("allow entries:"));
        for e in &x.entries {
            let _ = writeln!(
                out,
                "  {:<24} {:<28} from {} to {} port {}",
                e.origin,
                format!(
                    "{} → {} {}",
                    e.from.join(","),
                    e.to.join(","),
                    e.ports
                        .as_ref()
                        .map(|p| p.join(","))
                        .unwrap_or_else(|| "all".into())
                ),
                mark(style, e.from_matches),
                mark(style, e.to_matches),
                mark(style, e.port_matches)
            );
        }
    }
    out
}

/// The published ports of TO under the verdict: the same verdict, or the host's.
fn render_published(out: &mut String, from: &str, to: &str, published: &[PublishedPath]) {
    let same: Vec<&str> = published
        .iter()
        .filter(|p| p.judged_as == "container")
        .map(|p| p.published.as_str())
        .collect();
    if !same.is_empty() {
        let _ = writeln!(
            out,
            "  also through published {}: the same verdict (a published port is the container \
             behind it)",
            same.join(", ")
        );
    }
    for p in published.iter().filter(|p| p.judged_as == "host") {
        let _ = writeln!(
            out,
            "  published {} counts as this host ({to} is on no managed network): `netguard explain \
             {from} host {}`",
            p.published,
            p.published.rsplit(':').next().unwrap_or(&p.published)
        );
    }
}

pub fn json(x: &Explanation) -> serde_json::Value {
    let mut v = serde_json::to_value(x).unwrap_or(serde_json::Value::Null);
    if let Some(o) = v.as_object_mut() {
        o.insert("ok".into(), serde_json::Value::Bool(true));
    }
    v
}
