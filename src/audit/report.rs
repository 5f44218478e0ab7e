//! Counting findings, and `audit --output json` (the text is in `ops::audit`).

use super::{Finding, Severity};
use serde::Serialize;

/// Counts by severity.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Summary {
    pub high: usize,
    pub medium: usize,
    pub low: usize,
}

impl Summary {
    pub fn of(findings: &[Finding]) -> Summary {
        let mut s = Summary::default();
        for f in findings {
            match f.severity {
                Severity::High => s.high += 1,
                Severity::Medium => s.medium += 1,
                Severity::Low => s.low += 1,
            }
        }
        s
    }

    pub fn total(&self) -> usize {
        self.high + self.medium + self.low
    }
}

/// `N findings: H high, M medium, L low`.
pub fn summary_text(s: &Summary) -> String {
    format!(
        "{} findings: {} high, {} medium, {} low",
        s.total(),
        s.high,
        s.medium,
        s.low
    )
}

/// `audit --output json` (docs/output.md).
pub fn json(findings: &[Finding]) -> serde_json::Value {
    serde_json::json!({ "ok": true, "findings": findings })
}

/// What `status` says of the audit (its `health.audit` in JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum AuditStatus {
    Counts(Summary),
    /// The audit could not be made (Docker unreachable, ...).
    Unknown {
        error: String,
    },
}
