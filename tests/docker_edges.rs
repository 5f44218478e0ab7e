//! The edges of the managed networks against a real dockerd: published ports, the host, the
//! outside world; once with userland-proxy on (Docker's default: docker-proxy answers in the
//! host's input path) and once with it off (Docker DNATs the published port, hairpin on the
//! same bridge). Real TCP from inside the containers (busybox `nc`), from a "world" network
//! namespace and from the host.
//!
//! Each mode runs its own dockerd (the same binary as the host's, started by this test) in a
//! network namespace of its own, which plays the host: its nftables, Docker's iptables rules
//! and netguard's tables all live there, so the shared dockerd of the machine is never
//! restarted and the machine's own tables are never touched. The namespace gets a dummy
//! address 192.0.2.2 (on its loopback) ("another host address") and a veth to a world namespace
//! (203.0.113.1 on the host's side, 203.0.113.10 and .20 in the world).
//!
//! For every phase the probes run twice: before `netguard apply` (what Docker alone lets
//! through: the control, every probe the phase expects blocked must pass there) and after it,
//! where exactly `before ∩ allowed` must pass. Needs root, `nsenter`, busybox on the host and
//! the image `netguard-busybox:test` on the shared dockerd (copied into the test's dockerds).

#[path = "common/docker.rs"]
mod docker_env;

use docker_env::{IMAGE, docker_available};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BUSYBOX: &str = "/bin/busybox";

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

#[track_caller]
fn run_ok(cmd: &str, args: &[&str]) -> String {
    run(cmd, args).unwrap_or_else(|e| panic!("{e}"))
}

/// A network namespace made by this test; deleted on drop.
struct Netns(String);

impl Netns {
    fn new(name: String) -> Netns {
        let _ = run("ip", &["netns", "del", &name]);
        run_ok("ip", &["netns", "add", &name]);
        run_ok("ip", &["-n", &name, "link", "set", "lo", "up"]);
        Netns(name)
    }

    fn path(&self) -> String {
        format!("/run/netns/{}", self.0)
    }

    fn ip(&self, args: &[&str]) {
        let mut a = vec!["-n", self.0.as_str()];
        a.extend_from_slice(args);
        run_ok("ip", &a);
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = run("ip", &["netns", "del", &self.0]);
    }
}

/// A process this test started; killed (by its pid) on drop.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `busybox nc` answering `ok` on `port` (every address), in the namespace at `ns`.
fn listener(ns: &str, port: u16) -> Proc {
    let child = Command::new("nsenter")
        .args([&format!("--net={ns}"), BUSYBOX, "nc", "-ll", "-p"])
        .arg(port.to_string())
        .args(["-e", "echo", "ok"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn listener");
    Proc(child)
}

/// A dockerd of this test in the namespace `ns`, with its own data, exec root and socket.
struct PrivateDocker {
    dir: PathBuf,
    sock: String,
    child: Option<Child>,
}

impl PrivateDocker {
    fn start(ns: &Netns, dir: &Path, userland_proxy: bool) -> PrivateDocker {
        let sock = format!("unix://{}/docker.sock", dir.display());
        let log = std::fs::File::create(dir.join("dockerd.log")).expect("log file");
        // nsenter, not `ip netns exec`: that remounts /sys and hides the cgroup mounts.
        let child = Command::new("nsenter")
            .arg(format!("--net={}", ns.path()))
            .arg("dockerd")
            .arg(format!("--userland-proxy={userland_proxy}"))
            .arg(format!("--data-root={}/data", dir.display()))
            .arg(format!("--exec-root={}/exec", dir.display()))
            .arg(format!("--pidfile={}/docker.pid", dir.display()))
            .arg(format!("--host={sock}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("spawn dockerd");
        let d = PrivateDocker {
            dir: dir.to_path_buf(),
            sock,
            child: Some(child),
        };
        let t = Instant::now();
        while d.docker(&["info"]).is_err() {
            if t.elapsed() > Duration::from_secs(60) {
                let log = std::fs::read_to_string(dir.join("dockerd.log")).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(20).collect();
                panic!("test dockerd did not answer within 60 s: {tail:?}");
            }
            std::thread::sleep(Duration::from_millis(300));
        }
        let mut save = Command::new("docker")
            .args(["save", IMAGE])
            .stdout(Stdio::piped())
            .spawn()
            .expect("docker save");
        let load = Command::new("docker")
            .args(["-H", &d.sock, "load"])
            .stdin(save.stdout.take().expect("save stdout"))
            .output()
            .expect("docker load");
        let saved = save.wait().expect("docker save");
        assert!(saved.success(), "docker save {IMAGE}: {saved}");
        assert!(
            load.status.success(),
            "docker load: {}",
            String::from_utf8_lossy(&load.stderr)
        );
        d
    }

    fn docker(&self, args: &[&str]) -> Result<String, String> {
        let mut a = vec!["-H", self.sock.as_str()];
        a.extend_from_slice(args);
        run("docker", &a)
    }

    #[track_caller]
    fn docker_ok(&self, args: &[&str]) -> String {
        self.docker(args).unwrap_or_else(|e| panic!("{e}"))
    }
}

impl Drop for PrivateDocker {
    fn drop(&mut self) {
        if let Ok(ids) = self.docker(&["ps", "-aq"]) {
            for id in ids.split_whitespace() {
                let _ = self.docker(&["rm", "-f", id]);
            }
        }
        if let Some(mut c) = self.child.take() {
            // SIGTERM (a clean shutdown unmounts its layers and stops its containerd).
            // SAFETY: kill(2) on the pid of a child this test spawned.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let t = Instant::now();
            while t.elapsed() < Duration::from_secs(20) {
                if let Ok(Some(_)) = c.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(200));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
        // Leftover mounts under the data root would make the removal fail: unmount first.
        if let Ok(m) = std::fs::read_to_string("/proc/self/mounts") {
            let root = self.dir.display().to_string();
            for mp in m
                .lines()
                .filter_map(|l| l.split_whitespace().nth(1))
                .filter(|p| p.starts_with(&root))
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
            {
                let _ = run("umount", &["-l", mp]);
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Where a probe starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum From {
    /// A container of the test's dockerd (short name).
    Box(&'static str),
    /// The world namespace, with this source address.
    World(&'static str),
    /// The host namespace itself.
    Host,
}

#[derive(Clone, Debug)]
struct Probe {
    key: String,
    from: From,
    ip: String,
    port: u16,
}

struct Scene {
    host: Netns,
    world: Netns,
    docker: PrivateDocker,
    front_gw: String,
    front_gw6: String,
    side_gw: String,
    db: String,
    db6: String,
    userland_proxy: bool,
    policy_dir: tempfile::TempDir,
    failures: std::cell::RefCell<Vec<String>>,
    _procs: Vec<Proc>,
}

const DUMMY: &str = "192.0.2.2";
const HOST_WORLD: &str = "203.0.113.1";
const WORLD_A: &str = "203.0.113.10"; // outside the allowed ingress CIDR
const WORLD_B: &str = "203.0.113.20"; // inside 203.0.113.16/28
const HOST_WORLD6: &str = "2001:db8:e::1";
const WORLD6_A: &str = "2001:db8:e::10"; // not an allowed ingress source
const WORLD6_B: &str = "2001:db8:e::20"; // allowed
const PUBLISHED: u16 = 15432;

impl Scene {
    fn new(userland_proxy: bool) -> Scene {
        let pid = std::process::id();
        let tag = if userland_proxy { "on" } else { "off" };
        let host = Netns::new(format!("ngt-edk{pid}-{tag}"));
        let world = Netns::new(format!("ngt-edk{pid}-{tag}-w"));
        // Another address of the host (on lo: the kernel here may lack the dummy module).
        host.ip(&["addr", "add", &format!("{DUMMY}/32"), "dev", "lo"]);
        run_ok(
            "ip",
            &[
                "link", "add", "edk-h", "netns", &host.0, "type", "veth", "peer", "name", "edk-w",
                "netns", &world.0,
            ],
        );
        host.ip(&["addr", "add", &format!("{HOST_WORLD}/24"), "dev", "edk-h"]);
        host.ip(&["addr", "add", "2001:db8:e::1/64", "dev", "edk-h", "nodad"]);
        host.ip(&["link", "set", "edk-h", "up"]);
        world.ip(&["addr", "add", &format!("{WORLD_A}/24"), "dev", "edk-w"]);
        world.ip(&["addr", "add", &format!("{WORLD_B}/24"), "dev", "edk-w"]);
        world.ip(&["addr", "add", "2001:db8:e::10/64", "dev", "edk-w", "nodad"]);
        world.ip(&[
            "addr",
            "add",
            &format!("{WORLD6_B}/64"),
            "dev",
            "edk-w",
            "nodad",
        ]);
        world.ip(&["link", "set", "edk-w", "up"]);
        world.ip(&["route", "add", "default", "via", HOST_WORLD]);
        world.ip(&["-6", "route", "add", "default", "via", "2001:db8:e::1"]);
        let mut procs = Vec::new();
        for port in [8000, 8001] {
            procs.push(listener(&world.path(), port));
        }
        for port in [2222, 2223] {
            procs.push(listener(&host.path(), port));
        }
        let dir = std::env::temp_dir().join(format!("ngt-edk{pid}-{tag}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("docker dir");
        let docker = PrivateDocker::start(&host, &dir, userland_proxy);
        docker.docker_ok(&[
            "network",
            "create",
            "--ipv6",
            "--subnet",
            "10.231.0.0/24",
            "--subnet",
            "fd00:edd:1::/64",
            "edk-front",
        ]);
        docker.docker_ok(&["network", "create", "--subnet", "10.232.0.0/24", "edk-side"]);
        let sleep = ["sleep", "3600"];
        let boxes: [(&str, &str, &[&str], &[&str]); 5] = [
            (
                "db",
                "edk-front",
                &["--label", "role=db", "-p", "15432:5432"],
                &["nc", "-ll", "-p", "5432", "-e", "echo", "ok"],
            ),
            ("web", "edk-front", &["--label", "role=web"], &sleep),
            ("rogue", "edk-front", &[], &sleep),
            ("web2", "edk-side", &["--label", "role=web"], &sleep),
            ("rogue2", "edk-side", &[], &sleep),
        ];
        for (name, net, extra, cmd) in boxes {
            let mut a = vec!["run", "-d", "--name", name, "--network", net];
            a.extend_from_slice(extra);
            a.push(IMAGE);
            a.extend_from_slice(cmd);
            docker.docker_ok(&a);
        }
        let addr = |name: &str, net: &str, field: &str| {
            docker.docker_ok(&[
                "inspect",
                "-f",
                &format!("{{{{(index .NetworkSettings.Networks \"{net}\").{field}}}}}"),
                name,
            ])
        };
        let front_gw = addr("db", "edk-front", "Gateway");
        let front_gw6 = addr("db", "edk-front", "IPv6Gateway");
        let side_gw = addr("web2", "edk-side", "Gateway");
        let db = addr("db", "edk-front", "IPAddress");
        let db6 = addr("db", "edk-front", "GlobalIPv6Address");
        assert!(
            !front_gw6.is_empty() && !db6.is_empty(),
            "no IPv6 on edk-front"
        );
        // Listeners need a moment after `docker run` returns.
        std::thread::sleep(Duration::from_millis(500));
        Scene {
            host,
            world,
            docker,
            front_gw,
            front_gw6,
            side_gw,
            db,
            db6,
            userland_proxy,
            policy_dir: tempfile::tempdir().expect("tempdir"),
            failures: Default::default(),
            _procs: procs,
        }
    }

    fn probes(&self) -> Vec<Probe> {
        let mut p = Vec::new();
        let mut add = |from: From, what: &str, ip: &str, port: u16| {
            let src = match from {
                From::Box(b) => b.to_string(),
                From::World(a) if a.contains(':') => {
                    format!("world6-{}", a.rsplit(':').next().unwrap_or(a))
                }
                From::World(a) => format!("world{}", a.rsplit('.').next().unwrap_or(a)),
                From::Host => "host".to_string(),
            };
            p.push(Probe {
                key: format!("{src}>{what}:{port}"),
                from,
                ip: ip.to_string(),
                port,
            });
        };
        for b in ["web", "rogue"] {
            add(From::Box(b), "db", &self.db, 5432);
            add(From::Box(b), "db6", &self.db6, 5432);
            add(From::Box(b), "gw", &self.front_gw, PUBLISHED);
            add(From::Box(b), "dummy", DUMMY, PUBLISHED);
            add(From::Box(b), "gw6", &self.front_gw6, PUBLISHED);
            for port in [2222, 2223] {
                add(From::Box(b), "gw", &self.front_gw, port);
                add(From::Box(b), "dummy", DUMMY, port);
                add(From::Box(b), "gw6", &self.front_gw6, port);
            }
            for port in [8000, 8001] {
                add(From::Box(b), "worldA", WORLD_A, port);
            }
            add(From::Box(b), "worldB", WORLD_B, 8000);
            add(From::Box(b), "world6", "2001:db8:e::10", 8000);
        }
        for b in ["web2", "rogue2"] {
            add(From::Box(b), "sidegw", &self.side_gw, PUBLISHED);
            add(From::Box(b), "dummy", DUMMY, PUBLISHED);
        }
        for w in [WORLD_A, WORLD_B] {
            add(From::World(w), "hostw", HOST_WORLD, PUBLISHED);
        }
        // IPv6 from the outside: Docker 20.10 does not DNAT it, docker-proxy serves it.
        for w in [WORLD6_A, WORLD6_B] {
            add(From::World(w), "hostw6", HOST_WORLD6, PUBLISHED);
        }
        add(From::Host, "dummy", DUMMY, PUBLISHED);
        p
    }

    /// The keys of `probes` that connected (and got the listener's `ok`). `timeout`: a
    /// connection that is accepted but never answered (seen with the proxy off on the IPv6
    /// gateway's published port) must not hang the probe.
    fn probe(&self, probes: &[Probe]) -> BTreeSet<String> {
        let line = |p: &Probe| {
            format!(
                "(timeout 4 nc -w 2 {} {} </dev/null 2>/dev/null | grep -q ok && echo '{}') &\n",
                p.ip, p.port, p.key
            )
        };
        let mut ok = BTreeSet::new();
        std::thread::scope(|s| {
            let mut handles = Vec::new();
            let boxes: BTreeSet<&str> = probes
                .iter()
                .filter_map(|p| match p.from {
                    From::Box(b) => Some(b),
                    _ => None,
                })
                .collect();
            for b in boxes {
                let mut script: String = probes
                    .iter()
                    .filter(|p| p.from == From::Box(b))
                    .map(line)
                    .collect();
                script.push_str("wait\n");
                let d = &self.docker;
                handles.push(s.spawn(move || d.docker_ok(&["exec", b, "sh", "-c", &script])));
            }
            let host: String = probes
                .iter()
                .filter(|p| p.from == From::Host)
                .map(line)
                .collect();
            let hp = self.host.path();
            handles.push(s.spawn(move || {
                run_ok(
                    "nsenter",
                    &[
                        &format!("--net={hp}"),
                        BUSYBOX,
                        "sh",
                        "-c",
                        &format!("{host}wait\n"),
                    ],
                )
            }));
            for h in handles {
                for l in h.join().expect("probe thread").lines() {
                    ok.insert(l.trim().to_string());
                }
            }
        });
        // The world's source address is chosen by its route to the host: one at a time.
        for w in [WORLD_A, WORLD_B, WORLD6_A, WORLD6_B] {
            let script: String = probes
                .iter()
                .filter(|p| p.from == From::World(w))
                .map(line)
                .collect();
            if script.is_empty() {
                continue;
            }
            if w.contains(':') {
                self.world.ip(&[
                    "-6",
                    "route",
                    "replace",
                    &format!("{HOST_WORLD6}/128"),
                    "dev",
                    "edk-w",
                    "src",
                    w,
                ]);
            } else {
                self.world.ip(&[
                    "route",
                    "replace",
                    &format!("{HOST_WORLD}/32"),
                    "dev",
                    "edk-w",
                    "src",
                    w,
                ]);
            }
            let out = run_ok(
                "nsenter",
                &[
                    &format!("--net={}", self.world.path()),
                    BUSYBOX,
                    "sh",
                    "-c",
                    &format!("{script}wait\n"),
                ],
            );
            ok.extend(out.lines().map(|l| l.trim().to_string()));
        }
        ok
    }

    /// Probes until every key of `want` passed, at most three rounds; the union of all
    /// rounds (only stricter about leaks).
    fn probe_rounds(&self, probes: &[Probe], want: &BTreeSet<String>) -> BTreeSet<String> {
        let mut got = self.probe(probes);
        for _ in 2..=3 {
            if want.is_subset(&got) {
                break;
            }
            std::thread::sleep(Duration::from_millis(500));
            got.extend(self.probe(probes));
        }
        got
    }

    fn netguard(&self, args: &[&str]) -> (i32, String) {
        let out = Command::new("nsenter")
            .arg(format!("--net={}", self.host.path()))
            .arg(env!("CARGO_BIN_EXE_netguard"))
            .arg("--docker-host")
            .arg(&self.docker.sock)
            .args(args)
            .env("RUST_LOG", "warn")
            .output()
            .expect("run netguard");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.code().unwrap_or(-1), text)
    }

    /// Writes the phase's policy; returns its path.
    fn policy(&self, name: &str, settings: &str, allows: &str) -> String {
        let policy = format!(
            r#"
[settings]
networks = ["edk-*"]
{settings}

[groups.web]
match = {{ label = {{ role = "web" }} }}
[groups.db]
match = {{ label = {{ role = "db" }} }}

[[allow]]
from = "web"
to = "db"
ports = ["5432/tcp"]
{allows}
"#
        );
        let path = self.policy_dir.path().join(format!("{name}.toml"));
        std::fs::write(&path, policy).expect("write policy");
        path.to_str().expect("utf-8 path").to_string()
    }

    fn apply(&self, cfg: &str) -> Result<(), String> {
        let (code, out) = self.netguard(&["-c", cfg, "apply"]);
        if code != 0 {
            return Err(format!("netguard apply exited {code}:\n{out}"));
        }
        let (code, out) = self.netguard(&["-c", cfg, "diff"]);
        if code != 0 {
            return Err(format!(
                "not in sync after apply (diff exited {code}):\n{out}"
            ));
        }
        Ok(())
    }

    /// One phase: `allowed` says which probes the policy lets through; `control` lists
    /// probes Docker alone must let through, so that their blocking later means something.
    /// A mismatch is recorded and the next phase still runs (one report of everything).
    fn phase(
        &self,
        name: &str,
        settings: &str,
        allows: &str,
        allowed: &dyn Fn(&str) -> bool,
        control: &[&str],
    ) {
        let probes = self.probes();
        let keys: BTreeSet<String> = probes.iter().map(|p| p.key.clone()).collect();
        let cfg = self.policy(name, settings, allows);
        let (code, out) = self.netguard(&["-c", &cfg, "uninstall"]);
        assert_eq!(code, 0, "{name}: uninstall: {out}");
        let control: BTreeSet<String> = control.iter().map(|k| k.to_string()).collect();
        assert!(control.is_subset(&keys), "{name}: unknown control keys");
        let before = self.probe_rounds(&probes, &control);
        let mode = if self.userland_proxy { "on" } else { "off" };
        let missing: Vec<_> = control.difference(&before).collect();
        assert!(
            missing.is_empty(),
            "[userland-proxy {mode}] {name}: Docker alone does not pass {missing:?} (the \
             control); passed: {before:?}"
        );
        if let Err(e) = self.apply(&cfg) {
            self.failures
                .borrow_mut()
                .push(format!("[userland-proxy {mode}] {name}: {e}"));
            return;
        }
        let want: BTreeSet<String> = before.iter().filter(|k| allowed(k)).cloned().collect();
        let after = self.probe_rounds(&probes, &want);
        let leaks: Vec<_> = after.difference(&want).collect();
        let cut: Vec<_> = want.difference(&after).collect();
        eprintln!("[userland-proxy {mode}] {name}: Docker alone {before:?}; netguard {after:?}");
        if !(leaks.is_empty() && cut.is_empty()) {
            self.failures.borrow_mut().push(format!(
                "[userland-proxy {mode}] {name}: the matrix differs from the policy\n  passes \
                 but the policy denies it: {leaks:?}\n  allowed but blocked: {cut:?}"
            ));
        }
    }
}

/// Who may reach whom through the published port and directly, whatever the edge settings.
fn containers_allowed(k: &str) -> Option<bool> {
    let (src, rest) = k.split_once('>')?;
    let (dst, port) = rest.split_once(':')?;
    let published = port == PUBLISHED.to_string();
    match (src, dst) {
        ("host", _) => Some(true),
        (_, "db" | "db6") => Some(src == "web"),
        (_, _) if published && src.starts_with("world") => None,
        (_, _) if published => Some(src == "web" || src == "web2"),
        _ => None,
    }
}

fn scenario(userland_proxy: bool) -> Vec<String> {
    let s = Scene::new(userland_proxy);
    // Same-network probes Docker passes in both modes; through docker-proxy also across
    // networks and over IPv6 (Docker 20.10 has no IPv6 NAT without ip6tables: with the
    // proxy off nothing answers on the IPv6 gateway's published port). With the proxy on a
    // container's connection to a published port is served by docker-proxy in the host's
    // input path; with it off Docker DNATs it: netguard judges both as the container behind it.
    let mut published_control = vec![
        "rogue>gw:15432",
        "rogue>dummy:15432",
        "web>gw:15432",
        "web>dummy:15432",
        "rogue>db:5432",
        "rogue>db6:5432",
        "web>db:5432",
        "host>dummy:15432",
    ];
    if userland_proxy {
        published_control.extend([
            "rogue>gw6:15432",
            "web>gw6:15432",
            "rogue2>sidegw:15432",
            "rogue2>dummy:15432",
            "web2>sidegw:15432",
            "web2>dummy:15432",
            "world6-10>hostw6:15432",
            "world6-20>hostw6:15432",
        ]);
    }

    // 1. Defaults: published ports are the container behind them; host, egress and
    //    ingress stay open.
    s.phase(
        "published",
        "",
        "",
        &|k| containers_allowed(k).unwrap_or(true),
        &published_control,
    );

    // 2. host = "deny" with one allowed host port.
    let mut control = published_control.clone();
    control.extend([
        "web>gw:2222",
        "web>gw:2223",
        "web>dummy:2222",
        "rogue>gw:2222",
    ]);
    s.phase(
        "host",
        r#"host = "deny""#,
        "[[allow]]\nfrom = \"web\"\nto = \"host\"\nports = [\"2222/tcp\"]\n",
        &|k| {
            if let Some(v) = containers_allowed(k) {
                return v;
            }
            let port = k.rsplit(':').next().unwrap_or("");
            let to_host = ["gw", "gw6", "dummy", "sidegw"]
                .iter()
                .any(|h| k.contains(&format!(">{h}:")));
            if to_host {
                return k.starts_with("web>") && port == "2222";
            }
            true
        },
        &control,
    );

    // 3. egress = "deny" with an allowed CIDR and port.
    let mut control = published_control.clone();
    control.extend([
        "web>worldA:8000",
        "web>worldA:8001",
        "web>worldB:8000",
        "rogue>worldA:8000",
    ]);
    s.phase(
        "egress",
        r#"egress = "deny""#,
        "[[allow]]\nfrom = \"web\"\nto = [\"203.0.113.0/28\"]\nports = [\"8000/tcp\"]\n",
        &|k| {
            if let Some(v) = containers_allowed(k) {
                return v;
            }
            if k.contains(">world") {
                return k == "web>worldA:8000";
            }
            true
        },
        &control,
    );

    // 4. ingress = "deny" with an allowed source CIDR, to db's container port (IPv6 through
    //    docker-proxy with the proxy on: the same line, judged in the input hook).
    let mut control = published_control.clone();
    control.extend(["world10>hostw:15432", "world20>hostw:15432"]);
    if userland_proxy {
        control.extend(["world6-10>hostw6:15432", "world6-20>hostw6:15432"]);
    }
    s.phase(
        "ingress",
        r#"ingress = "deny""#,
        "[[allow]]\nfrom = [\"203.0.113.16/28\", \"2001:db8:e::20\"]\nto = \"db\"\nports = [\"5432/tcp\"]\n",
        &|k| {
            if k.starts_with("world") {
                return k == "world20>hostw:15432" || k == "world6-20>hostw6:15432";
            }
            containers_allowed(k).unwrap_or(true)
        },
        &control,
    );
    let cfg = s.policy("end", "", "");
    let (code, out) = s.netguard(&["-c", &cfg, "uninstall"]);
    assert_eq!(code, 0, "uninstall: {out}");
    s.failures.take()
}

/// One test: the two modes run one after the other (each with its own dockerd and
/// namespaces, removed at the end, also on failure).
#[test]
fn docker_edges_userland_proxy_on_and_off() {
    if !docker_available("docker_edges_userland_proxy_on_and_off") {
        return;
    }
    for tool in ["nsenter", "dockerd"] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .is_ok_and(|o| o.status.success());
        assert!(
            found,
            "{tool} is missing (scripts/install-deps.sh installs it)"
        );
    }
    assert!(
        Path::new(BUSYBOX).exists(),
        "{BUSYBOX} is missing (busybox-static)"
    );
    let mut failures = scenario(true);
    failures.extend(scenario(false));
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}
