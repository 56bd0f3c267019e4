//! Cheap reads: a discovery answer is serialised once per (service, query)
//! and served as bytes until the service's index moves.

use std::collections::HashMap;
use std::sync::Mutex;

use bytes::Bytes;
use muster_catalog::ServiceKey;

/// Most cached answers kept before the cache starts over.
const MAX_ENTRIES: usize = 16_384;

/// Serialised answers keyed by service and canonical query.
#[derive(Default)]
pub struct ReadCache {
    entries: Mutex<HashMap<(ServiceKey, String), (u64, Bytes)>>,
}

impl ReadCache {
    /// The cached answer, if it was built at exactly `index`.
    pub fn get(&self, key: &ServiceKey, query: &str, index: u64) -> Option<Bytes> {
        let m = self.entries.lock().expect("cache lock");
        // Looking up by a borrowed tuple needs owned parts; the clone of the
        // key is cheap next to serialising the answer.
        let (at, bytes) = m.get(&(key.clone(), query.to_string()))?;
        let hit = (*at == index).then(|| bytes.clone());
        metrics::counter!("muster_read_cache_total", "result" => if hit.is_some() { "hit" } else { "stale" })
            .increment(1);
        hit
    }

    /// Stores an answer built at `index`.
    pub fn put(&self, key: ServiceKey, query: String, index: u64, bytes: Bytes) {
        let mut m = self.entries.lock().expect("cache lock");
        if m.len() >= MAX_ENTRIES {
            m.clear();
        }
        m.insert((key, query), (index, bytes));
    }
}
