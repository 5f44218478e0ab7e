//! First-packet benchmark against the host's real dockerd (issue 18): does a container's
//! very first packet, sent as its process starts, pass when the policy allows it?
//!
//! As root, with dockerd and `netguard-busybox:test` (scripts/ensure-docker.sh):
//!
//!     cargo build --release --bin netguard --example first_packet_bench
//!     target/release/examples/first_packet_bench [--starts 100] [--pairs 20] \
//!         [--netguard target/release/netguard] [--hold on|off] [--only TEXT]
//!
//! It creates a network `ngfp<pid>-net`, a `db` container answering on 8080/tcp, and runs
//! `netguard run` (policy: `web -> db 8080/tcp, icmp`) on that network only; it refuses when
//! netguard's host tables exist already (another netguard owns them). Then:
//! - `--starts` containers per kind, one by one and in bursts of 10, each whose command IS
//!   the probe: `ping -c1 -W1 DB`, or a TCP connect inside the container that passes only
//!   when the container's TCP retransmitted nothing (its own `RetransSegs`: the first SYN
//!   passed; the time it took is printed too); allowed (`web`) and denied (`other`).
//! - rules live vs the process start: the container's first command reads the wall clock
//!   (`adjtimex`, microseconds); the daemon logs when the transaction admitting it returned.
//! - held: packets the admission hold queued during the row (the hold rule's nft counter),
//!   i.e. packets sent before their container's admission was live (`--hold off`:
//!   `admission_hold = false`, the column is then empty).
//! - `--only TEXT`: only the rows whose name contains TEXT (e.g. `bursts`).
//! - `--stress N`: N threads spinning on the CPU during the start rows (the daemon then
//!   competes for it with them and with Docker: a process may run before its admission).
//! - each start of the daemon logs to its own file (`netguard-N.log` in the bench's temp
//!   directory, kept): N = 1 is the daemon of every start row.
//! - `docker run --rm IMAGE true` wall time with and without netguard, in alternating pairs
//!   (`--pairs`): the daemon is stopped for every run without, so every run with it is among
//!   the first of a freshly started daemon (its cold paths).
//! - `--steady R [--block K] [--warmup W]`: the same wall time against a daemon that has run
//!   for a while: R rounds, each a block of K timed runs per side (without netguard, and each
//!   `--netguard BINARY`, which may be given more than once) after W discarded ones, the order
//!   rotated every round; and the CPU netguard, dockerd, containerd and the shims spent per
//!   run over the timed runs (`/proc/PID/stat`), which wall time at +-10 % cannot resolve.
//!
//! Prints a Markdown table (for BENCHMARKS.md). Everything it made is removed on exit.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const IMAGE: &str = "netguard-busybox:test";

fn sh(args: &[&str]) -> Result<String, String> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .map_err(|e| format!("{args:?}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(format!(
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

struct Lab {
    prefix: String,
    dir: PathBuf,
    policy: PathBuf,
    netguard: PathBuf,
    daemon: Option<Child>,
    log: PathBuf,
    /// How many times the daemon was started (each start logs to `netguard-N.log`).
    lives: usize,
    /// `NETGUARD_LOG` of the daemon: debug while the admission times are read from its log,
    /// info (what a host runs) while `docker run` is timed.
    log_level: &'static str,
    made: Vec<String>,
}

impl Lab {
    fn start_daemon(&mut self) {
        let netguard = self.netguard.clone();
        self.start_daemon_of(&netguard);
    }

    fn start_daemon_of(&mut self, netguard: &std::path::Path) {
        self.lives += 1;
        self.log = self.dir.join(format!("netguard-{}.log", self.lives));
        let logf = std::fs::File::create(&self.log).expect("log file");
        let child = Command::new(netguard)
            .args(["-c", self.policy.to_str().unwrap_or_default(), "run"])
            .args([
                "--state-file",
                self.dir.join("state.json").to_str().unwrap_or_default(),
            ])
            .env("NETGUARD_LOG", self.log_level)
            .stdin(Stdio::null())
            .stdout(logf.try_clone().expect("log"))
            .stderr(logf)
            .spawn()
            .expect("start netguard run");
        self.daemon = Some(child);
        let state = self.dir.join("state.json");
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(20) {
            if std::fs::read_to_string(&state)
                .is_ok_and(|s| s.contains("last_reconcile_unix_ms\": 1"))
            {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!(
            "netguard run did not reconcile within 20 s; log: {}",
            self.log.display()
        );
    }

    fn stop_daemon(&mut self) {
        if let Some(mut c) = self.daemon.take() {
            // SAFETY: kill has no memory-safety preconditions.
            unsafe {
                libc::kill(c.id() as i32, libc::SIGTERM);
            }
            let _ = c.wait();
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.stop_daemon();
        let _ = sh(&[
            self.netguard.to_str().unwrap_or_default(),
            "-c",
            self.policy.to_str().unwrap_or_default(),
            "uninstall",
        ]);
        for c in &self.made {
            let _ = sh(&["docker", "rm", "-f", c]);
        }
        let _ = sh(&["docker", "network", "rm", &format!("{}net", self.prefix)]);
    }
}

/// One client: exit code, output, wall-clock start of its process (µs since the epoch).
struct Run {
    name: String,
    code: i32,
    out: String,
    proc_start_us: Option<u64>,
}

fn client(name: &str, net: &str, role: &str, probe: &str) -> Run {
    let label = format!("ngfp.role={role}");
    let cmd = format!("adjtimex | grep 'tv_'; {probe}");
    let out = Command::new("docker")
        .args([
            "run",
            "--rm",
            "--name",
            name,
            "--network",
            net,
            "--label",
            &label,
            IMAGE,
        ])
        .args(["sh", "-c", &cmd])
        .output()
        .expect("docker run");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let field = |k: &str| {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(k))
            .and_then(|v| v.trim().parse::<u64>().ok())
    };
    let proc_start_us = match (field("time.tv_sec:"), field("time.tv_usec:")) {
        (Some(s), Some(u)) => Some(s * 1_000_000 + u),
        _ => None,
    };
    Run {
        name: name.to_string(),
        code: out.status.code().unwrap_or(-1),
        out: text,
        proc_start_us,
    }
}

/// Packets the hold rule has queued so far (its nft counter), if the table has one.
fn held_packets() -> Option<u64> {
    let json = sh(&["nft", "-j", "list", "chain", "inet", "netguard", "hold"]).ok()?;
    let v: serde_json::Value = serde_json::from_str(&json).ok()?;
    v["nftables"].as_array()?.iter().find_map(|o| {
        let r = o.get("rule")?;
        r["comment"]
            .as_str()?
            .starts_with("held until admitted")
            .then(|| {
                r["expr"]
                    .as_array()?
                    .iter()
                    .find_map(|e| e.get("counter")?.get("packets")?.as_u64())
            })?
    })
}

fn ping_probe(ip: &str) -> String {
    format!("ping -c1 -W1 {ip}")
}

/// Exit 0 only when the connect got its answer and the container's TCP sent no segment
/// twice (`RetransSegs` of its own `/proc/net/snmp`, which starts at 0 in a new network
/// namespace): its first SYN passed. Also prints how long the exchange took (hundredths,
/// `/proc/uptime`: the shell, `nc` and the answer, slow under a burst of starts; a SYN
/// retransmit would make it 100 or more).
fn tcp_probe(ip: &str) -> String {
    format!(
        "a=$(cut -d' ' -f1 /proc/uptime); echo | nc -w 3 {ip} 8080 | grep -q ok || exit 3; \
         b=$(cut -d' ' -f1 /proc/uptime); d=$(( (${{b%.*}}${{b#*.}}) - (${{a%.*}}${{a#*.}}) )); \
         r=$(awk '/^Tcp:/ {{ n++; if (n == 2) print $13 }}' /proc/net/snmp); \
         echo took $d retrans $r; [ \"$r\" = 0 ]"
    )
}

/// Per container name: when the daemon's transaction admitting it returned (µs since epoch).
fn rules_live(log: &str) -> BTreeMap<String, u64> {
    fn ts_us(line: &str) -> Option<u64> {
        // 2026-12-02T08:00:05.018920Z
        let t = line.split_whitespace().next()?;
        let (date, time) = t.trim_end_matches('Z').split_once('T')?;
        let mut d = date.split('-').map(|x| x.parse::<i64>().ok());
        let (y, m, dd) = (d.next()??, d.next()??, d.next()??);
        let (hms, frac) = time.split_once('.').unwrap_or((time, "0"));
        let mut h = hms.split(':').map(|x| x.parse::<i64>().ok());
        let (hh, mm, ss) = (h.next()??, h.next()??, h.next()??);
        // Days since the epoch (civil from days, Howard Hinnant's algorithm).
        let y2 = if m <= 2 { y - 1 } else { y };
        let era = y2.div_euclid(400);
        let yoe = y2 - era * 400;
        let mp = (m + 9) % 12;
        let doy = (153 * mp + 2) / 5 + dd - 1;
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
        let days = era * 146097 + doe - 719468;
        let frac_us: i64 = format!("{:0<6}", &frac[..frac.len().min(6)]).parse().ok()?;
        Some(((days * 86400 + hh * 3600 + mm * 60 + ss) * 1_000_000 + frac_us) as u64)
    }
    let mut out = BTreeMap::new();
    let mut waiting: Vec<String> = Vec::new();
    for line in log.lines() {
        let named = line
            .split("container=")
            .nth(1)
            .and_then(|r| r.split_whitespace().next())
            .map(str::to_string);
        if line.contains("admitted before its start") || line.contains(" refreshed ") {
            if let Some(n) = named
                && !out.contains_key(&n)
            {
                waiting.push(n);
            }
        } else if (line.contains("applied early") || line.contains(" applied "))
            && let Some(t) = ts_us(line)
        {
            for n in waiting.drain(..) {
                out.entry(n).or_insert(t);
            }
        }
    }
    out
}

/// CPU time a process has used, itself and its reaped children (utime + stime + cutime +
/// cstime of `/proc/PID/stat`), in clock ticks; `None` once it is gone.
fn cpu_ticks(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // After the command name (which may hold spaces) come fields 3.. : utime is field 14.
    let rest = s.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    Some(
        f.get(11..15)?
            .iter()
            .filter_map(|x| x.parse::<u64>().ok())
            .sum(),
    )
}

fn comm(pid: u32) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .ok()
        .map(|c| c.trim().to_string())
}

/// Processes whose command name starts with `name`.
fn pids_named(name: &str) -> Vec<u32> {
    let mut out: Vec<u32> = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|p| comm(*p).is_some_and(|c| c.starts_with(name)))
        .collect();
    out.sort();
    out
}

fn cmdline(pid: u32) -> Vec<String> {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| {
            b.split(|c| *c == 0)
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// The value after `flag` in a process's arguments.
fn arg_after(pid: u32, flag: &str) -> Option<String> {
    let args = cmdline(pid);
    let i = args.iter().position(|a| a == flag)?;
    args.get(i + 1).cloned()
}

/// The shims of the containerd whose config lies in `dir` (another engine on the host, a
/// soak's own dockerd, has shims of its own: theirs name another `-address`).
fn shims_of(dir: &Option<std::path::PathBuf>) -> Vec<u32> {
    pids_named("containerd-shim")
        .into_iter()
        .filter(|p| {
            let addr = arg_after(*p, "-address").map(std::path::PathBuf::from);
            dir.is_none()
                || addr
                    .as_deref()
                    .and_then(std::path::Path::parent)
                    .is_some_and(|d| Some(d) == dir.as_deref())
        })
        .collect()
}

/// The CPU of the containerd shims (and the `runc` calls they reap) over a block. A shim
/// is reparented to the host's init when its container is started, and its time goes
/// there when it exits, so it is sampled: the last value seen of each shim, every 10 ms
/// (what a shim spends in its last 10 ms is missed, the same with and without netguard).
struct ShimSampler {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<u64>>,
}

impl ShimSampler {
    fn start(dir: Option<std::path::PathBuf>) -> ShimSampler {
        let before: BTreeMap<u32, u64> = shims_of(&dir)
            .into_iter()
            .filter_map(|p| Some((p, cpu_ticks(p)?)))
            .collect();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = std::sync::Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            let mut last: BTreeMap<u32, u64> = before.clone();
            loop {
                let done = flag.load(std::sync::atomic::Ordering::Relaxed);
                for p in shims_of(&dir) {
                    if let Some(t) = cpu_ticks(p) {
                        last.insert(p, t);
                    }
                }
                if done {
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            last.iter()
                .map(|(p, t)| t - before.get(p).copied().unwrap_or(0).min(*t))
                .sum()
        });
        ShimSampler {
            stop,
            thread: Some(thread),
        }
    }

    fn finish(mut self) -> u64 {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread.take().and_then(|t| t.join().ok()).unwrap_or(0)
    }
}

/// One side of the steady comparison: without netguard, or with one binary.
#[derive(Default)]
struct Side {
    label: String,
    wall_ms: Vec<f64>,
    /// Per block: the median wall time.
    block_medians: Vec<f64>,
    /// Clock ticks over the timed runs: netguard, dockerd, containerd, shims.
    ticks: [u64; 4],
    runs: usize,
}

fn docker_run_ms(name: &str, net: &str) -> f64 {
    let t = Instant::now();
    let _ = sh(&[
        "docker",
        "run",
        "--rm",
        "--name",
        name,
        "--network",
        net,
        IMAGE,
        "true",
    ]);
    t.elapsed().as_secs_f64() * 1e3
}

/// `docker run --rm IMAGE true` against a daemon that has been running for a while: blocks
/// of `block` timed runs after `warmup` discarded ones, the sides (without netguard, then
/// each binary) in an order rotated every round, and the CPU the host's Docker processes
/// and netguard spent over each block's timed runs.
#[allow(clippy::too_many_arguments)]
fn steady(
    lab: &mut Lab,
    net: &str,
    prefix: &str,
    seq: &mut usize,
    bins: &[PathBuf],
    rounds: usize,
    block: usize,
    warmup: usize,
) {
    // The host's engine: the dockerd of the default pid file (a soak or a test may run a
    // dockerd of its own beside it), and the containerd it started.
    let dockerd = std::fs::read_to_string("/var/run/docker.pid")
        .ok()
        .and_then(|p| p.trim().parse::<u32>().ok())
        .or_else(|| pids_named("dockerd").first().copied());
    let containerd = pids_named("containerd").into_iter().find(|p| {
        comm(*p).as_deref() == Some("containerd")
            && std::fs::read_to_string(format!("/proc/{p}/stat"))
                .ok()
                .and_then(|s| {
                    s.rsplit_once(')')?
                        .1
                        .split_whitespace()
                        .nth(1)?
                        .parse()
                        .ok()
                })
                == dockerd
    });
    let shim_dir = containerd
        .and_then(|p| arg_after(p, "--config"))
        .and_then(|c| std::path::Path::new(&c).parent().map(|d| d.to_path_buf()));
    // SAFETY: sysconf has no memory-safety preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let mut sides: Vec<Side> = std::iter::once("without".to_string())
        .chain(bins.iter().map(|b| b.display().to_string()))
        .map(|label| Side {
            label,
            ..Default::default()
        })
        .collect();
    let mut running: Option<usize> = None;
    lab.stop_daemon();
    for r in 0..rounds {
        for k in 0..sides.len() {
            let side = (k + r) % sides.len();
            if running != Some(side) || (side == 0 && lab.daemon.is_some()) {
                if lab.daemon.is_some() {
                    lab.stop_daemon();
                    let _ = sh(&[
                        lab.netguard.to_str().unwrap_or_default(),
                        "-c",
                        lab.policy.to_str().unwrap_or_default(),
                        "uninstall",
                    ]);
                }
                if side > 0 {
                    lab.start_daemon_of(&bins[side - 1]);
                }
                running = Some(side);
            }
            for _ in 0..warmup {
                *seq += 1;
                docker_run_ms(&format!("{prefix}u{seq}"), net);
            }
            let ng = lab.daemon.as_ref().map(|c| c.id());
            let read = |p: Option<u32>| p.and_then(cpu_ticks).unwrap_or(0);
            let before = [read(ng), read(dockerd), read(containerd)];
            let shims = ShimSampler::start(shim_dir.clone());
            let mut times = Vec::new();
            for _ in 0..block {
                *seq += 1;
                times.push(docker_run_ms(&format!("{prefix}s{seq}"), net));
            }
            let shim_ticks = shims.finish();
            let after = [read(ng), read(dockerd), read(containerd)];
            let s = &mut sides[side];
            for i in 0..3 {
                s.ticks[i] += after[i].saturating_sub(before[i]);
            }
            s.ticks[3] += shim_ticks;
            s.runs += times.len();
            s.wall_ms.extend(times.iter().copied());
            s.block_medians.push(median(&mut times));
        }
    }
    lab.stop_daemon();
    let _ = sh(&[
        lab.netguard.to_str().unwrap_or_default(),
        "-c",
        lab.policy.to_str().unwrap_or_default(),
        "uninstall",
    ]);
    let base = median(&mut sides[0].wall_ms.clone());
    println!(
        "\n`docker run --rm IMAGE true`, steady daemon: {rounds} rounds, each side a block of \
         {block} timed runs after {warmup} discarded, order rotated every round; CPU over the \
         timed runs, ms per run (clock ticks of {:.0} ms)\n",
        1e3 / hz
    );
    println!(
        "| side | runs | median ms | mean ms | ratio (medians) | median of per-round ratios | netguard CPU | dockerd CPU | containerd CPU | shims CPU | sum |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    for s in &sides {
        let n = s.runs.max(1) as f64;
        let per = |t: u64| t as f64 * 1e3 / hz / n;
        let mean = s.wall_ms.iter().sum::<f64>() / n;
        let mut ratios: Vec<f64> = s
            .block_medians
            .iter()
            .zip(&sides[0].block_medians)
            .map(|(a, b)| a / b)
            .collect();
        println!(
            "| {} | {} | {:.0} | {:.0} | {:.3} | {:.3} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} |",
            s.label,
            s.runs,
            median(&mut s.wall_ms.clone()),
            mean,
            median(&mut s.wall_ms.clone()) / base,
            median(&mut ratios),
            per(s.ticks[0]),
            per(s.ticks[1]),
            per(s.ticks[2]),
            per(s.ticks[3]),
            per(s.ticks.iter().sum()),
        );
    }
    for s in &sides {
        let b: Vec<String> = s.block_medians.iter().map(|m| format!("{m:.0}")).collect();
        println!("block medians, {}: {}", s.label, b.join(" "));
    }
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        f64::NAN
    } else {
        v[v.len() / 2]
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let opt = |k: &str| {
        args.iter()
            .position(|a| a == k)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let starts: usize = opt("--starts").and_then(|v| v.parse().ok()).unwrap_or(100);
    let pairs: usize = opt("--pairs").and_then(|v| v.parse().ok()).unwrap_or(20);
    let rounds: usize = opt("--steady").and_then(|v| v.parse().ok()).unwrap_or(0);
    let block: usize = opt("--block").and_then(|v| v.parse().ok()).unwrap_or(10);
    let warmup: usize = opt("--warmup").and_then(|v| v.parse().ok()).unwrap_or(3);
    let hold = opt("--hold").as_deref() != Some("off");
    let only = opt("--only");
    let stress: usize = opt("--stress").and_then(|v| v.parse().ok()).unwrap_or(0);
    // `--netguard` may be given more than once: the steady comparison measures each.
    let mut bins: Vec<PathBuf> = args
        .windows(2)
        .filter(|w| w[0] == "--netguard")
        .map(|w| PathBuf::from(&w[1]))
        .collect();
    if bins.is_empty() {
        bins.push(PathBuf::from("target/release/netguard"));
    }
    let netguard = bins[0].clone();
    if sh(&["nft", "list", "table", "inet", "netguard"]).is_ok() {
        eprintln!("netguard's host tables exist already (another netguard runs?): refusing");
        std::process::exit(2);
    }
    let prefix = format!("ngfp{}-", std::process::id());
    let dir = std::env::temp_dir().join(format!("{prefix}bench"));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let policy = dir.join("policy.toml");
    std::fs::write(
        &policy,
        format!(
            "[settings]\nnetworks = [\"{prefix}net\"]\nadmission_hold = {hold}\n\n[groups.web]\nmatch = {{ label = {{ \"ngfp.role\" = \"web\" }} }}\n\
             [groups.db]\nmatch = {{ label = {{ \"ngfp.role\" = \"db\" }} }}\n\n[[allow]]\nfrom = \"web\"\nto = \"db\"\nports = [\"8080/tcp\", \"icmp\"]\n"
        ),
    )
    .expect("policy");
    let net = format!("{prefix}net");
    let mut lab = Lab {
        prefix: prefix.clone(),
        log: dir.join("netguard-0.log"),
        lives: 0,
        dir,
        policy,
        netguard,
        daemon: None,
        made: Vec::new(),
        log_level: "netguard=debug",
    };
    sh(&["docker", "network", "create", &net]).expect("network");
    lab.start_daemon();
    let db = format!("{prefix}db");
    lab.made.push(db.clone());
    sh(&[
        "docker",
        "run",
        "-d",
        "--name",
        &db,
        "--network",
        &net,
        "--label",
        "ngfp.role=db",
        IMAGE,
        "sh",
        "-c",
        "nc -ll -p 8080 -e echo ok & exec sleep 36000",
    ])
    .expect("db");
    let db_ip = sh(&[
        "docker",
        "inspect",
        "-f",
        &format!("{{{{(index .NetworkSettings.Networks \"{net}\").IPAddress}}}}"),
        &db,
    ])
    .expect("db address");
    std::thread::sleep(Duration::from_secs(1));

    println!(
        "| kind | starts | first packet passed | rules live before the process | held | disturbed |"
    );
    println!("|---|---|---|---|---|---|");
    let kinds: [(&str, &str, String); 4] = [
        ("ICMP echo, allowed (web → db)", "web", ping_probe(&db_ip)),
        (
            "TCP connect, no SYN retransmit, allowed",
            "web",
            tcp_probe(&db_ip),
        ),
        (
            "ICMP echo, denied (other → db)",
            "other",
            ping_probe(&db_ip),
        ),
        ("TCP connect, denied", "other", tcp_probe(&db_ip)),
    ];
    let spin = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(stress > 0));
    let spinners: Vec<_> = (0..stress)
        .map(|_| {
            let spin = spin.clone();
            std::thread::spawn(move || {
                let mut x = 0u64;
                while spin.load(std::sync::atomic::Ordering::Relaxed) {
                    x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
                }
            })
        })
        .collect();
    let mut seq = 0usize;
    let mut failures: Vec<String> = Vec::new();
    let mut timings: Vec<String> = Vec::new();
    for burst in [1usize, 10] {
        for (what, role, probe) in &kinds {
            let row = format!(
                "{what}, {}",
                if burst == 1 {
                    "one by one"
                } else {
                    "bursts of 10"
                }
            );
            if only.as_deref().is_some_and(|o| !row.contains(o)) {
                continue;
            }
            let mut runs: Vec<Run> = Vec::new();
            let log_before = std::fs::read_to_string(&lab.log).unwrap_or_default().len();
            let held_before = held_packets();
            let mut i = 0;
            while i < starts {
                let n = burst.min(starts - i);
                let names: Vec<String> = (0..n)
                    .map(|_| {
                        seq += 1;
                        format!("{prefix}c{seq}")
                    })
                    .collect();
                lab.made.extend(names.iter().cloned());
                let got: Vec<Run> = std::thread::scope(|s| {
                    let hs: Vec<_> = names
                        .iter()
                        .map(|nm| s.spawn(|| client(nm, &net, role, probe)))
                        .collect();
                    hs.into_iter().map(|h| h.join().expect("client")).collect()
                });
                runs.extend(got);
                i += n;
            }
            let passed = runs.iter().filter(|r| r.code == 0).count();
            let mut took: Vec<f64> = runs
                .iter()
                .filter_map(|r| {
                    r.out
                        .split_whitespace()
                        .skip_while(|w| *w != "took")
                        .nth(1)?
                        .parse()
                        .ok()
                })
                .collect();
            if !took.is_empty() {
                let max = took.iter().copied().fold(0.0, f64::max);
                timings.push(format!(
                    "{row}: exchange took {} to {max} hundredths of a second, median {}",
                    took.iter().copied().fold(f64::INFINITY, f64::min),
                    median(&mut took)
                ));
            }
            let log = std::fs::read_to_string(&lab.log).unwrap_or_default();
            // Another netguard on this host rewriting or removing the same tables (a test,
            // another operator) shows as failed updates and repairs in our log: the figures
            // of that kind are then not netguard's alone.
            let disturbed = log
                .get(log_before..)
                .unwrap_or("")
                .lines()
                .filter(|l| {
                    l.contains("reconciling fully") || l.contains("changed outside netguard")
                })
                .count();
            let live = rules_live(&log);
            let (mut before, mut known) = (0, 0);
            for r in &runs {
                if let (Some(p), Some(l)) = (r.proc_start_us, live.get(&r.name)) {
                    known += 1;
                    before += usize::from(*l < p);
                }
            }
            for r in runs
                .iter()
                .filter(|r| (r.code == 0) != (*role == "web"))
                .take(3)
            {
                failures.push(format!(
                    "{what}, burst {burst}: {}: exit {}: {}",
                    r.name,
                    r.code,
                    r.out.replace('\n', " ")
                ));
            }
            let held = match (held_before, held_packets()) {
                (Some(a), Some(b)) => b.saturating_sub(a).to_string(),
                _ => "-".to_string(),
            };
            println!(
                "| {row} | {} | {passed} of {} | {before} of {known} | {held} | {} |",
                runs.len(),
                runs.len(),
                if disturbed == 0 {
                    "no".to_string()
                } else {
                    format!("YES ({disturbed} repairs)")
                }
            );
        }
    }

    spin.store(false, std::sync::atomic::Ordering::Relaxed);
    for t in spinners {
        let _ = t.join();
    }
    if stress > 0 {
        println!("(start rows with {stress} threads spinning on the CPU)");
    }

    // `docker run` wall time, with and without netguard, in alternating pairs.
    let run_once = |n: &str| docker_run_ms(n, &net);
    let (mut with, mut without) = (Vec::new(), Vec::new());
    lab.log_level = "netguard=info";
    lab.stop_daemon();
    for p in 0..pairs {
        let order = if p % 2 == 0 {
            [true, false]
        } else {
            [false, true]
        };
        for on in order {
            if on && lab.daemon.is_none() {
                lab.start_daemon();
            }
            if !on && lab.daemon.is_some() {
                lab.stop_daemon();
                // Without netguard means without its tables too.
                let _ = sh(&[
                    lab.netguard.to_str().unwrap_or_default(),
                    "-c",
                    lab.policy.to_str().unwrap_or_default(),
                    "uninstall",
                ]);
            }
            seq += 1;
            let n = format!("{prefix}w{seq}");
            let ms = run_once(&n);
            if on { with.push(ms) } else { without.push(ms) }
        }
    }
    if pairs > 0 {
        let (mw, mo) = (median(&mut with), median(&mut without));
        println!(
            "\n`docker run --rm IMAGE true`, {pairs} alternating pairs (every run with netguard \
             is among the first of a freshly started daemon): median {mw:.0} ms with netguard, \
             {mo:.0} ms without, ratio {:.3}",
            mw / mo
        );
    }
    if rounds > 0 {
        steady(
            &mut lab, &net, &prefix, &mut seq, &bins, rounds, block, warmup,
        );
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    println!(
        "(finished at unix {now}; logs netguard-1.log (the start rows) .. netguard-{}.log in {})",
        lab.lives,
        lab.dir.display()
    );
    for t in &timings {
        println!("{t}");
    }
    for f in &failures {
        println!("failure: {f}");
    }
}
