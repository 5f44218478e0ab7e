//! The per-container checks, over one inspect each, and those the plan answers.

use super::{ContainerSecurity, DaemonSecurity, Finding, Severity};
use crate::plan::Plan;

/// What the daemon's settings change about a container's checks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DaemonFacts {
    /// uid 0 in a container is not uid 0 on the host (`userns-remap`).
    pub userns: bool,
    pub apparmor: bool,
    pub selinux: bool,
    /// `no-new-privileges` is the daemon's default for every container.
    pub no_new_privileges: bool,
}

impl From<&DaemonSecurity> for DaemonFacts {
    fn from(d: &DaemonSecurity) -> Self {
        let has = |name: &str| {
            d.security_options
                .iter()
                .flatten()
                .any(|o| security_option_name(o) == Some(name))
        };
        DaemonFacts {
            userns: has("userns"),
            apparmor: has("apparmor"),
            selinux: has("selinux"),
            no_new_privileges: d.config.no_new_privileges,
        }
    }
}

/// `name=seccomp,profile=default` → `seccomp` (old daemons sent the bare name).
pub fn security_option_name(o: &str) -> Option<&str> {
    o.split(',')
        .find_map(|kv| kv.strip_prefix("name="))
        .or_else(|| (!o.contains('=')).then_some(o))
}

/// Added capabilities that let a container step around netguard's rules or the kernel's
/// isolation: change its own network (NET_ADMIN), forge packets (NET_RAW), or leave its
/// confinement (SYS_ADMIN, SYS_PTRACE, SYS_MODULE, ALL).
pub const ISOLATION_CAPS: &[&str] = &[
    "NET_ADMIN",
    "NET_RAW",
    "SYS_ADMIN",
    "SYS_PTRACE",
    "SYS_MODULE",
    "ALL",
];

/// Docker's default capability set: adding one of these changes nothing (NET_RAW aside,
/// which is in it but also in [`ISOLATION_CAPS`]: asking for it says the container uses it).
pub const DEFAULT_CAPS: &[&str] = &[
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

/// Host directories whose writable bind mount hands the host over (the list of the CIS
/// benchmark's 5.6).
pub const SENSITIVE_HOST_PATHS: &[&str] = &[
    "/", "/boot", "/dev", "/etc", "/lib", "/proc", "/sys", "/usr",
];

/// Sockets (and the directories holding them) that give whoever reaches them the engine,
/// and with it root on the host.
fn is_engine_socket(path: &str) -> bool {
    let p = normalize(path);
    let file = p.rsplit('/').next().unwrap_or("");
    matches!(file, "docker.sock" | "podman.sock" | "containerd.sock")
        || matches!(
            p.as_str(),
            "/run" | "/var/run" | "/run/docker" | "/run/podman" | "/run/containerd"
        )
}

fn normalize(path: &str) -> String {
    let t = path.trim_end_matches('/');
    if t.is_empty() { "/".into() } else { t.into() }
}

fn cap_name(c: &str) -> String {
    let up = c.trim().to_ascii_uppercase();
    up.strip_prefix("CAP_").map(str::to_string).unwrap_or(up)
}

/// `seccomp=unconfined`, `seccomp:unconfined` (the old separator) → ("seccomp", "unconfined").
fn opt(o: &str) -> (&str, &str) {
    o.split_once(['=', ':']).unwrap_or((o, ""))
}

fn has_opt(c: &ContainerSecurity, key: &str, value: &str) -> bool {
    c.security_opt.iter().any(|o| opt(o) == (key, value))
}

/// `-u 0`, `-u root`, `-u 0:0`, or no user at all (the image's default is root).
pub fn runs_as_root(user: &str) -> bool {
    let who = user.split(':').next().unwrap_or("").trim();
    who.is_empty() || who == "0" || who == "root"
}

fn no_new_privileges(c: &ContainerSecurity) -> bool {
    c.security_opt.iter().any(|o| {
        let (k, v) = opt(o);
        k == "no-new-privileges" && (v.is_empty() || v == "true")
    })
}

fn quoted(list: &[String]) -> String {
    format!(
        "[{}]",
        list.iter()
            .map(|s| format!("{s:?}"))
            .collect::<Vec<_>>()
            .join(", ")
    )
}

/// The findings of one container's own settings.
pub fn container(c: &ContainerSecurity, d: &DaemonFacts) -> Vec<Finding> {
    let mut out = Vec::new();
    let mut add = |id: &'static str,
                   severity: Severity,
                   evidence: String,
                   fix: &str,
                   cis: Option<&'static str>| {
        out.push(Finding {
            id,
            severity,
            container: Some(c.name.clone()),
            evidence,
            fix: fix.to_string(),
            cis,
        });
    };
    if c.privileged {
        add(
            "privileged",
            Severity::High,
            "HostConfig.Privileged=true".into(),
            "remove --privileged (compose: privileged: false); add only the capabilities and devices it needs",
            Some("5.5"),
        );
    }
    if c.network_mode == "host" {
        add(
            "host-network",
            Severity::High,
            "HostConfig.NetworkMode=\"host\"".into(),
            "use a bridge network instead of --network host (compose: remove network_mode: host)",
            Some("5.10"),
        );
    }
    let namespaces: [(&str, &str, &'static str, Severity, &str, &'static str); 4] = [
        (
            "PidMode",
            &c.pid_mode,
            "host-pid",
            Severity::High,
            "remove --pid host (compose: pid: host)",
            "5.16",
        ),
        (
            "IpcMode",
            &c.ipc_mode,
            "host-ipc",
            Severity::Medium,
            "remove --ipc host (compose: ipc: host)",
            "5.17",
        ),
        (
            "UTSMode",
            &c.uts_mode,
            "host-uts",
            Severity::Low,
            "remove --uts host (compose: uts: host)",
            "5.21",
        ),
        (
            "UsernsMode",
            &c.userns_mode,
            "host-userns",
            Severity::High,
            "remove --userns host (compose: userns_mode: host)",
            "5.31",
        ),
    ];
    for (field, value, id, sev, fix, cis) in namespaces {
        if value == "host" {
            add(
                id,
                sev,
                format!("HostConfig.{field}=\"host\""),
                fix,
                Some(cis),
            );
        }
    }
    let caps: Vec<String> = c.cap_add.iter().map(|x| cap_name(x)).collect();
    let isolation: Vec<String> = caps
        .iter()
        .filter(|x| ISOLATION_CAPS.contains(&x.as_str()))
        .cloned()
        .collect();
    if !isolation.is_empty() {
        add(
            "cap-isolation",
            Severity::High,
            format!(
                "HostConfig.CapAdd={} (isolation: {})",
                quoted(&c.cap_add),
                isolation.join(", ")
            ),
            "remove --cap-add for these (compose: cap_add:); for NET_RAW also --cap-drop NET_RAW",
            Some("5.4"),
        );
    }
    let extra: Vec<String> = caps
        .iter()
        .filter(|x| !ISOLATION_CAPS.contains(&x.as_str()) && !DEFAULT_CAPS.contains(&x.as_str()))
        .cloned()
        .collect();
    if !extra.is_empty() {
        add(
            "cap-extra",
            Severity::Medium,
            format!(
                "HostConfig.CapAdd={} (beyond Docker's default: {})",
                quoted(&c.cap_add),
                extra.join(", ")
            ),
            "remove the --cap-add it does not need (compose: cap_add:); start from --cap-drop ALL",
            Some("5.4"),
        );
    }
    if !c.devices.is_empty() {
        add(
            "device",
            Severity::Medium,
            format!("HostConfig.Devices={}", quoted(&c.devices)),
            "remove --device (compose: devices:), or give only the device it needs, read-only (:r)",
            Some("5.18"),
        );
    }
    if runs_as_root(&c.user) && (!d.userns || c.userns_mode == "host") {
        let user = if c.user.is_empty() {
            "Config.User=\"\" (the image's default: root)".to_string()
        } else {
            format!("Config.User={:?}", c.user)
        };
        let why = if d.userns {
            "HostConfig.UsernsMode=\"host\" opts out of the daemon's userns-remap"
        } else {
            "the daemon has no userns-remap"
        };
        let evidence = format!("{user}, and {why}");
        add(
            "root-user",
            Severity::Medium,
            evidence,
            "run as an unprivileged user: -u 1000 (compose: user: \"1000\"), or USER in the image; or start dockerd with --userns-remap",
            Some("4.1"),
        );
    }
    if has_opt(c, "seccomp", "unconfined") {
        add(
            "seccomp-unconfined",
            Severity::High,
            format!("HostConfig.SecurityOpt={}", quoted(&c.security_opt)),
            "remove --security-opt seccomp=unconfined (compose: security_opt:); give a custom profile if a syscall is missing",
            Some("5.22"),
        );
    }
    // Docker writes "unconfined" into AppArmorProfile for a privileged container too; with
    // AppArmor absent the field is empty and the daemon-level finding says so once.
    let apparmor_off =
        has_opt(c, "apparmor", "unconfined") || (d.apparmor && c.apparmor_profile == "unconfined");
    if apparmor_off {
        add(
            "apparmor-unconfined",
            Severity::High,
            format!(
                "AppArmorProfile={:?}, HostConfig.SecurityOpt={}",
                c.apparmor_profile,
                quoted(&c.security_opt)
            ),
            "remove --security-opt apparmor=unconfined (compose: security_opt:); keep docker-default or a profile of your own",
            Some("5.2"),
        );
    }
    if d.selinux && has_opt(c, "label", "disable") {
        add(
            "selinux-disabled",
            Severity::High,
            format!("HostConfig.SecurityOpt={}", quoted(&c.security_opt)),
            "remove --security-opt label=disable (compose: security_opt:)",
            Some("5.3"),
        );
    }
    if !d.no_new_privileges && !no_new_privileges(c) {
        add(
            "no-new-privileges",
            Severity::Medium,
            format!(
                "HostConfig.SecurityOpt={} (no no-new-privileges)",
                quoted(&c.security_opt)
            ),
            "--security-opt no-new-privileges (compose: security_opt: [\"no-new-privileges:true\"]), or dockerd --no-new-privileges",
            Some("5.26"),
        );
    }
    if !c.readonly_rootfs {
        add(
            "rootfs-writable",
            Severity::Low,
            "HostConfig.ReadonlyRootfs=false".into(),
            "--read-only (compose: read_only: true), with --tmpfs for the paths it writes",
            Some("5.13"),
        );
    }
    for m in &c.mounts {
        let host_side = m.kind == "bind" || m.kind.is_empty();
        if host_side && is_engine_socket(&m.source) {
            add(
                "engine-socket",
                Severity::High,
                format!(
                    "Mounts: {} {} -> {} ({})",
                    m.kind,
                    m.source,
                    m.destination,
                    if m.rw { "rw" } else { "ro" }
                ),
                "remove the -v/--mount of the engine's socket (compose: volumes:); whoever holds it is root on the host, read-only or not",
                Some("5.32"),
            );
        } else if host_side && m.rw && SENSITIVE_HOST_PATHS.contains(&normalize(&m.source).as_str())
        {
            add(
                "host-path-writable",
                Severity::High,
                format!("Mounts: {} {} -> {} (rw)", m.kind, m.source, m.destination),
                "remove the mount, or make it read-only (-v SRC:DST:ro; compose: read_only: true under volumes:)",
                Some("5.6"),
            );
        }
    }
    out
}

/// What the plan knows: containers netguard cannot confine, and managed ones in no group.
pub fn plan_findings(plan: &Plan) -> Vec<Finding> {
    let mut out = Vec::new();
    for u in &plan.unisolable {
        let severity = if u.reason.starts_with("--network none") {
            Severity::Low
        } else {
            Severity::Medium
        };
        out.push(Finding {
            id: "not-isolable",
            severity,
            container: Some(u.name.clone()),
            evidence: u.reason.clone(),
            fix: "put it on a bridge network netguard manages (--network NAME; compose: networks:), or accept that netguard does not confine it".into(),
            cis: None,
        });
    }
    for c in plan
        .containers
        .iter()
        .filter(|c| c.managed && c.groups.is_empty())
    {
        let nets: Vec<String> = c
            .endpoints
            .iter()
            .filter(|e| e.managed)
            .map(|e| e.network.clone())
            .collect();
        out.push(Finding {
            id: "no-group",
            severity: Severity::Medium,
            container: Some(c.name.clone()),
            evidence: format!(
                "on managed network {} and in no group: it reaches no one and no one reaches it",
                nets.join(", ")
            ),
            fix: "check the [groups] selectors (a typo in a name, image or label glob?); `netguard explain` shows which match".into(),
            cis: None,
        });
    }
    for c in plan.containers.iter().filter(|c| c.managed) {
        let opted: Vec<&str> = c
            .groups
            .iter()
            .filter(|g| plan.mac_binding.opt_out_groups.contains(g))
            .map(String::as_str)
            .collect();
        if opted.is_empty() || !plan.mac_binding.enabled {
            continue;
        }
        out.push(Finding {
            id: "mac-binding-off",
            severity: Severity::Low,
            container: Some(c.name.clone()),
            evidence: format!(
                "in group {} with mac_binding = false: it may send from MACs that no endpoint owns",
                opted.join(", ")
            ),
            fix: "keep mac_binding = false only for workloads that must send from a virtual MAC (VRRP, keepalived); remove it otherwise".into(),
            cis: None,
        });
    }
    out
}
