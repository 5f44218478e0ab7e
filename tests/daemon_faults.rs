//! Faults at the daemon's edges, injected while the real daemon (`netguard run --inventory
//! FILE`) runs in a network-namespace fixture. Each test proves with real packets that the
//! last good state stays enforced during the fault, that the daemon says so (log, state file,
//! `/metrics`), and that it recovers without a restart, a change made during the fault being
//! enforced afterwards. The table of faults is in docs/reliability.md.
//!
//! Needs root, `ip`, `nft`, `ping`, `conntrack` and `prlimit`: `sudo -E cargo test --test daemon_faults`.
//! Missing prerequisites SKIP, or fail under CI=true. Netns only: no host table is touched.

#[path = "common/daemon.rs"]
mod daemon;
#[path = "../netns-fixtures/mod.rs"]
mod netns;

use daemon::{Daemon, Spec, poll};
use netns::fixture::*;
use netns::probe::*;
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

static SERIAL: Mutex<()> = Mutex::new(());

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
ports = ["8080/tcp", "icmp"]

[[allow]]
within = "db"
"#;

/// POLICY without icmp for web -> api.
const POLICY_NO_ICMP: &str = r#"
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
ports = ["8080/tcp"]

[[allow]]
within = "db"
"#;

fn prereqs(test: &str) -> bool {
    prerequisites_with(test, &["conntrack"])
}

fn write_atomic(path: &Path, content: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, content).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn spec(fx: &Fixture, policy: &Path, metrics_port: u16) -> Spec {
    let mut s = Spec::new(policy, fx.dir.path());
    s.netns = Some(fx.host_ns.clone());
    s.inventory = Some(fx.inventory.clone());
    s.metrics_listen = Some(format!("127.0.0.1:{metrics_port}"));
    s
}

fn can(fx: &Fixture, from: &str, to: &str, kind: Kind) -> bool {
    run_probes(
        fx,
        &[
            Probe {
                from: from.into(),
                to: to.into(),
                kind,
                family: Family::V4,
            },
            Probe {
                from: from.into(),
                to: to.into(),
                kind,
                family: Family::V6,
            },
        ],
        ProbeOpts::default(),
    )
    .iter()
    .all(|ok| *ok)
}

fn blocked(fx: &Fixture, from: &str, to: &str, kind: Kind) -> bool {
    run_probes(
        fx,
        &[
            Probe {
                from: from.into(),
                to: to.into(),
                kind,
                family: Family::V4,
            },
            Probe {
                from: from.into(),
                to: to.into(),
                kind,
                family: Family::V6,
            },
        ],
        ProbeOpts::default(),
    )
    .iter()
    .all(|ok| !*ok)
}

/// `GET /metrics` inside namespace `ns`: sample (with labels) -> value.
fn scrape(ns: &str, port: u16) -> BTreeMap<String, f64> {
    let text = in_netns(ns, move || {
        let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect to metrics");
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        let mut resp = String::new();
        s.read_to_string(&mut resp).unwrap();
        resp
    });
    let (_, body) = text.split_once("\r\n\r\n").expect("HTTP response");
    body.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k.to_string(), v.parse().ok()?))
        })
        .collect()
}

fn metric(m: &BTreeMap<String, f64>, key: &str) -> f64 {
    m.get(key).copied().unwrap_or(0.0)
}

fn errors(ns: &str, port: u16, kind: &str) -> f64 {
    metric(
        &scrape(ns, port),
        &format!("netguard_errors_total{{kind=\"{kind}\"}}"),
    )
}

/// Polls the metrics until `cond` holds, else fails with the daemon's log.
#[track_caller]
fn wait_metrics(
    d: &Daemon,
    port: u16,
    what: &str,
    cond: impl Fn(&BTreeMap<String, f64>) -> bool,
) -> BTreeMap<String, f64> {
    let ns = d.spec.netns.clone().unwrap();
    let mut last = BTreeMap::new();
    if poll(Duration::from_secs(15), Duration::from_millis(50), || {
        last = scrape(&ns, port);
        cond(&last)
    })
    .is_none()
    {
        d.fail(&format!("timeout waiting for {what}: {last:?}"));
    }
    last
}

fn without(fx: &Fixture, name: &str) -> Vec<Container> {
    fx.containers
        .iter()
        .filter(|c| c.name != name)
        .cloned()
        .collect()
}

/// Fault 1: the kernel refuses a whole transaction (the test hook appends a command the
/// kernel rejects to every batch while the fault file exists). The change pending meanwhile
/// (web-1 leaves the inventory) is not half applied: the live tables are the last good state
/// (`diff` shows the change still pending, web-1 still reaches api-1), the error is in the
/// log, the state file and `errors_total{kind="nft"}`; once the file is gone, the daemon's own
/// retry (no signal, no resync: the resync interval is 300 s) applies it.
#[test]
fn refused_nft_transaction_keeps_last_good_state_and_is_retried() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    if !prereqs("refused_nft_transaction_keeps_last_good_state_and_is_retried") {
        return;
    }
    const PORT: u16 = 9441;
    let fx = Fixture::new(&Topology::standard());
    let policy = fx.write_file("policy.toml", POLICY);
    let fault = fx.dir.path().join("nft-fault");
    let mut s = spec(&fx, &policy, PORT);
    s.env.push((
        "NETGUARD_FAULT_NFT_FILE".into(),
        fault.display().to_string(),
    ));
    let mut d = Daemon::start(&s);
    assert!(can(&fx, "web-1", "api-1", Kind::Tcp(8080)));
    assert!(blocked(&fx, "web-1", "db-1", Kind::Tcp(5432)));
    let before = d.state_u64("reconciles");

    std::fs::write(&fault, "").unwrap();
    write_atomic(&fx.inventory, &inventory_toml(&without(&fx, "web-1")));
    d.hup();
    let st = d.wait_state(
        "the refused reconcile in last_error",
        Duration::from_secs(10),
        |s| {
            s["last_error"]
                .as_str()
                .is_some_and(|e| e.starts_with("reconcile failed"))
        },
    );
    assert_eq!(st["reconciles"].as_u64(), Some(before), "{st}");
    let m = scrape(&fx.host_ns, PORT);
    assert!(
        metric(&m, "netguard_errors_total{kind=\"nft\"}") >= 1.0,
        "{m:?}"
    );
    assert!(
        d.log_text().contains("reconcile failed"),
        "{}",
        d.log_text()
    );
    // Atomic: nothing of the batch is live.
    let diff = fx.netguard(&policy, &fx.inventory, &["diff"]);
    assert_eq!(
        diff.status.code(),
        Some(1),
        "the change is not pending: {diff:?}"
    );
    assert!(
        can(&fx, "web-1", "api-1", Kind::Tcp(8080)),
        "the last good state is not enforced"
    );
    assert!(can(&fx, "web-2", "api-1", Kind::Tcp(8080)));
    assert!(blocked(&fx, "web-1", "db-1", Kind::Tcp(5432)));
    // The retries keep failing while the fault lasts, and the daemon stays up.
    let n = metric(&m, "netguard_errors_total{kind=\"nft\"}");
    wait_metrics(&d, PORT, "a retry that fails too", |m| {
        metric(m, "netguard_errors_total{kind=\"nft\"}") > n
    });
    assert!(d.alive(), "daemon died");

    std::fs::remove_file(&fault).unwrap();
    d.wait_reconciles_above(before, Duration::from_secs(40));
    let st = d.state().unwrap();
    assert!(st["last_error"].is_null(), "{st}");
    assert!(d.log_text().contains("retrying the failed reconcile"));
    let diff = fx.netguard(&policy, &fx.inventory, &["diff"]);
    assert_eq!(diff.status.code(), Some(0), "{diff:?}");
    assert!(
        blocked(&fx, "web-1", "api-1", Kind::Tcp(8080)),
        "web-1 left"
    );
    assert!(can(&fx, "web-2", "api-1", Kind::Tcp(8080)));
    assert!(blocked(&fx, "web-1", "db-1", Kind::Tcp(5432)));
}

/// Fault 4: the state file's directory is replaced by a plain file (root ignores permission
/// bits; a file where a directory should be stops root too). Enforcement goes on: a change
/// made meanwhile is applied; the failure is logged once however many writes fail, counted in
/// `errors_total{kind="state"}`; once the directory is back, the next write succeeds.
#[test]
fn unwritable_state_directory_is_logged_once_and_recovers() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    if !prereqs("unwritable_state_directory_is_logged_once_and_recovers") {
        return;
    }
    const PORT: u16 = 9442;
    const LOGGED: &str = "cannot write the state file";
    let fx = Fixture::new(&Topology::standard());
    let policy = fx.write_file("policy.toml", POLICY);
    let dir = fx.dir.path().join("run");
    std::fs::create_dir(&dir).unwrap();
    let mut s = spec(&fx, &policy, PORT);
    s.state_file = Some(dir.join("state.json"));
    let mut d = Daemon::start(&s);
    assert!(can(&fx, "web-1", "api-1", Kind::Tcp(8080)));

    let written = d.state_u64("reconciles");
    let away = fx.dir.path().join("run.away");
    std::fs::rename(&dir, &away).unwrap();
    std::fs::write(&dir, "not a directory").unwrap();
    let r0 = metric(&scrape(&fx.host_ns, PORT), "netguard_reconciles_total");
    // Three reloads, the first one removing web-1: each reconcile writes the state file.
    write_atomic(&fx.inventory, &inventory_toml(&without(&fx, "web-1")));
    for i in 1..=3 {
        d.hup();
        wait_metrics(&d, PORT, "the reload's reconcile", |m| {
            metric(m, "netguard_reconciles_total") >= r0 + i as f64
        });
    }
    let m = scrape(&fx.host_ns, PORT);
    assert!(
        metric(&m, "netguard_errors_total{kind=\"state\"}") >= 3.0,
        "{m:?}"
    );
    assert_eq!(d.log_text().matches(LOGGED).count(), 1, "{}", d.log_text());
    assert!(d.alive(), "daemon died");
    assert!(
        blocked(&fx, "web-1", "api-1", Kind::Tcp(8080)),
        "web-1 left"
    );
    assert!(can(&fx, "web-2", "api-1", Kind::Tcp(8080)));
    let diff = fx.netguard(&policy, &fx.inventory, &["diff"]);
    assert_eq!(diff.status.code(), Some(0), "{diff:?}");

    std::fs::remove_file(&dir).unwrap();
    std::fs::rename(&away, &dir).unwrap();
    write_atomic(&fx.inventory, &inventory_toml(&fx.containers));
    d.hup();
    // Three reconciles during the fault, one now: the file counts all four.
    let st = d.wait_state(
        "the state file written again",
        Duration::from_secs(10),
        |s| s["reconciles"].as_u64().is_some_and(|n| n >= written + 4),
    );
    assert!(st["last_error"].is_null(), "{st}");
    assert!(d.log_text().contains("the state file is written again"));
    assert_eq!(d.log_text().matches(LOGGED).count(), 1);
    assert!(can(&fx, "web-1", "api-1", Kind::Tcp(8080)), "web-1 is back");
}

/// Fault 5: the policy path is a symlink. A reload reads what the path resolves to when the
/// signal comes (the symlink is followed, like `check` and the start do): re-pointed to a valid
/// policy it applies; to an invalid one, or dangling (unreadable), the reload is rejected with
/// the same error `check` gives, the last good policy stays enforced, and a later fix + SIGHUP
/// applies.
#[test]
fn policy_symlink_reload_follows_it_and_keeps_the_last_good_policy() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    if !prereqs("policy_symlink_reload_follows_it_and_keeps_the_last_good_policy") {
        return;
    }
    const PORT: u16 = 9443;
    let fx = Fixture::new(&Topology::standard());
    let good = fx.write_file("good.toml", POLICY);
    let no_icmp = fx.write_file("no-icmp.toml", POLICY_NO_ICMP);
    let bad = fx.write_file("bad.toml", "[settings]\nnetworks = [\"front\"\n");
    let policy = fx.dir.path().join("policy.toml");
    let point = |to: &Path| {
        let tmp = fx.dir.path().join("policy.toml.new");
        let _ = std::fs::remove_file(&tmp);
        std::os::unix::fs::symlink(to, &tmp).unwrap();
        std::fs::rename(&tmp, &policy).unwrap();
    };
    point(&good);
    let mut d = Daemon::start(&spec(&fx, &policy, PORT));
    assert!(can(&fx, "web-1", "api-1", Kind::Icmp));

    // Re-pointed to a valid policy: followed.
    point(&no_icmp);
    d.reload();
    assert!(
        blocked(&fx, "web-1", "api-1", Kind::Icmp),
        "symlink not followed"
    );
    assert!(can(&fx, "web-1", "api-1", Kind::Tcp(8080)));

    // To an invalid one, then dangling: rejected, the last good policy stays.
    let mut rejected = 0.0;
    for (to, want) in [
        (bad.clone(), "reload rejected: "),
        (fx.dir.path().join("gone.toml"), "reload rejected: "),
    ] {
        point(&to);
        let n = d.state_u64("reconciles");
        d.hup();
        rejected += 1.0;
        wait_metrics(&d, PORT, "the rejected reload counted", |m| {
            metric(m, "netguard_errors_total{kind=\"reload\"}") >= rejected
        });
        let st = d.state().unwrap();
        let err = st["last_error"].as_str().unwrap_or_default().to_string();
        assert!(err.starts_with(want), "{st}");
        assert!(
            err.contains(&policy.display().to_string()),
            "no location: {err}"
        );
        assert_eq!(d.state_u64("reconciles"), n, "a rejected reload reconciled");
        assert!(blocked(&fx, "web-1", "api-1", Kind::Icmp));
        assert!(can(&fx, "web-1", "api-1", Kind::Tcp(8080)));
        assert!(blocked(&fx, "web-1", "db-1", Kind::Tcp(5432)));
        assert!(d.alive(), "daemon died");
    }
    assert!(
        d.log_text().contains("cannot read policy"),
        "{}",
        d.log_text()
    );
    let st = d.state().unwrap();
    assert!(
        st["last_error"]
            .as_str()
            .unwrap_or_default()
            .contains("cannot read policy"),
        "{st}"
    );

    // Fixed: the next SIGHUP applies.
    point(&good);
    d.reload();
    assert!(d.state().unwrap()["last_error"].is_null());
    assert!(can(&fx, "web-1", "api-1", Kind::Icmp));
    assert_eq!(errors(&fx.host_ns, PORT, "reload"), 2.0);
}

/// An echo server on `port` in `c`'s namespace, for as long as the test runs.
fn echo_server(c: &Container, port: u16) {
    let listener = in_netns(&c.ns, move || {
        std::net::TcpListener::bind((std::net::Ipv6Addr::UNSPECIFIED, port)).expect("bind echo")
    });
    std::thread::spawn(move || {
        for mut s in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut buf = [0u8; 64];
                while let Ok(n) = s.read(&mut buf) {
                    if n == 0 || s.write_all(&buf[..n]).is_err() {
                        return;
                    }
                }
            });
        }
    });
}

/// A TCP connection opened from `from`'s namespace (the socket keeps it).
fn connect(from: &Container, to: std::net::SocketAddr) -> TcpStream {
    let s = in_netns(&from.ns, move || {
        TcpStream::connect_timeout(&to, Duration::from_secs(2)).expect("connect")
    });
    s.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    s
}

/// One round trip on an open connection.
fn echoes(s: &mut TcpStream) -> bool {
    if s.write_all(b"x").is_err() {
        return false;
    }
    let mut b = [0u8; 1];
    matches!(s.read(&mut b), Ok(1))
}

fn open_fds(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// Sets the soft RLIMIT_NOFILE of `pid`, the hard one staying (raising a hard limit back
/// needs a capability the test may not have).
fn set_nofile(pid: i32, soft: usize) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let hard = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(4))
        .expect("hard NOFILE limit")
        .to_string();
    let soft = soft.to_string();
    let out = std::process::Command::new("prlimit")
        .args([
            "--pid",
            &pid.to_string(),
            &format!("--nofile={soft}:{hard}"),
        ])
        .output()
        .expect("prlimit");
    assert!(out.status.success(), "{out:?}");
}

fn tracked(fx: &Fixture, port: u16) -> usize {
    let out = fx.exec_in(
        &fx.host_ns,
        &["conntrack", "-L", "-p", "tcp", "--dport", &port.to_string()],
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains("ESTABLISHED"))
        .count()
}

/// Fault 2: the daemon runs out of file descriptors (its soft RLIMIT_NOFILE lowered with
/// prlimit below the descriptors it has open: every new socket(), netlink and ctnetlink ones
/// included, and every open() fails with EMFILE). The reload sent meanwhile (web-1 leaves
/// the inventory) cannot read the policy and is rejected: nothing changes, web-1's open
/// connection to api-1 still carries data (the last good state), web-1 -> db-1 stays blocked,
/// the log says why, the state write failure is logged once. The limit restored, the next
/// SIGHUP applies the change: web-1's connection is cut (its conntrack entry deleted over a
/// fresh ctnetlink socket), new ones blocked, and the metrics count both kinds of error.
#[test]
fn descriptors_exhausted_keep_enforcing_and_recover() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    if !prerequisites_with(
        "descriptors_exhausted_keep_enforcing_and_recover",
        &["conntrack", "prlimit"],
    ) {
        return;
    }
    const PORT: u16 = 9444;
    const ECHO: u16 = 7100;
    let fx = Fixture::new(&Topology::standard());
    let policy = fx.write_file(
        "policy.toml",
        &POLICY.replace(
            "\"8080/tcp\", \"icmp\"",
            "\"8080/tcp\", \"7100/tcp\", \"icmp\"",
        ),
    );
    let mut d = Daemon::start(&spec(&fx, &policy, PORT));
    let (web1, api1) = (fx.container("web-1"), fx.container("api-1"));
    echo_server(api1, ECHO);
    let mut conn = connect(web1, std::net::SocketAddr::new(api1.addr(false), ECHO));
    assert!(echoes(&mut conn));
    assert_eq!(tracked(&fx, ECHO), 1);
    let before = d.state_u64("reconciles");
    assert!(open_fds(d.pid) > 3);
    set_nofile(d.pid, 3);
    write_atomic(&fx.inventory, &inventory_toml(&without(&fx, "web-1")));
    d.hup();
    if poll(Duration::from_secs(10), Duration::from_millis(50), || {
        d.log_text().contains("Too many open files")
    })
    .is_none()
    {
        d.fail("the reload during the fault logged nothing");
    }
    assert!(d.log_text().contains("reload rejected"), "{}", d.log_text());
    assert!(d.alive(), "daemon died");
    assert!(
        echoes(&mut conn),
        "the open connection was cut during the fault"
    );
    assert!(
        can(&fx, "web-1", "api-1", Kind::Tcp(8080)),
        "last good state"
    );
    assert!(blocked(&fx, "web-1", "db-1", Kind::Tcp(5432)));
    let diff = fx.netguard(&policy, &fx.inventory, &["diff"]);
    assert_eq!(
        diff.status.code(),
        Some(1),
        "the change is not pending: {diff:?}"
    );

    set_nofile(d.pid, 1024);
    d.hup();
    d.wait_reconciles_above(before, Duration::from_secs(10));
    assert!(d.state().unwrap()["last_error"].is_null());
    if poll(Duration::from_secs(3), Duration::from_millis(50), || {
        tracked(&fx, ECHO) == 0
    })
    .is_none()
    {
        d.fail("web-1's connection survived the recovery");
    }
    assert!(
        !echoes(&mut conn),
        "web-1's open connection still carries data"
    );
    assert!(blocked(&fx, "web-1", "api-1", Kind::Tcp(8080)));
    assert!(can(&fx, "web-2", "api-1", Kind::Tcp(8080)));
    let m = scrape(&fx.host_ns, PORT);
    assert!(
        metric(&m, "netguard_errors_total{kind=\"reload\"}") >= 1.0,
        "{m:?}"
    );
    assert!(
        metric(&m, "netguard_errors_total{kind=\"state\"}") >= 1.0,
        "{m:?}"
    );
    assert_eq!(
        d.log_text().matches("cannot write the state file").count(),
        1
    );
    assert!(d.log_text().contains("the state file is written again"));
    let diff = fx.netguard(&policy, &fx.inventory, &["diff"]);
    assert_eq!(diff.status.code(), Some(0), "{diff:?}");
}

/// ESTABLISHED conntrack entries to `port` opened from `src`.
fn tracked_from(fx: &Fixture, port: u16, src: std::net::IpAddr) -> usize {
    let out = fx.exec_in(
        &fx.host_ns,
        &["conntrack", "-L", "-p", "tcp", "--dport", &port.to_string()],
    );
    let from = format!("src={src} ");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains("ESTABLISHED") && l.contains(&from))
        .count()
}

/// Whether a new TCP connection from `from`'s namespace to `to` is set up.
fn opens(from: &Container, to: std::net::SocketAddr) -> bool {
    in_netns(&from.ns, move || {
        TcpStream::connect_timeout(&to, Duration::from_millis(1500)).is_ok()
    })
}

/// Fault 6: ctnetlink fails on its own, nft working (test hook: while the file named by
/// `NETGUARD_FAULT_CONNTRACK_FILE` exists, every ctnetlink list and delete fails). One
/// reload revokes two open connections: web-2 -> api-1:7100 (the policy no longer allows
/// 7100/tcp: the rejudge path) and web-1 -> api-1:7101 (web-1 leaves the inventory: the
/// cut of the addresses that left). The rules go in (no new connection of either pair
/// opens), the open ones keep flowing (conntrack cannot be told), and the daemon says so:
/// `errors_total{kind="conntrack"}` growing with each retry, `last_error`, the log. The
/// file removed, the daemon's own retry (no signal, no resync) cuts both; web-2 -> api-1:7101,
/// still allowed, keeps flowing throughout.
#[test]
fn failing_ctnetlink_is_reported_and_the_cut_retried_until_it_succeeds() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    if !prereqs("failing_ctnetlink_is_reported_and_the_cut_retried_until_it_succeeds") {
        return;
    }
    const PORT: u16 = 9445;
    const REVOKED: u16 = 7100;
    const KEPT: u16 = 7101;
    const CONNTRACK: &str = "netguard_errors_total{kind=\"conntrack\"}";
    let fx = Fixture::new(&Topology::standard());
    let ports = |p: &str| POLICY.replace("\"8080/tcp\", \"icmp\"", p);
    let policy = fx.write_file(
        "policy.toml",
        &ports("\"8080/tcp\", \"7100/tcp\", \"7101/tcp\", \"icmp\""),
    );
    let fault = fx.dir.path().join("conntrack-fault");
    let mut s = spec(&fx, &policy, PORT);
    s.env.push((
        "NETGUARD_FAULT_CONNTRACK_FILE".into(),
        fault.display().to_string(),
    ));
    let mut d = Daemon::start(&s);
    let (web1, web2, api1) = (
        fx.container("web-1"),
        fx.container("web-2"),
        fx.container("api-1"),
    );
    echo_server(api1, REVOKED);
    echo_server(api1, KEPT);
    let at = |port| std::net::SocketAddr::new(api1.addr(false), port);
    let mut revoked = connect(web2, at(REVOKED));
    let mut left = connect(web1, at(KEPT));
    let mut kept = connect(web2, at(KEPT));
    for c in [&mut revoked, &mut left, &mut kept] {
        assert!(echoes(c));
    }
    assert_eq!(tracked_from(&fx, REVOKED, web2.addr(false)), 1);
    assert_eq!(tracked_from(&fx, KEPT, web1.addr(false)), 1);
    assert_eq!(errors(&fx.host_ns, PORT, "conntrack"), 0.0);

    std::fs::write(&fault, "").unwrap();
    write_atomic(&policy, &ports("\"8080/tcp\", \"7101/tcp\", \"icmp\""));
    write_atomic(&fx.inventory, &inventory_toml(&without(&fx, "web-1")));
    let before = d.state_u64("reconciles");
    d.hup();
    let st = d.wait_state(
        "the failed cut in last_error",
        Duration::from_secs(10),
        |s| {
            s["last_error"].as_str().is_some_and(|e| {
                e.contains("cannot cut open connections") && e.contains("conntrack")
            })
        },
    );
    let reloaded = st["reconciles"].as_u64().unwrap_or(0);
    assert_eq!(
        reloaded,
        before + 1,
        "the reload's rules did not go in: {st}"
    );
    assert!(
        d.log_text().contains("cannot cut open connections"),
        "{}",
        d.log_text()
    );
    let m = scrape(&fx.host_ns, PORT);
    assert!(metric(&m, CONNTRACK) >= 1.0, "{m:?}");
    // The rules are the reload's: no new connection of a revoked pair opens, the allowed
    // ones do.
    let diff = fx.netguard(&policy, &fx.inventory, &["diff"]);
    assert_eq!(diff.status.code(), Some(0), "{diff:?}");
    assert!(!opens(web2, at(REVOKED)), "7100/tcp is revoked");
    assert!(!opens(web1, at(KEPT)), "web-1 left");
    assert!(opens(web2, at(KEPT)));
    // The open ones cannot be cut while ctnetlink fails: they keep flowing.
    assert!(echoes(&mut revoked), "cut during the fault?");
    assert!(echoes(&mut left), "cut during the fault?");
    assert!(echoes(&mut kept));
    // The daemon retries on its own, failing while the fault lasts.
    let n = metric(&m, CONNTRACK);
    wait_metrics(&d, PORT, "a retried cut that fails too", |m| {
        metric(m, CONNTRACK) > n
    });
    assert!(
        d.log_text().contains("retrying the cut"),
        "{}",
        d.log_text()
    );
    assert!(echoes(&mut revoked));
    assert!(d.alive(), "daemon died");

    std::fs::remove_file(&fault).unwrap();
    if poll(Duration::from_secs(40), Duration::from_millis(100), || {
        tracked_from(&fx, REVOKED, web2.addr(false)) == 0
            && tracked_from(&fx, KEPT, web1.addr(false)) == 0
    })
    .is_none()
    {
        d.fail("the owed cuts were not retried once ctnetlink worked again");
    }
    assert!(
        !echoes(&mut revoked),
        "web-2 -> api-1:7100 still carries data"
    );
    assert!(!echoes(&mut left), "web-1 -> api-1:7101 still carries data");
    assert!(echoes(&mut kept), "an allowed connection was cut");
    let st = d.wait_state("last_error cleared", Duration::from_secs(5), |s| {
        s["last_error"].is_null()
    });
    assert_eq!(
        st["reconciles"].as_u64(),
        Some(reloaded),
        "recovered by a reconcile, not by the cut's retry: {st}"
    );
    assert!(
        d.log_text().contains("cut when a retry succeeds"),
        "{}",
        d.log_text()
    );
    assert!(
        d.log_text()
            .contains("the connections left open by the failed cut are cut")
    );
    // Counted no more once the cut went through.
    let n = errors(&fx.host_ns, PORT, "conntrack");
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(errors(&fx.host_ns, PORT, "conntrack"), n);
}

/// Fault 7: rtnetlink fails (test hook: while the file named by
/// `NETGUARD_FAULT_NETLINK_FILE` exists, opening and using the daemon's rtnetlink socket for
/// the managed bridges' br_netfilter switches fails; the inventory-file daemon resolves no
/// veth, the inventory names them). A reload meanwhile (web-1 leaves) goes into the tables
/// (a revocation does not wait for the bridge check), the error stands in `last_error`,
/// `errors_total{kind="bridge"}` grows with each retry, the log says it. A bridge whose
/// switches are turned off meanwhile cannot be repaired until netlink works; the file
/// removed, the daemon's own retry (no signal, no resync) reopens the socket, turns the
/// switches back on and clears the error: the inet hook sees the bridge again.
#[test]
fn failing_rtnetlink_is_reported_retried_and_the_bridges_repaired() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    if !prereqs("failing_rtnetlink_is_reported_retried_and_the_bridges_repaired") {
        return;
    }
    const PORT: u16 = 9446;
    const BRIDGE: &str = "netguard_errors_total{kind=\"bridge\"}";
    let fx = Fixture::new(&Topology::standard());
    let policy = fx.write_file("policy.toml", POLICY);
    let fault = fx.dir.path().join("netlink-fault");
    let mut s = spec(&fx, &policy, PORT);
    s.env.push((
        "NETGUARD_FAULT_NETLINK_FILE".into(),
        fault.display().to_string(),
    ));
    let mut d = Daemon::start(&s);
    assert!(can(&fx, "web-1", "api-1", Kind::Tcp(8080)));
    assert!(blocked(&fx, "web-2", "lonely", Kind::Tcp(8080)));
    assert_eq!(fx.bridge_nf_flags("br-front"), (true, true));
    assert!(d.last_error().is_none());

    std::fs::write(&fault, "").unwrap();
    write_atomic(&fx.inventory, &inventory_toml(&without(&fx, "web-1")));
    let before = d.state_u64("reconciles");
    d.hup();
    let st = d.wait_state(
        "the bridge failure in last_error",
        Duration::from_secs(10),
        |s| {
            s["last_error"]
                .as_str()
                .is_some_and(|e| e.starts_with("cannot prepare the managed bridges"))
        },
    );
    assert!(
        st["reconciles"].as_u64().unwrap_or(0) > before,
        "the reload's rules did not go in: {st}"
    );
    assert!(
        st["last_error"]
            .as_str()
            .unwrap_or_default()
            .contains("NETGUARD_FAULT_NETLINK_FILE"),
        "{st}"
    );
    assert!(
        d.log_text().contains("cannot prepare the managed bridges"),
        "{}",
        d.log_text()
    );
    let m = scrape(&fx.host_ns, PORT);
    assert!(metric(&m, BRIDGE) >= 1.0, "{m:?}");
    // The last good state and the reload's change are enforced.
    let diff = fx.netguard(&policy, &fx.inventory, &["diff"]);
    assert_eq!(diff.status.code(), Some(0), "{diff:?}");
    assert!(
        blocked(&fx, "web-1", "api-1", Kind::Tcp(8080)),
        "web-1 left"
    );
    assert!(can(&fx, "web-2", "api-1", Kind::Tcp(8080)));
    assert!(blocked(&fx, "web-2", "lonely", Kind::Tcp(8080)));
    assert!(blocked(&fx, "api-2", "db-1", Kind::Tcp(5432)));

    // Someone turns br-front's switches off: the retries cannot repair them while netlink
    // fails, and keep failing (counted each time).
    fx.set_bridge_nf_flags("br-front", false);
    let n = metric(&m, BRIDGE);
    wait_metrics(&d, PORT, "a retry that fails too", |m| {
        metric(m, BRIDGE) > n
    });
    assert!(d.log_text().contains("retrying the failed reconcile"));
    assert_eq!(fx.bridge_nf_flags("br-front"), (false, false));
    assert!(d.alive(), "daemon died");

    std::fs::remove_file(&fault).unwrap();
    let st = d.wait_state("last_error cleared", Duration::from_secs(40), |s| {
        s["last_error"].is_null()
    });
    assert_eq!(
        fx.bridge_nf_flags("br-front"),
        (true, true),
        "switches not repaired: {st}"
    );
    assert!(blocked(&fx, "web-2", "lonely", Kind::Tcp(8080)));
    assert!(blocked(&fx, "web-1", "api-1", Kind::Tcp(8080)));
    assert!(can(&fx, "web-2", "api-1", Kind::Tcp(8080)));
    let diff = fx.netguard(&policy, &fx.inventory, &["diff"]);
    assert_eq!(diff.status.code(), Some(0), "{diff:?}");
    let n = errors(&fx.host_ns, PORT, "bridge");
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(errors(&fx.host_ns, PORT, "bridge"), n, "still failing");
}
