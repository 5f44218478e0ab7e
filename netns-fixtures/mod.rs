//! Network-namespace fixtures for netguard's kernel tests.
//!
//! Include from an integration test with
//!
//! ```ignore
//! #[path = "../netns-fixtures/mod.rs"]
//! mod netns;
//! use netns::{fixture::*, probe::*};
//! ```
//!
//! See `netns-fixtures/README.md`.
#![allow(dead_code)]

pub mod fixture;
pub mod frames;
pub mod probe;
