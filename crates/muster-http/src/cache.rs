//! Cheap reads: a discovery answer is serialised once per (service, query)
//! and served as bytes until the service's index moves.

use std::sync::{Arc, Mutex, PoisonError};

use axum::http::HeaderValue;
use bytes::Bytes;
use metrics::Counter;
use muster_registry::{QueryMap, ServiceKey, WatchEvent};

/// Serialised answers keyed by service and canonical query.
///
/// Looked up on every discovery request, so a lookup borrows its key (two
/// maps, by service then by query, instead of one keyed by an owned pair)
/// and counts hits with handles made once.
pub struct ReadCache {
    entries: Mutex<QueryMap<Answer>>,
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
        let answer = m.get(key, query)?;
        if answer.index == index {
            self.hits.increment(1);
            Some(answer.clone())
        } else {
            self.stale.increment(1);
            None
        }
    }

    /// Stores an answer.
    pub fn put(&self, key: &ServiceKey, query: &str, answer: Answer) {
        let mut m = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        m.insert(key, query, answer);
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
    /// By service, then by canonical filter.
    inner: Mutex<QueryMap<Frames>>,
}

/// A shared batch and its frames.
struct Frames {
    batch: Arc<[WatchEvent]>,
    frames: Arc<[Bytes]>,
}

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
        let mut map = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(f) = map.get(key, filter)
            && Arc::ptr_eq(&f.batch, batch)
        {
            return f.frames.clone();
        }
        let frames = encode(batch);
        let entry = Frames {
            batch: batch.clone(),
            frames: frames.clone(),
        };
        map.insert(key, filter, entry);
        frames
    }
}
