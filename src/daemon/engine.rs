//! The daemon's incremental core: the current inventory and, per container, the set elements
//! it contributes. An event recomputes only the containers it touches (the container itself
//! and those claiming one of its addresses), so its cost does not grow with the number of
//! containers. `plan()` over the same state gives the same sets: the unit tests check that
//! after every step.

use crate::inventory::{Container, Inventory, Network, Unisolable};
use crate::plan::ruleset::{Elem, Family};
use crate::plan::{
    Claims, Plan, PlannedContainer, PlannedNetwork, claims_of, container_elements, implied_network,
    plan, plan_container, plan_networks,
};
use crate::policy::Policy;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;

type Key = (Family, String, Elem);
type BridgeAddr = (String, IpAddr);

/// Set elements to add and delete, per table and set.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Delta {
    pub add: BTreeMap<Family, BTreeMap<String, Vec<Elem>>>,
    pub delete: BTreeMap<Family, BTreeMap<String, Vec<Elem>>>,
    /// Addresses that were admitted before and no longer are anywhere: connections to and
    /// from them must be cut.
    pub gone: BTreeSet<IpAddr>,
    /// Admitted addresses whose groups changed: their container-to-container connections
    /// must be judged again.
    pub regrouped: BTreeSet<IpAddr>,
}

impl Delta {
    pub fn is_empty(&self) -> bool {
        self.add.is_empty() && self.delete.is_empty()
    }

    pub fn len(&self) -> usize {
        let n = |m: &BTreeMap<Family, BTreeMap<String, Vec<Elem>>>| {
            m.values()
                .flat_map(|s| s.values())
                .map(Vec::len)
                .sum::<usize>()
        };
        n(&self.add) + n(&self.delete)
    }
}

pub struct Engine {
    policy: Policy,
    /// Which container engine the source is (Docker or Podman), from the last full read.
    engine: crate::inventory::Engine,
    networks: Vec<Network>,
    planned_networks: BTreeMap<String, PlannedNetwork>,
    containers: BTreeMap<String, Container>,
    unisolable: BTreeMap<String, Unisolable>,
    claims: Claims,
    /// Which containers claim each (bridge, address).
    claimants: HashMap<(String, IpAddr), BTreeSet<String>>,
    /// Which containers hold each (bridge, host veth): an early endpoint must come with a
    /// port no one holds yet, and asking must not scan every container.
    ports: HashMap<(String, String), BTreeSet<String>>,
    planned: BTreeMap<String, PlannedContainer>,
    /// How many of `planned` are managed, kept in step with it: the metric is read after
    /// every event, and counting 5,000 containers each time would cost more than the event.
    managed: usize,
    counts: HashMap<Key, u32>,
}

impl Engine {
    pub fn new(policy: Policy, inventory: Inventory) -> Engine {
        let mut e = Engine {
            policy,
            engine: crate::inventory::Engine::default(),
            networks: Vec::new(),
            planned_networks: BTreeMap::new(),
            containers: BTreeMap::new(),
            unisolable: BTreeMap::new(),
            claims: Claims::new(),
            claimants: HashMap::new(),
            ports: HashMap::new(),
            planned: BTreeMap::new(),
            managed: 0,
            counts: HashMap::new(),
        };
        e.reset(inventory);
        e
    }

    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// Replaces the whole state (start, resync, reload, network changes).
    pub fn reset(&mut self, inventory: Inventory) {
        self.engine = inventory.engine;
        self.networks = inventory.networks.clone();
        self.planned_networks = plan_networks(&self.policy, &inventory);
        self.containers = inventory
            .containers
            .into_iter()
            .map(|c| (c.id.clone(), c))
            .collect();
        self.unisolable = inventory
            .unisolable
            .into_iter()
            .map(|u| (u.id.clone(), u))
            .collect();
        self.claims.clear();
        self.claimants.clear();
        self.ports.clear();
        for c in self.containers.values() {
            for (k, owner) in claims_of(c) {
                self.claims.entry(k.clone()).or_default().insert(owner);
                self.claimants.entry(k).or_default().insert(c.id.clone());
            }
            for k in ports_of(c) {
                self.ports.entry(k).or_default().insert(c.id.clone());
            }
        }
        self.planned.clear();
        self.managed = 0;
        self.counts.clear();
        let ids: Vec<String> = self.containers.keys().cloned().collect();
        for id in ids {
            let pc = self.plan_one(&id);
            self.count(&pc, 1);
            if let Some(pc) = pc {
                self.managed += usize::from(pc.managed);
                self.planned.insert(id, pc);
            }
        }
    }

    pub fn set_policy(&mut self, policy: Policy) {
        self.policy = policy;
        let inv = self.inventory();
        self.reset(inv);
    }

    pub fn inventory(&self) -> Inventory {
        let mut inv = Inventory {
            containers: self.containers.values().cloned().collect(),
            networks: self.networks.clone(),
            unisolable: self.unisolable.values().cloned().collect(),
            engine: self.engine,
            netns: Default::default(),
        };
        inv.normalize();
        inv
    }

    /// The full plan of the current state.
    pub fn plan(&self) -> Plan {
        plan(&self.policy, &self.inventory())
    }

    /// One container as planned now (its groups), if the source reported it with an endpoint.
    pub fn planned(&self, id: &str) -> Option<&PlannedContainer> {
        self.planned.get(id)
    }

    /// Every container with an endpoint the source reported, managed or not.
    pub fn container_count(&self) -> usize {
        self.containers.len()
    }

    /// Containers with at least one endpoint on a managed network (`settings.networks`),
    /// admitted or not: `netguard_managed_containers`.
    pub fn managed_count(&self) -> usize {
        self.managed
    }

    /// The other containers in `id`'s network namespace: those started with
    /// `--network container:<id>` or, for such a one, its owner and fellow sharers. The
    /// source hands a sharer its owner's endpoints (same veth, MAC and addresses), so an
    /// identical endpoint is how they are recognised here. An unrelated container never has
    /// an identical endpoint; one more refresh would be harmless anyway.
    ///
    /// Looked up through the claimants of `id`'s addresses, not by scanning every container:
    /// this runs on every event, and a scan would make events slower as the host grows. An
    /// endpoint without an address claims nothing and, having no address, admits nothing.
    pub fn sharers_of(&self, id: &str) -> Vec<String> {
        let Some(c) = self.containers.get(id) else {
            return Vec::new();
        };
        let mut out = BTreeSet::new();
        for (k, _) in claims_of(c) {
            for o in self.claimants.get(&k).into_iter().flatten() {
                if o != id
                    && self
                        .containers
                        .get(o)
                        .is_some_and(|oc| oc.endpoints.iter().any(|e| c.endpoints.contains(e)))
                {
                    out.insert(o.clone());
                }
            }
        }
        out.into_iter().collect()
    }

    /// The container as the engine holds it now.
    pub fn container(&self, id: &str) -> Option<&Container> {
        self.containers.get(id)
    }

    /// Another container (not `id`, nor one sharing `id`'s namespace) that holds the port
    /// `veth` of `bridge`. A new endpoint's port is one Docker has just made: finding it held
    /// means that a container set the new endpoint's MAC on its own interface.
    pub fn port_held_by_other(&self, id: &str, bridge: &str, veth: &str) -> Option<&Container> {
        let ids = self.ports.get(&(bridge.to_string(), veth.to_string()))?;
        let sharers = self.sharers_of(id);
        ids.iter()
            .filter(|o| o.as_str() != id && !sharers.contains(o))
            .find_map(|o| self.containers.get(o))
    }

    /// Other containers claiming one of `addrs` on `bridge` through another veth than `veth`
    /// (a container sharing `id`'s veth is no rival).
    pub fn other_claimants(
        &self,
        id: &str,
        bridge: &str,
        veth: Option<&str>,
        addrs: &BTreeSet<IpAddr>,
    ) -> Vec<String> {
        let mut out = BTreeSet::new();
        for a in addrs {
            for o in self
                .claimants
                .get(&(bridge.to_string(), *a))
                .into_iter()
                .flatten()
            {
                let same_veth = self.containers.get(o).is_some_and(|c| {
                    c.endpoints
                        .iter()
                        .any(|e| e.bridge == bridge && e.veth.as_deref() == veth && veth.is_some())
                });
                if o != id && !same_veth {
                    out.insert(o.clone());
                }
            }
        }
        out.into_iter().collect()
    }

    /// Does this container sit on a network the engine does not know? (A network created
    /// after the last full reconcile.)
    pub fn knows_networks_of(&self, c: &Container) -> bool {
        c.endpoints
            .iter()
            .all(|e| self.planned_networks.contains_key(&e.network))
    }

    fn plan_one(&self, id: &str) -> Option<PlannedContainer> {
        let c = self.containers.get(id)?;
        Some(plan_container(
            &self.policy,
            &self.planned_networks,
            &self.claims,
            c,
        ))
    }

    fn count(&mut self, pc: &Option<PlannedContainer>, add: i32) {
        let Some(pc) = pc else { return };
        for k in container_elements(pc, &self.policy) {
            let n = self.counts.entry(k.clone()).or_insert(0);
            *n = n.saturating_add_signed(add);
            if *n == 0 {
                self.counts.remove(&k);
            }
        }
    }

    fn claim(&mut self, c: &Container, add: bool) -> Vec<(String, IpAddr)> {
        let mut keys = Vec::new();
        for (k, owner) in claims_of(c) {
            if add {
                self.claims.entry(k.clone()).or_default().insert(owner);
                self.claimants
                    .entry(k.clone())
                    .or_default()
                    .insert(c.id.clone());
            } else {
                // Another container sharing this owner (same veth) keeps the claim alive.
                let still_shared = self.claimants.get(&k).is_some_and(|ids| {
                    ids.iter().any(|other| {
                        other != &c.id
                            && self.containers.get(other).is_some_and(|o| {
                                claims_of(o).iter().any(|(ok, oo)| ok == &k && *oo == owner)
                            })
                    })
                });
                if !still_shared && let Some(o) = self.claims.get_mut(&k) {
                    o.remove(&owner);
                    if o.is_empty() {
                        self.claims.remove(&k);
                    }
                }
                if let Some(ids) = self.claimants.get_mut(&k) {
                    ids.remove(&c.id);
                    if ids.is_empty() {
                        self.claimants.remove(&k);
                    }
                }
            }
            keys.push(k);
        }
        keys
    }

    /// A container appeared or changed (start, network connect/disconnect).
    pub fn upsert(&mut self, c: Container) -> Delta {
        self.unisolable.remove(&c.id);
        let id = c.id.clone();
        self.change(&id, Some(c))
    }

    /// A container is gone (die, destroy) or cannot be isolated any more.
    pub fn remove(&mut self, id: &str) -> Delta {
        self.unisolable.remove(id);
        self.change(id, None)
    }

    pub fn set_unisolable(&mut self, u: Unisolable) -> Delta {
        let id = u.id.clone();
        let d = self.change(&id, None);
        self.unisolable.insert(id, u);
        d
    }

    fn change(&mut self, id: &str, new: Option<Container>) -> Delta {
        let mut touched: BTreeSet<String> = BTreeSet::new();
        touched.insert(id.to_string());
        let mut keys = Vec::new();
        if let Some(old) = self.containers.remove(id) {
            // Re-insert so that the claim bookkeeping sees it, then drop it.
            self.containers.insert(id.to_string(), old.clone());
            keys.extend(self.claim(&old, false));
            self.containers.remove(id);
            for k in ports_of(&old) {
                if let Some(ids) = self.ports.get_mut(&k) {
                    ids.remove(id);
                    if ids.is_empty() {
                        self.ports.remove(&k);
                    }
                }
            }
        }
        if let Some(c) = &new {
            for ep in &c.endpoints {
                if !self.planned_networks.contains_key(&ep.network) {
                    let n = implied_network(&self.policy, ep);
                    self.planned_networks.insert(ep.network.clone(), n);
                }
            }
            keys.extend(self.claim(c, true));
            for k in ports_of(c) {
                self.ports.entry(k).or_default().insert(id.to_string());
            }
            self.containers.insert(id.to_string(), c.clone());
        }
        for k in &keys {
            if let Some(ids) = self.claimants.get(k) {
                touched.extend(ids.iter().cloned());
            }
        }

        // Present before: contributed by anyone. Take the touched containers' share out,
        // replan them, put the new share in; the kernel changes where presence flips.
        let before: BTreeSet<Key> = self.snapshot(&touched).into_keys().collect();
        let mut old_admitted: BTreeMap<String, (BTreeSet<BridgeAddr>, Vec<String>)> =
            BTreeMap::new();
        for t in &touched {
            let old = self.planned.remove(t);
            if let Some(pc) = &old {
                self.managed -= usize::from(pc.managed);
                old_admitted.insert(t.clone(), (admitted_addrs(pc), pc.groups.clone()));
            }
            self.count(&old, -1);
        }
        let others: HashMap<Key, u32> = before
            .iter()
            .map(|k| (k.clone(), self.counts.get(k).copied().unwrap_or(0)))
            .collect();
        for t in &touched {
            let fresh = self.plan_one(t);
            self.count(&fresh, 1);
            if let Some(pc) = fresh {
                self.managed += usize::from(pc.managed);
                self.planned.insert(t.clone(), pc);
            }
        }
        let share = self.snapshot(&touched);
        let after: BTreeSet<Key> = share.keys().cloned().collect();

        let mut delta = Delta::default();
        for k in before.difference(&after) {
            // Still contributed by an untouched container: stays in the kernel.
            if others.get(k).copied().unwrap_or(0) == 0 {
                delta
                    .delete
                    .entry(k.0)
                    .or_default()
                    .entry(k.1.clone())
                    .or_default()
                    .push(k.2.clone());
            }
        }
        for k in after.difference(&before) {
            // Not in `before`, so no touched container had it; present before only if an
            // untouched one did, which its count minus the touched share tells.
            let mine = share.get(k).copied().unwrap_or(0);
            if self.counts.get(k).copied().unwrap_or(0) <= mine {
                delta
                    .add
                    .entry(k.0)
                    .or_default()
                    .entry(k.1.clone())
                    .or_default()
                    .push(k.2.clone());
            }
        }
        prune(&mut delta.add);
        prune(&mut delta.delete);

        // Still admitted somewhere? Only the claimants of that address can say: looking
        // at them, not at every container, keeps an event's cost flat.
        let still_admitted = |(bridge, a): &BridgeAddr| {
            self.claimants
                .get(&(bridge.clone(), *a))
                .is_some_and(|ids| {
                    ids.iter()
                        .filter_map(|id| self.planned.get(id))
                        .any(|pc| admitted_addrs(pc).contains(&(bridge.clone(), *a)))
                })
        };
        for (t, (addrs, groups)) in &old_admitted {
            for ba in addrs {
                let a = &ba.1;
                if !still_admitted(ba) {
                    delta.gone.insert(*a);
                } else if self.planned.get(t).is_none_or(|pc| &pc.groups != groups) {
                    delta.regrouped.insert(*a);
                }
            }
        }
        delta
    }

    /// Elements contributed by the `touched` containers right now, with multiplicity.
    fn snapshot(&self, touched: &BTreeSet<String>) -> HashMap<Key, u32> {
        let mut m: HashMap<Key, u32> = HashMap::new();
        for pc in touched.iter().filter_map(|t| self.planned.get(t)) {
            for k in container_elements(pc, &self.policy) {
                *m.entry(k).or_insert(0) += 1;
            }
        }
        m
    }
}

fn admitted_addrs(pc: &PlannedContainer) -> BTreeSet<BridgeAddr> {
    pc.endpoints
        .iter()
        .filter(|e| e.admitted)
        .flat_map(|e| e.addresses().map(|a| (e.bridge.clone(), a)))
        .collect()
}

/// The (bridge, host veth) ports a container holds.
fn ports_of(c: &Container) -> Vec<(String, String)> {
    c.endpoints
        .iter()
        .filter_map(|e| e.veth.as_ref().map(|v| (e.bridge.clone(), v.clone())))
        .collect()
}

fn prune(m: &mut BTreeMap<Family, BTreeMap<String, Vec<Elem>>>) {
    for sets in m.values_mut() {
        for elems in sets.values_mut() {
            elems.sort();
            elems.dedup();
        }
        sets.retain(|_, e| !e.is_empty());
    }
    m.retain(|_, s| !s.is_empty());
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inventory::Endpoint;
    use crate::policy::parse_policy;
    use std::path::Path;

    type Kernel = BTreeSet<Key>;

    fn apply(k: &mut Kernel, d: &Delta) {
        for (f, sets) in &d.delete {
            for (s, es) in sets {
                for e in es {
                    assert!(
                        k.remove(&(*f, s.clone(), e.clone())),
                        "deleting a missing element {s} {e}"
                    );
                }
            }
        }
        for (f, sets) in &d.add {
            for (s, es) in sets {
                for e in es {
                    assert!(
                        k.insert((*f, s.clone(), e.clone())),
                        "adding a present element {s} {e}"
                    );
                }
            }
        }
    }

    /// xorshift: deterministic, no dependency.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self, n: u64) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0 % n
        }
    }

    fn policy(anti_spoofing: bool) -> Policy {
        let text = format!(
            "[settings]\nnetworks = [\"m-*\"]\nanti_spoofing = {anti_spoofing}\n\
             [groups.a]\nmatch = {{ name = \"a*\" }}\n\
             [groups.b]\nmatch = [{{ name = \"b*\" }}, {{ network = \"m-2\" }}]\n\
             [groups.vrrp]\nmatch = {{ name = \"*2\" }}\nmac_binding = false\n\
             [[allow]]\nfrom = \"a\"\nto = \"b\"\n\
             [[allow]]\nfrom = \"b\"\nto = \"a\"\nports = [\"5432/tcp\"]\n"
        );
        parse_policy(Path::new("p.toml"), &text).expect("policy")
    }

    fn random_container(r: &mut Rng, id: u64) -> Container {
        let names = ["a1", "a2", "b1", "b2", "c1"];
        let nets = [("m-1", "br-m1"), ("m-2", "br-m2"), ("u-1", "br-u1")];
        let mut endpoints = Vec::new();
        for (net, br) in nets {
            if r.next(2) == 0 {
                // Few addresses and veths, so that conflicts and sharing happen.
                let host = r.next(4) as u8 + 2;
                endpoints.push(Endpoint {
                    network: net.into(),
                    network_id: None,
                    bridge: br.into(),
                    veth: if r.next(6) == 0 {
                        None
                    } else {
                        Some(format!("v{}-{host}", &br[3..]))
                    },
                    ipv4: Some(std::net::Ipv4Addr::new(10, 0, 0, host)),
                    ipv6: if r.next(2) == 0 {
                        Some(format!("fd00::{host}").parse().expect("v6"))
                    } else {
                        None
                    },
                    // Few MACs too, so that two veths share one and a MAC moves.
                    mac: match r.next(3) {
                        0 => None,
                        n => Some(format!("02:00:00:00:0{n}:{host:02x}")),
                    },
                });
            }
        }
        // Few published ports too, so that two containers claim one mapping (a port moving
        // between them) and the line targets both hold and miss them.
        let mut published = Vec::new();
        for _ in 0..r.next(3) {
            let host_ip = match r.next(3) {
                0 => None,
                1 => Some("192.0.2.2".parse().expect("v4")),
                _ => Some("2001:db8::2".parse().expect("v6")),
            };
            published.push(crate::inventory::PublishedPort {
                proto: if r.next(4) == 0 {
                    crate::inventory::PortProto::Udp
                } else {
                    crate::inventory::PortProto::Tcp
                },
                host_port: 15000 + r.next(3) as u16,
                container_port: [5432, 80][r.next(2) as usize],
                host_ip,
            });
        }
        Container {
            published,
            id: format!("c{id}"),
            name: names[r.next(names.len() as u64) as usize].to_string(),
            image: String::new(),
            labels: Default::default(),
            endpoints,
        }
    }

    #[test]
    fn incremental_deltas_equal_the_full_plan() {
        let mut some_unmanaged = false;
        for anti_spoofing in [true, false] {
            let mut r = Rng(0x9e3779b97f4a7c15);
            let mut engine = Engine::new(policy(anti_spoofing), Inventory::default());
            let mut kernel = engine.plan().ruleset.elements();
            for step in 0..3000 {
                let id = r.next(8);
                let delta = match r.next(5) {
                    0 => engine.remove(&format!("c{id}")),
                    1 => engine.set_unisolable(Unisolable {
                        id: format!("c{id}"),
                        name: "x".into(),
                        reason: "host".into(),
                    }),
                    _ => {
                        let c = random_container(&mut r, id);
                        engine.upsert(c)
                    }
                };
                apply(&mut kernel, &delta);
                let want = engine.plan().ruleset.elements();
                // The bridge sets are structure (networks), not container state.
                let strip = |k: &Kernel| -> Kernel {
                    k.iter()
                        .filter(|x| {
                            !["bridges", "unmanaged", "managed", "engine"].contains(&x.1.as_str())
                        })
                        .cloned()
                        .collect()
                };
                assert_eq!(strip(&kernel), strip(&want), "step {step}");
                let plan = engine.plan();
                let managed = plan.containers.iter().filter(|c| c.managed).count();
                assert_eq!(engine.managed_count(), managed, "step {step}");
                // The port index is the containers' ports, kept in step.
                let mut ports: HashMap<(String, String), BTreeSet<String>> = HashMap::new();
                for c in engine.containers.values() {
                    for k in ports_of(c) {
                        ports.entry(k).or_default().insert(c.id.clone());
                    }
                }
                assert_eq!(engine.ports, ports, "step {step}");
                some_unmanaged |= managed < engine.container_count();
            }
        }
        assert!(some_unmanaged, "the walk never had an unmanaged container");
    }

    #[test]
    fn a_departing_address_is_reported_gone_and_a_regrouped_one_regrouped() {
        let mut engine = Engine::new(policy(true), Inventory::default());
        let ep = |net: &str, br: &str, host: u8| Endpoint {
            network: net.into(),
            network_id: None,
            bridge: br.into(),
            veth: Some(format!("v{br}{host}")),
            ipv4: Some(std::net::Ipv4Addr::new(10, 0, 0, host)),
            ipv6: None,
            mac: None,
        };
        let mut c = Container {
            published: Vec::new(),
            id: "c1".into(),
            name: "c1".into(),
            image: String::new(),
            labels: Default::default(),
            endpoints: vec![ep("m-1", "br-m1", 5)],
        };
        let d = engine.upsert(c.clone());
        assert!(!d.is_empty() && d.gone.is_empty());
        // Joining m-2 puts it into group b: its m-1 address is regrouped.
        c.endpoints.push(ep("m-2", "br-m2", 6));
        let d = engine.upsert(c.clone());
        assert!(
            d.regrouped
                .contains(&"10.0.0.5".parse::<IpAddr>().expect("ip"))
        );
        let d = engine.remove("c1");
        assert_eq!(d.gone.len(), 2);
    }
}
