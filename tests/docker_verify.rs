//! `netguard verify` against a real dockerd (root; see tests/common/docker.rs): containers on
//! an IPv6-enabled managed network, `apply`, then `verify --sample 0` must match the policy
//! (exit 0) and agree with independent probes made from inside the containers (busybox `nc`
//! and `ping`, as tests/docker_matrix.rs does); then the IPv6 switches are turned off (the
//! host-wide `bridge-nf-call-ip6tables` and the bridge's own `nf_call_ip6tables`), and verify
//! must exit 1 naming every pair over IPv6 and no pair over IPv4. The IPv6 switch is the
//! sabotage here because Docker 20.10 filters no bridged IPv6 itself: turning the host-wide
//! IPv4 one off would change Docker's own behaviour for every other container of the host.
//!
//! Applies rules to the host's nftables, so only one such test may run at a time: this file
//! holds exactly one test.

#[path = "common/docker.rs"]
mod docker_env;

use docker_env::{IMAGE, Scene, docker_available, docker_ok};
use serde_json::Value;
use std::collections::BTreeSet;
use std::process::Command;

fn netguard(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_netguard"))
        .args(args)
        .output()
        .expect("run netguard");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn verify(cfg: &str, want: i32) -> Value {
    let (code, out, err) = netguard(&["-c", cfg, "--output", "json", "verify", "--sample", "0"]);
    assert_eq!(code, want, "verify:\n{out}\n{err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("not JSON ({e}): {out}\n{err}"))
}

fn probes(j: &Value) -> &Vec<Value> {
    j["probes"].as_array().expect("probes")
}

/// The global sysctl, restored on drop (also on panic).
struct Sysctl(&'static str, String);

impl Sysctl {
    fn set(path: &'static str, v: &str) -> Sysctl {
        let old = std::fs::read_to_string(path).expect("read sysctl");
        std::fs::write(path, v).expect("write sysctl");
        Sysctl(path, old.trim().to_string())
    }
}

impl Drop for Sysctl {
    fn drop(&mut self) {
        let _ = std::fs::write(self.0, &self.1);
    }
}

struct Uninstall(String);

impl Drop for Uninstall {
    fn drop(&mut self) {
        let _ = netguard(&["-c", &self.0, "uninstall"]);
    }
}

/// Independent probes for verify's TCP 8080 and ICMP probes, from inside the sources:
/// "from>to:tcp8080:ipv4" for each that passed.
fn independent(
    j: &Value,
    addr: &dyn Fn(&str, &str) -> String,
) -> (BTreeSet<String>, BTreeSet<String>) {
    let mut asked = BTreeSet::new();
    let mut scripts: std::collections::BTreeMap<String, String> = Default::default();
    for p in probes(j) {
        let what = match (p["kind"].as_str(), p["port"].as_u64()) {
            (Some("icmp"), _) => "ping".to_string(),
            (Some("tcp"), Some(8080)) => "tcp8080".to_string(),
            _ => continue,
        };
        let (from, to, fam) = (
            p["from"].as_str().unwrap(),
            p["to"].as_str().unwrap(),
            p["family"].as_str().unwrap(),
        );
        let key = format!("{from}>{to}:{what}:{fam}");
        let ip = addr(to, fam);
        let cmd = if what == "ping" {
            format!("(ping -c 1 -W 2 {ip} >/dev/null 2>&1 && echo '{key}') &\n")
        } else {
            format!("(nc -w 2 {ip} 8080 </dev/null 2>/dev/null | grep -q ok && echo '{key}') &\n")
        };
        scripts.entry(from.to_string()).or_default().push_str(&cmd);
        asked.insert(key);
    }
    let mut passed = BTreeSet::new();
    for (from, mut script) in scripts {
        script.push_str("wait\n");
        for line in docker_ok(&["exec", &from, "sh", "-c", &script]).lines() {
            passed.insert(line.trim().to_string());
        }
    }
    (asked, passed)
}

fn reached(j: &Value) -> BTreeSet<String> {
    probes(j)
        .iter()
        .filter(|p| p["measured"] == "reached")
        .filter_map(|p| {
            let what = match (p["kind"].as_str(), p["port"].as_u64()) {
                (Some("icmp"), _) => "ping",
                (Some("tcp"), Some(8080)) => "tcp8080",
                _ => return None,
            };
            Some(format!(
                "{}>{}:{what}:{}",
                p["from"].as_str().unwrap(),
                p["to"].as_str().unwrap(),
                p["family"].as_str().unwrap()
            ))
        })
        .collect()
}

#[test]
fn docker_verify_matches_after_apply_and_names_ipv6_leaks() {
    if !docker_available("docker_verify_matches_after_apply_and_names_ipv6_leaks") {
        return;
    }
    let mut s = Scene::new("vf");
    let pid = std::process::id();
    let net = s.network(
        "net",
        &[
            "--ipv6",
            "--subnet",
            &format!("fd43:{:x}:1::/64", pid & 0xffff),
        ],
    );
    let pg = s.tag("pg:15");
    let listen = ["sh", "-c", "nc -ll -p 8080 -e echo ok & exec sleep 3600"];
    let web = s.run(
        "web",
        &["--network", &net, "--label", "role=web"],
        IMAGE,
        &listen,
    );
    let api = s.run("api-1", &["--network", &net], IMAGE, &listen);
    let db = s.run("db", &["--network", &net], &pg, &listen);
    let stray = s.run("stray", &["--network", &net], IMAGE, &listen);
    let names = [web.clone(), api.clone(), db.clone(), stray.clone()];
    let fmt = format!(
        "{{{{(index .NetworkSettings.Networks \"{net}\").IPAddress}}}} \
         {{{{(index .NetworkSettings.Networks \"{net}\").GlobalIPv6Address}}}}"
    );
    let addrs: std::collections::BTreeMap<String, (String, String)> = names
        .iter()
        .map(|n| {
            let out = docker_ok(&["inspect", "-f", &fmt, n]);
            let mut it = out.split_whitespace();
            let v4 = it.next().expect("ipv4").to_string();
            let v6 = it.next().expect("ipv6 on the IPv6 network").to_string();
            (n.clone(), (v4, v6))
        })
        .collect();
    let addr = |n: &str, fam: &str| {
        let (v4, v6) = &addrs[n];
        if fam == "ipv6" {
            v6.clone()
        } else {
            v4.clone()
        }
    };
    let bridge = format!(
        "br-{}",
        &docker_ok(&["network", "inspect", "-f", "{{.Id}}", &net])[..12]
    );
    std::thread::sleep(std::time::Duration::from_millis(500));

    let policy = format!(
        r#"
[settings]
networks = ["{p}*"]
log_denied = true

[groups.web]
match = {{ label = {{ role = "web" }} }}
[groups.api]
match = {{ name = "{p}api-*" }}
[groups.db]
match = {{ image = "{p}pg*" }}

[[allow]]
from = "web"
to = "api"
ports = ["8080/tcp", "icmp"]

[[allow]]
from = "api"
to = "db"
ports = ["5432/tcp"]
"#,
        p = s.prefix
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let policy_path = dir.path().join("policy.toml");
    std::fs::write(&policy_path, policy).expect("write policy");
    let cfg = policy_path.to_str().unwrap().to_string();

    let (code, out, err) = netguard(&["-c", &cfg, "apply"]);
    let _guard = Uninstall(cfg.clone());
    assert_eq!(code, 0, "apply:\n{out}\n{err}");

    let j = verify(&cfg, 0);
    // 4 containers: 12 ordered pairs, all probed, over both versions.
    assert_eq!(j["pairs"]["total"], 12, "{j:#}");
    assert_eq!(j["pairs"]["probed"], 12, "{j:#}");
    assert!(probes(&j).iter().any(|p| p["family"] == "ipv6"));
    let want: BTreeSet<String> = ["ipv4", "ipv6"]
        .iter()
        .flat_map(|f| {
            [
                format!("{web}>{api}:tcp8080:{f}"),
                format!("{web}>{api}:ping:{f}"),
            ]
        })
        .collect();
    assert_eq!(reached(&j), want, "{j:#}");
    let (asked, passed) = independent(&j, &addr);
    assert!(asked.len() >= 24, "{asked:?}");
    assert_eq!(passed, want, "independent probes");

    // Sabotage: bridged IPv6 no longer reaches the inet hook.
    let _ip6 = Sysctl::set("/proc/sys/net/bridge/bridge-nf-call-ip6tables", "0");
    let ip = |v: &str| {
        let st = Command::new("ip")
            .args([
                "link",
                "set",
                &bridge,
                "type",
                "bridge",
                "nf_call_ip6tables",
                v,
            ])
            .status()
            .expect("ip");
        assert!(st.success(), "ip link set {bridge} nf_call_ip6tables {v}");
    };
    ip("0");
    let j = verify(&cfg, 1);
    let leaked: BTreeSet<(String, String)> = probes(&j)
        .iter()
        .filter(|p| p["match"] == false)
        .map(|p| {
            (
                format!(
                    "{}>{}",
                    p["from"].as_str().unwrap(),
                    p["to"].as_str().unwrap()
                ),
                p["family"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let mut every_v6 = BTreeSet::new();
    for a in &names {
        for b in &names {
            if a != b {
                every_v6.insert((format!("{a}>{b}"), "ipv6".to_string()));
            }
        }
    }
    assert_eq!(leaked, every_v6, "{j:#}");
    // The independent probes see the same: IPv6 open, IPv4 as the policy says.
    let (_, passed) = independent(&j, &addr);
    assert_eq!(
        passed,
        reached(&j),
        "independent probes while IPv6 is unfiltered"
    );
    assert!(
        passed.contains(&format!("{stray}>{db}:ping:ipv6")),
        "{passed:?}"
    );
    assert!(
        !passed.contains(&format!("{stray}>{db}:ping:ipv4")),
        "{passed:?}"
    );
    ip("1");
}
