//! Sets as `nft -j list table FAMILY netguard` prints them (nft 1.0.6), for tests that
//! build a live listing from a planned table without a kernel.

use netguard::nft::render::raw_hex;
use netguard::plan::ruleset::{Elem, SetDef, SetKind};
use serde_json::{Value, json};

pub fn type_json(k: SetKind) -> Value {
    match k {
        SetKind::Ifname => json!("ifname"),
        SetKind::IfnamePair => json!(["ifname", "ifname"]),
        SetKind::IfnameV4 => json!(["ifname", "ipv4_addr"]),
        SetKind::IfnameV6 => json!(["ifname", "ipv6_addr"]),
        SetKind::IfnameMac => json!(["ifname", "ether_addr"]),
        SetKind::IfnameMacV4 => json!(["ifname", "ether_addr", "ipv4_addr"]),
        SetKind::IfnameMacV6 => json!(["ifname", "ether_addr", "ipv6_addr"]),
        SetKind::Mac => json!("ether_addr"),
        SetKind::V4 => json!("ipv4_addr"),
        SetKind::V6 => json!("ipv6_addr"),
        SetKind::Ports => json!("inet_service"),
        SetKind::ProtoPort => json!(["inet_proto", "inet_service"]),
        SetKind::V4ProtoPort => json!(["ipv4_addr", "inet_proto", "inet_service"]),
        SetKind::V6ProtoPort => json!(["ipv6_addr", "inet_proto", "inet_service"]),
        // `typeof` sets of raw payloads: nft lists the key as an integer of no length.
        SetKind::RawIfnameV6 | SetKind::RawIfnameMac => json!(["ifname", "integer"]),
        SetKind::RawV6 | SetKind::RawMac => json!("integer"),
    }
}

pub fn elem_json(e: &Elem) -> Value {
    match e {
        Elem::Ifname(i) => json!(i),
        Elem::IfnamePair(a, b) => json!({ "concat": [a, b] }),
        Elem::IfnameV4(i, a) => json!({ "concat": [i, a.to_string()] }),
        Elem::IfnameV6(i, a) => json!({ "concat": [i, a.to_string()] }),
        Elem::IfnameMac(i, m) => json!({ "concat": [i, m.to_string()] }),
        Elem::IfnameMacV4(i, m, a) => json!({ "concat": [i, m.to_string(), a.to_string()] }),
        Elem::IfnameMacV6(i, m, a) => json!({ "concat": [i, m.to_string(), a.to_string()] }),
        Elem::Mac(m) => json!(m.to_string()),
        Elem::V4(a) => json!(a.to_string()),
        Elem::V6(a) => json!(a.to_string()),
        Elem::Port(lo, hi) if lo == hi => json!(lo),
        Elem::Port(lo, hi) => json!({ "range": [lo, hi] }),
        Elem::ProtoPort(p, n) => json!({ "concat": [p.as_str(), n] }),
        Elem::V4ProtoPort(a, p, n) => json!({ "concat": [a.to_string(), p.as_str(), n] }),
        Elem::V6ProtoPort(a, p, n) => json!({ "concat": [a.to_string(), p.as_str(), n] }),
        // As nft prints a raw integer: a hexadecimal string past 64 bits, else a number.
        Elem::RawIfnameV6(i, a) => json!({ "concat": [i, raw_hex(&a.octets())] }),
        Elem::RawV6(a) => json!(raw_hex(&a.octets())),
        Elem::RawIfnameMac(i, m) => json!({ "concat": [i, int48(&m.0)] }),
        Elem::RawMac(m) => json!(int48(&m.0)),
    }
}

fn int48(b: &[u8; 6]) -> u64 {
    b.iter().fold(0, |n, x| n << 8 | u64::from(*x))
}

/// The `set` object: no `elem` key when empty, `flags` only on interval sets.
pub fn set_json(fam: &str, s: &SetDef, handle: Option<u64>) -> Value {
    let mut set = json!({
        "family": fam, "name": s.name, "table": "netguard", "type": type_json(s.kind),
    });
    if let Some(h) = handle {
        set["handle"] = json!(h);
    }
    if s.kind == SetKind::Ports {
        set["flags"] = json!(["interval"]);
    }
    if !s.elements.is_empty() {
        set["elem"] = Value::Array(s.elements.iter().map(elem_json).collect());
    }
    set
}
