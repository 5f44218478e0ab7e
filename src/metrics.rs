//! Prometheus metrics: a small registry rendered in the text exposition format (0.0.4),
//! and a tiny HTTP server on tokio that answers `GET /metrics` (404 for anything else).
//!
//! | metric | type | meaning |
//! |---|---|---|
//! | `netguard_reconciles_total` | counter | reconciles run (successful or not) |
//! | `netguard_reconcile_duration_seconds` | histogram | one reconcile: inventory, plan, diff, apply |
//! | `netguard_event_to_enforce_seconds` | histogram | container event received from Docker → rules live (time queued behind a reconcile included, Docker's own delay before it sends the event not) |
//! | `netguard_managed_containers` | gauge | containers with at least one endpoint on a managed network (`settings.networks`), admitted or not |
//! | `netguard_separation_violations` | gauge | pairs of containers on this host breaking a `[[separate]]` line of the policy |
//! | `netguard_errors_total{kind}` | counter | errors by kind (`source`, `nft`, `reconcile`, `bridge`, `conntrack`, `veth`, `reload`, `state`) |
//! | `netguard_denied_packets_total{from_group,to_group}` | counter | packets dropped by the default deny, per group pair, from nft counters |
//! | `netguard_default_deny_packets_total` | counter | every packet dropped by the default deny (in a group or not) |
//! | `netguard_held_packets_total` | counter | packets of containers not admitted yet that the kernel queued to the daemon to hold until their admission (`[settings] admission_hold`), from the hold rule's nft counter; absent when the hold is off |
//! | `netguard_denied_total{edge}` | counter | new connections dropped at an edge closed by its setting: `host`, `egress`, `ingress` (only the closed edges are listed); `published`: a managed container's connection through docker-proxy to a published port of a managed container that no line allows (always listed) |
//!
//! The denied counters are copies of kernel counters: they restart from 0 when the
//! `isolate` chain is rewritten (a policy change), which Prometheus' `rate()` treats as a
//! counter reset.

use crate::nft::LiveState;
use crate::nft::render::comment_text;
use crate::plan::ruleset::Family;
use crate::plan::{DENY_COUNTER_PREFIX, EDGE_DENY_PREFIX, EDGES, HOLD_COMMENT, names};
use std::collections::BTreeMap;
use std::fmt::Write;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Default listen address when `--metrics-listen` is given without a value.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:9432";

/// Upper bounds (seconds) of the histogram buckets: 0.5 ms to 10 s.
pub const BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

#[derive(Debug, Clone, Default)]
struct Histogram {
    /// Non-cumulative count per bucket of `BUCKETS`, plus +Inf last.
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    fn observe(&mut self, v: f64) {
        if self.counts.is_empty() {
            self.counts = vec![0; BUCKETS.len() + 1];
        }
        let i = BUCKETS
            .iter()
            .position(|b| v <= *b)
            .unwrap_or(BUCKETS.len());
        self.counts[i] += 1;
        self.sum += v;
        self.count += 1;
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} histogram");
        let mut cum = 0;
        for (i, b) in BUCKETS.iter().enumerate() {
            cum += self.counts.get(i).copied().unwrap_or(0);
            let _ = writeln!(out, "{name}_bucket{{le=\"{b}\"}} {cum}");
        }
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {}", self.count);
        let _ = writeln!(out, "{name}_sum {}", self.sum);
        let _ = writeln!(out, "{name}_count {}", self.count);
    }
}

#[derive(Debug, Default)]
struct Inner {
    reconciles: u64,
    reconcile_duration: Histogram,
    event_latency: Histogram,
    managed_containers: u64,
    separation_violations: u64,
    errors: BTreeMap<String, u64>,
    denied: BTreeMap<(String, String), u64>,
    default_deny: u64,
    /// Edge name -> packets its drops counted; only edges with a drop rule in the table.
    edge_denied: BTreeMap<String, u64>,
    /// Packets the hold rule queued, when the table has one.
    held: Option<u64>,
}

/// The registry. Cheap to update from any task; `render` takes a consistent snapshot.
#[derive(Debug, Default)]
pub struct Metrics {
    inner: Mutex<Inner>,
    /// Read the deny counters from the kernel on every scrape.
    kernel_counters: bool,
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

impl Metrics {
    pub fn new() -> Metrics {
        Metrics::default()
    }

    /// A registry whose scrapes also read netguard's live inet table for the deny
    /// counters (one `list table`, ≈0.2 ms in process). What the daemon uses.
    pub fn with_kernel_counters() -> Metrics {
        Metrics {
            kernel_counters: true,
            ..Default::default()
        }
    }

    /// Refreshes the deny counters from the kernel (when enabled); failures count as
    /// `errors_total{kind="nft"}` and leave the last values.
    pub async fn refresh(&self) {
        if !self.kernel_counters {
            return;
        }
        let read = tokio::task::spawn_blocking(|| {
            let b = crate::nft::Backend::system();
            b.read_table(Family::Inet)
        })
        .await;
        match read {
            Ok(Ok(t)) => {
                let live: LiveState = [(Family::Inet, t)].into_iter().collect();
                self.set_denied_from_live(&live);
            }
            Ok(Err(e)) => {
                tracing::debug!("metrics: reading nft counters: {e}");
                self.error("nft");
            }
            Err(_) => self.error("nft"),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves plain numbers behind: still usable.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// One reconcile finished (also when it failed: count the error with `error`).
    pub fn reconciled(&self, took: Duration) {
        let mut i = self.lock();
        i.reconciles += 1;
        i.reconcile_duration.observe(took.as_secs_f64());
    }

    /// A container event became enforced rules `latency` after netguard received it.
    pub fn event_enforced(&self, latency: Duration) {
        self.lock().event_latency.observe(latency.as_secs_f64());
    }

    pub fn set_managed_containers(&self, n: usize) {
        self.lock().managed_containers = n as u64;
    }

    pub fn set_separation_violations(&self, n: usize) {
        self.lock().separation_violations = n as u64;
    }

    /// One error of `kind` (a short fixed word: `source`, `nft`, `reconcile`, `bridge`, `conntrack`, `veth`, `reload`, `state`).
    pub fn error(&self, kind: &str) {
        *self.lock().errors.entry(kind.to_string()).or_default() += 1;
    }

    /// Copies the kernel's deny counters out of netguard's live inet table.
    pub fn set_denied_from_live(&self, live: &LiveState) {
        let mut denied: BTreeMap<(String, String), u64> = BTreeMap::new();
        let mut default_deny = 0;
        if let Some(Some(t)) = live.get(&Family::Inet)
            && let Some(ch) = t.chains.get(names::ISOLATE)
        {
            for r in &ch.rules {
                let (Some(c), Some(p)) = (r.comment.as_deref(), r.packets) else {
                    continue;
                };
                if let Some(pair) = c.strip_prefix(DENY_COUNTER_PREFIX) {
                    let pair = comment_text(pair);
                    if let Some((a, b)) = pair.split_once(" -> ") {
                        *denied.entry((a.to_string(), b.to_string())).or_default() += p;
                    }
                } else if c.starts_with("default deny") {
                    default_deny += p;
                }
            }
        }
        let mut edge_denied: BTreeMap<String, u64> = BTreeMap::new();
        if let Some(Some(t)) = live.get(&Family::Inet) {
            // An edge's drops may sit in several chains (`ingress` and, through docker-proxy,
            // `published_in`): every rule with its comment counts; an edge none of whose
            // drop rules exists (open) is not exported.
            for (edge, _) in EDGES {
                let mut found = false;
                let mut n = 0;
                for r in t.chains.values().flat_map(|ch| &ch.rules) {
                    if r.comment.as_deref().is_some_and(|c| {
                        comment_text(c).strip_prefix(EDGE_DENY_PREFIX) == Some(edge)
                    }) {
                        found = true;
                        n += r.packets.unwrap_or(0);
                    }
                }
                if found {
                    edge_denied.insert(edge.to_string(), n);
                }
            }
        }
        let held = live
            .get(&Family::Inet)
            .and_then(|t| t.as_ref())
            .and_then(|t| t.chains.get(names::HOLD))
            .and_then(|ch| {
                ch.rules
                    .iter()
                    .find(|r| {
                        r.comment
                            .as_deref()
                            .is_some_and(|c| comment_text(c) == HOLD_COMMENT)
                    })
                    .map(|r| r.packets.unwrap_or(0))
            });
        let mut i = self.lock();
        i.denied = denied;
        i.default_deny = default_deny;
        i.edge_denied = edge_denied;
        i.held = held;
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let i = self.lock();
        let mut out = String::new();
        let head = |out: &mut String, name: &str, kind: &str, help: &str| {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} {kind}");
        };
        head(
            &mut out,
            "netguard_reconciles_total",
            "counter",
            "Reconciles run.",
        );
        let _ = writeln!(out, "netguard_reconciles_total {}", i.reconciles);
        i.reconcile_duration.render(
            &mut out,
            "netguard_reconcile_duration_seconds",
            "Duration of one reconcile (inventory, plan, diff, apply).",
        );
        i.event_latency.render(
            &mut out,
            "netguard_event_to_enforce_seconds",
            "Time from a Docker event to the rules that enforce it.",
        );
        head(
            &mut out,
            "netguard_managed_containers",
            "gauge",
            "Containers with an endpoint on a managed network.",
        );
        let _ = writeln!(out, "netguard_managed_containers {}", i.managed_containers);
        head(
            &mut out,
            "netguard_separation_violations",
            "gauge",
            "Pairs of containers on this host breaking a [[separate]] line.",
        );
        let _ = writeln!(
            out,
            "netguard_separation_violations {}",
            i.separation_violations
        );
        head(
            &mut out,
            "netguard_errors_total",
            "counter",
            "Errors by kind.",
        );
        for (k, v) in &i.errors {
            let _ = writeln!(out, "netguard_errors_total{{kind=\"{}\"}} {v}", escape(k));
        }
        head(
            &mut out,
            "netguard_denied_packets_total",
            "counter",
            "Packets dropped by the default deny, per (source group, destination group).",
        );
        for ((a, b), v) in &i.denied {
            let _ = writeln!(
                out,
                "netguard_denied_packets_total{{from_group=\"{}\",to_group=\"{}\"}} {v}",
                escape(a),
                escape(b)
            );
        }
        head(
            &mut out,
            "netguard_default_deny_packets_total",
            "counter",
            "Packets dropped by the default deny.",
        );
        let _ = writeln!(
            out,
            "netguard_default_deny_packets_total {}",
            i.default_deny
        );
        if let Some(held) = i.held {
            head(
                &mut out,
                "netguard_held_packets_total",
                "counter",
                "Packets of containers not admitted yet queued to the daemon to wait for their admission.",
            );
            let _ = writeln!(out, "netguard_held_packets_total {held}");
        }
        if !i.edge_denied.is_empty() {
            head(
                &mut out,
                "netguard_denied_total",
                "counter",
                "New connections dropped at a closed edge (host, egress, ingress) or at a published port served by docker-proxy (published).",
            );
            for (edge, v) in &i.edge_denied {
                let _ = writeln!(
                    out,
                    "netguard_denied_total{{edge=\"{}\"}} {v}",
                    escape(edge)
                );
            }
        }
        out
    }
}

/// A bound metrics listener (bind first to learn the port, e.g. for `127.0.0.1:0`).
pub struct MetricsServer {
    listener: TcpListener,
}

impl MetricsServer {
    pub async fn bind(addr: SocketAddr) -> std::io::Result<MetricsServer> {
        Ok(MetricsServer {
            listener: TcpListener::bind(addr).await?,
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until the task is dropped. A failing connection never stops the server.
    pub async fn run(self, metrics: Arc<Metrics>) -> std::io::Result<()> {
        loop {
            let (stream, _) = match self.listener.accept().await {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!("metrics: accept: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let m = metrics.clone();
            tokio::spawn(async move {
                if let Err(e) = handle(stream, &m).await {
                    tracing::debug!("metrics: connection: {e}");
                }
            });
        }
    }
}

/// Binds `addr` and serves `GET /metrics` until the task is dropped.
pub async fn serve(addr: SocketAddr, metrics: Arc<Metrics>) -> std::io::Result<()> {
    MetricsServer::bind(addr).await?.run(metrics).await
}

async fn handle(mut stream: TcpStream, metrics: &Metrics) -> std::io::Result<()> {
    // Read the request head (bounded: 8 KiB, 5 s); the body, if any, is ignored.
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    let read = async {
        while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < 8192 {
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                break;
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        Ok::<_, std::io::Error>(())
    };
    if tokio::time::timeout(Duration::from_secs(5), read)
        .await
        .is_err()
    {
        return Ok(());
    }
    let head = String::from_utf8_lossy(&buf);
    let mut parts = head.lines().next().unwrap_or("").split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = path.split('?').next().unwrap_or("");
    let (status, ctype, body) = match (method, path) {
        ("GET" | "HEAD", "/metrics") => {
            metrics.refresh().await;
            (
                "200 OK",
                "text/plain; version=0.0.4; charset=utf-8",
                metrics.render(),
            )
        }
        ("GET" | "HEAD", _) => ("404 Not Found", "text/plain", "not found\n".to_string()),
        _ => (
            "405 Method Not Allowed",
            "text/plain",
            "only GET /metrics\n".to_string(),
        ),
    };
    let mut resp = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    if method != "HEAD" {
        resp.push_str(&body);
    }
    stream.write_all(resp.as_bytes()).await?;
    stream.shutdown().await
}
