//! The commands of the command line, one module each. A command's `run` reads what it
//! needs, does its work, prints its result (text or JSON, see docs/output.md) and returns
//! the exit code, or a [`Failure`] that `cli` prints as one line per problem (exit 2).
//!
//! `cli` only parses the arguments and calls one `run`: a new command is a new file here
//! with its `Args` and `run`, plus its variant and dispatch line in `cli::Command`.
//! What they format lives beside what it renders, in `ops`; the commands only gather.

pub mod apply;
pub mod audit;
pub mod check;
pub mod completions;
mod context;
pub mod diff;
pub mod explain;
pub mod graph;
pub mod log;
pub mod man;
pub mod run;
pub mod status;
pub mod uninstall;
pub mod verify;

pub use context::{Context, EXIT_ERROR, EXIT_OK, EXIT_PENDING, Failure, Output, StateFile};
