//! The requests of early admission (see [`super::early`]): none of them waits for a starting
//! container (no inspect), so an event is never held up by Docker's container lock.

use super::early::{Created, created, endpoint_of};
use super::veth::{PortFinder, VethError};
use super::{DockerError, DockerSource, classify};
use crate::inventory::Endpoint;
use bollard::query_parameters::{InspectNetworkOptions, ListContainersOptions};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

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
        let found = tokio::task::spawn_blocking(move || finder.find(&bridge, &mac, wait))
            .await
            .map_err(|e| DockerError::Veth(e.to_string()))?;
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
