//! What the fuzz targets assert beyond "no panic", shared by all of them. Each check panics
//! with a message naming the broken property, so libFuzzer records the input as a crash.
//! docs/reliability.md lists the properties per target.

use netguard::inventory::{Engine, Inventory, exact_ifname, parse_inventory};
use netguard::nft::{LiveState, diff};
use netguard::plan::ruleset::{Elem, Family};
use netguard::plan::{
    LOG_PREFIX, LOG_PREFIX_EGRESS, LOG_PREFIX_HOST, LOG_PREFIX_INGRESS, LOG_PREFIX_PUBLISHED, Plan,
    names,
};
use netguard::policy::{Policy, parse_policy};
use serde_json::Value;
use std::collections::BTreeSet;
use std::net::IpAddr;
use std::path::Path;

pub const EXAMPLE_POLICY: &str = include_str!("../../policy.example.toml");
pub const EXAMPLE_INVENTORY: &str = include_str!("../../docs/example-inventory.toml");

/// The policy every target but `policy` plans with: the shipped example.
pub fn example_policy() -> Policy {
    parse_policy(Path::new("policy.example.toml"), EXAMPLE_POLICY)
        .unwrap_or_else(|e| panic!("the example policy is valid: {e}"))
}

/// The inventory `policy` plans against: the shop of the docs.
pub fn example_inventory() -> Inventory {
    parse_inventory(Path::new("example-inventory.toml"), EXAMPLE_INVENTORY)
        .unwrap_or_else(|e| panic!("the example inventory is valid: {e}"))
}

/// The nft JSON batch that creates `plan`'s ruleset from nothing (what `apply` sends to a
/// host without netguard's tables). Property: it always serialises.
pub fn render(plan: &Plan) -> Value {
    let live: LiveState = [(Family::Inet, None), (Family::Bridge, None)].into();
    let changes = diff(&plan.ruleset, &live);
    serde_json::to_value(changes.batch())
        .unwrap_or_else(|e| panic!("property (a): an accepted input must render: {e}"))
}

/// Plans, renders and checks everything `check_rendered` checks.
pub fn plan_and_check(policy: &Policy, inventory: &Inventory) -> Plan {
    let p = netguard::plan::plan(policy, inventory);
    let doc = render(&p);
    check_rendered(policy, inventory, &p, &doc);
    // Deterministic: the same inputs plan to the same output.
    let again = netguard::plan::plan(policy, inventory);
    assert!(again == p, "plan is not deterministic");
    p
}

/// The words netguard's renderer itself writes into rule expressions (nft keywords,
/// protocol and ICMP type names, constant addresses): nothing else may appear there but
/// netguard-derived set/chain names, the inventory's interface names and addresses.
const KEYWORDS: &[&str] = &[
    "!=",
    "==",
    "in",
    "arp",
    "daddr",
    "dport",
    "saddr",
    "saddr ether",
    "saddr ip",
    "ether",
    "ip",
    "ip6",
    "iifname",
    "oifname",
    "l4proto",
    "th",
    "type",
    "state",
    "second",
    "tcp",
    "udp",
    "sctp",
    "icmp",
    "icmpv6",
    "invalid",
    "established",
    "related",
    "new",
    "untracked",
    "echo-request",
    "mld-listener-done",
    "mld-listener-query",
    "mld-listener-report",
    "mld2-listener-report",
    "nd-neighbor-advert",
    "nd-neighbor-solicit",
    "nd-router-advert",
    "nd-router-solicit",
    "nd-redirect",
    "length",
    "0.0.0.0",
    "::",
    "fe80::",
    "00:00:00:00:00:00",
    "01:00:00:00:00:00",
    "local",
    "status",
    "dnat",
    LOG_PREFIX,
    LOG_PREFIX_HOST,
    LOG_PREFIX_EGRESS,
    LOG_PREFIX_INGRESS,
    LOG_PREFIX_PUBLISHED,
    "lo",
];

/// netguard's rule for group names (policy/parse.rs): they end up in set names.
pub fn safe_group_name(g: &str) -> bool {
    let mut c = g.chars();
    c.next().is_some_and(|f| f.is_ascii_alphabetic())
        && c.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        && g.len() <= 32
}

/// A set or chain name netguard derives: a fixed name, `ports_<16 hex>`, or
/// `[from_]g_<group>_{4,6}` / `from_all_{4,6}` for a group of `policy` that passes
/// `safe_group_name`.
pub fn derived_name(policy: &Policy, s: &str) -> bool {
    const FIXED: &[&str] = &[
        names::BRIDGE_PAIRS,
        names::UNMANAGED,
        names::MANAGED,
        names::ENGINE,
        names::ALL_4,
        names::ALL_6,
        names::VETHS,
        names::BIND_4,
        names::BIND_6,
        names::ADDRS_4,
        names::ADDRS_6,
        names::BIND_MAC,
        names::MACS,
        names::MAC_VETHS,
        names::GENUINE_4,
        names::GENUINE_6,
        names::FORWARD,
        names::ISOLATE,
        names::HOLD,
        names::INPUT,
        names::EGRESS,
        names::INGRESS,
        names::PREROUTING,
        names::POSTROUTING,
        names::FOREIGN_MAC,
        names::ND,
        names::ND_BIND_6,
        names::ND_ADDRS_6,
        names::ND_BIND_MAC,
        names::ND_MACS,
        names::PUBLISHED_W,
        names::PUBLISHED_4,
        names::PUBLISHED_6,
        names::PUBLISHED,
        names::PUBLISHED_INGRESS,
    ];
    if FIXED.contains(&s) {
        return true;
    }
    if let Some(hex) = ["ports_", "pubw_", "pub4_", "pub6_"]
        .iter()
        .find_map(|p| s.strip_prefix(p))
    {
        return hex.len() == 16 && hex.bytes().all(|b| b.is_ascii_hexdigit());
    }
    let s = s.strip_prefix("from_").unwrap_or(s);
    if s == names::ALL_4 || s == names::ALL_6 {
        return true;
    }
    let Some(g) = s
        .strip_prefix("g_")
        .and_then(|r| r.strip_suffix("_4").or_else(|| r.strip_suffix("_6")))
    else {
        return false;
    };
    policy.groups.contains_key(g) && safe_group_name(g)
}

fn is_mac(s: &str) -> bool {
    let parts: Vec<&str> = s.split(':').collect();
    parts.len() == 6
        && parts
            .iter()
            .all(|p| p.len() == 2 && p.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// Interface names and patterns the inventory (not the policy) brings into rules.
fn inventory_strings(inv: &Inventory) -> BTreeSet<String> {
    let mut out: BTreeSet<String> = BTreeSet::new();
    for e in [Engine::Docker, Engine::Podman] {
        out.extend(e.bridge_patterns().iter().map(|s| s.to_string()));
    }
    for n in &inv.networks {
        out.extend(n.bridge.iter().cloned());
    }
    for c in &inv.containers {
        for ep in &c.endpoints {
            out.insert(ep.bridge.clone());
            out.extend(ep.veth.iter().cloned());
        }
    }
    out
}

fn strings<'a>(v: &'a Value, out: &mut Vec<&'a str>) {
    match v {
        Value::String(s) => out.push(s),
        Value::Array(a) => a.iter().for_each(|x| strings(x, out)),
        Value::Object(o) => o.values().for_each(|x| strings(x, out)),
        _ => {}
    }
}

/// Property (b) and the interface-name property, on the rendered batch `doc` of `plan`.
///
/// - every string in a rule's `expr` is a renderer keyword (`KEYWORDS`), a reference `@name`
///   or jump target whose name passes `derived_name`, an interface name or pattern of the
///   inventory, an IP address or a MAC address: so no group name, selector string or
///   comment of the policy (and no container name, label or image) is ever spliced into a
///   rule expression;
/// - every set, chain and element-target name passes `derived_name`;
/// - every rule comment fits nft's 128 bytes;
/// - every interface name in the plan's set elements passes `inventory::exact_ifname`.
pub fn check_rendered(policy: &Policy, inv: &Inventory, plan: &Plan, doc: &Value) {
    let ifnames = inventory_strings(inv);
    let objects = doc
        .get("nftables")
        .and_then(Value::as_array)
        .unwrap_or_else(|| panic!("the batch is a JSON object with an `nftables` list"));
    for o in objects {
        let Some(cmd) = o.as_object() else {
            panic!("batch entry is not an object: {o}")
        };
        for body in cmd.values() {
            let Some(body) = body.as_object() else {
                panic!("batch command is not an object: {body}")
            };
            for (kind, obj) in body {
                match kind.as_str() {
                    "table" => {
                        assert_eq!(obj.get("name").and_then(Value::as_str), Some("netguard"));
                    }
                    "set" | "chain" | "element" => {
                        let name = obj.get("name").and_then(Value::as_str).unwrap_or("");
                        assert!(
                            derived_name(policy, name),
                            "property (b): {kind} name {name:?} is not one netguard derives"
                        );
                    }
                    "rule" => {
                        let chain = obj.get("chain").and_then(Value::as_str).unwrap_or("");
                        assert!(
                            derived_name(policy, chain),
                            "property (b): rule in chain {chain:?}, not one netguard derives"
                        );
                        let comment = obj.get("comment").and_then(Value::as_str).unwrap_or("");
                        assert!(
                            comment.len() <= 128,
                            "rule comment of {} bytes: nft takes at most 128",
                            comment.len()
                        );
                        let mut ss = Vec::new();
                        if let Some(e) = obj.get("expr") {
                            strings(e, &mut ss);
                        }
                        for s in ss {
                            let ok = KEYWORDS.contains(&s)
                                || s.strip_prefix('@').is_some_and(|n| derived_name(policy, n))
                                || derived_name(policy, s)
                                || ifnames.contains(s)
                                || s.parse::<IpAddr>().is_ok()
                                || is_mac(s);
                            assert!(
                                ok,
                                "property (b): rule expression in {chain} carries {s:?}, \
                                 which netguard did not derive"
                            );
                        }
                    }
                    other => panic!("unexpected object {other:?} in the batch"),
                }
            }
        }
    }
    for (_, set, e) in plan.ruleset.elements() {
        let names: Vec<&str> = match &e {
            Elem::Ifname(a)
            | Elem::IfnameV4(a, _)
            | Elem::IfnameV6(a, _)
            | Elem::IfnameMac(a, _)
            | Elem::IfnameMacV4(a, ..)
            | Elem::IfnameMacV6(a, ..)
            | Elem::RawIfnameV6(a, _)
            | Elem::RawIfnameMac(a, _) => {
                vec![a]
            }
            Elem::IfnamePair(a, b) => vec![a, b],
            _ => vec![],
        };
        for n in names {
            assert!(
                exact_ifname(n),
                "interface name {n:?} in set {set} does not pass inventory::exact_ifname"
            );
        }
    }
}

/// Property (c): an error location lies inside the text (line within its line count,
/// column within that line's length + 1, so the end of the text counts as inside).
pub fn check_location(text: &str, line: usize, col: usize, what: &str) {
    let lines: Vec<&str> = text.split('\n').collect();
    assert!(
        line >= 1 && line <= lines.len(),
        "property (c): {what}: line {line} outside 1..={}",
        lines.len()
    );
    let len = lines[line - 1].chars().count();
    assert!(
        col >= 1 && col <= len + 1,
        "property (c): {what}: column {col} outside 1..={} of line {line}",
        len + 1
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn example() -> (Policy, Inventory, Plan, Value) {
        let (policy, inv) = (example_policy(), example_inventory());
        let p = netguard::plan::plan(&policy, &inv);
        let doc = render(&p);
        (policy, inv, p, doc)
    }

    /// The first rule object of the batch.
    fn first_rule(doc: &mut Value) -> &mut serde_json::Map<String, Value> {
        doc["nftables"]
            .as_array_mut()
            .and_then(|a| a.iter_mut().find_map(|o| o.get_mut("add")?.get_mut("rule")))
            .and_then(Value::as_object_mut)
            .expect("the example has rules")
    }

    #[test]
    fn the_example_passes() {
        let (policy, inv, p, doc) = example();
        check_rendered(&policy, &inv, &p, &doc);
    }

    #[test]
    #[should_panic(expected = "property (b): rule expression")]
    fn a_policy_string_in_an_expression_is_caught() {
        let (policy, inv, p, mut doc) = example();
        // A label value of the example's selectors, as if spliced into a match.
        let r = first_rule(&mut doc);
        r["expr"] = serde_json::json!([{"match": {"op": "==", "left": {"meta": {"key": "iifname"}}, "right": "web"}}]);
        check_rendered(&policy, &inv, &p, &doc);
    }

    #[test]
    #[should_panic(expected = "property (b): rule in chain")]
    fn a_chain_named_after_an_unchecked_string_is_caught() {
        let (policy, inv, p, mut doc) = example();
        first_rule(&mut doc)["chain"] = "from_g_we b_4".into();
        check_rendered(&policy, &inv, &p, &doc);
    }

    #[test]
    #[should_panic(expected = "property (b): rule expression")]
    fn a_reference_to_a_set_of_no_group_is_caught() {
        let (policy, inv, p, mut doc) = example();
        first_rule(&mut doc)["expr"] = serde_json::json!([{"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "saddr"}}, "right": "@g_nosuch_4"}}]);
        check_rendered(&policy, &inv, &p, &doc);
    }

    #[test]
    fn locations_at_the_end_are_inside_and_past_it_are_not() {
        check_location("a\nbc\n", 3, 1, "end");
        check_location("a\nbc", 2, 3, "end of last line");
        assert!(std::panic::catch_unwind(|| check_location("a\nbc", 3, 1, "")).is_err());
        assert!(std::panic::catch_unwind(|| check_location("a\nbc", 1, 3, "")).is_err());
        assert!(std::panic::catch_unwind(|| check_location("é", 1, 3, "")).is_err());
    }
}
