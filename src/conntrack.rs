//! Cutting connections the policy no longer allows. The rules stop new connections; a
//! connection already open lives in conntrack and its packets pass as `established` until
//! its entry is removed. Removing an entry of a flow that is still allowed is harmless: the
//! next packet is picked up as new (`nf_conntrack_tcp_loose`) and the rules accept it again.

use crate::nfnetlink::{NLM_F_ACK, NLM_F_DUMP, NetlinkError, Sock, attr, find, nested, with_sock};
use crate::plan::{Plan, flow_permits};
use crate::policy::Proto;
use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;

/// One conntrack entry, original direction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub proto: String,
    pub src: IpAddr,
    pub dst: IpAddr,
    pub sport: Option<u16>,
    pub dport: Option<u16>,
    /// The kernel's original-direction tuple and zone, as dumped: what identifies the entry
    /// when it is deleted (ICMP ids, zones and all).
    pub key: EntryKey,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EntryKey {
    family: u8,
    tuple: Vec<u8>,
    zone: Option<Vec<u8>>,
    id: Option<Vec<u8>>,
}

/// Entries between two admitted containers on one managed bridge that `plan` does not allow.
/// With `only`, just the entries touching those addresses.
pub fn revoked(plan: &Plan, entries: &[Entry], only: Option<&BTreeSet<IpAddr>>) -> Vec<Entry> {
    // address → (bridge, groups) of admitted endpoints.
    let mut who: HashMap<IpAddr, (&str, &[String])> = HashMap::new();
    for c in &plan.containers {
        for e in c.endpoints.iter().filter(|e| e.admitted) {
            for a in e.addresses() {
                who.insert(a, (e.bridge.as_str(), c.groups.as_slice()));
            }
        }
    }
    entries
        .iter()
        .filter(|e| only.is_none_or(|o| o.contains(&e.src) || o.contains(&e.dst)))
        .filter(|e| {
            let (Some((b1, g1)), Some((b2, g2))) = (who.get(&e.src), who.get(&e.dst)) else {
                return false;
            };
            if b1 != b2 {
                return false;
            }
            let proto = match e.proto.as_str() {
                "tcp" => Some(Proto::Tcp),
                "udp" => Some(Proto::Udp),
                "sctp" => Some(Proto::Sctp),
                "icmp" | "icmpv6" => Some(Proto::Icmp),
                _ => None,
            };
            let port = e.dport.unwrap_or(0);
            !plan
                .flows
                .iter()
                .any(|f| flow_permits(f, g1, g2, proto, port))
        })
        .cloned()
        .collect()
}

/// Where conntrack entries are listed and deleted. The plain methods log a failure and go
/// on (a probe's own entries, see `verify`); the `try_` ones return it, for the daemon,
/// which counts it and retries the cut until it succeeds.
pub trait Conntrack {
    fn list(&self) -> Vec<Entry>;
    /// Deletes every entry from or to one of `addrs`.
    fn delete_addresses(&self, addrs: &[IpAddr]);
    fn delete(&self, e: &Entry);

    fn try_list(&self) -> Result<Vec<Entry>, NetlinkError> {
        Ok(self.list())
    }
    fn try_delete_addresses(&self, addrs: &[IpAddr]) -> Result<(), NetlinkError> {
        self.delete_addresses(addrs);
        Ok(())
    }
    fn try_delete(&self, e: &Entry) -> Result<(), NetlinkError> {
        self.delete(e);
        Ok(())
    }
}

const NFNL_SUBSYS_CTNETLINK: u16 = 1;
const IPCTNL_MSG_CT_GET: u16 = 1;
const IPCTNL_MSG_CT_DELETE: u16 = 2;
const CTA_TUPLE_ORIG: u16 = 1;
const CTA_ID: u16 = 12;
const CTA_ZONE: u16 = 18;
const CTA_TUPLE_IP: u16 = 1;
const CTA_TUPLE_PROTO: u16 = 2;
const CTA_IP_V4_SRC: u16 = 1;
const CTA_IP_V4_DST: u16 = 2;
const CTA_IP_V6_SRC: u16 = 3;
const CTA_IP_V6_DST: u16 = 4;
const CTA_PROTO_NUM: u16 = 1;
const CTA_PROTO_SRC_PORT: u16 = 2;
const CTA_PROTO_DST_PORT: u16 = 3;
const AF_INET: u8 = libc::AF_INET as u8;
const AF_INET6: u8 = libc::AF_INET6 as u8;

fn addr(family: u8, p: &[u8]) -> Option<IpAddr> {
    match family {
        AF_INET => Some(IpAddr::from(<[u8; 4]>::try_from(p.get(..4)?).ok()?)),
        _ => Some(IpAddr::from(<[u8; 16]>::try_from(p.get(..16)?).ok()?)),
    }
}

fn port(p: &[u8]) -> Option<u16> {
    Some(u16::from_be_bytes(p.get(..2)?.try_into().ok()?))
}

fn proto_name(num: u8) -> String {
    match num {
        1 => "icmp".into(),
        6 => "tcp".into(),
        17 => "udp".into(),
        58 => "icmpv6".into(),
        132 => "sctp".into(),
        n => n.to_string(),
    }
}

/// One ctnetlink dump message (attributes after the nfgenmsg header) as an entry.
pub fn parse_entry(family: u8, body: &[u8]) -> Option<Entry> {
    let tuple = find(body, CTA_TUPLE_ORIG)?;
    let ip = find(tuple, CTA_TUPLE_IP)?;
    let (s, d) = if family == AF_INET {
        (CTA_IP_V4_SRC, CTA_IP_V4_DST)
    } else {
        (CTA_IP_V6_SRC, CTA_IP_V6_DST)
    };
    let proto = find(tuple, CTA_TUPLE_PROTO)?;
    let num = *find(proto, CTA_PROTO_NUM)?.first()?;
    let ports = matches!(num, 6 | 17 | 132 | 33 | 136);
    Some(Entry {
        proto: proto_name(num),
        src: addr(family, find(ip, s)?)?,
        dst: addr(family, find(ip, d)?)?,
        sport: find(proto, CTA_PROTO_SRC_PORT)
            .and_then(port)
            .filter(|_| ports),
        dport: find(proto, CTA_PROTO_DST_PORT)
            .and_then(port)
            .filter(|_| ports),
        key: EntryKey {
            family,
            tuple: tuple.to_vec(),
            zone: find(body, CTA_ZONE).map(<[u8]>::to_vec),
            id: find(body, CTA_ID).map(<[u8]>::to_vec),
        },
    })
}

/// The delete request for one entry: its original tuple (and zone, and id so that a new
/// entry with the same tuple is left alone). Never empty of a tuple: a ctnetlink delete
/// without one flushes the whole table.
fn delete_request(key: &EntryKey) -> Option<Vec<u8>> {
    if key.tuple.is_empty() {
        return None;
    }
    let mut p = Vec::with_capacity(key.tuple.len() + 32);
    nested(&mut p, CTA_TUPLE_ORIG, &key.tuple);
    if let Some(z) = &key.zone {
        attr(&mut p, CTA_ZONE, z);
    }
    if let Some(id) = &key.id {
        attr(&mut p, CTA_ID, id);
    }
    Some(p)
}

/// Conntrack over ctnetlink, in this process and network namespace: no `conntrack` process
/// per cut, whose start and whole-table walk cost tens of milliseconds and competed with the
/// next event for the CPU. The socket stays open on the cutting thread (see
/// `nfnetlink::with_sock`: closing one can stall nftables transactions).
pub struct Ctnetlink;

impl Ctnetlink {
    fn dump(sock: &mut Sock, family: u8) -> Result<Vec<Entry>, NetlinkError> {
        // A dump interrupted by a concurrent change is read again, up to a few times; what
        // it returned is still a valid (if partial) list.
        let mut last = Err(NetlinkError::Unstable);
        for _ in 0..3 {
            match sock.call(IPCTNL_MSG_CT_GET, NLM_F_DUMP, family, &[]) {
                Ok(msgs) => {
                    return Ok(msgs.iter().filter_map(|m| parse_entry(family, m)).collect());
                }
                Err(e) => last = Err(e),
            }
        }
        last
    }

    fn entries(families: &[u8]) -> Result<Vec<Entry>, NetlinkError> {
        crate::fault::check(crate::fault::CONNTRACK)?;
        with_sock(NFNL_SUBSYS_CTNETLINK, |sock| {
            let mut out = Vec::new();
            for f in families {
                out.extend(Self::dump(sock, *f)?);
            }
            Ok(out)
        })
    }

    fn delete_all<'a>(entries: impl IntoIterator<Item = &'a Entry>) -> Result<(), NetlinkError> {
        crate::fault::check(crate::fault::CONNTRACK)?;
        with_sock(NFNL_SUBSYS_CTNETLINK, |sock| Self::delete_on(sock, entries))
    }

    fn delete_on<'a>(
        sock: &mut Sock,
        entries: impl IntoIterator<Item = &'a Entry>,
    ) -> Result<(), NetlinkError> {
        for e in entries {
            let Some(req) = delete_request(&e.key) else {
                continue;
            };
            match sock.call(IPCTNL_MSG_CT_DELETE, NLM_F_ACK, e.key.family, &req) {
                Ok(_) => {}
                // Gone meanwhile (timed out, or closed): nothing left to cut.
                Err(NetlinkError::Kernel(k)) if k.raw_os_error() == Some(libc::ENOENT) => {}
                Err(err) => return Err(err),
            }
        }
        Ok(())
    }
}

fn warn(e: NetlinkError) {
    tracing::warn!("conntrack: {e}: open connections of revoked pairs are not cut");
}

impl Conntrack for Ctnetlink {
    fn list(&self) -> Vec<Entry> {
        self.try_list().unwrap_or_else(|e| {
            warn(e);
            Vec::new()
        })
    }

    fn delete_addresses(&self, addrs: &[IpAddr]) {
        if let Err(e) = self.try_delete_addresses(addrs) {
            warn(e);
        }
    }

    fn delete(&self, e: &Entry) {
        if let Err(e) = self.try_delete(e) {
            warn(e);
        }
    }

    fn try_list(&self) -> Result<Vec<Entry>, NetlinkError> {
        Self::entries(&[AF_INET, AF_INET6])
    }

    fn try_delete_addresses(&self, addrs: &[IpAddr]) -> Result<(), NetlinkError> {
        if addrs.is_empty() {
            return Ok(());
        }
        let mut families = Vec::new();
        if addrs.iter().any(IpAddr::is_ipv4) {
            families.push(AF_INET);
        }
        if addrs.iter().any(IpAddr::is_ipv6) {
            families.push(AF_INET6);
        }
        let doomed: BTreeSet<IpAddr> = addrs.iter().copied().collect();
        Self::entries(&families).and_then(|all| {
            Self::delete_all(
                all.iter()
                    .filter(|e| doomed.contains(&e.src) || doomed.contains(&e.dst)),
            )
        })
    }

    fn try_delete(&self, e: &Entry) -> Result<(), NetlinkError> {
        Self::delete_all([e])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tuple(src: [u8; 4], dst: [u8; 4], proto: u8, ports: Option<(u16, u16)>) -> Vec<u8> {
        let mut ip = Vec::new();
        attr(&mut ip, CTA_IP_V4_SRC, &src);
        attr(&mut ip, CTA_IP_V4_DST, &dst);
        let mut pr = Vec::new();
        attr(&mut pr, CTA_PROTO_NUM, &[proto]);
        if let Some((s, d)) = ports {
            attr(&mut pr, CTA_PROTO_SRC_PORT, &s.to_be_bytes());
            attr(&mut pr, CTA_PROTO_DST_PORT, &d.to_be_bytes());
        }
        let mut t = Vec::new();
        nested(&mut t, CTA_TUPLE_IP, &ip);
        nested(&mut t, CTA_TUPLE_PROTO, &pr);
        t
    }

    #[test]
    fn parses_the_original_direction_and_keeps_the_key() {
        let orig = tuple([10, 0, 0, 1], [10, 0, 0, 2], 6, Some((40000, 8080)));
        let reply = tuple([10, 0, 0, 2], [10, 0, 0, 1], 6, Some((8080, 40000)));
        let mut body = Vec::new();
        nested(&mut body, CTA_TUPLE_ORIG, &orig);
        nested(&mut body, 2, &reply);
        attr(&mut body, CTA_ID, &7u32.to_be_bytes());
        let e = parse_entry(AF_INET, &body).expect("entry");
        assert_eq!(e.proto, "tcp");
        assert_eq!(e.src.to_string(), "10.0.0.1");
        assert_eq!(e.dst.to_string(), "10.0.0.2");
        assert_eq!((e.sport, e.dport), (Some(40000), Some(8080)));
        // The delete request carries the tuple as dumped, and the id.
        let req = delete_request(&e.key).expect("request");
        assert_eq!(find(&req, CTA_TUPLE_ORIG), Some(orig.as_slice()));
        assert_eq!(find(&req, CTA_ID), Some(&7u32.to_be_bytes()[..]));
    }

    #[test]
    fn icmp_has_no_ports() {
        let mut body = Vec::new();
        nested(
            &mut body,
            CTA_TUPLE_ORIG,
            &tuple([10, 0, 0, 1], [10, 0, 0, 2], 1, None),
        );
        let e = parse_entry(AF_INET, &body).expect("entry");
        assert_eq!(e.proto, "icmp");
        assert_eq!(e.dport, None);
    }

    #[test]
    fn never_a_delete_without_a_tuple() {
        // A ctnetlink delete without a tuple is a flush of the whole table.
        assert_eq!(delete_request(&EntryKey::default()), None);
        assert!(parse_entry(AF_INET, &[]).is_none());
    }
}
