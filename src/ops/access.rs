//! Who may open what to whom, evaluated from nftables objects rather than from the policy.
//!
//! `diff` must know what the kernel enforces *today*, and the only trustworthy record of
//! that is the live table itself: its group sets (which `bridge . address` belongs where)
//! and the structure of the allow rules in `isolate` and the per-source chains it jumps to
//! (which set may reach which set, on which ports). The desired ruleset is read through the
//! very same model ([`View::from_ruleset`]), so "before" and "after" are computed by one
//! function and a difference between them is a difference in enforcement, never in
//! bookkeeping.
//! (A policy summary stored in a table or set comment was rejected: nft caps comments at
//! 128 bytes, and it would describe what was *meant*, not what the rules do.)

use super::service::port_ranges;
pub use super::service::{Access, Matrix, PairAccess, Service};
use crate::nft::LiveState;
use crate::nft::live::{LiveExpr, LiveStmt};
use crate::nft::render::comment_text;
use crate::plan::ruleset::*;
use crate::plan::{Plan, names};
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

/// One allow rule of the `isolate` chain, reduced to what it permits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessRule {
    pub v6: bool,
    pub src_set: String,
    pub dst_set: String,
    pub service: Service,
    /// The rule's comment (policy line), fingerprint stripped.
    pub comment: String,
}

/// Enforcement as a set of facts: bridges netguard judges, set contents, allow rules.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct View {
    /// Bridges whose intra-bridge traffic goes through `isolate`.
    pub judged: BTreeSet<String>,
    pub sets: BTreeMap<String, BTreeSet<Elem>>,
    pub rules: Vec<AccessRule>,
    /// Accept rules in `isolate` or its `from_*` chains that netguard could not read
    /// (hand-edited): reported.
    pub unreadable_rules: Vec<String>,
    /// The inet table exists.
    pub present: bool,
    /// Bridge name patterns of the engine (`docker0`, `br-*`; `podman*`): such bridges not
    /// known yet are judged too (fail closed), unless listed in the `unmanaged` set.
    pub unknown_patterns: Vec<String>,
    /// Bridges the inet hook does not see (br_netfilter off for them): never judged.
    pub unseen: BTreeSet<String>,
    /// The edges this table closes and the lines that keep them open.
    pub edges: super::edges::Edges,
    /// The published mappings this table judges as the container behind them.
    pub published: BTreeSet<super::edges::Published>,
}

fn strip_fingerprint(c: &str) -> String {
    comment_text(c).to_string()
}

impl View {
    /// The enforcement a desired ruleset describes.
    pub fn from_ruleset(r: &Ruleset) -> View {
        let mut v = View::default();
        let Some(t) = r.table(Family::Inet) else {
            return v;
        };
        v.present = true;
        for s in &t.sets {
            v.sets.insert(s.name.clone(), s.elements.clone());
        }
        v.judged = judged_of(&v.sets);
        v.edges = super::edges::edges_of_table(t);
        v.published = super::edges::published_of(&v.sets);
        v.unknown_patterns = t
            .chains
            .iter()
            .filter(|c| c.name == names::FORWARD)
            .flat_map(|c| &c.rules)
            .flat_map(|r| &r.matches)
            .filter_map(|m| match m {
                Match::IifPattern(p) => Some(p.clone()),
                _ => None,
            })
            .collect();
        let jumps = t
            .chains
            .iter()
            .filter(|c| c.name == names::ISOLATE)
            .flat_map(|c| &c.rules)
            .filter_map(|r| match &r.verdict {
                Verdict::Jump(target) => Some(target.as_str()),
                _ => None,
            });
        for ch in judging_chains(jumps)
            .into_iter()
            .filter_map(|n| t.chains.iter().find(|c| c.name == n))
        {
            for rule in &ch.rules {
                if rule.verdict != Verdict::Accept {
                    continue;
                }
                let mut src = None;
                let mut dst = None;
                let mut service = Service::All;
                for m in &rule.matches {
                    match m {
                        Match::SaddrInSet {
                            ip,
                            iface: IfSide::Iif,
                            set,
                        } => src = Some((*ip, set.clone())),
                        Match::DaddrInSet {
                            ip,
                            iface: IfSide::Oif,
                            set,
                        } => dst = Some((*ip, set.clone())),
                        Match::L4 { proto, dports, .. } => {
                            service = Service::Ports {
                                proto: proto.clone(),
                                ranges: if dports.is_empty() {
                                    vec![(0, 65535)]
                                } else {
                                    dports.clone()
                                },
                            }
                        }
                        Match::IcmpEcho(_) => service = Service::Icmp,
                        _ => {}
                    }
                }
                if let (Some((ip, src_set)), Some((_, dst_set))) = (src, dst) {
                    v.rules.push(AccessRule {
                        v6: ip == IpVersion::V6,
                        src_set,
                        dst_set,
                        service,
                        comment: rule.comment.clone(),
                    });
                }
            }
        }
        v
    }

    /// The enforcement the live inet table performs (absent table: nothing judged).
    pub fn from_live(live: &LiveState) -> View {
        let mut v = View::default();
        let Some(Some(t)) = live.get(&Family::Inet) else {
            return v;
        };
        v.present = true;
        for (name, s) in &t.sets {
            v.sets.insert(name.clone(), s.elements.clone());
        }
        let (edges, unreadable) = super::edges::edges_of_live(t);
        v.edges = edges;
        v.unreadable_rules.extend(unreadable);
        v.published = super::edges::published_of(&v.sets);
        // Traffic only reaches `isolate` through the forward chain's jump.
        if let Some(fwd) = t.chains.get(names::FORWARD) {
            v.judged = judged_of(&v.sets);
            // The jumps that match a plain `iifname` judge the engine's bridges netguard
            // does not know (`Engine::bridge_patterns`); the other jump matches the set of
            // managed bridges (`@bridges`), and the chain also holds the established accept.
            v.unknown_patterns = fwd
                .rules
                .iter()
                .filter(|r| {
                    r.expr
                        .iter()
                        .any(|st| matches!(st, LiveStmt::Jump(t) if t == names::ISOLATE))
                })
                .flat_map(|r| &r.expr)
                .filter_map(|st| match st {
                    LiveStmt::Match {
                        left: LiveExpr::Meta(key),
                        right,
                        ..
                    } if key == "iifname" => right
                        .as_str()
                        .filter(|p| !p.starts_with('@'))
                        .map(String::from),
                    _ => None,
                })
                .collect();
        }
        let jumps = t
            .chains
            .get(names::ISOLATE)
            .into_iter()
            .flat_map(|c| &c.rules)
            .flat_map(|r| &r.expr)
            .filter_map(|st| match st {
                LiveStmt::Jump(t) => Some(t.as_str()),
                _ => None,
            });
        for ch in judging_chains(jumps)
            .into_iter()
            .filter_map(|n| t.chains.get(n))
        {
            for r in &ch.rules {
                let comment = strip_fingerprint(r.comment.as_deref().unwrap_or(""));
                match parse_live_rule(&r.expr, &v.sets) {
                    LiveRuleKind::Allow {
                        v6,
                        src_set,
                        dst_set,
                        service,
                    } => v.rules.push(AccessRule {
                        v6,
                        src_set,
                        dst_set,
                        service,
                        comment,
                    }),
                    LiveRuleKind::Unreadable => v.unreadable_rules.push(comment),
                    LiveRuleKind::Other => {}
                }
            }
        }
        v
    }

    /// Whether traffic between two ports of `bridge` goes through `isolate`.
    pub fn judges(&self, bridge: &str) -> bool {
        if self.unseen.contains(bridge) {
            return false;
        }
        if self.judged.contains(bridge) {
            return true;
        }
        self.unknown_patterns
            .iter()
            .any(|p| crate::policy::Glob::new(p).is_ok_and(|g| g.matches(bridge)))
            && !self
                .sets
                .get(names::UNMANAGED)
                .is_some_and(|s| s.contains(&Elem::Ifname(bridge.to_string())))
    }

    /// Sets an endpoint address belongs to, in this view.
    fn memberships(&self, bridge: &str, addr: IpAddr) -> BTreeSet<&str> {
        let e = match addr {
            IpAddr::V4(a) => Elem::IfnameV4(bridge.to_string(), a),
            IpAddr::V6(a) => Elem::IfnameV6(bridge.to_string(), a),
        };
        self.sets
            .iter()
            .filter(|(_, els)| els.contains(&e))
            .map(|(n, _)| n.as_str())
            .collect()
    }

    /// Groups (from `g_NAME_4`/`g_NAME_6`) the address is a member of, and whether it is
    /// admitted at all (in `all_4`/`all_6`).
    pub fn groups_of(&self, bridge: &str, addr: IpAddr) -> (bool, BTreeSet<String>) {
        let m = self.memberships(bridge, addr);
        let admitted = m.contains(names::ALL_4) || m.contains(names::ALL_6);
        let groups = m
            .iter()
            .filter_map(|s| {
                s.strip_prefix("g_")
                    .and_then(|g| g.strip_suffix("_4").or_else(|| g.strip_suffix("_6")))
            })
            .map(str::to_string)
            .collect();
        (admitted, groups)
    }
}

/// The chains whose accept rules decide: `isolate`, then the per-source chains it jumps to,
/// in dispatch order. A rule in a chain nothing jumps to permits nothing.
fn judging_chains<'a>(isolate_jumps: impl Iterator<Item = &'a str>) -> Vec<&'a str> {
    let mut out = vec![names::ISOLATE];
    for target in isolate_jumps {
        if !out.contains(&target) {
            out.push(target);
        }
    }
    out
}

fn judged_of(sets: &BTreeMap<String, BTreeSet<Elem>>) -> BTreeSet<String> {
    sets.get(names::BRIDGE_PAIRS)
        .map(|els| {
            els.iter()
                .filter_map(|e| match e {
                    Elem::IfnamePair(a, b) if a == b => Some(a.clone()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default()
}

enum LiveRuleKind {
    Allow {
        v6: bool,
        src_set: String,
        dst_set: String,
        service: Service,
    },
    Unreadable,
    Other,
}

/// Reads one live `isolate` rule as nft 1.0.6 lists it: `iifname . ip saddr @S
/// oifname . ip daddr @D [tcp dport {..} | icmp type echo-request] accept`.
fn parse_live_rule(expr: &[LiveStmt], sets: &BTreeMap<String, BTreeSet<Elem>>) -> LiveRuleKind {
    let mut accept = false;
    let mut unknown = false;
    let mut src: Option<(bool, String)> = None;
    let mut dst: Option<(bool, String)> = None;
    let mut service = Service::All;
    for st in expr {
        let (left, right) = match st {
            LiveStmt::Accept => {
                accept = true;
                continue;
            }
            LiveStmt::Passive => continue,
            LiveStmt::Match { op, left, right } if op == "==" => (left, right),
            _ => {
                unknown = true;
                continue;
            }
        };
        match left {
            LiveExpr::Concat(parts) => {
                let meta = match parts.first() {
                    Some(LiveExpr::Meta(k)) => Some(k.as_str()),
                    _ => None,
                };
                let (proto, field) = match parts.get(1) {
                    Some(LiveExpr::Payload { protocol, field }) => {
                        (Some(protocol.as_str()), Some(field.as_str()))
                    }
                    _ => (None, None),
                };
                let v6 = proto == Some("ip6");
                match (meta, proto, field, right.set_ref()) {
                    (Some("iifname"), Some("ip" | "ip6"), Some("saddr"), Some(s)) => {
                        src = Some((v6, s.to_string()))
                    }
                    (Some("oifname"), Some("ip" | "ip6"), Some("daddr"), Some(s)) => {
                        dst = Some((v6, s.to_string()))
                    }
                    _ => unknown = true,
                }
            }
            LiveExpr::Payload { protocol, field } => match (protocol.as_str(), field.as_str()) {
                (pr @ ("tcp" | "udp" | "sctp" | "th"), "dport") => match port_ranges(right, sets) {
                    Some(ranges) => {
                        let proto = match (pr, &service) {
                            ("th", Service::Ports { proto, .. }) => proto.clone(),
                            _ => pr.to_string(),
                        };
                        service = Service::Ports { proto, ranges }
                    }
                    None => unknown = true,
                },
                ("icmp" | "icmpv6", "type") if right.as_str() == Some("echo-request") => {
                    service = Service::Icmp
                }
                _ => unknown = true,
            },
            LiveExpr::Meta(key) if key == "l4proto" && right.as_str().is_some() => {
                if let (Some(p), Service::All) = (right.as_str(), &service) {
                    service = Service::Ports {
                        proto: p.to_string(),
                        ranges: vec![(0, 65535)],
                    };
                }
            }
            _ => unknown = true,
        }
    }
    match (accept, src, dst) {
        (true, Some((v6, src_set)), Some((_, dst_set))) if !unknown => LiveRuleKind::Allow {
            v6,
            src_set,
            dst_set,
            service,
        },
        (true, Some(_), Some(_)) => LiveRuleKind::Unreadable,
        _ => LiveRuleKind::Other,
    }
}

struct Ep<'a> {
    container: &'a str,
    bridge: &'a str,
    addr: IpAddr,
    sets: BTreeSet<&'a str>,
}

/// Evaluates a view for every ordered pair of containers sharing a bridge. Pairs on a
/// bridge the view does not judge are open (all traffic) when `unjudged_open`, and left
/// out otherwise.
pub fn matrix(view: &View, plan: &Plan, unjudged_open: bool) -> Matrix {
    let mut eps: Vec<Ep> = Vec::new();
    for c in &plan.containers {
        for e in &c.endpoints {
            for addr in e.addresses() {
                eps.push(Ep {
                    container: &c.name,
                    bridge: &e.bridge,
                    addr,
                    sets: view.memberships(&e.bridge, addr),
                });
            }
        }
    }
    let mut m = Matrix::new();
    for a in &eps {
        for b in &eps {
            if a.container == b.container
                || a.bridge != b.bridge
                || a.addr == b.addr
                || a.addr.is_ipv6() != b.addr.is_ipv6()
            {
                continue;
            }
            let v6 = a.addr.is_ipv6();
            let access = if view.judges(a.bridge) {
                let mut acc = Access::default();
                for r in view.rules.iter().filter(|r| r.v6 == v6) {
                    if a.sets.contains(r.src_set.as_str()) && b.sets.contains(r.dst_set.as_str()) {
                        acc.add(&r.service);
                    }
                }
                acc
            } else if unjudged_open {
                Access::everything()
            } else {
                continue;
            };
            let pair = m
                .entry((a.container.to_string(), b.container.to_string()))
                .or_default();
            let slot = if v6 { &mut pair.v6 } else { &mut pair.v4 };
            slot.get_or_insert_with(Access::default).union(&access);
        }
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    /// Statements as nft's JSON listing has them, read the way `live::parse_table` does.
    fn stmts(expr: &[Value]) -> Vec<LiveStmt> {
        expr.iter().map(LiveStmt::from_json).collect()
    }

    fn addr_match(iface: &str, proto: &str, field: &str, set: &str) -> Value {
        json!({"match": {"op": "==", "left": {"concat": [{"meta": {"key": iface}},
            {"payload": {"protocol": proto, "field": field}}]}, "right": format!("@{set}")}})
    }

    /// The patterns of unknown bridges are read from the forward chain's jumps that match a
    /// plain `iifname`; the established accept and the jump on `@bridges` add none.
    #[test]
    fn unknown_bridge_patterns_are_read_from_the_jumps() {
        use crate::nft::live::{LiveChain, LiveRule, LiveTable};
        let rule = |expr: Vec<Value>| LiveRule {
            handle: None,
            comment: None,
            packets: None,
            bytes: None,
            expr: stmts(&expr),
        };
        let established = rule(vec![
            json!({"match": {"op": "in", "left": {"ct": {"key": "state"}}, "right": ["established", "related"]}}),
            json!({"accept": null}),
        ]);
        let managed = rule(vec![
            json!({"match": {"op": "==", "left": {"concat": [{"meta": {"key": "iifname"}}, {"meta": {"key": "oifname"}}]}, "right": "@bridges"}}),
            json!({"jump": {"target": "isolate"}}),
        ]);
        let jump = |p: &str| {
            rule(vec![
                json!({"match": {"op": "==", "left": {"meta": {"key": "iifname"}}, "right": p}}),
                json!({"match": {"op": "==", "left": {"meta": {"key": "oifname"}}, "right": p}}),
                json!({"match": {"op": "!=", "left": {"meta": {"key": "iifname"}}, "right": "@unmanaged"}}),
                json!({"jump": {"target": "isolate"}}),
            ])
        };
        let view = |rules: Vec<LiveRule>| {
            let mut t = LiveTable::default();
            t.chains
                .insert(names::FORWARD.into(), LiveChain { base: None, rules });
            View::from_live(&[(Family::Inet, Some(t))].into_iter().collect())
        };
        let v = view(vec![established.clone(), managed.clone()]);
        assert!(v.unknown_patterns.is_empty(), "{:?}", v.unknown_patterns);
        assert!(!v.judges("br-1234"));
        let v = view(vec![
            established.clone(),
            managed.clone(),
            jump("docker0"),
            jump("br-*"),
        ]);
        assert_eq!(v.unknown_patterns, ["docker0", "br-*"]);
        assert!(v.judges("br-1234") && v.judges("docker0") && !v.judges("podman3"));
        let v = view(vec![established, managed, jump("podman*")]);
        assert!(v.judges("podman3") && !v.judges("br-1234"));
    }

    /// Allow rules live in the per-source chains; a chain `isolate` does not jump to (left
    /// over, or hand-made) permits nothing, whatever its rules say.
    #[test]
    fn allow_rules_count_only_in_chains_isolate_jumps_to() {
        use crate::nft::live::{LiveChain, LiveRule, LiveTable};
        let rule = |expr: Vec<Value>| LiveRule {
            handle: None,
            comment: Some("allow web -> api all (p.toml:3) [ng:0000000000000001]".into()),
            packets: None,
            bytes: None,
            expr: stmts(&expr),
        };
        let allow = rule(vec![
            addr_match("oifname", "ip", "daddr", "g_api_4"),
            addr_match("iifname", "ip", "saddr", "g_web_4"),
            json!({"accept": null}),
        ]);
        let dispatch = rule(vec![
            addr_match("iifname", "ip", "saddr", "g_web_4"),
            json!({"jump": {"target": "from_g_web_4"}}),
        ]);
        let view = |isolate: Vec<LiveRule>| {
            let mut t = LiveTable::default();
            t.chains.insert(
                names::ISOLATE.into(),
                LiveChain {
                    base: None,
                    rules: isolate,
                },
            );
            t.chains.insert(
                "from_g_web_4".into(),
                LiveChain {
                    base: None,
                    rules: vec![allow.clone()],
                },
            );
            View::from_live(&[(Family::Inet, Some(t))].into_iter().collect())
        };
        let v = view(vec![dispatch]);
        assert_eq!(v.rules.len(), 1);
        assert_eq!(
            (v.rules[0].src_set.as_str(), v.rules[0].dst_set.as_str()),
            ("g_web_4", "g_api_4")
        );
        assert_eq!(v.rules[0].comment, "allow web -> api all (p.toml:3)");
        assert!(view(vec![]).rules.is_empty(), "nothing jumps to the chain");
    }

    /// The forms nft 1.0.6 lists netguard's allow rules in (it rewrites
    /// `meta l4proto tcp th dport { 8080 }` into `tcp dport 8080`).
    #[test]
    fn live_rules_as_nft_lists_them() {
        let src = addr_match("iifname", "ip6", "saddr", "g_web_6");
        let dst = addr_match("oifname", "ip6", "daddr", "g_api_6");
        let sets: BTreeMap<String, BTreeSet<Elem>> = [(
            "ports_x".to_string(),
            [Elem::Port(5432, 5432), Elem::Port(9000, 9010)].into(),
        )]
        .into();
        let rule = |extra: Vec<Value>| {
            let mut v = vec![src.clone(), dst.clone()];
            v.extend(extra);
            v.push(json!({"counter": {"packets": 1, "bytes": 2}}));
            v.push(json!({"accept": null}));
            parse_live_rule(&stmts(&v), &sets)
        };
        let svc = |k: LiveRuleKind| match k {
            LiveRuleKind::Allow { service, v6, .. } => {
                assert!(v6);
                Some(service)
            }
            _ => None,
        };
        let dport = |proto: &str, right: Value| json!({"match": {"op": "==", "left": {"payload": {"protocol": proto, "field": "dport"}}, "right": right}});
        assert_eq!(svc(rule(vec![])), Some(Service::All));
        assert_eq!(
            svc(rule(vec![dport("udp", json!(53))])),
            Some(Service::Ports {
                proto: "udp".into(),
                ranges: vec![(53, 53)]
            })
        );
        assert_eq!(
            svc(rule(vec![dport(
                "sctp",
                json!({"set": [7, {"range": [9000, 9010]}]})
            )])),
            Some(Service::Ports {
                proto: "sctp".into(),
                ranges: vec![(7, 7), (9000, 9010)]
            })
        );
        // A named port set, as netguard writes lists of two or more ports.
        assert_eq!(
            svc(rule(vec![dport("tcp", json!("@ports_x"))])),
            Some(Service::Ports {
                proto: "tcp".into(),
                ranges: vec![(5432, 5432), (9000, 9010)]
            })
        );
        // A set the table does not have: reported, not guessed.
        assert!(matches!(
            rule(vec![dport("tcp", json!("@ports_gone"))]),
            LiveRuleKind::Unreadable
        ));
        let icmp = json!({"match": {"op": "==", "left": {"payload": {"protocol": "icmpv6", "field": "type"}}, "right": "echo-request"}});
        let l4 = json!({"match": {"op": "==", "left": {"meta": {"key": "l4proto"}}, "right": "ipv6-icmp"}});
        assert_eq!(svc(rule(vec![icmp.clone()])), Some(Service::Icmp));
        assert_eq!(
            svc(rule(vec![icmp.clone(), l4.clone()])),
            Some(Service::Icmp)
        );
        assert_eq!(svc(rule(vec![l4, icmp])), Some(Service::Icmp));
        // Something netguard never writes: reported, not guessed.
        let odd = json!({"match": {"op": "!=", "left": {"payload": {"protocol": "tcp", "field": "dport"}}, "right": 22}});
        assert!(matches!(rule(vec![odd]), LiveRuleKind::Unreadable));
        // Not an allow rule at all.
        assert!(matches!(
            parse_live_rule(
                &stmts(&[json!({"counter": null}), json!({"drop": null})]),
                &sets
            ),
            LiveRuleKind::Other
        ));
    }
}
