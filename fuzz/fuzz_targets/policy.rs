//! The policy file: parse, validate, plan and render (properties: src/lib.rs and
//! docs/reliability.md).
#![no_main]

use libfuzzer_sys::fuzz_target;
use netguard::inventory::{Container, Endpoint, Inventory};
use netguard::policy::{Policy, parse_policy};
use netguard_fuzz::{check_location, example_inventory, plan_and_check};
use std::path::Path;
use std::sync::OnceLock;

static INVENTORY: OnceLock<Inventory> = OnceLock::new();

/// An inventory made from the policy itself: one container per selector, carrying the
/// selector's literal name, image, labels and network, so group membership (and with it
/// the group sets and rules) is exercised for fuzzed groups too.
fn derived_inventory(policy: &Policy) -> Inventory {
    let mut inv = INVENTORY.get_or_init(example_inventory).clone();
    let mut n = 0u32;
    for g in policy.groups.values() {
        for s in &g.selectors {
            n += 1;
            let lit = |o: &Option<netguard::policy::Glob>| o.as_ref().map(|g| g.to_string());
            let network = lit(&s.network).unwrap_or_else(|| "shop-front".into());
            inv.containers.push(Container {
                id: format!("{n:064x}"),
                name: lit(&s.name).unwrap_or_else(|| format!("c{n}")),
                image: lit(&s.image).unwrap_or_else(|| "img".into()),
                labels: s
                    .labels
                    .iter()
                    .map(|(k, v)| (k.clone(), v.to_string()))
                    .collect(),
                endpoints: vec![Endpoint {
                    network,
                    network_id: None,
                    bridge: "br-front".into(),
                    veth: Some(format!("veth-f{n}")),
                    ipv4: Some(std::net::Ipv4Addr::from(0x0a0a_8000 + n)),
                    ipv6: None,
                    mac: None,
                }],
                published: vec![],
            });
        }
    }
    inv.normalize();
    inv
}

fuzz_target!(|data: &[u8]| {
    // The loader reads the file as UTF-8 text and refuses anything else.
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let path = Path::new("fuzz.toml");
    match parse_policy(path, text) {
        Ok(policy) => {
            let _ = netguard::policy::warnings(&policy);
            plan_and_check(&policy, INVENTORY.get_or_init(example_inventory));
            plan_and_check(&policy, &derived_inventory(&policy));
        }
        Err(errors) => {
            assert!(!errors.0.is_empty(), "a refusal names at least one problem");
            for e in &errors.0 {
                assert_eq!(e.loc.file, path, "error names another file");
                check_location(text, e.loc.line, e.loc.col, &e.message);
                assert!(!e.message.is_empty(), "an error says what is wrong");
            }
        }
    }
});
