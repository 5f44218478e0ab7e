//! `netguard verify` against a real kernel, in the netns fixture: before the first apply it
//! finds everything open (exit 1); after `apply` every probe matches (exit 0) and agrees with
//! the fixture's own independent probes; with a managed bridge's `nf_call_iptables` switched
//! off by hand (the host-wide sysctls are 0 in the fixture) it exits 1 and names exactly the
//! leaked pairs; with only the IPv6 switch off, only the IPv6 probes of that bridge. It
//! leaves no conntrack entry of its own, and `netguard log` does not report its probes.
//!
//! Needs root, `ip`, `nft`, `ping`, `conntrack` (`sudo -E cargo test --test netns_verify`);
//! prints SKIP without them, fails under `CI=true`.

#[path = "../netns-fixtures/mod.rs"]
mod netns;

use netns::fixture::*;
use netns::probe::{self as fxprobe, Family, Kind, Probe, ProbeOpts};
use serde_json::Value;
use std::collections::BTreeSet;
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::Output;
use std::time::Duration;

const POLICY: &str = r#"
[settings]
networks = ["front", "back"]
log_denied = true

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
ports = ["8080/tcp", "5353/udp", "icmp"]

[[allow]]
within = "db"

[[allow]]
from = "monitoring"
to = "*"
ports = ["9100/tcp"]
"#;

fn show(out: &Output) -> String {
    format!(
        "exit {:?}\n--- stdout\n{}--- stderr\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn run(fx: &Fixture, policy: &Path, args: &[&str], want: i32) -> Output {
    let out = fx.netguard(policy, &fx.inventory, args);
    assert_eq!(out.status.code(), Some(want), "{args:?}\n{}", show(&out));
    out
}

fn verify(fx: &Fixture, policy: &Path, extra: &[&str], want: i32) -> Value {
    let mut args = vec!["--output", "json", "verify"];
    args.extend_from_slice(extra);
    let out = run(fx, policy, &args, want);
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {}", show(&out)))
}

fn probes(j: &Value) -> &Vec<Value> {
    j["probes"].as_array().expect("probes")
}

/// (from, to) of the probes that did not match, with the family when `by_family`.
fn leaked(j: &Value, by_family: bool) -> BTreeSet<String> {
    probes(j)
        .iter()
        .filter(|p| p["match"] == false)
        .map(|p| {
            let pair = format!(
                "{}>{}",
                p["from"].as_str().unwrap(),
                p["to"].as_str().unwrap()
            );
            if by_family {
                format!("{pair} {}", p["family"].as_str().unwrap())
            } else {
                pair
            }
        })
        .collect()
}

/// Every ordered pair on `network` (the fixture's containers there), with `family`.
fn pairs_on(fx: &Fixture, network: &str, family: Option<&str>) -> BTreeSet<String> {
    let on: Vec<&Container> = fx
        .containers
        .iter()
        .filter(|c| c.network == network)
        .collect();
    let mut out = BTreeSet::new();
    for a in &on {
        for b in &on {
            if a.name != b.name {
                let pair = format!("{}>{}", a.name, b.name);
                out.insert(match family {
                    Some(f) => format!("{pair} {f}"),
                    None => pair,
                });
            }
        }
    }
    out
}

/// The fixture's own probe for a verify probe: the same port where the fixture serves it;
/// for verify's denied port (1, served by no one) another denied port the fixture serves
/// (the policy opens neither, so the kernel must treat them alike).
fn independent(p: &Value) -> Option<Probe> {
    let port = p["port"].as_u64().map(|x| x as u16);
    let kind = match (p["kind"].as_str()?, port) {
        ("icmp", _) => Kind::Icmp,
        ("tcp", Some(1)) => Kind::Tcp(7777),
        ("udp", Some(1)) => Kind::Udp(6000),
        ("tcp", Some(n)) if TCP_PORTS.contains(&n) => Kind::Tcp(n),
        ("udp", Some(n)) if UDP_PORTS.contains(&n) => Kind::Udp(n),
        _ => return None,
    };
    Some(Probe {
        from: p["from"].as_str()?.to_string(),
        to: p["to"].as_str()?.to_string(),
        kind,
        family: if p["family"] == "ipv6" {
            Family::V6
        } else {
            Family::V4
        },
    })
}

/// verify's measurements against the fixture's independent probes; returns how many compared.
fn agrees_with_fixture(fx: &Fixture, j: &Value, label: &str) -> usize {
    let mut list = Vec::new();
    let mut reached = Vec::new();
    for p in probes(j) {
        if let Some(q) = independent(p) {
            list.push(q);
            reached.push(p["measured"] == "reached");
        }
    }
    let got = fxprobe::run_expecting(fx, &list, &reached, ProbeOpts::default());
    let differ: Vec<String> = list
        .iter()
        .zip(&reached)
        .zip(&got)
        .filter(|((_, v), f)| *v != *f)
        .map(|((q, v), f)| format!("{q}: verify reached={v}, fixture passed={f}"))
        .collect();
    assert!(
        differ.is_empty(),
        "{label}: verify and the fixture disagree:\n{}",
        differ.join("\n")
    );
    list.len()
}

/// The host namespace's conntrack entries from verify's probe ports (TCP/UDP source ports,
/// ICMP echo ids).
fn probe_conntrack_entries(fx: &Fixture) -> Vec<String> {
    let mut out = Vec::new();
    for fam in ["ipv4", "ipv6"] {
        let o = fx.host(&["conntrack", "-L", "-f", fam]);
        for line in String::from_utf8_lossy(&o.stdout).lines() {
            let ours = line.split_whitespace().any(|t| {
                ["sport=", "id="].iter().any(|k| {
                    t.strip_prefix(k)
                        .and_then(|v| v.parse::<u16>().ok())
                        .is_some_and(|p| (61000..=61999).contains(&p))
                })
            });
            if ours {
                out.push(line.to_string());
            }
        }
    }
    out
}

#[test]
fn verify_matches_after_apply_and_names_the_leaks_of_a_sabotaged_bridge() {
    if !prerequisites_with(
        "verify_matches_after_apply_and_names_the_leaks_of_a_sabotaged_bridge",
        &["conntrack"],
    ) {
        return;
    }
    let fx = Fixture::new(&Topology::standard());
    let policy = fx.write_file("policy.toml", POLICY);

    // Before the first rollout everything is open: verify says so.
    let j = verify(&fx, &policy, &["--sample", "0"], 1);
    assert!(leaked(&j, false).contains("web-1>web-2"), "{j:#}");

    run(&fx, &policy, &["apply"], 0);
    let t = std::time::Instant::now();
    let j = verify(&fx, &policy, &["--sample", "0"], 0);
    eprintln!(
        "verify --sample 0: {} probes in {:?}",
        probes(&j).len(),
        t.elapsed()
    );
    let n = probes(&j).len();
    assert!(
        n > 100,
        "every pair of front and back, both families: {n} probes"
    );
    assert_eq!(j["summary"]["matched"], n as u64, "{j:#}");
    // Unmanaged `side` is not probed; both families are.
    assert!(probes(&j).iter().all(|p| p["network"] != "side"));
    for fam in ["ipv4", "ipv6"] {
        assert!(probes(&j).iter().any(|p| p["family"] == fam));
    }
    for kind in ["tcp", "udp", "icmp"] {
        for (expected, what) in [("reached", "allowed"), ("blocked", "denied")] {
            assert!(
                probes(&j)
                    .iter()
                    .any(|p| p["kind"] == kind && p["expected"] == expected),
                "no {what} {kind} probe: {j:#}"
            );
        }
    }
    let compared = agrees_with_fixture(&fx, &j, "after apply");
    assert!(compared > 50, "{compared} probes compared");
    // Nothing left behind in conntrack, though the allowed probes made entries.
    assert!(j["conntrack_deleted"].as_u64().unwrap() > 0, "{j:#}");
    let left = probe_conntrack_entries(&fx);
    assert!(
        left.is_empty(),
        "probe entries left in conntrack:\n{}",
        left.join("\n")
    );

    // The default samples one pair per class, and still matches.
    let t = std::time::Instant::now();
    let j = verify(&fx, &policy, &[], 0);
    eprintln!(
        "verify (one pair per class): {} probes in {:?}",
        probes(&j).len(),
        t.elapsed()
    );
    assert!(
        j["pairs"]["probed"].as_u64() < j["pairs"]["total"].as_u64(),
        "{j:#}"
    );
    let text = String::from_utf8_lossy(&run(&fx, &policy, &["verify"], 0).stdout).into_owned();
    assert!(
        text.contains("network front: what each source reached"),
        "{text}"
    );
    assert!(text.contains("0 mismatched, 0 not measured"), "{text}");
    // --from/--to narrow the pairs.
    let j = verify(&fx, &policy, &["--from", "web-1", "--to", "api-1"], 0);
    assert!(
        probes(&j)
            .iter()
            .all(|p| p["from"] == "web-1" && p["to"] == "api-1")
    );

    // Sabotage: br-front's per-bridge switches off by hand (the global sysctls are 0).
    assert_eq!(fx.global_bridge_nf(), (false, false));
    fx.set_bridge_nf_flags("br-front", false);
    let j = verify(&fx, &policy, &["--sample", "0"], 1);
    // Every front pair has a probe the policy denies (web→api: port 1), so every one leaks;
    // nothing on back does.
    assert_eq!(leaked(&j, false), pairs_on(&fx, "front", None), "{j:#}");
    agrees_with_fixture(&fx, &j, "br-front unfiltered");
    let text = String::from_utf8_lossy(&run(&fx, &policy, &["verify", "--sample", "0"], 1).stdout)
        .into_owned();
    assert!(text.contains("mismatches ("), "{text}");
    assert!(
        text.contains("web-1 → web-2 on front: 1/tcp over ipv4: expected blocked (no allow entry), measured reached"),
        "{text}"
    );

    // apply puts the switches back; then only the IPv6 one of br-back goes.
    run(&fx, &policy, &["apply"], 0);
    verify(&fx, &policy, &["--sample", "0"], 0);
    fx.host_ok(&[
        "ip",
        "link",
        "set",
        "br-back",
        "type",
        "bridge",
        "nf_call_ip6tables",
        "0",
    ]);
    assert_eq!(fx.bridge_nf_flags("br-back"), (true, false));
    let j = verify(&fx, &policy, &["--sample", "0"], 1);
    // Every IPv6 pair of back leaks, except the two databases: all traffic is theirs anyway.
    let mut want = pairs_on(&fx, "back", Some("ipv6"));
    want.remove("db-1>db-2 ipv6");
    want.remove("db-2>db-1 ipv6");
    assert_eq!(leaked(&j, true), want, "{j:#}");
    agrees_with_fixture(&fx, &j, "br-back unfiltered for IPv6");
    let left = probe_conntrack_entries(&fx);
    assert!(
        left.is_empty(),
        "probe entries left in conntrack:\n{}",
        left.join("\n")
    );
}

#[test]
fn verify_errors_are_one_line_and_exit_2() {
    if !prerequisites("verify_errors_are_one_line_and_exit_2") {
        return;
    }
    let fx = Fixture::new(&Topology::standard());
    let policy = fx.write_file("policy.toml", POLICY);
    let out = run(&fx, &policy, &["verify", "--from", "web-9"], 2);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.starts_with("netguard: no container \"web-9\""),
        "{}",
        show(&out)
    );
    assert_eq!(err.lines().count(), 1, "{}", show(&out));
    // An inventory without namespaces: the probes are not measured (exit 2), each says why.
    let bare = fx.write_file(
        "bare.toml",
        &std::fs::read_to_string(&fx.inventory)
            .unwrap()
            .lines()
            .filter(|l| !l.starts_with("netns = "))
            .collect::<Vec<_>>()
            .join("\n"),
    );
    let out = fx.netguard(&policy, &bare, &["--output", "json", "verify"]);
    assert_eq!(out.status.code(), Some(2), "{}", show(&out));
    let j: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        probes(&j)
            .iter()
            .all(|p| p["measured"].is_null() && p["detail"].as_str().unwrap().contains("netns")),
        "{j:#}"
    );
}

/// `net.netfilter.nf_log_all_netns` is host-global: the kernel only logs from other
/// namespaces when it is 1. Set for the test, restored on drop (also on panic).
struct NfLogAllNetns(Option<String>);

impl NfLogAllNetns {
    const PATH: &str = "/proc/sys/net/netfilter/nf_log_all_netns";
    fn enable() -> NfLogAllNetns {
        let old = std::fs::read_to_string(Self::PATH).ok();
        if old.as_deref().map(str::trim) != Some("1") {
            std::fs::write(Self::PATH, "1").expect("set nf_log_all_netns");
            NfLogAllNetns(old)
        } else {
            NfLogAllNetns(None)
        }
    }
}

impl Drop for NfLogAllNetns {
    fn drop(&mut self) {
        if let Some(v) = &self.0 {
            let _ = std::fs::write(Self::PATH, v.trim());
        }
    }
}

#[test]
fn log_does_not_report_the_probes_but_still_real_denials() {
    if !prerequisites("log_does_not_report_the_probes_but_still_real_denials") {
        return;
    }
    let _sysctl = NfLogAllNetns::enable();
    let fx = Fixture::new(&Topology::standard());
    let policy = fx.write_file("policy.toml", POLICY);
    run(&fx, &policy, &["apply"], 0);
    let j = verify(&fx, &policy, &["--sample", "0"], 0);
    let denied = probes(&j)
        .iter()
        .filter(|p| p["expected"] == "blocked")
        .count();
    assert!(denied > 0);

    // A real denied connection after the run: web-2 → api-1 on 7777.
    let dst = fx.container("api-1").ipv4;
    let ns = fx.container("web-2").ns.clone();
    let connected = in_netns(&ns, move || {
        TcpStream::connect_timeout(
            &SocketAddr::new(dst.into(), 7777),
            Duration::from_millis(500),
        )
        .is_ok()
    });
    assert!(!connected);

    // The kernel log is shared by every namespace of the machine: look only at this
    // fixture's probes (port 1, which nothing else here uses) and its real denial.
    let mut last = Value::Null;
    for _ in 0..20 {
        let out = run(
            &fx,
            &policy,
            &["--output", "json", "log", "-n", "100000"],
            0,
        );
        let l: Value = serde_json::from_slice(&out.stdout).unwrap();
        let ds = l["denials"].as_array().unwrap();
        let real = ds
            .iter()
            .any(|d| d["from"] == "web-2" && d["to"] == "api-1" && d["dport"] == 7777);
        if real {
            let probes_shown: Vec<&Value> = ds.iter().filter(|d| d["dport"] == 1).collect();
            assert!(
                probes_shown.is_empty(),
                "verify's probes reported: {probes_shown:#?}"
            );
            assert!(l["verify_probes_hidden"].as_u64().unwrap_or(0) > 0, "{l:#}");
            let text =
                String::from_utf8_lossy(&run(&fx, &policy, &["log", "-n", "100000"], 0).stdout)
                    .into_owned();
            assert!(
                text.contains("denials of `netguard verify` probes left out"),
                "{text}"
            );
            assert!(!text.contains("  1/tcp  "), "{text}");
            return;
        }
        last = l;
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("the real denial is not in `netguard log`: {last:#}");
}

/// Sampling keeps a crowded host quick: 60 containers in four groups (and none) on one
/// network are 3540 pairs but 25 classes, one pair each by default.
#[test]
fn sampling_probes_one_pair_per_class_on_a_crowded_host() {
    if !prerequisites("sampling_probes_one_pair_per_class_on_a_crowded_host") {
        return;
    }
    let mut topo = Topology {
        bridges: vec![],
        containers: vec![],
    }
    .bridge("front", "br-front", 1);
    let roles = ["web", "api", "db", "monitoring", "none"];
    for i in 0..60u8 {
        let role = roles[usize::from(i) % roles.len()];
        let labels: &[(&str, &str)] = if role == "none" {
            &[]
        } else {
            &[("role", role)]
        };
        let image = if role == "db" {
            "postgres:16"
        } else {
            "busybox:1"
        };
        let name = if role == "api" {
            format!("api-{i}")
        } else {
            format!("c{i}")
        };
        topo = topo.container(&name, "front", 10 + i, image, labels);
    }
    let fx = Fixture::new(&topo);
    let policy = fx.write_file("policy.toml", POLICY);
    run(&fx, &policy, &["apply"], 0);
    let t = std::time::Instant::now();
    let j = verify(&fx, &policy, &[], 0);
    let took = t.elapsed();
    eprintln!(
        "crowded host: {} pairs, {} probed, {} probes in {took:?}",
        j["pairs"]["total"],
        j["pairs"]["probed"],
        probes(&j).len()
    );
    assert_eq!(j["pairs"]["total"], 60 * 59);
    assert_eq!(j["pairs"]["probed"], j["pairs"]["classes"]);
    assert_eq!(j["pairs"]["classes"], 25, "{:#}", j["pairs"]);
    assert!(took < Duration::from_secs(5), "{took:?}");
}

/// Every edge a probe can reach from the fixture: this host, the world, a published port.
const EDGE_POLICY: &str = r#"
[settings]
networks = ["front"]
host = "deny"
egress = "deny"

[groups.web]
match = { label = { role = "web" } }

[groups.db]
match = { image = "postgres*" }

[groups.monitoring]
match = { label = { role = "monitoring" } }

[[allow]]
from = "monitoring"
to = "host"
ports = ["9100/tcp"]

[[allow]]
from = "web"
to = ["203.0.113.0/24"]
ports = ["443/tcp"]

[[allow]]
from = "web"
to = "db"
ports = ["5432/tcp"]
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
struct WorldNs(String);

impl Drop for WorldNs {
    fn drop(&mut self) {
        let _ = run_cmd("ip", &["netns", "delete", &self.0], None);
    }
}

/// `verify --host-addr --world-addr` probes the edges: the host's ports, an address
/// outside, a published port (Docker's DNAT stood in by the fake host's own nat table), each
/// against explain's verdict; all match once applied, and a hole made by hand in the host
/// edge shows as exactly the host probes that should have been blocked.
#[test]
fn verify_probes_the_edges() {
    if !prerequisites("verify_probes_the_edges") {
        return;
    }
    let topo = Topology {
        bridges: vec![],
        containers: vec![],
    }
    .bridge("front", "evfront", 1)
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
    let world = WorldNs(format!("{}-evworld", fx.prefix));
    let host = fx.host_ns.clone();
    run_cmd("ip", &["netns", "add", &world.0], None).unwrap_or_else(|e| panic!("{e}"));
    sh(
        &fx,
        &host,
        "echo 1 > /proc/sys/net/ipv4/ip_forward
         ip addr add 10.91.1.1/24 dev evfront",
    );
    fx.host_ok(&[
        "ip", "link", "add", "evwup", "type", "veth", "peer", "name", "eth0", "netns", &world.0,
    ]);
    sh(
        &fx,
        &host,
        "ip link set evwup up\nip addr add 203.0.113.1/24 dev evwup",
    );
    sh(
        &fx,
        &world.0,
        "ip link set lo up
         ip link set eth0 up
         ip addr add 203.0.113.5/24 dev eth0
         ip route add default via 203.0.113.1",
    );
    for c in &fx.containers {
        sh(&fx, &c.ns, "ip route add default via 10.91.1.1");
    }
    // Docker's DNAT of db-1's published port, and its masquerade of the hairpin.
    fx.nft(
        "table ip evtest_nat {
           chain pre { type nat hook prerouting priority -100;
             ip daddr 10.91.1.1 tcp dport 15432 dnat to 10.91.1.31:5432; }
           chain post { type nat hook postrouting priority 100;
             ip saddr 10.91.1.0/24 ip daddr 10.91.1.31 tcp dport 5432 masquerade; }
         }",
    );
    let inventory = std::fs::read_to_string(&fx.inventory).expect("inventory");
    let with_ports = inventory.replacen(
        "name = \"db-1\"\n",
        "name = \"db-1\"\npublished = [\"15432:5432/tcp\"]\n",
        1,
    );
    assert_ne!(with_ports, inventory, "db-1 not in the inventory");
    let inv = fx.write_file("inventory-published.toml", &with_ports);
    let policy = fx.write_file("policy.toml", EDGE_POLICY);
    let ng = |args: &[&str], want: i32| -> Value {
        let mut a = vec!["--output", "json"];
        a.extend_from_slice(args);
        let out = fx.netguard(&policy, &inv, &a);
        assert_eq!(out.status.code(), Some(want), "{args:?}\n{}", show(&out));
        serde_json::from_slice(&out.stdout).unwrap_or(Value::Null)
    };
    ng(&["apply"], 0);
    let args = [
        "verify",
        "--sample",
        "0",
        "--host-addr",
        "10.91.1.1",
        "--world-addr",
        "203.0.113.5",
    ];
    let j = ng(&args, 0);
    let edge = |target: &str, from: &str, to: &str, port: u64| -> Value {
        probes(&j)
            .iter()
            .find(|p| {
                p["target"] == target && p["from"] == from && p["to"] == to && p["port"] == port
            })
            .cloned()
            .unwrap_or_else(|| panic!("no {target} probe {from} -> {to} {port}: {j:#}"))
    };
    for (target, from, to, port, expected) in [
        ("host", "mon-1", "host", 9100, "reached"),
        ("host", "web-1", "host", 9100, "blocked"),
        ("host", "rogue", "host", 1, "blocked"),
        ("outside", "web-1", "203.0.113.5", 443, "reached"),
        ("outside", "web-1", "203.0.113.5", 1, "blocked"),
        ("outside", "rogue", "203.0.113.5", 443, "blocked"),
        ("published", "web-1", "db-1 via 15432", 15432, "reached"),
        ("published", "rogue", "db-1 via 15432", 15432, "blocked"),
        ("published", "mon-1", "db-1 via 15432", 15432, "blocked"),
    ] {
        let p = edge(target, from, to, port);
        assert_eq!(p["expected"], expected, "{p:#}");
        assert_eq!(p["match"], true, "{p:#}");
    }

    // A hole made by hand in the host edge: the host probes that should be blocked leak,
    // and nothing else.
    fx.host_ok(&["nft", "flush", "chain", "inet", "netguard", "input"]);
    let j = ng(&args, 1);
    let leaked: BTreeSet<String> = probes(&j)
        .iter()
        .filter(|p| p["match"] == false)
        .map(|p| format!("{} {} {}", p["target"], p["from"], p["port"]))
        .collect();
    let want: BTreeSet<String> = probes(&j)
        .iter()
        .filter(|p| p["target"] == "host" && p["expected"] == "blocked")
        .map(|p| format!("{} {} {}", p["target"], p["from"], p["port"]))
        .collect();
    assert!(!want.is_empty());
    assert_eq!(leaked, want, "{j:#}");
}
