//! A fake Docker host built from network namespaces.
//!
//! One "host" namespace holds the bridges; every container is a namespace of its own,
//! attached by a veth pair (host side enslaved to the bridge, container side `eth0`) with
//! one IPv4 and one IPv6 (ULA, `nodad`) address. Each container runs TCP listeners on
//! [`TCP_PORTS`] and UDP echo servers on [`UDP_PORTS`] (dual stack), served by threads of
//! the test process; every datagram a container receives is recorded in
//! [`Container::received`].
//!
//! Namespace names are unique per process and fixture (`ng<pid>x<n>-…`); interface names
//! live inside the fixture's own host namespace, so they are fixed and readable. Everything
//! is deleted in `Drop`, also when the test panics.

use std::fmt::Write as _;
use std::fs::File;
use std::io::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, UdpSocket};
use std::os::fd::{AsRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

/// TCP ports every container listens on.
pub const TCP_PORTS: &[u16] = &[5432, 7777, 8080, 9005, 9100];
/// UDP ports every container echoes on.
pub const UDP_PORTS: &[u16] = &[5353, 6000];

/// A bridge of the fake host (= a Docker network).
#[derive(Clone, Debug)]
pub struct BridgeSpec {
    /// Network name, as `settings.networks` matches it.
    pub network: String,
    /// Bridge interface name in the host namespace.
    pub bridge: String,
    /// Subnet index: IPv4 `10.91.<index>.0/24`, IPv6 `fd91:0:0:<index>::/64`.
    pub index: u8,
}

/// A container of the fake host.
#[derive(Clone, Debug)]
pub struct ContainerSpec {
    pub name: String,
    pub network: String,
    /// Host part of its addresses (`10.91.<net>.<host>`, `fd91:0:0:<net>::<host>`, the
    /// decimal digits written as hex).
    pub host: u8,
    pub image: String,
    pub labels: Vec<(String, String)>,
    /// Host-side veth name (at most 15 bytes).
    pub veth: String,
}

#[derive(Clone, Debug)]
pub struct Topology {
    pub bridges: Vec<BridgeSpec>,
    pub containers: Vec<ContainerSpec>,
}

impl Topology {
    pub fn bridge(mut self, network: &str, bridge: &str, index: u8) -> Self {
        self.bridges.push(BridgeSpec {
            network: network.into(),
            bridge: bridge.into(),
            index,
        });
        self
    }

    pub fn container(
        mut self,
        name: &str,
        network: &str,
        host: u8,
        image: &str,
        labels: &[(&str, &str)],
    ) -> Self {
        let veth: String = format!("v{}", name.replace('-', ""));
        assert!(veth.len() <= 15, "veth name {veth} too long");
        self.containers.push(ContainerSpec {
            name: name.into(),
            network: network.into(),
            host,
            image: image.into(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            veth,
        });
        self
    }

    /// The standard topology used by the matrix tests:
    ///
    /// | network | bridge  | containers                                  |
    /// |---------|---------|---------------------------------------------|
    /// | front   | br-front| web-1, web-2 (role=web), api-1, lonely      |
    /// | back    | br-back | api-2, db-1, db-2 (postgres), mon-1 (role=monitoring) |
    /// | side    | br-side | side-web (role=web), api-side  (unmanaged by the test policies) |
    pub fn standard() -> Self {
        Topology {
            bridges: vec![],
            containers: vec![],
        }
        .bridge("front", "br-front", 1)
        .bridge("back", "br-back", 2)
        .bridge("side", "br-side", 3)
        .container("web-1", "front", 11, "nginx:1.27", &[("role", "web")])
        .container("web-2", "front", 12, "nginx:1.27", &[("role", "web")])
        .container("api-1", "front", 21, "example/api:2", &[])
        .container("lonely", "front", 99, "busybox:1", &[])
        .container("api-2", "back", 22, "example/api:2", &[])
        .container("db-1", "back", 31, "postgres:16", &[])
        .container("db-2", "back", 32, "postgres:15.3", &[])
        .container(
            "mon-1",
            "back",
            41,
            "prom/node-exporter",
            &[("role", "monitoring")],
        )
        .container("side-web", "side", 51, "nginx:1.27", &[("role", "web")])
        .container("api-side", "side", 52, "example/api:2", &[])
    }
}

/// A datagram a container's UDP server received.
#[derive(Clone)]
pub struct Datagram {
    pub port: u16,
    pub from: SocketAddr,
    pub payload: Vec<u8>,
}

impl std::fmt::Debug for Datagram {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:?} from {} to port {}",
            String::from_utf8_lossy(&self.payload),
            self.from,
            self.port
        )
    }
}

/// A container of a running fixture.
#[derive(Clone, Debug)]
pub struct Container {
    pub name: String,
    /// Network namespace name (`/run/netns/<ns>`).
    pub ns: String,
    pub network: String,
    pub bridge: String,
    pub veth: String,
    pub ipv4: Ipv4Addr,
    pub ipv6: Ipv6Addr,
    /// MAC of the container's `eth0`.
    pub mac: String,
    pub image: String,
    pub labels: Vec<(String, String)>,
    /// Every datagram its UDP servers received.
    pub received: Arc<Mutex<Vec<Datagram>>>,
}

impl Container {
    pub fn addr(&self, v6: bool) -> IpAddr {
        if v6 {
            IpAddr::V6(self.ipv6)
        } else {
            IpAddr::V4(self.ipv4)
        }
    }

    /// Whether a datagram whose payload contains `needle` was received.
    pub fn got(&self, needle: &[u8]) -> bool {
        self.received
            .lock()
            .unwrap()
            .iter()
            .any(|d| d.payload.windows(needle.len()).any(|w| w == needle))
    }
}

static FIXTURE_SEQ: AtomicUsize = AtomicUsize::new(0);
/// `ip netns add` races on the first mount of /run/netns; serialise it within the process.
static NETNS_ADD: Mutex<()> = Mutex::new(());

pub struct Fixture {
    /// Prefix of every namespace name of this fixture.
    pub prefix: String,
    pub host_ns: String,
    pub bridges: Vec<BridgeSpec>,
    pub containers: Vec<Container>,
    /// Temporary directory for inventory, policy and other files.
    pub dir: tempfile::TempDir,
    /// The inventory of all containers, written at setup.
    pub inventory: PathBuf,
    namespaces: Vec<String>,
    stop: Arc<AtomicBool>,
    servers: Vec<JoinHandle<()>>,
}

/// Runs a command, returning stdout or a descriptive error.
pub fn run_cmd(program: &str, args: &[&str], stdin: Option<&str>) -> Result<String, String> {
    let out = output(program, args, stdin);
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "`{program} {}` failed ({}): {}{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        ))
    }
}

/// Runs a command and returns its output whatever its exit status.
pub fn output(program: &str, args: &[&str], stdin: Option<&str>) -> Output {
    let mut cmd = Command::new(program);
    cmd.args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    if let Some(text) = stdin {
        let mut pipe = child.stdin.take().unwrap();
        pipe.write_all(text.as_bytes()).unwrap();
    }
    child.wait_with_output().unwrap()
}

/// Moves the calling thread into network namespace `ns`. Only call it on a thread you
/// spawned yourself and own exclusively.
pub fn enter_netns(ns: &str) -> std::io::Result<()> {
    let f = File::open(format!("/run/netns/{ns}"))?;
    nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET).map_err(std::io::Error::from)
}

/// Runs `f` on a fresh thread inside network namespace `ns`.
pub fn in_netns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let ns = ns.to_string();
    std::thread::spawn(move || {
        enter_netns(&ns).unwrap_or_else(|e| panic!("setns {ns}: {e}"));
        f()
    })
    .join()
    .expect("thread in netns panicked")
}

fn write_sysctl(path: &str, value: &str) -> std::io::Result<()> {
    std::fs::write(format!("/proc/sys/{}", path.replace('.', "/")), value)
}

impl Fixture {
    /// Builds the topology; panics (after cleaning up) if anything fails.
    pub fn new(topo: &Topology) -> Fixture {
        let n = FIXTURE_SEQ.fetch_add(1, Ordering::SeqCst);
        let prefix = format!("ng{}x{n}", std::process::id());
        let mut fx = Fixture {
            host_ns: format!("{prefix}-host"),
            prefix,
            bridges: topo.bridges.clone(),
            containers: vec![],
            dir: tempfile::Builder::new()
                .prefix("netguard-netns-")
                .tempdir()
                .unwrap(),
            inventory: PathBuf::new(),
            namespaces: vec![],
            stop: Arc::new(AtomicBool::new(false)),
            servers: vec![],
        };
        // On error `fx` is dropped here, which deletes what was created so far.
        if let Err(e) = fx.build(topo) {
            panic!("netns fixture setup failed: {e}");
        }
        fx
    }

    fn add_ns(&mut self, name: &str) -> Result<(), String> {
        {
            let _g = NETNS_ADD.lock().unwrap_or_else(|e| e.into_inner());
            run_cmd("ip", &["netns", "add", name], None)?;
        }
        self.namespaces.push(name.to_string());
        run_cmd("ip", &["-n", name, "link", "set", "lo", "up"], None)?;
        Ok(())
    }

    fn build(&mut self, topo: &Topology) -> Result<(), String> {
        let host = self.host_ns.clone();
        self.add_ns(&host)?;
        // The global switches off: netguard must set the per-bridge flags itself.
        in_netns(&host, || {
            write_sysctl("net.bridge.bridge-nf-call-iptables", "0")?;
            write_sysctl("net.bridge.bridge-nf-call-ip6tables", "0")
        })
        .map_err(|e| format!("sysctl in {host}: {e}"))?;
        let mut batch = String::new();
        for b in &topo.bridges {
            writeln!(batch, "link add {} type bridge", b.bridge).unwrap();
            writeln!(batch, "link set {} up", b.bridge).unwrap();
        }
        run_cmd("ip", &["-n", &host, "-batch", "-"], Some(&batch))?;

        for (i, c) in topo.containers.iter().enumerate() {
            let b = topo
                .bridges
                .iter()
                .find(|b| b.network == c.network)
                .ok_or_else(|| format!("container {}: no bridge for {}", c.name, c.network))?;
            let ns = format!("{}-{i}{}", self.prefix, c.name);
            self.add_ns(&ns)?;
            in_netns(&ns, || {
                write_sysctl("net.ipv6.conf.all.accept_dad", "0")?;
                write_sysctl("net.ipv6.conf.default.accept_dad", "0")
            })
            .map_err(|e| format!("sysctl in {ns}: {e}"))?;
            let mac = format!("02:91:00:00:{:02x}:{:02x}", b.index, c.host);
            run_cmd(
                "ip",
                &[
                    "-n", &host, "link", "add", &c.veth, "type", "veth", "peer", "name", "eth0",
                    "address", &mac, "netns", &ns,
                ],
                None,
            )?;
            run_cmd(
                "ip",
                &[
                    "-n", &host, "link", "set", &c.veth, "master", &b.bridge, "up",
                ],
                None,
            )?;
            let ipv4 = Ipv4Addr::new(10, 91, b.index, c.host);
            // The decimal digits of the IPv4 address, read as hex: 10.91.1.11 <-> fd91:0:0:1::11.
            let ipv6: Ipv6Addr = format!("fd91:0:0:{}::{}", b.index, c.host).parse().unwrap();
            let batch = format!(
                "addr add {ipv4}/24 dev eth0\naddr add {ipv6}/64 dev eth0 nodad\nlink set eth0 up\n"
            );
            run_cmd("ip", &["-n", &ns, "-batch", "-"], Some(&batch))?;
            let container = Container {
                name: c.name.clone(),
                ns: ns.clone(),
                network: c.network.clone(),
                bridge: b.bridge.clone(),
                veth: c.veth.clone(),
                ipv4,
                ipv6,
                mac,
                image: c.image.clone(),
                labels: c.labels.clone(),
                received: Arc::new(Mutex::new(vec![])),
            };
            self.start_servers(&container)?;
            self.containers.push(container);
        }
        self.inventory = self.write_file("inventory.toml", &inventory_toml(&self.containers));
        Ok(())
    }

    fn start_servers(&mut self, c: &Container) -> Result<(), String> {
        let (tcp, udp) = in_netns(&c.ns, || {
            let tcp: std::io::Result<Vec<_>> = TCP_PORTS
                .iter()
                .map(|p| TcpListener::bind((Ipv6Addr::UNSPECIFIED, *p)))
                .collect();
            let udp: std::io::Result<Vec<_>> = UDP_PORTS
                .iter()
                .map(|p| UdpSocket::bind((Ipv6Addr::UNSPECIFIED, *p)))
                .collect();
            (tcp, udp)
        });
        let tcp = tcp.map_err(|e| format!("{}: tcp listen: {e}", c.name))?;
        let udp = udp.map_err(|e| format!("{}: udp bind: {e}", c.name))?;
        for s in &tcp {
            s.set_nonblocking(true).unwrap();
        }
        for s in &udp {
            s.set_nonblocking(true).unwrap();
        }
        let stop = self.stop.clone();
        let received = c.received.clone();
        let name = c.name.clone();
        let handle = std::thread::Builder::new()
            .name(format!("srv-{name}"))
            .spawn(move || serve(tcp, udp, stop, received))
            .unwrap();
        self.servers.push(handle);
        Ok(())
    }

    pub fn container(&self, name: &str) -> &Container {
        self.containers
            .iter()
            .find(|c| c.name == name)
            .unwrap_or_else(|| panic!("no container {name} in fixture"))
    }

    /// Writes `content` to `name` in the fixture's temp dir and returns the path.
    pub fn write_file(&self, name: &str, content: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, content).unwrap();
        path
    }

    /// Runs a command inside namespace `ns` (`ip netns exec`).
    pub fn exec_in(&self, ns: &str, args: &[&str]) -> Output {
        let mut full = vec!["netns", "exec", ns];
        full.extend_from_slice(args);
        output("ip", &full, None)
    }

    /// Runs a command in the host namespace.
    pub fn host(&self, args: &[&str]) -> Output {
        self.exec_in(&self.host_ns, args)
    }

    /// Runs a command in the host namespace; panics unless it succeeds; returns stdout.
    pub fn host_ok(&self, args: &[&str]) -> String {
        let mut full = vec!["netns", "exec", self.host_ns.as_str()];
        full.extend_from_slice(args);
        run_cmd("ip", &full, None).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Runs `ip ARGS` inside a container; panics unless it succeeds.
    pub fn ip_in(&self, container: &str, args: &[&str]) -> String {
        let ns = self.container(container).ns.clone();
        let mut full = vec!["-n", ns.as_str()];
        full.extend_from_slice(args);
        run_cmd("ip", &full, None).unwrap_or_else(|e| panic!("{e}"))
    }

    /// A permanent neighbour entry in `container`'s namespace: `addr` at `mac` on its eth0,
    /// whatever ARP or neighbour discovery would say.
    pub fn pin_neighbour(&self, container: &str, addr: IpAddr, mac: &str) {
        let addr = addr.to_string();
        let args = [
            "neigh",
            "replace",
            &addr,
            "lladdr",
            mac,
            "dev",
            "eth0",
            "nud",
            "permanent",
        ];
        self.ip_in(container, &args);
    }

    /// Feeds an nft script to `nft -f -` in the host namespace; panics on failure.
    pub fn nft(&self, script: &str) {
        run_cmd(
            "ip",
            &["netns", "exec", &self.host_ns, "nft", "-f", "-"],
            Some(script),
        )
        .unwrap_or_else(|e| panic!("{e}"));
    }

    /// `nft list ruleset` in the host namespace.
    pub fn ruleset(&self) -> String {
        self.host_ok(&["nft", "list", "ruleset"])
    }

    /// `nft -s list ruleset` (without counter values) in the host namespace.
    pub fn ruleset_stateless(&self) -> String {
        self.host_ok(&["nft", "-s", "list", "ruleset"])
    }

    /// Sets the per-netns `bridge-nf-call-ip{,6}tables` sysctls of the host namespace.
    pub fn set_global_bridge_nf(&self, on: bool) {
        let v = if on { "1" } else { "0" };
        in_netns(&self.host_ns, move || {
            write_sysctl("net.bridge.bridge-nf-call-iptables", v)?;
            write_sysctl("net.bridge.bridge-nf-call-ip6tables", v)
        })
        .unwrap();
    }

    /// The global sysctls (iptables, ip6tables) of the host namespace.
    pub fn global_bridge_nf(&self) -> (bool, bool) {
        in_netns(&self.host_ns, || {
            let r = |p: &str| {
                std::fs::read_to_string(format!("/proc/sys/net/bridge/{p}"))
                    .unwrap()
                    .trim()
                    == "1"
            };
            (r("bridge-nf-call-iptables"), r("bridge-nf-call-ip6tables"))
        })
    }

    /// Per-bridge flags `(nf_call_iptables, nf_call_ip6tables)`, from `ip -d link show`.
    pub fn bridge_nf_flags(&self, bridge: &str) -> (bool, bool) {
        let out = run_cmd(
            "ip",
            &["-n", &self.host_ns, "-d", "link", "show", "dev", bridge],
            None,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        (
            out.contains("nf_call_iptables 1"),
            out.contains("nf_call_ip6tables 1"),
        )
    }

    /// Sets the per-bridge flags by hand (fixture self-tests).
    pub fn set_bridge_nf_flags(&self, bridge: &str, on: bool) {
        let v = if on { "1" } else { "0" };
        run_cmd(
            "ip",
            &[
                "-n",
                &self.host_ns,
                "link",
                "set",
                bridge,
                "type",
                "bridge",
                "nf_call_iptables",
                v,
                "nf_call_ip6tables",
                v,
            ],
            None,
        )
        .unwrap_or_else(|e| panic!("{e}"));
    }

    /// Runs the netguard binary in the host namespace: `netguard -c POLICY --inventory INV ARGS`.
    pub fn netguard(&self, policy: &Path, inventory: &Path, args: &[&str]) -> Output {
        let bin = netguard_bin();
        let mut full = vec![
            "netns".to_string(),
            "exec".into(),
            self.host_ns.clone(),
            bin,
            "-c".into(),
            policy.display().to_string(),
            "--inventory".into(),
            inventory.display().to_string(),
        ];
        full.extend(args.iter().map(|s| s.to_string()));
        let full: Vec<&str> = full.iter().map(|s| s.as_str()).collect();
        output("ip", &full, None)
    }
}

/// Path of the netguard binary (integration tests of this package only).
pub fn netguard_bin() -> String {
    std::env::var("NETGUARD_BIN")
        .ok()
        .or(option_env!("CARGO_BIN_EXE_netguard").map(String::from))
        .expect("netguard binary unknown: set NETGUARD_BIN")
}

/// Renders an inventory file (docs/example-inventory.toml) for `containers`.
pub fn inventory_toml(containers: &[Container]) -> String {
    let mut s = String::from("# generated by netns-fixtures\n");
    for c in containers {
        writeln!(
            s,
            "\n[[container]]\nname = {:?}\nimage = {:?}\nnetns = {:?}",
            c.name, c.image, c.ns
        )
        .unwrap();
        if !c.labels.is_empty() {
            let labels: Vec<String> = c
                .labels
                .iter()
                .map(|(k, v)| format!("{k:?} = {v:?}"))
                .collect();
            writeln!(s, "labels = {{ {} }}", labels.join(", ")).unwrap();
        }
        writeln!(
            s,
            "[[container.endpoint]]\nnetwork = {:?}\nbridge = {:?}\nveth = {:?}\nipv4 = \"{}\"\nipv6 = \"{}\"\nmac = {:?}",
            c.network, c.bridge, c.veth, c.ipv4, c.ipv6, c.mac
        )
        .unwrap();
    }
    s
}

fn serve(
    tcp: Vec<TcpListener>,
    udp: Vec<UdpSocket>,
    stop: Arc<AtomicBool>,
    received: Arc<Mutex<Vec<Datagram>>>,
) {
    let fds: Vec<RawFd> = tcp
        .iter()
        .map(|s| s.as_raw_fd())
        .chain(udp.iter().map(|s| s.as_raw_fd()))
        .collect();
    let mut pfds: Vec<libc::pollfd> = fds
        .iter()
        .map(|&fd| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    let mut buf = [0u8; 2048];
    while !stop.load(Ordering::Relaxed) {
        for p in pfds.iter_mut() {
            p.revents = 0;
        }
        // SAFETY: pfds is a valid array of pollfd for its length.
        let n = unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, 50) };
        if n <= 0 {
            continue;
        }
        for (i, l) in tcp.iter().enumerate() {
            if pfds[i].revents != 0 {
                while let Ok((stream, _)) = l.accept() {
                    drop(stream);
                }
            }
        }
        for (j, u) in udp.iter().enumerate() {
            if pfds[tcp.len() + j].revents != 0 {
                let port = u.local_addr().map(|a| a.port()).unwrap_or(0);
                while let Ok((len, from)) = u.recv_from(&mut buf) {
                    let _ = u.send_to(&buf[..len], from);
                    let from = SocketAddr::new(from.ip().to_canonical(), from.port());
                    received.lock().unwrap().push(Datagram {
                        port,
                        from,
                        payload: buf[..len].to_vec(),
                    });
                }
            }
        }
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for h in self.servers.drain(..) {
            let _ = h.join();
        }
        // Containers first (takes their veths), then the host (takes its bridges).
        for ns in self.namespaces.iter().rev() {
            if let Err(e) = run_cmd("ip", &["netns", "delete", ns], None) {
                eprintln!("netns fixture cleanup: {e}");
            }
        }
    }
}

/// Whether the kernel tests can run here: root, `ip`, `nft`, `ping`.
/// Missing prerequisites fail the test under `CI=true`, and print a loud SKIP otherwise
/// (the caller returns when this is false).
pub fn prerequisites(test: &str) -> bool {
    prerequisites_with(test, &[])
}

/// `prerequisites` plus the tools in `extra` (each must answer `TOOL -V`).
pub fn prerequisites_with(test: &str, extra: &[&str]) -> bool {
    let mut missing = vec![];
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        missing.push("root".to_string());
    }
    for tool in ["ip", "nft", "ping"].iter().chain(extra) {
        let found = Command::new(tool)
            .arg("-V")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok();
        if !found {
            missing.push(format!("`{tool}`"));
        }
    }
    if missing.is_empty() {
        return true;
    }
    let msg = format!("{test}: needs {}", missing.join(", "));
    if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") {
        panic!("{msg} (CI=true: privileged tests must not skip)");
    }
    // Straight to stderr, past libtest's output capture, so the skip is seen.
    let _ = writeln!(
        std::io::stderr(),
        "\n**************** SKIP {msg} ****************\n"
    );
    false
}
