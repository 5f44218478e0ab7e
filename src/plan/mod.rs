//! The pure plan.
