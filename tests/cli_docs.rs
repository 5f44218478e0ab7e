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

/// A usage error with `--output json` is still one JSON document on stdout, exit 2;
/// `--help` and `--version` are not errors.
#[test]
fn usage_errors_are_json_when_json_is_asked() {
    for args in [
        &["--output", "json", "explain", "web-1"][..],
        &["--output=json", "explain", "web-1"][..],
        &[
            "explain", "--output", "json", "web-1", "api-1", "80/tcp", "extra",
        ][..],
        &["--output", "json", "no-such-command"][..],
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_netguard"))
            .args(args)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(stdout.lines().count(), 1, "{args:?}: {stdout}");
        let v: serde_json::Value = serde_json::from_str(&stdout)
            .unwrap_or_else(|e| panic!("{args:?}: not JSON ({e}): {stdout}"));
        assert_eq!(v["ok"], false, "{v}");
        let errors = v["errors"].as_array().unwrap();
        assert_eq!(errors.len(), 1, "{v}");
        let e = errors[0].as_str().unwrap();
        assert!(!e.contains('\n') && !e.starts_with("error:"), "{e}");
        assert!(!e.is_empty());
    }
    let out = Command::new(env!("CARGO_BIN_EXE_netguard"))
        .args(["--output", "json", "explain", "web-1"])
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        v["errors"][0].as_str().unwrap().contains("<TO>"),
        "the message names what is missing: {v}"
    );
    // Text mode keeps clap's own message (with usage) on stderr.
    let out = Command::new(env!("CARGO_BIN_EXE_netguard"))
        .args(["explain", "web-1"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(out.stdout.is_empty());
    assert!(String::from_utf8_lossy(&out.stderr).contains("<TO>"));
    for flag in ["--help", "--version"] {
        let out = Command::new(env!("CARGO_BIN_EXE_netguard"))
            .args(["--output", "json", flag])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(0), "{flag}");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(stdout.contains("netguard"), "{flag}: {stdout}");
        assert!(serde_json::from_str::<serde_json::Value>(&stdout).is_err());
    }
}

/// Without CAP_NET_ADMIN the kernel refuses every nftables read: one line, exit 2, and
/// in JSON mode a valid error document (libnftables must not write on our stderr).
/// As root the binary is run as `nobody`; as another user it already is unprivileged.
#[test]
fn kernel_permission_denied_is_one_line() {
    use std::os::unix::fs::PermissionsExt;
    let root = env!("CARGO_MANIFEST_DIR");
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let policy = dir.path().join("policy.toml");
    let inv = dir.path().join("inventory.toml");
    std::fs::copy(format!("{root}/policy.example.toml"), &policy).unwrap();
    std::fs::copy(format!("{root}/docs/example-inventory.toml"), &inv).unwrap();
    for f in [&policy, &inv] {
        std::fs::set_permissions(f, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    let is_root = std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(2) == Some("0"));
    let run = |extra: &[&str]| {
        let mut cmd = if is_root {
            let mut c = Command::new("setpriv");
            c.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
                .arg(env!("CARGO_BIN_EXE_netguard"));
            c
        } else {
            Command::new(env!("CARGO_BIN_EXE_netguard"))
        };
        cmd.arg("-c")
            .arg(&policy)
            .arg("--inventory")
            .arg(&inv)
            .args(extra)
            .env_remove("NETGUARD_NFT")
            .env_remove("NETGUARD_READ")
            .output()
            .expect("setpriv (util-linux)")
    };
    let want =
        "netguard: cannot read nftables: permission denied (run as root or with CAP_NET_ADMIN)";
    for cmd in ["diff", "status", "apply", "uninstall"] {
        let out = run(&[cmd]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{cmd}: {stderr}");
        assert_eq!(stderr.trim_end(), want, "{cmd}: exactly one line");
        assert!(out.stdout.is_empty(), "{cmd}");
        let out = run(&["--output", "json", cmd]);
        assert_eq!(out.status.code(), Some(2), "{cmd}");
        assert!(
            out.stderr.is_empty(),
            "{cmd}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{cmd}: {e}: {}", String::from_utf8_lossy(&out.stdout)));
        assert_eq!(v["ok"], false, "{v}");
        assert_eq!(v["errors"], serde_json::json!([want["netguard: ".len()..]]));
    }
    // The nft binary (NETGUARD_NFT=process) words it the same way.
    let out = {
        let mut c = Command::new(if is_root {
            "setpriv"
        } else {
            env!("CARGO_BIN_EXE_netguard")
        });
        if is_root {
            c.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
                .arg(env!("CARGO_BIN_EXE_netguard"));
        }
        c.arg("-c")
            .arg(&policy)
            .arg("--inventory")
            .arg(&inv)
            .arg("diff")
            .env("NETGUARD_NFT", "process")
            .output()
            .unwrap()
    };
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert_eq!(stderr.trim_end(), want);
}

/// Whether Graphviz's `dot` runs here. Without it the SVG tests skip loudly, and fail under
/// CI=true (scripts/install-deps.sh installs graphviz).
fn have_dot(test: &str) -> bool {
    if Command::new("dot").arg("-V").output().is_ok() {
        return true;
    }
    let msg = format!("{test}: needs `dot` (apt-get install graphviz)");
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{msg} (CI=true: tests must not skip)");
    }
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "\n******** SKIP {msg} ********\n");
    false
}

/// `<title>` texts of an SVG rendered by Graphviz: its nodes, clusters and edges, which do
/// not depend on the Graphviz version (the coordinates do).
fn svg_titles(svg: &str) -> Vec<String> {
    let mut t: Vec<String> = svg
        .split("<title>")
        .skip(1)
        .filter_map(|s| s.split("</title>").next())
        .map(String::from)
        .collect();
    t.sort();
    t
}

#[test]
fn graph_svg_is_an_svg_of_the_example() {
    if !have_dot("graph_svg_is_an_svg_of_the_example") {
        return;
    }
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
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let svg = String::from_utf8(out.stdout).unwrap();
    assert!(svg.starts_with("<?xml"), "{}", &svg[..svg.len().min(200)]);
    assert!(svg.contains("<svg") && svg.trim_end().ends_with("</svg>"));
    // The README's picture is this graph: same nodes, clusters and edges; byte for byte
    // when rendered by the same Graphviz version.
    let in_docs = std::fs::read_to_string(format!("{root}/docs/example-graph.svg")).unwrap();
    let version = |s: &str| {
        s.lines()
            .find(|l| l.contains("Generated by graphviz version"))
            .map(str::to_string)
    };
    assert_eq!(
        svg_titles(&svg),
        svg_titles(&in_docs),
        "docs/example-graph.svg is stale: dot -Tsvg docs/example-graph.dot > docs/example-graph.svg"
    );
    if version(&svg) == version(&in_docs) {
        assert!(
            svg == in_docs,
            "docs/example-graph.svg is stale: re-render it"
        );
    }
    assert!(svg_titles(&svg).iter().any(|t| t.contains("&#45;&gt;")));
}

/// The error documents of `--output json`, one per kind of failure: the contract is
/// `{"ok": false, "errors": [...]}` with one line per error, and exit 2.
#[test]
fn error_documents() {
    let root = env!("CARGO_MANIFEST_DIR");
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("bad.toml"),
        "[groups.web]\nmatch = { name = \"web-*\" }\n\n[[allow]]\nfrom = \"web\"\nto = \"dbs\"\n",
    )
    .unwrap();
    std::fs::copy(
        format!("{root}/policy.example.toml"),
        dir.path().join("policy.toml"),
    )
    .unwrap();
    std::fs::copy(
        format!("{root}/docs/example-inventory.toml"),
        dir.path().join("inventory.toml"),
    )
    .unwrap();
    let cases: &[(&str, &[&str])] = &[
        ("missing policy", &["-c", "missing.toml", "check"]),
        ("invalid policy", &["-c", "bad.toml", "check"]),
        ("usage", &["explain", "web-1"]),
        (
            "unknown container",
            &[
                "-c",
                "policy.toml",
                "--inventory",
                "inventory.toml",
                "explain",
                "wbe-1",
                "api-1",
            ],
        ),
        (
            "bad port",
            &[
                "-c",
                "policy.toml",
                "--inventory",
                "inventory.toml",
                "explain",
                "web-1",
                "api-1",
                "http",
            ],
        ),
        (
            "missing inventory",
            &["-c", "policy.toml", "--inventory", "none.toml", "graph"],
        ),
    ];
    let mut docs = String::new();
    for (what, args) in cases {
        let out = Command::new(env!("CARGO_BIN_EXE_netguard"))
            .current_dir(dir.path())
            .arg("--output")
            .arg("json")
            .args(*args)
            .env_remove("NETGUARD_CONFIG")
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{what}");
        assert!(
            out.stderr.is_empty(),
            "{what}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let stdout = String::from_utf8(out.stdout).unwrap();
        assert_eq!(stdout.lines().count(), 1, "{what}: one line");
        let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
        assert_eq!(v.as_object().map(|o| o.len()), Some(2), "{what}: {v}");
        assert_eq!(v["ok"], false);
        assert!(v["errors"].as_array().is_some_and(|e| !e.is_empty()));
        docs.push_str(&format!("{what}: {stdout}"));
    }
    insta::assert_snapshot!("error_documents", docs);
}
