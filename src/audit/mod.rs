//! `netguard audit`: the containers and daemon settings that defeat isolation, and the trust
//! groups that must not share this host (`[[separate]]`).
//!
//! Pure: the Docker adapter reads a [`HostSecurity`] (inspect, `/info`, the daemon's own
//! configuration) and [`audit`] turns it, with the policy and the plan, into findings. Nothing
//! here touches the kernel or Docker. The finding ids are a contract (docs/audit.md): they
//! never change between releases.

pub mod checks;
pub mod daemon;
pub mod report;
pub mod separation;

pub use daemon::{DaemonConfig, Listener, parse_daemon_json, parse_dockerd_args};
pub use report::{AuditStatus, Summary, json, summary_text};
pub use separation::{Tracker, Violation, violations};

use crate::inventory::{Container, Engine};
use crate::plan::{Plan, groups_of};
use crate::policy::Policy;
use serde::Serialize;
use std::collections::BTreeMap;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    High,
    Medium,
    Low,
}

impl Severity {
    pub fn as_str(&self) -> &'static str {
        match self {
            Severity::High => "high",
            Severity::Medium => "medium",
            Severity::Low => "low",
        }
    }
}

/// One thing that undoes or weakens isolation (the JSON document of docs/output.md).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// Stable id (docs/audit.md).
    pub id: &'static str,
    pub severity: Severity,
    /// The container's name; `None` for the daemon.
    pub container: Option<String>,
    /// The inspect (or `/info`, or daemon configuration) field and its value.
    pub evidence: String,
    /// The `docker run` / compose option that removes it.
    pub fix: String,
    /// CIS Docker Benchmark v1.6.0 recommendation, where one covers the same setting.
    pub cis: Option<&'static str>,
}

/// A bind or volume mount, as inspect's `Mounts` lists it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Mount {
    /// `bind`, `volume`, `tmpfs`, ...
    pub kind: String,
    pub source: String,
    pub destination: String,
    pub rw: bool,
}

/// The security settings of one running container, from its inspect.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ContainerSecurity {
    pub id: String,
    pub name: String,
    pub image: String,
    pub labels: BTreeMap<String, String>,
    pub privileged: bool,
    /// `HostConfig.NetworkMode` (`bridge`, `host`, `none`, `container:ID`, a network name).
    pub network_mode: String,
    pub pid_mode: String,
    pub ipc_mode: String,
    pub uts_mode: String,
    pub userns_mode: String,
    /// `HostConfig.CapAdd` as given (`NET_ADMIN`, `CAP_NET_ADMIN`, `ALL`, any case).
    pub cap_add: Vec<String>,
    /// `HostConfig.Devices` as `HOST:CONTAINER`.
    pub devices: Vec<String>,
    pub security_opt: Vec<String>,
    pub readonly_rootfs: bool,
    /// `Config.User`: the image's default unless `-u` overrode it; empty means root.
    pub user: String,
    pub mounts: Vec<Mount>,
    pub apparmor_profile: String,
}

/// A network's inter-container communication switch, for the daemon-level icc check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NetworkIcc {
    pub name: String,
    pub driver: String,
    /// `Options["com.docker.network.bridge.enable_icc"]`, `None` when absent (on by default).
    pub enable_icc: Option<String>,
}

/// What the daemon says of itself, and what its configuration shows.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct DaemonSecurity {
    pub engine: Engine,
    /// `/info` `SecurityOptions` (`name=seccomp,profile=default`, `name=userns`, ...);
    /// `None` when the daemon did not send the field.
    pub security_options: Option<Vec<String>>,
    pub live_restore: Option<bool>,
    pub networks: Vec<NetworkIcc>,
    /// The daemon's listeners and defaults, from what could be read (see [`DaemonConfig`]).
    pub config: DaemonConfig,
}

/// Everything `audit` judges, as the Docker adapter read it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct HostSecurity {
    pub containers: Vec<ContainerSecurity>,
    pub daemon: DaemonSecurity,
}

/// All findings for this host, sorted: the daemon's first, then by container name, each
/// container's in the order of docs/audit.md.
pub fn audit(policy: &Policy, plan: &Plan, host: &HostSecurity) -> Vec<Finding> {
    let facts = checks::DaemonFacts::from(&host.daemon);
    let mut out = daemon::findings(&host.daemon, plan);
    for c in &host.containers {
        out.extend(checks::container(c, &facts));
    }
    out.extend(checks::plan_findings(plan));
    out.extend(
        violations(policy, &members(policy, plan, &host.containers))
            .iter()
            .map(|v| v.finding(policy)),
    );
    sort(&mut out);
    out
}

/// The order findings are shown in: daemon, then containers by name, then catalogue order.
pub fn sort(findings: &mut [Finding]) {
    findings.sort_by(|a, b| {
        a.container
            .is_some()
            .cmp(&b.container.is_some())
            .then_with(|| a.container.cmp(&b.container))
            .then_with(|| rank(a.id).cmp(&rank(b.id)))
            .then_with(|| a.evidence.cmp(&b.evidence))
    });
}

fn rank(id: &str) -> usize {
    CATALOGUE
        .iter()
        .position(|(i, _)| *i == id)
        .unwrap_or(usize::MAX)
}

/// Every finding id with its severity, in the order docs/audit.md lists them. A finding
/// whose severity depends on the evidence lists its highest.
pub const CATALOGUE: &[(&str, Severity)] = &[
    ("daemon-tcp-no-tls", Severity::High),
    ("daemon-seccomp-off", Severity::High),
    ("daemon-no-lsm", Severity::Medium),
    ("daemon-userns-off", Severity::Medium),
    ("daemon-icc", Severity::Medium),
    ("daemon-live-restore-off", Severity::Low),
    ("privileged", Severity::High),
    ("host-network", Severity::High),
    ("host-pid", Severity::High),
    ("host-ipc", Severity::Medium),
    ("host-uts", Severity::Low),
    ("host-userns", Severity::High),
    ("cap-isolation", Severity::High),
    ("cap-extra", Severity::Medium),
    ("device", Severity::Medium),
    ("root-user", Severity::Medium),
    ("seccomp-unconfined", Severity::High),
    ("apparmor-unconfined", Severity::High),
    ("selinux-disabled", Severity::High),
    ("no-new-privileges", Severity::Medium),
    ("rootfs-writable", Severity::Low),
    ("engine-socket", Severity::High),
    ("host-path-writable", Severity::High),
    ("not-isolable", Severity::Medium),
    ("no-group", Severity::Medium),
    ("mac-binding-off", Severity::Low),
    ("separation", Severity::High),
];

/// Each running container with the groups it belongs to, for the `[[separate]]` lines: the
/// inventory's view where it has one (selectors may match on networks), else one built from
/// the inspect (a `--network host` container still runs here and still belongs to groups).
pub fn members(
    policy: &Policy,
    plan: &Plan,
    containers: &[ContainerSecurity],
) -> Vec<(String, String, Vec<String>)> {
    let planned: BTreeMap<&str, &crate::plan::PlannedContainer> =
        plan.containers.iter().map(|c| (c.id.as_str(), c)).collect();
    containers
        .iter()
        .map(|c| {
            let groups = match planned.get(c.id.as_str()) {
                Some(pc) => pc.groups.clone(),
                None => groups_of(
                    policy,
                    &Container {
                        published: Vec::new(),
                        id: c.id.clone(),
                        name: c.name.clone(),
                        image: c.image.clone(),
                        labels: c.labels.clone(),
                        endpoints: Vec::new(),
                    },
                ),
            };
            (c.id.clone(), c.name.clone(), groups)
        })
        .collect()
}
