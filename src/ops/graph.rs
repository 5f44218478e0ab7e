//! `netguard graph`: the allowed flows of a plan as Graphviz DOT. Groups are clusters,
//! containers nodes, edges the new connections one container may open to another, labelled
//! with what (ports, `icmp`, `all`). Computed from the desired nft objects through the same
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
    let _ = writeln!(out, "}}");
    out
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
