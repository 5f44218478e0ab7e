//! The MAC binding against a real dockerd (root; see tests/common/docker.rs): the two
//! attacks of tests/netns_mac.rs, made on Docker's own bridge and veths.
//!
//! `db` is the victim, `web` its allowed client (5432/tcp and ICMP, IPv4 and IPv6 on an
//! IPv6-enabled managed network), `evil` a container in no group:
//! 1. evil's namespace sends broadcast ARP and IPv6 frames whose Ethernet source is db's MAC
//!    (ARP with db's and with its own sender hardware address). The frames leave evil's
//!    `eth0` from an AF_PACKET socket, what Docker's default NET_RAW lets evil's own process
//!    do; the test sends them from a thread inside evil's namespace because the test image
//!    has no tool that writes raw frames.
//! 2. evil's namespace advertises db's IPv6 address at evil's own MAC (unsolicited neighbour
//!    advertisements to web, from evil's own MAC and address: IPv6's ARP poisoning).
//! 3. `thief`, started with `--cap-add NET_ADMIN`, sets db's MAC on its own `eth0` and pings.
//!
//! In all three, web's flows to db keep working over IPv4 and IPv6 and the bridge keeps
//! db's MAC on db's veth. Without the binding (`anti_spoofing = false`, plain Docker) each
//! cuts db off.
//!
//! Applies rules to the host's nftables, so only one such test may run at a time: this file
//! holds one test.

#[path = "common/docker.rs"]
mod docker_env;
#[path = "../netns-fixtures/mod.rs"]
mod netns;

use docker_env::{IMAGE, Scene, docker, docker_available, docker_ok};
use netns::frames::{arp_frame, flood, ip6_frame, learned_port, na_frame};
use std::net::{Ipv4Addr, Ipv6Addr};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

fn netguard(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_netguard"))
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run netguard");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

struct Uninstall(String);

impl Drop for Uninstall {
    fn drop(&mut self) {
        let _ = netguard(&["-c", &self.0, "uninstall"]);
    }
}

/// A container's network namespace under /run/netns (`ip netns attach`), so that a thread
/// can enter it; the name is removed on drop (the namespace itself belongs to Docker).
struct Attached(String);

impl Attached {
    fn new(name: &str, container: &str) -> Attached {
        let pid = docker_ok(&["inspect", "-f", "{{.State.Pid}}", container]);
        let st = Command::new("ip")
            .args(["netns", "attach", name, pid.trim()])
            .status()
            .expect("ip netns attach");
        assert!(st.success(), "ip netns attach {name} {pid}");
        Attached(name.to_string())
    }
}

impl Drop for Attached {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "delete", &self.0])
            .status();
    }
}

struct Endpoint {
    v4: Ipv4Addr,
    v6: Ipv6Addr,
    mac: String,
}

fn endpoint(container: &str, net: &str) -> Endpoint {
    let fmt = format!(
        "{{{{with index .NetworkSettings.Networks \"{net}\"}}}}{{{{.IPAddress}}}} \
         {{{{.GlobalIPv6Address}}}} {{{{.MacAddress}}}}{{{{end}}}}"
    );
    let out = docker_ok(&["inspect", "-f", &fmt, container]);
    let w: Vec<&str> = out.split_whitespace().collect();
    assert_eq!(w.len(), 3, "{container} on {net}: {out:?}");
    Endpoint {
        v4: w[0].parse().expect("ipv4"),
        v6: w[1].parse().expect("ipv6"),
        mac: w[2].to_string(),
    }
}

/// The host-side veth of a container's `eth0`.
fn host_veth(container: &str) -> String {
    let idx = docker_ok(&["exec", container, "cat", "/sys/class/net/eth0/iflink"]);
    let idx = idx.trim();
    for e in std::fs::read_dir("/sys/class/net").expect("/sys/class/net") {
        let e = e.expect("entry");
        let i = std::fs::read_to_string(e.path().join("ifindex")).unwrap_or_default();
        if i.trim() == idx {
            return e.file_name().to_string_lossy().into_owned();
        }
    }
    panic!("no host interface with index {idx} for {container}");
}

/// The bridge port the forwarding table puts `mac` on.
fn fdb_port(bridge: &str, mac: &str) -> Option<String> {
    let out = Command::new("bridge")
        .args(["fdb", "show", "br", bridge])
        .output()
        .expect("bridge fdb");
    learned_port(&String::from_utf8_lossy(&out.stdout), mac)
}

/// web's allowed flows to db (TCP 5432 and ping, IPv4 and IPv6), `rounds` times 200 ms
/// apart; returns the ones that failed.
fn victim_failures(web: &str, db: &Endpoint, rounds: usize) -> Vec<String> {
    let mut bad = vec![];
    for r in 0..rounds {
        for (what, cmd) in [
            (
                "tcp4",
                format!("nc -w 2 {} 5432 </dev/null | grep -q ok", db.v4),
            ),
            (
                "tcp6",
                format!("nc -w 2 {} 5432 </dev/null | grep -q ok", db.v6),
            ),
            ("icmp4", format!("ping -c 1 -W 1 {}", db.v4)),
            ("icmp6", format!("ping -c 1 -W 1 {}", db.v6)),
        ] {
            if docker(&["exec", web, "sh", "-c", &cmd]).is_err() {
                bad.push(format!("round {r}: {what}"));
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    bad
}

fn policy(prefix: &str, anti_spoofing: bool) -> String {
    format!(
        r#"
[settings]
networks = ["{prefix}*"]
anti_spoofing = {anti_spoofing}

[groups.web]
match = {{ label = {{ role = "web" }} }}
[groups.db]
match = {{ name = "{prefix}db" }}

[[allow]]
from = "web"
to = "db"
ports = ["5432/tcp", "icmp"]
"#
    )
}

#[test]
fn docker_neighbours_mac_taken_by_raw_frames_or_net_admin_does_not_cut_it_off() {
    if !docker_available(
        "docker_neighbours_mac_taken_by_raw_frames_or_net_admin_does_not_cut_it_off",
    ) {
        return;
    }
    // NETGUARD_TEST_ANTI_SPOOFING=false runs the same attacks without the binding: the
    // check that this test fails on plain Docker.
    let binding = std::env::var("NETGUARD_TEST_ANTI_SPOOFING").as_deref() != Ok("false");
    let mut s = Scene::new("mac");
    let pid = std::process::id();
    let net = s.network(
        "net",
        &[
            "--ipv6",
            "--subnet",
            &format!("fd44:{:x}:1::/64", pid & 0xffff),
        ],
    );
    let listen = ["sh", "-c", "nc -ll -p 5432 -e echo ok & exec sleep 3600"];
    let sleep = ["sleep", "3600"];
    let db = s.run("db", &["--network", &net], IMAGE, &listen);
    let web = s.run(
        "web",
        &["--network", &net, "--label", "role=web"],
        IMAGE,
        &sleep,
    );
    let evil = s.run("evil", &["--network", &net], IMAGE, &sleep);
    let thief = s.run(
        "thief",
        &["--network", &net, "--cap-add", "NET_ADMIN"],
        IMAGE,
        &sleep,
    );
    let bridge = format!(
        "br-{}",
        &docker_ok(&["network", "inspect", "-f", "{{.Id}}", &net])[..12]
    );
    let (db_ep, evil_ep, web_ep) = (
        endpoint(&db, &net),
        endpoint(&evil, &net),
        endpoint(&web, &net),
    );
    let db_veth = host_veth(&db);

    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = dir.path().join("policy.toml");
    std::fs::write(&cfg, policy(&s.prefix, binding)).expect("write policy");
    let cfg = cfg.to_str().expect("utf-8 path").to_string();
    let (code, out) = netguard(&["-c", &cfg, "apply"]);
    let _uninstall = Uninstall(cfg.clone());
    assert_eq!(code, 0, "apply:\n{out}");
    std::thread::sleep(Duration::from_millis(300));
    let bad = victim_failures(&web, &db_ep, 1);
    assert!(bad.is_empty(), "before the attacks: {bad:?}");

    // 1. Raw frames with db's MAC from evil's namespace.
    let ns = format!("ngt-{pid}-mac-evil");
    let _attached = Attached::new(&ns, &evil);
    let stop = Arc::new(AtomicBool::new(false));
    let frames = vec![
        arp_frame(&db_ep.mac, &db_ep.mac, evil_ep.v4, web_ep.v4),
        arp_frame(&db_ep.mac, &evil_ep.mac, evil_ep.v4, web_ep.v4),
        ip6_frame(&db_ep.mac, evil_ep.v6),
    ];
    let attacker = flood(&ns, frames, stop.clone());
    std::thread::sleep(Duration::from_millis(300));
    let bad = victim_failures(&web, &db_ep, 3);
    let port = fdb_port(&bridge, &db_ep.mac);
    stop.store(true, Ordering::Relaxed);
    let sent = attacker.join().expect("attacker thread");
    assert!(sent > 30, "evil sent only {sent} frames");
    assert!(
        bad.is_empty(),
        "db was cut off by raw frames carrying its MAC from evil: {bad:?}; db's MAC is on \
         {port:?} (db's veth: {db_veth})"
    );
    assert_eq!(port.as_deref(), Some(db_veth.as_str()), "db's MAC moved");

    // 2. evil advertises db's IPv6 address at its own MAC, to web, while web uses its flows
    // (which also keep web's entry for db, the one an unsolicited advertisement updates).
    let stop = Arc::new(AtomicBool::new(false));
    let poison = vec![na_frame(
        &evil_ep.mac,
        &web_ep.mac,
        evil_ep.v6,
        web_ep.v6,
        db_ep.v6,
        &evil_ep.mac,
    )];
    let attacker = flood(&ns, poison, stop.clone());
    std::thread::sleep(Duration::from_millis(300));
    let bad = victim_failures(&web, &db_ep, 3);
    let neigh = docker(&[
        "exec",
        &web,
        "ip",
        "-6",
        "neigh",
        "show",
        &db_ep.v6.to_string(),
    ]);
    stop.store(true, Ordering::Relaxed);
    let sent = attacker.join().expect("attacker thread");
    assert!(sent > 30, "evil sent only {sent} frames");
    assert!(
        bad.is_empty(),
        "db was cut off by evil advertising its IPv6 address: {bad:?}; web's entry for db: \
         {neigh:?} (db's MAC {}, evil's {})",
        db_ep.mac,
        evil_ep.mac
    );

    // 3. thief takes db's MAC on its own interface (NET_ADMIN) and keeps sending.
    docker_ok(&[
        "exec",
        &thief,
        "sh",
        "-c",
        &format!(
            "ip link set dev eth0 address {} && \
             (ping -i 0.2 -w 8 {} >/dev/null 2>&1 & ping -i 0.2 -w 8 {} >/dev/null 2>&1 &)",
            db_ep.mac, web_ep.v4, web_ep.v6
        ),
    ]);
    std::thread::sleep(Duration::from_millis(500));
    let bad = victim_failures(&web, &db_ep, 3);
    let port = fdb_port(&bridge, &db_ep.mac);
    assert!(
        bad.is_empty(),
        "db was cut off by thief taking its MAC: {bad:?}; db's MAC is on {port:?} \
         (db's veth: {db_veth})"
    );
    assert_eq!(port.as_deref(), Some(db_veth.as_str()), "db's MAC moved");
}
