//! The NFQUEUE socket (nfnetlink_queue) the daemon holds packets on: binding a queue,
//! reading the packets the kernel queues with the metadata the hold needs (bridge, bridge
//! port, source MAC, addresses), and sending a verdict per packet. No libnetfilter_queue:
//! the protocol is a handful of attributes, built and parsed with `nfnetlink`'s helpers.

use crate::nfnetlink::{NLM_F_ACK, NetlinkError, Sock, attr, find};
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

const NFNL_SUBSYS_QUEUE: u16 = 3;
const NFQNL_MSG_PACKET: u16 = 0;
const NFQNL_MSG_VERDICT: u16 = 1;
const NFQNL_MSG_CONFIG: u16 = 2;

const NFQA_CFG_CMD: u16 = 1;
const NFQA_CFG_PARAMS: u16 = 2;
const NFQA_CFG_QUEUE_MAXLEN: u16 = 3;
const NFQNL_CFG_CMD_BIND: u8 = 1;
const NFQNL_COPY_PACKET: u8 = 2;

const NFQA_PACKET_HDR: u16 = 1;
const NFQA_VERDICT_HDR: u16 = 2;
const NFQA_IFINDEX_INDEV: u16 = 5;
const NFQA_IFINDEX_OUTDEV: u16 = 6;
const NFQA_IFINDEX_PHYSINDEV: u16 = 7;
const NFQA_IFINDEX_PHYSOUTDEV: u16 = 8;
const NFQA_HWADDR: u16 = 9;
const NFQA_PAYLOAD: u16 = 10;

/// Bytes of each packet copied to us: an IPv6 header and more; the hold reads addresses only.
const COPY_RANGE: u32 = 128;

/// What the daemon tells the kernel about a held packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueVerdict {
    Drop,
    /// Run the hook that queued it again, with the rules live now: never a pass by itself.
    Repeat,
}

impl QueueVerdict {
    fn code(self) -> u32 {
        match self {
            QueueVerdict::Drop => 0,
            QueueVerdict::Repeat => 4,
        }
    }
}

/// One queued packet, as much of it as the hold needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packet {
    pub id: u32,
    /// The bridge it came in on and goes out of (for bridged IP traffic).
    pub indev: Option<u32>,
    pub outdev: Option<u32>,
    /// The bridge ports (host veths) it came from and goes to.
    pub physindev: Option<u32>,
    pub physoutdev: Option<u32>,
    /// Its Ethernet source.
    pub src_mac: Option<[u8; 6]>,
    pub saddr: Option<IpAddr>,
    pub daddr: Option<IpAddr>,
}

fn be_u32(p: &[u8]) -> Option<u32> {
    Some(u32::from_be_bytes(p.get(..4)?.try_into().ok()?))
}

/// The addresses of an IPv4 or IPv6 packet, from its network header.
fn addresses(payload: &[u8]) -> (Option<IpAddr>, Option<IpAddr>) {
    let v4 = |o: usize| -> Option<IpAddr> {
        let b: [u8; 4] = payload.get(o..o + 4)?.try_into().ok()?;
        Some(IpAddr::V4(Ipv4Addr::from(b)))
    };
    let v6 = |o: usize| -> Option<IpAddr> {
        let b: [u8; 16] = payload.get(o..o + 16)?.try_into().ok()?;
        Some(IpAddr::V6(Ipv6Addr::from(b)))
    };
    match payload.first().map(|b| b >> 4) {
        Some(4) => (v4(12), v4(16)),
        Some(6) => (v6(8), v6(24)),
        _ => (None, None),
    }
}

/// The packets in one datagram from the queue socket; anything else (an error answer to a
/// verdict for a packet already gone, a message cut short) is skipped. Pure: fuzzed and
/// unit-tested with made-up bytes.
pub fn parse_packets(buf: &[u8]) -> Vec<Packet> {
    let mut out = Vec::new();
    let mut b = buf;
    while b.len() >= 16 {
        let mlen = u32::from_ne_bytes([b[0], b[1], b[2], b[3]]) as usize;
        let mtype = u16::from_ne_bytes([b[4], b[5]]);
        if mlen < 16 || mlen > b.len() {
            break;
        }
        let body = &b[16..mlen];
        b = &b[((mlen + 3) & !3).min(b.len())..];
        if mtype != (NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_PACKET || body.len() < 4 {
            continue;
        }
        let a = &body[4..];
        let Some(id) = find(a, NFQA_PACKET_HDR).and_then(be_u32) else {
            continue;
        };
        let dev = |ty| find(a, ty).and_then(be_u32);
        let src_mac = find(a, NFQA_HWADDR).and_then(|p| {
            let len = u16::from_be_bytes(p.get(..2)?.try_into().ok()?);
            (len == 6).then_some(())?;
            p.get(4..10)?.try_into().ok()
        });
        let (saddr, daddr) = addresses(find(a, NFQA_PAYLOAD).unwrap_or_default());
        out.push(Packet {
            id,
            indev: dev(NFQA_IFINDEX_INDEV),
            outdev: dev(NFQA_IFINDEX_OUTDEV),
            physindev: dev(NFQA_IFINDEX_PHYSINDEV),
            physoutdev: dev(NFQA_IFINDEX_PHYSOUTDEV),
            src_mac,
            saddr,
            daddr,
        });
    }
    out
}

/// A bound queue. Dropping it closes the socket: the kernel then drops what it still holds.
pub struct Queue {
    sock: Sock,
    num: u16,
}

fn os_err() -> NetlinkError {
    NetlinkError::Io(io::Error::last_os_error())
}

impl Queue {
    /// Binds queue `num` in the current network namespace, copying the start of each packet
    /// and letting the kernel keep at most `maxlen` waiting. Fails when another socket holds
    /// the queue (EBUSY) or without CAP_NET_ADMIN. The socket is non-blocking afterwards.
    pub fn bind(num: u16, maxlen: u32) -> Result<Queue, NetlinkError> {
        let mut sock = Sock::open_subsys(NFNL_SUBSYS_QUEUE)?;
        // Room for a burst of held packets; what does not fit the kernel drops.
        let size: libc::c_int = 1 << 20;
        // SAFETY: setsockopt on our own fd with a correctly sized int.
        unsafe {
            libc::setsockopt(
                sock.fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVBUF,
                &size as *const libc::c_int as *const libc::c_void,
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
        let mut cfg = Vec::new();
        // command, padding, protocol family (ignored since Linux 3.8)
        attr(&mut cfg, NFQA_CFG_CMD, &[NFQNL_CFG_CMD_BIND, 0, 0, 0]);
        let mut params = COPY_RANGE.to_be_bytes().to_vec();
        params.push(NFQNL_COPY_PACKET);
        attr(&mut cfg, NFQA_CFG_PARAMS, &params);
        attr(&mut cfg, NFQA_CFG_QUEUE_MAXLEN, &maxlen.to_be_bytes());
        sock.call_res(
            NFQNL_MSG_CONFIG,
            NLM_F_ACK,
            libc::AF_UNSPEC as u8,
            num,
            &cfg,
        )?;
        // SAFETY: fcntl on our own fd.
        unsafe {
            let fl = libc::fcntl(sock.fd(), libc::F_GETFL);
            if fl < 0 || libc::fcntl(sock.fd(), libc::F_SETFL, fl | libc::O_NONBLOCK) < 0 {
                return Err(os_err());
            }
        }
        Ok(Queue { sock, num })
    }

    pub fn num(&self) -> u16 {
        self.num
    }

    pub fn fd(&self) -> libc::c_int {
        self.sock.fd()
    }

    /// The packets waiting on the socket now; empty when there are none.
    pub fn recv(&mut self) -> Result<Vec<Packet>, NetlinkError> {
        let mut out = Vec::new();
        loop {
            match self.sock.recv_raw() {
                Ok(buf) => out.extend(parse_packets(buf)),
                Err(e) => match e.raw_os_error() {
                    Some(libc::EAGAIN) => return Ok(out),
                    // The socket overflowed: the kernel dropped those packets itself.
                    Some(libc::ENOBUFS) => continue,
                    _ => return Err(NetlinkError::Io(e)),
                },
            }
        }
    }

    pub fn verdict(&mut self, id: u32, v: QueueVerdict) -> Result<(), NetlinkError> {
        let mut hdr = v.code().to_be_bytes().to_vec();
        hdr.extend_from_slice(&id.to_be_bytes());
        let mut p = Vec::with_capacity(12);
        attr(&mut p, NFQA_VERDICT_HDR, &hdr);
        self.sock
            .send(NFQNL_MSG_VERDICT, 0, libc::AF_UNSPEC as u8, self.num, &p)
            .map(|_| ())
    }
}

/// A packet message as the kernel sends it, for the unit tests.
#[cfg(test)]
fn packet_message(p: &Packet, payload: &[u8]) -> Vec<u8> {
    let mut a = Vec::new();
    let mut hdr = p.id.to_be_bytes().to_vec();
    hdr.extend_from_slice(&[0x08, 0x00, 2, 0]);
    attr(&mut a, NFQA_PACKET_HDR, &hdr);
    for (ty, v) in [
        (NFQA_IFINDEX_INDEV, p.indev),
        (NFQA_IFINDEX_OUTDEV, p.outdev),
        (NFQA_IFINDEX_PHYSINDEV, p.physindev),
        (NFQA_IFINDEX_PHYSOUTDEV, p.physoutdev),
    ] {
        if let Some(i) = v {
            attr(&mut a, ty, &i.to_be_bytes());
        }
    }
    if let Some(m) = p.src_mac {
        let mut hw = vec![0, 6, 0, 0];
        hw.extend_from_slice(&m);
        hw.extend_from_slice(&[0, 0]);
        attr(&mut a, NFQA_HWADDR, &hw);
    }
    attr(&mut a, NFQA_PAYLOAD, payload);
    let mut m = Vec::new();
    crate::nfnetlink::msg(
        &mut m,
        (NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_PACKET,
        0,
        0,
        libc::AF_INET as u8,
        0,
        &a,
    );
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v4_header(s: [u8; 4], d: [u8; 4]) -> Vec<u8> {
        let mut h = vec![0x45, 0, 0, 40, 0, 0, 0x40, 0, 64, 6, 0, 0];
        h.extend_from_slice(&s);
        h.extend_from_slice(&d);
        h
    }

    #[test]
    fn a_packet_message_reads_back_with_its_devices_mac_and_addresses() {
        let p = Packet {
            id: 77,
            indev: Some(3),
            outdev: Some(3),
            physindev: Some(9),
            physoutdev: Some(11),
            src_mac: Some([2, 0, 0, 0, 0, 5]),
            saddr: Some("10.1.0.5".parse().unwrap()),
            daddr: Some("10.1.0.6".parse().unwrap()),
        };
        let mut buf = packet_message(&p, &v4_header([10, 1, 0, 5], [10, 1, 0, 6]));
        // A second message in the same datagram, IPv6, without physical devices.
        let mut h6 = vec![0x60, 0, 0, 0, 0, 20, 6, 64];
        h6.extend_from_slice(&"fd00::5".parse::<Ipv6Addr>().unwrap().octets());
        h6.extend_from_slice(&"fd00::6".parse::<Ipv6Addr>().unwrap().octets());
        let q = Packet {
            id: 78,
            indev: None,
            outdev: None,
            physindev: None,
            physoutdev: None,
            src_mac: None,
            saddr: Some("fd00::5".parse().unwrap()),
            daddr: Some("fd00::6".parse().unwrap()),
        };
        buf.extend(packet_message(&q, &h6));
        assert_eq!(parse_packets(&buf), vec![p, q]);
    }

    #[test]
    fn cut_and_foreign_messages_are_skipped() {
        let p = Packet {
            id: 1,
            indev: Some(1),
            outdev: None,
            physindev: None,
            physoutdev: None,
            src_mac: None,
            saddr: None,
            daddr: None,
        };
        let whole = packet_message(&p, &[0x45]);
        // Too short a network header: no addresses, still the packet (to be dropped).
        assert_eq!(parse_packets(&whole), vec![p]);
        assert!(parse_packets(&whole[..whole.len() - 3]).is_empty());
        let mut other = whole.clone();
        other[4] = 2; // NLMSG_ERROR
        other[5] = 0;
        assert!(parse_packets(&other).is_empty());
        assert!(parse_packets(&[0xff; 7]).is_empty());
    }
}
