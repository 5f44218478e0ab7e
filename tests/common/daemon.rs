//! Running the daemon (`netguard run`) from integration tests: start it (optionally inside a
//! network namespace), wait for readiness through its state file instead of sleeping, send
//! signals, read its log. The log (NETGUARD_LOG, stderr) goes to a file that is printed when
//! a test fails while the daemon is alive.
//!
//! Include with `#[path = "common/daemon.rs"] mod daemon;`.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

static SEQ: AtomicUsize = AtomicUsize::new(0);

/// How to start one daemon.
#[derive(Clone, Debug)]
pub struct Spec {
    /// Run inside this network namespace (`ip netns exec NS`), else in the caller's.
    pub netns: Option<String>,
    pub policy: PathBuf,
    /// `--inventory FILE`; None = Docker.
    pub inventory: Option<PathBuf>,
    pub resync_secs: u64,
    pub coalesce_ms: u64,
    /// Where the state file and the log go.
    pub dir: PathBuf,
    /// NETGUARD_LOG.
    pub log_level: String,
    /// `--metrics-listen ADDR` (inside `netns` when one is set).
    pub metrics_listen: Option<String>,
    /// Extra environment for the daemon (fault-injection hooks).
    pub env: Vec<(String, String)>,
    /// The state file, else one of its own in `dir`.
    pub state_file: Option<PathBuf>,
}

impl Spec {
    pub fn new(policy: &Path, dir: &Path) -> Spec {
        Spec {
            netns: None,
            policy: policy.to_path_buf(),
            inventory: None,
            resync_secs: 300,
            coalesce_ms: 20,
            dir: dir.to_path_buf(),
            log_level: std::env::var("NETGUARD_TEST_LOG").unwrap_or_else(|_| "info".into()),
            metrics_listen: None,
            env: Vec::new(),
            state_file: None,
        }
    }
}

pub fn netguard_bin() -> String {
    std::env::var("NETGUARD_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_netguard").to_string())
}

/// A running `netguard run`. Dropping it sends SIGTERM (then SIGKILL after 5 s); the rules
/// stay, so callers also hold an uninstall guard.
pub struct Daemon {
    child: Option<Child>,
    pub pid: i32,
    pub state_file: PathBuf,
    pub log: PathBuf,
    pub spec: Spec,
    pub started: Instant,
}

fn signal(pid: i32, sig: libc::c_int) {
    // SAFETY: kill has no memory-safety preconditions.
    unsafe {
        libc::kill(pid, sig);
    }
}

impl Daemon {
    /// Starts the daemon; does not wait (see `wait_ready`).
    pub fn spawn(spec: &Spec) -> Daemon {
        let n = SEQ.fetch_add(1, Ordering::SeqCst);
        let state_file = spec
            .state_file
            .clone()
            .unwrap_or_else(|| spec.dir.join(format!("daemon-{n}.state.json")));
        let log = spec.dir.join(format!("daemon-{n}.log"));
        let _ = std::fs::remove_file(&state_file);
        let mut args: Vec<String> = Vec::new();
        let program = match &spec.netns {
            Some(ns) => {
                args.extend(["netns".into(), "exec".into(), ns.clone(), netguard_bin()]);
                "ip".to_string()
            }
            None => netguard_bin(),
        };
        args.extend(["-c".into(), spec.policy.display().to_string()]);
        if let Some(inv) = &spec.inventory {
            args.extend(["--inventory".into(), inv.display().to_string()]);
        }
        args.extend([
            "run".into(),
            "--resync-interval".into(),
            spec.resync_secs.to_string(),
            "--coalesce-ms".into(),
            spec.coalesce_ms.to_string(),
            "--state-file".into(),
            state_file.display().to_string(),
        ]);
        if let Some(addr) = &spec.metrics_listen {
            args.extend(["--metrics-listen".into(), addr.clone()]);
        }
        let logf = std::fs::File::create(&log).expect("daemon log file");
        let child = Command::new(&program)
            .args(&args)
            .env("NETGUARD_LOG", &spec.log_level)
            .envs(spec.env.iter().map(|(k, v)| (k, v)))
            .env_remove("NOTIFY_SOCKET")
            .env_remove("WATCHDOG_USEC")
            .stdin(Stdio::null())
            .stdout(logf.try_clone().unwrap())
            .stderr(logf)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {program} {args:?}: {e}"));
        let pid = child.id() as i32;
        eprintln!("daemon {pid} started: {program} {}", args.join(" "));
        Daemon {
            child: Some(child),
            pid,
            state_file,
            log,
            spec: spec.clone(),
            started: Instant::now(),
        }
    }

    /// Starts the daemon and waits for its first reconcile.
    pub fn start(spec: &Spec) -> Daemon {
        let mut d = Daemon::spawn(spec);
        d.wait_ready(Duration::from_secs(20));
        d
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The state file, if written.
    pub fn state(&self) -> Option<serde_json::Value> {
        let text = std::fs::read_to_string(&self.state_file).ok()?;
        serde_json::from_str(&text).ok()
    }

    pub fn state_u64(&self, key: &str) -> u64 {
        self.state()
            .and_then(|s| s.get(key).and_then(|v| v.as_u64()))
            .unwrap_or(0)
    }

    pub fn last_error(&self) -> Option<String> {
        self.state().and_then(|s| {
            s.get("last_error")
                .and_then(|v| v.as_str().map(String::from))
        })
    }

    pub fn alive(&mut self) -> bool {
        match &mut self.child {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Panics with the log.
    #[track_caller]
    pub fn fail(&self, msg: &str) -> ! {
        // A live daemon's log is printed by Drop while panicking.
        if self.child.is_none() {
            eprintln!(
                "--- daemon {} log ({}):\n{}",
                self.pid,
                self.log.display(),
                self.log_text()
            );
        }
        panic!("{msg}\n--- daemon {} state: {:?}", self.pid, self.state());
    }

    /// Polls `cond` on the state file every 20 ms until it holds; panics after `timeout`
    /// (or when the daemon died).
    #[track_caller]
    pub fn wait_state(
        &mut self,
        what: &str,
        timeout: Duration,
        cond: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let t = Instant::now();
        loop {
            if let Some(s) = self.state()
                && s.get("pid").and_then(|p| p.as_i64()) == Some(self.pid as i64)
                && cond(&s)
            {
                return s;
            }
            if !self.alive() {
                self.fail(&format!("daemon exited while waiting for {what}"));
            }
            if t.elapsed() > timeout {
                self.fail(&format!("timeout ({timeout:?}) waiting for {what}"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits for the first reconcile.
    #[track_caller]
    pub fn wait_ready(&mut self, timeout: Duration) {
        let s = self.wait_state("the first reconcile", timeout, |s| {
            !s["last_reconcile_unix_ms"].is_null()
        });
        eprintln!(
            "daemon {} ready after {:?}: {} containers",
            self.pid,
            self.started.elapsed(),
            s["containers"]
        );
    }

    /// Waits until the daemon has done more than `n` full reconciles.
    #[track_caller]
    pub fn wait_reconciles_above(&mut self, n: u64, timeout: Duration) -> serde_json::Value {
        self.wait_state(&format!("reconciles > {n}"), timeout, |s| {
            s["reconciles"].as_u64().unwrap_or(0) > n
        })
    }

    pub fn hup(&self) {
        signal(self.pid, libc::SIGHUP);
    }

    /// SIGHUP, then waits for the reconcile it causes.
    #[track_caller]
    pub fn reload(&mut self) {
        let n = self.state_u64("reconciles");
        let t = Instant::now();
        self.hup();
        self.wait_reconciles_above(n, Duration::from_secs(10));
        eprintln!(
            "daemon {}: reload applied after {:?}",
            self.pid,
            t.elapsed()
        );
    }

    /// SIGTERM and wait for exit (rules stay). Returns the exit code.
    #[track_caller]
    pub fn stop(&mut self) -> Option<i32> {
        signal(self.pid, libc::SIGTERM);
        let mut child = self.child.take()?;
        let t = Instant::now();
        loop {
            match child.try_wait() {
                Ok(Some(st)) => {
                    eprintln!("daemon {} stopped after {:?}: {st}", self.pid, t.elapsed());
                    return st.code();
                }
                Ok(None) if t.elapsed() < Duration::from_secs(10) => {
                    std::thread::sleep(Duration::from_millis(10))
                }
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    self.fail("daemon did not exit within 10 s of SIGTERM");
                }
            }
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if std::thread::panicking() {
            eprintln!(
                "--- daemon {} log ({}):\n{}",
                self.pid,
                self.log.display(),
                self.log_text()
            );
        }
        signal(self.pid, libc::SIGTERM);
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(5) {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// Polls `f` every `every` until it returns true or `timeout` passes; returns the time it
/// took, or None.
pub fn poll(timeout: Duration, every: Duration, mut f: impl FnMut() -> bool) -> Option<Duration> {
    let t = Instant::now();
    loop {
        if f() {
            return Some(t.elapsed());
        }
        if t.elapsed() > timeout {
            return None;
        }
        std::thread::sleep(every);
    }
}

/// `nft -s list table FAMILY netguard` in the given namespace (None = here), without counters
/// and handles: the ruleset as far as a byte comparison is meaningful.
pub fn netguard_tables(netns: Option<&str>) -> String {
    let mut all = String::new();
    for fam in ["inet", "bridge"] {
        let mut args: Vec<&str> = Vec::new();
        if let Some(ns) = netns {
            args.extend(["netns", "exec", ns, "nft"]);
        }
        args.extend(["-s", "list", "table", fam, "netguard"]);
        let (prog, args) = if netns.is_some() {
            ("ip", args)
        } else {
            ("nft", args)
        };
        let out = Command::new(prog).args(&args).output().expect("nft");
        all.push_str(&String::from_utf8_lossy(&out.stdout));
        all.push_str(&String::from_utf8_lossy(&out.stderr));
    }
    all
}

/// Other netguard processes in this network namespace (not ours): on a shared host another
/// engineer's daemon or `apply` writes the same `inet netguard` table, and two writers fight.
pub fn foreign_netguards() -> Vec<(i32, String)> {
    let me = std::process::id() as i32;
    let my_ns = std::fs::read_link("/proc/self/ns/net").ok();
    let mut out = vec![];
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in dir.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        if pid == me {
            continue;
        }
        let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let args: Vec<String> = cmd
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        // The netguard binary itself, or a wrapper running it (a script with the binary's
        // path as an argument); not the compiler building it.
        let base = |a: &String| a.rsplit('/').next().unwrap_or("").to_string();
        let tool = args.first().map(base).unwrap_or_default();
        let is_netguard = tool == "netguard"
            || (!["cargo", "rustc", "cc", "ld", "rust-lld", "clippy-driver"]
                .contains(&tool.as_str())
                && args
                    .iter()
                    .skip(1)
                    .any(|a| a.contains('/') && base(a) == "netguard"));
        if !is_netguard || std::fs::read_link(format!("/proc/{pid}/ns/net")).ok() != my_ns {
            continue;
        }
        // Our own daemons have us as parent.
        let parent = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|s| {
                s.rsplit(')').next().and_then(|r| {
                    r.split_whitespace()
                        .nth(1)
                        .and_then(|p| p.parse::<i32>().ok())
                })
            });
        if parent == Some(me) {
            continue;
        }
        out.push((pid, args.join(" ")));
    }
    out
}

/// Waits (up to `max`) until no foreign netguard runs in this namespace; warns if one stays.
pub fn wait_host_quiet(max: Duration) {
    let t = Instant::now();
    let mut warned = false;
    loop {
        let f = foreign_netguards();
        if f.is_empty() {
            return;
        }
        if !warned {
            eprintln!("waiting for foreign netguard processes on this host to end: {f:?}");
            warned = true;
        }
        if t.elapsed() > max {
            eprintln!(
                "WARNING: foreign netguard processes still running, results may be disturbed: {f:?}"
            );
            return;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}
