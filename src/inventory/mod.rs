//! The model of what runs on the host: containers and their network endpoints.
//!
//! Both sources (the Docker daemon and an inventory file) produce this same model, so the
//! plan never knows where its containers came from.

mod file;
mod mac;

pub use file::{InventoryFileError, load_inventory_file, parse_inventory};
pub use mac::Mac;

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::{Ipv4Addr, Ipv6Addr};

/// Everything netguard knows about the containers on this host.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Inventory {
    /// Containers with at least one endpoint (managed or not), sorted by name.
    pub containers: Vec<Container>,
    /// Networks known to the source (Docker lists them; an inventory file implies them).
    #[serde(default)]
    pub networks: Vec<Network>,
    /// Containers that cannot be isolated by netguard (host network, macvlan, ...).
    #[serde(default)]
    pub unisolable: Vec<Unisolable>,
    /// The engine whose containers these are: it decides which bridge names are its own
    /// (judged fail-closed while not yet known) and which belong to someone else.
    #[serde(default, skip_serializing_if = "Engine::is_docker")]
    pub engine: Engine,
    /// Where each container's network namespace is, by container id, when the source
    /// names it (an inventory file's `netns` or `pid`). Only `netguard verify` enters
    /// namespaces this way; Docker's are found through the container's PID at verify time.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub netns: BTreeMap<String, NetnsRef>,
}

/// A container's network namespace, as an inventory file names it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NetnsRef {
    /// `ip netns` name: `/run/netns/NAME`.
    Named(String),
    /// Any process of the container: `/proc/PID/ns/net`.
    Pid(u32),
}

impl NetnsRef {
    /// The file whose descriptor `setns` takes.
    pub fn path(&self) -> std::path::PathBuf {
        match self {
            NetnsRef::Named(n) => std::path::Path::new("/run/netns").join(n),
            NetnsRef::Pid(p) => std::path::PathBuf::from(format!("/proc/{p}/ns/net")),
        }
    }
}

/// The container engine behind the source.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Engine {
    /// Docker, or an inventory file describing a Docker host (the default).
    #[default]
    Docker,
    Podman,
}

impl Engine {
    pub fn is_docker(&self) -> bool {
        *self == Engine::Docker
    }

    /// As `status` and the inventory file name it.
    pub fn as_str(&self) -> &'static str {
        match self {
            Engine::Docker => "docker",
            Engine::Podman => "podman",
        }
    }

    /// The bridge names this engine gives the networks it creates. A bridge of that shape
    /// that netguard does not know yet (created while it was not looking) is judged as
    /// managed with no members until it is known: fail closed. Names of another engine's
    /// shape are left alone, so following one engine never cuts the other's networks.
    pub fn bridge_patterns(&self) -> &'static [&'static str] {
        match self {
            Engine::Docker => &["docker0", "br-*"],
            Engine::Podman => &["podman*"],
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Container {
    pub id: String,
    pub name: String,
    #[serde(default)]
    pub image: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub endpoints: Vec<Endpoint>,
    /// Ports the engine publishes on the host for this container (`-p HOST:CONTAINER`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub published: Vec<PublishedPort>,
}

/// One published port: connections to `host_port` on `host_ip` are carried to
/// `container_port` of the container, by docker-proxy or by DNAT.
///
/// `host_ip: None` means every local address of the host, of both families: Docker's
/// wildcard bindings (`0.0.0.0`, `::`, and `""` in older answers) all become `None`, and the
/// usual pair `0.0.0.0` + `::` is one entry. Netguard keys its published-port sets on
/// proto . port for `None` (the wildcard sets, any local address of either family) and on
/// daddr . proto . port for a bound one; a port bound on `0.0.0.0` only is therefore also
/// judged for IPv6 connections to it, which only ever drops more (nothing of that
/// container listens there). `Some(ip)` is a binding
/// to that one address (`127.0.0.1:8080:80`).
///
/// Written (`Display`, the inventory file, `status`) as Docker's `-p` syntax:
/// `15432:5432/tcp`, `127.0.0.1:8080:80/tcp`, `[2001:db8::1]:8443:443/tcp`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct PublishedPort {
    pub proto: PortProto,
    pub host_port: u16,
    pub container_port: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_ip: Option<std::net::IpAddr>,
}

impl std::fmt::Display for PublishedPort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.host_ip {
            Some(std::net::IpAddr::V6(ip)) => write!(f, "[{ip}]:")?,
            Some(ip) => write!(f, "{ip}:")?,
            None => {}
        }
        write!(
            f,
            "{}:{}/{}",
            self.host_port,
            self.container_port,
            self.proto.as_str()
        )
    }
}

impl std::str::FromStr for PublishedPort {
    type Err = String;

    /// `[IP:]HOST_PORT:CONTAINER_PORT[/PROTO]`, IPv6 in brackets, proto tcp by default.
    fn from_str(s: &str) -> Result<Self, String> {
        let (rest, proto) = match s.rsplit_once('/') {
            Some((r, p)) => (r, p),
            None => (s, "tcp"),
        };
        let proto = match proto {
            "tcp" => PortProto::Tcp,
            "udp" => PortProto::Udp,
            "sctp" => PortProto::Sctp,
            other => return Err(format!("unknown protocol {other:?} (tcp, udp or sctp)")),
        };
        let (host, container_port) = rest
            .rsplit_once(':')
            .ok_or_else(|| format!("{s:?} is not HOST_PORT:CONTAINER_PORT[/PROTO]"))?;
        let (ip, host_port) = match host.rsplit_once(':') {
            Some((ip, p)) => (Some(ip), p),
            None => (None, host),
        };
        let port = |p: &str, what: &str| match p.parse::<u16>() {
            Ok(n) if n != 0 => Ok(n),
            _ => Err(format!("{what} {p:?} is not a number in 1-65535")),
        };
        let host_ip = match ip {
            None => None,
            Some(ip) => {
                let bare = match ip.strip_prefix('[') {
                    Some(r) => r
                        .strip_suffix(']')
                        .ok_or_else(|| format!("{ip:?}: missing ']'"))?,
                    None if ip.contains(':') => {
                        return Err(format!("IPv6 address {ip:?} must be in brackets"));
                    }
                    None => ip,
                };
                let addr: std::net::IpAddr = bare
                    .parse()
                    .map_err(|_| format!("{bare:?} is not an IP address"))?;
                (!addr.is_unspecified()).then_some(addr)
            }
        };
        Ok(PublishedPort {
            proto,
            host_port: port(host_port, "host port")?,
            container_port: port(container_port, "container port")?,
            host_ip,
        })
    }
}

/// The transport of a published port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PortProto {
    Tcp,
    Udp,
    Sctp,
}

impl PortProto {
    pub fn as_str(self) -> &'static str {
        match self {
            PortProto::Tcp => "tcp",
            PortProto::Udp => "udp",
            PortProto::Sctp => "sctp",
        }
    }
}

/// One attachment of a container to a network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    /// Network name, as `settings.networks` matches it.
    pub network: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_id: Option<String>,
    /// Host bridge the endpoint hangs on.
    pub bridge: String,
    /// Host-side veth; `None` when it could not be resolved (yet).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub veth: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv4: Option<Ipv4Addr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv6: Option<Ipv6Addr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
}

/// A network as the source reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Network {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Docker driver (`bridge`, `macvlan`, `host`, ...).
    #[serde(default = "default_driver")]
    pub driver: String,
    /// Host bridge for bridge networks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bridge: Option<String>,
}

fn default_driver() -> String {
    "bridge".to_string()
}

/// An interface name nftables matches exactly, whatever path writes it: nft reads a
/// trailing `*` as a wildcard, a leading `@` or `$` as a reference, and quotes and
/// backslashes as syntax. Docker's names (`docker0`, `br-<hex>`, `veth<hex>`) and
/// Podman's (`podman0`) are all of this form.
pub fn exact_ifname(name: &str) -> bool {
    (1..=15).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// A container that netguard sees but cannot isolate, with the reason.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Unisolable {
    pub id: String,
    pub name: String,
    pub reason: String,
}

impl Endpoint {
    /// Its IPv4 and IPv6 addresses, whichever it has.
    pub fn addresses(&self) -> impl Iterator<Item = std::net::IpAddr> + use<> {
        self.ipv4
            .map(std::net::IpAddr::V4)
            .into_iter()
            .chain(self.ipv6.map(std::net::IpAddr::V6))
    }
}

impl Inventory {
    /// Sorts containers and networks so that equal inventories compare and plan equally.
    pub fn normalize(&mut self) {
        self.containers
            .sort_by(|a, b| a.name.cmp(&b.name).then(a.id.cmp(&b.id)));
        for c in &mut self.containers {
            c.endpoints
                .sort_by(|a, b| a.network.cmp(&b.network).then(a.bridge.cmp(&b.bridge)));
        }
        self.networks.sort_by(|a, b| a.name.cmp(&b.name));
        self.networks.dedup_by(|a, b| a.name == b.name);
        self.unisolable
            .sort_by(|a, b| a.name.cmp(&b.name).then(a.id.cmp(&b.id)));
    }

    /// Finds a container by exact name, exact id, or unique id prefix (as `docker` does).
    pub fn find(&self, key: &str) -> Option<&Container> {
        self.lookup(key).ok()
    }

    /// Like [`Inventory::find`] (an id prefix needs at least 4 characters); `Err` lists what
    /// an ambiguous prefix matches (empty: nothing matches).
    pub fn lookup(&self, key: &str) -> Result<&Container, Vec<&Container>> {
        let key = key.trim_start_matches('/');
        if let Some(c) = self
            .containers
            .iter()
            .find(|c| c.name == key || c.id == key)
        {
            return Ok(c);
        }
        let by_prefix: Vec<&Container> = self
            .containers
            .iter()
            .filter(|c| key.len() >= 4 && c.id.starts_with(key))
            .collect();
        match by_prefix.as_slice() {
            [c] => Ok(c),
            _ => Err(by_prefix),
        }
    }
}

/// What an event of the inventory's source asks the daemon to look at again.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Change {
    /// Refresh this container (started, connected, disconnected, renamed).
    Container(String),
    /// This container stopped or was removed.
    Gone(String),
    /// Networks were created or removed: the structure may change.
    Networks,
}
