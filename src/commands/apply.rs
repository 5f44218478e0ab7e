//! `netguard apply`: reconcile once (exit 0 done, 2 error).

use super::{Context, EXIT_OK, Failure, Output};
use crate::bridge::{BridgeControl, NetlinkBridges};
use crate::nft::Backend;
use crate::nft::exec::{PERMISSION_DENIED, has_net_admin};
use crate::ops::diff::render_changes;
use crate::plan::plan;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// List every nftables object that changed, not only their count.
    #[arg(long)]
    pub objects: bool,
}

pub async fn run(ctx: &Context, args: &Args) -> Result<i32, Failure> {
    let p = ctx.policy()?;
    let inv = ctx.inventory().await?;
    let plan = plan(&p, &inv);
    for w in &plan.warnings {
        tracing::warn!("{w}");
    }
    // Checked before the bridge flags, whose own refusal would read differently.
    if !has_net_admin() {
        return Err(Failure(vec![PERMISSION_DENIED.into()]));
    }
    let missing = NetlinkBridges::connect()?
        .ensure_nf_call(&plan.managed_bridges())
        .await?;
    for b in missing {
        tracing::warn!(bridge = %b, "managed bridge does not exist on this host");
    }
    let backend = Backend::system();
    // What the containers will see, read before the kernel changes (text only).
    let impact = match ctx.output {
        Output::Text => {
            let live = backend.read_live()?;
            let unseen = super::diff::unseen_today(&plan).await;
            Some(crate::ops::diff::impact(&plan, &live, &unseen))
        }
        Output::Json => None,
    };
    let changes = backend.reconcile(&plan.ruleset)?;
    match ctx.output {
        Output::Text => {
            if changes.is_empty() {
                println!("in sync: nothing to do");
            } else {
                let style = crate::ops::style::Style::detect();
                if let Some(impact) = &impact {
                    print!("{}", crate::ops::diff::render_flows(impact, style));
                }
                if args.objects {
                    print!("{}", render_changes(&plan, &changes));
                }
                println!("applied: {}", changes.summary(true));
            }
        }
        Output::Json => println!(
            "{}",
            serde_json::json!({ "ok": true, "changed": !changes.is_empty(), "changes": changes, "warnings": plan.warnings })
        ),
    }
    Ok(EXIT_OK)
}
