//! `netguard status`: enforcement health, what is managed, counters (exit 0 healthy,
//! 1 degraded, 2 the containers cannot be read).

use super::{Context, EXIT_ERROR, EXIT_OK, EXIT_PENDING, Failure, Output, StateFile};
use crate::bridge::{BridgeControl, NetlinkBridges, global_nf_call};
use crate::nft::Backend;
use crate::ops::status;
use crate::ops::style::Style;
use crate::plan::{Plan, plan};

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    pub state: StateFile,
}

pub async fn run(ctx: &Context, args: &Args) -> Result<i32, Failure> {
    let p = ctx.policy()?;
    let live = Backend::system().read_live()?;
    let (read, kind) = ctx.read_inventory().await;
    let (plan, source) = match read {
        Ok(inv) => (Some(plan(&p, &inv)), status::SourceHealth::reachable(kind)),
        Err(f) => (
            None,
            status::SourceHealth::unreachable(kind, f.0.join("; ")),
        ),
    };
    let global = global_nf_call();
    let bridges = match &plan {
        Some(plan) => bridges(plan).await?,
        None => Vec::new(),
    };
    let mut health = status::health(
        &live,
        plan.as_ref(),
        global,
        bridges,
        source,
        status::daemon_health(&args.state.state_file),
    );
    if ctx.inventory.is_none() {
        health.audit = Some(match super::audit::summary(ctx, &p).await {
            Ok(s) => crate::audit::AuditStatus::Counts(s),
            Err(error) => crate::audit::AuditStatus::Unknown { error },
        });
    }
    let counters = status::counters(&live);
    match ctx.output {
        Output::Text => {
            print!(
                "{}",
                status::render(&health, plan.as_ref(), &counters, Style::detect())
            );
            // The report went to stdout; the failure is also said where errors go.
            if let Some(e) = status::source_error(&health) {
                eprintln!("netguard: {e}");
            }
        }
        Output::Json => println!("{}", status::json(&health, plan.as_ref(), &counters)),
    }
    Ok(if !health.source.reachable {
        EXIT_ERROR
    } else if health.ok() {
        EXIT_OK
    } else {
        EXIT_PENDING
    })
}

/// The managed bridges' switches, and whether the inet hook sees each.
async fn bridges(plan: &Plan) -> Result<Vec<status::BridgeHealth>, Failure> {
    let nl = NetlinkBridges::connect()?;
    let mut out = Vec::new();
    for bridge in plan.managed_bridges() {
        let sight = nl.forward_hook(&bridge).await?;
        out.push(status::BridgeHealth {
            bridge,
            nf_call: sight.nf_call,
            seen: sight.blind.is_none(),
        });
    }
    Ok(out)
}
