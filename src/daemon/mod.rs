//! `netguard run`: the event-driven, fail-closed controller (DESIGN.md section 4).

pub mod engine;
