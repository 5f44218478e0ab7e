//! The daemon (`netguard run --inventory FILE`) in a network-namespace fixture, checked with
//! real packets: revocation of open TCP connections on reload, a container removed from the
//! inventory (its connections cut, its address reaching no one), a burst of inventory changes.
//!
//! Needs root, `ip`, `nft`, `ping` and `conntrack` (the daemon cuts connections with it):
//! `sudo -E cargo test --test daemon_netns`. Missing prerequisites SKIP, or fail under CI=true.
//! Every fixture has its own namespaces; the tests still run one at a time (2-core machines,
//! timing assertions).

#[path = "common/daemon.rs"]
mod daemon;
#[path = "../netns-fixtures/mod.rs"]
mod netns;

use daemon::{Daemon, Spec, poll};
use netns::fixture::*;
use netns::probe::*;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

static SERIAL: Mutex<()> = Mutex::new(());

/// Port of the test's own echo server (the fixture's TCP servers close at once).
const ECHO: u16 = 7100;

/// Topology (`Topology::standard`): front: web-1, web-2 (role=web), api-1, lonely;
/// back: api-2, db-1, db-2 (postgres*), mon-1; side (unmanaged): side-web, api-side.
const POLICY: &str = r#"
[settings]
networks = ["front", "back"]

[groups.web]
match = { label = { role = "web" } }
[groups.api]
match = { name = "api-*" }
[groups.db]
match = { image = "postgres*" }

[[allow]]
from = "web"
to = "api"
ports = ["7100/tcp", "8080/tcp", "icmp"]

[[allow]]
from = "api"
to = "web"
ports = ["9005/tcp"]

[[allow]]
within = "db"
"#;

/// POLICY without 7100/tcp for web -> api.
const POLICY_REVOKED: &str = r#"
[settings]
networks = ["front", "back"]

[groups.web]
match = { label = { role = "web" } }
[groups.api]
match = { name = "api-*" }
[groups.db]
match = { image = "postgres*" }

[[allow]]
from = "web"
to = "api"
ports = ["8080/tcp", "icmp"]

[[allow]]
from = "api"
to = "web"
ports = ["9005/tcp"]

[[allow]]
within = "db"
"#;

fn expected_full() -> Expected {
    Expected::from_rows(&[
        ("web-1", "api-1", "tcp/8080 icmp"),
        ("web-2", "api-1", "tcp/8080 icmp"),
        ("api-1", "web-1", "tcp/9005"),
        ("api-1", "web-2", "tcp/9005"),
        ("db-1", "db-2", "all"),
        ("db-2", "db-1", "all"),
        ("side-web", "api-side", "all"),
        ("api-side", "side-web", "all"),
    ])
}

fn prereqs(test: &str) -> bool {
    prerequisites_with(test, &["conntrack"])
}

/// Writes atomically (a reader never sees half a file).
fn write_atomic(path: &std::path::Path, content: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, content).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// An echo server on ECHO inside a container's namespace; stops on drop.
struct EchoServer {
    stop: Arc<AtomicBool>,
}

impl EchoServer {
    fn start(c: &Container) -> EchoServer {
        let stop = Arc::new(AtomicBool::new(false));
        let listener = in_netns(&c.ns, || {
            TcpListener::bind((std::net::Ipv6Addr::UNSPECIFIED, ECHO)).expect("bind echo")
        });
        listener.set_nonblocking(true).unwrap();
        let s = stop.clone();
        std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((mut stream, _)) => {
                        let s2 = s.clone();
                        std::thread::spawn(move || {
                            stream.set_nonblocking(false).unwrap();
                            stream
                                .set_read_timeout(Some(Duration::from_millis(100)))
                                .unwrap();
                            let mut buf = [0u8; 256];
                            while !s2.load(Ordering::Relaxed) {
                                match stream.read(&mut buf) {
                                    Ok(0) => return,
                                    Ok(n) => {
                                        if stream.write_all(&buf[..n]).is_err() {
                                            return;
                                        }
                                    }
                                    Err(e)
                                        if e.kind() == std::io::ErrorKind::WouldBlock
                                            || e.kind() == std::io::ErrorKind::TimedOut => {}
                                    Err(_) => return,
                                }
                            }
                        });
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        EchoServer { stop }
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// One long-lived TCP connection from a container to an echo server: a request every 20 ms
/// on the same connection, each answer recorded.
struct Conn {
    stop: Arc<AtomicBool>,
    oks: Arc<AtomicUsize>,
    last_ok: Arc<Mutex<Option<Instant>>>,
    handle: Option<std::thread::JoinHandle<String>>,
}

impl Conn {
    fn open(from: &Container, dst: SocketAddr) -> Conn {
        let stop = Arc::new(AtomicBool::new(false));
        let oks = Arc::new(AtomicUsize::new(0));
        let last_ok = Arc::new(Mutex::new(None));
        let (s, o, l) = (stop.clone(), oks.clone(), last_ok.clone());
        let ns = from.ns.clone();
        let handle = std::thread::spawn(move || {
            enter_netns(&ns).unwrap();
            let mut stream = match TcpStream::connect_timeout(&dst, Duration::from_secs(2)) {
                Ok(st) => st,
                Err(e) => return format!("connect failed: {e}"),
            };
            stream
                .set_read_timeout(Some(Duration::from_millis(200)))
                .unwrap();
            stream
                .set_write_timeout(Some(Duration::from_millis(200)))
                .unwrap();
            let mut seq = 0u64;
            let mut end = String::from("stopped");
            while !s.load(Ordering::Relaxed) {
                let msg = format!("m{seq};");
                seq += 1;
                if let Err(e) = stream.write_all(msg.as_bytes()) {
                    end = format!("write failed after {seq} requests: {e}");
                    break;
                }
                let mut got = Vec::new();
                let deadline = Instant::now() + Duration::from_millis(200);
                let mut buf = [0u8; 256];
                while !got.ends_with(msg.as_bytes()) && Instant::now() < deadline {
                    match stream.read(&mut buf) {
                        Ok(0) => {
                            end = "closed by peer".into();
                            break;
                        }
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                        Err(_) => break,
                    }
                }
                if got.ends_with(msg.as_bytes()) {
                    o.fetch_add(1, Ordering::Relaxed);
                    *l.lock().unwrap() = Some(Instant::now());
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            end
        });
        Conn {
            stop,
            oks,
            last_ok,
            handle: Some(handle),
        }
    }

    fn oks(&self) -> usize {
        self.oks.load(Ordering::Relaxed)
    }

    fn last_ok(&self) -> Option<Instant> {
        *self.last_ok.lock().unwrap()
    }

    /// Waits until at least `n` answers came back (the connection works).
    #[track_caller]
    fn wait_working(&self, n: usize) {
        if poll(Duration::from_secs(5), Duration::from_millis(20), || {
            self.oks() >= n
        })
        .is_none()
        {
            panic!("the connection never carried data ({} answers)", self.oks());
        }
    }

    fn close(mut self) -> String {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.take().unwrap().join().unwrap()
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Asserts that the connection stopped carrying data within `within` of `since`, and that
/// nothing arrives for another second.
#[track_caller]
fn assert_cut(conn: &Conn, since: Instant, within: Duration, d: &Daemon, what: &str) {
    std::thread::sleep(within.saturating_sub(since.elapsed()));
    let n = conn.oks();
    std::thread::sleep(Duration::from_secs(1));
    let last = conn.last_ok();
    let after = last.map(|l| l.saturating_duration_since(since));
    eprintln!(
        "{what}: {n} answers before the cut, last one {after:?} after the reload was applied"
    );
    if conn.oks() != n || after.is_some_and(|a| a > within) {
        d.fail(&format!(
            "{what}: the open connection still carries data: {} answers, {} of them more than \
             {within:?} after the reload (last {after:?} after it)",
            conn.oks(),
            conn.oks() - n
        ));
    }
}

fn spec(fx: &Fixture, policy: &std::path::Path) -> Spec {
    let mut s = Spec::new(policy, fx.dir.path());
    s.netns = Some(fx.host_ns.clone());
    s.inventory = Some(fx.inventory.clone());
    s
}

fn probe(fx: &Fixture, from: &str, to: &str, kind: Kind) -> bool {
    run_probes(
        fx,
        &[Probe {
            from: from.into(),
            to: to.into(),
            kind,
            family: Family::V4,
        }],
        ProbeOpts::default(),
    )[0]
}

#[test]
fn reload_revoking_a_pair_cuts_its_open_tcp_connection() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    if !prereqs("reload_revoking_a_pair_cuts_its_open_tcp_connection") {
        return;
    }
    let fx = Fixture::new(&Topology::standard());
    let policy = fx.write_file("policy.toml", POLICY);
    let mut d = Daemon::start(&spec(&fx, &policy));
    let (web1, web2, api1) = (
        fx.container("web-1"),
        fx.container("web-2"),
        fx.container("api-1"),
    );
    let _echo = EchoServer::start(api1);
    let conn = Conn::open(web1, SocketAddr::new(api1.addr(false), ECHO));
    let conn6 = Conn::open(web2, SocketAddr::new(api1.addr(true), ECHO));
    conn.wait_working(5);
    conn6.wait_working(5);

    write_atomic(&policy, POLICY_REVOKED);
    d.reload();
    let applied = Instant::now();
    assert_cut(
        &conn,
        applied,
        Duration::from_secs(1),
        &d,
        "web-1 -> api-1:7100 (IPv4)",
    );
    assert_cut(
        &conn6,
        applied,
        Duration::from_secs(1),
        &d,
        "web-2 -> api-1:7100 (IPv6)",
    );
    eprintln!("client ends: {} / {}", conn.close(), conn6.close());
    assert!(
        !probe(&fx, "web-1", "api-1", Kind::Tcp(ECHO)),
        "a new connection to the revoked port passes"
    );
    // What is still allowed still works.
    assert!(probe(&fx, "web-1", "api-1", Kind::Tcp(8080)));
    assert!(d.alive(), "daemon died");
}

#[test]
fn container_removed_from_inventory_is_cut_and_isolated() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    if !prereqs("container_removed_from_inventory_is_cut_and_isolated") {
        return;
    }
    let fx = Fixture::new(&Topology::standard());
    let policy = fx.write_file("policy.toml", POLICY);
    let mut d = Daemon::start(&spec(&fx, &policy));
    let (web1, api1) = (fx.container("web-1"), fx.container("api-1"));
    let _echo = EchoServer::start(api1);
    // Client side and server side of the removed container's connections.
    let _echo_web = EchoServer::start(web1);
    let out = Conn::open(web1, SocketAddr::new(api1.addr(false), ECHO));
    out.wait_working(5);
    assert!(probe(&fx, "api-1", "web-1", Kind::Tcp(9005)));
    assert!(probe(&fx, "web-1", "api-1", Kind::Tcp(8080)));

    let without: Vec<Container> = fx
        .containers
        .iter()
        .filter(|c| c.name != "web-1")
        .cloned()
        .collect();
    write_atomic(&fx.inventory, &inventory_toml(&without));
    d.reload();
    let applied = Instant::now();
    assert_cut(
        &out,
        applied,
        Duration::from_secs(1),
        &d,
        "web-1 -> api-1:7100 after web-1 left",
    );
    eprintln!("client end: {}", out.close());

    // web-1's address reaches no one and is reached by no one; the others are unaffected.
    let report = check_matrix(
        &fx,
        &Expected::from_rows(&[
            ("web-2", "api-1", "tcp/8080 icmp"),
            ("api-1", "web-2", "tcp/9005"),
            ("db-1", "db-2", "all"),
            ("db-2", "db-1", "all"),
            ("side-web", "api-side", "all"),
            ("api-side", "side-web", "all"),
        ]),
        &Kind::all(),
    );
    if !report.ok() {
        d.fail(&format!(
            "matrix after removing web-1:\n{}\n{}",
            report.mismatch_list(),
            report.table()
        ));
    }
    let diff = fx.netguard(&policy, &fx.inventory, &["diff"]);
    assert_eq!(diff.status.code(), Some(0), "{diff:?}");
}

#[test]
fn burst_of_inventory_changes_converges() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    if !prereqs("burst_of_inventory_changes_converges") {
        return;
    }
    let fx = Fixture::new(&Topology::standard());
    let policy = fx.write_file("policy.toml", POLICY);
    let mut d = Daemon::start(&spec(&fx, &policy));
    let report = check_matrix(&fx, &expected_full(), &Kind::all());
    if !report.ok() {
        d.fail(&format!("matrix at start:\n{}", report.mismatch_list()));
    }
    let start_reconciles = d.state_u64("reconciles");

    // 40 inventory versions, each followed by SIGHUP, 0-15 ms apart: containers leave and
    // come back, labels change (group membership moves).
    let all = fx.containers.clone();
    let t = Instant::now();
    for i in 0..40usize {
        let mut v: Vec<Container> = all
            .iter()
            .enumerate()
            .filter(|(j, _)| (i * 7 + j) % 3 != 0)
            .map(|(_, c)| c.clone())
            .collect();
        for c in v.iter_mut() {
            if c.name == "lonely" && i % 2 == 0 {
                c.labels = vec![("role".into(), "web".into())];
            }
        }
        write_atomic(&fx.inventory, &inventory_toml(&v));
        d.hup();
        std::thread::sleep(Duration::from_millis((i as u64 * 5) % 16));
    }
    // Final version: web-2 and db-2 gone, lonely joins web.
    let mut last: Vec<Container> = all
        .iter()
        .filter(|c| c.name != "web-2" && c.name != "db-2")
        .cloned()
        .collect();
    last.iter_mut().find(|c| c.name == "lonely").unwrap().labels =
        vec![("role".into(), "web".into())];
    write_atomic(&fx.inventory, &inventory_toml(&last));
    d.hup();
    let burst = t.elapsed();

    // Settled: no reconcile for 1 s.
    let mut prev = d.state_u64("reconciles");
    let mut still = Instant::now();
    let t = Instant::now();
    while still.elapsed() < Duration::from_secs(1) {
        std::thread::sleep(Duration::from_millis(50));
        let now = d.state_u64("reconciles");
        if now != prev {
            prev = now;
            still = Instant::now();
        }
        if t.elapsed() > Duration::from_secs(20) {
            d.fail("the daemon did not settle within 20 s");
        }
    }
    eprintln!(
        "burst of 41 inventory versions in {burst:?}: {} reconciles",
        prev - start_reconciles
    );
    assert!(d.alive(), "daemon died");
    let diff = fx.netguard(&policy, &fx.inventory, &["diff"]);
    if diff.status.code() != Some(0) {
        d.fail(&format!("not in sync after the burst: {diff:?}"));
    }
    let report = check_matrix(
        &fx,
        &Expected::from_rows(&[
            ("web-1", "api-1", "tcp/8080 icmp"),
            ("lonely", "api-1", "tcp/8080 icmp"),
            ("api-1", "web-1", "tcp/9005"),
            ("api-1", "lonely", "tcp/9005"),
            ("side-web", "api-side", "all"),
            ("api-side", "side-web", "all"),
        ]),
        &Kind::all(),
    );
    if !report.ok() {
        d.fail(&format!(
            "matrix after the burst:\n{}\n{}",
            report.mismatch_list(),
            report.table()
        ));
    }
}

#[test]
fn inventory_change_without_sighup_is_picked_up_by_resync() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    if !prereqs("inventory_change_without_sighup_is_picked_up_by_resync") {
        return;
    }
    let fx = Fixture::new(&Topology::standard());
    let policy = fx.write_file("policy.toml", POLICY);
    let mut s = spec(&fx, &policy);
    s.resync_secs = 1;
    let mut d = Daemon::start(&s);
    let (web1, api1) = (fx.container("web-1"), fx.container("api-1"));
    let _echo = EchoServer::start(api1);
    let conn = Conn::open(web1, SocketAddr::new(api1.addr(false), ECHO));
    conn.wait_working(5);
    let n = d.state_u64("reconciles");
    let without: Vec<Container> = fx
        .containers
        .iter()
        .filter(|c| c.name != "web-1")
        .cloned()
        .collect();
    write_atomic(&fx.inventory, &inventory_toml(&without));
    let t = Instant::now();
    d.wait_reconciles_above(n, Duration::from_secs(4));
    eprintln!(
        "inventory change picked up by the resync after {:?}",
        t.elapsed()
    );
    let applied = Instant::now();
    assert_cut(
        &conn,
        applied,
        Duration::from_secs(1),
        &d,
        "web-1 -> api-1:7100 after web-1 left (resync)",
    );
    assert!(!probe(&fx, "web-1", "api-1", Kind::Tcp(8080)));
    assert!(probe(&fx, "web-2", "api-1", Kind::Tcp(8080)));
}

/// `GET /metrics` from inside network namespace `ns`: sample name (with labels) → value.
fn scrape(ns: &str, port: u16) -> std::collections::BTreeMap<String, f64> {
    let text = in_netns(ns, move || {
        let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect to metrics");
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        let mut resp = String::new();
        s.read_to_string(&mut resp).unwrap();
        resp
    });
    let (head, body) = text.split_once("\r\n\r\n").expect("HTTP response");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    body.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (k, v) = l
                .rsplit_once(' ')
                .unwrap_or_else(|| panic!("bad line {l:?}"));
            let v: f64 = v.parse().unwrap_or_else(|_| panic!("bad value {l:?}"));
            (k.to_string(), v)
        })
        .collect()
}

/// The real daemon with `--metrics-listen`, scraped over TCP (and `status` reading its state
/// file): reconciles counted with their
/// durations, and the managed-containers gauge counting only containers on managed networks
/// (8 of the 10: side-web and api-side are on the unmanaged `side` network).
#[test]
fn daemon_serves_metrics_of_its_reconciles() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    if !prereqs("daemon_serves_metrics_of_its_reconciles") {
        return;
    }
    const PORT: u16 = 9432;
    let fx = Fixture::new(&Topology::standard());
    let policy = fx.write_file("policy.toml", POLICY);
    let mut s = spec(&fx, &policy);
    s.metrics_listen = Some(format!("127.0.0.1:{PORT}"));
    let mut d = Daemon::start(&s);

    // `status` finds the live daemon through its state file.
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", &fx.host_ns, &netguard_bin(), "-c"])
        .arg(&policy)
        .arg("--inventory")
        .arg(&fx.inventory)
        .arg("status")
        .env("NETGUARD_STATE", &d.state_file)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}");
    let line = text
        .lines()
        .find(|l| l.starts_with("  daemon "))
        .unwrap_or_else(|| panic!("no daemon line:\n{text}"));
    let want = format!("  daemon        running (pid {}), last reconcile ", d.pid);
    let rest = line
        .strip_prefix(&want)
        .unwrap_or_else(|| panic!("{line:?} does not start with {want:?}"));
    let (ago, source) = rest
        .split_once(", connected to ")
        .unwrap_or_else(|| panic!("{line:?}: no source"));
    let secs: u64 = ago
        .strip_suffix("s ago")
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{line:?}: not \"Ns ago\""));
    assert!(secs < 60, "{line}");
    assert_eq!(
        source,
        format!("inventory file {}", fx.inventory.display()),
        "{line}"
    );
    // The same file given as `status --state-file`, the flag `run` was given: it wins over
    // NETGUARD_STATE, and the document is the one the daemon wrote, whole.
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", &fx.host_ns, &netguard_bin(), "-c"])
        .arg(&policy)
        .arg("--inventory")
        .arg(&fx.inventory)
        .args(["--output", "json", "status", "--state-file"])
        .arg(&d.state_file)
        .env("NETGUARD_STATE", fx.dir.path().join("no-such-state.json"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let daemon = &j["health"]["daemon"];
    assert_eq!(daemon["state_file"], d.state_file.display().to_string());
    assert_eq!(daemon["running"], true, "{daemon:#}");
    let written = d.state().unwrap();
    for key in ["pid", "source", "started_unix_ms"] {
        assert_eq!(daemon["state"][key], written[key], "{key}: {daemon:#}");
    }
    assert!(
        daemon["state"]["reconciles"].as_u64() >= Some(1),
        "{daemon:#}"
    );

    let m = scrape(&fx.host_ns, PORT);
    let reconciles = m["netguard_reconciles_total"];
    assert!(reconciles >= 1.0, "{m:?}");
    assert_eq!(
        m["netguard_reconcile_duration_seconds_count"], reconciles,
        "{m:?}"
    );
    assert_eq!(
        m["netguard_reconcile_duration_seconds_bucket{le=\"+Inf\"}"],
        reconciles
    );
    assert!(m["netguard_reconcile_duration_seconds_sum"] > 0.0);
    // An inventory file sends no container events: the histogram exists and is empty.
    assert_eq!(m["netguard_event_to_enforce_seconds_count"], 0.0, "{m:?}");
    assert_eq!(
        m["netguard_event_to_enforce_seconds_bucket{le=\"+Inf\"}"],
        0.0
    );
    assert_eq!(fx.containers.len(), 10);
    assert_eq!(m["netguard_managed_containers"], 8.0, "{m:?}");

    // web-1 leaves, side-web (unmanaged) too: the gauge drops by one.
    let rest: Vec<Container> = fx
        .containers
        .iter()
        .filter(|c| c.name != "web-1" && c.name != "side-web")
        .cloned()
        .collect();
    write_atomic(&fx.inventory, &inventory_toml(&rest));
    d.reload();
    let m = scrape(&fx.host_ns, PORT);
    assert_eq!(m["netguard_managed_containers"], 7.0, "{m:?}");
    assert!(m["netguard_reconciles_total"] > reconciles, "{m:?}");
    assert!(d.alive(), "daemon died");
}

/// `[[separate]]` in the real daemon: the gauge counts the pairs breaking the line, each
/// pair is logged once (not again on a reload that changes nothing), and a member leaving
/// takes its pairs along.
#[test]
fn daemon_reports_separation_violations() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    if !prereqs("daemon_reports_separation_violations") {
        return;
    }
    const PORT: u16 = 9433;
    const LOGGED: &str = "trust groups that must be kept apart share this host";
    let fx = Fixture::new(&Topology::standard());
    let policy = fx.write_file(
        "policy.toml",
        &format!("{POLICY}\n[[separate]]\ngroups = [\"web\", \"db\"]\ncomment = \"apart\"\n"),
    );
    let mut s = spec(&fx, &policy);
    s.metrics_listen = Some(format!("127.0.0.1:{PORT}"));
    let mut d = Daemon::start(&s);
    // Counted from the fixture itself: web = label role=web, db = image postgres*.
    let web = |c: &Container| c.labels.iter().any(|(k, v)| k == "role" && v == "web");
    let db = |c: &Container| c.image.starts_with("postgres");
    let pairs = |cs: &[Container]| {
        cs.iter().filter(|c| web(c)).count() * cs.iter().filter(|c| db(c)).count()
    };
    let want = pairs(&fx.containers);
    assert!(want >= 2, "the fixture has web and db members");
    let m = scrape(&fx.host_ns, PORT);
    assert_eq!(m["netguard_separation_violations"], want as f64, "{m:?}");
    let logged = |d: &Daemon| d.log_text().matches(LOGGED).count();
    assert_eq!(logged(&d), want, "{}", d.log_text());
    d.reload();
    assert_eq!(
        logged(&d),
        want,
        "a reload that changes nothing logs nothing new"
    );
    let rest: Vec<Container> = fx
        .containers
        .iter()
        .filter(|c| c.name != "db-1")
        .cloned()
        .collect();
    write_atomic(&fx.inventory, &inventory_toml(&rest));
    d.reload();
    let m = scrape(&fx.host_ns, PORT);
    assert_eq!(
        m["netguard_separation_violations"],
        pairs(&rest) as f64,
        "{m:?}"
    );
    assert!(pairs(&rest) < want);
    assert_eq!(logged(&d), want);
    assert!(d.alive(), "daemon died");
}

/// A timed TCP connect from inside `ns`: how long it took, or why it failed.
fn timed_connect(ns: &str, dst: SocketAddr) -> std::thread::JoinHandle<Result<Duration, String>> {
    let ns = ns.to_string();
    std::thread::spawn(move || {
        enter_netns(&ns).map_err(|e| e.to_string())?;
        let t = Instant::now();
        TcpStream::connect_timeout(&dst, Duration::from_secs(3))
            .map(|_| t.elapsed())
            .map_err(|e| format!("{e} after {:?}", t.elapsed()))
    })
}

/// POLICY, and web may send to api's UDP echo on 6000.
fn policy_with_udp() -> String {
    format!("{POLICY}\n[[allow]]\nfrom = \"web\"\nto = \"api\"\nports = [\"6000/udp\"]\n")
}

/// Sends one datagram from inside `ns`, from `src` (which must be an address there).
fn send_udp(ns: &str, src: std::net::IpAddr, dst: SocketAddr, payload: &'static [u8]) {
    in_netns(ns, move || {
        let s = std::net::UdpSocket::bind((src, 0)).expect("udp bind");
        s.send_to(payload, dst).expect("udp send");
    });
}

/// The first packets of a container the daemon has not admitted yet wait in the kernel
/// (the `hold` chain's queue) and pass once it is admitted: a TCP connect started 300 ms
/// before the admission completes without the SYN retransmit (which comes 1 s after the
/// first SYN), over IPv4 and IPv6, a single ping gets its answer and a single UDP datagram
/// arrives. A container that is admitted but not allowed gets nothing, held or not; one
/// that sent with web-1's address before web-1 was admitted (its own port, no ARP) does
/// not get that datagram released with web-1's admission. With `admission_hold = false`
/// the connect only completes after the retransmit (checked once by hand: 1.0 s, the ping
/// and the datagram lost); with the hold's port check left out, the pretender's datagram
/// arrives (checked once by hand).
#[test]
fn first_packets_before_the_admission_wait_for_it_and_pass() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    if !prereqs("first_packets_before_the_admission_wait_for_it_and_pass") {
        return;
    }
    let fx = Fixture::new(&Topology::standard());
    let policy = fx.write_file("policy.toml", &policy_with_udp());
    let late = ["web-1", "lonely"];
    let early: Vec<Container> = fx
        .containers
        .iter()
        .filter(|c| !late.contains(&c.name.as_str()))
        .cloned()
        .collect();
    write_atomic(&fx.inventory, &inventory_toml(&early));
    let mut d = Daemon::start(&spec(&fx, &policy));
    let (web1, api1, lonely) = (
        fx.container("web-1"),
        fx.container("api-1"),
        fx.container("lonely"),
    );
    let _echo = EchoServer::start(api1);
    let v4 = timed_connect(&web1.ns, SocketAddr::new(api1.addr(false), ECHO));
    let v6 = timed_connect(&web1.ns, SocketAddr::new(api1.addr(true), ECHO));
    let denied = timed_connect(&lonely.ns, SocketAddr::new(api1.addr(false), ECHO));
    let ping = std::process::Command::new("ip")
        .args(["netns", "exec", &web1.ns, "ping", "-c1", "-W3", "-n"])
        .arg(api1.addr(false).to_string())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("ping");
    let started = Instant::now();
    let udp_dst = SocketAddr::new(api1.addr(false), 6000);
    send_udp(&web1.ns, web1.addr(false), udp_dst, b"first datagram");
    // lonely takes web-1's address and sends as web-1, straight to api-1's MAC (an ARP
    // from it would teach api-1 a wrong MAC for web-1 and spoil the other probes).
    let web1_v4 = format!("{}/32", web1.addr(false));
    fx.ip_in("lonely", &["addr", "add", &web1_v4, "dev", "eth0"]);
    fx.pin_neighbour("lonely", api1.addr(false), &api1.mac);
    send_udp(&lonely.ns, web1.addr(false), udp_dst, b"pretender");
    std::thread::sleep(Duration::from_millis(300).saturating_sub(started.elapsed()));
    write_atomic(&fx.inventory, &inventory_toml(&fx.containers));
    d.reload();
    let admitted = started.elapsed();
    let v4 = v4.join().unwrap();
    let v6 = v6.join().unwrap();
    let denied = denied.join().unwrap();
    let ping = ping.wait_with_output().expect("ping");
    eprintln!(
        "admitted {admitted:?} after the first packets; web-1 -> api-1: ipv4 {v4:?}, ipv6 \
         {v6:?}, ping {}; lonely -> api-1 {denied:?}",
        ping.status
    );
    for (what, r) in [("ipv4", &v4), ("ipv6", &v6)] {
        match r {
            // Held and released: connected soon after the admission, long before the
            // retransmitted SYN would have been sent.
            Ok(t) if *t < Duration::from_millis(900) => {}
            other => d.fail(&format!(
                "web-1 -> api-1:{ECHO} over {what}, started before web-1's admission \
                 ({admitted:?} later): {other:?}; a held SYN would connect right after it"
            )),
        }
    }
    if !ping.status.success() {
        d.fail("web-1's single ping to api-1, sent before its admission, got no answer");
    }
    // The datagrams had their chance: released at the admission, dropped after the hold.
    std::thread::sleep(Duration::from_millis(1200).saturating_sub(started.elapsed()));
    let got: Vec<Vec<u8>> = api1
        .received
        .lock()
        .unwrap()
        .iter()
        .filter(|d| d.port == 6000)
        .map(|d| d.payload.clone())
        .collect();
    eprintln!(
        "api-1 received on 6000: {:?}",
        got.iter()
            .map(|p| String::from_utf8_lossy(p))
            .collect::<Vec<_>>()
    );
    if !got.iter().any(|p| p == b"first datagram") {
        d.fail("web-1's first datagram, sent before its admission, never reached api-1");
    }
    if got.iter().any(|p| p == b"pretender") {
        d.fail(
            "lonely's datagram sent as web-1 before web-1's admission was let through with \
             web-1's admission",
        );
    }
    if denied.is_ok() {
        d.fail(&format!(
            "lonely -> api-1:{ECHO} (no allow line) connected: {denied:?}"
        ));
    }
    let diff = fx.netguard(&policy, &fx.inventory, &["diff"]);
    assert_eq!(diff.status.code(), Some(0), "{diff:?}");
}
