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
    /// The rule's statements as nft lists them, for readers that need the structure (which
    /// flows a live table allows: `ops::access`). Empty when read over nfnetlink.
    pub expr: Vec<LiveStmt>,
}

/// One statement of a live rule, reduced to what netguard's readers tell apart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LiveStmt {
    Accept,
    Jump(String),
    /// `counter`, `log`, `limit`: no bearing on what the rule lets through.
    Passive,
    Match {
        /// nft's operator as listed: `==`, `!=`, `in`, ...
        op: String,
        left: LiveExpr,
        right: LiveValue,
    },
    /// Anything else (another verdict, a `match` without both sides, ...).
    Other,
}

/// The left side of a match.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LiveExpr {
    /// `meta KEY` (`iifname`, `oifname`, `l4proto`).
    Meta(String),
    /// `PROTOCOL FIELD` (`ip saddr`, `tcp dport`). A missing part is empty.
    Payload {
        protocol: String,
        field: String,
    },
    /// `A . B . ...`
    Concat(Vec<LiveExpr>),
    Other,
}

/// The right side of a match.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LiveValue {
    /// A string as listed: a name, a keyword (`echo-request`), or `@set`.
    Str(String),
    /// Ports: a number, a range, or an anonymous set of those.
    Ports(Vec<(u16, u16)>),
    Other,
}

impl LiveValue {
    pub fn as_str(&self) -> Option<&str> {
        match self {
            LiveValue::Str(s) => Some(s),
            _ => None,
        }
    }

    /// The named set `@NAME` refers to.
    pub fn set_ref(&self) -> Option<&str> {
        self.as_str().and_then(|s| s.strip_prefix('@'))
    }
}

impl LiveExpr {
    fn from_json(v: &Value) -> LiveExpr {
        let text = |v: Option<&Value>| v.and_then(Value::as_str).map(str::to_string);
        if let Some(parts) = v.get("concat").and_then(Value::as_array) {
            return LiveExpr::Concat(parts.iter().map(LiveExpr::from_json).collect());
        }
        if let Some(m) = v.get("meta") {
            return match text(m.get("key")) {
                Some(k) => LiveExpr::Meta(k),
                None => LiveExpr::Other,
            };
        }
        if let Some(p) = v.get("payload") {
            return LiveExpr::Payload {
                protocol: text(p.get("protocol")).unwrap_or_default(),
                field: text(p.get("field")).unwrap_or_default(),
            };
        }
        LiveExpr::Other
    }
}

impl LiveValue {
    fn from_json(v: &Value) -> LiveValue {
        if let Some(s) = v.as_str() {
            return LiveValue::Str(s.to_string());
        }
        let ranges = match v.get("set").and_then(Value::as_array) {
            Some(items) => items.iter().map(port_range).collect(),
            None => port_range(v).map(|r| vec![r]),
        };
        ranges.map_or(LiveValue::Other, LiveValue::Ports)
    }
}

impl LiveStmt {
    /// One statement of nft's JSON listing.
    pub fn from_json(st: &Value) -> LiveStmt {
        if st.get("accept").is_some() {
            return LiveStmt::Accept;
        }
        if st.get("counter").is_some() || st.get("log").is_some() || st.get("limit").is_some() {
            return LiveStmt::Passive;
        }
        if let Some(j) = st.get("jump") {
            return match j.get("target").and_then(Value::as_str) {
                Some(t) => LiveStmt::Jump(t.to_string()),
                None => LiveStmt::Other,
            };
        }
        let Some(m) = st.get("match") else {
            return LiveStmt::Other;
        };
        let (Some(left), Some(right)) = (m.get("left"), m.get("right")) else {
            return LiveStmt::Other;
        };
        LiveStmt::Match {
            op: m
                .get("op")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string(),
            left: LiveExpr::from_json(left),
            right: LiveValue::from_json(right),
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("unexpected nft listing: {0}")]
pub struct ParseError(String);

fn kind_of(t: &Value, interval: bool, name: &str) -> Option<SetKind> {
    let s = |v: &Value| v.as_str().map(str::to_string);
    // A raw-keyed set lists as `integer` (after `ifname`), with no length: its name says
    // which one it is.
    if let Some(raw) = crate::plan::names::raw_kind(name) {
        let listed = match raw {
            SetKind::RawIfnameV6 | SetKind::RawIfnameMac => t
                .as_array()
                .is_some_and(|p| p.len() == 2 && p[0] == "ifname" && p[1] == "integer"),
            _ => t == "integer",
        };
        return (listed && !interval).then_some(raw);
    }
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
                ["ifname", "ether_addr", "ipv4_addr"] => Some(SetKind::IfnameMacV4),
                ["ifname", "ether_addr", "ipv6_addr"] => Some(SetKind::IfnameMacV6),
                ["inet_proto", "inet_service"] => Some(SetKind::ProtoPort),
                ["ipv4_addr", "inet_proto", "inet_service"] => Some(SetKind::V4ProtoPort),
                ["ipv6_addr", "inet_proto", "inet_service"] => Some(SetKind::V6ProtoPort),
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
    if matches!(
        kind,
        SetKind::ProtoPort | SetKind::V4ProtoPort | SetKind::V6ProtoPort
    ) {
        return proto_port_elem(kind, v);
    }
    if let Some(e) = raw_elem_of(kind, v) {
        return e;
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
        (SetKind::IfnameMacV4, [i, m, a]) => Some(Elem::IfnameMacV4(
            i.to_string(),
            m.parse().ok()?,
            a.parse().ok()?,
        )),
        (SetKind::IfnameMacV6, [i, m, a]) => Some(Elem::IfnameMacV6(
            i.to_string(),
            m.parse().ok()?,
            a.parse().ok()?,
        )),
        (SetKind::Mac, [m]) => m.parse().ok().map(Elem::Mac),
        (SetKind::V4, [a]) => a.parse().ok().map(Elem::V4),
        (SetKind::V6, [a]) => a.parse().ok().map(Elem::V6),
        _ => None,
    }
}

/// A raw-keyed set's element as nft's JSON prints it: the interface name, then the key as an
/// integer (a number when it fits in 64 bits, else a hexadecimal string). `None` when
/// `kind` is not raw; `Some(None)` when the element is not one netguard writes.
fn raw_elem_of(kind: SetKind, v: &Value) -> Option<Option<Elem>> {
    let int = |v: &Value, bytes: usize| -> Option<Vec<u8>> {
        let n: u128 = match v {
            Value::Number(n) => u128::from(n.as_u64()?),
            Value::String(s) => match s.strip_prefix("0x") {
                Some(hex) => u128::from_str_radix(hex, 16).ok()?,
                None => s.parse().ok()?,
            },
            _ => return None,
        };
        let all = n.to_be_bytes();
        let (high, low) = all.split_at(16 - bytes);
        high.iter().all(|b| *b == 0).then(|| low.to_vec())
    };
    let pair = || -> Option<(String, &Value)> {
        match v.get("concat").and_then(Value::as_array)?.as_slice() {
            [i, k] => Some((i.as_str()?.to_string(), k)),
            _ => None,
        }
    };
    let v6 = |b: Vec<u8>| <[u8; 16]>::try_from(b).ok().map(Ipv6Addr::from);
    let mac = |b: Vec<u8>| <[u8; 6]>::try_from(b).ok().map(Mac);
    Some(match kind {
        SetKind::RawIfnameV6 => {
            pair().and_then(|(i, k)| Some(Elem::RawIfnameV6(i, v6(int(k, 16)?)?)))
        }
        SetKind::RawV6 => int(v, 16).and_then(v6).map(Elem::RawV6),
        SetKind::RawIfnameMac => {
            pair().and_then(|(i, k)| Some(Elem::RawIfnameMac(i, mac(int(k, 6)?)?)))
        }
        SetKind::RawMac => int(v, 6).and_then(mac).map(Elem::RawMac),
        _ => return None,
    })
}

/// A published-port element as nft's JSON prints it: `{"concat": ["tcp", 15432]}`, with the
/// address first for a bound one. nft prints a protocol it has no name for as a number.
fn proto_port_elem(kind: SetKind, v: &Value) -> Option<Elem> {
    let parts = v.get("concat").and_then(Value::as_array)?;
    let proto = |v: &Value| match (v.as_str(), v.as_u64()) {
        (Some("tcp"), _) | (_, Some(6)) => Some(PortProto::Tcp),
        (Some("udp"), _) | (_, Some(17)) => Some(PortProto::Udp),
        (Some("sctp"), _) | (_, Some(132)) => Some(PortProto::Sctp),
        _ => None,
    };
    let port = |v: &Value| u16::try_from(v.as_u64()?).ok();
    match (kind, parts.as_slice()) {
        (SetKind::ProtoPort, [p, n]) => Some(Elem::ProtoPort(proto(p)?, port(n)?)),
        (SetKind::V4ProtoPort, [a, p, n]) => Some(Elem::V4ProtoPort(
            a.as_str()?.parse().ok()?,
            proto(p)?,
            port(n)?,
        )),
        (SetKind::V6ProtoPort, [a, p, n]) => Some(Elem::V6ProtoPort(
            a.as_str()?.parse().ok()?,
            proto(p)?,
            port(n)?,
        )),
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
        "input" => Some(Hook::Input),
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
            let mut kind = set.get("type").and_then(|t| kind_of(t, interval, &name));
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
                    .map(|ex| ex.iter().map(LiveStmt::from_json).collect())
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
