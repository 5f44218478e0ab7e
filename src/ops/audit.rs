//! `netguard audit`'s text, and the line `status` shows of it.

use super::style::Style;
use crate::audit::{AuditStatus, Finding, Severity, Summary, summary_text};
use std::fmt::Write;

fn sev(style: Style, s: Severity) -> String {
    let text = format!("{:<6}", s.as_str());
    match s {
        Severity::High => style.red(&text),
        Severity::Medium => style.yellow(&text),
        Severity::Low => style.dim(&text),
    }
}

/// `audit`'s text: one block per finding, grouped under the daemon and each container.
pub fn render(findings: &[Finding], style: Style) -> String {
    let mut out = String::new();
    if findings.is_empty() {
        out.push_str("audit: nothing found\n");
        return out;
    }
    let mut current: Option<Option<&str>> = None;
    for f in findings {
        let who = f.container.as_deref();
        if current != Some(who) {
            if current.is_some() {
                out.push('\n');
            }
            let head = match who {
                None => "daemon:".to_string(),
                Some(n) => format!("{n}:"),
            };
            let _ = writeln!(out, "{}", style.bold(&head));
            current = Some(who);
        }
        let cis = f.cis.map(|c| format!("  (CIS {c})")).unwrap_or_default();
        let _ = writeln!(out, "  {} {}{cis}", sev(style, f.severity), f.id);
        let _ = writeln!(out, "         {}", f.evidence);
        let _ = writeln!(out, "         fix: {}", f.fix);
    }
    let _ = writeln!(out, "\n{}", summary_text(&Summary::of(findings)));
    out
}

/// The line `status` shows under its health.
pub fn summary_line(a: &AuditStatus, style: Style) -> String {
    match a {
        AuditStatus::Counts(s) if s.total() == 0 => {
            format!("  audit         {}", style.green("nothing found"))
        }
        AuditStatus::Counts(s) => {
            let text = format!("{} (netguard audit)", summary_text(s));
            let text = if s.high > 0 {
                style.red(&text)
            } else {
                style.yellow(&text)
            };
            format!("  audit         {text}")
        }
        AuditStatus::Unknown { error } => {
            format!(
                "  audit         {}",
                style.yellow(&format!("unknown: {error}"))
            )
        }
    }
}
