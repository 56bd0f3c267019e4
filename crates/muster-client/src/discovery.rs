//! [`Discovery`]: a query bound to a client, answered from the cache.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use crate::Client;
use crate::balance::{Balancer, Strategy};
use crate::cache::{Entry, Snapshot, View};
use crate::error::{Error, Result};
use crate::query::{HealthFilter, Query};

/// A discovery query bound to a client; start with
/// [`Client::discover`](crate::Client::discover), add filters, then
/// [`get`](Discovery::get), [`watch`](Discovery::watch) or
/// [`balancer`](Discovery::balancer).
///
/// Keep a `Discovery` around for hot paths: [`Discovery::get`] on a warm
/// query is a map lookup and a reference-count increment.
#[derive(Clone)]
pub struct Discovery {
    client: Client,
    query: Query,
}

impl std::fmt::Debug for Discovery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Discovery")
            .field("query", &self.query)
            .finish_non_exhaustive()
    }
}

impl Discovery {
    pub(crate) fn new(client: Client, query: Query) -> Self {
        Discovery { client, query }
    }

    /// Requires a tag (repeatable; all must match).
    pub fn tag(mut self, tag: impl Into<String>) -> Self {
        self.query = self.query.tag(tag);
        self
    }

    /// Requires a metadata entry (repeatable).
    pub fn meta(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.query = self.query.meta(key, value);
        self
    }

    /// Requires a version in this semver range, e.g. `^1.4`.
    pub fn version(mut self, range: impl Into<String>) -> Self {
        self.query = self.query.version(range);
        self
    }

    /// Requires this zone.
    pub fn zone(mut self, zone: impl Into<String>) -> Self {
        self.query = self.query.zone(zone);
        self
    }

    /// Chooses instances by health (default: passing only).
    pub fn health(mut self, health: HealthFilter) -> Self {
        self.query = self.query.health(health);
        self
    }

    /// The query.
    pub fn query(&self) -> &Query {
        &self.query
    }

    /// The matching instances, from the local cache.
    ///
    /// The first lookup of a query starts its watch and waits for the first
    /// snapshot (or the first failure); later lookups make no network call.
    /// While the registry is unreachable the cached answer is returned with
    /// [`Snapshot::is_stale`] set and its [`Snapshot::age`], until the age
    /// passes the client's maximum staleness: then [`Error::Stale`].
    pub async fn get(&self) -> Result<Snapshot> {
        let start = Instant::now();
        let max = self.client.inner.settings.max_staleness;
        if let Some(entry) = self.client.inner.cache.get(&self.query)
            && let Some(snap) = entry.tx.borrow().snapshot(&self.query, max)?
        {
            metrics::counter!(crate::metrics::CACHE_HITS).increment(1);
            metrics::histogram!(crate::metrics::LOOKUP_SECONDS)
                .record(start.elapsed().as_secs_f64());
            return Ok(snap);
        }
        metrics::counter!(crate::metrics::CACHE_MISSES).increment(1);
        let entry = self.entry();
        let mut rx = entry.tx.subscribe();
        let snap = first_answer(&mut rx, &self.query, max, self.client.first_wait()).await;
        metrics::histogram!(crate::metrics::LOOKUP_SECONDS).record(start.elapsed().as_secs_f64());
        snap
    }

    /// A handle that is told of every change of the cached answer (a watch
    /// event, or the registry becoming unreachable or reachable again).
    pub async fn watch(&self) -> Result<Watcher> {
        self.get().await?;
        Ok(Watcher {
            rx: self.entry().tx.subscribe(),
            query: self.query.clone(),
            max_staleness: self.client.inner.settings.max_staleness,
        })
    }

    /// A load balancer over this query's instances.
    pub fn balancer(&self, strategy: Strategy) -> Balancer {
        Balancer::over(self.clone(), strategy)
    }

    pub(crate) fn entry(&self) -> Arc<Entry> {
        let inner = &self.client.inner;
        inner
            .cache
            .get_or_start(&self.query, &inner.api, &inner.stop)
    }
}

/// Waits for the first snapshot of a new entry, or its first failure.
async fn first_answer(
    rx: &mut watch::Receiver<View>,
    query: &Query,
    max: Duration,
    limit: Duration,
) -> Result<Snapshot> {
    let wait = async {
        loop {
            if let Some(s) = rx.borrow_and_update().snapshot(query, max)? {
                return Ok(s);
            }
            if rx.changed().await.is_err() {
                return Err(Error::Protocol("the client was dropped".into()));
            }
        }
    };
    tokio::time::timeout(limit, wait).await.unwrap_or_else(|_| {
        Err(Error::Protocol(format!(
            "no answer for {query} within {limit:?}"
        )))
    })
}

/// Follows the cached answer of one query; see [`Discovery::watch`].
pub struct Watcher {
    rx: watch::Receiver<View>,
    query: Query,
    max_staleness: Duration,
}

impl std::fmt::Debug for Watcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watcher")
            .field("query", &self.query)
            .finish_non_exhaustive()
    }
}

impl Watcher {
    /// The current answer, as [`Discovery::get`] would give it.
    pub fn current(&mut self) -> Result<Snapshot> {
        self.rx
            .borrow_and_update()
            .snapshot(&self.query, self.max_staleness)?
            .ok_or_else(|| Error::Protocol("no snapshot yet".into()))
    }

    /// Waits for the next change, then returns the answer.
    pub async fn changed(&mut self) -> Result<Snapshot> {
        self.rx
            .changed()
            .await
            .map_err(|_| Error::Protocol("the client was dropped".into()))?;
        self.current()
    }

    /// Waits until `condition` holds for the answer (checked now, then after
    /// each change) and returns that answer. An error (such as
    /// [`Error::Stale`]) ends the wait.
    pub async fn wait_for(
        &mut self,
        mut condition: impl FnMut(&Snapshot) -> bool,
    ) -> Result<Snapshot> {
        loop {
            let s = self.current()?;
            if condition(&s) {
                return Ok(s);
            }
            self.rx
                .changed()
                .await
                .map_err(|_| Error::Protocol("the client was dropped".into()))?;
        }
    }

    #[cfg(feature = "tower")]
    pub(crate) fn receiver(&self) -> watch::Receiver<View> {
        self.rx.clone()
    }
}
