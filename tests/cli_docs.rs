//! Completions and the man page come from the clap definition; docs/netguard.1 is the
//! generated page, kept current by this test (`NETGUARD_REGEN_DOCS=1` rewrites it).

use std::path::Path;
use std::process::Command;

fn netguard(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_netguard"))
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn man_page_in_docs_is_current() {
    let page = netguard(&["man"]);
    assert!(page.starts_with(".ie \\n(.g .ds Aq"), "{page}");
    for cmd in [
        "check",
        "diff",
        "apply",
        "status",
        "explain",
        "graph",
        "log",
        "uninstall",
    ] {
        assert!(page.contains(cmd), "man page lacks {cmd}");
    }
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/netguard.1");
    if std::env::var("NETGUARD_REGEN_DOCS").is_ok_and(|v| v == "1") {
        std::fs::write(&path, &page).unwrap();
    }
    let on_disk = std::fs::read_to_string(&path).unwrap_or_default();
    assert_eq!(
        on_disk, page,
        "docs/netguard.1 is stale: rerun with NETGUARD_REGEN_DOCS=1"
    );
}

#[test]
fn completions_for_every_shell() {
    for (shell, needle) in [
        ("bash", "_netguard()"),
        ("zsh", "#compdef netguard"),
        ("fish", "complete -c netguard"),
        ("elvish", "netguard"),
        ("powershell", "netguard"),
    ] {
        let script = netguard(&["completions", shell]);
        assert!(script.contains(needle), "{shell}: {script}");
        assert!(
            script.contains("explain"),
            "{shell} completions lack subcommands"
        );
    }
}

#[test]
fn errors_are_one_line_and_json_stays_json() {
    let out = Command::new(env!("CARGO_BIN_EXE_netguard"))
        .args([
            "-c",
            "/nonexistent/policy.toml",
            "--output",
            "json",
            "explain",
            "a",
            "b",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["ok"], false);
    let out = Command::new(env!("CARGO_BIN_EXE_netguard"))
        .args(["-c", "/nonexistent/policy.toml", "graph"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
}

#[test]
fn graph_svg_without_dot_is_a_clear_error() {
    let root = env!("CARGO_MANIFEST_DIR");
    let out = Command::new(env!("CARGO_BIN_EXE_netguard"))
        .args([
            "-c",
            &format!("{root}/policy.example.toml"),
            "--inventory",
            &format!("{root}/docs/example-inventory.toml"),
            "graph",
            "--format",
            "svg",
        ])
        .env("PATH", "/nonexistent")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("`dot` (Graphviz) is not installed"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    // DOT in JSON.
    let out = Command::new(env!("CARGO_BIN_EXE_netguard"))
        .args([
            "-c",
            &format!("{root}/policy.example.toml"),
            "--inventory",
            &format!("{root}/docs/example-inventory.toml"),
            "--output",
            "json",
            "graph",
        ])
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        v["output"]
            .as_str()
            .unwrap()
            .starts_with("digraph netguard {")
    );
}
