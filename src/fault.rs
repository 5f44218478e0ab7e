//! Test hooks for fault injection (docs/reliability.md "Faults injected"), present in every
//! build like `NETGUARD_FAULT_NFT_FILE` (see `nft::fault`): while the file a variable names
//! exists, the socket it stands for fails to open or to be used, as a real failure would.
//! Unset (every real deployment), each check costs one environment lookup.

use std::io;

/// ctnetlink (conntrack): listing and deleting entries fails.
pub const CONNTRACK: &str = "NETGUARD_FAULT_CONNTRACK_FILE";

/// rtnetlink for the managed bridges (their br_netfilter switches, `bridge::NetlinkBridges`):
/// opening and using the socket fails.
pub const NETLINK: &str = "NETGUARD_FAULT_NETLINK_FILE";

/// rtnetlink of the Docker path: the veth resolver (`docker::NetlinkVethResolver`, in the
/// containers' namespaces and the host's) and early admission's port finder
/// (`docker::wait_for_port`, `docker::bridge_ports`): opening the socket fails. A hook of its
/// own, not `NETLINK`'s, so that a test can fail one path and see the other keep working.
pub const DOCKER_NETLINK: &str = "NETGUARD_FAULT_DOCKER_NETLINK_FILE";

/// The fault named by `var` is on: the variable is set and its file exists.
pub fn on(var: &str) -> bool {
    std::env::var_os(var).is_some_and(|p| std::path::Path::new(&p).exists())
}

/// The error an injected fault returns: says where it comes from, so that a log or a state
/// file read later cannot be mistaken for a real failure.
pub fn injected(var: &str) -> io::Error {
    io::Error::other(format!("socket failed (fault injected by {var})"))
}

/// `Err` while the fault named by `var` is on.
pub fn check(var: &str) -> io::Result<()> {
    if on(var) { Err(injected(var)) } else { Ok(()) }
}
