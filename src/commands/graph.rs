//! `netguard graph`: the allowed flows as a Graphviz graph.

use super::{Context, EXIT_OK, Failure, Output};
use crate::ops::graph::{dot, render_with_dot};
use crate::plan::plan;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// `dot` (text, default) or any output format of Graphviz's `dot` (svg, png, pdf).
    #[arg(long, default_value = "dot")]
    pub format: String,
}

pub async fn run(ctx: &Context, args: &Args) -> Result<i32, Failure> {
    let format = &args.format;
    let p = ctx.policy()?;
    let inv = ctx.inventory().await?;
    let dot = dot(&plan(&p, &inv));
    let bytes = if format == "dot" {
        dot.into_bytes()
    } else {
        render_with_dot(&dot, format)?
    };
    match ctx.output {
        Output::Text => {
            use std::io::Write;
            std::io::stdout().write_all(&bytes)?;
        }
        Output::Json => {
            let text = String::from_utf8(bytes).map_err(|_| {
                Failure(vec![format!(
                    "format {format} is binary and has no JSON form; use --output text"
                )])
            })?;
            println!(
                "{}",
                serde_json::json!({ "ok": true, "format": format, "output": text })
            );
        }
    }
    Ok(EXIT_OK)
}
