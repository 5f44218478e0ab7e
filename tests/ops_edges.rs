//! The operator outputs at the edges (explain, diff, graph, status) on a fixed inventory:
//! the host, the world, address blocks and published ports. No kernel: live tables are
//! built the way nft 1.0.6 lists them (as tests/ops_output.rs does).

use netguard::inventory::{Inventory, parse_inventory};
use netguard::nft::LiveState;
use netguard::nft::live::parse_table;
use netguard::nft::render::{rule_comment, statements};
use netguard::ops::access::View;
use netguard::ops::diff as ndiff;
use netguard::ops::edges::Published;
use netguard::ops::explain_edge::explain_any;
use netguard::ops::style::Style;
use netguard::plan::ruleset::{Family, Ruleset, Table};
use netguard::plan::{Plan, plan};
use netguard::policy::{Policy, parse_policy};
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::path::Path;

#[path = "common/nft_json.rs"]
mod nft_json;
use nft_json::set_json;

/// Every edge closed, one line of each kind open.
const CLOSED: &str = r#"[settings]
networks = ["shop-*"]
host = "deny"
egress = "deny"
ingress = "deny"

[groups.web]
match = { label = { role = "web" } }

[groups.api]
match = { name = "api-*" }

[groups.db]
match = { name = "db-*" }

[groups.monitoring]
match = { name = "prom*" }

[[allow]]
from = "web"
to = "db"
ports = ["5432/tcp"]

[[allow]]
from = "monitoring"
to = "host"
ports = ["9100/tcp"]

[[allow]]
from = "api"
to = ["203.0.113.0/24", "2001:db8:1::/48", "198.51.100.7"]
ports = ["443/tcp"]

[[allow]]
from = "world"
to = "web"
ports = ["443/tcp"]

[[allow]]
from = ["198.51.100.0/24"]
to = "db"
ports = ["5432/tcp"]
"#;

const INVENTORY: &str = r#"
[[container]]
name = "web-1"
labels = { role = "web" }
published = ["8443:443/tcp"]
[[container.endpoint]]
network = "shop-front"
bridge = "br-front"
veth = "veth-web1"
ipv4 = "10.10.0.11"
ipv6 = "fd10::11"
mac = "02:42:0a:0a:00:0b"

[[container]]
name = "db-1"
published = ["15432:5432/tcp"]
[[container.endpoint]]
network = "shop-front"
bridge = "br-front"
veth = "veth-db1"
ipv4 = "10.10.0.31"
ipv6 = "fd10::31"
mac = "02:42:0a:0a:00:1f"

[[container]]
name = "rogue-1"
[[container.endpoint]]
network = "shop-front"
bridge = "br-front"
veth = "veth-rogue1"
ipv4 = "10.10.0.66"
ipv6 = "fd10::66"
mac = "02:42:0a:0a:00:42"

[[container]]
name = "api-1"
[[container.endpoint]]
network = "shop-back"
bridge = "br-back"
veth = "veth-api1"
ipv4 = "10.20.0.21"
mac = "02:42:0a:14:00:15"

[[container]]
name = "prom-1"
[[container.endpoint]]
network = "shop-back"
bridge = "br-back"
veth = "veth-prom1"
ipv4 = "10.20.0.41"
mac = "02:42:0a:14:00:29"

[[container]]
name = "legacy"
published = ["8080:80/tcp"]
[[container.endpoint]]
network = "legacy"
bridge = "br-legacy"
veth = "veth-legacy"
ipv4 = "10.30.0.5"
mac = "02:42:0a:1e:00:05"
"#;

/// The same groups and lines with every edge at its default (open).
fn open_policy() -> String {
    CLOSED
        .replace("host = \"deny\"\n", "")
        .replace("egress = \"deny\"\n", "")
        .replace("ingress = \"deny\"\n", "")
}

fn policy(text: &str) -> Policy {
    parse_policy(Path::new("edges.toml"), text).unwrap_or_else(|e| panic!("{e}"))
}

fn inventory() -> Inventory {
    let mut inv = parse_inventory(Path::new("inventory.toml"), INVENTORY).unwrap();
    inv.normalize();
    inv
}

fn setup(text: &str) -> (Policy, Inventory, Plan) {
    let p = policy(text);
    let inv = inventory();
    let pl = plan(&p, &inv);
    (p, inv, pl)
}

/// A listing of `t` with the rules' real statements, as tests/ops_output.rs builds it.
fn listing(t: &Table) -> String {
    let fam = t.family.as_str();
    let mut o = vec![json!({"table": {"family": fam, "name": "netguard", "handle": 1}})];
    for s in &t.sets {
        o.push(json!({ "set": set_json(fam, s, None) }));
    }
    for c in &t.chains {
        let mut ch = json!({"family": fam, "table": "netguard", "name": c.name});
        if let Some(b) = c.base {
            ch["hook"] = serde_json::to_value(b.hook).unwrap();
            ch["prio"] = json!(b.priority);
        }
        o.push(json!({ "chain": ch }));
        for r in &c.rules {
            let mut expr = serde_json::to_value(statements(r)).unwrap();
            for st in expr.as_array_mut().unwrap() {
                if st.get("counter").is_some() {
                    *st = json!({"counter": {"packets": 3, "bytes": 180}});
                }
            }
            o.push(
                json!({"rule": {"family": fam, "table": "netguard", "chain": c.name,
                "comment": rule_comment(r), "expr": expr}}),
            );
        }
    }
    serde_json::to_string(&json!({ "nftables": o })).unwrap()
}

fn live_of(rs: &Ruleset) -> LiveState {
    [Family::Inet, Family::Bridge]
        .into_iter()
        .map(|f| (f, rs.table(f).map(|t| parse_table(&listing(t)).unwrap())))
        .collect()
}

fn explain(text: &str, from: &str, to: &str, port: Option<&str>) -> (String, Value, bool) {
    let (p, inv, pl) = setup(text);
    let x = explain_any(&p, &pl, &inv, from, to, port).unwrap_or_else(|e| panic!("{e}"));
    (x.render(Style::plain()), x.json(), x.allowed())
}

#[test]
fn explain_a_pair_names_the_published_ports_with_the_same_verdict() {
    let (text, json, allowed) = explain(CLOSED, "rogue-1", "db-1", Some("5432/tcp"));
    assert!(!allowed, "{text}");
    assert!(
        text.contains("also through published 15432/tcp: the same verdict"),
        "{text}"
    );
    assert_eq!(
        json["published"],
        json!([{"published": "15432/tcp", "container_port": 5432, "judged_as": "container"}])
    );
    let (text, _, allowed) = explain(CLOSED, "web-1", "db-1", Some("5432/tcp"));
    assert!(
        allowed && text.contains("also through published 15432/tcp"),
        "{text}"
    );
    // Another port of db-1 is published by no mapping: nothing listed.
    let (text, json, _) = explain(CLOSED, "web-1", "db-1", Some("22/tcp"));
    assert!(
        !text.contains("published") && json.get("published").is_none(),
        "{text}"
    );
    // From another network: no direct path, but the published port is db-1.
    let (text, _, allowed) = explain(CLOSED, "api-1", "db-1", Some("5432/tcp"));
    assert!(!allowed, "{text}");
    assert!(
        text.contains(
            "api-1 and db-1 share no network; through published 15432/tcp it is judged as a \
             direct connection: default deny"
        ),
        "{text}"
    );
}

#[test]
fn explain_to_the_host() {
    let (text, json, allowed) = explain(CLOSED, "prom-1", "host", Some("9100/tcp"));
    assert!(allowed, "{text}");
    assert_eq!(json["decided_by"], json!(["edges.toml:24"]));
    assert_eq!(json["edge"], "host");
    insta::assert_snapshot!("explain_host_allowed_text", text);
    insta::assert_json_snapshot!("explain_host_allowed_json", json);
    let (text, json, allowed) = explain(CLOSED, "api-1", "host", Some("9100/tcp"));
    assert!(!allowed, "{text}");
    assert_eq!(json["decided_by"], json!(["host = \"deny\""]));
    assert!(
        text.starts_with(
            "api-1 → host 9100/tcp: DENIED\n  host = \"deny\": no allow line to \"host\" permits it\n"
        ),
        "{text}"
    );
    let (text, json, allowed) = explain(CLOSED, "prom-1", "host", Some("22/tcp"));
    assert!(!allowed, "{text}");
    assert!(
        text.contains("hint: monitoring → host 9100/tcp allows 9100/tcp, not 22/tcp"),
        "{text}"
    );
    assert_eq!(json["setting"], "host = \"deny\"");
    // Open by default: the setting decides.
    let (text, json, allowed) = explain(&open_policy(), "api-1", "host", Some("9100/tcp"));
    assert!(allowed, "{text}");
    assert_eq!(json["decided_by"], json!(["host = \"allow\""]));
    assert!(text.contains("host = \"allow\" (the default)"), "{text}");
}

#[test]
fn explain_a_published_port_on_the_host_is_its_container() {
    let (text, json, allowed) = explain(&open_policy(), "rogue-1", "host", Some("15432/tcp"));
    assert!(!allowed, "{text}");
    assert_eq!(json["edge"], "published");
    assert!(
        text.contains(
            "15432/tcp on this host is db-1's published port (15432:5432/tcp): judged as \
             rogue-1 → db-1 5432/tcp: default deny"
        ),
        "{text}"
    );
    let (_, json, allowed) = explain(&open_policy(), "web-1", "host", Some("15432/tcp"));
    assert!(allowed);
    assert_eq!(json["decided_by"], json!(["edges.toml:16"]));
    // The published port of a container on no managed network is the host's.
    let (text, json, allowed) = explain(CLOSED, "rogue-1", "host", Some("8080/tcp"));
    assert!(!allowed, "{text}");
    assert_eq!(json["edge"], "host");
    assert_eq!(json["decided_by"], json!(["host = \"deny\""]));
    let (_, _, allowed) = explain(&open_policy(), "rogue-1", "host", Some("8080/tcp"));
    assert!(allowed);
}

#[test]
fn explain_egress_to_an_address() {
    let (text, json, allowed) = explain(CLOSED, "api-1", "203.0.113.5", Some("443/tcp"));
    assert!(allowed, "{text}");
    assert_eq!(json["decided_by"], json!(["edges.toml:29"]));
    assert_eq!(
        json["to"],
        json!({"kind": "address", "name": "203.0.113.5"})
    );
    insta::assert_snapshot!("explain_egress_allowed_text", text);
    let (text, json, allowed) = explain(CLOSED, "api-1", "192.0.2.99", Some("443/tcp"));
    assert!(!allowed, "{text}");
    assert_eq!(json["decided_by"], json!(["egress = \"deny\""]));
    let (_, _, allowed) = explain(CLOSED, "api-1", "2001:db8:1::7", Some("443/tcp"));
    assert!(allowed);
    let (text, _, allowed) = explain(CLOSED, "api-1", "world", Some("443/tcp"));
    assert!(!allowed, "{text}");
    assert!(
        text.contains(
            "hint: api-1 may open 443/tcp to 203.0.113.0/24, 2001:db8:1::/48, 198.51.100.7 only"
        ),
        "{text}"
    );
    // A container not admitted reaches nothing beyond its network (fail closed).
    let (_, json, allowed) = explain(CLOSED, "web-1", "203.0.113.5", Some("443/tcp"));
    assert!(!allowed);
    assert_eq!(json["decided_by"], json!(["egress = \"deny\""]));
    // An address a container has is that container.
    let (_, json, _) = explain(CLOSED, "rogue-1", "10.10.0.31", Some("5432/tcp"));
    assert_eq!(json["to"]["name"], "db-1");
    assert!(json.get("edge").is_none(), "{json}");
    let (_, json, allowed) = explain(&open_policy(), "api-1", "192.0.2.99", Some("443/tcp"));
    assert!(allowed);
    assert_eq!(json["decided_by"], json!(["egress = \"allow\""]));
}

#[test]
fn explain_ingress_from_the_world_and_from_an_address() {
    let (text, json, allowed) = explain(CLOSED, "world", "web-1", Some("443/tcp"));
    assert!(allowed, "{text}");
    assert_eq!(json["decided_by"], json!(["edges.toml:34"]));
    assert!(text.contains("through published 8443/tcp"), "{text}");
    insta::assert_snapshot!("explain_ingress_allowed_text", text);
    insta::assert_json_snapshot!("explain_ingress_allowed_json", json);
    let (text, _, allowed) = explain(CLOSED, "198.51.100.7", "web-1", Some("443/tcp"));
    assert!(allowed, "{text}");
    let (text, json, allowed) = explain(CLOSED, "198.51.100.7", "db-1", Some("5432/tcp"));
    assert!(allowed, "{text}");
    assert_eq!(json["decided_by"], json!(["edges.toml:39"]));
    let (text, json, allowed) = explain(CLOSED, "192.0.2.1", "db-1", Some("5432/tcp"));
    assert!(!allowed, "{text}");
    assert_eq!(json["decided_by"], json!(["ingress = \"deny\""]));
    let (text, _, allowed) = explain(CLOSED, "world", "db-1", Some("5432/tcp"));
    assert!(!allowed, "{text}");
    assert!(
        text.contains("hint: db-1 is open to 198.51.100.0/24 only (edges.toml:39)"),
        "{text}"
    );
    let (text, _, allowed) = explain(CLOSED, "host", "db-1", Some("5432/tcp"));
    assert!(allowed && text.contains("never filtered"), "{text}");
    let (p, inv, pl) = setup(CLOSED);
    let e = explain_any(&p, &pl, &inv, "world", "host", None).unwrap_err();
    assert!(
        e.to_string().contains("one side must be a container"),
        "{e}"
    );
}

fn impact_text(before: &View, after: &View, pl: &Plan) -> (String, ndiff::Impact) {
    let impact = ndiff::impact_between(pl, before, after);
    (ndiff::render_flows(&impact, Style::plain()), impact)
}

#[test]
fn diff_closing_the_edges_lists_what_each_container_loses() {
    let (_, _, open) = setup(&open_policy());
    let (_, _, closed) = setup(CLOSED);
    let live = live_of(&open.ruleset);
    let impact = ndiff::impact(&closed, &live, &BTreeSet::new());
    let text = ndiff::render_flows(&impact, Style::plain());
    insta::assert_snapshot!("diff_edges_closed_text", text);
    assert!(
        text.contains("  - prom-1 → host  all except 9100/tcp  (IPv4 only)  (host = \"deny\")")
            || text.contains("  - prom-1 → host  all except 9100/tcp  (host = \"deny\")"),
        "{text}"
    );
    assert!(
        text.contains("  - api-1 → world  all  (egress = \"deny\")"),
        "{text}"
    );
    assert!(
        text.contains("  - api-1 → 203.0.113.0/24  all except 443/tcp  (egress = \"deny\")"),
        "{text}"
    );
    assert!(
        text.contains("  - world → web-1  all except 443/tcp  (ingress = \"deny\")"),
        "{text}"
    );
    let j = ndiff::json(&impact, &netguard::nft::diff(&closed.ruleset, &live), &[]);
    let denied = j["denied"].as_array().unwrap();
    assert!(denied.iter().any(|d| d["edge"] == "host"
        && d["from"] == "prom-1"
        && d["setting"] == "host = \"deny\""));
    // Back again: everything reopens, under the setting.
    let back = ndiff::impact(&open, &live_of(&closed.ruleset), &BTreeSet::new());
    let text = ndiff::render_flows(&back, Style::plain());
    assert!(
        text.contains("  + prom-1 → host  all except 9100/tcp  (host = \"allow\")"),
        "{text}"
    );
    assert!(back.denied.is_empty(), "{text}");
    // In sync: the live edges read back as the desired ones.
    let same = ndiff::impact(&closed, &live_of(&closed.ruleset), &BTreeSet::new());
    assert!(
        same.allowed.is_empty() && same.denied.is_empty(),
        "{same:?}"
    );
    assert!(
        same.unreadable_live_rules.is_empty(),
        "{:?}",
        same.unreadable_live_rules
    );
}

#[test]
fn diff_an_edge_line_added_and_removed() {
    let (_, _, closed) = setup(CLOSED);
    let fewer = CLOSED.replace(
        "to = [\"203.0.113.0/24\", \"2001:db8:1::/48\", \"198.51.100.7\"]",
        "to = [\"203.0.113.0/24\"]",
    );
    assert_ne!(fewer, CLOSED);
    let (_, _, fewer) = setup(&fewer);
    let impact = ndiff::impact(&fewer, &live_of(&closed.ruleset), &BTreeSet::new());
    let text = ndiff::render_flows(&impact, Style::plain());
    assert!(
        text.contains("  - api-1 → 198.51.100.7  443/tcp  (egress = \"deny\")"),
        "{text}"
    );
    assert!(impact.allowed.is_empty(), "{text}");
    // api-1 has no IPv6 address: the IPv6 block changes nothing for it.
    assert!(!text.contains("2001:db8:1::/48"), "{text}");
    let impact = ndiff::impact(&closed, &live_of(&fewer.ruleset), &BTreeSet::new());
    let text = ndiff::render_flows(&impact, Style::plain());
    assert!(
        text.contains("  + api-1 → 198.51.100.7  443/tcp\n"),
        "{text}"
    );
    assert!(impact.denied.is_empty(), "{text}");
}

/// A table that judges db-1's published port as db-1 (the plan's published sets) against
/// one that does not (a host where published ports were the host's): exactly the
/// containers the pair lines deny db-1 on 5432/tcp lose their path to it.
#[test]
fn diff_shows_exactly_the_published_paths_it_cuts() {
    let (_, _, open) = setup(&open_policy());
    // A live table from before published mappings were judged as their container: the
    // same objects without the published sets' elements.
    let mut before = View::from_live(&live_of(&open.ruleset));
    before.published.clear();
    let mut after = View::from_ruleset(&open.ruleset);
    for (port, proto) in [(15432, "tcp"), (8443, "tcp")] {
        after.published.insert(Published {
            addr: None,
            proto: proto.into(),
            port,
        });
    }
    let (text, impact) = impact_text(&before, &after, &open);
    insta::assert_snapshot!("diff_published_cut_text", text);
    let cut: Vec<String> = impact
        .denied
        .iter()
        .map(|f| format!("{} -> {} {}", f.from, f.to, f.services.join(",")))
        .collect();
    assert_eq!(
        cut,
        [
            "api-1 -> db-1 15432/tcp",
            "api-1 -> web-1 8443/tcp",
            "db-1 -> web-1 8443/tcp",
            "prom-1 -> db-1 15432/tcp",
            "prom-1 -> web-1 8443/tcp",
            "rogue-1 -> db-1 15432/tcp",
            "rogue-1 -> web-1 8443/tcp",
            "web-1 -> web-1 8443/tcp",
        ]
        .iter()
        .filter(|s| !s.starts_with("web-1 -> web-1"))
        .map(|s| s.to_string())
        .collect::<Vec<_>>(),
        "{text}"
    );
    assert!(
        text.contains("  - rogue-1 → db-1 via published 15432/tcp\n"),
        "{text}"
    );
    assert!(impact.allowed.is_empty(), "{text}");
    // web-1 may open 5432/tcp to db-1: its path through 15432 stays, so it is not listed.
    assert!(!text.contains("web-1 → db-1"), "{text}");
    let j = ndiff::json(
        &impact,
        &netguard::nft::diff(&open.ruleset, &live_of(&open.ruleset)),
        &[],
    );
    assert!(
        j["denied"]
            .as_array()
            .unwrap()
            .iter()
            .any(|d| d["edge"] == "published"
                && d["from"] == "rogue-1"
                && d["services"] == json!(["15432/tcp"])),
        "{j}"
    );
    // Nothing changes when both judge it the same way.
    let (_, impact) = impact_text(&after, &after, &open);
    assert!(impact.denied.is_empty() && impact.allowed.is_empty());
}

#[test]
fn graph_draws_the_closed_edges() {
    let (_, _, closed) = setup(CLOSED);
    let dot = netguard::ops::graph::dot(&closed);
    insta::assert_snapshot!("graph_edges_dot", dot);
    for line in [
        "  \"@host\" [label=\"this host\", shape=house];",
        "  \"prom-1\" -> \"@host\" [label=\"9100/tcp\", style=dashed];",
        "  \"api-1\" -> \"@203.0.113.0/24\" [label=\"443/tcp\", style=dashed];",
        "  \"@world\" -> \"web-1\" [label=\"443/tcp\", style=dashed];",
        "  \"@198.51.100.0/24\" -> \"db-1\" [label=\"5432/tcp\", style=dashed];",
    ] {
        assert!(dot.contains(line), "{line} missing:\n{dot}");
    }
    // Containers that may open nothing there get no edge to it.
    assert!(!dot.contains("\"rogue-1\" -> \"@"), "{dot}");
    // Open edges (the default) are not drawn.
    let (_, _, open) = setup(&open_policy());
    assert!(!netguard::ops::graph::dot(&open).contains("\"@"));
}

#[test]
fn status_counts_the_denials_at_each_closed_edge() {
    let (_, _, closed) = setup(CLOSED);
    let live = live_of(&closed.ruleset);
    let counters = netguard::ops::status::counters(&live);
    let denied = netguard::ops::status::edge_denied(&counters);
    // The listing gives every counter 3 packets: an edge sums every rule that is one of
    // its drops, whatever its chain.
    let drops = |edge: &str| {
        counters
            .iter()
            .filter(|c| c.rule == format!("edge deny {edge}"))
            .count() as u64
    };
    assert!(drops("host") >= 1 && drops("egress") >= 1 && drops("ingress") >= 1);
    let got: Vec<(&str, u64)> = denied
        .iter()
        .map(|e| (e.edge.as_str(), e.packets))
        .collect();
    assert_eq!(
        got[..3],
        [
            ("host", 3 * drops("host")),
            ("egress", 3 * drops("egress")),
            ("ingress", 3 * drops("ingress"))
        ]
    );
    let health = netguard::ops::status::health(
        &live,
        Some(&closed),
        Some((true, true)),
        vec![],
        netguard::ops::status::SourceHealth::reachable("inventory file"),
        netguard::ops::status::daemon_health(Path::new("/nonexistent/edgeops-state.json")),
    );
    let text = netguard::ops::status::render(&health, Some(&closed), &counters, Style::plain());
    let section: Vec<&str> = text
        .lines()
        .skip_while(|l| !l.starts_with("denied at the edges"))
        .take_while(|l| !l.is_empty())
        .collect();
    assert_eq!(
        section[..3],
        [
            "denied at the edges (new connections dropped: packets, bytes):",
            "  host                3          180",
            "  egress              3          180",
        ],
        "{text}"
    );
    assert!(section[3].starts_with("  ingress "), "{text}");
    // Published ports stay listed per container.
    assert!(text.contains("      published 15432:5432/tcp\n"), "{text}");
    let j = netguard::ops::status::json(&health, Some(&closed), &counters);
    assert_eq!(
        j["edge_denied"][0],
        json!({"edge": "host", "packets": 3, "bytes": 180})
    );
    // Open edges have no final drop: nothing to count, nothing listed.
    let (_, _, open) = setup(&open_policy());
    let counters = netguard::ops::status::counters(&live_of(&open.ruleset));
    assert!(
        netguard::ops::status::edge_denied(&counters)
            .iter()
            .all(|e| !["host", "egress", "ingress"].contains(&e.edge.as_str()))
    );
}

/// A published port of a managed container netguard does not admit is still that container
/// (the kernel keeps its mapping in the catch-all published sets and in no line's): denied,
/// fail closed, whatever the host setting; `tests/netns_edges.rs` proves the kernel side.
#[test]
fn explain_a_published_port_of_a_managed_container_not_admitted_is_that_container() {
    let p = policy(CLOSED);
    let text = INVENTORY.replacen("veth = \"veth-db1\"\n", "", 1);
    assert_ne!(text, INVENTORY);
    let mut inv = parse_inventory(Path::new("inventory.toml"), &text).unwrap();
    inv.normalize();
    let pl = plan(&p, &inv);
    let x = explain_any(&p, &pl, &inv, "web-1", "db-1", Some("5432/tcp")).unwrap();
    let (text, json) = (x.render(Style::plain()), x.json());
    assert!(!x.allowed(), "{text}");
    assert_eq!(
        json["published"],
        json!([{"published": "15432/tcp", "container_port": 5432, "judged_as": "container"}])
    );
    assert!(!text.contains("counts as this host"), "{text}");
    let x = explain_any(&p, &pl, &inv, "web-1", "host", Some("15432/tcp")).unwrap();
    let (text, json) = (x.render(Style::plain()), x.json());
    assert!(!x.allowed(), "{text}");
    assert_ne!(json["edge"], "host", "{json}");
    assert!(text.contains("db-1"), "{text}");
}
