//! Probing a fixture with real packets.
//!
//! A probe is one ordered pair (A→B), one kind (TCP connect to a port, UDP request answered
//! by B's echo server, ICMP echo) and one family. Probes run on a pool of fresh threads that
//! `setns` into the source container; ICMP uses `ping` spawned from such a thread (the child
//! inherits the thread's namespace).
//!
//! Reachability: TCP = handshake completed (or refused: a RST came back, so the SYN was
//! delivered; the fixture listens on every probed port so this does not happen normally);
//! UDP = the echo came back; ICMP = `ping -c1` answered.

use super::fixture::{Container, Fixture, enter_netns};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv6Addr, SocketAddr, TcpStream, UdpSocket};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Family {
    V4,
    V6,
}

impl std::fmt::Display for Family {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Family::V4 => "v4",
            Family::V6 => "v6",
        })
    }
}

pub const FAMILIES: [Family; 2] = [Family::V4, Family::V6];

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Tcp(u16),
    Udp(u16),
    Icmp,
}

impl Kind {
    /// Parses `tcp/8080`, `udp/5353`, `icmp`.
    pub fn parse(s: &str) -> Kind {
        if s == "icmp" {
            return Kind::Icmp;
        }
        let (proto, port) = s
            .split_once('/')
            .unwrap_or_else(|| panic!("bad probe kind {s:?}"));
        let port: u16 = port.parse().unwrap_or_else(|_| panic!("bad port in {s:?}"));
        match proto {
            "tcp" => Kind::Tcp(port),
            "udp" => Kind::Udp(port),
            _ => panic!("bad probe kind {s:?}"),
        }
    }

    /// Parses a whitespace-separated list; `"all"` means [`Kind::all`].
    pub fn parse_list(s: &str) -> Vec<Kind> {
        if s.trim() == "all" {
            return Kind::all();
        }
        s.split_whitespace().map(Kind::parse).collect()
    }

    /// Every kind the fixture serves: each TCP and UDP port plus ICMP.
    pub fn all() -> Vec<Kind> {
        let mut v: Vec<Kind> = super::fixture::TCP_PORTS
            .iter()
            .map(|p| Kind::Tcp(*p))
            .collect();
        v.extend(super::fixture::UDP_PORTS.iter().map(|p| Kind::Udp(*p)));
        v.push(Kind::Icmp);
        v
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Kind::Tcp(p) => write!(f, "tcp/{p}"),
            Kind::Udp(p) => write!(f, "udp/{p}"),
            Kind::Icmp => f.write_str("icmp"),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Probe {
    pub from: String,
    pub to: String,
    pub kind: Kind,
    pub family: Family,
}

impl std::fmt::Display for Probe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} -> {} {} {}",
            self.from, self.to, self.kind, self.family
        )
    }
}

/// Tuning of a probe run.
#[derive(Clone, Copy, Debug)]
pub struct ProbeOpts {
    /// How long a probe waits before it calls the peer unreachable.
    pub timeout: Duration,
    /// Worker threads.
    pub workers: usize,
}

impl Default for ProbeOpts {
    fn default() -> Self {
        ProbeOpts {
            timeout: Duration::from_millis(400),
            workers: 96,
        }
    }
}

struct Job {
    src_ns: String,
    dst: IpAddr,
    kind: Kind,
}

static TOKEN: AtomicUsize = AtomicUsize::new(0);

/// Sends one probe from the current thread's namespace. Returns reachability.
pub fn probe_here(dst: IpAddr, kind: Kind, timeout: Duration) -> bool {
    match kind {
        Kind::Tcp(port) => match TcpStream::connect_timeout(&SocketAddr::new(dst, port), timeout) {
            Ok(_) => true,
            Err(e) => e.kind() == std::io::ErrorKind::ConnectionRefused,
        },
        Kind::Udp(port) => udp_request(dst, port, timeout),
        Kind::Icmp => {
            let secs = format!("{:.3}", timeout.as_secs_f64().max(0.1));
            let fam = if dst.is_ipv6() { "-6" } else { "-4" };
            Command::new("ping")
                .args([fam, "-c1", "-n", "-q", "-W", &secs, &dst.to_string()])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .map(|s| s.success())
                .unwrap_or(false)
        }
    }
}

/// One UDP request to `dst:port` from a fresh socket; true when the echo comes back.
pub fn udp_request(dst: IpAddr, port: u16, timeout: Duration) -> bool {
    let bind: SocketAddr = if dst.is_ipv6() {
        (Ipv6Addr::UNSPECIFIED, 0).into()
    } else {
        ([0, 0, 0, 0], 0).into()
    };
    let Ok(sock) = UdpSocket::bind(bind) else {
        return false;
    };
    let token = format!(
        "probe-{}-{}",
        std::process::id(),
        TOKEN.fetch_add(1, Ordering::Relaxed)
    );
    if sock.connect((dst, port)).is_err() || sock.send(token.as_bytes()).is_err() {
        return false;
    }
    let deadline = Instant::now() + timeout;
    let mut buf = [0u8; 2048];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        sock.set_read_timeout(Some(left)).unwrap();
        match sock.recv(&mut buf) {
            Ok(n) if &buf[..n] == token.as_bytes() => return true,
            Ok(_) => continue,
            Err(_) => return false,
        }
    }
}

/// Runs `probes` in parallel. Results are in the order of `probes`.
pub fn run_probes(fx: &Fixture, probes: &[Probe], opts: ProbeOpts) -> Vec<bool> {
    let jobs: Vec<Job> = probes
        .iter()
        .map(|p| {
            let from = fx.container(&p.from);
            let to = fx.container(&p.to);
            Job {
                src_ns: from.ns.clone(),
                dst: to.addr(p.family == Family::V6),
                kind: p.kind,
            }
        })
        .collect();
    // Sort job indices by source so a worker rarely has to switch namespaces.
    let mut order: Vec<usize> = (0..jobs.len()).collect();
    order.sort_by(|a, b| jobs[*a].src_ns.cmp(&jobs[*b].src_ns));
    let jobs = Arc::new(jobs);
    let order = Arc::new(order);
    let next = Arc::new(AtomicUsize::new(0));
    let results = Arc::new(Mutex::new(vec![false; probes.len()]));
    let workers = opts.workers.min(probes.len()).max(1);
    let handles: Vec<_> = (0..workers)
        .map(|_| {
            let (jobs, order, next, results) =
                (jobs.clone(), order.clone(), next.clone(), results.clone());
            std::thread::spawn(move || {
                let mut current = String::new();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(&idx) = order.get(i) else { break };
                    let job = &jobs[idx];
                    if job.src_ns != current {
                        enter_netns(&job.src_ns)
                            .unwrap_or_else(|e| panic!("setns {}: {e}", job.src_ns));
                        current = job.src_ns.clone();
                    }
                    let ok = probe_here(job.dst, job.kind, opts.timeout);
                    results.lock().unwrap()[idx] = ok;
                }
            })
        })
        .collect();
    for h in handles {
        h.join().expect("probe worker panicked");
    }
    Arc::try_unwrap(results).unwrap().into_inner().unwrap()
}

/// Runs `probes`, then retries once every probe that failed but was expected to pass
/// (a success is never retried).
pub fn run_expecting(
    fx: &Fixture,
    probes: &[Probe],
    expected: &[bool],
    opts: ProbeOpts,
) -> Vec<bool> {
    let mut got = run_probes(fx, probes, opts);
    let retry: Vec<usize> = (0..probes.len())
        .filter(|&i| expected[i] && !got[i])
        .collect();
    if !retry.is_empty() {
        let again: Vec<Probe> = retry.iter().map(|&i| probes[i].clone()).collect();
        let mut slow = opts;
        slow.timeout = opts.timeout * 3;
        let res = run_probes(fx, &again, slow);
        for (k, &i) in retry.iter().enumerate() {
            got[i] = res[k];
        }
    }
    got
}

/// Ordered pairs of distinct containers that share a network (containers on different
/// bridges have no path to each other in the fixture, so only these are meaningful).
pub fn same_network_pairs(fx: &Fixture) -> Vec<(String, String)> {
    let mut pairs = vec![];
    for a in &fx.containers {
        for b in &fx.containers {
            if a.name != b.name && a.network == b.network {
                pairs.push((a.name.clone(), b.name.clone()));
            }
        }
    }
    pairs
}

/// An expected matrix: the kinds allowed for each ordered pair; a pair not listed has none.
/// The same applies to IPv4 and IPv6.
#[derive(Clone, Debug, Default)]
pub struct Expected {
    pub allowed: BTreeMap<(String, String), Vec<Kind>>,
}

impl Expected {
    /// From hand-written rows `(from, to, "tcp/8080 udp/5353 icmp" | "all")`.
    pub fn from_rows(rows: &[(&str, &str, &str)]) -> Expected {
        let mut e = Expected::default();
        for (a, b, kinds) in rows {
            e.allowed
                .entry((a.to_string(), b.to_string()))
                .or_default()
                .extend(Kind::parse_list(kinds));
        }
        e
    }

    pub fn allows(&self, from: &str, to: &str, kind: Kind) -> bool {
        self.allowed
            .get(&(from.to_string(), to.to_string()))
            .is_some_and(|k| k.contains(&kind))
    }
}

/// Outcome of a matrix run.
pub struct MatrixReport {
    pub probes: Vec<Probe>,
    pub expected: Vec<bool>,
    pub got: Vec<bool>,
    pub elapsed: Duration,
}

impl MatrixReport {
    pub fn mismatches(&self) -> Vec<usize> {
        (0..self.probes.len())
            .filter(|&i| self.expected[i] != self.got[i])
            .collect()
    }

    pub fn ok(&self) -> bool {
        self.mismatches().is_empty()
    }

    /// A grid: one row per pair, one column per kind and family.
    /// `+` allowed as expected, `.` blocked as expected,
    /// `X` expected allowed but blocked, `!` expected blocked but got through.
    pub fn table(&self) -> String {
        let mut cols: Vec<(Kind, Family)> =
            self.probes.iter().map(|p| (p.kind, p.family)).collect();
        cols.sort();
        cols.dedup();
        let mut rows: Vec<(String, String)> = vec![];
        for p in &self.probes {
            let r = (p.from.clone(), p.to.clone());
            if !rows.contains(&r) {
                rows.push(r);
            }
        }
        let mut cell: BTreeMap<(String, String, Kind, Family), char> = BTreeMap::new();
        for (i, p) in self.probes.iter().enumerate() {
            let c = match (self.expected[i], self.got[i]) {
                (true, true) => '+',
                (false, false) => '.',
                (true, false) => 'X',
                (false, true) => '!',
            };
            cell.insert((p.from.clone(), p.to.clone(), p.kind, p.family), c);
        }
        let mut s = String::new();
        let headers: Vec<String> = cols.iter().map(|(k, f)| format!("{k} {f}")).collect();
        let w = headers.iter().map(|h| h.len()).max().unwrap_or(4);
        write!(s, "{:<24}", "from -> to").unwrap();
        for h in &headers {
            write!(s, " {h:>w$}").unwrap();
        }
        s.push('\n');
        for (a, b) in &rows {
            write!(s, "{:<24}", format!("{a} -> {b}")).unwrap();
            for (k, f) in &cols {
                let c = cell
                    .get(&(a.clone(), b.clone(), *k, *f))
                    .copied()
                    .unwrap_or(' ');
                write!(s, " {c:>w$}").unwrap();
            }
            s.push('\n');
        }
        s.push_str("legend: + allowed (expected), . blocked (expected), X expected ALLOWED but blocked, ! expected BLOCKED but got through\n");
        s
    }

    /// The mismatches, one per line.
    pub fn mismatch_list(&self) -> String {
        let mut s = String::new();
        for i in self.mismatches() {
            writeln!(
                s,
                "  {}: expected {}, got {}",
                self.probes[i],
                if self.expected[i] {
                    "ALLOWED"
                } else {
                    "BLOCKED"
                },
                if self.got[i] { "through" } else { "blocked" }
            )
            .unwrap();
        }
        s
    }

    /// Panics with the table and the list of mismatches unless every cell matched.
    pub fn assert_ok(&self, what: &str) {
        if !self.ok() {
            panic!(
                "{what}: {} of {} probes differ from the expected matrix\n{}\n{}",
                self.mismatches().len(),
                self.probes.len(),
                self.mismatch_list(),
                self.table()
            );
        }
        eprintln!(
            "{what}: {} probes matched in {:?}",
            self.probes.len(),
            self.elapsed
        );
    }
}

/// Probes every same-network pair with every kind in `kinds` over both families and
/// compares with `expected`.
pub fn check_matrix(fx: &Fixture, expected: &Expected, kinds: &[Kind]) -> MatrixReport {
    let mut probes = vec![];
    for (a, b) in same_network_pairs(fx) {
        for &kind in kinds {
            for family in FAMILIES {
                probes.push(Probe {
                    from: a.clone(),
                    to: b.clone(),
                    kind,
                    family,
                });
            }
        }
    }
    let exp: Vec<bool> = probes
        .iter()
        .map(|p| expected.allows(&p.from, &p.to, p.kind))
        .collect();
    let t = Instant::now();
    let got = run_expecting(fx, &probes, &exp, ProbeOpts::default());
    MatrixReport {
        probes,
        expected: exp,
        got,
        elapsed: t.elapsed(),
    }
}

/// Sends one UDP datagram from container `from`, with source address `src` (which must be
/// configured on its eth0), to `dst:port`. Used by the spoofing tests.
pub fn send_udp_from(from: &Container, src: IpAddr, dst: IpAddr, port: u16, payload: &[u8]) {
    let ns = from.ns.clone();
    let payload = payload.to_vec();
    super::fixture::in_netns(&ns, move || {
        let sock =
            UdpSocket::bind(SocketAddr::new(src, 0)).unwrap_or_else(|e| panic!("bind {src}: {e}"));
        sock.send_to(&payload, (dst, port))
            .unwrap_or_else(|e| panic!("send to {dst}: {e}"));
    });
}
