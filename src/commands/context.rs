//! What every command shares: the global options, loading the policy and the containers,
//! the exit codes and the user-facing error.

use crate::docker::DockerSource;
use crate::inventory::{Engine, Inventory, load_inventory_file};
use crate::policy::{Policy, load_policy};
use std::path::PathBuf;

pub const EXIT_OK: i32 = 0;
pub const EXIT_PENDING: i32 = 1;
pub const EXIT_ERROR: i32 = 2;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    Text,
    Json,
}

/// An error for the user: one line, already phrased.
#[derive(Debug)]
pub struct Failure(pub Vec<String>);

impl<E: std::fmt::Display> From<E> for Failure {
    fn from(e: E) -> Self {
        Failure(e.to_string().lines().map(str::to_string).collect())
    }
}

/// The options every command is given (`--config`, `--docker-host`, `--inventory`, `--output`).
#[derive(Debug, Clone)]
pub struct Context {
    pub config: PathBuf,
    pub docker_host: Option<String>,
    pub inventory: Option<PathBuf>,
    pub output: Output,
}

/// `--state-file`: the one path `run` writes and `status` reads (`NETGUARD_STATE` when not
/// given; see `crate::state`).
#[derive(clap::Args, Debug, Clone)]
pub struct StateFile {
    /// Where the daemon reports its state for `netguard status`.
    #[arg(
        long = "state-file",
        env = crate::state::PATH_ENV,
        default_value = crate::state::DEFAULT_PATH
    )]
    pub state_file: PathBuf,
}

impl Context {
    pub fn policy(&self) -> Result<Policy, Failure> {
        load_policy(&self.config).map_err(|e| Failure(e.0.iter().map(|e| e.to_string()).collect()))
    }

    pub async fn inventory(&self) -> Result<Inventory, Failure> {
        self.read_inventory().await.0
    }

    /// The containers, and what they came from as `status` names it (`inventory file`,
    /// `docker`, `podman`: the engine is known once the daemon has answered).
    pub async fn read_inventory(&self) -> (Result<Inventory, Failure>, &'static str) {
        match &self.inventory {
            Some(path) => (
                load_inventory_file(path).map_err(Failure::from),
                "inventory file",
            ),
            None => match DockerSource::connect(self.docker_host.as_deref()) {
                Ok(source) => {
                    let inv = source.inventory().await.map_err(Failure::from);
                    (inv, source.engine().as_str())
                }
                Err(e) => (Err(Failure::from(e)), Engine::Docker.as_str()),
            },
        }
    }

    /// Prints a document: `text` for humans, `json` with `--output json`.
    pub fn print(&self, text: impl FnOnce() -> String, json: impl FnOnce() -> serde_json::Value) {
        match self.output {
            Output::Text => print!("{}", text()),
            Output::Json => println!("{}", json()),
        }
    }
}
