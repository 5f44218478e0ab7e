//! The requests of early admission (see [`super::early`]): none of them waits for a starting
//! container (no inspect), so an event is never held up by Docker's container lock.

use super::early::{Created, EarlyChange, created, endpoint_of};
use super::veth::{PortFinder, VethError};
use super::{DockerError, DockerSource, classify};
use crate::inventory::Endpoint;
use bollard::models::{EventMessage, EventMessageTypeEnum};
use bollard::query_parameters::{InspectNetworkOptions, ListContainersOptions};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

impl DockerSource {
    /// The list entry of one container, running or only created. `None` when it is gone.
    pub async fn created(&self, id: &str) -> Result<Option<Created>, DockerError> {
        self.negotiate().await?;
        self.count();
        let opts = ListContainersOptions {
            all: true,
            filters: Some(HashMap::from([("id".to_string(), vec![id.to_string()])])),
            ..Default::default()
        };
        let list = self
            .docker()
            .list_containers(Some(opts))
            .await
            .map_err(|e| classify(self.host(), "list containers", e))?;
        // The id filter matches prefixes: keep the exact container.
        Ok(list
            .iter()
            .filter(|c| c.id.as_deref().is_some_and(|cid| cid.starts_with(id)))
            .find_map(created))
    }

    /// The endpoint of `container` on `network` as the network lists it, with the host veth
    /// once Docker has moved the peer into the container's namespace (waited for up to
    /// `wait`). `Ok(None)`: nothing to admit early (not a bridge network, not listed, no MAC,
    /// or the veth did not show up in time); the start event decides then.
    pub async fn early_endpoint(
        &self,
        network: &str,
        container: &str,
        finder: Arc<dyn PortFinder>,
        wait: Duration,
    ) -> Result<Option<Endpoint>, DockerError> {
        self.negotiate().await?;
        self.count();
        let net = match self
            .docker()
            .inspect_network(network, None::<InspectNetworkOptions>)
            .await
        {
            Ok(n) => n,
            // Removed meanwhile: nothing to admit.
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            }) => return Ok(None),
            Err(e) => return Err(classify(self.host(), "inspect network", e)),
        };
        let Some(mut endpoint) = endpoint_of(&net, container) else {
            return Ok(None);
        };
        let (bridge, mac) = (
            endpoint.bridge.clone(),
            endpoint.mac.clone().unwrap_or_default(),
        );
        tracing::debug!(%container, %bridge, %mac, "early: endpoint listed, waiting for its veth");
        let found = finder.find(&bridge, &mac, wait).await;
        match found {
            Ok(v) => {
                endpoint.veth = Some(v.veth);
                Ok(Some(endpoint))
            }
            Err(VethError::NoInterface { .. }) => Ok(None),
            Err(e) => Err(DockerError::Veth(e.to_string())),
        }
    }
}

/// How long the veth of an endpoint is waited for after its `connect`: Docker moves the peer
/// into the sandbox as the start proceeds, usually well under a second after the connect.
/// Past this, the `start` refresh admits the container as before.
pub const PORT_WAIT: Duration = Duration::from_secs(15);

/// Created containers remembered between their `create` and their `connect`; past this many
/// (containers created and never started) the memory is cleared, which only costs one list.
const CREATED_MAX: usize = 4096;

/// Where the early path sends what it found.
pub type Emit = Arc<dyn Fn(EarlyChange) + Send + Sync>;

/// Follows the events that come before a container's `start` and emits what early admission
/// needs. Each event's work runs in a task of its own: nothing here holds up the event
/// stream, and nothing waits for a starting container (no inspect).
pub struct EarlyWatch {
    src: Arc<DockerSource>,
    finder: Arc<dyn PortFinder>,
    created: std::sync::Mutex<HashMap<String, Created>>,
}

impl EarlyWatch {
    pub fn new(src: Arc<DockerSource>, finder: Arc<dyn PortFinder>) -> Arc<EarlyWatch> {
        Arc::new(EarlyWatch {
            src,
            finder,
            created: std::sync::Mutex::new(HashMap::new()),
        })
    }

    fn remember(&self, c: &Created) {
        let mut m = self.created.lock().unwrap_or_else(|e| e.into_inner());
        if m.len() >= CREATED_MAX {
            m.clear();
        }
        m.insert(c.id.clone(), c.clone());
    }

    fn forget(&self, id: &str) {
        self.created
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id);
    }

    fn recall(&self, id: &str) -> Option<Created> {
        self.created
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(id)
            .cloned()
    }

    /// Looks at one event (received at `at`); what it leads to is emitted later, from a task.
    pub fn on_event(self: &Arc<Self>, ev: &EventMessage, at: Instant, emit: &Emit) {
        let action = ev.action.as_deref().unwrap_or_default();
        let Some(actor) = ev.actor.as_ref() else {
            return;
        };
        let attr = |k: &str| actor.attributes.as_ref().and_then(|a| a.get(k)).cloned();
        match (ev.typ, action) {
            (Some(EventMessageTypeEnum::CONTAINER), "create") => {
                let Some(id) = actor.id.clone() else { return };
                let (me, emit) = (Arc::clone(self), Arc::clone(emit));
                tokio::spawn(async move {
                    match me.src.created(&id).await {
                        Ok(Some(c)) => {
                            me.remember(&c);
                            if let Some(owner) = c.shares_with() {
                                let owner = owner.to_string();
                                emit(EarlyChange::Sharer {
                                    created: c,
                                    owner,
                                    event_at: at,
                                });
                            }
                        }
                        Ok(None) => {}
                        Err(e) => tracing::debug!(container = %id, "early: cannot list: {e}"),
                    }
                });
            }
            (Some(EventMessageTypeEnum::CONTAINER), "destroy") => {
                if let Some(id) = &actor.id {
                    self.forget(id);
                }
            }
            (Some(EventMessageTypeEnum::NETWORK), "connect") => {
                // Podman names the container as the actor and sends no network id: no early
                // path there (its start refresh admits as before).
                let (Some(network), Some(container)) = (actor.id.clone(), attr("container")) else {
                    return;
                };
                let (me, emit) = (Arc::clone(self), Arc::clone(emit));
                tokio::spawn(async move {
                    let t0 = Instant::now();
                    // The list (when the create was missed, as for a running container's
                    // `network connect`) and the network are asked at once: neither needs the
                    // other, and a running container's new interface already carries traffic.
                    let listed = async {
                        match me.recall(&container) {
                            Some(c) => Ok(Some(c)),
                            None => me.src.created(&container).await,
                        }
                    };
                    let endpoint = me.src.early_endpoint(
                        &network,
                        &container,
                        Arc::clone(&me.finder),
                        PORT_WAIT,
                    );
                    let (listed, found) = tokio::join!(listed, endpoint);
                    let created = match listed {
                        Ok(Some(c)) => c,
                        Ok(None) => return,
                        Err(e) => {
                            tracing::debug!(%container, "early: cannot list: {e}");
                            return;
                        }
                    };
                    match found {
                        Ok(Some(endpoint)) => {
                            tracing::debug!(
                                container = %created.name,
                                network = %endpoint.network,
                                veth = ?endpoint.veth,
                                took_ms = t0.elapsed().as_secs_f64() * 1e3,
                                "early: endpoint ready"
                            );
                            emit(EarlyChange::Endpoint {
                                created,
                                endpoint,
                                event_at: at,
                            });
                        }
                        Ok(None) => {
                            tracing::debug!(%container, %network, "early: nothing to admit before the start")
                        }
                        Err(e) => tracing::warn!(%container, %network, "early admission: {e}"),
                    }
                });
            }
            (Some(EventMessageTypeEnum::NETWORK), "disconnect") => {
                if let (Some(network_id), Some(container)) = (actor.id.clone(), attr("container")) {
                    emit(EarlyChange::Disconnected {
                        container,
                        network_id,
                        event_at: at,
                    });
                }
            }
            _ => {}
        }
    }
}
