//! Containers admitted before Docker reports them running, until Docker confirms them.
//!
//! The source finds a starting container's endpoint and veth before its process runs (see
//! `docker::early`); the controller admits it through the same engine update as any change.
//! Docker stays the authority: its `start` refresh replaces what was admitted early, a `die`
//! or `destroy` removes it, and a container that never starts is dropped after
//! [`CONFIRM_WITHIN`]. Until then, a refresh that finds the container not running yet (it is
//! only created) must not undo the admission, which is what this bookkeeping decides.
//!
//! Pure: the caller passes the clock in.

use crate::docker::early::{EarlyChange, with_endpoint};
use crate::inventory::{Container, Inventory};
use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

/// How long an early admission may wait for Docker to report the container running.
pub const CONFIRM_WITHIN: Duration = Duration::from_secs(30);

/// How long an endpoint admitted early survives a refresh of a running container that does
/// not list it: Docker's container list lags a `network connect` of a running container.
pub const LIST_LAG: Duration = Duration::from_secs(5);

#[derive(Debug, Clone)]
struct Entry {
    /// What was admitted for the container, as the engine holds it.
    admitted: Container,
    since: Instant,
    /// A refresh has seen the container running: from then on Docker's answers decide.
    started: bool,
    /// Networks whose endpoints were admitted early, and when.
    networks: BTreeMap<String, Instant>,
}

/// What the controller does with the engine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Upsert(Container),
    Remove(String),
    Nothing,
}

#[derive(Debug, Default)]
pub struct Early {
    pending: BTreeMap<String, Entry>,
    /// When a `die`/`destroy` (or similar) of each container was received: an early change
    /// from an event received before it is stale.
    gone: HashMap<String, Instant>,
    /// When a network `disconnect` of (container, network id) was received: an endpoint on
    /// that network from an event received before it is stale.
    disconnected: HashMap<(String, String), Instant>,
}

impl Early {
    pub fn is_pending(&self, id: &str) -> bool {
        self.pending.contains_key(id)
    }

    pub fn len(&self) -> usize {
        self.pending.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// The engine change for one early change. `current` is the engine's container of that
    /// id, `owner` looks up another container (the owner of a sharer's network namespace).
    pub fn admit<'a>(
        &mut self,
        change: EarlyChange,
        current: Option<&Container>,
        owner: impl Fn(&str) -> Option<&'a Container>,
        now: Instant,
    ) -> Action {
        self.prune(now);
        match change {
            EarlyChange::Endpoint {
                created,
                endpoint,
                event_at,
            } => {
                if self.stale(&created.id, event_at)
                    || endpoint.network_id.as_ref().is_some_and(|n| {
                        self.disconnected
                            .get(&(created.id.clone(), n.clone()))
                            .is_some_and(|d| *d >= event_at)
                    })
                {
                    return Action::Nothing;
                }
                let confirmed = current.is_some() && !self.is_pending(&created.id);
                if confirmed
                    && current
                        .is_some_and(|c| c.endpoints.iter().any(|e| e.network == endpoint.network))
                {
                    // Docker already reported this endpoint: its answer is newer.
                    return Action::Nothing;
                }
                let network = endpoint.network.clone();
                let c = match current.filter(|_| confirmed) {
                    // A running container connected to one more network: its own record
                    // (name, labels) stays; only the endpoint is new.
                    Some(cur) => {
                        let mut c = cur.clone();
                        c.endpoints.push(endpoint);
                        c.endpoints.sort_by(|a, b| a.network.cmp(&b.network));
                        c
                    }
                    None => with_endpoint(current, &created, endpoint),
                };
                let e = self.pending.entry(c.id.clone()).or_insert_with(|| Entry {
                    admitted: c.clone(),
                    since: now,
                    started: confirmed,
                    networks: BTreeMap::new(),
                });
                e.admitted = c.clone();
                e.networks.insert(network, now);
                Action::Upsert(c)
            }
            EarlyChange::Sharer {
                created,
                owner: owner_id,
                event_at,
            } => {
                if self.stale(&created.id, event_at) || current.is_some() {
                    return Action::Nothing;
                }
                let Some(o) = owner(&owner_id).filter(|o| !o.endpoints.is_empty()) else {
                    return Action::Nothing;
                };
                let c = created.with_endpoints(o.endpoints.clone());
                self.pending.insert(
                    c.id.clone(),
                    Entry {
                        admitted: c.clone(),
                        since: now,
                        started: false,
                        networks: c
                            .endpoints
                            .iter()
                            .map(|e| (e.network.clone(), now))
                            .collect(),
                    },
                );
                Action::Upsert(c)
            }
            EarlyChange::Disconnected {
                container,
                network_id,
                event_at,
            } => {
                self.disconnected
                    .insert((container.clone(), network_id.clone()), event_at);
                let Some(e) = self.pending.get_mut(&container) else {
                    return Action::Nothing;
                };
                let Some(net) = e
                    .admitted
                    .endpoints
                    .iter()
                    .find(|ep| ep.network_id.as_deref() == Some(network_id.as_str()))
                    .map(|ep| ep.network.clone())
                else {
                    return Action::Nothing;
                };
                e.networks.remove(&net);
                e.admitted.endpoints.retain(|ep| ep.network != net);
                let left = e.admitted.clone();
                if e.networks.is_empty() {
                    self.pending.remove(&container);
                }
                // Whatever Docker still says of the container comes with the refresh the
                // disconnect also causes.
                match current {
                    Some(cur) => {
                        let mut c = cur.clone();
                        c.endpoints.retain(|ep| ep.network != net);
                        if c.endpoints.is_empty() {
                            Action::Remove(container)
                        } else {
                            Action::Upsert(c)
                        }
                    }
                    None if left.endpoints.is_empty() => Action::Nothing,
                    None => Action::Upsert(left),
                }
            }
        }
    }

    fn stale(&self, id: &str, event_at: Instant) -> bool {
        self.gone.get(id).is_some_and(|g| *g >= event_at)
    }

    /// A die, destroy or stop was received at `at`: nothing admitted early stays.
    pub fn gone(&mut self, id: &str, at: Instant) {
        self.pending.remove(id);
        self.gone.insert(id.to_string(), at);
    }

    /// Nothing admitted early for the container is pending any more (it cannot be isolated, or
    /// its admission did not go in).
    pub fn forget(&mut self, id: &str) {
        self.pending.remove(id);
    }

    /// Docker reports the container running: its answer, plus any early endpoint the list does
    /// not show yet (for at most [`LIST_LAG`]).
    pub fn running(&mut self, mut c: Container, now: Instant) -> Container {
        let Some(e) = self.pending.get_mut(&c.id) else {
            return c;
        };
        e.started = true;
        let lagging: Vec<_> = e
            .admitted
            .endpoints
            .iter()
            .filter(|ep| {
                !c.endpoints.iter().any(|x| x.network == ep.network)
                    && e.networks
                        .get(&ep.network)
                        .is_some_and(|t| now.duration_since(*t) < LIST_LAG)
            })
            .cloned()
            .collect();
        if lagging.is_empty() {
            self.pending.remove(&c.id);
            return c;
        }
        c.endpoints.extend(lagging);
        c.endpoints.sort_by(|a, b| a.network.cmp(&b.network));
        e.admitted = c.clone();
        c
    }

    /// Docker lists the container as not running. True while it is still only starting
    /// (admitted early, never seen running, within [`CONFIRM_WITHIN`]): keep it then.
    pub fn keeps(&mut self, id: &str, now: Instant) -> bool {
        let keep = self
            .pending
            .get(id)
            .is_some_and(|e| !e.started && now.duration_since(e.since) < CONFIRM_WITHIN);
        if !keep {
            self.pending.remove(id);
        }
        keep
    }

    /// Containers admitted early that Docker has not confirmed in time: to refresh (and so,
    /// if they still do not run, to remove).
    pub fn expired(&mut self, now: Instant) -> Vec<String> {
        let out: Vec<String> = self
            .pending
            .iter()
            .filter(|(_, e)| now.duration_since(e.since) >= CONFIRM_WITHIN)
            .map(|(id, _)| id.clone())
            .collect();
        for id in &out {
            self.pending.remove(id);
        }
        out
    }

    /// A full read of the source lists running containers only: the starting ones admitted
    /// early are added back, and running ones keep endpoints the list does not show yet.
    pub fn complete(&mut self, inv: &mut Inventory, now: Instant) {
        self.prune(now);
        for id in self.expired(now) {
            tracing::info!(container = %id, "admitted early but not started in time; dropped");
        }
        let ids: Vec<String> = self.pending.keys().cloned().collect();
        for id in ids {
            match inv.containers.iter().position(|c| c.id == id) {
                Some(i) => {
                    let c = inv.containers[i].clone();
                    inv.containers[i] = self.running(c, now);
                }
                None if inv.unisolable.iter().any(|u| u.id == id) => {
                    self.pending.remove(&id);
                }
                None => {
                    if let Some(e) = self.pending.get(&id) {
                        if e.started {
                            // Seen running, now not listed: it stopped.
                            self.pending.remove(&id);
                        } else {
                            inv.containers.push(e.admitted.clone());
                        }
                    }
                }
            }
        }
        inv.normalize();
    }

    fn prune(&mut self, now: Instant) {
        self.gone
            .retain(|_, t| now.duration_since(*t) < CONFIRM_WITHIN * 2);
        self.disconnected
            .retain(|_, t| now.duration_since(*t) < CONFIRM_WITHIN * 2);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::docker::early::Created;
    use crate::inventory::Endpoint;
    use std::net::Ipv4Addr;

    fn created(id: &str) -> Created {
        Created {
            id: id.into(),
            name: format!("{id}-name"),
            image: "img".into(),
            labels: BTreeMap::from([("role".to_string(), "web".to_string())]),
            network_mode: "shop".into(),
        }
    }

    fn ep(net: &str, last: u8) -> Endpoint {
        Endpoint {
            network: net.into(),
            network_id: Some(format!("{net}-id")),
            bridge: format!("br-{net}"),
            veth: Some(format!("veth{net}{last}")),
            ipv4: Some(Ipv4Addr::new(172, 18, 0, last)),
            ipv6: None,
            mac: Some(format!("02:42:ac:12:00:{last:02x}")),
        }
    }

    fn endpoint(id: &str, e: Endpoint, at: Instant) -> EarlyChange {
        EarlyChange::Endpoint {
            created: created(id),
            endpoint: e,
            event_at: at,
        }
    }

    fn none(_: &str) -> Option<&'static Container> {
        None
    }

    fn upserted(a: Action) -> Container {
        match a {
            Action::Upsert(c) => c,
            other => panic!("expected an upsert, got {other:?}"),
        }
    }

    #[test]
    fn a_starting_container_is_kept_until_docker_reports_it_running() {
        let t0 = Instant::now();
        let mut early = Early::default();
        let c = upserted(early.admit(endpoint("c1", ep("shop", 2), t0), None, none, t0));
        assert_eq!(c.name, "c1-name");
        assert_eq!(c.endpoints, vec![ep("shop", 2)]);
        // The refresh the connect event causes finds it only created: kept.
        assert!(early.keeps("c1", t0 + Duration::from_millis(5)));
        // Start: Docker's answer replaces it and the entry goes.
        let mut confirmed = c.clone();
        confirmed.endpoints[0].veth = Some("vethreal".into());
        let got = early.running(confirmed.clone(), t0 + Duration::from_millis(400));
        assert_eq!(got, confirmed);
        assert!(!early.is_pending("c1"));
        // Not running any more later: nothing keeps it.
        assert!(!early.keeps("c1", t0 + Duration::from_secs(1)));
    }

    #[test]
    fn a_container_that_never_starts_is_dropped_in_time() {
        let t0 = Instant::now();
        let mut early = Early::default();
        upserted(early.admit(endpoint("c1", ep("shop", 2), t0), None, none, t0));
        assert!(early.expired(t0 + Duration::from_secs(1)).is_empty());
        assert!(!early.keeps("c1", t0 + CONFIRM_WITHIN));
        upserted(early.admit(endpoint("c2", ep("shop", 3), t0), None, none, t0));
        assert_eq!(early.expired(t0 + CONFIRM_WITHIN), vec!["c2".to_string()]);
        assert!(early.is_empty());
    }

    #[test]
    fn a_die_received_after_the_connect_wins_over_a_late_endpoint() {
        let t0 = Instant::now();
        let mut early = Early::default();
        early.gone("c1", t0 + Duration::from_millis(10));
        let late = endpoint("c1", ep("shop", 2), t0);
        assert_eq!(
            early.admit(late, None, none, t0 + Duration::from_millis(20)),
            Action::Nothing
        );
        // A connect received after the die (a restart) is admitted.
        let again = endpoint("c1", ep("shop", 2), t0 + Duration::from_millis(30));
        upserted(early.admit(again, None, none, t0 + Duration::from_millis(40)));
        // And a die drops the entry: a later "not running" refresh removes it.
        early.gone("c1", t0 + Duration::from_millis(50));
        assert!(!early.keeps("c1", t0 + Duration::from_millis(60)));
    }

    /// A failed start (`Address already in use` on its second network) sends connect, then
    /// disconnect, and no die: the early wait for the first network's veth goes on, and
    /// the next container that gets the released address has the MAC it waits for. Its
    /// veth must not be admitted under the failed container's name and labels (found by
    /// the soak: a container with no group admitted as `api` for 30 s).
    #[test]
    fn an_endpoint_found_after_its_disconnect_is_stale() {
        let t0 = Instant::now();
        let mut early = Early::default();
        let d = EarlyChange::Disconnected {
            container: "c1".into(),
            network_id: "a-id".into(),
            event_at: t0 + Duration::from_millis(5),
        };
        assert_eq!(early.admit(d, None, none, t0), Action::Nothing);
        let late = endpoint("c1", ep("a", 2), t0);
        assert_eq!(
            early.admit(late, None, none, t0 + Duration::from_secs(7)),
            Action::Nothing
        );
        assert!(!early.is_pending("c1"));
        // Another network, or a connect received after the disconnect, still admits.
        let other = upserted(early.admit(endpoint("c1", ep("b", 3), t0), None, none, t0));
        assert_eq!(other.endpoints, vec![ep("b", 3)]);
        let again = endpoint("c1", ep("a", 4), t0 + Duration::from_millis(10));
        let both = upserted(early.admit(again, Some(&other), none, t0));
        assert_eq!(both.endpoints, vec![ep("a", 4), ep("b", 3)]);
    }

    #[test]
    fn connects_to_two_networks_build_one_container() {
        let t0 = Instant::now();
        let mut early = Early::default();
        let a = upserted(early.admit(endpoint("c1", ep("b", 2), t0), None, none, t0));
        let both = upserted(early.admit(endpoint("c1", ep("a", 3), t0), Some(&a), none, t0));
        assert_eq!(both.endpoints, vec![ep("a", 3), ep("b", 2)]);
        // Disconnected from "a" before the start: only "b" stays.
        let d = EarlyChange::Disconnected {
            container: "c1".into(),
            network_id: "a-id".into(),
            event_at: t0,
        };
        let left = upserted(early.admit(d, Some(&both), none, t0));
        assert_eq!(left.endpoints, vec![ep("b", 2)]);
        let d = EarlyChange::Disconnected {
            container: "c1".into(),
            network_id: "b-id".into(),
            event_at: t0,
        };
        assert_eq!(
            early.admit(d, Some(&left), none, t0),
            Action::Remove("c1".into())
        );
        assert!(!early.is_pending("c1"));
    }

    #[test]
    fn a_running_container_connected_keeps_its_record_and_survives_the_lagging_list() {
        let t0 = Instant::now();
        let mut early = Early::default();
        let mut running = created("c1").with_endpoints(vec![ep("a", 2)]);
        running.name = "confirmed-name".into();
        let c = upserted(early.admit(endpoint("c1", ep("b", 5), t0), Some(&running), none, t0));
        assert_eq!(c.name, "confirmed-name");
        assert_eq!(c.endpoints, vec![ep("a", 2), ep("b", 5)]);
        // The refresh right after lists the container without the new endpoint: kept.
        let got = early.running(running.clone(), t0 + Duration::from_millis(100));
        assert_eq!(got.endpoints, vec![ep("a", 2), ep("b", 5)]);
        // Past the lag, Docker's list is the truth.
        let got = early.running(running.clone(), t0 + LIST_LAG);
        assert_eq!(got, running);
        assert!(!early.is_pending("c1"));
        // An endpoint Docker already reported is not replaced by an early one.
        assert_eq!(
            early.admit(endpoint("c1", ep("a", 9), t0), Some(&running), none, t0),
            Action::Nothing
        );
    }

    #[test]
    fn a_sharer_uses_its_owners_endpoints() {
        let t0 = Instant::now();
        let mut early = Early::default();
        let owner = created("o").with_endpoints(vec![ep("shop", 2)]);
        let lookup = |id: &str| (id == "o").then_some(&owner);
        let s = EarlyChange::Sharer {
            created: created("s"),
            owner: "o".into(),
            event_at: t0,
        };
        let c = upserted(early.admit(s, None, lookup, t0));
        assert_eq!(c.id, "s");
        assert_eq!(c.endpoints, owner.endpoints);
        // An owner netguard does not know: nothing early.
        let s = EarlyChange::Sharer {
            created: created("s2"),
            owner: "unknown".into(),
            event_at: t0,
        };
        assert_eq!(early.admit(s, None, lookup, t0), Action::Nothing);
    }

    #[test]
    fn a_full_read_adds_the_starting_containers_back() {
        let t0 = Instant::now();
        let mut early = Early::default();
        let c = upserted(early.admit(endpoint("c1", ep("shop", 2), t0), None, none, t0));
        let mut inv = Inventory::default();
        early.complete(&mut inv, t0 + Duration::from_millis(10));
        assert_eq!(inv.containers, vec![c.clone()]);
        // Once seen running and then not listed, it stopped: not added back.
        early.running(c.clone(), t0 + Duration::from_millis(20));
        let mut inv = Inventory::default();
        early.complete(&mut inv, t0 + Duration::from_millis(30));
        assert!(inv.containers.is_empty());
        // Too old: dropped.
        upserted(early.admit(endpoint("c2", ep("shop", 3), t0), None, none, t0));
        let mut inv = Inventory::default();
        early.complete(&mut inv, t0 + CONFIRM_WITHIN);
        assert!(inv.containers.is_empty());
        assert!(early.is_empty());
    }
}
