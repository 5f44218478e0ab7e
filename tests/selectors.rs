//! Selector semantics (docs/policy.md): ANY selector of a list, ALL keys inside one.

use netguard::inventory::{Container, Endpoint};
use netguard::plan::{groups_of, selector_matches};
use netguard::policy::{Policy, parse_policy};
use std::collections::BTreeMap;
use std::path::Path;

fn policy(groups: &str) -> Policy {
    parse_policy(Path::new("policy.toml"), groups).unwrap_or_else(|e| panic!("{e}"))
}

fn container(name: &str, image: &str, labels: &[(&str, &str)], networks: &[&str]) -> Container {
    Container {
        published: Vec::new(),
        id: format!("id-{name}"),
        name: name.into(),
        image: image.into(),
        labels: labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<BTreeMap<_, _>>(),
        endpoints: networks
            .iter()
            .enumerate()
            .map(|(i, n)| Endpoint {
                network: n.to_string(),
                network_id: None,
                bridge: format!("br-{n}"),
                veth: Some(format!("veth{i}{name}")),
                ipv4: Some(format!("10.0.{i}.2").parse().unwrap()),
                ipv6: None,
                mac: None,
            })
            .collect(),
    }
}

fn groups(p: &Policy, c: &Container) -> Vec<String> {
    groups_of(p, c)
}

#[test]
fn name_glob() {
    let p = policy("[groups.g]\nmatch = { name = \"api-?\" }\n");
    assert_eq!(groups(&p, &container("api-1", "", &[], &["n"])), vec!["g"]);
    assert!(groups(&p, &container("api-10", "", &[], &["n"])).is_empty());
    assert!(groups(&p, &container("xapi-1", "", &[], &["n"])).is_empty());
}

#[test]
fn image_glob() {
    let p = policy("[groups.db]\nmatch = { image = \"postgres*\" }\n");
    for img in ["postgres", "postgres:16", "postgres@sha256:abc"] {
        assert_eq!(
            groups(&p, &container("c", img, &[], &["n"])),
            vec!["db"],
            "{img}"
        );
    }
    for img in ["", "library/postgres:16", "mypostgres"] {
        assert!(
            groups(&p, &container("c", img, &[], &["n"])).is_empty(),
            "{img}"
        );
    }
}

#[test]
fn label_value_glob() {
    let p = policy("[groups.web]\nmatch = { label = { role = \"web*\" } }\n");
    assert_eq!(
        groups(&p, &container("c", "", &[("role", "web-edge")], &["n"])),
        vec!["web"]
    );
    assert!(groups(&p, &container("c", "", &[("role", "api")], &["n"])).is_empty());
    assert!(groups(&p, &container("c", "", &[("Role", "web")], &["n"])).is_empty());
    assert!(groups(&p, &container("c", "", &[], &["n"])).is_empty());
}

#[test]
fn label_star_means_present() {
    let p = policy("[groups.mon]\nmatch = { label = { \"prometheus.io/server\" = \"*\" } }\n");
    for v in ["", "true", "anything at all"] {
        assert_eq!(
            groups(
                &p,
                &container("c", "", &[("prometheus.io/server", v)], &["n"])
            ),
            vec!["mon"],
            "value {v:?}"
        );
    }
    assert!(
        groups(
            &p,
            &container("c", "", &[("prometheus.io/other", "x")], &["n"])
        )
        .is_empty()
    );
}

#[test]
fn network_selector_matches_any_attached_network() {
    let p = policy("[groups.back]\nmatch = { network = \"shop-b*\" }\n");
    assert_eq!(
        groups(&p, &container("c", "", &[], &["shop-front", "shop-back"])),
        vec!["back"]
    );
    assert!(groups(&p, &container("c", "", &[], &["shop-front"])).is_empty());
    assert!(groups(&p, &container("c", "", &[], &[])).is_empty());
}

#[test]
fn all_keys_inside_one_selector() {
    let p = policy(
        "[groups.db]\nmatch = { image = \"postgres*\", network = \"back\", label = { tier = \"data\", team = \"*\" } }\n",
    );
    let full = container(
        "pg",
        "postgres:16",
        &[("tier", "data"), ("team", "x")],
        &["back"],
    );
    assert_eq!(groups(&p, &full), vec!["db"]);
    let sel = &p.groups["db"].selectors[0];
    assert!(selector_matches(sel, &full));
    // Drop any one key's match and the selector fails.
    let misses = [
        container(
            "pg",
            "mysql:8",
            &[("tier", "data"), ("team", "x")],
            &["back"],
        ),
        container(
            "pg",
            "postgres:16",
            &[("tier", "data"), ("team", "x")],
            &["front"],
        ),
        container(
            "pg",
            "postgres:16",
            &[("tier", "web"), ("team", "x")],
            &["back"],
        ),
        container("pg", "postgres:16", &[("tier", "data")], &["back"]),
    ];
    for c in &misses {
        assert!(!selector_matches(sel, c), "{c:?}");
        assert!(groups(&p, c).is_empty());
    }
}

#[test]
fn any_selector_of_a_list() {
    let p = policy(
        r#"
[groups.api]
match = [ { name = "api-*" }, { label = { "com.docker.compose.service" = "api" } }, { image = "shop/api:*", network = "back" } ]
"#,
    );
    let yes = [
        container("api-1", "", &[], &["n"]),
        container("x", "", &[("com.docker.compose.service", "api")], &["n"]),
        container("x", "shop/api:2", &[], &["back"]),
        // Matches all three: still one membership.
        container(
            "api-2",
            "shop/api:2",
            &[("com.docker.compose.service", "api")],
            &["back"],
        ),
    ];
    for c in &yes {
        assert_eq!(groups(&p, c), vec!["api"], "{c:?}");
    }
    let no = [
        container("x", "shop/api:2", &[], &["front"]),
        container("x", "", &[("com.docker.compose.service", "web")], &["n"]),
    ];
    for c in &no {
        assert!(groups(&p, c).is_empty(), "{c:?}");
    }
}

#[test]
fn container_in_no_group() {
    let p = policy(
        "[groups.a]\nmatch = { name = \"a-*\" }\n[groups.b]\nmatch = { label = { b = \"*\" } }\n",
    );
    assert_eq!(
        groups(&p, &container("lonely", "busybox", &[("c", "1")], &["n"])),
        Vec::<String>::new()
    );
}

#[test]
fn groups_of_is_sorted_by_group_name_not_file_order() {
    let p = policy(
        r#"
[groups.zeta]
match = { name = "*" }
[groups.alpha]
match = { image = "busybox" }
[groups.mid]
match = { label = { x = "*" } }
[groups.beta]
match = { name = "nope" }
"#,
    );
    let c = container("c1", "busybox", &[("x", "")], &["n"]);
    assert_eq!(groups(&p, &c), vec!["alpha", "mid", "zeta"]);
}

#[test]
fn plan_puts_no_group_members_in_all_only() {
    use netguard::inventory::Inventory;
    use netguard::plan::plan;
    use netguard::plan::ruleset::{Elem, Family};
    let p = policy("[groups.web]\nmatch = { name = \"web\" }\n");
    let mut inv = Inventory {
        containers: vec![
            container("web", "", &[], &["n"]),
            container("other", "", &[], &["n"]),
        ],
        ..Default::default()
    };
    inv.containers[1].endpoints[0].ipv4 = Some("10.0.0.3".parse().unwrap());
    inv.containers[1].endpoints[0].veth = Some("veth-other".into());
    inv.normalize();
    let pl = plan(&p, &inv);
    let other = pl.containers.iter().find(|c| c.name == "other").unwrap();
    assert!(other.managed && other.groups.is_empty() && other.endpoints[0].admitted);
    let inet = pl.ruleset.table(Family::Inet).unwrap();
    let e = Elem::IfnameV4("br-n".into(), "10.0.0.3".parse().unwrap());
    assert!(inet.set("all_4").unwrap().elements.contains(&e));
    assert!(!inet.set("g_web_4").unwrap().elements.contains(&e));
}
