//! Where a running container's network namespace is, for `netguard verify`: its PID's
//! `/proc/PID/ns/net`, asked at the moment it is needed (a PID changes with every restart,
//! so it is no part of the inventory).

use super::{DockerError, DockerSource};
use std::collections::BTreeMap;

impl DockerSource {
    /// The PID of each of these running containers (one inspect each); a container that
    /// stopped or went away meanwhile is left out.
    pub async fn pids(&self, ids: &[String]) -> Result<BTreeMap<String, u32>, DockerError> {
        self.negotiate().await?;
        let inspected = self.inspect_all(ids.to_vec()).await?;
        Ok(inspected
            .into_iter()
            .filter_map(|(id, i)| {
                let pid = i.state.and_then(|s| s.pid)?;
                u32::try_from(pid).ok().filter(|&p| p > 0).map(|p| (id, p))
            })
            .collect())
    }
}
