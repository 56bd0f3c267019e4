//! The discovery cache: one entry per (namespace, query), each kept fresh by
//! one background watch (`GET /v1/watch`) that reconnects with
//! `Last-Event-ID` and fails over between registry addresses.
//!
//! A warm lookup reads the entry's current view and makes no network call.
//! While the watch is down the view keeps its instances and records since
//! when it is down: that is the age of the answer.

use std::collections::HashMap;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use muster_types::{Instance, WatchEvent};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::api::Api;
use crate::error::{Error, Result};
use crate::query::Query;
use crate::sse::Read;
use crate::transport::jitter;

/// Instances of one query as last received, sorted by id.
#[derive(Debug, Clone)]
pub(crate) struct Data {
    pub index: u64,
    pub instances: Arc<[Instance]>,
}

/// State of the watch behind an entry.
#[derive(Debug, Clone)]
pub(crate) enum Link {
    /// First connection under way.
    Connecting,
    /// Connected: the data is current.
    Live,
    /// Disconnected since `since`.
    Down { since: Instant, error: Error },
}

/// What a cache entry currently knows.
#[derive(Debug, Clone)]
pub(crate) struct View {
    pub data: Option<Data>,
    pub link: Link,
}

/// One cached query and the sender its watch task publishes through.
pub(crate) struct Entry {
    pub query: Query,
    pub tx: watch::Sender<View>,
}

/// A point-in-time answer of a discovery query, from the local cache.
///
/// Cloning is cheap: the instances are shared.
#[derive(Debug, Clone)]
pub struct Snapshot {
    instances: Arc<[Instance]>,
    index: u64,
    age: Duration,
    stale: bool,
}

impl Snapshot {
    /// A snapshot of a fixed set of instances (for tests and static
    /// configuration), sorted by id.
    pub fn from_instances(mut instances: Vec<Instance>) -> Self {
        instances.sort_by(|a, b| a.id.cmp(&b.id));
        Snapshot {
            instances: instances.into(),
            index: 0,
            age: Duration::ZERO,
            stale: false,
        }
    }

    /// The matching instances, ordered by id.
    pub fn instances(&self) -> &[Instance] {
        &self.instances
    }

    /// The instances, shared.
    pub fn shared(&self) -> Arc<[Instance]> {
        self.instances.clone()
    }

    /// Registry index this answer reflects.
    pub fn index(&self) -> u64 {
        self.index
    }

    /// How long the registry has been unreachable for this answer: zero
    /// while the watch is connected.
    pub fn age(&self) -> Duration {
        self.age
    }

    /// Whether the answer comes from the cache while the registry is
    /// unreachable (it may be out of date by up to [`Snapshot::age`]).
    pub fn is_stale(&self) -> bool {
        self.stale
    }

    /// Number of instances.
    pub fn len(&self) -> usize {
        self.instances.len()
    }

    /// Whether no instance matches.
    pub fn is_empty(&self) -> bool {
        self.instances.is_empty()
    }

    /// The instance with this id.
    pub fn get(&self, id: &str) -> Option<&Instance> {
        self.instances
            .binary_search_by(|i| i.id.as_str().cmp(id))
            .ok()
            .map(|p| &self.instances[p])
    }

    /// Ids of the instances, in order.
    pub fn ids(&self) -> Vec<&str> {
        self.instances.iter().map(|i| i.id.as_str()).collect()
    }
}

impl View {
    /// The answer this view gives now: `Ok(None)` while the first snapshot
    /// is still on its way.
    pub fn snapshot(&self, query: &Query, max_staleness: Duration) -> Result<Option<Snapshot>> {
        let Some(data) = &self.data else {
            return match &self.link {
                Link::Down { error, .. } => Err(error.clone()),
                _ => Ok(None),
            };
        };
        let (age, stale) = match &self.link {
            Link::Connecting | Link::Live => (Duration::ZERO, false),
            Link::Down { since, error } => {
                let age = since.elapsed();
                if age > max_staleness {
                    return Err(Error::Stale {
                        query: query.to_string(),
                        age,
                        max_staleness,
                        reason: error.to_string(),
                    });
                }
                (age, true)
            }
        };
        Ok(Some(Snapshot {
            instances: data.instances.clone(),
            index: data.index,
            age,
            stale,
        }))
    }
}

impl Entry {
    fn apply(&self, event: WatchEvent) {
        self.tx.send_modify(|v| {
            v.link = Link::Live;
            match event {
                WatchEvent::Snapshot {
                    index,
                    mut instances,
                } => {
                    instances.sort_by(|a, b| a.id.cmp(&b.id));
                    v.data = Some(Data {
                        index,
                        instances: instances.into(),
                    });
                }
                WatchEvent::Upsert { index, instance } => {
                    if let Some(d) = &mut v.data {
                        let mut list = d.instances.to_vec();
                        match list.binary_search_by(|i| i.id.cmp(&instance.id)) {
                            Ok(p) => list[p] = *instance,
                            Err(p) => list.insert(p, *instance),
                        }
                        *d = Data {
                            index,
                            instances: list.into(),
                        };
                    }
                }
                WatchEvent::Delete { index, id } => {
                    if let Some(d) = &mut v.data {
                        let mut list = d.instances.to_vec();
                        if let Ok(p) = list.binary_search_by(|i| i.id.as_str().cmp(&id)) {
                            list.remove(p);
                        }
                        *d = Data {
                            index,
                            instances: list.into(),
                        };
                    }
                }
                // A resumed watch that missed nothing: the link is live
                // (set above) and what is held is current.
                WatchEvent::Current { index } => {
                    if let Some(d) = &mut v.data {
                        d.index = d.index.max(index);
                    }
                }
            }
        });
    }

    fn mark_live(&self) {
        self.tx.send_if_modified(|v| {
            let changed = !matches!(v.link, Link::Live);
            v.link = Link::Live;
            changed
        });
    }

    /// Records the disconnection; returns whether the link was live.
    fn mark_down(&self, error: Error) -> bool {
        let mut was_live = false;
        self.tx.send_if_modified(|v| match &v.link {
            Link::Down { .. } => false,
            link => {
                was_live = matches!(link, Link::Live);
                v.link = Link::Down {
                    since: Instant::now(),
                    error: error.clone(),
                };
                true
            }
        });
        was_live
    }
}

/// Every cached query of a client.
#[derive(Default)]
pub(crate) struct Cache {
    entries: RwLock<HashMap<Query, Arc<Entry>>>,
}

impl Cache {
    /// The entry of `query`, if it exists.
    pub fn get(&self, query: &Query) -> Option<Arc<Entry>> {
        self.entries
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(query)
            .cloned()
    }

    /// The entry of `query`, starting its watch if it is new.
    pub fn get_or_start(&self, query: &Query, api: &Api, stop: &watch::Sender<()>) -> Arc<Entry> {
        if let Some(e) = self.get(query) {
            return e;
        }
        let mut entries = self.entries.write().unwrap_or_else(PoisonError::into_inner);
        if let Some(e) = entries.get(query) {
            return e.clone();
        }
        let (tx, _) = watch::channel(View {
            data: None,
            link: Link::Connecting,
        });
        let entry = Arc::new(Entry {
            query: query.clone(),
            tx,
        });
        entries.insert(query.clone(), entry.clone());
        tokio::spawn(run_watch(api.clone(), entry.clone(), stop.subscribe()));
        entry
    }
}

/// Follows the watch of one entry until the client is dropped.
async fn run_watch(api: Api, entry: Arc<Entry>, mut stop: watch::Receiver<()>) {
    let settings = api.transport.settings.clone();
    let mut last_id: Option<u64> = None;
    let mut failures: u32 = 0;
    loop {
        let result = tokio::select! {
            _ = stop.changed() => return,
            r = follow(&api, &entry, &mut last_id, settings.timeouts.watch_idle) => r,
        };
        let error = match result {
            Ok(()) => Error::Unreachable {
                addrs: api.transport.addrs(),
                reason: "the registry closed the watch".into(),
            },
            Err(e) => e,
        };
        tracing::debug!(query = %entry.query, %error, "watch down; reconnecting");
        if entry.mark_down(error) {
            failures = 0;
        }
        let delay = jitter(settings.backoff.delay(failures));
        failures = failures.saturating_add(1);
        tokio::select! {
            _ = stop.changed() => return,
            _ = tokio::time::sleep(delay) => {}
        }
    }
}

/// One connection of a watch: applies events until it breaks.
async fn follow(api: &Api, entry: &Entry, last_id: &mut Option<u64>, idle: Duration) -> Result<()> {
    let mut events = api.watch(&entry.query, *last_id).await?;
    entry.mark_live();
    loop {
        let read = tokio::time::timeout(idle, events.next_read())
            .await
            .map_err(|_| {
                Error::Protocol(format!(
                    "the watch was silent for {idle:?}, longer than keep-alives allow"
                ))
            })??;
        match read {
            Read::Event(frame) => {
                entry.apply(frame.event);
                *last_id = events.last_event_id();
            }
            Read::KeepAlive => {}
            Read::End => return Ok(()),
        }
    }
}
