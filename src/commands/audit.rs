//! `netguard audit`: exit 0 nothing found, 1 findings, 2 error. Read-only Docker API use
//! only: no nft, no netlink, no namespace entered.

use super::{Context, EXIT_OK, EXIT_PENDING, Failure, Output};
use crate::audit::{HostSecurity, audit};
use crate::docker::DockerSource;
use crate::inventory::Inventory;
use crate::plan::plan;
use crate::policy::Policy;

pub async fn run(ctx: &Context) -> Result<i32, Failure> {
    let p = ctx.policy()?;
    let (inv, host) = read(ctx).await?;
    let findings = audit(&p, &plan(&p, &inv), &host);
    match ctx.output {
        Output::Text => print!(
            "{}",
            crate::ops::audit::render(&findings, crate::ops::style::Style::detect())
        ),
        Output::Json => println!("{}", crate::audit::json(&findings)),
    }
    Ok(if findings.is_empty() {
        EXIT_OK
    } else {
        EXIT_PENDING
    })
}

/// The containers' and the daemon's settings, and the inventory of the same answers.
pub async fn read(ctx: &Context) -> Result<(Inventory, HostSecurity), Failure> {
    if ctx.inventory.is_some() {
        return Err(Failure(vec![
            "audit reads each container's security settings from Docker or Podman, and an --inventory file has none: run it without --inventory".into(),
        ]));
    }
    let source = DockerSource::connect(ctx.docker_host.as_deref())?;
    Ok(source.security().await?)
}

/// The summary `status` shows: counts by severity, or why there are none.
pub async fn summary(ctx: &Context, policy: &Policy) -> Result<crate::audit::Summary, String> {
    let (inv, host) = read(ctx).await.map_err(|f| f.0.join("; "))?;
    let findings = audit(policy, &plan(policy, &inv), &host);
    Ok(crate::audit::Summary::of(&findings))
}
