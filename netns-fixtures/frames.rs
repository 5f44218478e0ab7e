//! Raw Ethernet frames for the MAC-binding attacks: built by hand and sent from a
//! namespace's `eth0` with an AF_PACKET socket, which is what Docker's default NET_RAW
//! capability lets a container do.

use super::fixture::enter_netns;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

pub fn mac_bytes(s: &str) -> [u8; 6] {
    let mut m = [0u8; 6];
    for (o, p) in m.iter_mut().zip(s.split(':')) {
        *o = u8::from_str_radix(p, 16).expect("hex octet");
    }
    m
}

/// A broadcast ARP request from `spa` (sender hardware address `sha`) for `tpa`, with
/// Ethernet source `eth_src`.
pub fn arp_frame(eth_src: &str, sha: &str, spa: Ipv4Addr, tpa: Ipv4Addr) -> Vec<u8> {
    let mut f = vec![0xff; 6];
    f.extend(mac_bytes(eth_src));
    f.extend([0x08, 0x06]);
    f.extend([0, 1, 0x08, 0x00, 6, 4, 0, 1]);
    f.extend(mac_bytes(sha));
    f.extend(spa.octets());
    f.extend([0; 6]);
    f.extend(tpa.octets());
    f.resize(60, 0);
    f
}

/// An IPv6 packet from `src` to all nodes (`ff02::1`, no next header), with Ethernet
/// source `eth_src`: enough for the bridge to learn from.
pub fn ip6_frame(eth_src: &str, src: Ipv6Addr) -> Vec<u8> {
    let mut f = vec![0x33, 0x33, 0, 0, 0, 1];
    f.extend(mac_bytes(eth_src));
    f.extend([0x86, 0xdd]);
    f.extend([0x60, 0, 0, 0, 0, 0, 59, 255]);
    f.extend(src.octets());
    f.extend("ff02::1".parse::<Ipv6Addr>().unwrap().octets());
    f
}

/// Internet checksum (RFC 1071) over `data`.
fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = data
        .chunks(2)
        .map(|c| u32::from(c[0]) << 8 | u32::from(*c.get(1).unwrap_or(&0)))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// The checksum of an IPv6 upper-layer packet (`proto`: 17 UDP, 58 ICMPv6) over its
/// pseudo-header (RFC 8200, 8.1) and the packet itself, whose checksum field is zero.
fn checksum6(src: Ipv6Addr, dst: Ipv6Addr, proto: u8, upper: &[u8]) -> u16 {
    let mut pseudo = Vec::new();
    pseudo.extend(src.octets());
    pseudo.extend(dst.octets());
    pseudo.extend((upper.len() as u32).to_be_bytes());
    pseudo.extend([0, 0, 0, proto]);
    pseudo.extend(upper);
    checksum(&pseudo)
}

/// A UDP datagram from `src` to `dst`:`port` carrying `payload`, in a frame from `eth_src`
/// to `eth_dst`, with valid checksums (the receiver's socket gets it as if sent by `src`).
/// `src` and `dst` are of one family.
pub fn udp_frame(
    eth_src: &str,
    eth_dst: &str,
    src: IpAddr,
    dst: IpAddr,
    port: u16,
    payload: &[u8],
) -> Vec<u8> {
    let len = 8 + payload.len() as u16;
    let mut udp = Vec::new();
    udp.extend(40000u16.to_be_bytes());
    udp.extend(port.to_be_bytes());
    udp.extend(len.to_be_bytes());
    udp.extend([0, 0]);
    udp.extend(payload);
    let mut f = Vec::from(mac_bytes(eth_dst));
    f.extend(mac_bytes(eth_src));
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            f.extend([0x08, 0x00]);
            let mut ip = vec![0x45, 0];
            ip.extend((20 + len).to_be_bytes());
            ip.extend([0, 1, 0x40, 0, 64, 17, 0, 0]);
            ip.extend(s.octets());
            ip.extend(d.octets());
            let ck = checksum(&ip);
            ip[10..12].copy_from_slice(&ck.to_be_bytes());
            // UDP over IPv4 may go without a checksum (0).
            f.extend(ip);
            f.extend(udp);
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            let ck = checksum6(s, d, 17, &udp);
            udp[6..8].copy_from_slice(&ck.to_be_bytes());
            f.extend([0x86, 0xdd]);
            f.extend([0x60, 0, 0, 0]);
            f.extend(len.to_be_bytes());
            f.extend([17, 64]);
            f.extend(s.octets());
            f.extend(d.octets());
            f.extend(udp);
        }
        _ => panic!("udp_frame: {src} and {dst} are of two families"),
    }
    f
}

/// An AF_PACKET socket on `eth0` of the calling thread's namespace (what Docker's default
/// NET_RAW allows a container); closed on drop.
struct RawEth0 {
    fd: libc::c_int,
    addr: libc::sockaddr_ll,
}

impl RawEth0 {
    fn open() -> RawEth0 {
        // SAFETY: plain socket calls; the address is a zeroed sockaddr_ll filled in below.
        unsafe {
            let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0);
            assert!(fd >= 0, "AF_PACKET: {}", std::io::Error::last_os_error());
            let mut addr: libc::sockaddr_ll = std::mem::zeroed();
            addr.sll_family = libc::AF_PACKET as u16;
            addr.sll_ifindex = libc::if_nametoindex(c"eth0".as_ptr()) as i32;
            addr.sll_halen = 6;
            RawEth0 { fd, addr }
        }
    }

    /// Sends each of `frames` once.
    fn send(&self, frames: &[Vec<u8>]) {
        for f in frames {
            // SAFETY: `f` and `addr` outlive the call; `fd` is open until drop.
            let n = unsafe {
                libc::sendto(
                    self.fd,
                    f.as_ptr().cast(),
                    f.len(),
                    0,
                    (&self.addr as *const libc::sockaddr_ll).cast(),
                    std::mem::size_of::<libc::sockaddr_ll>() as u32,
                )
            };
            assert_eq!(
                n,
                f.len() as isize,
                "sendto: {}",
                std::io::Error::last_os_error()
            );
        }
    }
}

impl Drop for RawEth0 {
    fn drop(&mut self) {
        // SAFETY: the descriptor is this value's own.
        unsafe {
            libc::close(self.fd);
        }
    }
}

/// Sends each of `frames` once out of `eth0` in namespace `ns`.
pub fn send_frames(ns: &str, frames: Vec<Vec<u8>>) {
    let ns = ns.to_string();
    std::thread::spawn(move || {
        enter_netns(&ns).unwrap_or_else(|e| panic!("setns {ns}: {e}"));
        RawEth0::open().send(&frames);
    })
    .join()
    .expect("sender thread");
}

/// Sends `frames` out of `eth0` in namespace `ns` with an AF_PACKET socket (what Docker's
/// default NET_RAW allows), every 20 ms until `stop` is set; returns how many were sent.
pub fn flood(ns: &str, frames: Vec<Vec<u8>>, stop: Arc<AtomicBool>) -> JoinHandle<usize> {
    let ns = ns.to_string();
    std::thread::spawn(move || {
        enter_netns(&ns).unwrap_or_else(|e| panic!("setns {ns}: {e}"));
        let sock = RawEth0::open();
        let mut sent = 0;
        while !stop.load(Ordering::Relaxed) {
            sock.send(&frames);
            sent += frames.len();
            std::thread::sleep(Duration::from_millis(20));
        }
        sent
    })
}

/// An unsolicited IPv6 neighbour advertisement (override flag set) from `src` to `dst`
/// claiming that `target` lives at `lladdr`, in a frame from `eth_src` to `eth_dst`: the
/// IPv6 counterpart of ARP poisoning, made with a valid checksum and hop limit 255 so that
/// the receiver's kernel takes it.
pub fn na_frame(
    eth_src: &str,
    eth_dst: &str,
    src: Ipv6Addr,
    dst: Ipv6Addr,
    target: Ipv6Addr,
    lladdr: &str,
) -> Vec<u8> {
    let options = nd_option(2, &mac_bytes(lladdr));
    icmp6_frame(
        eth_src,
        eth_dst,
        src,
        dst,
        nd_body(136, 0x20, target, &options),
    )
}

/// A neighbour discovery message of ICMPv6 type `kind` (135 solicitation, 136
/// advertisement) about `target`, its first flags byte `flags`, followed by `options`.
pub fn nd_body(kind: u8, flags: u8, target: Ipv6Addr, options: &[u8]) -> Vec<u8> {
    let mut icmp = vec![kind, 0, 0, 0, flags, 0, 0, 0];
    icmp.extend(target.octets());
    icmp.extend(options);
    icmp
}

/// A router advertisement (router lifetime 1800 s, no prefix) followed by `options`.
pub fn ra_body(options: &[u8]) -> Vec<u8> {
    let mut icmp = vec![134, 0, 0, 0, 64, 0, 0x07, 0x08, 0, 0, 0, 0, 0, 0, 0, 0];
    icmp.extend(options);
    icmp
}

/// A neighbour discovery option (RFC 4861 4.6): its type, its length in 8-byte units,
/// then `data`, padded to a multiple of 8 bytes.
pub fn nd_option(kind: u8, data: &[u8]) -> Vec<u8> {
    let len = (2 + data.len()).div_ceil(8);
    let mut o = vec![kind, len as u8];
    o.extend(data);
    o.resize(len * 8, 0);
    o
}

/// The ICMPv6 message `icmp` (checksum field zero) from `src` to `dst` in a frame from
/// `eth_src` to `eth_dst`, hop limit 255 (neighbour discovery requires it), the checksum
/// filled in.
pub fn icmp6_frame(
    eth_src: &str,
    eth_dst: &str,
    src: Ipv6Addr,
    dst: Ipv6Addr,
    mut icmp: Vec<u8>,
) -> Vec<u8> {
    let ck = checksum6(src, dst, 58, &icmp);
    icmp[2..4].copy_from_slice(&ck.to_be_bytes());
    let mut f = Vec::from(mac_bytes(eth_dst));
    f.extend(mac_bytes(eth_src));
    f.extend([0x86, 0xdd]);
    f.extend([0x60, 0, 0, 0]);
    f.extend((icmp.len() as u16).to_be_bytes());
    f.extend([58, 255]);
    f.extend(src.octets());
    f.extend(dst.octets());
    f.extend(icmp);
    f
}

/// The EUI-64 link-local address the kernel gives an interface with `mac`.
pub fn link_local(mac: &str) -> Ipv6Addr {
    let m = mac_bytes(mac);
    Ipv6Addr::from([
        0xfe,
        0x80,
        0,
        0,
        0,
        0,
        0,
        0,
        m[0] ^ 2,
        m[1],
        m[2],
        0xff,
        0xfe,
        m[3],
        m[4],
        m[5],
    ])
}

/// In `bridge fdb show` output, the port a learned (not permanent) entry puts `mac` on.
pub fn learned_port(fdb_show: &str, mac: &str) -> Option<String> {
    fdb_show
        .lines()
        .filter(|l| l.starts_with(mac) && !l.contains("permanent"))
        .find_map(|l| {
            let mut w = l.split_whitespace();
            w.find(|x| *x == "dev")
                .and_then(|_| w.next())
                .map(str::to_string)
        })
}
