//! `verify`'s output: per network, the who-reached-whom matrix as measured, then the
//! mismatches and the probes that could not run; `--output json` lists every probe.
//! Pure (an [`Outcome`] in, text or JSON out), so both are snapshot-tested.

use super::select::Verdict;
use super::{Outcome, ProbeResult};
use crate::ops::style::Style;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write;

/// What a source reached of a destination: its services, IPv4 and IPv6 merged (a service
/// reached over one version only says which).
fn cell(results: &[&ProbeResult]) -> (String, bool) {
    let mut by_service: BTreeMap<(u8, Option<u16>, String), BTreeSet<&str>> = BTreeMap::new();
    let mut families: BTreeSet<&str> = BTreeSet::new();
    let mut mismatch = false;
    for r in results {
        families.insert(r.spec.family());
        mismatch |= r.measured.is_some() && !r.matched;
        if r.measured == Some(Verdict::Reached) {
            by_service
                .entry((r.spec.kind as u8, r.spec.port, r.spec.service()))
                .or_default()
                .insert(r.spec.family());
        }
    }
    let parts: Vec<String> = by_service
        .into_iter()
        .map(|((_, _, s), fams)| {
            if fams.len() < families.len() {
                let f: Vec<&str> = fams.into_iter().collect();
                format!("{s}({})", f.join("+"))
            } else {
                s
            }
        })
        .collect();
    let text = if parts.is_empty() {
        "-".to_string()
    } else {
        parts.join(",")
    };
    (text, mismatch)
}

fn verdict(v: Option<Verdict>) -> &'static str {
    match v {
        Some(Verdict::Reached) => "reached",
        Some(Verdict::Blocked) => "blocked",
        None => "not measured",
    }
}

/// One line about one probe: who, what, expected, measured.
pub fn describe(r: &ProbeResult) -> String {
    let s = &r.spec;
    format!(
        "{} → {} on {}: {} over {}: expected {} ({}), measured {} ({})",
        s.from,
        s.to,
        s.network,
        s.service(),
        s.family(),
        verdict(Some(s.expected)),
        s.why,
        verdict(r.measured),
        r.detail
    )
}

pub fn render(o: &Outcome, timeout_ms: u64, style: Style) -> String {
    let mut out = String::new();
    let sel = &o.selection;
    let sampled = if sel.pairs_probed < sel.pairs_total {
        format!(
            "{} of {} pairs probed ({} classes; --sample 0 probes every pair)",
            sel.pairs_probed, sel.pairs_total, sel.classes
        )
    } else {
        format!("all {} pairs probed", sel.pairs_total)
    };
    let _ = writeln!(
        out,
        "{} probes, {sampled}, timeout {timeout_ms} ms",
        o.results.len()
    );
    let mut networks: BTreeMap<&str, Vec<&ProbeResult>> = BTreeMap::new();
    for r in &o.results {
        networks.entry(r.spec.network.as_str()).or_default().push(r);
    }
    for (net, rs) in &networks {
        let sources: BTreeSet<&str> = rs.iter().map(|r| r.spec.from.as_str()).collect();
        let dests: BTreeSet<&str> = rs.iter().map(|r| r.spec.to.as_str()).collect();
        let _ = writeln!(
            out,
            "\nnetwork {net}: what each source reached, measured ('-': nothing, '!': not what the policy says)"
        );
        let mut rows: Vec<Vec<(String, bool)>> = Vec::new();
        let mut header = vec![("from \\ to".to_string(), false)];
        header.extend(dests.iter().map(|d| (d.to_string(), false)));
        rows.push(header);
        for s in &sources {
            let mut row = vec![(s.to_string(), false)];
            for d in &dests {
                let here: Vec<&ProbeResult> = rs
                    .iter()
                    .copied()
                    .filter(|r| r.spec.from == *s && r.spec.to == *d)
                    .collect();
                row.push(if here.is_empty() {
                    (String::new(), false)
                } else {
                    let (text, bad) = cell(&here);
                    (if bad { format!("!{text}") } else { text }, bad)
                });
            }
            rows.push(row);
        }
        let widths: Vec<usize> = (0..rows[0].len())
            .map(|i| {
                rows.iter()
                    .map(|r| r[i].0.chars().count())
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        for row in &rows {
            let mut line = String::from("  ");
            for (i, (text, bad)) in row.iter().enumerate() {
                let pad = widths[i].saturating_sub(text.chars().count());
                let shown = if *bad {
                    style.red(text)
                } else {
                    text.to_string()
                };
                if i + 1 == row.len() {
                    line.push_str(&shown);
                } else {
                    let _ = write!(line, "{shown}{}  ", " ".repeat(pad));
                }
            }
            let _ = writeln!(out, "{}", line.trim_end());
        }
    }
    let mismatches: Vec<&ProbeResult> = o.mismatches().collect();
    let errors: Vec<&ProbeResult> = o.errors().collect();
    if !mismatches.is_empty() {
        let _ = writeln!(out, "\n{} ({}):", style.red("mismatches"), mismatches.len());
        for r in &mismatches {
            let _ = writeln!(out, "  {}", describe(r));
        }
    }
    if !errors.is_empty() {
        let _ = writeln!(
            out,
            "\n{} ({}):",
            style.yellow("not measured"),
            errors.len()
        );
        for r in &errors {
            let _ = writeln!(out, "  {}", describe(r));
        }
    }
    let matched = o.results.iter().filter(|r| r.matched).count();
    let summary = format!(
        "{} probes: {matched} matched the policy, {} mismatched, {} not measured",
        o.results.len(),
        mismatches.len(),
        errors.len()
    );
    let _ = writeln!(
        out,
        "\n{}",
        match o.exit_code() {
            0 => style.green(&summary),
            1 => style.red(&summary),
            _ => style.yellow(&summary),
        }
    );
    out
}

/// `verify --output json`: see docs/output.md.
pub fn json(o: &Outcome, timeout_ms: u64) -> serde_json::Value {
    let matched = o.results.iter().filter(|r| r.matched).count();
    serde_json::json!({
        "ok": true,
        "all_matched": o.exit_code() == 0,
        "timeout_ms": timeout_ms,
        "pairs": {
            "total": o.selection.pairs_total,
            "probed": o.selection.pairs_probed,
            "classes": o.selection.classes,
        },
        "summary": {
            "probes": o.results.len(),
            "matched": matched,
            "mismatches": o.mismatches().count(),
            "not_measured": o.errors().count(),
        },
        "conntrack_deleted": o.conntrack_deleted,
        "probes": o.results,
    })
}
