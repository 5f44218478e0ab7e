//! The operator commands against a real kernel, in the netns fixture: `diff` before the
//! first rollout, in sync and with pending changes (which reads nft's own rewriting of the
//! rules back); `status`; `log` showing a denied connection with container names.
//!
//! Needs root, `ip`, `nft`, `ping` (`sudo -E cargo test --test netns_ops`); prints SKIP
//! without them, fails under `CI=true`.

#[path = "../netns-fixtures/mod.rs"]
mod netns;

use netns::fixture::*;
use serde_json::{Value, json};
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

[[allow]]
from = "web"
to = "api"
ports = ["8080/tcp", "9000-9010/tcp"]

[[allow]]
within = "db"
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

fn json_of(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {}", show(out)))
}

fn has_flow(list: &Value, from: &str, to: &str, services: Value) -> bool {
    list.as_array().unwrap().iter().any(|f| {
        f["from"] == from
            && f["to"] == to
            && f["services"] == services
            && f["family"] == "ipv4+ipv6"
    })
}

#[test]
fn diff_first_rollout_in_sync_and_pending() {
    if !prerequisites("diff_first_rollout_in_sync_and_pending") {
        return;
    }
    let fx = Fixture::new(&Topology::standard());
    let policy = fx.write_file("policy.toml", POLICY);

    // Before the first rollout: what is open today and will be cut.
    let j = json_of(&run(&fx, &policy, &["--output", "json", "diff"], 1));
    assert_eq!(j["first_rollout"], true, "{j:#}");
    assert_eq!(j["allowed"], json!([]));
    assert!(
        has_flow(&j["denied"], "web-1", "web-2", json!(["all"])),
        "{j:#}"
    );
    assert!(
        has_flow(
            &j["denied"],
            "web-1",
            "api-1",
            json!(["all except 8080/tcp, 9000-9010/tcp"])
        ),
        "{j:#}"
    );
    assert!(!has_flow(&j["denied"], "db-1", "db-2", json!(["all"])));
    // The unmanaged network is not part of the plan's impact.
    let denied = j["denied"].to_string();
    assert!(!denied.contains("side-web"), "{denied}");
    let text = String::from_utf8_lossy(&run(&fx, &policy, &["diff"], 1).stdout).into_owned();
    assert!(text.starts_with("First rollout"), "{text}");
    assert!(!text.contains('\x1b'), "no colour when piped: {text}");

    run(&fx, &policy, &["apply"], 0);
    let j = json_of(&run(&fx, &policy, &["--output", "json", "diff"], 0));
    assert_eq!(j["in_sync"], true);
    assert_eq!(j["first_rollout"], false);
    let text = String::from_utf8_lossy(&run(&fx, &policy, &["diff"], 0).stdout).into_owned();
    assert_eq!(text, "in sync: no changes\n");

    // Healthy status right after apply.
    let j = json_of(&run(&fx, &policy, &["--output", "json", "status"], 0));
    assert_eq!(j["healthy"], true, "{j:#}");

    // A policy change, read against the live table (nft lists `tcp dport { 8080, 9000-9010 }`).
    let changed = POLICY
        .replace(
            "\"8080/tcp\", \"9000-9010/tcp\"",
            "\"8080/tcp\", \"9005-9020/tcp\", \"icmp\"",
        )
        .replace(
            "within = \"db\"",
            "from = \"db\"\nto = \"db\"\nports = [\"5432/tcp\"]",
        );
    let policy2 = fx.write_file("policy2.toml", &changed);
    let j = json_of(&run(&fx, &policy2, &["--output", "json", "diff"], 1));
    assert_eq!(j["first_rollout"], false);
    for w in ["web-1", "web-2"] {
        assert!(
            has_flow(&j["allowed"], w, "api-1", json!(["9011-9020/tcp", "icmp"])),
            "{j:#}"
        );
        assert!(
            has_flow(&j["denied"], w, "api-1", json!(["9000-9004/tcp"])),
            "{j:#}"
        );
    }
    assert!(
        has_flow(&j["denied"], "db-1", "db-2", json!(["all except 5432/tcp"])),
        "{j:#}"
    );
    assert_eq!(j["groups"], json!([]));
    // Nothing else moves.
    assert_eq!(j["allowed"].as_array().unwrap().len(), 2, "{j:#}");
    assert_eq!(j["denied"].as_array().unwrap().len(), 4, "{j:#}");
    let j = json_of(&run(&fx, &policy2, &["--output", "json", "status"], 1));
    assert_eq!(j["health"]["current"], false);
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
fn denied_connection_shows_up_in_log() {
    if !prerequisites("denied_connection_shows_up_in_log") {
        return;
    }
    let _sysctl = NfLogAllNetns::enable();
    let fx = Fixture::new(&Topology::standard());
    let policy = fx.write_file("policy.toml", POLICY);
    run(&fx, &policy, &["apply"], 0);

    // web-2 → api-1 on 7777: denied (only 8080 and 9000-9010 are allowed).
    let dst = fx.container("api-1").ipv4;
    let ns = fx.container("web-2").ns.clone();
    let connected = in_netns(&ns, move || {
        TcpStream::connect_timeout(
            &SocketAddr::new(dst.into(), 7777),
            Duration::from_millis(500),
        )
        .is_ok()
    });
    assert!(!connected, "web-2 → api-1:7777 must be denied");

    let mut last = Value::Null;
    for _ in 0..20 {
        let j = json_of(&run(
            &fx,
            &policy,
            &["--output", "json", "log", "-n", "100000"],
            0,
        ));
        let hit = j["denials"].as_array().unwrap().iter().any(|d| {
            d["from"] == "web-2"
                && d["to"] == "api-1"
                && d["dport"] == 7777
                && d["src"] == dst_str(&fx, "web-2")
        });
        if hit {
            let text = String::from_utf8_lossy(&run(&fx, &policy, &["log"], 0).stdout).into_owned();
            assert!(text.contains("denied web-2 ("), "{text}");
            // The per-group-pair deny counter (metrics) counted it too.
            let j = json_of(&run(&fx, &policy, &["--output", "json", "status"], 0));
            let counted: u64 = j["counters"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|c| c["rule"] == "denied web -> api")
                .map(|c| c["packets"].as_u64().unwrap())
                .sum();
            assert!(counted >= 1, "{:#}", j["counters"]);
            // And the metrics read the same counter from the kernel on a scrape.
            let text = in_netns(&fx.host_ns, || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .build()
                    .unwrap();
                let m = netguard::metrics::Metrics::with_kernel_counters();
                rt.block_on(m.refresh());
                m.render()
            });
            let line = text
                .lines()
                .find(|l| {
                    l.starts_with(
                        "netguard_denied_packets_total{from_group=\"web\",to_group=\"api\"}",
                    )
                })
                .unwrap_or_else(|| panic!("{text}"));
            let n: u64 = line.rsplit(' ').next().unwrap().parse().unwrap();
            assert!(n >= 1, "{text}");
            return;
        }
        last = j;
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("denied connection not in `netguard log`: {last:#}");
}

fn dst_str(fx: &Fixture, c: &str) -> String {
    fx.container(c).ipv4.to_string()
}

/// Docker cannot be read: `status` still prints the health report (exit 2), says so on one
/// stderr line, and its JSON is `ok: false` with `errors` next to the report.
#[test]
fn status_with_unreachable_docker_is_an_error_with_a_report() {
    if !prerequisites("status_with_unreachable_docker_is_an_error_with_a_report") {
        return;
    }
    let fx = Fixture::new(&Topology::standard());
    let policy = fx.write_file("policy.toml", POLICY);
    let status = |json: bool| {
        let mut args = vec![
            "netns".to_string(),
            "exec".into(),
            fx.host_ns.clone(),
            netguard_bin(),
            "-c".into(),
            policy.display().to_string(),
            "--docker-host".into(),
            "unix:///nonexistent/docker.sock".into(),
        ];
        if json {
            args.extend(["--output".into(), "json".into()]);
        }
        args.push("status".into());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        output("ip", &args, None)
    };
    let out = status(false);
    assert_eq!(out.status.code(), Some(2), "{}", show(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.starts_with("enforcement: DEGRADED\n"),
        "{}",
        show(&out)
    );
    assert!(
        stdout.contains("  source        docker: unreachable: "),
        "{}",
        show(&out)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "{}", show(&out));
    assert!(
        stderr.starts_with("netguard: cannot read containers from Docker: ")
            && stderr.contains("/nonexistent/docker.sock"),
        "{}",
        show(&out)
    );

    let out = status(true);
    assert_eq!(out.status.code(), Some(2), "{}", show(&out));
    assert!(out.stderr.is_empty(), "{}", show(&out));
    let j = json_of(&out);
    assert_eq!(j["ok"], false, "{j:#}");
    assert_eq!(j["healthy"], false);
    assert_eq!(j["plan"], Value::Null);
    assert_eq!(j["health"]["source"]["reachable"], false);
    assert_eq!(j["health"]["inet_table"], false);
    let errors = j["errors"].as_array().unwrap();
    assert_eq!(errors.len(), 1, "{j:#}");
    assert_eq!(
        format!("netguard: {}\n", errors[0].as_str().unwrap()),
        stderr
    );
}

/// A managed bridge whose switches are turned off behind netguard's back: the packets
/// between its containers are no longer filtered, and `diff`, `status` and `explain` all say
/// so, from the one reading of whether the inet hook sees a bridge. `apply` fixes it.
#[test]
fn a_bridge_the_hook_does_not_see_is_named_by_diff_status_and_explain() {
    use netns::probe::*;
    if !prerequisites("a_bridge_the_hook_does_not_see_is_named_by_diff_status_and_explain") {
        return;
    }
    let fx = Fixture::new(&Topology::standard());
    let policy = fx.write_file("policy.toml", POLICY);
    run(&fx, &policy, &["apply"], 0);
    // No allow entry between web containers: denied by the policy.
    let probes: Vec<Probe> = [Kind::Tcp(8080), Kind::Icmp]
        .into_iter()
        .flat_map(|kind| {
            FAMILIES.map(|family| Probe {
                from: "web-1".into(),
                to: "web-2".into(),
                kind,
                family,
            })
        })
        .collect();
    let packets = || run_probes(&fx, &probes, ProbeOpts::default());
    assert_eq!(
        packets(),
        vec![false; probes.len()],
        "denied while filtered"
    );
    let bridges_of = |j: &Value| j["health"]["bridges"].clone();
    let caveats = || {
        let j = json_of(&run(
            &fx,
            &policy,
            &["--output", "json", "explain", "web-1", "web-2", "8080/tcp"],
            1,
        ));
        assert_eq!(j["allowed"], false, "the verdict stays the policy's: {j:#}");
        j["caveats"].clone()
    };
    assert_eq!(caveats(), Value::Null, "filtered: nothing to say");

    fx.set_global_bridge_nf(false);
    fx.set_bridge_nf_flags("br-front", false);
    assert_eq!(packets(), vec![true; probes.len()], "open once unseen");

    let c = caveats();
    let c = c.as_array().unwrap_or_else(|| panic!("no caveats: {c}"));
    assert!(
        c.len() == 1
            && c[0]
                .as_str()
                .is_some_and(|s| s.starts_with("bridge br-front: ")),
        "{c:?}"
    );
    let j = json_of(&run(&fx, &policy, &["--output", "json", "status"], 1));
    assert_eq!(j["healthy"], false, "{j:#}");
    let front = bridges_of(&j)
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["bridge"] == "br-front")
        .cloned()
        .unwrap_or_else(|| panic!("{j:#}"));
    assert_eq!(front["seen"], false, "{j:#}");
    // The tables are current, yet what apply changes for the packets is the cut.
    let j = json_of(&run(&fx, &policy, &["--output", "json", "diff"], 0));
    assert!(
        has_flow(&j["denied"], "web-1", "web-2", json!(["all"])),
        "{j:#}"
    );
    assert!(
        !j["denied"].to_string().contains("db-1"),
        "br-back is still seen: {j:#}"
    );

    run(&fx, &policy, &["apply"], 0);
    assert_eq!(fx.bridge_nf_flags("br-front"), (true, true));
    assert_eq!(packets(), vec![false; probes.len()], "filtered again");
    assert_eq!(caveats(), Value::Null);
    let j = json_of(&run(&fx, &policy, &["--output", "json", "status"], 0));
    assert_eq!(j["healthy"], true, "{j:#}");
}

/// `diff` and `apply` print the flows and one line for the nft objects by default; every
/// object with `--objects`; the JSON documents keep every object either way.
#[test]
fn diff_and_apply_summarise_objects_unless_asked() {
    if !prerequisites("diff_and_apply_summarise_objects_unless_asked") {
        return;
    }
    let fx = Fixture::new(&Topology::standard());
    let policy = fx.write_file("policy.toml", POLICY);
    let text = |args: &[&str], want: i32| {
        String::from_utf8_lossy(&run(&fx, &policy, args, want).stdout).into_owned()
    };

    let short = text(&["diff"], 1);
    assert!(
        short.contains("Open today, cut by this rollout:"),
        "{short}"
    );
    assert!(short.contains("  - web-1 → web-2  all"), "{short}");
    let last = short.lines().last().unwrap();
    assert!(
        last.starts_with("nftables objects: 2 tables to create, ")
            && last.ends_with(" (`--objects` lists them)"),
        "{short}"
    );
    assert!(!short.contains("+ element"), "{short}");
    let long = text(&["diff", "--objects"], 1);
    assert!(long.contains("+ element g_web_4"), "{long}");
    assert!(long.starts_with(short.split("\nnftables objects:").next().unwrap()));
    let j = json_of(&run(&fx, &policy, &["--output", "json", "diff"], 1));
    assert!(
        !j["changes"]["tables"].as_array().unwrap().is_empty(),
        "{j:#}"
    );

    let applied = text(&["apply"], 0);
    assert!(
        applied.contains("Open today, cut by this rollout:"),
        "{applied}"
    );
    assert!(applied.contains("  - web-1 → web-2  all"), "{applied}");
    assert!(!applied.contains("+ element"), "{applied}");
    assert!(
        applied
            .lines()
            .last()
            .unwrap()
            .starts_with("applied: 2 tables created, "),
        "{applied}"
    );

    let changed = fx.write_file(
        "policy2.toml",
        &POLICY.replace("\"8080/tcp\", ", "\"8080/tcp\", \"8081/tcp\", "),
    );
    let out = fx.netguard(&changed, &fx.inventory, &["apply", "--objects"]);
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    let applied = String::from_utf8_lossy(&out.stdout);
    assert!(applied.contains("Become allowed:"), "{applied}");
    assert!(applied.contains("+ web-1 → api-1  8081/tcp"), "{applied}");
    assert!(applied.contains("+ rule from_g_web_4:"), "{applied}");
    assert!(
        applied.lines().last().unwrap().starts_with("applied: "),
        "{applied}"
    );
}

/// POLICY with every edge closed and one line of each kind open.
fn closed_policy() -> String {
    POLICY.replace(
        "log_denied = true\n",
        "log_denied = true\nhost = \"deny\"\negress = \"deny\"\ningress = \"deny\"\n",
    ) + r#"
[groups.monitoring]
match = { label = { role = "monitoring" } }

[[allow]]
from = "monitoring"
to = "host"
ports = ["9100/tcp"]

[[allow]]
from = "web"
to = ["203.0.113.0/24", "2001:db8::/64", "198.51.100.7"]
ports = ["443/tcp"]

[[allow]]
from = ["198.51.100.0/24"]
to = "db"
ports = ["5432/tcp"]
"#
}

fn has_edge(list: &Value, from: &str, to: &str, services: Value, setting: Option<&str>) -> bool {
    list.as_array().unwrap().iter().any(|f| {
        f["from"] == from
            && f["to"] == to
            && f["services"] == services
            && f.get("edge").is_some()
            && f.get("setting").and_then(Value::as_str) == setting
    })
}

/// `diff` reads the edge chains back from the kernel as nft lists them (address blocks,
/// ports): closing the edges lists what each container loses, an applied policy is in
/// sync with no unreadable rule, and one address taken off a line shows as exactly that.
#[test]
fn diff_reads_the_edges_back_from_the_kernel() {
    if !prerequisites("diff_reads_the_edges_back_from_the_kernel") {
        return;
    }
    let fx = Fixture::new(&Topology::standard());
    let open = fx.write_file("policy.toml", POLICY);
    let closed = fx.write_file("closed.toml", &closed_policy());
    run(&fx, &open, &["apply"], 0);

    let j = json_of(&run(&fx, &closed, &["--output", "json", "diff"], 1));
    let denied = &j["denied"];
    for (from, to, services) in [
        ("mon-1", "host", json!(["all except 9100/tcp"])),
        ("web-1", "host", json!(["all"])),
        ("web-1", "203.0.113.0/24", json!(["all except 443/tcp"])),
        ("web-1", "world", json!(["all"])),
        ("198.51.100.0/24", "db-1", json!(["all except 5432/tcp"])),
        ("world", "db-1", json!(["all"])),
    ] {
        let setting = match to {
            "host" => "host = \"deny\"",
            "db-1" => "ingress = \"deny\"",
            _ => "egress = \"deny\"",
        };
        assert!(
            has_edge(denied, from, to, services.clone(), Some(setting)),
            "{from} -> {to} {services} missing: {j:#}"
        );
    }
    assert_eq!(j["allowed"], json!([]), "{j:#}");

    run(&fx, &closed, &["apply"], 0);
    let j = json_of(&run(&fx, &closed, &["--output", "json", "diff"], 0));
    assert_eq!(j["unreadable_live_rules"], json!([]), "{j:#}");
    assert_eq!(
        (&j["allowed"], &j["denied"]),
        (&json!([]), &json!([])),
        "{j:#}"
    );

    let fewer = fx.write_file(
        "fewer.toml",
        &closed_policy().replace(", \"198.51.100.7\"]", "]"),
    );
    let j = json_of(&run(&fx, &fewer, &["--output", "json", "diff"], 1));
    assert!(
        has_edge(
            &j["denied"],
            "web-1",
            "198.51.100.7",
            json!(["443/tcp"]),
            Some("egress = \"deny\"")
        ),
        "{j:#}"
    );
    assert_eq!(j["allowed"], json!([]), "{j:#}");
    let out = run(&fx, &fewer, &["diff"], 1);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("  - web-1 → 198.51.100.7  443/tcp  (egress = \"deny\")\n"),
        "{text}"
    );

    // Reopened: what the setting gives back.
    let j = json_of(&run(&fx, &open, &["--output", "json", "diff"], 1));
    assert!(
        has_edge(
            &j["allowed"],
            "mon-1",
            "host",
            json!(["all except 9100/tcp"]),
            Some("host = \"allow\"")
        ),
        "{j:#}"
    );
    assert_eq!(j["denied"], json!([]), "{j:#}");
}
