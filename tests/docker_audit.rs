//! `netguard audit` against the real dockerd (root; see tests/common/docker.rs): one
//! container per misconfiguration, started the way an operator would, and a clean one
//! (`-u 1000 --read-only --security-opt no-new-privileges`, Docker's default seccomp, no
//! added capability). Each must get exactly its own findings, the clean one none; the daemon's
//! findings must be what `docker info` says; and wherever docker-bench-security checks the
//! same container setting, audit flags at least the containers that check's own
//! `docker inspect` test flags (docs/audit.md has the mapping).
//!
//! Containers are named `ngaudit-<pid>-...` and `ngaudit-sep-<pid>-...` (neither a prefix of
//! the other), so other tests may share the dockerd; assertions look at these containers only.

#[path = "common/docker.rs"]
mod docker_env;

use docker_env::{IMAGE, Scene, docker_available, docker_ok};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;

/// The clean container's options; every other one changes exactly one thing.
const CLEAN: &[&str] = &[
    "-u",
    "1000",
    "--read-only",
    "--security-opt",
    "no-new-privileges",
];

struct Case {
    short: &'static str,
    /// Options replacing `CLEAN` entirely when `Some`.
    replace: Option<&'static [&'static str]>,
    extra: &'static [&'static str],
    want: &'static [&'static str],
}

const CASES: &[Case] = &[
    Case {
        short: "clean",
        replace: None,
        extra: &[],
        want: &[],
    },
    Case {
        short: "priv",
        replace: None,
        extra: &["--privileged"],
        want: &["privileged"],
    },
    Case {
        short: "hostnet",
        replace: None,
        extra: &["--network", "host"],
        want: &["host-network", "not-isolable"],
    },
    Case {
        short: "hostpid",
        replace: None,
        extra: &["--pid", "host"],
        want: &["host-pid"],
    },
    Case {
        short: "netadmin",
        replace: None,
        extra: &["--cap-add", "NET_ADMIN"],
        want: &["cap-isolation"],
    },
    Case {
        short: "root0",
        replace: Some(&[
            "-u",
            "0",
            "--read-only",
            "--security-opt",
            "no-new-privileges",
        ]),
        extra: &[],
        want: &["root-user"],
    },
    Case {
        short: "rootimage",
        replace: Some(&["--read-only", "--security-opt", "no-new-privileges"]),
        extra: &[],
        want: &["root-user"],
    },
    Case {
        short: "seccomp",
        replace: None,
        extra: &["--security-opt", "seccomp=unconfined"],
        want: &["seccomp-unconfined"],
    },
    Case {
        short: "apparmor",
        replace: None,
        extra: &["--security-opt", "apparmor=unconfined"],
        want: &["apparmor-unconfined"],
    },
    Case {
        short: "sock",
        replace: None,
        extra: &["-v", "/var/run/docker.sock:/var/run/docker.sock"],
        want: &["engine-socket"],
    },
    Case {
        short: "sysrw",
        replace: None,
        extra: &["-v", "/sys:/host-sys"],
        want: &["host-path-writable"],
    },
    Case {
        short: "device",
        replace: None,
        extra: &["--device", "/dev/null:/dev/xnull"],
        want: &["device"],
    },
    Case {
        short: "rw",
        replace: Some(&["-u", "1000", "--security-opt", "no-new-privileges"]),
        extra: &[],
        want: &["rootfs-writable"],
    },
    Case {
        short: "nnp",
        replace: Some(&["-u", "1000", "--read-only"]),
        extra: &[],
        want: &["no-new-privileges"],
    },
];

fn netguard(policy: &std::path::Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_netguard"))
        .arg("-c")
        .arg(policy)
        .args(args)
        .env_remove("DOCKER_HOST")
        .output()
        .expect("netguard runs")
}

fn json_of(out: &std::process::Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{e}: stdout {} stderr {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// The daemon's security options as `docker info` reports them.
fn daemon_options() -> (Vec<String>, bool) {
    let opts: Vec<String> = serde_json::from_str(&docker_ok(&[
        "info",
        "--format",
        "{{json .SecurityOptions}}",
    ]))
    .expect("SecurityOptions");
    let live = docker_ok(&["info", "--format", "{{.LiveRestoreEnabled}}"]) == "true";
    (opts, live)
}

fn has(opts: &[String], name: &str) -> bool {
    opts.iter()
        .any(|o| o.split(',').any(|kv| kv == format!("name={name}")))
}

/// docker-bench-security's container checks, each as its own script tests it: the same
/// `docker inspect --format` field and the same condition (tests/5_container_runtime.sh,
/// tests/4_container_images.sh). Returns check id → containers it warns about.
fn docker_bench(names: &[String]) -> BTreeMap<&'static str, BTreeSet<String>> {
    let f = |c: &str, fmt: &str| docker_ok(&["inspect", "--format", fmt, c]);
    let defaults = [
        "AUDIT_WRITE",
        "CHOWN",
        "DAC_OVERRIDE",
        "FOWNER",
        "FSETID",
        "KILL",
        "MKNOD",
        "NET_BIND_SERVICE",
        "NET_RAW",
        "SETFCAP",
        "SETGID",
        "SETPCAP",
        "SETUID",
        "SYS_CHROOT",
    ];
    let sensitive = [
        "/", "/boot", "/dev", "/etc", "/lib", "/proc", "/sys", "/usr",
    ];
    let mut out: BTreeMap<&'static str, BTreeSet<String>> = BTreeMap::new();
    for c in names {
        let mut warn = |id: &'static str, yes: bool| {
            if yes {
                out.entry(id).or_default().insert(c.clone());
            }
        };
        let user = f(c, "{{.Config.User}}");
        warn(
            "4.1",
            matches!(user.as_str(), "" | "0" | "root" | "[]" | "<no value>"),
        );
        let aa = f(c, "{{ .AppArmorProfile }}");
        warn(
            "5.2",
            matches!(aa.as_str(), "" | "[]" | "<no value>" | "unconfined"),
        );
        let so = f(c, "{{ .HostConfig.SecurityOpt }}");
        warn("5.3", matches!(so.as_str(), "" | "[]" | "<no value>"));
        let caps = f(c, "{{ .HostConfig.CapAdd }}").to_ascii_uppercase();
        let left: Vec<&str> = caps
            .trim_matches(|ch| ch == '[' || ch == ']')
            .split_whitespace()
            .map(|x| x.trim_start_matches("CAP_"))
            .filter(|x| !defaults.contains(x) && *x != "<NO" && *x != "VALUE>" && *x != "<NIL>")
            .collect();
        warn("5.4", !left.is_empty());
        warn("5.5", f(c, "{{ .HostConfig.Privileged }}") == "true");
        // `{{ .Mounts }}` prints `{bind  /sys /host-sys   true rprivate}`; the script greps
        // for the directory between blanks followed later by `true`.
        let mounts = f(c, "{{ .Mounts }}");
        let hit = mounts.split('}').any(|m| {
            let words: Vec<&str> = m
                .trim_start_matches([' ', '[', '{'])
                .split_whitespace()
                .collect();
            words.iter().any(|w| sensitive.contains(w)) && words.contains(&"true")
        });
        warn("5.6", hit);
        warn("5.10", f(c, "{{ .HostConfig.NetworkMode }}") == "host");
        warn("5.13", f(c, "{{ .HostConfig.ReadonlyRootfs }}") == "false");
        warn("5.16", f(c, "{{ .HostConfig.PidMode }}") == "host");
        warn("5.17", f(c, "{{ .HostConfig.IpcMode }}") == "host");
        let devices = f(c, "{{ .HostConfig.Devices }}");
        warn(
            "5.18",
            !matches!(devices.as_str(), "" | "[]" | "<no value>"),
        );
        warn("5.21", f(c, "{{ .HostConfig.UTSMode }}") == "host");
        warn(
            "5.22",
            so.contains("seccomp:unconfined") || so.contains("seccomp=unconfined"),
        );
        warn("5.26", !so.contains("no-new-privileges"));
        warn(
            "5.31",
            f(c, "{{ .HostConfig.UsernsMode }}")
                .to_ascii_lowercase()
                .contains("host"),
        );
        warn("5.32", mounts.contains("docker.sock"));
    }
    out
}

#[test]
fn audit_flags_each_misconfiguration_and_not_the_clean_container() {
    if !docker_available("audit_flags_each_misconfiguration_and_not_the_clean_container") {
        return;
    }
    let prefix = format!("ngaudit-{}-", std::process::id());
    let mut scene = Scene::with_prefix(&prefix);
    let (opts, live_restore) = daemon_options();
    let (apparmor, selinux, userns) = (
        has(&opts, "apparmor"),
        has(&opts, "selinux"),
        has(&opts, "userns"),
    );

    let mut want: BTreeMap<String, BTreeSet<&str>> = BTreeMap::new();
    for case in CASES {
        let mut args: Vec<&str> = case.replace.unwrap_or(CLEAN).to_vec();
        args.extend_from_slice(case.extra);
        let name = scene.name(case.short);
        let mut a = vec!["run", "-d", "--name", &name];
        a.extend_from_slice(&args);
        a.extend_from_slice(&[IMAGE, "sleep", "600"]);
        scene.adopt(&name);
        docker_ok(&a);
        let mut w: BTreeSet<&str> = case.want.iter().copied().collect();
        // What the daemon changes: uid 0 is harmless under userns-remap; a privileged
        // container runs unconfined by AppArmor and without SELinux labels.
        if userns {
            w.remove("root-user");
        }
        if case.short == "priv" {
            if apparmor {
                w.insert("apparmor-unconfined");
            }
            if selinux {
                w.insert("selinux-disabled");
            }
        }
        want.insert(name, w);
    }

    let dir = tempfile::tempdir().expect("tempdir");
    let policy = dir.path().join("policy.toml");
    std::fs::write(
        &policy,
        format!("[groups.audited]\nmatch = {{ name = \"{prefix}*\" }}\n"),
    )
    .expect("policy");

    let out = netguard(&policy, &["--output", "json", "audit"]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "findings: exit 1; stderr {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let doc = json_of(&out);
    assert_eq!(doc["ok"], true);
    let findings = doc["findings"].as_array().expect("findings").clone();
    let mut got: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for f in &findings {
        for key in ["id", "severity", "container", "evidence", "fix", "cis"] {
            assert!(f.get(key).is_some(), "{key} missing in {f}");
        }
        if let Some(c) = f["container"].as_str().filter(|c| c.starts_with(&prefix)) {
            got.entry(c.to_string())
                .or_default()
                .insert(f["id"].as_str().expect("id").to_string());
        }
    }
    let mut wrong = Vec::new();
    for (name, w) in &want {
        let g: BTreeSet<&str> = got
            .get(name)
            .into_iter()
            .flatten()
            .map(String::as_str)
            .collect();
        if &g != w {
            wrong.push(format!("{name}: got {g:?}, want {w:?}"));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));

    // The daemon's findings are what `docker info` says of it.
    let daemon: BTreeSet<&str> = findings
        .iter()
        .filter(|f| f["container"].is_null())
        .filter_map(|f| f["id"].as_str())
        .filter(|id| *id != "daemon-icc" && *id != "daemon-tcp-no-tls")
        .collect();
    let mut want_daemon = BTreeSet::new();
    if !userns {
        want_daemon.insert("daemon-userns-off");
    }
    if !live_restore {
        want_daemon.insert("daemon-live-restore-off");
    }
    if !apparmor && !selinux {
        want_daemon.insert("daemon-no-lsm");
    }
    if !opts
        .iter()
        .any(|o| o.contains("name=seccomp") && !o.contains("profile=unconfined"))
    {
        want_daemon.insert("daemon-seccomp-off");
    }
    assert_eq!(
        daemon, want_daemon,
        "daemon findings for SecurityOptions {opts:?}"
    );

    // docker-bench-security's checks of the same settings: audit flags at least those
    // containers (AppArmor/SELinux absent: audit says so once for the daemon instead).
    let names: Vec<String> = want.keys().cloned().collect();
    let bench = docker_bench(&names);
    let mapping: &[(&str, &[&str])] = &[
        ("4.1", &["root-user"]),
        ("5.2", &["apparmor-unconfined"]),
        ("5.3", &["selinux-disabled"]),
        ("5.4", &["cap-isolation", "cap-extra"]),
        ("5.5", &["privileged"]),
        ("5.6", &["host-path-writable"]),
        ("5.10", &["host-network"]),
        ("5.13", &["rootfs-writable"]),
        ("5.16", &["host-pid"]),
        ("5.17", &["host-ipc"]),
        ("5.18", &["device"]),
        ("5.21", &["host-uts"]),
        ("5.22", &["seccomp-unconfined"]),
        ("5.26", &["no-new-privileges"]),
        ("5.31", &["host-userns"]),
        ("5.32", &["engine-socket"]),
    ];
    let mut missed = Vec::new();
    for (cis, ids) in mapping {
        for c in bench.get(cis).into_iter().flatten() {
            let flagged = got
                .get(c)
                .is_some_and(|g| ids.iter().any(|id| g.contains(*id)));
            let by_daemon = match *cis {
                "5.2" => !apparmor && daemon.contains("daemon-no-lsm"),
                "5.3" => !selinux,
                "4.1" => userns,
                _ => false,
            };
            if !flagged && !by_daemon {
                missed.push(format!(
                    "CIS {cis}: docker-bench warns about {c}, audit has {:?}",
                    got.get(c)
                ));
            }
        }
    }
    assert!(missed.is_empty(), "{}", missed.join("\n"));
    assert!(
        bench.get("5.5").is_some_and(|s| s.len() == 1)
            && bench.get("5.32").is_some_and(|s| s.len() == 1),
        "the docker-bench conditions see the scene: {bench:?}"
    );

    // Read-only: the same findings without a single capability (no nft, no netlink writes,
    // no namespace entered), the socket reached as its owner.
    let out2 = Command::new("setpriv")
        .args([
            "--bounding-set=-all",
            "--inh-caps=-all",
            "--no-new-privs",
            "--",
        ])
        .arg(env!("CARGO_BIN_EXE_netguard"))
        .arg("-c")
        .arg(&policy)
        .args(["--output", "json", "audit"])
        .env_remove("DOCKER_HOST")
        .output()
        .expect("setpriv (util-linux)");
    assert_eq!(
        out2.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out2.stderr)
    );
    let mine = |d: &Value| -> Vec<Value> {
        d["findings"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|f| {
                f["container"]
                    .as_str()
                    .is_some_and(|c| c.starts_with(&prefix))
            })
            .cloned()
            .collect()
    };
    assert_eq!(
        mine(&json_of(&out2)),
        mine(&doc),
        "same findings without capabilities"
    );

    // Text: the clean container is not mentioned at all.
    let text = netguard(&policy, &["audit"]);
    assert_eq!(text.status.code(), Some(1));
    let text = String::from_utf8_lossy(&text.stdout).into_owned();
    assert!(!text.contains(&format!("{prefix}clean")), "{text}");
    assert!(text.contains(&format!("{prefix}priv:")), "{text}");

    // status carries the same counts.
    let st = json_of(&netguard(&policy, &["--output", "json", "status"]));
    let counts = &st["health"]["audit"];
    let count = |sev: &str| findings.iter().filter(|f| f["severity"] == sev).count();
    assert_eq!(counts["high"], count("high"), "{counts}");
    assert_eq!(counts["medium"], count("medium"), "{counts}");
    assert_eq!(counts["low"], count("low"), "{counts}");
    drop(scene);
}

/// Two clean containers in groups a `[[separate]]` line keeps apart: one `separation`
/// finding for the pair, and nothing else of their own.
#[test]
fn separate_lines_are_reported_per_pair() {
    if !docker_available("separate_lines_are_reported_per_pair") {
        return;
    }
    let prefix = format!("ngaudit-sep-{}-", std::process::id());
    let mut scene = Scene::with_prefix(&prefix);
    let mut args = CLEAN.to_vec();
    args.extend_from_slice(&["-l", "tier=public"]);
    let public = scene.run("pub", &args, IMAGE, &["sleep", "600"]);
    let mut args = CLEAN.to_vec();
    args.extend_from_slice(&["-l", "tier=payments"]);
    let payments = scene.run("pay", &args, IMAGE, &["sleep", "600"]);
    let dir = tempfile::tempdir().expect("tempdir");
    let policy = dir.path().join("policy.toml");
    std::fs::write(
        &policy,
        format!(
            "[groups.public]\nmatch = {{ name = \"{prefix}*\", label = {{ tier = \"public\" }} }}\n\
             [groups.payments]\nmatch = {{ name = \"{prefix}*\", label = {{ tier = \"payments\" }} }}\n\
             [[separate]]\ngroups = [\"public\", \"payments\"]\ncomment = \"apart\"\n"
        ),
    )
    .expect("policy");
    let doc = json_of(&netguard(&policy, &["--output", "json", "audit"]));
    let ours: Vec<&Value> = doc["findings"]
        .as_array()
        .expect("findings")
        .iter()
        .filter(|f| {
            f["container"]
                .as_str()
                .is_some_and(|c| c.starts_with(&prefix))
        })
        .collect();
    assert_eq!(ours.len(), 1, "{ours:#?}");
    assert_eq!(ours[0]["id"], "separation");
    assert_eq!(ours[0]["severity"], "high");
    let ev = ours[0]["evidence"].as_str().expect("evidence");
    assert!(ev.contains(&public) && ev.contains(&payments), "{ev}");
    assert!(ev.contains("policy.toml:5:1"), "{ev}");
    // `check` accepts it and counts it.
    let out = netguard(&policy, &["check"]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("1 separate lines"));
}
