//! Finding the host-side veth of a container endpoint.
//!
//! Docker does not say which host veth belongs to which endpoint, so we ask the kernel: inside
//! the container's network namespace, the interface carrying the endpoint's MAC has an
//! `IFLA_LINK` naming its peer's ifindex in the host namespace; the host link list turns that
//! index into the veth name and its master bridge.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io;

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
    #[error("{0}")]
    Failed(String),
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
#[derive(Debug, Clone, Default)]
struct LinkInfo {
    index: u32,
    name: String,
    mac: Option<String>,
    /// `IFLA_LINK`: for a veth, the peer's ifindex (in the peer's namespace).
    link: Option<u32>,
    /// `IFLA_MASTER`: the bridge the link is a port of.
    master: Option<u32>,
}

fn format_mac(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Lists the links of the namespace the calling thread is in, over a fresh netlink socket
/// (a socket stays bound to the namespace it was created in, so it must be opened after
/// `setns`).
fn list_links(rt: &tokio::runtime::Runtime) -> Result<Vec<LinkInfo>, String> {
    rt.block_on(async {
        let (conn, handle, _) =
            rtnetlink::new_connection().map_err(|e| format!("netlink socket: {e}"))?;
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
        let (conn, handle, _) =
            rtnetlink::new_connection().map_err(|e| format!("netlink socket: {e}"))?;
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
    use netlink_packet_route::link::LinkAttribute;
    let mut links = Vec::new();
    loop {
        match stream.try_next().await {
            Ok(Some(msg)) => {
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
                        _ => {}
                    }
                }
                links.push(info);
            }
            Ok(None) => return Ok(links),
            Err(e) => return Err(format!("{what}: {e}")),
        }
    }
}

fn current_thread_runtime() -> Result<tokio::runtime::Runtime, String> {
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
                        Err(e) => Err(VethError::Failed(e.clone())),
                        Ok(rt) => open_netns(pid).and_then(|ns| {
                            nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET)
                                .map_err(|e| VethError::Failed(format!("setns: {e}")))?;
                            list_links(rt).map_err(VethError::Failed)
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
                let err = VethError::Failed(format!("host link list: {e}"));
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
