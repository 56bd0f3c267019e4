//! Cheap reads: a discovery answer is serialised once per (service, query)
//! and served as bytes until the service's index moves.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::http::HeaderValue;
use bytes::Bytes;
use metrics::Counter;
use muster_catalog::ServiceKey;

/// Most cached answers kept before the cache starts over.
const MAX_ENTRIES: usize = 16_384;

/// Serialised answers keyed by service and canonical query.
///
/// Looked up on every discovery request, so a lookup borrows its key (two
/// maps, by service then by query, instead of one keyed by an owned pair)
/// and counts hits with handles made once.
pub struct ReadCache {
    entries: Mutex<Entries>,
    hits: Counter,
    stale: Counter,
}

/// A cached answer and what its response needs.
#[derive(Clone)]
pub struct Answer {
    /// The service index it was built at.
    pub index: u64,
    /// `index` as the value of the index header, made once per answer
    /// rather than per response.
    pub index_header: HeaderValue,
    /// The encoded JSON.
    pub body: Bytes,
}

impl Answer {
    /// An answer built at `index`.
    pub fn new(index: u64, body: Bytes) -> Self {
        Answer {
            index,
            index_header: HeaderValue::from(index),
            body,
        }
    }
}

#[derive(Default)]
struct Entries {
    by_service: HashMap<ServiceKey, HashMap<String, Answer>>,
    /// Answers held, over every service.
    len: usize,
}

impl Default for ReadCache {
    /// An empty cache; its metrics go to the recorder installed when it is
    /// made.
    fn default() -> Self {
        ReadCache {
            entries: Mutex::default(),
            hits: metrics::counter!("muster_read_cache_total", "result" => "hit"),
            stale: metrics::counter!("muster_read_cache_total", "result" => "stale"),
        }
    }
}

impl ReadCache {
    /// The cached answer, if it was built at exactly `index`.
    pub fn get(&self, key: &ServiceKey, query: &str, index: u64) -> Option<Answer> {
        let m = self.entries.lock().expect("cache lock");
        let answer = m.by_service.get(key)?.get(query)?;
        if answer.index == index {
            self.hits.increment(1);
            Some(answer.clone())
        } else {
            self.stale.increment(1);
            None
        }
    }

    /// Stores an answer.
    pub fn put(&self, key: ServiceKey, query: String, answer: Answer) {
        let mut m = self.entries.lock().expect("cache lock");
        if m.len >= MAX_ENTRIES {
            *m = Entries::default();
        }
        if m.by_service
            .entry(key)
            .or_default()
            .insert(query, answer)
            .is_none()
        {
            m.len += 1;
        }
    }
}

/// Watch frames encoded once and shared: every watcher of a service with the
/// same filter, at the same place in the stream, sends the same events, so
/// the first one to get there encodes them and the rest clone the frames.
/// With thousands of watchers of one service this turns a fan-out from
/// thousands of serialisations into one.
#[derive(Default)]
pub struct WatchFrames {
    /// By service, then by canonical filter: looked up with borrowed keys,
    /// so the many watchers that find their frames allocate nothing.
    /// foldhash: every watcher of a change looks its frames up here, and
    /// SipHash was a visible share of a fan-out.
    inner: Mutex<HashMap<ServiceKey, HashMap<String, SharedFrames, FastHash>, FastHash>>,
    /// Entries across all services, to bound the cache.
    len: std::sync::atomic::AtomicUsize,
}

/// A fast, randomly seeded hasher, for a map that is bounded
/// ([`MAX_ENTRIES`]) and looked up once per watcher per change.
type FastHash = foldhash::fast::RandomState;

/// Frames for the watchers of one (service, filter) that stand at `from`.
#[derive(Clone)]
pub struct SharedFrames {
    /// Where the watchers stood (0 for a fresh snapshot).
    pub from: u64,
    /// Whether this is a snapshot (`from` unused) or the deltas after `from`.
    pub snapshot: bool,
    /// The service index the frames bring a watcher to.
    pub last: u64,
    /// The encoded events, each a whole SSE frame.
    pub frames: Arc<[Bytes]>,
}

impl WatchFrames {
    /// The frames for (`key`, `filter`) from `from` if they were made at
    /// service index `current`, else what `make` builds (then kept for the
    /// next watcher). `make` runs under this cache's lock, so watchers
    /// arriving meanwhile wait for it instead of encoding again.
    pub fn get_or_make(
        &self,
        key: &ServiceKey,
        filter: &str,
        from: u64,
        snapshot: bool,
        current: u64,
        make: impl FnOnce() -> SharedFrames,
    ) -> SharedFrames {
        use std::sync::atomic::Ordering;

        let mut map = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(f) = map.get(key).and_then(|by_filter| by_filter.get(filter))
            && f.from == from
            && f.snapshot == snapshot
            && f.last == current
        {
            return f.clone();
        }
        let made = make();
        if self.len.load(Ordering::Relaxed) >= MAX_ENTRIES {
            map.clear();
            self.len.store(0, Ordering::Relaxed);
        }
        let by_filter = match map.get_mut(key) {
            Some(by_filter) => by_filter,
            None => map.entry(key.clone()).or_default(),
        };
        if by_filter.insert(filter.to_string(), made.clone()).is_none() {
            self.len.fetch_add(1, Ordering::Relaxed);
        }
        made
    }
}
