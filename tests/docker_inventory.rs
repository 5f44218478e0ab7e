//! The Docker source against a real dockerd (root; see tests/common/docker.rs).
//!
//! Every object is named `ngt-<pid>-<test>-...`, so this file may run beside other tests on
//! the same dockerd; assertions look at our own containers only. The two tests that create
//! containers take `SCENE_LOCK`, because the first one counts API calls, which depend on every
//! running container; so `--test-threads=1` is not needed.

#[path = "common/docker.rs"]
mod docker_env;

use docker_env::{IMAGE, Scene, docker_available, docker_ok};
use netguard::docker::{DockerError, DockerSource};
use netguard::inventory::{Container, Endpoint, Inventory};
use serde_json::Value;
use tokio::sync::Mutex;

static SCENE_LOCK: Mutex<()> = Mutex::const_new(());

fn inspect(name: &str) -> Value {
    let text = docker_ok(&["inspect", name]);
    let v: Value = serde_json::from_str(&text).expect("inspect json");
    v[0].clone()
}

fn find<'a>(inv: &'a Inventory, name: &str) -> &'a Container {
    inv.containers
        .iter()
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("{name} missing from inventory: {inv:#?}"))
}

/// Checks one container against `docker inspect` and the kernel.
fn check_against_docker(c: &Container) {
    let i = inspect(&c.name);
    assert_eq!(c.id, i["Id"].as_str().unwrap());
    assert_eq!(
        c.image,
        i["Config"]["Image"].as_str().unwrap(),
        "{}",
        c.name
    );
    let labels: std::collections::BTreeMap<String, String> =
        serde_json::from_value(i["Config"]["Labels"].clone()).unwrap_or_default();
    assert_eq!(c.labels, labels, "{}", c.name);
    let nets = i["NetworkSettings"]["Networks"].as_object().unwrap();
    assert_eq!(
        c.endpoints
            .iter()
            .map(|e| e.network.as_str())
            .collect::<Vec<_>>(),
        nets.keys().map(String::as_str).collect::<Vec<_>>(),
        "{}",
        c.name
    );
    for e in &c.endpoints {
        let n = &nets[&e.network];
        assert_eq!(e.network_id.as_deref(), n["NetworkID"].as_str());
        let v4 = n["IPAddress"].as_str().unwrap();
        assert_eq!(e.ipv4.map(|a| a.to_string()).unwrap_or_default(), v4);
        let v6 = n["GlobalIPv6Address"].as_str().unwrap();
        assert_eq!(e.ipv6.map(|a| a.to_string()).unwrap_or_default(), v6);
        assert_eq!(e.mac.as_deref(), n["MacAddress"].as_str());
        check_veth(&c.name, e);
    }
}

/// The endpoint's veth is the kernel's peer of the container interface with its MAC, and
/// hangs on the claimed bridge.
fn check_veth(container: &str, e: &Endpoint) {
    let veth = e
        .veth
        .as_deref()
        .unwrap_or_else(|| panic!("{container}/{}: veth not resolved", e.network));
    let ifindex = std::fs::read_to_string(format!("/sys/class/net/{veth}/ifindex"))
        .unwrap_or_else(|err| panic!("{veth}: {err}"));
    let listing = docker_ok(&[
        "exec",
        container,
        "sh",
        "-c",
        "for i in /sys/class/net/*; do echo $(cat $i/address) $(cat $i/iflink); done",
    ]);
    let mac = e.mac.as_deref().unwrap();
    let iflink = listing
        .lines()
        .find_map(|l| l.strip_prefix(mac).map(str::trim))
        .unwrap_or_else(|| panic!("{container}: no interface with {mac} in {listing}"));
    assert_eq!(
        ifindex.trim(),
        iflink,
        "{container}/{}: veth {veth}",
        e.network
    );
    let master = std::fs::read_link(format!("/sys/class/net/{veth}/master")).unwrap();
    assert_eq!(
        master.file_name().unwrap().to_str().unwrap(),
        e.bridge,
        "{container}/{veth}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn docker_inventory_matches_docker_and_kernel() {
    if !docker_available("docker_inventory_matches_docker_and_kernel") {
        return;
    }
    let _serial = SCENE_LOCK.lock().await;
    let mut s = Scene::new("inv");
    let front = s.network("front", &[]);
    let v6_subnet = format!("fd42:{:x}::/64", std::process::id() & 0xffff);
    let v6 = s.network("v6", &["--ipv6", "--subnet", &v6_subnet]);
    let named_bridge = format!("ngt{}", std::process::id());
    let named = s.network(
        "named",
        &[
            "-o",
            &format!("com.docker.network.bridge.name={named_bridge}"),
        ],
    );
    let image = s.tag("img:v1");
    let sleep = ["sleep", "3600"];
    let web = s.run(
        "web",
        &[
            "--network",
            &front,
            "--label",
            "role=web",
            "--label",
            "tier=front",
        ],
        &image,
        &sleep,
    );
    let api = s.run(
        "api",
        &["--network", &v6, "--label", "role=api"],
        IMAGE,
        &sleep,
    );
    let def = s.run("def", &["--label", "role=def"], IMAGE, &sleep);
    let nb = s.run("nb", &["--network", &named], IMAGE, &sleep);
    let side = s.run(
        "side",
        &[
            "--network",
            &format!("container:{web}"),
            "--label",
            "role=side",
        ],
        IMAGE,
        &sleep,
    );
    let host = s.run("host", &["--network", "host"], IMAGE, &sleep);
    let none = s.run("none", &["--network", "none"], IMAGE, &sleep);

    let src = DockerSource::connect(None).expect("connect");
    let inv = src.inventory().await.expect("inventory");
    let first_calls = src.api_calls();

    for name in [&web, &api, &def, &nb] {
        check_against_docker(find(&inv, name));
    }
    assert_eq!(find(&inv, &web).image, image, "image as configured");
    assert_eq!(find(&inv, &def).endpoints[0].bridge, "docker0");
    assert_eq!(find(&inv, &nb).endpoints[0].bridge, named_bridge);
    let front_id = inspect(&front)["Id"].as_str().unwrap().to_string();
    assert_eq!(
        find(&inv, &web).endpoints[0].bridge,
        format!("br-{}", &front_id[..12])
    );
    let api_ep = &find(&inv, &api).endpoints[0];
    assert!(
        api_ep.ipv6.is_some(),
        "IPv6 on the --ipv6 network: {api_ep:?}"
    );

    // container:<web> shares web's endpoint: same addresses, same veth.
    let side_c = find(&inv, &side);
    assert_eq!(side_c.labels.get("role").map(String::as_str), Some("side"));
    assert_eq!(side_c.endpoints, find(&inv, &web).endpoints);

    for (name, needle) in [(&host, "--network host"), (&none, "--network none")] {
        let u = inv
            .unisolable
            .iter()
            .find(|u| &u.name == name)
            .unwrap_or_else(|| panic!("{name} not reported: {:#?}", inv.unisolable));
        assert!(u.reason.contains(needle), "{}", u.reason);
        assert!(inv.containers.iter().all(|c| &c.name != name));
    }

    // A network connect of a running container shows in the next inventory.
    docker_ok(&["network", "connect", &v6, &web]);
    let inv2 = src.inventory().await.expect("inventory");
    let calls = src.api_calls() - first_calls;
    let web_c = find(&inv2, &web);
    assert_eq!(web_c.endpoints.len(), 2, "{web_c:#?}");
    check_against_docker(web_c);
    assert!(
        web_c
            .endpoints
            .iter()
            .any(|e| e.network == v6 && e.ipv6.is_some())
    );
    assert_eq!(find(&inv2, &side).endpoints, web_c.endpoints);

    // 2 lists + one inspect per container with a bridge endpoint, no version call again.
    let with_veth = inv2
        .containers
        .iter()
        .filter(|c| !inspect_mode_is_container(&c.name))
        .count() as u64;
    assert_eq!(calls, 2 + with_veth, "API calls of the second inventory");
}

fn inspect_mode_is_container(name: &str) -> bool {
    docker_ok(&["inspect", "-f", "{{.HostConfig.NetworkMode}}", name]).starts_with("container:")
}

#[tokio::test(flavor = "multi_thread")]
async fn docker_container_gone_before_inventory_is_not_an_error() {
    if !docker_available("docker_container_gone_before_inventory_is_not_an_error") {
        return;
    }
    let _serial = SCENE_LOCK.lock().await;
    let mut s = Scene::new("gone");
    let a = s.run("a", &[], IMAGE, &["sleep", "3600"]);
    let b = s.run("b", &[], IMAGE, &["sleep", "3600"]);
    let src = DockerSource::connect(None).expect("connect");
    // Race removals against several inventories: none may fail, and a removed container
    // never shows up afterwards.
    let inv = src.inventory().await.expect("inventory");
    assert!(inv.find(&a).is_some() && inv.find(&b).is_some());
    let rm = tokio::task::spawn_blocking(move || docker_ok(&["rm", "-f", &b]));
    for _ in 0..5 {
        src.inventory().await.expect("inventory during removal");
    }
    rm.await.unwrap();
    let inv = src.inventory().await.expect("inventory");
    assert!(inv.find(&a).is_some());
    assert!(inv.containers.iter().all(|c| !c.name.ends_with("gone-b")));
}

#[tokio::test]
async fn docker_missing_socket_is_a_clear_error() {
    let err = DockerSource::connect(Some("unix:///nonexistent/docker.sock")).unwrap_err();
    assert!(matches!(err, DockerError::SocketMissing { .. }), "{err:?}");
    assert!(err.to_string().contains("is dockerd running"), "{err}");
    let err = DockerSource::connect(Some("ssh://example")).unwrap_err();
    assert!(matches!(err, DockerError::InvalidHost { .. }), "{err:?}");
}

#[tokio::test]
async fn docker_daemon_down_is_a_clear_error() {
    // Nothing listens on port 1 of localhost.
    let src = DockerSource::connect(Some("tcp://127.0.0.1:1")).expect("connect is lazy");
    let err = src.inventory().await.unwrap_err();
    assert!(matches!(err, DockerError::DaemonDown { .. }), "{err:?}");
    assert!(err.to_string().contains("127.0.0.1:1"), "{err}");
}

/// A fake daemon that speaks a too old API: /version says 1.12, everything else answers
/// like dockerd does to a client version it does not support.
#[tokio::test]
async fn docker_api_version_mismatch_is_a_clear_error() {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { break };
            let mut buf = [0u8; 4096];
            let n = s.read(&mut buf).unwrap_or(0);
            let req = String::from_utf8_lossy(&buf[..n]);
            let (status, body) = if req.starts_with("GET /version") {
                (
                    "200 OK",
                    r#"{"ApiVersion":"1.12","Version":"1.0"}"#.to_string(),
                )
            } else {
                (
                    "400 Bad Request",
                    r#"{"message":"client version 1.12 is too old. Minimum supported API version is 1.24, please upgrade your client to a newer version"}"#
                        .to_string(),
                )
            };
            let _ = write!(
                s,
                "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    let src = DockerSource::connect(Some(&format!("tcp://127.0.0.1:{port}"))).unwrap();
    let err = src.inventory().await.unwrap_err();
    assert!(matches!(err, DockerError::ApiVersion { .. }), "{err:?}");
    assert!(err.to_string().contains("too old"), "{err}");
}

/// As an unprivileged user the socket (root:docker, 0660) refuses us: the CLI must say so.
#[test]
fn docker_permission_denied_is_a_clear_error() {
    if !docker_available("docker_permission_denied_is_a_clear_error") {
        return;
    }
    let dir = std::env::temp_dir().join(format!("ngt-{}-perm", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let policy = dir.join("policy.toml");
    std::fs::write(&policy, "[groups.a]\nmatch = { name = \"x*\" }\n").unwrap();
    // World-readable, so that `nobody` gets as far as asking Docker.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&policy, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = std::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(env!("CARGO_BIN_EXE_netguard"))
        .arg("-c")
        .arg(&policy)
        // `diff` asks Docker before the kernel (`status` reads the kernel first, which an
        // unprivileged user cannot either).
        .arg("diff")
        .env_remove("DOCKER_HOST")
        .output()
        .expect("setpriv (util-linux)");
    let _ = std::fs::remove_dir_all(&dir);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("permission denied"), "{stderr}");
}
