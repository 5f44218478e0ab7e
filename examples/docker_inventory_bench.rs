//! Times a full Docker inventory of N running containers.
//!
//! `cargo run --release --example docker_inventory_bench [N]` (default 200; root, real dockerd,
//! image `netguard-busybox:test` from scripts/ensure-docker.sh). Starts N containers spread over
//! the default bridge and a user network, takes a warm-up inventory (it pays the one-off version
//! negotiation), then five timed ones, prints wall time and API calls, and removes everything.
//! `N=0` only prints the inventory of what already runs, as JSON.

use netguard::docker::DockerSource;
use std::process::Command;
use std::time::Instant;

fn docker(args: &[&str]) -> String {
    let out = Command::new("docker")
        .args(args)
        .output()
        .expect("run docker");
    if !out.status.success() {
        eprintln!("docker {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

struct Cleanup(String);
impl Drop for Cleanup {
    fn drop(&mut self) {
        let ids = docker(&["ps", "-aq", "--filter", &format!("label={}", self.0)]);
        let ids: Vec<&str> = ids.split_whitespace().collect();
        if !ids.is_empty() {
            let mut args = vec!["rm", "-f"];
            args.extend(ids);
            docker(&args);
        }
        // Docker 20.10 can report endpoints of containers it has just removed for a while
        // (seen after this bench's 200 removals): retry, and force the stale ones off.
        for i in 0..60 {
            let out = std::process::Command::new("docker")
                .args(["network", "rm", &self.0])
                .output();
            if out.is_ok_and(|o| o.status.success()) {
                return;
            }
            if i == 10 {
                let eps = docker(&[
                    "network",
                    "inspect",
                    &self.0,
                    "-f",
                    "{{range $k, $v := .Containers}}{{$k}} {{end}}",
                ]);
                for id in eps.split_whitespace() {
                    docker(&["network", "disconnect", "-f", &self.0, id]);
                }
            }
            std::thread::sleep(std::time::Duration::from_millis(500));
        }
        // Docker 20.10 has been seen to count endpoints of removed containers for minutes:
        // leave a detached retry behind so that the host ends up clean anyway.
        eprintln!(
            "network {} still has stale endpoints in Docker; retrying its removal in the background",
            self.0
        );
        let _ = std::process::Command::new("setsid")
            .args([
                "sh",
                "-c",
                "for i in $(seq 300); do docker network rm \"$0\" >/dev/null 2>&1 && exit 0; sleep 2; done",
                &self.0,
            ])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn();
    }
}

#[tokio::main]
async fn main() {
    // RUST_LOG=netguard=debug shows the time spent listing, inspecting and resolving veths.
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(200);
    let src = DockerSource::connect(None).unwrap_or_else(|e| {
        eprintln!("error: {e}");
        std::process::exit(2)
    });
    if n == 0 {
        let inv = src.inventory().await.unwrap_or_else(|e| {
            eprintln!("error: {e}");
            std::process::exit(2)
        });
        println!("{}", serde_json::to_string_pretty(&inv).unwrap_or_default());
        eprintln!("api calls: {}", src.api_calls());
        return;
    }
    let tag = format!("ngbench-{}", std::process::id());
    let _cleanup = Cleanup(tag.clone());
    docker(&["network", "create", &tag]);
    let t = Instant::now();
    // docker run is slow (~0.3 s each); start them from a few shells at once.
    let workers = 16;
    std::thread::scope(|s| {
        for w in 0..workers {
            let tag = &tag;
            s.spawn(move || {
                for i in (w..n).step_by(workers) {
                    let name = format!("{tag}-{i}");
                    let net = if i % 2 == 0 { tag.as_str() } else { "bridge" };
                    docker(&[
                        "run",
                        "-d",
                        "--name",
                        &name,
                        "--label",
                        tag,
                        "--label",
                        &format!("idx={i}"),
                        "--network",
                        net,
                        "netguard-busybox:test",
                        "sleep",
                        "3600",
                    ]);
                }
            });
        }
    });
    eprintln!(
        "started {n} containers in {:.1} s",
        t.elapsed().as_secs_f64()
    );

    let warm = src.inventory().await.expect("inventory");
    let mine = warm
        .containers
        .iter()
        .filter(|c| c.labels.contains_key(&tag))
        .count();
    let resolved = warm
        .containers
        .iter()
        .filter(|c| c.labels.contains_key(&tag))
        .flat_map(|c| &c.endpoints)
        .filter(|e| e.veth.is_some())
        .count();
    println!(
        "containers in inventory: {} ({} of ours, {} veths resolved)",
        warm.containers.len(),
        mine,
        resolved
    );
    let mut times = Vec::new();
    for _ in 0..5 {
        let before = src.api_calls();
        let t = Instant::now();
        let inv = src.inventory().await.expect("inventory");
        let dt = t.elapsed();
        times.push(dt.as_secs_f64() * 1000.0);
        println!(
            "inventory of {} containers: {:.1} ms, {} API calls",
            inv.containers.len(),
            dt.as_secs_f64() * 1000.0,
            src.api_calls() - before
        );
    }
    times.sort_by(f64::total_cmp);
    println!("median {:.1} ms, best {:.1} ms", times[2], times[0]);
}
