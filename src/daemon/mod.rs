//! `netguard run`: the event-driven, fail-closed controller (docs/architecture.md section 3).
//!
//! Start: install default-deny tables if netguard has none, subscribe to Docker's events,
//! list, reconcile, notify systemd. Then each event touches only the set elements it
//! concerns (see [`engine`]); network changes, reloads and reconnects reconcile fully.

pub mod controller;
pub mod early;
pub mod engine;
pub mod hold;
pub mod notify;
mod observe;
pub mod separation;
pub mod source;

pub use crate::state::DaemonState;
pub use controller::{Controller, Enforcer, Kernel, Options, enforce_delta};

use crate::metrics::{Metrics, MetricsServer};
use crate::nft::Backend;
use crate::policy::load_policy;
use std::path::PathBuf;
use std::sync::Arc;

/// Runs the daemon until SIGTERM/SIGINT. `Err` carries lines for the user (exit 2).
pub async fn run(
    opts: Options,
    docker_host: Option<String>,
    inventory: Option<PathBuf>,
) -> Result<(), Vec<String>> {
    let policy = load_policy(&opts.config)
        .map_err(|e| e.0.iter().map(|e| e.to_string()).collect::<Vec<_>>())?;
    let kernel = Kernel::new(Backend::system());
    // Bound before anything else so that a taken port is an error at start, not later.
    let metrics = match opts.metrics_listen {
        Some(addr) => {
            let server = MetricsServer::bind(addr)
                .await
                .map_err(|e| vec![format!("cannot listen for metrics on {addr}: {e}")])?;
            let m = Arc::new(Metrics::with_kernel_counters());
            tracing::info!(%addr, "serving metrics");
            let served = m.clone();
            tokio::spawn(async move {
                if let Err(e) = server.run(served).await {
                    tracing::error!("metrics listener failed: {e}");
                }
            });
            Some(m)
        }
        None => None,
    };
    let observe = |c: &mut dyn FnMut(Box<dyn controller::Observer>)| {
        if let Some(m) = &metrics {
            c(Box::new(m.clone()));
        }
    };
    let result = match inventory {
        Some(path) => {
            let mut c = Controller::new(opts, policy, source::File::new(path), kernel);
            observe(&mut |o| c.observer = o);
            c.run().await
        }
        None => {
            let src = source::Docker::new(docker_host).map_err(|e| vec![e.to_string()])?;
            let mut c = Controller::new(opts, policy, src, kernel);
            observe(&mut |o| c.observer = o);
            c.run().await
        }
    };
    result.map_err(|e| vec![format!("cannot run the daemon: {e}")])
}

#[cfg(test)]
mod tests;
