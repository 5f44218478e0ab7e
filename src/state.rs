//! The daemon's state file: what `netguard run` reports after each reconcile and
//! `netguard status` reads back. One type, one default path, one override; the JSON contract
//! is documented in docs/output.md.
//!
//! It sits at the bottom of the crate, beside `bridge` and `loc`, because both the writer
//! (`daemon`) and the reader (`ops::status`) use it and neither may import the other.

use serde::{Deserialize, Serialize};
use std::path::Path;

/// Where the daemon writes its state unless told otherwise (systemd's `RuntimeDirectory`).
pub const DEFAULT_PATH: &str = "/run/netguard/state.json";

/// The environment variable that overrides [`DEFAULT_PATH`] for `run` and `status` alike;
/// `--state-file` overrides both.
pub const PATH_ENV: &str = "NETGUARD_STATE";

/// What the daemon writes after each reconcile. The fields after `pid` carry
/// `#[serde(default)]`: a file written by an older daemon (which wrote fewer) still reads.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DaemonState {
    pub pid: u32,
    /// What the daemon follows (`Docker at unix:///...`, `inventory file PATH`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    #[serde(default)]
    pub started_unix_ms: u64,
    #[serde(default)]
    pub last_reconcile_unix_ms: Option<u64>,
    #[serde(default)]
    pub last_event_unix_ms: Option<u64>,
    /// Containers with an endpoint on a managed network, after the last change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub containers: Option<usize>,
    /// The daemon's own view of its connection to `source`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connected: Option<bool>,
    #[serde(default)]
    pub last_error: Option<String>,
    #[serde(default)]
    pub reconciles: u64,
    #[serde(default)]
    pub events: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("unreadable: {0}")]
    Unreadable(#[from] serde_json::Error),
}

/// Reads the state file; `Ok(None)` when there is none (the daemon never ran here).
pub fn read(path: &Path) -> Result<Option<DaemonState>, StateError> {
    match std::fs::read_to_string(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e.into()),
        Ok(text) => Ok(Some(serde_json::from_str(&text)?)),
    }
}

/// Writes the state file whole: a reader sees the old or the new one, never half of one.
pub fn write(path: &Path, state: &DaemonState) -> Result<(), StateError> {
    let json = serde_json::to_vec_pretty(state)?;
    if let Some(dir) = path.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, json)?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_the_daemon_writes_reads_back_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/state.json");
        let s = DaemonState {
            pid: 812,
            source: Some("inventory file /etc/netguard/hosts.toml".into()),
            started_unix_ms: 1,
            last_reconcile_unix_ms: Some(2),
            last_event_unix_ms: Some(3),
            containers: Some(4),
            connected: Some(true),
            last_error: Some("e".into()),
            reconciles: 5,
            events: 6,
        };
        write(&path, &s).unwrap();
        assert_eq!(read(&path).unwrap(), Some(s));
        assert!(!path.with_extension("json.tmp").exists());
    }

    #[test]
    fn an_older_daemons_file_and_no_file_both_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        assert_eq!(read(&path).unwrap(), None);
        std::fs::write(&path, r#"{"pid": 7, "last_reconcile_unix_ms": null}"#).unwrap();
        let s = read(&path).unwrap().unwrap();
        assert_eq!((s.pid, s.source, s.connected), (7, None, None));
        std::fs::write(&path, "{").unwrap();
        assert!(
            read(&path)
                .unwrap_err()
                .to_string()
                .starts_with("unreadable: ")
        );
    }
}
