//! `netguard verify` from the command line: resolve `--from`/`--to`, select, find the
//! source namespaces (inventory file or Docker), run with the real prober, conntrack and
//! kernel log.

use super::select::{Choice, EdgeTargets, select, select_edges};
use super::{Kmsg, Marker, NoMarker, Outcome, World, probe::NetnsProber};
use crate::docker::DockerSource;
use crate::inventory::Inventory;
use crate::policy::Policy;
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct Args {
    pub from: Option<String>,
    pub to: Option<String>,
    pub sample: usize,
    pub timeout: Duration,
    /// Where the edge probes go (none without an address).
    pub edges: EdgeTargets,
}

#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error(transparent)]
    Container(#[from] crate::ops::explain::ExplainError),
    #[error(
        "nothing to verify: no two containers share a managed network{}",
        if *.0 { " (with --from/--to)" } else { "" }
    )]
    Nothing(bool),
    #[error("verify enters the containers' network namespaces: run it as root")]
    NotRoot,
    #[error(transparent)]
    Docker(#[from] crate::docker::DockerError),
    #[error("verify: {0}")]
    Internal(String),
}

fn resolve(inv: &Inventory, key: &Option<String>) -> Result<Option<String>, VerifyError> {
    let Some(k) = key else { return Ok(None) };
    Ok(Some(
        crate::ops::explain::find_container(inv, k)?.id.clone(),
    ))
}

/// The whole command; `docker` is the source when there is no inventory file.
pub async fn verify(
    policy: &Policy,
    inv: &Inventory,
    args: &Args,
    docker: Option<&DockerSource>,
) -> Result<Outcome, VerifyError> {
    let choice = Choice {
        from: resolve(inv, &args.from)?,
        to: resolve(inv, &args.to)?,
        sample: args.sample,
    };
    let plan = crate::plan::plan(policy, inv);
    let mut selection = select(&plan, &choice);
    // The edges have no destination container: `--to` asks for pairs only.
    if choice.to.is_none() {
        selection
            .probes
            .extend(select_edges(policy, &plan, inv, &choice, &args.edges));
    }
    if selection.probes.is_empty() {
        return Err(VerifyError::Nothing(
            choice.from.is_some() || choice.to.is_some(),
        ));
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err(VerifyError::NotRoot);
    }
    let sources: BTreeSet<String> = selection.probes.iter().map(|p| p.from_id.clone()).collect();
    let mut netns: BTreeMap<String, Result<PathBuf, String>> = BTreeMap::new();
    match docker {
        Some(d) => {
            let ids: Vec<String> = sources.iter().cloned().collect();
            let pids = d.pids(&ids).await?;
            for id in sources {
                let r = pids
                    .get(&id)
                    .map(|p| PathBuf::from(format!("/proc/{p}/ns/net")))
                    .ok_or_else(|| "container stopped or removed meanwhile".to_string());
                netns.insert(id, r);
            }
        }
        None => {
            for id in sources {
                let r = inv.netns.get(&id).map(|n| n.path()).ok_or_else(|| {
                    "the inventory file names no `netns` or `pid` for it".to_string()
                });
                netns.insert(id, r);
            }
        }
    }
    let log_denied = policy.settings.log_denied;
    let timeout = args.timeout;
    tokio::task::spawn_blocking(move || {
        let marker: &dyn Marker = if log_denied { &Kmsg } else { &NoMarker };
        let world = World {
            netns: &netns,
            prober: &NetnsProber::default(),
            conntrack: &crate::conntrack::Ctnetlink,
            marker,
        };
        super::run(selection, &world, timeout)
    })
    .await
    .map_err(|e| VerifyError::Internal(e.to_string()))
}
