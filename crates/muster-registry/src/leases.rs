//! Lease timers on the leader. **Heartbeats are not writes:** a renewal only
//! moves a deadline in this table; only an expiry goes through the log.
//!
//! [`LeaseTable`] is the decision logic, driven by explicit instants so it is
//! tested without a clock; [`LeaseManager`] wraps it for the server, and
//! [`run_sweeper`] is the task that proposes expiries.
//!
//! Self-preservation is for a registry cut off from its clients, not for a
//! batch of clients that died together. A lease is *silent* when less than
//! half its TTL is left, i.e. its holder has missed renewals it normally
//! sends every third of a TTL. Expiry pauses only when both hold:
//!
//! - more than `threshold` of the *established* leases are silent at once
//!   (established: renewed at least once, or held before this node took
//!   over as leader; a lease created here and never renewed shows no client
//!   that could have been lost, so it expires as usual), and
//! - no renewal at all arrived for half the shortest TTL of the silent
//!   ones: the registry hears nobody. While some clients still renew, the
//!   silent ones really stopped, and they expire.
//!
//! Instances are then kept, and expiry resumes when renewals return.
//!
//! Kept instances say so: a lease past its deadline while expiry is paused
//! is *held*, and after `bound` *lapsed* (its instances turn critical, so
//! default discovery stops returning them, but they are still not removed).
//! The leader writes both through the log ([`Command::PreserveLeases`]), so
//! every node and every watch sees the marking, and releases the mark when
//! the lease is renewed again.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use metrics::Counter;
use muster_catalog::{Catalog, Command, Preservation};
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
    /// When the last renewal of any lease arrived.
    last_renewal: Option<Instant>,
    /// How long a lease is held before it lapses.
    bound: Duration,
    /// Leases the catalog marks as preserved (as far as this leader
    /// knows: what it took over and what its proposals applied).
    held: HashMap<u64, Held>,
}

/// A lease kept past its deadline.
#[derive(Debug, Clone, Copy)]
struct Held {
    since: Instant,
    state: Preservation,
}

/// Changes of preservation marks to write, each a list of lease ids.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Marks {
    /// Past their deadline while expiry is paused: mark them held.
    pub hold: Vec<u64>,
    /// Held for longer than the bound: mark them lapsed.
    pub lapse: Vec<u64>,
    /// Marked, but renewed since: clear the mark.
    pub release: Vec<u64>,
}

impl Marks {
    /// Nothing to write.
    pub fn is_empty(&self) -> bool {
        self.hold.is_empty() && self.lapse.is_empty() && self.release.is_empty()
    }

    /// One command per non-empty list.
    pub fn commands(&self) -> Vec<Command> {
        [
            (&self.hold, Preservation::Held),
            (&self.lapse, Preservation::Lapsed),
            (&self.release, Preservation::None),
        ]
        .into_iter()
        .filter(|(ids, _)| !ids.is_empty())
        .map(|(ids, state)| Command::PreserveLeases {
            ids: ids.clone(),
            state,
        })
        .collect()
    }
}

/// One lease's timer.
#[derive(Debug, Clone, Copy)]
struct Timer {
    /// When the lease expires unless renewed.
    deadline: Instant,
    /// Where `by_deadline` holds it: at or before `deadline`.
    filed: Instant,
    ttl: Duration,
    /// Renewed at least once, or held before this node took over: the
    /// lease has (had) a live client.
    established: bool,
}

impl LeaseTable {
    /// An empty table with the self-preservation settings.
    pub fn new(threshold: f64, min_leases: usize, bound: Duration) -> Self {
        LeaseTable {
            leases: HashMap::new(),
            by_deadline: BTreeSet::new(),
            threshold,
            min_leases,
            preserving: false,
            last_renewal: None,
            bound,
            held: HashMap::new(),
        }
    }

    /// Starts a new lease's full TTL from `now`.
    pub fn start(&mut self, id: u64, ttl: Duration, now: Instant) {
        self.insert(id, ttl, now, false);
    }

    /// Gives a lease that existed before this node took over a fresh full
    /// TTL from `now`; it counts as established.
    pub fn take_over(&mut self, id: u64, ttl: Duration, now: Instant) {
        self.insert(id, ttl, now, true);
    }

    fn insert(&mut self, id: u64, ttl: Duration, now: Instant, established: bool) {
        let deadline = now + ttl;
        let timer = Timer {
            deadline,
            filed: deadline,
            ttl,
            established,
        };
        if let Some(old) = self.leases.insert(id, timer) {
            self.by_deadline.remove(&(old.filed, id));
        }
        self.by_deadline.insert((deadline, id));
    }

    /// Renews a lease at its client's request; `None` when the table does
    /// not hold it.
    pub fn renew(&mut self, id: u64, now: Instant) -> Option<Duration> {
        let ttl = self.refresh(id, now)?;
        if let Some(timer) = self.leases.get_mut(&id) {
            timer.established = true;
        }
        self.last_renewal = Some(self.last_renewal.map_or(now, |l| l.max(now)));
        Some(ttl)
    }

    /// Gives a lease a full TTL from `now` without counting it as a
    /// renewal (a registration restarts its lease: that says nothing yet
    /// about a client that keeps renewing).
    pub fn refresh(&mut self, id: u64, now: Instant) -> Option<Duration> {
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
        self.held.remove(&id);
    }

    /// Forgets every lease.
    pub fn clear(&mut self) {
        self.leases.clear();
        self.by_deadline.clear();
        self.held.clear();
        self.preserving = false;
        self.last_renewal = None;
    }

    /// Records that the catalog marks lease `id` as `state` (taken over, or
    /// a proposal applied) from `now`.
    pub fn marked(&mut self, id: u64, state: Preservation, now: Instant) {
        if !self.leases.contains_key(&id) || !state.is_preserved() {
            self.held.remove(&id);
            return;
        }
        let since = self.held.get(&id).map_or(now, |h| h.since);
        self.held.insert(id, Held { since, state });
    }

    /// The marks to change at `now`, after a [`LeaseTable::sweep`]: hold
    /// the leases past their deadline while expiry is paused, lapse those
    /// held longer than the bound, release those renewed since.
    pub fn marks(&self, now: Instant) -> Marks {
        let mut m = Marks::default();
        for (id, h) in &self.held {
            let Some(timer) = self.leases.get(id) else {
                continue;
            };
            if timer.deadline > now {
                m.release.push(*id);
            } else if h.state == Preservation::Held
                && now.saturating_duration_since(h.since) >= self.bound
            {
                m.lapse.push(*id);
            }
        }
        if self.preserving {
            // Every lease past its deadline is filed at or before it.
            for (_, id) in self.by_deadline.iter().take_while(|(f, _)| *f <= now) {
                let overdue = self.leases.get(id).is_some_and(|t| t.deadline <= now);
                if overdue && !self.held.contains_key(id) {
                    m.hold.push(*id);
                }
            }
        }
        for ids in [&mut m.hold, &mut m.lapse, &mut m.release] {
            ids.sort_unstable();
        }
        m
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
        let (mut total, mut silent, mut shortest) = (0usize, 0usize, None::<Duration>);
        if self.threshold < 1.0 {
            for t in self.leases.values().filter(|t| t.established) {
                total += 1;
                if t.deadline.saturating_duration_since(now) < t.ttl / 2 {
                    silent += 1;
                    shortest = Some(shortest.map_or(t.ttl, |s| s.min(t.ttl)));
                }
            }
        }
        // Nobody heard for half the shortest silent TTL: the registry, not
        // its clients, looks cut off.
        let unheard = shortest.is_some_and(|s| {
            self.last_renewal
                .is_none_or(|l| now.saturating_duration_since(l) >= s / 2)
        });
        let over = total >= self.min_leases
            && total > 0
            && unheard
            && silent as f64 / total as f64 > self.threshold;
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
    pub fn new(threshold: f64, min_leases: usize, bound: Duration) -> Self {
        LeaseManager {
            table: Mutex::new(LeaseTable::new(threshold, min_leases, bound)),
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
            t.take_over(l.id, Duration::from_millis(l.ttl_ms), now);
            // A fresh TTL: the next sweep releases what was preserved.
            t.marked(l.id, l.preserved, now);
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

    /// Restarts a lease's TTL after a registration (not a renewal).
    pub fn refresh(&self, id: u64) {
        if self.is_leader() {
            self.table().refresh(id, Instant::now());
        }
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
            if t.preserving() || !t.held.is_empty() {
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
        let marks = mgr.table().marks(Instant::now());
        if !marks.is_empty() {
            mark(&mgr, &marks, &propose).await;
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

/// Writes the preservation marks; what failed is tried again next sweep.
async fn mark<F, Fut>(mgr: &LeaseManager, marks: &Marks, propose: &F)
where
    F: Fn(Command) -> Fut,
    Fut: std::future::Future<Output = Result<u64, String>>,
{
    for cmd in marks.commands() {
        let Command::PreserveLeases { ids, state } = &cmd else {
            unreachable!("Marks::commands makes only PreserveLeases");
        };
        let (ids, state) = (ids.clone(), *state);
        match propose(cmd).await {
            Ok(index) => {
                let level = match state {
                    Preservation::None => "released",
                    Preservation::Held => "held",
                    Preservation::Lapsed => "lapsed",
                };
                if state == Preservation::Lapsed {
                    tracing::error!(
                        leases = ids.len(),
                        index,
                        "self-preservation held these leases past its bound: their instances \
                         are now critical (kept, but no longer returned as passing)"
                    );
                } else {
                    tracing::warn!(
                        leases = ids.len(),
                        index,
                        "self-preservation: leases {level}"
                    );
                }
                let now = Instant::now();
                let mut t = mgr.table();
                for id in ids {
                    t.marked(id, state, now);
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, leases = ids.len(), "could not mark preserved leases; retrying");
            }
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
        let mut t = LeaseTable::new(0.85, 10, secs(60));
        t.start(1, secs(10), t0);
        assert_eq!(t.sweep(t0 + secs(9)), Sweep::Idle);
        assert_eq!(t.renew(1, t0 + secs(9)), Some(secs(10)));
        assert_eq!(t.sweep(t0 + secs(15)), Sweep::Idle);
        assert_eq!(t.sweep(t0 + secs(19)), Sweep::Expire(vec![1]));
        assert_eq!(t.renew(1, t0 + secs(19)), None, "an expired lease is gone");
    }

    /// Marks as the sweeper would write them: every proposal applies.
    fn apply(t: &mut LeaseTable, m: &Marks, now: Instant) {
        for (ids, state) in [
            (&m.hold, Preservation::Held),
            (&m.lapse, Preservation::Lapsed),
            (&m.release, Preservation::None),
        ] {
            for id in ids {
                t.marked(*id, state, now);
            }
        }
    }

    #[test]
    fn preserved_leases_are_held_then_lapse_and_are_released_when_renewed() {
        let t0 = Instant::now();
        let mut t = LeaseTable::new(0.5, 4, secs(60));
        for id in 0..10 {
            t.take_over(id, secs(10), t0);
        }
        // Silent, but none past its deadline yet: nothing to mark.
        let at = t0 + secs(6);
        assert!(matches!(t.sweep(at), Sweep::Preserve { .. }));
        assert!(t.marks(at).is_empty());
        // Past their deadlines while expiry is paused: held, once.
        let at = t0 + secs(11);
        assert!(matches!(t.sweep(at), Sweep::Preserve { .. }));
        let m = t.marks(at);
        assert_eq!(m.hold, (0..10).collect::<Vec<_>>());
        apply(&mut t, &m, at);
        assert!(t.marks(at + secs(1)).is_empty(), "held is written once");
        // Held for the bound: lapsed, once.
        let later = at + secs(60);
        assert!(matches!(t.sweep(later), Sweep::Preserve { .. }));
        let m = t.marks(later);
        assert_eq!((m.hold.len(), m.lapse.len()), (0, 10));
        apply(&mut t, &m, later);
        assert!(t.marks(later + secs(1)).is_empty());
        // Renewals return for all but two: the two expire (their marks go
        // with them), the renewed ones are released.
        for id in 0..8 {
            t.renew(id, later);
        }
        assert_eq!(t.sweep(later), Sweep::Expire(vec![8, 9]));
        let m = t.marks(later);
        assert_eq!(
            m,
            Marks {
                release: (0..8).collect(),
                ..Marks::default()
            }
        );
        assert_eq!(
            m.commands(),
            vec![Command::PreserveLeases {
                ids: (0..8).collect(),
                state: Preservation::None
            }]
        );
        apply(&mut t, &m, later);
        assert!(t.marks(later).is_empty());
    }

    #[test]
    fn a_new_leader_releases_what_it_took_over_as_preserved() {
        let t0 = Instant::now();
        let mut t = LeaseTable::new(0.5, 4, secs(60));
        t.take_over(1, secs(10), t0);
        t.marked(1, Preservation::Lapsed, t0);
        t.marked(2, Preservation::Held, t0); // not a lease of the table
        assert_eq!(t.sweep(t0), Sweep::Idle);
        assert_eq!(
            t.marks(t0),
            Marks {
                release: vec![1],
                ..Marks::default()
            }
        );
    }

    #[test]
    fn self_preservation_turns_on_and_off() {
        let t0 = Instant::now();
        let mut t = LeaseTable::new(0.5, 4, secs(60));
        for id in 0..10 {
            t.take_over(id, secs(10), t0);
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
        let mut t = LeaseTable::new(0.5, 4, secs(60));
        for id in 0..3 {
            t.start(id, secs(1), t0);
        }
        assert_eq!(t.sweep(t0 + secs(2)), Sweep::Expire(vec![0, 1, 2]));
    }

    #[test]
    fn leases_never_renewed_expire_however_many() {
        // The probe's case: 20 leases with a 2 s TTL, created and never
        // renewed, were kept for ever as a "silent majority".
        let t0 = Instant::now();
        let mut t = LeaseTable::new(0.85, 10, secs(60));
        for id in 0..20 {
            t.start(id, secs(2), t0);
        }
        assert_eq!(t.sweep(t0 + secs(3)), Sweep::Expire((0..20).collect()));
        assert!(!t.preserving());
    }

    #[test]
    fn a_batch_of_clients_dying_while_others_renew_expires() {
        let t0 = Instant::now();
        let mut t = LeaseTable::new(0.5, 4, secs(60));
        for id in 0..10 {
            t.start(id, secs(10), t0);
            t.renew(id, t0 + secs(1));
        }
        // Eight die together; two keep renewing every few seconds.
        for s in [4, 7, 10] {
            t.renew(8, t0 + secs(s));
            t.renew(9, t0 + secs(s));
            assert_eq!(t.sweep(t0 + secs(s)), Sweep::Idle);
        }
        assert_eq!(t.sweep(t0 + secs(12)), Sweep::Expire((0..8).collect()));
        assert!(!t.preserving());
    }

    #[test]
    fn renewals_stopping_everywhere_preserve_until_they_return() {
        let t0 = Instant::now();
        let mut t = LeaseTable::new(0.5, 4, secs(60));
        for id in 0..10 {
            t.start(id, secs(10), t0);
            t.renew(id, t0 + secs(1));
        }
        // Nobody renews any more: the registry is cut off.
        assert_eq!(
            t.sweep(t0 + secs(12)),
            Sweep::Preserve {
                silent: 10,
                total: 10
            }
        );
        assert_eq!(t.len(), 10);
        // One renewal arrives: the registry hears its clients again, and
        // those that stay silent now expire.
        t.renew(3, t0 + secs(13));
        let mut gone = (0..10).filter(|i| *i != 3).collect::<Vec<_>>();
        gone.sort();
        assert_eq!(t.sweep(t0 + secs(13)), Sweep::Expire(gone));
        assert!(!t.preserving());
    }
}
