//! `netguard verify`: real probes from each source container's network namespace, compared
//! with the policy (exit 0 every probe matched, 1 mismatches, 2 error).

use super::{Context, Failure, Output};
use crate::docker::DockerSource;
use crate::ops::style::Style;
use crate::verify::{command, report};
use std::time::Duration;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Only probes from this container (name, id or unique id prefix).
    #[arg(long)]
    pub from: Option<String>,
    /// Only probes to this container (name, id or unique id prefix).
    #[arg(long)]
    pub to: Option<String>,
    /// Pairs probed per class of (source groups, destination groups, network); 0: every pair.
    #[arg(long, default_value_t = 1)]
    pub sample: usize,
    /// How long a probe waits for an answer before it counts as blocked.
    #[arg(long, default_value_t = 300)]
    pub timeout_ms: u64,
    /// Also probe the edges at this address of this host (a bridge's gateway): the ports
    /// the `to = "host"` lines open and one they do not, and the published TCP ports.
    #[arg(long, value_name = "ADDR")]
    pub host_addr: Option<std::net::IpAddr>,
    /// Also probe egress to this address outside: the ports the lines to it open and one
    /// they do not.
    #[arg(long, value_name = "ADDR")]
    pub world_addr: Option<std::net::IpAddr>,
}

pub async fn run(ctx: &Context, args: &Args) -> Result<i32, Failure> {
    let p = ctx.policy()?;
    let inv = ctx.inventory().await?;
    let wanted = command::Args {
        from: args.from.clone(),
        to: args.to.clone(),
        sample: args.sample,
        timeout: Duration::from_millis(args.timeout_ms.max(1)),
        edges: crate::verify::select::EdgeTargets {
            host: args.host_addr,
            outside: args.world_addr,
        },
    };
    // The namespaces of Docker's containers come from their PIDs, asked at verify time.
    let docker = match &ctx.inventory {
        None => Some(DockerSource::connect(ctx.docker_host.as_deref())?),
        Some(_) => None,
    };
    let o = command::verify(&p, &inv, &wanted, docker.as_ref()).await?;
    match ctx.output {
        Output::Text => print!("{}", report::render(&o, args.timeout_ms, Style::detect())),
        Output::Json => println!("{}", report::json(&o, args.timeout_ms)),
    }
    Ok(o.exit_code())
}
