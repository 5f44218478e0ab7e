//! The command line (DESIGN.md section 2, a contract): parse arguments, run one command,
//! print one clear line per problem, exit with the documented code.

use crate::bridge::{BridgeControl, NetlinkBridges};
use crate::docker::DockerSource;
use crate::inventory::{Engine, Inventory, load_inventory_file};
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
    Diff {
        /// List every nftables object that changes, not only their count.
        #[arg(long)]
        objects: bool,
    },
    /// Reconcile once (exit 0 done, 2 error).
    Apply {
        /// List every nftables object that changed, not only their count.
        #[arg(long)]
        objects: bool,
    },
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
        /// Serve Prometheus metrics on this address (without a value: 127.0.0.1:9432).
        #[arg(long, num_args = 0..=1, default_missing_value = crate::metrics::DEFAULT_LISTEN)]
        metrics_listen: Option<std::net::SocketAddr>,
    },
    /// Networks, containers, groups, addresses, veths, enforcement health.
    Status,
    /// Remove netguard's own tables, nothing else.
    Uninstall,
    /// Is a new connection FROM → TO allowed, and why (exit 0 allowed, 1 denied, 2 error).
    Explain {
        /// Source container: name, id or unique id prefix.
        from: String,
        /// Destination container: name, id or unique id prefix.
        to: String,
        /// What is opened: `8080/tcp`, `53/udp`, `icmp`; omitted = anything at all.
        port: Option<String>,
    },
    /// Allowed flows as a Graphviz graph (DOT; `--format svg` needs `dot`).
    Graph {
        /// `dot` (text, default) or any output format of Graphviz's `dot` (svg, png, pdf).
        #[arg(long, default_value = "dot")]
        format: String,
    },
    /// Recent denied connections from the kernel log, with container names.
    Log {
        /// Show at most the last N denials.
        #[arg(short = 'n', long, default_value_t = 50)]
        lines: usize,
        /// Read a saved log (journalctl -k, dmesg) instead of /dev/kmsg.
        #[arg(long)]
        file: Option<PathBuf>,
    },
    /// Real packets from each container's network namespace to its peers, compared with the
    /// policy (exit 0 all matched, 1 mismatches, 2 error).
    Verify {
        /// Only probes from this container (name, id or unique id prefix).
        #[arg(long)]
        from: Option<String>,
        /// Only probes to this container (name, id or unique id prefix).
        #[arg(long)]
        to: Option<String>,
        /// Pairs probed per class of (source groups, destination groups, network); 0: every pair.
        #[arg(long, default_value_t = 1)]
        sample: usize,
        /// How long a probe waits for an answer before it counts as blocked.
        #[arg(long, default_value_t = 300)]
        timeout_ms: u64,
    },
    /// Shell completion script for SHELL on stdout.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// The manual page (roff) on stdout.
    Man,
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
        // --help and --version are not errors: clap prints them as asked.
        Err(e) if !e.use_stderr() => {
            let _ = e.print();
            return EXIT_OK;
        }
        Err(e) => {
            // A script that asked for JSON parses stdout whatever went wrong.
            if argv_wants_json(std::env::args()) {
                return report(Output::Json, Failure(vec![usage_error_line(&e)]));
            }
            let _ = e.print();
            return EXIT_ERROR;
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

/// Whether the command line asks for `--output json`, read from the raw arguments
/// because parsing them is what failed. The last `--output` wins, as in clap.
pub fn argv_wants_json(args: impl IntoIterator<Item = String>) -> bool {
    let mut json = false;
    let mut prev: Option<String> = None;
    for a in args {
        if a == "--" {
            break;
        }
        if let Some(v) = a.strip_prefix("--output=") {
            json = v == "json";
        } else if prev.as_deref() == Some("--output") {
            json = a == "json";
        }
        prev = Some(a);
    }
    json
}

/// clap's message on one line: without its `error:` prefix, usage and `--help` advice.
pub fn usage_error_line(e: &clap::Error) -> String {
    let text = e.render().to_string();
    let mut parts = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with("Usage:") || line.starts_with("For more information") {
            break;
        }
        let line = line.strip_prefix("error:").unwrap_or(line).trim();
        if !line.is_empty() {
            parts.push(line);
        }
    }
    parts.join(" ")
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
    read_inventory(cli).await.0
}

/// The containers, and what they came from as `status` names it (`inventory file`, `docker`,
/// `podman`: the engine is known once the daemon has answered).
async fn read_inventory(cli: &Cli) -> (Result<Inventory, Failure>, &'static str) {
    match &cli.inventory {
        Some(path) => (
            load_inventory_file(path).map_err(Failure::from),
            "inventory file",
        ),
        None => match DockerSource::connect(cli.docker_host.as_deref()) {
            Ok(source) => {
                let inv = source.inventory().await.map_err(Failure::from);
                (inv, source.engine().as_str())
            }
            Err(e) => (Err(Failure::from(e)), Engine::Docker.as_str()),
        },
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
        Command::Diff { objects } => {
            let p = policy(&cli)?;
            let inv = inventory(&cli).await?;
            let plan = plan(&p, &inv);
            let backend = Backend::system();
            let live = backend.read_live()?;
            let changes = diff(&plan.ruleset, &live);
            let unflagged = unflagged_bridges(&plan).await;
            let impact = crate::ops::diff::impact(&plan, &live, &unflagged);
            match cli.output {
                Output::Text => {
                    use crate::ops::diff::Objects;
                    let list = objects.then(|| render_changes(&plan, &changes));
                    let shown = match &list {
                        Some(l) => Objects::List(l),
                        None => Objects::Summary(&changes),
                    };
                    print!(
                        "{}",
                        crate::ops::diff::render_with(
                            &impact,
                            shown,
                            changes.is_empty(),
                            crate::ops::style::Style::detect()
                        )
                    )
                }
                Output::Json => println!(
                    "{}",
                    crate::ops::diff::json(&impact, &changes, &plan.warnings)
                ),
            }
            Ok(if changes.is_empty() {
                EXIT_OK
            } else {
                EXIT_PENDING
            })
        }
        Command::Apply { objects } => {
            let p = policy(&cli)?;
            let inv = inventory(&cli).await?;
            let plan = plan(&p, &inv);
            for w in &plan.warnings {
                tracing::warn!("{w}");
            }
            // Checked before the bridge flags, whose own refusal would read differently.
            if !crate::nft::exec::has_net_admin() {
                return Err(Failure(vec![crate::nft::exec::PERMISSION_DENIED.into()]));
            }
            let bridges = managed_bridges(&plan);
            let missing = NetlinkBridges::connect()?.ensure_nf_call(&bridges).await?;
            for b in missing {
                tracing::warn!(bridge = %b, "managed bridge does not exist on this host");
            }
            let backend = Backend::system();
            // What the containers will see, read before the kernel changes (text only).
            let impact = match cli.output {
                Output::Text => {
                    let live = backend.read_live()?;
                    let unflagged = unflagged_bridges(&plan).await;
                    Some(crate::ops::diff::impact(&plan, &live, &unflagged))
                }
                Output::Json => None,
            };
            let changes = backend.reconcile(&plan.ruleset)?;
            match cli.output {
                Output::Text => {
                    if changes.is_empty() {
                        println!("in sync: nothing to do");
                    } else {
                        let style = crate::ops::style::Style::detect();
                        if let Some(impact) = &impact {
                            print!("{}", crate::ops::diff::render_flows(impact, style));
                        }
                        if objects {
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
            use crate::ops::status;
            let p = policy(&cli)?;
            let live = Backend::system().read_live()?;
            let (read, kind) = read_inventory(&cli).await;
            let (plan, source) = match read {
                Ok(inv) => (
                    Some(plan(&p, &inv)),
                    status::SourceHealth {
                        kind: kind.into(),
                        reachable: true,
                        error: None,
                    },
                ),
                Err(f) => (
                    None,
                    status::SourceHealth {
                        kind: kind.into(),
                        reachable: false,
                        error: Some(f.0.join("; ")),
                    },
                ),
            };
            let global = crate::bridge::global_nf_call();
            let mut bridges = Vec::new();
            if let Some(plan) = &plan {
                let nl = NetlinkBridges::connect()?;
                for b in managed_bridges(plan) {
                    let nf_call = nl.nf_call(&b).await?;
                    // Without br_netfilter (no sysctls: `global` is None) the per-bridge
                    // switches can be on and still nothing reaches the inet hook.
                    let seen = global.is_some_and(|g| {
                        g == (true, true) || nf_call.is_some_and(|f| f.iptables && f.ip6tables)
                    });
                    bridges.push(status::BridgeHealth {
                        bridge: b,
                        nf_call,
                        seen,
                    });
                }
            }
            let health = status::Health {
                inet_table: status::live_has(&live, crate::plan::ruleset::Family::Inet),
                bridge_table: status::live_has(&live, crate::plan::ruleset::Family::Bridge),
                current: plan.as_ref().map(|pl| diff(&pl.ruleset, &live).is_empty()),
                global_bridge_nf: global,
                bridges,
                source,
                daemon: status::daemon_health(&status::state_file()),
            };
            let counters = status::counters(&live);
            match cli.output {
                Output::Text => {
                    print!(
                        "{}",
                        status::render(
                            &health,
                            plan.as_ref(),
                            &counters,
                            crate::ops::style::Style::detect()
                        )
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
        Command::Explain {
            ref from,
            ref to,
            ref port,
        } => {
            use crate::ops::explain;
            let p = policy(&cli)?;
            let inv = inventory(&cli).await?;
            let plan = plan(&p, &inv);
            let mut x = explain::explain(&p, &plan, &inv, from, to, port.as_deref())?;
            let live = Backend::system().read_live().map_err(|e| e.to_string());
            x.caveats = explain::kernel_caveats(
                &plan,
                live.as_ref().map_err(Clone::clone),
                crate::bridge::global_nf_call().is_some(),
            );
            match cli.output {
                Output::Text => print!(
                    "{}",
                    explain::render(&x, crate::ops::style::Style::detect())
                ),
                Output::Json => println!("{}", explain::json(&x)),
            }
            Ok(if x.allowed { EXIT_OK } else { EXIT_PENDING })
        }
        Command::Graph { ref format } => {
            let p = policy(&cli)?;
            let inv = inventory(&cli).await?;
            let plan = plan(&p, &inv);
            let dot = crate::ops::graph::dot(&plan);
            let bytes = if format == "dot" {
                dot.into_bytes()
            } else {
                crate::ops::graph::render_with_dot(&dot, format)?
            };
            match cli.output {
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
        Command::Log { lines, ref file } => {
            use crate::ops::klog;
            let p = policy(&cli)?;
            // Names are a convenience: without Docker the denials are still shown.
            let plan = match inventory(&cli).await {
                Ok(inv) => Some(plan(&p, &inv)),
                Err(f) => {
                    tracing::warn!("container names not resolved: {}", f.0.join("; "));
                    None
                }
            };
            let records = match file {
                Some(f) => klog::read_file_records(f)?,
                None => klog::read_kmsg_records("/dev/kmsg")?,
            };
            let hidden = records.probes_hidden;
            let mut ds = records.denials;
            let skip = ds.len().saturating_sub(lines);
            ds.drain(..skip);
            if let Some(plan) = &plan {
                for d in &mut ds {
                    klog::resolve(d, plan);
                }
            }
            match cli.output {
                Output::Text => print!(
                    "{}{}",
                    klog::render(
                        &ds,
                        p.settings.log_denied,
                        crate::ops::style::Style::detect()
                    ),
                    klog::hidden_note(hidden)
                ),
                Output::Json => println!(
                    "{}",
                    klog::with_hidden(klog::json(&ds, p.settings.log_denied), hidden)
                ),
            }
            Ok(EXIT_OK)
        }
        Command::Verify {
            ref from,
            ref to,
            sample,
            timeout_ms,
        } => {
            let p = policy(&cli)?;
            let inv = inventory(&cli).await?;
            let args = crate::verify::command::Args {
                from: from.clone(),
                to: to.clone(),
                sample,
                timeout: std::time::Duration::from_millis(timeout_ms.max(1)),
            };
            let docker = match &cli.inventory {
                None => Some(DockerSource::connect(cli.docker_host.as_deref())?),
                Some(_) => None,
            };
            let o = crate::verify::command::verify(&p, &inv, &args, docker.as_ref()).await?;
            match cli.output {
                Output::Text => print!(
                    "{}",
                    crate::verify::report::render(
                        &o,
                        timeout_ms,
                        crate::ops::style::Style::detect()
                    )
                ),
                Output::Json => println!("{}", crate::verify::report::json(&o, timeout_ms)),
            }
            Ok(o.exit_code())
        }
        Command::Completions { shell } => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(shell, &mut cmd, "netguard", &mut std::io::stdout());
            Ok(EXIT_OK)
        }
        Command::Man => {
            print!("{}", man_page()?);
            Ok(EXIT_OK)
        }
        Command::Run {
            resync_interval,
            coalesce_ms,
            ref state_file,
            metrics_listen,
        } => {
            let mut opts = crate::daemon::Options::new(cli.config.clone());
            opts.metrics_listen = metrics_listen;
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

/// Bridges of the plan whose traffic the inet hook does not see today (per-bridge
/// nf_call flags off and the global sysctls off): open, whatever the live table says.
/// `apply` turns the flags on for managed bridges, so after it this set is empty for them.
async fn unflagged_bridges(plan: &Plan) -> std::collections::BTreeSet<String> {
    let mut out = std::collections::BTreeSet::new();
    if crate::bridge::global_nf_call() == Some((true, true)) {
        return out;
    }
    let Ok(nl) = NetlinkBridges::connect() else {
        return out;
    };
    for b in plan.networks.iter().filter_map(|n| n.bridge.as_ref()) {
        if let Ok(Some(f)) = nl.nf_call(b).await
            && !(f.iptables && f.ip6tables)
        {
            out.insert(b.clone());
        }
    }
    out
}

/// The man page (roff), generated from the command-line definition.
pub fn man_page() -> Result<String, Failure> {
    let cmd = <Cli as clap::CommandFactory>::command();
    let mut buf = Vec::new();
    clap_mangen::Man::new(cmd).render(&mut buf)?;
    Ok(String::from_utf8_lossy(&buf).into_owned())
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
        IfnamePair(..) | Port(..) => return String::new(),
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
    let _ = writeln!(out, "{}", changes.summary(false));
    out
}
