//! The policy: trust groups and the flows allowed between them (the contract: docs/policy.md).
//!
//! `parse` turns TOML into this validated model; everything downstream can rely on its
//! invariants: every group referenced exists, every glob compiled, every port range valid.

mod glob;
mod net;
mod parse;
mod ports;

pub use glob::{Glob, GlobError};
pub use net::{Net, NetError};
pub use parse::{PolicyError, PolicyErrors, load_policy, parse_policy, warnings};
pub use ports::{PortSpec, PortSpecError, Proto};

use crate::loc::Loc;
use serde::Serialize;
use std::collections::BTreeMap;

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Policy {
    pub version: u32,
    pub settings: Settings,
    /// Groups by name (sorted, so iteration is deterministic).
    pub groups: BTreeMap<String, Group>,
    /// Allow entries in file order.
    pub allows: Vec<Allow>,
    /// `[[separate]]` lines in file order: trust groups that must not share this host.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub separates: Vec<Separate>,
}

/// Members of these groups (at least two, all defined) must not run on the same host.
/// netguard cannot move containers: `audit`, the daemon's log and its metrics report it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Separate {
    pub groups: Vec<String>,
    pub comment: Option<String>,
    pub loc: Loc,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Settings {
    /// Globs over Docker network names; a network is managed when any matches.
    pub networks: Vec<Glob>,
    pub anti_spoofing: bool,
    pub log_denied: bool,
    /// Managed container -> an address of this host.
    pub host: EdgeDefault,
    /// Managed container -> anything forwarded out of a non-engine interface.
    pub egress: EdgeDefault,
    /// Outside -> a managed container (through its published ports).
    pub ingress: EdgeDefault,
    /// A packet between two ports of a managed bridge whose source or destination is not
    /// admitted yet waits on the NFQUEUE `admission_queue` for the daemon to admit it (at
    /// most `HOLD_MS`), instead of being dropped at once. Off: dropped at once.
    pub admission_hold: bool,
    pub admission_queue: u16,
}

/// The NFQUEUE number held packets wait on unless `admission_queue` says otherwise.
pub const DEFAULT_ADMISSION_QUEUE: u16 = 3710;

/// How long the daemon holds a packet for its container's admission: the first TCP SYN
/// is sent again after 1 s, so holding it longer than that only delays a drop.
pub const HOLD_MS: u64 = 1000;

/// What an edge of the managed networks does with a new connection no line allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EdgeDefault {
    #[default]
    Allow,
    Deny,
}

impl EdgeDefault {
    pub fn as_str(self) -> &'static str {
        match self {
            EdgeDefault::Allow => "allow",
            EdgeDefault::Deny => "deny",
        }
    }
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            networks: vec![Glob::any()],
            anti_spoofing: true,
            log_denied: false,
            host: EdgeDefault::Allow,
            egress: EdgeDefault::Allow,
            ingress: EdgeDefault::Allow,
            admission_hold: true,
            admission_queue: DEFAULT_ADMISSION_QUEUE,
        }
    }
}

impl Settings {
    pub fn manages_network(&self, name: &str) -> bool {
        self.networks.iter().any(|g| g.matches(name))
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Group {
    pub name: String,
    /// A container is a member when ANY selector matches.
    pub selectors: Vec<Selector>,
    /// `false` (`mac_binding = false`): its members may send from MACs that are not
    /// their own (VRRP, keepalived). Never from another endpoint's bound MAC.
    pub mac_binding: bool,
    pub loc: Loc,
}

/// Inside one selector ALL given keys must match; a selector has at least one key.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Selector {
    pub name: Option<Glob>,
    pub image: Option<Glob>,
    /// Label key → glob over its value; `"*"` means "present".
    pub labels: BTreeMap<String, Glob>,
    /// Glob over the names of the networks the container is attached to.
    pub network: Option<Glob>,
    pub loc: Loc,
}

/// The side of a flow: any managed container, members of the listed groups, or (on the
/// edges, see docs/policy.md) this host, the world, or addresses outside.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Peers {
    Any,
    Groups(Vec<String>),
    /// `"host"`: this host's own addresses (only as `to`).
    Host,
    /// `"world"`: anything that is not a managed container.
    World,
    /// Addresses or CIDRs, IPv4 and IPv6.
    Nets(Vec<Net>),
}

impl Peers {
    /// Managed containers (groups or `"*"`), as opposed to an edge peer.
    pub fn is_containers(&self) -> bool {
        matches!(self, Peers::Any | Peers::Groups(_))
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Allow {
    pub from: Peers,
    pub to: Peers,
    /// `true` for a `within = G` entry (then `from == to == Groups([G])`).
    pub within: bool,
    /// `None` means all traffic.
    pub ports: Option<Vec<PortSpec>>,
    pub comment: Option<String>,
    pub loc: Loc,
}
