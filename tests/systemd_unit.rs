//! systemd/netguard.service: what the daemon and docs/architecture.md section 3 rely on is in the unit,
//! `systemd-analyze verify` accepts it, and `systemd-analyze security --offline=yes` rates
//! its exposure at 2.0 or less.
//!
//! Needs `systemd-analyze` (package `systemd`, 250 or later for `--offline`); PID 1 need not
//! be systemd. Under `CI=true` a missing or too old systemd-analyze fails the test; elsewhere
//! the tests that need it print SKIP.

use std::path::{Path, PathBuf};
use std::process::Command;

const UNIT: &str = include_str!("../systemd/netguard.service");
/// The highest acceptable overall exposure, in tenths (systemd-analyze's `--threshold`).
const MAX_EXPOSURE_TENTHS: u32 = 20;

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// The systemd-analyze to use, or None (after failing under CI) when the tests must skip.
fn analyze(test: &str) -> Option<PathBuf> {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .chain([PathBuf::from("/usr/bin"), PathBuf::from("/bin")])
        .map(|d| d.join("systemd-analyze"))
        .find(|p| p.is_file());
    let why = match &found {
        None => "systemd-analyze not found (install the `systemd` package)".to_string(),
        Some(p) => match version(p) {
            Some(v) if v >= 250 => return found,
            Some(v) => format!("systemd-analyze {v} is too old for --offline (need 250)"),
            None => format!("cannot run {}", p.display()),
        },
    };
    if in_ci() {
        panic!("{test}: {why} (CI=true)");
    }
    eprintln!("SKIP {test}: {why}");
    None
}

fn version(analyze: &Path) -> Option<u32> {
    let out = Command::new(analyze).arg("--version").output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.split_whitespace().nth(1)?.parse().ok()
}

/// `[Section] Key=Value` assignments in file order (comments and blank lines dropped).
fn assignments(unit: &str) -> Vec<(String, String, String)> {
    let mut section = String::new();
    let mut out = Vec::new();
    for line in unit.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(s) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = s.to_string();
        } else if let Some((k, v)) = line.split_once('=') {
            out.push((section.clone(), k.trim().to_string(), v.trim().to_string()));
        }
    }
    out
}

fn values(unit: &str, section: &str, key: &str) -> Vec<String> {
    assignments(unit)
        .into_iter()
        .filter(|(s, k, _)| s == section && k == key)
        .map(|(_, _, v)| v)
        .collect()
}

fn one(unit: &str, section: &str, key: &str) -> String {
    let v = values(unit, section, key);
    assert_eq!(
        v.len(),
        1,
        "[{section}] {key}= must be set exactly once, found {v:?}"
    );
    v[0].clone()
}

fn words(unit: &str, section: &str, key: &str) -> Vec<String> {
    values(unit, section, key)
        .iter()
        .flat_map(|v| v.split_whitespace().map(str::to_string).collect::<Vec<_>>())
        .collect()
}

/// A copy of the unit in a fresh directory, named netguard.service, with the installed
/// binary's path replaced by the one cargo built (verify checks that ExecStart exists).
fn unit_copy(edit: impl Fn(&str) -> String) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("netguard.service");
    let text = UNIT.replace("/usr/local/bin/netguard", env!("CARGO_BIN_EXE_netguard"));
    std::fs::write(&path, edit(&text)).expect("write unit copy");
    (dir, path)
}

#[test]
fn unit_has_what_the_daemon_relies_on() {
    let u = UNIT;
    assert_eq!(one(u, "Service", "Type"), "notify");
    assert_eq!(one(u, "Service", "NotifyAccess"), "main");
    assert_eq!(one(u, "Service", "WatchdogSec"), "30s");
    assert_eq!(one(u, "Service", "Restart"), "on-failure");
    assert!(!one(u, "Service", "RestartSec").is_empty());
    assert_eq!(
        one(u, "Service", "ExecStart"),
        "/usr/local/bin/netguard -c /etc/netguard/policy.toml run"
    );
    assert_eq!(one(u, "Service", "ExecReload"), "/bin/kill -HUP $MAINPID");
    // SIGTERM goes to the daemon (which leaves the rules in place), not SIGKILL at once.
    let kill_mode = one(u, "Service", "KillMode");
    assert!(
        kill_mode == "mixed" || kill_mode == "control-group",
        "KillMode={kill_mode}"
    );
    assert!(
        values(u, "Service", "KillSignal")
            .iter()
            .all(|s| s == "SIGTERM")
    );
    assert_eq!(one(u, "Service", "RuntimeDirectory"), "netguard");
    assert_eq!(one(u, "Service", "StandardError"), "journal");
    let env = values(u, "Service", "Environment");
    assert!(env.contains(&"NETGUARD_LOG=info".to_string()));
    // tracing-subscriber colours its output unless NO_COLOR is set; the journal wants none.
    assert!(env.contains(&"NO_COLOR=1".to_string()));

    // Docker: ordered after it and pulled in, but never bound to it: a Docker restart must
    // not stop netguard (the rules stay, the daemon reconnects).
    assert!(words(u, "Unit", "Before").contains(&"docker.service".to_string()));
    assert!(!words(u, "Unit", "After").contains(&"docker.service".to_string()));
    assert!(words(u, "Unit", "Wants").contains(&"docker.service".to_string()));
    for key in ["Requires", "BindsTo", "PartOf", "Requisite"] {
        assert!(
            !words(u, "Unit", key)
                .iter()
                .any(|w| w.starts_with("docker.")),
            "{key}= must not name Docker"
        );
    }
    // Stopping must not remove the rules: no ExecStop / ExecStopPost running uninstall.
    for key in ["ExecStop", "ExecStopPost"] {
        assert!(
            !values(u, "Service", key)
                .iter()
                .any(|v| v.contains("uninstall")),
            "{key} must not remove the rules (fail closed)"
        );
    }

    // Privileges: exactly the three capabilities the daemon needs.
    let mut caps = words(u, "Service", "CapabilityBoundingSet");
    caps.sort();
    assert_eq!(caps, ["CAP_NET_ADMIN", "CAP_SYS_ADMIN", "CAP_SYS_PTRACE"]);
    assert_eq!(one(u, "Service", "NoNewPrivileges"), "yes");
    assert_eq!(one(u, "Service", "ProtectSystem"), "strict");
    // setns() into container network namespaces, and only those.
    assert_eq!(one(u, "Service", "RestrictNamespaces"), "net");
    let families = words(u, "Service", "RestrictAddressFamilies");
    for needed in ["AF_UNIX", "AF_NETLINK"] {
        assert!(families.contains(&needed.to_string()), "{needed} missing");
    }
    assert!(
        !families.iter().any(|f| f.starts_with('~')),
        "allow list expected"
    );
    // The daemon must see container processes in /proc: a hiding ProtectProc is only
    // acceptable together with CAP_SYS_PTRACE (which makes every process visible to it).
    if values(u, "Service", "ProtectProc")
        .iter()
        .any(|v| v != "default")
    {
        assert!(caps.contains(&"CAP_SYS_PTRACE".to_string()));
    }
    assert!(
        values(u, "Service", "PrivateNetwork")
            .iter()
            .all(|v| v == "no"),
        "netguard works on the host's network namespace"
    );
    assert!(
        values(u, "Service", "PrivateUsers")
            .iter()
            .all(|v| v == "no"),
        "capabilities must hold in the host's user namespace"
    );
    assert!(words(u, "Service", "SystemCallFilter").contains(&"@system-service".to_string()));
    assert_eq!(words(u, "Install", "WantedBy"), ["multi-user.target"]);
}

#[test]
fn exec_start_is_a_command_line_the_binary_accepts() {
    // `netguard -c FILE run --help` parses the same global options and subcommand.
    let line = one(UNIT, "Service", "ExecStart");
    let mut args: Vec<&str> = line.split_whitespace().skip(1).collect();
    args.push("--help");
    let out = Command::new(env!("CARGO_BIN_EXE_netguard"))
        .args(&args)
        .output()
        .expect("run netguard");
    assert!(
        out.status.success(),
        "netguard {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn systemd_analyze_verify_accepts_the_unit() {
    let Some(analyze) = analyze("systemd_analyze_verify_accepts_the_unit") else {
        return;
    };
    let (_dir, path) = unit_copy(|t| t.to_string());
    let out = Command::new(&analyze)
        .arg("verify")
        .arg(&path)
        .output()
        .expect("run systemd-analyze verify");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let about_unit: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("netguard.service"))
        .collect();
    assert!(
        out.status.success() && about_unit.is_empty(),
        "systemd-analyze verify: {:?}\n{stderr}",
        out.status
    );
}

/// Runs `systemd-analyze security --offline=yes --threshold=N` and returns (passed, the
/// overall exposure as printed, e.g. "2.0", whole output).
fn security(analyze: &Path, unit: &Path) -> (bool, String, String) {
    let out = Command::new(analyze)
        .args([
            "security",
            "--offline=yes",
            "--no-pager",
            &format!("--threshold={MAX_EXPOSURE_TENTHS}"),
        ])
        .arg(unit)
        .output()
        .expect("run systemd-analyze security");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let level = text
        .lines()
        .find_map(|l| l.split_once("Overall exposure level for netguard.service:"))
        .and_then(|(_, rest)| rest.split_whitespace().next().map(str::to_string))
        .unwrap_or_else(|| panic!("no overall exposure in:\n{text}"));
    (out.status.success(), level, text)
}

fn tenths(level: &str) -> u32 {
    let (whole, frac) = level.split_once('.').unwrap_or((level, "0"));
    whole.parse::<u32>().expect("exposure") * 10 + frac[..1].parse::<u32>().expect("exposure")
}

#[test]
fn exposure_is_at_most_two() {
    let Some(analyze) = analyze("exposure_is_at_most_two") else {
        return;
    };
    let (_dir, path) = unit_copy(|t| t.to_string());
    let (passed, level, text) = security(&analyze, &path);
    eprintln!("systemd-analyze security --offline=yes: overall exposure {level}");
    assert!(
        passed && tenths(&level) <= MAX_EXPOSURE_TENTHS,
        "exposure {level} above {}.{}:\n{text}",
        MAX_EXPOSURE_TENTHS / 10,
        MAX_EXPOSURE_TENTHS % 10
    );
}

#[test]
fn the_exposure_check_catches_a_weaker_unit() {
    // The same check on the unit without its capability bounding set and syscall filter
    // must fail: the threshold really is applied to this file.
    let Some(analyze) = analyze("the_exposure_check_catches_a_weaker_unit") else {
        return;
    };
    let (_dir, path) = unit_copy(|t| {
        t.lines()
            .filter(|l| {
                !l.starts_with("CapabilityBoundingSet=") && !l.starts_with("SystemCallFilter=")
            })
            .collect::<Vec<_>>()
            .join("\n")
    });
    let (passed, level, _) = security(&analyze, &path);
    assert!(
        !passed && tenths(&level) > MAX_EXPOSURE_TENTHS,
        "weakened unit rated {level}"
    );
}
