//! `netguard log`: recent denied connections from the kernel log (`log_denied = true` makes
//! the `isolate` chain log the first packet of each denied connection, rate limited, with
//! the prefix `netguard-deny `), with source and destination resolved to container names.
//!
//! Reads `/dev/kmsg` without blocking (every record still in the kernel's ring buffer),
//! or a saved log (`--file`, e.g. `journalctl -k > f` or `dmesg > f`).

use super::style::Style;
use crate::plan::{LOG_PREFIX, Plan};
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write;
use std::io::Read;
use std::net::IpAddr;
use std::os::unix::fs::OpenOptionsExt;

#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("cannot read the kernel log {path}: {err} (netguard log needs root or CAP_SYSLOG)")]
    Kmsg { path: String, err: std::io::Error },
    #[error("cannot read {path}: {err}")]
    File { path: String, err: std::io::Error },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Denial {
    /// Wall-clock time of the kernel record (from `/dev/kmsg`), when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unix_ms: Option<u64>,
    /// Bridge the packet came in on (`IN=`).
    pub bridge: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub in_veth: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub out_veth: Option<String>,
    pub src: IpAddr,
    pub dst: IpAddr,
    /// `TCP`, `UDP`, `ICMP`, `ICMPv6`, ...
    pub proto: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dport: Option<u16>,
    /// Container names, when the address belongs to a known container.
    pub from: Option<String>,
    pub to: Option<String>,
    /// Source port (`SPT=`), or the identifier of an ICMP echo: what a `netguard verify`
    /// probe is told by (`ops::probe_marks`).
    #[serde(skip)]
    pub probe_port: Option<u16>,
    /// The edge that dropped it (`host`, `egress`, `ingress`); none between containers.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub edge: Option<String>,
}

/// The source port of a logged packet, or its echo identifier: the `ID=` after `TYPE=`
/// (the first `ID=` of a line is the IPv4 header's).
fn probe_port(rest: &str) -> Option<u16> {
    let mut after_type = false;
    for tok in rest.split_whitespace() {
        if let Some(p) = tok.strip_prefix("SPT=") {
            return p.parse().ok();
        }
        if tok.starts_with("TYPE=") {
            after_type = true;
        } else if after_type && let Some(id) = tok.strip_prefix("ID=") {
            return id.parse().ok();
        }
    }
    None
}

/// Reads denials in log order, leaving out those of `netguard verify`'s probes (see
/// `ops::probe_marks`): the records kept and how many were left out.
#[derive(Debug, Default)]
pub struct Reader {
    windows: crate::ops::probe_marks::Windows,
    pub denials: Vec<Denial>,
    pub probes_hidden: usize,
}

impl Reader {
    /// One log line (any prefix before the message is ignored); the denial if kept.
    pub fn line(&mut self, line: &str) -> Option<&mut Denial> {
        if self.windows.feed(line) {
            return None;
        }
        let d = parse_line(line)?;
        if self.windows.is_probe(d.probe_port) {
            self.probes_hidden += 1;
            return None;
        }
        self.denials.push(d);
        self.denials.last_mut()
    }

    /// One `/dev/kmsg` record (`PRIO,SEQ,TS_USEC,FLAGS;MESSAGE`); `clock` is (wall clock,
    /// monotonic clock) in ms when known, to date the record.
    pub fn kmsg_record(&mut self, rec: &[u8], clock: Option<(u64, u64)>) {
        let rec = String::from_utf8_lossy(rec);
        let Some((head, msg)) = rec.split_once(';') else {
            return;
        };
        let msg = msg.lines().next().unwrap_or("");
        if let Some(d) = self.line(msg) {
            let ts_ms = head
                .split(',')
                .nth(2)
                .and_then(|t| t.parse::<u64>().ok())
                .map(|us| us / 1000);
            if let (Some((r, m)), Some(t)) = (clock, ts_ms) {
                d.unix_ms = Some(r.saturating_sub(m.saturating_sub(t)));
            }
        }
    }
}

/// Parses the `netguard-deny ...` part of one log line (any prefix before it is ignored).
pub fn parse_line(line: &str) -> Option<Denial> {
    let prefixes = [
        (LOG_PREFIX, None),
        (crate::plan::LOG_PREFIX_HOST, Some("host")),
        (crate::plan::LOG_PREFIX_EGRESS, Some("egress")),
        (crate::plan::LOG_PREFIX_INGRESS, Some("ingress")),
        (crate::plan::LOG_PREFIX_PUBLISHED, Some("published")),
    ];
    let (at, prefix, edge) = prefixes
        .iter()
        .filter_map(|(p, e)| line.find(p).map(|at| (at, *p, *e)))
        .min_by_key(|(at, _, _)| *at)?;
    let rest = &line[at + prefix.len()..];
    let mut kv: BTreeMap<&str, &str> = BTreeMap::new();
    for tok in rest.split_whitespace() {
        if let Some((k, v)) = tok.split_once('=') {
            kv.entry(k).or_insert(v);
        }
    }
    let nonempty = |k: &str| kv.get(k).filter(|v| !v.is_empty()).map(|v| v.to_string());
    Some(Denial {
        unix_ms: None,
        bridge: nonempty("IN").unwrap_or_default(),
        in_veth: nonempty("PHYSIN"),
        out_veth: nonempty("PHYSOUT"),
        src: kv.get("SRC")?.parse().ok()?,
        dst: kv.get("DST")?.parse().ok()?,
        proto: nonempty("PROTO").unwrap_or_else(|| "?".into()),
        dport: kv.get("DPT").and_then(|p| p.parse().ok()),
        from: None,
        to: None,
        probe_port: probe_port(rest),
        edge: edge.map(str::to_string),
    })
}

/// Fills in container names: by bridge and address, else by veth, else by address alone.
pub fn resolve(d: &mut Denial, plan: &Plan) {
    let find = |bridge: &str, veth: Option<&str>, addr: IpAddr| -> Option<String> {
        let has = |e: &crate::plan::PlannedEndpoint| e.addresses().any(|a| a == addr);
        let by = |f: &dyn Fn(&crate::plan::PlannedEndpoint) -> bool| {
            plan.containers
                .iter()
                .find(|c| c.endpoints.iter().any(f))
                .map(|c| c.name.clone())
        };
        by(&|e| e.bridge == bridge && has(e))
            .or_else(|| veth.and_then(|v| by(&|e| e.veth.as_deref() == Some(v))))
            .or_else(|| by(&|e| has(e)))
    };
    d.from = find(&d.bridge, d.in_veth.as_deref(), d.src);
    d.to = find(&d.bridge, d.out_veth.as_deref(), d.dst);
}

fn clock_ms(clock: libc::clockid_t) -> Option<u64> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a valid timespec to write into.
    if unsafe { libc::clock_gettime(clock, &mut ts) } != 0 {
        return None;
    }
    Some(ts.tv_sec as u64 * 1000 + ts.tv_nsec as u64 / 1_000_000)
}

/// Every netguard denial still in the kernel ring buffer, oldest first.
pub fn read_kmsg(path: &str) -> Result<Vec<Denial>, LogError> {
    read_kmsg_records(path).map(|r| r.denials)
}

/// Like [`read_kmsg`], with `verify`'s probes left out and counted.
pub fn read_kmsg_records(path: &str) -> Result<Reader, LogError> {
    let err = |e| LogError::Kmsg {
        path: path.into(),
        err: e,
    };
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(err)?;
    let now_real = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .ok();
    let now_mono = clock_ms(libc::CLOCK_MONOTONIC);
    let mut out = Reader::default();
    let mut buf = vec![0u8; 16384];
    loop {
        match f.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => out.kmsg_record(&buf[..n], now_real.zip(now_mono)),
            // A record overwritten while reading: go on with the next one.
            Err(e) if e.raw_os_error() == Some(libc::EPIPE) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(err(e)),
        }
    }
    Ok(out)
}

/// Denials in a saved log file (journalctl, dmesg, syslog format).
pub fn read_file(path: &std::path::Path) -> Result<Vec<Denial>, LogError> {
    read_file_records(path).map(|r| r.denials)
}

/// Like [`read_file`], with `verify`'s probes left out and counted.
pub fn read_file_records(path: &std::path::Path) -> Result<Reader, LogError> {
    let text = std::fs::read_to_string(path).map_err(|e| LogError::File {
        path: path.display().to_string(),
        err: e,
    })?;
    let mut r = Reader::default();
    for l in text.lines() {
        r.line(l);
    }
    Ok(r)
}

fn utc(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, rem) = (secs / 86400, secs % 86400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719468;
    let era = z.div_euclid(146097);
    let doe = z - era * 146097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// `log --output json`: see docs/output.md.
pub fn json(ds: &[Denial], log_denied: bool) -> serde_json::Value {
    serde_json::json!({ "ok": true, "log_denied": log_denied, "denials": ds })
}

/// The line saying how many denials of `netguard verify`'s probes were left out (none: empty).
pub fn hidden_note(hidden: usize) -> String {
    match hidden {
        0 => String::new(),
        n => format!("({n} denials of `netguard verify` probes left out)\n"),
    }
}

/// Adds `verify_probes_hidden` to a `log` document when probes were left out.
pub fn with_hidden(mut doc: serde_json::Value, hidden: usize) -> serde_json::Value {
    if hidden > 0 {
        doc["verify_probes_hidden"] = hidden.into();
    }
    doc
}

pub fn render(ds: &[Denial], log_denied: bool, style: Style) -> String {
    let mut out = String::new();
    if !log_denied {
        let _ = writeln!(
            out,
            "{} the policy has `log_denied = false`: denied connections are not logged",
            style.yellow("note:")
        );
    }
    if ds.is_empty() {
        let _ = writeln!(out, "no denied connections in the kernel log");
    }
    for d in ds {
        let who = |n: &Option<String>, a: &IpAddr| match n {
            Some(n) => format!("{n} ({a})"),
            None => format!("? ({a})"),
        };
        let what = match d.dport {
            Some(p) => format!("{}/{}", p, d.proto.to_lowercase()),
            None => d.proto.to_lowercase(),
        };
        let at = match &d.edge {
            Some(e) => format!(" ({e} edge)"),
            None => String::new(),
        };
        let _ = writeln!(
            out,
            "{}  {} {} → {}  {}  on {}{at}",
            d.unix_ms.map(utc).unwrap_or_else(|| "-".into()),
            style.red("denied"),
            who(&d.from, &d.src),
            who(&d.to, &d.dst),
            what,
            d.bridge
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kmsg_record_is_dated_from_its_monotonic_timestamp() {
        let mut r = Reader::default();
        let rec = b"4,812,5000000,-;netguard-deny IN=br-front SRC=10.91.1.11 DST=10.91.1.21 PROTO=UDP SPT=1 DPT=53\n SUBSYSTEM=net";
        // Wall clock 10,000 s, monotonic 6 s: the record (5 s after boot) is 1 s old.
        r.kmsg_record(rec, Some((10_000_000, 6_000)));
        r.kmsg_record(
            b"no header separator netguard-deny SRC=1.1.1.1 DST=1.1.1.2",
            None,
        );
        r.kmsg_record(b"4,813,-,-;netguard-deny SRC=::1 DST=::2", Some((1, 2)));
        assert_eq!(r.denials.len(), 2);
        assert_eq!(r.denials[0].unix_ms, Some(9_999_000));
        assert_eq!(r.denials[0].dport, Some(53));
        assert_eq!(r.denials[1].unix_ms, None);
    }

    #[test]
    fn edge_prefixes_name_their_edge() {
        let line = "kernel: netguard-deny-egress IN=br-a OUT=eth0 SRC=10.0.0.2 DST=203.0.113.5 PROTO=TCP SPT=4000 DPT=443";
        let d = parse_line(line);
        assert_eq!(d.as_ref().and_then(|d| d.edge.as_deref()), Some("egress"));
        assert_eq!(d.and_then(|d| d.dport), Some(443));
        let plain = parse_line("netguard-deny IN=br-a SRC=10.0.0.2 DST=10.0.0.3 PROTO=UDP DPT=53");
        assert_eq!(plain.map(|d| d.edge), Some(None));
        let host =
            parse_line("netguard-deny-host IN=br-a SRC=10.0.0.2 DST=10.0.0.1 PROTO=TCP DPT=22");
        assert_eq!(host.and_then(|d| d.edge), Some("host".to_string()));
        let published = parse_line(
            "netguard-deny-published IN=br-a SRC=10.0.0.2 DST=10.0.0.1 PROTO=TCP DPT=15432",
        );
        assert_eq!(
            published.and_then(|d| d.edge),
            Some("published".to_string())
        );
    }

    #[test]
    fn parses_a_kernel_line() {
        let l = "[12345.678] netguard-deny IN=br-front OUT=br-front PHYSIN=vweb1 PHYSOUT=vapi1 MAC=02:91:00:00:01:15:02:91:00:00:01:0b:08:00 SRC=10.91.1.11 DST=10.91.1.21 LEN=60 TOS=0x00 PREC=0x00 TTL=64 ID=1 DF PROTO=TCP SPT=40000 DPT=7777 WINDOW=64240 RES=0x00 SYN URGP=0";
        let d = parse_line(l).unwrap();
        assert_eq!(d.bridge, "br-front");
        assert_eq!(d.in_veth.as_deref(), Some("vweb1"));
        assert_eq!(d.src.to_string(), "10.91.1.11");
        assert_eq!(d.dport, Some(7777));
        assert_eq!(d.proto, "TCP");
        assert!(parse_line("something else").is_none());
        assert_eq!(d.probe_port, Some(40000));
        assert_eq!(utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(utc(1_764_365_000_000), "2025-11-28T21:23:20Z");
    }

    #[test]
    fn the_echo_id_not_the_ip_id_is_an_icmp_probe_port() {
        let l = "netguard-deny IN=br-front OUT=br-front SRC=10.91.1.11 DST=10.91.1.21 LEN=84 TOS=0x00 PREC=0x00 TTL=64 ID=5 DF PROTO=ICMP TYPE=8 CODE=0 ID=61007 SEQ=1";
        assert_eq!(parse_line(l).unwrap().probe_port, Some(61007));
        let l6 = "netguard-deny IN=br-front SRC=fd91:0:0:1::11 DST=fd91:0:0:1::21 LEN=104 TC=0 HOPLIMIT=64 FLOWLBL=1 PROTO=ICMPv6 TYPE=128 CODE=0 ID=61008 SEQ=1";
        assert_eq!(parse_line(l6).unwrap().probe_port, Some(61008));
    }

    #[test]
    fn probes_of_a_verify_run_are_left_out_and_counted() {
        use crate::ops::probe_marks::{PROBE_PORTS, begin_record, end_record};
        let deny = |spt: u16| {
            format!(
                "[1.0] netguard-deny IN=br0 OUT=br0 SRC=10.0.0.1 DST=10.0.0.2 PROTO=TCP SPT={spt} DPT=1"
            )
        };
        let mut r = Reader::default();
        for l in [
            deny(61001),
            format!("[2.0] {}", begin_record("1.2", PROBE_PORTS)),
            deny(61001),
            deny(61002),
            deny(40000),
            format!("[3.0] {}", end_record("1.2")),
            deny(61003),
        ] {
            r.line(&l);
        }
        let kept: Vec<_> = r.denials.iter().map(|d| d.probe_port).collect();
        // Before and after the run, and real traffic during it: kept.
        assert_eq!(kept, vec![Some(61001), Some(40000), Some(61003)]);
        assert_eq!(r.probes_hidden, 2);
    }
}
