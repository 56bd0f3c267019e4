//! Typed caches: answers computed once per service index and shared by
//! every caller that asks the same thing at the same place. Front-ends keep
//! their own caches of encoded bytes on top (the HTTP API keys its bytes by
//! the same canonical query, or by the shared batch it encoded).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use muster_catalog::Instance;
use muster_catalog::ServiceKey;

use crate::WatchEvent;

/// Most entries a [`QueryMap`] keeps before it starts over.
const MAX_ENTRIES: usize = 16_384;

/// A fast, randomly seeded hasher, for maps that are bounded and looked up
/// on every read and by every watcher of a change.
type FastHash = foldhash::fast::RandomState;

/// Values by service, then by canonical query, at most [`MAX_ENTRIES`] in
/// all (it starts over when full). Lookups borrow their keys, so a hit
/// allocates nothing. Not synchronised: its owner keeps it behind a lock.
/// The registry's typed caches use it, and front-ends their byte caches.
pub struct QueryMap<V> {
    map: HashMap<ServiceKey, HashMap<String, V, FastHash>, FastHash>,
    len: usize,
}

impl<V> Default for QueryMap<V> {
    fn default() -> Self {
        QueryMap {
            map: HashMap::default(),
            len: 0,
        }
    }
}

impl<V> QueryMap<V> {
    /// The value for (`key`, `query`).
    pub fn get(&self, key: &ServiceKey, query: &str) -> Option<&V> {
        self.map.get(key)?.get(query)
    }

    /// Sets the value for (`key`, `query`), clearing everything first when
    /// the map is full.
    pub fn insert(&mut self, key: &ServiceKey, query: &str, value: V) {
        if self.len >= MAX_ENTRIES {
            self.map.clear();
            self.len = 0;
        }
        let by_query = match self.map.get_mut(key) {
            Some(q) => q,
            None => self.map.entry(key.clone()).or_default(),
        };
        match by_query.get_mut(query) {
            Some(v) => *v = value,
            None => {
                by_query.insert(query.to_string(), value);
                self.len += 1;
            }
        }
    }
}

/// Takes a lock, recovering the data if a panic poisoned it: every value
/// these locks guard is a cache or a table that is whole between calls, and
/// one panicked request must not turn every later one into a panic.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Instances of a service that match a query, at the index they reflect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Discovery {
    /// The service index the answer reflects.
    pub index: u64,
    /// Matching instances, ordered by id.
    pub instances: Vec<Arc<Instance>>,
}

/// Discovery answers by service and canonical query.
#[derive(Default)]
pub(crate) struct DiscoveryCache {
    inner: Mutex<QueryMap<Arc<Discovery>>>,
}

impl DiscoveryCache {
    /// The answer for (`key`, `query`) if it was made at `index`.
    pub(crate) fn get(&self, key: &ServiceKey, query: &str, index: u64) -> Option<Arc<Discovery>> {
        let m = lock(&self.inner);
        m.get(key, query).filter(|d| d.index == index).cloned()
    }

    /// Keeps an answer.
    pub(crate) fn put(&self, key: &ServiceKey, query: &str, answer: Arc<Discovery>) {
        lock(&self.inner).insert(key, query, answer);
    }
}

/// Watch events made once and shared: every watcher of a service with the
/// same filter, at the same place in the stream, gets the same events, so
/// the first one there builds them and the rest share them. With thousands
/// of watchers of one service a change costs one query, not thousands.
#[derive(Default)]
pub(crate) struct WatchBatches {
    inner: Mutex<QueryMap<SharedBatch>>,
}

/// Events for the watchers of one (service, filter) standing at `from`.
#[derive(Clone)]
pub(crate) struct SharedBatch {
    /// Where the watchers stood (0 for a fresh snapshot).
    pub(crate) from: u64,
    /// Whether this is a snapshot (`from` unused) or the deltas after `from`.
    pub(crate) snapshot: bool,
    /// The service index the events bring a watcher to.
    pub(crate) last: u64,
    /// The events.
    pub(crate) events: Arc<[WatchEvent]>,
}

impl WatchBatches {
    /// The batch for (`key`, `filter`) from `from` if it was made at service
    /// index `current`, else what `make` builds (then kept for the next
    /// watcher). `make` runs under this cache's lock, so watchers arriving
    /// meanwhile wait for it instead of building the same events again.
    pub(crate) fn get_or_make(
        &self,
        key: &ServiceKey,
        filter: &str,
        from: u64,
        snapshot: bool,
        current: u64,
        make: impl FnOnce() -> SharedBatch,
    ) -> SharedBatch {
        let mut map = lock(&self.inner);
        if let Some(f) = map.get(key, filter)
            && f.from == from
            && f.snapshot == snapshot
            && f.last == current
        {
            return f.clone();
        }
        let made = make();
        map.insert(key, filter, made.clone());
        made
    }
}
