//! `netguard completions SHELL`: a shell completion script on stdout.

use super::{EXIT_OK, Failure};

#[derive(clap::Args, Debug)]
pub struct Args {
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

/// `cli` is the whole command-line definition the script completes.
pub fn run(mut cli: clap::Command, args: &Args) -> Result<i32, Failure> {
    clap_complete::generate(args.shell, &mut cli, "netguard", &mut std::io::stdout());
    Ok(EXIT_OK)
}
