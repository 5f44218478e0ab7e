//! Kernel tests for the MAC binding: in the netns fixture, a container that sends frames
//! with a neighbour's MAC (raw frames from an AF_PACKET socket, or its own interface set to
//! that MAC) must not move the neighbour's forwarding entry and so must not cut it off its
//! allowed flows; a group with `mac_binding = false` may send from a MAC of its own
//! choosing, never from another's; a container whose forwarding entry is gone is still
//! reached, and only it; IPv6 neighbour discovery (targets, link-layer options, router
//! advertisements) cannot poison a neighbour's cache or routes.
//!
//! Needs root, `ip`, `nft`, `ping`, `bridge` (`sudo -E cargo test --test netns_mac`);
//! prints SKIP without them, fails under `CI=true`.
//!
//! Roles (see `Topology::standard`): api-1 is the victim, web-1 its allowed client
//! (tcp/8080, udp/5353, icmp), lonely the attacker (allowed only to api-1 on tcp/7777).

#[path = "../netns-fixtures/mod.rs"]
mod netns;

use netns::fixture::*;
use netns::frames::*;
use netns::probe::*;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

const POLICY: &str = r#"
[settings]
networks = ["front", "back"]

[groups.web]
match = { label = { role = "web" } }

[groups.api]
match = { name = "api-*" }

[[allow]]
from = "web"
to = "api"
ports = ["8080/tcp", "5353/udp", "icmp"]

[[allow]]
from = "*"
to = "api"
ports = ["7777/tcp"]
"#;

/// `POLICY` with lonely in a group that opts out of the MAC binding.
const POLICY_OPT_OUT: &str = r#"
[settings]
networks = ["front", "back"]

[groups.web]
match = { label = { role = "web" } }

[groups.api]
match = { name = "api-*" }

[groups.vrrp]
match = { name = "lonely" }
mac_binding = false

[[allow]]
from = "web"
to = "api"
ports = ["8080/tcp", "5353/udp", "icmp"]

[[allow]]
from = "*"
to = "api"
ports = ["7777/tcp"]
"#;

/// The MAC VRRP uses for virtual router 7: owned by no endpoint.
const VRRP_MAC: &str = "00:00:5e:00:01:07";

fn setup(test: &str) -> Option<Fixture> {
    if !prerequisites_with(test, &["bridge"]) {
        return None;
    }
    Some(Fixture::new(&Topology::standard()))
}

/// The attacker, the victim's allowed client and the victim (the roles above).
fn roles(fx: &Fixture) -> (Container, Container, Container) {
    (
        fx.container("lonely").clone(),
        fx.container("web-1").clone(),
        fx.container("api-1").clone(),
    )
}

fn apply(fx: &Fixture, policy: &str) {
    let p = fx.write_file("policy.toml", policy);
    let out = fx.netguard(&p, &fx.inventory, &["apply"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "netguard apply: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn probe(from: &str, to: &str, kind: &str, v6: bool) -> Probe {
    Probe {
        from: from.into(),
        to: to.into(),
        kind: Kind::parse(kind),
        family: if v6 { Family::V6 } else { Family::V4 },
    }
}

/// The victim's allowed flows, over IPv4 and IPv6.
fn victim_flows() -> Vec<Probe> {
    let mut p = vec![];
    for v6 in [false, true] {
        for kind in ["tcp/8080", "udp/5353", "icmp"] {
            p.push(probe("web-1", "api-1", kind, v6));
        }
    }
    p
}

/// Runs `probes` `rounds` times (each failure retried once, as the matrix does) and
/// returns the ones that failed in any round.
fn failing(fx: &Fixture, probes: &[Probe], rounds: usize) -> Vec<String> {
    let mut bad = vec![];
    for r in 0..rounds {
        let want = vec![true; probes.len()];
        let got = run_expecting(fx, probes, &want, ProbeOpts::default());
        for (p, ok) in probes.iter().zip(got) {
            if !ok {
                bad.push(format!("round {r}: {p}"));
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    bad
}

/// Which bridge port the bridge's forwarding table puts `mac` on, if any.
fn fdb_port(fx: &Fixture, bridge: &str, mac: &str) -> Option<String> {
    learned_port(&fx.host_ok(&["bridge", "fdb", "show", "br", bridge]), mac)
}

/// Collects, for `dur`, whether any frame seen on `eth0` in namespace `ns` (whoever it
/// was addressed to) contains `needle`.
fn sniff(ns: &str, needle: &[u8], dur: Duration) -> JoinHandle<bool> {
    let (ns, needle) = (ns.to_string(), needle.to_vec());
    std::thread::spawn(move || {
        enter_netns(&ns).unwrap_or_else(|e| panic!("setns {ns}: {e}"));
        // SAFETY: as in `flood`; the buffer outlives every recv into it.
        unsafe {
            let proto = (libc::ETH_P_ALL as u16).to_be() as i32;
            let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW, proto);
            assert!(fd >= 0, "AF_PACKET: {}", std::io::Error::last_os_error());
            let tv = libc::timeval {
                tv_sec: 0,
                tv_usec: 100_000,
            };
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&tv as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as u32,
            );
            let mut buf = vec![0u8; 65536];
            let mut seen = false;
            let end = Instant::now() + dur;
            while Instant::now() < end && !seen {
                let n = libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), 0);
                if n > 0 {
                    seen = buf[..n as usize]
                        .windows(needle.len())
                        .any(|w| w == needle.as_slice());
                }
            }
            libc::close(fd);
            seen
        }
    })
}

/// A background `ping` from a container, killed on drop.
struct Pinger(Child);

impl Pinger {
    fn start(c: &Container, dst: std::net::IpAddr) -> Pinger {
        let child = Command::new("ip")
            .args(["netns", "exec", &c.ns, "ping", "-i", "0.2", "-W", "1"])
            .arg(dst.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn ping");
        Pinger(child)
    }
}

impl Drop for Pinger {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Raw frames whose Ethernet source is api-1's MAC (ARP with either sender hardware
/// address, and IPv6), sent from lonely's namespace while web-1 uses its allowed flows.
#[test]
fn raw_frames_with_a_neighbours_mac_do_not_cut_it_off() {
    let Some(fx) = setup("raw_frames_with_a_neighbours_mac_do_not_cut_it_off") else {
        return;
    };
    let (lonely, web1, api1) = roles(&fx);
    apply(&fx, POLICY);
    let bad = failing(&fx, &victim_flows(), 1);
    assert!(bad.is_empty(), "before the attack: {bad:?}");

    let stop = Arc::new(AtomicBool::new(false));
    let frames = vec![
        arp_frame(&api1.mac, &api1.mac, lonely.ipv4, web1.ipv4),
        arp_frame(&api1.mac, &lonely.mac, lonely.ipv4, web1.ipv4),
        ip6_frame(&api1.mac, lonely.ipv6),
    ];
    let attacker = flood(&lonely.ns, frames, stop.clone());
    std::thread::sleep(Duration::from_millis(300));
    let bad = failing(&fx, &victim_flows(), 3);
    let port = fdb_port(&fx, &api1.bridge, &api1.mac);
    stop.store(true, Ordering::Relaxed);
    let sent = attacker.join().expect("attacker thread");
    assert!(sent > 30, "the attacker sent only {sent} frames");
    assert!(
        bad.is_empty(),
        "api-1 was cut off by frames carrying its MAC from lonely: {bad:?}\n\
         api-1's MAC is on {port:?}\n{}",
        fx.ruleset()
    );
    assert_eq!(
        port.as_deref(),
        Some(api1.veth.as_str()),
        "api-1's MAC moved"
    );
}

/// The one-lookup path for genuine frames (`iifname . ether saddr . ip saddr @genuine_4`,
/// first in the bridge `prerouting`) accepts only a frame whose port, MAC and address all
/// belong to one endpoint. web-1 (allowed to api-1 on udp/5353, so only the bridge table
/// judges) sends raw datagrams from its own port: with its own MAC and another container's
/// address (web-2's, allowed to api-1 too), and with its own address and another MAC
/// (web-2's, and one no endpoint owns). None reaches api-1; the genuine one does. Then a
/// wrong fast path is put first by hand, once matching only `iifname . ip saddr` and once
/// only `iifname . ether saddr`: the spoofed datagrams get through, so this test would catch
/// either.
#[test]
fn the_genuine_frame_path_accepts_only_a_bound_port_mac_and_address_together() {
    let Some(fx) = setup("the_genuine_frame_path_accepts_only_a_bound_port_mac_and_address") else {
        return;
    };
    let (web1, web2, api1) = (
        fx.container("web-1").clone(),
        fx.container("web-2").clone(),
        fx.container("api-1").clone(),
    );
    apply(&fx, POLICY);
    let pre = fx.host_ok(&["nft", "list", "chain", "bridge", "netguard", "prerouting"]);
    let first: Vec<&str> = pre
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("ether") || l.starts_with("iifname") || l.starts_with("meta"))
        .take(2)
        .collect();
    assert!(
        first.len() == 2
            && first[0].starts_with("iifname . ether saddr . ip saddr @genuine_4 accept")
            // ICMPv6 (58, `ipv6-icmp` where /etc/protocols names it) takes the long path.
            && first[1].starts_with("meta l4proto != ")
            && first[1].contains(" iifname . ether saddr . ip6 saddr @genuine_6 accept"),
        "the genuine-frame rules are not first in prerouting:\n{pre}"
    );
    const UNOWNED: &str = "02:00:00:00:be:ef";
    // (tag, Ethernet source, source address) for each family.
    let cases = |v6: bool| {
        vec![
            ("own-mac-other-addr", web1.mac.clone(), web2.addr(v6)),
            ("own-addr-neighbours-mac", web2.mac.clone(), web1.addr(v6)),
            ("own-addr-unowned-mac", UNOWNED.to_string(), web1.addr(v6)),
        ]
    };
    // Sends every case (and the genuine datagram) from web-1's port; returns the tags of
    // those api-1 received.
    let round = |name: &str| -> Vec<String> {
        let mut frames = vec![];
        let mut tags = vec![];
        for v6 in [false, true] {
            let fam = if v6 { "v6" } else { "v4" };
            let mut all = cases(v6);
            all.push(("genuine", web1.mac.clone(), web1.addr(v6)));
            for (tag, mac, src) in all {
                let needle = format!("{name}-{tag}-{fam}");
                frames.push(udp_frame(
                    &mac,
                    &api1.mac,
                    src,
                    api1.addr(v6),
                    5353,
                    needle.as_bytes(),
                ));
                tags.push(needle);
            }
        }
        send_frames(&web1.ns, frames);
        std::thread::sleep(Duration::from_millis(400));
        tags.into_iter()
            .filter(|t| api1.got(t.as_bytes()))
            .collect()
    };
    let got = round("fast");
    assert_eq!(
        got,
        vec!["fast-genuine-v4", "fast-genuine-v6"],
        "only the genuine datagrams may reach api-1\n{}",
        fx.ruleset()
    );
    // Forget what the bridge learned from the spoofed sources (none should have been).
    assert_eq!(
        fdb_port(&fx, &web2.bridge, &web2.mac).as_deref(),
        Some(web2.veth.as_str()),
        "web-2's MAC moved"
    );

    // A wrong fast path on the address alone lets the foreign MACs through, ...
    fx.nft(
        "insert rule bridge netguard prerouting ether type ip iifname . ip saddr @bind_4 accept\n\
         insert rule bridge netguard prerouting ether type ip6 iifname . ip6 saddr @bind_6 accept\n",
    );
    let got = round("by-addr");
    for fam in ["v4", "v6"] {
        for tag in ["own-addr-neighbours-mac", "own-addr-unowned-mac"] {
            assert!(
                got.contains(&format!("by-addr-{tag}-{fam}")),
                "control: a fast path on (port, address) alone did not let {tag} {fam} \
                 through, the test proves nothing: {got:?}"
            );
        }
    }
    // ... and one on the MAC alone another container's address.
    apply(&fx, POLICY);
    fx.nft(
        "insert rule bridge netguard prerouting ether type ip iifname . ether saddr @bind_mac accept\n\
         insert rule bridge netguard prerouting ether type ip6 iifname . ether saddr @bind_mac accept\n",
    );
    let got = round("by-mac");
    for fam in ["v4", "v6"] {
        assert!(
            got.contains(&format!("by-mac-own-mac-other-addr-{fam}")),
            "control: a fast path on (port, MAC) alone did not let another address {fam} \
             through, the test proves nothing: {got:?}"
        );
    }
}

/// lonely (as with NET_ADMIN) sets api-1's MAC on its own interface and pings.
#[test]
fn a_container_taking_a_neighbours_mac_does_not_cut_it_off() {
    let Some(fx) = setup("a_container_taking_a_neighbours_mac_does_not_cut_it_off") else {
        return;
    };
    let (lonely, web1, api1) = roles(&fx);
    apply(&fx, POLICY);
    let bad = failing(&fx, &victim_flows(), 1);
    assert!(bad.is_empty(), "before the attack: {bad:?}");

    fx.ip_in(
        "lonely",
        &["link", "set", "dev", "eth0", "address", &api1.mac],
    );
    let _p4 = Pinger::start(&lonely, web1.addr(false));
    let _p6 = Pinger::start(&lonely, web1.addr(true));
    std::thread::sleep(Duration::from_millis(500));
    let bad = failing(&fx, &victim_flows(), 3);
    let port = fdb_port(&fx, &api1.bridge, &api1.mac);
    assert!(
        bad.is_empty(),
        "api-1 was cut off by lonely taking its MAC: {bad:?}\napi-1's MAC is on {port:?}\n{}",
        fx.ruleset()
    );
    assert_eq!(
        port.as_deref(),
        Some(api1.veth.as_str()),
        "api-1's MAC moved"
    );
    // lonely itself is cut off: every frame it sends now carries a MAC not its own.
    let cut = run_probes(
        &fx,
        &[
            probe("lonely", "api-1", "tcp/7777", false),
            probe("lonely", "api-1", "tcp/7777", true),
        ],
        ProbeOpts::default(),
    );
    assert_eq!(cut, vec![false, false], "lonely still reaches api-1");
}

/// `mac_binding = false`: lonely may send from a MAC no endpoint owns (as VRRP does), and
/// still not from api-1's. Without the opt-out the same MAC cuts lonely off.
#[test]
fn mac_binding_opt_out_allows_a_foreign_mac_but_never_a_neighbours() {
    let Some(fx) = setup("mac_binding_opt_out_allows_a_foreign_mac_but_never_a_neighbours") else {
        return;
    };
    let (lonely, api1) = (
        fx.container("lonely").clone(),
        fx.container("api-1").clone(),
    );
    fx.ip_in(
        "lonely",
        &["link", "set", "dev", "eth0", "address", VRRP_MAC],
    );
    fx.ip_in("api-1", &["neigh", "flush", "dev", "eth0"]);
    let lonely_to_api = [
        probe("lonely", "api-1", "tcp/7777", false),
        probe("lonely", "api-1", "tcp/7777", true),
    ];

    apply(&fx, POLICY);
    let got = run_probes(&fx, &lonely_to_api, ProbeOpts::default());
    assert_eq!(
        got,
        vec![false, false],
        "bound by default: a MAC not its own gets lonely nowhere"
    );

    apply(&fx, POLICY_OPT_OUT);
    let status = {
        let p = fx.write_file("policy.toml", POLICY_OPT_OUT);
        let out = fx.netguard(&p, &fx.inventory, &["status"]);
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert!(
        status.contains("mac_binding = false") && status.contains("vrrp"),
        "status does not show the opt-out:\n{status}"
    );
    let bad = failing(&fx, &lonely_to_api, 1);
    assert!(
        bad.is_empty(),
        "opted out, lonely is still held to its MAC: {bad:?}\n{}",
        fx.ruleset()
    );

    // Opted out, it still cannot take api-1's MAC.
    let stop = Arc::new(AtomicBool::new(false));
    let attacker = flood(
        &lonely.ns,
        vec![
            arp_frame(&api1.mac, &api1.mac, lonely.ipv4, api1.ipv4),
            ip6_frame(&api1.mac, lonely.ipv6),
        ],
        stop.clone(),
    );
    std::thread::sleep(Duration::from_millis(300));
    let bad = failing(&fx, &victim_flows(), 2);
    let port = fdb_port(&fx, &api1.bridge, &api1.mac);
    stop.store(true, Ordering::Relaxed);
    attacker.join().expect("attacker thread");
    assert!(
        bad.is_empty(),
        "an opted-out container cut api-1 off with its MAC: {bad:?}\n{}",
        fx.ruleset()
    );
    assert_eq!(
        port.as_deref(),
        Some(api1.veth.as_str()),
        "api-1's MAC moved"
    );
}

/// api-1's veth learns nothing, as after its forwarding entry aged out: frames for it are
/// flooded to every port. It is still reached, and the flooded copies reach no one else.
#[test]
fn a_container_whose_forwarding_entry_aged_out_is_still_reached_and_only_it() {
    let Some(fx) = setup("a_container_whose_forwarding_entry_aged_out_is_still_reached") else {
        return;
    };
    let (lonely, web1, api1) = roles(&fx);
    fx.host_ok(&[
        "ip",
        "link",
        "set",
        "dev",
        &api1.veth,
        "type",
        "bridge_slave",
        "learning",
        "off",
    ]);
    // Forget what was learned already (the permanent entries of the port stay).
    let _ = fx.host(&[
        "bridge", "fdb", "del", &api1.mac, "dev", &api1.veth, "master",
    ]);
    let send = |tag: &str| {
        let needle = format!("flooded-{tag}");
        let watch = sniff(&lonely.ns, needle.as_bytes(), Duration::from_millis(1500));
        std::thread::sleep(Duration::from_millis(200));
        for v6 in [false, true] {
            send_udp_from(&web1, web1.addr(v6), api1.addr(v6), 5353, needle.as_bytes());
        }
        let seen = watch.join().expect("sniffer");
        (seen, needle)
    };
    // Control: without netguard the flooded copies do reach lonely's interface.
    let (seen, _) = send("before");
    assert!(seen, "control: unknown unicast was not flooded to lonely");

    apply(&fx, POLICY);
    assert_eq!(
        fdb_port(&fx, &api1.bridge, &api1.mac),
        None,
        "api-1's MAC was learned"
    );
    let bad = failing(&fx, &victim_flows(), 2);
    assert!(
        bad.is_empty(),
        "api-1 unreachable without an FDB entry: {bad:?}"
    );
    let (seen, needle) = send("after");
    assert!(
        !seen,
        "{needle}: a copy of web-1's traffic for api-1 reached lonely\n{}",
        fx.ruleset()
    );
    assert!(
        api1.got(needle.as_bytes()),
        "{needle}: api-1 did not get it"
    );
}

/// The frames a container (lonely) sends to poison web-1's neighbour cache and routes over
/// IPv6, each from lonely's own port and MAC, so only the neighbour discovery checks can
/// stop them: an advertisement of api-1's address at lonely's MAC (the target is another
/// container's); one of lonely's own address at api-1's MAC (a link-layer option with
/// another container's MAC); a solicitation from lonely's link-local address with api-1's
/// MAC as its source option; an advertisement of lonely's address whose link-layer option
/// (a MAC nobody owns) comes second, after a nonce; a router advertisement naming lonely
/// a default router.
fn nd_poison(lonely: &Container, web1: &Container, api1: &Container) -> Vec<Vec<u8>> {
    let ll = link_local(&lonely.mac);
    let tll = |mac: &str| nd_option(2, &mac_bytes(mac));
    let na = |target, options: Vec<u8>| {
        icmp6_frame(
            &lonely.mac,
            &web1.mac,
            lonely.ipv6,
            web1.ipv6,
            nd_body(136, 0x20, target, &options),
        )
    };
    let mut second = nd_option(14, &[1, 2, 3, 4, 5, 6]);
    second.extend(tll(VRRP_MAC));
    vec![
        na(api1.ipv6, tll(&lonely.mac)),
        na(lonely.ipv6, tll(&api1.mac)),
        icmp6_frame(
            &lonely.mac,
            &web1.mac,
            ll,
            web1.ipv6,
            nd_body(135, 0, web1.ipv6, &nd_option(1, &mac_bytes(&api1.mac))),
        ),
        na(lonely.ipv6, second),
        icmp6_frame(
            &lonely.mac,
            "33:33:00:00:00:01",
            ll,
            "ff02::1".parse().expect("all nodes"),
            // No source option: it would set lonely's link-local entry back to its own MAC.
            ra_body(&[]),
        ),
    ]
}

/// What of `nd_poison` web-1's kernel took: each line one poisoned entry or route.
fn poisoned(fx: &Fixture, lonely: &Container, api1: &Container) -> Vec<String> {
    let neigh = |a: std::net::Ipv6Addr| fx.ip_in("web-1", &["-6", "neigh", "show", &a.to_string()]);
    let mut bad = vec![];
    let at_api1 = neigh(api1.ipv6);
    if at_api1.contains(&lonely.mac) {
        bad.push(format!("api-1's address at lonely's MAC: {at_api1}"));
    }
    let at_lonely = neigh(lonely.ipv6);
    if at_lonely.contains(&api1.mac) || at_lonely.contains(VRRP_MAC) {
        bad.push(format!("lonely's address at another MAC: {at_lonely}"));
    }
    let at_ll = neigh(link_local(&lonely.mac));
    if at_ll.contains(&api1.mac) {
        bad.push(format!(
            "lonely's link-local address at api-1's MAC: {at_ll}"
        ));
    }
    let routes = fx.ip_in("web-1", &["-6", "route", "show", "default"]);
    if routes.contains(&link_local(&lonely.mac).to_string()) {
        bad.push(format!("a default route through lonely: {routes}"));
    }
    bad
}

/// IPv6's ARP poisoning, from a container with Docker's default capabilities: lonely sends
/// `nd_poison`'s frames (raw, from its own port and MAC, so the MAC and address binding
/// pass every one of them) while web-1 uses its flows to api-1. Without netguard web-1's
/// kernel takes every one (the control: each would fail the test on its own); with it,
/// none, and api-1 stays reached over IPv6.
#[test]
fn neighbour_discovery_cannot_poison_a_neighbours_cache() {
    let Some(fx) = setup("neighbour_discovery_cannot_poison_a_neighbours_cache") else {
        return;
    };
    let (lonely, web1, api1) = roles(&fx);
    let frames = nd_poison(&lonely, &web1, &api1);
    // Entries for api-1 and lonely first: an unsolicited advertisement only updates one.
    let warm_up = || {
        for to in [&api1, &lonely] {
            send_udp_from(&web1, web1.addr(true), to.addr(true), 5353, b"warm-up");
        }
        std::thread::sleep(Duration::from_millis(300));
    };
    let attack = || {
        warm_up();
        let stop = Arc::new(AtomicBool::new(false));
        let attacker = flood(&lonely.ns, frames.clone(), stop.clone());
        std::thread::sleep(Duration::from_millis(300));
        let v6: Vec<Probe> = victim_flows()
            .into_iter()
            .filter(|p| p.family == Family::V6)
            .collect();
        let flows = failing(&fx, &v6, 2);
        stop.store(true, Ordering::Relaxed);
        let sent = attacker.join().expect("attacker thread");
        assert!(sent > 20, "the attacker sent only {sent} frames");
        flows
    };

    attack();
    let without = poisoned(&fx, &lonely, &api1);
    assert_eq!(
        without.len(),
        4,
        "control: without netguard every poisoning should take: {without:?}"
    );
    fx.ip_in("web-1", &["-6", "neigh", "flush", "dev", "eth0"]);
    fx.ip_in("web-1", &["-6", "route", "flush", "proto", "ra"]);
    assert!(poisoned(&fx, &lonely, &api1).is_empty());

    apply(&fx, POLICY);
    let bad_flows = attack();
    let with = poisoned(&fx, &lonely, &api1);
    assert!(
        with.is_empty() && bad_flows.is_empty(),
        "with netguard: poisoned {with:?}, victim flows failing {bad_flows:?}\n{}",
        fx.ruleset()
    );
    // The drops are netguard's: the nd chain counted them.
    let nd = fx.host_ok(&["nft", "list", "chain", "bridge", "netguard", "nd"]);
    let dropped: u64 = nd
        .lines()
        .filter_map(|l| l.split("packets ").nth(1))
        .filter_map(|r| r.split_whitespace().next()?.parse::<u64>().ok())
        .sum();
    assert!(dropped > 0, "the nd chain dropped nothing:\n{nd}");
}

/// Issue 19's alternative to the bridge `postrouting` check, tried and rejected: no
/// unknown-unicast flooding toward managed ports plus a static sticky FDB entry per
/// endpoint. Learning is trustworthy with the MAC binding, and neighbour discovery is
/// bound (the test above), but a neighbour entry can still point at the wrong MAC: a
/// sender may address another container's MAC itself (two colluding containers: a frame
/// for an allowed peer's address sent to a denied neighbour's MAC), and an entry outlives
/// the move of its address to another container. web-1's entry for api-1 is set to
/// lonely's MAC by hand (as in `netns_matrix`'s misdelivery test). `postrouting` drops
/// web-1's traffic for api-1 at lonely's veth (the address is bound to api-1's); without
/// it the sticky FDB delivers it to lonely. So `postrouting` stays.
#[test]
fn the_sticky_fdb_alternative_lets_a_wrong_neighbour_entry_misdeliver() {
    let Some(fx) = setup("the_sticky_fdb_alternative_lets_a_wrong_neighbour_entry_misdeliver")
    else {
        return;
    };
    let (lonely, web1, api1) = roles(&fx);
    // lonely answers for api-1's address once traffic for it arrives at its interface.
    fx.ip_in(
        "lonely",
        &[
            "addr",
            "add",
            &format!("{}/128", api1.ipv6),
            "dev",
            "eth0",
            "nodad",
        ],
    );
    apply(&fx, POLICY);
    fx.pin_neighbour("web-1", api1.ipv6.into(), &lonely.mac);
    // Let the bridge learn lonely's MAC on its port.
    send_frames(&lonely.ns, vec![ip6_frame(&lonely.mac, lonely.ipv6)]);
    // Sends to api-1; true when lonely received any of it.
    let attack = |tag: &str| -> bool {
        let needle = format!("misdelivered-{tag}");
        for _ in 0..5 {
            send_udp_from(
                &web1,
                web1.addr(true),
                api1.addr(true),
                5353,
                needle.as_bytes(),
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        std::thread::sleep(Duration::from_millis(300));
        lonely.got(needle.as_bytes())
    };

    // netguard as built: the traffic stops at lonely's veth.
    assert!(
        !attack("postrouting"),
        "with netguard's postrouting check lonely received api-1's traffic\n{}",
        fx.ruleset()
    );

    // The alternative: postrouting gone, sticky static FDB entries, no unknown-unicast flood.
    fx.host_ok(&[
        "nft",
        "delete",
        "chain",
        "bridge",
        "netguard",
        "postrouting",
    ]);
    for c in &fx.containers {
        fx.host_ok(&["bridge", "link", "set", "dev", &c.veth, "flood", "off"]);
        fx.host_ok(&[
            "bridge", "fdb", "replace", &c.mac, "dev", &c.veth, "master", "static", "sticky",
        ]);
    }
    assert!(
        attack("sticky-fdb"),
        "the sticky-FDB alternative kept api-1's traffic from lonely: it would do instead of \
         postrouting\n{}",
        fx.ruleset()
    );
}

/// A raw-keyed set netguard declares in nft's text syntax, changed by hand to another type
/// (a typed `ifname . ipv6_addr`, which the advertisement check cannot use), is re-declared
/// by the next `apply`: the chains that use it are rewritten, the advertisement check works
/// again, and a second `apply` finds nothing to do. The nft binary declares them too.
#[test]
fn a_neighbour_discovery_set_changed_by_hand_is_repaired() {
    let Some(fx) = setup("a_neighbour_discovery_set_changed_by_hand_is_repaired") else {
        return;
    };
    let (lonely, web1, api1) = roles(&fx);
    apply(&fx, POLICY);
    fx.nft(
        "flush chain bridge netguard nd\n\
         delete set bridge netguard nd_bind_6\n\
         add set bridge netguard nd_bind_6 { type ifname . ipv6_addr; }",
    );
    let p = fx.write_file("policy.toml", POLICY);
    let out = fx.netguard(&p, &fx.inventory, &["diff", "--objects"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("- set nd_bind_6") && text.contains("+ set nd_bind_6"),
        "diff does not re-create the set: {text}"
    );
    apply(&fx, POLICY);
    let set = fx.host_ok(&["nft", "list", "set", "bridge", "netguard", "nd_bind_6"]);
    // As nft lists a raw key: api-1's address as one hexadecimal integer.
    let raw = netguard::nft::render::raw_hex(&api1.ipv6.octets());
    assert!(
        set.contains("typeof iifname . @th,64,128") && set.contains(&raw),
        "{set}"
    );
    let again = fx.netguard(&p, &fx.inventory, &["apply"]);
    assert!(
        String::from_utf8_lossy(&again.stdout).contains("no changes")
            || String::from_utf8_lossy(&again.stdout).contains("in sync"),
        "a second apply changed something: {}",
        String::from_utf8_lossy(&again.stdout)
    );
    // The same from scratch through the nft binary (`NETGUARD_NFT=process`), which reads
    // the text declarations without its JSON flag.
    let uninstalled = fx.netguard(&p, &fx.inventory, &["uninstall"]);
    assert_eq!(uninstalled.status.code(), Some(0));
    let (pol, inv) = (p.display().to_string(), fx.inventory.display().to_string());
    let bin = netguard_bin();
    let process = output(
        "ip",
        &[
            "netns",
            "exec",
            &fx.host_ns,
            "env",
            "NETGUARD_NFT=process",
            &bin,
            "-c",
            &pol,
            "--inventory",
            &inv,
            "apply",
        ],
        None,
    );
    assert_eq!(
        process.status.code(),
        Some(0),
        "apply through the nft binary: {}",
        String::from_utf8_lossy(&process.stderr)
    );
    let set = fx.host_ok(&["nft", "list", "set", "bridge", "netguard", "nd_bind_6"]);
    assert!(
        set.contains("typeof iifname . @th,64,128") && set.contains(&raw),
        "through the nft binary: {set}"
    );
    // The check works again: lonely's advertisement of api-1's address is dropped.
    send_udp_from(&web1, web1.addr(true), api1.addr(true), 5353, b"warm-up");
    std::thread::sleep(Duration::from_millis(300));
    send_frames(&lonely.ns, nd_poison(&lonely, &web1, &api1)[..1].to_vec());
    std::thread::sleep(Duration::from_millis(200));
    let bad = poisoned(&fx, &lonely, &api1);
    assert!(bad.is_empty(), "{bad:?}\n{}", fx.ruleset());
}
