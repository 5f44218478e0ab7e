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
