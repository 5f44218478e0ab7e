//! The operator's commands beyond apply: the human `diff`, `explain`, `graph`, `status`,
//! `log`. Pure renderers over (policy, plan, live state) wherever possible, so the text and
//! JSON outputs are snapshot-tested on fixed inventories.

pub mod access;
pub mod audit;
pub mod diff;
pub mod edge_access;
pub mod edges;
pub mod explain;
pub mod explain_edge;
pub mod graph;
pub mod klog;
pub mod probe_marks;
pub mod service;
pub mod status;
pub mod style;
