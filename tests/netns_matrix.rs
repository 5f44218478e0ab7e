//! Kernel tests: netguard's real ruleset in a network-namespace fixture, checked with real
//! packets (TCP, UDP, ICMP over IPv4 and IPv6).
//!
//! Needs root, `ip`, `nft` and `ping`: `sudo -E cargo test --test netns_matrix`.
//! Without them the tests print SKIP and pass, except under `CI=true`, where they fail.
//! Every test builds its own fixture (its own host namespace, so its own nftables ruleset
//! and sysctls), so the tests run in parallel.
//!
//! The expected matrices are written by hand from the policies below; they are not
//! computed with netguard's code.

#[path = "../netns-fixtures/mod.rs"]
mod netns;

use netns::fixture::*;
use netns::probe::*;
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::path::Path;
use std::process::Output;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Topology (see `Topology::standard`):
/// front: web-1, web-2 (role=web), api-1, lonely (no group)
/// back:  api-2, db-1, db-2 (image postgres*), mon-1 (role=monitoring)
/// side:  side-web (role=web), api-side — network not managed by the policies.
const POLICY_A: &str = r#"
version = 1

[settings]
networks = ["front", "back"]

[groups.web]
match = { label = { role = "web" } }

[groups.api]
match = { name = "api-*" }

[groups.db]
match = { image = "postgres*" }

[groups.monitoring]
match = { label = { role = "monitoring" } }

[[allow]]
from = "web"
to = "api"
ports = ["8080/tcp", "9000-9010/tcp", "5353/udp", "icmp"]
comment = "directional: not api -> web"

[[allow]]
from = "api"
to = "db"
ports = ["5432/tcp"]

[[allow]]
within = "db"

[[allow]]
from = "monitoring"
to = "*"
ports = ["9100/tcp", "icmp"]

[[allow]]
from = "*"
to = "api"
ports = ["7777/tcp"]
comment = "any managed container, lonely (in no group) included"
"#;

/// Probed kinds: tcp/5432 tcp/7777 tcp/8080 tcp/9005 tcp/9100 udp/5353 udp/6000 icmp,
/// each over IPv4 and IPv6. Pairs not listed: nothing allowed.
const EXPECTED_A: &[(&str, &str, &str)] = &[
    ("web-1", "api-1", "tcp/8080 tcp/9005 udp/5353 icmp"),
    ("web-2", "api-1", "tcp/8080 tcp/9005 udp/5353 icmp"),
    ("api-2", "db-1", "tcp/5432"),
    ("api-2", "db-2", "tcp/5432"),
    ("db-1", "db-2", "all"),
    ("db-2", "db-1", "all"),
    ("mon-1", "api-2", "tcp/9100 icmp"),
    ("mon-1", "db-1", "tcp/9100 icmp"),
    ("mon-1", "db-2", "tcp/9100 icmp"),
    // `*` -> api: everyone managed, in a group or not, on the api container's network.
    ("web-1", "api-1", "tcp/7777"),
    ("web-2", "api-1", "tcp/7777"),
    ("lonely", "api-1", "tcp/7777"),
    ("db-1", "api-2", "tcp/7777"),
    ("db-2", "api-2", "tcp/7777"),
    ("mon-1", "api-2", "tcp/7777"),
    // unmanaged network: untouched (api-side is named api-*, yet not managed)
    ("side-web", "api-side", "all"),
    ("api-side", "side-web", "all"),
];

const POLICY_B: &str = r#"
[settings]
networks = ["front", "back"]

[groups.web]
match = { label = { role = "web" } }

[groups.api]
match = [ { name = "api-*" } ]

[groups.db]
match = { image = "postgres*" }

[groups.monitoring]
match = { label = { role = "monitoring" } }

[[allow]]
from = "web"
to = "api"
ports = ["8080/tcp", "5353/udp"]

[[allow]]
from = "api"
to = "web"
ports = ["7777/tcp"]

[[allow]]
from = "api"
to = "db"
ports = ["5432/tcp", "9000-9010/tcp"]

[[allow]]
from = "monitoring"
to = "*"
ports = ["9100/tcp"]

[[allow]]
from = "*"
to = "monitoring"
ports = ["6000/udp"]
"#;

const EXPECTED_B: &[(&str, &str, &str)] = &[
    ("web-1", "api-1", "tcp/8080 udp/5353"),
    ("web-2", "api-1", "tcp/8080 udp/5353"),
    ("api-1", "web-1", "tcp/7777"),
    ("api-1", "web-2", "tcp/7777"),
    ("api-2", "db-1", "tcp/5432 tcp/9005"),
    ("api-2", "db-2", "tcp/5432 tcp/9005"),
    ("mon-1", "api-2", "tcp/9100"),
    ("mon-1", "db-1", "tcp/9100"),
    ("mon-1", "db-2", "tcp/9100"),
    ("api-2", "mon-1", "udp/6000"),
    ("db-1", "mon-1", "udp/6000"),
    ("db-2", "mon-1", "udp/6000"),
    ("side-web", "api-side", "all"),
    ("api-side", "side-web", "all"),
];

fn show(out: &Output) -> String {
    format!(
        "exit {:?}\n--- stdout\n{}--- stderr\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Runs netguard in the fixture's host namespace and checks its exit code.
fn netguard(fx: &Fixture, policy: &Path, inv: &Path, args: &[&str], want: i32) -> Output {
    let t = Instant::now();
    let out = fx.netguard(policy, inv, args);
    assert_eq!(
        out.status.code(),
        Some(want),
        "netguard {args:?}: expected exit {want}\n{}",
        show(&out)
    );
    eprintln!("netguard {args:?}: exit {want} in {:?}", t.elapsed());
    out
}

fn setup(test: &str) -> Option<Fixture> {
    if !prerequisites(test) {
        return None;
    }
    Some(Fixture::new(&Topology::standard()))
}

fn tables(fx: &Fixture) -> String {
    fx.host_ok(&["nft", "list", "tables"])
}

#[test]
fn matrix_policy_a_with_global_bridge_nf_off() {
    let Some(fx) = setup("matrix_policy_a_with_global_bridge_nf_off") else {
        return;
    };
    let policy = fx.write_file("policy.toml", POLICY_A);
    netguard(&fx, &policy, &fx.inventory, &["check"], 0);

    // The host namespace has the global switches off and no per-bridge flag:
    // enforcement depends on netguard setting the per-bridge flags itself.
    assert_eq!(fx.global_bridge_nf(), (false, false));
    assert_eq!(fx.bridge_nf_flags("br-front"), (false, false));

    netguard(&fx, &policy, &fx.inventory, &["apply"], 0);
    for br in ["br-front", "br-back"] {
        assert_eq!(
            fx.bridge_nf_flags(br),
            (true, true),
            "netguard must set nf_call_iptables and nf_call_ip6tables on {br}"
        );
    }
    assert_eq!(
        fx.global_bridge_nf(),
        (false, false),
        "netguard must not turn on the global bridge-nf-call sysctls (docs/architecture.md 5.2)"
    );
    assert_eq!(
        fx.bridge_nf_flags("br-side"),
        (false, false),
        "the unmanaged bridge must be left alone"
    );
    let t = tables(&fx);
    assert!(
        t.contains("table inet netguard") && t.contains("table bridge netguard"),
        "{t}"
    );

    let report = check_matrix(&fx, &Expected::from_rows(EXPECTED_A), &Kind::all());
    report.assert_ok("policy A");

    // Applying again changes nothing: no transaction, so every rule keeps its handle.
    netguard(&fx, &policy, &fx.inventory, &["diff"], 0);
    let handles = || fx.host_ok(&["nft", "-a", "list", "ruleset"]);
    let before = handles();
    let again = netguard(&fx, &policy, &fx.inventory, &["apply"], 0);
    assert_eq!(
        String::from_utf8_lossy(&again.stdout).trim(),
        "in sync: nothing to do",
        "{}",
        show(&again)
    );
    let json = netguard(
        &fx,
        &policy,
        &fx.inventory,
        &["--output", "json", "apply"],
        0,
    );
    let doc: serde_json::Value = serde_json::from_slice(&json.stdout).expect("apply JSON");
    assert_eq!(doc["changed"], serde_json::Value::Bool(false), "{doc}");
    assert_eq!(before, handles(), "a second apply rewrote the ruleset");
}

#[test]
fn apply_refuses_a_managed_bridge_the_hook_cannot_see() {
    let Some(fx) = setup("apply_refuses_a_managed_bridge_the_hook_cannot_see") else {
        return;
    };
    let policy = fx.write_file("policy.toml", POLICY_A);
    // The inventory claims network front sits on a link that is no bridge: its traffic can
    // never reach the inet hook, so claiming enforcement for it would be a lie.
    fx.host_ok(&[
        "ip",
        "link",
        "add",
        "ngnotabr",
        "type",
        "veth",
        "peer",
        "name",
        "ngnotabr1",
    ]);
    let text = std::fs::read_to_string(&fx.inventory).expect("inventory");
    assert!(text.contains("\"br-front\""), "{text}");
    let inv = fx.write_file(
        "inventory.toml",
        &text.replace("\"br-front\"", "\"ngnotabr\""),
    );
    let out = netguard(&fx, &policy, &inv, &["apply"], 2);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bridge ngnotabr: it is not a bridge; refusing to claim enforcement"),
        "{}",
        show(&out)
    );
    let t = tables(&fx);
    assert!(!t.contains("netguard"), "apply refused yet wrote:\n{t}");
}

/// A network created while netguard was not looking: its bridge has the engine's shape
/// (`br-*` for Docker, `podman*` for Podman), so it is judged as managed with no members
/// (fail closed) until the inventory knows it; a bridge of another shape (LXC's, the other
/// engine's) stays untouched. The host has the global bridge-nf-call switches on, as Docker
/// before 27 sets them, so the inet hook sees every bridge without netguard flagging them.
fn unknown_bridges(test: &str, engine: &str, known: &str, unknown: &str, foreign: &str) {
    if !prerequisites(test) {
        return;
    }
    let fx = Fixture::new(
        &Topology {
            bridges: vec![],
            containers: vec![],
        }
        .bridge("front", known, 1)
        .bridge("late", unknown, 4)
        .bridge("other", foreign, 5)
        .container("a-1", "front", 11, "app:1", &[])
        .container("a-2", "front", 12, "app:1", &[])
        .container("l-1", "late", 11, "app:1", &[])
        .container("l-2", "late", 12, "app:1", &[])
        .container("x-1", "other", 11, "app:1", &[])
        .container("x-2", "other", 12, "app:1", &[]),
    );
    fx.set_global_bridge_nf(true);
    let known: Vec<Container> = fx
        .containers
        .iter()
        .filter(|c| c.network == "front")
        .cloned()
        .collect();
    let inv = fx.write_file(
        "inventory.toml",
        &format!("engine = {engine:?}\n{}", inventory_toml(&known)),
    );
    let policy = fx.write_file(
        "policy.toml",
        "[groups.a]\nmatch = { name = \"a-*\" }\n[[allow]]\nwithin = \"a\"\n",
    );
    // Control: before netguard, everyone reaches their neighbour.
    let all = Expected::from_rows(&[
        ("a-1", "a-2", "all"),
        ("a-2", "a-1", "all"),
        ("l-1", "l-2", "all"),
        ("l-2", "l-1", "all"),
        ("x-1", "x-2", "all"),
        ("x-2", "x-1", "all"),
    ]);
    let kinds = [Kind::Tcp(7777), Kind::Udp(6000), Kind::Icmp];
    check_matrix(&fx, &all, &kinds).assert_ok("no netguard");
    netguard(&fx, &policy, &inv, &["apply"], 0);
    let expected = Expected::from_rows(&[
        ("a-1", "a-2", "all"),
        ("a-2", "a-1", "all"),
        ("x-1", "x-2", "all"),
        ("x-2", "x-1", "all"),
    ]);
    check_matrix(&fx, &expected, &kinds)
        .assert_ok(&format!("{engine}: {unknown} unknown, {foreign} untouched"));
}

#[test]
fn an_unknown_docker_bridge_is_denied_and_other_bridges_untouched() {
    unknown_bridges(
        "an_unknown_docker_bridge_is_denied_and_other_bridges_untouched",
        "docker",
        "br-front",
        "br-late",
        "lxcbr9",
    );
}

#[test]
fn an_unknown_podman_bridge_is_denied_and_dockers_untouched() {
    unknown_bridges(
        "an_unknown_podman_bridge_is_denied_and_dockers_untouched",
        "podman",
        "podman1",
        "podman7",
        "br-late",
    );
}

/// The datagrams a container received whose payload is exactly `payload`.
fn received(c: &Container, payload: &[u8]) -> Vec<Datagram> {
    c.received
        .lock()
        .unwrap()
        .iter()
        .filter(|d| d.payload == payload)
        .cloned()
        .collect()
}

fn settle() {
    std::thread::sleep(Duration::from_millis(300));
}

#[test]
fn anti_spoofing_drops_forged_source_addresses() {
    let Some(fx) = setup("anti_spoofing_drops_forged_source_addresses") else {
        return;
    };
    let policy = fx.write_file("policy.toml", POLICY_A);
    // lonely (in no group) forges web-1's addresses towards api-1, which accepts
    // web-1 on 5353/udp.
    let (lonely, web1, api1) = (
        fx.container("lonely").clone(),
        fx.container("web-1").clone(),
        fx.container("api-1").clone(),
    );
    fx.ip_in(
        "lonely",
        &["addr", "add", &format!("{}/32", web1.ipv4), "dev", "eth0"],
    );
    fx.ip_in(
        "lonely",
        &[
            "addr",
            "add",
            &format!("{}/128", web1.ipv6),
            "dev",
            "eth0",
            "nodad",
        ],
    );
    // Static neighbours, so lonely needs no ARP/ND (which could be filtered) to send.
    for v6 in [false, true] {
        fx.pin_neighbour("lonely", api1.addr(v6), &api1.mac);
    }
    let spoof = |tag: &str| {
        for v6 in [false, true] {
            let payload = format!("spoof-{tag}-{}", if v6 { "v6" } else { "v4" });
            send_udp_from(
                &lonely,
                web1.addr(v6),
                api1.addr(v6),
                5353,
                payload.as_bytes(),
            );
        }
        settle();
    };

    // Control: without netguard the forged datagrams arrive, from web-1's address.
    spoof("before");
    for fam in ["v4", "v6"] {
        let got = received(&api1, format!("spoof-before-{fam}").as_bytes());
        assert_eq!(got.len(), 1, "{fam}: control datagram not delivered");
        assert!(
            got[0].from.ip() == web1.ipv4 || got[0].from.ip() == web1.ipv6,
            "{got:?}"
        );
    }

    netguard(&fx, &policy, &fx.inventory, &["apply"], 0);
    spoof("after");
    // The genuine web-1 still gets through on the same port.
    for v6 in [false, true] {
        let p = format!("genuine-{}", if v6 { "v6" } else { "v4" });
        send_udp_from(&web1, web1.addr(v6), api1.addr(v6), 5353, p.as_bytes());
    }
    settle();
    for fam in ["v4", "v6"] {
        let got = received(&api1, format!("spoof-after-{fam}").as_bytes());
        assert!(
            got.is_empty(),
            "{fam}: datagram forged with web-1's address was delivered: {got:?}\n{}",
            fx.ruleset()
        );
        assert!(
            api1.got(format!("genuine-{fam}").as_bytes()),
            "{fam}: the genuine sender was blocked"
        );
    }

    // Informational: without netguard's bridge table the inet table alone lets the
    // forgery through (the address is what it checks), which is why the binding exists.
    fx.host_ok(&["nft", "delete", "table", "bridge", "netguard"]);
    spoof("nobridge");
    for fam in ["v4", "v6"] {
        let through = api1.got(format!("spoof-nobridge-{fam}").as_bytes());
        eprintln!("{fam}: without the bridge table the forgery is delivered: {through}");
    }
}

#[test]
fn misdelivery_to_an_address_thief_is_dropped() {
    let Some(fx) = setup("misdelivery_to_an_address_thief_is_dropped") else {
        return;
    };
    let policy = fx.write_file("policy.toml", POLICY_A);
    // lonely takes over api-1's addresses; web-1 (allowed to api-1 on 5353/udp) is made
    // to believe api-1's addresses live at lonely's MAC.
    let (lonely, web1, api1) = (
        fx.container("lonely").clone(),
        fx.container("web-1").clone(),
        fx.container("api-1").clone(),
    );
    fx.ip_in(
        "lonely",
        &["addr", "add", &format!("{}/32", api1.ipv4), "dev", "eth0"],
    );
    fx.ip_in(
        "lonely",
        &[
            "addr",
            "add",
            &format!("{}/128", api1.ipv6),
            "dev",
            "eth0",
            "nodad",
        ],
    );
    for v6 in [false, true] {
        fx.pin_neighbour("web-1", api1.addr(v6), &lonely.mac);
    }
    // Let the bridge learn lonely's MAC on its port.
    send_udp_from(
        &lonely,
        lonely.addr(false),
        web1.addr(false),
        6000,
        b"hello",
    );
    let send = |tag: &str| {
        for v6 in [false, true] {
            let p = format!("misdeliver-{tag}-{}", if v6 { "v6" } else { "v4" });
            send_udp_from(&web1, web1.addr(v6), api1.addr(v6), 5353, p.as_bytes());
        }
        settle();
    };
    send("before");
    for fam in ["v4", "v6"] {
        assert!(
            lonely.got(format!("misdeliver-before-{fam}").as_bytes()),
            "{fam}: control: the thief should receive traffic for the stolen address without netguard"
        );
    }
    netguard(&fx, &policy, &fx.inventory, &["apply"], 0);
    send("after");
    for fam in ["v4", "v6"] {
        let got = received(&lonely, format!("misdeliver-after-{fam}").as_bytes());
        assert!(
            got.is_empty(),
            "{fam}: traffic for api-1's address reached the thief's veth: {got:?}\n{}",
            fx.ruleset()
        );
    }
}

#[test]
fn diff_reports_inventory_changes() {
    let Some(fx) = setup("diff_reports_inventory_changes") else {
        return;
    };
    let policy = fx.write_file("policy.toml", POLICY_A);
    netguard(&fx, &policy, &fx.inventory, &["diff"], 1);
    netguard(&fx, &policy, &fx.inventory, &["apply"], 0);
    netguard(&fx, &policy, &fx.inventory, &["diff"], 0);

    // A container goes away.
    let web2 = fx.container("web-2").clone();
    let without: Vec<Container> = fx
        .containers
        .iter()
        .filter(|c| c.name != "web-2")
        .cloned()
        .collect();
    let inv_removed = fx.write_file("inv-removed.toml", &inventory_toml(&without));
    let out = netguard(&fx, &policy, &inv_removed, &["diff", "--objects"], 1);
    let text = show(&out);
    assert!(
        text.contains(&web2.ipv4.to_string())
            || text.contains(&web2.ipv6.to_string())
            || text.contains(&web2.veth),
        "diff does not name web-2's address or veth:\n{text}"
    );

    // An address changes.
    let mut changed = fx.containers.clone();
    let api1 = changed.iter_mut().find(|c| c.name == "api-1").unwrap();
    api1.ipv4 = "10.91.1.121".parse().unwrap();
    let inv_changed = fx.write_file("inv-changed.toml", &inventory_toml(&changed));
    let out = netguard(&fx, &policy, &inv_changed, &["diff", "--objects"], 1);
    let text = show(&out);
    assert!(
        text.contains("10.91.1.121"),
        "diff does not name api-1's new address:\n{text}"
    );

    // Applying the change brings the kernel in sync again; the ruleset was untouched by diff.
    let before = fx.ruleset_stateless();
    netguard(&fx, &policy, &inv_changed, &["diff"], 1);
    assert_eq!(
        before,
        fx.ruleset_stateless(),
        "diff must not change the ruleset"
    );
    netguard(&fx, &policy, &inv_changed, &["apply"], 0);
    netguard(&fx, &policy, &inv_changed, &["diff"], 0);
    netguard(&fx, &policy, &fx.inventory, &["diff"], 1);

    // Errors: exit 2, and nothing is applied.
    let before_bad = fx.ruleset_stateless();
    let bad = fx.write_file(
        "bad.toml",
        "[[allow]]\nfrom = \"nosuchgroup\"\nto = \"x\"\n",
    );
    netguard(&fx, &bad, &fx.inventory, &["check"], 2);
    netguard(&fx, &bad, &fx.inventory, &["diff"], 2);
    netguard(&fx, &bad, &fx.inventory, &["apply"], 2);
    let bad_inv = fx.write_file(
        "bad-inventory.toml",
        &inventory_toml(&fx.containers).replace("10.91.1.11\"", "10.91.1.311\""),
    );
    netguard(&fx, &policy, &bad_inv, &["diff"], 2);
    netguard(&fx, &policy, &bad_inv, &["apply"], 2);
    assert_eq!(
        before_bad,
        fx.ruleset_stateless(),
        "a failed apply must change nothing"
    );
    assert!(before_bad.contains("10.91.1.121"));
}

/// Repeats a request from `from` to `to` every 5 ms until `stop`; returns (sent, lost).
fn continuous(
    fx: &Fixture,
    from: &str,
    to: &str,
    kind: Kind,
    v6: bool,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<(usize, Vec<String>)> {
    let ns = fx.container(from).ns.clone();
    let dst = fx.container(to).addr(v6);
    std::thread::spawn(move || {
        enter_netns(&ns).unwrap();
        let timeout = Duration::from_millis(250);
        let mut sent = 0;
        let mut lost = vec![];
        // UDP: one socket for the whole run (an established flow); TCP: a new connection
        // every time.
        let udp = match kind {
            Kind::Udp(port) => {
                let bind: SocketAddr = if v6 {
                    "[::]:0".parse().unwrap()
                } else {
                    "0.0.0.0:0".parse().unwrap()
                };
                let s = UdpSocket::bind(bind).unwrap();
                s.connect((dst, port)).unwrap();
                s.set_read_timeout(Some(timeout)).unwrap();
                Some(s)
            }
            _ => None,
        };
        let started = Instant::now();
        while !stop.load(Ordering::Relaxed) {
            let ok = match kind {
                Kind::Tcp(port) => {
                    TcpStream::connect_timeout(&SocketAddr::new(dst, port), timeout).is_ok()
                }
                Kind::Udp(_) => {
                    let s = udp.as_ref().unwrap();
                    let msg = format!("seq-{sent}");
                    s.send(msg.as_bytes()).unwrap();
                    let mut buf = [0u8; 64];
                    let mut ok = false;
                    let deadline = Instant::now() + timeout;
                    while Instant::now() < deadline {
                        match s.recv(&mut buf) {
                            Ok(n) if &buf[..n] == msg.as_bytes() => {
                                ok = true;
                                break;
                            }
                            Ok(_) => continue,
                            Err(_) => break,
                        }
                    }
                    ok
                }
                Kind::Icmp => unimplemented!(),
            };
            if !ok {
                lost.push(format!("#{sent} at {:?}", started.elapsed()));
            }
            sent += 1;
            std::thread::sleep(Duration::from_millis(5));
        }
        (sent, lost)
    })
}

#[test]
fn policy_change_moves_the_matrix_without_losing_allowed_traffic() {
    let Some(fx) = setup("policy_change_moves_the_matrix_without_losing_allowed_traffic") else {
        return;
    };
    let policy_a = fx.write_file("policy-a.toml", POLICY_A);
    let policy_b = fx.write_file("policy-b.toml", POLICY_B);
    netguard(&fx, &policy_b, &fx.inventory, &["check"], 0);
    netguard(&fx, &policy_a, &fx.inventory, &["apply"], 0);
    check_matrix(&fx, &Expected::from_rows(EXPECTED_A), &Kind::all()).assert_ok("policy A");

    // Flows allowed by both policies, probed continuously across the re-apply.
    let stop = Arc::new(AtomicBool::new(false));
    let flows = [
        ("web-1", "api-1", Kind::Udp(5353), false),
        ("web-2", "api-1", Kind::Udp(5353), true),
        ("web-1", "api-1", Kind::Tcp(8080), true),
        ("web-2", "api-1", Kind::Tcp(8080), false),
        ("api-2", "db-1", Kind::Tcp(5432), false),
        ("mon-1", "db-2", Kind::Tcp(9100), true),
    ];
    let handles: Vec<_> = flows
        .iter()
        .map(|(a, b, k, v6)| continuous(&fx, a, b, *k, *v6, stop.clone()))
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    let t = Instant::now();
    netguard(&fx, &policy_b, &fx.inventory, &["apply"], 0);
    let apply_took = t.elapsed();
    std::thread::sleep(Duration::from_millis(200));
    stop.store(true, Ordering::Relaxed);
    let mut failures = vec![];
    for ((a, b, k, v6), h) in flows.iter().zip(handles) {
        let (sent, lost) = h.join().unwrap();
        let fam = if *v6 { "v6" } else { "v4" };
        eprintln!(
            "continuous {a} -> {b} {k} {fam}: {sent} requests, {} lost (apply took {apply_took:?})",
            lost.len()
        );
        assert!(sent >= 20, "{a} -> {b} {k}: only {sent} requests");
        if !lost.is_empty() {
            failures.push(format!("{a} -> {b} {k} {fam}: lost {lost:?} of {sent}"));
        }
    }
    assert!(
        failures.is_empty(),
        "requests lost across the re-apply:\n{}",
        failures.join("\n")
    );

    check_matrix(&fx, &Expected::from_rows(EXPECTED_B), &Kind::all()).assert_ok("policy B");
    netguard(&fx, &policy_b, &fx.inventory, &["diff"], 0);
    netguard(&fx, &policy_a, &fx.inventory, &["diff"], 1);
}

const KEEP_TABLE: &str = r#"
table inet ngtest_keep {
    set keep_addrs {
        type ipv4_addr
        elements = { 10.1.2.3, 10.4.5.6 }
    }
    chain keep_helper {
        ip daddr 10.9.9.9 drop
    }
    chain keep_forward {
        type filter hook forward priority 10; policy accept;
        ip saddr @keep_addrs drop
        ip daddr 10.9.9.8 jump keep_helper
    }
}
"#;

#[test]
fn uninstall_removes_only_netguards_tables() {
    let Some(fx) = setup("uninstall_removes_only_netguards_tables") else {
        return;
    };
    let policy = fx.write_file("policy.toml", POLICY_A);
    fx.nft(KEEP_TABLE);
    let keep = || fx.host_ok(&["nft", "list", "table", "inet", "ngtest_keep"]);
    let before = keep();
    assert!(before.contains("10.4.5.6"), "{before}");

    netguard(&fx, &policy, &fx.inventory, &["apply"], 0);
    let t = tables(&fx);
    assert!(
        t.contains("table inet netguard") && t.contains("table bridge netguard"),
        "{t}"
    );
    let blocked = Probe {
        from: "web-1".into(),
        to: "web-2".into(),
        kind: Kind::Tcp(7777),
        family: Family::V4,
    };
    assert_eq!(
        run_probes(&fx, std::slice::from_ref(&blocked), ProbeOpts::default()),
        vec![false]
    );

    netguard(&fx, &policy, &fx.inventory, &["uninstall"], 0);
    let t = tables(&fx);
    assert!(!t.contains("netguard"), "netguard tables left behind:\n{t}");
    assert!(t.contains("table inet ngtest_keep"), "{t}");
    assert_eq!(before, keep(), "uninstall changed another table");
    // Nothing filters any more.
    assert_eq!(
        run_probes(&fx, &[blocked], ProbeOpts::default()),
        vec![true]
    );
    // And a second uninstall is harmless.
    netguard(&fx, &policy, &fx.inventory, &["uninstall"], 0);
    assert_eq!(before, keep());
}

/// Sanity check of the helpers used above (runs without netguard).
#[test]
fn helper_received_filters_exact_payloads() {
    let Some(fx) = setup("helper_received_filters_exact_payloads") else {
        return;
    };
    let (a, b) = (fx.container("db-1"), fx.container("db-2"));
    send_udp_from(a, a.addr(true), b.addr(true), 6000, b"x1");
    settle();
    assert_eq!(received(b, b"x1").len(), 1);
    assert!(received(b, b"x").is_empty());
}

/// web-1 is in two source groups (web and ops). `isolate` jumps to each group's chain in
/// turn, so web-1 gets the union of both groups' lines: a miss in one chain must fall
/// through to the next, and a miss in all of them must still end in the drop (a `goto`
/// there would return to `forward`, whose policy is accept).
const POLICY_C: &str = r#"
[settings]
networks = ["front", "back"]

[groups.web]
match = { label = { role = "web" } }

[groups.ops]
match = { name = "web-1" }

[groups.api]
match = { name = "api-*" }

[groups.db]
match = { image = "postgres*" }

[[allow]]
from = "web"
to = "api"
ports = ["8080/tcp"]

[[allow]]
from = "ops"
to = "api"
ports = ["7777/tcp", "icmp"]

[[allow]]
from = "ops"
to = "web"
ports = ["9100/tcp"]

[[allow]]
from = ["api", "db"]
to = "db"
ports = ["5432/tcp"]
"#;

const EXPECTED_C: &[(&str, &str, &str)] = &[
    ("web-1", "api-1", "tcp/8080 tcp/7777 icmp"),
    ("web-2", "api-1", "tcp/8080"),
    ("web-1", "web-2", "tcp/9100"),
    ("api-2", "db-1", "tcp/5432"),
    ("api-2", "db-2", "tcp/5432"),
    ("db-1", "db-2", "tcp/5432"),
    ("db-2", "db-1", "tcp/5432"),
    ("side-web", "api-side", "all"),
    ("api-side", "side-web", "all"),
];

#[test]
fn container_in_two_source_groups_gets_both_groups_lines() {
    let Some(fx) = setup("container_in_two_source_groups_gets_both_groups_lines") else {
        return;
    };
    let policy = fx.write_file("policy.toml", POLICY_C);
    netguard(&fx, &policy, &fx.inventory, &["apply"], 0);
    let isolate = fx.host_ok(&["nft", "list", "chain", "inet", "netguard", "isolate"]);
    assert!(
        isolate.contains("jump from_g_web_4") && isolate.contains("jump from_g_ops_4"),
        "one dispatch per source group:\n{isolate}"
    );
    let report = check_matrix(&fx, &Expected::from_rows(EXPECTED_C), &Kind::all());
    report.assert_ok("policy C: web-1 in web and ops");
    netguard(&fx, &policy, &fx.inventory, &["diff"], 0);
}
