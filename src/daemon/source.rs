//! Where the daemon learns about containers: Docker (events + targeted refreshes) or an
//! inventory file (re-read on SIGHUP and resync; no events).

use crate::docker::early::EarlyChange;
use crate::docker::{
    ContainerState, DockerError, DockerSource, EarlyWatch, Emit, LinkWatch, NetlinkFailure,
    NetlinkPortFinder, PortFinder,
};
pub use crate::inventory::Change;
use crate::inventory::{Inventory, InventoryFileError, load_inventory_file};
use futures::StreamExt;
use std::path::PathBuf;
use std::time::Instant;
use tokio::sync::mpsc;

/// A change and the moment netguard received it from the source: where
/// `netguard_event_to_enforce_seconds` starts, so time spent queued behind a running
/// reconcile counts as latency.
pub type Stamped = (Change, Instant);

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error(transparent)]
    Docker(#[from] DockerError),
    #[error(transparent)]
    File(#[from] InventoryFileError),
}

/// The daemon's view of the world. Implemented for Docker, an inventory file, and fakes.
#[allow(async_fn_in_trait)]
pub trait Source {
    async fn inventory(&mut self) -> Result<Inventory, SourceError>;
    async fn container(&mut self, id: &str) -> Result<ContainerState, SourceError>;
    /// Starts following changes. The receiver closes when the stream breaks; changes since a
    /// moment before the call are included, so that nothing between subscribing and listing
    /// is missed.
    async fn subscribe(&mut self) -> Result<mpsc::Receiver<Stamped>, SourceError>;
    /// What the source learns about starting containers ahead of their start, on a channel of
    /// its own so that it never queues behind other changes; taken once per subscription.
    fn early_changes(&mut self) -> Option<mpsc::Receiver<EarlyChange>> {
        None
    }
    /// The containers whose host veths the last `inventory` or `container` call could not
    /// resolve because netlink failed: mapped without them (not admitted), to be asked again.
    fn netlink_failures(&mut self) -> Vec<NetlinkFailure> {
        Vec::new()
    }
    /// Whether the source is reachable again (for reconnecting).
    async fn ping(&mut self) -> Result<(), SourceError>;
    fn describe(&self) -> String;
}

/// Docker, connected lazily: at boot netguard starts before Docker (its socket may not
/// exist yet), installs its default-deny tables and connects when Docker is there.
pub struct Docker {
    host: Option<String>,
    src: Option<DockerSource>,
    early: Option<mpsc::Receiver<EarlyChange>>,
}

impl Docker {
    /// Fails only on what waiting cannot fix (a malformed host).
    pub fn new(host: Option<String>) -> Result<Docker, DockerError> {
        let src = match DockerSource::connect(host.as_deref()) {
            Ok(s) => Some(s),
            Err(DockerError::SocketMissing { .. }) => None,
            Err(e) => return Err(e),
        };
        Ok(Docker {
            host,
            src,
            early: None,
        })
    }

    fn src(&mut self) -> Result<&DockerSource, DockerError> {
        if self.src.is_none() {
            self.src = Some(DockerSource::connect(self.host.as_deref())?);
        }
        self.src
            .as_ref()
            .ok_or_else(|| DockerError::Veth("no Docker connection".into()))
    }
}

/// After a network connect, the container is refreshed again after these delays
/// (milliseconds since the previous one).
const FOLLOW_UP_MS: [u64; 3] = [100, 400, 1500];

impl Source for Docker {
    async fn inventory(&mut self) -> Result<Inventory, SourceError> {
        Ok(self.src()?.inventory().await?)
    }

    async fn container(&mut self, id: &str) -> Result<ContainerState, SourceError> {
        Ok(self.src()?.container(id).await?)
    }

    async fn subscribe(&mut self) -> Result<mpsc::Receiver<Stamped>, SourceError> {
        self.src()?.ping().await?;
        let (tx, rx) = mpsc::channel(8192);
        // A connection of its own: its requests run beside the controller's.
        // The link watcher answers from notifications; without it each wait reads the
        // bridge's ports itself (slower in a burst, the same answers).
        let finder: std::sync::Arc<dyn PortFinder> = match LinkWatch::start() {
            Ok(w) => std::sync::Arc::new(w),
            Err(e) => {
                tracing::warn!(
                    "cannot watch link notifications ({e}); early admission reads the ports"
                );
                std::sync::Arc::new(NetlinkPortFinder)
            }
        };
        let watch = EarlyWatch::new(
            std::sync::Arc::new(DockerSource::connect(self.host.as_deref())?),
            finder,
        );
        let (early_tx, early_rx) = mpsc::channel(8192);
        self.early = Some(early_rx);
        let emit: Emit = std::sync::Arc::new(move |e| {
            // A full queue loses only the head start: the start refresh still admits.
            if early_tx.try_send(e).is_err() {
                tracing::warn!("early change queue full; an early admission is dropped");
            }
        });
        let mut events = Box::pin(self.src()?.events_with_early(watch, emit));
        tokio::spawn(async move {
            while let Some(ev) = events.next().await {
                match ev {
                    Ok(ev) => {
                        let at = Instant::now();
                        if let (true, Change::Container(id)) = (ev.connect, &ev.change) {
                            let (tx2, id) = (tx.clone(), id.clone());
                            tokio::spawn(async move {
                                for ms in FOLLOW_UP_MS {
                                    tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
                                    let c = Change::Container(id.clone());
                                    if tx2.send((c, Instant::now())).await.is_err() {
                                        return;
                                    }
                                }
                            });
                        }
                        if tx.send((ev.change, at)).await.is_err() {
                            return;
                        }
                    }
                    Err(e) => {
                        tracing::warn!("Docker event stream broke: {e}");
                        return;
                    }
                }
            }
            tracing::warn!("Docker event stream ended");
        });
        Ok(rx)
    }

    fn early_changes(&mut self) -> Option<mpsc::Receiver<EarlyChange>> {
        self.early.take()
    }

    fn netlink_failures(&mut self) -> Vec<NetlinkFailure> {
        self.src
            .as_ref()
            .map(DockerSource::take_netlink_failures)
            .unwrap_or_default()
    }

    async fn ping(&mut self) -> Result<(), SourceError> {
        Ok(self.src()?.ping().await?)
    }

    fn describe(&self) -> String {
        match &self.src {
            Some(s) => format!("Docker at {}", s.host()),
            None => format!(
                "Docker at {}",
                self.host
                    .as_deref()
                    .unwrap_or(crate::docker::DEFAULT_DOCKER_HOST)
            ),
        }
    }
}

/// An inventory file: no events; the file is read again on reload and resync.
pub struct File {
    pub path: PathBuf,
    current: Inventory,
    /// Held so that the change channel stays open: a file has no events, and a closed
    /// channel would read as a broken stream.
    keep: Option<mpsc::Sender<Stamped>>,
}

impl File {
    pub fn new(path: PathBuf) -> File {
        File {
            path,
            current: Inventory::default(),
            keep: None,
        }
    }
}

impl Source for File {
    async fn inventory(&mut self) -> Result<Inventory, SourceError> {
        self.current = load_inventory_file(&self.path)?;
        Ok(self.current.clone())
    }

    async fn container(&mut self, id: &str) -> Result<ContainerState, SourceError> {
        Ok(match self.current.containers.iter().find(|c| c.id == id) {
            Some(c) => ContainerState::Running(c.clone()),
            None => ContainerState::Gone,
        })
    }

    async fn subscribe(&mut self) -> Result<mpsc::Receiver<Stamped>, SourceError> {
        let (tx, rx) = mpsc::channel(1);
        self.keep = Some(tx);
        Ok(rx)
    }

    async fn ping(&mut self) -> Result<(), SourceError> {
        Ok(())
    }

    fn describe(&self) -> String {
        format!("inventory file {}", self.path.display())
    }
}
