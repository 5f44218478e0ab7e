//! Docker's event stream as netguard's changes: bollard's `EventMessage` stops here.

use super::{DockerError, DockerSource, EarlyWatch, Emit, classify};
use crate::inventory::Change;
use bollard::models::{EventActor, EventMessage, EventMessageTypeEnum};
use bollard::query_parameters::EventsOptions;
use futures::StreamExt;
use std::collections::HashMap;

/// One Docker event, as the daemon needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub change: Change,
    /// A network connect: Docker sends it before its container listing shows the new
    /// endpoint (and no later event follows), so the container must be looked at again a
    /// little later.
    pub connect: bool,
}

/// Maps one Docker event to what must be looked at again.
pub fn change_of(ev: &EventMessage) -> Option<Change> {
    let action = ev.action.as_deref().unwrap_or_default();
    let actor = ev.actor.as_ref()?;
    match ev.typ {
        Some(EventMessageTypeEnum::CONTAINER) => {
            let id = actor.id.clone()?;
            match action {
                // A signal (`docker kill -s HUP` to reload a config) or the OOM killer taking one of
                // its processes may leave the container running: looked at again, and removed
                // only if it no longer runs. Its `die` says so when it ends.
                "start" | "rename" | "unpause" | "restart" | "kill" | "oom" => {
                    Some(Change::Container(id))
                }
                "die" | "destroy" | "stop" => Some(Change::Gone(id)),
                _ => None,
            }
        }
        Some(EventMessageTypeEnum::NETWORK) => match action {
            "connect" | "disconnect" => {
                // Docker names the container in an attribute (the actor is the network);
                // Podman's compat events make the container the actor and leave it out.
                let c = named_container(actor).or(actor.id.as_ref())?.clone();
                Some(Change::Container(c))
            }
            "create" | "destroy" | "remove" => Some(Change::Networks),
            _ => None,
        },
        _ => None,
    }
}

/// The container a Docker network event names in its attributes (Podman's leave it out).
fn named_container(actor: &EventActor) -> Option<&String> {
    actor.attributes.as_ref().and_then(|a| a.get("container"))
}

/// Containers the event stream has shown created or dead and not started since: a network
/// connect or disconnect of one of them changes nothing netguard enforces (a container that
/// does not run holds no endpoint in the engine, and what was admitted early has its own
/// `disconnect` path), and its `start` event refreshes it with the endpoint. A `docker run`
/// sends `connect` before `start` and `disconnect` after `die`: without this, each of them
/// cost a container list (and a connect three more, see `daemon::source`) that Docker
/// answered while it was starting or removing the container.
///
/// Only what the stream itself showed counts: a container not seen is refreshed as before,
/// and the set is cleared when it grows past [`NOT_RUNNING_MAX`] (that only costs lists).
#[derive(Debug, Default)]
pub struct NotRunning(std::collections::HashSet<String>);

/// Past this many containers created and never started, [`NotRunning`] forgets them all.
const NOT_RUNNING_MAX: usize = 4096;

impl NotRunning {
    /// Takes in one event; `false` when the event is a network connect or disconnect of a
    /// container that does not run (nothing to refresh).
    pub fn note(&mut self, ev: &EventMessage) -> bool {
        let action = ev.action.as_deref().unwrap_or_default();
        let Some(actor) = ev.actor.as_ref() else {
            return true;
        };
        match ev.typ {
            Some(EventMessageTypeEnum::CONTAINER) => {
                let Some(id) = actor.id.as_ref() else {
                    return true;
                };
                match action {
                    // Not `kill` or `stop`: a signal may leave the container running, and a
                    // stop that ends it is followed by its `die`.
                    "create" | "die" => {
                        if self.0.len() >= NOT_RUNNING_MAX {
                            self.0.clear();
                        }
                        self.0.insert(id.clone());
                    }
                    "start" | "restart" | "unpause" | "destroy" => {
                        self.0.remove(id);
                    }
                    _ => {}
                }
                true
            }
            // Docker names the container in an attribute; Podman makes it the actor and is
            // left as it was.
            Some(EventMessageTypeEnum::NETWORK) if matches!(action, "connect" | "disconnect") => {
                !named_container(actor).is_some_and(|c| self.0.contains(c))
            }
            _ => true,
        }
    }
}

/// `change_of`, and whether the event is a network connect.
pub fn event_of(ev: &EventMessage) -> Option<Event> {
    let change = change_of(ev)?;
    let connect = ev.typ == Some(EventMessageTypeEnum::NETWORK)
        && ev.action.as_deref() == Some("connect")
        && matches!(change, Change::Container(_));
    Some(Event { change, connect })
}

impl DockerSource {
    /// Container and network events from a second ago on: Docker replays what happened
    /// since then, so a list made after subscribing misses nothing (a duplicate is harmless).
    /// Events that ask for nothing are left out.
    pub fn events_since_now(
        &self,
    ) -> impl futures::Stream<Item = Result<Event, DockerError>> + Send + 'static {
        self.events_watched(None)
    }

    /// `events_since_now`, with every raw event shown first to early admission's watcher
    /// (see [`super::early`]), which emits what it learns on its own channel.
    pub fn events_with_early(
        &self,
        watch: std::sync::Arc<EarlyWatch>,
        emit: Emit,
    ) -> impl futures::Stream<Item = Result<Event, DockerError>> + Send + 'static {
        self.events_watched(Some((watch, emit)))
    }

    fn events_watched(
        &self,
        early: Option<(std::sync::Arc<EarlyWatch>, Emit)>,
    ) -> impl futures::Stream<Item = Result<Event, DockerError>> + Send + 'static {
        let since = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs().saturating_sub(1))
            .unwrap_or(0);
        let opts = EventsOptions {
            since: Some(since.to_string()),
            filters: Some(HashMap::from([(
                "type".to_string(),
                vec!["container".to_string(), "network".to_string()],
            )])),
            ..Default::default()
        };
        let host = self.host.clone();
        self.count();
        // One per stream: a new subscription (after a break) starts with a full sync.
        let mut not_running = NotRunning::default();
        self.docker().events(Some(opts)).filter_map(move |r| {
            let mapped = match r {
                Ok(ev) => {
                    if let Some((watch, emit)) = &early {
                        watch.on_event(&ev, std::time::Instant::now(), emit);
                    }
                    if not_running.note(&ev) {
                        event_of(&ev).map(Ok)
                    } else {
                        None
                    }
                }
                Err(e) => Some(Err(classify(&host, "events", e))),
            };
            std::future::ready(mapped)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(typ: &str, action: &str) -> EventMessage {
        serde_json::from_str(&format!(
            r#"{{"Type":"{typ}","Action":"{action}",
                "Actor":{{"ID":"net1","Attributes":{{"container":"c1"}}}}}}"#
        ))
        .expect("event json")
    }

    fn container_ev(action: &str, id: &str) -> EventMessage {
        serde_json::from_str(&format!(
            r#"{{"Type":"container","Action":"{action}","Actor":{{"ID":"{id}"}}}}"#
        ))
        .expect("event json")
    }

    #[test]
    fn a_network_event_of_a_container_that_does_not_run_asks_for_nothing() {
        let mut nr = NotRunning::default();
        // Not seen yet: refreshed as before.
        assert!(nr.note(&ev("network", "connect")));
        // `docker run`: create, connect, start, die, disconnect, destroy.
        assert!(nr.note(&container_ev("create", "c1")));
        assert!(
            !nr.note(&ev("network", "connect")),
            "connect before the start"
        );
        assert!(nr.note(&container_ev("start", "c1")));
        assert!(
            nr.note(&ev("network", "connect")),
            "connect of a running container"
        );
        assert!(nr.note(&ev("network", "disconnect")));
        // A signal does not stop it.
        assert!(nr.note(&container_ev("kill", "c1")));
        assert!(nr.note(&ev("network", "disconnect")));
        assert!(nr.note(&container_ev("die", "c1")));
        assert!(
            !nr.note(&ev("network", "disconnect")),
            "disconnect after the die"
        );
        assert!(nr.note(&container_ev("destroy", "c1")));
        assert!(
            nr.note(&ev("network", "connect")),
            "forgotten once destroyed"
        );
        // A restart: die, connect, start.
        assert!(nr.note(&container_ev("die", "c1")));
        assert!(!nr.note(&ev("network", "connect")));
        assert!(nr.note(&container_ev("restart", "c1")));
        assert!(nr.note(&ev("network", "connect")));
        // Podman's network events name the container as the actor: left as they were.
        let podman: EventMessage =
            serde_json::from_str(r#"{"Type":"network","Action":"connect","Actor":{"ID":"c2"}}"#)
                .expect("event json");
        assert!(nr.note(&container_ev("create", "c2")));
        assert!(nr.note(&podman));
    }

    #[test]
    fn only_a_network_connect_asks_for_a_second_look() {
        let got = |t, a| event_of(&ev(t, a)).map(|e| (e.change, e.connect));
        assert_eq!(
            got("network", "connect"),
            Some((Change::Container("c1".into()), true))
        );
        assert_eq!(
            got("network", "disconnect"),
            Some((Change::Container("c1".into()), false))
        );
        assert_eq!(
            got("container", "start"),
            Some((Change::Container("net1".into()), false))
        );
        assert_eq!(got("network", "create"), Some((Change::Networks, false)));
        assert_eq!(got("container", "exec_start"), None);
    }

    #[test]
    fn a_signal_or_an_oom_kill_is_a_second_look_and_only_a_die_is_gone() {
        let c = |a| change_of(&container_ev(a, "c1"));
        for a in ["kill", "oom"] {
            assert_eq!(c(a), Some(Change::Container("c1".into())), "{a}");
        }
        for a in ["die", "stop", "destroy"] {
            assert_eq!(c(a), Some(Change::Gone("c1".into())), "{a}");
        }
    }
}
