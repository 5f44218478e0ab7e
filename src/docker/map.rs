//! Pure mapping from Docker's answers (bollard models) to the inventory.
//!
//! No I/O here: the caller lists containers and networks, inspects what the list lacks,
//! and hands the resolver in; the same code runs on recorded JSON in the unit tests.

use super::veth::{ResolvedVeth, VethError, VethQuery, VethResolver};
use crate::inventory::{Container, Endpoint, Inventory, Network, Unisolable};
use bollard::models::{
    ContainerInspectResponse, ContainerSummary, EndpointSettings, Network as DockerNetwork,
};
use std::collections::{BTreeMap, HashMap};
use std::net::{Ipv4Addr, Ipv6Addr};

/// Docker's bridge-name option for bridge networks.
pub const BRIDGE_NAME_OPTION: &str = "com.docker.network.bridge.name";

/// Host bridge of a bridge network: the explicit option, `docker0` for the default network,
/// else `br-` and the first 12 hex digits of the id (what libnetwork does).
pub fn bridge_name(net: &DockerNetwork) -> Option<String> {
    if let Some(b) = net.options.as_ref().and_then(|o| o.get(BRIDGE_NAME_OPTION))
        && !b.is_empty()
    {
        return Some(b.clone());
    }
    if net.name.as_deref() == Some("bridge") {
        return Some("docker0".to_string());
    }
    let id = net.id.as_deref()?;
    Some(format!("br-{}", id.get(..12).unwrap_or(id)))
}

/// Does this container need `GET /containers/{id}/json`? Only for what the list lacks:
/// the PID (to enter its netns) when it has a bridge endpoint, the configured image when
/// the list shows an image id instead (Docker does that once the tag moved on), and the
/// network mode when the list has no `HostConfig` (Podman's compat list never has one).
pub fn needs_inspect(c: &ContainerSummary, networks: &[DockerNetwork]) -> bool {
    if c.host_config.is_none() {
        return true;
    }
    if network_mode(c, None).starts_with("container:") {
        return image_is_id(c);
    }
    let has_bridge = c
        .network_settings
        .as_ref()
        .and_then(|n| n.networks.as_ref())
        .is_some_and(|eps| {
            eps.iter().any(|(name, ep)| {
                find_network(networks, ep.network_id.as_deref(), name)
                    .is_some_and(|n| n.driver.as_deref() == Some("bridge"))
            })
        });
    has_bridge || image_is_id(c)
}

fn image_is_id(c: &ContainerSummary) -> bool {
    match (&c.image, &c.image_id) {
        (Some(img), Some(id)) => img == id || img.starts_with("sha256:"),
        (None, _) => true,
        _ => false,
    }
}

/// `HostConfig.NetworkMode` (`bridge`, `host`, `container:<id>`, ...): from the list when it
/// says, else from the inspect.
pub fn network_mode<'a>(
    c: &'a ContainerSummary,
    inspected: Option<&'a ContainerInspectResponse>,
) -> &'a str {
    c.host_config
        .as_ref()
        .and_then(|h| h.network_mode.as_deref())
        .or_else(|| {
            inspected
                .and_then(|i| i.host_config.as_ref())
                .and_then(|h| h.network_mode.as_deref())
        })
        .unwrap_or("")
}

const HOST_REASON: &str = "--network host: shares the host's network stack, no veth to filter";
const NONE_REASON: &str = "--network none: no network interface to isolate";

fn find_network<'a>(
    networks: &'a [DockerNetwork],
    id: Option<&str>,
    name: &str,
) -> Option<&'a DockerNetwork> {
    id.filter(|i| !i.is_empty())
        .and_then(|id| networks.iter().find(|n| n.id.as_deref() == Some(id)))
        .or_else(|| networks.iter().find(|n| n.name.as_deref() == Some(name)))
}

/// Does an endpoint of these containers name a network missing from `networks`? Then the
/// list is older than the container (Podman sends no event when a network is created).
pub fn names_unknown_network(containers: &[ContainerSummary], networks: &[DockerNetwork]) -> bool {
    containers.iter().any(|c| {
        c.network_settings
            .as_ref()
            .and_then(|n| n.networks.as_ref())
            .is_some_and(|eps| {
                eps.iter().any(|(name, ep)| {
                    find_network(networks, ep.network_id.as_deref(), name).is_none()
                })
            })
    })
}

/// A container's name as `docker ps` shows it: the entry without further slashes (the others
/// are legacy link aliases like `/web/db`), without the leading slash.
fn container_name(c: &ContainerSummary, inspected: Option<&ContainerInspectResponse>) -> String {
    if let Some(n) = inspected.and_then(|i| i.name.as_deref()) {
        return n.trim_start_matches('/').to_string();
    }
    let names = c.names.as_deref().unwrap_or(&[]);
    names
        .iter()
        .find(|n| n.trim_start_matches('/').find('/').is_none())
        .or(names.first())
        .map(|n| n.trim_start_matches('/').to_string())
        .unwrap_or_default()
}

fn non_empty(s: Option<&String>) -> Option<&str> {
    s.map(String::as_str).filter(|s| !s.is_empty())
}

/// The inventory before veths are known, plus what to ask the resolver.
#[derive(Debug, Clone, Default)]
pub struct Prepared {
    containers: Vec<Container>,
    /// (index into `containers`, index into its endpoints) for each query.
    query_slots: Vec<(usize, usize)>,
    pub queries: Vec<VethQuery>,
    /// Containers sharing another's netns: (container, target as written in NetworkMode).
    shared: Vec<(Container, String)>,
    unisolable: BTreeMap<String, (String, Vec<String>)>,
    networks: Vec<Network>,
}

impl Prepared {
    fn report(&mut self, id: &str, name: &str, reason: String) {
        self.unisolable
            .entry(id.to_string())
            .or_insert_with(|| (name.to_string(), Vec::new()))
            .1
            .push(reason);
    }
}

/// First half of the mapping: everything Docker said, and the veth queries.
///
/// `inspected` holds the inspect answers of the containers for which [`needs_inspect`] was
/// true (keyed by id); a container that needed one but has none vanished in between and is
/// skipped.
pub fn prepare(
    containers: &[ContainerSummary],
    networks: &[DockerNetwork],
    inspected: &HashMap<String, ContainerInspectResponse>,
) -> Prepared {
    let mut p = Prepared {
        networks: networks.iter().filter_map(network_of).collect(),
        ..Prepared::default()
    };
    for c in containers {
        let Some(id) = c.id.clone().filter(|i| !i.is_empty()) else {
            tracing::warn!("Docker listed a container without an id; skipped");
            continue;
        };
        let insp = inspected.get(&id);
        if insp.is_none() && needs_inspect(c, networks) {
            tracing::info!(container = %id, "container vanished between list and inspect; skipped");
            continue;
        }
        let mut container = identity(id, c, insp);
        let mode = network_mode(c, insp);
        if let Some(target) = mode.strip_prefix("container:") {
            p.shared.push((container, target.to_string()));
            continue;
        }
        let queries = endpoints(&mut p, &mut container, c, insp, mode, networks);
        if container.endpoints.is_empty() {
            continue;
        }
        let ci = p.containers.len();
        for (ei, q) in queries {
            p.query_slots.push((ci, ei));
            p.queries.push(q);
        }
        p.containers.push(container);
    }
    p
}

/// A network of Docker's list as the inventory holds it (one without a name is left out).
fn network_of(n: &DockerNetwork) -> Option<Network> {
    let name = n.name.clone()?;
    let driver = n.driver.clone().unwrap_or_default();
    let bridge = if driver == "bridge" {
        bridge_name(n)
    } else {
        None
    };
    Some(Network {
        name,
        id: n.id.clone(),
        driver,
        bridge,
    })
}

/// Who the container is (id, name, image, labels), without its endpoints yet.
fn identity(
    id: String,
    c: &ContainerSummary,
    insp: Option<&ContainerInspectResponse>,
) -> Container {
    let image = insp
        .and_then(|i| i.config.as_ref())
        .and_then(|cfg| cfg.image.clone())
        .or_else(|| c.image.clone())
        .unwrap_or_default();
    let labels: BTreeMap<String, String> = c
        .labels
        .as_ref()
        .map(|l| l.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
        .unwrap_or_default();
    Container {
        published: super::ports::published_ports(&id, insp),
        id,
        name: container_name(c, insp),
        image,
        labels,
        endpoints: Vec::new(),
    }
}

/// Fills `container.endpoints` with its bridge endpoints, reports those netguard cannot
/// isolate, and returns the veth queries: (endpoint index, query).
fn endpoints(
    p: &mut Prepared,
    container: &mut Container,
    c: &ContainerSummary,
    insp: Option<&ContainerInspectResponse>,
    mode: &str,
    networks: &[DockerNetwork],
) -> Vec<(usize, VethQuery)> {
    let (id, name) = (container.id.clone(), container.name.clone());
    let pid = insp
        .and_then(|i| i.state.as_ref())
        .and_then(|s| s.pid)
        .and_then(|pid| u32::try_from(pid).ok())
        .filter(|&pid| pid > 0);
    let mut eps: Vec<_> = c
        .network_settings
        .as_ref()
        .and_then(|n| n.networks.as_ref())
        .map(|m| m.iter().collect())
        .unwrap_or_default();
    // HashMap order is random; keep queries and reports deterministic.
    eps.sort_by(|a, b| a.0.cmp(b.0));
    if eps.is_empty() {
        // Docker lists host and none as endpoints (handled below); Podman lists none.
        let reason = match mode {
            "host" => HOST_REASON.to_string(),
            "none" => NONE_REASON.to_string(),
            _ => format!("no network endpoint (network mode {mode:?})"),
        };
        p.report(&id, &name, reason);
    }
    let mut queries = Vec::new();
    for (net_name, ep) in eps {
        let endpoint = match endpoint_of(net_name, ep, networks) {
            Ok(e) => e,
            Err(reason) => {
                p.report(&id, &name, reason);
                continue;
            }
        };
        if let Some(pid) = pid {
            queries.push((
                container.endpoints.len(),
                VethQuery {
                    container_id: id.clone(),
                    container_name: name.clone(),
                    pid,
                    network: endpoint.network.clone(),
                    mac: endpoint.mac.clone(),
                },
            ));
        } else {
            tracing::warn!(container = %name, "no PID from Docker; veth left unresolved");
        }
        container.endpoints.push(endpoint);
    }
    queries
}

/// One endpoint of a container on a bridge network, or why netguard cannot isolate it.
fn endpoint_of(
    net_name: &String,
    ep: &EndpointSettings,
    networks: &[DockerNetwork],
) -> Result<Endpoint, String> {
    let Some(net) = find_network(networks, ep.network_id.as_deref(), net_name) else {
        return Err(format!(
            "attached to network {net_name}, which Docker did not list"
        ));
    };
    match net.driver.as_deref().unwrap_or("") {
        "bridge" => {}
        "host" => return Err(HOST_REASON.into()),
        "null" => return Err(NONE_REASON.into()),
        other => {
            return Err(format!(
                "attached to network {net_name} with driver {other:?}, \
                 whose traffic does not cross a host bridge"
            ));
        }
    }
    let Some(bridge) = bridge_name(net) else {
        return Err(format!(
            "network {net_name} has no id to derive its bridge from"
        ));
    };
    let endpoint = Endpoint {
        network: net.name.clone().unwrap_or_else(|| net_name.clone()),
        network_id: net.id.clone(),
        bridge,
        veth: None,
        ipv4: non_empty(ep.ip_address.as_ref()).and_then(|a| a.parse::<Ipv4Addr>().ok()),
        ipv6: non_empty(ep.global_ipv6_address.as_ref()).and_then(|a| a.parse::<Ipv6Addr>().ok()),
        mac: non_empty(ep.mac_address.as_ref()).map(|m| m.to_ascii_lowercase()),
    };
    if endpoint.ipv4.is_none() && endpoint.ipv6.is_none() {
        return Err(format!("endpoint on network {net_name} has no address yet"));
    }
    Ok(endpoint)
}

/// Second half: fold the resolver's answers in (one per query, in order).
pub fn finish(mut p: Prepared, answers: Vec<Result<ResolvedVeth, VethError>>) -> Inventory {
    let mut gone = vec![false; p.containers.len()];
    // Endpoints to drop, by container, because their bridge did not match.
    let mut dropped: Vec<Vec<usize>> = vec![Vec::new(); p.containers.len()];
    let slots = std::mem::take(&mut p.query_slots);
    let mut reports = Vec::new();
    for ((ci, ei), answer) in slots.into_iter().zip(answers) {
        let c = &mut p.containers[ci];
        let ep = &mut c.endpoints[ei];
        match answer {
            Ok(r) if r.bridge.as_deref() == Some(ep.bridge.as_str()) => ep.veth = Some(r.veth),
            Ok(r) => {
                // Don't guess which one is right: rules on the wrong bridge would be dead.
                let reason = format!(
                    "endpoint on network {}: host veth {} hangs on bridge {}, not on {} as \
                     the network claims",
                    ep.network,
                    r.veth,
                    r.bridge.as_deref().unwrap_or("(none)"),
                    ep.bridge
                );
                tracing::warn!(container = %c.name, "{reason}");
                reports.push((c.id.clone(), c.name.clone(), reason));
                dropped[ci].push(ei);
            }
            Err(VethError::Gone) => {
                tracing::info!(container = %c.name, "container vanished during veth resolution; skipped");
                gone[ci] = true;
            }
            Err(e) => {
                tracing::warn!(container = %c.name, network = %ep.network,
                    "could not resolve host veth: {e}");
            }
        }
    }
    for (id, name, reason) in reports {
        p.report(&id, &name, reason);
    }
    let mut containers = Vec::new();
    for (ci, mut c) in std::mem::take(&mut p.containers).into_iter().enumerate() {
        if gone[ci] {
            p.unisolable.remove(&c.id);
            continue;
        }
        let mut ei = 0;
        c.endpoints.retain(|_| {
            let keep = !dropped[ci].contains(&ei);
            ei += 1;
            keep
        });
        if !c.endpoints.is_empty() {
            containers.push(c);
        }
    }

    // `--network container:X`: same netns, so the same endpoints (addresses and veth) as X.
    let shared = std::mem::take(&mut p.shared);
    for (mut c, target) in shared {
        let found = containers.iter().find(|t| {
            t.id == target || t.name == target || (target.len() >= 12 && t.id.starts_with(&target))
        });
        match found {
            Some(t) => {
                c.endpoints = t.endpoints.clone();
                containers.push(c);
            }
            None => {
                let why = p
                    .unisolable
                    .iter()
                    .find(|(id, (name, _))| **id == target || *name == target)
                    .map(|(_, (name, r))| {
                        format!("{name}, which cannot be isolated: {}", r.join("; "))
                    })
                    .unwrap_or_else(|| {
                        format!("{target}, which has no isolable endpoint (not running?)")
                    });
                p.report(
                    &c.id,
                    &c.name,
                    format!("--network container: shares the network namespace of {why}"),
                );
            }
        }
    }

    let mut inv = Inventory {
        containers,
        networks: p.networks,
        unisolable: p
            .unisolable
            .into_iter()
            .map(|(id, (name, reasons))| Unisolable {
                id,
                name,
                reason: reasons.join("; "),
            })
            .collect(),
        // The source sets it: the mapping cannot tell Podman from Docker.
        engine: crate::inventory::Engine::Docker,
        // Docker's PIDs change with every restart: `verify` asks for them when it needs them.
        netns: Default::default(),
    };
    inv.normalize();
    inv
}

/// The whole mapping in one call: prepare, resolve, finish.
pub fn map_inventory(
    containers: &[ContainerSummary],
    networks: &[DockerNetwork],
    inspected: &HashMap<String, ContainerInspectResponse>,
    resolver: &dyn VethResolver,
) -> Inventory {
    let p = prepare(containers, networks, inspected);
    let answers = resolver.resolve(&p.queries);
    finish(p, answers)
}
