//! What the kernel side answers, through netguard's readers: nft's JSON listing
//! (`nft::live::parse_table`), the nfnetlink dumps of netguard's tables
//! (`nft::netlink::{sets_of, table_of}`), the framing of nfnetlink answers
//! (`nfnetlink::Answer::feed`, as `Sock::call` receives them) and ctnetlink dump messages
//! (`conntrack::parse_entry`); each read state is then diffed against the example plan and
//! the resulting batch rendered, as `apply` and the daemon do.
//!
//! Input: starting with `{`, `[` or whitespace, nft JSON text. Else the first byte picks:
//! odd, nfnetlink: the rest is records `[kind][len lo][len hi][len bytes]`, kind % 4 =
//! 0 chain message, 1 rule message, 2 set message, 3 element message of the last set;
//! 0 mod 8, a ctnetlink message: the second byte is the address family, the rest the body;
//! 4 mod 8, datagrams of the admission hold's queue (`nfqueue::parse_packets`), judged by
//! the hold against the example plan's bindings (interface index i names the i-th name
//! of those bindings): a packet released must come from the veth its address is bound to;
//! 2 mod 4, received buffers of an answer: the second byte picks the request's flags, the
//! next four its sequence number, the rest is records as above (kind ignored), one per
//! `recv`; a complete answer's messages are then read as set messages.
#![no_main]

use libfuzzer_sys::fuzz_target;
use netguard::daemon::hold::{Bindings, Held, Named};
use netguard::nfnetlink::Answer;
use netguard::nft::live::{LiveTable, parse_table};
use netguard::nft::netlink::{sets_of, table_of};
use netguard::nft::{LiveState, diff};
use netguard::plan::Plan;
use netguard::plan::ruleset::Elem;
use netguard::plan::ruleset::Family;
use netguard_fuzz::{example_inventory, example_policy};
use std::collections::BTreeSet;
use std::net::IpAddr;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

static PLAN: OnceLock<Plan> = OnceLock::new();
static NAMES: OnceLock<(Bindings, Vec<String>, BTreeSet<(String, IpAddr)>)> = OnceLock::new();

/// The hold's view of the example plan, the interface names in it, and its (veth, address)
/// bindings.
fn hold_view() -> &'static (Bindings, Vec<String>, BTreeSet<(String, IpAddr)>) {
    NAMES.get_or_init(|| {
        let rs = &plan().ruleset;
        let mut names = BTreeSet::new();
        let mut bound = BTreeSet::new();
        for (_, set, e) in rs.elements() {
            match e {
                Elem::IfnameV4(n, a) => {
                    if set == "bind_4" {
                        bound.insert((n.clone(), IpAddr::V4(a)));
                    }
                    names.insert(n);
                }
                Elem::IfnameV6(n, a) => {
                    if set == "bind_6" {
                        bound.insert((n.clone(), IpAddr::V6(a)));
                    }
                    names.insert(n);
                }
                _ => {}
            }
        }
        (Bindings::of(rs), names.into_iter().collect(), bound)
    })
}

fn plan() -> &'static Plan {
    PLAN.get_or_init(|| netguard::plan::plan(&example_policy(), &example_inventory()))
}

/// Reconciling against whatever was read: the diff, its summary and its batch.
fn reconcile(t: LiveTable) {
    let live: LiveState = [(Family::Inet, Some(t.clone())), (Family::Bridge, Some(t))].into();
    let changes = diff(&plan().ruleset, &live);
    let _ = changes.summary(false);
    let _ = changes.element_counts();
    serde_json::to_value(changes.batch()).unwrap_or_else(|e| panic!("batch must render: {e}"));
}

fn records(mut b: &[u8]) -> Vec<(u8, &[u8])> {
    let mut out = Vec::new();
    while b.len() >= 3 {
        let kind = b[0];
        let len = u16::from_le_bytes([b[1], b[2]]) as usize;
        let end = (3 + len).min(b.len());
        out.push((kind, &b[3..end]));
        b = &b[end..];
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let Some(&first) = data.first() else { return };
    if matches!(first, b'{' | b'[' | b' ' | b'\n' | b'\t' | b'\r') {
        let Ok(text) = std::str::from_utf8(data) else {
            return;
        };
        if let Ok(t) = parse_table(text) {
            reconcile(t);
        }
    } else if first % 2 == 1 {
        let (mut chains, mut rules) = (Vec::new(), Vec::new());
        let mut sets: Vec<(Vec<u8>, Vec<Vec<u8>>)> = Vec::new();
        for (kind, bytes) in records(&data[1..]) {
            match kind % 4 {
                0 => chains.push(bytes.to_vec()),
                1 => rules.push(bytes.to_vec()),
                2 => sets.push((bytes.to_vec(), Vec::new())),
                _ => {
                    if let Some(s) = sets.last_mut() {
                        s.1.push(bytes.to_vec());
                    }
                }
            }
        }
        let mut with_elements = Vec::new();
        for (m, elems) in sets {
            for (name, kind) in sets_of(&[m]) {
                with_elements.push((name, kind, elems.clone()));
            }
        }
        reconcile(table_of(&chains, &rules, with_elements));
    } else if first % 4 == 2 {
        let flags = match data.get(1).copied().unwrap_or(0) % 3 {
            0 => 0x300, // NLM_F_DUMP
            1 => 0x4,   // NLM_F_ACK
            _ => 0,
        };
        let seq = u32::from_le_bytes(
            data.get(2..6)
                .and_then(|b| b.try_into().ok())
                .unwrap_or_default(),
        );
        let mut answer = Answer::default();
        for (_, buf) in records(data.get(6..).unwrap_or_default()) {
            if let Some(done) = answer.feed(buf, seq, flags) {
                if done.is_ok() {
                    let sets = sets_of(&answer.msgs);
                    let _ = table_of(&[], &answer.msgs, vec![]);
                    assert!(sets.len() <= answer.msgs.len());
                }
                break;
            }
        }
    } else if first % 8 == 4 {
        let (b, names, bound) = hold_view();
        let name = |i: u32| names.get(i as usize % names.len().max(1)).cloned();
        let (now, hold) = (Instant::now(), Duration::from_millis(1000));
        let mut held = Held::default();
        for p in netguard::nfqueue::parse_packets(&data[1..]) {
            let n = Named::of(&p, name);
            if b.releases(&n) {
                let (Some(port), Some(s)) = (&n.port_in, n.saddr) else {
                    panic!("released without a port or a source: {n:?}");
                };
                assert!(
                    bound.contains(&(port.clone(), s)),
                    "released from a port its source is not bound to: {n:?}"
                );
            }
            let _ = held.push(now, n);
        }
        let _ = held.due(now, hold, b);
        let _ = held.due(now + hold, hold, b);
        assert!(held.is_empty(), "everything is judged after the hold");
    } else {
        let family = data.get(1).copied().unwrap_or(2);
        let body = data.get(2..).unwrap_or_default();
        if let Some(e) = netguard::conntrack::parse_entry(family, body) {
            let _ = netguard::conntrack::revoked(plan(), &[e], None);
        }
    }
});
