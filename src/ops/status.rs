//! `netguard status`: enforcement health first, then what is managed, then counters.

use super::style::Style;
use crate::bridge::NfCall;
use crate::nft::LiveState;
use crate::nft::render::comment_text;
use crate::plan::Plan;
use crate::plan::ruleset::Family;
use serde::Serialize;
use std::fmt::Write;
use std::path::Path;

pub use crate::state::DaemonState;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DaemonHealth {
    pub state_file: String,
    /// `None`: no state file (the daemon never ran here, or only `apply` is used).
    pub state: Option<DaemonState>,
    pub running: bool,
    /// The state file exists but cannot be read or parsed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Reads the daemon's state file; a process with that pid named `netguard` means running.
pub fn daemon_health(path: &Path) -> DaemonHealth {
    let mut h = DaemonHealth {
        state_file: path.display().to_string(),
        state: None,
        running: false,
        error: None,
    };
    match crate::state::read(path) {
        Ok(None) => {}
        Ok(Some(s)) => {
            h.running = std::fs::read_to_string(format!("/proc/{}/comm", s.pid))
                .is_ok_and(|c| c.trim().starts_with("netguard"));
            h.state = Some(s);
        }
        Err(e) => h.error = Some(e.to_string()),
    }
    h
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BridgeHealth {
    pub bridge: String,
    /// `None`: the bridge does not exist on this host.
    pub nf_call: Option<NfCall>,
    /// The inet hook sees this bridge's traffic (`bridge::forward_hook_blind`: br_netfilter
    /// loaded, and its switches or the global sysctls on).
    pub seen: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SourceHealth {
    /// `docker`, `podman` or `inventory file`.
    pub kind: String,
    pub reachable: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl SourceHealth {
    pub fn reachable(kind: &str) -> SourceHealth {
        SourceHealth {
            kind: kind.into(),
            reachable: true,
            error: None,
        }
    }

    pub fn unreachable(kind: &str, error: String) -> SourceHealth {
        SourceHealth {
            kind: kind.into(),
            reachable: false,
            error: Some(error),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RuleCounter {
    pub table: String,
    pub chain: String,
    pub rule: String,
    pub packets: u64,
    pub bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Health {
    pub inet_table: bool,
    pub bridge_table: bool,
    /// Live tables equal the plan (`diff` would be empty). `None` when no plan could be made.
    pub current: Option<bool>,
    pub global_bridge_nf: Option<(bool, bool)>,
    pub bridges: Vec<BridgeHealth>,
    pub source: SourceHealth,
    pub daemon: DaemonHealth,
    /// Counts of `netguard audit`'s findings (not part of `ok`: enforcement can be healthy
    /// on a host whose containers undo it). `None` with an inventory file.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub audit: Option<crate::audit::AuditStatus>,
}

impl Health {
    /// Enforced as planned: tables present and current, every existing managed bridge seen.
    pub fn ok(&self) -> bool {
        self.inet_table
            && self.current == Some(true)
            && self.source.reachable
            && self.bridges.iter().all(|b| b.nf_call.is_none() || b.seen)
    }
}

/// The health report from what was read: the live tables, the plan (`None`: the containers
/// could not be read), the host-wide sysctls, the managed bridges, the source, the daemon.
pub fn health(
    live: &LiveState,
    plan: Option<&Plan>,
    global_bridge_nf: Option<(bool, bool)>,
    bridges: Vec<BridgeHealth>,
    source: SourceHealth,
    daemon: DaemonHealth,
) -> Health {
    Health {
        inet_table: live_has(live, Family::Inet),
        bridge_table: live_has(live, Family::Bridge),
        current: plan.map(|pl| crate::nft::diff(&pl.ruleset, live).is_empty()),
        global_bridge_nf,
        bridges,
        source,
        daemon,
        audit: None,
    }
}

/// Counters of every counted rule in netguard's live tables.
pub fn counters(live: &LiveState) -> Vec<RuleCounter> {
    let mut out = Vec::new();
    for (fam, t) in live {
        let Some(t) = t else { continue };
        for (chain, ch) in &t.chains {
            for r in &ch.rules {
                if let Some(packets) = r.packets {
                    let comment = comment_text(r.comment.as_deref().unwrap_or(""));
                    out.push(RuleCounter {
                        table: format!("{} netguard", fam.as_str()),
                        chain: chain.clone(),
                        rule: comment.to_string(),
                        packets,
                        bytes: r.bytes.unwrap_or(0),
                    });
                }
            }
        }
    }
    out
}

/// New connections dropped at one closed edge: the counters of its drops.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EdgeDenied {
    /// `host`, `egress` or `ingress` (the names of `plan::EDGES`).
    pub edge: String,
    pub packets: u64,
    pub bytes: u64,
}

/// The edges' denials out of the rule counters, in the order of `plan::EDGES`, as
/// `/metrics` counts them: every inet rule commented `edge deny EDGE`, whatever its chain
/// (an edge may drop in several). An edge without such a rule (open) is not listed.
pub fn edge_denied(counters: &[RuleCounter]) -> Vec<EdgeDenied> {
    crate::plan::EDGES
        .iter()
        .filter_map(|(edge, _)| {
            let mine: Vec<&RuleCounter> = counters
                .iter()
                .filter(|c| c.table == "inet netguard")
                .filter(|c| c.rule.strip_prefix(crate::plan::EDGE_DENY_PREFIX) == Some(edge))
                .collect();
            (!mine.is_empty()).then(|| EdgeDenied {
                edge: edge.to_string(),
                packets: mine.iter().map(|c| c.packets).sum(),
                bytes: mine.iter().map(|c| c.bytes).sum(),
            })
        })
        .collect()
}

pub fn live_has(live: &LiveState, f: Family) -> bool {
    live.get(&f).is_some_and(Option::is_some)
}

fn yes(style: Style, ok: bool, text: &str) -> String {
    if ok {
        style.green(text)
    } else {
        style.red(text)
    }
}

fn ago(ms: u64) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let s = now.saturating_sub(ms) / 1000;
    match s {
        0..=119 => format!("{s}s ago"),
        120..=7199 => format!("{}m ago", s / 60),
        _ => format!("{}h ago", s / 3600),
    }
}

/// The text of `status`. `plan` is `None` when the containers could not be read.
pub fn render(
    health: &Health,
    plan: Option<&Plan>,
    counters: &[RuleCounter],
    style: Style,
) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{} {}",
        style.bold("enforcement:"),
        if health.ok() {
            style.green("healthy")
        } else {
            style.red("DEGRADED")
        }
    );
    let table = |present: bool| if present { "present" } else { "absent" };
    let _ = writeln!(
        out,
        "  tables        inet netguard {}, bridge netguard {}",
        yes(style, health.inet_table, table(health.inet_table)),
        table(health.bridge_table)
    );
    let current = match health.current {
        Some(true) => style.green("current (diff is empty)"),
        Some(false) => style.red("out of date: run `netguard diff`"),
        None => style.yellow("unknown (no plan)"),
    };
    let _ = writeln!(out, "  rules         {current}");
    let global = match health.global_bridge_nf {
        None => "br_netfilter not loaded".to_string(),
        Some((a, b)) => format!(
            "bridge-nf-call-iptables={} bridge-nf-call-ip6tables={}",
            a as u8, b as u8
        ),
    };
    let _ = writeln!(out, "  sysctls       {global}");
    for b in &health.bridges {
        let text = match b.nf_call {
            None => style.yellow("does not exist"),
            Some(f) => yes(
                style,
                b.seen,
                &format!(
                    "nf_call_iptables={} nf_call_ip6tables={}{}",
                    f.iptables as u8,
                    f.ip6tables as u8,
                    if b.seen { "" } else { "  NOT FILTERED" }
                ),
            ),
        };
        let _ = writeln!(out, "  bridge        {:<16} {text}", b.bridge);
    }
    let src = match (&health.source.error, health.source.reachable) {
        (Some(e), _) => style.red(&format!("unreachable: {e}")),
        (None, true) => style.green("reachable"),
        (None, false) => style.red("unreachable"),
    };
    let _ = writeln!(out, "  source        {}: {src}", health.source.kind);
    let d = &health.daemon;
    let daemon = match (&d.state, &d.error) {
        (_, Some(e)) => style.red(&format!("state file {}: {e}", d.state_file)),
        (None, None) => style.dim("not running (no state file)"),
        (Some(s), None) => {
            let last = s
                .last_reconcile_unix_ms
                .map(ago)
                .unwrap_or_else(|| "never".into());
            let run = if d.running {
                style.green(&format!("running (pid {})", s.pid))
            } else {
                style.red(&format!("not running (pid {} gone)", s.pid))
            };
            let err = s
                .last_error
                .as_ref()
                .map(|e| format!(", last error: {}", style.red(e)))
                .unwrap_or_default();
            // A daemon following an inventory file is not "connected to Docker".
            let source = s.source.as_deref().unwrap_or("Docker");
            let docker = match s.connected {
                Some(true) => format!(", connected to {source}"),
                Some(false) => format!(", {}", style.red(&format!("NOT connected to {source}"))),
                None => String::new(),
            };
            format!("{run}, last reconcile {last}{docker}{err}")
        }
    };
    let _ = writeln!(out, "  daemon        {daemon}");
    if let Some(plan) = plan {
        let _ = writeln!(
            out,
            "  mac binding   {}",
            mac_binding_text(&plan.mac_binding)
        );
    }
    if let Some(a) = &health.audit {
        let _ = writeln!(out, "{}", super::audit::summary_line(a, style));
    }

    if let Some(plan) = plan {
        let _ = writeln!(out, "\n{}", style.bold("networks:"));
        for n in &plan.networks {
            let _ = writeln!(
                out,
                "  {:<20} {:<8} bridge {:<16} {}",
                n.name,
                n.driver,
                n.bridge.as_deref().unwrap_or("-"),
                if n.managed { "managed" } else { "unmanaged" }
            );
        }
        let _ = writeln!(out, "\n{}", style.bold("containers:"));
        for c in &plan.containers {
            let groups = if !c.managed {
                "unmanaged".to_string()
            } else if c.groups.is_empty() {
                "(no group)".to_string()
            } else {
                c.groups.join(",")
            };
            let _ = writeln!(out, "  {:<24} {}", c.name, groups);
            for e in &c.endpoints {
                let addrs: Vec<String> = e
                    .ipv4
                    .map(|a| a.to_string())
                    .into_iter()
                    .chain(e.ipv6.map(|a| a.to_string()))
                    .collect();
                let opted_out = e.admitted && !e.mac_binding && plan.mac_binding.enabled;
                let mac = match (e.mac, opted_out) {
                    (Some(m), false) => format!(" mac {m}"),
                    (Some(m), true) => format!(" mac {m} (mac_binding = false)"),
                    (None, _) => String::new(),
                };
                let _ = writeln!(
                    out,
                    "      {} via {} veth {} {}{mac}{}",
                    e.network,
                    e.bridge,
                    e.veth.as_deref().unwrap_or("?"),
                    addrs.join(" "),
                    e.reason
                        .as_ref()
                        .map(|r| style.red(&format!("  NOT ADMITTED: {r}")))
                        .unwrap_or_default()
                );
            }
            if !c.published.is_empty() {
                let ports: Vec<String> = c.published.iter().map(|p| p.to_string()).collect();
                let _ = writeln!(out, "      published {}", ports.join(" "));
            }
        }
        if !plan.unisolable.is_empty() {
            let _ = writeln!(out, "\n{}", style.bold("cannot be isolated:"));
            for u in &plan.unisolable {
                let _ = writeln!(out, "  {:<24} {}", u.name, u.reason);
            }
        }
        for w in &plan.warnings {
            let _ = writeln!(out, "{} {w}", style.yellow("warning:"));
        }
    }
    let edges = edge_denied(counters);
    if !edges.is_empty() {
        let _ = writeln!(
            out,
            "\n{}",
            style.bold("denied at the edges (new connections dropped: packets, bytes):")
        );
        for e in &edges {
            let _ = writeln!(out, "  {:<10} {:>10} {:>12}", e.edge, e.packets, e.bytes);
        }
    }
    // The per-group-pair deny counters are many; show those that counted something.
    let shown: Vec<&RuleCounter> = counters
        .iter()
        .filter(|c| c.packets > 0 || !c.rule.starts_with(crate::plan::DENY_COUNTER_PREFIX))
        .collect();
    if !shown.is_empty() {
        let _ = writeln!(out, "\n{}", style.bold("rule counters (packets, bytes):"));
        for c in shown {
            let _ = writeln!(
                out,
                "  {:>10} {:>12}  {} {}: {}",
                c.packets, c.bytes, c.table, c.chain, c.rule
            );
        }
    }
    out
}

fn mac_binding_text(m: &crate::plan::MacBinding) -> String {
    match (m.enabled, m.opt_out_groups.as_slice()) {
        (false, _) => "off (anti_spoofing = false)".into(),
        (true, []) => "on: every admitted endpoint sends from its own MAC only".into(),
        (true, g) => format!(
            "on, except groups with mac_binding = false: {} (their members may send from \
             MACs no endpoint owns)",
            g.join(", ")
        ),
    }
}

/// The line for the user when the containers could not be read (`None`: they could).
pub fn source_error(health: &Health) -> Option<String> {
    if health.source.reachable {
        return None;
    }
    let what = match health.source.kind.as_str() {
        "docker" => "Docker",
        "podman" => "Podman",
        other => other,
    };
    Some(match &health.source.error {
        Some(e) => format!("cannot read containers from {what}: {e}"),
        None => format!("cannot read containers from {what}"),
    })
}

/// `status --output json`: see docs/output.md. Unlike other commands, an unreadable
/// source still yields the health report (that is what `status` is asked for), with
/// `ok: false` and the `errors` every error document carries.
pub fn json(health: &Health, plan: Option<&Plan>, counters: &[RuleCounter]) -> serde_json::Value {
    let mut doc = serde_json::json!({
        "ok": true,
        "healthy": health.ok(),
        "health": health,
        "in_sync": health.current,
        "plan": plan.map(plan_json),
        "counters": counters,
        "edge_denied": edge_denied(counters),
    });
    if let Some(e) = source_error(health) {
        doc["ok"] = false.into();
        doc["errors"] = serde_json::json!([e]);
    }
    doc
}

/// The documented part of the plan. The nft objects (`Plan::ruleset`) are left out: they
/// are netguard's internal model, not a contract; `diff` shows how they change.
fn plan_json(plan: &Plan) -> serde_json::Value {
    serde_json::json!({
        "networks": plan.networks,
        "containers": plan.containers,
        "unisolable": plan.unisolable,
        "flows": plan.flows,
        "mac_binding": plan.mac_binding,
        "warnings": plan.warnings,
    })
}
