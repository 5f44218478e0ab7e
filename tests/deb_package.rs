//! The Debian package (scripts/build-deb.sh, cargo-deb): built from the test build (no second
//! compile), inspected with `dpkg-deb`, installed with `dpkg --root` into a clean directory
//! (a busybox for the maintainer scripts, a stub `systemctl` that records what it is asked),
//! checked (files, conffile, `netguard --version`, `systemd-analyze verify` of the installed
//! unit), upgraded in place, removed and purged.
//!
//! Needs root, `dpkg`, `systemd-analyze` and a static busybox; build-deb.sh installs cargo-deb
//! when it is missing. Prints SKIP without them, fails under `CI=true`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

fn prerequisites(test: &str) -> bool {
    let mut missing = Vec::new();
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        missing.push("root".to_string());
    }
    for tool in ["dpkg", "dpkg-deb", "systemd-analyze"] {
        if Command::new(tool).arg("--version").output().is_err() {
            missing.push(format!("`{tool}`"));
        }
    }
    if !Path::new("/bin/busybox").is_file() {
        missing.push("/bin/busybox (busybox-static)".into());
    }
    if missing.is_empty() {
        return true;
    }
    let msg = format!("{test}: needs {}", missing.join(", "));
    if in_ci() {
        panic!("{msg} (CI=true: privileged tests must not skip)");
    }
    eprintln!("\n**************** SKIP {msg} ****************\n");
    false
}

fn show(o: &Output) -> String {
    format!(
        "exit {:?}\n--- stdout\n{}--- stderr\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[track_caller]
fn ok(cmd: &mut Command) -> String {
    let o = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(o.status.success(), "{cmd:?}\n{}", show(&o));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// The package, built by scripts/build-deb.sh from the binary this test was built with.
fn build() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let bin = env!("CARGO_BIN_EXE_netguard");
    ok(Command::new(root.join("scripts/build-deb.sh"))
        .env("NETGUARD_DEB_PROFILE", "dev")
        .env("NETGUARD_BIN", bin));
    let version = env!("CARGO_PKG_VERSION");
    let deb = root.join(format!("target/debian/netguard_{version}-1_amd64.deb"));
    assert!(deb.is_file(), "{} missing", deb.display());
    deb
}

/// A root with just enough for dpkg and the maintainer scripts: dpkg's database, busybox as
/// the shell and tools, /dev/null, and the targets `systemd-analyze verify` resolves.
fn clean_root() -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix("netguard-deb-")
        .tempdir()
        .unwrap();
    let r = dir.path();
    for d in [
        "var/lib/dpkg/info",
        "var/lib/dpkg/updates",
        "var/lib/dpkg/triggers",
        "bin",
        "dev",
        "run/systemd/system",
        "usr/lib/systemd/system",
    ] {
        std::fs::create_dir_all(r.join(d)).unwrap();
    }
    std::fs::write(r.join("var/lib/dpkg/status"), "").unwrap();
    std::fs::write(r.join("var/lib/dpkg/available"), "").unwrap();
    std::fs::copy("/bin/busybox", r.join("bin/busybox")).unwrap();
    for applet in ["sh", "cat", "rm", "rmdir", "mkdir", "echo", "kill"] {
        std::os::unix::fs::symlink("busybox", r.join("bin").join(applet)).unwrap();
    }
    ok(Command::new("mknod")
        .arg(r.join("dev/null"))
        .args(["c", "1", "3"]));
    // Records every call; `is-active` says the daemon runs.
    std::fs::write(
        r.join("bin/systemctl"),
        "#!/bin/sh\necho \"$*\" >> /systemctl.log\n[ \"$1\" = is-active ] && exit 0\nexit 0\n",
    )
    .unwrap();
    ok(Command::new("chmod")
        .arg("755")
        .arg(r.join("bin/systemctl")));
    for entry in std::fs::read_dir("/lib/systemd/system").unwrap() {
        let p = entry.unwrap().path();
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        if name.ends_with(".target") || name.ends_with(".slice") {
            let _ = std::fs::copy(&p, r.join("usr/lib/systemd/system").join(&name));
        }
    }
    dir
}

fn dpkg(root: &Path, args: &[&str]) -> String {
    let mut c = Command::new("dpkg");
    // The root has no libc6 or libnftables1 package: the host's libraries serve the binary.
    c.arg(format!("--root={}", root.display()))
        .arg("--force-depends")
        .args(args);
    ok(&mut c)
}

fn systemctl_calls(root: &Path) -> Vec<String> {
    std::fs::read_to_string(root.join("systemctl.log"))
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

#[test]
fn deb_installs_into_a_clean_root_never_starts_enforcement_and_removes_cleanly() {
    if !prerequisites("deb_installs_into_a_clean_root_never_starts_enforcement_and_removes_cleanly")
    {
        return;
    }
    let deb = build();
    let deb_s = deb.to_str().unwrap();

    let info = ok(Command::new("dpkg-deb").args(["--info", deb_s]));
    assert!(info.contains("Package: netguard"), "{info}");
    assert!(
        info.contains("libnftables1"),
        "Depends names libnftables1: {info}"
    );
    let conffiles = ok(Command::new("sh").arg("-c").arg(format!(
        "dpkg-deb --ctrl-tarfile {deb_s} | tar -xO ./conffiles"
    )));
    assert_eq!(conffiles.trim(), "/etc/netguard/policy.toml");
    let listing = ok(Command::new("dpkg-deb").args(["--contents", deb_s]));
    for f in [
        "./usr/bin/netguard",
        "./lib/systemd/system/netguard.service",
        "./usr/share/man/man1/netguard.1.gz",
        "./usr/share/bash-completion/completions/netguard",
        "./usr/share/zsh/vendor-completions/_netguard",
        "./usr/share/fish/vendor_completions.d/netguard.fish",
        "./etc/netguard/policy.toml",
    ] {
        assert!(listing.contains(f), "{f} not in the package:\n{listing}");
    }

    let dir = clean_root();
    let r = dir.path();
    let out = dpkg(r, &["-i", deb_s]);
    assert!(out.contains("NOT enforcing anything yet"), "{out}");
    // The conffile is the example policy, registered as such.
    assert_eq!(
        std::fs::read_to_string(r.join("etc/netguard/policy.toml")).unwrap(),
        include_str!("../policy.example.toml")
    );
    let status = std::fs::read_to_string(r.join("var/lib/dpkg/status")).unwrap();
    assert!(status.contains("Status: install ok installed"), "{status}");
    assert!(
        status.contains("Conffiles:\n /etc/netguard/policy.toml "),
        "{status}"
    );
    // Completions and man page are generated from this very binary.
    let bash =
        std::fs::read_to_string(r.join("usr/share/bash-completion/completions/netguard")).unwrap();
    assert!(
        bash.contains("_netguard()") && bash.contains("verify"),
        "bash completion"
    );
    let man = ok(Command::new("sh").arg("-c").arg(format!(
        "gzip -dc {}",
        r.join("usr/share/man/man1/netguard.1.gz").display()
    )));
    assert!(man.contains("netguard") && man.contains("verify"), "{man}");
    // The installed binary runs.
    let v = ok(Command::new(r.join("usr/bin/netguard")).arg("--version"));
    assert_eq!(v.trim(), format!("netguard {}", env!("CARGO_PKG_VERSION")));
    // The installed unit starts the installed binary, and systemd accepts it.
    let unit = std::fs::read_to_string(r.join("lib/systemd/system/netguard.service")).unwrap();
    assert!(
        unit.contains("\nExecStart=/usr/bin/netguard -c /etc/netguard/policy.toml run\n"),
        "{unit}"
    );
    let o = Command::new("systemd-analyze")
        .arg(format!("--root={}", r.display()))
        .args(["verify", "/lib/systemd/system/netguard.service"])
        .output()
        .unwrap();
    assert!(o.status.success(), "systemd-analyze verify:\n{}", show(&o));
    // Installing told systemd about the unit and did nothing else: not enabled, not started.
    assert_eq!(systemctl_calls(r), vec!["daemon-reload"]);

    // An upgrade over a running daemon: says how to restart, restarts nothing itself.
    std::fs::write(
        r.join("etc/netguard/policy.toml"),
        "# edited by the operator\n",
    )
    .unwrap();
    let out = dpkg(r, &["-i", deb_s]);
    assert!(out.contains("systemctl restart netguard"), "{out}");
    let calls = systemctl_calls(r);
    assert!(
        calls.iter().all(|c| {
            !c.starts_with("start") && !c.starts_with("restart") && !c.starts_with("enable")
        }),
        "{calls:?}"
    );
    // The operator's policy survives the upgrade.
    assert_eq!(
        std::fs::read_to_string(r.join("etc/netguard/policy.toml")).unwrap(),
        "# edited by the operator\n"
    );

    // Removal stops and disables the daemon and keeps the conffile; purge takes that too.
    dpkg(r, &["-r", "netguard"]);
    assert!(!r.join("usr/bin/netguard").exists());
    assert!(!r.join("lib/systemd/system/netguard.service").exists());
    assert!(r.join("etc/netguard/policy.toml").exists());
    assert!(
        systemctl_calls(r).contains(&"disable --now netguard.service".to_string()),
        "{:?}",
        systemctl_calls(r)
    );
    dpkg(r, &["-P", "netguard"]);
    assert!(!r.join("etc/netguard").exists());
    let status = std::fs::read_to_string(r.join("var/lib/dpkg/status")).unwrap();
    assert!(!status.contains("Package: netguard"), "{status}");
}
