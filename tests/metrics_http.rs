//! The metrics endpoint: served on 127.0.0.1:0, scraped over real TCP, parsed as the
//! Prometheus text format.

use netguard::metrics::{BUCKETS, Metrics, MetricsServer};
use netguard::nft::LiveState;
use netguard::nft::live::parse_table;
use netguard::plan::ruleset::Family;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn get(addr: std::net::SocketAddr, path: &str) -> (String, String) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).await.unwrap();
    let (head, body) = resp.split_once("\r\n\r\n").unwrap();
    (head.to_string(), body.to_string())
}

/// `name{labels}` → value, checking every line is a comment or a sample, and that every
/// sample's family was announced with `# TYPE`.
fn parse(text: &str) -> BTreeMap<String, f64> {
    let mut types: BTreeMap<String, String> = BTreeMap::new();
    let mut samples = BTreeMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap();
            assert!(
                ["counter", "gauge", "histogram"].contains(&kind),
                "bad type in {line:?}"
            );
            types.insert(name.to_string(), kind.to_string());
            continue;
        }
        if line.starts_with("# HELP ") {
            continue;
        }
        assert!(
            !line.starts_with('#') && !line.is_empty(),
            "bad line {line:?}"
        );
        let (key, value) = line.rsplit_once(' ').unwrap();
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value {line:?}"));
        let name = key.split('{').next().unwrap();
        assert!(
            name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
            "bad name {line:?}"
        );
        if let Some(labels) = key.strip_prefix(name) {
            if !labels.is_empty() {
                assert!(labels.starts_with('{') && labels.ends_with('}'), "{line:?}");
            }
        }
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| {
                name.strip_suffix(s)
                    .filter(|b| types.get(*b).is_some_and(|t| t == "histogram"))
            })
            .unwrap_or(name);
        assert!(types.contains_key(family), "no # TYPE for {line:?}");
        samples.insert(key.to_string(), value);
    }
    samples
}

/// The live state of an nft JSON listing of `inet netguard`, with no bridge table.
fn inet_live(json: &str) -> LiveState {
    [
        (Family::Inet, Some(parse_table(json).unwrap())),
        (Family::Bridge, None),
    ]
    .into_iter()
    .collect()
}

fn live_with_deny_counters() -> LiveState {
    let json = r#"{"nftables": [
      {"table": {"family": "inet", "name": "netguard"}},
      {"chain": {"family": "inet", "table": "netguard", "name": "isolate"}},
      {"rule": {"family": "inet", "table": "netguard", "chain": "isolate",
        "comment": "denied web -> db [ng:0000000000000001]",
        "expr": [{"counter": {"packets": 5, "bytes": 300}}]}},
      {"rule": {"family": "inet", "table": "netguard", "chain": "isolate",
        "comment": "denied web -> db [ng:0000000000000002]",
        "expr": [{"counter": {"packets": 2, "bytes": 160}}]}},
      {"rule": {"family": "inet", "table": "netguard", "chain": "isolate",
        "comment": "allow web -> api 8080/tcp (p.toml:3) [ng:0000000000000003]",
        "expr": [{"counter": {"packets": 99, "bytes": 1}}, {"accept": null}]}},
      {"rule": {"family": "inet", "table": "netguard", "chain": "isolate",
        "comment": "default deny between managed containers [ng:0000000000000004]",
        "expr": [{"counter": {"packets": 11, "bytes": 700}}, {"drop": null}]}}
    ]}"#;
    inet_live(json)
}

#[tokio::test]
async fn scrape_and_parse() {
    let m = Arc::new(Metrics::new());
    m.reconciled(Duration::from_millis(3));
    m.reconciled(Duration::from_millis(40));
    m.event_enforced(Duration::from_micros(800));
    m.set_managed_containers(7);
    m.error("docker");
    m.error("docker");
    m.error("nft");
    m.set_denied_from_live(&live_with_deny_counters());

    let server = MetricsServer::bind("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let addr = server.local_addr().unwrap();
    let task = tokio::spawn(server.run(m.clone()));

    let (head, body) = get(addr, "/metrics").await;
    assert!(head.starts_with("HTTP/1.1 200 OK"), "{head}");
    assert!(head.contains("text/plain; version=0.0.4"), "{head}");
    let s = parse(&body);
    assert_eq!(s["netguard_reconciles_total"], 2.0);
    assert_eq!(s["netguard_reconcile_duration_seconds_count"], 2.0);
    assert!((s["netguard_reconcile_duration_seconds_sum"] - 0.043).abs() < 1e-9);
    assert_eq!(
        s["netguard_reconcile_duration_seconds_bucket{le=\"0.005\"}"],
        1.0
    );
    assert_eq!(
        s["netguard_reconcile_duration_seconds_bucket{le=\"0.05\"}"],
        2.0
    );
    assert_eq!(
        s["netguard_reconcile_duration_seconds_bucket{le=\"+Inf\"}"],
        2.0
    );
    assert_eq!(
        s["netguard_event_to_enforce_seconds_bucket{le=\"0.001\"}"],
        1.0
    );
    assert_eq!(s["netguard_managed_containers"], 7.0);
    assert_eq!(s["netguard_errors_total{kind=\"docker\"}"], 2.0);
    assert_eq!(s["netguard_errors_total{kind=\"nft\"}"], 1.0);
    assert_eq!(
        s["netguard_denied_packets_total{from_group=\"web\",to_group=\"db\"}"],
        7.0
    );
    assert_eq!(s["netguard_default_deny_packets_total"], 11.0);
    // Buckets are cumulative and complete.
    let buckets: Vec<f64> = BUCKETS
        .iter()
        .map(|b| s[&format!("netguard_reconcile_duration_seconds_bucket{{le=\"{b}\"}}")])
        .collect();
    assert!(buckets.windows(2).all(|w| w[0] <= w[1]));

    let (head, _) = get(addr, "/").await;
    assert!(head.starts_with("HTTP/1.1 404"), "{head}");
    let (head, _) = get(addr, "/metrics/x").await;
    assert!(head.starts_with("HTTP/1.1 404"), "{head}");
    task.abort();
}

/// The edges' counted drops become `netguard_denied_total{edge}`, one per edge with a drop
/// rule (summed over the chains that hold one), and nothing else in those chains counts.
#[test]
fn edge_denials_by_edge() {
    let json = r#"{"nftables": [
      {"table": {"family": "inet", "name": "netguard"}},
      {"chain": {"family": "inet", "table": "netguard", "name": "input"}},
      {"chain": {"family": "inet", "table": "netguard", "name": "egress"}},
      {"rule": {"family": "inet", "table": "netguard", "chain": "input",
        "comment": "allow monitoring -> host 9100/tcp (p.toml:9) [ng:0000000000000001]",
        "expr": [{"counter": {"packets": 50, "bytes": 3000}}, {"accept": null}]}},
      {"rule": {"family": "inet", "table": "netguard", "chain": "input",
        "comment": "edge deny host [ng:0000000000000002]",
        "expr": [{"counter": {"packets": 4, "bytes": 240}}, {"drop": null}]}},
      {"rule": {"family": "inet", "table": "netguard", "chain": "egress",
        "comment": "edge deny egress [ng:0000000000000003]",
        "expr": [{"counter": {"packets": 9, "bytes": 540}}, {"drop": null}]}},
      {"chain": {"family": "inet", "table": "netguard", "name": "ingress"}},
      {"chain": {"family": "inet", "table": "netguard", "name": "published_in"}},
      {"chain": {"family": "inet", "table": "netguard", "name": "published"}},
      {"rule": {"family": "inet", "table": "netguard", "chain": "ingress",
        "comment": "edge deny ingress [ng:0000000000000004]",
        "expr": [{"counter": {"packets": 2, "bytes": 120}}, {"drop": null}]}},
      {"rule": {"family": "inet", "table": "netguard", "chain": "published_in",
        "comment": "edge deny ingress [ng:0000000000000004]",
        "expr": [{"counter": {"packets": 3, "bytes": 180}}, {"drop": null}]}},
      {"rule": {"family": "inet", "table": "netguard", "chain": "published",
        "comment": "edge deny published [ng:0000000000000005]",
        "expr": [{"counter": {"packets": 7, "bytes": 420}}, {"drop": null}]}}
    ]}"#;
    let live: LiveState = inet_live(json);
    let m = Metrics::new();
    m.set_denied_from_live(&live);
    let s = parse(&m.render());
    assert_eq!(s["netguard_denied_total{edge=\"host\"}"], 4.0);
    assert_eq!(s["netguard_denied_total{edge=\"egress\"}"], 9.0);
    // The outside through DNAT (`ingress`) and through docker-proxy (`published_in`): one edge.
    assert_eq!(s["netguard_denied_total{edge=\"ingress\"}"], 5.0);
    assert_eq!(s["netguard_denied_total{edge=\"published\"}"], 7.0);
    let open = json.replace("edge deny ingress", "something else");
    let live: LiveState = inet_live(&open);
    let m = Metrics::new();
    m.set_denied_from_live(&live);
    assert!(!m.render().contains("edge=\"ingress\""));
    // Without edge chains (every edge open) the family is not exported at all.
    let m = Metrics::new();
    m.set_denied_from_live(&live_with_deny_counters());
    assert!(!m.render().contains("netguard_denied_total"));
}

/// The hold rule's counter (listed with the xtables target nft shows for it) becomes
/// `netguard_held_packets_total`; without a hold chain the family is absent.
#[test]
fn held_packets_from_the_hold_rule() {
    let json = r#"{"nftables": [
      {"table": {"family": "inet", "name": "netguard"}},
      {"chain": {"family": "inet", "table": "netguard", "name": "hold"}},
      {"rule": {"family": "inet", "table": "netguard", "chain": "hold",
        "comment": "both admitted, IPv4 [ng:0000000000000001]",
        "expr": [{"return": null}]}},
      {"rule": {"family": "inet", "table": "netguard", "chain": "hold",
        "comment": "held until admitted [ng:0000000000000002]",
        "expr": [{"limit": {"rate": 500, "burst": 500, "per": "second"}},
                 {"counter": {"packets": 6, "bytes": 360}},
                 {"xt": {"type": "target", "name": "NFQUEUE"}}]}}
    ]}"#;
    let live: LiveState = inet_live(json);
    let m = Metrics::new();
    m.set_denied_from_live(&live);
    let s = parse(&m.render());
    assert_eq!(s["netguard_held_packets_total"], 6.0);
    let m = Metrics::new();
    m.set_denied_from_live(&live_with_deny_counters());
    assert!(!m.render().contains("netguard_held_packets_total"));
}
