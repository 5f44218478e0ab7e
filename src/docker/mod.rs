//! Docker as the inventory source (issue 3).
//!
//! One inventory costs `2 + k` API calls: list running containers, list networks (both at
//! once), and one inspect per container whose list entry lacks something we need — its PID
//! (to find its host veth) when it has a bridge endpoint, or its configured image when the list
//! shows an image id. The first inventory also pays one `GET /version` to negotiate the API
//! version. Veths come from netlink, not from Docker (see [`veth`]).
//!
//! Podman (its Docker-compatible socket) is recognised from that same `GET /version` and costs
//! one call more per inventory, its own network list (see [`podman`]); its container list
//! lacks the network mode, so every container is inspected there.

pub mod early;
mod early_source;
pub mod events;
pub mod link_watch;
pub mod map;
mod netns;
pub mod podman;
pub mod ports;
pub mod security;
pub mod veth;

pub use early_source::{EarlyWatch, Emit, PORT_WAIT};
pub use link_watch::LinkWatch;
pub use map::{bridge_name, finish, map_inventory, names_unknown_network, needs_inspect, prepare};
pub use veth::{
    BridgePort, NetlinkFailure, NetlinkPortFinder, NetlinkVethResolver, PortFinder, ResolvedVeth,
    StaticPortFinder, StaticVethResolver, VethError, VethQuery, VethResolver, bridge_ports,
    netlink_failures, port_with_mac, wait_for_port,
};

use crate::inventory::{Container, Engine, Inventory, Unisolable};
use bollard::models::{ContainerInspectResponse, ContainerSummary, Network as DockerNetwork};
use bollard::query_parameters::{
    InspectContainerOptions, ListContainersOptions, ListNetworksOptions,
};
use bollard::{ClientVersion, Docker};
use futures::StreamExt;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

/// Default Docker endpoint when neither `--docker-host` nor `DOCKER_HOST` is set.
pub const DEFAULT_DOCKER_HOST: &str = "unix:///var/run/docker.sock";

/// Seconds before a Docker request is abandoned: well inside the daemon's watchdog (30 s),
/// so a hung Docker makes netguard log and retry, not get killed.
const REQUEST_TIMEOUT_SECS: u64 = 10;

/// Inspects in flight at once; enough to hide the daemon's per-request latency without
/// flooding it.
const INSPECT_CONCURRENCY: usize = 32;

#[derive(Debug, thiserror::Error)]
pub enum DockerError {
    #[error(
        "Docker socket {path} does not exist: is dockerd running? \
         (start it, or point --docker-host / DOCKER_HOST elsewhere)"
    )]
    SocketMissing { path: String },
    #[error("cannot reach the Docker daemon at {host}: {detail} (is dockerd running?)")]
    DaemonDown { host: String, detail: String },
    #[error(
        "permission denied on {host}: netguard must run as root \
         (or as a member of the docker group)"
    )]
    PermissionDenied { host: String },
    #[error("Docker API version mismatch with {host}: {detail}")]
    ApiVersion { host: String, detail: String },
    #[error("unsupported Docker host {host:?}: use unix:///path/to/docker.sock or tcp://HOST:PORT")]
    InvalidHost { host: String },
    #[error("Docker API error from {host} ({what}): {detail}")]
    Api {
        host: String,
        what: &'static str,
        detail: String,
    },
    #[error("veth resolution failed: {0}")]
    Veth(String),
}

/// What Docker says of one container now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ContainerState {
    Running(Container),
    Unisolable(Unisolable),
    /// Not running (stopped, removed, or not started yet).
    Gone,
}

/// A connection to a Docker (or Docker-compatible) daemon.
pub struct DockerSource {
    endpoint: Endpoint,
    /// Replaced when negotiation settles on another API version or engine.
    session: RwLock<Session>,
    host: String,
    calls: Arc<AtomicU64>,
    negotiated: AtomicBool,
    resolver: Arc<dyn VethResolver>,
    /// The veths the last resolution could not resolve because netlink failed (see
    /// [`DockerSource::take_netlink_failures`]).
    netlink_failed: std::sync::Mutex<Vec<NetlinkFailure>>,
    /// The network list `container` maps against: the last full inventory's, listed again
    /// when a container names a network it lacks. Held across that call's requests.
    network_cache: tokio::sync::Mutex<Vec<DockerNetwork>>,
}

/// Where the daemon listens: what bollard connects to, and where the one request bollard
/// has no method for goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    Unix(String),
    /// `http://HOST:PORT` (a `tcp://` host rewritten).
    Http(String),
}

#[derive(Clone)]
struct Session {
    docker: Docker,
    /// `Some(libpod API version)` when the daemon is Podman.
    podman: Option<String>,
}

fn open(endpoint: &Endpoint, version: &ClientVersion) -> Result<Docker, bollard::errors::Error> {
    match endpoint {
        Endpoint::Unix(path) => Docker::connect_with_unix(path, REQUEST_TIMEOUT_SECS, version),
        Endpoint::Http(url) => Docker::connect_with_http(url, REQUEST_TIMEOUT_SECS, version),
    }
}

/// `"1.41"` as bollard's version; anything else is no version.
fn parse_api_version(v: &str) -> Option<ClientVersion> {
    let (major, minor) = v.split_once('.')?;
    Some(ClientVersion {
        major_version: major.parse().ok()?,
        minor_version: minor.parse().ok()?,
    })
}

impl std::fmt::Debug for DockerSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DockerSource")
            .field("host", &self.host)
            .field("api_calls", &self.api_calls())
            .finish()
    }
}

impl DockerSource {
    /// Connects to `host`, else `DOCKER_HOST`, else the default socket. No request is made yet.
    pub fn connect(host: Option<&str>) -> Result<DockerSource, DockerError> {
        let host = host
            .map(str::to_string)
            .or_else(|| std::env::var("DOCKER_HOST").ok().filter(|h| !h.is_empty()))
            .unwrap_or_else(|| DEFAULT_DOCKER_HOST.to_string());
        let endpoint = if let Some(path) = host.strip_prefix("unix://") {
            if !std::path::Path::new(path).exists() {
                return Err(DockerError::SocketMissing {
                    path: path.to_string(),
                });
            }
            Endpoint::Unix(path.to_string())
        } else if let Some(addr) = host.strip_prefix("tcp://") {
            Endpoint::Http(format!("http://{addr}"))
        } else if host.starts_with("http://") {
            Endpoint::Http(host.clone())
        } else {
            return Err(DockerError::InvalidHost { host });
        };
        let docker = open(&endpoint, bollard::API_DEFAULT_VERSION)
            .map_err(|e| classify(&host, "connect", e))?;
        Ok(DockerSource {
            endpoint,
            session: RwLock::new(Session {
                docker,
                podman: None,
            }),
            host,
            calls: Arc::new(AtomicU64::new(0)),
            negotiated: AtomicBool::new(false),
            resolver: Arc::new(NetlinkVethResolver::default()),
            netlink_failed: Default::default(),
            network_cache: tokio::sync::Mutex::new(Vec::new()),
        })
    }

    /// Replaces the veth resolver (tests, or hosts where netlink is not available).
    pub fn with_resolver(mut self, resolver: Arc<dyn VethResolver>) -> Self {
        self.resolver = resolver;
        self
    }

    /// The Docker host this source talks to.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// Docker API requests made so far by this source.
    pub fn api_calls(&self) -> u64 {
        self.calls.load(Ordering::Relaxed)
    }

    fn count(&self) {
        self.calls.fetch_add(1, Ordering::Relaxed);
    }

    /// Podman once `GET /version` has shown the daemon to be Podman, else Docker.
    pub fn engine(&self) -> Engine {
        if self.session().podman.is_some() {
            Engine::Podman
        } else {
            Engine::Docker
        }
    }

    fn session(&self) -> Session {
        // A poisoned lock still holds a usable connection: nothing panics while writing it.
        self.session
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn docker(&self) -> Docker {
        self.session().docker
    }

    /// Settles on the highest API version both sides speak, once per source: bollard
    /// defaults to a newer version than older engines (Docker 20.10 stops at 1.41) accept,
    /// and newer engines reject versions that are too old, so no fixed version fits all.
    /// The same answer tells Podman from Docker. bollard's `negotiate_version` would make the
    /// same request but keep the answer to itself, so this does what it does: lower the
    /// client version to the server's when that is older.
    async fn negotiate(&self) -> Result<(), DockerError> {
        if self.negotiated.load(Ordering::Acquire) {
            return Ok(());
        }
        self.count();
        let current = self.docker();
        let v = current
            .version()
            .await
            .map_err(|e| classify(&self.host, "version negotiation", e))?;
        let server = v
            .api_version
            .as_deref()
            .and_then(parse_api_version)
            .ok_or_else(|| DockerError::ApiVersion {
                host: self.host.clone(),
                detail: "the daemon reported an API version netguard cannot parse".into(),
            })?;
        let docker = if server < current.client_version() {
            open(&self.endpoint, &server).map_err(|e| classify(&self.host, "connect", e))?
        } else {
            current
        };
        let podman = podman::libpod_api(&v);
        if let Some(api) = &podman {
            tracing::info!(host = %self.host, libpod_api = %api, "the daemon is Podman");
        }
        *self.session.write().unwrap_or_else(|e| e.into_inner()) = Session { docker, podman };
        self.negotiated.store(true, Ordering::Release);
        Ok(())
    }

    /// The networks as the mapping needs them: Docker's list as it is, Podman's fixed up
    /// from its own list (one more call, made alongside).
    async fn networks(&self) -> Result<Vec<DockerNetwork>, DockerError> {
        let s = self.session();
        self.count();
        let compat = s.docker.list_networks(None::<ListNetworksOptions>);
        let Some(api) = s.podman else {
            return compat
                .await
                .map_err(|e| classify(&self.host, "list networks", e));
        };
        self.count();
        let (compat, libpod) = futures::join!(
            compat,
            podman::libpod_networks(&self.endpoint, &api, REQUEST_TIMEOUT_SECS)
        );
        let mut networks = compat.map_err(|e| classify(&self.host, "list networks", e))?;
        let libpod = libpod.map_err(|e| classify_raw(&self.host, e))?;
        podman::adopt(&mut networks, &libpod);
        Ok(networks)
    }

    /// Lists the running containers with their endpoints, veths and unisolable reasons.
    pub async fn inventory(&self) -> Result<Inventory, DockerError> {
        self.take_netlink_failures();
        self.negotiate().await?;
        let t0 = std::time::Instant::now();
        let list_opts = ListContainersOptions {
            all: false,
            ..Default::default()
        };
        self.count();
        let docker = self.docker();
        let (containers, networks) =
            futures::join!(docker.list_containers(Some(list_opts)), self.networks());
        let containers = containers.map_err(|e| classify(&self.host, "list containers", e))?;
        let networks = networks?;

        let to_inspect: Vec<String> = containers
            .iter()
            .filter(|c| needs_inspect(c, &networks))
            .filter_map(|c| c.id.clone())
            .collect();
        let t_list = t0.elapsed();
        let inspected = self.inspect_all(to_inspect).await?;
        let t_inspect = t0.elapsed() - t_list;

        let mut inv = self
            .resolve(prepare(&containers, &networks, &inspected))
            .await?;
        inv.engine = self.engine();
        tracing::debug!(
            containers = inv.containers.len(),
            inspected = inspected.len(),
            list_ms = t_list.as_secs_f64() * 1e3,
            inspect_ms = t_inspect.as_secs_f64() * 1e3,
            total_ms = t0.elapsed().as_secs_f64() * 1e3,
            "docker inventory"
        );
        *self.network_cache.lock().await = networks;
        Ok(inv)
    }

    /// One container, as the inventory would hold it: for a daemon event, without listing
    /// everything (a list filtered on the id, an inspect when needed, its veths). A container
    /// sharing another's netns (`--network container:X`) brings X's summary along.
    /// Mapped against the network list of the last inventory (listed first when there was
    /// none), listed again when the container is on a network it lacks.
    pub async fn container(&self, id: &str) -> Result<ContainerState, DockerError> {
        self.take_netlink_failures();
        let mut networks = self.network_cache.lock().await;
        if networks.is_empty() {
            self.negotiate().await?;
            *networks = self.networks().await?;
        }
        self.container_on(id, &mut networks).await
    }

    async fn container_on(
        &self,
        id: &str,
        networks: &mut Vec<DockerNetwork>,
    ) -> Result<ContainerState, DockerError> {
        self.negotiate().await?;
        let mut summaries = self.list_by_id(id).await?;
        let Some(first) = summaries.first().cloned() else {
            return Ok(ContainerState::Gone);
        };
        // Docker announces new networks with an event, Podman does not: without this, a
        // container on a network created since the last full list would be reported as on
        // a network nobody listed, and its bridge left unmanaged until the next resync.
        if names_unknown_network(&summaries, networks) {
            *networks = self.networks().await?;
        }
        let networks: &[DockerNetwork] = networks;
        let full_id = first.id.clone().unwrap_or_else(|| id.to_string());
        let to_inspect = |list: &[ContainerSummary]| -> Vec<String> {
            list.iter()
                .filter(|c| needs_inspect(c, networks))
                .filter_map(|c| c.id.clone())
                .collect()
        };
        // Podman's list has no network mode; the inspect (always made then) has it.
        let mut inspected = self.inspect_all(to_inspect(&summaries)).await?;
        let mode = map::network_mode(&first, inspected.get(&full_id)).to_string();
        if let Some(target) = mode.strip_prefix("container:") {
            let more = self.list_by_id(target).await?;
            inspected.extend(self.inspect_all(to_inspect(&more)).await?);
            summaries.extend(more);
        }
        let inv = self
            .resolve(prepare(&summaries, networks, &inspected))
            .await?;
        if let Some(c) = inv.containers.into_iter().find(|c| c.id == full_id) {
            return Ok(ContainerState::Running(c));
        }
        if let Some(u) = inv.unisolable.into_iter().find(|u| u.id == full_id) {
            return Ok(ContainerState::Unisolable(u));
        }
        Ok(ContainerState::Gone)
    }

    /// Resolves the veths a prepared mapping asks for and finishes it. Netlink work blocks
    /// (and enters namespaces on its own threads): it stays off the async workers.
    async fn resolve(&self, prepared: map::Prepared) -> Result<Inventory, DockerError> {
        let queries = prepared.queries.clone();
        let resolver = Arc::clone(&self.resolver);
        let (queries, answers) = tokio::task::spawn_blocking(move || {
            let answers = resolver.resolve(&queries);
            (queries, answers)
        })
        .await
        .map_err(|e| DockerError::Veth(e.to_string()))?;
        *self
            .netlink_failed
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = netlink_failures(&queries, &answers);
        Ok(finish(prepared, answers))
    }

    /// The containers whose veths the last [`inventory`](Self::inventory) or
    /// [`container`](Self::container) call could not resolve because netlink failed (not
    /// because the veth is not there yet): they are mapped without a veth, so not admitted
    /// (fail closed), and the caller is to ask again. Each call replaces the list.
    pub fn take_netlink_failures(&self) -> Vec<NetlinkFailure> {
        std::mem::take(
            &mut *self
                .netlink_failed
                .lock()
                .unwrap_or_else(|e| e.into_inner()),
        )
    }

    async fn list_by_id(&self, id: &str) -> Result<Vec<ContainerSummary>, DockerError> {
        self.count();
        let opts = ListContainersOptions {
            all: false,
            filters: Some(HashMap::from([("id".to_string(), vec![id.to_string()])])),
            ..Default::default()
        };
        let list = self
            .docker()
            .list_containers(Some(opts))
            .await
            .map_err(|e| classify(&self.host, "list containers", e))?;
        // The id filter matches prefixes: keep the exact container.
        Ok(list
            .into_iter()
            .filter(|c| {
                c.id.as_deref()
                    .is_some_and(|cid| cid == id || cid.starts_with(id))
            })
            .take(1)
            .collect())
    }

    /// Waits until the daemon answers (`GET /version`), for reconnecting.
    pub async fn ping(&self) -> Result<(), DockerError> {
        self.negotiated.store(false, Ordering::Release);
        self.negotiate().await
    }

    async fn inspect_all(
        &self,
        ids: Vec<String>,
    ) -> Result<HashMap<String, ContainerInspectResponse>, DockerError> {
        let docker = self.docker();
        let docker = &docker;
        let results: Vec<_> = futures::stream::iter(ids)
            .map(|id| {
                self.count();
                async move {
                    let opts = InspectContainerOptions { size: false };
                    let r = docker.inspect_container(&id, Some(opts)).await;
                    (id, r)
                }
            })
            .buffer_unordered(INSPECT_CONCURRENCY)
            .collect()
            .await;
        let mut out = HashMap::new();
        for (id, r) in results {
            match r {
                Ok(i) => {
                    // A container that stopped after the list has no netns to look into.
                    if i.state.as_ref().and_then(|s| s.running) == Some(false) {
                        tracing::info!(container = %id, "container stopped between list and inspect; skipped");
                        continue;
                    }
                    out.insert(id, i);
                }
                Err(bollard::errors::Error::DockerResponseServerError {
                    status_code: 404, ..
                }) => {
                    tracing::info!(container = %id, "container removed between list and inspect; skipped");
                }
                Err(e) => return Err(classify(&self.host, "inspect container", e)),
            }
        }
        Ok(out)
    }
}

/// The same situations for the request bollard does not make (Podman's network list).
fn classify_raw(host: &str, e: podman::RawError) -> DockerError {
    use podman::RawError as R;
    let host = host.to_string();
    match e {
        R::Io(io) if io.kind() == std::io::ErrorKind::PermissionDenied => {
            DockerError::PermissionDenied { host }
        }
        R::Io(io) => DockerError::DaemonDown {
            host,
            detail: io.to_string(),
        },
        R::Timeout(_) => DockerError::DaemonDown {
            host,
            detail: e.to_string(),
        },
        other => DockerError::Api {
            host,
            what: "list Podman networks",
            detail: other.to_string(),
        },
    }
}

/// Turns bollard's errors into the few situations an operator can act on.
fn classify(host: &str, what: &'static str, e: bollard::errors::Error) -> DockerError {
    use bollard::errors::Error as B;
    let host_s = host.to_string();
    match &e {
        B::SocketNotFoundError(path) => {
            return DockerError::SocketMissing {
                path: path.replacen("unix://", "", 1),
            };
        }
        B::APIVersionParseError {} => {
            return DockerError::ApiVersion {
                host: host_s,
                detail: "the daemon reported an API version netguard cannot parse".into(),
            };
        }
        B::DockerResponseServerError {
            status_code,
            message,
        } => {
            let m = message.to_ascii_lowercase();
            if m.contains("client version") || m.contains("api version") {
                return DockerError::ApiVersion {
                    host: host_s,
                    detail: message.clone(),
                };
            }
            return DockerError::Api {
                host: host_s,
                what,
                detail: format!("status {status_code}: {message}"),
            };
        }
        _ => {}
    }
    // Transport errors wrap an io::Error somewhere down the source chain.
    let mut src: Option<&(dyn std::error::Error + 'static)> = Some(&e);
    while let Some(s) = src {
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            return match io.kind() {
                std::io::ErrorKind::PermissionDenied => {
                    DockerError::PermissionDenied { host: host_s }
                }
                std::io::ErrorKind::NotFound => DockerError::SocketMissing {
                    path: host.replacen("unix://", "", 1),
                },
                _ => DockerError::DaemonDown {
                    host: host_s,
                    detail: io.to_string(),
                },
            };
        }
        src = s.source();
    }
    match e {
        B::HyperLegacyError { .. } | B::RequestTimeoutError => DockerError::DaemonDown {
            host: host_s,
            detail: e.to_string(),
        },
        other => DockerError::Api {
            host: host_s,
            what,
            detail: other.to_string(),
        },
    }
}
