//! nftables backend.
