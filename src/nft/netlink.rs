//! Reading netguard's tables straight from the kernel over nfnetlink, without libnftables.
//!
//! `nft list table` in nftables 1.0.6 builds its whole cache (every rule and every element
//! of every set, anonymous ones included, each converted through GMP) and prints JSON that
//! we parse again: ≈ 150–200 ms for 1,000 containers, which made a no-op resync miss its
//! 100 ms target. The diff only needs set names, key types and elements, chain hooks, and
//! each rule's comment and counter, which are cheap to read from the raw dumps.
//! Only tables named `netguard` are asked for. The result equals `live::parse_table` of the
//! JSON listing except for `LiveRule::expr`, left empty (checked by `tests/netns_live_read.rs`); the whole read is retried when the
//! ruleset generation changes while it runs.

use super::live::{LiveChain, LiveRule, LiveSet, LiveTable};
pub use crate::nfnetlink::NetlinkError;
use crate::nfnetlink::{
    NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, Sock, attr, attr_str, attrs, find, nested, with_sock,
};
use crate::plan::ruleset::*;
use std::collections::BTreeSet;
use std::net::{Ipv4Addr, Ipv6Addr};

const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFT_MSG_GETTABLE: u16 = 1;
const NFT_MSG_GETCHAIN: u16 = 4;
const NFT_MSG_GETRULE: u16 = 7;
const NFT_MSG_GETSET: u16 = 10;
const NFT_MSG_GETSETELEM: u16 = 13;
const NFT_MSG_GETGEN: u16 = 16;

const NFT_SET_ANONYMOUS: u32 = 0x1;
const NFT_SET_INTERVAL: u32 = 0x4;
const NFT_SET_MAP: u32 = 0x8;
const NFT_SET_OBJECT: u32 = 0x40;

// nftables datatypes (src/datatype.h) and concatenation (TYPE_BITS = 6).
const TYPE_IPADDR: u32 = 7;
const TYPE_IP6ADDR: u32 = 8;
const TYPE_ETHERADDR: u32 = 9;
const TYPE_INET_PROTOCOL: u32 = 12;
const TYPE_INET_SERVICE: u32 = 13;
const TYPE_IFNAME: u32 = 41;
/// nft's type of a raw payload (`@th,64,128`), in the key type of a `typeof` set.
const TYPE_INTEGER: u32 = 4;
const NFT_SET_ELEM_INTERVAL_END: u32 = 0x1;
const IFNAMSIZ: usize = 16;

enum Fail {
    Err(NetlinkError),
    /// A dump was interrupted by a concurrent change: read again.
    Retry,
}

impl From<NetlinkError> for Fail {
    fn from(e: NetlinkError) -> Self {
        match e {
            NetlinkError::Unstable => Fail::Retry,
            e => Fail::Err(e),
        }
    }
}

/// `Sock::call` with an interrupted dump as `Fail::Retry`.
fn request(
    sock: &mut Sock,
    msg: u16,
    flags: u16,
    family: u8,
    payload: &[u8],
) -> Result<Vec<Vec<u8>>, Fail> {
    Ok(sock.call(msg, flags, family, payload)?)
}

/// The ruleset's generation id: a read is whole when it is the same before and after.
fn genid(sock: &mut Sock) -> Result<u32, Fail> {
    let msgs = request(sock, NFT_MSG_GETGEN, 0, 0, &[])?;
    msgs.first()
        .and_then(|m| find(m, 1))
        .and_then(be32)
        .ok_or_else(|| Fail::Err(NetlinkError::Malformed("no generation id".into())))
}

fn str_of(p: &[u8]) -> String {
    let end = p.iter().position(|b| *b == 0).unwrap_or(p.len());
    String::from_utf8_lossy(&p[..end]).into_owned()
}

fn be32(p: &[u8]) -> Option<u32> {
    Some(u32::from_be_bytes(p.get(..4)?.try_into().ok()?))
}

fn be64(p: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(p.get(..8)?.try_into().ok()?))
}

fn family_code(f: Family) -> u8 {
    match f {
        Family::Inet => libc::NFPROTO_INET as u8,
        Family::Bridge => libc::NFPROTO_BRIDGE as u8,
    }
}

fn kind_of(key_type: u32, flags: u32) -> Option<SetKind> {
    if flags & (NFT_SET_MAP | NFT_SET_OBJECT) != 0 {
        return None;
    }
    if flags & NFT_SET_INTERVAL != 0 {
        return (key_type == TYPE_INET_SERVICE).then_some(SetKind::Ports);
    }
    match key_type {
        TYPE_IFNAME => Some(SetKind::Ifname),
        TYPE_IPADDR => Some(SetKind::V4),
        TYPE_IP6ADDR => Some(SetKind::V6),
        TYPE_ETHERADDR => Some(SetKind::Mac),
        t if t == (TYPE_IFNAME << 6) | TYPE_IFNAME => Some(SetKind::IfnamePair),
        t if t == (TYPE_IFNAME << 6) | TYPE_IPADDR => Some(SetKind::IfnameV4),
        t if t == (TYPE_IFNAME << 6) | TYPE_IP6ADDR => Some(SetKind::IfnameV6),
        t if t == (TYPE_IFNAME << 6) | TYPE_ETHERADDR => Some(SetKind::IfnameMac),
        t if t == (((TYPE_IFNAME << 6) | TYPE_ETHERADDR) << 6) | TYPE_IPADDR => {
            Some(SetKind::IfnameMacV4)
        }
        t if t == (((TYPE_IFNAME << 6) | TYPE_ETHERADDR) << 6) | TYPE_IP6ADDR => {
            Some(SetKind::IfnameMacV6)
        }
        t if t == (TYPE_INET_PROTOCOL << 6) | TYPE_INET_SERVICE => Some(SetKind::ProtoPort),
        t if t == (((TYPE_IPADDR << 6) | TYPE_INET_PROTOCOL) << 6) | TYPE_INET_SERVICE => {
            Some(SetKind::V4ProtoPort)
        }
        t if t == (((TYPE_IP6ADDR << 6) | TYPE_INET_PROTOCOL) << 6) | TYPE_INET_SERVICE => {
            Some(SetKind::V6ProtoPort)
        }
        _ => None,
    }
}

fn raw_key_type(raw: SetKind) -> u32 {
    match raw {
        SetKind::RawIfnameV6 | SetKind::RawIfnameMac => (TYPE_IFNAME << 6) | TYPE_INTEGER,
        _ => TYPE_INTEGER,
    }
}

/// Bytes of a raw kind's key: as its typed twin's (a 6-byte MAC after a name padded to 8).
fn raw_key_len(raw: SetKind) -> u32 {
    match raw {
        SetKind::RawIfnameV6 => 32,
        SetKind::RawIfnameMac => 24,
        SetKind::RawV6 => 16,
        _ => 6,
    }
}

fn ifname(b: &[u8]) -> Option<String> {
    let end = b.iter().position(|c| *c == 0).unwrap_or(b.len());
    std::str::from_utf8(&b[..end]).ok().map(str::to_string)
}

fn v4(b: &[u8]) -> Option<Ipv4Addr> {
    let a: [u8; 4] = b.try_into().ok()?;
    Some(Ipv4Addr::from(a))
}

fn mac(b: &[u8]) -> Option<Mac> {
    Some(Mac(b.try_into().ok()?))
}

fn v6(b: &[u8]) -> Option<Ipv6Addr> {
    let a: [u8; 16] = b.try_into().ok()?;
    Some(Ipv6Addr::from(a))
}

/// An interval set's elements as the kernel dumps them (each a boundary: a range's first
/// value, or, flagged as an end, one past its last) → inclusive ranges. A start with no end
/// after it runs to 65535; an end with no start before it (nft writes one at 0 when the
/// first range starts later) bounds nothing.
fn port_ranges(mut bounds: Vec<(u16, bool)>) -> Vec<Elem> {
    // At one value, an end closes the range before the start of the next one.
    bounds.sort_by_key(|(v, end)| (*v, !*end));
    let mut out = Vec::new();
    let mut open: Option<u16> = None;
    for (v, end) in bounds {
        match (end, open) {
            (false, None) => open = Some(v),
            (true, Some(lo)) if v > lo => {
                out.push(Elem::Port(lo, v - 1));
                open = None;
            }
            _ => {}
        }
    }
    if let Some(lo) = open {
        out.push(Elem::Port(lo, u16::MAX));
    }
    out
}

/// An `inet_proto . inet_service` pair as the kernel stores it: the protocol's byte and the
/// port's two (network order), each padded to 4 bytes. Only the protocols a published port
/// can have.
fn proto_port(b: &[u8]) -> Option<(PortProto, u16)> {
    let proto = match b.first()? {
        6 => PortProto::Tcp,
        17 => PortProto::Udp,
        132 => PortProto::Sctp,
        _ => return None,
    };
    let port = u16::from_be_bytes(b.get(4..6)?.try_into().ok()?);
    Some((proto, port))
}

fn proto_byte(p: PortProto) -> u8 {
    match p {
        PortProto::Tcp => 6,
        PortProto::Udp => 17,
        PortProto::Sctp => 132,
    }
}

/// A set element key as the kernel stores it: concatenated parts, each padded to 4 bytes.
fn elem_of(kind: SetKind, k: &[u8]) -> Option<Elem> {
    let n = IFNAMSIZ;
    match (kind, k.len()) {
        (SetKind::ProtoPort, 8) => proto_port(k).map(|(p, n)| Elem::ProtoPort(p, n)),
        (SetKind::V4ProtoPort, 12) => {
            let (p, port) = proto_port(&k[4..])?;
            Some(Elem::V4ProtoPort(v4(&k[..4])?, p, port))
        }
        (SetKind::V6ProtoPort, 24) => {
            let (p, port) = proto_port(&k[16..])?;
            Some(Elem::V6ProtoPort(v6(&k[..16])?, p, port))
        }
        (SetKind::Ifname, 16) => Some(Elem::Ifname(ifname(k)?)),
        (SetKind::IfnamePair, 32) => Some(Elem::IfnamePair(ifname(&k[..n])?, ifname(&k[n..])?)),
        (SetKind::IfnameV4, 20) => Some(Elem::IfnameV4(ifname(&k[..n])?, v4(&k[n..])?)),
        (SetKind::IfnameV6, 32) => Some(Elem::IfnameV6(ifname(&k[..n])?, v6(&k[n..])?)),
        // In a concatenation the 6-byte address is padded to 8.
        (SetKind::IfnameMac, 24) => Some(Elem::IfnameMac(ifname(&k[..n])?, mac(&k[n..n + 6])?)),
        (SetKind::IfnameMacV4, 28) => Some(Elem::IfnameMacV4(
            ifname(&k[..n])?,
            mac(&k[n..n + 6])?,
            v4(&k[n + 8..])?,
        )),
        (SetKind::IfnameMacV6, 40) => Some(Elem::IfnameMacV6(
            ifname(&k[..n])?,
            mac(&k[n..n + 6])?,
            v6(&k[n + 8..])?,
        )),
        (SetKind::Mac, 6) => Some(Elem::Mac(mac(k)?)),
        (SetKind::V4, 4) => Some(Elem::V4(v4(k)?)),
        (SetKind::V6, 16) => Some(Elem::V6(v6(k)?)),
        (SetKind::RawIfnameV6, 32) => Some(Elem::RawIfnameV6(ifname(&k[..n])?, v6(&k[n..])?)),
        (SetKind::RawIfnameMac, 24) => {
            Some(Elem::RawIfnameMac(ifname(&k[..n])?, mac(&k[n..n + 6])?))
        }
        (SetKind::RawV6, 16) => Some(Elem::RawV6(v6(k)?)),
        (SetKind::RawMac, 6) => Some(Elem::RawMac(mac(k)?)),
        _ => None,
    }
}

fn hook_of(num: u32) -> Option<Hook> {
    // NF_INET_* and NF_BR_* agree on these numbers.
    match num {
        0 => Some(Hook::Prerouting),
        1 => Some(Hook::Input),
        2 => Some(Hook::Forward),
        4 => Some(Hook::Postrouting),
        _ => None,
    }
}

/// Reads table `family netguard`; `None` when it does not exist.
pub fn read_table(family: Family) -> Result<Option<LiveTable>, NetlinkError> {
    read(family, true)
}

/// The structure of table `family netguard` (sets without their elements), as nft's terse
/// listing gives it.
pub fn read_structure(family: Family) -> Result<Option<LiveTable>, NetlinkError> {
    read(family, false)
}

fn read(family: Family, elements: bool) -> Result<Option<LiveTable>, NetlinkError> {
    with_sock(NFNL_SUBSYS_NFTABLES, |sock| {
        for _ in 0..10 {
            match read_once(sock, family, elements) {
                Ok(t) => return Ok(t),
                Err(Fail::Retry) => continue,
                Err(Fail::Err(e)) => return Err(e),
            }
        }
        Err(NetlinkError::Unstable)
    })
}

fn read_once(
    sock: &mut Sock,
    family: Family,
    with_elements: bool,
) -> Result<Option<LiveTable>, Fail> {
    let fam = family_code(family);
    let gen0 = genid(sock)?;
    let mut q = Vec::new();
    attr_str(&mut q, 1, TABLE_NAME); // NFTA_TABLE_NAME
    match request(sock, NFT_MSG_GETTABLE, NLM_F_ACK, fam, &q) {
        Ok(_) => {}
        Err(Fail::Err(NetlinkError::Kernel(e))) if e.raw_os_error() == Some(libc::ENOENT) => {
            return if genid(sock)? == gen0 {
                Ok(None)
            } else {
                Err(Fail::Retry)
            };
        }
        Err(e) => return Err(e),
    }
    let mut q = Vec::new();
    attr_str(&mut q, 1, TABLE_NAME);
    let chains = request(sock, NFT_MSG_GETCHAIN, NLM_F_DUMP, fam, &q)?;
    let rules = request(sock, NFT_MSG_GETRULE, NLM_F_DUMP, fam, &q)?;
    let mut sets = Vec::new();
    for (name, kind) in sets_of(&request(sock, NFT_MSG_GETSET, NLM_F_DUMP, fam, &q)?) {
        let mut elements = Vec::new();
        if kind.is_some() && with_elements {
            // NFTA_SET_ELEM_LIST_TABLE = 1, _SET = 2.
            let mut q = Vec::new();
            attr_str(&mut q, 1, TABLE_NAME);
            attr_str(&mut q, 2, &name);
            elements = request(sock, NFT_MSG_GETSETELEM, NLM_F_DUMP, fam, &q)?;
        }
        sets.push((name, kind, elements));
    }
    let t = table_of(&chains, &rules, sets);
    if genid(sock)? != gen0 {
        return Err(Fail::Retry);
    }
    Ok(Some(t))
}

/// The named sets of netguard's table in a `NFT_MSG_GETSET` dump, with their kind (`None`:
/// not a set netguard could have made). Pure: the fuzz target `nft` feeds it any bytes.
pub fn sets_of(msgs: &[Vec<u8>]) -> Vec<(String, Option<SetKind>)> {
    // NFTA_SET_TABLE = 1, NAME = 2, FLAGS = 3, KEY_TYPE = 4, KEY_LEN = 5.
    let mut sets = Vec::new();
    for m in msgs {
        if find(m, 1).map(str_of).as_deref() != Some(TABLE_NAME) {
            continue;
        }
        let flags = find(m, 3).and_then(be32).unwrap_or(0);
        if flags & NFT_SET_ANONYMOUS != 0 {
            continue;
        }
        let name = find(m, 2).map(str_of).unwrap_or_default();
        let key_type = find(m, 4).and_then(be32);
        let kind = match crate::plan::names::raw_kind(&name) {
            // A raw key's type says only "integer": its length tells the kinds apart.
            Some(raw) => {
                let key_len = find(m, 5).and_then(be32);
                (key_type == Some(raw_key_type(raw)) && key_len == Some(raw_key_len(raw)))
                    .then_some(raw)
                    .filter(|_| flags & (NFT_SET_MAP | NFT_SET_OBJECT | NFT_SET_INTERVAL) == 0)
            }
            None => key_type.and_then(|k| kind_of(k, flags)),
        };
        sets.push((name, kind));
    }
    sets
}

/// netguard's table from the kernel's dumps: chain and rule messages, and each set (from
/// [`sets_of`]) with its `NFT_MSG_GETSETELEM` messages (none when elements are not read).
/// Pure: the fuzz target `nft` feeds it any bytes.
pub fn table_of(
    chains: &[Vec<u8>],
    rules: &[Vec<u8>],
    sets: Vec<(String, Option<SetKind>, Vec<Vec<u8>>)>,
) -> LiveTable {
    let mut t = LiveTable::default();

    // Chains (NFTA_CHAIN_TABLE = 1, NAME = 3, HOOK = 4 { HOOKNUM = 1, PRIORITY = 2 }).
    for m in chains {
        if find(m, 1).map(str_of).as_deref() != Some(TABLE_NAME) {
            continue;
        }
        let name = find(m, 3).map(str_of).unwrap_or_default();
        let base = find(m, 4).and_then(|h| {
            let hook = find(h, 1).and_then(be32).and_then(hook_of)?;
            let prio = find(h, 2).and_then(be32)? as i32;
            Some(BaseChain {
                hook,
                priority: prio,
            })
        });
        t.chains
            .entry(name)
            .or_insert(LiveChain {
                base,
                rules: vec![],
            })
            .base = base;
    }

    // Rules (NFTA_RULE_TABLE = 1, CHAIN = 2, HANDLE = 3, EXPRESSIONS = 4, USERDATA = 7).
    for m in rules {
        if find(m, 1).map(str_of).as_deref() != Some(TABLE_NAME) {
            continue;
        }
        let chain = find(m, 2).map(str_of).unwrap_or_default();
        let handle = find(m, 3).and_then(be64);
        // The first counter expression (NFTA_EXPR_NAME = 1, DATA = 2; BYTES = 1, PACKETS = 2).
        let counter = find(m, 4).and_then(|list| {
            attrs(list).find_map(|(_, e)| {
                (find(e, 1).map(str_of).as_deref() == Some("counter"))
                    .then(|| find(e, 2))
                    .flatten()
            })
        });
        // Userdata TLVs: NFTNL_UDATA_RULE_COMMENT = 0.
        let comment = find(m, 7).and_then(|mut u| {
            while u.len() >= 2 {
                let (ty, len) = (u[0], u[1] as usize);
                let v = u.get(2..2 + len)?;
                if ty == 0 {
                    return Some(str_of(v));
                }
                u = &u[2 + len..];
            }
            None
        });
        t.chains
            .entry(chain)
            .or_insert(LiveChain {
                base: None,
                rules: vec![],
            })
            .rules
            .push(LiveRule {
                handle,
                comment,
                packets: counter.and_then(|c| find(c, 2)).and_then(be64),
                bytes: counter.and_then(|c| find(c, 1)).and_then(be64),
                // nft's JSON rendering of the statements is not rebuilt here: readers that
                // need it use `Backend::read_live`.
                expr: vec![],
            });
    }

    for (name, mut kind, msgs) in sets {
        let mut elements = BTreeSet::new();
        if let Some(k) = kind {
            // NFTA_SET_ELEM_LIST_ELEMENTS = 3; element KEY = 1 { VALUE = 1 }.
            let mut bounds = Vec::new();
            for m in &msgs {
                let Some(list) = find(m, 3) else { continue };
                for (_, e) in attrs(list) {
                    // NFTA_SET_ELEM_FLAGS = 3.
                    if k == SetKind::Ports {
                        let end =
                            find(e, 3).and_then(be32).unwrap_or(0) & NFT_SET_ELEM_INTERVAL_END != 0;
                        match find(e, 1).and_then(|key| find(key, 1)) {
                            Some(&[a, b]) => bounds.push((u16::from_be_bytes([a, b]), end)),
                            _ => kind = None,
                        }
                        continue;
                    }
                    match find(e, 1)
                        .and_then(|key| find(key, 1))
                        .and_then(|v| elem_of(k, v))
                    {
                        Some(el) => {
                            elements.insert(el);
                        }
                        // Not an element netguard could have written: replace the set.
                        None => kind = None,
                    }
                }
            }
            elements.extend(port_ranges(bounds));
        }
        t.sets.insert(name, LiveSet { kind, elements });
    }
    t
}

// ---------------------------------------------------------------- element writes

const NFT_MSG_NEWSETELEM: u16 = 12;
const NFT_MSG_DELSETELEM: u16 = 14;

/// The key of an element as the kernel stores it (the inverse of `elem_of`).
fn key_bytes(e: &Elem) -> Vec<u8> {
    fn name(out: &mut Vec<u8>, n: &str) {
        let mut b = [0u8; IFNAMSIZ];
        let src = n.as_bytes();
        let len = src.len().min(IFNAMSIZ - 1);
        b[..len].copy_from_slice(&src[..len]);
        out.extend_from_slice(&b);
    }
    let mut k = Vec::with_capacity(32);
    match e {
        Elem::Ifname(i) => name(&mut k, i),
        Elem::IfnamePair(a, b) => {
            name(&mut k, a);
            name(&mut k, b);
        }
        Elem::IfnameV4(i, a) => {
            name(&mut k, i);
            k.extend_from_slice(&a.octets());
        }
        Elem::IfnameV6(i, a) | Elem::RawIfnameV6(i, a) => {
            name(&mut k, i);
            k.extend_from_slice(&a.octets());
        }
        Elem::IfnameMac(i, m) | Elem::RawIfnameMac(i, m) => {
            name(&mut k, i);
            k.extend_from_slice(&m.0);
            k.extend_from_slice(&[0, 0]);
        }
        Elem::IfnameMacV4(i, m, a) => {
            name(&mut k, i);
            k.extend_from_slice(&m.0);
            k.extend_from_slice(&[0, 0]);
            k.extend_from_slice(&a.octets());
        }
        Elem::IfnameMacV6(i, m, a) => {
            name(&mut k, i);
            k.extend_from_slice(&m.0);
            k.extend_from_slice(&[0, 0]);
            k.extend_from_slice(&a.octets());
        }
        Elem::Mac(m) | Elem::RawMac(m) => k.extend_from_slice(&m.0),
        Elem::V4(a) => k.extend_from_slice(&a.octets()),
        Elem::V6(a) | Elem::RawV6(a) => k.extend_from_slice(&a.octets()),
        // Never sent: an interval is two elements, and `apply_elements` refuses ranges.
        Elem::Port(lo, _) => k.extend_from_slice(&lo.to_be_bytes()),
        Elem::ProtoPort(p, n) => proto_port_bytes(&mut k, *p, *n),
        Elem::V4ProtoPort(a, p, n) => {
            k.extend_from_slice(&a.octets());
            proto_port_bytes(&mut k, *p, *n);
        }
        Elem::V6ProtoPort(a, p, n) => {
            k.extend_from_slice(&a.octets());
            proto_port_bytes(&mut k, *p, *n);
        }
    }
    k
}

fn proto_port_bytes(k: &mut Vec<u8>, p: PortProto, port: u16) {
    k.extend_from_slice(&[proto_byte(p), 0, 0, 0]);
    k.extend_from_slice(&port.to_be_bytes());
    k.extend_from_slice(&[0, 0]);
}

/// One element command: delete (`add == false`) or add `elems` in set `set` of
/// `family netguard`.
pub struct ElementOp<'a> {
    pub family: Family,
    pub set: &'a str,
    pub add: bool,
    pub elems: &'a [Elem],
}

/// Adds and deletes set elements in one nfnetlink transaction, without libnftables (whose
/// cache fetch of every set costs ≈ 1 ms a transaction with 50 groups × 200 rules). Same
/// semantics as nft's `add element` / `delete element`: adding an element that exists
/// succeeds, deleting a missing one (or touching a missing set) fails the whole batch.
pub fn apply_elements(ops: &[ElementOp]) -> Result<(), NetlinkError> {
    if ops
        .iter()
        .flat_map(|o| o.elems)
        .any(|e| e.kind() == SetKind::Ports)
    {
        return Err(NetlinkError::Malformed(
            "port ranges are written through libnftables, not as single elements".into(),
        ));
    }
    with_sock(NFNL_SUBSYS_NFTABLES, |sock| transact(sock, ops))
}

fn transact(sock: &mut Sock, ops: &[ElementOp]) -> Result<(), NetlinkError> {
    let mut batch = sock.batch();
    for op in ops.iter().filter(|o| !o.elems.is_empty()) {
        // Keep each message well below 64 KiB (a netlink attribute length is 16 bits).
        for chunk in op.elems.chunks(512) {
            let mut list = Vec::new();
            for e in chunk {
                let mut value = Vec::new();
                attr(&mut value, 1, &key_bytes(e)); // NFTA_DATA_VALUE
                let mut key = Vec::new();
                nested(&mut key, 1, &value); // NFTA_SET_ELEM_KEY
                nested(&mut list, 1, &key); // NFTA_LIST_ELEM
            }
            let mut p = Vec::new();
            attr_str(&mut p, 1, TABLE_NAME); // NFTA_SET_ELEM_LIST_TABLE
            attr_str(&mut p, 2, op.set); // NFTA_SET_ELEM_LIST_SET
            nested(&mut p, 3, &list); // NFTA_SET_ELEM_LIST_ELEMENTS
            let (ty, flags) = if op.add {
                (NFT_MSG_NEWSETELEM, NLM_F_CREATE)
            } else {
                (NFT_MSG_DELSETELEM, 0)
            };
            batch.push(ty, flags, family_code(op.family), &p);
        }
    }
    sock.commit(batch)
}

const NFT_MSG_NEWRULE: u16 = 6;
const NLM_F_APPEND: u16 = 0x800;

/// Appends rules that send packets to an NFQUEUE, which libnftables cannot write here:
/// the kernels this runs on may lack `nft_queue`, so the queue is xtables' `NFQUEUE`
/// target (revision 1) run by `nft_compat`, which the kernel takes in any table. Each rule
/// carries its plan comment (with fingerprint), so the diff reads it as the planned rule;
/// `nft list` shows it as `queue num N`. Only a queue verdict after `limit` matches is
/// expressible this way.
pub fn append_queue_rules(rules: &[(Family, &str, &Rule)]) -> Result<(), NetlinkError> {
    let mut msgs = Vec::new();
    for (family, chain, r) in rules {
        let Verdict::Queue(num) = r.verdict else {
            return Err(NetlinkError::Malformed(format!(
                "rule {:?} has no queue verdict",
                r.comment
            )));
        };
        let mut exprs = Vec::new();
        let mut expr = |name: &str, data: &[u8]| {
            let mut e = Vec::new();
            attr_str(&mut e, 1, name); // NFTA_EXPR_NAME
            nested(&mut e, 2, data); // NFTA_EXPR_DATA
            nested(&mut exprs, 1, &e); // NFTA_LIST_ELEM
        };
        for m in &r.matches {
            let Match::Limit { rate, burst } = m else {
                return Err(NetlinkError::Malformed(format!(
                    "rule {:?}: only limit matches go with a queue verdict",
                    r.comment
                )));
            };
            let mut d = Vec::new();
            attr(&mut d, 1, &u64::from(*rate).to_be_bytes()); // NFTA_LIMIT_RATE
            attr(&mut d, 2, &1u64.to_be_bytes()); // NFTA_LIMIT_UNIT: per second
            attr(&mut d, 3, &burst.to_be_bytes()); // NFTA_LIMIT_BURST
            attr(&mut d, 4, &0u32.to_be_bytes()); // NFTA_LIMIT_TYPE: packets
            expr("limit", &d);
        }
        if r.counter {
            expr("counter", &[]);
        }
        let mut t = Vec::new();
        attr_str(&mut t, 1, "NFQUEUE"); // NFTA_TARGET_NAME
        attr(&mut t, 2, &1u32.to_be_bytes()); // NFTA_TARGET_REV
        // struct xt_NFQ_info_v1 { u16 queuenum; u16 queues_total; }, host order, padded
        // to the 8-byte alignment xtables gives targets.
        let mut info = num.to_ne_bytes().to_vec();
        info.extend_from_slice(&1u16.to_ne_bytes());
        info.extend_from_slice(&[0; 4]);
        attr(&mut t, 3, &info); // NFTA_TARGET_INFO
        expr("target", &t);
        let comment = super::render::rule_comment(r);
        let mut udata = vec![0u8, (comment.len() + 1) as u8]; // NFTNL_UDATA_RULE_COMMENT
        udata.extend_from_slice(comment.as_bytes());
        udata.push(0);
        let mut p = Vec::new();
        attr_str(&mut p, 1, TABLE_NAME); // NFTA_RULE_TABLE
        attr_str(&mut p, 2, chain); // NFTA_RULE_CHAIN
        nested(&mut p, 4, &exprs); // NFTA_RULE_EXPRESSIONS
        attr(&mut p, 7, &udata); // NFTA_RULE_USERDATA
        msgs.push((family_code(*family), p));
    }
    if msgs.is_empty() {
        return Ok(());
    }
    // A batch that needs a module the kernel has not loaded yet (nft_compat, xt_NFQUEUE,
    // nft_limit) is refused with EAGAIN once the kernel has loaded it: sent again, it goes in.
    let mut tries = 0;
    loop {
        let r = with_sock(NFNL_SUBSYS_NFTABLES, |sock| {
            let mut batch = sock.batch();
            for (family, p) in &msgs {
                batch.push(NFT_MSG_NEWRULE, NLM_F_CREATE | NLM_F_APPEND, *family, p);
            }
            sock.commit(batch)
        });
        match r {
            Err(NetlinkError::Kernel(e)) if e.raw_os_error() == Some(libc::EAGAIN) && tries < 3 => {
                tries += 1;
            }
            other => return other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set_msg(table: &str, name: &str, flags: u32, key: u32) -> Vec<u8> {
        let mut m = Vec::new();
        attr_str(&mut m, 1, table);
        attr_str(&mut m, 2, name);
        attr(&mut m, 3, &flags.to_be_bytes());
        attr(&mut m, 4, &key.to_be_bytes());
        m
    }

    fn elems_msg(keys: &[&[u8]]) -> Vec<u8> {
        let mut list = Vec::new();
        for k in keys {
            let (mut value, mut key, mut e) = (Vec::new(), Vec::new(), Vec::new());
            attr(&mut value, 1, k);
            nested(&mut key, 1, &value);
            nested(&mut e, 1, &key);
            list.extend_from_slice(&e);
        }
        let mut m = Vec::new();
        nested(&mut m, 3, &list);
        m
    }

    /// The dump parsing without a socket: other tables and anonymous sets are left out, and a
    /// set holding an element netguard could not have written loses its kind (is replaced).
    #[test]
    fn dumps_become_the_table() {
        let sets = sets_of(&[
            set_msg(TABLE_NAME, "g_web_4", 0, TYPE_IPADDR),
            set_msg("other", "g_x_4", 0, TYPE_IPADDR),
            set_msg(TABLE_NAME, "__set0", NFT_SET_ANONYMOUS, TYPE_IPADDR),
            set_msg(TABLE_NAME, "veths", 0, TYPE_IFNAME),
        ]);
        assert_eq!(
            sets,
            vec![
                ("g_web_4".to_string(), Some(SetKind::V4)),
                ("veths".to_string(), Some(SetKind::Ifname)),
            ]
        );
        let mut chain = Vec::new();
        attr_str(&mut chain, 1, TABLE_NAME);
        attr_str(&mut chain, 3, "isolate");
        let t = table_of(
            &[chain],
            &[],
            vec![
                (
                    "g_web_4".into(),
                    Some(SetKind::V4),
                    vec![elems_msg(&[&[10, 0, 0, 1]])],
                ),
                (
                    "veths".into(),
                    Some(SetKind::Ifname),
                    vec![elems_msg(&[b"short"])],
                ),
            ],
        );
        assert!(t.chains.contains_key("isolate"));
        let web = &t.sets["g_web_4"];
        assert_eq!(web.kind, Some(SetKind::V4));
        assert!(web.elements.contains(&Elem::V4(Ipv4Addr::new(10, 0, 0, 1))));
        assert_eq!(
            t.sets["veths"].kind, None,
            "a 5-byte ifname key is not netguard's"
        );
    }

    /// Boundaries as the kernel dumped `{ 5353, 8080, 9000-9010 }` and `{ 0-10, 65000-65535 }`
    /// (nft 1.0.6 writing, Linux 6.18), in the kernel's order: highest first.
    #[test]
    fn interval_boundaries_become_ranges() {
        let p = vec![
            (9011, true),
            (9000, false),
            (8081, true),
            (8080, false),
            (5354, true),
            (5353, false),
            (0, true),
        ];
        assert_eq!(
            port_ranges(p),
            vec![
                Elem::Port(5353, 5353),
                Elem::Port(8080, 8080),
                Elem::Port(9000, 9010)
            ]
        );
        let q = vec![(65000, false), (11, true), (0, false)];
        assert_eq!(
            port_ranges(q),
            vec![Elem::Port(0, 10), Elem::Port(65000, 65535)]
        );
        // Adjacent ranges share a boundary value: the end closes first.
        let adj = vec![(81, false), (81, true), (80, false), (83, true)];
        assert_eq!(
            port_ranges(adj),
            vec![Elem::Port(80, 80), Elem::Port(81, 82)]
        );
        assert!(port_ranges(vec![]).is_empty());
    }

    /// The (veth, MAC, address) keys: written as the kernel stores them (the MAC padded
    /// to 8 bytes inside the concatenation) and read back as the same element.
    #[test]
    fn genuine_keys_round_trip() {
        let m = Mac([2, 0x42, 0x0a, 0, 0, 7]);
        for (e, kind, key_type, len) in [
            (
                Elem::IfnameMacV4("veth1234".into(), m, Ipv4Addr::new(10, 0, 0, 7)),
                SetKind::IfnameMacV4,
                (((TYPE_IFNAME << 6) | TYPE_ETHERADDR) << 6) | TYPE_IPADDR,
                28,
            ),
            (
                Elem::IfnameMacV6("veth1234".into(), m, "fd00::7".parse().expect("v6")),
                SetKind::IfnameMacV6,
                (((TYPE_IFNAME << 6) | TYPE_ETHERADDR) << 6) | TYPE_IP6ADDR,
                40,
            ),
        ] {
            let k = key_bytes(&e);
            assert_eq!(k.len(), len, "{e}");
            assert_eq!(&k[IFNAMSIZ..IFNAMSIZ + 8], &[2, 0x42, 0x0a, 0, 0, 7, 0, 0]);
            assert_eq!(kind_of(key_type, 0), Some(kind));
            assert_eq!(elem_of(kind, &k), Some(e));
        }
    }

    #[test]
    fn ranges_are_never_written_as_single_elements() {
        let elems = [Elem::Port(80, 90)];
        let op = ElementOp {
            family: Family::Inet,
            set: "ports_x",
            add: true,
            elems: &elems,
        };
        assert!(matches!(
            apply_elements(&[op]),
            Err(NetlinkError::Malformed(_))
        ));
    }
}
