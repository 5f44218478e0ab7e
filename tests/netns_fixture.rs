//! Self-tests of the network-namespace fixture and the probe engine (no netguard involved).
//! Run as root: `cargo test --test netns_fixture`. Tests may run in parallel: every
//! fixture has namespaces of its own.

#[path = "../netns-fixtures/mod.rs"]
mod netns;

use netns::fixture::*;
use netns::probe::*;

/// Every same-network pair of containers reaches every other with everything.
fn everything(fx: &Fixture) -> Expected {
    let mut e = Expected::default();
    for pair in same_network_pairs(fx) {
        e.allowed.insert(pair, Kind::all());
    }
    e
}

#[test]
fn fixture_no_rules_everything_reachable() {
    if !prerequisites("fixture_no_rules_everything_reachable") {
        return;
    }
    let fx = Fixture::new(&Topology::standard());
    assert!(fx.containers.len() >= 9);
    assert_eq!(fx.global_bridge_nf(), (false, false));
    let report = check_matrix(&fx, &everything(&fx), &Kind::all());
    report.assert_ok("no rules");
    // The generated inventory is what netguard's loader accepts.
    let inv =
        netguard::inventory::load_inventory_file(&fx.inventory).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(inv.containers.len(), fx.containers.len());
}

#[test]
fn fixture_hand_written_drop_rules_block() {
    if !prerequisites("fixture_hand_written_drop_rules_block") {
        return;
    }
    let fx = Fixture::new(&Topology::standard());
    let api1 = fx.container("api-1").clone();
    // inet forward with the global sysctl at 0 and no per-bridge flag: blind.
    fx.nft(
        "table inet ngselftest {\n chain filt { type filter hook forward priority 0; policy accept;\n  tcp dport 8080 drop\n }\n}\n",
    );
    let p = |kind, family| Probe {
        from: "web-1".into(),
        to: "api-1".into(),
        kind,
        family,
    };
    let probes = vec![
        p(Kind::Tcp(8080), Family::V4),
        p(Kind::Tcp(8080), Family::V6),
        p(Kind::Tcp(9005), Family::V4),
    ];
    let got = run_probes(&fx, &probes, ProbeOpts::default());
    assert_eq!(
        got,
        vec![true, true, true],
        "inet hook must be blind without br_netfilter flags"
    );
    // With the per-bridge flag the inet rule bites.
    fx.set_bridge_nf_flags("br-front", true);
    assert_eq!(fx.bridge_nf_flags("br-front"), (true, true));
    let got = run_probes(&fx, &probes, ProbeOpts::default());
    assert_eq!(got, vec![false, false, true]);
    // A bridge-family rule on the destination address blocks everything to api-1.
    fx.nft(&format!(
        "table bridge ngselftest {{\n chain filt {{ type filter hook forward priority 0; policy accept;\n  ip daddr {} drop\n  ip6 daddr {} drop\n }}\n}}\n",
        api1.ipv4, api1.ipv6
    ));
    let kinds = [Kind::Udp(5353), Kind::Icmp, Kind::Tcp(9005)];
    let mut probes = vec![];
    for k in kinds {
        for f in FAMILIES {
            probes.push(p(k, f));
        }
    }
    probes.push(Probe {
        from: "web-1".into(),
        to: "web-2".into(),
        kind: Kind::Icmp,
        family: Family::V6,
    });
    let got = run_probes(&fx, &probes, ProbeOpts::default());
    assert_eq!(got, vec![false, false, false, false, false, false, true]);
}

#[test]
fn fixture_records_spoofed_datagrams_and_cleans_up() {
    if !prerequisites("fixture_records_spoofed_datagrams_and_cleans_up") {
        return;
    }
    let prefix;
    {
        let fx = Fixture::new(&Topology::standard());
        prefix = fx.prefix.clone();
        let lonely = fx.container("lonely");
        let web1 = fx.container("web-1");
        let api1 = fx.container("api-1");
        fx.ip_in(
            "lonely",
            &["addr", "add", &format!("{}/32", web1.ipv4), "dev", "eth0"],
        );
        send_udp_from(
            lonely,
            web1.addr(false),
            api1.addr(false),
            5353,
            b"spoof-selftest",
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
        assert!(api1.got(b"spoof-selftest"));
        let d = api1.received.lock().unwrap().clone();
        assert!(d.iter().any(|d| d.from.ip() == web1.addr(false)), "{d:?}");
    }
    let list = run_cmd("ip", &["netns", "list"], None).unwrap();
    assert!(!list.contains(&prefix), "leaked namespaces: {list}");
}
