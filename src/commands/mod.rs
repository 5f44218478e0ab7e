//! One file per command.

pub mod audit;
