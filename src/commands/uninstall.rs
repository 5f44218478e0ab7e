//! `netguard uninstall`: remove netguard's own tables, nothing else.

use super::{Context, EXIT_OK, Failure, Output};
use crate::nft::Backend;

pub async fn run(ctx: &Context) -> Result<i32, Failure> {
    let removed = Backend::system().uninstall()?;
    let names: Vec<String> = removed
        .iter()
        .map(|f| format!("{} netguard", f.as_str()))
        .collect();
    match ctx.output {
        Output::Text if names.is_empty() => println!("no netguard tables present"),
        Output::Text => println!("removed table {}", names.join(", table ")),
        Output::Json => println!("{}", serde_json::json!({ "ok": true, "removed": names })),
    }
    Ok(EXIT_OK)
}
