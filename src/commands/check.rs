//! `netguard check`: validate the policy (exit 0 valid, 2 invalid).

use super::{Context, EXIT_OK, Failure};

pub async fn run(ctx: &Context) -> Result<i32, Failure> {
    let p = ctx.policy()?;
    ctx.print(
        || {
            format!(
                "{}: valid ({} groups, {} allow entries{})\n",
                ctx.config.display(),
                p.groups.len(),
                p.allows.len(),
                match p.separates.len() {
                    0 => String::new(),
                    n => format!(", {n} separate lines"),
                }
            )
        },
        || serde_json::json!({ "ok": true, "groups": p.groups.len(), "allows": p.allows.len(), "separates": p.separates.len() }),
    );
    Ok(EXIT_OK)
}
