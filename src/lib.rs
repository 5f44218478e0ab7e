//! netguard: trust-group isolation between containers on one Docker host.
//!
//! Data flows one way: `policy` and `inventory` feed the pure `plan`, whose desired
//! ruleset the `nft` backend reconciles with the kernel. Everything that does I/O
//! (Docker, netlink, nft) sits behind a small trait so the core stays testable.

pub mod audit;
pub mod bridge;
pub mod cli;
pub mod commands;
pub mod conntrack;
pub mod daemon;
pub mod docker;
pub mod fault;
pub mod inventory;
pub mod loc;
pub mod metrics;
pub mod nfnetlink;
pub mod nfqueue;
pub mod nft;
pub mod ops;
pub mod plan;
pub mod policy;
pub mod state;
pub mod verify;
