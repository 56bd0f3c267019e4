//! Watches: a typed stream of what happens to one service, as seen through
//! a filter. A snapshot first, then upserts and deletes, each with the log
//! index it happened at. A watch resumed from an index gets what it missed,
//! or a fresh snapshot when the service's history no longer reaches back
//! that far (or the index is from the future, e.g. after data loss), or, when
//! it missed nothing, [`WatchEvent::Current`] at once: a confirmation that
//! the watcher is connected and up to date.
//!
//! Several events of one service can share an index (one log entry carries
//! a batch of commands; one command can remove several instances). A
//! watcher that lost the stream between two of them cannot tell which it
//! got, so a resume from such an index sends all events of that index again
//! (at least once; upserts and deletes are idempotent). A resume from an
//! index with a single event sends exactly what came after it. Within one
//! stream every event is sent once: an entry is applied whole under the
//! catalog lock.

use std::sync::Arc;

use muster_catalog::Instance;
use muster_catalog::{Change, Query, ServiceKey};
use muster_types::CompactString;
use tokio::sync::watch;

use crate::cache::SharedBatch;
use crate::{Caller, Registry};

/// One event of a watch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchEvent {
    /// Every matching instance: sent first, and after a resume the history
    /// cannot serve.
    Snapshot {
        /// The service index it reflects.
        index: u64,
        /// The instances, ordered by id.
        instances: Vec<Arc<Instance>>,
    },
    /// An instance was registered or changed and matches the filter.
    Upsert {
        /// Index of the change.
        index: u64,
        /// The instance as it now is.
        instance: Arc<Instance>,
    },
    /// An instance was removed, or no longer matches the filter.
    Delete {
        /// Index of the change.
        index: u64,
        /// Its id.
        id: CompactString,
    },
    /// A resumed watch missed nothing: what the watcher holds is current at
    /// `index`.
    Current {
        /// The service index the watcher is up to date with.
        index: u64,
    },
}

impl WatchEvent {
    /// The index the event carries.
    pub fn index(&self) -> u64 {
        match self {
            WatchEvent::Snapshot { index, .. }
            | WatchEvent::Upsert { index, .. }
            | WatchEvent::Delete { index, .. }
            | WatchEvent::Current { index } => *index,
        }
    }
}

/// Events that bring a watcher up to date, in order.
#[derive(Debug, Clone)]
pub struct WatchBatch {
    /// The events.
    pub events: Arc<[WatchEvent]>,
    /// Whether other watchers at the same place got this very batch (the
    /// same `Arc`): a front-end may then encode it once and share the bytes,
    /// keyed by the batch's address.
    pub shared: bool,
}

/// Where a watch stands.
#[derive(Debug, Clone, Copy)]
enum Since {
    /// Nothing sent yet: a snapshot.
    Start,
    /// Resumed: what the watcher may have missed after this index.
    Resume(u64),
    /// Everything up to and including this index was handed out.
    Sent(u64),
}

/// One watcher's place in the stream of a service. Made by
/// [`Registry::watch`]; [`Watch::next`] hands out the next batch.
pub struct Watch {
    registry: Registry,
    /// Who watches: checked again before each change is handed out.
    caller: Caller,
    /// Whether the caller may read the service. A watch of a service it
    /// may not read sees an empty service that never changes.
    readable: bool,
    key: ServiceKey,
    query: Query,
    /// The query's canonical form: watchers with equal filters, whatever
    /// the order of their parameters, share batches.
    filter: String,
    since: Since,
    changed: watch::Receiver<u64>,
    shutdown: watch::Receiver<bool>,
    started: bool,
}

impl Watch {
    pub(crate) fn new(
        registry: Registry,
        caller: Caller,
        readable: bool,
        key: ServiceKey,
        query: Query,
        resume: Option<u64>,
    ) -> Self {
        // Subscribe before the first read, so no change slips in between.
        let changed = registry.inner.hub.subscribe_service(key.clone());
        let shutdown = registry.inner.stop_rx.clone();
        Watch {
            filter: query.cache_key(),
            since: resume.map_or(Since::Start, Since::Resume),
            registry,
            caller,
            readable,
            key,
            query,
            changed,
            shutdown,
            started: false,
        }
    }

    /// The service watched.
    pub fn key(&self) -> &ServiceKey {
        &self.key
    }

    /// The next events: at once for the first call (snapshot, missed
    /// changes, or [`WatchEvent::Current`]), then as soon as the service
    /// changes. `None` once the registry shuts down.
    ///
    /// Cancel-safe: dropping the future before it completes loses nothing.
    pub async fn next(&mut self) -> Option<WatchBatch> {
        if !self.readable {
            return self.next_blind().await;
        }
        loop {
            if self.started {
                if *self.shutdown.borrow() {
                    return None;
                }
                tokio::select! {
                    biased;
                    r = self.changed.changed() => if r.is_err() { return None },
                    _ = self.shutdown.changed() => return None,
                }
                // A revoked token, or a right taken away, ends the watch.
                if !matches!(self.registry.readable(&self.caller, &self.key), Ok(true)) {
                    return None;
                }
            }
            self.started = true;
            let (last, batch) = self.batch();
            self.since = Since::Sent(last);
            if !batch.events.is_empty() {
                return Some(batch);
            }
        }
    }

    /// [`Watch::next`] for a caller that may not read the service: an empty
    /// snapshot, then nothing until shutdown, as for an unknown service.
    async fn next_blind(&mut self) -> Option<WatchBatch> {
        if !self.started {
            self.started = true;
            let event = match self.since {
                Since::Resume(index) => WatchEvent::Current { index },
                _ => WatchEvent::Snapshot {
                    index: 0,
                    instances: Vec::new(),
                },
            };
            return Some(WatchBatch {
                events: vec![event].into(),
                shared: false,
            });
        }
        loop {
            if *self.shutdown.borrow() || self.shutdown.changed().await.is_err() {
                return None;
            }
        }
    }

    /// The events that bring this watcher from where it stands to now.
    fn batch(&self) -> (u64, WatchBatch) {
        match self.since {
            // Where many watchers stand at once: make once, share.
            since @ (Since::Start | Since::Sent(_)) => {
                let (from, snapshot) = match since {
                    Since::Sent(i) => (i, false),
                    _ => (0, true),
                };
                let current = self.registry.read(|c| c.service_index(&self.key));
                let shared = self.registry.inner.batches.get_or_make(
                    &self.key,
                    &self.filter,
                    from,
                    snapshot,
                    current,
                    || {
                        let (last, events) = self.events(since);
                        SharedBatch {
                            from,
                            snapshot,
                            last,
                            events: events.into(),
                        }
                    },
                );
                (
                    shared.last,
                    WatchBatch {
                        events: shared.events,
                        shared: true,
                    },
                )
            }
            Since::Resume(_) => {
                let (last, events) = self.events(self.since);
                (
                    last,
                    WatchBatch {
                        events: events.into(),
                        shared: false,
                    },
                )
            }
        }
    }

    /// What to hand out next: a snapshot, the changes after `since`, or
    /// (resumed, nothing missed) a confirmation.
    fn events(&self, since: Since) -> (u64, Vec<WatchEvent>) {
        let (key, query) = (&self.key, &self.query);
        self.registry.read(|c| {
            let deltas = match since {
                Since::Start => None,
                // An index from the future (e.g. after data loss) gets a snapshot.
                Since::Resume(id) if id > c.applied_index() => None,
                Since::Resume(id) => c.changes_to_resume(key, id).map(|ch| (id, ch)),
                Since::Sent(index) => c.changes_since(key, index).map(|ch| (index, ch)),
            };
            match deltas {
                Some((from, changes)) if changes.is_empty() => match since {
                    Since::Resume(_) => {
                        let index = c.service_index(key).max(from);
                        (index, vec![WatchEvent::Current { index }])
                    }
                    _ => (from, Vec::new()),
                },
                Some((from, changes)) => {
                    let last = changes.last().map_or(from, |c| c.index);
                    let events = changes
                        .into_iter()
                        .map(|c| match c.change {
                            Change::Upsert(i) if query.matches(&i) => WatchEvent::Upsert {
                                index: c.index,
                                instance: i,
                            },
                            // No longer matching the filter is, for this
                            // watcher, a removal.
                            Change::Upsert(i) => WatchEvent::Delete {
                                index: c.index,
                                id: i.id.clone(),
                            },
                            Change::Delete(id) => WatchEvent::Delete { index: c.index, id },
                        })
                        .collect();
                    (last, events)
                }
                None => {
                    let (index, instances) = c.query(key, query);
                    (index, vec![WatchEvent::Snapshot { index, instances }])
                }
            }
        })
    }
}
