//! End to end against a real dockerd (root; see tests/common/docker.rs): containers exercising
//! every selector kind, `netguard -c POLICY apply`, then the who-can-reach-whom matrix probed
//! from inside the containers with real TCP (busybox `nc`) and ping, over IPv4 and over IPv6 on
//! the IPv6-enabled network, including a `--network container:` sidecar of api-1 in a group
//! of its own (the pair is one endpoint with the union of both groups, docs/docker.md); then
//! two running containers are connected to another managed network, `apply` runs again and
//! the new endpoints are probed; then `netguard uninstall`, after which Docker's own tables
//! must be byte for byte what they were before (counters stripped).
//!
//! Applies rules to the host's nftables, so only one such test may run at a time: this file
//! holds exactly one test. It manages the default `bridge` network too; other containers on it
//! during the test would be put in the `legacy` group (harmless, they are not probed).

#[path = "common/docker.rs"]
mod docker_env;

use docker_env::{IMAGE, Scene, docker_available, docker_ok};
use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;

/// Ports every container listens on, so that a refusal can only come from the firewall.
const PORTS: [u16; 2] = [8080, 5432];

fn netguard(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_netguard"))
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run netguard");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

/// Docker's tables without counters: what netguard must leave untouched. Both must list and
/// hold Docker's `DOCKER` chain, or the before/after comparison could compare nothing.
fn docker_tables() -> String {
    let mut all = String::new();
    for t in ["filter", "nat"] {
        let out = Command::new("nft")
            .args(["list", "table", "ip", t])
            .output()
            .expect("nft");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "nft list table ip {t} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            text.contains("chain DOCKER {"),
            "ip {t} has no DOCKER chain: is this Docker's table?\n{text}"
        );
        for line in text.lines() {
            let mut l = line.to_string();
            while let Some(i) = l.find("counter packets ") {
                let rest = &l[i..];
                let end = rest
                    .find(" bytes ")
                    .and_then(|b| {
                        rest[b + 7..]
                            .find(|c: char| !c.is_ascii_digit())
                            .map(|e| b + 7 + e)
                            .or(Some(rest.len()))
                    })
                    .unwrap_or(rest.len());
                l.replace_range(i..i + end, "counter");
            }
            all.push_str(&l);
            all.push('\n');
        }
    }
    all
}

#[derive(Clone)]
struct Box_ {
    name: String,
    v4: String,
    v6: Option<String>,
    network: String,
}

fn addresses(name: &str, network: &str) -> Box_ {
    let fmt = format!(
        "{{{{(index .NetworkSettings.Networks \"{network}\").IPAddress}}}} \
         {{{{(index .NetworkSettings.Networks \"{network}\").GlobalIPv6Address}}}}"
    );
    let out = docker_ok(&["inspect", "-f", &fmt, name]);
    let mut it = out.split_whitespace();
    Box_ {
        name: name.to_string(),
        v4: it.next().expect("ipv4").to_string(),
        v6: it.next().map(str::to_string),
        network: network.to_string(),
    }
}

/// Two containers to probe between: on the same network and not in one network namespace
/// (a `--network container:` sidecar reaches its owner over loopback, never the firewall).
fn apart(a: &Box_, b: &Box_) -> bool {
    a.name != b.name && a.network == b.network && a.v4 != b.v4
}

/// Probes every (source, target, probe) pair on a shared network from inside the sources,
/// in parallel: one `docker exec` per source running all its probes at once.
/// Result keys: "src>dst:tcp8080" / "src>dst:ping", with "6" appended for IPv6.
fn probe(boxes: &[Box_], short: &dyn Fn(&str) -> String) -> BTreeSet<String> {
    let mut ok = BTreeSet::new();
    std::thread::scope(|s| {
        let handles: Vec<_> = boxes
            .iter()
            .map(|src| {
                let mut script = String::new();
                for dst in boxes.iter().filter(|d| apart(src, d)) {
                    let mut targets = vec![(dst.v4.clone(), "")];
                    if let Some(v6) = &dst.v6 {
                        targets.push((v6.clone(), "6"));
                    }
                    for (ip, fam) in targets {
                        let key = format!("{}>{}", short(&src.name), short(&dst.name));
                        for p in PORTS {
                            script.push_str(&format!(
                                "(nc -w 2 {ip} {p} </dev/null 2>/dev/null | grep -q ok && echo '{key}:tcp{p}{fam}') &\n"
                            ));
                        }
                        script.push_str(&format!(
                            "(ping -c 1 -W 2 {ip} >/dev/null 2>&1 && echo '{key}:ping{fam}') &\n"
                        ));
                    }
                }
                script.push_str("wait\n");
                let name = src.name.clone();
                s.spawn(move || docker_ok(&["exec", &name, "sh", "-c", &script]))
            })
            .collect();
        for h in handles {
            for line in h.join().expect("probe thread").lines() {
                ok.insert(line.trim().to_string());
            }
        }
    });
    ok
}

/// Probes until every key of `want` passed, at most three rounds, and returns the union of all
/// rounds. A probe that should pass may fail once under load (a SYN lost to a busy listener);
/// a probe that should fail is still caught if it passes in any round, so the union is only
/// stricter about leaks.
fn probe_rounds(
    boxes: &[Box_],
    short: &dyn Fn(&str) -> String,
    want: &BTreeSet<String>,
) -> BTreeSet<String> {
    let mut got = probe(boxes, short);
    for round in 2..=3 {
        let missing: Vec<_> = want.difference(&got).cloned().collect();
        if missing.is_empty() {
            break;
        }
        eprintln!(
            "probe round {round}: retrying after {} misses: {missing:?}",
            missing.len()
        );
        std::thread::sleep(std::time::Duration::from_millis(500));
        got.extend(probe(boxes, short));
    }
    got
}

/// Every probe between containers on one network: what an unfiltered Docker allows.
fn everything(boxes: &[Box_], short: &dyn Fn(&str) -> String) -> BTreeSet<String> {
    let mut all = BTreeSet::new();
    for src in boxes {
        for dst in boxes.iter().filter(|d| apart(src, d)) {
            let fams: &[&str] = if dst.v6.is_some() { &["", "6"] } else { &[""] };
            for fam in fams {
                let key = format!("{}>{}", short(&src.name), short(&dst.name));
                for p in PORTS {
                    all.insert(format!("{key}:tcp{p}{fam}"));
                }
                all.insert(format!("{key}:ping{fam}"));
            }
        }
    }
    all
}

#[test]
fn docker_matrix_apply_probe_uninstall() {
    if !docker_available("docker_matrix_apply_probe_uninstall") {
        return;
    }
    let mut s = Scene::new("mx");
    let pid = std::process::id();
    let front = s.network(
        "front",
        &[
            "--ipv6",
            "--subnet",
            &format!("fd42:{:x}:1::/64", pid & 0xffff),
        ],
    );
    // Managed, IPv4 only; `web` and `stray` are connected to it while netguard is applied.
    let back = s.network("back", &[]);
    let pg = s.tag("pg:15");
    let listen = [
        "sh",
        "-c",
        "nc -ll -p 8080 -e echo ok & nc -ll -p 5432 -e echo ok & exec sleep 3600",
    ];
    let on = |net: &str| vec!["--network".to_string(), net.to_string()];
    let mut boxes = Vec::new();
    let mut run = |s: &mut Scene, short: &str, net: &str, extra: &[&str], image: &str| {
        let mut args: Vec<String> = on(net);
        args.extend(extra.iter().map(|a| a.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let name = s.run(short, &args, image, &listen);
        boxes.push((name, net.to_string()));
    };
    let project = format!("ngt{pid}");
    // label selector
    run(&mut s, "web", &front, &["--label", "role=web"], IMAGE);
    // name selector
    run(&mut s, "api-1", &front, &[], IMAGE);
    // image selector
    run(&mut s, "db", &front, &[], &pg);
    // label "*" selector: any value of `monitor`
    run(
        &mut s,
        "mon",
        &front,
        &["--label", "monitor=whatever"],
        IMAGE,
    );
    // compose-style pair, selected by service label
    let proj = format!("com.docker.compose.project={project}");
    run(
        &mut s,
        "worker-1",
        &front,
        &[
            "--label",
            &proj,
            "--label",
            "com.docker.compose.service=worker",
        ],
        IMAGE,
    );
    run(
        &mut s,
        "queue-1",
        &front,
        &[
            "--label",
            &proj,
            "--label",
            "com.docker.compose.service=queue",
        ],
        IMAGE,
    );
    // managed, in no group: reaches no one
    run(&mut s, "stray", &front, &[], IMAGE);
    // network selector, on the default bridge
    run(&mut s, "legacy-1", "bridge", &[], IMAGE);
    run(&mut s, "legacy-2", "bridge", &[], IMAGE);
    // Alone on `back` until the network-connect phase.
    run(&mut s, "cache", &back, &["--label", "role=cache"], IMAGE);

    let prefix = s.prefix.clone();
    let short = move |n: &str| n.strip_prefix(&prefix).unwrap_or(n).to_string();
    let mut boxes: Vec<Box_> = boxes.iter().map(|(n, net)| addresses(n, net)).collect();
    // A sidecar in api-1's network namespace, in a group of its own. It cannot listen on
    // PORTS (api-1's listeners hold them in the shared namespace); api-1's answer for it.
    let api1 = s.name("api-1");
    let side = s.run(
        "side",
        &[
            "--network",
            &format!("container:{api1}"),
            "--label",
            "role=side",
        ],
        IMAGE,
        &["sleep", "3600"],
    );
    let mut side_box = boxes
        .iter()
        .find(|b| b.name == api1)
        .expect("api-1 box")
        .clone();
    side_box.name = side;
    boxes.push(side_box);
    for b in &boxes {
        if b.network == front {
            assert!(b.v6.is_some(), "{} has no IPv6 on {front}", b.name);
        }
    }
    // Listeners need a moment after `docker run` returns.
    std::thread::sleep(std::time::Duration::from_millis(500));

    let policy = format!(
        r#"
[settings]
networks = ["{p}*", "bridge"]

[groups.web]
match = {{ label = {{ role = "web" }} }}
[groups.api]
match = {{ name = "{p}api-*" }}
[groups.db]
match = {{ image = "{p}pg*" }}
[groups.mon]
match = {{ label = {{ monitor = "*" }} }}
[groups.worker]
match = {{ label = {{ "com.docker.compose.project" = "{project}", "com.docker.compose.service" = "worker" }} }}
[groups.queue]
match = {{ label = {{ "com.docker.compose.service" = "queue" }} }}
[groups.legacy]
match = {{ network = "bridge" }}
[groups.side]
match = {{ label = {{ role = "side" }} }}
[groups.cache]
match = {{ label = {{ role = "cache" }} }}

[[allow]]
from = "web"
to = "api"
ports = ["8080/tcp"]

[[allow]]
from = "api"
to = "db"
ports = ["5432/tcp"]

[[allow]]
from = "mon"
to = ["web", "api", "db"]
ports = ["icmp"]

[[allow]]
from = "worker"
to = "queue"
ports = ["5432/tcp"]

[[allow]]
within = "legacy"

[[allow]]
from = "side"
to = "queue"
ports = ["8080/tcp"]

[[allow]]
from = "queue"
to = "side"
ports = ["5432/tcp"]

[[allow]]
from = "web"
to = "cache"
ports = ["5432/tcp"]
"#,
        p = s.prefix
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let policy_path = dir.path().join("policy.toml");
    std::fs::write(&policy_path, policy).expect("write policy");
    let cfg = policy_path.to_str().unwrap();

    // Baseline: Docker alone lets everything through (and every listener answers).
    let all = everything(&boxes, &short);
    let before = probe_rounds(&boxes, &short, &all);
    assert_eq!(
        all.difference(&before).collect::<Vec<_>>(),
        Vec::<&String>::new(),
        "baseline probes failed before netguard was applied"
    );
    let tables_before = docker_tables();

    let (code, out) = netguard(&["-c", cfg, "apply"]);
    // Whatever happens next, take netguard's tables away again.
    struct Uninstall<'a>(&'a str);
    impl Drop for Uninstall<'_> {
        fn drop(&mut self) {
            let _ = netguard(&["-c", self.0, "uninstall"]);
        }
    }
    let guard = Uninstall(cfg);
    assert_eq!(code, 0, "netguard apply failed:\n{out}");
    let (code, out) = netguard(&["-c", cfg, "diff"]);
    assert_eq!(code, 0, "not in sync right after apply:\n{out}");

    let mut expected = BTreeSet::new();
    for fam in ["", "6"] {
        for (from, to, what) in [
            ("web", "api-1", "tcp8080"),
            ("api-1", "db", "tcp5432"),
            ("mon", "web", "ping"),
            ("mon", "api-1", "ping"),
            ("mon", "db", "ping"),
            ("worker-1", "queue-1", "tcp5432"),
            // side's own lines, for the address it shares with api-1
            ("api-1", "queue-1", "tcp8080"),
            ("queue-1", "api-1", "tcp5432"),
        ] {
            // docs/docker.md: api-1 and its sidecar are one endpoint whose groups are the
            // union of both, so every line of either holds for both.
            let as_side = |n: &str| if n == "api-1" { "side" } else { n }.to_string();
            expected.insert(format!("{from}>{to}:{what}{fam}"));
            expected.insert(format!("{}>{}:{what}{fam}", as_side(from), as_side(to)));
        }
    }
    for (a, b) in [("legacy-1", "legacy-2"), ("legacy-2", "legacy-1")] {
        for what in ["tcp8080", "tcp5432", "ping"] {
            expected.insert(format!("{a}>{b}:{what}"));
        }
    }
    let got = probe_rounds(&boxes, &short, &expected);
    let missing: Vec<_> = expected.difference(&got).collect();
    let extra: Vec<_> = got.difference(&expected).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "matrix differs from the policy\n  allowed by policy but blocked: {missing:?}\n  \
         passed but not allowed: {extra:?}"
    );

    // A running container connected to a managed network: the next apply enforces the new
    // endpoint like any other (web may reach cache on 5432 only, stray nothing), and `diff`
    // sees the pending change before it.
    for who in ["web", "stray"] {
        docker_ok(&["network", "connect", &back, &s.name(who)]);
    }
    let (code, out) = netguard(&["-c", cfg, "diff"]);
    assert_eq!(code, 1, "diff after network connect, before apply:\n{out}");
    let (code, out) = netguard(&["-c", cfg, "apply"]);
    assert_eq!(
        code, 0,
        "netguard apply after network connect failed:\n{out}"
    );
    let (code, out) = netguard(&["-c", cfg, "diff"]);
    assert_eq!(code, 0, "not in sync right after the second apply:\n{out}");
    let on_back: Vec<Box_> = ["cache", "web", "stray"]
        .iter()
        .map(|n| addresses(&s.name(n), &back))
        .collect();
    let expected: BTreeSet<String> = ["web>cache:tcp5432".to_string()].into();
    let got = probe_rounds(&on_back, &short, &expected);
    assert_eq!(
        got,
        expected,
        "on {back} after network connect and apply (every probe: {:?})",
        everything(&on_back, &short)
    );

    drop(guard);
    let listing = Command::new("nft")
        .args(["list", "tables"])
        .output()
        .expect("nft");
    let listing = String::from_utf8_lossy(&listing.stdout);
    assert!(
        !listing.contains("netguard"),
        "netguard tables left behind:\n{listing}"
    );
    let tables_after = docker_tables();
    assert_eq!(tables_before, tables_after, "Docker's tables changed");

    // And Docker alone again lets everything through.
    let after: BTreeMap<_, _> = all
        .difference(&probe_rounds(&boxes, &short, &all))
        .map(|k| (k.clone(), ()))
        .collect();
    assert!(after.is_empty(), "blocked after uninstall: {after:?}");
}
