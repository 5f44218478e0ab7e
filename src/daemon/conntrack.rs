//! Cutting connections the policy no longer allows. The rules stop new connections; a
//! connection already open lives in conntrack and its packets pass as `established` until
//! its entry is removed. Removing an entry of a flow that is still allowed is harmless: the
//! next packet is picked up as new (`nf_conntrack_tcp_loose`) and the rules accept it again.

use crate::plan::{Plan, flow_permits};
use crate::policy::Proto;
use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;
use std::process::Command;

/// One conntrack entry, original direction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub proto: String,
    pub src: IpAddr,
    pub dst: IpAddr,
    pub sport: Option<u16>,
    pub dport: Option<u16>,
}

/// Parses `conntrack -L` lines (the first `src=`/`dst=`/`sport=`/`dport=` are the original
/// direction).
pub fn parse_listing(text: &str) -> Vec<Entry> {
    text.lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            let proto = words.next()?.to_string();
            let field = |key: &str| {
                line.split_whitespace()
                    .find_map(|w| w.strip_prefix(key))
                    .map(str::to_string)
            };
            Some(Entry {
                proto,
                src: field("src=")?.parse().ok()?,
                dst: field("dst=")?.parse().ok()?,
                sport: field("sport=").and_then(|p| p.parse().ok()),
                dport: field("dport=").and_then(|p| p.parse().ok()),
            })
        })
        .collect()
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

/// Where conntrack entries are listed and deleted.
pub trait Conntrack {
    fn list(&self) -> Vec<Entry>;
    /// Deletes entries from or to `addr`.
    fn delete_address(&self, addr: IpAddr);
    fn delete(&self, e: &Entry);
}

/// The `conntrack` tool (conntrack-tools) in the current network namespace.
pub struct ConntrackTool;

fn family_args(a: IpAddr) -> [&'static str; 2] {
    ["-f", if a.is_ipv4() { "ipv4" } else { "ipv6" }]
}

fn run(args: &[String]) -> Option<String> {
    match Command::new("conntrack").args(args).output() {
        // Exit 1 with "0 flow entries" is "nothing matched", not an error.
        Ok(out) => Some(String::from_utf8_lossy(&out.stdout).into_owned()),
        Err(e) => {
            tracing::warn!(
                "cannot run conntrack ({e}): open connections of revoked pairs are not cut"
            );
            None
        }
    }
}

impl Conntrack for ConntrackTool {
    fn list(&self) -> Vec<Entry> {
        let mut out = Vec::new();
        for f in ["ipv4", "ipv6"] {
            if let Some(text) = run(&["-L".into(), "-f".into(), f.into()]) {
                out.extend(parse_listing(&text));
            }
        }
        out
    }

    fn delete_address(&self, addr: IpAddr) {
        for dir in ["-s", "-d"] {
            let mut args: Vec<String> = family_args(addr).iter().map(|s| s.to_string()).collect();
            args.extend(["-D".into(), dir.into(), addr.to_string()]);
            run(&args);
        }
    }

    fn delete(&self, e: &Entry) {
        let mut args: Vec<String> = family_args(e.src).iter().map(|s| s.to_string()).collect();
        args.extend(["-D".into(), "-p".into(), e.proto.clone()]);
        args.extend([
            "-s".into(),
            e.src.to_string(),
            "-d".into(),
            e.dst.to_string(),
        ]);
        if let (Some(sp), Some(dp)) = (e.sport, e.dport) {
            args.extend([
                "--sport".into(),
                sp.to_string(),
                "--dport".into(),
                dp.to_string(),
            ]);
        }
        run(&args);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_original_direction() {
        let text = "tcp      6 431999 ESTABLISHED src=10.0.0.1 dst=10.0.0.2 sport=40000 dport=8080 src=10.0.0.2 dst=10.0.0.1 sport=8080 dport=40000 [ASSURED] mark=0 use=1\n\
                    icmp     1 29 src=fd00::1 dst=fd00::2 type=128 code=0 id=7 src=fd00::2 dst=fd00::1 type=129 code=0 id=7 mark=0 use=1\n\
                    conntrack v1.4.7 (conntrack-tools): 2 flow entries have been shown.\n";
        let e = parse_listing(text);
        assert_eq!(e.len(), 2);
        assert_eq!(e[0].dport, Some(8080));
        assert_eq!(e[0].src.to_string(), "10.0.0.1");
        assert_eq!(e[1].proto, "icmp");
        assert_eq!(e[1].dport, None);
    }
}
