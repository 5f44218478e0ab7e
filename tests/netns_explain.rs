//! `explain` against real packets: in the netns fixture, netguard applies a policy, every
//! ordered pair of containers on a common network is probed with every kind (TCP ports,
//! UDP ports, ICMP) over IPv4 and IPv6, and explain's verdict for that pair and kind must
//! be exactly what the packets did.
//!
//! Needs root, `ip`, `nft`, `ping` (`sudo -E cargo test --test netns_explain`); prints SKIP
//! without them, fails under `CI=true`.

#[path = "../netns-fixtures/mod.rs"]
mod netns;

use netguard::inventory::load_inventory_file;
use netguard::ops::explain;
use netguard::ops::explain_edge::explain_any;
use netguard::plan::plan;
use netguard::policy::load_policy;
use netns::fixture::*;
use netns::probe::*;

/// Mixes every kind of entry: one-way with ports and ranges, UDP, ICMP, `within`,
/// `"*"` on either side, a group in no entry, an unmanaged network (side).
const POLICY: &str = r#"
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
to = "monitoring"
ports = ["6000/udp"]
"#;

fn port_of(k: Kind) -> String {
    match k {
        Kind::Tcp(p) => format!("{p}/tcp"),
        Kind::Udp(p) => format!("{p}/udp"),
        Kind::Icmp => "icmp".into(),
    }
}

#[test]
fn explain_verdicts_equal_real_packets() {
    if !prerequisites("explain_verdicts_equal_real_packets") {
        return;
    }
    let fx = Fixture::new(&Topology::standard());
    let policy_path = fx.write_file("policy.toml", POLICY);
    let caveats = |inv: &std::path::Path| -> Vec<String> {
        let out = fx.netguard(
            &policy_path,
            inv,
            &["--output", "json", "explain", "web-1", "api-1", "8080/tcp"],
        );
        let doc: serde_json::Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("explain JSON: {e}: {out:?}"));
        assert_eq!(doc["allowed"], serde_json::Value::Bool(true), "{doc}");
        doc["caveats"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|c| c.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default()
    };
    // Before any apply the verdict is the policy's, and explain says nothing enforces it.
    let before = caveats(&fx.inventory);
    assert!(
        before.len() == 1 && before[0].contains("tables are not installed"),
        "{before:?}"
    );
    let out = fx.netguard(&policy_path, &fx.inventory, &["apply"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "apply: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let p = load_policy(&policy_path).expect("policy");
    let inv = load_inventory_file(&fx.inventory).expect("inventory");
    let pl = plan(&p, &inv);

    let mut probes = Vec::new();
    let mut expected = Vec::new();
    for (a, b) in same_network_pairs(&fx) {
        for kind in Kind::all() {
            let x = explain::explain(&p, &pl, &inv, &a, &b, Some(&port_of(kind)))
                .unwrap_or_else(|e| panic!("explain {a} {b}: {e}"));
            for family in FAMILIES {
                probes.push(Probe {
                    from: a.clone(),
                    to: b.clone(),
                    kind,
                    family,
                });
                expected.push(x.allowed);
            }
        }
    }
    let got = run_expecting(&fx, &probes, &expected, ProbeOpts::default());
    let wrong: Vec<String> = probes
        .iter()
        .zip(expected.iter().zip(&got))
        .filter(|(_, (e, g))| e != g)
        .map(|(p, (e, g))| format!("{p}: explain says {e}, packets say {g}"))
        .collect();
    assert!(
        wrong.is_empty(),
        "{} of {} probes disagree with explain:\n{}",
        wrong.len(),
        probes.len(),
        wrong.join("\n")
    );
    assert!(expected.iter().any(|e| *e) && expected.iter().any(|e| !*e));

    // Applied and current: no caveat. One container gone from the inventory: the kernel
    // is stale, and explain says so.
    assert_eq!(caveats(&fx.inventory), Vec::<String>::new());
    let fewer: Vec<Container> = fx
        .containers
        .iter()
        .filter(|c| c.name != "lonely")
        .cloned()
        .collect();
    let stale = fx.write_file("inventory-stale.toml", &inventory_toml(&fewer));
    let after = caveats(&stale);
    assert!(
        after.len() == 1 && after[0].contains("not in sync"),
        "{after:?}"
    );

    // The CLI: exit 0 allowed, 1 denied, 2 unknown container.
    for (args, code) in [
        (vec!["explain", "web-1", "api-1", "8080/tcp"], 0),
        (vec!["explain", "api-1", "web-1", "8080/tcp"], 1),
        (vec!["explain", "web-1", "nosuch"], 2),
    ] {
        let out = fx.netguard(&policy_path, &fx.inventory, &args);
        assert_eq!(
            out.status.code(),
            Some(code),
            "{args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// The edges closed, one line of each kind open (docs/policy.md, "Edges").
const EDGE_POLICY: &str = r#"
[settings]
networks = ["front"]
host = "deny"
egress = "deny"
ingress = "deny"

[groups.web]
match = { label = { role = "web" } }

[groups.db]
match = { image = "postgres*" }

[groups.monitoring]
match = { label = { role = "monitoring" } }

[[allow]]
from = "monitoring"
to = "host"
ports = ["9100/tcp", "icmp"]

[[allow]]
from = "web"
to = ["203.0.113.0/24", "2001:db8::/64"]
ports = ["443/tcp"]

[[allow]]
from = ["198.51.100.5"]
to = "db"
ports = ["5432/tcp"]

[[allow]]
from = "world"
to = "web"
ports = ["80/tcp"]
"#;

fn sh(fx: &Fixture, ns: &str, script: &str) {
    let out = fx.exec_in(ns, &["sh", "-ec", script]);
    assert!(
        out.status.success(),
        "in {ns}: {script}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The world namespace, removed also when the test fails.
struct World(String);

impl Drop for World {
    fn drop(&mut self) {
        let _ = run_cmd("ip", &["netns", "delete", &self.0], None);
    }
}

/// `explain` at the edges against real packets: for each row, explain's verdict for FROM
/// TO PORT (TO `host`, an address outside; FROM an address outside) must be what a probe
/// from that side did. A TCP probe reaches when its SYN is answered (a refusal included).
#[test]
fn explain_edge_verdicts_equal_real_packets() {
    if !prerequisites("explain_edge_verdicts_equal_real_packets") {
        return;
    }
    let topo = Topology {
        bridges: vec![],
        containers: vec![],
    }
    .bridge("front", "eofront", 1)
    .container("web-1", "front", 11, "nginx:1.27", &[("role", "web")])
    .container(
        "mon-1",
        "front",
        41,
        "node-exporter",
        &[("role", "monitoring")],
    )
    .container("db-1", "front", 31, "postgres:16", &[])
    .container("rogue", "front", 99, "busybox:1", &[]);
    let fx = Fixture::new(&topo);
    let world = World(format!("{}-eoworld", fx.prefix));
    let host = fx.host_ns.clone();
    run_cmd("ip", &["netns", "add", &world.0], None).unwrap_or_else(|e| panic!("{e}"));
    sh(
        &fx,
        &host,
        "echo 1 > /proc/sys/net/ipv4/ip_forward
         echo 1 > /proc/sys/net/ipv6/conf/all/forwarding
         ip addr add 10.91.1.1/24 dev eofront
         ip addr add fd91:0:0:1::1/64 dev eofront nodad
         ip addr add 192.0.2.2/32 dev lo",
    );
    fx.host_ok(&[
        "ip", "link", "add", "eowup", "type", "veth", "peer", "name", "eth0", "netns", &world.0,
    ]);
    sh(
        &fx,
        &host,
        "ip link set eowup up
         ip addr add 203.0.113.1/24 dev eowup
         ip addr add 198.51.100.1/24 dev eowup
         ip addr add 2001:db8::1/64 dev eowup nodad",
    );
    // db-1 is reached from 198.51.100.5 (its allowed source), everything else from
    // 203.0.113.5 (the world's first address).
    sh(
        &fx,
        &world.0,
        "ip link set lo up
         ip link set eth0 up
         ip addr add 203.0.113.5/24 dev eth0
         ip addr add 198.51.100.5/24 dev eth0
         ip addr add 2001:db8::5/64 dev eth0 nodad
         ip route add default via 203.0.113.1 src 203.0.113.5
         ip route add 10.91.1.31/32 via 198.51.100.1 src 198.51.100.5
         ip -6 route add default via 2001:db8::1
         ping -6 -c1 -W2 2001:db8::1 >/dev/null",
    );
    for c in &fx.containers {
        sh(
            &fx,
            &c.ns,
            "ip route add default via 10.91.1.1\nip -6 route add default via fd91:0:0:1::1",
        );
    }
    let policy_path = fx.write_file("policy.toml", EDGE_POLICY);
    let out = fx.netguard(&policy_path, &fx.inventory, &["apply"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "apply: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let p = load_policy(&policy_path).expect("policy");
    let inv = load_inventory_file(&fx.inventory).expect("inventory");
    let pl = plan(&p, &inv);

    // (FROM, TO as explain takes it, the address probed, kind)
    let rows: &[(&str, &str, &str, &str)] = &[
        ("mon-1", "host", "10.91.1.1", "tcp/9100"),
        ("mon-1", "host", "192.0.2.2", "tcp/9100"),
        ("mon-1", "host", "fd91:0:0:1::1", "tcp/9100"),
        ("mon-1", "host", "10.91.1.1", "icmp"),
        ("mon-1", "host", "10.91.1.1", "tcp/2222"),
        ("web-1", "host", "10.91.1.1", "tcp/9100"),
        ("rogue", "host", "192.0.2.2", "tcp/22"),
        ("web-1", "203.0.113.5", "203.0.113.5", "tcp/443"),
        ("web-1", "2001:db8::5", "2001:db8::5", "tcp/443"),
        ("web-1", "203.0.113.5", "203.0.113.5", "tcp/8443"),
        ("web-1", "198.51.100.5", "198.51.100.5", "tcp/443"),
        ("rogue", "203.0.113.5", "203.0.113.5", "tcp/443"),
        ("mon-1", "2001:db8::5", "2001:db8::5", "tcp/443"),
        ("198.51.100.5", "db-1", "10.91.1.31", "tcp/5432"),
        ("198.51.100.5", "db-1", "10.91.1.31", "tcp/22"),
        ("203.0.113.5", "web-1", "10.91.1.11", "tcp/80"),
        ("203.0.113.5", "web-1", "10.91.1.11", "tcp/8080"),
        ("203.0.113.5", "mon-1", "10.91.1.41", "tcp/80"),
        ("2001:db8::5", "web-1", "fd91:0:0:1::11", "tcp/80"),
        ("2001:db8::5", "db-1", "fd91:0:0:1::31", "tcp/5432"),
    ];
    let mut wrong = Vec::new();
    let mut verdicts = Vec::new();
    for (from, to, dst, kind) in rows {
        let k = Kind::parse(kind);
        let x = explain_any(&p, &pl, &inv, from, to, Some(&port_of(k)))
            .unwrap_or_else(|e| panic!("explain {from} {to}: {e}"));
        let ns = if from.parse::<std::net::IpAddr>().is_ok() {
            world.0.clone()
        } else {
            fx.container(from).ns.clone()
        };
        let dst: std::net::IpAddr = dst.parse().expect("address");
        let got = in_netns(&ns, move || {
            probe_here(dst, k, std::time::Duration::from_millis(700))
        });
        verdicts.push(x.allowed());
        if got != x.allowed() {
            wrong.push(format!(
                "{from} → {to} ({dst}) {kind}: explain says {}, packets say {got}\n  {}",
                x.allowed(),
                x.render(netguard::ops::style::Style::plain())
                    .lines()
                    .nth(1)
                    .unwrap_or("")
            ));
        }
    }
    if !wrong.is_empty() {
        eprintln!(
            "{}",
            fx.host_ok(&["nft", "list", "table", "inet", "netguard"])
        );
    }
    assert!(
        wrong.is_empty(),
        "{} of {} edge probes disagree with explain:\n{}",
        wrong.len(),
        rows.len(),
        wrong.join("\n")
    );
    assert!(verdicts.iter().any(|v| *v) && verdicts.iter().any(|v| !*v));

    // The CLI: exit 0 allowed, 1 denied; the JSON names the edge and what decided.
    for (args, code, edge, decided) in [
        (
            ["explain", "mon-1", "host", "9100/tcp"],
            0,
            "host",
            "policy.toml:17",
        ),
        (
            ["explain", "web-1", "host", "9100/tcp"],
            1,
            "host",
            "host = \"deny\"",
        ),
        (
            ["explain", "web-1", "203.0.113.9", "443/tcp"],
            0,
            "egress",
            "policy.toml:22",
        ),
        (
            ["explain", "world", "web-1", "80/tcp"],
            0,
            "ingress",
            "policy.toml:32",
        ),
        (
            ["explain", "world", "db-1", "5432/tcp"],
            1,
            "ingress",
            "ingress = \"deny\"",
        ),
    ] {
        let mut a = vec!["--output", "json"];
        a.extend(args);
        let out = fx.netguard(&policy_path, &fx.inventory, &a);
        assert_eq!(out.status.code(), Some(code), "{args:?}: {out:?}");
        let doc: serde_json::Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("explain JSON: {e}: {out:?}"));
        assert_eq!(doc["edge"], edge, "{args:?}: {doc}");
        assert_eq!(doc["decided_by"][0], decided, "{args:?}: {doc}");
    }
}
