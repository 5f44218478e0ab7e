//! The nfnetlink socket layer shared by the kernel adapters that speak it: `nft::netlink`
//! (nf_tables: live reads, element writes) and `conntrack` (ctnetlink). A blocking
//! NETLINK_NETFILTER socket per subsystem, kept open per thread and network namespace,
//! netlink attribute building and parsing, and batches.

use std::io;

const NETLINK_NETFILTER: libc::c_int = 12;

const NLM_F_REQUEST: u16 = 0x1;
pub(crate) const NLM_F_ACK: u16 = 0x4;
pub(crate) const NLM_F_DUMP: u16 = 0x300;
pub(crate) const NLM_F_CREATE: u16 = 0x400;
const NLM_F_DUMP_INTR: u16 = 0x10;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
const NFNL_MSG_BATCH_END: u16 = 0x11;

/// The one line a user without the privilege sees, whichever path (libnftables, the nft
/// binary, nfnetlink) hit the refusal first.
pub const PERMISSION_DENIED: &str =
    "cannot read nftables: permission denied (run as root or with CAP_NET_ADMIN)";

#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    #[error("nfnetlink: {0}")]
    Io(#[from] io::Error),
    #[error("nfnetlink: {0}")]
    Kernel(io::Error),
    #[error("nfnetlink: unexpected message: {0}")]
    Malformed(String),
    #[error("nfnetlink: the ruleset kept changing while it was read")]
    Unstable,
    #[error("{}", PERMISSION_DENIED)]
    PermissionDenied,
}

/// EPERM / EACCES become the one documented line; anything else keeps its errno text.
fn os_error(e: io::Error) -> NetlinkError {
    match e.raw_os_error() {
        Some(libc::EPERM) | Some(libc::EACCES) => NetlinkError::PermissionDenied,
        _ => NetlinkError::Kernel(e),
    }
}

/// A blocking NETLINK_NETFILTER socket talking to one nfnetlink subsystem.
pub(crate) struct Sock {
    fd: libc::c_int,
    seq: u32,
    subsys: u16,
    buf: Vec<u8>,
}

impl Drop for Sock {
    fn drop(&mut self) {
        // SAFETY: fd was opened by Sock::open and is closed once.
        unsafe { libc::close(self.fd) };
    }
}

pub(crate) fn attr(out: &mut Vec<u8>, ty: u16, payload: &[u8]) {
    let len = 4 + payload.len();
    out.extend_from_slice(&(len as u16).to_ne_bytes());
    out.extend_from_slice(&ty.to_ne_bytes());
    out.extend_from_slice(payload);
    while out.len() % 4 != 0 {
        out.push(0);
    }
}

pub(crate) fn attr_str(out: &mut Vec<u8>, ty: u16, s: &str) {
    let mut p = s.as_bytes().to_vec();
    p.push(0);
    attr(out, ty, &p);
}

pub(crate) fn nested(out: &mut Vec<u8>, ty: u16, inner: &[u8]) {
    attr(out, ty | 0x8000, inner);
}

/// Netlink attributes of `buf`: (type without the nested/byte-order bits, payload).
pub(crate) fn attrs(mut buf: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        if buf.len() < 4 {
            return None;
        }
        let len = u16::from_ne_bytes([buf[0], buf[1]]) as usize;
        let ty = u16::from_ne_bytes([buf[2], buf[3]]) & 0x3fff;
        if len < 4 || len > buf.len() {
            return None;
        }
        let payload = &buf[4..len];
        let next = (len + 3) & !3;
        buf = &buf[next.min(buf.len())..];
        Some((ty, payload))
    })
}

pub(crate) fn find(buf: &[u8], ty: u16) -> Option<&[u8]> {
    attrs(buf).find(|(t, _)| *t == ty).map(|(_, p)| p)
}

/// The answer to one request as it arrives: its messages' payloads (after the nfgenmsg
/// header) and whether the kernel flagged a dump as interrupted.
#[derive(Debug, Default)]
pub struct Answer {
    pub msgs: Vec<Vec<u8>>,
    pub interrupted: bool,
}

impl Answer {
    /// Takes in one received buffer of the answer to request `seq` (sent with `flags`);
    /// `Some` once the answer is complete: `Ok` with every message in `msgs`, or the error.
    /// Pure: the fuzz target `nft` feeds it any bytes.
    pub fn feed(&mut self, buf: &[u8], seq: u32, flags: u16) -> Option<Result<(), NetlinkError>> {
        let dump = flags & NLM_F_DUMP == NLM_F_DUMP;
        let mut b = buf;
        while b.len() >= 16 {
            let mlen = u32::from_ne_bytes(b[0..4].try_into().unwrap_or_default()) as usize;
            let mtype = u16::from_ne_bytes([b[4], b[5]]);
            let mflags = u16::from_ne_bytes([b[6], b[7]]);
            let mseq = u32::from_ne_bytes(b[8..12].try_into().unwrap_or_default());
            if mlen < 16 || mlen > b.len() {
                return Some(Err(NetlinkError::Malformed("truncated message".into())));
            }
            let body = &b[16..mlen];
            b = &b[((mlen + 3) & !3).min(b.len())..];
            if mseq != seq {
                continue;
            }
            if mflags & NLM_F_DUMP_INTR != 0 {
                self.interrupted = true;
            }
            match mtype {
                NLMSG_DONE => {
                    return Some(if self.interrupted {
                        Err(NetlinkError::Unstable)
                    } else {
                        Ok(())
                    });
                }
                NLMSG_ERROR => {
                    let code = i32::from_ne_bytes(
                        body.get(..4)
                            .and_then(|s| s.try_into().ok())
                            .unwrap_or_default(),
                    );
                    if code == 0 {
                        return Some(Ok(()));
                    }
                    return Some(Err(os_error(io::Error::from_raw_os_error(-code))));
                }
                _ => {
                    self.msgs.push(body.get(4..).unwrap_or_default().to_vec());
                    if !dump && flags & NLM_F_ACK == 0 {
                        return Some(Ok(()));
                    }
                }
            }
        }
        None
    }
}

/// One netlink message with its nfgenmsg header (version 0, `res_id` big-endian).
pub(crate) fn msg(
    out: &mut Vec<u8>,
    ty: u16,
    flags: u16,
    seq: u32,
    family: u8,
    res_id: u16,
    payload: &[u8],
) {
    let len = 16 + 4 + payload.len();
    out.extend_from_slice(&(len as u32).to_ne_bytes());
    out.extend_from_slice(&ty.to_ne_bytes());
    out.extend_from_slice(&(NLM_F_REQUEST | flags).to_ne_bytes());
    out.extend_from_slice(&seq.to_ne_bytes());
    out.extend_from_slice(&0u32.to_ne_bytes());
    out.extend_from_slice(&[family, 0]);
    out.extend_from_slice(&res_id.to_be_bytes());
    out.extend_from_slice(payload);
}

impl Sock {
    pub(crate) fn open_subsys(subsys: u16) -> Result<Sock, NetlinkError> {
        // SAFETY: plain socket calls with a zeroed, correctly sized sockaddr_nl.
        unsafe {
            let fd = libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                NETLINK_NETFILTER,
            );
            if fd < 0 {
                return Err(io::Error::last_os_error().into());
            }
            let sock = Sock {
                fd,
                seq: 0,
                subsys,
                buf: vec![0u8; 1 << 17],
            };
            let mut sa: libc::sockaddr_nl = std::mem::zeroed();
            sa.nl_family = libc::AF_NETLINK as libc::sa_family_t;
            if libc::bind(
                fd,
                &sa as *const libc::sockaddr_nl as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            ) < 0
            {
                return Err(io::Error::last_os_error().into());
            }
            Ok(sock)
        }
    }

    /// Sends one request and collects the attribute payload of every answer message. A
    /// dump interrupted by a concurrent change is `Unstable`, for the caller to retry or
    /// accept.
    pub(crate) fn call(
        &mut self,
        msg: u16,
        flags: u16,
        family: u8,
        payload: &[u8],
    ) -> Result<Vec<Vec<u8>>, NetlinkError> {
        self.call_res(msg, flags, family, 0, payload)
    }

    /// [`Sock::call`] for a request to one resource of the subsystem (nfgenmsg `res_id`, such
    /// as a queue number).
    pub(crate) fn call_res(
        &mut self,
        msg: u16,
        flags: u16,
        family: u8,
        res_id: u16,
        payload: &[u8],
    ) -> Result<Vec<Vec<u8>>, NetlinkError> {
        let seq = self.send(msg, flags, family, res_id, payload)?;
        let mut answer = Answer::default();
        loop {
            let buf = self.recv_raw().map_err(NetlinkError::Io)?;
            if let Some(done) = answer.feed(buf, seq, flags) {
                return done.map(|()| answer.msgs);
            }
        }
    }

    /// Sends one request without waiting for an answer; its sequence number.
    pub(crate) fn send(
        &mut self,
        ty: u16,
        flags: u16,
        family: u8,
        res_id: u16,
        payload: &[u8],
    ) -> Result<u32, NetlinkError> {
        self.seq = self.seq.wrapping_add(1);
        let mut m = Vec::with_capacity(20 + payload.len());
        msg(
            &mut m,
            (self.subsys << 8) | ty,
            flags,
            self.seq,
            family,
            res_id,
            payload,
        );
        // SAFETY: m is a valid buffer of m.len() bytes.
        let sent = unsafe { libc::send(self.fd, m.as_ptr() as *const libc::c_void, m.len(), 0) };
        if sent < 0 {
            return Err(NetlinkError::Io(io::Error::last_os_error()));
        }
        Ok(self.seq)
    }

    /// The next datagram on the socket (an interrupted call is made again).
    pub(crate) fn recv_raw(&mut self) -> io::Result<&[u8]> {
        loop {
            // SAFETY: self.buf is a valid writable buffer of its length.
            let n = unsafe {
                libc::recv(
                    self.fd,
                    self.buf.as_mut_ptr() as *mut libc::c_void,
                    self.buf.len(),
                    0,
                )
            };
            if n >= 0 {
                return Ok(&self.buf[..n as usize]);
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }

    pub(crate) fn fd(&self) -> libc::c_int {
        self.fd
    }

    /// Starts a batch (one transaction of the subsystem) on this socket.
    pub(crate) fn batch(&self) -> Batch {
        // Sequence numbers go on across transactions of one socket, so an answer is never
        // mistaken for one of an earlier batch.
        let base = if self.seq > u32::MAX / 2 {
            1
        } else {
            self.seq + 1
        };
        let mut buf = Vec::new();
        msg(&mut buf, NFNL_MSG_BATCH_BEGIN, 0, base, 0, self.subsys, &[]);
        Batch {
            buf,
            base,
            seq: base,
            acks: 0,
            subsys: self.subsys,
        }
    }

    /// Sends `batch` and waits for its answers: all of it applies, or none and the first
    /// error is returned. An empty batch sends nothing.
    pub(crate) fn commit(&mut self, batch: Batch) -> Result<(), NetlinkError> {
        let Batch {
            mut buf,
            base,
            mut seq,
            acks,
            subsys,
        } = batch;
        if acks == 0 {
            return Ok(());
        }
        seq += 1;
        msg(&mut buf, NFNL_MSG_BATCH_END, 0, seq, 0, subsys, &[]);
        // SAFETY: buf is a valid buffer of buf.len() bytes.
        let sent =
            unsafe { libc::send(self.fd, buf.as_ptr() as *const libc::c_void, buf.len(), 0) };
        if sent < 0 || sent as usize != buf.len() {
            return Err(io::Error::last_os_error().into());
        }
        // One answer per message: an ACK (error 0) or an error, which aborts the batch.
        let mut first_err: Option<i32> = None;
        let mut answered = 0;
        while answered < acks {
            // SAFETY: self.buf is a valid writable buffer of its length.
            let n = unsafe {
                libc::recv(
                    self.fd,
                    self.buf.as_mut_ptr() as *mut libc::c_void,
                    self.buf.len(),
                    0,
                )
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e.into());
            }
            let mut b = &self.buf[..n as usize];
            while b.len() >= 16 {
                let mlen = u32::from_ne_bytes(b[0..4].try_into().unwrap_or_default()) as usize;
                let mtype = u16::from_ne_bytes([b[4], b[5]]);
                let mseq = u32::from_ne_bytes(b[8..12].try_into().unwrap_or_default());
                if mlen < 16 || mlen > b.len() {
                    return Err(NetlinkError::Malformed("truncated answer".into()));
                }
                let body = &b[16..mlen];
                b = &b[((mlen + 3) & !3).min(b.len())..];
                if mtype == NLMSG_ERROR && mseq > base && mseq < seq {
                    answered += 1;
                    let code = i32::from_ne_bytes(
                        body.get(..4)
                            .and_then(|s| s.try_into().ok())
                            .unwrap_or_default(),
                    );
                    if code != 0 && first_err.is_none() {
                        first_err = Some(code);
                    }
                }
            }
            // After an error the kernel may not answer every message: stop when nothing more
            // is pending.
            if first_err.is_some() && answered < acks {
                let mut pfd = libc::pollfd {
                    fd: self.fd,
                    events: libc::POLLIN,
                    revents: 0,
                };
                // SAFETY: one valid pollfd.
                if unsafe { libc::poll(&mut pfd, 1, 50) } <= 0 {
                    break;
                }
            }
        }
        self.seq = seq;
        match first_err {
            Some(code) => Err(os_error(io::Error::from_raw_os_error(-code))),
            None => Ok(()),
        }
    }
}

/// Messages of one transaction, built by `Sock::batch`, sent by `Sock::commit`.
pub(crate) struct Batch {
    buf: Vec<u8>,
    base: u32,
    seq: u32,
    acks: u32,
    subsys: u16,
}

impl Batch {
    /// Adds message `ty` of the socket's subsystem; each is acknowledged (`NLM_F_ACK`).
    pub(crate) fn push(&mut self, ty: u16, flags: u16, family: u8, payload: &[u8]) {
        self.seq += 1;
        msg(
            &mut self.buf,
            (self.subsys << 8) | ty,
            flags | NLM_F_ACK,
            self.seq,
            family,
            0,
            payload,
        );
        self.acks += 1;
    }
}
thread_local! {
    /// This thread's nfnetlink sockets: (subsystem, network namespace it was opened in,
    /// socket). Closing an nfnetlink socket runs nf_tables' release notifier, which, under
    /// the commit mutex, waits for pending destroy work, that is for an RCU grace period after
    /// any transaction that deleted something: 7–25 ms here, every time a container went
    /// away, and stalling every other transaction meanwhile. Sockets kept open do not.
    static SOCKS: std::cell::RefCell<Vec<(u16, u64, Sock)>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// The network namespace of the calling thread (inode of its `ns/net`), if readable.
fn current_netns() -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/thread-self/ns/net")
        .ok()
        .map(|m| m.ino())
}

/// Runs `f` on this thread's socket for `subsys` in the current network namespace, opened on
/// first use. A socket goes back for the next call only when `f` left nothing unanswered on
/// it (success, or an error the kernel answered in full).
pub(crate) fn with_sock<R>(
    subsys: u16,
    f: impl FnOnce(&mut Sock) -> Result<R, NetlinkError>,
) -> Result<R, NetlinkError> {
    let netns = current_netns();
    let cached = netns.and_then(|ns| {
        SOCKS.with(|c| {
            let mut c = c.borrow_mut();
            let i = c.iter().position(|(s, n, _)| *s == subsys && *n == ns)?;
            Some(c.swap_remove(i).2)
        })
    });
    let mut sock = match cached {
        Some(s) => s,
        None => Sock::open_subsys(subsys)?,
    };
    let r = f(&mut sock);
    let clean = matches!(
        r,
        Ok(_) | Err(NetlinkError::Kernel(_)) | Err(NetlinkError::PermissionDenied)
    );
    if clean && let Some(ns) = netns {
        SOCKS.with(|c| c.borrow_mut().push((subsys, ns, sock)));
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One netlink message: header, nfgenmsg, payload.
    fn nlmsg(ty: u16, flags: u16, seq: u32, payload: &[u8]) -> Vec<u8> {
        let mut m = Vec::new();
        m.extend_from_slice(&((16 + payload.len()) as u32).to_ne_bytes());
        m.extend_from_slice(&ty.to_ne_bytes());
        m.extend_from_slice(&flags.to_ne_bytes());
        m.extend_from_slice(&seq.to_ne_bytes());
        m.extend_from_slice(&0u32.to_ne_bytes());
        m.extend_from_slice(payload);
        while m.len() % 4 != 0 {
            m.push(0);
        }
        m
    }

    #[test]
    fn a_dump_answer_is_its_messages_up_to_done() {
        let mut a = Answer::default();
        let mut buf = nlmsg(0x0a04, 0, 7, &[2, 0, 0, 0, 1, 2, 3, 4]);
        // Another request's message in the same buffer is not part of this answer.
        buf.extend(nlmsg(0x0a04, 0, 6, &[2, 0, 0, 0, 9]));
        assert!(a.feed(&buf, 7, NLM_F_DUMP).is_none(), "no DONE yet");
        let done = a.feed(&nlmsg(NLMSG_DONE, 0, 7, &[0; 4]), 7, NLM_F_DUMP);
        assert!(matches!(done, Some(Ok(()))));
        assert_eq!(a.msgs, vec![vec![1, 2, 3, 4]]);
    }

    #[test]
    fn interrupted_dumps_errors_and_truncation_are_reported() {
        let mut a = Answer::default();
        let mut buf = nlmsg(0x0a04, NLM_F_DUMP_INTR, 1, &[2, 0, 0, 0]);
        buf.extend(nlmsg(NLMSG_DONE, 0, 1, &[0; 4]));
        assert!(matches!(
            a.feed(&buf, 1, NLM_F_DUMP),
            Some(Err(NetlinkError::Unstable))
        ));

        let enoent = nlmsg(NLMSG_ERROR, 0, 2, &(-libc::ENOENT).to_ne_bytes());
        match Answer::default().feed(&enoent, 2, NLM_F_ACK) {
            Some(Err(NetlinkError::Kernel(e))) => assert_eq!(e.raw_os_error(), Some(libc::ENOENT)),
            other => panic!("expected ENOENT, got {other:?}"),
        }
        let mut short = nlmsg(0x0a04, 0, 3, &[2, 0, 0, 0]);
        short.truncate(18);
        short[0] = 40;
        assert!(matches!(
            Answer::default().feed(&short, 3, NLM_F_DUMP),
            Some(Err(NetlinkError::Malformed(_)))
        ));
    }
}
