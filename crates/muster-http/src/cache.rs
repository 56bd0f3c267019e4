//! Cheap reads: a discovery answer is serialised once per (service, query)
//! and served as bytes until the service's index moves.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use axum::http::HeaderValue;
use bytes::Bytes;
use metrics::Counter;
use muster_registry::{ServiceKey, WatchEvent};

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
        let m = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
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
        let mut m = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
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

/// Watch batches encoded once: the registry hands every watcher of a
/// service with the same filter, at the same place, the same batch (one
/// `Arc`), so the first watcher to get it encodes its SSE frames and the
/// rest share them. One entry per (service, canonical filter), replaced when
/// a newer batch comes. With thousands of watchers of one service a change
/// costs one encoding, not thousands.
#[derive(Default)]
pub struct FrameCache {
    /// By service, then by canonical filter: looked up with borrowed keys,
    /// so the many watchers that find their frames allocate nothing.
    /// foldhash: every watcher of a change looks its frames up here.
    inner: Mutex<HashMap<ServiceKey, HashMap<String, Frames, FastHash>, FastHash>>,
    /// Entries across all services, to bound the cache.
    len: std::sync::atomic::AtomicUsize,
}

/// A shared batch and its frames.
struct Frames {
    batch: Arc<[WatchEvent]>,
    frames: Arc<[Bytes]>,
}

/// A fast, randomly seeded hasher, for a map that is bounded
/// ([`MAX_ENTRIES`]) and looked up once per watcher per change.
type FastHash = foldhash::fast::RandomState;

impl FrameCache {
    /// The frames of `batch` (of `key` seen through `filter`), encoded by
    /// `encode` unless another watcher did already. `encode` runs under
    /// this cache's lock, so watchers arriving meanwhile wait for it
    /// instead of encoding again.
    pub fn get_or_encode(
        &self,
        key: &ServiceKey,
        filter: &str,
        batch: &Arc<[WatchEvent]>,
        encode: impl FnOnce(&[WatchEvent]) -> Arc<[Bytes]>,
    ) -> Arc<[Bytes]> {
        use std::sync::atomic::Ordering;

        let mut map = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(f) = map.get(key).and_then(|by_filter| by_filter.get(filter))
            && Arc::ptr_eq(&f.batch, batch)
        {
            return f.frames.clone();
        }
        let frames = encode(batch);
        if self.len.load(Ordering::Relaxed) >= MAX_ENTRIES {
            map.clear();
            self.len.store(0, Ordering::Relaxed);
        }
        let by_filter = match map.get_mut(key) {
            Some(by_filter) => by_filter,
            None => map.entry(key.clone()).or_default(),
        };
        let entry = Frames {
            batch: batch.clone(),
            frames: frames.clone(),
        };
        if by_filter.insert(filter.to_string(), entry).is_none() {
            self.len.fetch_add(1, Ordering::Relaxed);
        }
        frames
    }
}
