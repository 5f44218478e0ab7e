//! The per-container element delta (`plan::container_elements`) that a container event
//! applies must agree with the full plan, and must render as a pure element transaction.

use netguard::inventory::parse_inventory;
use netguard::nft::Changes;
use netguard::plan::ruleset::{Elem, Family};
use netguard::plan::{container_elements, names, plan};
use netguard::policy::parse_policy;
use std::collections::BTreeSet;
use std::path::Path;

const POLICY: &str = r#"
[settings]
networks = ["n*"]
[groups.a]
match = { label = { g = "a" } }
[groups.b]
match = [{ label = { g = "b" } }, { name = "x-*" }]
[[allow]]
from = "a"
to = "b"
ports = ["80/tcp"]
"#;

fn container(name: &str, g: &str, net: &str, veth: Option<&str>, host: u8) -> String {
    let veth = veth
        .map(|v| format!("veth = \"{v}\"\n"))
        .unwrap_or_default();
    format!(
        "[[container]]\nname = \"{name}\"\nlabels = {{ g = \"{g}\" }}\n[[container.endpoint]]\n\
         network = \"{net}\"\nbridge = \"br-{net}\"\n{veth}ipv4 = \"10.0.0.{host}\"\nipv6 = \"fd00::{host}\"\n"
    )
}

#[test]
fn union_of_container_elements_is_the_planned_sets() {
    let policy = parse_policy(Path::new("p.toml"), POLICY).unwrap();
    let inv_text = [
        container("a-1", "a", "n1", Some("va1"), 1),
        container("x-1", "a", "n1", Some("vx1"), 2),
        container("b-1", "b", "n2", Some("vb1"), 3),
        container("noveth", "a", "n1", None, 4),
        container("other", "a", "other", Some("vo"), 5),
        container("dup-1", "b", "n2", Some("vd1"), 6),
        container("dup-2", "b", "n2", Some("vd2"), 6),
    ]
    .concat();
    let inv = parse_inventory(Path::new("i.toml"), &inv_text).unwrap();
    let p = plan(&policy, &inv);
    let mut from_plan: BTreeSet<(Family, String, Elem)> = BTreeSet::new();
    for t in &p.ruleset.tables {
        for s in t.sets.iter().filter(|s| s.name != names::BRIDGE_PAIRS) {
            for e in &s.elements {
                from_plan.insert((t.family, s.name.clone(), e.clone()));
            }
        }
    }
    let from_containers: BTreeSet<(Family, String, Elem)> = p
        .containers
        .iter()
        .flat_map(|c| container_elements(&policy, c))
        .collect();
    assert!(!from_plan.is_empty());
    assert_eq!(from_plan, from_containers);
}

#[test]
fn element_changes_render_as_element_commands_only() {
    let add = vec![(
        Family::Inet,
        "all_4".to_string(),
        Elem::IfnameV4("br0".into(), "10.0.0.1".parse().unwrap()),
    )];
    let del = vec![(
        Family::Bridge,
        "veths".to_string(),
        Elem::Ifname("v1".into()),
    )];
    let c = Changes::elements(add, del);
    assert!(!c.is_empty());
    assert_eq!(c.element_counts(), (1, 1));
    let json = serde_json::to_value(c.batch()).unwrap();
    let cmds: Vec<String> = json["nftables"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| {
            let (cmd, body) = o.as_object().unwrap().iter().next().unwrap();
            format!("{cmd} {}", body.as_object().unwrap().keys().next().unwrap())
        })
        .collect();
    assert_eq!(
        cmds,
        ["add table", "add element", "add table", "delete element"]
    );
}
