//! The run with fakes: which probes go to which namespace, how results are compared, the
//! cleanup of the probes' own conntrack entries, and the kernel-log marks around the probes.

use super::*;
use crate::inventory::{Container, Endpoint, Inventory};
use crate::ops::style::Style;
use std::cell::RefCell;
use std::path::Path;

const POLICY: &str = r#"
[settings]
networks = ["front"]
log_denied = true

[groups.web]
match = { name = "web-*" }

[groups.api]
match = { name = "api-*" }

[[allow]]
from = "web"
to = "api"
ports = ["8080/tcp", "icmp"]
"#;

fn container(name: &str, host: u8) -> Container {
    Container {
        published: Vec::new(),
        id: format!("id-{name}"),
        name: name.into(),
        image: String::new(),
        labels: Default::default(),
        endpoints: vec![Endpoint {
            network: "front".into(),
            network_id: None,
            bridge: "br-front".into(),
            veth: Some(format!("v{name}")),
            ipv4: Some(std::net::Ipv4Addr::new(10, 0, 0, host)),
            ipv6: None,
            mac: None,
        }],
    }
}

fn plan() -> crate::plan::Plan {
    let policy = crate::policy::parse_policy(Path::new("p.toml"), POLICY).unwrap();
    let mut inv = Inventory {
        containers: vec![container("web-1", 11), container("api-1", 21)],
        ..Default::default()
    };
    inv.normalize();
    crate::plan::plan(&policy, &inv)
}

/// Answers what the policy expects, except for the probes `leak` names (reached instead).
struct FakeProber<'a> {
    leak: fn(&ProbeSpec) -> bool,
    log: &'a RefCell<Vec<String>>,
    seen: RefCell<Vec<(PathBuf, usize)>>,
}

impl Prober for FakeProber<'_> {
    fn run(&self, batches: &[Batch], _timeout: Duration) -> Vec<(usize, Measured)> {
        self.log.borrow_mut().push("probes".into());
        let mut out = Vec::new();
        for b in batches {
            self.seen.borrow_mut().push((b.netns.clone(), b.jobs.len()));
            for j in &b.jobs {
                let m = if (self.leak)(&j.spec) || j.spec.expected == Verdict::Reached {
                    Measured::reached(match j.spec.kind {
                        Kind::Icmp => "echo reply",
                        _ => "refused (RST)",
                    })
                } else {
                    Measured::blocked("no answer within 300 ms")
                };
                out.push((j.index, m));
            }
        }
        out
    }
}

struct FakeConntrack {
    entries: Vec<Entry>,
    deleted: RefCell<Vec<Entry>>,
}

impl Conntrack for FakeConntrack {
    fn list(&self) -> Vec<Entry> {
        self.entries.clone()
    }
    fn delete_addresses(&self, _: &[std::net::IpAddr]) {
        panic!("verify deletes its own entries one by one, never by address");
    }
    fn delete(&self, e: &Entry) {
        self.deleted.borrow_mut().push(e.clone());
    }
}

struct FakeMarker<'a>(&'a RefCell<Vec<String>>);

impl Marker for FakeMarker<'_> {
    fn mark(&self, record: &str) {
        self.0.borrow_mut().push(record.to_string());
    }
}

fn entry(proto: &str, src: &str, dst: &str, sport: Option<u16>, dport: Option<u16>) -> Entry {
    Entry {
        proto: proto.into(),
        src: src.parse().unwrap(),
        dst: dst.parse().unwrap(),
        sport,
        dport,
        key: Default::default(),
    }
}

fn namespaces() -> BTreeMap<String, Result<PathBuf, String>> {
    BTreeMap::from([
        (
            "id-web-1".to_string(),
            Ok(PathBuf::from("/run/netns/web-1")),
        ),
        ("id-api-1".to_string(), Ok(PathBuf::from("/proc/42/ns/net"))),
    ])
}

fn outcome(leak: fn(&ProbeSpec) -> bool, ct: &FakeConntrack) -> (Outcome, Vec<String>) {
    let log = RefCell::new(Vec::new());
    let prober = FakeProber {
        leak,
        log: &log,
        seen: RefCell::new(vec![]),
    };
    let ns = namespaces();
    let world = World {
        netns: &ns,
        prober: &prober,
        conntrack: ct,
        marker: &FakeMarker(&log),
    };
    let sel = select::select(&plan(), &select::Choice::default());
    let o = run(sel, &world, Duration::from_millis(300));
    // Each source's probes went to its own namespace.
    let seen = prober.seen.borrow().clone();
    assert_eq!(
        seen.iter()
            .map(|(p, _)| p.display().to_string())
            .collect::<Vec<_>>(),
        vec!["/proc/42/ns/net", "/run/netns/web-1"]
    );
    (o, log.into_inner())
}

fn no_conntrack() -> FakeConntrack {
    FakeConntrack {
        entries: vec![],
        deleted: RefCell::new(vec![]),
    }
}

#[test]
fn all_matched_exits_0_and_the_probes_sit_between_the_marks() {
    let (o, log) = outcome(|_| false, &no_conntrack());
    assert_eq!(o.exit_code(), 0, "{o:#?}");
    assert_eq!(log.len(), 3);
    assert!(log[0].starts_with(marks::BEGIN), "{log:?}");
    assert!(log[0].ends_with("sports=61000-61999"), "{log:?}");
    assert_eq!(log[1], "probes");
    assert!(log[2].starts_with(marks::END), "{log:?}");
    let run = log[0].split_whitespace().nth(2).unwrap();
    assert!(log[2].ends_with(run), "begin and end name one run: {log:?}");
    // Every probe's source port is in the documented range.
    let (lo, hi) = marks::PROBE_PORTS;
    assert!(o.results.iter().all(|r| (lo..=hi).contains(&r.sport)));
    let text = report::render(&o, 300, Style::plain());
    assert!(text.contains("0 mismatched"), "{text}");
    assert!(!text.contains("mismatches ("), "{text}");
}

#[test]
fn a_leak_is_a_mismatch_named_by_pair_and_exits_1() {
    let (o, _) = outcome(
        |p| p.from == "api-1" && p.to == "web-1" && p.kind == Kind::Tcp,
        &no_conntrack(),
    );
    assert_eq!(o.exit_code(), 1);
    let bad: Vec<String> = o.mismatches().map(report::describe).collect();
    assert_eq!(
        bad,
        vec![
            "api-1 → web-1 on front: 1/tcp over ipv4: expected blocked (no allow entry), \
             measured reached (refused (RST))"
        ]
    );
    let text = report::render(&o, 300, Style::plain());
    assert!(text.contains("mismatches (1):"), "{text}");
    assert!(text.contains("!1/tcp"), "the matrix marks the cell: {text}");
    let j = report::json(&o, 300);
    assert_eq!(j["all_matched"], false);
    assert_eq!(j["summary"]["mismatches"], 1);
    let probes = j["probes"].as_array().unwrap();
    assert_eq!(probes.len(), o.results.len());
    let leak = probes.iter().find(|p| p["match"] == false).unwrap();
    assert_eq!(leak["from"], "api-1");
    assert_eq!(leak["expected"], "blocked");
    assert_eq!(leak["measured"], "reached");
    assert_eq!(leak["kind"], "tcp");
    assert_eq!(leak["port"], 1);
}

#[test]
fn a_source_without_a_namespace_is_not_measured_and_exits_2() {
    let log = RefCell::new(Vec::new());
    let prober = FakeProber {
        leak: |_| false,
        log: &log,
        seen: RefCell::new(vec![]),
    };
    let mut ns = namespaces();
    ns.insert("id-api-1".into(), Err("container is gone".into()));
    let ct = no_conntrack();
    let world = World {
        netns: &ns,
        prober: &prober,
        conntrack: &ct,
        marker: &NoMarker,
    };
    let o = run(
        select::select(&plan(), &select::Choice::default()),
        &world,
        Duration::from_millis(300),
    );
    assert_eq!(o.exit_code(), 2);
    assert!(
        o.errors()
            .all(|r| r.spec.from == "api-1" && r.detail == "container is gone")
    );
    assert!(o.errors().count() > 0);
    let text = report::render(&o, 300, Style::plain());
    assert!(text.contains("not measured ("), "{text}");
}

#[test]
fn only_the_probes_own_conntrack_entries_are_deleted() {
    let sel = select::select(&plan(), &select::Choice::default());
    let js = jobs(&sel.probes, std::process::id() as usize);
    let tcp = js
        .iter()
        .find(|j| j.spec.from == "web-1" && j.spec.port == Some(8080))
        .unwrap();
    let ours = entry("tcp", "10.0.0.11", "10.0.0.21", Some(tcp.sport), Some(8080));
    let ct = FakeConntrack {
        entries: vec![
            ours.clone(),
            // The same two containers, a real connection from an ephemeral port.
            entry("tcp", "10.0.0.11", "10.0.0.21", Some(45000), Some(8080)),
            // Our port, but another destination port.
            entry("tcp", "10.0.0.11", "10.0.0.21", Some(tcp.sport), Some(8081)),
            entry("udp", "10.0.0.11", "10.0.0.21", Some(tcp.sport), Some(8080)),
            entry("icmp", "10.0.0.11", "10.0.0.21", None, None),
            entry("icmp", "10.0.0.11", "10.0.0.99", None, None),
        ],
        deleted: RefCell::new(vec![]),
    };
    let (o, _) = outcome(|_| false, &ct);
    let deleted = ct.deleted.borrow().clone();
    assert_eq!(
        deleted,
        vec![ours, entry("icmp", "10.0.0.11", "10.0.0.21", None, None)]
    );
    assert_eq!(o.conntrack_deleted, 2);
}

#[test]
fn report_text() {
    let (o, _) = outcome(
        |p| p.from == "api-1" && p.to == "web-1" && p.kind == Kind::Icmp,
        &no_conntrack(),
    );
    insta::assert_snapshot!("verify_text", report::render(&o, 300, Style::plain()));
}

/// The edge probes: one source per class, the lines' ports and one more, the published
/// ports on the given host address, each expecting explain's verdict.
#[test]
fn edge_probes_follow_explain() {
    use super::select::{Choice, EdgeTargets, Target, select_edges};
    let text = format!(
        "{}\n[[allow]]\nfrom = \"web\"\nto = \"host\"\nports = [\"9100/tcp\"]\n\n[[allow]]\n\
         from = \"web\"\nto = [\"203.0.113.0/24\"]\nports = [\"443/tcp\"]\n",
        POLICY.replace(
            "log_denied = true",
            "log_denied = true\nhost = \"deny\"\negress = \"deny\""
        )
    );
    let policy = crate::policy::parse_policy(Path::new("p.toml"), &text).unwrap();
    let mut api = container("api-1", 21);
    api.published = vec!["18080:8080/tcp".parse().unwrap()];
    let mut inv = Inventory {
        containers: vec![container("web-1", 11), container("web-2", 12), api],
        ..Default::default()
    };
    inv.normalize();
    let plan = crate::plan::plan(&policy, &inv);
    let targets = EdgeTargets {
        host: Some("10.0.0.1".parse().unwrap()),
        outside: Some("203.0.113.5".parse().unwrap()),
    };
    let one = Choice {
        sample: 1,
        ..Default::default()
    };
    let probes = select_edges(&policy, &plan, &inv, &one, &targets);
    let got: Vec<String> = probes
        .iter()
        .map(|p| {
            format!(
                "{:?} {} -> {} {} {:?}",
                p.target,
                p.from,
                p.to,
                p.service(),
                p.expected
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            "Host api-1 -> host 9100/tcp Blocked",
            "Host api-1 -> host 1/tcp Blocked",
            "Outside api-1 -> 203.0.113.5 443/tcp Blocked",
            "Outside api-1 -> 203.0.113.5 1/tcp Blocked",
            // web-1 stands for web-2 (same class).
            "Host web-1 -> host 9100/tcp Reached",
            "Host web-1 -> host 1/tcp Blocked",
            "Published web-1 -> api-1 via 18080 18080/tcp Reached",
            "Outside web-1 -> 203.0.113.5 443/tcp Reached",
            "Outside web-1 -> 203.0.113.5 1/tcp Blocked",
        ]
    );
    assert!(probes.iter().all(|p| p.target != Target::Container));
    // Without addresses there is nothing to probe at the edges.
    assert!(
        select_edges(
            &policy,
            &plan,
            &inv,
            &Choice::default(),
            &EdgeTargets::default()
        )
        .is_empty()
    );
}
