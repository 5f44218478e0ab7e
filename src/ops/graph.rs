//! `netguard graph`: the allowed flows of a plan as Graphviz DOT. Groups are clusters,
//! containers nodes, edges the new connections one container may open to another, labelled
//! with what (ports, `icmp`, `all`); where an edge is closed (`host`, `egress`, `ingress` =
//! `"deny"`), this host, the world and the address blocks of the lines are nodes too, with
//! dashed edges for what the lines open. Computed from the desired nft objects through the same
//! evaluation as `diff`, so the picture is what the kernel will enforce.

use super::access::{View, matrix};
use crate::plan::Plan;
use std::collections::BTreeMap;
use std::fmt::Write;
use std::io::Write as _;
use std::process::{Command, Stdio};

#[derive(Debug, thiserror::Error)]
pub enum GraphError {
    #[error(
        "`dot` (Graphviz) is not installed: install it (e.g. `apt-get install graphviz`) or use the default DOT output"
    )]
    NoDot,
    #[error("dot failed: {0}")]
    Dot(String),
}

fn q(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

/// DOT text for the plan's allowed flows between managed, admitted containers.
pub fn dot(plan: &Plan) -> String {
    let view = View::from_ruleset(&plan.ruleset);
    let m = matrix(&view, plan, false);
    let mut out = String::new();
    let _ = writeln!(out, "digraph netguard {{");
    let _ = writeln!(out, "  rankdir=LR;");
    let _ = writeln!(out, "  graph [fontname=\"Helvetica\"];");
    let _ = writeln!(
        out,
        "  node [shape=box, style=rounded, fontname=\"Helvetica\"];"
    );
    let _ = writeln!(out, "  edge [fontname=\"Helvetica\", fontsize=10];");
    // A node lives in one cluster: its first group; other groups are named in its label.
    let mut clusters: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    let mut loose = Vec::new();
    for c in plan.containers.iter().filter(|c| c.managed) {
        let admitted = c.endpoints.iter().any(|e| e.admitted);
        let mut label = c.name.clone();
        if c.groups.len() > 1 {
            label.push_str(&format!("\\n(also {})", c.groups[1..].join(", ")));
        }
        if !admitted {
            label.push_str("\\n(not admitted)");
        }
        let node = format!(
            "{} [label={}{}];",
            q(&c.name),
            q(&label).replace("\\\\n", "\\n"),
            if admitted { "" } else { ", style=dashed" }
        );
        match c.groups.first() {
            Some(g) => clusters.entry(g.as_str()).or_default().push(node),
            None => loose.push(node),
        }
    }
    for (g, nodes) in &clusters {
        let _ = writeln!(out, "  subgraph {} {{", q(&format!("cluster_{g}")));
        let _ = writeln!(out, "    label={};", q(g));
        let _ = writeln!(out, "    style=rounded; color=gray50;");
        for n in nodes {
            let _ = writeln!(out, "    {n}");
        }
        let _ = writeln!(out, "  }}");
    }
    for n in &loose {
        let _ = writeln!(out, "  {n}");
    }
    for ((from, to), acc) in &m {
        let mut all = super::access::Access::default();
        let mut fams = Vec::new();
        if let Some(a) = &acc.v4 {
            all.union(a);
            if !a.is_empty() {
                fams.push("4");
            }
        }
        if let Some(a) = &acc.v6 {
            all.union(a);
            if !a.is_empty() {
                fams.push("6");
            }
        }
        if all.is_empty() {
            continue;
        }
        let mut label = all.labels().join(", ");
        let both = acc.v4.is_some() && acc.v6.is_some();
        if both && fams.len() == 1 {
            label.push_str(&format!(" (IPv{} only)", fams[0]));
        }
        let _ = writeln!(out, "  {} -> {} [label={}];", q(from), q(to), q(&label));
    }
    edge_nodes(&mut out, &view, plan);
    let _ = writeln!(out, "}}");
    out
}

/// One label for both IP versions of an edge, `(IPv4 only)` when the other has nothing.
fn label_of(acc: &super::access::PairAccess) -> Option<String> {
    let mut all = super::access::Access::default();
    let mut fams = Vec::new();
    for (a, f) in [(&acc.v4, "4"), (&acc.v6, "6")] {
        if let Some(a) = a {
            all.union(a);
            if !a.is_empty() {
                fams.push(f);
            }
        }
    }
    if all.is_empty() {
        return None;
    }
    let mut label = all.labels().join(", ");
    if acc.v4.is_some() && acc.v6.is_some() && fams.len() == 1 {
        label.push_str(&format!(" (IPv{} only)", fams[0]));
    }
    Some(label)
}

/// The closed edges: this host, the world and the address blocks the lines name, as
/// nodes, and what each container may open to them (or they to it). An open edge (the
/// default) is not drawn: every container reaches it, netguard adds nothing there.
fn edge_nodes(out: &mut String, view: &View, plan: &Plan) {
    use super::edge_access::{edge_matrix, outside_blocks};
    use super::edges::{Edge, Outside};
    // Node ids start with `@`, so no container name collides with them.
    let id = |o: &str| q(&format!("@{o}"));
    let mut drawn: Vec<String> = Vec::new();
    let mut lines = Vec::new();
    for e in Edge::ALL {
        if view.edges.get(e).is_none() {
            continue;
        }
        let blocks = match e {
            Edge::Host => vec![Outside::World],
            _ => outside_blocks(&[view], e),
        };
        let m = edge_matrix(view, plan, e, &blocks);
        for ((from, to), acc) in &m {
            let Some(label) = label_of(acc) else {
                continue;
            };
            let (outside, from_id, to_id) = match e {
                Edge::Host => ("host".to_string(), q(from), id("host")),
                Edge::Egress => (to.clone(), q(from), id(to)),
                Edge::Ingress => (from.clone(), id(from), q(to)),
            };
            // A block that opens no more than the world is already drawn by it.
            if outside != "world" && outside != "host" {
                let world_key = match e {
                    Edge::Ingress => ("world".to_string(), to.clone()),
                    _ => (from.clone(), "world".to_string()),
                };
                if m.get(&world_key).and_then(label_of).as_ref() == Some(&label) {
                    continue;
                }
            }
            if !drawn.contains(&outside) {
                drawn.push(outside.clone());
            }
            lines.push(format!(
                "  {from_id} -> {to_id} [label={}, style=dashed];",
                q(&label)
            ));
        }
    }
    for o in &drawn {
        let (label, shape) = match o.as_str() {
            "host" => ("this host".to_string(), "house"),
            "world" => ("world".to_string(), "ellipse"),
            n => (n.to_string(), "note"),
        };
        let _ = writeln!(out, "  {} [label={}, shape={shape}];", id(o), q(&label));
    }
    for l in lines {
        let _ = writeln!(out, "{l}");
    }
}

/// Renders DOT with the `dot` binary (`format`: svg, png, ...).
pub fn render_with_dot(dot_text: &str, format: &str) -> Result<Vec<u8>, GraphError> {
    let mut child = Command::new("dot")
        .arg(format!("-T{format}"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => GraphError::NoDot,
            _ => GraphError::Dot(e.to_string()),
        })?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(dot_text.as_bytes())
            .map_err(|e| GraphError::Dot(e.to_string()))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| GraphError::Dot(e.to_string()))?;
    if !out.status.success() {
        return Err(GraphError::Dot(
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        ));
    }
    Ok(out.stdout)
}
