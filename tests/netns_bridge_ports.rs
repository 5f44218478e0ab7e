//! Finding a container's host veth from the host alone, by bridge and MAC (no PID): the
//! kernel's answer in real network namespaces. A "host" namespace holds a bridge and veth
//! ports; "sandbox" namespaces receive the peers, as Docker moves them at container start.
//! Needs root (skips loudly without, fails under CI=true).

use netguard::docker::{LinkWatch, PortFinder, VethError, bridge_ports, wait_for_port};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

fn skip(why: &str) -> bool {
    if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") {
        panic!("netns_bridge_ports: prerequisite missing under CI=true: {why}");
    }
    eprintln!("SKIP netns_bridge_ports: {why}");
    false
}

fn ready() -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return skip("needs root");
    }
    if Command::new("ip").arg("-V").output().is_err() {
        return skip("needs `ip`");
    }
    true
}

/// Namespaces of one test, deleted on drop (with everything in them).
struct World {
    host: String,
    sandboxes: Vec<String>,
}

impl World {
    fn new(tag: &str, sandboxes: usize) -> World {
        let p = format!("ngt-early-{}-{tag}", std::process::id());
        let w = World {
            host: format!("{p}-h"),
            sandboxes: (0..sandboxes).map(|i| format!("{p}-s{i}")).collect(),
        };
        for ns in std::iter::once(&w.host).chain(&w.sandboxes) {
            let _ = Command::new("ip").args(["netns", "delete", ns]).output();
            sh(&["ip", "netns", "add", ns]);
        }
        w.ip(&["link", "add", "brx", "type", "bridge"]);
        w.ip(&["link", "set", "brx", "up"]);
        w
    }

    fn ip(&self, args: &[&str]) {
        let mut a = vec!["ip", "-n", self.host.as_str()];
        a.extend_from_slice(args);
        sh(&a);
    }

    /// A port `host_if` on the bridge whose peer `peer_if` stays in the host namespace (as
    /// Docker leaves it until the start) with a MAC of our choosing.
    fn port(&self, host_if: &str, peer_if: &str, peer_mac: &str) {
        self.ip(&[
            "link", "add", host_if, "type", "veth", "peer", "name", peer_if,
        ]);
        self.ip(&["link", "set", peer_if, "address", peer_mac]);
        self.ip(&["link", "set", host_if, "master", "brx", "up"]);
    }

    /// Moves the peer into sandbox `i` and gives it `mac` there (Docker's order).
    fn move_peer(&self, peer_if: &str, i: usize, mac: &str) {
        self.ip(&["link", "set", peer_if, "netns", &self.sandboxes[i]]);
        sh(&[
            "ip",
            "-n",
            &self.sandboxes[i],
            "link",
            "set",
            peer_if,
            "address",
            mac,
        ]);
    }

    /// Runs `f` on a thread inside the host namespace.
    fn in_host<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = format!("/run/netns/{}", self.host);
        std::thread::spawn(move || {
            let ns = std::fs::File::open(&path).expect("netns file");
            nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
            f()
        })
        .join()
        .expect("thread in the host namespace")
    }
}

impl Drop for World {
    fn drop(&mut self) {
        for ns in std::iter::once(&self.host).chain(&self.sandboxes) {
            let _ = Command::new("ip").args(["netns", "delete", ns]).output();
        }
    }
}

#[track_caller]
fn sh(args: &[&str]) {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .expect("run");
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

const MAC_A: &str = "02:42:ac:11:00:0a";
const MAC_B: &str = "02:42:ac:11:00:0b";

#[test]
fn ports_list_the_peers_mac_only_once_it_left_the_host() {
    if !ready() {
        return;
    }
    let w = World::new("list", 2);
    // The peer already has the endpoint's MAC while still in the host: never taken.
    w.port("vxa", "vxa-peer", MAC_A);
    w.port("vxb", "vxb-peer", "02:00:00:00:00:01");
    // A port of another bridge is no port of this one.
    w.ip(&["link", "add", "bry", "type", "bridge"]);
    w.ip(&[
        "link", "add", "vxc", "type", "veth", "peer", "name", "vxc-peer",
    ]);
    w.ip(&["link", "set", "vxc", "master", "bry", "up"]);
    let ports = w.in_host(|| bridge_ports("brx")).expect("ports");
    let names: Vec<&str> = ports.iter().map(|p| p.veth.as_str()).collect();
    assert_eq!(names.len(), 2, "{ports:?}");
    assert!(
        names.contains(&"vxa") && names.contains(&"vxb"),
        "{ports:?}"
    );
    assert!(ports.iter().all(|p| p.peer_netnsid.is_none()), "{ports:?}");
    let got = w.in_host(|| wait_for_port("brx", MAC_A, Duration::ZERO));
    assert!(
        matches!(got, Err(VethError::NoInterface { .. })),
        "a peer still in the host namespace must not be taken: {got:?}"
    );

    w.move_peer("vxa-peer", 0, MAC_A);
    w.move_peer("vxb-peer", 1, MAC_B);
    let ports = w.in_host(|| bridge_ports("brx")).expect("ports");
    let a = ports.iter().find(|p| p.veth == "vxa").expect("vxa");
    let b = ports.iter().find(|p| p.veth == "vxb").expect("vxb");
    assert_eq!(a.peer_mac.as_deref(), Some(MAC_A), "{ports:?}");
    assert_eq!(b.peer_mac.as_deref(), Some(MAC_B), "{ports:?}");
    assert!(a.peer_netnsid.is_some() && a.peer_netnsid != b.peer_netnsid);
    let got = w
        .in_host(|| wait_for_port("brx", MAC_B, Duration::ZERO))
        .expect("found");
    assert_eq!(got.veth, "vxb");
    assert_eq!(got.bridge.as_deref(), Some("brx"));
    // Upper case from the API still matches.
    let got = w
        .in_host(|| wait_for_port("brx", &MAC_A.to_uppercase(), Duration::ZERO))
        .expect("found");
    assert_eq!(got.veth, "vxa");
    // The MAC exists, on another bridge's port: not found on this one.
    let got = w.in_host(|| wait_for_port("bry", MAC_A, Duration::ZERO));
    assert!(matches!(got, Err(VethError::NoInterface { .. })), "{got:?}");
    // A bridge that does not exist is an error, not "not yet".
    let got = w.in_host(|| wait_for_port("brnone", MAC_A, Duration::ZERO));
    assert!(matches!(got, Err(VethError::Failed(_))), "{got:?}");
}

#[test]
fn waiting_ends_as_the_peer_gets_its_mac_in_the_sandbox() {
    if !ready() {
        return;
    }
    let w = World::new("wait", 2);
    w.port("vwa", "vwa-peer", "02:00:00:00:00:02");
    w.port("vwb", "vwb-peer", "02:00:00:00:00:03");
    // A decoy already in its sandbox, with another MAC.
    w.move_peer("vwb-peer", 1, MAC_B);
    let t0 = Instant::now();
    let waiter = {
        let path = format!("/run/netns/{}", w.host);
        std::thread::spawn(move || {
            let ns = std::fs::File::open(&path).expect("netns file");
            nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
            let r = wait_for_port("brx", MAC_A, Duration::from_secs(10));
            (r, Instant::now())
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    w.move_peer("vwa-peer", 0, MAC_A);
    let moved = Instant::now();
    let (r, found) = waiter.join().expect("waiter");
    let got = r.expect("found after the move");
    assert_eq!(got.veth, "vwa");
    assert!(
        found >= moved - Duration::from_millis(50) && t0.elapsed() < Duration::from_secs(5),
        "found {:?} after the start, the move ended at {:?}",
        found - t0,
        moved - t0
    );
    eprintln!(
        "found {:?} after the MAC was set (notification-driven)",
        found.saturating_duration_since(moved)
    );

    // Nothing ever comes: the wait ends at its timeout with "no interface".
    let t = Instant::now();
    let got = w.in_host(|| wait_for_port("brx", "02:42:ac:11:00:99", Duration::from_millis(300)));
    assert!(matches!(got, Err(VethError::NoInterface { .. })), "{got:?}");
    assert!(t.elapsed() >= Duration::from_millis(300) && t.elapsed() < Duration::from_secs(3));
}

#[test]
fn two_ports_leading_to_one_mac_bind_neither() {
    if !ready() {
        return;
    }
    let w = World::new("dup", 2);
    w.port("vda", "vda-peer", "02:00:00:00:00:04");
    w.port("vdb", "vdb-peer", "02:00:00:00:00:05");
    w.move_peer("vda-peer", 0, MAC_A);
    w.move_peer("vdb-peer", 1, MAC_A);
    let got = w.in_host(|| wait_for_port("brx", MAC_A, Duration::ZERO));
    assert!(matches!(got, Err(VethError::Failed(_))), "{got:?}");
}

/// Runs a finder's future on a runtime of the calling thread (whose blocking threads, for the
/// safety-net reads, start in that thread's namespace).
fn block<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(f)
}

impl World {
    /// netguard's link watcher, started inside the host namespace (its thread stays there).
    fn watch(&self) -> Arc<LinkWatch> {
        let w = self.in_host(|| Arc::new(LinkWatch::start().expect("link watcher")));
        assert!(w.wait_ready(Duration::from_secs(5)), "the first dump");
        w
    }

    /// `watch.find` on a thread inside the host namespace (where its safety-net reads go).
    fn find(
        &self,
        watch: &Arc<LinkWatch>,
        mac: &str,
        timeout: Duration,
    ) -> Result<String, VethError> {
        let (w, mac) = (Arc::clone(watch), mac.to_string());
        self.in_host(move || block(w.find("brx", &mac, timeout)).map(|v| v.veth))
    }
}

/// The watcher binds a MAC to its port from the kernel's notifications alone: no read of the
/// bridge's ports (which would queue behind Docker's netlink work on the RTNL lock), and as
/// soon as the peer has the MAC in its sandbox.
#[test]
fn the_link_watcher_answers_from_notifications_alone() {
    if !ready() {
        return;
    }
    let w = World::new("watch", 3);
    let watch = w.watch();
    w.port("vna", "vna-peer", "02:00:00:00:00:02");
    w.port("vnb", "vnb-peer", MAC_A);
    // The endpoint's MAC on a peer still in the host: never taken.
    assert!(matches!(
        w.find(&watch, MAC_A, Duration::from_millis(200)),
        Err(VethError::NoInterface { .. })
    ));
    let reads = watch.reads();
    let waiter = {
        let (watch, path) = (Arc::clone(&watch), format!("/run/netns/{}", w.host));
        std::thread::spawn(move || {
            let ns = std::fs::File::open(&path).expect("netns file");
            nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
            let r = block(watch.find("brx", MAC_B, Duration::from_secs(10)));
            (r, Instant::now())
        })
    };
    std::thread::sleep(Duration::from_millis(200));
    w.move_peer("vna-peer", 0, MAC_B);
    let moved = Instant::now();
    let (r, found) = waiter.join().expect("waiter");
    assert_eq!(r.map(|v| v.veth), Ok("vna".to_string()));
    let after = found.saturating_duration_since(moved);
    assert_eq!(
        watch.reads(),
        reads,
        "the ports were read: not from notifications"
    );
    assert!(
        after < Duration::from_millis(500),
        "found {after:?} after the move"
    );
    eprintln!("found {after:?} after the MAC was set, from notifications");
    // Already known: answered at once, again without a read.
    assert_eq!(w.find(&watch, MAC_B, Duration::ZERO), Ok("vna".into()));
    assert_eq!(watch.reads(), reads);

    // A second peer moved with the same MAC: neither is bound.
    w.move_peer("vnb-peer", 1, MAC_B);
    let t = Instant::now();
    loop {
        match w.find(&watch, MAC_B, Duration::ZERO) {
            Err(VethError::Failed(e)) if e.contains("both lead to MAC") => break,
            other if t.elapsed() > Duration::from_secs(2) => panic!("{other:?}"),
            _ => std::thread::sleep(Duration::from_millis(20)),
        }
    }
    // A pair made inside a sandbox (as a container with NET_ADMIN could), one end carrying
    // an endpoint's MAC: no port's peer, binds nothing.
    let s2 = w.sandboxes[2].clone();
    sh(&[
        "ip", "-n", &s2, "link", "add", "fake0", "address", MAC_A, "type", "veth", "peer", "name",
        "fake1",
    ]);
    sh(&["ip", "-n", &s2, "link", "set", "fake0", "up"]);
    let before = watch.reads();
    assert!(matches!(
        w.find(&watch, MAC_A, Duration::from_millis(300)),
        Err(VethError::NoInterface { .. })
    ));
    assert_eq!(watch.reads(), before + 1, "one read, at the deadline");
}

/// What the notifications cannot know (a peer moved before the watcher started) is still
/// found: by reading the ports after a short wait.
#[test]
fn a_peer_moved_before_the_watcher_started_is_found_by_reading_the_ports() {
    if !ready() {
        return;
    }
    let w = World::new("before", 1);
    w.port("vba", "vba-peer", "02:00:00:00:00:06");
    w.move_peer("vba-peer", 0, MAC_A);
    let watch = w.watch();
    let t = Instant::now();
    assert_eq!(
        w.find(&watch, MAC_A, Duration::from_secs(5)),
        Ok("vba".into())
    );
    assert_eq!(watch.reads(), 1);
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    // A bridge the host does not have: an error at once.
    let (wa, t) = (Arc::clone(&watch), Instant::now());
    let got = w.in_host(move || block(wa.find("brnone", MAC_A, Duration::from_secs(5))));
    assert!(matches!(got, Err(VethError::Failed(_))), "{got:?}");
    assert!(t.elapsed() < Duration::from_secs(1));
}

/// A Docker that creates the container side directly in the sandbox, with the endpoint's MAC
/// already, and attaches the host side to the bridge afterwards (the order is the kernel's to
/// tell, not netguard's to assume): the port is found from the notifications alone once the
/// sandbox side is configured.
#[test]
fn a_peer_made_in_the_sandbox_with_its_mac_before_the_port_joins_the_bridge() {
    if !ready() {
        return;
    }
    let w = World::new("direct", 1);
    let watch = w.watch();
    let reads = watch.reads();
    let s0 = w.sandboxes[0].clone();
    w.ip(&[
        "link", "add", "vca", "type", "veth", "peer", "name", "eth0", "netns", &s0, "address",
        MAC_A,
    ]);
    // Not a port of the bridge yet: nothing.
    assert!(matches!(
        w.find(&watch, MAC_A, Duration::from_millis(200)),
        Err(VethError::NoInterface { .. })
    ));
    let before = watch.reads();
    let waiter = {
        let (watch, path) = (Arc::clone(&watch), format!("/run/netns/{}", w.host));
        std::thread::spawn(move || {
            let ns = std::fs::File::open(&path).expect("netns file");
            nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
            block(watch.find("brx", MAC_A, Duration::from_secs(10)))
        })
    };
    std::thread::sleep(Duration::from_millis(200));
    w.ip(&["link", "set", "vca", "master", "brx", "up"]);
    // The sandbox side's own creation is announced before the host has an id for the sandbox
    // (so not to netguard); Docker configures it there next, which is announced.
    sh(&["ip", "-n", &s0, "link", "set", "eth0", "up"]);
    assert_eq!(
        waiter.join().expect("waiter").map(|v| v.veth),
        Ok("vca".to_string())
    );
    assert_eq!(
        watch.reads(),
        before,
        "found by a read, not from notifications"
    );
    assert_eq!(before, reads + 1, "one read, at the first wait's deadline");
}
