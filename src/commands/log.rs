//! `netguard log`: recent denied connections from the kernel log, with container names.

use super::{Context, EXIT_OK, Failure};
use crate::ops::klog;
use crate::ops::style::Style;
use crate::plan::plan;
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Show at most the last N denials.
    #[arg(short = 'n', long, default_value_t = 50)]
    pub lines: usize,
    /// Read a saved log (journalctl -k, dmesg) instead of /dev/kmsg.
    #[arg(long)]
    pub file: Option<PathBuf>,
}

pub async fn run(ctx: &Context, args: &Args) -> Result<i32, Failure> {
    let p = ctx.policy()?;
    // Names are a convenience: without Docker the denials are still shown.
    let plan = match ctx.inventory().await {
        Ok(inv) => Some(plan(&p, &inv)),
        Err(f) => {
            tracing::warn!("container names not resolved: {}", f.0.join("; "));
            None
        }
    };
    let records = match &args.file {
        Some(f) => klog::read_file_records(f)?,
        None => klog::read_kmsg_records("/dev/kmsg")?,
    };
    let hidden = records.probes_hidden;
    let mut ds = records.denials;
    let skip = ds.len().saturating_sub(args.lines);
    ds.drain(..skip);
    if let Some(plan) = &plan {
        for d in &mut ds {
            klog::resolve(d, plan);
        }
    }
    let log_denied = p.settings.log_denied;
    ctx.print(
        || klog::render(&ds, log_denied, Style::detect()) + &klog::hidden_note(hidden),
        || klog::with_hidden(klog::json(&ds, log_denied), hidden),
    );
    Ok(EXIT_OK)
}
