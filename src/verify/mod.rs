//! `netguard verify`: does the kernel do what the policy says, right now? Real packets from
//! inside each source container's network namespace to its peers, each compared with the
//! verdict the plan predicts.
//!
//! - [`select`] (pure) picks the probes and their expected verdicts from the plan;
//! - [`probe`] sends them from the containers' namespaces (the [`probe::Prober`] trait,
//!   real and fake);
//! - [`run`] ties them together and leaves nothing behind: the conntrack entries of the
//!   probes' own flows are deleted afterwards, and the run is marked in the kernel log so
//!   that `netguard log` does not report its probes as denials ([`crate::ops::probe_marks`]);
//! - [`report`] (pure) renders the matrix, the mismatches and the JSON document.
//!
//! Today a probe is container → container on a managed network, what netguard enforces.
//! New kinds of probes (published ports, the host, egress) are new [`select::Kind`]s.

pub mod command;
use crate::ops::probe_marks as marks;
pub mod probe;
pub mod report;
pub mod select;

use crate::conntrack::{Conntrack, Entry};
use probe::{Batch, Job, Measured, Prober};
use select::{Kind, ProbeSpec, Selection, Verdict};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

/// One probe as sent, with what it found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProbeResult {
    #[serde(flatten)]
    pub spec: ProbeSpec,
    /// `ipv4` or `ipv6`.
    pub family: &'static str,
    /// Source port (TCP, UDP) or echo identifier (ICMP) the probe used.
    pub sport: u16,
    /// `None`: the probe could not be sent.
    pub measured: Option<Verdict>,
    pub detail: String,
    /// Measured what the policy expects.
    #[serde(rename = "match")]
    pub matched: bool,
}

/// A whole run: what was chosen and what every probe found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub selection: Selection,
    pub results: Vec<ProbeResult>,
    /// Conntrack entries of the probes' own flows deleted afterwards.
    pub conntrack_deleted: usize,
}

impl Outcome {
    pub fn mismatches(&self) -> impl Iterator<Item = &ProbeResult> {
        self.results
            .iter()
            .filter(|r| r.measured.is_some() && !r.matched)
    }

    pub fn errors(&self) -> impl Iterator<Item = &ProbeResult> {
        self.results.iter().filter(|r| r.measured.is_none())
    }

    /// The documented exit code: 0 all matched, 1 mismatches, 2 probes that could not run.
    pub fn exit_code(&self) -> i32 {
        if self.mismatches().next().is_some() {
            1
        } else if self.errors().next().is_some() || self.results.is_empty() {
            2
        } else {
            0
        }
    }
}

/// Where `verify` writes its begin and end records (`marks`).
pub trait Marker {
    fn mark(&self, record: &str);
}

/// The kernel log, through `/dev/kmsg`.
pub struct Kmsg;

impl Marker for Kmsg {
    fn mark(&self, record: &str) {
        use std::io::Write;
        // One write is one record; `<6>`: level info (userspace records are facility user).
        let r = std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/kmsg")
            .and_then(|mut f| f.write_all(format!("<6>{record}\n").as_bytes()));
        if let Err(e) = r {
            tracing::warn!(
                "cannot write to /dev/kmsg ({e}): `netguard log` may show this run's probes as denials"
            );
        }
    }
}

/// Writes nothing (the policy logs no denials, so there is nothing to tell apart).
pub struct NoMarker;

impl Marker for NoMarker {
    fn mark(&self, _: &str) {}
}

/// What a run needs from the outside world.
pub struct World<'a> {
    /// Network namespace of each source container, by container id (or why it is unknown).
    pub netns: &'a BTreeMap<String, Result<PathBuf, String>>,
    pub prober: &'a dyn Prober,
    pub conntrack: &'a dyn Conntrack,
    pub marker: &'a dyn Marker,
}

/// A run's identifier in the kernel log: process id and start time.
pub fn run_id() -> String {
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or_default();
    format!("{}.{ms}", std::process::id())
}

/// Source ports of the jobs: consecutive in [`marks::PROBE_PORTS`] from `offset`, so that two
/// runs in a row use different ones.
pub fn jobs(probes: &[ProbeSpec], offset: usize) -> Vec<Job> {
    let (lo, hi) = marks::PROBE_PORTS;
    let span = usize::from(hi - lo) + 1;
    probes
        .iter()
        .enumerate()
        .map(|(index, spec)| Job {
            index,
            sport: lo + ((offset + index) % span) as u16,
            spec: spec.clone(),
        })
        .collect()
}

/// The conntrack entries the jobs' own flows made. TCP and UDP by their whole tuple; ICMP
/// by addresses (the conntrack adapter does not read echo identifiers), so an echo between
/// the same two containers at that very moment loses its entry too, which is harmless: its
/// next packet is picked up as new and judged again.
pub fn own_entries<'a>(jobs: &[Job], entries: &'a [Entry]) -> Vec<&'a Entry> {
    entries
        .iter()
        .filter(|e| {
            jobs.iter().any(|j| {
                let s = &j.spec;
                if e.src != s.src || e.dst != s.dst {
                    return false;
                }
                match s.kind {
                    Kind::Tcp | Kind::Udp => {
                        e.proto == s.kind.as_str() && e.sport == Some(j.sport) && e.dport == s.port
                    }
                    Kind::Icmp => e.proto == "icmp" || e.proto == "icmpv6",
                }
            })
        })
        .collect()
}

/// Sends the selected probes and compares. Blocking: probes run on threads of their own,
/// and the conntrack cleanup runs on the calling thread, which must be in the host's
/// namespace (any thread but a prober's).
pub fn run(selection: Selection, world: &World, timeout: Duration) -> Outcome {
    let offset = std::process::id() as usize;
    let jobs = jobs(&selection.probes, offset);
    let mut measured: BTreeMap<usize, Measured> = BTreeMap::new();
    let mut by_source: BTreeMap<&str, Vec<Job>> = BTreeMap::new();
    for j in &jobs {
        by_source
            .entry(j.spec.from_id.as_str())
            .or_default()
            .push(j.clone());
    }
    let mut batches = Vec::new();
    for (id, js) in by_source {
        match world.netns.get(id) {
            Some(Ok(path)) => batches.push(Batch {
                netns: path.clone(),
                jobs: js,
            }),
            Some(Err(why)) => {
                for j in js {
                    measured.insert(j.index, Measured::error(why.clone()));
                }
            }
            None => {
                for j in js {
                    measured.insert(
                        j.index,
                        Measured::error("network namespace unknown".to_string()),
                    );
                }
            }
        }
    }
    let id = run_id();
    world
        .marker
        .mark(&marks::begin_record(&id, marks::PROBE_PORTS));
    measured.extend(world.prober.run(&batches, timeout));
    world.marker.mark(&marks::end_record(&id));

    let entries = world.conntrack.list();
    let own = own_entries(&jobs, &entries);
    for e in &own {
        world.conntrack.delete(e);
    }
    let results = jobs
        .into_iter()
        .map(|j| {
            let m = measured
                .remove(&j.index)
                .unwrap_or_else(|| Measured::error("no result"));
            ProbeResult {
                matched: m.verdict == Some(j.spec.expected),
                measured: m.verdict,
                detail: m.detail,
                sport: j.sport,
                family: j.spec.family(),
                spec: j.spec,
            }
        })
        .collect();
    Outcome {
        selection,
        results,
        conntrack_deleted: own.len(),
    }
}

#[cfg(test)]
mod tests;
