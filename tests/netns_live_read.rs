//! The nfnetlink reader (`nft::netlink`) must see exactly what nft's JSON listing shows.
//! Runs in a private network namespace; needs root (skips loudly without, fails under CI=true).

use netguard::inventory::parse_inventory;
use netguard::nft::exec::{LibNftables, NftExec};
use netguard::nft::{Backend, FAMILIES, diff, live, netlink};
use netguard::plan::plan;
use netguard::plan::ruleset::Family;
use netguard::policy::parse_policy;
use std::path::Path;
use std::process::Command;

fn skip(why: &str) {
    if std::env::var("CI").as_deref() == Ok("true") {
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
        s += &format!(
            "[[container]]\nname = \"{name}\"\nimage = \"{image}\"\nlabels = {{ {labels} }}\n\
             [[container.endpoint]]\nnetwork = \"shop-front\"\nbridge = \"br-front\"\nveth = \"veth{i}\"\n\
             ipv4 = \"10.10.0.{}\"\nipv6 = \"fd10::{}\"\n",
            i + 10,
            i + 10
        );
    }
    s
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
                Ok(out) => Some(live::parse_table(&out).expect("parse")),
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
        for f in FAMILIES {
            let a = netlink::read_table(f)
                .expect("netlink read")
                .expect("table present");
            let b = json(f).expect("table present");
            assert_eq!(a, b, "{f:?}");
            assert!(!a.sets.is_empty() && !a.chains.is_empty());
        }
        // The diff through netlink reads repairs the odd set and is then empty.
        backend.reconcile(&p.ruleset).expect("repair");
        let live = backend.read_live().expect("read");
        assert!(diff(&p.ruleset, &live).is_empty());
        backend.uninstall().expect("uninstall");
    })
    .join()
    .expect("test thread");
    drop(ns);
}
