//! Early admission against a real dockerd: a container's first packet, sent as its process
//! starts, must pass when the policy allows it, and nothing may pass when it does not.
//!
//! The command of each client container IS the probe (`ping -c1 -W1 DB`, or a TCP connect
//! timed inside the container: under [`NO_RETRANSMIT_MS`], so no SYN was retransmitted), so there is no
//! moment between the start and the probe in which a late netguard could catch up. A netguard
//! that admits a container only once Docker reports its `start` fails these tests.
//!
//! Needs root, dockerd and `netguard-busybox:test` (tests/common/docker.rs; SKIP, or fail
//! under CI=true). The daemon writes netguard's tables in the HOST namespace: one global lock
//! (never two daemons at once) and an uninstall guard. Docker objects are named
//! `nge-<pid>-<tag>-...` and removed on drop; the policy manages only the test's networks.

#[path = "common/daemon.rs"]
mod daemon;
#[path = "common/docker.rs"]
mod docker_env;

use daemon::{Daemon, Spec, netguard_bin, poll, wait_host_quiet};
use docker_env::{IMAGE, Scene, docker, docker_available, docker_ok};
use std::path::PathBuf;
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

static SERIAL: Mutex<()> = Mutex::new(());

/// The database answers "ok" on 8080/tcp.
const LISTEN: [&str; 3] = ["sh", "-c", "nc -ll -p 8080 -e echo ok & exec sleep 3600"];

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

/// One test's world; field order is drop order (daemon, uninstall, Docker objects, files).
struct Env {
    daemon: Option<Daemon>,
    _uninstall: Uninstall,
    scene: Scene,
    net: String,
    db_ip: String,
    _dir: tempfile::TempDir,
}

/// Whether the test's daemon holds the packets of containers not admitted yet.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Hold {
    /// `admission_hold = false`: what is proven is the early admission itself, which a
    /// netguard admitting at `start` fails (the hold would save it: its packets wait).
    Off,
    /// The default: what a host runs.
    On,
}

fn policy_text(prefix: &str, hold: Hold) -> String {
    format!(
        r#"
[settings]
networks = ["{prefix}net*"]
admission_hold = {hold}

[groups.web]
match = {{ label = {{ "nge.role" = "web" }} }}
[groups.db]
match = {{ label = {{ "nge.role" = "db" }} }}
[groups.other]
match = {{ label = {{ "nge.role" = "other" }} }}

[[allow]]
from = "web"
to = "db"
ports = ["8080/tcp", "icmp"]
"#,
        hold = hold == Hold::On
    )
}

impl Env {
    /// A managed network with a listening `db` on it and the daemon running.
    fn new(test: &str, tag: &str, hold: Hold) -> Option<Env> {
        if !docker_available(test) {
            return None;
        }
        wait_host_quiet(Duration::from_secs(120));
        let prefix = format!("nge-{}-{tag}-", std::process::id());
        let mut scene = Scene::with_prefix(&prefix);
        let net = scene.network("net", &[]);
        let dir = tempfile::Builder::new()
            .prefix("netguard-daemon-early-")
            .tempdir()
            .unwrap();
        let policy = dir.path().join("policy.toml");
        std::fs::write(&policy, policy_text(&prefix, hold)).unwrap();
        let uninstall = Uninstall(policy.clone());
        let mut spec = Spec::new(&policy, dir.path());
        // A lost first packet is a race against Docker's start: the log printed on failure
        // then says when each endpoint was found and admitted.
        if std::env::var_os("NETGUARD_TEST_LOG").is_none() {
            spec.log_level = "netguard=debug".into();
        }
        let daemon = Daemon::start(&spec);
        let db = scene.run(
            "db",
            &["--network", &net, "--label", "nge.role=db"],
            IMAGE,
            &LISTEN,
        );
        let db_ip = docker_ok(&[
            "inspect",
            "-f",
            &format!("{{{{(index .NetworkSettings.Networks \"{net}\").IPAddress}}}}"),
            &db,
        ]);
        let env = Env {
            daemon: Some(daemon),
            _uninstall: uninstall,
            scene,
            net,
            db_ip,
            _dir: dir,
        };
        // The db itself is admitted (by whichever path) before the clients start.
        let ip = env.db_ip.clone();
        if poll(Duration::from_secs(5), Duration::from_millis(20), || {
            bound(&ip)
        })
        .is_none()
        {
            env.fail(&format!("db {ip} never admitted"));
        }
        Some(env)
    }

    #[track_caller]
    fn fail(&self, msg: &str) -> ! {
        match &self.daemon {
            Some(d) => d.fail(msg),
            None => panic!("{msg}"),
        }
    }

    fn name(&self, short: &str) -> String {
        self.scene.name(short)
    }

    /// `docker run --rm` of a client with `role` whose command is `cmd`; its exit code and
    /// output. Registered for cleanup in case it outlives the test.
    fn client(&mut self, short: &str, role: &str, cmd: &str) -> (i32, String) {
        let name = self.name(short);
        self.scene.adopt(&name);
        client_run(&name, &self.net, role, cmd)
    }
}

fn client_run(name: &str, net: &str, role: &str, cmd: &str) -> (i32, String) {
    let label = format!("nge.role={role}");
    let out = Command::new("docker")
        .args([
            "run",
            "--rm",
            "--name",
            name,
            "--network",
            net,
            "--label",
            &label,
            IMAGE,
            "sh",
            "-c",
            cmd,
        ])
        .output()
        .expect("docker run");
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// Whether the bridge table binds `ip` to a veth (the container is admitted).
fn bound(ip: &str) -> bool {
    let out = Command::new("nft")
        .args(["-j", "list", "table", "bridge", "netguard"])
        .output()
        .expect("nft");
    String::from_utf8_lossy(&out.stdout).contains(&format!("\"{ip}\""))
}

/// One echo request, the container's first packet; exit 0 only if it was answered.
fn ping_cmd(ip: &str) -> String {
    format!("ping -c1 -W1 {ip}")
}

/// A TCP connect to IP:8080 that must get "ok"; prints the time it took in hundredths of a
/// second (`/proc/uptime`). A first SYN dropped shows as 100 (the kernel's retransmit).
fn tcp_cmd(ip: &str) -> String {
    format!(
        "a=$(cut -d' ' -f1 /proc/uptime); echo | nc -w 3 {ip} 8080 | grep -q ok || exit 3; \
         b=$(cut -d' ' -f1 /proc/uptime); echo \"took $(( (${{b%.*}}${{b#*.}}) - (${{a%.*}}${{a#*.}}) ))\""
    )
}

/// A connect faster than this took no SYN retransmit (the kernel's first is after 1 s; a
/// netguard that admits at `start` makes every connect here take 1.01 s or more). The mark
/// is not the benchmark's 100 ms (examples/first_packet_bench.rs): the probe's clock counts in
/// centiseconds and includes spawning `nc` and `grep`, and ten starts at once on two loaded
/// cores took 101-103 ms without any packet lost.
const NO_RETRANSMIT_MS: u64 = 500;

/// The connect time of `tcp_cmd`'s output, in milliseconds.
fn took_ms(out: &str) -> Option<u64> {
    out.lines()
        .find_map(|l| l.strip_prefix("took "))
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(|cs| cs * 10)
}

#[test]
fn the_first_packet_of_an_allowed_flow_passes_and_a_denied_one_gets_nothing() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let Some(mut env) = Env::new("first_packet", "first", Hold::Off) else {
        return;
    };
    let db = env.db_ip.clone();
    for i in 0..3 {
        let (code, out) = env.client(&format!("ping{i}"), "web", &ping_cmd(&db));
        if code != 0 {
            env.fail(&format!(
                "start {i}: the first echo request of an allowed client got no answer ({code}): {out}"
            ));
        }
        let (code, out) = env.client(&format!("tcp{i}"), "web", &tcp_cmd(&db));
        match (code, took_ms(&out)) {
            (0, Some(ms)) if ms < NO_RETRANSMIT_MS => {}
            _ => env.fail(&format!(
                "start {i}: the first TCP connect of an allowed client did not succeed under \
                 {NO_RETRANSMIT_MS} ms (exit {code}): {out}"
            )),
        }
    }
    // Denied: nothing at the start, nor a second later once the start is long known.
    let denied = format!(
        "{} && exit 10; sleep 1; {} && exit 11; nc -w 1 {db} 8080 </dev/null | grep -q ok && exit 12; exit 0",
        ping_cmd(&db),
        ping_cmd(&db)
    );
    let (code, out) = env.client("denied", "other", &denied);
    if code != 0 {
        env.fail(&format!(
            "a client the policy does not allow got through (exit {code}): {out}"
        ));
    }
}

#[test]
fn docker_create_then_start_passes_the_first_packet() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let Some(mut env) = Env::new("create_start", "cs", Hold::Off) else {
        return;
    };
    let db = env.db_ip.clone();
    for (i, cmd) in [ping_cmd(&db), tcp_cmd(&db)].iter().enumerate() {
        let name = env.name(&format!("c{i}"));
        env.scene.adopt(&name);
        docker_ok(&[
            "create",
            "--name",
            &name,
            "--network",
            &env.net,
            "--label",
            "nge.role=web",
            IMAGE,
            "sh",
            "-c",
            cmd,
        ]);
        // Long enough for any work done at `create` to be over.
        std::thread::sleep(Duration::from_millis(300));
        let out = Command::new("docker")
            .args(["start", "-a", &name])
            .output()
            .expect("docker start");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let ok = out.status.success()
            && (i == 0 || took_ms(&text).is_some_and(|ms| ms < NO_RETRANSMIT_MS));
        if !ok {
            env.fail(&format!(
                "created then started ({cmd}): first packet lost ({}): {text}",
                out.status
            ));
        }
    }
}

#[test]
fn network_connect_of_a_running_container_passes_the_first_packet() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let Some(mut env) = Env::new("connect_running", "cr", Hold::On) else {
        return;
    };
    let db = env.db_ip.clone();
    // Runs on an unmanaged network and pings the db the moment `docker network connect`
    // has returned (a file the test creates then, polled every millisecond): the first
    // packet from its new address. A running container's new interface exists before
    // Docker sends the `connect` event, and netguard admits the endpoint 5-15 ms after that
    // event; `docker network connect` returns within that window, so this ping is sent
    // before the admission in most runs: it waits in the admission hold and passes once
    // the admission is live (before the hold, it was lost in about one run in ten). A
    // netguard that ignores the connect of a running container (admitting only at a start,
    // which never comes) fails here: the held ping is dropped after 1 s.
    let other = env.scene.network("other", &[]);
    let trigger = tempfile::Builder::new()
        .prefix("netguard-early-trigger-")
        .tempdir()
        .unwrap();
    let mount = format!("{}:/trigger", trigger.path().display());
    let cmd = format!(
        "while [ ! -e /trigger/go ]; do usleep 1000; done; {}",
        ping_cmd(&db)
    );
    let web = env.scene.run(
        "web",
        &["--network", &other, "--label", "nge.role=web", "-v", &mount],
        IMAGE,
        &["sh", "-c", &cmd],
    );
    std::thread::sleep(Duration::from_millis(500));
    let t = Instant::now();
    docker_ok(&["network", "connect", &env.net, &web]);
    let connected = t.elapsed();
    std::fs::write(trigger.path().join("go"), b"").unwrap();
    let code = docker_ok(&["wait", &web]);
    let logs = docker(&["logs", &web]).unwrap_or_default();
    if code != "0" {
        env.fail(&format!(
            "connected while running ({connected:?}): the first echo request, sent when the \
             connect returned, got no answer (exit {code}): {logs}"
        ));
    }
}

/// Ten allowed clients (pings and timed TCP connects) and one denied one started at once;
/// the starts whose first packet did not pass, by index (10: the denied one got through).
fn burst(env: &mut Env) -> Vec<(usize, String)> {
    let db = env.db_ip.clone();
    let net = env.net.clone();
    let names: Vec<String> = (0..10).map(|i| env.name(&format!("b{i}"))).collect();
    let denied = env.name("bdenied");
    for n in names.iter().chain([&denied]) {
        env.scene.adopt(n);
    }
    let results: Vec<(String, (i32, String))> = std::thread::scope(|s| {
        let mut hs = Vec::new();
        for (i, n) in names.iter().enumerate() {
            let cmd = if i % 2 == 0 {
                ping_cmd(&db)
            } else {
                tcp_cmd(&db)
            };
            let (n, net) = (n.clone(), net.clone());
            hs.push(s.spawn(move || (n.clone(), client_run(&n, &net, "web", &cmd))));
        }
        let cmd = format!("{} && exit 10; exit 0", ping_cmd(&db));
        let (n, net) = (denied.clone(), net.clone());
        hs.push(s.spawn(move || (n.clone(), client_run(&n, &net, "other", &cmd))));
        hs.into_iter().map(|h| h.join().expect("client")).collect()
    });
    let mut bad = Vec::new();
    for (i, (n, (code, out))) in results.iter().enumerate() {
        let ok = *code == 0
            && (i % 2 == 0 || i == 10 || took_ms(out).is_some_and(|ms| ms < NO_RETRANSMIT_MS));
        if !ok {
            bad.push((i, format!("{n}: exit {code}: {}", out.trim())));
        }
    }
    bad
}

/// The early admission alone (no hold): one allowed start of the ten may lose its first
/// packet, the race left when the process runs within milliseconds of Docker giving the
/// interface its MAC (BENCHMARKS.md, "First packet of a new container": 3 of 200 burst starts
/// in one run, none in another). A netguard that admits at `start` loses all ten; the denied
/// start never gets through.
#[test]
fn a_compose_style_burst_of_ten_passes_its_first_packets() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let Some(mut env) = Env::new("burst", "burst", Hold::Off) else {
        return;
    };
    let bad = burst(&mut env);
    let allowed_lost = bad.iter().filter(|(i, _)| *i < 10).count();
    let denied_through = bad.iter().any(|(i, _)| *i == 10);
    let lines: Vec<&str> = bad.iter().map(|(_, b)| b.as_str()).collect();
    if allowed_lost > 1 || denied_through {
        env.fail(&format!(
            "{} of 11 starts in a burst failed:\n{}",
            bad.len(),
            lines.join("\n")
        ));
    }
    for l in lines {
        eprintln!("one allowed start of ten lost its first packet (tolerated): {l}");
    }
}

/// With the admission hold (the default), every allowed start of the burst passes its first
/// packet: what a process sends before its admission is live waits for it. The denied start
/// still gets nothing. A netguard without the hold fails this about once in several runs
/// (the test above), one admitting at `start` whenever the start comes after the ping's 1 s.
#[test]
fn a_burst_of_ten_under_the_admission_hold_loses_no_first_packet() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let Some(mut env) = Env::new("burst_hold", "bh", Hold::On) else {
        return;
    };
    let bad = burst(&mut env);
    if !bad.is_empty() {
        let lines: Vec<&str> = bad.iter().map(|(_, b)| b.as_str()).collect();
        env.fail(&format!(
            "{} of 11 starts in a burst failed:\n{}",
            bad.len(),
            lines.join("\n")
        ));
    }
}

#[test]
fn a_network_container_sharer_passes_its_first_packet_with_its_own_groups() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let Some(mut env) = Env::new("sharer", "share", Hold::Off) else {
        return;
    };
    let db = env.db_ip.clone();
    // The owner is in no allowed group: only the sharer's own label lets the shared address
    // reach the db.
    let net = env.net.clone();
    let pod = env.scene.run(
        "pod",
        &["--network", &net, "--label", "nge.role=other"],
        IMAGE,
        &["sleep", "3600"],
    );
    let pod_ip = docker_ok(&[
        "inspect",
        "-f",
        &format!("{{{{(index .NetworkSettings.Networks \"{net}\").IPAddress}}}}"),
        &pod,
    ]);
    if poll(Duration::from_secs(5), Duration::from_millis(20), || {
        bound(&pod_ip)
    })
    .is_none()
    {
        env.fail(&format!("owner {pod_ip} never admitted"));
    }
    let mode = format!("container:{pod}");
    for (i, role, want) in [(0, "web", 0), (1, "other", 1)] {
        let name = env.name(&format!("side{i}"));
        env.scene.adopt(&name);
        let label = format!("nge.role={role}");
        let out = Command::new("docker")
            .args([
                "run",
                "--rm",
                "--name",
                &name,
                "--network",
                &mode,
                "--label",
                &label,
            ])
            .args([IMAGE, "sh", "-c", &ping_cmd(&db)])
            .output()
            .expect("docker run");
        let code = out.status.code().unwrap_or(-1);
        if code != want {
            env.fail(&format!(
                "--network container: sharer with role {role}: first echo request exit {code}, \
                 want {want}: {}",
                String::from_utf8_lossy(&out.stdout)
            ));
        }
    }
}

#[test]
fn an_address_handed_from_an_allowed_container_to_a_denied_one_lets_nothing_through() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let Some(mut env) = Env::new("reuse", "reuse", Hold::On) else {
        return;
    };
    let db = env.db_ip.clone();
    // One after the other, Docker hands each new container the address the previous one
    // left: the denied one must not ride on what the allowed one had (its conntrack entry
    // for the very same echo id, or its admission, if its removal is processed late).
    let cmd = format!(
        "ip -4 addr show eth0 | grep -o 'inet [0-9.]*'; {}",
        ping_cmd(&db)
    );
    let mut denied_passed = Vec::new();
    for i in 0..8 {
        let (code, out) = env.client(&format!("w{i}"), "web", &cmd);
        if code != 0 {
            env.fail(&format!(
                "round {i}: the allowed client's first echo request got no answer: {out}"
            ));
        }
        let (code, out) = env.client(&format!("o{i}"), "other", &cmd);
        if code == 0 {
            denied_passed.push(format!("round {i}: {}", out.replace('\n', " ")));
        }
    }
    if !denied_passed.is_empty() {
        env.fail(&format!(
            "a denied client on a reused address got through:\n{}",
            denied_passed.join("\n")
        ));
    }
}

/// The IPv4 address of `container` on `net`.
fn ip_on(container: &str, net: &str) -> String {
    docker_ok(&[
        "inspect",
        "-f",
        &format!("{{{{(index .NetworkSettings.Networks \"{net}\").IPAddress}}}}"),
        container,
    ])
}

/// A neighbour with `NET_ADMIN` that puts the next endpoint's MAC on its own interface before
/// that endpoint's container starts (Docker 20.10 derives the MAC from the address it hands
/// out next) does not get the newcomer bound to its port: early admission refuses the port
/// another admitted container holds, the newcomer's start finds its veth from its own
/// namespace, and it reaches the db then; the thief, sending with the newcomer's address and
/// MAC, gets nothing through.
#[test]
fn a_neighbour_with_net_admin_that_takes_the_next_mac_gets_nothing_of_the_newcomer() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let Some(mut env) = Env::new("theft", "theft", Hold::On) else {
        return;
    };
    let (net, db) = (env.net.clone(), env.db_ip.clone());
    let thief = env.scene.run(
        "thief",
        &[
            "--network",
            &net,
            "--label",
            "nge.role=other",
            "--cap-add",
            "NET_ADMIN",
        ],
        IMAGE,
        &["sleep", "3600"],
    );
    let thief_ip: std::net::Ipv4Addr = ip_on(&thief, &net).parse().expect("thief address");
    if poll(Duration::from_secs(5), Duration::from_millis(20), || {
        bound(&thief_ip.to_string())
    })
    .is_none()
    {
        env.fail("the thief was never admitted");
    }
    let next = std::net::Ipv4Addr::from(u32::from(thief_ip) + 1);
    let o = next.octets();
    let mac = format!("02:42:{:02x}:{:02x}:{:02x}:{:02x}", o[0], o[1], o[2], o[3]);
    let d: std::net::Ipv4Addr = db.parse().expect("db address");
    let d = d.octets();
    let db_mac = format!("02:42:{:02x}:{:02x}:{:02x}:{:02x}", d[0], d[1], d[2], d[3]);
    let took = docker(&[
        "exec",
        &thief,
        "sh",
        "-c",
        &format!(
            "ip link set dev eth0 down && ip link set dev eth0 address {mac} && \
             ip link set dev eth0 up && ip addr add {next}/32 dev eth0 && \
             arp -i eth0 -s {db} {db_mac}"
        ),
    ]);
    if let Err(e) = took {
        env.fail(&format!("the thief could not take MAC {mac}: {e}"));
    }
    // The thief keeps sending as the newcomer from before its start until well after it:
    // bound to the thief's port for any moment, the newcomer's address would get answers (the
    // db's MAC is set by hand: an ARP retry, a second apart, would miss a short moment).
    if let Err(e) = docker(&[
        "exec",
        "-d",
        &thief,
        "sh",
        "-c",
        &format!("ping -c 100 -i 0.05 -W 1 -I {next} {db} > /tmp/as-newcomer 2>&1"),
    ]) {
        env.fail(&format!("the thief's ping: {e}"));
    }
    std::thread::sleep(Duration::from_millis(300));
    let web = env.scene.run(
        "web",
        &["--network", &net, "--label", "nge.role=web"],
        IMAGE,
        &["sleep", "3600"],
    );
    let web_ip = ip_on(&web, &net);
    if web_ip != next.to_string() {
        env.fail(&format!(
            "Docker gave the newcomer {web_ip}, not the predicted {next}: nothing was tested"
        ));
    }
    let reaches = |from: &str, args: &[&str]| {
        let mut a = vec!["exec", from, "ping", "-c1", "-W1"];
        a.extend_from_slice(args);
        a.push(&db);
        docker(&a).is_ok()
    };
    if poll(Duration::from_secs(10), Duration::from_millis(200), || {
        reaches(&web, &[])
    })
    .is_none()
    {
        env.fail("the newcomer never reached the db on its own veth");
    }
    // The thief's ping (5 s) ends and writes what it got.
    let mut sent = String::new();
    poll(Duration::from_secs(20), Duration::from_millis(200), || {
        sent = docker(&["exec", &thief, "cat", "/tmp/as-newcomer"]).unwrap_or_default();
        sent.contains("packets transmitted")
    });
    if sent.contains("bytes from") {
        env.fail(&format!(
            "the thief got answers with the newcomer's address and MAC:\n{sent}"
        ));
    }
    if !sent.contains("100 packets transmitted") {
        env.fail(&format!("the thief's ping did not run as meant:\n{sent}"));
    }
    let log = env
        .daemon
        .as_ref()
        .map(|d| d.log_text())
        .unwrap_or_default();
    // Refused as another container's port, or (when the newcomer's own peer had the MAC
    // by the time its port was looked for) as a MAC two ports lead to.
    if !log.contains("the port carrying its MAC is another container's")
        && !log.contains("both lead to MAC")
    {
        env.fail("early admission did not meet the thief's port: nothing was tested");
    }
}
