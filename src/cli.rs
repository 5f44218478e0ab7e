//! The command line: parse the arguments, run one command (`crate::commands`), print one
//! clear line per problem, exit with the documented code.

use crate::commands::{self, Context};
use clap::{CommandFactory, Parser, Subcommand};
use std::path::PathBuf;

pub use crate::commands::{EXIT_ERROR, EXIT_OK, EXIT_PENDING, Failure, Output};

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

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Validate the policy (exit 0 valid, 2 invalid).
    Check,
    /// Dry run against the kernel (exit 0 in sync, 1 changes pending, 2 error).
    Diff(commands::diff::Args),
    /// Reconcile once (exit 0 done, 2 error).
    Apply(commands::apply::Args),
    /// The daemon: follow Docker, keep the tables in step (SIGHUP reloads, SIGTERM leaves the rules).
    Run(commands::run::Args),
    /// Networks, containers, groups, addresses, veths, enforcement health.
    Status(commands::status::Args),
    /// Containers and daemon settings that defeat isolation; groups that must not share
    /// this host (exit 0 nothing found, 1 findings, 2 error). Read-only.
    Audit,
    /// Remove netguard's own tables, nothing else.
    Uninstall,
    /// Is a new connection FROM → TO allowed, and why (exit 0 allowed, 1 denied, 2 error).
    Explain(commands::explain::Args),
    /// Allowed flows as a Graphviz graph (DOT; `--format svg` needs `dot`).
    Graph(commands::graph::Args),
    /// Recent denied connections from the kernel log, with container names.
    Log(commands::log::Args),
    /// Real packets from each container's network namespace to its peers, compared with the
    /// policy (exit 0 all matched, 1 mismatches, 2 error).
    Verify(commands::verify::Args),
    /// Shell completion script for SHELL on stdout.
    Completions(commands::completions::Args),
    /// The manual page (roff) on stdout.
    Man,
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

/// Runs the one command asked for. A new command: its variant above, its line here.
async fn run(cli: Cli) -> Result<i32, Failure> {
    let ctx = Context {
        config: cli.config,
        docker_host: cli.docker_host,
        inventory: cli.inventory,
        output: cli.output,
    };
    match &cli.command {
        Command::Check => commands::check::run(&ctx).await,
        Command::Diff(args) => commands::diff::run(&ctx, args).await,
        Command::Apply(args) => commands::apply::run(&ctx, args).await,
        Command::Run(args) => commands::run::run(&ctx, args).await,
        Command::Status(args) => commands::status::run(&ctx, args).await,
        Command::Audit => commands::audit::run(&ctx).await,
        Command::Uninstall => commands::uninstall::run(&ctx).await,
        Command::Explain(args) => commands::explain::run(&ctx, args).await,
        Command::Graph(args) => commands::graph::run(&ctx, args).await,
        Command::Log(args) => commands::log::run(&ctx, args).await,
        Command::Verify(args) => commands::verify::run(&ctx, args).await,
        Command::Completions(args) => commands::completions::run(Cli::command(), args),
        Command::Man => commands::man::run(Cli::command()),
    }
}

/// The man page (roff), generated from the command-line definition.
pub fn man_page() -> Result<String, Failure> {
    commands::man::page(Cli::command())
}
