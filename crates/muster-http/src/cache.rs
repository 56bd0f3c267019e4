//! Cheap reads: a discovery answer is serialised once per (service, query)
//! and served as bytes until the service's index moves.

use std::sync::{Arc, Mutex, PoisonError};

use axum::http::HeaderValue;
use bytes::Bytes;
use metrics::Counter;
use muster_registry::{QueryMap, ServiceKey, WatchEvent};
use std::collections::HashMap;

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
/// rest share them. With thousands of watchers of one service a change
/// costs one encoding, not thousands.
///
/// Keyed by the batch's address: a lookup hashes one integer. An entry holds
/// its batch, so the address cannot be reused while the entry lives; entries
/// whose batch nobody else holds any more (no watcher is sending it and the
/// registry has moved on) are swept out as the map grows.
#[derive(Default)]
pub struct FrameCache {
    inner: Mutex<FrameMap>,
}

#[derive(Default)]
struct FrameMap {
    by_batch: HashMap<usize, Frames, foldhash::fast::RandomState>,
    /// Sweep when the map reaches this size.
    sweep_at: usize,
}

/// A shared batch and its frames.
struct Frames {
    batch: Arc<[WatchEvent]>,
    frames: Arc<[Bytes]>,
}

/// Fewest entries before a sweep.
const MIN_SWEEP: usize = 64;

impl FrameCache {
    /// The frames of `batch`, encoded by `encode` unless another watcher did
    /// already. `encode` runs under this cache's lock, so watchers arriving
    /// meanwhile wait for it instead of encoding again.
    pub fn get_or_encode(
        &self,
        batch: &Arc<[WatchEvent]>,
        encode: impl FnOnce(&[WatchEvent]) -> Arc<[Bytes]>,
    ) -> Arc<[Bytes]> {
        let key = Arc::as_ptr(batch).cast::<WatchEvent>() as usize;
        let mut map = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(f) = map.by_batch.get(&key) {
            return f.frames.clone();
        }
        let frames = encode(batch);
        if map.by_batch.len() >= map.sweep_at {
            map.by_batch.retain(|_, f| Arc::strong_count(&f.batch) > 1);
            map.sweep_at = (map.by_batch.len() * 2).max(MIN_SWEEP);
        }
        map.by_batch.insert(
            key,
            Frames {
                batch: batch.clone(),
                frames: frames.clone(),
            },
        );
        frames
    }

    /// Entries held (for tests).
    pub fn len(&self) -> usize {
        self.inner
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .by_batch
            .len()
    }

    /// Whether no entry is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(index: u64) -> Arc<[WatchEvent]> {
        Arc::from(vec![WatchEvent::Current { index }])
    }

    #[test]
    fn a_batch_is_encoded_once_and_dropped_batches_are_swept() {
        let cache = FrameCache::default();
        let encodings = std::cell::Cell::new(0);
        let encode = |events: &[WatchEvent]| {
            encodings.set(encodings.get() + 1);
            Arc::from(vec![Bytes::from(format!("{}", events[0].index()))])
        };
        let kept = batch(1);
        let a = cache.get_or_encode(&kept, encode);
        let b = cache.get_or_encode(&kept, encode);
        assert!(Arc::ptr_eq(&a, &b));
        assert_eq!(encodings.get(), 1);
        // Batches nobody holds any more go at the next sweep; a held one stays.
        for i in 2..=(2 * MIN_SWEEP as u64) {
            let b = batch(i);
            cache.get_or_encode(&b, encode);
        }
        assert!(cache.len() <= MIN_SWEEP + 1, "{}", cache.len());
        let again = cache.get_or_encode(&kept, encode);
        assert!(
            Arc::ptr_eq(&a, &again),
            "the held batch was not encoded again"
        );
    }
}
