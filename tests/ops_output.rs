//! The operator outputs (diff, explain, graph, status, log) as text and JSON on fixed
//! inventories, snapshot-tested (insta). No kernel needed: live tables are built the way
//! nft 1.0.6 lists them.

use netguard::bridge::Blind;
use netguard::inventory::{Inventory, parse_inventory};
use netguard::nft::live::parse_table;
use netguard::nft::render::{rule_comment, statements};
use netguard::nft::{LiveState, diff};
use netguard::ops::style::Style;
use netguard::ops::{diff as ndiff, explain, graph, klog, status};
use netguard::plan::ruleset::{Family, Ruleset, Table};
use netguard::plan::{Plan, plan};
use netguard::policy::{Policy, parse_policy};
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::path::Path;

#[path = "common/nft_json.rs"]
mod nft_json;
use nft_json::set_json;

const POLICY: &str = include_str!("../policy.example.toml");
const INVENTORY: &str = include_str!("../docs/example-inventory.toml");

fn policy(text: &str) -> Policy {
    parse_policy(Path::new("policy.example.toml"), text).unwrap_or_else(|e| panic!("{e}"))
}

fn inventory(text: &str) -> Inventory {
    let mut inv = parse_inventory(Path::new("inventory.toml"), text).unwrap();
    inv.normalize();
    inv
}

fn setup() -> (Policy, Inventory, Plan) {
    let p = policy(POLICY);
    let inv = inventory(INVENTORY);
    let pl = plan(&p, &inv);
    (p, inv, pl)
}

/// A listing of `t` with the rules' real statements (as netguard sends them; nft's own
/// rewriting, e.g. `meta l4proto tcp th dport` → `tcp dport`, is covered by the netns tests).
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
                    *st = json!({"counter": {"packets": 7, "bytes": 420}});
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

fn no_tables() -> LiveState {
    [(Family::Inet, None), (Family::Bridge, None)]
        .into_iter()
        .collect()
}

fn diff_text(pl: &Plan, live: &LiveState) -> String {
    let changes = diff(&pl.ruleset, live);
    let impact = ndiff::impact(pl, live, &BTreeSet::new());
    ndiff::render(
        &impact,
        &netguard::ops::diff::render_changes(pl, &changes),
        changes.is_empty(),
        Style::plain(),
    )
}

#[test]
fn diff_first_rollout_shows_what_is_cut() {
    let (_, _, pl) = setup();
    let live = no_tables();
    let text = diff_text(&pl, &live);
    let head: String = text
        .split("\nnftables objects:")
        .next()
        .unwrap()
        .to_string();
    insta::assert_snapshot!("diff_first_rollout_text", head);
    let summary = text.lines().last().unwrap();
    assert!(
        summary.starts_with("2 tables to create, ")
            && summary.contains(" rules to add")
            && summary.contains(" elements to add")
            && !summary.contains("rewrite"),
        "{summary}"
    );
    let impact = ndiff::impact(&pl, &live, &BTreeSet::new());
    let mut j = ndiff::json(&impact, &diff(&pl.ruleset, &live), &pl.warnings);
    // The nft objects of a first rollout are the whole ruleset, pinned by plan_snapshots.
    assert_eq!(j["changes"]["tables"][0]["create_table"], true);
    j["changes"] = json!("(the whole ruleset)");
    insta::assert_json_snapshot!("diff_first_rollout_json", j);
    assert!(impact.first_rollout);
    // Every same-network pair is open today: what the policy allows is not "new".
    assert!(impact.allowed.is_empty(), "{:?}", impact.allowed);
    assert!(
        impact
            .denied
            .iter()
            .any(|f| f.from == "web-1" && f.to == "web-2" && f.services == ["all"])
    );
    assert!(
        impact
            .denied
            .iter()
            .any(|f| f.from == "web-1" && f.to == "api-1" && f.services == ["all except 8080/tcp"])
    );
    // The unmanaged network is untouched.
    assert!(
        !impact
            .denied
            .iter()
            .any(|f| f.from == "legacy-app" || f.to == "legacy-app")
    );
}

#[test]
fn diff_in_sync() {
    let (_, _, pl) = setup();
    let live = live_of(&pl.ruleset);
    assert_eq!(diff_text(&pl, &live), "in sync: no changes\n");
    let impact = ndiff::impact(&pl, &live, &BTreeSet::new());
    assert!(impact.allowed.is_empty() && impact.denied.is_empty() && impact.groups.is_empty());
}

#[test]
fn diff_pending_changes_text_and_json() {
    let (_, inv, before) = setup();
    let live = live_of(&before.ruleset);
    // Policy change: web may also reach api on 8081 and ping it; redis leaves `cache`
    // (now redis:6), api may no longer reach the cache.
    let new_policy = POLICY
        .replace(
            "ports = [\"8080/tcp\"]",
            "ports = [\"8080-8081/tcp\", \"icmp\"]",
        )
        .replace("to = [\"db\", \"cache\"]", "to = \"db\"");
    let p = policy(&new_policy);
    let mut inv = inv.clone();
    for c in &mut inv.containers {
        if c.name == "redis" {
            c.image = "redis:6".into();
        }
    }
    let after = plan(&p, &inv);
    let changes = diff(&after.ruleset, &live);
    let impact = ndiff::impact(&after, &live, &BTreeSet::new());
    let text = diff_text(&after, &live);
    insta::assert_snapshot!("diff_pending_text", text);
    insta::assert_json_snapshot!(
        "diff_pending_json",
        ndiff::json(&impact, &changes, &after.warnings)
    );
}

#[test]
fn diff_colour_only_when_asked() {
    let (_, _, pl) = setup();
    let live = no_tables();
    let changes = diff(&pl.ruleset, &live);
    let impact = ndiff::impact(&pl, &live, &BTreeSet::new());
    let coloured = ndiff::render(&impact, "", false, Style { color: true });
    assert!(coloured.contains("\x1b[31m-\x1b[0m"));
    let plain = ndiff::render(&impact, "", changes.is_empty(), Style::plain());
    assert!(!plain.contains('\x1b'));
}

fn explain_text(from: &str, to: &str, port: Option<&str>) -> (String, Value) {
    let (p, inv, pl) = setup();
    let x = explain::explain(&p, &pl, &inv, from, to, port).unwrap();
    (explain::render(&x, Style::plain()), explain::json(&x))
}

#[test]
fn explain_near_miss_port() {
    let (text, json) = explain_text("web-1", "api-1", Some("8081/tcp"));
    insta::assert_snapshot!("explain_port_miss_text", text);
    insta::assert_json_snapshot!("explain_port_miss_json", json);
    assert_eq!(json["allowed"], false);
}

#[test]
fn explain_wrong_direction() {
    let (text, json) = explain_text("api-1", "web-1", Some("8080/tcp"));
    assert!(
        text.contains("hint: api-1→web-1 is denied but web-1→api-1 is allowed on 8080/tcp"),
        "{text}"
    );
    assert_eq!(json["allowed"], false);
}

#[test]
fn explain_allowed_and_unmanaged_and_no_port() {
    let (text, json) = explain_text("prometheus", "mailer", Some("9100/tcp"));
    assert_eq!(json["allowed"], true);
    assert_eq!(json["decided_by"], json!(["policy.example.toml:91"]));
    assert!(
        text.starts_with("prometheus → mailer 9100/tcp: ALLOWED\n"),
        "{text}"
    );
    let (text, json) = explain_text("shop_api_2", "api-1", None);
    assert_eq!(json["allowed"], true);
    assert_eq!(json["services"], json!(["7000-7010/udp", "icmp"]));
    insta::assert_snapshot!("explain_no_port_text", text);
    insta::assert_json_snapshot!("explain_no_port_json", json);
    // No common network.
    let (_, json) = explain_text("web-1", "pg-primary", None);
    assert_eq!(json["allowed"], false);
}

#[test]
fn explain_bad_input() {
    let (p, inv, pl) = setup();
    let e = explain::explain(&p, &pl, &inv, "wbe-1", "api-1", None).unwrap_err();
    assert_eq!(
        e.to_string(),
        "no container \"wbe-1\" (did you mean web-1, web-2?)"
    );
    let e = explain::explain(&p, &pl, &inv, "web-1", "api-1", Some("80-90/tcp")).unwrap_err();
    assert!(e.to_string().contains("port range"), "{e}");
    let e = explain::explain(&p, &pl, &inv, "web-1", "api-1", Some("http")).unwrap_err();
    assert!(e.to_string().starts_with("bad PORT/PROTO \"http\""), "{e}");
    // tcp/8080 is accepted as well as 8080/tcp.
    let x = explain::explain(&p, &pl, &inv, "web-1", "api-1", Some("tcp/8080")).unwrap();
    assert!(x.allowed);
}

#[test]
fn graph_dot() {
    let (_, _, pl) = setup();
    insta::assert_snapshot!("graph_example_dot", graph::dot(&pl));
}

/// docs/example-graph.dot is the DOT the README's picture was rendered from.
#[test]
fn graph_example_in_docs_is_current() {
    let (_, _, pl) = setup();
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/example-graph.dot");
    let dot = graph::dot(&pl);
    if std::env::var("NETGUARD_REGEN_DOCS").is_ok_and(|v| v == "1") {
        std::fs::write(&path, &dot).unwrap();
    }
    let on_disk = std::fs::read_to_string(&path).unwrap_or_default();
    assert_eq!(
        on_disk, dot,
        "docs/example-graph.dot is stale: rerun with NETGUARD_REGEN_DOCS=1 (and re-render the SVG)"
    );
}

#[test]
fn status_text_and_json() {
    let (_, _, pl) = setup();
    let live = live_of(&pl.ruleset);
    let health = status::Health {
        inet_table: true,
        bridge_table: true,
        current: Some(true),
        global_bridge_nf: Some((false, false)),
        bridges: vec![
            status::BridgeHealth {
                bridge: "br-back".into(),
                nf_call: Some(netguard::bridge::NfCall {
                    iptables: true,
                    ip6tables: true,
                }),
                seen: true,
            },
            status::BridgeHealth {
                bridge: "br-front".into(),
                nf_call: Some(netguard::bridge::NfCall {
                    iptables: false,
                    ip6tables: false,
                }),
                seen: false,
            },
        ],
        source: status::SourceHealth {
            kind: "inventory file".into(),
            reachable: true,
            error: None,
        },
        daemon: status::DaemonHealth {
            state_file: "/run/netguard/state.json".into(),
            state: None,
            running: false,
            error: None,
        },
        audit: None,
    };
    assert!(!health.ok(), "br-front is not filtered");
    let counters: Vec<_> = status::counters(&live)
        .into_iter()
        .filter(|c| {
            (c.chain == "isolate" || c.chain.starts_with("from_"))
                && (!c.rule.starts_with("denied ") || c.rule == "denied web -> api")
        })
        .collect();
    insta::assert_snapshot!(
        "status_text",
        status::render(&health, Some(&pl), &counters, Style::plain())
    );
    let j = status::json(&health, None, &counters[..2]);
    insta::assert_json_snapshot!("status_json_health", j);
}

#[test]
fn daemon_state_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.json");
    let h = status::daemon_health(&path);
    assert!(h.state.is_none() && !h.running && h.error.is_none());
    std::fs::write(
        &path,
        format!(
            r#"{{"pid": {}, "last_reconcile_unix_ms": 1764365000000, "last_error": null}}"#,
            std::process::id()
        ),
    )
    .unwrap();
    let h = status::daemon_health(&path);
    assert_eq!(h.state.as_ref().unwrap().pid, std::process::id());
    // This test process is not called netguard: not the daemon.
    assert!(!h.running);
    std::fs::write(&path, "{").unwrap();
    assert!(status::daemon_health(&path).error.is_some());
}

#[test]
fn log_lines_resolved_to_containers() {
    let (_, _, pl) = setup();
    let text = "\
Nov 28 21:50:01 host kernel: [ 812.1] netguard-deny IN=br-front OUT=br-front PHYSIN=veth-web1 PHYSOUT=veth-web2 MAC=aa SRC=10.10.0.11 DST=10.10.0.12 LEN=60 TOS=0x00 PREC=0x00 TTL=64 ID=1 DF PROTO=TCP SPT=40000 DPT=22 WINDOW=64240 RES=0x00 SYN URGP=0
Nov 28 21:50:02 host kernel: unrelated line
Nov 28 21:50:03 host kernel: [ 813.0] netguard-deny IN=br-back OUT=br-back PHYSIN=veth-mail PHYSOUT=veth-pg1 MAC=aa SRC=fd20::60 DST=fd20::31 LEN=80 TC=0 HOPLIMIT=64 FLOWLBL=1 PROTO=ICMPv6 TYPE=128 CODE=0 ID=1 SEQ=1
Nov 28 21:50:04 host kernel: [ 814.0] netguard-deny IN=br-back OUT=br-back SRC=10.20.0.200 DST=10.20.0.31 LEN=60 PROTO=UDP SPT=1 DPT=53 LEN=40
";
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("kern.log");
    std::fs::write(&f, text).unwrap();
    let mut ds = klog::read_file(&f).unwrap();
    for d in &mut ds {
        klog::resolve(d, &pl);
    }
    insta::assert_snapshot!("log_text", klog::render(&ds, true, Style::plain()));
    insta::assert_json_snapshot!("log_json", klog::json(&ds, true));
}

#[test]
fn diff_single_family_pairs_are_not_flagged_as_partial() {
    let p = policy("[groups.web]\nmatch = { name = \"web*\" }\n");
    let inv = inventory(
        r#"
[[container]]
name = "web-1"
[[container.endpoint]]
network = "n"
bridge = "br0"
veth = "v1"
ipv4 = "10.0.0.1"
ipv6 = "fd00::1"

[[container]]
name = "api-1"
[[container.endpoint]]
network = "n"
bridge = "br0"
veth = "v2"
ipv4 = "10.0.0.2"

[[container]]
name = "web-2"
[[container.endpoint]]
network = "n"
bridge = "br0"
veth = "v3"
ipv4 = "10.0.0.3"
ipv6 = "fd00::3"
"#,
    );
    let pl = plan(&p, &inv);
    let text = diff_text(&pl, &no_tables());
    assert!(text.contains("  - web-1 → api-1  all\n"), "{text}");
    assert!(text.contains("  - web-1 → web-2  all\n"), "{text}");
    let impact = ndiff::impact(&pl, &no_tables(), &BTreeSet::new());
    let f = impact
        .denied
        .iter()
        .find(|f| f.from == "web-1" && f.to == "api-1")
        .unwrap();
    assert_eq!(f.family, "ipv4");
}

/// The example inventory plus containers Docker reports but netguard cannot confine.
fn setup_with_unisolable() -> Plan {
    let p = policy(POLICY);
    let mut inv = inventory(INVENTORY);
    for (id, name, reason) in [
        (
            "5e1f00000000",
            "node-exporter",
            "--network host: shares the host's network stack, no veth to filter",
        ),
        (
            "7a2b00000000",
            "debug-shell",
            "--network container: shares the network namespace of vpn, which cannot be \
             isolated: attached to network lan with driver \"macvlan\", whose traffic does \
             not cross a host bridge",
        ),
    ] {
        inv.unisolable.push(netguard::inventory::Unisolable {
            id: id.into(),
            name: name.into(),
            reason: reason.into(),
        });
    }
    inv.normalize();
    plan(&p, &inv)
}

#[test]
fn diff_lists_unisolable_containers_in_sync_and_pending() {
    let pl = setup_with_unisolable();
    let live = live_of(&pl.ruleset);
    let text = diff_text(&pl, &live);
    insta::assert_snapshot!("diff_in_sync_unisolable_text", text);
    assert!(text.starts_with("in sync: no changes\n"), "{text}");
    let changes = diff(&pl.ruleset, &live);
    let impact = ndiff::impact(&pl, &live, &BTreeSet::new());
    let j = ndiff::json(&impact, &changes, &pl.warnings);
    assert_eq!(j["in_sync"], true);
    insta::assert_json_snapshot!("diff_in_sync_unisolable_json", j);

    let live = no_tables();
    let text = diff_text(&pl, &live);
    let head: String = text
        .split("\nnftables objects:")
        .next()
        .unwrap()
        .to_string();
    assert!(
        head.contains("Cannot be isolated")
            && head.contains("node-exporter")
            && head.contains("debug-shell"),
        "{head}"
    );
    let impact = ndiff::impact(&pl, &live, &BTreeSet::new());
    let j = ndiff::json(&impact, &diff(&pl.ruleset, &live), &pl.warnings);
    assert_eq!(j["unisolable"].as_array().map(Vec::len), Some(2), "{j}");
    assert_eq!(j["unisolable"][1]["name"], "node-exporter");
}

/// A healthy host as `status` reports it: tables present and current, br_netfilter on,
/// Docker reachable, no daemon. Tests change what they are about.
fn healthy() -> status::Health {
    status::Health {
        inet_table: true,
        bridge_table: true,
        current: Some(true),
        global_bridge_nf: Some((true, true)),
        bridges: vec![],
        source: status::SourceHealth {
            kind: "docker".into(),
            reachable: true,
            error: None,
        },
        daemon: status::DaemonHealth {
            state_file: "/run/netguard/state.json".into(),
            state: None,
            running: false,
            error: None,
        },
        audit: None,
    }
}

#[test]
fn status_lists_unisolable_containers() {
    let pl = setup_with_unisolable();
    let health = healthy();
    let text = status::render(&health, Some(&pl), &[], Style::plain());
    let tail = text
        .split("\ncannot be isolated:\n")
        .nth(1)
        .unwrap_or_else(|| panic!("no unisolable section:\n{text}"));
    insta::assert_snapshot!("status_unisolable_text", tail);
}

/// An unreadable source: the health report stays, `ok` is false with the error listed.
#[test]
fn status_json_when_docker_cannot_be_read() {
    let health = status::Health {
        current: None,
        global_bridge_nf: None,
        source: status::SourceHealth {
            kind: "docker".into(),
            reachable: false,
            error: Some(
                "Docker socket /run/docker.sock does not exist: is dockerd running?".into(),
            ),
        },
        ..healthy()
    };
    insta::assert_json_snapshot!(
        "status_json_source_unreachable",
        status::json(&health, None, &[])
    );
    assert_eq!(
        status::source_error(&health).as_deref(),
        Some(
            "cannot read containers from Docker: Docker socket /run/docker.sock does not exist: \
             is dockerd running?"
        )
    );
    let (_, _, pl) = setup();
    let mut ok = health.clone();
    ok.source.reachable = true;
    ok.source.error = None;
    let j = status::json(&ok, Some(&pl), &[]);
    assert_eq!(j["ok"], true);
    assert!(j.get("errors").is_none(), "{j}");
    // The documented subset of the plan, nothing internal.
    let keys: Vec<&str> = j["plan"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        keys,
        [
            "containers",
            "flows",
            "mac_binding",
            "networks",
            "unisolable",
            "warnings"
        ]
    );
}

/// The daemon line of `status` from a state file entry: running, when it last reconciled,
/// what it follows; and a daemon whose pid is gone, with its last error.
#[test]
fn status_daemon_line() {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let daemon =
        |running: bool, ago_ms: u64, source: Option<&str>, connected, err: Option<&str>| {
            status::DaemonHealth {
                state_file: "/run/netguard/state.json".into(),
                state: Some(status::DaemonState {
                    pid: 812,
                    // Half-way into the unit, so that a slow test run does not change the text.
                    last_reconcile_unix_ms: Some(now - ago_ms),
                    last_error: err.map(String::from),
                    source: source.map(String::from),
                    connected,
                    containers: Some(9),
                    ..Default::default()
                }),
                running,
                error: None,
            }
        };
    let line = |d: status::DaemonHealth| {
        let health = status::Health {
            daemon: d,
            ..healthy()
        };
        status::render(&health, None, &[], Style::plain())
            .lines()
            .find(|l| l.starts_with("  daemon "))
            .unwrap()
            .to_string()
    };
    let lines = [
        line(daemon(
            true,
            5_500,
            Some("Docker at unix:///var/run/docker.sock"),
            Some(true),
            None,
        )),
        line(daemon(true, 30 * 60_000 + 30_000, None, Some(true), None)),
        line(daemon(
            false,
            3 * 3_600_000 + 1_800_000,
            Some("Docker at unix:///var/run/docker.sock"),
            Some(false),
            Some("cannot follow Docker: connection refused"),
        )),
        line(daemon(
            true,
            500,
            Some("inventory file /etc/netguard/hosts.toml"),
            Some(true),
            None,
        )),
    ];
    insta::assert_snapshot!("status_daemon_lines", lines.join("\n"));
}

/// `explain` takes names, full ids and unique id prefixes (≥ 4 characters), as `docker`
/// does; an ambiguous prefix says which containers it matches.
#[test]
fn explain_by_id_and_id_prefix() {
    let p = parse_policy(
        Path::new("p.toml"),
        "[groups.web]\nmatch = { name = \"web-*\" }\n[groups.api]\nmatch = { name = \"api-*\" }\n\
         [[allow]]\nfrom = \"web\"\nto = \"api\"\nports = [\"8080/tcp\"]\n",
    )
    .unwrap();
    let inv = inventory(
        r#"
[[container]]
name = "web-1"
id = "3f2a11c0ffee0000000000000000000000000000000000000000000000000001"
[[container.endpoint]]
network = "n"
bridge = "br0"
veth = "v1"
ipv4 = "10.0.0.1"

[[container]]
name = "web-2"
id = "3f2a22c0ffee0000000000000000000000000000000000000000000000000002"
[[container.endpoint]]
network = "n"
bridge = "br0"
veth = "v2"
ipv4 = "10.0.0.2"

[[container]]
name = "api-1"
id = "9d8e33c0ffee0000000000000000000000000000000000000000000000000003"
[[container.endpoint]]
network = "n"
bridge = "br0"
veth = "v3"
ipv4 = "10.0.0.3"
"#,
    );
    let pl = plan(&p, &inv);
    let ask = |from: &str, to: &str| explain::explain(&p, &pl, &inv, from, to, Some("8080/tcp"));
    // Full id, unique prefix, name: the same answer about the same pair.
    for (from, to) in [
        (
            "3f2a11c0ffee0000000000000000000000000000000000000000000000000001",
            "9d8e33c0ffee0000000000000000000000000000000000000000000000000003",
        ),
        ("3f2a1", "9d8e"),
        ("web-1", "9d8e33c0ffee"),
    ] {
        let x = ask(from, to).unwrap_or_else(|e| panic!("{from} {to}: {e}"));
        let j = explain::json(&x);
        assert_eq!(j["from"]["name"], "web-1", "{from}");
        assert_eq!(j["to"]["name"], "api-1", "{to}");
        assert_eq!(j["allowed"], true);
    }
    let x = ask("3f2a2", "api-1").unwrap();
    assert_eq!(explain::json(&x)["from"]["name"], "web-2");
    // Ambiguous: both web containers start with 3f2a.
    let e = ask("3f2a", "api-1").unwrap_err();
    assert_eq!(
        e.to_string(),
        "ambiguous container \"3f2a\": the id prefix matches web-1 (3f2a11c0ffee), web-2 (3f2a22c0ffee)"
    );
    // Too short to be taken as a prefix; unknown ids are unknown.
    let e = ask("3f2", "api-1").unwrap_err();
    assert!(e.to_string().starts_with("no container \"3f2\""), "{e}");
    let e = ask("ffff", "api-1").unwrap_err();
    assert!(e.to_string().starts_with("no container \"ffff\""), "{e}");
}

#[test]
fn explain_says_when_the_kernel_may_disagree() {
    let (p, inv, pl) = setup();
    let mut x = explain::explain(&p, &pl, &inv, "web-1", "api-1", Some("8080/tcp")).unwrap();
    x.caveats = explain::kernel_caveats(
        &pl,
        Err("permission denied".into()),
        &[("br-front".into(), Blind::NoBrNetfilter)],
    );
    assert_eq!(x.caveats.len(), 2, "{:?}", x.caveats);
    assert!(x.caveats[0].contains("the kernel was not read (permission denied)"));
    assert!(x.caveats[1].contains("br_netfilter is not loaded"));
    let text = explain::render(&x, Style::plain());
    assert!(
        text.contains("kernel: br_netfilter is not loaded"),
        "{text}"
    );
    assert_eq!(
        explain::json(&x)["caveats"].as_array().map(Vec::len),
        Some(2)
    );
    // In sync and br_netfilter there: nothing to say, and the JSON has no caveats key.
    let live: LiveState = [(Family::Inet, None), (Family::Bridge, None)].into();
    let none = explain::kernel_caveats(&pl, Ok(&live), &[]);
    assert!(none[0].contains("not installed"), "{none:?}");
    x.caveats.clear();
    assert!(explain::json(&x).get("caveats").is_none());
}

/// `status` carries the audit's counts: one line under the health, `health.audit` in JSON.
#[test]
fn status_shows_the_audit_summary() {
    use netguard::audit::{AuditStatus, Summary};
    let mut health = healthy();
    health.audit = Some(AuditStatus::Counts(Summary {
        high: 2,
        medium: 1,
        low: 0,
    }));
    let text = status::render(&health, None, &[], Style::plain());
    assert!(
        text.contains("\n  audit         3 findings: 2 high, 1 medium, 0 low (netguard audit)\n"),
        "{text}"
    );
    assert!(health.ok(), "findings do not make enforcement degraded");
    let j = status::json(&health, None, &[]);
    assert_eq!(
        j["health"]["audit"],
        serde_json::json!({"high": 2, "medium": 1, "low": 0})
    );
    health.audit = Some(AuditStatus::Counts(Summary::default()));
    let text = status::render(&health, None, &[], Style::plain());
    assert!(text.contains("\n  audit         nothing found\n"), "{text}");
    health.audit = Some(AuditStatus::Unknown {
        error: "cannot reach the Docker daemon".into(),
    });
    let j = status::json(&health, None, &[]);
    assert_eq!(
        j["health"]["audit"],
        serde_json::json!({"error": "cannot reach the Docker daemon"})
    );
    health.audit = None;
    let text = status::render(&health, None, &[], Style::plain());
    assert!(!text.contains("audit"), "{text}");
}

/// `diff` and `apply` by default: the flows, then one line for the nft objects; the whole
/// list only with `--objects` (the snapshots above).
#[test]
fn diff_text_by_default_summarises_the_objects() {
    let (_, inv, before) = setup();
    let live = live_of(&before.ruleset);
    let p = policy(&POLICY.replace(
        "ports = [\"8080/tcp\"]",
        "ports = [\"8080-8081/tcp\", \"icmp\"]",
    ));
    let after = plan(&p, &inv);
    let changes = diff(&after.ruleset, &live);
    let impact = ndiff::impact(&after, &live, &BTreeSet::new());
    let text = ndiff::render_with(
        &impact,
        ndiff::Objects::Summary(&changes),
        changes.is_empty(),
        Style::plain(),
    );
    insta::assert_snapshot!("diff_pending_text_default", text);
    // The same flows as the full form, and no object listed.
    let full = diff_text(&after, &live);
    let flows = |t: &str| t.split("\nnftables objects:").next().unwrap().to_string();
    assert_eq!(flows(&text), flows(&full));
    assert!(
        !text.contains("+ rule") && !text.contains("+ element"),
        "{text}"
    );
    assert_eq!(
        text.lines().last().unwrap(),
        format!(
            "nftables objects: {} (`--objects` lists them)",
            changes.summary(false)
        )
    );
    // In sync: the same one line as ever.
    let synced = diff(&before.ruleset, &live);
    let impact = ndiff::impact(&before, &live, &BTreeSet::new());
    assert_eq!(
        ndiff::render_with(
            &impact,
            ndiff::Objects::Summary(&synced),
            true,
            Style::plain()
        ),
        "in sync: no changes\n"
    );
}

/// `status` lists a container's published ports under it, in `-p` syntax, and the JSON plan
/// carries them (omitted for a container without any: older documents stay as they were).
#[test]
fn status_lists_published_ports() {
    let p = policy(POLICY);
    let text = INVENTORY.replacen(
        "name = \"web-1\"\n",
        "name = \"web-1\"\npublished = [\"8443:443/tcp\", \"127.0.0.1:8080:80/tcp\", \
         \"[2001:db8::1]:8443:443/tcp\", \"5353:53/udp\"]\n",
        1,
    );
    assert_ne!(text, INVENTORY, "web-1 not found in the example inventory");
    let pl = plan(&p, &inventory(&text));
    let out = status::render(&healthy(), Some(&pl), &[], Style::plain());
    let web: String = out
        .lines()
        .skip_while(|l| !l.starts_with("  web-1 "))
        .take_while(|l| !l.starts_with("  web-2 "))
        .map(|l| format!("{l}\n"))
        .collect();
    insta::assert_snapshot!("status_published_text", web);
    let j = status::json(&healthy(), Some(&pl), &[]);
    let containers = j["plan"]["containers"].as_array().expect("containers");
    let web = containers
        .iter()
        .find(|c| c["name"] == "web-1")
        .expect("web-1");
    insta::assert_json_snapshot!("status_published_json", web["published"]);
    let web2 = containers
        .iter()
        .find(|c| c["name"] == "web-2")
        .expect("web-2");
    assert!(web2.get("published").is_none(), "{web2}");
}
