//! Sending the probes: from inside each source container's network namespace, real packets
//! to the destination's address.
//!
//! `setns` moves the calling thread for good, so each worker is a short-lived std thread of
//! our own (never a tokio worker of the command's runtime) with a current-thread runtime of
//! its own; it enters one source namespace after the other and runs that source's probes
//! concurrently, then dies with the last namespace. Sockets are opened after `setns`, so
//! they belong to the container's namespace.

use super::select::{Kind, ProbeSpec, Verdict};
use serde::Serialize;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// What one probe found: a verdict, or why there is none.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Measured {
    /// `None`: the probe could not be sent (see `detail`).
    pub verdict: Option<Verdict>,
    /// What was seen: `connected`, `refused`, `no answer within 300 ms`, an error.
    pub detail: String,
}

impl Measured {
    pub fn reached(detail: &str) -> Measured {
        Measured {
            verdict: Some(Verdict::Reached),
            detail: detail.into(),
        }
    }

    pub fn blocked(detail: impl Into<String>) -> Measured {
        Measured {
            verdict: Some(Verdict::Blocked),
            detail: detail.into(),
        }
    }

    pub fn error(detail: impl Into<String>) -> Measured {
        Measured {
            verdict: None,
            detail: detail.into(),
        }
    }
}

/// One probe to send: its index in the run, the source port (TCP, UDP) or echo identifier
/// (ICMP) it uses, and what it is.
#[derive(Debug, Clone)]
pub struct Job {
    pub index: usize,
    pub sport: u16,
    pub spec: ProbeSpec,
}

/// The probes of one source container, sent from its network namespace.
#[derive(Debug, Clone)]
pub struct Batch {
    /// The namespace file (`/proc/PID/ns/net`, `/run/netns/NAME`).
    pub netns: PathBuf,
    pub jobs: Vec<Job>,
}

/// Sends probes; one answer per job, by job index.
pub trait Prober {
    fn run(&self, batches: &[Batch], timeout: Duration) -> Vec<(usize, Measured)>;
}

/// The real prober: sockets in the containers' namespaces.
#[derive(Debug, Clone)]
pub struct NetnsProber {
    /// Source namespaces probed at once (one thread each).
    pub parallelism: usize,
    /// Probes in flight at once from one source.
    pub per_source: usize,
}

impl Default for NetnsProber {
    fn default() -> Self {
        NetnsProber {
            parallelism: 16,
            per_source: 64,
        }
    }
}

impl Prober for NetnsProber {
    fn run(&self, batches: &[Batch], timeout: Duration) -> Vec<(usize, Measured)> {
        let next = AtomicUsize::new(0);
        let results = Mutex::new(Vec::new());
        std::thread::scope(|s| {
            for _ in 0..self.parallelism.clamp(1, batches.len().max(1)) {
                s.spawn(|| {
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(b) = batches.get(i) else { break };
                        let r = run_batch(b, timeout, self.per_source);
                        if let Ok(mut all) = results.lock() {
                            all.extend(r);
                        }
                    }
                });
            }
        });
        results.into_inner().unwrap_or_default()
    }
}

/// Enters `b.netns` on the calling thread and sends its probes.
fn run_batch(b: &Batch, timeout: Duration, per_source: usize) -> Vec<(usize, Measured)> {
    let all_failed = |why: String| {
        b.jobs
            .iter()
            .map(|j| (j.index, Measured::error(why.clone())))
            .collect::<Vec<_>>()
    };
    let ns = match std::fs::File::open(&b.netns) {
        Ok(f) => f,
        Err(e) => return all_failed(format!("cannot open {}: {e}", b.netns.display())),
    };
    if let Err(e) = nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET) {
        return all_failed(format!("cannot enter {}: {e}", b.netns.display()));
    }
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return all_failed(format!("runtime: {e}")),
    };
    use futures::StreamExt;
    rt.block_on(
        futures::stream::iter(b.jobs.iter())
            .map(|j| async move { (j.index, probe(&j.spec, j.sport, timeout).await) })
            .buffer_unordered(per_source.max(1))
            .collect::<Vec<_>>(),
    )
}

/// Sends one probe from the namespace the thread is in.
pub async fn probe(spec: &ProbeSpec, sport: u16, timeout: Duration) -> Measured {
    let r = match spec.kind {
        Kind::Tcp => tcp(spec, sport, timeout).await,
        Kind::Udp => udp(spec, sport, timeout).await,
        Kind::Icmp => icmp(spec, sport, timeout).await,
    };
    r.unwrap_or_else(|e| Measured::error(e.to_string()))
}

fn silence(timeout: Duration) -> Measured {
    Measured::blocked(format!("no answer within {} ms", timeout.as_millis()))
}

fn is_unreachable(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EHOSTUNREACH | libc::ENETUNREACH)
    )
}

async fn tcp(spec: &ProbeSpec, sport: u16, timeout: Duration) -> io::Result<Measured> {
    let port = spec.port.unwrap_or(super::select::ALL_TRAFFIC_PORT);
    let sock = match spec.src {
        IpAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        IpAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    // Two probes of one run may share a source port (to different destinations); and the
    // connection is reset on close rather than left in TIME_WAIT, so the next run can use
    // the same four-tuple again at once.
    sock.set_reuseaddr(true)?;
    sock.set_zero_linger()?;
    sock.bind(SocketAddr::new(spec.src, sport))?;
    match tokio::time::timeout(timeout, sock.connect(SocketAddr::new(spec.dst, port))).await {
        Err(_) => Ok(silence(timeout)),
        Ok(Ok(_stream)) => Ok(Measured::reached("connected (SYN-ACK)")),
        Ok(Err(e)) if e.raw_os_error() == Some(libc::ECONNREFUSED) => {
            Ok(Measured::reached("refused (RST)"))
        }
        Ok(Err(e)) if is_unreachable(&e) => Ok(Measured::blocked(format!("unreachable: {e}"))),
        Ok(Err(e)) => Err(e),
    }
}

/// The payload of UDP and echo probes: says what they are to anyone capturing them.
pub const PAYLOAD: &[u8] = b"netguard-verify probe";

async fn udp(spec: &ProbeSpec, sport: u16, timeout: Duration) -> io::Result<Measured> {
    let port = spec.port.unwrap_or(super::select::ALL_TRAFFIC_PORT);
    let fd = socket(spec.src, libc::SOCK_DGRAM, 0)?;
    set_reuseaddr(&fd)?;
    bind(&fd, SocketAddr::new(spec.src, sport))?;
    let sock = tokio::net::UdpSocket::from_std(std::net::UdpSocket::from(fd))?;
    sock.connect(SocketAddr::new(spec.dst, port)).await?;
    sock.send(PAYLOAD).await?;
    let mut buf = [0u8; 512];
    // A connected UDP socket reports the ICMP port unreachable of a closed port as
    // ECONNREFUSED on the next receive.
    match tokio::time::timeout(timeout, sock.recv(&mut buf)).await {
        // Silence is a drop, or a listener that ignores a datagram it cannot parse: from
        // the source the two look the same, so it reads as blocked (docs/output.md).
        Err(_) => Ok(Measured::blocked(format!(
            "no answer within {} ms (or a listener that ignores unknown datagrams)",
            timeout.as_millis()
        ))),
        Ok(Ok(_)) => Ok(Measured::reached("answered")),
        Ok(Err(e)) if e.raw_os_error() == Some(libc::ECONNREFUSED) => {
            Ok(Measured::reached("port unreachable (ICMP)"))
        }
        Ok(Err(e)) if is_unreachable(&e) => Ok(Measured::blocked(format!("unreachable: {e}"))),
        Ok(Err(e)) => Err(e),
    }
}

/// An echo request over a raw socket (root, or CAP_NET_RAW in the container's namespace:
/// `verify` runs as root anyway, to enter the namespaces). `id` is the echo identifier.
async fn icmp(spec: &ProbeSpec, id: u16, timeout: Duration) -> io::Result<Measured> {
    let v6 = spec.src.is_ipv6();
    let proto = if v6 {
        libc::IPPROTO_ICMPV6
    } else {
        libc::IPPROTO_ICMP
    };
    let fd = socket(spec.src, libc::SOCK_RAW, proto)?;
    bind(&fd, SocketAddr::new(spec.src, 0))?;
    // A connected raw socket only receives from that peer.
    connect(&fd, SocketAddr::new(spec.dst, 0))?;
    let packet = echo_request(v6, id, 1);
    // SAFETY: fd is an open socket; packet is a valid buffer of its length.
    let n = unsafe {
        libc::send(
            fd.as_raw_fd(),
            packet.as_ptr().cast(),
            packet.len(),
            libc::MSG_DONTWAIT,
        )
    };
    if n < 0 {
        let e = io::Error::last_os_error();
        if is_unreachable(&e) {
            return Ok(Measured::blocked(format!("unreachable: {e}")));
        }
        return Err(e);
    }
    // SAFETY: the AsyncFd owns the OwnedFd, which stays open and the same until it drops.
    let afd = unsafe { tokio::io::unix::AsyncFd::register(fd) }
        .map_err(|e| io::Error::other(e.to_string()))?;
    let wait = async {
        let mut buf = [0u8; 1500];
        loop {
            let mut guard = afd.readable().await?;
            let r = guard.try_io(|inner| {
                // SAFETY: the fd is open; buf is a valid buffer of its length.
                let n = unsafe {
                    libc::recv(
                        inner.as_raw_fd(),
                        buf.as_mut_ptr().cast(),
                        buf.len(),
                        libc::MSG_DONTWAIT,
                    )
                };
                if n < 0 {
                    Err(io::Error::last_os_error())
                } else {
                    Ok(n as usize)
                }
            });
            match r {
                Ok(Ok(n)) => {
                    if buf.get(..n).is_some_and(|b| is_echo_reply(v6, id, b)) {
                        return Ok::<(), io::Error>(());
                    }
                }
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => continue,
            }
        }
    };
    match tokio::time::timeout(timeout, wait).await {
        Err(_) => Ok(silence(timeout)),
        Ok(Ok(())) => Ok(Measured::reached("echo reply")),
        Ok(Err(e)) if is_unreachable(&e) => Ok(Measured::blocked(format!("unreachable: {e}"))),
        Ok(Err(e)) => Err(e),
    }
}

/// An ICMP (type 8) or ICMPv6 (type 128) echo request. The kernel fills in the ICMPv6
/// checksum of a raw socket itself; the ICMP one is ours to compute.
pub fn echo_request(v6: bool, id: u16, seq: u16) -> Vec<u8> {
    let mut p = vec![if v6 { 128 } else { 8 }, 0, 0, 0];
    p.extend_from_slice(&id.to_be_bytes());
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(PAYLOAD);
    if !v6 {
        let c = checksum(&p);
        p[2..4].copy_from_slice(&c.to_be_bytes());
    }
    p
}

/// Whether a received datagram is the echo reply to our request `id`. An IPv4 raw socket
/// hands over the IP header too; an IPv6 one only the ICMPv6 message.
pub fn is_echo_reply(v6: bool, id: u16, b: &[u8]) -> bool {
    let icmp = if v6 {
        b
    } else {
        let ihl = usize::from(b.first().map_or(0, |v| v & 0x0f)) * 4;
        b.get(ihl..).unwrap_or(&[])
    };
    let want = if v6 { 129 } else { 0 };
    icmp.len() >= 8 && icmp[0] == want && icmp[1] == 0 && icmp[4..6] == id.to_be_bytes()
}

/// The Internet checksum (RFC 1071).
fn checksum(b: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    for c in b.chunks(2) {
        let w = u16::from_be_bytes([c[0], c.get(1).copied().unwrap_or(0)]);
        sum += u32::from(w);
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn socket(addr: IpAddr, ty: libc::c_int, proto: libc::c_int) -> io::Result<OwnedFd> {
    let af = if addr.is_ipv6() {
        libc::AF_INET6
    } else {
        libc::AF_INET
    };
    // SAFETY: plain socket(2) call.
    let fd = unsafe { libc::socket(af, ty | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC, proto) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd was just opened and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn set_reuseaddr(fd: &OwnedFd) -> io::Result<()> {
    let one: libc::c_int = 1;
    // SAFETY: fd is open; the option value is a valid c_int.
    let r = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_REUSEADDR,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn sockaddr(a: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: sockaddr_storage is plain data; all zeroes is a valid value.
    let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match a {
        SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(a.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in.
            unsafe { std::ptr::write((&mut ss as *mut libc::sockaddr_storage).cast(), sin) };
            std::mem::size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(a) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: 0,
                sin6_addr: libc::in6_addr {
                    s6_addr: a.ip().octets(),
                },
                sin6_scope_id: a.scope_id(),
            };
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in6.
            unsafe { std::ptr::write((&mut ss as *mut libc::sockaddr_storage).cast(), sin6) };
            std::mem::size_of::<libc::sockaddr_in6>()
        }
    };
    (ss, len as libc::socklen_t)
}

fn bind(fd: &OwnedFd, a: SocketAddr) -> io::Result<()> {
    let (ss, len) = sockaddr(a);
    // SAFETY: fd is open; ss holds a valid address of length len.
    let r = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&ss as *const libc::sockaddr_storage).cast(),
            len,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn connect(fd: &OwnedFd, a: SocketAddr) -> io::Result<()> {
    let (ss, len) = sockaddr(a);
    // SAFETY: fd is open; ss holds a valid address of length len.
    let r = unsafe {
        libc::connect(
            fd.as_raw_fd(),
            (&ss as *const libc::sockaddr_storage).cast(),
            len,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn echo_request_checksums_to_zero_and_replies_are_recognised() {
        let p = echo_request(false, 61005, 1);
        assert_eq!(p[0], 8);
        assert_eq!(checksum(&p), 0, "a packet with its checksum sums to zero");
        assert_eq!(&p[4..6], &61005u16.to_be_bytes());
        // A reply as an IPv4 raw socket returns it: a 20-byte header, then type 0.
        let mut reply = vec![0x45u8];
        reply.extend_from_slice(&[0; 19]);
        let mut icmp = p.clone();
        icmp[0] = 0;
        reply.extend_from_slice(&icmp);
        assert!(is_echo_reply(false, 61005, &reply));
        assert!(!is_echo_reply(false, 61006, &reply));
        // Our own request (seen on a raw socket too) is no reply.
        let mut echo = reply.clone();
        echo[20] = 8;
        assert!(!is_echo_reply(false, 61005, &echo));
        let p6 = echo_request(true, 7, 1);
        assert_eq!(p6[0], 128);
        let mut r6 = p6.clone();
        r6[0] = 129;
        assert!(is_echo_reply(true, 7, &r6));
        assert!(!is_echo_reply(true, 7, &p6));
        assert!(!is_echo_reply(true, 7, &r6[..4]));
    }
}
