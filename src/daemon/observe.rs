//! The daemon's hooks feed the metrics registry: `controller.observer =
//! Box::new(metrics.clone())`. Here, on the daemon's side, so that the registry knows
//! nothing of the controller.

use super::controller::Observer;
use crate::metrics::Metrics;
use std::sync::Arc;
use std::time::Duration;

impl Observer for Arc<Metrics> {
    fn reconciled(&self, took: Duration, ok: bool) {
        Metrics::reconciled(self, took);
        if !ok {
            Metrics::error(self, "reconcile");
        }
    }
    fn enforced(&self, event_to_rules: Duration) {
        self.event_enforced(event_to_rules);
    }
    fn containers(&self, n: usize) {
        self.set_managed_containers(n);
    }
    fn separation_violations(&self, n: usize) {
        self.set_separation_violations(n);
    }
    fn error(&self, kind: &'static str) {
        Metrics::error(self, kind);
    }
}
