//! The daemon's side of `[[separate]]`: it keeps the violations up to date from the
//! inventory and policy it already holds, logs each new one once, and exports their count
//! (`netguard_separation_violations`). Per event the cost depends on the violations the
//! changed containers take part in, not on how many containers run.

use super::engine::Engine;
use crate::audit::{Tracker, Violation};
use crate::plan::Plan;
use crate::policy::Policy;

#[derive(Debug, Default)]
pub struct Separation {
    tracker: Tracker,
}

fn log(policy: &Policy, new: &[Violation]) {
    for v in new {
        tracing::warn!(
            a = %v.a_name,
            b = %v.b_name,
            "trust groups that must be kept apart share this host: {}",
            v.describe(policy)
        );
    }
}

impl Separation {
    /// After a full read (start, resync, reload): every container at once. Returns the count.
    pub fn reset(&mut self, policy: &Policy, plan: &Plan) -> usize {
        if policy.separates.is_empty() && self.tracker.count() == 0 {
            return 0;
        }
        let members: Vec<(String, String, Vec<String>)> = plan
            .containers
            .iter()
            .map(|c| (c.id.clone(), c.name.clone(), c.groups.clone()))
            .collect();
        let new = self.tracker.reset(policy, &members);
        log(policy, &new);
        self.tracker.count()
    }

    /// After an event: only the containers it touched. Returns the count.
    pub fn changed<'a>(&mut self, engine: &Engine, ids: impl Iterator<Item = &'a String>) -> usize {
        let policy = engine.policy();
        if policy.separates.is_empty() {
            return 0;
        }
        for id in ids {
            match engine.planned(id) {
                Some(pc) => {
                    let new = self.tracker.update(policy, id, &pc.name, &pc.groups);
                    log(policy, &new);
                }
                None => self.tracker.remove(id),
            }
        }
        self.tracker.count()
    }
}
