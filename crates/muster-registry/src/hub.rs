//! Wake-ups for blocking queries and watches: one channel per service (and
//! per namespace for the service list), so a change to service A wakes only
//! the waiters of A. No thundering herd.

use std::collections::HashMap;
use std::sync::Mutex;

use muster_catalog::ServiceKey;
use tokio::sync::watch;

use crate::cache::lock;

/// Per-service and per-namespace index channels.
#[derive(Default)]
pub(crate) struct Hub {
    services: Mutex<HashMap<ServiceKey, watch::Sender<u64>>>,
    namespaces: Mutex<HashMap<String, watch::Sender<u64>>>,
}

fn subscribe<K: std::hash::Hash + Eq>(
    map: &Mutex<HashMap<K, watch::Sender<u64>>>,
    key: K,
) -> watch::Receiver<u64> {
    let mut m = lock(map);
    m.entry(key)
        .or_insert_with(|| watch::channel(0).0)
        .subscribe()
}

fn notify<K, Q>(map: &Mutex<HashMap<K, watch::Sender<u64>>>, key: &Q, index: u64)
where
    K: std::borrow::Borrow<Q> + std::hash::Hash + Eq,
    Q: std::hash::Hash + Eq + ?Sized,
{
    let mut m = lock(map);
    if let Some(tx) = m.get(key) {
        if tx.receiver_count() == 0 {
            // Nobody waits: drop the channel instead of keeping it forever.
            m.remove(key);
        } else {
            tx.send_replace(index);
        }
    }
}

impl Hub {
    /// A receiver that changes whenever the service changes.
    pub fn subscribe_service(&self, key: ServiceKey) -> watch::Receiver<u64> {
        subscribe(&self.services, key)
    }

    /// A receiver that changes whenever any service of the namespace changes.
    pub fn subscribe_namespace(&self, namespace: String) -> watch::Receiver<u64> {
        subscribe(&self.namespaces, namespace)
    }

    /// Wakes the waiters of one service and of its namespace.
    pub fn notify(&self, key: &ServiceKey, index: u64) {
        notify(&self.services, key, index);
        notify(&self.namespaces, key.namespace.as_str(), index);
    }

    /// How many receivers wait on a service (for tests and metrics).
    pub fn service_waiters(&self, key: &ServiceKey) -> usize {
        lock(&self.services)
            .get(key)
            .map_or(0, |tx| tx.receiver_count())
    }

    /// Wakes every waiter (after the whole catalog was replaced).
    pub fn notify_all(&self, index: u64) {
        for tx in lock(&self.services).values() {
            tx.send_replace(index);
        }
        for tx in lock(&self.namespaces).values() {
            tx.send_replace(index);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_change_wakes_only_its_own_service() {
        let hub = Hub::default();
        let a = ServiceKey::new("default", "a");
        let b = ServiceKey::new("default", "b");
        let rx_a = hub.subscribe_service(a.clone());
        let rx_b = hub.subscribe_service(b.clone());
        let rx_ns = hub.subscribe_namespace("default".into());
        hub.notify(&b, 7);
        assert!(!rx_a.has_changed().unwrap());
        assert!(rx_b.has_changed().unwrap());
        assert!(rx_ns.has_changed().unwrap());
        assert_eq!(*rx_b.borrow(), 7);
    }

    #[test]
    fn channels_without_waiters_are_dropped() {
        let hub = Hub::default();
        let a = ServiceKey::new("default", "a");
        drop(hub.subscribe_service(a.clone()));
        hub.notify(&a, 1);
        assert!(hub.services.lock().unwrap().is_empty());
    }
}
