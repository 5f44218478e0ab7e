//! The read-only side `netguard audit` needs: each running container's security settings
//! from its inspect, the daemon's from `/info`, its networks' icc switch, and what dockerd's
//! command line and `daemon.json` say about where it listens.
//!
//! Podman's compat API answers the same inspect fields (`HostConfig.Privileged`, `CapAdd`,
//! `SecurityOpt`, `Mounts`, ...), so the same mapping serves it; its daemon configuration
//! (no dockerd) is not read.

use super::{DockerError, DockerSource, Endpoint, classify, finish, prepare};
use crate::audit::{
    ContainerSecurity, DaemonConfig, DaemonSecurity, HostSecurity, Mount, NetworkIcc,
    parse_daemon_json, parse_dockerd_args,
};
use crate::inventory::{Engine, Inventory};
use bollard::models::{ContainerInspectResponse, Network as DockerNetwork, SystemInfo};
use bollard::query_parameters::ListContainersOptions;

/// The network option that switches inter-container communication on a bridge.
pub const ICC_OPTION: &str = "com.docker.network.bridge.enable_icc";

const DAEMON_JSON: &str = "/etc/docker/daemon.json";

/// One container's settings, from its inspect; `None` without an id.
pub fn container_security(i: &ContainerInspectResponse) -> Option<ContainerSecurity> {
    let id = i.id.clone().filter(|s| !s.is_empty())?;
    let hc = i.host_config.clone().unwrap_or_default();
    let cfg = i.config.clone().unwrap_or_default();
    let s = |v: Option<String>| v.unwrap_or_default();
    Some(ContainerSecurity {
        name: i
            .name
            .as_deref()
            .map(|n| n.trim_start_matches('/').to_string())
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| id.clone()),
        id,
        image: s(cfg.image),
        labels: cfg
            .labels
            .map(|l| l.into_iter().collect())
            .unwrap_or_default(),
        privileged: hc.privileged.unwrap_or(false),
        network_mode: s(hc.network_mode),
        pid_mode: s(hc.pid_mode),
        ipc_mode: s(hc.ipc_mode),
        uts_mode: s(hc.uts_mode),
        userns_mode: s(hc.userns_mode),
        cap_add: hc.cap_add.unwrap_or_default(),
        devices: hc
            .devices
            .unwrap_or_default()
            .into_iter()
            .map(|d| {
                format!(
                    "{}:{}",
                    d.path_on_host.unwrap_or_default(),
                    d.path_in_container.unwrap_or_default()
                )
            })
            .collect(),
        security_opt: hc.security_opt.unwrap_or_default(),
        readonly_rootfs: hc.readonly_rootfs.unwrap_or(false),
        user: s(cfg.user),
        mounts: i
            .mounts
            .clone()
            .unwrap_or_default()
            .into_iter()
            .map(|m| Mount {
                kind: m.typ.map(|t| t.to_string()).unwrap_or_default(),
                source: s(m.source),
                destination: s(m.destination),
                rw: m.rw.unwrap_or(false),
            })
            .collect(),
        apparmor_profile: s(i.app_armor_profile.clone()),
    })
}

/// The daemon's settings from `/info` and its networks (`config` read separately).
pub fn daemon_security(
    engine: Engine,
    info: &SystemInfo,
    networks: &[DockerNetwork],
    config: DaemonConfig,
) -> DaemonSecurity {
    let mut nets: Vec<NetworkIcc> = networks
        .iter()
        .filter_map(|n| {
            Some(NetworkIcc {
                name: n.name.clone()?,
                driver: n.driver.clone().unwrap_or_default(),
                enable_icc: n.options.as_ref().and_then(|o| o.get(ICC_OPTION).cloned()),
            })
        })
        .collect();
    nets.sort_by(|a, b| a.name.cmp(&b.name));
    DaemonSecurity {
        engine,
        security_options: info.security_options.clone(),
        live_restore: info.live_restore_enabled,
        networks: nets,
        config,
    }
}

/// Every running `dockerd`'s command line, and the `daemon.json` each reads. Read-only;
/// what cannot be read (another pid namespace, no permission) is simply not a source.
pub fn read_dockerd_config() -> DaemonConfig {
    let mut cfg = DaemonConfig::default();
    let mut files: Vec<String> = Vec::new();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return cfg;
    };
    for p in procs.flatten() {
        let pid = p.file_name().to_string_lossy().into_owned();
        if !pid.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        if comm.trim() != "dockerd" {
            continue;
        }
        let Ok(raw) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let args: Vec<String> = raw
            .split(|b| *b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        let from = format!("/proc/{pid}/cmdline");
        let file = parse_dockerd_args(&args, &from, &mut cfg);
        cfg.sources.push(from);
        files.push(file.unwrap_or_else(|| DAEMON_JSON.to_string()));
    }
    files.sort();
    files.dedup();
    for f in files {
        match std::fs::read_to_string(&f) {
            Ok(text) => match parse_daemon_json(&text, &f, &mut cfg) {
                Ok(()) => cfg.sources.push(f),
                Err(e) => {
                    tracing::warn!("{e}; its settings are not judged");
                    cfg.sources.push(format!("{f} (not JSON, ignored)"));
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                cfg.sources.push(format!("{f} (absent)"));
            }
            Err(e) => tracing::warn!("cannot read {f}: {e}"),
        }
    }
    cfg
}

impl DockerSource {
    /// Everything `audit` judges: one list, one inspect per running container, `/info`
    /// and the network list, and the inventory made of the same answers. Read-only: nothing
    /// is created, changed or started, and no container's network namespace is entered
    /// (the inventory's veths stay unknown: audit asks who is in which group, not which
    /// addresses the kernel should bind).
    pub async fn security(&self) -> Result<(Inventory, HostSecurity), DockerError> {
        self.negotiate().await?;
        let docker = self.docker();
        self.count();
        self.count();
        let list = ListContainersOptions {
            all: false,
            ..Default::default()
        };
        let (containers, info, networks) = futures::join!(
            docker.list_containers(Some(list)),
            docker.info(),
            self.networks()
        );
        let containers = containers.map_err(|e| classify(&self.host, "list containers", e))?;
        let info = info.map_err(|e| classify(&self.host, "info", e))?;
        let networks = networks?;
        let ids: Vec<String> = containers.iter().filter_map(|c| c.id.clone()).collect();
        let inspected = self.inspect_all(ids).await?;
        // No answers: every veth stays unknown, and nothing is asked of netlink.
        let mut inv = finish(prepare(&containers, &networks, &inspected), Vec::new());
        inv.engine = self.engine();
        let mut list: Vec<ContainerSecurity> =
            inspected.values().filter_map(container_security).collect();
        list.sort_by(|a, b| a.name.cmp(&b.name).then(a.id.cmp(&b.id)));
        let engine = self.engine();
        let config = match (&self.endpoint, engine) {
            (Endpoint::Http(_), _) => DaemonConfig {
                sources: vec!["--docker-host".into()],
                plain_tcp_client: Some(self.host.clone()),
                ..DaemonConfig::default()
            },
            (Endpoint::Unix(_), Engine::Docker) => tokio::task::spawn_blocking(read_dockerd_config)
                .await
                .unwrap_or_default(),
            (Endpoint::Unix(_), Engine::Podman) => DaemonConfig::default(),
        };
        Ok((
            inv,
            HostSecurity {
                containers: list,
                daemon: daemon_security(engine, &info, &networks, config),
            },
        ))
    }
}
