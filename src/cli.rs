//! The command line (DESIGN.md section 2, a contract): parse arguments, run one command,
//! print one clear line per problem, exit with the documented code.

use crate::bridge::{BridgeControl, NetlinkBridges};
use crate::docker::DockerSource;
use crate::inventory::{Inventory, load_inventory_file};
use crate::nft::{Backend, Changes, diff};
use crate::plan::{Plan, plan};
use crate::policy::{Policy, load_policy};
use clap::{Parser, Subcommand, ValueEnum};
use std::collections::BTreeMap;
use std::path::PathBuf;

pub const EXIT_OK: i32 = 0;
pub const EXIT_PENDING: i32 = 1;
pub const EXIT_ERROR: i32 = 2;

#[derive(Parser, Debug)]
#[command(
    name = "netguard",
    version,
    about = "Trust-group isolation between containers, enforced with nftables"
)]
pub struct Cli {
    /// Policy file.
    #[arg(
        short = 'c',
        long = "config",
        env = "NETGUARD_CONFIG",
        default_value = "/etc/netguard/policy.toml",
        global = true
    )]
    pub config: PathBuf,
    /// Docker daemon URI (unix:///path or tcp://host:port); default $DOCKER_HOST or the local socket.
    #[arg(long, global = true)]
    pub docker_host: Option<String>,
    /// Read containers from this TOML file instead of Docker.
    #[arg(long, global = true)]
    pub inventory: Option<PathBuf>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Output::Text, global = true)]
    pub output: Output,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Text,
    Json,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Validate the policy (exit 0 valid, 2 invalid).
    Check,
    /// Dry run against the kernel (exit 0 in sync, 1 changes pending, 2 error).
    Diff,
    /// Reconcile once (exit 0 done, 2 error).
    Apply,
    /// The daemon: follow Docker, keep the tables in step (SIGHUP reloads, SIGTERM leaves the rules).
    Run {
        /// Seconds between full resyncs (drift repair).
        #[arg(long, default_value_t = 300)]
        resync_interval: u64,
        /// Milliseconds within which a burst of events is coalesced into one transaction.
        #[arg(long, default_value_t = 20)]
        coalesce_ms: u64,
        /// Where the daemon reports its state for `netguard status`.
        #[arg(long, default_value = "/run/netguard/state.json")]
        state_file: PathBuf,
    },
    /// Networks, containers, groups, addresses, veths, enforcement health.
    Status,
    /// Remove netguard's own tables, nothing else.
    Uninstall,
}

/// An error for the user: one line, already phrased.
#[derive(Debug)]
pub struct Failure(pub Vec<String>);

impl<E: std::fmt::Display> From<E> for Failure {
    fn from(e: E) -> Self {
        Failure(e.to_string().lines().map(str::to_string).collect())
    }
}

pub fn main() -> i32 {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { EXIT_ERROR } else { EXIT_OK };
            let _ = e.print();
            return code;
        }
    };
    init_tracing();
    let output = cli.output;
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return report(output, Failure::from(format!("cannot start runtime: {e}"))),
    };
    match rt.block_on(run(cli)) {
        Ok(code) => code,
        Err(f) => report(output, f),
    }
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("NETGUARD_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none());
    // Under systemd, journald stamps every line itself.
    let _ = if std::env::var_os("JOURNAL_STREAM").is_some() {
        builder.without_time().try_init()
    } else {
        builder.try_init()
    };
}

fn report(output: Output, f: Failure) -> i32 {
    match output {
        Output::Text => {
            for line in &f.0 {
                eprintln!("netguard: {line}");
            }
        }
        Output::Json => {
            println!("{}", serde_json::json!({ "ok": false, "errors": f.0 }));
        }
    }
    EXIT_ERROR
}

fn policy(cli: &Cli) -> Result<Policy, Failure> {
    load_policy(&cli.config).map_err(|e| Failure(e.0.iter().map(|e| e.to_string()).collect()))
}

async fn inventory(cli: &Cli) -> Result<Inventory, Failure> {
    match &cli.inventory {
        Some(path) => Ok(load_inventory_file(path)?),
        None => {
            let source = DockerSource::connect(cli.docker_host.as_deref())?;
            Ok(source.inventory().await?)
        }
    }
}

async fn run(cli: Cli) -> Result<i32, Failure> {
    match cli.command {
        Command::Check => {
            let p = policy(&cli)?;
            match cli.output {
                Output::Text => println!(
                    "{}: valid ({} groups, {} allow entries)",
                    cli.config.display(),
                    p.groups.len(),
                    p.allows.len()
                ),
                Output::Json => println!(
                    "{}",
                    serde_json::json!({ "ok": true, "groups": p.groups.len(), "allows": p.allows.len() })
                ),
            }
            Ok(EXIT_OK)
        }
        Command::Diff => {
            let p = policy(&cli)?;
            let inv = inventory(&cli).await?;
            let plan = plan(&p, &inv);
            let backend = Backend::system();
            let changes = diff(&plan.ruleset, &backend.read_live()?);
            match cli.output {
                Output::Text => print!("{}", render_changes(&plan, &changes)),
                Output::Json => println!(
                    "{}",
                    serde_json::json!({ "ok": true, "in_sync": changes.is_empty(), "changes": changes, "warnings": plan.warnings })
                ),
            }
            Ok(if changes.is_empty() {
                EXIT_OK
            } else {
                EXIT_PENDING
            })
        }
        Command::Apply => {
            let p = policy(&cli)?;
            let inv = inventory(&cli).await?;
            let plan = plan(&p, &inv);
            for w in &plan.warnings {
                tracing::warn!("{w}");
            }
            let bridges = managed_bridges(&plan);
            let missing = NetlinkBridges::connect()?.ensure_nf_call(&bridges).await?;
            for b in missing {
                tracing::warn!(bridge = %b, "managed bridge does not exist on this host");
            }
            let backend = Backend::system();
            let changes = backend.reconcile(&plan.ruleset)?;
            let (added, removed) = changes.element_counts();
            match cli.output {
                Output::Text => {
                    if changes.is_empty() {
                        println!("in sync: nothing to do");
                    } else {
                        print!("{}", render_changes(&plan, &changes));
                        println!("applied: {added} set elements added, {removed} removed");
                    }
                }
                Output::Json => println!(
                    "{}",
                    serde_json::json!({ "ok": true, "changed": !changes.is_empty(), "changes": changes, "warnings": plan.warnings })
                ),
            }
            Ok(EXIT_OK)
        }
        Command::Uninstall => {
            let removed = Backend::system().uninstall()?;
            let names: Vec<String> = removed
                .iter()
                .map(|f| format!("{} netguard", f.as_str()))
                .collect();
            match cli.output {
                Output::Text if names.is_empty() => println!("no netguard tables present"),
                Output::Text => println!("removed table {}", names.join(", table ")),
                Output::Json => println!("{}", serde_json::json!({ "ok": true, "removed": names })),
            }
            Ok(EXIT_OK)
        }
        Command::Status => {
            let p = policy(&cli)?;
            let inv = inventory(&cli).await?;
            let plan = plan(&p, &inv);
            let backend = Backend::system();
            let changes = diff(&plan.ruleset, &backend.read_live()?);
            match cli.output {
                Output::Text => print!("{}", render_status(&plan, &changes)),
                Output::Json => println!(
                    "{}",
                    serde_json::json!({ "ok": true, "in_sync": changes.is_empty(), "plan": plan })
                ),
            }
            Ok(EXIT_OK)
        }
        Command::Run {
            resync_interval,
            coalesce_ms,
            ref state_file,
        } => {
            let mut opts = crate::daemon::Options::new(cli.config.clone());
            opts.resync = std::time::Duration::from_secs(resync_interval.max(1));
            opts.coalesce = std::time::Duration::from_millis(coalesce_ms);
            opts.state_file = Some(state_file.clone());
            crate::daemon::run(opts, cli.docker_host.clone(), cli.inventory.clone())
                .await
                .map_err(Failure)?;
            Ok(EXIT_OK)
        }
    }
}

pub fn managed_bridges(plan: &Plan) -> Vec<String> {
    let mut b: Vec<String> = plan
        .networks
        .iter()
        .filter(|n| n.managed)
        .filter_map(|n| n.bridge.clone())
        .collect();
    b.sort();
    b.dedup();
    b
}

/// Which container owns an element, for humans reading a diff.
fn owners(plan: &Plan) -> BTreeMap<String, String> {
    let mut m = BTreeMap::new();
    for c in &plan.containers {
        for e in &c.endpoints {
            for a in e
                .ipv4
                .map(|a| a.to_string())
                .into_iter()
                .chain(e.ipv6.map(|a| a.to_string()))
            {
                m.insert(a, c.name.clone());
            }
            if let Some(v) = &e.veth {
                m.insert(v.clone(), c.name.clone());
            }
        }
    }
    m
}

fn owner_of(owners: &BTreeMap<String, String>, e: &crate::plan::ruleset::Elem) -> String {
    use crate::plan::ruleset::Elem::*;
    let key = match e {
        IfnameV4(_, a) | V4(a) => a.to_string(),
        IfnameV6(_, a) | V6(a) => a.to_string(),
        Ifname(i) => i.clone(),
        IfnamePair(..) => return String::new(),
    };
    owners
        .get(&key)
        .map(|n| format!("  ({n})"))
        .unwrap_or_default()
}

pub fn render_changes(plan: &Plan, changes: &Changes) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    if changes.is_empty() {
        out.push_str("in sync: no changes\n");
        return out;
    }
    let owners = owners(plan);
    for t in changes.tables.iter().filter(|t| !t.is_empty()) {
        let fam = t.family.map(|f| f.as_str()).unwrap_or("?");
        let _ = writeln!(out, "table {fam} netguard:");
        if t.delete_table {
            let _ = writeln!(out, "  - delete table");
            continue;
        }
        if t.create_table {
            let _ = writeln!(out, "  + create table");
        }
        for (s, _) in &t.create_sets {
            let _ = writeln!(out, "  + set {s}");
        }
        for s in &t.delete_sets {
            let _ = writeln!(out, "  - set {s}");
        }
        for c in &t.create_chains {
            let _ = writeln!(out, "  + chain {c}");
        }
        for c in &t.delete_chains {
            let _ = writeln!(out, "  - chain {c}");
        }
        for r in &t.removed_rules {
            let _ = writeln!(out, "  - rule {r}");
        }
        for r in &t.added_rules {
            let _ = writeln!(out, "  + rule {r}");
        }
        for (set, elems) in &t.delete_elements {
            for e in elems {
                let _ = writeln!(out, "  - element {set} {{ {e} }}{}", owner_of(&owners, e));
            }
        }
        for (set, elems) in &t.add_elements {
            for e in elems {
                let _ = writeln!(out, "  + element {set} {{ {e} }}{}", owner_of(&owners, e));
            }
        }
    }
    let (a, d) = changes.element_counts();
    let plural = |n: usize| if n == 1 { "element" } else { "elements" };
    let _ = writeln!(out, "{a} {} to add, {d} to remove", plural(a));
    out
}

fn render_status(plan: &Plan, changes: &Changes) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "enforcement: {}",
        if changes.is_empty() {
            "tables present and current"
        } else {
            "tables missing or out of date (run `netguard diff`)"
        }
    );
    let _ = writeln!(out, "\nnetworks:");
    for n in &plan.networks {
        let _ = writeln!(
            out,
            "  {:<20} {:<8} bridge {:<16} {}",
            n.name,
            n.driver,
            n.bridge.as_deref().unwrap_or("-"),
            if n.managed { "managed" } else { "unmanaged" }
        );
    }
    let _ = writeln!(out, "\ncontainers:");
    for c in &plan.containers {
        let groups = if c.groups.is_empty() {
            "(no group)".to_string()
        } else {
            c.groups.join(",")
        };
        let _ = writeln!(
            out,
            "  {:<24} {}",
            c.name,
            if c.managed {
                groups
            } else {
                "unmanaged".into()
            }
        );
        for e in &c.endpoints {
            let addrs: Vec<String> = e
                .ipv4
                .map(|a| a.to_string())
                .into_iter()
                .chain(e.ipv6.map(|a| a.to_string()))
                .collect();
            let _ = writeln!(
                out,
                "      {} via {} veth {} {}{}",
                e.network,
                e.bridge,
                e.veth.as_deref().unwrap_or("?"),
                addrs.join(" "),
                e.reason
                    .as_ref()
                    .map(|r| format!("  NOT ADMITTED: {r}"))
                    .unwrap_or_default()
            );
        }
    }
    if !plan.unisolable.is_empty() {
        let _ = writeln!(out, "\ncannot be isolated:");
        for u in &plan.unisolable {
            let _ = writeln!(out, "  {:<24} {}", u.name, u.reason);
        }
    }
    for w in &plan.warnings {
        let _ = writeln!(out, "warning: {w}");
    }
    out
}
