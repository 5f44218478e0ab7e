//! The host's links, and the links of every namespace the host has an id for (the sandboxes
//! Docker moves veth peers into), kept from netlink notifications by one thread, so that early
//! admission finds an endpoint's host veth the moment the kernel announces the peer's MAC,
//! without a request of its own. A request would queue behind Docker's own netlink work on
//! the kernel's RTNL lock, which a burst of starts holds for tens to hundreds of milliseconds
//! while the containers' processes start (docs/docker.md, "Admission before the process runs").
//!
//! What binds a MAC to a port, all read from notifications:
//! - the peer's notification comes from another namespace (the `NETLINK_LISTEN_ALL_NSID`
//!   control message gives that namespace's id as the host numbers it), carries the MAC, and
//!   says that its own peer is in another namespace (`IFLA_LINK_NETNSID`), at host ifindex
//!   `IFLA_LINK`;
//! - that host link is a port of the bridge and names the notifying link's ifindex as its
//!   peer, and, once the kernel said so, the notifying namespace as its peer's.
//!
//! Two ports of one bridge leading to one MAC bind neither, as in [`super::port_with_mac`].
//! The bridge's ports are still read as before (one dump and a request per port) when the
//! notifications have not answered within [`READ_AFTER`], when the bridge is not known yet,
//! and after the socket overflowed: a safety net, never the hot path.

use super::veth::{
    Found, LinkInfo, PortFinder, ResolvedVeth, VethError, bridge_ports, current_thread_runtime,
    link_socket, list_links, port_with_mac, route_messages,
};
use std::collections::{BTreeSet, HashMap};
use std::io;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// `linux/netlink.h`; not exported by `libc` for every target.
const NETLINK_LISTEN_ALL_NSID: libc::c_int = 8;

/// The links as the notifications describe them.
#[derive(Debug, Default)]
pub(super) struct LinkModel {
    host: HashMap<u32, LinkInfo>,
    host_by_name: HashMap<String, u32>,
    /// Links of other namespaces by (namespace id as the host numbers it, ifindex there).
    foreign: HashMap<(i32, u32), LinkInfo>,
    foreign_by_mac: HashMap<String, BTreeSet<(i32, u32)>>,
    /// Foreign links by the host ifindex they name as their peer (`IFLA_LINK`).
    foreign_by_peer: HashMap<u32, BTreeSet<(i32, u32)>>,
}

/// Where a link notification comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Origin {
    Host,
    /// Another namespace, by the id the host gives it.
    Netns(i32),
}

impl LinkModel {
    /// The host's links from a dump; what was known of other namespaces is forgotten (their
    /// links are learnt again as they change).
    pub(super) fn reset(&mut self, host: Vec<LinkInfo>) {
        *self = LinkModel::default();
        for l in host {
            self.put_host(l);
        }
    }

    pub(super) fn new_link(&mut self, origin: Origin, link: LinkInfo) {
        match origin {
            Origin::Host => {
                // A new host link under an index that was someone else's: what pointed at the
                // old one is not its peer.
                if !self.host.contains_key(&link.index) {
                    self.forget_peers_of(link.index);
                }
                self.put_host(link);
            }
            Origin::Netns(nsid) => {
                self.del_foreign(nsid, link.index);
                let key = (nsid, link.index);
                if let Some(mac) = &link.mac {
                    self.foreign_by_mac
                        .entry(mac.clone())
                        .or_default()
                        .insert(key);
                }
                if let Some(peer) = link.link {
                    self.foreign_by_peer.entry(peer).or_default().insert(key);
                }
                self.foreign.insert(key, link);
            }
        }
    }

    pub(super) fn del_link(&mut self, origin: Origin, index: u32) {
        match origin {
            Origin::Host => {
                if let Some(old) = self.host.remove(&index)
                    && self.host_by_name.get(&old.name) == Some(&index)
                {
                    self.host_by_name.remove(&old.name);
                }
                self.forget_peers_of(index);
            }
            Origin::Netns(nsid) => self.del_foreign(nsid, index),
        }
    }

    fn put_host(&mut self, link: LinkInfo) {
        if let Some(old) = self.host.get(&link.index)
            && old.name != link.name
            && self.host_by_name.get(&old.name) == Some(&link.index)
        {
            self.host_by_name.remove(&old.name);
        }
        self.host_by_name.insert(link.name.clone(), link.index);
        self.host.insert(link.index, link);
    }

    fn forget_peers_of(&mut self, host_index: u32) {
        for (nsid, index) in self.foreign_by_peer.remove(&host_index).unwrap_or_default() {
            self.del_foreign(nsid, index);
        }
    }

    fn del_foreign(&mut self, nsid: i32, index: u32) {
        let key = (nsid, index);
        let Some(old) = self.foreign.remove(&key) else {
            return;
        };
        if let Some(mac) = old.mac {
            unindex(&mut self.foreign_by_mac, &mac, key);
        }
        if let Some(peer) = old.link {
            unindex(&mut self.foreign_by_peer, &peer, key);
        }
    }

    /// What the model holds about one host link and the links naming it as their peer (for
    /// the log of a port the notifications did not find).
    pub(super) fn about(&self, name: &str) -> (Option<&LinkInfo>, Vec<(i32, &LinkInfo)>) {
        let Some(&index) = self.host_by_name.get(name) else {
            return (None, Vec::new());
        };
        let peers = self
            .foreign_by_peer
            .get(&index)
            .into_iter()
            .flatten()
            .filter_map(|k| self.foreign.get(k).map(|l| (k.0, l)))
            .collect();
        (self.host.get(&index), peers)
    }

    /// Whether the host has a link of this name.
    pub(super) fn knows(&self, name: &str) -> bool {
        self.host_by_name.contains_key(name)
    }

    /// The port of `bridge` whose peer, moved out of the host, carries `mac`. `Ok(None)`: none
    /// yet (or the bridge is unknown); an error when two ports lead to the MAC.
    pub(super) fn port_for(&self, bridge: &str, mac: &str) -> Result<Option<&LinkInfo>, VethError> {
        let mac = mac.to_ascii_lowercase();
        let Some(&br) = self.host_by_name.get(bridge) else {
            return Ok(None);
        };
        let Some(keys) = self.foreign_by_mac.get(&mac) else {
            return Ok(None);
        };
        let mut found = keys.iter().filter_map(|&(nsid, index)| {
            let peer = self.foreign.get(&(nsid, index))?;
            // A link whose own peer is in its namespace (a pair made inside a container) is no
            // endpoint.
            peer.link_netnsid?;
            let port = self.host.get(&peer.link?)?;
            (port.master == Some(br)
                && port.link == Some(index)
                && port.link_netnsid.is_none_or(|n| n == nsid))
            .then_some(port)
        });
        match (found.next(), found.next()) {
            (None, _) => Ok(None),
            (Some(p), None) => Ok(Some(p)),
            (Some(a), Some(b)) => Err(VethError::Failed(format!(
                "ports {} and {} both lead to MAC {mac}",
                a.name, b.name
            ))),
        }
    }
}

fn unindex<K: std::hash::Hash + Eq>(
    m: &mut HashMap<K, BTreeSet<(i32, u32)>>,
    k: &K,
    key: (i32, u32),
) {
    if let Some(set) = m.get_mut(k) {
        set.remove(&key);
        if set.is_empty() {
            m.remove(k);
        }
    }
}

/// The watcher's shared state.
#[derive(Debug, Default)]
struct State {
    model: LinkModel,
    /// The first dump is in: the model can answer.
    ready: bool,
    /// Bumped each time the model was rebuilt after notifications were lost.
    resyncs: u64,
    /// The watcher stopped on an error: finders read the ports themselves.
    failed: Option<String>,
    /// Finders waiting for a port: answered by the watcher thread itself, the moment a
    /// notification binds their MAC, without a thread of theirs to wake.
    waiters: Vec<Waiter>,
}

#[derive(Debug)]
struct Waiter {
    bridge: String,
    mac: String,
    /// `Some`: the port (or the error). Dropped unanswered when the model is rebuilt or the
    /// watcher stops: the finder looks again.
    tx: tokio::sync::oneshot::Sender<Result<String, VethError>>,
}

impl State {
    /// Answers the waiters whose port the model now knows.
    fn answer(&mut self) {
        if self.waiters.is_empty() {
            return;
        }
        let model = &self.model;
        let waiters = std::mem::take(&mut self.waiters);
        for w in waiters {
            if w.tx.is_closed() {
                continue;
            }
            match model.port_for(&w.bridge, &w.mac) {
                Ok(None) => self.waiters.push(w),
                Ok(Some(p)) => {
                    let _ = w.tx.send(Ok(p.name.clone()));
                }
                Err(e) => {
                    let _ = w.tx.send(Err(e));
                }
            }
        }
    }
}

struct Shared {
    state: Mutex<State>,
    changed: Condvar,
    stop: AtomicBool,
    /// Port reads a finder made because the notifications had not answered (the safety net).
    reads: AtomicU64,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// How long a finder waits for the notifications before it reads the bridge's ports itself,
/// and then between two reads.
pub const READ_AFTER: Duration = Duration::from_millis(2000);

/// How often the watcher looks at its stop flag while no notification comes.
const POLL: Duration = Duration::from_millis(500);

/// The receive buffer asked for: a burst of starts in many namespaces sends thousands of link
/// notifications within a second.
const RCVBUF: libc::c_int = 8 << 20;

/// The watcher of the calling thread's namespace (the host's); stops when dropped.
pub struct LinkWatch {
    shared: Arc<Shared>,
}

impl Drop for LinkWatch {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
    }
}

impl LinkWatch {
    /// Subscribes and starts the watcher thread, which dumps the host's links first.
    pub fn start() -> Result<LinkWatch, String> {
        let sock = open_socket()?;
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            changed: Condvar::new(),
            stop: AtomicBool::new(false),
            reads: AtomicU64::new(0),
        });
        let s = Arc::clone(&shared);
        std::thread::Builder::new()
            .name("netguard-links".into())
            .spawn(move || {
                let why = watch(&s, &sock);
                if let Err(e) = &why {
                    tracing::warn!("link watcher stopped: {e}; early admission reads the ports");
                }
                let mut st = s.lock();
                st.failed = Some(why.err().unwrap_or_else(|| "stopped".into()));
                st.waiters.clear();
                s.changed.notify_all();
            })
            .map_err(|e| format!("link watcher thread: {e}"))?;
        Ok(LinkWatch { shared })
    }

    /// How many times a finder read the ports itself (the notifications had not answered).
    pub fn reads(&self) -> u64 {
        self.shared.reads.load(Ordering::Relaxed)
    }

    /// Blocks until the first dump is in (or `timeout`); true if it is.
    pub fn wait_ready(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut st = self.shared.lock();
        while !st.ready && st.failed.is_none() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            st = self
                .shared
                .changed
                .wait_timeout(st, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        st.ready
    }

    async fn read_ports(&self, bridge: &str, mac: &str) -> ReadResult {
        self.shared.reads.fetch_add(1, Ordering::Relaxed);
        let b = bridge.to_string();
        let ports = tokio::task::spawn_blocking(move || bridge_ports(&b))
            .await
            .map_err(|e| VethError::Failed(e.to_string()))??;
        Ok(port_with_mac(&ports, mac)?.map(|p| ResolvedVeth {
            veth: p.veth.clone(),
            bridge: Some(bridge.to_string()),
        }))
    }
}

impl PortFinder for LinkWatch {
    fn find<'a>(&'a self, bridge: &'a str, mac: &'a str, timeout: Duration) -> Found<'a> {
        Box::pin(self.wait_port(bridge, mac, timeout))
    }
}

impl LinkWatch {
    async fn wait_port(
        &self,
        bridge: &str,
        mac: &str,
        timeout: Duration,
    ) -> Result<ResolvedVeth, VethError> {
        crate::fault::check(crate::fault::DOCKER_NETLINK)
            .map_err(|e| VethError::Failed(format!("netlink socket: {e}")))?;
        let mac = mac.to_ascii_lowercase();
        let port = |veth: String| ResolvedVeth {
            veth,
            bridge: Some(bridge.to_string()),
        };
        let start = Instant::now();
        let deadline = start + timeout;
        let mut next_read = start + READ_AFTER;
        let mut seen_resyncs = None;
        let mut reads = 0u32;
        // The safety-net read in flight: the notifications keep being listened to meanwhile (a
        // read can wait long for the RTNL lock in a burst, and the MAC may come during it).
        let mut reading: Option<futures::future::BoxFuture<'_, ReadResult>> = None;
        tracing::trace!(bridge, mac, "waiting for the port");
        loop {
            let now = Instant::now();
            let (rx, failed) = {
                let mut st = self.shared.lock();
                let failed = st.failed.is_some();
                if st.ready && !failed {
                    match st.model.port_for(bridge, &mac) {
                        Ok(Some(p)) => return Ok(port(p.name.clone())),
                        Ok(None) => {}
                        Err(e) => return Err(e),
                    }
                }
                let resynced = seen_resyncs.is_some_and(|r| r != st.resyncs);
                seen_resyncs = Some(st.resyncs);
                // Read at once where the notifications cannot answer: no watcher, or a bridge
                // it does not know (which may not exist: the read says so).
                let first = reads == 0 && (failed || (st.ready && !st.model.knows(bridge)));
                if reading.is_none() && (first || resynced || now >= next_read || now >= deadline) {
                    reads += 1;
                    reading = Some(Box::pin(self.read_ports(bridge, &mac)));
                }
                let rx = (!failed).then(|| {
                    let (tx, rx) = tokio::sync::oneshot::channel();
                    st.waiters.push(Waiter {
                        bridge: bridge.to_string(),
                        mac: mac.clone(),
                        tx,
                    });
                    rx
                });
                (rx, failed)
            };
            let notified = async {
                match rx {
                    Some(rx) => rx.await.ok(),
                    None => std::future::pending().await,
                }
            };
            let idle = reading.is_none();
            let read = async {
                match reading.as_mut() {
                    Some(r) => r.await,
                    None => std::future::pending().await,
                }
            };
            let until = tokio::time::Instant::from_std(next_read.min(deadline));
            tokio::select! {
                biased;
                r = notified => match r {
                    Some(Ok(veth)) => return Ok(port(veth)),
                    Some(Err(e)) => return Err(e),
                    // The model was rebuilt, became ready, or the watcher stopped: look again.
                    None => {}
                },
                r = read => {
                    reading = None;
                    if let Some(v) = r? {
                        let st = self.shared.lock();
                        tracing::debug!(
                            bridge,
                            mac,
                            veth = %v.veth,
                            model = ?st.model.about(&v.veth),
                            "port found by reading the bridge, not from notifications"
                        );
                        return Ok(v);
                    }
                    if Instant::now() >= deadline {
                        return Err(VethError::NoInterface { mac });
                    }
                    next_read = Instant::now() + if failed { POLL } else { READ_AFTER };
                }
                _ = tokio::time::sleep_until(until), if idle => {}
            }
        }
    }
}

type ReadResult = Result<Option<ResolvedVeth>, VethError>;

/// The link notifications' socket (see [`super::veth::link_socket`]) with a large buffer.
fn open_socket() -> Result<rtnetlink::sys::Socket, String> {
    let s = link_socket()?;
    let fd = s.as_raw_fd();
    // Forced past rmem_max where the process may (root); the plain size otherwise.
    for opt in [libc::SO_RCVBUFFORCE, libc::SO_RCVBUF] {
        // SAFETY: a valid socket and a c_int option value that outlives the call.
        let r = unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                opt,
                (&RCVBUF as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if r == 0 {
            break;
        }
    }
    Ok(s)
}

/// One datagram: its length and the namespace it comes from (`None`: this one).
enum Received {
    Datagram(usize, Option<i32>),
    Nothing,
    /// Notifications were lost (`ENOBUFS`).
    Overflow,
}

fn receive(fd: libc::c_int, buf: &mut [u8], wait: Duration) -> io::Result<Received> {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = wait.as_millis().min(i32::MAX as u128) as i32;
    // SAFETY: one valid pollfd for the duration of the call.
    let n = unsafe { libc::poll(&mut pfd, 1, ms) };
    if n < 0 {
        let e = io::Error::last_os_error();
        return if e.kind() == io::ErrorKind::Interrupted {
            Ok(Received::Nothing)
        } else {
            Err(e)
        };
    }
    if n == 0 {
        return Ok(Received::Nothing);
    }
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // u64s: cmsg headers need their alignment.
    let mut control = [0u64; 16];
    // SAFETY: msghdr is plain data; every pointer set below outlives the recvmsg call.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&control);
    // SAFETY: fd is an open socket, msg points at live buffers of the sizes given.
    let len = unsafe { libc::recvmsg(fd, &mut msg, libc::MSG_DONTWAIT) };
    if len < 0 {
        let e = io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::ENOBUFS) => Ok(Received::Overflow),
            Some(libc::EAGAIN) | Some(libc::EINTR) => Ok(Received::Nothing),
            _ => Err(e),
        };
    }
    let mut nsid = None;
    // SAFETY: the CMSG_* walk stays inside msg_control as recvmsg filled it.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_NETLINK
                && (*c).cmsg_type == NETLINK_LISTEN_ALL_NSID
                && (*c).cmsg_len as usize
                    >= libc::CMSG_LEN(std::mem::size_of::<i32>() as u32) as usize
            {
                nsid = Some(std::ptr::read_unaligned(libc::CMSG_DATA(c).cast::<i32>()));
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
    }
    if msg.msg_flags & libc::MSG_TRUNC != 0 {
        // A cut datagram may have hidden a change: treat it as lost.
        return Ok(Received::Overflow);
    }
    Ok(Received::Datagram(len as usize, nsid))
}

/// The link messages of one datagram.
fn apply(model: &mut LinkModel, buf: &[u8], origin: Origin) {
    use netlink_packet_route::RouteNetlinkMessage;
    for m in route_messages(buf) {
        match m {
            RouteNetlinkMessage::NewLink(l) => {
                let l = LinkInfo::of(l);
                tracing::trace!(?origin, ?l, "new link");
                model.new_link(origin, l)
            }
            RouteNetlinkMessage::DelLink(l) => model.del_link(origin, l.header.index),
            _ => {}
        }
    }
}

/// The host's links, dumped on this thread (in the host's namespace).
fn dump() -> Result<Vec<LinkInfo>, String> {
    let rt = current_thread_runtime()?;
    list_links(&rt)
}

/// The watcher's loop: the dump, then every notification until stopped.
fn watch(shared: &Shared, sock: &rtnetlink::sys::Socket) -> Result<(), String> {
    let fd = sock.as_raw_fd();
    // Subscribed before the dump: what changes meanwhile is queued and replayed after it, in
    // order, onto the dump's state (each notification carries the whole link).
    let links = dump()?;
    {
        let mut st = shared.lock();
        st.model.reset(links);
        st.ready = true;
        st.waiters.clear();
        shared.changed.notify_all();
    }
    let mut buf = vec![0u8; 64 * 1024];
    while !shared.stop.load(Ordering::Relaxed) {
        match receive(fd, &mut buf, POLL).map_err(|e| format!("netlink receive: {e}"))? {
            Received::Nothing => {}
            Received::Datagram(len, nsid) => {
                let origin = nsid.map_or(Origin::Host, Origin::Netns);
                tracing::trace!(?origin, len, "link notifications");
                let mut st = shared.lock();
                apply(&mut st.model, &buf[..len.min(buf.len())], origin);
                st.answer();
            }
            Received::Overflow => {
                tracing::info!("link notifications lost; reading the host's links again");
                let links = dump()?;
                let mut st = shared.lock();
                st.model.reset(links);
                st.resyncs += 1;
                st.waiters.clear();
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link(
        index: u32,
        name: &str,
        mac: Option<&str>,
        peer: Option<u32>,
        master: Option<u32>,
        peer_ns: Option<i32>,
    ) -> LinkInfo {
        LinkInfo {
            index,
            name: name.into(),
            mac: mac.map(String::from),
            link: peer,
            master,
            link_netnsid: peer_ns,
        }
    }

    const MAC: &str = "02:42:ac:12:00:02";

    /// A bridge (index 2) and the port `vh` (index 4) whose peer (index 3) is still in the
    /// host, as Docker creates them.
    fn host() -> LinkModel {
        let mut m = LinkModel::default();
        m.reset(vec![
            link(2, "br-x", None, None, None, None),
            link(3, "vp", Some("0e:00:00:00:00:01"), Some(4), None, None),
            link(4, "vh", None, Some(3), Some(2), None),
        ]);
        m
    }

    fn port(m: &LinkModel, mac: &str) -> Result<Option<String>, VethError> {
        m.port_for("br-x", mac).map(|p| p.map(|p| p.name.clone()))
    }

    #[test]
    fn the_peer_moved_out_with_the_mac_names_its_port() {
        let mut m = host();
        assert_eq!(port(&m, MAC), Ok(None));
        // As the kernel tells it: the peer leaves the host, appears in the sandbox (nsid 0),
        // gets the endpoint's MAC.
        m.del_link(Origin::Host, 3);
        let moved = |mac| link(3, "vp", Some(mac), Some(4), None, Some(0));
        m.new_link(Origin::Netns(0), moved("0e:00:00:00:00:01"));
        assert_eq!(port(&m, MAC), Ok(None));
        m.new_link(Origin::Netns(0), moved(MAC));
        assert_eq!(port(&m, MAC), Ok(Some("vh".into())));
        assert_eq!(port(&m, &MAC.to_uppercase()), Ok(Some("vh".into())));
        assert_eq!(m.port_for("br-other", MAC), Ok(None));
        // The host side's own notification (carrier up) names the sandbox: still bound.
        m.new_link(Origin::Host, link(4, "vh", None, Some(3), Some(2), Some(0)));
        assert_eq!(port(&m, MAC), Ok(Some("vh".into())));
        // ... naming another namespace: not this peer.
        m.new_link(Origin::Host, link(4, "vh", None, Some(3), Some(2), Some(7)));
        assert_eq!(port(&m, MAC), Ok(None));
    }

    #[test]
    fn what_is_not_the_peer_of_a_port_binds_nothing() {
        let mut m = host();
        // The MAC on a link of the host itself.
        m.new_link(Origin::Host, link(9, "dummy0", Some(MAC), None, None, None));
        assert_eq!(port(&m, MAC), Ok(None));
        // A pair made inside a container, both ends there (no IFLA_LINK_NETNSID), pointing
        // at the port's index.
        m.new_link(
            Origin::Netns(5),
            link(3, "x", Some(MAC), Some(4), None, None),
        );
        assert_eq!(port(&m, MAC), Ok(None));
        // A link that names the port, but the port does not name it back.
        m.new_link(
            Origin::Netns(5),
            link(8, "y", Some(MAC), Some(4), None, Some(0)),
        );
        assert_eq!(port(&m, MAC), Ok(None));
        // A peer of a host link that is no port of the bridge.
        m.new_link(Origin::Host, link(11, "vz", None, Some(12), None, Some(6)));
        m.new_link(
            Origin::Netns(6),
            link(12, "eth0", Some(MAC), Some(11), None, Some(0)),
        );
        assert_eq!(port(&m, MAC), Ok(None));
    }

    #[test]
    fn two_ports_leading_to_one_mac_bind_neither() {
        let mut m = host();
        m.new_link(
            Origin::Netns(0),
            link(3, "eth0", Some(MAC), Some(4), None, Some(0)),
        );
        m.new_link(
            Origin::Host,
            link(6, "vh2", None, Some(5), Some(2), Some(1)),
        );
        m.new_link(
            Origin::Netns(1),
            link(5, "eth0", Some(MAC), Some(6), None, Some(0)),
        );
        assert!(port(&m, MAC).is_err());
        // The second one changes its MAC back: the first is bound again.
        m.new_link(
            Origin::Netns(1),
            link(5, "eth0", Some("02:42:ac:12:00:09"), Some(6), None, Some(0)),
        );
        assert_eq!(port(&m, MAC), Ok(Some("vh".into())));
    }

    #[test]
    fn a_gone_port_takes_its_peer_along_and_an_index_reused_binds_nothing_stale() {
        let mut m = host();
        m.new_link(
            Origin::Netns(0),
            link(3, "eth0", Some(MAC), Some(4), None, Some(0)),
        );
        assert_eq!(port(&m, MAC), Ok(Some("vh".into())));
        // The container stops: the host side goes (the sandbox's own notifications may never
        // come, its namespace is gone).
        m.del_link(Origin::Host, 4);
        assert_eq!(port(&m, MAC), Ok(None));
        // A new port under the same index, with a peer index like the old one's.
        m.new_link(Origin::Host, link(4, "vnew", None, Some(3), Some(2), None));
        assert_eq!(
            port(&m, MAC),
            Ok(None),
            "a stale sandbox link binds nothing"
        );
        // A link gone from its namespace.
        m.new_link(
            Origin::Netns(0),
            link(3, "eth0", Some(MAC), Some(4), None, Some(0)),
        );
        assert_eq!(port(&m, MAC), Ok(Some("vnew".into())));
        m.del_link(Origin::Netns(0), 3);
        assert_eq!(port(&m, MAC), Ok(None));
    }

    #[test]
    fn renames_and_a_reset_keep_the_names_right() {
        let mut m = host();
        m.new_link(Origin::Host, link(2, "br-y", None, None, None, None));
        assert!(!m.knows("br-x") && m.knows("br-y"));
        m.new_link(
            Origin::Netns(0),
            link(3, "eth0", Some(MAC), Some(4), None, Some(0)),
        );
        assert_eq!(
            m.port_for("br-y", MAC).map(|p| p.map(|p| p.name.clone())),
            Ok(Some("vh".into()))
        );
        m.reset(vec![link(2, "br-y", None, None, None, None)]);
        assert_eq!(
            m.port_for("br-y", MAC),
            Ok(None),
            "the sandboxes are learnt again"
        );
    }

    #[test]
    fn a_datagram_of_notifications_is_applied_in_order() {
        use netlink_packet_route::RouteNetlinkMessage;
        use netlink_packet_route::link::{LinkAttribute, LinkMessage};
        use rtnetlink::packet_core::NetlinkMessage;
        let msg = |new: bool, index: u32, mac: [u8; 6]| {
            let mut l = LinkMessage::default();
            l.header.index = index;
            l.attributes.push(LinkAttribute::IfName("eth0".into()));
            l.attributes.push(LinkAttribute::Address(mac.to_vec()));
            l.attributes.push(LinkAttribute::Link(4));
            l.attributes.push(LinkAttribute::LinkNetNsId(0));
            let inner = if new {
                RouteNetlinkMessage::NewLink(l)
            } else {
                RouteNetlinkMessage::DelLink(l)
            };
            let mut m = NetlinkMessage::from(inner);
            m.finalize();
            let mut buf = vec![0u8; m.buffer_len()];
            m.serialize(&mut buf);
            buf
        };
        let mine = [0x02, 0x42, 0xac, 0x12, 0x00, 0x02];
        let mut m = host();
        apply(&mut m, &msg(true, 3, mine), Origin::Netns(0));
        assert_eq!(port(&m, MAC), Ok(Some("vh".into())));
        let mut two = msg(false, 3, mine);
        two.extend(msg(true, 3, [0x02, 0, 0, 0, 0, 1]));
        apply(&mut m, &two, Origin::Netns(0));
        assert_eq!(port(&m, MAC), Ok(None));
        apply(&mut m, &[1, 2, 3], Origin::Netns(0));
    }
}
