//! Lease timers on the leader. **Heartbeats are not writes:** a renewal only
//! moves a deadline in this table; only an expiry goes through the log.
//!
//! [`LeaseTable`] is the decision logic, driven by explicit instants so it is
//! tested without a clock; [`LeaseManager`] wraps it for the server, and
//! [`run_sweeper`] is the task that proposes expiries.
//!
//! Self-preservation: a lease is *silent* when less than half its TTL is
//! left, i.e. its holder has missed renewals it normally sends every third of
//! a TTL. When more than `threshold` of all leases are silent at once, the
//! registry assumes it lost its clients rather than the clients all died:
//! expiry pauses, instances are kept, and it resumes when renewals return.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use metrics::Counter;
use muster_catalog::{Catalog, Command};
use tokio::sync::{Notify, watch};
use tokio::time::Instant;

use crate::cache::lock;

/// What a sweep decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sweep {
    /// Nothing expired.
    Idle,
    /// These leases expired: propose their removal.
    Expire(Vec<u64>),
    /// Too many leases are silent at once: expiry is paused.
    Preserve {
        /// Silent leases.
        silent: usize,
        /// All leases.
        total: usize,
    },
}

/// Lease deadlines, ordered for cheap expiry scans.
///
/// A renewal (the hot path: every client, all the time) only moves the
/// lease's deadline in a hash map. The ordered index files each lease at a
/// deadline that is never later than its real one; a sweep re-files the
/// leases it finds renewed since, so the index is touched about once per TTL
/// per lease instead of on every renewal.
#[derive(Debug)]
pub struct LeaseTable {
    leases: HashMap<u64, Timer>,
    /// Every lease once, at its `filed` deadline.
    by_deadline: BTreeSet<(Instant, u64)>,
    threshold: f64,
    min_leases: usize,
    preserving: bool,
}

/// One lease's timer.
#[derive(Debug, Clone, Copy)]
struct Timer {
    /// When the lease expires unless renewed.
    deadline: Instant,
    /// Where `by_deadline` holds it: at or before `deadline`.
    filed: Instant,
    ttl: Duration,
}

impl LeaseTable {
    /// An empty table with the self-preservation settings.
    pub fn new(threshold: f64, min_leases: usize) -> Self {
        LeaseTable {
            leases: HashMap::new(),
            by_deadline: BTreeSet::new(),
            threshold,
            min_leases,
            preserving: false,
        }
    }

    /// Starts (or restarts) a lease's full TTL from `now`.
    pub fn start(&mut self, id: u64, ttl: Duration, now: Instant) {
        let deadline = now + ttl;
        let timer = Timer {
            deadline,
            filed: deadline,
            ttl,
        };
        if let Some(old) = self.leases.insert(id, timer) {
            self.by_deadline.remove(&(old.filed, id));
        }
        self.by_deadline.insert((deadline, id));
    }

    /// Renews a lease; `None` when the table does not hold it.
    pub fn renew(&mut self, id: u64, now: Instant) -> Option<Duration> {
        let timer = self.leases.get_mut(&id)?;
        timer.deadline = now + timer.ttl;
        if timer.deadline < timer.filed {
            // Only an instant from the past gets here; keep the index a
            // lower bound.
            self.by_deadline.remove(&(timer.filed, id));
            self.by_deadline.insert((timer.deadline, id));
            timer.filed = timer.deadline;
        }
        Some(timer.ttl)
    }

    /// Forgets a lease.
    pub fn remove(&mut self, id: u64) {
        if let Some(timer) = self.leases.remove(&id) {
            self.by_deadline.remove(&(timer.filed, id));
        }
    }

    /// Forgets every lease.
    pub fn clear(&mut self) {
        self.leases.clear();
        self.by_deadline.clear();
        self.preserving = false;
    }

    /// Number of leases held.
    pub fn len(&self) -> usize {
        self.leases.len()
    }

    /// Whether the table is empty.
    pub fn is_empty(&self) -> bool {
        self.leases.is_empty()
    }

    /// Whether expiry is paused.
    pub fn preserving(&self) -> bool {
        self.preserving
    }

    /// The earliest deadline, or an earlier instant when leases were
    /// renewed since the last sweep (a sweep then finds nothing to expire).
    pub fn next_deadline(&self) -> Option<Instant> {
        self.by_deadline.first().map(|(d, _)| *d)
    }

    /// Decides what to do at `now`. Expired leases are taken out of the
    /// table (the caller proposes their expiry, and puts them back with
    /// [`LeaseTable::start`] if that fails).
    pub fn sweep(&mut self, now: Instant) -> Sweep {
        let due: Vec<(Instant, u64)> = self
            .by_deadline
            .iter()
            .take_while(|(filed, _)| *filed <= now)
            .copied()
            .collect();
        let mut expired = Vec::new();
        for (filed, id) in due {
            let Some(timer) = self.leases.get_mut(&id) else {
                continue;
            };
            if timer.deadline <= now {
                expired.push(id);
            } else {
                // Renewed since it was filed: file it at its real deadline.
                self.by_deadline.remove(&(filed, id));
                self.by_deadline.insert((timer.deadline, id));
                timer.filed = timer.deadline;
            }
        }
        let total = self.leases.len();
        let silent = if total >= self.min_leases && self.threshold < 1.0 {
            self.leases
                .values()
                .filter(|t| t.deadline.saturating_duration_since(now) < t.ttl / 2)
                .count()
        } else {
            0
        };
        let over = total > 0 && silent as f64 / total as f64 > self.threshold;
        if over {
            self.preserving = true;
            return Sweep::Preserve { silent, total };
        }
        self.preserving = false;
        if expired.is_empty() {
            return Sweep::Idle;
        }
        for id in &expired {
            self.remove(*id);
        }
        Sweep::Expire(expired)
    }
}

/// The server's lease timers: a [`LeaseTable`] active only on the leader.
pub struct LeaseManager {
    table: Mutex<LeaseTable>,
    leader: AtomicBool,
    wake: Notify,
    preserving: watch::Sender<bool>,
    /// `muster_lease_renewals_total`, looked up once rather than per renewal.
    renewals: Counter,
}

/// Why a renewal failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RenewError {
    /// No such lease (expired, revoked, or never created).
    NotFound,
    /// This node is not the leader and holds no lease timers.
    NotLeader,
}

impl LeaseManager {
    /// A manager with the given self-preservation settings. Its metrics go
    /// to the recorder installed when it is made (`serve` installs it first).
    pub fn new(threshold: f64, min_leases: usize) -> Self {
        LeaseManager {
            table: Mutex::new(LeaseTable::new(threshold, min_leases)),
            leader: AtomicBool::new(false),
            wake: Notify::new(),
            preserving: watch::channel(false).0,
            renewals: metrics::counter!("muster_lease_renewals_total"),
        }
    }

    fn table(&self) -> std::sync::MutexGuard<'_, LeaseTable> {
        lock(&self.table)
    }

    /// Takes over lease timers as leader: every lease gets a fresh full TTL,
    /// so nothing expires because the registry itself was down.
    pub fn become_leader(&self, catalog: &Catalog) {
        let now = Instant::now();
        let mut t = self.table();
        t.clear();
        for l in catalog.leases() {
            t.start(l.id, Duration::from_millis(l.ttl_ms), now);
        }
        self.leader.store(true, Ordering::Release);
        drop(t);
        self.wake.notify_one();
    }

    /// Drops lease timers when leadership is lost.
    pub fn step_down(&self) {
        self.leader.store(false, Ordering::Release);
        self.table().clear();
        self.wake.notify_one();
    }

    fn is_leader(&self) -> bool {
        self.leader.load(Ordering::Acquire)
    }

    /// A lease was created by the log.
    pub fn created(&self, id: u64, ttl_ms: u64) {
        if self.is_leader() {
            self.table()
                .start(id, Duration::from_millis(ttl_ms), Instant::now());
            self.wake.notify_one();
        }
    }

    /// A lease was removed by the log.
    pub fn removed(&self, id: u64) {
        self.table().remove(id);
    }

    /// Renews a lease in memory.
    pub fn renew(&self, id: u64) -> Result<Duration, RenewError> {
        if !self.is_leader() {
            return Err(RenewError::NotLeader);
        }
        let ttl = self
            .table()
            .renew(id, Instant::now())
            .ok_or(RenewError::NotFound)?;
        self.renewals.increment(1);
        Ok(ttl)
    }

    /// Whether expiry is paused by self-preservation.
    pub fn preserving(&self) -> bool {
        *self.preserving.borrow()
    }

    /// Follows the self-preservation state.
    pub fn preserving_watch(&self) -> watch::Receiver<bool> {
        self.preserving.subscribe()
    }
}

/// Proposes expiries until `shutdown` flips. `propose` appends a command to
/// the log and resolves once it is applied.
pub async fn run_sweeper<F, Fut>(
    mgr: Arc<LeaseManager>,
    interval: Duration,
    mut shutdown: watch::Receiver<bool>,
    propose: F,
) where
    F: Fn(Command) -> Fut,
    Fut: std::future::Future<Output = Result<u64, String>>,
{
    loop {
        let next = {
            let t = mgr.table();
            if t.preserving() {
                Some(Instant::now() + interval)
            } else {
                // Sweep at most every `interval`, so a burst of deadlines is
                // judged together (self-preservation needs the whole picture).
                t.next_deadline()
                    .map(|d| d.max(Instant::now() + interval / 4))
            }
        };
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = mgr.wake.notified() => continue,
            _ = async {
                match next {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            } => {}
        }
        if *shutdown.borrow() {
            return;
        }
        if !mgr.is_leader() {
            continue;
        }
        let decision = mgr.table().sweep(Instant::now());
        let was = mgr.preserving();
        match decision {
            Sweep::Idle => {}
            Sweep::Preserve { silent, total } => {
                if !was {
                    tracing::error!(
                        silent,
                        total,
                        "SELF-PRESERVATION ON: {silent} of {total} leases stopped renewing at once; \
                         the registry is more likely cut off from its clients than they all died. \
                         Lease expiry is paused and instances are kept until renewals return."
                    );
                }
            }
            Sweep::Expire(ids) => {
                let ids_for_retry = ids.clone();
                let n = ids.len();
                match propose(Command::ExpireLeases { ids }).await {
                    Ok(index) => {
                        tracing::info!(leases = n, index, "leases expired");
                        metrics::counter!("muster_lease_expiries_total").increment(n as u64);
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, leases = n, "could not propose lease expiry; retrying");
                        let mut t = mgr.table();
                        let now = Instant::now();
                        for id in ids_for_retry {
                            // Retry soon; a failed proposal must not grant a new TTL.
                            t.start(id, interval, now);
                        }
                    }
                }
            }
        }
        let now_preserving = mgr.table().preserving();
        if was && !now_preserving {
            tracing::warn!("self-preservation off: renewals are back, lease expiry resumes");
        }
        if was != now_preserving {
            mgr.preserving.send_replace(now_preserving);
            metrics::gauge!("muster_self_preservation").set(if now_preserving { 1.0 } else { 0.0 });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn renewal_moves_the_deadline() {
        let t0 = Instant::now();
        let mut t = LeaseTable::new(0.85, 10);
        t.start(1, secs(10), t0);
        assert_eq!(t.sweep(t0 + secs(9)), Sweep::Idle);
        assert_eq!(t.renew(1, t0 + secs(9)), Some(secs(10)));
        assert_eq!(t.sweep(t0 + secs(15)), Sweep::Idle);
        assert_eq!(t.sweep(t0 + secs(19)), Sweep::Expire(vec![1]));
        assert_eq!(t.renew(1, t0 + secs(19)), None, "an expired lease is gone");
    }

    #[test]
    fn self_preservation_turns_on_and_off() {
        let t0 = Instant::now();
        let mut t = LeaseTable::new(0.5, 4);
        for id in 0..10 {
            t.start(id, secs(10), t0);
        }
        // Everyone falls silent at once: expiry pauses and nothing is dropped.
        let at = t0 + secs(11);
        assert_eq!(
            t.sweep(at),
            Sweep::Preserve {
                silent: 10,
                total: 10
            }
        );
        assert!(t.preserving());
        assert_eq!(t.len(), 10);
        // Renewals come back for all but two: expiry resumes, only those go.
        for id in 0..8 {
            t.renew(id, at);
        }
        assert_eq!(t.sweep(at), Sweep::Expire(vec![8, 9]));
        assert!(!t.preserving());
        assert_eq!(t.len(), 8);
    }

    #[test]
    fn few_leases_never_preserve() {
        let t0 = Instant::now();
        let mut t = LeaseTable::new(0.5, 4);
        for id in 0..3 {
            t.start(id, secs(1), t0);
        }
        assert_eq!(t.sweep(t0 + secs(2)), Sweep::Expire(vec![0, 1, 2]));
    }
}
