//! Per-bridge br_netfilter switches.
