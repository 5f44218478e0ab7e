//! The randomized soak (issue 17, point 2). Run it through `sudo scripts/soak.sh [--seed N]
//! [--minutes M] [--steps S]`, which builds it and the `netguard` binary of the tree.
//!
//! Everything runs in one network namespace of its own (`soak<pid>`), which plays the host:
//! a dockerd of the soak's own (data root, exec root, socket and config under
//! `/tmp/soak<pid>/`, the image copied in from the machine's dockerd), `netguard run`
//! following it (`DOCKER_HOST`), and every nft table. So dockerd can be restarted, with and
//! without live-restore, without touching the machine's dockerd or tables.
//!
//! Steps are drawn from a seeded generator (splitmix64) and the soak's own model of what
//! exists, so one seed gives one sequence of steps: container run/stop/start/kill/rm, network
//! connect/disconnect, rename, a label change through recreate (same name, same addresses),
//! networks created and removed, compose-style scale up and down, SIGHUP with the other
//! valid policy and with an invalid one, `kill -9` of netguard and a restart, dockerd
//! restarted with and without live-restore. After each step it settles (polls `netguard
//! diff` until it exits 0, plus what the step itself waits for) and checks the invariants
//! (docs/reliability.md, "Soak"). Every step is one JSON line in the log; a summary at the
//! end. Exit 0: no violation; 1: violations; 2: the soak could not run.

use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const IMAGE: &str = "netguard-busybox:test";
const BUSYBOX: &str = "/bin/busybox";
/// What every container runs: echo servers on the second port of each range the policies
/// allow (8080-8081, 5432-5433), for the probe and the canaries. `verify` probes the first
/// port of a range, where nothing listens (a RST is "reached"): busybox `nc` listens with a
/// backlog of 2, which verify's parallel SYNs overflow, and a SYN dropped by a full accept
/// queue reads as "blocked". The trap makes `docker stop` quick (a shell as PID 1 ignores
/// SIGTERM otherwise).
const SERVE: &str = "trap 'exit 0' TERM; nc -ll -p 8081 -e cat & nc -ll -p 5433 -e cat & wait";
/// The ports the probe and the canaries connect to.
const WEB_API_PORT: u16 = 8081;
const API_DB_PORT: u16 = 5433;
const FIXED_NETS: [(&str, &str); 3] = [
    ("sk-a", "10.91.1.0/24"),
    ("sk-b", "10.91.2.0/24"),
    ("sk-c", "10.91.3.0/24"),
];
const ROLES: [Option<&str>; 4] = [Some("web"), Some("api"), Some("db"), None];
const MAX_CONTAINERS: usize = 12;
const SETTLE: Duration = Duration::from_secs(60);

/// `--self-test`: faults injected on purpose, one per invariant; the run passes when each
/// was reported by its invariant (the checks are shown to catch what they claim to).
static SELF_TEST: AtomicBool = AtomicBool::new(false);

fn settle_bound() -> Duration {
    if SELF_TEST.load(Ordering::SeqCst) {
        Duration::from_secs(10)
    } else {
        SETTLE
    }
}

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

/// splitmix64: tiny, and the same sequence on every machine.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
    fn pick<'a, T>(&mut self, v: &'a [T]) -> Option<&'a T> {
        if v.is_empty() {
            None
        } else {
            v.get(self.below(v.len()))
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Run,
    Stop,
    Start,
    Kill,
    Rm,
    Connect,
    Disconnect,
    Rename,
    Relabel,
    NetCreate,
    NetRm,
    ScaleUp,
    ScaleDown,
    HupValid,
    HupInvalid,
    Kill9,
    DockerdLive,
    DockerdPlain,
}

const WEIGHTS: [(Kind, u32); 18] = [
    (Kind::Run, 10),
    (Kind::Stop, 5),
    (Kind::Start, 5),
    (Kind::Kill, 4),
    (Kind::Rm, 6),
    (Kind::Connect, 6),
    (Kind::Disconnect, 5),
    (Kind::Rename, 4),
    (Kind::Relabel, 5),
    (Kind::NetCreate, 3),
    (Kind::NetRm, 3),
    (Kind::ScaleUp, 4),
    (Kind::ScaleDown, 4),
    (Kind::HupValid, 5),
    (Kind::HupInvalid, 3),
    (Kind::Kill9, 3),
    (Kind::DockerdLive, 2),
    (Kind::DockerdPlain, 2),
];

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Run => "run",
            Kind::Stop => "stop",
            Kind::Start => "start",
            Kind::Kill => "kill",
            Kind::Rm => "rm",
            Kind::Connect => "connect",
            Kind::Disconnect => "disconnect",
            Kind::Rename => "rename",
            Kind::Relabel => "relabel",
            Kind::NetCreate => "network-create",
            Kind::NetRm => "network-rm",
            Kind::ScaleUp => "scale-up",
            Kind::ScaleDown => "scale-down",
            Kind::HupValid => "sighup-valid",
            Kind::HupInvalid => "sighup-invalid",
            Kind::Kill9 => "kill9-netguard",
            Kind::DockerdLive => "dockerd-restart-live",
            Kind::DockerdPlain => "dockerd-restart-plain",
        }
    }
    /// Steps that only touch netguard: Docker's tables must be byte-identical across them.
    fn netguard_only(self) -> bool {
        matches!(self, Kind::HupValid | Kind::HupInvalid | Kind::Kill9)
    }
}

/// The two valid policies the soak alternates between, and what each allows (the soak's own
/// copy of the verdicts, for the conntrack invariant).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Pol {
    A,
    B,
}

const POLICY_HEAD: &str = r#"[settings]
networks = ["sk-*"]

[groups.web]
match = { label = { role = "web" } }
[groups.api]
match = { label = { role = "api" } }
[groups.db]
match = { label = { role = "db" } }

[[allow]]
from = "web"
to = "api"
ports = ["8080-8081/tcp"]
"#;

impl Pol {
    fn text(self) -> String {
        let rest = match self {
            Pol::A => "\n[[allow]]\nfrom = \"api\"\nto = \"db\"\nports = [\"5432-5433/tcp\"]\n",
            // B revokes api -> db and opens web -> db and ping web -> api.
            Pol::B => {
                "\n[[allow]]\nfrom = \"web\"\nto = \"db\"\nports = [\"5432-5433/tcp\"]\n\n\
                 [[allow]]\nfrom = \"web\"\nto = \"api\"\nports = [\"icmp\"]\n"
            }
        };
        format!("{POLICY_HEAD}{rest}")
    }
    fn other(self) -> Pol {
        match self {
            Pol::A => Pol::B,
            Pol::B => Pol::A,
        }
    }
    fn allows(self, src: Option<&str>, dst: Option<&str>, proto: &str, port: u16) -> bool {
        let (Some(s), Some(d)) = (src, dst) else {
            return false;
        };
        let rules: &[(&str, &str, &str, u16)] = match self {
            Pol::A => &[("web", "api", "tcp", 8080), ("api", "db", "tcp", 5432)],
            Pol::B => &[
                ("web", "api", "tcp", 8080),
                ("web", "db", "tcp", 5432),
                ("web", "api", "icmp", 0),
            ],
        };
        // Each TCP entry is a range of two ports: N-(N+1).
        rules.iter().any(|&(a, b, p, n)| {
            a == s && b == d && p == proto && (p == "icmp" || (n..=n + 1).contains(&port))
        })
    }
}

const INVALID_POLICY: &str = r#"[settings]
networks = ["sk-*"]

[groups.web]
match = { label = { role = "web" } }

[[allow]]
from = "web"
to = "nosuchgroup"
ports = ["8080/tcp"]
"#;

fn run(cmd: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .map_err(|e| format!("{cmd} {args:?}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(format!(
            "{cmd} {args:?} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout).trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn signal(pid: i32, sig: libc::c_int) {
    // SAFETY: kill(2) has no memory-safety preconditions; the pids are the soak's children.
    unsafe {
        libc::kill(pid, sig);
    }
}

fn wait_exit(child: &mut Child, max: Duration) -> bool {
    let t = Instant::now();
    while t.elapsed() < max {
        if let Ok(Some(_)) = child.try_wait() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

/// One container of the model. `key` is stable across renames.
#[derive(Clone, Debug)]
struct Ctr {
    key: u32,
    name: String,
    role: Option<String>,
    nets: BTreeSet<String>,
    running: bool,
    service: Option<u32>,
    probe: bool,
}

/// What Docker says after a settle: per address, the container and network.
#[derive(Clone, Debug, Default)]
struct Actual {
    /// ip -> (name, role, network)
    by_ip: BTreeMap<String, (String, Option<String>, String)>,
    /// name -> (running, pid, role, network -> ip)
    ctrs: BTreeMap<String, Seen>,
}

/// The long-lived connection between the two probe containers.
struct Probe {
    child: Child,
    lost: Arc<Mutex<Option<(usize, String)>>>,
    stop: Arc<AtomicBool>,
    rx: Arc<AtomicUsize>,
    since: Instant,
}

/// A canary: an idle TCP connection of an allowed pair, kept open so that a later
/// revocation has an entry in conntrack to cut.
struct Canary {
    child: Child,
    src: String,
    dst: String,
    src_ip: String,
    dst_ip: String,
    port: u16,
}

struct Monitor {
    child: Child,
    /// (generation, writer, tables) of a write by something other than Docker outside
    /// netguard's tables, or by Docker inside them.
    bad: Arc<Mutex<Vec<String>>>,
    gens: Arc<Mutex<BTreeMap<String, u64>>>,
}

struct Soak {
    seed: u64,
    ns: String,
    dir: PathBuf,
    sock: String,
    netguard_bin: String,
    dockerd: Option<Child>,
    daemon: Option<Child>,
    daemon_pid: i32,
    daemon_lives: u32,
    events_before: u64,
    model: Vec<Ctr>,
    next_key: u32,
    next_net: u32,
    next_svc: u32,
    transient: Vec<String>,
    policy: Pol,
    live_restore: bool,
    probe: Option<Probe>,
    canaries: Vec<Canary>,
    monitor: Option<Monitor>,
    step: Arc<AtomicUsize>,
    log: std::fs::File,
    /// Where the daemon's and dockerd's logs are copied at the end.
    logs_dir: PathBuf,
    // Figures.
    kinds: BTreeMap<&'static str, u64>,
    violations: Vec<Value>,
    notes: Vec<Value>,
    settles: Vec<(u64, usize, &'static str)>,
    /// The longest action per kind (for netguard's and dockerd's steps it includes the wait
    /// for the daemon: the reload's reconcile, the restarted daemon's first reconcile, the
    /// reconnection to the restarted dockerd).
    acts: BTreeMap<&'static str, u64>,
    revoked_checked: u64,
    canaries_seen: u64,
    stale_entries: u64,
    probe_restarts: u64,
}

fn parse_args() -> Result<(Option<u64>, f64, usize, Option<PathBuf>), String> {
    let mut seed = None;
    let mut minutes = 30.0;
    let mut steps = usize::MAX;
    let mut log = None;
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut val = || it.next().ok_or(format!("{a} needs a value"));
        match a.as_str() {
            "--seed" => seed = Some(val()?.parse().map_err(|e| format!("--seed: {e}"))?),
            "--minutes" => minutes = val()?.parse().map_err(|e| format!("--minutes: {e}"))?,
            "--steps" => steps = val()?.parse().map_err(|e| format!("--steps: {e}"))?,
            "--log" => log = Some(PathBuf::from(val()?)),
            "--self-test" => {
                SELF_TEST.store(true, Ordering::SeqCst);
                steps = steps.min(10);
            }
            "-h" | "--help" => {
                println!(
                    "usage: soak [--seed N] [--minutes M (30)] [--steps S (unbounded)] [--log FILE.jsonl] [--self-test]"
                );
                std::process::exit(0);
            }
            _ => return Err(format!("unknown argument {a}")),
        }
    }
    Ok((seed, minutes, steps, log))
}

fn prerequisites() -> Result<(), String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err("not running as root".into());
    }
    for tool in [
        "dockerd",
        "docker",
        "nsenter",
        "conntrack",
        "nft",
        "ip",
        "iptables-save",
    ] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .is_ok_and(|o| o.status.success());
        if !found {
            return Err(format!("{tool} is missing (scripts/install-deps.sh)"));
        }
    }
    if !Path::new(BUSYBOX).exists() {
        return Err(format!("{BUSYBOX} is missing (busybox-static)"));
    }
    run("docker", &["image", "inspect", IMAGE])
        .map(|_| ())
        .map_err(|_| {
            format!("image {IMAGE} missing on the machine's dockerd (scripts/ensure-docker.sh)")
        })
}

fn main() {
    let (seed, minutes, max_steps, log) = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("soak: {e}");
            std::process::exit(2);
        }
    };
    let seed = seed.unwrap_or_else(|| {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1);
        t % 1_000_000
    });
    println!("soak: seed {seed}");
    if let Err(e) = prerequisites() {
        eprintln!("soak: prerequisite missing: {e}");
        std::process::exit(2);
    }
    // SAFETY: installs a handler that only stores to an atomic.
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
    let log = log.unwrap_or_else(|| PathBuf::from(format!("target/soak/soak-{seed}.jsonl")));
    if let Some(p) = log.parent() {
        let _ = std::fs::create_dir_all(p);
    }
    let logf = match std::fs::File::create(&log) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("soak: {}: {e}", log.display());
            std::process::exit(2);
        }
    };
    println!(
        "soak: log {} (netguard's and dockerd's logs in {} at the end)",
        log.display(),
        log.with_extension("logs").display()
    );
    let code = {
        let mut s = match Soak::setup(seed, logf, log.with_extension("logs")) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("soak: setup failed: {e}");
                std::process::exit(2);
            }
        };
        s.soak(Duration::from_secs_f64(minutes * 60.0), max_steps)
    };
    std::process::exit(code);
}

impl Soak {
    fn setup(seed: u64, log: std::fs::File, logs_dir: PathBuf) -> Result<Soak, String> {
        let pid = std::process::id();
        let ns = format!("soak{pid}");
        let dir = PathBuf::from(format!("/tmp/soak{pid}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let _ = run("ip", &["netns", "del", &ns]);
        run("ip", &["netns", "add", &ns])?;
        let netguard_bin =
            std::env::var("NETGUARD_BIN").unwrap_or_else(|_| "target/debug/netguard".to_string());
        let netguard_bin = std::fs::canonicalize(&netguard_bin)
            .map_err(|e| format!("netguard binary {netguard_bin}: {e} (NETGUARD_BIN)"))?
            .display()
            .to_string();
        let mut s = Soak {
            seed,
            sock: format!("unix://{}/docker.sock", dir.display()),
            ns,
            dir,
            netguard_bin,
            dockerd: None,
            daemon: None,
            daemon_pid: 0,
            daemon_lives: 0,
            events_before: 0,
            model: Vec::new(),
            next_key: 0,
            next_net: 0,
            next_svc: 0,
            transient: Vec::new(),
            policy: Pol::A,
            live_restore: false,
            probe: None,
            canaries: Vec::new(),
            monitor: None,
            step: Arc::new(AtomicUsize::new(0)),
            log,
            logs_dir,
            kinds: BTreeMap::new(),
            violations: Vec::new(),
            notes: Vec::new(),
            settles: Vec::new(),
            acts: BTreeMap::new(),
            revoked_checked: 0,
            canaries_seen: 0,
            stale_entries: 0,
            probe_restarts: 0,
        };
        s.ns_cmd(&["ip", "link", "set", "lo", "up"])?;
        s.start_monitor()?;
        s.write_dockerd_config()?;
        s.start_dockerd()?;
        // The image, from the machine's dockerd.
        let mut save = Command::new("docker")
            .args(["save", IMAGE])
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| format!("docker save: {e}"))?;
        let load = Command::new("docker")
            .args(["-H", &s.sock, "load"])
            .stdin(save.stdout.take().ok_or("docker save: no stdout")?)
            .output()
            .map_err(|e| format!("docker load: {e}"))?;
        let _ = save.wait();
        if !load.status.success() {
            return Err(format!(
                "docker load: {}",
                String::from_utf8_lossy(&load.stderr)
            ));
        }
        for (net, subnet) in FIXED_NETS {
            s.docker(&["network", "create", "--subnet", subnet, net])?;
        }
        s.write_policy(Pol::A)?;
        // The probe pair: web -> api on sk-a, never stopped, removed or relabeled by a step.
        for (short, role) in [("sk-probe-web", "web"), ("sk-probe-api", "api")] {
            s.run_ctr(short, Some(role), &["sk-a".to_string()], None, true, None)?;
        }
        s.start_daemon()?;
        s.settle(Kind::Run, Instant::now());
        s.start_probe()?;
        Ok(s)
    }

    fn ns_cmd(&self, args: &[&str]) -> Result<String, String> {
        let mut a = vec!["netns", "exec", self.ns.as_str()];
        a.extend_from_slice(args);
        run("ip", &a)
    }

    fn docker(&self, args: &[&str]) -> Result<String, String> {
        let mut a = vec!["-H", self.sock.as_str()];
        a.extend_from_slice(args);
        run("docker", &a)
    }

    fn netguard(&self, args: &[&str]) -> (i32, String) {
        let good = self.dir.join("good.toml");
        let out = Command::new("ip")
            .args(["netns", "exec", &self.ns, &self.netguard_bin, "-c"])
            .arg(&good)
            .args(args)
            .env("DOCKER_HOST", &self.sock)
            .env("NO_COLOR", "1")
            .output();
        match out {
            Ok(o) => (
                o.status.code().unwrap_or(-1),
                format!(
                    "{}{}",
                    String::from_utf8_lossy(&o.stdout),
                    String::from_utf8_lossy(&o.stderr)
                ),
            ),
            Err(e) => (-1, e.to_string()),
        }
    }

    fn write_policy(&mut self, p: Pol) -> Result<(), String> {
        let text = p.text();
        for f in ["policy.toml", "good.toml"] {
            self.write_file(f, &text)?;
        }
        self.policy = p;
        Ok(())
    }

    /// Written to a temporary file and renamed over the old one, as an operator's tool
    /// would: a SIGHUP never reads a half-written policy.
    fn write_file(&self, name: &str, text: &str) -> Result<(), String> {
        let tmp = self.dir.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, text).map_err(|e| format!("{}: {e}", tmp.display()))?;
        std::fs::rename(&tmp, self.dir.join(name)).map_err(|e| format!("{name}: {e}"))
    }

    /// The daemon's log since `from` bytes.
    fn daemon_log_since(&self, from: u64) -> String {
        let path = self.dir.join(format!("netguard-{}.log", self.daemon_lives));
        let text = std::fs::read(&path).unwrap_or_default();
        String::from_utf8_lossy(text.get(from as usize..).unwrap_or_default()).into_owned()
    }

    fn daemon_log_len(&self) -> u64 {
        let path = self.dir.join(format!("netguard-{}.log", self.daemon_lives));
        std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
    }

    fn write_dockerd_config(&self) -> Result<(), String> {
        let cfg = json!({ "live-restore": self.live_restore });
        std::fs::write(self.dir.join("daemon.json"), cfg.to_string())
            .map_err(|e| format!("daemon.json: {e}"))
    }

    fn start_dockerd(&mut self) -> Result<(), String> {
        let d = self.dir.display().to_string();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("dockerd.log"))
            .map_err(|e| format!("dockerd.log: {e}"))?;
        // nsenter, not `ip netns exec`: that remounts /sys and hides the cgroup mounts.
        let child = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", self.ns))
            .arg("dockerd")
            .arg(format!("--config-file={d}/daemon.json"))
            .arg(format!("--data-root={d}/data"))
            .arg(format!("--exec-root={d}/exec"))
            .arg(format!("--pidfile={d}/docker.pid"))
            .arg(format!("--host={}", self.sock))
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log)
            .spawn()
            .map_err(|e| format!("dockerd: {e}"))?;
        self.dockerd = Some(child);
        let t = Instant::now();
        while self.docker(&["info", "--format", "{{.ID}}"]).is_err() {
            if t.elapsed() > Duration::from_secs(60) {
                return Err("the soak's dockerd did not answer within 60 s (dockerd.log)".into());
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        Ok(())
    }

    fn stop_dockerd(&mut self) -> Result<(), String> {
        let Some(mut c) = self.dockerd.take() else {
            return Ok(());
        };
        signal(c.id() as i32, libc::SIGTERM);
        if !wait_exit(&mut c, Duration::from_secs(40)) {
            let _ = c.kill();
            let _ = c.wait();
            return Err("dockerd did not exit within 40 s of SIGTERM".into());
        }
        Ok(())
    }

    fn start_daemon(&mut self) -> Result<(), String> {
        self.daemon_lives += 1;
        let log =
            std::fs::File::create(self.dir.join(format!("netguard-{}.log", self.daemon_lives)))
                .map_err(|e| e.to_string())?;
        let child = Command::new("ip")
            .args(["netns", "exec", &self.ns, &self.netguard_bin, "-c"])
            .arg(self.dir.join("policy.toml"))
            .args([
                "run",
                "--resync-interval",
                "60",
                "--coalesce-ms",
                "20",
                "--state-file",
            ])
            .arg(self.dir.join("state.json"))
            .env("DOCKER_HOST", &self.sock)
            .env("NETGUARD_LOG", "info")
            .env_remove("NOTIFY_SOCKET")
            .env_remove("WATCHDOG_USEC")
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log)
            .spawn()
            .map_err(|e| format!("netguard run: {e}"))?;
        // `ip netns exec` execs the program: the child's pid is netguard's.
        self.daemon_pid = child.id() as i32;
        self.daemon = Some(child);
        let pid = self.daemon_pid;
        let ok = self.wait_state(Duration::from_secs(30), |s| {
            s["pid"].as_i64() == Some(pid as i64) && !s["last_reconcile_unix_ms"].is_null()
        });
        if ok {
            Ok(())
        } else {
            Err(format!("netguard run (pid {pid}) not ready within 30 s"))
        }
    }

    fn state(&self) -> Value {
        std::fs::read_to_string(self.dir.join("state.json"))
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or(Value::Null)
    }

    fn wait_state(&self, max: Duration, cond: impl Fn(&Value) -> bool) -> bool {
        let t = Instant::now();
        while t.elapsed() < max {
            if cond(&self.state()) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    fn events_total(&self) -> u64 {
        let s = self.state();
        let now = if s["pid"].as_i64() == Some(self.daemon_pid as i64) {
            s["events"].as_u64().unwrap_or(0)
        } else {
            0
        };
        self.events_before + now
    }

    /// `nft monitor` in the namespace for the whole soak: every committed generation with
    /// the process that wrote it and the tables it touched.
    fn start_monitor(&mut self) -> Result<(), String> {
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.ns, "nft", "monitor"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("nft monitor: {e}"))?;
        let out = child.stdout.take().ok_or("nft monitor: no stdout")?;
        let err = child.stderr.take().ok_or("nft monitor: no stderr")?;
        let bad = Arc::new(Mutex::new(Vec::new()));
        let gens = Arc::new(Mutex::new(BTreeMap::new()));
        let (b2, g2) = (bad.clone(), gens.clone());
        std::thread::spawn(move || {
            let mut tables: BTreeSet<String> = BTreeSet::new();
            let mut last = String::new();
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if let Some(rest) = line.strip_prefix("# new generation ") {
                    // "N by process PID (COMM)"
                    let comm = rest
                        .rsplit_once('(')
                        .map(|(_, c)| c.trim_end_matches(')').to_string())
                        .unwrap_or_else(|| "?".into());
                    let docker = [
                        "iptables",
                        "ip6tables",
                        "dockerd",
                        "xtables",
                        "docker-proxy",
                    ]
                    .iter()
                    .any(|p| comm.starts_with(p));
                    let ours = |t: &String| t == "inet netguard" || t == "bridge netguard";
                    let wrong: Vec<&String> = if docker {
                        tables.iter().filter(|t| ours(t)).collect()
                    } else {
                        tables.iter().filter(|t| !ours(t)).collect()
                    };
                    if !wrong.is_empty()
                        && let Ok(mut b) = b2.lock()
                    {
                        b.push(format!("generation {rest}: wrote {wrong:?}"));
                    }
                    if let Ok(mut g) = g2.lock() {
                        let who = if docker { "docker" } else { comm.as_str() };
                        *g.entry(who.to_string()).or_insert(0) += 1;
                    }
                    tables.clear();
                    continue;
                }
                let w: Vec<&str> = line.split_whitespace().collect();
                let verbs = [
                    "add", "delete", "replace", "insert", "flush", "update", "destroy",
                ];
                if w.len() >= 4 && verbs.contains(&w[0]) {
                    last = format!("{} {}", w[2], w[3]);
                }
                if !last.is_empty() {
                    tables.insert(last.clone());
                }
            }
        });
        let b3 = bad.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                // nft's own cache warnings about objects it saw created before it listened
                // or deleted in the same batch: not a write.
                if line.starts_with("W: ") {
                    continue;
                }
                // nft printing netguard's hold rule (xtables' NFQUEUE target in an inet
                // table, docs/policy.md "Admission hold"): libxtables cannot name an inet
                // target's family. Not a write either.
                if line == "libxtables: unhandled NFPROTO in xtables_set_nfproto" {
                    continue;
                }
                if let Ok(mut b) = b3.lock() {
                    b.push(format!("nft monitor said: {line}"));
                }
            }
        });
        // Let it subscribe before anything is written.
        std::thread::sleep(Duration::from_millis(300));
        self.monitor = Some(Monitor { child, bad, gens });
        Ok(())
    }

    /// Every table but netguard's, stateless (no counters), as nft lists them: what Docker
    /// (through iptables-nft) has in the namespace.
    fn docker_tables(&self) -> String {
        let all = self
            .ns_cmd(&["nft", "-s", "list", "ruleset"])
            .unwrap_or_default();
        let mut out = String::new();
        let mut skip = false;
        for l in all.lines() {
            if l.starts_with("table ") {
                skip = l == "table inet netguard {" || l == "table bridge netguard {";
            }
            if !skip {
                out.push_str(l);
                out.push('\n');
            }
            if l == "}" {
                skip = false;
            }
        }
        for cmd in ["iptables-save", "ip6tables-save"] {
            let t = self.ns_cmd(&[cmd]).unwrap_or_default();
            for l in t.lines().filter(|l| !l.starts_with('#')) {
                // ":CHAIN POLICY [packets:bytes]": the counters are not Docker's state.
                let l = match l.rfind(" [") {
                    Some(i) if l.starts_with(':') => &l[..i],
                    _ => l,
                };
                out.push_str(l);
                out.push('\n');
            }
        }
        out
    }

    fn run_ctr(
        &mut self,
        name: &str,
        role: Option<&str>,
        nets: &[String],
        service: Option<u32>,
        probe: bool,
        ips: Option<&BTreeMap<String, String>>,
    ) -> Result<(), String> {
        let mut a: Vec<String> = vec!["run".into(), "-d".into(), "--name".into(), name.into()];
        if let Some(r) = role {
            a.extend(["--label".into(), format!("role={r}")]);
        }
        if let Some(k) = service {
            a.extend([
                "--label".into(),
                "com.docker.compose.project=sk".into(),
                "--label".into(),
                format!("com.docker.compose.service=svc{k}"),
            ]);
        }
        let first = nets.first().cloned();
        if let Some(n) = &first {
            a.extend(["--network".into(), n.clone()]);
            if let Some(ip) = ips.and_then(|m| m.get(n)) {
                a.extend(["--ip".into(), ip.clone()]);
            }
        }
        a.extend([IMAGE.into(), "sh".into(), "-c".into(), SERVE.into()]);
        let refs: Vec<&str> = a.iter().map(String::as_str).collect();
        let key = self.next_key;
        self.next_key += 1;
        self.model.push(Ctr {
            key,
            name: name.to_string(),
            role: role.map(String::from),
            nets: first.iter().cloned().collect(),
            running: true,
            service,
            probe,
        });
        self.docker(&refs)?;
        for n in nets.iter().skip(1) {
            let mut c = vec!["network", "connect"];
            let ip = ips.and_then(|m| m.get(n));
            if let Some(ip) = ip {
                c.extend(["--ip", ip.as_str()]);
            }
            c.extend([n.as_str(), name]);
            self.docker(&c)?;
            if let Some(m) = self.model.iter_mut().find(|c| c.key == key) {
                m.nets.insert(n.clone());
            }
        }
        Ok(())
    }

    fn managed_nets(&self) -> Vec<String> {
        FIXED_NETS
            .iter()
            .map(|(n, _)| n.to_string())
            .chain(self.transient.iter().cloned())
            .collect()
    }

    /// Keys of containers a step may stop, kill, remove or relabel (never the probe pair).
    fn victims(&self, running: Option<bool>) -> Vec<u32> {
        self.model
            .iter()
            .filter(|c| !c.probe && running.is_none_or(|r| c.running == r))
            .map(|c| c.key)
            .collect()
    }

    fn ctr(&self, key: u32) -> Option<&Ctr> {
        self.model.iter().find(|c| c.key == key)
    }

    fn ctr_mut(&mut self, key: u32) -> Option<&mut Ctr> {
        self.model.iter_mut().find(|c| c.key == key)
    }

    /// Draws and performs one step. Ok(None): not possible in this state (draw again).
    fn act(&mut self, kind: Kind, rng: &mut Rng) -> Result<Option<String>, String> {
        let population = self.model.len();
        match kind {
            Kind::Run => {
                if population >= MAX_CONTAINERS {
                    return Ok(None);
                }
                let role = *rng.pick(&ROLES).unwrap_or(&None);
                let nets = self.managed_nets();
                let mut chosen = vec![rng.pick(&nets).cloned().unwrap_or_default()];
                if rng.chance(30) {
                    let second = rng.pick(&nets).cloned().unwrap_or_default();
                    if !chosen.contains(&second) {
                        chosen.push(second);
                    }
                }
                let name = format!("sk-c{}", self.next_key);
                self.run_ctr(&name, role, &chosen, None, false, None)?;
                Ok(Some(format!("{name} role={role:?} nets={chosen:?}")))
            }
            Kind::Stop | Kind::Kill => {
                let Some(&k) = rng.pick(&self.victims(Some(true))) else {
                    return Ok(None);
                };
                let name = self.ctr(k).map(|c| c.name.clone()).unwrap_or_default();
                if let Some(c) = self.ctr_mut(k) {
                    c.running = false;
                }
                if kind == Kind::Stop {
                    self.docker(&["stop", "-t", "2", &name])?;
                } else {
                    self.docker(&["kill", &name])?;
                }
                Ok(Some(name))
            }
            Kind::Start => {
                let Some(&k) = rng.pick(&self.victims(Some(false))) else {
                    return Ok(None);
                };
                let name = self.ctr(k).map(|c| c.name.clone()).unwrap_or_default();
                if let Some(c) = self.ctr_mut(k) {
                    c.running = true;
                }
                self.docker(&["start", &name])?;
                Ok(Some(name))
            }
            Kind::Rm => {
                let Some(&k) = rng.pick(&self.victims(None)) else {
                    return Ok(None);
                };
                let name = self.ctr(k).map(|c| c.name.clone()).unwrap_or_default();
                self.model.retain(|c| c.key != k);
                self.docker(&["rm", "-f", &name])?;
                Ok(Some(name))
            }
            Kind::Connect => {
                let nets = self.managed_nets();
                let cands: Vec<(u32, String)> = self
                    .model
                    .iter()
                    .flat_map(|c| {
                        nets.iter()
                            .filter(|n| !c.nets.contains(*n))
                            .map(move |n| (c.key, n.clone()))
                    })
                    .collect();
                let Some((k, net)) = rng.pick(&cands).cloned() else {
                    return Ok(None);
                };
                let name = self.ctr(k).map(|c| c.name.clone()).unwrap_or_default();
                if let Some(c) = self.ctr_mut(k) {
                    c.nets.insert(net.clone());
                }
                self.docker(&["network", "connect", &net, &name])?;
                Ok(Some(format!("{name} to {net}")))
            }
            Kind::Disconnect => {
                let cands: Vec<(u32, String)> = self
                    .model
                    .iter()
                    .flat_map(|c| {
                        c.nets
                            .iter()
                            .filter(|n| !(c.probe && n.as_str() == "sk-a"))
                            .map(move |n| (c.key, n.clone()))
                    })
                    .collect();
                let Some((k, net)) = rng.pick(&cands).cloned() else {
                    return Ok(None);
                };
                let name = self.ctr(k).map(|c| c.name.clone()).unwrap_or_default();
                if let Some(c) = self.ctr_mut(k) {
                    c.nets.remove(&net);
                }
                self.docker(&["network", "disconnect", &net, &name])?;
                Ok(Some(format!("{name} from {net}")))
            }
            Kind::Rename => {
                let all: Vec<u32> = self.model.iter().map(|c| c.key).collect();
                let Some(&k) = rng.pick(&all) else {
                    return Ok(None);
                };
                let old = self.ctr(k).map(|c| c.name.clone()).unwrap_or_default();
                let new = format!("sk-r{}-{}", k, self.next_key);
                self.next_key += 1;
                if let Some(c) = self.ctr_mut(k) {
                    c.name = new.clone();
                }
                self.docker(&["rename", &old, &new])?;
                Ok(Some(format!("{old} -> {new}")))
            }
            Kind::Relabel => {
                // A container on no network would come back on Docker's default bridge.
                let cands: Vec<u32> = self
                    .victims(None)
                    .into_iter()
                    .filter(|k| self.ctr(*k).is_some_and(|c| !c.nets.is_empty()))
                    .collect();
                let Some(&k) = rng.pick(&cands) else {
                    return Ok(None);
                };
                let Some(old) = self.ctr(k).cloned() else {
                    return Ok(None);
                };
                let roles: Vec<Option<&str>> = ROLES
                    .iter()
                    .copied()
                    .filter(|r| r.map(String::from) != old.role)
                    .collect();
                let role = *rng.pick(&roles).unwrap_or(&None);
                // Same name, same networks, same addresses: only the label differs.
                let ips: BTreeMap<String, String> = self
                    .inspect_one(&old.name)
                    .map(|(_, _, _, ips)| ips)
                    .unwrap_or_default();
                let nets: Vec<String> = old.nets.iter().cloned().collect();
                self.model.retain(|c| c.key != k);
                self.docker(&["rm", "-f", &old.name])?;
                let ips = if old.running { Some(&ips) } else { None };
                self.run_ctr(&old.name, role, &nets, old.service, false, ips)?;
                Ok(Some(format!(
                    "{} role {:?} -> {role:?} (ips {:?})",
                    old.name, old.role, ips
                )))
            }
            Kind::NetCreate => {
                if self.transient.len() >= 3 {
                    return Ok(None);
                }
                let n = self.next_net;
                self.next_net += 1;
                let name = format!("sk-x{n}");
                let subnet = format!("10.92.{}.0/24", n % 250);
                self.transient.push(name.clone());
                self.docker(&["network", "create", "--subnet", &subnet, &name])?;
                Ok(Some(format!("{name} {subnet}")))
            }
            Kind::NetRm => {
                let Some(net) = rng.pick(&self.transient).cloned() else {
                    return Ok(None);
                };
                let members: Vec<String> = self
                    .model
                    .iter()
                    .filter(|c| c.nets.contains(&net))
                    .map(|c| c.name.clone())
                    .collect();
                for c in self.model.iter_mut() {
                    c.nets.remove(&net);
                }
                self.transient.retain(|n| *n != net);
                for m in &members {
                    self.docker(&["network", "disconnect", "-f", &net, m])?;
                }
                self.docker(&["network", "rm", &net])?;
                Ok(Some(format!("{net} (disconnected first: {members:?})")))
            }
            Kind::ScaleUp => {
                if population + 2 > MAX_CONTAINERS {
                    return Ok(None);
                }
                let n = 2 + rng.below(3.min(MAX_CONTAINERS - population - 1));
                let role = *rng.pick(&ROLES).unwrap_or(&None);
                let net = rng.pick(&self.managed_nets()).cloned().unwrap_or_default();
                let k = self.next_svc;
                self.next_svc += 1;
                let names: Vec<String> = (1..=n).map(|i| format!("sk-svc{k}-{i}")).collect();
                let mut args = Vec::new();
                for name in &names {
                    let mut a: Vec<String> = vec!["run", "-d", "--name", name, "--network", &net]
                        .into_iter()
                        .map(String::from)
                        .collect();
                    if let Some(r) = role {
                        a.extend(["--label".into(), format!("role={r}")]);
                    }
                    a.extend([
                        "--label".into(),
                        "com.docker.compose.project=sk".into(),
                        "--label".into(),
                        format!("com.docker.compose.service=svc{k}"),
                        IMAGE.into(),
                        "sh".into(),
                        "-c".into(),
                        SERVE.into(),
                    ]);
                    args.push(a);
                    let key = self.next_key;
                    self.next_key += 1;
                    self.model.push(Ctr {
                        key,
                        name: name.clone(),
                        role: role.map(String::from),
                        nets: [net.clone()].into_iter().collect(),
                        running: true,
                        service: Some(k),
                        probe: false,
                    });
                }
                self.parallel(args)?;
                Ok(Some(format!("svc{k} x{n} role={role:?} on {net}")))
            }
            Kind::ScaleDown => {
                let svcs: BTreeSet<u32> = self.model.iter().filter_map(|c| c.service).collect();
                let svcs: Vec<u32> = svcs.into_iter().collect();
                let Some(&k) = rng.pick(&svcs) else {
                    return Ok(None);
                };
                let members: Vec<String> = self
                    .model
                    .iter()
                    .filter(|c| c.service == Some(k))
                    .map(|c| c.name.clone())
                    .collect();
                let n = 1 + rng.below(members.len());
                let gone: Vec<String> = members.into_iter().take(n).collect();
                self.model.retain(|c| !gone.contains(&c.name));
                self.parallel(
                    gone.iter()
                        .map(|g| vec!["rm".into(), "-f".into(), g.clone()])
                        .collect(),
                )?;
                Ok(Some(format!("svc{k}: removed {gone:?}")))
            }
            Kind::HupValid => {
                let p = self.policy.other();
                let n = self.state()["reconciles"].as_u64().unwrap_or(0);
                self.write_policy(p)?;
                signal(self.daemon_pid, libc::SIGHUP);
                let pid = self.daemon_pid as i64;
                if !self.wait_state(SETTLE, |s| {
                    s["pid"].as_i64() == Some(pid) && s["reconciles"].as_u64().unwrap_or(0) > n
                }) {
                    return Err(format!("policy {p:?}: no reconcile within {SETTLE:?}"));
                }
                Ok(Some(format!("policy {p:?}")))
            }
            Kind::HupInvalid => {
                self.write_file("policy.toml", INVALID_POLICY)?;
                // The rejection of this SIGHUP: a new line in the log (the state file's
                // last_error may still be the previous rejection's).
                let from = self.daemon_log_len();
                signal(self.daemon_pid, libc::SIGHUP);
                let pid = self.daemon_pid as i64;
                let t = Instant::now();
                let mut rejected = false;
                while t.elapsed() < Duration::from_secs(10) {
                    if self.daemon_log_since(from).contains("reload rejected") {
                        rejected = self.wait_state(Duration::from_secs(5), |s| {
                            s["pid"].as_i64() == Some(pid)
                                && s["last_error"]
                                    .as_str()
                                    .is_some_and(|e| e.contains("reload rejected"))
                        });
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
                // The file back (no SIGHUP: the daemon still enforces it), so that a later
                // restart starts from a valid policy.
                self.write_file("policy.toml", &self.policy.text())?;
                if !rejected {
                    return Err(format!(
                        "invalid policy: no `reload rejected` in the state file: {}",
                        self.state()
                    ));
                }
                Ok(Some(format!("rejected, still enforcing {:?}", self.policy)))
            }
            Kind::Kill9 => {
                self.events_before = self.events_total();
                signal(self.daemon_pid, libc::SIGKILL);
                if let Some(mut c) = self.daemon.take() {
                    let _ = c.wait();
                }
                let old = self.daemon_pid;
                self.start_daemon()?;
                Ok(Some(format!("pid {old} -> {}", self.daemon_pid)))
            }
            Kind::DockerdLive | Kind::DockerdPlain => {
                let live = kind == Kind::DockerdLive;
                self.live_restore = live;
                self.write_dockerd_config()?;
                if let Some(c) = &self.dockerd {
                    signal(c.id() as i32, libc::SIGHUP);
                }
                let want = if live { "true" } else { "false" };
                let t = Instant::now();
                while self
                    .docker(&["info", "--format", "{{.LiveRestoreEnabled}}"])
                    .ok()
                    .as_deref()
                    != Some(want)
                {
                    if t.elapsed() > Duration::from_secs(10) {
                        return Err(format!("dockerd did not reload live-restore={live}"));
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
                self.stop_dockerd()?;
                if !live {
                    for c in self.model.iter_mut() {
                        c.running = false;
                    }
                }
                self.start_dockerd()?;
                if !live {
                    // The probe pair back (a restart without live-restore stops every
                    // container: the probe's loss is expected here).
                    let probes: Vec<String> = self
                        .model
                        .iter()
                        .filter(|c| c.probe)
                        .map(|c| c.name.clone())
                        .collect();
                    for p in &probes {
                        self.docker(&["start", p])?;
                    }
                    for c in self.model.iter_mut().filter(|c| c.probe) {
                        c.running = true;
                    }
                }
                // Wait until netguard is connected to the new dockerd.
                let pid = self.daemon_pid as i64;
                if !self.wait_state(Duration::from_secs(60), |s| {
                    s["pid"].as_i64() == Some(pid) && s["connected"].as_bool() == Some(true)
                }) {
                    return Err("netguard did not reconnect within 60 s".into());
                }
                Ok(Some(format!("live-restore={live}")))
            }
        }
    }

    /// `--self-test`: after the action of step 2, 4, 6 and 8, one fault each invariant must
    /// report. 2: a process other than Docker writes Docker's table (invariant 3). 4: a
    /// conntrack entry of a pair both policies deny, probe-api -> probe-web (4). 6: the probe's
    /// packets dropped for 4 s by an iptables rule (5). 8: netguard's forward chain flushed
    /// behind the daemon's back (1, and 2: verify sees the leaks).
    fn inject(&mut self, step: usize) -> Option<&'static str> {
        let what = match step {
            2 => "foreign-write",
            4 => "conntrack-entry",
            6 => "probe-drop",
            8 => "flush-forward",
            _ => return None,
        };
        eprintln!("soak: self-test: injecting {what} at step {step}");
        let r = match what {
            "foreign-write" => self
                .ns_cmd(&["nft", "add", "table", "ip", "filter"])
                .and_then(|_| {
                    self.ns_cmd(&["nft", "add", "chain", "ip", "filter", "SOAK-INJECTED"])
                })
                .and_then(|_| {
                    self.ns_cmd(&["nft", "delete", "chain", "ip", "filter", "SOAK-INJECTED"])
                }),
            "conntrack-entry" => {
                let (web, api) = self.probe_ips();
                self.ns_cmd(&[
                    "conntrack",
                    "-I",
                    "-p",
                    "tcp",
                    "-s",
                    &api,
                    "-d",
                    &web,
                    "--sport",
                    "40000",
                    "--dport",
                    "8081",
                    "--state",
                    "ESTABLISHED",
                    "-u",
                    "ASSURED",
                    "-t",
                    "600",
                ])
            }
            "probe-drop" => {
                let port = WEB_API_PORT.to_string();
                let r = self.ns_cmd(&[
                    "iptables", "-I", "FORWARD", "-p", "tcp", "--dport", &port, "-j", "DROP",
                ]);
                std::thread::sleep(Duration::from_secs(4));
                r.and_then(|_| {
                    self.ns_cmd(&[
                        "iptables", "-D", "FORWARD", "-p", "tcp", "--dport", &port, "-j", "DROP",
                    ])
                })
            }
            _ => {
                // The step's own change may still be on its way to the kernel, and the
                // daemon's transaction for it rewrites the chain: flush only once the daemon
                // has settled and stayed so, or the fault is repaired before it is checked.
                self.wait_quiet();
                self.ns_cmd(&["nft", "flush", "chain", "inet", "netguard", "forward"])
            }
        };
        if let Err(e) = r {
            eprintln!("soak: self-test: injecting {what} failed: {e}");
        }
        Some(what)
    }

    /// Until `diff` has exited 0 twice, 300 ms apart (bounded by the settle bound).
    fn wait_quiet(&mut self) {
        let t = Instant::now();
        let mut clean_since: Option<Instant> = None;
        while t.elapsed() < settle_bound() {
            if self.netguard(&["diff"]).0 == 0 {
                match clean_since {
                    Some(c) if c.elapsed() >= Duration::from_millis(300) => return,
                    Some(_) => {}
                    None => clean_since = Some(Instant::now()),
                }
            } else {
                clean_since = None;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Undoes an injection after its checks, so that the next steps start clean.
    fn uninject(&mut self, what: &str) {
        match what {
            "conntrack-entry" => {
                let (web, api) = self.probe_ips();
                let _ = self.ns_cmd(&[
                    "conntrack",
                    "-D",
                    "-p",
                    "tcp",
                    "-s",
                    &api,
                    "-d",
                    &web,
                    "--sport",
                    "40000",
                ]);
            }
            "flush-forward" => {
                // A reload reconciles in full: the chain is refilled.
                let n = self.state()["reconciles"].as_u64().unwrap_or(0);
                signal(self.daemon_pid, libc::SIGHUP);
                self.wait_state(Duration::from_secs(10), |s| {
                    s["reconciles"].as_u64().unwrap_or(0) > n
                });
            }
            _ => {}
        }
    }

    /// The probe pair's addresses on sk-a: (web, api).
    fn probe_ips(&self) -> (String, String) {
        let act = self.actual();
        let ip = |role: &str| {
            self.model
                .iter()
                .find(|c| c.probe && c.role.as_deref() == Some(role))
                .and_then(|c| act.ctrs.get(&c.name))
                .and_then(|c| c.3.get("sk-a").cloned())
                .unwrap_or_default()
        };
        (ip("web"), ip("api"))
    }

    fn parallel(&self, cmds: Vec<Vec<String>>) -> Result<(), String> {
        let sock = self.sock.clone();
        let errs: Vec<String> = std::thread::scope(|s| {
            let hs: Vec<_> = cmds
                .iter()
                .map(|a| {
                    let sock = &sock;
                    s.spawn(move || {
                        let mut full = vec!["-H", sock.as_str()];
                        full.extend(a.iter().map(String::as_str));
                        run("docker", &full).err()
                    })
                })
                .collect();
            hs.into_iter()
                .filter_map(|h| h.join().ok().flatten())
                .collect()
        });
        if errs.is_empty() {
            Ok(())
        } else {
            Err(errs.join("; "))
        }
    }

    fn inspect_one(&self, name: &str) -> Option<Seen> {
        let out = self.docker(&["inspect", name]).ok()?;
        let v: Value = serde_json::from_str(&out).ok()?;
        parse_inspect(v.get(0)?).map(|(_, rest)| rest)
    }

    fn actual(&self) -> Actual {
        let mut a = Actual::default();
        let ids = self.docker(&["ps", "-aq"]).unwrap_or_default();
        let ids: Vec<&str> = ids.split_whitespace().collect();
        if ids.is_empty() {
            return a;
        }
        let mut args = vec!["inspect"];
        args.extend(ids);
        let Ok(out) = self.docker(&args) else {
            return a;
        };
        let Ok(Value::Array(all)) = serde_json::from_str::<Value>(&out) else {
            return a;
        };
        for c in &all {
            if let Some((name, (running, pid, role, ips))) = parse_inspect(c) {
                if running {
                    for (net, ip) in &ips {
                        a.by_ip
                            .insert(ip.clone(), (name.clone(), role.clone(), net.clone()));
                    }
                }
                a.ctrs.insert(name, (running, pid, role, ips));
            }
        }
        a
    }

    /// Polls `netguard diff` until it exits 0. Returns the time it took, or None.
    fn settle(&mut self, kind: Kind, since: Instant) -> Option<Duration> {
        let t = Instant::now();
        let mut last = (0, String::new());
        let mut noted = false;
        while t.elapsed() < settle_bound() {
            last = self.netguard(&["diff"]);
            if last.0 == 0 {
                return Some(since.elapsed());
            }
            // A slow settle: what is pending, and what the packets do meanwhile.
            if !noted && t.elapsed() > Duration::from_secs(3) {
                noted = true;
                let (code, out) =
                    self.netguard(&["verify", "--sample", "0", "--timeout-ms", "300"]);
                // Blocked while pending is fail-closed; reached where the policy denies is a
                // leak, whatever is pending.
                let leaks: Vec<&str> = out
                    .lines()
                    .filter(|l| l.contains("expected blocked"))
                    .collect();
                if !leaks.is_empty() {
                    self.violation(
                        2,
                        kind,
                        format!(
                            "leak while a settle is pending (3 s): {}",
                            leaks.join(" | ")
                        ),
                    );
                }
                self.note(
                    kind,
                    format!(
                        "settle slow (3 s): diff exit {}: {}\nverify meanwhile exit {code}: {}",
                        last.0,
                        tail(&last.1),
                        tail(&out)
                    ),
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        self.violation(
            1,
            kind,
            format!(
                "`netguard diff` not 0 within {:?}: exit {}: {}",
                settle_bound(),
                last.0,
                tail(&last.1)
            ),
        );
        None
    }

    /// `netguard run` must not exit on its own: if it did, that is a violation (with the
    /// end of its log), and a new one is started so that the soak goes on.
    fn check_daemon(&mut self, kind: Kind) {
        let exited = match &mut self.daemon {
            Some(c) => c.try_wait().ok().flatten(),
            None => None,
        };
        let Some(status) = exited else {
            return;
        };
        self.daemon = None;
        self.events_before = self.events_total();
        let log = self.daemon_log_since(0);
        let last: Vec<&str> = log
            .lines()
            .filter(|l| !l.trim_start().starts_with("at ") && !l.trim().is_empty())
            .filter(|l| {
                !l.trim_start()
                    .chars()
                    .next()
                    .is_some_and(|c| c.is_ascii_digit())
                    || l.contains("Z ")
            })
            .collect();
        let tail = last[last.len().saturating_sub(4)..].join(" | ");
        self.violation(
            1,
            kind,
            format!(
                "`netguard run` (pid {}) exited on its own: {status}: {tail}",
                self.daemon_pid
            ),
        );
        if let Err(e) = self.start_daemon() {
            self.violation(1, kind, format!("cannot restart netguard run: {e}"));
        }
    }

    fn violation(&mut self, invariant: u32, kind: Kind, what: String) {
        let step = self.step.load(Ordering::SeqCst);
        eprintln!(
            "soak: VIOLATION step {step} ({}) invariant {invariant}: {what}",
            kind.name()
        );
        self.violations.push(json!({
            "step": step, "kind": kind.name(), "invariant": invariant, "what": what,
        }));
        // SOAK_PAUSE=1: stop here, everything still running, until the file is removed
        // (to look at the namespace, the tables and the containers by hand).
        if std::env::var("SOAK_PAUSE").is_ok() {
            let flag = self.dir.join("paused");
            let _ = std::fs::write(&flag, "");
            eprintln!(
                "soak: paused (netns {}, DOCKER_HOST={}); rm {} to go on",
                self.ns,
                self.sock,
                flag.display()
            );
            while flag.exists() {
                std::thread::sleep(Duration::from_millis(500));
            }
        }
    }

    fn note(&mut self, kind: Kind, what: String) {
        let step = self.step.load(Ordering::SeqCst);
        eprintln!("soak: note step {step} ({}): {what}", kind.name());
        self.notes
            .push(json!({ "step": step, "kind": kind.name(), "what": what }));
    }

    fn start_probe(&mut self) -> Result<(), String> {
        let act = self.actual();
        let web = self
            .model
            .iter()
            .find(|c| c.probe && c.role.as_deref() == Some("web"));
        let api = self
            .model
            .iter()
            .find(|c| c.probe && c.role.as_deref() == Some("api"));
        let (Some(web), Some(api)) = (web, api) else {
            return Err("no probe pair in the model".into());
        };
        let pid = act.ctrs.get(&web.name).map(|c| c.1).unwrap_or(0);
        let ip = act
            .ctrs
            .get(&api.name)
            .and_then(|c| c.3.get("sk-a").cloned())
            .ok_or("probe api has no address on sk-a")?;
        if pid <= 0 {
            return Err(format!("probe web {} has no pid", web.name));
        }
        let mut child = Command::new("nsenter")
            .arg(format!("--net=/proc/{pid}/ns/net"))
            .args([BUSYBOX, "nc", &ip, &WEB_API_PORT.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("probe: {e}"))?;
        let mut stdin = child.stdin.take().ok_or("probe stdin")?;
        let stdout = child.stdout.take().ok_or("probe stdout")?;
        let lost = Arc::new(Mutex::new(None));
        let stop = Arc::new(AtomicBool::new(false));
        let rx = Arc::new(AtomicUsize::new(0));
        let last_rx = Arc::new(Mutex::new(Instant::now()));
        {
            let (lost, stop, step) = (lost.clone(), stop.clone(), self.step.clone());
            let last_rx = last_rx.clone();
            std::thread::spawn(move || {
                let mut n: u64 = 0;
                while !stop.load(Ordering::SeqCst) {
                    n += 1;
                    if writeln!(stdin, "{n}").and_then(|_| stdin.flush()).is_err() {
                        record_loss(&lost, &step, "write failed");
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(100));
                    let quiet = last_rx.lock().map(|t| t.elapsed()).unwrap_or_default();
                    if quiet > Duration::from_secs(3) {
                        record_loss(&lost, &step, &format!("no echo for {quiet:?}"));
                        return;
                    }
                }
            });
        }
        {
            let (lost, stop, step, rx) =
                (lost.clone(), stop.clone(), self.step.clone(), rx.clone());
            std::thread::spawn(move || {
                for _ in BufReader::new(stdout).lines().map_while(Result::ok) {
                    rx.fetch_add(1, Ordering::SeqCst);
                    if let Ok(mut t) = last_rx.lock() {
                        *t = Instant::now();
                    }
                }
                if !stop.load(Ordering::SeqCst) {
                    record_loss(&lost, &step, "connection closed (EOF)");
                }
            });
        }
        // The first echo proves the connection is up.
        let t = Instant::now();
        while rx.load(Ordering::SeqCst) == 0 {
            if t.elapsed() > Duration::from_secs(10) {
                let _ = child.kill();
                let _ = child.wait();
                stop.store(true, Ordering::SeqCst);
                return Err(format!(
                    "probe {} -> {ip}:{WEB_API_PORT} got no echo in 10 s",
                    web.name
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.probe = Some(Probe {
            child,
            lost,
            stop,
            rx,
            since: Instant::now(),
        });
        Ok(())
    }

    fn stop_probe(&mut self) {
        if let Some(mut p) = self.probe.take() {
            p.stop.store(true, Ordering::SeqCst);
            let _ = p.child.kill();
            let _ = p.child.wait();
        }
    }

    /// Invariant 5, after a step: did the probe lose its connection?
    fn check_probe(&mut self, kind: Kind) {
        let lost = self
            .probe
            .as_ref()
            .and_then(|p| p.lost.lock().ok().and_then(|l| l.clone()));
        let Some((at, why)) = lost else {
            return;
        };
        let rx = self
            .probe
            .as_ref()
            .map(|p| p.rx.load(Ordering::SeqCst))
            .unwrap_or(0);
        let age = self
            .probe
            .as_ref()
            .map(|p| p.since.elapsed())
            .unwrap_or_default();
        self.stop_probe();
        if kind == Kind::DockerdPlain {
            self.note(
                kind,
                format!("probe lost as expected (containers stopped): {why}"),
            );
        } else {
            self.violation(
                5,
                kind,
                format!("the probe connection was lost during step {at}: {why} (after {rx} echoes, {age:?})"),
            );
        }
        self.probe_restarts += 1;
        if let Err(e) = self.start_probe() {
            self.violation(5, kind, format!("cannot restart the probe: {e}"));
        }
    }

    /// conntrack entries in the namespace: (proto, src, dst, sport, dport).
    fn conntrack(&self) -> Vec<(String, String, String, u16, u16)> {
        let out = self.ns_cmd(&["conntrack", "-L"]).unwrap_or_default();
        out.lines()
            .filter_map(|l| {
                let w: Vec<&str> = l.split_whitespace().collect();
                let proto = w.first()?.to_string();
                let get = |k: &str| w.iter().find_map(|x| x.strip_prefix(k)).map(String::from);
                let src = get("src=")?;
                let dst = get("dst=")?;
                let sport = get("sport=").and_then(|p| p.parse().ok()).unwrap_or(0);
                let dport = get("dport=").and_then(|p| p.parse().ok()).unwrap_or(0);
                Some((proto, src, dst, sport, dport))
            })
            .collect()
    }

    fn check(&mut self, kind: Kind, before: Option<&str>) -> Value {
        let mut figures = json!({});
        // 2: every ordered pair, real packets.
        let t = Instant::now();
        let (code, out) = self.netguard(&["verify", "--sample", "0", "--timeout-ms", "300"]);
        figures["verify_ms"] = json!(t.elapsed().as_millis() as u64);
        figures["verify_exit"] = json!(code);
        if code != 0 {
            let (again, _) = self.netguard(&["verify", "--sample", "0", "--timeout-ms", "300"]);
            self.violation(
                2,
                kind,
                format!(
                    "`netguard verify` exited {code} (again: {again}): {}",
                    tail(&out)
                ),
            );
        }
        // 3: Docker's tables.
        if let Some(before) = before {
            let after = self.docker_tables();
            if after != before {
                self.violation(
                    3,
                    kind,
                    format!(
                        "Docker's tables changed across a netguard-only step:\n{}",
                        line_diff(before, &after)
                    ),
                );
            }
        }
        let ruleset = self.ns_cmd(&["nft", "list", "ruleset"]).unwrap_or_default();
        let mut table = String::new();
        for l in ruleset.lines() {
            if l.starts_with("table ") {
                table = l.trim_end_matches(" {").to_string();
            }
            let ours = table == "table inet netguard" || table == "table bridge netguard";
            if !ours && l.contains("netguard") {
                self.violation(
                    3,
                    kind,
                    format!("{table} holds a netguard object: {}", l.trim()),
                );
            }
        }
        let bad: Vec<String> = self
            .monitor
            .as_ref()
            .and_then(|m| m.bad.lock().ok().map(|mut b| std::mem::take(&mut *b)))
            .unwrap_or_default();
        for b in bad {
            self.violation(3, kind, b);
        }
        // 4: no conntrack entry of a denied pair between the containers of now.
        let act = self.actual();
        let entries = self.conntrack();
        let mut denied = 0;
        for (proto, src, dst, sport, dport) in &entries {
            let (Some(s), Some(d)) = (act.by_ip.get(src), act.by_ip.get(dst)) else {
                if self
                    .canaries
                    .iter()
                    .any(|c| &c.src_ip == src && &c.dst_ip == dst)
                {
                    self.stale_entries += 1;
                }
                continue;
            };
            if s.2 != d.2 {
                continue;
            }
            if !self
                .policy
                .allows(s.1.as_deref(), d.1.as_deref(), proto, *dport)
            {
                denied += 1;
                self.violation(
                    4,
                    kind,
                    format!(
                        "conntrack holds {proto} {}({src}):{sport} -> {}({dst}):{dport} on {}, which policy {:?} denies",
                        s.0, d.0, s.2, self.policy
                    ),
                );
            }
        }
        figures["conntrack_entries"] = json!(entries.len());
        // How many canaries stand in conntrack (the revocations below mean something only
        // if the connections were there).
        let standing = self
            .canaries
            .iter()
            .filter(|c| {
                entries.iter().any(|(p, s, d, _, dp)| {
                    p == "tcp" && *s == c.src_ip && *d == c.dst_ip && *dp == c.port
                })
            })
            .count();
        figures["canaries_in_conntrack"] = json!(standing);
        self.canaries_seen += standing as u64;
        // Canaries whose pair is now denied (both addresses still held): revocations checked.
        let mut keep = Vec::new();
        for mut c in std::mem::take(&mut self.canaries) {
            let s = act.by_ip.get(&c.src_ip);
            let d = act.by_ip.get(&c.dst_ip);
            let allowed = match (s, d) {
                (Some(s), Some(d)) => {
                    if !self
                        .policy
                        .allows(s.1.as_deref(), d.1.as_deref(), "tcp", c.port)
                    {
                        self.revoked_checked += 1;
                    }
                    s.0 == c.src
                        && d.0 == c.dst
                        && self
                            .policy
                            .allows(s.1.as_deref(), d.1.as_deref(), "tcp", c.port)
                }
                _ => false,
            };
            if allowed && matches!(c.child.try_wait(), Ok(None)) {
                keep.push(c);
            } else {
                let _ = c.child.kill();
                let _ = c.child.wait();
            }
        }
        self.canaries = keep;
        let _ = denied;
        figures
    }

    /// Opens idle connections of allowed pairs (up to 6), so that revocations have entries.
    fn refill_canaries(&mut self, rng: &mut Rng) {
        let act = self.actual();
        let mut pairs = Vec::new();
        for (sname, (srun, spid, srole, sips)) in &act.ctrs {
            for (dname, (drun, _, drole, dips)) in &act.ctrs {
                // The probe pair is allowed by both policies: a canary there never tests
                // a revocation.
                let probes = sname.starts_with("sk-probe-") && dname.starts_with("sk-probe-");
                if sname == dname || !srun || !drun || *spid <= 0 || probes {
                    continue;
                }
                for (net, sip) in sips {
                    let Some(dip) = dips.get(net) else { continue };
                    for port in [WEB_API_PORT, API_DB_PORT] {
                        if self
                            .policy
                            .allows(srole.as_deref(), drole.as_deref(), "tcp", port)
                        {
                            pairs.push((
                                sname.clone(),
                                dname.clone(),
                                *spid,
                                sip.clone(),
                                dip.clone(),
                                port,
                            ));
                        }
                    }
                }
            }
        }
        // Pairs the other policy denies first: a policy switch revokes them, which is what
        // the canaries are for (web -> api is allowed by both).
        let other = self.policy.other();
        let role = |n: &String| act.ctrs.get(n).and_then(|c| c.2.clone());
        let (mut revocable, mut rest): (Vec<_>, Vec<_>) = pairs
            .into_iter()
            .partition(|p| !other.allows(role(&p.0).as_deref(), role(&p.1).as_deref(), "tcp", p.5));
        while self.canaries.len() < 6 && !(revocable.is_empty() && rest.is_empty()) {
            let from = if revocable.is_empty() {
                &mut rest
            } else {
                &mut revocable
            };
            let (src, dst, pid, src_ip, dst_ip, port) = from.swap_remove(rng.below(from.len()));
            if self
                .canaries
                .iter()
                .any(|c| c.src == src && c.dst == dst && c.port == port)
            {
                continue;
            }
            let child = Command::new("nsenter")
                .arg(format!("--net=/proc/{pid}/ns/net"))
                .args([BUSYBOX, "nc", &dst_ip, &port.to_string()])
                .stdin(Stdio::piped())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn();
            if let Ok(child) = child {
                self.canaries.push(Canary {
                    child,
                    src,
                    dst,
                    src_ip,
                    dst_ip,
                    port,
                });
            }
        }
    }

    fn soak(&mut self, max_time: Duration, max_steps: usize) -> i32 {
        let mut rng = Rng(self.seed);
        let mut canary_rng = Rng(self.seed ^ 0x5eed_cafe);
        let started = Instant::now();
        let total: u32 = WEIGHTS.iter().map(|w| w.1).sum();
        self.refill_canaries(&mut canary_rng);
        let mut steps = 0;
        while steps < max_steps && started.elapsed() < max_time && !STOP.load(Ordering::SeqCst) {
            steps += 1;
            self.step.store(steps, Ordering::SeqCst);
            let mut kind;
            let before_tables;
            let t0;
            let detail = loop {
                let mut r = rng.below(total as usize) as u32;
                kind = WEIGHTS[0].0;
                for (k, w) in WEIGHTS {
                    if r < w {
                        kind = k;
                        break;
                    }
                    r -= w;
                }
                // The self-test's probe drop (step 6) must be the only reason the probe is
                // lost: a dockerd restart without live-restore stops the probe's containers,
                // and that loss is expected, which would hide it.
                if SELF_TEST.load(Ordering::SeqCst) && steps == 6 && kind == Kind::DockerdPlain {
                    continue;
                }
                let tables = kind.netguard_only().then(|| self.docker_tables());
                let t = Instant::now();
                match self.act(kind, &mut rng) {
                    Ok(None) => continue,
                    Ok(Some(d)) => {
                        before_tables = tables;
                        t0 = t;
                        break d;
                    }
                    Err(e) => {
                        before_tables = tables;
                        t0 = t;
                        self.note(kind, format!("step failed: {e}"));
                        break format!("FAILED: {e}");
                    }
                }
            };
            let acted = t0.elapsed();
            let m = self.acts.entry(kind.name()).or_insert(0);
            *m = (*m).max(acted.as_millis() as u64);
            *self.kinds.entry(kind.name()).or_insert(0) += 1;
            let injected = if SELF_TEST.load(Ordering::SeqCst) {
                self.inject(steps)
            } else {
                None
            };
            self.check_daemon(kind);
            let settle = self.settle(kind, Instant::now());
            if let Some(d) = settle {
                self.settles
                    .push((d.as_millis() as u64, steps, kind.name()));
            }
            let nviol = self.violations.len();
            let figures = self.check(kind, before_tables.as_deref());
            self.check_probe(kind);
            self.check_daemon(kind);
            if let Some(what) = injected {
                self.uninject(what);
            }
            self.reconcile_model(kind);
            self.refill_canaries(&mut canary_rng);
            let line = json!({
                "step": steps,
                "kind": kind.name(),
                "detail": detail,
                "t_s": started.elapsed().as_secs_f64(),
                "act_ms": acted.as_millis() as u64,
                "settle_ms": settle.map(|d| d.as_millis() as u64),
                "checks": figures,
                "canaries": self.canaries.len(),
                "events": self.events_total(),
                "injected": injected,
                "violations": self.violations[nviol..].to_vec(),
            });
            let _ = writeln!(self.log, "{line}");
            println!(
                "step {steps:4} {:>22} settle {:>6} ms  {}{}",
                kind.name(),
                settle
                    .map(|d| d.as_millis().to_string())
                    .unwrap_or("-".into()),
                detail,
                if self.violations.len() > nviol {
                    "  VIOLATION"
                } else {
                    ""
                }
            );
        }
        self.report(steps, started.elapsed())
    }

    /// The model against Docker: a drift (a step Docker refused) is noted and the model
    /// follows Docker, so the soak goes on.
    fn reconcile_model(&mut self, kind: Kind) {
        let act = self.actual();
        let mine: BTreeSet<String> = self.model.iter().map(|c| c.name.clone()).collect();
        let theirs: BTreeSet<String> = act.ctrs.keys().cloned().collect();
        let mut drift = Vec::new();
        if mine != theirs {
            drift.push(format!("containers: model {mine:?}, Docker {theirs:?}"));
            self.model.retain(|c| theirs.contains(&c.name));
        }
        for c in self.model.iter_mut() {
            if let Some((running, _, _, ips)) = act.ctrs.get(&c.name) {
                let nets: BTreeSet<String> = ips.keys().cloned().collect();
                if *running != c.running || (c.running && nets != c.nets) {
                    drift.push(format!(
                        "{}: model running={} nets={:?}, Docker running={running} nets={nets:?}",
                        c.name, c.running, c.nets
                    ));
                    c.running = *running;
                    if *running {
                        c.nets = nets;
                    }
                }
            }
        }
        if !drift.is_empty() {
            self.note(kind, format!("model drift: {}", drift.join("; ")));
        }
    }

    fn report(&mut self, steps: usize, took: Duration) -> i32 {
        let gens = self
            .monitor
            .as_ref()
            .and_then(|m| m.gens.lock().ok().map(|g| g.clone()))
            .unwrap_or_default();
        let mut settles = self.settles.clone();
        settles.sort();
        let pct = |p: f64| {
            settles
                .get(((settles.len() as f64 - 1.0) * p).round() as usize)
                .map(|s| s.0)
        };
        let longest = settles.last().cloned();
        let summary = json!({
            "summary": true,
            "seed": self.seed,
            "steps": steps,
            "seconds": took.as_secs_f64(),
            "steps_by_kind": self.kinds,
            "docker_events_seen": self.events_total(),
            "netguard_lives": self.daemon_lives,
            "settle_ms": { "p50": pct(0.5), "p95": pct(0.95), "max": longest.map(|l| l.0),
                           "max_step": longest.map(|l| l.1), "max_kind": longest.map(|l| l.2) },
            "act_ms_max_by_kind": self.acts,
            "nft_generations_by_writer": gens,
            "revoked_canaries_checked": self.revoked_checked,
            "canary_entries_seen": self.canaries_seen,
            "probe_restarts": self.probe_restarts,
            "stale_canary_entries": self.stale_entries,
            "notes": self.notes,
            "violations": self.violations,
        });
        let _ = writeln!(self.log, "{summary}");
        println!("\n== soak report (seed {})", self.seed);
        println!("steps: {steps} in {:.0} s", took.as_secs_f64());
        for (k, n) in &self.kinds {
            println!("  {k:>22}: {n}");
        }
        println!("Docker events seen by netguard: {}", self.events_total());
        println!(
            "settle: p50 {:?} ms, p95 {:?} ms, longest {:?}",
            pct(0.5),
            pct(0.95),
            longest
        );
        println!("longest action by kind (ms): {:?}", self.acts);
        println!("nft generations by writer: {gens:?}");
        println!(
            "revoked canary pairs checked: {}, probe restarts: {}, notes: {}",
            self.revoked_checked,
            self.probe_restarts,
            self.notes.len()
        );
        println!("violations: {}", self.violations.len());
        for v in &self.violations {
            println!("  {v}");
        }
        if SELF_TEST.load(Ordering::SeqCst) {
            let caught: BTreeSet<u64> = self
                .violations
                .iter()
                .filter_map(|v| v["invariant"].as_u64())
                .collect();
            let missed: Vec<u64> = (1..=5).filter(|i| !caught.contains(i)).collect();
            println!(
                "self-test: injected a fault for each invariant; reported: {caught:?}, missed: {missed:?}"
            );
            println!("replay: scripts/soak.sh --seed {} --self-test", self.seed);
            return if missed.is_empty() && steps >= 8 {
                0
            } else {
                1
            };
        }
        println!(
            "replay: scripts/soak.sh --seed {} --steps {steps}",
            self.seed
        );
        if self.violations.is_empty() { 0 } else { 1 }
    }
}

fn record_loss(lost: &Mutex<Option<(usize, String)>>, step: &AtomicUsize, why: &str) {
    if let Ok(mut l) = lost.lock()
        && l.is_none()
    {
        *l = Some((step.load(Ordering::SeqCst), why.to_string()));
    }
}

/// A container as Docker reports it: (running, pid, role label, network -> address).
type Seen = (bool, i64, Option<String>, BTreeMap<String, String>);
type Inspected = (String, Seen);

fn parse_inspect(c: &Value) -> Option<Inspected> {
    let name = c["Name"].as_str()?.trim_start_matches('/').to_string();
    let running = c["State"]["Running"].as_bool().unwrap_or(false);
    let pid = c["State"]["Pid"].as_i64().unwrap_or(0);
    let role = c["Config"]["Labels"]["role"].as_str().map(String::from);
    let mut ips = BTreeMap::new();
    if let Some(nets) = c["NetworkSettings"]["Networks"].as_object() {
        for (n, v) in nets {
            if let Some(ip) = v["IPAddress"].as_str().filter(|s| !s.is_empty()) {
                ips.insert(n.clone(), ip.to_string());
            }
        }
    }
    Some((name, (running, pid, role, ips)))
}

fn tail(s: &str) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

fn line_diff(a: &str, b: &str) -> String {
    let la: BTreeSet<&str> = a.lines().collect();
    let lb: BTreeSet<&str> = b.lines().collect();
    let mut out = String::new();
    for l in la.difference(&lb) {
        out.push_str(&format!("- {l}\n"));
    }
    for l in lb.difference(&la) {
        out.push_str(&format!("+ {l}\n"));
    }
    if out.is_empty() {
        out.push_str("(same lines, another order)");
    }
    out
}

impl Drop for Soak {
    fn drop(&mut self) {
        self.stop_probe();
        for c in &mut self.canaries {
            let _ = c.child.kill();
            let _ = c.child.wait();
        }
        if let Some(mut d) = self.daemon.take() {
            signal(d.id() as i32, libc::SIGTERM);
            if !wait_exit(&mut d, Duration::from_secs(5)) {
                let _ = d.kill();
                let _ = d.wait();
            }
        }
        if let Ok(ids) = self.docker(&["ps", "-aq"]) {
            let ids: Vec<&str> = ids.split_whitespace().collect();
            if !ids.is_empty() {
                let mut a = vec!["rm", "-f"];
                a.extend(ids);
                let _ = self.docker(&a);
            }
        }
        self.live_restore = false;
        let _ = self.write_dockerd_config();
        let _ = self.stop_dockerd();
        if let Some(mut m) = self.monitor.take() {
            let _ = m.child.kill();
            let _ = m.child.wait();
        }
        // Leftover mounts under the data root would make the removal fail: unmount first.
        if let Ok(m) = std::fs::read_to_string("/proc/self/mounts") {
            let root = self.dir.display().to_string();
            let mps: Vec<&str> = m
                .lines()
                .filter_map(|l| l.split_whitespace().nth(1))
                .filter(|p| p.starts_with(&root))
                .collect();
            for mp in mps.into_iter().rev() {
                let _ = run("umount", &["-l", mp]);
            }
        }
        let _ = run("ip", &["netns", "del", &self.ns]);
        let _ = std::fs::create_dir_all(&self.logs_dir);
        if let Ok(dir) = std::fs::read_dir(&self.dir) {
            for e in dir.flatten() {
                let name = e.file_name();
                if name.to_string_lossy().ends_with(".log") {
                    let _ = std::fs::copy(e.path(), self.logs_dir.join(&name));
                }
            }
        }
        if std::env::var("SOAK_KEEP").is_err() {
            let _ = std::fs::remove_dir_all(&self.dir);
        } else {
            eprintln!("soak: kept {}", self.dir.display());
        }
    }
}
