//! `netguard run`: the event-driven, fail-closed controller (DESIGN.md section 4).
//!
//! Start: install default-deny tables if netguard has none, subscribe to Docker's events,
//! list, reconcile, notify systemd. Then each event touches only the set elements it
//! concerns (see [`engine`]); network changes, reloads and reconnects reconcile fully.

pub mod conntrack;
pub mod controller;
pub mod engine;
pub mod notify;
pub mod source;

pub use controller::{Controller, DaemonState, Enforcer, Kernel, Options, enforce_delta};

use crate::docker::DockerSource;
use crate::nft::Backend;
use crate::policy::load_policy;
use std::path::PathBuf;

/// Runs the daemon until SIGTERM/SIGINT. `Err` carries lines for the user (exit 2).
pub async fn run(
    opts: Options,
    docker_host: Option<String>,
    inventory: Option<PathBuf>,
) -> Result<(), Vec<String>> {
    let policy = load_policy(&opts.config)
        .map_err(|e| e.0.iter().map(|e| e.to_string()).collect::<Vec<_>>())?;
    let kernel = Kernel::new(Backend::system());
    let result = match inventory {
        Some(path) => {
            let mut c = Controller::new(opts, policy, source::File::new(path), kernel);
            c.run().await
        }
        None => {
            let src =
                DockerSource::connect(docker_host.as_deref()).map_err(|e| vec![e.to_string()])?;
            let mut c = Controller::new(opts, policy, source::Docker::new(src), kernel);
            c.run().await
        }
    };
    result.map_err(|e| vec![format!("cannot run the daemon: {e}")])
}

#[cfg(test)]
mod tests;
