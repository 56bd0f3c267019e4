//! Shared server state and the bridge from applied log entries to wake-ups
//! and lease timers.

use std::sync::Arc;

use muster_catalog::{ApplyResult, Catalog};
use muster_raft::{ApplyObserver, Node};
use tokio::sync::watch;

use crate::cache::ReadCache;
use crate::checks::CheckRunner;
use crate::config::Config;
use crate::hub::Hub;
use crate::leases::LeaseManager;

/// What every handler can reach.
pub struct AppState {
    /// The Raft node and its catalog.
    pub node: Node,
    /// Wake-ups per service.
    pub hub: Arc<Hub>,
    /// Lease timers.
    pub leases: Arc<LeaseManager>,
    /// Health-check runner.
    pub checks: Arc<CheckRunner>,
    /// Pre-serialised read answers.
    pub cache: ReadCache,
    /// Watch events encoded once for all watchers at the same place.
    pub frames: crate::cache::WatchFrames,
    /// Flips to `true` when the server shuts down, ending long polls and watches.
    pub shutdown: watch::Receiver<bool>,
    /// Ticks every [`crate::api::watch::KEEPALIVE_INTERVAL`]: each watch then
    /// sends a comment (one timer for all watches, not one each).
    pub keepalive: watch::Receiver<u64>,
    /// Renders `/metrics`.
    pub metrics: metrics_exporter_prometheus::PrometheusHandle,
    /// The configuration the server runs with.
    pub config: Config,
}

/// Tells the hub and the lease timers what each applied entry changed.
pub struct Observer {
    /// Wake-ups.
    pub hub: Arc<Hub>,
    /// Lease timers.
    pub leases: Arc<LeaseManager>,
    /// Services whose checks may need reconciling, with whether the change
    /// may have added or changed checks (drained by the check runner).
    pub reconcile: tokio::sync::mpsc::UnboundedSender<Option<(muster_catalog::ServiceKey, bool)>>,
}

impl ApplyObserver for Observer {
    fn applied(&self, index: u64, result: &ApplyResult) {
        let Ok(out) = result else { return };
        for (id, ttl_ms) in &out.leases_created {
            self.leases.created(*id, *ttl_ms);
        }
        for id in &out.leases_removed {
            self.leases.removed(*id);
        }
        // A registration says whether it carries checks; a removal only
        // matters where checks run; anything else (check and maintenance
        // commands) may concern checks.
        let may_have_checks = out
            .instance
            .as_ref()
            .map_or(out.removed == 0, |i| !i.checks.is_empty());
        for key in &out.changed {
            self.hub.notify(key, index);
            let _ = self.reconcile.send(Some((key.clone(), may_have_checks)));
        }
    }

    fn restored(&self, catalog: &Catalog) {
        self.hub.notify_all(catalog.applied_index());
        // `None`: reconcile every service.
        let _ = self.reconcile.send(None);
    }
}
