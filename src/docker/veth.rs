//! Finding the host-side veth of a container endpoint.
//!
//! Docker does not say which host veth belongs to which endpoint, so we ask the kernel: inside
//! the container's network namespace, the interface carrying the endpoint's MAC has an
//! `IFLA_LINK` naming its peer's ifindex in the host namespace; the host link list turns that
//! index into the veth name and its master bridge.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io;
use std::time::Duration;

/// What the mapping asks the resolver for one endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VethQuery {
    pub container_id: String,
    pub container_name: String,
    /// Any process of the container; its `/proc/PID/ns/net` is the container's netns.
    pub pid: u32,
    pub network: String,
    /// MAC of the endpoint as Docker reports it (lower case, `aa:bb:..`), if any.
    pub mac: Option<String>,
}

/// The host side of one endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedVeth {
    pub veth: String,
    /// Master bridge of the veth on the host, if it has one.
    pub bridge: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VethError {
    /// The container's process (and so its namespace) went away while we looked.
    #[error("container is gone")]
    Gone,
    #[error("no interface with MAC {mac} in the container's network namespace")]
    NoInterface { mac: String },
    /// netlink itself failed (the socket, a dump, the thread or runtime around them): a fault
    /// of this host, not an answer about the container. The daemon counts it, reports it and
    /// asks again (see `daemon::Controller`), where the other errors wait for the next event.
    #[error("netlink: {0}")]
    Netlink(String),
    #[error("{0}")]
    Failed(String),
}

/// A veth the resolver could not resolve because netlink failed ([`VethError::Netlink`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetlinkFailure {
    pub container_id: String,
    pub container_name: String,
    pub error: String,
}

/// The netlink failures among a batch's answers, one per container (its first).
pub fn netlink_failures(
    queries: &[VethQuery],
    answers: &[Result<ResolvedVeth, VethError>],
) -> Vec<NetlinkFailure> {
    let mut out: Vec<NetlinkFailure> = Vec::new();
    for (q, a) in queries.iter().zip(answers) {
        if let Err(e @ VethError::Netlink(_)) = a
            && !out.iter().any(|f| f.container_id == q.container_id)
        {
            out.push(NetlinkFailure {
                container_id: q.container_id.clone(),
                container_name: q.container_name.clone(),
                error: e.to_string(),
            });
        }
    }
    out
}

type RouteConnection = rtnetlink::proto::Connection<netlink_packet_route::RouteNetlinkMessage>;

/// A new rtnetlink connection, or the injected fault (`fault::DOCKER_NETLINK`).
fn connection() -> Result<(RouteConnection, rtnetlink::Handle), String> {
    crate::fault::check(crate::fault::DOCKER_NETLINK)
        .map_err(|e| format!("netlink socket: {e}"))?;
    let (conn, handle, _) =
        rtnetlink::new_connection().map_err(|e| format!("netlink socket: {e}"))?;
    Ok((conn, handle))
}

/// Resolves host veths for a batch of endpoints; one answer per query, in query order.
///
/// A batch (rather than one call per endpoint) lets the real resolver enter each namespace once
/// and work on many containers in parallel, while the mapping stays a pure function.
pub trait VethResolver: Send + Sync {
    fn resolve(&self, queries: &[VethQuery]) -> Vec<Result<ResolvedVeth, VethError>>;
}

/// A resolver answering from a fixed table keyed by (container id, network); for tests.
#[derive(Debug, Default, Clone)]
pub struct StaticVethResolver {
    pub answers: HashMap<(String, String), Result<ResolvedVeth, VethError>>,
}

impl StaticVethResolver {
    pub fn with(mut self, container_id: &str, network: &str, veth: &str, bridge: &str) -> Self {
        self.answers.insert(
            (container_id.to_string(), network.to_string()),
            Ok(ResolvedVeth {
                veth: veth.to_string(),
                bridge: Some(bridge.to_string()),
            }),
        );
        self
    }

    pub fn with_error(mut self, container_id: &str, network: &str, err: VethError) -> Self {
        self.answers
            .insert((container_id.to_string(), network.to_string()), Err(err));
        self
    }
}

impl VethResolver for StaticVethResolver {
    fn resolve(&self, queries: &[VethQuery]) -> Vec<Result<ResolvedVeth, VethError>> {
        queries
            .iter()
            .map(|q| {
                self.answers
                    .get(&(q.container_id.clone(), q.network.clone()))
                    .cloned()
                    .unwrap_or_else(|| Err(VethError::Failed("no answer recorded".into())))
            })
            .collect()
    }
}

/// The real resolver: rtnetlink inside each container's network namespace.
#[derive(Debug, Clone)]
pub struct NetlinkVethResolver {
    /// Worker threads entering container namespaces at once; each is a short-lived std
    /// thread that visits namespaces one after the other.
    pub parallelism: usize,
}

impl Default for NetlinkVethResolver {
    fn default() -> Self {
        NetlinkVethResolver { parallelism: 32 }
    }
}

/// One link as netlink reports it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct LinkInfo {
    pub(super) index: u32,
    pub(super) name: String,
    pub(super) mac: Option<String>,
    /// `IFLA_LINK`: for a veth, the peer's ifindex (in the peer's namespace).
    pub(super) link: Option<u32>,
    /// `IFLA_MASTER`: the bridge the link is a port of.
    pub(super) master: Option<u32>,
    /// `IFLA_LINK_NETNSID`: the namespace the peer is in, as this namespace numbers it;
    /// absent while the peer is in the same namespace.
    pub(super) link_netnsid: Option<i32>,
}

impl LinkInfo {
    pub(super) fn of(msg: netlink_packet_route::link::LinkMessage) -> LinkInfo {
        use netlink_packet_route::link::LinkAttribute;
        let mut info = LinkInfo {
            index: msg.header.index,
            ..LinkInfo::default()
        };
        for attr in msg.attributes {
            match attr {
                LinkAttribute::IfName(n) => info.name = n,
                LinkAttribute::Address(a) => info.mac = Some(format_mac(&a)),
                LinkAttribute::Link(l) => info.link = Some(l),
                LinkAttribute::Controller(m) => info.master = Some(m),
                LinkAttribute::LinkNetNsId(n) => info.link_netnsid = Some(n),
                _ => {}
            }
        }
        info
    }
}

pub(super) fn format_mac(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Lists the links of the namespace the calling thread is in, over a fresh netlink socket
/// (a socket stays bound to the namespace it was created in, so it must be opened after
/// `setns`).
pub(super) fn list_links(rt: &tokio::runtime::Runtime) -> Result<Vec<LinkInfo>, String> {
    rt.block_on(async {
        let (conn, handle) = connection()?;
        let conn = tokio::spawn(conn);
        let result = collect_links(handle.link().get().execute(), "netlink link dump").await;
        // Close this namespace's socket before the thread moves on to the next namespace.
        drop(handle);
        conn.abort();
        result
    })
}

/// Only the links with these indexes, and their bridges, one request each instead of a dump
/// of every link: on a host with thousands of containers the dump, not the lookup, would be
/// most of a single container's refresh. An index that does not exist is left out.
fn get_links(rt: &tokio::runtime::Runtime, indexes: &[u32]) -> Result<Vec<LinkInfo>, String> {
    rt.block_on(async {
        let (conn, handle) = connection()?;
        let conn = tokio::spawn(conn);
        let mut out: Vec<LinkInfo> = Vec::new();
        let mut want: Vec<u32> = indexes.to_vec();
        // Two rounds: the veths, then the bridges they are attached to.
        for _ in 0..2 {
            want.sort_unstable();
            want.dedup();
            want.retain(|i| !out.iter().any(|l| l.index == *i));
            for &i in &want {
                let r = collect_links(
                    handle.link().get().match_index(i).execute(),
                    "netlink link get",
                )
                .await;
                match r {
                    Ok(l) => out.extend(l),
                    // Gone meanwhile (ENODEV): the caller reports the missing peer.
                    Err(e) if e.contains("No such device") => {}
                    Err(e) => {
                        conn.abort();
                        return Err(e);
                    }
                }
            }
            want = out.iter().filter_map(|l| l.master).collect();
        }
        drop(handle);
        conn.abort();
        Ok(out)
    })
}

async fn collect_links(
    mut stream: impl futures::Stream<
        Item = Result<netlink_packet_route::link::LinkMessage, rtnetlink::Error>,
    > + Unpin,
    what: &str,
) -> Result<Vec<LinkInfo>, String> {
    use futures::TryStreamExt;
    let mut links = Vec::new();
    loop {
        match stream.try_next().await {
            Ok(Some(msg)) => links.push(LinkInfo::of(msg)),
            Ok(None) => return Ok(links),
            Err(e) => return Err(format!("{what}: {e}")),
        }
    }
}

pub(super) fn current_thread_runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .map_err(|e| format!("tokio runtime: {e}"))
}

/// Lists the links of each container namespace (by PID) with `workers` threads.
///
/// `setns` changes the namespace of the calling thread for good: doing it on a tokio worker
/// would leave that worker, and every task later scheduled on it, in a container's namespace.
/// So each worker is a short-lived std thread of our own with its own current-thread runtime;
/// it visits namespaces one after the other and dies when the queue is empty, taking the last
/// namespace with it.
fn list_container_links(
    pids: &[u32],
    workers: usize,
) -> BTreeMap<u32, Result<Vec<LinkInfo>, VethError>> {
    let next = std::sync::atomic::AtomicUsize::new(0);
    let results = std::sync::Mutex::new(BTreeMap::new());
    std::thread::scope(|s| {
        for _ in 0..workers.clamp(1, pids.len().max(1)) {
            s.spawn(|| {
                let rt = current_thread_runtime();
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some(&pid) = pids.get(i) else { break };
                    let r = match &rt {
                        Err(e) => Err(VethError::Netlink(e.clone())),
                        Ok(rt) => open_netns(pid).and_then(|ns| {
                            nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET)
                                .map_err(|e| VethError::Failed(format!("setns: {e}")))?;
                            list_links(rt).map_err(VethError::Netlink)
                        }),
                    };
                    if let Ok(mut m) = results.lock() {
                        m.insert(pid, r);
                    }
                }
            });
        }
    });
    results.into_inner().unwrap_or_default()
}

/// Lists the host's links (all, or only `indexes` and their bridges) on a thread of our own
/// (never entered any namespace).
fn list_host_links(indexes: Option<&[u32]>) -> Result<Vec<LinkInfo>, String> {
    std::thread::scope(|s| {
        s.spawn(|| {
            let rt = current_thread_runtime()?;
            match indexes {
                None => list_links(&rt),
                Some(i) => get_links(&rt, i),
            }
        })
        .join()
        .unwrap_or_else(|_| Err("netlink thread panicked".to_string()))
    })
}

/// Up to this many containers, the host side is looked up link by link (after the container
/// side named the peers); above, one dump of the host's links in parallel is cheaper.
const LOOKUP_BY_INDEX_UP_TO: usize = 16;

fn open_netns(pid: u32) -> Result<File, VethError> {
    File::open(format!("/proc/{pid}/ns/net")).map_err(|e| match e.kind() {
        io::ErrorKind::NotFound => VethError::Gone,
        _ if e.raw_os_error() == Some(libc::ESRCH) => VethError::Gone,
        _ => VethError::Failed(format!("opening /proc/{pid}/ns/net: {e}")),
    })
}

/// Picks the container interface for one endpoint: by MAC, or, without a MAC, the only
/// veth-like interface there is (`eth0` of a single-network container).
fn pick_interface<'a>(links: &'a [LinkInfo], q: &VethQuery) -> Result<&'a LinkInfo, VethError> {
    match &q.mac {
        Some(mac) => links
            .iter()
            .find(|l| l.mac.as_deref() == Some(mac.as_str()))
            .ok_or_else(|| VethError::NoInterface { mac: mac.clone() }),
        None => {
            let mut cands = links.iter().filter(|l| l.link.is_some() && l.name != "lo");
            match (cands.next(), cands.next()) {
                (Some(l), None) => Ok(l),
                _ => Err(VethError::Failed(
                    "endpoint has no MAC and the container has several interfaces".into(),
                )),
            }
        }
    }
}

impl VethResolver for NetlinkVethResolver {
    fn resolve(&self, queries: &[VethQuery]) -> Vec<Result<ResolvedVeth, VethError>> {
        if queries.is_empty() {
            return Vec::new();
        }
        // One namespace visit per container, however many endpoints it has.
        let mut pids: Vec<u32> = queries.iter().map(|q| q.pid).collect();
        pids.sort_unstable();
        pids.dedup();

        let (host, per_pid) = if pids.len() <= LOOKUP_BY_INDEX_UP_TO {
            let per_pid = list_container_links(&pids, self.parallelism);
            let peers: Vec<u32> = per_pid
                .values()
                .filter_map(|r| r.as_ref().ok())
                .flatten()
                .filter_map(|l| l.link)
                .collect();
            (list_host_links(Some(&peers)), per_pid)
        } else {
            std::thread::scope(|s| {
                let host = s.spawn(|| list_host_links(None));
                let per_pid = list_container_links(&pids, self.parallelism);
                let host = host
                    .join()
                    .unwrap_or_else(|_| Err("netlink thread panicked".to_string()));
                (host, per_pid)
            })
        };
        let host = match host {
            Ok(h) => h,
            Err(e) => {
                let err = VethError::Netlink(format!("host link list: {e}"));
                return queries.iter().map(|_| Err(err.clone())).collect();
            }
        };
        let host_by_index: HashMap<u32, &LinkInfo> = host.iter().map(|l| (l.index, l)).collect();

        queries
            .iter()
            .map(|q| {
                let links = match per_pid.get(&q.pid) {
                    Some(Ok(l)) => l,
                    Some(Err(e)) => return Err(e.clone()),
                    None => return Err(VethError::Failed("namespace not visited".into())),
                };
                let inner = pick_interface(links, q)?;
                let peer = inner.link.ok_or_else(|| {
                    VethError::Failed(format!("interface {} has no peer link", inner.name))
                })?;
                let hv = host_by_index.get(&peer).ok_or_else(|| {
                    VethError::Failed(format!(
                        "peer ifindex {peer} of {} is not in the host namespace",
                        inner.name
                    ))
                })?;
                // ifindexes are per namespace, so a host link with the right index may still be
                // someone else's: the real peer points back at the container interface.
                if hv.link != Some(inner.index) {
                    return Err(VethError::Failed(format!(
                        "host link {} (ifindex {peer}) is not the peer of {}",
                        hv.name, inner.name
                    )));
                }
                let bridge = hv
                    .master
                    .and_then(|m| host_by_index.get(&m))
                    .map(|b| b.name.clone());
                Ok(ResolvedVeth {
                    veth: hv.name.clone(),
                    bridge,
                })
            })
            .collect()
    }
}

/// One port of a bridge, as the host sees it, and the container side of its veth pair.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BridgePort {
    pub veth: String,
    pub index: u32,
    /// `IFLA_LINK_NETNSID` of the port: the namespace its peer is in, as this namespace numbers
    /// it. `None` while the peer is still in this namespace: Docker creates the pair here and
    /// moves the container side into the sandbox only as the container starts, and gives it
    /// the endpoint's MAC then.
    pub peer_netnsid: Option<i32>,
    /// The peer's MAC, read in the peer's namespace (lower case, `aa:bb:..`).
    pub peer_mac: Option<String>,
}

/// The port of one bridge whose peer, already moved out of the host's namespace, carries
/// `mac`. A peer still in the host's namespace is never taken, whatever its MAC: before the
/// move it has a random one, and the endpoint may be anyone's. Two ports carrying the same MAC
/// is an error: binding an address to either could be the wrong one.
pub fn port_with_mac<'a>(
    ports: &'a [BridgePort],
    mac: &str,
) -> Result<Option<&'a BridgePort>, VethError> {
    let mac = mac.to_ascii_lowercase();
    let mut found = ports
        .iter()
        .filter(|p| p.peer_netnsid.is_some() && p.peer_mac.as_deref() == Some(mac.as_str()));
    match (found.next(), found.next()) {
        (None, _) => Ok(None),
        (Some(p), None) => Ok(Some(p)),
        (Some(a), Some(b)) => Err(VethError::Failed(format!(
            "ports {} and {} both lead to MAC {mac}",
            a.veth, b.veth
        ))),
    }
}

/// What a [`PortFinder`] answers, later.
pub type Found<'a> = futures::future::BoxFuture<'a, Result<ResolvedVeth, VethError>>;

/// Finds the host veth of an endpoint from the host alone, without the container's PID (which
/// Docker only gives once the start is over): by the bridge and the endpoint's MAC.
pub trait PortFinder: Send + Sync {
    /// Waits up to `timeout` for the port of `bridge` whose peer carries `mac`.
    fn find<'a>(&'a self, bridge: &'a str, mac: &'a str, timeout: Duration) -> Found<'a>;
}

/// The finder without a watcher: each wait reads the bridge's ports itself (rtnetlink in the
/// host's namespace, on a blocking thread of the runtime).
#[derive(Debug, Default, Clone, Copy)]
pub struct NetlinkPortFinder;

impl PortFinder for NetlinkPortFinder {
    fn find<'a>(&'a self, bridge: &'a str, mac: &'a str, timeout: Duration) -> Found<'a> {
        let (bridge, mac) = (bridge.to_string(), mac.to_string());
        Box::pin(async move {
            tokio::task::spawn_blocking(move || wait_for_port(&bridge, &mac, timeout))
                .await
                .map_err(|e| VethError::Failed(e.to_string()))?
        })
    }
}

/// A finder answering from a fixed table keyed by (bridge, MAC); for tests.
#[derive(Debug, Default, Clone)]
pub struct StaticPortFinder {
    pub answers: HashMap<(String, String), String>,
}

impl StaticPortFinder {
    pub fn with(mut self, bridge: &str, mac: &str, veth: &str) -> Self {
        self.answers
            .insert((bridge.to_string(), mac.to_string()), veth.to_string());
        self
    }
}

impl PortFinder for StaticPortFinder {
    fn find<'a>(&'a self, bridge: &'a str, mac: &'a str, _: Duration) -> Found<'a> {
        let answer = match self.answers.get(&(bridge.to_string(), mac.to_string())) {
            Some(v) => Ok(ResolvedVeth {
                veth: v.clone(),
                bridge: Some(bridge.to_string()),
            }),
            None => Err(VethError::NoInterface {
                mac: mac.to_string(),
            }),
        };
        Box::pin(std::future::ready(answer))
    }
}

/// The ports of `bridge` and their peers: one filtered dump (only that bridge's ports, so the
/// cost follows the bridge, not the host) and one request per port whose peer sits in another
/// namespace (`IFLA_TARGET_NETNSID`, Linux 4.20).
async fn read_ports(handle: &rtnetlink::Handle, bridge: &str) -> Result<Vec<BridgePort>, String> {
    use futures::TryStreamExt;
    use netlink_packet_route::link::LinkAttribute;
    let br = collect_links(
        handle.link().get().match_name(bridge.to_string()).execute(),
        "netlink bridge get",
    )
    .await?;
    let br = br
        .first()
        .ok_or_else(|| format!("bridge {bridge} does not exist"))?
        .index;
    let mut dump = handle.link().get();
    dump.message_mut()
        .attributes
        .push(LinkAttribute::Controller(br));
    let mut stream = dump.execute();
    let mut ports: Vec<(BridgePort, Option<u32>)> = Vec::new();
    loop {
        match stream.try_next().await {
            Ok(Some(msg)) => {
                let mut port = BridgePort {
                    veth: String::new(),
                    index: msg.header.index,
                    peer_netnsid: None,
                    peer_mac: None,
                };
                let (mut peer, mut master) = (None, None);
                for attr in msg.attributes {
                    match attr {
                        LinkAttribute::IfName(n) => port.veth = n,
                        LinkAttribute::Link(l) => peer = Some(l),
                        LinkAttribute::LinkNetNsId(n) => port.peer_netnsid = Some(n),
                        LinkAttribute::Controller(m) => master = Some(m),
                        _ => {}
                    }
                }
                // An old kernel ignores the filter and dumps every link.
                if master == Some(br) {
                    ports.push((port, peer));
                }
            }
            Ok(None) => break,
            Err(e) => return Err(format!("netlink port dump of {bridge}: {e}")),
        }
    }
    let mut out = Vec::with_capacity(ports.len());
    for (mut port, peer) in ports {
        if let (Some(nsid), Some(peer)) = (port.peer_netnsid, peer) {
            let mut req = handle.link().get().match_index(peer);
            req.message_mut()
                .attributes
                .push(LinkAttribute::IfNetnsId(nsid));
            match collect_links(req.execute(), "netlink peer get").await {
                Ok(l) => port.peer_mac = l.into_iter().next().and_then(|l| l.mac),
                // The container went away meanwhile: a port without a peer matches nothing.
                Err(e) if e.contains("No such device") || e.contains("Invalid argument") => {}
                Err(e) => return Err(e),
            }
        }
        out.push(port);
    }
    Ok(out)
}

/// The ports of `bridge` in the calling thread's namespace (see [`read_ports`]).
pub fn bridge_ports(bridge: &str) -> Result<Vec<BridgePort>, VethError> {
    on_own_thread(|rt| {
        rt.block_on(async {
            let (conn, handle) = connection()?;
            let conn = tokio::spawn(conn);
            let r = read_ports(&handle, bridge).await;
            drop(handle);
            conn.abort();
            r
        })
    })
    .map_err(VethError::Failed)
}

/// Runs `f` with a current-thread runtime on a thread of our own, in the caller's namespace
/// (a new thread starts in its creator's).
pub(super) fn on_own_thread<T: Send>(
    f: impl FnOnce(&tokio::runtime::Runtime) -> Result<T, String> + Send,
) -> Result<T, String> {
    std::thread::scope(|s| {
        s.spawn(|| f(&current_thread_runtime()?))
            .join()
            .unwrap_or_else(|_| Err("netlink thread panicked".to_string()))
    })
}

/// How often the ports are read again when no notification showed the MAC: a safety net.
const RECHECK_EVERY: Duration = Duration::from_millis(250);

/// A netlink socket on the link notifications of this namespace and of every namespace it has
/// an id for (`NETLINK_LISTEN_ALL_NSID`), or the injected fault (`fault::DOCKER_NETLINK`).
pub(super) fn link_socket() -> Result<rtnetlink::sys::Socket, String> {
    use rtnetlink::sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};
    crate::fault::check(crate::fault::DOCKER_NETLINK)
        .map_err(|e| format!("netlink socket: {e}"))?;
    let mut s = Socket::new(NETLINK_ROUTE).map_err(|e| format!("netlink socket: {e}"))?;
    s.bind(&SocketAddr::new(0, 0))
        .map_err(|e| format!("netlink bind: {e}"))?;
    s.add_membership(libc::RTNLGRP_LINK)
        .map_err(|e| format!("netlink link group: {e}"))?;
    s.set_listen_all_namespaces(true)
        .map_err(|e| format!("NETLINK_LISTEN_ALL_NSID: {e}"))?;
    Ok(s)
}

/// The route messages of one datagram of notifications, in order; a malformed length ends it.
pub(super) fn route_messages(
    mut buf: &[u8],
) -> impl Iterator<Item = netlink_packet_route::RouteNetlinkMessage> + '_ {
    use netlink_packet_route::RouteNetlinkMessage;
    use rtnetlink::packet_core::{NetlinkMessage, NetlinkPayload};
    std::iter::from_fn(move || {
        while buf.len() >= 16 {
            let len = u32::from_ne_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
            if len < 16 || len > buf.len() {
                return None;
            }
            let m = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&buf[..len]);
            buf = &buf[((len + 3) & !3).min(buf.len())..];
            if let Ok(NetlinkMessage {
                payload: NetlinkPayload::InnerMessage(r),
                ..
            }) = m
            {
                return Some(r);
            }
        }
        None
    })
}

/// Link notifications of this namespace and of every namespace it has an id for (the
/// sandboxes, once a veth peer has moved there): the container side getting its MAC is such a
/// notification, so the port is found the moment it can be, without polling.
struct LinkEvents(rtnetlink::sys::Socket);

impl LinkEvents {
    fn open() -> Result<LinkEvents, String> {
        let s = link_socket()?;
        s.set_non_blocking(true)
            .map_err(|e| format!("netlink non-blocking: {e}"))?;
        Ok(LinkEvents(s))
    }

    /// Waits up to `d` for notifications and drains them; true if one of them shows a link
    /// taking `mac` (or the socket overflowed, which may have hidden one).
    fn wait(&self, d: Duration, mac: &str) -> bool {
        use std::os::fd::AsRawFd;
        let mut pfd = libc::pollfd {
            fd: self.0.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = d.as_millis().min(i32::MAX as u128) as i32;
        // SAFETY: one valid pollfd for the duration of the call.
        let n = unsafe { libc::poll(&mut pfd, 1, ms) };
        if n <= 0 {
            return false;
        }
        let mut buf = vec![0u8; 64 * 1024];
        let mut hit = false;
        loop {
            match self.0.recv(&mut &mut buf[..], 0) {
                Ok(len) => hit |= carries_mac(&buf[..len.min(buf.len())], mac),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return hit,
                // ENOBUFS: notifications were lost.
                Err(_) => return true,
            }
        }
    }
}

/// Whether one datagram of link notifications has a link whose address is `mac`.
fn carries_mac(buf: &[u8], mac: &str) -> bool {
    use netlink_packet_route::RouteNetlinkMessage;
    use netlink_packet_route::link::LinkAttribute;
    route_messages(buf).any(|m| {
        matches!(&m, RouteNetlinkMessage::NewLink(l) if l.attributes.iter()
            .any(|a| matches!(a, LinkAttribute::Address(a) if format_mac(a) == mac)))
    })
}

/// Waits up to `timeout` for the port of `bridge` whose peer carries `mac` (see
/// [`port_with_mac`]), reading the bridge's ports again on each link notification.
pub fn wait_for_port(
    bridge: &str,
    mac: &str,
    timeout: Duration,
) -> Result<ResolvedVeth, VethError> {
    let deadline = std::time::Instant::now() + timeout;
    on_own_thread(|rt| {
        // Subscribed before the first read: a change between the read and the wait is seen.
        let events = LinkEvents::open()?;
        rt.block_on(async {
            let (conn, handle) = connection()?;
            let conn = tokio::spawn(conn);
            let r = loop {
                let t = std::time::Instant::now();
                let ports = match read_ports(&handle, bridge).await {
                    Ok(p) => p,
                    Err(e) => break Err(e),
                };
                tracing::trace!(
                    bridge,
                    mac,
                    ports = ports.len(),
                    took_ms = t.elapsed().as_secs_f64() * 1e3,
                    "ports read"
                );
                match port_with_mac(&ports, mac) {
                    Ok(Some(p)) => {
                        break Ok(Ok(ResolvedVeth {
                            veth: p.veth.clone(),
                            bridge: Some(bridge.to_string()),
                        }));
                    }
                    Ok(None) => {}
                    Err(e) => break Ok(Err(e)),
                }
                let left = deadline.saturating_duration_since(std::time::Instant::now());
                if left.is_zero() {
                    break Ok(Err(VethError::NoInterface {
                        mac: mac.to_string(),
                    }));
                }
                // The socket is read outside the runtime's reactor: a blocking wait on this
                // thread of our own, until a link takes the MAC (or the safety net).
                let until = std::time::Instant::now() + left.min(RECHECK_EVERY);
                loop {
                    let left = until.saturating_duration_since(std::time::Instant::now());
                    if left.is_zero() || events.wait(left, mac) {
                        break;
                    }
                }
            };
            drop(handle);
            conn.abort();
            r
        })
    })
    .map_err(VethError::Failed)?
}

#[cfg(test)]
mod tests {
    use super::*;

    fn port(veth: &str, nsid: Option<i32>, mac: Option<&str>) -> BridgePort {
        BridgePort {
            veth: veth.into(),
            index: 1,
            peer_netnsid: nsid,
            peer_mac: mac.map(String::from),
        }
    }

    #[test]
    fn only_a_peer_moved_out_of_the_host_with_the_mac_is_taken() {
        let mac = "02:42:ac:12:00:02";
        // Still in the host's namespace: never, even with the right MAC.
        let ports = [
            port("va", None, Some(mac)),
            port("vb", Some(3), Some("02:00:00:00:00:01")),
        ];
        assert_eq!(port_with_mac(&ports, mac), Ok(None));
        let ports = [port("va", None, Some(mac)), port("vb", Some(3), Some(mac))];
        assert_eq!(
            port_with_mac(&ports, mac).map(|p| p.map(|p| p.veth.clone())),
            Ok(Some("vb".into()))
        );
        assert_eq!(
            port_with_mac(&ports, &mac.to_uppercase()).map(|p| p.map(|p| p.veth.clone())),
            Ok(Some("vb".into()))
        );
        let ports = [
            port("va", Some(2), Some(mac)),
            port("vb", Some(3), Some(mac)),
        ];
        assert!(port_with_mac(&ports, mac).is_err(), "two ports, one MAC");
    }

    #[test]
    fn only_netlink_failures_are_reported_once_per_container() {
        let q = |id: &str, net: &str| VethQuery {
            container_id: id.into(),
            container_name: format!("name-{id}"),
            pid: 1,
            network: net.into(),
            mac: None,
        };
        let queries = [
            q("a", "n1"),
            q("a", "n2"),
            q("b", "n1"),
            q("c", "n1"),
            q("d", "n1"),
        ];
        let down = || Err(VethError::Netlink("netlink socket: down".into()));
        let answers = [
            down(),
            down(),
            Err(VethError::NoInterface {
                mac: "02:00:00:00:00:01".into(),
            }),
            Err(VethError::Failed("interface eth0 has no peer link".into())),
            down(),
        ];
        let got = netlink_failures(&queries, &answers);
        let ids: Vec<&str> = got.iter().map(|f| f.container_id.as_str()).collect();
        assert_eq!(ids, ["a", "d"], "{got:?}");
        assert_eq!(got[0].container_name, "name-a");
        assert_eq!(got[0].error, "netlink: netlink socket: down");
    }

    #[test]
    fn a_notification_is_recognised_by_the_mac_it_carries() {
        use netlink_packet_route::RouteNetlinkMessage;
        use netlink_packet_route::link::{LinkAttribute, LinkMessage};
        use rtnetlink::packet_core::NetlinkMessage;
        let msg = |mac: [u8; 6]| {
            let mut l = LinkMessage::default();
            l.attributes.push(LinkAttribute::IfName("eth0".into()));
            l.attributes.push(LinkAttribute::Address(mac.to_vec()));
            let mut m = NetlinkMessage::from(RouteNetlinkMessage::NewLink(l));
            m.finalize();
            let mut buf = vec![0u8; m.buffer_len()];
            m.serialize(&mut buf);
            buf
        };
        let mine = [0x02, 0x42, 0xac, 0x12, 0x00, 0x02];
        let other = [0x02, 0x42, 0xac, 0x12, 0x00, 0x03];
        assert!(carries_mac(&msg(mine), "02:42:ac:12:00:02"));
        assert!(!carries_mac(&msg(other), "02:42:ac:12:00:02"));
        // Two messages in one datagram: the second one counts too.
        let mut two = msg(other);
        two.extend(msg(mine));
        assert!(carries_mac(&two, "02:42:ac:12:00:02"));
        assert!(!carries_mac(&[1, 2, 3], "02:42:ac:12:00:02"));
    }
}
