//! How `netguard log` tells `verify`'s probes from real traffic.
//!
//! A run writes two records to the kernel log, around all of its probes:
//!
//! ```text
//! netguard-verify begin run=4242.1764662400000 sports=61000-61999
//! netguard-verify end run=4242.1764662400000
//! ```
//!
//! and every probe leaves from a source port (TCP, UDP) or with an echo identifier (ICMP)
//! in `sports`, a range outside Linux's default ephemeral ports (32768-60999). A denial
//! logged between a run's two records whose source port or echo identifier is in its range
//! is that run's probe; `netguard log` leaves it out and says how many it left out. Real
//! traffic denied during a run still shows (its ports are ephemeral ones), and so does
//! anything outside a run. The records are ordered with the denials in the one kernel log,
//! so saved logs (`journalctl -k`, `dmesg`) are read the same way. A run killed before its
//! end record (SIGKILL) leaves its window open until the next run begins.

use std::collections::BTreeMap;

pub const BEGIN: &str = "netguard-verify begin ";
pub const END: &str = "netguard-verify end ";

/// Source ports and echo identifiers of the probes, inclusive.
pub const PROBE_PORTS: (u16, u16) = (61000, 61999);

pub fn begin_record(run: &str, ports: (u16, u16)) -> String {
    format!("{BEGIN}run={run} sports={}-{}", ports.0, ports.1)
}

pub fn end_record(run: &str) -> String {
    format!("{END}run={run}")
}

fn field<'a>(rest: &'a str, key: &str) -> Option<&'a str> {
    rest.split_whitespace()
        .find_map(|t| t.strip_prefix(key)?.strip_prefix('='))
}

/// The open probe windows while reading a log in order.
#[derive(Debug, Default, Clone)]
pub struct Windows {
    open: BTreeMap<String, (u16, u16)>,
}

impl Windows {
    /// Feeds one log line; true when it was a begin or end record.
    pub fn feed(&mut self, line: &str) -> bool {
        if let Some(at) = line.find(BEGIN) {
            let rest = &line[at + BEGIN.len()..];
            let range = field(rest, "sports").and_then(|r| {
                let (lo, hi) = r.split_once('-')?;
                Some((lo.parse().ok()?, hi.parse().ok()?))
            });
            if let (Some(run), Some(range)) = (field(rest, "run"), range) {
                self.open.insert(run.to_string(), range);
            }
            return true;
        }
        if let Some(at) = line.find(END) {
            if let Some(run) = field(&line[at + END.len()..], "run") {
                self.open.remove(run);
            }
            return true;
        }
        false
    }

    /// Whether a denial with this source port (or echo identifier), logged now, is a probe.
    pub fn is_probe(&self, port: Option<u16>) -> bool {
        port.is_some_and(|p| self.open.values().any(|&(lo, hi)| (lo..=hi).contains(&p)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_denial_is_a_probe_only_inside_a_run_and_in_its_ports() {
        let mut w = Windows::default();
        assert!(!w.is_probe(Some(61005)), "no run open");
        assert!(w.feed(&format!("[12.3] {}", begin_record("7.1", PROBE_PORTS))));
        assert!(w.is_probe(Some(61005)));
        assert!(
            !w.is_probe(Some(45000)),
            "an ephemeral port is real traffic"
        );
        assert!(!w.is_probe(None));
        // A second run overlapping the first, then the first ends.
        assert!(w.feed(&begin_record("8.2", (62000, 62009))));
        assert!(w.feed(&end_record("7.1")));
        assert!(!w.is_probe(Some(61005)));
        assert!(w.is_probe(Some(62001)));
        assert!(w.feed(&end_record("8.2")));
        assert!(!w.is_probe(Some(62001)));
        assert!(!w.feed("netguard-deny IN=br0 SRC=10.0.0.1"));
        // A malformed begin opens nothing.
        assert!(w.feed("netguard-verify begin run=9 sports=x"));
        assert!(!w.is_probe(Some(61005)));
    }
}
