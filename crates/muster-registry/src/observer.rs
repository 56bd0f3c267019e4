//! The bridge from applied log entries to wake-ups, lease timers and check
//! reconciliation. The raft node calls it after every apply; it only
//! records and signals, never blocks.

use std::sync::Arc;

use muster_catalog::{ApplyResult, Catalog, Done, ServiceKey};
use muster_raft::ApplyObserver;
use tokio::sync::mpsc;

use crate::hub::Hub;
use crate::leases::LeaseManager;

/// A request to reconcile health checks: one service, with whether the
/// change may have added or changed checks, or `None` for every service.
pub(crate) type Reconcile = Option<(ServiceKey, bool)>;

/// Tells the hub, the lease timers and the check runner what each applied
/// entry changed.
pub(crate) struct Observer {
    pub(crate) hub: Arc<Hub>,
    pub(crate) leases: Arc<LeaseManager>,
    /// Drained by the reconciler task, which merges what queued up.
    pub(crate) reconcile: mpsc::UnboundedSender<Reconcile>,
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
        // An instance says whether it carries checks; a removal only
        // matters where checks run (reconcile_if_needed looks).
        let may_have_checks = match &out.done {
            Done::Instance(i) => !i.checks.is_empty(),
            // A restore replaced instances: their checks start over.
            Done::Restore(_) => true,
            Done::Removed(_)
            | Done::LeaseCreated(_)
            | Done::Preserved(_)
            | Done::NodeRetired(_)
            | Done::Acl => false,
        };
        for key in &out.changed {
            self.hub.notify(key, index);
            let _ = self.reconcile.send(Some((key.clone(), may_have_checks)));
        }
    }

    /// From now on every request is refused (`Registry::member`); woken
    /// watchers and blocking queries look again and end.
    fn retired(&self, index: u64) {
        tracing::error!(
            index,
            "this node was removed from the cluster: it answers no more requests; stop it"
        );
        self.hub.notify_all(index);
    }

    fn restored(&self, catalog: &Catalog) {
        self.hub.notify_all(catalog.applied_index());
        let _ = self.reconcile.send(None);
    }
}
