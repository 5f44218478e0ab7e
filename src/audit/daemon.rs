//! The daemon-level checks, and the parsing of dockerd's own configuration (its command
//! line and `daemon.json`) for what `/info` does not say: where it listens and with which TLS.

use super::checks::security_option_name;
use super::{DaemonSecurity, Finding, Severity};
use crate::inventory::Engine;
use crate::plan::Plan;
use serde::Serialize;

/// A `-H`/`hosts` address of the daemon.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Listener {
    pub address: String,
    /// Where it was read (`/proc/PID/cmdline`, `/etc/docker/daemon.json`, `--docker-host`).
    pub from: String,
}

/// What netguard could read of the daemon's configuration. `sources` names what was read;
/// empty means nothing could be (another host, a container, no permission), and then the
/// listener check says nothing rather than guess.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct DaemonConfig {
    pub sources: Vec<String>,
    pub listeners: Vec<Listener>,
    /// `--tlsverify` / `"tlsverify": true`: clients must present a certificate.
    pub tlsverify: bool,
    /// `--tls` / `"tls": true`: TLS without client verification.
    pub tls: bool,
    pub no_new_privileges: bool,
    /// netguard itself reaches the daemon over plain TCP (`--docker-host tcp://`).
    pub plain_tcp_client: Option<String>,
}

/// Folds dockerd's arguments (`/proc/PID/cmdline`, NUL-split) into `cfg`; returns the
/// `--config-file` it names, if any.
pub fn parse_dockerd_args(args: &[String], from: &str, cfg: &mut DaemonConfig) -> Option<String> {
    let mut config_file = None;
    let flag_true = |v: Option<&str>| v.is_none_or(|v| v == "true" || v == "1");
    let mut i = 1;
    while let Some(a) = args.get(i) {
        i += 1;
        let (name, inline) = match a.split_once('=') {
            Some((n, v)) if n.starts_with('-') => (n, Some(v.to_string())),
            _ => (a.as_str(), None),
        };
        // `-H X` takes the next argument; `-H=X` and `--host=X` carry it.
        let mut value = || {
            inline.clone().or_else(|| {
                let v = args.get(i).cloned();
                i += 1;
                v
            })
        };
        match name {
            "-H" | "--host" => {
                if let Some(v) = value() {
                    cfg.listeners.push(Listener {
                        address: v,
                        from: from.to_string(),
                    });
                }
            }
            "--config-file" => config_file = value(),
            "--tlsverify" => cfg.tlsverify |= flag_true(inline.as_deref()),
            "--tls" => cfg.tls |= flag_true(inline.as_deref()),
            "--no-new-privileges" => cfg.no_new_privileges |= flag_true(inline.as_deref()),
            _ => {}
        }
    }
    config_file
}

/// Folds `daemon.json` into `cfg`. A file that is not JSON is an error: dockerd itself
/// would refuse to start with it, so it is not what runs.
pub fn parse_daemon_json(text: &str, from: &str, cfg: &mut DaemonConfig) -> Result<(), String> {
    let v: serde_json::Value =
        serde_json::from_str(text).map_err(|e| format!("{from}: not JSON: {e}"))?;
    if let Some(hosts) = v.get("hosts").and_then(|h| h.as_array()) {
        for h in hosts.iter().filter_map(|h| h.as_str()) {
            cfg.listeners.push(Listener {
                address: h.to_string(),
                from: from.to_string(),
            });
        }
    }
    let flag = |k: &str| v.get(k).and_then(|b| b.as_bool()).unwrap_or(false);
    cfg.tlsverify |= flag("tlsverify");
    cfg.tls |= flag("tls");
    cfg.no_new_privileges |= flag("no-new-privileges");
    Ok(())
}

fn is_tcp(address: &str) -> bool {
    address.starts_with("tcp://") || address.starts_with("http://")
}

/// The daemon's own findings, and the icc of every bridge network netguard does not manage.
pub fn findings(d: &DaemonSecurity, plan: &Plan) -> Vec<Finding> {
    let mut out = Vec::new();
    let mut add = |id: &'static str, severity, evidence: String, fix: &str, cis| {
        out.push(Finding {
            id,
            severity,
            container: None,
            evidence,
            fix: fix.to_string(),
            cis,
        });
    };
    let docker = d.engine == Engine::Docker;
    let tcp: Vec<&super::Listener> = d
        .config
        .listeners
        .iter()
        .filter(|l| is_tcp(&l.address))
        .collect();
    if let Some(host) = &d.config.plain_tcp_client {
        add(
            "daemon-tcp-no-tls",
            Severity::High,
            format!(
                "netguard reaches the daemon at {host} over plain HTTP (--docker-host / DOCKER_HOST)"
            ),
            "listen on TCP only with TLS: dockerd --tlsverify --tlscacert --tlscert --tlskey (daemon.json \"tlsverify\": true), or use the unix socket",
            Some("2.7"),
        );
    } else if !tcp.is_empty() && !d.config.tlsverify {
        let list: Vec<String> = tcp
            .iter()
            .map(|l| format!("{} (from {})", l.address, l.from))
            .collect();
        let tls = if d.config.tls {
            "TLS without client verification (--tls, no --tlsverify)"
        } else {
            "no TLS"
        };
        add(
            "daemon-tcp-no-tls",
            Severity::High,
            format!("listens on {} with {tls}", list.join(", ")),
            "dockerd --tlsverify --tlscacert --tlscert --tlskey (daemon.json \"tlsverify\": true), or drop the tcp:// host",
            Some("2.7"),
        );
    }
    let Some(opts) = &d.security_options else {
        return out;
    };
    let names: Vec<&str> = opts
        .iter()
        .filter_map(|o| security_option_name(o))
        .collect();
    let evidence = format!("/info SecurityOptions={opts:?}");
    let seccomp = opts
        .iter()
        .find(|o| security_option_name(o) == Some("seccomp"));
    if seccomp.is_none_or(|o| o.contains("profile=unconfined")) {
        add(
            "daemon-seccomp-off",
            Severity::High,
            evidence.clone(),
            "run dockerd with seccomp (a kernel and runc built with it) and its default profile; no --seccomp-profile unconfined",
            Some("5.22"),
        );
    }
    if !names.contains(&"apparmor") && !names.contains(&"selinux") {
        add(
            "daemon-no-lsm",
            Severity::Medium,
            evidence.clone(),
            "enable AppArmor (apt install apparmor; containers then get docker-default) or SELinux (dockerd --selinux-enabled)",
            Some("5.2"),
        );
    }
    if !names.contains(&"userns") {
        add(
            "daemon-userns-off",
            Severity::Medium,
            evidence,
            if docker {
                "dockerd --userns-remap default (daemon.json \"userns-remap\": \"default\"), so that uid 0 in a container is not uid 0 on the host"
            } else {
                "run Podman rootless, or give containers --userns auto"
            },
            Some("2.9"),
        );
    }
    // Podman keeps containers across restarts of its service anyway (conmon holds them).
    if docker && d.live_restore == Some(false) {
        add(
            "daemon-live-restore-off",
            Severity::Low,
            "/info LiveRestoreEnabled=false".into(),
            "dockerd --live-restore (daemon.json \"live-restore\": true): containers keep running while dockerd restarts",
            Some("2.15"),
        );
    }
    for n in &d.networks {
        if n.driver != "bridge" {
            continue;
        }
        let managed = plan.networks.iter().any(|p| p.name == n.name && p.managed);
        let icc_on = n.enable_icc.as_deref().is_none_or(|v| v != "false");
        if managed || !icc_on {
            continue;
        }
        let value = match &n.enable_icc {
            Some(v) => format!("{v:?}"),
            None => "absent (on by default)".into(),
        };
        add(
            "daemon-icc",
            Severity::Medium,
            format!(
                "network {}: Options.com.docker.network.bridge.enable_icc {value}, and netguard does not manage it",
                n.name
            ),
            "add the network to settings.networks, or create it with -o com.docker.network.bridge.enable_icc=false (docker0: dockerd --icc=false)",
            Some("2.2"),
        );
    }
    out
}
