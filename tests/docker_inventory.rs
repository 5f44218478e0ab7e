//! The Docker source against a real dockerd (root; see tests/common/docker.rs).
//!
//! Every object is named `ngt-<pid>-<test>-...`, so this file may run beside other tests on
//! the same dockerd; assertions look at our own containers only. The two tests that create
//! containers take `SCENE_LOCK`, because the first one counts API calls, which depend on every
//! running container; so `--test-threads=1` is not needed.

#[path = "common/docker.rs"]
mod docker_env;
#[path = "common/fake_daemon.rs"]
mod fake_daemon;

use docker_env::{IMAGE, Scene, docker_available, docker_ok};
use fake_daemon::fake_daemon;
use netguard::docker::{DockerError, DockerSource};
use netguard::inventory::{Container, Endpoint, Inventory};
use serde_json::Value;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
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

    let own_netns = std::fs::read_link("/proc/self/ns/net").expect("own netns");
    let src = DockerSource::connect(None).expect("connect");
    let inv = src.inventory().await.expect("inventory");
    assert_eq!(src.engine(), netguard::inventory::Engine::Docker);
    assert_eq!(inv.engine, netguard::inventory::Engine::Docker);
    let first_calls = src.api_calls();
    // Veth resolution enters container namespaces on threads of its own: none of the
    // runtime's threads (workers, blocking pool) may be left in one.
    assert_threads_in(&own_netns);

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

/// Every thread of this process is in `netns`. A thread that has just been joined can still
/// be listed for a moment with the namespace it exited in, so offenders are looked at again
/// for up to a second before they count.
fn assert_threads_in(netns: &std::path::Path) {
    let stray = || -> Vec<(String, std::path::PathBuf)> {
        let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
            panic!("cannot list /proc/self/task");
        };
        let mut out = Vec::new();
        for t in tasks.flatten() {
            // Gone since the listing: it is in no namespace any more.
            if let Ok(ns) = std::fs::read_link(t.path().join("ns/net"))
                && ns != netns
            {
                out.push((t.file_name().to_string_lossy().into_owned(), ns));
            }
        }
        out
    };
    let mut left = stray();
    assert!(
        std::fs::read_dir("/proc/self/task").map_or(0, |d| d.count()) > 1,
        "a multi-threaded runtime has more than one thread"
    );
    for _ in 0..10 {
        if left.is_empty() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
        left = stray();
    }
    assert!(
        left.is_empty(),
        "threads left in another network namespace than {netns:?}: {left:?}"
    );
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

fn fixture_text(name: &str) -> String {
    let path = format!(
        "{}/tests/fixtures/docker/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Deterministic "gone between list and inspect": the recorded scene of tests/docker_mapping.rs
/// served by a fake daemon, where fx-api's inspect answers 404 (removed) and fx-def's says
/// it is no longer running (stopped). The inventory succeeds without exactly those two.
#[tokio::test]
async fn docker_containers_gone_between_list_and_inspect_are_skipped() {
    const WEB: &str = "bda84093dfc06d82839faca8b311726f4275c29a9f2aba4f0e7ad7d74e46f2a5";
    const API: &str = "efd988575535eaf3f40bff1f72a7e7e041790a6cc09a3baf0d597d482954cd2e";
    const DEF: &str = "832f8e4e107e9730bb5fd395cd40b76d5847d74616e6e5ca982551ea5982dd3e";
    let mut def: Value = serde_json::from_str(&fixture_text("inspect-fx-def.json")).unwrap();
    def["State"]["Running"] = Value::Bool(false);
    def["State"]["Status"] = Value::String("exited".into());
    def["State"]["Pid"] = Value::from(0);
    let def = def.to_string();
    let (port, served) = fake_daemon(move |path| match path {
        "/version" => (
            200,
            r#"{"ApiVersion":"1.41","Version":"20.10.24","MinAPIVersion":"1.12"}"#.into(),
        ),
        "/containers/json" => (200, fixture_text("containers.json")),
        "/networks" => (200, fixture_text("networks.json")),
        p if p == format!("/containers/{WEB}/json") => (200, fixture_text("inspect-fx-web.json")),
        p if p == format!("/containers/{DEF}/json") => (200, def.clone()),
        p => (404, format!(r#"{{"message":"No such container: {p}"}}"#)),
    });
    let resolver = netguard::docker::StaticVethResolver::default()
        .with(WEB, "fx-front", "veth232dfb8", "br-53e3b9c918c2")
        .with(WEB, "fx-v6", "vethd005f6d", "br-265f044fa62d")
        .with(API, "fx-named", "veth197bd5a", "fxbr0")
        .with(DEF, "bridge", "vethe0794dd", "docker0");
    let src = DockerSource::connect(Some(&format!("tcp://127.0.0.1:{port}")))
        .expect("connect")
        .with_resolver(Arc::new(resolver));
    let inv = src
        .inventory()
        .await
        .expect("inventory despite the vanished containers");

    let names: Vec<&str> = inv.containers.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["fx-side", "fx-web"], "{inv:#?}");
    let web = inv.find("fx-web").expect("fx-web");
    assert_eq!(web.endpoints.len(), 2);
    assert!(web.endpoints.iter().all(|e| e.veth.is_some()), "{web:#?}");
    let mut unisolable: Vec<&str> = inv.unisolable.iter().map(|u| u.name.as_str()).collect();
    unisolable.sort();
    assert_eq!(
        unisolable,
        ["fx-host", "fx-mv", "fx-none"],
        "the vanished ones are not reported either"
    );
    // version, the two lists, three inspects (web, api, def); the counter agrees.
    assert_eq!(served.load(Ordering::SeqCst), 6);
    assert_eq!(src.api_calls(), 6);
}

/// Forwards TCP connections on 127.0.0.1 to Docker's unix socket and counts the HTTP
/// requests going through (request lines; netguard only sends body-less GETs).
async fn docker_proxy() -> (u16, Arc<AtomicU64>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let requests = Arc::new(AtomicU64::new(0));
    let counter = requests.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let counter = counter.clone();
            tokio::spawn(async move {
                let Ok(unix) = tokio::net::UnixStream::connect("/var/run/docker.sock").await else {
                    return;
                };
                let (mut tr, mut tw) = tcp.into_split();
                let (mut ur, mut uw) = unix.into_split();
                let up = async move {
                    let mut buf = vec![0u8; 16384];
                    // The tail of the previous read, so a request line split across reads
                    // is still counted once.
                    let mut tail: Vec<u8> = Vec::new();
                    loop {
                        let n = match tr.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => n,
                        };
                        let mut seen = std::mem::take(&mut tail);
                        seen.extend_from_slice(&buf[..n]);
                        let mark = b" HTTP/1.1\r\n";
                        let hits = seen.windows(mark.len()).filter(|w| *w == mark).count();
                        counter.fetch_add(hits as u64, Ordering::SeqCst);
                        tail = seen[seen.len().saturating_sub(mark.len() - 1)..].to_vec();
                        if uw.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                    let _ = uw.shutdown().await;
                };
                let down = async move {
                    let _ = tokio::io::copy(&mut ur, &mut tw).await;
                    let _ = tw.shutdown().await;
                };
                tokio::join!(up, down);
            });
        }
    });
    (port, requests)
}

/// `tcp://` end to end against the real dockerd (through a proxy to its socket): the same
/// inventory as over the unix socket, and `api_calls()` equals the requests the proxy saw.
/// Then the CLI: `--docker-host` wins over `DOCKER_HOST`, and `DOCKER_HOST` alone is used.
#[tokio::test(flavor = "multi_thread")]
async fn docker_tcp_host_matches_the_socket_and_counts_its_calls() {
    if !docker_available("docker_tcp_host_matches_the_socket_and_counts_its_calls") {
        return;
    }
    let _serial = SCENE_LOCK.lock().await;
    let mut s = Scene::new("tcp");
    let net = s.network("net", &[]);
    let a = s.run(
        "a",
        &["--network", &net, "--label", "role=a"],
        IMAGE,
        &["sleep", "3600"],
    );
    s.run("b", &[], IMAGE, &["sleep", "3600"]);
    let (port, requests) = docker_proxy().await;
    let host = format!("tcp://127.0.0.1:{port}");

    let over_unix = DockerSource::connect(Some(netguard::docker::DEFAULT_DOCKER_HOST))
        .expect("connect unix")
        .inventory()
        .await
        .expect("inventory over the socket");
    let src = DockerSource::connect(Some(&host)).expect("connect tcp");
    let over_tcp = src.inventory().await.expect("inventory over tcp");
    assert_eq!(over_tcp, over_unix);
    check_against_docker(find(&over_tcp, &a));
    let seen = requests.load(Ordering::SeqCst);
    assert!(
        seen >= 4,
        "version, two lists and inspects went through: {seen}"
    );
    assert_eq!(
        src.api_calls(),
        seen,
        "api_calls() against the proxy's count"
    );
    src.inventory().await.expect("second inventory over tcp");
    assert_eq!(src.api_calls(), requests.load(Ordering::SeqCst));

    let dir = tempfile::tempdir().expect("tempdir");
    let policy = dir.path().join("policy.toml");
    std::fs::write(&policy, "[groups.a]\nmatch = { name = \"x*\" }\n").expect("policy");
    let dead = "tcp://127.0.0.1:1";
    // `diff` asks Docker, then reads the kernel: 1 (changes pending) or 0 once Docker
    // answered, 2 when it could not.
    let diff = |flag: Option<&str>, env: &str| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_netguard"));
        cmd.arg("-c").arg(&policy);
        if let Some(h) = flag {
            cmd.args(["--docker-host", h]);
        }
        let out = cmd
            .arg("diff")
            .env("DOCKER_HOST", env)
            .output()
            .expect("run netguard");
        let text = String::from_utf8_lossy(&out.stderr).into_owned();
        (out.status.code(), text)
    };
    let before = requests.load(Ordering::SeqCst);
    let (code, err) = diff(Some(&host), dead);
    assert!(
        matches!(code, Some(0 | 1)),
        "--docker-host over DOCKER_HOST: {code:?} {err}"
    );
    let after_flag = requests.load(Ordering::SeqCst);
    assert!(after_flag > before, "the flag's host was asked");
    let (code, err) = diff(Some(dead), &host);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("127.0.0.1:1"), "{err}");
    assert_eq!(
        requests.load(Ordering::SeqCst),
        after_flag,
        "DOCKER_HOST not asked when --docker-host is given"
    );
    let (code, err) = diff(None, &host);
    assert!(
        matches!(code, Some(0 | 1)),
        "DOCKER_HOST alone: {code:?} {err}"
    );
    assert!(requests.load(Ordering::SeqCst) > after_flag);
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
