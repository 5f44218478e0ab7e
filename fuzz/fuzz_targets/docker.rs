//! Docker's and Podman's API answers through netguard's mapping: the container list,
//! inspect answers, the network list (Podman's libpod list adopted into it), `GET /version`
//! and events, as the JSON the engine sends, deserialized into the same bollard models the
//! real client produces. The inventory is then planned with the example policy (and one
//! managing every network) and rendered.
//!
//! Properties: no panic; every interface name that reaches nft passes
//! `inventory::exact_ifname`, and every string in a rule expression is one netguard derived
//! (see `netguard_fuzz::check_rendered`); events map to what the daemon looks at again.
#![no_main]

use bollard::models::{
    ContainerInspectResponse, ContainerSummary, EventMessage, Network, SystemVersion,
};
use libfuzzer_sys::fuzz_target;
use netguard::docker::podman::{LibpodNetwork, adopt, libpod_api};
use netguard::docker::{
    ResolvedVeth, VethError, VethQuery, VethResolver, bridge_name, map_inventory,
    names_unknown_network, needs_inspect,
};
use netguard::inventory::{Change, Engine};
use netguard::policy::{Policy, parse_policy};
use netguard_fuzz::{EXAMPLE_POLICY, example_policy, plan_and_check};
use serde::Deserialize;
use std::collections::HashMap;
use std::path::Path;
use std::sync::OnceLock;

#[derive(Deserialize, Default)]
#[serde(default)]
struct Answers {
    version: Option<SystemVersion>,
    containers: Vec<ContainerSummary>,
    networks: Vec<Network>,
    libpod: Option<Vec<LibpodNetwork>>,
    inspect: HashMap<String, ContainerInspectResponse>,
    events: Vec<EventMessage>,
    /// What the kernel would say about each endpoint's host side:
    /// (container id or name, network, veth, bridge).
    veths: Vec<(String, String, String, Option<String>)>,
}

/// Answers from the input's table, by container and network; an endpoint it does not list
/// gets the container's own name as its veth (as hostile as it gets) on the network's name.
struct Resolver<'a>(&'a [(String, String, String, Option<String>)]);

impl VethResolver for Resolver<'_> {
    fn resolve(&self, queries: &[VethQuery]) -> Vec<Result<ResolvedVeth, VethError>> {
        queries
            .iter()
            .map(|q| {
                let hit = self.0.iter().find(|(c, n, _, _)| {
                    (c == &q.container_id || c == &q.container_name) && n == &q.network
                });
                match hit {
                    Some((_, _, veth, bridge)) => Ok(ResolvedVeth {
                        veth: veth.clone(),
                        bridge: bridge.clone(),
                    }),
                    None if q.pid % 3 == 0 => Err(VethError::Gone),
                    None => Ok(ResolvedVeth {
                        veth: q.container_name.clone(),
                        bridge: Some(q.network.clone()),
                    }),
                }
            })
            .collect()
    }
}

static POLICIES: OnceLock<[Policy; 2]> = OnceLock::new();

fn policies() -> &'static [Policy; 2] {
    POLICIES.get_or_init(|| {
        let all = EXAMPLE_POLICY.replace("networks = [\"shop-*\"]", "networks = [\"*\"]");
        let all = parse_policy(Path::new("all.toml"), &all)
            .unwrap_or_else(|e| panic!("the all-networks policy is valid: {e}"));
        [example_policy(), all]
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(mut a) = serde_json::from_slice::<Answers>(data) else {
        return;
    };
    let podman = a.version.as_ref().and_then(libpod_api);
    if let Some(lp) = &a.libpod {
        adopt(&mut a.networks, lp);
    }
    for n in &a.networks {
        let _ = bridge_name(n);
    }
    for c in &a.containers {
        let _ = needs_inspect(c, &a.networks);
    }
    let _ = names_unknown_network(&a.containers, &a.networks);
    let mut inv = map_inventory(&a.containers, &a.networks, &a.inspect, &Resolver(&a.veths));
    if podman.is_some() {
        inv.engine = Engine::Podman;
    }
    for p in policies() {
        plan_and_check(p, &inv);
    }
    for ev in &a.events {
        let change = netguard::docker::events::change_of(ev);
        let event = netguard::docker::events::event_of(ev);
        assert_eq!(change, event.as_ref().map(|e| e.change.clone()));
        if event.is_some_and(|e| e.connect) {
            assert!(matches!(change, Some(Change::Container(_))));
        }
    }
});
