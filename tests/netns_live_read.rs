//! The nfnetlink reader (`nft::netlink`) must see exactly what nft's JSON listing shows.
//! Runs in a private network namespace; needs root (skips loudly without, fails under CI=true).

use netguard::inventory::{PortProto, parse_inventory};
use netguard::nft::exec::{LibNftables, NftExec};
use netguard::nft::{Backend, Changes, FAMILIES, diff, live, netlink};
use netguard::plan::ruleset::{Elem, Family, SetKind};
use netguard::plan::{names, plan};
use netguard::policy::parse_policy;
use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

fn skip(why: &str) {
    if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") {
        panic!("netns_live_read: prerequisite missing under CI=true: {why}");
    }
    eprintln!("SKIP netns_live_read: {why}");
}

struct Ns(String);
impl Drop for Ns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "delete", &self.0])
            .status();
    }
}

const POLICY: &str = include_str!("../policy.example.toml");

fn inventory() -> String {
    let mut s = String::new();
    for (i, (name, labels, image)) in [
        ("web-1", "role = \"web\"", "nginx:1.27"),
        ("web-2", "role = \"web\"", "nginx:1.27"),
        (
            "api-1",
            "\"com.docker.compose.service\" = \"api\"",
            "example/api:2",
        ),
        ("db-1", "x = \"y\"", "postgres:16"),
        ("cache-1", "x = \"y\"", "redis:7"),
    ]
    .iter()
    .enumerate()
    {
        // Published ports of every kind: read back over netlink as nft lists them.
        let published = if *name == "db-1" {
            "published = [\"15432:5432/tcp\", \"192.0.2.2:15433:5432/tcp\", \
             \"[2001:db8::2]:15434:5432/udp\", \"15435:5432/sctp\"]\n"
        } else {
            ""
        };
        s += &format!(
            "[[container]]\nname = \"{name}\"\nimage = \"{image}\"\nlabels = {{ {labels} }}\n{published}\
             [[container.endpoint]]\nnetwork = \"shop-front\"\nbridge = \"br-front\"\nveth = \"veth{i}\"\n\
             ipv4 = \"10.10.0.{}\"\nipv6 = \"fd10::{}\"\nmac = \"02:42:0a:0a:00:{:02x}\"\n",
            i + 10,
            i + 10,
            i + 10
        );
    }
    s
}

fn strip(mut t: live::LiveTable) -> live::LiveTable {
    for c in t.chains.values_mut() {
        for r in &mut c.rules {
            r.expr.clear();
        }
    }
    t
}

#[test]
fn netlink_reader_equals_nft_json_listing() {
    if unsafe { libc::geteuid() } != 0 {
        return skip("not root");
    }
    let name = format!("nglr{}", std::process::id());
    if !Command::new("ip")
        .args(["netns", "add", &name])
        .status()
        .is_ok_and(|s| s.success())
    {
        return skip("cannot create a network namespace");
    }
    let ns = Ns(name);
    let path = format!("/run/netns/{}", ns.0);
    std::thread::spawn(move || {
        let f = std::fs::File::open(&path).expect("netns file");
        nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        let Ok(lib) = LibNftables::load() else {
            return skip("libnftables.so.1 missing");
        };
        let json = |f: Family| -> Option<live::LiveTable> {
            match lib.run(&format!("list table {} netguard", f.as_str())) {
                // The nfnetlink reader leaves nft's JSON statements out.
                Ok(out) => Some(strip(live::parse_table(&out).expect("parse"))),
                Err(e) if e.to_string().contains("No such file") => None,
                Err(e) => panic!("{e}"),
            }
        };
        // Nothing there yet: both say "absent".
        for f in FAMILIES {
            assert_eq!(netlink::read_table(f).expect("read"), None);
            assert_eq!(json(f), None);
        }
        let policy = parse_policy(Path::new("policy.example.toml"), POLICY).expect("policy");
        let inv = parse_inventory(Path::new("inv.toml"), &inventory()).expect("inventory");
        let p = plan(&policy, &inv);
        let backend = Backend::new(Box::new(LibNftables::load().expect("lib"))).netlink_reads(true);
        backend.reconcile(&p.ruleset).expect("apply");
        // A hand-made set netguard cannot read, and a foreign element type.
        lib.run("add set inet netguard odd { type inet_service; }")
            .expect("odd set");
        lib.run("add element inet netguard odd { 80 }")
            .expect("odd elem");
        // A port set with the edge cases of interval boundaries: a range from 0, adjacent
        // ranges, a range up to 65535 (no end boundary in the kernel).
        lib.run("add set inet netguard ports_edges { type inet_service; flags interval; }")
            .expect("port set");
        lib.run("add element inet netguard ports_edges { 0-10, 22, 23-24, 8080, 65000-65535 }")
            .expect("port elements");
        for f in FAMILIES {
            let a = netlink::read_table(f)
                .expect("netlink read")
                .expect("table present");
            let b = json(f).expect("table present");
            assert_eq!(a, b, "{f:?}");
            assert!(!a.sets.is_empty() && !a.chains.is_empty());
            // A set read with the kind and elements the plan gave it, and not an empty one.
            let read_as_planned = |set: &str| {
                let want = p
                    .ruleset
                    .table(f)
                    .and_then(|t| t.set(set))
                    .expect("planned");
                assert_eq!(a.sets[set].kind, Some(want.kind), "{set}");
                assert_eq!(a.sets[set].elements, want.elements, "{set}");
                assert!(!want.elements.is_empty(), "{set}: nothing planned");
            };
            if f == Family::Inet {
                assert_eq!(
                    a.sets["ports_edges"].elements,
                    [
                        Elem::Port(0, 10),
                        Elem::Port(22, 22),
                        Elem::Port(23, 24),
                        Elem::Port(8080, 8080),
                        Elem::Port(65000, 65535)
                    ]
                    .into()
                );
                // db-1's published ports, in the kinds and sets the plan gave them.
                for set in ["published_w", "published_4", "published_6"] {
                    read_as_planned(set);
                }
                assert!(
                    a.sets["published_w"]
                        .elements
                        .contains(&Elem::ProtoPort(PortProto::Sctp, 15435))
                );
                // The example policy's one list of two ports (5432/tcp, 6379/tcp).
                let planned: Vec<_> = p
                    .ruleset
                    .table(f)
                    .expect("inet")
                    .sets
                    .iter()
                    .filter(|s| s.kind == SetKind::Ports)
                    .collect();
                assert_eq!(planned.len(), 1);
                assert_eq!(a.sets[&planned[0].name].elements, planned[0].elements);
            }
            if f == Family::Bridge {
                // The raw-keyed sets (declared in nft's text syntax, listed by nft's JSON
                // as `integer` keys) are read as the kinds and elements the plan gave them.
                for (set, _) in names::RAW_SETS {
                    read_as_planned(set);
                }
            }
        }
        // The structure alone (no elements) equals nft's terse listing.
        for f in FAMILIES {
            let a = netlink::read_structure(f)
                .expect("netlink read")
                .expect("present");
            let b = strip(
                live::parse_table(
                    &lib.run_terse(&format!("list table {} netguard", f.as_str()))
                        .expect("terse"),
                )
                .expect("parse"),
            );
            assert_eq!(a, b, "structure {f:?}");
        }
        // Element writes over nfnetlink: every key type, adds and deletes in one batch; the
        // JSON listing must show exactly the result; a failing batch changes nothing.
        let v4 = |s: &str| s.parse::<std::net::Ipv4Addr>().unwrap();
        let v6 = |s: &str| s.parse::<std::net::Ipv6Addr>().unwrap();
        let mac = |s: &str| s.parse::<netguard::inventory::Mac>().unwrap();
        let adds: Vec<(Family, String, Elem)> = vec![
            (
                Family::Inet,
                "all_4".into(),
                Elem::IfnameV4("br-front".into(), v4("10.10.9.1")),
            ),
            (
                Family::Inet,
                "all_6".into(),
                Elem::IfnameV6("br-front".into(), v6("fd10::9:1")),
            ),
            (
                Family::Inet,
                "bridges".into(),
                Elem::IfnamePair("br-x".into(), "br-x".into()),
            ),
            (
                Family::Bridge,
                "veths".into(),
                Elem::Ifname("vethnew0123456".into()),
            ),
            (Family::Bridge, "addrs_4".into(), Elem::V4(v4("10.10.9.1"))),
            (Family::Bridge, "addrs_6".into(), Elem::V6(v6("fd10::9:1"))),
            (
                Family::Bridge,
                "bind_mac".into(),
                Elem::IfnameMac("vethnew0123456".into(), mac("02:42:0a:0a:09:01")),
            ),
            (
                Family::Bridge,
                "macs".into(),
                Elem::Mac(mac("02:42:0a:0a:09:01")),
            ),
            (
                Family::Bridge,
                "genuine_4".into(),
                Elem::IfnameMacV4(
                    "vethnew0123456".into(),
                    mac("02:42:0a:0a:09:01"),
                    v4("10.10.9.1"),
                ),
            ),
            (
                Family::Bridge,
                "genuine_6".into(),
                Elem::IfnameMacV6(
                    "vethnew0123456".into(),
                    mac("02:42:0a:0a:09:01"),
                    v6("fd10::9:1"),
                ),
            ),
            (
                Family::Bridge,
                "nd_bind_6".into(),
                Elem::RawIfnameV6("vethnew0123456".into(), v6("fd10::9:1")),
            ),
            (
                Family::Bridge,
                "nd_addrs_6".into(),
                Elem::RawV6(v6("fd10::9:1")),
            ),
            (
                Family::Bridge,
                "nd_bind_mac".into(),
                Elem::RawIfnameMac("vethnew0123456".into(), mac("02:42:0a:0a:09:01")),
            ),
            (
                Family::Bridge,
                "nd_macs".into(),
                Elem::RawMac(mac("02:42:0a:0a:09:01")),
            ),
            (
                Family::Inet,
                "published_w".into(),
                Elem::ProtoPort(PortProto::Udp, 25000),
            ),
            (
                Family::Inet,
                "published_4".into(),
                Elem::V4ProtoPort(v4("198.51.100.1"), PortProto::Tcp, 65535),
            ),
            (
                Family::Inet,
                "published_6".into(),
                Elem::V6ProtoPort(v6("2001:db8::9"), PortProto::Sctp, 1),
            ),
        ];
        let before = backend.read_for_diff().expect("read");
        let dels: Vec<(Family, String, Elem)> =
            before[&Family::Inet].as_ref().unwrap().sets["all_4"]
                .elements
                .iter()
                .take(2)
                .map(|e| (Family::Inet, "all_4".to_string(), e.clone()))
                .collect();
        let group = |v: &[(Family, String, Elem)]| {
            let mut m: BTreeMap<Family, BTreeMap<String, Vec<Elem>>> = BTreeMap::new();
            for (f, s, e) in v {
                m.entry(*f)
                    .or_default()
                    .entry(s.clone())
                    .or_default()
                    .push(e.clone());
            }
            m
        };
        let change = Changes::elements_only(group(&adds), group(&dels));
        assert!(change.only_elements());
        backend.apply(&change).expect("netlink element batch");
        let mut want = before.clone();
        for (f, s, e) in &adds {
            want.get_mut(f)
                .unwrap()
                .as_mut()
                .unwrap()
                .sets
                .get_mut(s)
                .unwrap()
                .elements
                .insert(e.clone());
        }
        for (f, s, e) in &dels {
            want.get_mut(f)
                .unwrap()
                .as_mut()
                .unwrap()
                .sets
                .get_mut(s)
                .unwrap()
                .elements
                .remove(e);
        }
        for f in FAMILIES {
            assert_eq!(json(f), want[&f].clone(), "after element batch {f:?}");
        }
        // Adding again succeeds; deleting a missing element fails and changes nothing.
        backend
            .apply(&Changes::elements_only(group(&adds), BTreeMap::new()))
            .expect("re-add");
        let missing = Changes::elements_only(
            group(&[(Family::Bridge, "addrs_4".into(), Elem::V4(v4("10.10.9.2")))]),
            group(&dels),
        );
        assert!(
            backend.apply(&missing).is_err(),
            "deleting missing elements must fail"
        );
        for f in FAMILIES {
            assert_eq!(json(f), want[&f].clone(), "after failed batch {f:?}");
        }
        // The diff through netlink reads repairs the odd set and is then empty.
        backend.reconcile(&p.ruleset).expect("repair");
        let live = backend.read_for_diff().expect("read");
        assert!(diff(&p.ruleset, &live).is_empty());
        backend.uninstall().expect("uninstall");
    })
    .join()
    .expect("test thread");
    drop(ns);
}

/// Element transactions keep their socket open between calls (closing one costs an RCU grace
/// period); a thread that moves to another namespace must still write there, not into the
/// namespace its cached socket was opened in.
#[test]
fn element_transactions_follow_the_threads_namespace() {
    if unsafe { libc::geteuid() } != 0 {
        return skip("not root");
    }
    let names: Vec<Ns> = ["a", "b"]
        .iter()
        .map(|s| Ns(format!("ngtx{s}{}", std::process::id())))
        .collect();
    for ns in &names {
        let ok = Command::new("ip")
            .args(["netns", "add", &ns.0])
            .status()
            .is_ok_and(|s| s.success())
            && Command::new("ip")
                .args(["netns", "exec", &ns.0, "nft"])
                .arg("add table inet netguard; add set inet netguard all_4 { type ifname . ipv4_addr; }")
                .status()
                .is_ok_and(|s| s.success());
        if !ok {
            return skip("cannot create a namespace with a table");
        }
    }
    let paths: Vec<String> = names
        .iter()
        .map(|n| format!("/run/netns/{}", n.0))
        .collect();
    std::thread::spawn(move || {
        let add = |last: u8| {
            let e = [Elem::IfnameV4(
                "br0".into(),
                std::net::Ipv4Addr::new(10, 0, 0, last),
            )];
            netlink::apply_elements(&[netlink::ElementOp {
                family: Family::Inet,
                set: "all_4",
                add: true,
                elems: &e,
            }])
            .expect("transaction");
        };
        for (i, p) in paths.iter().enumerate() {
            let f = std::fs::File::open(p).expect("netns file");
            nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
            add(i as u8 + 1);
            add(i as u8 + 11);
        }
    })
    .join()
    .expect("thread");
    for (i, ns) in names.iter().enumerate() {
        let out = Command::new("ip")
            .args([
                "netns", "exec", &ns.0, "nft", "list", "set", "inet", "netguard", "all_4",
            ])
            .output()
            .expect("nft");
        let text = String::from_utf8_lossy(&out.stdout);
        let mine = [i + 1, i + 11].map(|l| format!("10.0.0.{l}"));
        let other = [2 - i, 12 - i].map(|l| format!("10.0.0.{l}"));
        for m in &mine {
            assert!(
                text.contains(&format!("{m},")) || text.contains(&format!("{m} ")),
                "{} lacks {m}: {text}",
                ns.0
            );
        }
        for o in &other {
            assert!(
                !text.contains(&format!("{o},")) && !text.contains(&format!("{o} ")),
                "{} has {o}: {text}",
                ns.0
            );
        }
    }
}
