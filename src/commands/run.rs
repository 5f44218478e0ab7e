//! `netguard run`: the daemon (see `crate::daemon`).

use super::{Context, EXIT_OK, Failure, StateFile};
use std::time::Duration;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Seconds between full resyncs (drift repair).
    #[arg(long, default_value_t = 300)]
    pub resync_interval: u64,
    /// Milliseconds within which a burst of events is coalesced into one transaction.
    #[arg(long, default_value_t = 20)]
    pub coalesce_ms: u64,
    #[command(flatten)]
    pub state: StateFile,
    /// Serve Prometheus metrics on this address (without a value: 127.0.0.1:9432).
    #[arg(long, num_args = 0..=1, default_missing_value = crate::metrics::DEFAULT_LISTEN)]
    pub metrics_listen: Option<std::net::SocketAddr>,
}

pub async fn run(ctx: &Context, args: &Args) -> Result<i32, Failure> {
    let mut opts = crate::daemon::Options::new(ctx.config.clone());
    opts.metrics_listen = args.metrics_listen;
    opts.resync = Duration::from_secs(args.resync_interval.max(1));
    opts.coalesce = Duration::from_millis(args.coalesce_ms);
    opts.state_file = Some(args.state.state_file.clone());
    crate::daemon::run(opts, ctx.docker_host.clone(), ctx.inventory.clone())
        .await
        .map_err(Failure)?;
    Ok(EXIT_OK)
}
