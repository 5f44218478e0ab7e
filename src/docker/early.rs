//! Admission before the container's process runs: what Docker says of a container while it
//! starts, without waiting for the start to end.
//!
//! Docker sends `create`, then network `connect` for each network, then `start` once the
//! process runs (several hundred milliseconds after the connect). The container's inspect
//! blocks until the start has finished, but the container list (`GET /containers/json`) and
//! the network (`GET /networks/{id}`) answer at once: the list has the name, image, labels and
//! network mode; the network has the endpoint's addresses and MAC. The host veth is found from
//! the kernel's link notifications (see [`super::link_watch`]) as soon as Docker gives the peer
//! the endpoint's MAC in the sandbox, which it does before the process runs.
//!
//! Pure functions here; the requests are in [`super::DockerSource`].

use super::map::{bridge_name, network_mode};
use crate::inventory::{Container, Endpoint};
use bollard::models::{ContainerSummary, Network as DockerNetwork, NetworkInspect};
use std::collections::BTreeMap;
use std::net::{Ipv4Addr, Ipv6Addr};

/// What the event stream learned about a starting container, ahead of its `start`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EarlyChange {
    /// An endpoint with its veth, found while the container starts (or is connected).
    Endpoint {
        created: Created,
        endpoint: Endpoint,
        /// When netguard received the event this comes from: a `die` or `destroy` received
        /// after it wins, however late the endpoint is ready.
        event_at: std::time::Instant,
    },
    /// A container created with `--network container:<owner>`: it will use the owner's
    /// endpoints.
    Sharer {
        created: Created,
        owner: String,
        event_at: std::time::Instant,
    },
    /// The container left this network (by id): an endpoint admitted early for it goes, and
    /// one still being waited for from a connect received before `event_at` is stale (a
    /// failed start connects, then disconnects, while the wait for the veth goes on: the
    /// address it released, and the MAC Docker derives from it, can be the next container's).
    Disconnected {
        container: String,
        network_id: String,
        event_at: std::time::Instant,
    },
}

/// What the container list says of a container that may not run yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Created {
    pub id: String,
    pub name: String,
    pub image: String,
    pub labels: BTreeMap<String, String>,
    /// `HostConfig.NetworkMode`: `container:<id>` for a container sharing another's netns.
    pub network_mode: String,
}

impl Created {
    /// The id of the container whose network namespace this one joins, if it does.
    pub fn shares_with(&self) -> Option<&str> {
        self.network_mode.strip_prefix("container:")
    }

    /// The container with these endpoints.
    pub fn with_endpoints(&self, endpoints: Vec<Endpoint>) -> Container {
        Container {
            id: self.id.clone(),
            name: self.name.clone(),
            image: self.image.clone(),
            labels: self.labels.clone(),
            endpoints,
            // Docker sets its port mappings up during the start; the refresh at `start`
            // brings them in.
            published: Vec::new(),
        }
    }
}

/// The list entry of one container (`all=1`, so also one that is only created).
///
/// The labels come from the list, not from the `create` event's attributes: Docker merges
/// the labels with its own `name` and `image` attributes there, so a label of that key would
/// be read wrong.
pub fn created(c: &ContainerSummary) -> Option<Created> {
    let id = c.id.clone().filter(|i| !i.is_empty())?;
    let names = c.names.as_deref().unwrap_or(&[]);
    let name = names
        .iter()
        .find(|n| n.trim_start_matches('/').find('/').is_none())
        .or(names.first())
        .map(|n| n.trim_start_matches('/').to_string())
        .unwrap_or_default();
    Some(Created {
        id,
        name,
        image: c.image.clone().unwrap_or_default(),
        labels: c
            .labels
            .as_ref()
            .map(|l| l.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default(),
        network_mode: network_mode(c, None).to_string(),
    })
}

/// `172.18.0.2/16` → the address; an empty or malformed field is no address.
fn address<T: std::str::FromStr>(s: Option<&String>) -> Option<T> {
    let s = s?.split('/').next()?;
    if s.is_empty() {
        return None;
    }
    s.parse().ok()
}

/// The endpoint of `container_id` on this network as the network lists it, without its veth.
/// `None` when the network is not a bridge network, does not list the container, or lists it
/// without a MAC (then the veth cannot be found from the host) or without any address.
pub fn endpoint_of(net: &NetworkInspect, container_id: &str) -> Option<Endpoint> {
    if net.driver.as_deref() != Some("bridge") {
        return None;
    }
    let eps = net.containers.as_ref()?;
    let ep = eps.get(container_id)?;
    let mac = ep
        .mac_address
        .as_deref()
        .filter(|m| !m.is_empty())?
        .to_ascii_lowercase();
    let listed = DockerNetwork {
        name: net.name.clone(),
        id: net.id.clone(),
        driver: net.driver.clone(),
        options: net.options.clone(),
        ..Default::default()
    };
    let endpoint = Endpoint {
        network: net.name.clone()?,
        network_id: net.id.clone(),
        bridge: bridge_name(&listed)?,
        veth: None,
        ipv4: address::<Ipv4Addr>(ep.ipv4_address.as_ref()),
        ipv6: address::<Ipv6Addr>(ep.ipv6_address.as_ref()),
        mac: Some(mac),
    };
    if endpoint.ipv4.is_none() && endpoint.ipv6.is_none() {
        return None;
    }
    Some(endpoint)
}

/// `current` (what is admitted for the container so far, if anything) with `endpoint` in
/// place of its endpoint on the same network: connects of a container to several networks
/// come one by one, and each must keep what the others brought.
pub fn with_endpoint(current: Option<&Container>, base: &Created, endpoint: Endpoint) -> Container {
    let mut endpoints: Vec<Endpoint> = current
        .map(|c| {
            c.endpoints
                .iter()
                .filter(|e| e.network != endpoint.network)
                .cloned()
                .collect()
        })
        .unwrap_or_default();
    endpoints.push(endpoint);
    endpoints.sort_by(|a, b| a.network.cmp(&b.network));
    base.with_endpoints(endpoints)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bollard::models::EndpointResource;
    use std::collections::HashMap;

    fn net(driver: &str, eps: &[(&str, &str, &str, &str)]) -> NetworkInspect {
        NetworkInspect {
            name: Some("shop".into()),
            id: Some("e6f46ad3b7f387eab12891d395480f54489acb49594db7b755571508557546c5".into()),
            driver: Some(driver.into()),
            containers: Some(
                eps.iter()
                    .map(|(id, mac, v4, v6)| {
                        (
                            id.to_string(),
                            EndpointResource {
                                mac_address: Some(mac.to_string()),
                                ipv4_address: Some(v4.to_string()),
                                ipv6_address: Some(v6.to_string()),
                                ..Default::default()
                            },
                        )
                    })
                    .collect(),
            ),
            ..Default::default()
        }
    }

    #[test]
    fn the_endpoint_comes_from_the_network_listing() {
        // As Docker 20.10 answered at a `docker run`'s connect event.
        let n = net(
            "bridge",
            &[(
                "c1",
                "02:42:AC:12:00:02",
                "172.18.0.2/16",
                "fd00:ea:1::2/64",
            )],
        );
        let e = endpoint_of(&n, "c1").expect("endpoint");
        assert_eq!(e.network, "shop");
        assert_eq!(e.bridge, "br-e6f46ad3b7f3");
        assert_eq!(e.ipv4, Some("172.18.0.2".parse().unwrap()));
        assert_eq!(e.ipv6, Some("fd00:ea:1::2".parse().unwrap()));
        assert_eq!(e.mac.as_deref(), Some("02:42:ac:12:00:02"));
        assert_eq!(e.veth, None);
        // IPv4 only (the network has no IPv6): Docker sends "".
        let n = net(
            "bridge",
            &[("c1", "02:42:ac:12:00:02", "172.18.0.2/16", "")],
        );
        assert_eq!(endpoint_of(&n, "c1").and_then(|e| e.ipv6), None);
    }

    #[test]
    fn no_endpoint_without_mac_address_bridge_or_listing() {
        let n = net("bridge", &[("c1", "", "172.18.0.2/16", "")]);
        assert_eq!(
            endpoint_of(&n, "c1"),
            None,
            "no MAC: the veth cannot be found"
        );
        let n = net("bridge", &[("c1", "02:42:ac:12:00:02", "", "")]);
        assert_eq!(endpoint_of(&n, "c1"), None, "no address");
        let n = net("bridge", &[("c1", "02:42:ac:12:00:02", "garbage", "")]);
        assert_eq!(endpoint_of(&n, "c1"), None, "malformed address");
        let n = net(
            "macvlan",
            &[("c1", "02:42:ac:12:00:02", "172.18.0.2/16", "")],
        );
        assert_eq!(endpoint_of(&n, "c1"), None, "not a bridge network");
        let n = net(
            "bridge",
            &[("c2", "02:42:ac:12:00:02", "172.18.0.2/16", "")],
        );
        assert_eq!(endpoint_of(&n, "c1"), None, "someone else's endpoint");
    }

    #[test]
    fn the_bridge_name_option_and_the_default_network_name_the_bridge() {
        let mut n = net(
            "bridge",
            &[("c1", "02:42:ac:11:00:02", "172.17.0.2/16", "")],
        );
        n.name = Some("bridge".into());
        assert_eq!(endpoint_of(&n, "c1").unwrap().bridge, "docker0");
        n.name = Some("custom".into());
        n.options = Some(HashMap::from([(
            "com.docker.network.bridge.name".to_string(),
            "brcustom".to_string(),
        )]));
        assert_eq!(endpoint_of(&n, "c1").unwrap().bridge, "brcustom");
    }

    fn summary(mode: &str) -> ContainerSummary {
        ContainerSummary {
            id: Some("c1".into()),
            names: Some(vec!["/web-1".into()]),
            image: Some("netguard-busybox:test".into()),
            labels: Some(HashMap::from([
                ("role".to_string(), "web".to_string()),
                // A label Docker's event attributes would overwrite with the container name.
                ("name".to_string(), "not-the-name".to_string()),
            ])),
            host_config: Some(bollard::models::ContainerSummaryHostConfig {
                network_mode: Some(mode.into()),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn created_reads_the_list_entry() {
        let c = created(&summary("shop")).expect("created");
        assert_eq!(c.name, "web-1");
        assert_eq!(c.image, "netguard-busybox:test");
        assert_eq!(c.labels.get("role").map(String::as_str), Some("web"));
        assert_eq!(
            c.labels.get("name").map(String::as_str),
            Some("not-the-name")
        );
        assert_eq!(c.shares_with(), None);
        let c = created(&summary("container:abc")).expect("created");
        assert_eq!(c.shares_with(), Some("abc"));
        let mut s = summary("shop");
        s.id = Some(String::new());
        assert_eq!(created(&s), None);
    }

    #[test]
    fn each_connect_keeps_the_other_networks_endpoints() {
        let base = created(&summary("shop")).unwrap();
        let ep = |net: &str, last: u8| Endpoint {
            network: net.into(),
            network_id: None,
            bridge: format!("br-{net}"),
            veth: Some(format!("veth{net}")),
            ipv4: Some(Ipv4Addr::new(172, 18, 0, last)),
            ipv6: None,
            mac: None,
        };
        let one = with_endpoint(None, &base, ep("b", 2));
        let two = with_endpoint(Some(&one), &base, ep("a", 3));
        assert_eq!(
            two.endpoints
                .iter()
                .map(|e| e.network.as_str())
                .collect::<Vec<_>>(),
            ["a", "b"]
        );
        // Connected again to "b" (restart): replaced, not doubled.
        let again = with_endpoint(Some(&two), &base, ep("b", 9));
        assert_eq!(again.endpoints.len(), 2);
        assert_eq!(again.endpoints[1].ipv4, Some(Ipv4Addr::new(172, 18, 0, 9)));
    }
}
