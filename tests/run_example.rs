//! The main job, scripts/run-example.sh, against the real dockerd (root): it starts the demo
//! containers, shows the diff, applies, and prints the matrix `netguard verify` measured,
//! every probe matching; `--down` then leaves no demo container, network, image tag or
//! netguard table behind. Uses the crate's binary (`NETGUARD_BIN`), not a release build.
//!
//! Applies rules to the host's nftables, so only one such test may run at a time: this file
//! holds exactly one test.

#[path = "common/docker.rs"]
mod docker_env;

use docker_env::{docker_available, docker_ok};
use std::process::Command;

fn script(args: &[&str]) -> (i32, String) {
    let out = Command::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/scripts/run-example.sh"
    ))
    .args(args)
    .env("NETGUARD_BIN", env!("CARGO_BIN_EXE_netguard"))
    .output()
    .expect("run scripts/run-example.sh");
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

struct Down;

impl Drop for Down {
    fn drop(&mut self) {
        let _ = script(&["--down"]);
    }
}

#[test]
fn run_example_shows_the_measured_matrix_and_down_removes_it_all() {
    if !docker_available("run_example_shows_the_measured_matrix_and_down_removes_it_all") {
        return;
    }
    // The script refuses to replace netguard tables it did not make; another test of this
    // host may hold them for a while.
    let t = std::time::Instant::now();
    while Command::new("nft")
        .args(["list", "table", "inet", "netguard"])
        .output()
        .is_ok_and(|o| o.status.success())
        && t.elapsed() < std::time::Duration::from_secs(180)
    {
        std::thread::sleep(std::time::Duration::from_secs(2));
    }
    let _down = Down;
    let (code, out) = script(&[]);
    assert_eq!(code, 0, "{out}");
    // The diff of the first rollout, then the measured matrix.
    assert!(out.contains("First rollout"), "{out}");
    assert!(out.contains("Open today, cut by this rollout:"), "{out}");
    assert!(
        out.contains("network ngdemo-shop-front: what each source reached"),
        "{out}"
    );
    // The first row of each source (the back network comes first).
    let row = |name: &str| {
        out.lines()
            .find(|l| l.trim_start().starts_with(&format!("{name} ")))
            .unwrap_or_default()
            .to_string()
    };
    assert!(row("ngdemo-web").contains("8080/tcp"), "{out}");
    assert!(row("ngdemo-api").contains("5432/tcp,6379/tcp"), "{out}");
    assert!(out.contains("0 mismatched, 0 not measured"), "{out}");
    assert!(out.contains("scripts/run-example.sh --down"), "{out}");

    let (code, out) = script(&["--down"]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(docker_ok(&["ps", "-aq", "--filter", "name=^ngdemo-"]), "");
    assert_eq!(
        docker_ok(&["network", "ls", "-q", "--filter", "name=ngdemo-"]),
        ""
    );
    let tables = Command::new("nft")
        .args(["list", "tables"])
        .output()
        .unwrap();
    let tables = String::from_utf8_lossy(&tables.stdout);
    assert!(!tables.contains("netguard"), "{tables}");
}
