//! `netguard diff`: a dry run against the kernel (exit 0 in sync, 1 changes pending).

use super::{Context, EXIT_OK, EXIT_PENDING, Failure};
use crate::bridge::{NetlinkBridges, unseen_bridges};
use crate::nft::{Backend, diff};
use crate::ops::diff as render;
use crate::ops::style::Style;
use crate::plan::{Plan, plan};
use std::collections::BTreeSet;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// List every nftables object that changes, not only their count.
    #[arg(long)]
    pub objects: bool,
}

pub async fn run(ctx: &Context, args: &Args) -> Result<i32, Failure> {
    let p = ctx.policy()?;
    let inv = ctx.inventory().await?;
    let plan = plan(&p, &inv);
    let live = Backend::system().read_live()?;
    let changes = diff(&plan.ruleset, &live);
    let impact = render::impact(&plan, &live, &unseen_today(&plan).await);
    ctx.print(
        || {
            let list = args
                .objects
                .then(|| render::render_changes(&plan, &changes));
            let shown = match &list {
                Some(l) => render::Objects::List(l),
                None => render::Objects::Summary(&changes),
            };
            render::render_with(&impact, shown, changes.is_empty(), Style::detect())
        },
        || render::json(&impact, &changes, &plan.warnings),
    );
    Ok(if changes.is_empty() {
        EXIT_OK
    } else {
        EXIT_PENDING
    })
}

/// Bridges of the plan whose traffic the inet hook does not see today: open, whatever the
/// live table says. `apply` turns the switches on for managed bridges, so after it this
/// set is empty for them. Without netlink the preview goes on as if all were seen.
pub(super) async fn unseen_today(plan: &Plan) -> BTreeSet<String> {
    let Ok(nl) = NetlinkBridges::connect() else {
        return BTreeSet::new();
    };
    unseen_bridges(&nl, plan.networks.iter().filter_map(|n| n.bridge.as_ref())).await
}
