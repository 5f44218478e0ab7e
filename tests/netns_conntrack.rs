//! The in-process conntrack cutter (ctnetlink) against the kernel: in a private network
//! namespace, real UDP, TCP and ICMP flows over IPv4 and IPv6 create entries; deleting by
//! address removes exactly the entries from or to those addresses, and the `conntrack` tool
//! (an independent reader) agrees.
//!
//! Needs root, `ip`, `nft`, `ping`, `conntrack`; prints SKIP without them, fails under
//! `CI=true`.

#[path = "../netns-fixtures/mod.rs"]
mod netns;

use netguard::conntrack::{Conntrack, Ctnetlink, Entry};
use netns::fixture::*;
use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr, TcpListener, UdpSocket};
use std::process::Command;

struct Ns(String);
impl Drop for Ns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "delete", &self.0])
            .status();
    }
}

fn prereqs() -> bool {
    prerequisites_with("netns_conntrack", &["conntrack"])
}

fn sh(args: &[&str]) {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

const V4: [&str; 4] = ["10.77.0.1", "10.77.0.2", "10.77.0.3", "10.77.0.4"];
const V6: [&str; 4] = ["fd77::1", "fd77::2", "fd77::3", "fd77::4"];

/// Entries as (proto, src, dst) from the `conntrack` tool, in namespace `ns`.
fn tool_listing(ns: &str) -> BTreeSet<(String, IpAddr, IpAddr)> {
    let mut out = BTreeSet::new();
    for f in ["ipv4", "ipv6"] {
        let o = Command::new("ip")
            .args(["netns", "exec", ns, "conntrack", "-L", "-f", f])
            .output()
            .unwrap();
        for line in String::from_utf8_lossy(&o.stdout).lines() {
            let field = |k: &str| {
                line.split_whitespace()
                    .find_map(|w| w.strip_prefix(k))
                    .and_then(|v| v.parse::<IpAddr>().ok())
            };
            if let (Some(p), Some(s), Some(d)) =
                (line.split_whitespace().next(), field("src="), field("dst="))
            {
                out.insert((p.to_string(), s, d));
            }
        }
    }
    out
}

fn ours(entries: &[Entry]) -> BTreeSet<(String, IpAddr, IpAddr)> {
    entries
        .iter()
        .map(|e| (e.proto.clone(), e.src, e.dst))
        .collect()
}

/// A TCP connection from `src` (std cannot bind a client socket, tokio's TcpSocket can).
fn tcp_from(src: IpAddr, to: SocketAddr) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let s = if src.is_ipv4() {
            tokio::net::TcpSocket::new_v4()
        } else {
            tokio::net::TcpSocket::new_v6()
        }
        .unwrap();
        s.bind(SocketAddr::new(src, 0)).unwrap();
        let c = s.connect(to).await.unwrap();
        drop(c);
    });
}

/// From every address to the next one (a ring): UDP, TCP and ICMP.
fn make_flows(ns: &str) {
    let ns2 = ns.to_string();
    in_netns(ns, move || {
        for set in [V4, V6] {
            let addrs: Vec<IpAddr> = set.iter().map(|a| a.parse().unwrap()).collect();
            for i in 0..addrs.len() {
                let (src, dst) = (addrs[i], addrs[(i + 1) % addrs.len()]);
                let rx = UdpSocket::bind(SocketAddr::new(dst, 0)).unwrap();
                let tx = UdpSocket::bind(SocketAddr::new(src, 0)).unwrap();
                tx.send_to(b"x", rx.local_addr().unwrap()).unwrap();
                let l = TcpListener::bind(SocketAddr::new(dst, 0)).unwrap();
                let to = l.local_addr().unwrap();
                tcp_from(src, to);
            }
        }
    });
    for set in [V4, V6] {
        for i in 0..set.len() {
            let (src, dst) = (set[i], set[(i + 1) % set.len()]);
            sh(&[
                "ip", "netns", "exec", &ns2, "ping", "-c", "1", "-W", "1", "-I", src, dst,
            ]);
        }
    }
}

#[test]
fn deleting_by_address_removes_exactly_those_entries() {
    if !prereqs() {
        return;
    }
    let ns = Ns(format!("ngct{}", std::process::id()));
    sh(&["ip", "netns", "add", &ns.0]);
    sh(&["ip", "-n", &ns.0, "link", "set", "lo", "up"]);
    for a in V4 {
        sh(&[
            "ip",
            "-n",
            &ns.0,
            "addr",
            "add",
            &format!("{a}/32"),
            "dev",
            "lo",
        ]);
    }
    for a in V6 {
        sh(&[
            "ip",
            "-n",
            &ns.0,
            "addr",
            "add",
            &format!("{a}/128"),
            "dev",
            "lo",
            "nodad",
        ]);
    }
    // Conntrack tracks a namespace's packets once a rule there needs it.
    let table = "add table inet ngct; add chain inet ngct out { type filter hook output priority 0; }; add rule inet ngct out ct state new accept";
    sh(&["ip", "netns", "exec", &ns.0, "nft", table]);
    make_flows(&ns.0);

    let before = in_netns(&ns.0, || Ctnetlink.list());
    let tool_before = tool_listing(&ns.0);
    assert_eq!(
        ours(&before),
        tool_before,
        "ctnetlink dump equals `conntrack -L`"
    );
    for proto in ["udp", "tcp", "icmp", "icmpv6"] {
        assert!(
            before.iter().any(|e| e.proto == proto),
            "no {proto} entry was created: {before:?}"
        );
    }
    for v in [V4, V6] {
        assert!(
            before.iter().any(|e| e.src.to_string() == v[1]),
            "flows from {} exist",
            v[1]
        );
    }

    // Cut 10.77.0.2 and fd77::3: every entry from or to them, nothing else.
    let doomed: Vec<IpAddr> = [V4[1], V6[2]].iter().map(|a| a.parse().unwrap()).collect();
    let d = doomed.clone();
    in_netns(&ns.0, move || Ctnetlink.delete_addresses(&d));

    let after = tool_listing(&ns.0);
    let want: BTreeSet<_> = tool_before
        .iter()
        .filter(|(_, s, d)| !doomed.contains(s) && !doomed.contains(d))
        .cloned()
        .collect();
    assert!(want.len() < tool_before.len(), "something was to be cut");
    assert!(!want.is_empty(), "something was to be kept");
    assert_eq!(after, want);
    assert_eq!(ours(&in_netns(&ns.0, || Ctnetlink.list())), want);

    // One entry by its key, then deleting again (already gone) is harmless.
    let one = in_netns(&ns.0, || Ctnetlink.list())
        .into_iter()
        .find(|e| e.proto == "icmpv6")
        .expect("an icmpv6 entry left");
    let one2 = one.clone();
    in_netns(&ns.0, move || {
        Ctnetlink.delete(&one2);
        Ctnetlink.delete(&one2);
    });
    let last = tool_listing(&ns.0);
    assert!(!last.contains(&(one.proto.clone(), one.src, one.dst)));
    assert_eq!(last.len(), want.len() - 1);
}
