//! Shared helpers for tests against a real dockerd.
//!
//! Include with `#[path = "common/docker.rs"] mod docker_env;`.
//! Prerequisites: root, a dockerd answering `docker info`, and the image
//! `netguard-busybox:test`; when something is missing and we are root, `scripts/ensure-docker.sh`
//! is run once to provide it. Under `CI=true` a missing prerequisite fails the test; elsewhere
//! it prints a loud SKIP and the test returns.
#![allow(dead_code)]

use std::process::Command;
use std::sync::OnceLock;

pub const IMAGE: &str = "netguard-busybox:test";

/// Runs `docker ARGS`, returning stdout (trimmed) or a message with stderr.
pub fn docker(args: &[&str]) -> Result<String, String> {
    let out = Command::new("docker")
        .args(args)
        .output()
        .map_err(|e| format!("docker {args:?}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(format!(
            "docker {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// `docker ARGS` that must succeed.
#[track_caller]
pub fn docker_ok(args: &[&str]) -> String {
    docker(args).unwrap_or_else(|e| panic!("{e}"))
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn missing() -> Option<String> {
    if !is_root() {
        return Some("not running as root".into());
    }
    if docker(&["info"]).is_err() {
        return Some("dockerd is not answering `docker info`".into());
    }
    if docker(&["image", "inspect", IMAGE]).is_err() {
        return Some(format!("image {IMAGE} is missing"));
    }
    None
}

fn check() -> Option<String> {
    static RESULT: OnceLock<Option<String>> = OnceLock::new();
    RESULT
        .get_or_init(|| {
            let first = missing()?;
            if !is_root() {
                return Some(first);
            }
            let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/ensure-docker.sh");
            eprintln!("docker prerequisites: {first}; running {script}");
            match Command::new("sh").arg(script).status() {
                Ok(s) if s.success() => missing(),
                Ok(s) => Some(format!("{first}; ensure-docker.sh exited with {s}")),
                Err(e) => Some(format!("{first}; cannot run ensure-docker.sh: {e}")),
            }
        })
        .clone()
}

/// True when the test may run. Fails under CI=true, prints SKIP otherwise.
pub fn docker_available(test: &str) -> bool {
    match check() {
        None => true,
        Some(why) => {
            if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") {
                panic!("{test}: Docker prerequisites missing under CI=true: {why}");
            }
            eprintln!();
            eprintln!("################################################################");
            eprintln!("## SKIP {test}: {why}");
            eprintln!("## (run as root: scripts/ensure-docker.sh)");
            eprintln!("################################################################");
            false
        }
    }
}

/// Docker objects created by one test, all named `ngt-<pid>-<tag>-...`; removed on drop,
/// also when the test panics.
pub struct Scene {
    pub prefix: String,
    containers: Vec<String>,
    networks: Vec<String>,
    images: Vec<String>,
}

impl Scene {
    pub fn new(tag: &str) -> Scene {
        let prefix = format!("ngt-{}-{tag}-", std::process::id());
        let scene = Scene {
            prefix,
            containers: Vec::new(),
            networks: Vec::new(),
            images: Vec::new(),
        };
        scene.sweep();
        scene
    }

    /// Like `new`, with a prefix of the caller's choosing (e.g. `ngd-<pid>-<tag>-`).
    pub fn with_prefix(prefix: &str) -> Scene {
        let scene = Scene {
            prefix: prefix.to_string(),
            containers: Vec::new(),
            networks: Vec::new(),
            images: Vec::new(),
        };
        scene.sweep();
        scene
    }

    /// Registers a container created elsewhere (e.g. in parallel) for removal on drop.
    pub fn adopt(&mut self, name: &str) {
        self.containers.push(name.to_string());
    }

    pub fn name(&self, short: &str) -> String {
        format!("{}{short}", self.prefix)
    }

    /// `docker network create [ARGS] NAME`; returns the full name.
    pub fn network(&mut self, short: &str, args: &[&str]) -> String {
        let name = self.name(short);
        let mut a = vec!["network", "create"];
        a.extend_from_slice(args);
        a.push(&name);
        self.networks.push(name.clone());
        docker_ok(&a);
        name
    }

    /// `docker run -d --name NAME [ARGS] IMAGE CMD...`; returns the full name.
    pub fn run(&mut self, short: &str, args: &[&str], image: &str, cmd: &[&str]) -> String {
        let name = self.name(short);
        let mut a = vec!["run", "-d", "--name", &name];
        a.extend_from_slice(args);
        a.push(image);
        a.extend_from_slice(cmd);
        self.containers.push(name.clone());
        docker_ok(&a);
        name
    }

    /// `docker tag IMAGE <prefix>SHORT`; returns the new reference.
    pub fn tag(&mut self, short: &str) -> String {
        let name = self.name(short);
        self.images.push(name.clone());
        docker_ok(&["tag", IMAGE, &name]);
        name
    }

    /// Removes leftovers of an earlier run with the same pid (pids are reused).
    fn sweep(&self) {
        let filter = format!("name=^{}", self.prefix);
        if let Ok(ids) = docker(&["ps", "-aq", "--filter", &filter]) {
            for id in ids.split_whitespace() {
                let _ = docker(&["rm", "-f", id]);
            }
        }
        if let Ok(nets) = docker(&[
            "network",
            "ls",
            "-q",
            "--filter",
            &format!("name={}", self.prefix),
        ]) {
            for id in nets.split_whitespace() {
                let _ = docker(&["network", "rm", id]);
            }
        }
    }
}

impl Drop for Scene {
    fn drop(&mut self) {
        if !self.containers.is_empty() {
            let mut a = vec!["rm", "-f"];
            a.extend(self.containers.iter().map(String::as_str));
            let _ = docker(&a);
        }
        for n in &self.networks {
            // Right after many removals Docker may still report active endpoints.
            // (after 200 removals it took Docker 20.10 more than 5 s here)
            let t = std::time::Instant::now();
            let mut last = Ok(String::new());
            for i in 0..60 {
                last = docker(&["network", "rm", n]);
                if last.is_ok() {
                    if i > 0 {
                        eprintln!("cleanup: network {n} removed after {:?}", t.elapsed());
                    }
                    break;
                }
                // Docker 20.10 can keep a removed container's endpoint on the network for a
                // long time (seen: over 30 s after a 200-container churn): force it off.
                if i == 10 {
                    let eps = docker(&[
                        "network",
                        "inspect",
                        n,
                        "-f",
                        "{{range $k, $v := .Containers}}{{$v.Name}} {{$k}}\n{{end}}",
                    ])
                    .unwrap_or_default();
                    for line in eps.lines() {
                        let mut w = line.split_whitespace();
                        let (name, id) = (w.next(), w.next());
                        for who in [name, id].into_iter().flatten() {
                            if docker(&["network", "disconnect", "-f", n, who]).is_ok() {
                                break;
                            }
                        }
                    }
                }
                std::thread::sleep(std::time::Duration::from_millis(500));
            }
            if let Err(e) = last {
                // Still refused (Docker 20.10 has been seen to count endpoints of removed
                // containers for minutes): leave a detached retry behind, so the host is
                // clean in the end even though this test does not wait for it.
                eprintln!("cleanup: {e}; retrying in the background");
                let _ = std::process::Command::new("setsid")
                    .args([
                        "sh",
                        "-c",
                        "for i in $(seq 120); do docker network rm \"$0\" >/dev/null 2>&1 && exit 0; sleep 2; done",
                        n,
                    ])
                    .stdin(std::process::Stdio::null())
                    .stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::null())
                    .spawn();
            }
        }
        for i in &self.images {
            let _ = docker(&["rmi", i]);
        }
    }
}
