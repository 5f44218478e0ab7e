//! `netguard explain FROM TO [PORT/PROTO]`: the policy's verdict and why (exit 0 allowed,
//! 1 denied, 2 error), with what the kernel may do otherwise.

use super::{Context, EXIT_OK, EXIT_PENDING, Failure};
use crate::bridge::{Blind, BridgeControl, NetlinkBridges, forward_hook_blind, global_nf_call};
use crate::nft::Backend;
use crate::ops::explain::{self, Explanation};
use crate::ops::explain_edge::{self, Answer};
use crate::ops::style::Style;
use crate::plan::{Plan, plan};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Source: a container (name, id or unique id prefix), `world`, or an address outside.
    pub from: String,
    /// Destination: a container, `host` (this host), `world`, or an address outside.
    pub to: String,
    /// What is opened: `8080/tcp`, `53/udp`, `icmp`; omitted = anything at all.
    pub port: Option<String>,
}

pub async fn run(ctx: &Context, args: &Args) -> Result<i32, Failure> {
    let p = ctx.policy()?;
    let inv = ctx.inventory().await?;
    let plan = plan(&p, &inv);
    let mut x =
        explain_edge::explain_any(&p, &plan, &inv, &args.from, &args.to, args.port.as_deref())?;
    let caveats = match &x {
        Answer::Pair(pair) => read_caveats(&plan, pair).await,
        // An edge crosses no bridge between two containers: only the tables matter.
        Answer::Edge(_) => {
            let live = Backend::system().read_live().map_err(|e| e.to_string());
            explain::kernel_caveats(&plan, live.as_ref().map_err(Clone::clone), &[])
        }
    };
    x.set_caveats(caveats);
    ctx.print(|| x.render(Style::detect()), || x.json());
    Ok(if x.allowed() { EXIT_OK } else { EXIT_PENDING })
}

/// Reads the kernel: netguard's tables, and whether the inet hook sees the bridges the two
/// containers share. Nothing here fails the command; what cannot be read becomes a caveat
/// or, for a bridge, is judged from the host-wide switches alone.
async fn read_caveats(plan: &Plan, x: &Explanation) -> Vec<String> {
    let live = Backend::system().read_live().map_err(|e| e.to_string());
    let nl = NetlinkBridges::connect().ok();
    let mut blind: Vec<(String, Blind)> = Vec::new();
    for bridge in x.managed_bridges() {
        let read = match &nl {
            Some(nl) => nl.forward_hook(bridge).await.ok(),
            None => None,
        };
        let why = match read {
            // A bridge that does not exist forwards nothing: its switches say nothing.
            Some(s) if s.nf_call.is_none() => s.blind.filter(|w| *w == Blind::NoBrNetfilter),
            Some(s) => s.blind,
            None => {
                forward_hook_blind(global_nf_call(), None).filter(|w| *w == Blind::NoBrNetfilter)
            }
        };
        if let Some(why) = why {
            blind.push((bridge.to_string(), why));
        }
    }
    explain::kernel_caveats(plan, live.as_ref().map_err(Clone::clone), &blind)
}
