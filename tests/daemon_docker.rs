//! The daemon (`netguard run`) against a real dockerd, checked with real packets (busybox
//! `nc` and `ping` through `docker exec`): events, fail-closed while stopped, address
//! takeover, zero loss across daemon restart / reload / dockerd restart with live-restore,
//! bad reload, drift repair, churn of 200 containers, revocation of an open connection.
//!
//! Needs root, dockerd and `netguard-busybox:test` (tests/common/docker.rs; SKIP, or fail
//! under CI=true). The daemon writes netguard's tables in the HOST namespace, so every test
//! holds one global lock (never two daemons at once) and an uninstall guard. Docker objects
//! are named `ngd-<pid>-<tag>-...` and removed on drop. The policies manage only the test's
//! own networks.

#[path = "common/daemon.rs"]
mod daemon;
#[path = "common/docker.rs"]
mod docker_env;

use daemon::{Daemon, Spec, netguard_bin, netguard_tables, poll, wait_host_quiet};
use docker_env::{IMAGE, Scene, docker, docker_available, docker_ok};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

static SERIAL: Mutex<()> = Mutex::new(());

/// Every container answers "ok" on 8080/tcp.
const LISTEN: [&str; 3] = ["sh", "-c", "nc -ll -p 8080 -e echo ok & exec sleep 3600"];

/// How long a new container may take to be reachable after `docker run` returns.
const CONVERGE: Duration = Duration::from_secs(2);

fn netguard(args: &[&str]) -> (i32, String) {
    let out = Command::new(netguard_bin())
        .args(args)
        .env("NETGUARD_LOG", "warn")
        .output()
        .expect("run netguard");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

/// Removes netguard's tables from the host when dropped (the daemon leaves them).
struct Uninstall(PathBuf);
impl Drop for Uninstall {
    fn drop(&mut self) {
        let (code, out) = netguard(&["-c", self.0.to_str().unwrap(), "uninstall"]);
        if code != 0 {
            eprintln!("netguard uninstall failed ({code}): {out}");
        }
    }
}

/// One test's world. Field order is drop order: uninstall, then containers and networks,
/// then the temp dir (which holds the policy the uninstall reads).
struct Env {
    _uninstall: Uninstall,
    scene: Scene,
    net: String,
    policy: PathBuf,
    dir: tempfile::TempDir,
}

fn policy_text(prefix: &str, extra: &str) -> String {
    format!(
        r#"
[settings]
networks = ["{prefix}net*"]

[groups.app]
match = {{ label = {{ "ngd.role" = "app" }} }}
[groups.other]
match = {{ label = {{ "ngd.role" = "other" }} }}

[[allow]]
within = "app"
{extra}
"#
    )
}

impl Env {
    fn new(test: &str, tag: &str, net_args: &[&str]) -> Option<Env> {
        if !docker_available(test) {
            return None;
        }
        // Another netguard writing the host's tables would fight with ours.
        wait_host_quiet(Duration::from_secs(120));
        let prefix = format!("ngd-{}-{tag}-", std::process::id());
        let mut scene = Scene::with_prefix(&prefix);
        let net = scene.network("net", net_args);
        let dir = tempfile::Builder::new()
            .prefix("netguard-daemon-docker-")
            .tempdir()
            .unwrap();
        let policy = dir.path().join("policy.toml");
        std::fs::write(&policy, policy_text(&prefix, "")).unwrap();
        Some(Env {
            _uninstall: Uninstall(policy.clone()),
            scene,
            net,
            policy,
            dir,
        })
    }

    fn spec(&self) -> Spec {
        Spec::new(&self.policy, self.dir.path())
    }

    fn set_policy(&self, extra: &str) {
        let tmp = self.policy.with_extension("tmp");
        std::fs::write(&tmp, policy_text(&self.scene.prefix, extra)).unwrap();
        std::fs::rename(&tmp, &self.policy).unwrap();
    }

    /// Runs a listening container on the test network (plus `extra` args).
    fn run(&mut self, short: &str, role: Option<&str>, extra: &[&str]) -> String {
        let net = self.net.clone();
        let label = role.map(|r| format!("ngd.role={r}"));
        let mut args = vec!["--network", net.as_str()];
        if let Some(l) = &label {
            args.extend(["--label", l.as_str()]);
        }
        args.extend_from_slice(extra);
        self.scene.run(short, &args, IMAGE, &LISTEN)
    }

    fn ip(&self, name: &str) -> String {
        ip_on(name, &self.net)
    }
}

fn ip_on(name: &str, net: &str) -> String {
    let fmt = format!("{{{{(index .NetworkSettings.Networks \"{net}\").IPAddress}}}}");
    let ip = docker_ok(&["inspect", "-f", &fmt, name]);
    assert!(
        !ip.is_empty() && ip != "<no value>",
        "{name} has no address on {net}"
    );
    ip
}

/// One TCP connection from `src` to IP:8080 that gets the "ok" answer.
fn tcp(src: &str, ip: &str) -> bool {
    docker(&[
        "exec",
        src,
        "sh",
        "-c",
        &format!("nc -w 1 {ip} 8080 </dev/null 2>/dev/null | grep -q ok"),
    ])
    .is_ok()
}

fn ping(src: &str, ip: &str) -> bool {
    docker(&["exec", src, "ping", "-c", "1", "-W", "1", ip]).is_ok()
}

/// `src` reaches IP within CONVERGE (polled); the time it took.
#[track_caller]
fn reaches(src: &str, ip: &str, d: &Daemon) -> Duration {
    match poll(CONVERGE, Duration::from_millis(10), || tcp(src, ip)) {
        Some(t) => t,
        None => d.fail(&format!(
            "{src} does not reach {ip}:8080 within {CONVERGE:?}"
        )),
    }
}

/// `src` reaches IP neither with TCP nor with ping.
#[track_caller]
fn blocked(src: &str, ip: &str, d: &Daemon) {
    if tcp(src, ip) {
        d.fail(&format!("{src} reaches {ip}:8080 but must not"));
    }
    if ping(src, ip) {
        d.fail(&format!("{src} pings {ip} but must not"));
    }
}

/// The container's own listener answers (so a refused probe can only be the firewall).
#[track_caller]
fn listening(name: &str) {
    if poll(Duration::from_secs(5), Duration::from_millis(50), || {
        tcp(name, "127.0.0.1")
    })
    .is_none()
    {
        panic!("{name}: its listener on 8080 does not answer locally");
    }
}

/// Whether `nft -j list set inet netguard SET` holds IP.
fn set_has(set: &str, ip: &str) -> bool {
    // The anti-spoofing bindings live in the bridge table, the groups in the inet table.
    let family = if set.starts_with("bind") {
        "bridge"
    } else {
        "inet"
    };
    let out = Command::new("nft")
        .args(["-j", "list", "set", family, "netguard", set])
        .output()
        .expect("nft");
    String::from_utf8_lossy(&out.stdout).contains(&format!("\"{ip}\""))
}

#[track_caller]
fn wait_set(set: &str, ip: &str, present: bool, d: &Daemon) -> Duration {
    match poll(CONVERGE, Duration::from_millis(10), || {
        set_has(set, ip) == present
    }) {
        Some(t) => t,
        None => d.fail(&format!(
            "set {set}: {ip} {} after {CONVERGE:?}",
            if present { "missing" } else { "still there" }
        )),
    }
}

fn table_present() -> bool {
    Command::new("nft")
        .args(["list", "table", "inet", "netguard"])
        .output()
        .is_ok_and(|o| o.status.success())
}

#[test]
fn daemon_follows_docker_events() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let Some(mut env) = Env::new("daemon_follows_docker_events", "ev", &[]) else {
        return;
    };
    let side = env.scene.network("side", &[]);
    let mut d = Daemon::start(&env.spec());

    let a = env.run("a", Some("app"), &[]);
    listening(&a);
    let ip_a = env.ip(&a);
    let t = Instant::now();
    let b = env.run("b", Some("app"), &[]);
    let run_took = t.elapsed();
    let ip_b = env.ip(&b);
    let took = reaches(&b, &ip_a, &d);
    eprintln!(
        "new app container: docker run took {run_took:?}, then reached its peer after {took:?}"
    );
    reaches(&a, &ip_b, &d);
    assert!(set_has("g_app_4", &ip_b));

    // In no group: reaches no one, reached by no one.
    let s = env.run("stray", None, &[]);
    listening(&s);
    let ip_s = env.ip(&s);
    blocked(&s, &ip_a, &d);
    blocked(&a, &ip_s, &d);
    reaches(&b, &ip_a, &d);
    assert!(!set_has("g_app_4", &ip_s));

    // On an unmanaged network first, then connected to the managed one.
    let c = env.scene.run(
        "c",
        &["--network", &side, "--label", "ngd.role=app"],
        IMAGE,
        &LISTEN,
    );
    listening(&c);
    docker_ok(&["network", "connect", &env.net, &c]);
    let ip_c = env.ip(&c);
    let took = wait_set("g_app_4", &ip_c, true, &d);
    eprintln!("network connect: in the set after {took:?}");
    reaches(&c, &ip_a, &d);
    reaches(&a, &ip_c, &d);
    blocked(&s, &ip_c, &d);

    // A sidecar in c's namespace holds c's endpoint; Docker's disconnect event names only c,
    // so the sidecar must be refreshed with it or its stale copy keeps ip_c in the set.
    // Packets cannot tell when the daemon has taken the sidecar in (c's address is in the set
    // already): its container count does.
    let before = d.state_u64("containers");
    let cs = env.scene.run(
        "cs",
        &[
            "--network",
            &format!("container:{c}"),
            "--label",
            "ngd.role=app",
        ],
        IMAGE,
        &["sleep", "3600"],
    );
    d.wait_state("the sidecar in the daemon's inventory", CONVERGE, |s| {
        s.get("containers").and_then(|n| n.as_u64()) == Some(before + 1)
    });

    docker_ok(&["network", "disconnect", &env.net, &c]);
    let took = wait_set("g_app_4", &ip_c, false, &d);
    eprintln!("network disconnect: out of the set after {took:?} (with its sidecar {cs})");

    // A signal that leaves it running (`docker kill -s HUP` to reload a config; the init of
    // a PID namespace ignores a signal it has no handler for): it stays admitted.
    let events = d.state_u64("events");
    docker_ok(&["kill", "-s", "HUP", &a]);
    d.wait_state("the kill event taken in", CONVERGE, |s| {
        s.get("events").and_then(|n| n.as_u64()) > Some(events)
    });
    std::thread::sleep(Duration::from_millis(300));
    if !set_has("g_app_4", &ip_a) || !tcp(&b, &ip_a) {
        d.fail("a container sent SIGHUP (still running) lost its admission");
    }

    // Stop (die), then remove; and remove a running one.
    docker_ok(&["kill", &b]);
    let took = wait_set("g_app_4", &ip_b, false, &d);
    eprintln!("kill: out of the set after {took:?}");
    docker_ok(&["rm", &b]);
    docker_ok(&["rm", "-f", &a]);
    let took = wait_set("g_app_4", &ip_a, false, &d);
    eprintln!("rm -f: out of the set after {took:?}");

    // A managed network created while the daemon runs: its containers are admitted.
    let net3 = env.scene.network("net3", &[]);
    let on3 = |env: &mut Env, short: &str, role: Option<&str>| {
        let mut args = vec!["--network".to_string(), net3.clone()];
        if let Some(r) = role {
            args.extend(["--label".to_string(), format!("ngd.role={r}")]);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        env.scene.run(short, &args, IMAGE, &LISTEN)
    };
    let p = on3(&mut env, "p", Some("app"));
    let q = on3(&mut env, "q", Some("app"));
    let z = on3(&mut env, "z", None);
    listening(&p);
    listening(&z);
    let took = reaches(&q, &ip_on(&p, &net3), &d);
    eprintln!("new network: its app containers reach each other after {took:?}");
    blocked(&z, &ip_on(&p, &net3), &d);

    let (code, out) = netguard(&["-c", env.policy.to_str().unwrap(), "diff"]);
    if code != 0 {
        d.fail(&format!("diff after the events: exit {code}\n{out}"));
    }
}

#[test]
fn fail_closed_while_stopped_then_converges() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let pid = std::process::id();
    let subnet = format!("10.{}.{}.0/24", 200 + pid % 50, (pid / 50) % 250);
    let base = subnet.trim_end_matches("0/24").to_string();
    let Some(mut env) = Env::new(
        "fail_closed_while_stopped_then_converges",
        "fc",
        &["--subnet", &subnet],
    ) else {
        return;
    };
    let (ip_a, ip_b, ip_n) = (
        format!("{base}10"),
        format!("{base}11"),
        format!("{base}20"),
    );
    let mut d = Daemon::start(&env.spec());
    let a = env.run("a", Some("app"), &["--ip", &ip_a]);
    let b = env.run("b", Some("app"), &["--ip", &ip_b]);
    listening(&a);
    listening(&b);
    reaches(&a, &ip_b, &d);
    reaches(&b, &ip_a, &d);

    d.stop();
    assert!(table_present(), "SIGTERM removed the rules");

    // Started while the daemon is down: in the app group by label, but not admitted.
    let n = env.run("n", Some("app"), &["--ip", &ip_n, "--cap-add", "NET_ADMIN"]);
    listening(&n);
    blocked(&n, &ip_a, &d);
    blocked(&a, &ip_n, &d);
    assert!(tcp(&b, &ip_a), "the admitted pair stopped working");

    // n borrows a's address towards b (an echo request from a's address): anti-spoofing
    // drops it in the bridge table, before conntrack, so no entry appears. Control: a itself
    // (nothing else pings b from a in this test).
    let flows = || {
        let out = Command::new("conntrack")
            .args(["-L", "-p", "icmp", "-s", &ip_a, "-d", &ip_b])
            .output()
            .expect("conntrack");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.contains(&format!("dst={ip_b}")))
            .count()
    };
    assert_eq!(flows(), 0, "an echo request a -> b before the test");
    let _ = docker(&[
        "exec",
        &n,
        "sh",
        "-c",
        &format!(
            "ip addr add {ip_a}/32 dev eth0 && ping -c 2 -W 1 -I {ip_a} {ip_b}; \
             ip addr del {ip_a}/32 dev eth0"
        ),
    ]);
    if flows() != 0 {
        d.fail("an echo request sent by n with a's address got past the bridge table");
    }
    let _ = docker(&["exec", &a, "ping", "-c", "1", "-W", "1", &ip_b]);
    assert!(
        flows() > 0,
        "control: a's own echo request to b left no conntrack entry"
    );

    // A managed network created while the daemon is down is default-deny (br-* pattern).
    let net2 = env.scene.network("net2", &[]);
    let x = env.scene.run(
        "x",
        &["--network", &net2, "--label", "ngd.role=app"],
        IMAGE,
        &LISTEN,
    );
    let y = env.scene.run(
        "y",
        &["--network", &net2, "--label", "ngd.role=app"],
        IMAGE,
        &LISTEN,
    );
    listening(&x);
    let ip_x = ip_on(&x, &net2);
    blocked(&y, &ip_x, &d);

    // b's address taken over by a new container: it inherits nothing, either way.
    docker_ok(&["rm", "-f", &b]);
    let b2 = env.run("b2", Some("app"), &["--ip", &ip_b]);
    listening(&b2);
    assert_eq!(env.ip(&b2), ip_b);
    blocked(&b2, &ip_a, &d);
    blocked(&a, &ip_b, &d);
    blocked(&b2, &ip_n, &d);

    // The daemon comes back and converges.
    let d2 = Daemon::start(&env.spec());
    reaches(&n, &ip_a, &d2);
    reaches(&a, &ip_n, &d2);
    reaches(&b2, &ip_a, &d2);
    reaches(&a, &ip_b, &d2);
    reaches(&y, &ip_x, &d2);
    let (code, out) = netguard(&["-c", env.policy.to_str().unwrap(), "diff"]);
    if code != 0 {
        d2.fail(&format!("diff after convergence: exit {code}\n{out}"));
    }
}

/// A probe loop inside a container: a new TCP connection to IP:8080 every ~15 ms, each
/// result logged to /tmp/probe.log; survives dockerd restarts (no exec stream needed).
struct Probe {
    src: String,
}

impl Probe {
    fn start(src: &str, ip: &str) -> Probe {
        let script = format!(
            "rm -f /tmp/stop; i=0; while [ ! -e /tmp/stop ]; do \
               if nc -w 1 {ip} 8080 </dev/null 2>/dev/null | grep -q ok; then echo \"ok $i\"; \
               else echo \"FAIL $i $(date +%s.%N)\"; fi; i=$((i+1)); usleep 15000; \
             done >/tmp/probe.log 2>&1; echo done >>/tmp/probe.log"
        );
        docker_ok(&["exec", "-d", src, "sh", "-c", &script]);
        let p = Probe { src: src.into() };
        if poll(Duration::from_secs(5), Duration::from_millis(50), || {
            p.counts().0 >= 10
        })
        .is_none()
        {
            panic!("probe loop in {src} does not get answers: {:?}", p.log());
        }
        p
    }

    fn log(&self) -> String {
        docker(&["exec", &self.src, "cat", "/tmp/probe.log"]).unwrap_or_default()
    }

    /// (ok, failed lines)
    fn counts(&self) -> (usize, Vec<String>) {
        let log = self.log();
        let ok = log.lines().filter(|l| l.starts_with("ok ")).count();
        let failed = log
            .lines()
            .filter(|l| l.starts_with("FAIL"))
            .map(String::from)
            .collect();
        (ok, failed)
    }

    fn finish(self) -> (usize, Vec<String>) {
        docker_ok(&["exec", &self.src, "touch", "/tmp/stop"]);
        let _ = poll(Duration::from_secs(5), Duration::from_millis(50), || {
            self.log().contains("done")
        });
        self.counts()
    }
}

fn now_unix() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

#[test]
fn zero_loss_across_daemon_restart_and_reload() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let Some(mut env) = Env::new("zero_loss_across_daemon_restart_and_reload", "zl", &[]) else {
        return;
    };
    let mut d = Daemon::start(&env.spec());
    let a = env.run("a", Some("app"), &[]);
    let b = env.run("b", Some("app"), &[]);
    listening(&b);
    let ip_b = env.ip(&b);
    reaches(&a, &ip_b, &d);
    let probe = Probe::start(&a, &ip_b);
    let mut marks = vec![("probe started", now_unix())];

    d.stop();
    marks.push(("daemon stopped", now_unix()));
    std::thread::sleep(Duration::from_millis(300));
    let mut d = Daemon::start(&env.spec());
    marks.push(("daemon restarted", now_unix()));
    std::thread::sleep(Duration::from_millis(300));

    // A valid policy that keeps the flow (and changes the rules).
    env.set_policy("[[allow]]\nfrom = \"other\"\nto = \"app\"\nports = [\"8080/tcp\"]\n");
    let before = netguard_tables(None);
    d.reload();
    marks.push(("reloaded", now_unix()));
    assert_ne!(before, netguard_tables(None), "the reload changed nothing");
    std::thread::sleep(Duration::from_millis(500));

    let (ok, failed) = probe.finish();
    eprintln!(
        "continuous probe {a} -> {b}: {ok} ok, {} failed; marks {marks:?}",
        failed.len()
    );
    if !failed.is_empty() || ok < 50 {
        d.fail(&format!(
            "lost requests across daemon restart and reload: {ok} ok, failed: {failed:?}; marks {marks:?}"
        ));
    }
}

#[test]
fn bad_reload_keeps_ruleset_and_daemon() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let Some(mut env) = Env::new("bad_reload_keeps_ruleset_and_daemon", "br", &[]) else {
        return;
    };
    let mut d = Daemon::start(&env.spec());
    let a = env.run("a", Some("app"), &[]);
    let b = env.run("b", Some("app"), &[]);
    let s = env.run("s", None, &[]);
    listening(&a);
    let ip_a = env.ip(&a);
    reaches(&b, &ip_a, &d);
    listening(&s);
    wait_set("bind_4", &env.ip(&s), true, &d);
    let before = netguard_tables(None);
    assert!(before.contains("table inet netguard") && before.contains("table bridge netguard"));

    std::fs::write(
        &env.policy,
        format!(
            "{}\n[[allow]]\nfrom = \"nosuchgroup\"\nto = \"app\"\n",
            policy_text(&env.scene.prefix, "")
        ),
    )
    .unwrap();
    d.hup();
    let st = d.wait_state(
        "last_error after the bad reload",
        Duration::from_secs(5),
        |s| {
            s["last_error"]
                .as_str()
                .is_some_and(|e| e.contains("reload"))
        },
    );
    eprintln!("state after the bad reload: {st}");
    assert!(d.alive(), "daemon died on a bad reload");
    assert_eq!(
        before,
        netguard_tables(None),
        "a rejected reload changed the ruleset"
    );
    assert!(
        d.log_text().contains("nosuchgroup"),
        "the log does not name the error:\n{}",
        d.log_text()
    );
    reaches(&b, &ip_a, &d);
    blocked(&s, &ip_a, &d);
}

#[test]
fn drift_repaired_within_resync_interval() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let Some(mut env) = Env::new("drift_repaired_within_resync_interval", "dr", &[]) else {
        return;
    };
    let mut spec = env.spec();
    spec.resync_secs = 1;
    let d = Daemon::start(&spec);
    let a = env.run("a", Some("app"), &[]);
    let b = env.run("b", Some("app"), &[]);
    let s = env.run("s", None, &[]);
    listening(&a);
    listening(&s);
    let ip_a = env.ip(&a);
    reaches(&b, &ip_a, &d);
    wait_set("bind_4", &env.ip(&s), true, &d);
    let before = netguard_tables(None);

    docker_ok(&["version", "-f", "{{.Server.Version}}"]);
    let out = Command::new("nft")
        .args(["delete", "table", "inet", "netguard"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let t = Instant::now();
    match poll(Duration::from_secs(4), Duration::from_millis(20), || {
        netguard_tables(None) == before
    }) {
        Some(took) => eprintln!("deleted inet table restored after {took:?}"),
        None => d.fail(&format!(
            "the table was not restored within 4 s (resync 1 s):\n{}",
            netguard_tables(None)
        )),
    }
    assert!(t.elapsed() < Duration::from_secs(4));
    blocked(&s, &ip_a, &d);
    reaches(&b, &ip_a, &d);
}

#[test]
fn revocation_cuts_an_open_tcp_connection() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let Some(mut env) = Env::new("revocation_cuts_an_open_tcp_connection", "rv", &[]) else {
        return;
    };
    let mut d = Daemon::start(&env.spec());
    let a = env.run("a", Some("app"), &[]);
    let b = env.run("b", Some("app"), &[]);
    listening(&b);
    let ip_b = env.ip(&b);
    reaches(&a, &ip_b, &d);
    // b receives on 9000 into a file; a streams a line every 20 ms over one connection.
    // (stdin never ends: busybox nc quits on EOF of its stdin)
    docker_ok(&[
        "exec",
        "-d",
        &b,
        "sh",
        "-c",
        "sleep 3600 | nc -l -p 9000 >/tmp/recv",
    ]);
    std::thread::sleep(Duration::from_millis(300));
    docker_ok(&[
        "exec",
        "-d",
        &a,
        "sh",
        "-c",
        &format!("i=0; while :; do echo line$i; i=$((i+1)); usleep 20000; done | nc {ip_b} 9000"),
    ]);
    let size = || -> usize {
        docker(&["exec", &b, "sh", "-c", "wc -c </tmp/recv"])
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0)
    };
    if poll(Duration::from_secs(5), Duration::from_millis(100), || {
        size() > 200
    })
    .is_none()
    {
        d.fail("the long-lived connection carries no data");
    }

    // Only 8080 stays allowed within app: the open connection on 9000 is revoked.
    std::fs::write(
        &env.policy,
        policy_text(&env.scene.prefix, "").replace(
            "within = \"app\"",
            "from = \"app\"\nto = \"app\"\nports = [\"8080/tcp\"]",
        ),
    )
    .unwrap();
    d.reload();
    let applied = Instant::now();
    let mut samples = vec![];
    while applied.elapsed() < Duration::from_millis(2500) {
        samples.push((applied.elapsed(), size()));
        std::thread::sleep(Duration::from_millis(100));
    }
    let last = samples.last().unwrap().1;
    // The first sample with the final size: data stopped before it.
    let stopped_by = samples.iter().find(|(_, s)| *s == last).unwrap().0;
    eprintln!("bytes received after the revoking reload: {samples:?}");
    if stopped_by > Duration::from_millis(1200) {
        d.fail(&format!(
            "the revoked connection still carried data {stopped_by:?} after the reload: {samples:?}"
        ));
    }
    reaches(&a, &ip_b, &d);
}

/// Records `docker events` while alive (Docker replays only its last 256 events, so they
/// cannot be counted afterwards).
struct EventRecorder {
    child: std::process::Child,
    file: PathBuf,
}

impl EventRecorder {
    fn start(dir: &Path) -> EventRecorder {
        let file = dir.join("docker-events.txt");
        let out = std::fs::File::create(&file).unwrap();
        let child = Command::new("docker")
            .args([
                "events",
                "--format",
                "{{.Type}} {{.Action}} {{.Actor.Attributes.name}}",
            ])
            .stdout(out)
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("docker events");
        std::thread::sleep(Duration::from_millis(300));
        EventRecorder { child, file }
    }

    /// Events the daemon acts on (start, die, destroy, connect, disconnect) of the test's
    /// containers and network.
    fn count(&mut self, prefix: &str, net: &str) -> usize {
        std::thread::sleep(Duration::from_millis(300));
        let _ = self.child.kill();
        let _ = self.child.wait();
        let text = std::fs::read_to_string(&self.file).unwrap_or_default();
        text.lines()
            .filter(|l| {
                let w: Vec<&str> = l.split_whitespace().collect();
                match w.as_slice() {
                    ["container", act, name, ..] => {
                        name.starts_with(prefix) && ["start", "die", "destroy"].contains(act)
                    }
                    ["network", act, name, ..] => {
                        *name == net && ["connect", "disconnect"].contains(act)
                    }
                    _ => false,
                }
            })
            .count()
    }
}

impl Drop for EventRecorder {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Transactions in a daemon log: element updates (debug "applied") and full reconciles.
fn transactions(log: &str) -> (usize, usize) {
    let applied = log.lines().filter(|l| l.contains(" applied")).count();
    let reconciled = log.lines().filter(|l| l.contains(" reconciled")).count();
    (applied, reconciled)
}

/// Waits until the daemon log has had no new line for `quiet`.
fn settle(d: &Daemon, quiet: Duration, max: Duration) {
    let t = Instant::now();
    let mut len = d.log_text().len();
    let mut since = Instant::now();
    while since.elapsed() < quiet {
        std::thread::sleep(Duration::from_millis(100));
        let n = d.log_text().len();
        if n != len {
            len = n;
            since = Instant::now();
        }
        if t.elapsed() > max {
            d.fail(&format!("the daemon did not settle within {max:?}"));
        }
    }
}

fn parallel(jobs: Vec<Vec<String>>, workers: usize) -> Vec<String> {
    let jobs = Mutex::new(jobs);
    let errors = Mutex::new(vec![]);
    std::thread::scope(|s| {
        for _ in 0..workers {
            s.spawn(|| {
                loop {
                    let Some(job) = jobs.lock().unwrap().pop() else {
                        return;
                    };
                    let args: Vec<&str> = job.iter().map(String::as_str).collect();
                    if let Err(e) = docker(&args) {
                        errors.lock().unwrap().push(e);
                    }
                }
            });
        }
    });
    errors.into_inner().unwrap()
}

#[test]
fn churn_of_200_containers_settles_in_sync() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let Some(mut env) = Env::new("churn_of_200_containers_settles_in_sync", "ch", &[]) else {
        return;
    };
    let mut spec = env.spec();
    spec.log_level = "netguard=debug".into();
    let mut d = Daemon::start(&spec);
    const N: usize = 200;
    let names: Vec<String> = (0..N).map(|i| env.scene.name(&format!("c{i}"))).collect();
    for n in &names {
        env.scene.adopt(n);
    }
    let role = |i: usize| if i % 2 == 0 { "app" } else { "other" };
    let mut recorder = EventRecorder::start(env.dir.path());
    let t = Instant::now();
    let runs: Vec<Vec<String>> = names
        .iter()
        .enumerate()
        .map(|(i, n)| {
            let mut v: Vec<String> = ["run", "-d", "--name", n, "--network", &env.net, "--label"]
                .iter()
                .map(|s| s.to_string())
                .collect();
            v.push(format!("ngd.role={}", role(i)));
            v.push(IMAGE.into());
            v.extend(LISTEN.iter().map(|s| s.to_string()));
            v
        })
        .collect();
    let errors = parallel(runs, 8);
    assert!(errors.is_empty(), "docker run failed: {errors:?}");
    let started = t.elapsed();
    // Remove half of them (both roles), 10 per `docker rm -f`.
    let gone: Vec<String> = names
        .iter()
        .enumerate()
        .filter(|(i, _)| i % 4 >= 2)
        .map(|(_, n)| n.clone())
        .collect();
    let t = Instant::now();
    let rms: Vec<Vec<String>> = gone
        .chunks(10)
        .map(|c| {
            let mut v = vec!["rm".to_string(), "-f".to_string()];
            v.extend(c.iter().cloned());
            v
        })
        .collect();
    let errors = parallel(rms, 4);
    assert!(errors.is_empty(), "docker rm failed: {errors:?}");
    let removed = t.elapsed();
    settle(&d, Duration::from_secs(2), Duration::from_secs(60));
    eprintln!(
        "churn: {N} containers started in {started:?}, {} removed in {removed:?}",
        gone.len()
    );
    let (code, out) = netguard(&["-c", env.policy.to_str().unwrap(), "diff"]);
    if code != 0 {
        d.fail(&format!("diff after the churn: exit {code}\n{out}"));
    }
    let st = d.state().unwrap();
    assert_eq!(
        st["containers"].as_u64(),
        Some((N - gone.len()) as u64),
        "{st}"
    );

    // A sample of the matrix among the survivors: app <-> app allowed, other blocked.
    let alive: Vec<usize> = (0..N).filter(|i| i % 4 < 2).collect();
    let apps: Vec<&String> = alive
        .iter()
        .filter(|i| *i % 2 == 0)
        .map(|i| &names[*i])
        .collect();
    let others: Vec<&String> = alive
        .iter()
        .filter(|i| *i % 2 == 1)
        .map(|i| &names[*i])
        .collect();
    let (a1, a2, a3) = (apps[0], apps[apps.len() / 2], apps[apps.len() - 1]);
    let (o1, o2) = (others[1], others[others.len() - 1]);
    for n in [a1, a2, a3, o1, o2] {
        listening(n);
    }
    for (x, y) in [(a1, a2), (a2, a3), (a3, a1)] {
        reaches(x, &env.ip(y), &d);
    }
    for (x, y) in [(o1, a1), (a2, o2), (o1, o2)] {
        blocked(x, &env.ip(y), &d);
    }

    // Everything goes away.
    let rms: Vec<Vec<String>> = alive
        .chunks(10)
        .map(|c| {
            let mut v = vec!["rm".to_string(), "-f".to_string()];
            v.extend(c.iter().map(|i| names[*i].clone()));
            v
        })
        .collect();
    let errors = parallel(rms, 4);
    assert!(errors.is_empty(), "docker rm failed: {errors:?}");
    settle(&d, Duration::from_secs(2), Duration::from_secs(60));
    let (code, out) = netguard(&["-c", env.policy.to_str().unwrap(), "diff"]);
    if code != 0 {
        d.fail(&format!(
            "diff after removing everything: exit {code}\n{out}"
        ));
    }
    let events = recorder.count(&env.scene.prefix, &env.net);
    d.stop();
    let st = d.state().unwrap();
    let log = d.log_text();
    let (applied, reconciled) = transactions(&log);
    let noisy: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("WARN") || l.contains("ERROR"))
        .collect();
    eprintln!(
        "churn: {} warnings/errors in the daemon log{}",
        noisy.len(),
        noisy
            .iter()
            .take(10)
            .map(|l| format!("\n  {l}"))
            .collect::<String>()
    );
    eprintln!(
        "churn: {events} Docker events of the test; \
         the daemon handled {} container refreshes and made {applied} element transactions + {reconciled} full reconciles",
        st["events"],
    );
    assert!(
        applied + reconciled < events,
        "no coalescing: {applied} + {reconciled} transactions for {events} events"
    );
}

const DAEMON_JSON: &str = "/etc/docker/daemon.json";

fn dockerd_pid() -> Option<i32> {
    std::fs::read_to_string("/var/run/docker.pid")
        .ok()?
        .trim()
        .parse()
        .ok()
}

fn live_restore_enabled() -> bool {
    docker(&["info", "-f", "{{.LiveRestoreEnabled}}"]).is_ok_and(|s| s.trim() == "true")
}

fn docker_up() -> bool {
    docker(&["version", "-f", "{{.Server.Version}}"]).is_ok()
}

/// Starts dockerd the way scripts/ensure-docker.sh does, unless it answers.
fn ensure_dockerd() {
    if docker_up() {
        return;
    }
    eprintln!("starting dockerd (log /tmp/netguard-dockerd.log)");
    let _ = Command::new("sh")
        .args([
            "-c",
            "setsid dockerd >>/tmp/netguard-dockerd.log 2>&1 </dev/null &",
        ])
        .status();
    if poll(
        Duration::from_secs(60),
        Duration::from_millis(100),
        docker_up,
    )
    .is_none()
    {
        panic!("dockerd did not come back within 60 s; see /tmp/netguard-dockerd.log");
    }
}

/// /etc/docker/daemon.json with `live-restore` set, applied with SIGHUP (a reloadable option).
fn write_live_restore(original: &Option<String>, on: bool) {
    let mut v: serde_json::Value = original
        .as_deref()
        .and_then(|t| serde_json::from_str(t).ok())
        .unwrap_or_else(|| serde_json::json!({}));
    v["live-restore"] = serde_json::Value::Bool(on);
    std::fs::create_dir_all("/etc/docker").unwrap();
    std::fs::write(DAEMON_JSON, serde_json::to_string_pretty(&v).unwrap()).unwrap();
    if let Some(pid) = dockerd_pid() {
        // SAFETY: kill has no memory-safety preconditions.
        unsafe {
            libc::kill(pid, libc::SIGHUP);
        }
    }
    if poll(Duration::from_secs(10), Duration::from_millis(100), || {
        live_restore_enabled() == on
    })
    .is_none()
    {
        panic!("dockerd did not switch live-restore to {on}");
    }
}

/// Live-restore on for the test; on drop dockerd runs again and has its old configuration.
struct LiveRestore {
    original: Option<String>,
    was_on: bool,
}

impl LiveRestore {
    fn enable() -> LiveRestore {
        let lr = LiveRestore {
            original: std::fs::read_to_string(DAEMON_JSON).ok(),
            was_on: live_restore_enabled(),
        };
        if !lr.was_on {
            write_live_restore(&lr.original, true);
        }
        lr
    }
}

impl Drop for LiveRestore {
    fn drop(&mut self) {
        ensure_dockerd();
        if self.was_on {
            return;
        }
        write_live_restore(&self.original, false);
        match &self.original {
            Some(text) => std::fs::write(DAEMON_JSON, text).unwrap(),
            None => std::fs::remove_file(DAEMON_JSON).unwrap(),
        }
    }
}

/// Stops dockerd (SIGTERM; live-restore keeps the containers) and starts it again.
fn restart_dockerd() -> Duration {
    let pid = dockerd_pid().expect("dockerd pid file");
    let t = Instant::now();
    // SAFETY: kill has no memory-safety preconditions.
    unsafe {
        libc::kill(pid, libc::SIGTERM);
    }
    if poll(Duration::from_secs(30), Duration::from_millis(50), || {
        !Path::new(&format!("/proc/{pid}")).exists()
    })
    .is_none()
    {
        panic!("dockerd {pid} did not exit within 30 s of SIGTERM");
    }
    eprintln!("dockerd {pid} exited after {:?}", t.elapsed());
    ensure_dockerd();
    t.elapsed()
}

/// Restarts the host's shared dockerd: its own test, so that it can be run (or left out)
/// alone: `cargo test --test daemon_docker dockerd_restart`.
#[test]
fn zero_loss_across_dockerd_restart_with_live_restore() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let Some(mut env) = Env::new(
        "zero_loss_across_dockerd_restart_with_live_restore",
        "lr",
        &[],
    ) else {
        return;
    };
    let _live = LiveRestore::enable();
    let mut d = Daemon::start(&env.spec());
    let a = env.run("a", Some("app"), &[]);
    let b = env.run("b", Some("app"), &[]);
    listening(&b);
    let ip_b = env.ip(&b);
    reaches(&a, &ip_b, &d);
    let probe = Probe::start(&a, &ip_b);
    let n = d.state_u64("reconciles");
    let took = restart_dockerd();
    eprintln!("dockerd restarted in {took:?}");
    let st = d.wait_state(
        "a full sync after reconnecting to the restarted dockerd",
        Duration::from_secs(40),
        |s| s["connected"].as_bool() == Some(true) && s["reconciles"].as_u64().unwrap_or(0) > n,
    );
    eprintln!("daemon resynced after the dockerd restart: {st}");
    std::thread::sleep(Duration::from_millis(500));
    for c in [&a, &b] {
        assert_eq!(
            docker_ok(&["inspect", "-f", "{{.State.Running}}", c]),
            "true"
        );
    }
    let (ok, failed) = probe.finish();
    eprintln!(
        "continuous probe {a} -> {b} across the dockerd restart: {ok} ok, {} failed",
        failed.len()
    );
    if !failed.is_empty() || ok < 50 {
        d.fail(&format!(
            "lost requests across the dockerd restart: {ok} ok, failed: {failed:?}"
        ));
    }
    let (code, out) = netguard(&["-c", env.policy.to_str().unwrap(), "diff"]);
    if code != 0 {
        d.fail(&format!(
            "diff after the dockerd restart: exit {code}\n{out}"
        ));
    }
}

/// The listing without the sets' elements: what must not change when only containers do.
fn without_elements(listing: &str) -> String {
    let mut out = String::new();
    let mut rest = listing;
    while let Some(i) = rest.find("elements = {") {
        out.push_str(&rest[..i]);
        rest = match rest[i..].find('}') {
            Some(j) => &rest[i + j + 1..],
            None => "",
        };
    }
    out.push_str(rest);
    // A set with elements keeps the indentation of its `elements = …` line: drop the blank
    // lines, so that an empty set and a filled one read the same.
    out.lines()
        .filter(|l| !l.trim().is_empty())
        .collect::<Vec<_>>()
        .join("\n")
}

/// The sets' elements only (what the comparison above leaves out).
fn elements_only(listing: &str) -> String {
    let mut out = String::new();
    let mut rest = listing;
    while let Some(i) = rest.find("elements = {") {
        let end = rest[i..].find('}').map(|j| i + j + 1).unwrap_or(rest.len());
        out.push_str(&rest[i..end]);
        out.push('\n');
        rest = &rest[end..];
    }
    out
}

#[track_caller]
fn in_sync(env: &Env, d: &Daemon, what: &str) {
    let mut last = String::new();
    let ok = poll(CONVERGE, Duration::from_millis(50), || {
        let (code, out) = netguard(&["-c", env.policy.to_str().unwrap(), "diff"]);
        last = out;
        code == 0
    });
    if ok.is_none() {
        d.fail(&format!("{what}: `netguard diff` not in sync:\n{last}"));
    }
}

/// netguard's tables with every object's handle (`nft -a -s`): a rule, chain or set deleted
/// and made again gets a new handle, so equal listings without elements mean that only
/// elements changed.
fn tables_with_handles() -> String {
    let mut all = String::new();
    for fam in ["inet", "bridge"] {
        let out = std::process::Command::new("nft")
            .args(["-a", "-s", "list", "table", fam, "netguard"])
            .output()
            .expect("nft");
        all.push_str(&String::from_utf8_lossy(&out.stdout));
        all.push_str(&String::from_utf8_lossy(&out.stderr));
    }
    all
}

/// A container with a published port comes and goes: only set elements change (every rule,
/// chain and set keeps its handle and its text), `diff` is in sync after each step, and the
/// published port follows the policy whether docker-proxy (the shared dockerd's default) or
/// DNAT serves it: an `app` peer reaches it through the gateway, an `other` container does
/// not.
#[test]
fn published_port_changes_only_set_elements() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let Some(mut env) = Env::new("published_port_changes_only_set_elements", "pub", &[]) else {
        return;
    };
    let d = Daemon::start(&env.spec());
    let a = env.run("a", Some("app"), &[]);
    let o = env.run("o", Some("other"), &[]);
    listening(&a);
    let ip_a = env.ip(&a);
    let ip_o = env.ip(&o);
    wait_set("g_app_4", &ip_a, true, &d);
    wait_set("g_other_4", &ip_o, true, &d);
    in_sync(&env, &d, "before");
    let gw = docker_ok(&[
        "network",
        "inspect",
        "-f",
        "{{(index .IPAM.Config 0).Gateway}}",
        &env.net,
    ]);
    let before = tables_with_handles();

    let port = 20000 + (std::process::id() % 20000);
    let p = env.run("p", Some("app"), &["-p", &format!("{port}:8080")]);
    listening(&p);
    wait_set("g_app_4", &env.ip(&p), true, &d);
    in_sync(&env, &d, "published port started");
    let with = tables_with_handles();
    assert_eq!(
        without_elements(&before),
        without_elements(&with),
        "a published port changed more than set elements"
    );
    assert!(
        elements_only(&with).contains(&port.to_string()),
        "no set element carries the published port {port}:\n{}",
        elements_only(&with)
    );
    let via = |src: &str| {
        docker(&[
            "exec",
            src,
            "sh",
            "-c",
            &format!("nc -w 1 {gw} {port} </dev/null 2>/dev/null | grep -q ok"),
        ])
        .is_ok()
    };
    if poll(CONVERGE, Duration::from_millis(50), || via(&a)).is_none() {
        d.fail(&format!(
            "{a} does not reach {gw}:{port} (published, allowed)"
        ));
    }
    if via(&o) {
        d.fail(&format!(
            "{o} reaches {gw}:{port}: the published port bypasses the policy"
        ));
    }
    // The mapping is in the catch-all set and in the target set of the `app` line.
    let inet = elements_only(&with);
    assert!(
        inet.matches(&format!("tcp . {port}")).count() >= 2,
        "published port {port} not in published_w and a line's set:\n{inet}"
    );

    docker_ok(&["rm", "-f", &p]);
    let ok = poll(CONVERGE, Duration::from_millis(50), || {
        !elements_only(&tables_with_handles()).contains(&port.to_string())
    });
    if ok.is_none() {
        d.fail(&format!("published port {port} still in a set after rm"));
    }
    in_sync(&env, &d, "published port removed");
    let after = tables_with_handles();
    assert_eq!(
        without_elements(&before),
        without_elements(&after),
        "removing a published port changed more than set elements"
    );
    assert_eq!(elements_only(&before), elements_only(&after));
}

/// A stand-in for the Docker socket that the test can take away: a Unix-socket proxy to
/// /var/run/docker.sock. `stop` closes every connection through it and removes the socket
/// (the daemon sees its event stream end and cannot connect again); `start` brings it back
/// at the same path. The shared dockerd is never touched.
struct DockerProxy {
    path: PathBuf,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    conns: std::sync::Arc<Mutex<Vec<std::os::unix::net::UnixStream>>>,
}

impl DockerProxy {
    fn new(path: PathBuf) -> DockerProxy {
        let mut p = DockerProxy {
            path,
            stop: Default::default(),
            conns: Default::default(),
        };
        p.start();
        p
    }

    fn start(&mut self) {
        use std::os::unix::net::{UnixListener, UnixStream};
        let _ = std::fs::remove_file(&self.path);
        let listener = UnixListener::bind(&self.path).expect("bind the proxy socket");
        listener.set_nonblocking(true).unwrap();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        self.stop = stop.clone();
        let conns = self.conns.clone();
        std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let Ok((client, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                };
                let _ = client.set_nonblocking(false);
                let Ok(upstream) = UnixStream::connect("/var/run/docker.sock") else {
                    continue;
                };
                let mut held = conns.lock().unwrap();
                held.push(client.try_clone().unwrap());
                held.push(upstream.try_clone().unwrap());
                for (mut from, mut to) in [
                    (client.try_clone().unwrap(), upstream.try_clone().unwrap()),
                    (upstream, client),
                ] {
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut from, &mut to);
                        let _ = to.shutdown(std::net::Shutdown::Both);
                    });
                }
            }
        });
    }

    fn stop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let _ = std::fs::remove_file(&self.path);
        for c in self.conns.lock().unwrap().drain(..) {
            let _ = c.shutdown(std::net::Shutdown::Both);
        }
    }
}

impl Drop for DockerProxy {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `GET /metrics` on 127.0.0.1:PORT: the value of one sample, 0 when absent.
fn metric(port: u16, sample: &str) -> f64 {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect to metrics");
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut resp = String::new();
    let _ = s.read_to_string(&mut resp);
    resp.lines()
        .filter_map(|l| l.rsplit_once(' '))
        .find(|(k, _)| *k == sample)
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0.0)
}

/// Fault 3: the Docker socket disappears (the daemon follows Docker through a proxy socket
/// the test removes) and comes back. Meanwhile the last good state holds (a and b still talk,
/// the stray stays cut off), the daemon says it lost Docker (log, `connected: false` and
/// `last_error` in the state file, `errors_total{kind="source"}`), and a container started
/// during the outage is not let in; once the socket is back the daemon reconnects on its own,
/// resyncs, and the new container joins its group.
#[test]
fn docker_socket_gone_and_back_reconnects_and_resyncs() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let Some(mut env) = Env::new(
        "docker_socket_gone_and_back_reconnects_and_resyncs",
        "sock",
        &[],
    ) else {
        return;
    };
    const PORT: u16 = 9471;
    let sock = PathBuf::from(format!(
        "/tmp/ngd-{}-faults-docker.sock",
        std::process::id()
    ));
    let mut proxy = DockerProxy::new(sock.clone());
    let mut s = env.spec();
    s.env
        .push(("DOCKER_HOST".into(), format!("unix://{}", sock.display())));
    s.metrics_listen = Some(format!("127.0.0.1:{PORT}"));
    let mut d = Daemon::start(&s);
    let a = env.run("a", Some("app"), &[]);
    let b = env.run("b", Some("app"), &[]);
    let stray = env.run("stray", None, &[]);
    listening(&a);
    listening(&stray);
    let (ip_a, ip_b) = (env.ip(&a), env.ip(&b));
    reaches(&b, &ip_a, &d);
    blocked(&stray, &ip_a, &d);

    proxy.stop();
    d.wait_state("connected: false", Duration::from_secs(10), |s| {
        s["connected"] == false
    });
    let st = d.state().unwrap();
    let err = st["last_error"].as_str().unwrap_or_default().to_string();
    assert!(err.starts_with("lost Docker at unix://"), "{st}");
    assert!(metric(PORT, "netguard_errors_total{kind=\"source\"}") >= 1.0);
    assert!(d.log_text().contains("reconnecting"));
    let c = env.run("c", Some("app"), &[]);
    listening(&c);
    let ip_c = env.ip(&c);
    reaches(&b, &ip_a, &d);
    reaches(&a, &ip_b, &d);
    blocked(&stray, &ip_a, &d);
    blocked(&c, &ip_a, &d);
    assert!(d.alive(), "daemon died");

    proxy.start();
    d.wait_state("connected again", Duration::from_secs(40), |s| {
        s["connected"] == true && s["last_error"].is_null()
    });
    reaches(&c, &ip_a, &d);
    reaches(&a, &ip_c, &d);
    reaches(&b, &ip_a, &d);
    blocked(&stray, &ip_c, &d);
    let (code, out) = netguard(&[
        "-c",
        env.policy.to_str().unwrap(),
        "--docker-host",
        &format!("unix://{}", sock.display()),
        "diff",
    ]);
    assert_eq!(code, 0, "{out}");
}

/// Fault 4: rtnetlink failing on the Docker path (the veth resolver and early admission's
/// port finder, hooked by `NETGUARD_FAULT_DOCKER_NETLINK_FILE`: while its file exists, their
/// sockets fail to open). A container started meanwhile cannot have its host veth resolved:
/// it is not admitted (fail closed: its allowed connection fails), the others stay enforced
/// (across a reload, a full sync, too: known endpoints keep their last veth), and the daemon
/// says so (log, `last_error`, `errors_total{kind="veth"}`). The file removed, the daemon's
/// own retry (1 s doubling to 30 s, no signal, no event, no restart) resolves it and admits it.
#[test]
fn failing_docker_netlink_leaves_the_new_container_out_and_is_retried() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let Some(mut env) = Env::new(
        "failing_docker_netlink_leaves_the_new_container_out_and_is_retried",
        "vnl",
        &[],
    ) else {
        return;
    };
    const PORT: u16 = 9472;
    let fault = env.dir.path().join("docker-netlink.fault");
    let mut s = env.spec();
    s.env.push((
        "NETGUARD_FAULT_DOCKER_NETLINK_FILE".into(),
        fault.display().to_string(),
    ));
    s.metrics_listen = Some(format!("127.0.0.1:{PORT}"));
    let mut d = Daemon::start(&s);
    let a = env.run("a", Some("app"), &[]);
    let b = env.run("b", Some("app"), &[]);
    let stray = env.run("stray", None, &[]);
    listening(&a);
    listening(&b);
    let (ip_a, ip_b) = (env.ip(&a), env.ip(&b));
    reaches(&b, &ip_a, &d);
    reaches(&a, &ip_b, &d);
    blocked(&stray, &ip_a, &d);
    let veth_errors = || metric(PORT, "netguard_errors_total{kind=\"veth\"}");
    assert_eq!(veth_errors(), 0.0, "no veth error before the fault");

    std::fs::write(&fault, "").unwrap();
    let fault_on = Instant::now();
    let c = env.run("c", Some("app"), &[]);
    listening(&c);
    let ip_c = env.ip(&c);
    let st = d.wait_state("the veth failure reported", Duration::from_secs(10), |s| {
        s["last_error"]
            .as_str()
            .is_some_and(|e| e.starts_with(&format!("cannot resolve the host veth of {c}")))
    });
    let err = st["last_error"].as_str().unwrap_or_default().to_string();
    assert!(
        err.contains("fault injected by NETGUARD_FAULT_DOCKER_NETLINK_FILE"),
        "{err}"
    );
    assert!(
        veth_errors() >= 1.0,
        "errors_total{{kind=\"veth\"}} not counted"
    );
    assert!(
        d.log_text().contains("cannot resolve the host veth of"),
        "the log does not say it"
    );
    // Early admission's port finder fails too (its head start is lost, nothing else).
    let early_failed = d.log_text().lines().any(|l| {
        l.contains("early admission")
            && l.contains("fault injected by NETGUARD_FAULT_DOCKER_NETLINK_FILE")
    });
    assert!(early_failed, "the early port finder did not fail");
    // Not admitted: c's allowed connections fail both ways; everything else stays.
    blocked(&c, &ip_a, &d);
    reaches(&b, &ip_a, &d);
    // A full sync meanwhile (SIGHUP): a and b keep their veths, c stays out.
    let counted = veth_errors();
    d.reload();
    reaches(&a, &ip_b, &d);
    blocked(&a, &ip_c, &d);
    // The reload's read met the failure too, and the daemon retries on its own (1 s after
    // the first failure): both counted.
    assert!(
        veth_errors() > counted,
        "the reload's failure is not counted ({counted} then {})",
        veth_errors()
    );
    assert!(
        d.log_text()
            .contains("retrying the host veths netlink could not resolve"),
        "no retry logged"
    );
    assert!(d.alive(), "daemon died");

    // Ended before the third retry (7 s after the first failure): the second or the third
    // one admits c, a few seconds after.
    std::fs::remove_file(&fault).unwrap();
    eprintln!("fault ended {:?} after it began", fault_on.elapsed());
    let t = Instant::now();
    d.wait_state("the veth resolved", Duration::from_secs(40), |s| {
        s["last_error"].is_null()
    });
    eprintln!("recovered {:?} after the fault ended", t.elapsed());
    reaches(&c, &ip_a, &d);
    reaches(&a, &ip_c, &d);
    reaches(&b, &ip_a, &d);
    blocked(&stray, &ip_c, &d);
    let settled = veth_errors();
    assert!(
        d.log_text()
            .contains("the host veths netlink could not resolve are resolved")
    );
    let (code, out) = netguard(&["-c", env.policy.to_str().unwrap(), "diff"]);
    assert_eq!(code, 0, "{out}");
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(veth_errors(), settled, "still counting after the recovery");
    assert!(d.last_error().is_none());
}
