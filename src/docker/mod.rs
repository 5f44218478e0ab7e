//! Docker as the inventory source (issue 3). Placeholder until the bollard source lands.

use crate::inventory::Inventory;

#[derive(Debug, thiserror::Error)]
pub enum DockerError {
    #[error("the Docker source is not available in this build; use --inventory FILE")]
    Unavailable,
}

pub struct DockerSource;

impl DockerSource {
    pub fn connect(_host: Option<&str>) -> Result<DockerSource, DockerError> {
        Err(DockerError::Unavailable)
    }

    pub async fn inventory(&self) -> Result<Inventory, DockerError> {
        Err(DockerError::Unavailable)
    }
}
