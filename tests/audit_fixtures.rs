//! `netguard audit` over recorded answers of Docker 20.10 (API 1.41): one container per
//! misconfiguration and a clean one (`tests/fixtures/docker/audit/record.sh` made them),
//! judged by the same mapping and checks the command runs. Each row lists exactly the
//! findings of that container's own, so removing any check fails its row.

use bollard::models::{ContainerInspectResponse, ContainerSummary, Network, SystemInfo};
use netguard::audit::{
    self, CATALOGUE, ContainerSecurity, DaemonConfig, Finding, HostSecurity, parse_daemon_json,
    parse_dockerd_args,
};
use netguard::docker::security::{container_security, daemon_security};
use netguard::docker::{finish, prepare};
use netguard::inventory::{Engine, Inventory};
use netguard::plan::plan;
use netguard::policy::{Policy, parse_policy};
use std::collections::{BTreeSet, HashMap};
use std::path::Path;

fn fixture<T: serde::de::DeserializeOwned>(name: &str) -> T {
    let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
}

const NAMES: &[&str] = &[
    "fa-apparmor",
    "fa-capextra",
    "fa-clean",
    "fa-device",
    "fa-hostipc",
    "fa-hostnet",
    "fa-hostpid",
    "fa-hostroot",
    "fa-hostuts",
    "fa-image-user",
    "fa-label",
    "fa-netadmin",
    "fa-nnp",
    "fa-priv",
    "fa-root",
    "fa-rw",
    "fa-seccomp",
    "fa-sock",
    "fa-sys",
    "fa-sys-ro",
    "fa-userns-host",
];

/// `fa-open` is managed, Docker's default bridge (icc on) and `fa-closed` (icc off) are not.
const POLICY: &str = r#"
[settings]
networks = ["fa-open"]

[groups.all]
match = { name = "fa-*" }

[groups.public]
match = { label = { tier = "public" } }

[groups.payments]
match = { label = { tier = "payments" } }

[[allow]]
within = "all"

[[separate]]
groups = ["public", "payments"]
comment = "internet-facing code never shares a kernel with card data"
"#;

fn policy(text: &str) -> Policy {
    parse_policy(Path::new("policy.toml"), text).unwrap_or_else(|e| panic!("{e}"))
}

struct Scene {
    inventory: Inventory,
    host: HostSecurity,
}

/// The recorded answers as `DockerSource::security` reads them.
fn scene() -> Scene {
    let containers: Vec<ContainerSummary> = fixture("docker/audit/containers.json");
    let networks: Vec<Network> = fixture("docker/audit/networks.json");
    let info: SystemInfo = fixture("docker/audit/info.json");
    let mut inspected = HashMap::new();
    let mut list: Vec<ContainerSecurity> = Vec::new();
    for n in NAMES {
        let i: ContainerInspectResponse = fixture(&format!("docker/audit/inspect-{n}.json"));
        let c = container_security(&i).expect("an id");
        assert_eq!(&c.name, n);
        list.push(c);
        inspected.insert(i.id.clone().expect("id"), i);
    }
    assert_eq!(
        containers.len(),
        NAMES.len(),
        "containers.json lists the scene"
    );
    let inventory = finish(prepare(&containers, &networks, &inspected), Vec::new());
    Scene {
        inventory,
        host: HostSecurity {
            containers: list,
            daemon: daemon_security(Engine::Docker, &info, &networks, DaemonConfig::default()),
        },
    }
}

fn findings(p: &Policy, s: &Scene) -> Vec<Finding> {
    audit::audit(p, &plan(p, &s.inventory), &s.host)
}

fn ids_of(fs: &[Finding], container: Option<&str>) -> Vec<&'static str> {
    let mut ids: Vec<&'static str> = fs
        .iter()
        .filter(|f| f.container.as_deref() == container)
        .map(|f| f.id)
        .collect();
    ids.sort();
    ids
}

/// Every container's own findings on the recording daemon (seccomp, no AppArmor, no
/// SELinux, no userns-remap). `fa-netadmin` and `fa-device` break the `separate` line,
/// reported once, under the first of the two by name.
const EXPECTED: &[(&str, &[&str])] = &[
    ("fa-apparmor", &["apparmor-unconfined"]),
    ("fa-capextra", &["cap-extra"]),
    ("fa-clean", &[]),
    ("fa-device", &["device", "separation"]),
    ("fa-hostipc", &["host-ipc"]),
    ("fa-hostnet", &["host-network", "not-isolable"]),
    ("fa-hostpid", &["host-pid"]),
    ("fa-hostroot", &["host-path-writable"]),
    ("fa-hostuts", &["host-uts"]),
    ("fa-image-user", &["root-user"]),
    // No SELinux on the daemon: label=disable changes nothing (see the next test).
    ("fa-label", &[]),
    ("fa-netadmin", &["cap-isolation"]),
    ("fa-nnp", &["no-new-privileges"]),
    ("fa-priv", &["privileged"]),
    ("fa-root", &["root-user"]),
    ("fa-rw", &["rootfs-writable"]),
    ("fa-seccomp", &["seccomp-unconfined"]),
    ("fa-sock", &["engine-socket"]),
    ("fa-sys", &["host-path-writable"]),
    ("fa-sys-ro", &[]),
    ("fa-userns-host", &["host-userns"]),
];

#[test]
fn each_misconfiguration_is_found_and_the_clean_container_has_nothing() {
    let s = scene();
    let fs = findings(&policy(POLICY), &s);
    let mut wrong = Vec::new();
    for (name, want) in EXPECTED {
        let mut want = want.to_vec();
        want.sort();
        let got = ids_of(&fs, Some(name));
        if got != want {
            wrong.push(format!("{name}: got {got:?}, want {want:?}"));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    assert_eq!(EXPECTED.len(), NAMES.len());
    assert_eq!(
        ids_of(&fs, None),
        [
            "daemon-icc",
            "daemon-live-restore-off",
            "daemon-no-lsm",
            "daemon-userns-off"
        ]
    );
    let icc: Vec<&str> = fs
        .iter()
        .filter(|f| f.id == "daemon-icc")
        .map(|f| f.evidence.as_str())
        .collect();
    assert_eq!(icc.len(), 1, "{icc:?}");
    assert!(icc[0].starts_with("network bridge:"), "{icc:?}");
}

#[test]
fn audit_json_snapshot() {
    let s = scene();
    let fs = findings(&policy(POLICY), &s);
    insta::assert_json_snapshot!("audit_fixtures_json", audit::json(&fs));
}

#[test]
fn audit_text_snapshot() {
    let s = scene();
    let fs = findings(&policy(POLICY), &s);
    insta::assert_snapshot!(
        "audit_fixtures_text",
        netguard::ops::audit::render(&fs, netguard::ops::style::Style::plain())
    );
}

/// What the daemon's settings change: SELinux makes label=disable count, AppArmor makes a
/// privileged container's "unconfined" count, userns-remap makes uid 0 harmless, a daemon
/// default of no-new-privileges covers every container.
#[test]
fn daemon_settings_change_the_container_checks() {
    let mut s = scene();
    s.host.daemon.security_options = Some(vec![
        "name=apparmor".into(),
        "name=seccomp,profile=default".into(),
        "name=selinux".into(),
        "name=userns".into(),
    ]);
    s.host.daemon.config.no_new_privileges = true;
    for c in &mut s.host.containers {
        if c.name == "fa-priv" {
            c.apparmor_profile = "unconfined".into();
        }
    }
    let fs = findings(&policy(POLICY), &s);
    assert_eq!(ids_of(&fs, Some("fa-label")), ["selinux-disabled"]);
    assert_eq!(
        ids_of(&fs, Some("fa-priv")),
        ["apparmor-unconfined", "privileged", "selinux-disabled"]
    );
    assert_eq!(ids_of(&fs, Some("fa-root")), Vec::<&str>::new());
    assert_eq!(ids_of(&fs, Some("fa-image-user")), Vec::<&str>::new());
    assert_eq!(ids_of(&fs, Some("fa-nnp")), Vec::<&str>::new());
    // --userns host opts out of the remap: root in it is root on the host again.
    let mut root_host = s.host.containers[0].clone();
    root_host.name = "fa-x".into();
    root_host.id = "x".into();
    root_host.userns_mode = "host".into();
    root_host.user = String::new();
    s.host.containers.push(root_host);
    let fs = findings(&policy(POLICY), &s);
    assert!(ids_of(&fs, Some("fa-x")).contains(&"root-user"));
    assert_eq!(
        ids_of(&fs, None),
        ["daemon-icc", "daemon-live-restore-off"],
        "with an LSM and userns-remap"
    );
}

/// A managed container in no group reaches no one: often a selector typo.
#[test]
fn managed_containers_in_no_group() {
    let s = scene();
    let p = policy(
        "[settings]\nnetworks = [\"fa-open\"]\n[groups.web]\nmatch = { name = \"fa-netadmin\" }\n",
    );
    let fs = findings(&p, &s);
    let no_group: Vec<&str> = fs
        .iter()
        .filter(|f| f.id == "no-group")
        .filter_map(|f| f.container.as_deref())
        .collect();
    assert_eq!(
        no_group,
        ["fa-device"],
        "fa-netadmin has a group; the rest are unmanaged"
    );
}

#[test]
fn daemon_listening_on_tcp() {
    let s = scene();
    let p = policy(POLICY);
    let tcp = |cfg: DaemonConfig| {
        let mut s2 = Scene {
            inventory: s.inventory.clone(),
            host: s.host.clone(),
        };
        s2.host.daemon.config = cfg;
        findings(&p, &s2)
            .into_iter()
            .filter(|f| f.id == "daemon-tcp-no-tls")
            .map(|f| f.evidence)
            .collect::<Vec<_>>()
    };
    let args = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();

    let mut cfg = DaemonConfig::default();
    let file = parse_dockerd_args(
        &args(&[
            "/usr/sbin/dockerd",
            "-H",
            "fd://",
            "--host=tcp://0.0.0.0:2375",
            "--containerd=/run/containerd/containerd.sock",
        ]),
        "/proc/1/cmdline",
        &mut cfg,
    );
    assert_eq!(file, None);
    assert_eq!(
        tcp(cfg.clone()),
        ["listens on tcp://0.0.0.0:2375 (from /proc/1/cmdline) with no TLS"]
    );
    cfg.tls = true;
    assert_eq!(
        tcp(cfg.clone()),
        [
            "listens on tcp://0.0.0.0:2375 (from /proc/1/cmdline) with TLS without client verification (--tls, no --tlsverify)"
        ]
    );
    let mut verified = DaemonConfig::default();
    parse_dockerd_args(
        &args(&[
            "dockerd",
            "-H=tcp://0.0.0.0:2376",
            "--tlsverify",
            "--config-file",
            "/etc/d.json",
        ]),
        "cmdline",
        &mut verified,
    );
    assert!(tcp(verified).is_empty(), "--tlsverify");

    let mut json = DaemonConfig::default();
    parse_daemon_json(
        r#"{"hosts": ["unix:///var/run/docker.sock", "tcp://127.0.0.1:2375"], "no-new-privileges": true}"#,
        "/etc/docker/daemon.json",
        &mut json,
    )
    .expect("json");
    assert!(json.no_new_privileges);
    assert_eq!(
        tcp(json),
        ["listens on tcp://127.0.0.1:2375 (from /etc/docker/daemon.json) with no TLS"]
    );
    assert!(parse_daemon_json("{", "f", &mut DaemonConfig::default()).is_err());
    let client = DaemonConfig {
        plain_tcp_client: Some("tcp://10.0.0.1:2375".into()),
        ..DaemonConfig::default()
    };
    assert_eq!(tcp(client).len(), 1);
    assert!(tcp(DaemonConfig::default()).is_empty(), "unix socket only");
}

#[test]
fn daemon_without_seccomp() {
    let mut s = scene();
    let p = policy(POLICY);
    let has = |s: &Scene| ids_of(&findings(&p, s), None).contains(&"daemon-seccomp-off");
    assert!(!has(&s), "recorded: name=seccomp,profile=default");
    s.host.daemon.security_options = Some(vec!["name=seccomp,profile=unconfined".into()]);
    assert!(has(&s));
    s.host.daemon.security_options = Some(vec![]);
    assert!(has(&s));
    s.host.daemon.security_options = None;
    assert!(!has(&s), "a daemon that says nothing is not judged");
}

/// The policy above with the catch-all group opted out of the MAC binding.
fn mac_opt_out_policy() -> String {
    POLICY.replacen(
        "[groups.all]\nmatch = { name = \"fa-*\" }\n",
        "[groups.all]\nmatch = { name = \"fa-*\" }\nmac_binding = false\n",
        1,
    )
}

/// A group's `mac_binding = false` is reported for its managed members only, and only then.
#[test]
fn mac_binding_opt_out_is_reported_for_managed_members() {
    let s = scene();
    let with = |p: &str| -> Vec<String> {
        findings(&policy(p), &s)
            .iter()
            .filter(|f| f.id == "mac-binding-off")
            .filter_map(|f| f.container.clone())
            .collect()
    };
    assert!(with(POLICY).is_empty(), "no group opts out in POLICY");
    let opted = mac_opt_out_policy();
    assert_ne!(opted, POLICY, "the opt-out was written into the policy");
    let got = with(&opted);
    let plan = plan(&policy(&opted), &s.inventory);
    let managed: Vec<String> = plan
        .containers
        .iter()
        .filter(|c| c.managed && c.groups.iter().any(|g| g == "all"))
        .map(|c| c.name.clone())
        .collect();
    assert!(
        !managed.is_empty(),
        "the scene has managed members of `all`"
    );
    let mut want = managed;
    want.sort();
    let mut got_sorted = got;
    got_sorted.sort();
    assert_eq!(got_sorted, want);
}

/// Every id of the catalogue is produced by one of the scenes above: a check cannot
/// disappear without a test noticing (each of these tests pins who gets it).
#[test]
fn every_catalogued_finding_is_exercised() {
    let mut seen: BTreeSet<&str> = BTreeSet::new();
    let s = scene();
    seen.extend(findings(&policy(POLICY), &s).iter().map(|f| f.id));
    let p = policy("[settings]\nnetworks = [\"fa-open\"]\n");
    seen.extend(findings(&p, &s).iter().map(|f| f.id));
    let mut s2 = scene();
    s2.host.daemon.security_options = Some(vec!["name=selinux".into()]);
    s2.host.daemon.config.plain_tcp_client = Some("tcp://h:2375".into());
    seen.extend(findings(&policy(POLICY), &s2).iter().map(|f| f.id));
    seen.extend(
        findings(&policy(&mac_opt_out_policy()), &s)
            .iter()
            .map(|f| f.id),
    );
    let missing: Vec<&str> = CATALOGUE
        .iter()
        .map(|(id, _)| *id)
        .filter(|id| !seen.contains(id))
        .collect();
    assert!(missing.is_empty(), "never produced: {missing:?}");
    // And nothing outside the catalogue.
    let unknown: Vec<&&str> = seen
        .iter()
        .filter(|id| !CATALOGUE.iter().any(|(c, _)| c == *id))
        .collect();
    assert!(unknown.is_empty(), "{unknown:?}");
}

/// Podman's compat inspect has the same fields: its recorded `--network host` container
/// maps to the same finding.
#[test]
fn podman_inspect_maps_the_same() {
    let i: ContainerInspectResponse = fixture("podman/inspect-px-host.json");
    let c = container_security(&i).expect("id");
    assert_eq!(c.network_mode, "host");
    let fs = audit::checks::container(&c, &audit::checks::DaemonFacts::default());
    let ids: Vec<&str> = fs.iter().map(|f| f.id).collect();
    assert!(ids.contains(&"host-network"), "{ids:?}");
    let web: ContainerInspectResponse = fixture("podman/inspect-px-web.json");
    let c = container_security(&web).expect("id");
    assert!(!c.privileged && c.cap_add.is_empty() && c.network_mode == "bridge");
}

/// Errors exit 2 with one line (text) or the error document (JSON): an inventory file has no
/// security settings, an unreachable daemon, an invalid `[[separate]]` line.
#[test]
fn audit_errors_exit_2() {
    let dir = tempfile::tempdir().expect("tempdir");
    let policy = dir.path().join("policy.toml");
    std::fs::write(&policy, "[groups.a]\nmatch = { name = \"a\" }\n").expect("write");
    let inv = dir.path().join("inv.toml");
    std::fs::write(&inv, "").expect("write");
    let run = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_netguard"))
            .arg("-c")
            .arg(&policy)
            .args(args)
            .output()
            .expect("runs")
    };
    let inv_s = inv.to_string_lossy().into_owned();
    let out = run(&["--inventory", &inv_s, "audit"]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr).trim_end(),
        "netguard: audit reads each container's security settings from Docker or Podman, and an --inventory file has none: run it without --inventory"
    );
    let out = run(&[
        "--docker-host",
        "unix:///nonexistent/docker.sock",
        "--output",
        "json",
        "audit",
    ]);
    assert_eq!(out.status.code(), Some(2));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["ok"], false);
    assert!(
        v["errors"][0]
            .as_str()
            .is_some_and(|e| e.contains("/nonexistent/docker.sock does not exist")),
        "{v}"
    );
    std::fs::write(
        &policy,
        "[groups.a]\nmatch = { name = \"a\" }\n[[separate]]\ngroups = [\"a\", \"b\"]\n",
    )
    .expect("write");
    for cmd in ["check", "audit"] {
        let out = run(&[cmd]);
        assert_eq!(out.status.code(), Some(2), "{cmd}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            err.trim_end(),
            format!(
                "netguard: {}:4:16: unknown group \"b\" in \"groups\"; defined groups: a",
                policy.display()
            ),
            "{cmd}"
        );
    }
}
