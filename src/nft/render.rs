//! The desired-state model → nftables JSON objects (typed, via the `nftables` crate).
//! Interface names and addresses travel as JSON values, never as nft text.

use crate::plan::ruleset::*;
use nftables::expr::{
    CT, Expression, Meta, MetaKey, NamedExpression, Payload, PayloadField, Prefix, SetItem,
};
use nftables::schema::{self, NfListObject};
use nftables::stmt::{self, Counter, JumpTarget, Log, Operator, Statement};
use nftables::types::{NfChainPolicy, NfChainType, NfFamily, NfHook};
use std::borrow::Cow;

pub fn nf_family(f: Family) -> NfFamily {
    match f {
        Family::Inet => NfFamily::INet,
        Family::Bridge => NfFamily::Bridge,
    }
}

pub fn table_obj(f: Family) -> schema::Table<'static> {
    schema::Table {
        family: nf_family(f),
        name: TABLE_NAME.into(),
        ..Default::default()
    }
}

pub fn chain_obj(f: Family, c: &Chain) -> schema::Chain<'static> {
    let mut ch = schema::Chain {
        family: nf_family(f),
        table: TABLE_NAME.into(),
        name: c.name.clone().into(),
        ..Default::default()
    };
    if let Some(b) = c.base {
        ch._type = Some(NfChainType::Filter);
        ch.hook = Some(match b.hook {
            Hook::Prerouting => NfHook::Prerouting,
            Hook::Input => NfHook::Input,
            Hook::Forward => NfHook::Forward,
            Hook::Postrouting => NfHook::Postrouting,
        });
        ch.prio = Some(b.priority);
        ch.policy = Some(NfChainPolicy::Accept);
    }
    ch
}

/// A chain named only, for flush/delete.
pub fn chain_ref(f: Family, name: &str) -> schema::Chain<'static> {
    schema::Chain {
        family: nf_family(f),
        table: TABLE_NAME.into(),
        name: name.to_string().into(),
        ..Default::default()
    }
}

fn set_type(k: SetKind) -> schema::SetTypeValue<'static> {
    use schema::SetType as T;
    match k {
        SetKind::Ifname => schema::SetTypeValue::Single(T::Ifname),
        SetKind::IfnamePair => {
            schema::SetTypeValue::Concatenated(vec![T::Ifname, T::Ifname].into())
        }
        SetKind::IfnameV4 => {
            schema::SetTypeValue::Concatenated(vec![T::Ifname, T::Ipv4Addr].into())
        }
        SetKind::IfnameV6 => {
            schema::SetTypeValue::Concatenated(vec![T::Ifname, T::Ipv6Addr].into())
        }
        SetKind::IfnameMac => {
            schema::SetTypeValue::Concatenated(vec![T::Ifname, T::EtherAddr].into())
        }
        SetKind::IfnameMacV4 => {
            schema::SetTypeValue::Concatenated(vec![T::Ifname, T::EtherAddr, T::Ipv4Addr].into())
        }
        SetKind::IfnameMacV6 => {
            schema::SetTypeValue::Concatenated(vec![T::Ifname, T::EtherAddr, T::Ipv6Addr].into())
        }
        SetKind::Mac => schema::SetTypeValue::Single(T::EtherAddr),
        SetKind::V4 => schema::SetTypeValue::Single(T::Ipv4Addr),
        SetKind::V6 => schema::SetTypeValue::Single(T::Ipv6Addr),
        SetKind::Ports => schema::SetTypeValue::Single(T::InetService),
        // Never declared through JSON, which has no type for them (`raw_set_decl`); named
        // only, to be deleted.
        SetKind::RawIfnameV6 | SetKind::RawIfnameMac | SetKind::RawV6 | SetKind::RawMac => {
            schema::SetTypeValue::Single(T::Ifname)
        }
        SetKind::ProtoPort => {
            schema::SetTypeValue::Concatenated(vec![T::InetProto, T::InetService].into())
        }
        SetKind::V4ProtoPort => schema::SetTypeValue::Concatenated(
            vec![T::Ipv4Addr, T::InetProto, T::InetService].into(),
        ),
        SetKind::V6ProtoPort => schema::SetTypeValue::Concatenated(
            vec![T::Ipv6Addr, T::InetProto, T::InetService].into(),
        ),
    }
}

/// The nft text that declares a raw-keyed set, which nft 1.0.6's JSON cannot (it has no
/// `typeof`, and an `integer` key has no length there): `None` for every other kind.
/// Only netguard's own constant names and keys are ever written here.
pub fn raw_set_decl(f: Family, name: &str, kind: SetKind) -> Option<String> {
    let key = match kind {
        SetKind::RawIfnameV6 => "iifname . @th,64,128",
        SetKind::RawV6 => "@th,64,128",
        SetKind::RawIfnameMac => "iifname . @th,208,48",
        SetKind::RawMac => "@th,208,48",
        _ => return None,
    };
    Some(format!(
        "add set {} {TABLE_NAME} {name} {{ typeof {key}; }}",
        f.as_str()
    ))
}

pub fn set_obj(f: Family, name: &str, kind: SetKind) -> schema::Set<'static> {
    schema::Set {
        family: nf_family(f),
        table: TABLE_NAME.into(),
        name: name.to_string().into(),
        set_type: set_type(kind),
        flags: (kind == SetKind::Ports).then(|| [schema::SetFlag::Interval].into_iter().collect()),
        ..Default::default()
    }
}

pub fn elem_expr(e: &Elem) -> Expression<'static> {
    let s = |v: String| Expression::String(Cow::Owned(v));
    match e {
        Elem::Ifname(i) => s(i.clone()),
        Elem::IfnamePair(a, b) => {
            Expression::Named(NamedExpression::Concat(vec![s(a.clone()), s(b.clone())]))
        }
        Elem::IfnameV4(i, a) => Expression::Named(NamedExpression::Concat(vec![
            s(i.clone()),
            s(a.to_string()),
        ])),
        Elem::IfnameV6(i, a) => Expression::Named(NamedExpression::Concat(vec![
            s(i.clone()),
            s(a.to_string()),
        ])),
        Elem::IfnameMac(i, m) => Expression::Named(NamedExpression::Concat(vec![
            s(i.clone()),
            s(m.to_string()),
        ])),
        Elem::IfnameMacV4(i, m, a) => Expression::Named(NamedExpression::Concat(vec![
            s(i.clone()),
            s(m.to_string()),
            s(a.to_string()),
        ])),
        Elem::IfnameMacV6(i, m, a) => Expression::Named(NamedExpression::Concat(vec![
            s(i.clone()),
            s(m.to_string()),
            s(a.to_string()),
        ])),
        Elem::Mac(m) => s(m.to_string()),
        Elem::V4(a) => s(a.to_string()),
        Elem::V6(a) => s(a.to_string()),
        Elem::RawIfnameV6(i, a) => Expression::Named(NamedExpression::Concat(vec![
            s(i.clone()),
            s(raw_hex(&a.octets())),
        ])),
        Elem::RawV6(a) => s(raw_hex(&a.octets())),
        Elem::RawIfnameMac(i, m) => Expression::Named(NamedExpression::Concat(vec![
            s(i.clone()),
            s(raw_hex(&m.0)),
        ])),
        Elem::RawMac(m) => s(raw_hex(&m.0)),
        Elem::Port(lo, hi) => port_item(*lo, *hi),
        Elem::ProtoPort(p, n) => Expression::Named(NamedExpression::Concat(vec![
            s(p.as_str().to_string()),
            Expression::Number(*n as u32),
        ])),
        Elem::V4ProtoPort(a, p, n) => Expression::Named(NamedExpression::Concat(vec![
            s(a.to_string()),
            s(p.as_str().to_string()),
            Expression::Number(*n as u32),
        ])),
        Elem::V6ProtoPort(a, p, n) => Expression::Named(NamedExpression::Concat(vec![
            s(a.to_string()),
            s(p.as_str().to_string()),
            Expression::Number(*n as u32),
        ])),
    }
}

/// Bytes as the hexadecimal integer nft reads for a raw key (`0xfd00…02`), big-endian
/// like the packet they are compared with.
pub fn raw_hex(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(2 + 2 * bytes.len());
    out.push_str("0x");
    for b in bytes {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

fn port_item(lo: u16, hi: u16) -> Expression<'static> {
    if lo == hi {
        Expression::Number(lo as u32)
    } else {
        Expression::Range(Box::new(nftables::expr::Range {
            range: [Expression::Number(lo as u32), Expression::Number(hi as u32)],
        }))
    }
}

pub fn element_obj<'a>(
    f: Family,
    set: &str,
    elems: impl Iterator<Item = &'a Elem>,
) -> schema::Element<'static> {
    schema::Element {
        family: nf_family(f),
        table: TABLE_NAME.into(),
        name: set.to_string().into(),
        elem: elems.map(elem_expr).collect::<Vec<_>>().into(),
    }
}

pub fn rule_obj(f: Family, chain: &str, r: &Rule) -> NfListObject<'static> {
    NfListObject::Rule(schema::Rule {
        family: nf_family(f),
        table: TABLE_NAME.into(),
        chain: chain.to_string().into(),
        expr: statements(r).into(),
        handle: None,
        index: None,
        comment: Some(rule_comment(r).into()),
    })
}

/// Comments carry a fingerprint of the rule so the live chain can be compared with the
/// desired one without normalising nft's own rewriting of expressions.
pub fn rule_comment(r: &Rule) -> String {
    let fp = fingerprint(r);
    let mut human = r.comment.clone();
    // nft limits comments to 128 bytes; keep room for the fingerprint.
    while human.len() > 100 {
        human.pop();
    }
    format!("{human} [ng:{fp:016x}]")
}

/// A live rule's comment read back: the human part (the policy line) and the fingerprint
/// `rule_comment` appended. The one reader of that suffix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LiveComment<'a> {
    /// The comment without its ` [ng:…]` suffix (all of it when there is none).
    pub human: &'a str,
    pub fingerprint: Option<u64>,
}

/// Splits a live rule's comment as `rule_comment` wrote it.
pub fn parse_comment(comment: &str) -> LiveComment<'_> {
    let human = comment.rfind(" [ng:").map_or(comment, |i| &comment[..i]);
    let fingerprint = comment.rfind("[ng:").and_then(|i| {
        let hex = &comment[i + 4..];
        let end = hex.find(']')?;
        u64::from_str_radix(&hex[..end], 16).ok()
    });
    LiveComment { human, fingerprint }
}

/// Parses the fingerprint back out of a live rule's comment.
pub fn comment_fingerprint(comment: &str) -> Option<u64> {
    parse_comment(comment).fingerprint
}

/// A live rule's comment without its fingerprint.
pub fn comment_text(comment: &str) -> &str {
    parse_comment(comment).human
}

/// FNV-1a over the rule's canonical JSON: stable across builds and platforms.
pub fn fingerprint(r: &Rule) -> u64 {
    let text = serde_json::to_string(&(&r.matches, r.counter, &r.log_prefix, &r.verdict))
        .unwrap_or_default();
    text.bytes().fold(0xcbf29ce484222325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100000001b3)
    })
}

fn meta(key: MetaKey) -> Expression<'static> {
    Expression::Named(NamedExpression::Meta(Meta { key }))
}

fn payload(protocol: &'static str, field: &'static str) -> Expression<'static> {
    Expression::Named(NamedExpression::Payload(Payload::PayloadField(
        PayloadField {
            protocol: protocol.into(),
            field: field.into(),
        },
    )))
}

fn m(left: Expression<'static>, op: Operator, right: Expression<'static>) -> Statement<'static> {
    Statement::Match(stmt::Match { left, right, op })
}

fn set_ref(name: &str) -> Expression<'static> {
    Expression::String(format!("@{name}").into())
}

fn s(v: &str) -> Expression<'static> {
    Expression::String(v.to_string().into())
}

fn addr(ip: IpVersion, field: &'static str) -> Expression<'static> {
    match ip {
        IpVersion::V4 => payload("ip", field),
        IpVersion::V6 => payload("ip6", field),
    }
}

fn keyed(iface: IfSide, value: Expression<'static>) -> Expression<'static> {
    match iface {
        IfSide::None => value,
        IfSide::Iif => {
            Expression::Named(NamedExpression::Concat(vec![meta(MetaKey::Iifname), value]))
        }
        IfSide::Oif => {
            Expression::Named(NamedExpression::Concat(vec![meta(MetaKey::Oifname), value]))
        }
    }
}

fn anon_set(items: Vec<Expression<'static>>) -> Expression<'static> {
    Expression::Named(NamedExpression::Set(
        items.into_iter().map(SetItem::Element).collect(),
    ))
}

fn prefixes(p: &[(std::net::Ipv6Addr, u8)]) -> Expression<'static> {
    anon_set(
        p.iter()
            .map(|(a, len)| {
                Expression::Named(NamedExpression::Prefix(Prefix {
                    addr: Box::new(s(&a.to_string())),
                    len: *len as u32,
                }))
            })
            .collect(),
    )
}

/// A whole address goes as itself: a full-length prefix in an anonymous interval set
/// matched nothing over IPv6 (tests/netns_edges.rs found it).
fn nets(p: &[(std::net::IpAddr, u8)]) -> Expression<'static> {
    anon_set(
        p.iter()
            .map(|(a, len)| {
                let full = if a.is_ipv6() { 128 } else { 32 };
                if u32::from(*len) == full {
                    s(&a.to_string())
                } else {
                    Expression::Named(NamedExpression::Prefix(Prefix {
                        addr: Box::new(s(&a.to_string())),
                        len: *len as u32,
                    }))
                }
            })
            .collect(),
    )
}

fn ct(key: &'static str) -> Expression<'static> {
    Expression::Named(NamedExpression::CT(CT {
        key: key.into(),
        family: None,
        dir: None,
    }))
}

/// `@th,OFFSET,LEN`: bits of the transport header (here: of the ICMPv6 message).
fn th_bits(offset: u32, len: u32) -> Expression<'static> {
    Expression::Named(NamedExpression::Payload(Payload::PayloadRaw(
        nftables::expr::PayloadRaw {
            base: nftables::expr::PayloadBase::TH,
            offset,
            len,
        },
    )))
}

fn eq_or_ne(negate: bool) -> Operator {
    if negate { Operator::NEQ } else { Operator::EQ }
}

fn match_stmt(mt: &Match) -> Statement<'static> {
    use Operator::EQ;
    match mt {
        Match::IfPairIn(set) => m(
            Expression::Named(NamedExpression::Concat(vec![
                meta(MetaKey::Iifname),
                meta(MetaKey::Oifname),
            ])),
            EQ,
            set_ref(set),
        ),
        Match::IifInSet(set) => m(meta(MetaKey::Iifname), EQ, set_ref(set)),
        Match::OifInSet(set) => m(meta(MetaKey::Oifname), EQ, set_ref(set)),
        Match::IifNotInSet(set) => m(meta(MetaKey::Iifname), Operator::NEQ, set_ref(set)),
        Match::OifNotInSet(set) => m(meta(MetaKey::Oifname), Operator::NEQ, set_ref(set)),
        Match::IifNotPattern(p) => m(meta(MetaKey::Iifname), Operator::NEQ, s(p)),
        Match::OifNotPattern(p) => m(meta(MetaKey::Oifname), Operator::NEQ, s(p)),
        Match::SaddrNets { ip, nets: n } => m(addr(*ip, "saddr"), EQ, nets(n)),
        Match::DaddrNets { ip, nets: n } => m(addr(*ip, "daddr"), EQ, nets(n)),
        Match::FibDaddrLocal => m(
            Expression::Named(NamedExpression::Fib(nftables::expr::Fib {
                result: nftables::expr::FibResult::Type,
                flags: [nftables::expr::FibFlag::Daddr].into_iter().collect(),
            })),
            EQ,
            s("local"),
        ),
        Match::CtStatusDnat => m(ct("status"), Operator::IN, s("dnat")),
        Match::IifPattern(p) => m(meta(MetaKey::Iifname), EQ, s(p)),
        Match::OifPattern(p) => m(meta(MetaKey::Oifname), EQ, s(p)),
        Match::EtherType(t) => m(
            payload("ether", "type"),
            EQ,
            s(match t {
                EtherType::Ip => "ip",
                EtherType::Ip6 => "ip6",
                EtherType::Arp => "arp",
            }),
        ),
        Match::SaddrInSet { ip, iface, set } => {
            m(keyed(*iface, addr(*ip, "saddr")), EQ, set_ref(set))
        }
        Match::DaddrInSet { ip, iface, set } => {
            m(keyed(*iface, addr(*ip, "daddr")), EQ, set_ref(set))
        }
        Match::IifMacSaddrInSet { ip, set } => m(
            Expression::Named(NamedExpression::Concat(vec![
                meta(MetaKey::Iifname),
                payload("ether", "saddr"),
                addr(*ip, "saddr"),
            ])),
            EQ,
            set_ref(set),
        ),
        Match::ArpSaddrInSet { iface, set } => {
            m(keyed(*iface, payload("arp", "saddr ip")), EQ, set_ref(set))
        }
        Match::EtherSaddrInSet { iface, set, negate } => m(
            keyed(*iface, payload("ether", "saddr")),
            if *negate { Operator::NEQ } else { EQ },
            set_ref(set),
        ),
        Match::ArpShaInSet { iface, set, negate } => m(
            keyed(*iface, payload("arp", "saddr ether")),
            if *negate { Operator::NEQ } else { EQ },
            set_ref(set),
        ),
        Match::ArpSaddrIsZero => m(payload("arp", "saddr ip"), EQ, s("0.0.0.0")),
        Match::NdTargetInSet { iface, set, negate } => m(
            keyed(*iface, th_bits(64, 128)),
            eq_or_ne(*negate),
            set_ref(set),
        ),
        // fe80::/10: the first ten bits 1111 1110 10.
        Match::NdTargetNotLinkLocal => m(th_bits(64, 10), Operator::NEQ, Expression::Number(0x3fa)),
        Match::NdOption { offset, kind } => m(
            th_bits(u32::from(*offset) * 8, 16),
            EQ,
            Expression::Number(u32::from(*kind) << 8 | 1),
        ),
        Match::NdOptionMacInSet {
            offset,
            iface,
            set,
            negate,
        } => m(
            keyed(*iface, th_bits((u32::from(*offset) + 2) * 8, 48)),
            eq_or_ne(*negate),
            set_ref(set),
        ),
        // `!= 0-N`, not `> N`: the nftables crate (0.6.3) writes its `GT` as "<".
        Match::Ip6LengthOver(n) => m(
            payload("ip6", "length"),
            Operator::NEQ,
            Expression::Range(Box::new(nftables::expr::Range {
                range: [Expression::Number(0), Expression::Number(u32::from(*n))],
            })),
        ),
        Match::Saddr6In(p) => m(payload("ip6", "saddr"), EQ, prefixes(p)),
        Match::Daddr6In(p) => m(payload("ip6", "daddr"), EQ, prefixes(p)),
        Match::Limit { rate, burst } => Statement::Limit(stmt::Limit {
            rate: *rate,
            rate_unit: None,
            per: Some("second".into()),
            burst: Some(*burst),
            burst_unit: None,
            inv: None,
        }),
        Match::Unicast => m(
            Expression::BinaryOperation(Box::new(nftables::expr::BinaryOperation::AND(
                payload("ether", "daddr"),
                s("01:00:00:00:00:00"),
            ))),
            EQ,
            s("00:00:00:00:00:00"),
        ),
        Match::CtState(states) => m(
            Expression::Named(NamedExpression::CT(CT {
                key: "state".into(),
                family: None,
                dir: None,
            })),
            Operator::IN,
            Expression::List(states.iter().map(|v| s(v)).collect()),
        ),
        // The ports follow as a second statement (see `statements`).
        Match::L4 { proto, .. } => m(meta(MetaKey::L4proto), EQ, s(proto)),
        Match::L4ProtoNot(proto) => m(
            meta(MetaKey::L4proto),
            Operator::NEQ,
            Expression::Number(u32::from(*proto)),
        ),
        Match::PublishedIn { daddr, set } => {
            let mut key: Vec<Expression<'static>> =
                daddr.iter().map(|ip| addr(*ip, "daddr")).collect();
            key.push(meta(MetaKey::L4proto));
            key.push(payload("th", "dport"));
            m(
                Expression::Named(NamedExpression::Concat(key)),
                EQ,
                set_ref(set),
            )
        }
        Match::IcmpEcho(IpVersion::V4) => m(payload("icmp", "type"), EQ, s("echo-request")),
        Match::IcmpEcho(IpVersion::V6) => m(payload("icmpv6", "type"), EQ, s("echo-request")),
        Match::Icmpv6Types(types) => m(
            payload("icmpv6", "type"),
            EQ,
            anon_set(types.iter().map(|t| s(t)).collect()),
        ),
    }
}

fn port_set(dports: &[(u16, u16)]) -> Expression<'static> {
    anon_set(dports.iter().map(|(lo, hi)| port_item(*lo, *hi)).collect())
}

pub fn statements(r: &Rule) -> Vec<Statement<'static>> {
    let mut out = Vec::new();
    for mt in &r.matches {
        out.push(match_stmt(mt));
        if let Match::L4 { dports, set, .. } = mt
            && !dports.is_empty()
        {
            let right = match set {
                Some(name) => set_ref(name),
                None => port_set(dports),
            };
            out.push(m(payload("th", "dport"), Operator::EQ, right));
        }
    }
    if let Some(prefix) = &r.log_prefix {
        out.push(Statement::Limit(stmt::Limit {
            rate: 10,
            rate_unit: None,
            per: Some("second".into()),
            burst: Some(20),
            burst_unit: None,
            inv: None,
        }));
        let mut log = Log::new(None);
        log.prefix = Some(prefix.clone().into());
        out.push(Statement::Log(Some(log)));
    }
    if r.counter {
        out.push(Statement::Counter(Counter::Anonymous(None)));
    }
    match &r.verdict {
        Verdict::Accept => out.push(Statement::Accept(None)),
        Verdict::Drop => out.push(Statement::Drop(None)),
        Verdict::Return => out.push(Statement::Return(None)),
        Verdict::Jump(t) => out.push(Statement::Jump(JumpTarget {
            target: t.clone().into(),
        })),
        Verdict::Continue => {}
        Verdict::Queue(num) => out.push(Statement::Queue(stmt::Queue {
            num: Expression::Number(u32::from(*num)),
            flags: None,
        })),
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_written_comment_reads_back_as_its_text_and_fingerprint() {
        let r = Rule::new(vec![], Verdict::Accept, "allow web -> api all (p.toml:3)");
        let written = rule_comment(&r);
        let read = parse_comment(&written);
        assert_eq!(read.human, "allow web -> api all (p.toml:3)");
        assert_eq!(read.fingerprint, Some(fingerprint(&r)));
        // A hand-written comment has no fingerprint and keeps all of its text.
        let hand = parse_comment("operator's rule");
        assert_eq!(hand.human, "operator's rule");
        assert_eq!(hand.fingerprint, None);
        // A damaged suffix is stripped but yields no fingerprint.
        let damaged = parse_comment("deny a -> b [ng:zz]");
        assert_eq!((damaged.human, damaged.fingerprint), ("deny a -> b", None));
    }
}
