//! netguard's tables as the kernel has them, parsed from nft's JSON listing.

use crate::plan::ruleset::*;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, Ipv6Addr};

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LiveTable {
    pub sets: BTreeMap<String, LiveSet>,
    pub chains: BTreeMap<String, LiveChain>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveSet {
    /// `None` when the set has a type netguard never creates (hand-made): it gets replaced.
    pub kind: Option<SetKind>,
    pub elements: BTreeSet<Elem>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveChain {
    pub base: Option<BaseChain>,
    pub rules: Vec<LiveRule>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveRule {
    pub handle: Option<u64>,
    pub comment: Option<String>,
    /// Packets counted by the rule's counter, when it has one.
    pub packets: Option<u64>,
    pub bytes: Option<u64>,
    /// The rule's statements as nft lists them (JSON), for readers that need the
    /// structure (e.g. which flows a live table allows: `crate::access`).
    pub expr: Vec<Value>,
}

#[derive(Debug, thiserror::Error)]
#[error("unexpected nft listing: {0}")]
pub struct ParseError(String);

fn kind_of(t: &Value, interval: bool) -> Option<SetKind> {
    let s = |v: &Value| v.as_str().map(str::to_string);
    match t {
        Value::String(one) if interval => (one == "inet_service").then_some(SetKind::Ports),
        _ if interval => None,
        Value::String(one) => match one.as_str() {
            "ifname" => Some(SetKind::Ifname),
            "ipv4_addr" => Some(SetKind::V4),
            "ether_addr" => Some(SetKind::Mac),
            "ipv6_addr" => Some(SetKind::V6),
            _ => None,
        },
        Value::Array(parts) => {
            let parts: Vec<String> = parts.iter().filter_map(s).collect();
            match parts
                .iter()
                .map(String::as_str)
                .collect::<Vec<_>>()
                .as_slice()
            {
                ["ifname", "ifname"] => Some(SetKind::IfnamePair),
                ["ifname", "ipv4_addr"] => Some(SetKind::IfnameV4),
                ["ifname", "ipv6_addr"] => Some(SetKind::IfnameV6),
                ["ifname", "ether_addr"] => Some(SetKind::IfnameMac),
                _ => None,
            }
        }
        _ => None,
    }
}

fn elem_of(kind: SetKind, v: &Value) -> Option<Elem> {
    // Elements with extra properties come wrapped as {"elem": {"val": ...}}.
    if let Some(inner) = v.get("elem").and_then(|e| e.get("val")) {
        return elem_of(kind, inner);
    }
    if kind == SetKind::Ports {
        return port_range(v).map(|(lo, hi)| Elem::Port(lo, hi));
    }
    let parts: Vec<&str> = match v.get("concat").and_then(Value::as_array) {
        Some(c) => c.iter().filter_map(Value::as_str).collect(),
        None => v.as_str().into_iter().collect(),
    };
    match (kind, parts.as_slice()) {
        (SetKind::Ifname, [i]) => Some(Elem::Ifname(i.to_string())),
        (SetKind::IfnamePair, [a, b]) => Some(Elem::IfnamePair(a.to_string(), b.to_string())),
        (SetKind::IfnameV4, [i, a]) => a
            .parse::<Ipv4Addr>()
            .ok()
            .map(|a| Elem::IfnameV4(i.to_string(), a)),
        (SetKind::IfnameV6, [i, a]) => a
            .parse::<Ipv6Addr>()
            .ok()
            .map(|a| Elem::IfnameV6(i.to_string(), a)),
        (SetKind::IfnameMac, [i, m]) => m.parse().ok().map(|m| Elem::IfnameMac(i.to_string(), m)),
        (SetKind::Mac, [m]) => m.parse().ok().map(Elem::Mac),
        (SetKind::V4, [a]) => a.parse().ok().map(Elem::V4),
        (SetKind::V6, [a]) => a.parse().ok().map(Elem::V6),
        _ => None,
    }
}

/// A port or a port range as nft's JSON prints it, in a set element or on the right of a
/// `dport` match: `8080` or `{"range": [9000, 9010]}`.
pub fn port_range(v: &Value) -> Option<(u16, u16)> {
    let port = |v: &Value| u16::try_from(v.as_u64()?).ok();
    match v.get("range").and_then(Value::as_array) {
        Some(r) => Some((port(r.first()?)?, port(r.get(1)?)?)),
        None => port(v).map(|p| (p, p)),
    }
}

fn hook_of(v: &Value) -> Option<Hook> {
    match v.as_str()? {
        "prerouting" => Some(Hook::Prerouting),
        "forward" => Some(Hook::Forward),
        "postrouting" => Some(Hook::Postrouting),
        _ => None,
    }
}

/// Parses `nft -j list table FAMILY netguard` output.
pub fn parse_table(json: &str) -> Result<LiveTable, ParseError> {
    let doc: Value = serde_json::from_str(json).map_err(|e| ParseError(e.to_string()))?;
    let objects = doc
        .get("nftables")
        .and_then(Value::as_array)
        .ok_or_else(|| ParseError("no `nftables` array".into()))?;
    let mut t = LiveTable::default();
    for o in objects {
        if let Some(set) = o.get("set") {
            let name = set
                .get("name")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string();
            let interval = set
                .get("flags")
                .and_then(Value::as_array)
                .is_some_and(|f| f.iter().any(|f| f == "interval"));
            let mut kind = set.get("type").and_then(|t| kind_of(t, interval));
            let elements = match (kind, set.get("elem").and_then(Value::as_array)) {
                (Some(k), Some(es)) => {
                    let parsed: BTreeSet<Elem> = es.iter().filter_map(|e| elem_of(k, e)).collect();
                    // An element netguard cannot read (a prefix, a range, ...) was not made
                    // by netguard and could never be deleted one by one: replace the set.
                    if es.iter().any(|e| elem_of(k, e).is_none()) {
                        kind = None;
                    }
                    parsed
                }
                _ => BTreeSet::new(),
            };
            t.sets.insert(name, LiveSet { kind, elements });
        } else if let Some(ch) = o.get("chain") {
            let name = ch
                .get("name")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string();
            let base = match (
                ch.get("hook").and_then(hook_of),
                ch.get("prio").and_then(Value::as_i64),
            ) {
                (Some(hook), Some(p)) => Some(BaseChain {
                    hook,
                    priority: p as i32,
                }),
                _ => None,
            };
            t.chains
                .entry(name)
                .or_insert(LiveChain {
                    base,
                    rules: vec![],
                })
                .base = base;
        } else if let Some(r) = o.get("rule") {
            let chain = r
                .get("chain")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string();
            let counter = r
                .get("expr")
                .and_then(Value::as_array)
                .and_then(|ex| ex.iter().find_map(|s| s.get("counter")));
            let rule = LiveRule {
                handle: r.get("handle").and_then(Value::as_u64),
                comment: r.get("comment").and_then(Value::as_str).map(str::to_string),
                packets: counter
                    .and_then(|c| c.get("packets"))
                    .and_then(Value::as_u64),
                bytes: counter.and_then(|c| c.get("bytes")).and_then(Value::as_u64),
                expr: r
                    .get("expr")
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default(),
            };
            t.chains
                .entry(chain)
                .or_insert(LiveChain {
                    base: None,
                    rules: vec![],
                })
                .rules
                .push(rule);
        }
    }
    Ok(t)
}
