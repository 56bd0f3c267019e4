//! The discovery cache: one entry per query, all of a client's entries kept
//! fresh by one multiplexed watch (`POST /v1/watch`), each entry a query of
//! it resumed by its own index, with failover between registry addresses.
//!
//! A warm lookup reads the entry's current view and makes no network call.
//! While the watch is down the view keeps its instances and records since
//! when it is down: that is the age of the answer. After a reconnect an
//! entry is fresh again once the registry confirmed its query (a snapshot,
//! or `current` after what it missed).
//!
//! One task per client, the *driver*, decides which streams carry which
//! queries; each stream is a task that follows a fixed set of queries and
//! reconnects by itself. A new lookup goes out at once on a stream of its
//! own; once the set has been quiet for [`QUIET`] (or more than
//! [`MAX_EXTRA_STREAMS`] streams are open) the driver re-opens everything
//! as one stream (more only past the per-stream limits), each query
//! resuming where it was, and closes the rest. Lookups unused for the
//! client's `lookup_idle_timeout` are evicted the same way.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, PoisonError, RwLock};
use std::time::Duration;

use muster_types::{Instance, WatchEvent, limits};
use tokio::sync::{Notify, mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::api::Api;
use crate::error::{Error, Result};
use crate::query::Query;
use crate::sse::QueryRead;
use crate::transport::jitter;

/// How long the set of queries must stay unchanged before the driver merges
/// the streams into as few as the limits allow.
const QUIET: Duration = Duration::from_millis(100);

/// Streams beyond the needed number that may be open before the driver
/// merges them without waiting for [`QUIET`].
const MAX_EXTRA_STREAMS: usize = 4;

/// Longest wait between two attempts to reconnect a watch stream, whatever
/// the client's back-off: one stream per client is cheap to retry, and a
/// registry that is back serves fresh answers within about a second.
const MAX_RECONNECT_DELAY: Duration = Duration::from_secs(1);

/// Most bytes of queries in one stream's request body: under the registry's
/// body limit, with room for the envelope.
const BODY_BUDGET: usize = limits::MAX_BODY_BYTES - 1024;

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

/// One cached query and the sender its watch publishes through.
pub(crate) struct Entry {
    pub query: Query,
    /// Its query's id on the watch stream, unique within the client.
    id: u64,
    pub tx: watch::Sender<View>,
    /// Set by every lookup that reads it: a flag rather than a time, so a
    /// warm lookup reads no clock and writes only when the flag is unset.
    used: AtomicBool,
    /// When the eviction sweep last found it used, in milliseconds since
    /// the cache's epoch.
    last_used: AtomicU64,
    /// Bytes its query takes in a stream's request body, at most.
    size: usize,
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
    /// Applies one event of its query. A snapshot or `current` confirms the
    /// entry fresh; deltas received while it is down (what a resumed watch
    /// missed) update the data but leave it stale until the confirmation.
    fn apply(&self, event: WatchEvent) {
        self.tx.send_modify(|v| match event {
            WatchEvent::Snapshot {
                index,
                mut instances,
            } => {
                instances.sort_by(|a, b| a.id.cmp(&b.id));
                v.data = Some(Data {
                    index,
                    instances: instances.into(),
                });
                v.link = Link::Live;
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
            // Caught up: what is held is current.
            WatchEvent::Current { index } => {
                if let Some(d) = &mut v.data {
                    d.index = d.index.max(index);
                }
                v.link = Link::Live;
            }
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

    /// The registry refused the query itself: lookups get the error.
    fn refuse(&self, error: Error) {
        self.tx.send_modify(|v| {
            v.data = None;
            v.link = Link::Down {
                since: Instant::now(),
                error,
            };
        });
    }

    /// Where its query resumes: the index of the last event received.
    fn resume_index(&self) -> Option<u64> {
        self.tx.borrow().data.as_ref().map(|d| d.index)
    }
}

/// What the cache and its driver share.
struct Shared {
    entries: RwLock<HashMap<Query, Arc<Entry>>>,
    /// Woken when an entry is added.
    added: Notify,
    epoch: Instant,
    next_id: AtomicU64,
}

impl Shared {
    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    fn entries(&self) -> Vec<Arc<Entry>> {
        self.entries
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .cloned()
            .collect()
    }

    /// Removes `entry` from the map if it is still the one for its query.
    fn remove(&self, entry: &Arc<Entry>) {
        let mut m = self.entries.write().unwrap_or_else(PoisonError::into_inner);
        if m.get(&entry.query).is_some_and(|e| Arc::ptr_eq(e, entry)) {
            m.remove(&entry.query);
        }
    }
}

/// Every cached query of a client.
pub(crate) struct Cache {
    shared: Arc<Shared>,
    driver: OnceLock<()>,
}

impl Default for Cache {
    fn default() -> Self {
        Cache {
            shared: Arc::new(Shared {
                entries: RwLock::default(),
                added: Notify::new(),
                epoch: Instant::now(),
                next_id: AtomicU64::new(0),
            }),
            driver: OnceLock::new(),
        }
    }
}

impl Cache {
    /// The entry of `query`, if it exists; marks it used.
    pub fn get(&self, query: &Query) -> Option<Arc<Entry>> {
        let e = self
            .shared
            .entries
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(query)
            .cloned()?;
        if !e.used.load(Ordering::Relaxed) {
            e.used.store(true, Ordering::Relaxed);
        }
        Some(e)
    }

    /// The entry of `query`, adding its query to the client's watch if it
    /// is new.
    pub fn get_or_start(&self, query: &Query, api: &Api, stop: &watch::Sender<()>) -> Arc<Entry> {
        if let Some(e) = self.get(query) {
            return e;
        }
        self.driver.get_or_init(|| {
            let (exits_tx, exits) = mpsc::unbounded_channel();
            let driver = Driver {
                api: api.clone(),
                shared: self.shared.clone(),
                stop: stop.subscribe(),
                streams: Vec::new(),
                per_stream: api.transport.settings.queries_per_stream,
                exits_tx,
                exits,
                next_stream: 0,
                last_change: None,
            };
            tokio::spawn(driver.run());
        });
        let mut entries = self
            .shared
            .entries
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(e) = entries.get(query) {
            return e.clone();
        }
        let (tx, _) = watch::channel(View {
            data: None,
            link: Link::Connecting,
        });
        let id = self.shared.next_id.fetch_add(1, Ordering::Relaxed);
        // Sized with the largest index it could carry.
        let wire = query.to_watch_query(id.to_string(), Some(u64::MAX));
        let entry = Arc::new(Entry {
            query: query.clone(),
            id,
            size: serde_json::to_vec(&wire).map_or(BODY_BUDGET, |b| b.len() + 1),
            tx,
            used: AtomicBool::new(false),
            last_used: AtomicU64::new(self.shared.now_ms()),
        });
        entries.insert(query.clone(), entry.clone());
        drop(entries);
        self.shared.added.notify_one();
        entry
    }
}

/// One open stream: a task following a fixed set of queries. Dropping it
/// closes the stream.
struct Stream {
    id: u64,
    queries: Arc<[Arc<Entry>]>,
    task: JoinHandle<()>,
}

impl Drop for Stream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A stream the registry refused (a 4xx): the driver decides what to do.
struct Refused {
    stream: u64,
    error: Error,
}

/// Decides which streams carry which queries; see the module's notes.
struct Driver {
    api: Api,
    shared: Arc<Shared>,
    stop: watch::Receiver<()>,
    streams: Vec<Stream>,
    /// Most queries per stream; halved when the registry refuses a stream
    /// as too large.
    per_stream: usize,
    exits_tx: mpsc::UnboundedSender<Refused>,
    exits: mpsc::UnboundedReceiver<Refused>,
    next_stream: u64,
    /// When the set of queries last changed, while streams await merging.
    last_change: Option<Instant>,
}

impl Driver {
    async fn run(mut self) {
        let idle = self.api.transport.settings.lookup_idle;
        let period = (idle / 4).clamp(Duration::from_millis(50), Duration::from_secs(60));
        let mut sweep = tokio::time::interval_at(Instant::now() + period, period);
        sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let wake = self.arrange();
            tokio::select! {
                _ = self.stop.changed() => return,
                _ = self.shared.added.notified() => {}
                Some(r) = self.exits.recv() => self.refused(r),
                _ = sweep.tick() => self.evict(idle),
                _ = tokio::time::sleep_until(wake.unwrap_or_else(Instant::now)), if wake.is_some() => {}
            }
        }
    }

    /// Opens streams for queries no stream carries, and merges the streams
    /// when they are more than needed (or carry evicted queries) and the
    /// set has been quiet. Returns when to look again, if it must.
    fn arrange(&mut self) -> Option<Instant> {
        let live = self.shared.entries();
        let carried: HashSet<u64> = self
            .streams
            .iter()
            .flat_map(|s| s.queries.iter().map(|e| e.id))
            .collect();
        let new: Vec<Arc<Entry>> = live
            .iter()
            .filter(|e| !carried.contains(&e.id))
            .cloned()
            .collect();
        if !new.is_empty() {
            for chunk in self.chunks(new) {
                self.spawn(chunk);
            }
            self.last_change = Some(Instant::now());
        }
        let live_ids: HashSet<u64> = live.iter().map(|e| e.id).collect();
        let evicted = carried.iter().any(|id| !live_ids.contains(id));
        let needed = self.chunks(live.clone()).len();
        if self.streams.len() <= needed && !evicted {
            self.last_change = None;
            return None;
        }
        let due = self.last_change.map_or_else(Instant::now, |t| t + QUIET);
        if self.streams.len() > needed + MAX_EXTRA_STREAMS || Instant::now() >= due {
            // Close first: each query resumes on the new stream from the
            // last event the old one delivered.
            self.streams.clear();
            for chunk in self.chunks(live) {
                self.spawn(chunk);
            }
            self.last_change = None;
            self.gauge();
            return None;
        }
        Some(due)
    }

    /// Splits queries into streams within the count and body limits.
    fn chunks(&self, entries: Vec<Arc<Entry>>) -> Vec<Vec<Arc<Entry>>> {
        let mut out: Vec<Vec<Arc<Entry>>> = Vec::new();
        let mut size = 0;
        for e in entries {
            let n = e.size;
            match out.last_mut() {
                Some(c) if c.len() < self.per_stream && size + n <= BODY_BUDGET => {
                    size += n;
                    c.push(e);
                }
                _ => {
                    size = n;
                    out.push(vec![e]);
                }
            }
        }
        out
    }

    fn spawn(&mut self, queries: Vec<Arc<Entry>>) {
        let id = self.next_stream;
        self.next_stream += 1;
        let queries: Arc<[Arc<Entry>]> = queries.into();
        let task = tokio::spawn(run_stream(
            self.api.clone(),
            queries.clone(),
            id,
            self.exits_tx.clone(),
        ));
        self.streams.push(Stream { id, queries, task });
        self.gauge();
    }

    fn gauge(&self) {
        metrics::gauge!(crate::metrics::WATCH_STREAMS).set(self.streams.len() as f64);
    }

    /// A stream the registry refused: drop the query it names (its lookups
    /// get the error), or split the stream when it was too large; the
    /// queries left are carried again by the next [`Driver::arrange`].
    fn refused(&mut self, r: Refused) {
        let Some(pos) = self.streams.iter().position(|s| s.id == r.stream) else {
            return;
        };
        let stream = self.streams.remove(pos);
        self.gauge();
        let Error::Api {
            status,
            code,
            message,
            field,
        } = &r.error
        else {
            return;
        };
        let named = field.as_deref().and_then(|f| {
            let rest = f.strip_prefix("queries[")?;
            let (i, rest) = rest.split_once(']')?;
            let i: usize = i.parse().ok()?;
            let name = rest.strip_prefix('.').filter(|n| !n.is_empty());
            Some((i, name.map(str::to_string)))
        });
        let too_large = code == "too_many_queries" || *status == 413;
        let refuse = |e: &Arc<Entry>, error: Error| {
            tracing::debug!(query = %e.query, %error, "the registry refused a watch query");
            e.refuse(error);
            self.shared.remove(e);
        };
        match named {
            Some((i, name)) if i < stream.queries.len() => refuse(
                &stream.queries[i],
                Error::Api {
                    status: *status,
                    code: code.clone(),
                    message: message.clone(),
                    field: name,
                },
            ),
            _ if too_large && stream.queries.len() > 1 => {
                self.per_stream = (stream.queries.len() / 2).max(1);
            }
            _ => {
                for e in stream.queries.iter() {
                    refuse(e, r.error.clone());
                }
            }
        }
    }

    /// Drops entries unused for `idle` that nothing follows (found unused
    /// by every sweep for that long: eviction comes between `idle` and
    /// `idle` plus one sweep period after the last use).
    fn evict(&mut self, idle: Duration) {
        let now = self.shared.now_ms();
        let idle = idle.as_millis() as u64;
        let mut m = self
            .shared
            .entries
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        m.retain(|_, e| {
            if e.used.swap(false, Ordering::Relaxed) {
                e.last_used.store(now, Ordering::Relaxed);
            }
            e.tx.receiver_count() > 0
                || now.saturating_sub(e.last_used.load(Ordering::Relaxed)) < idle
        });
    }
}

/// Follows one stream's queries until the driver drops it, reconnecting
/// with back-off, each query resuming from its last event.
async fn run_stream(
    api: Api,
    queries: Arc<[Arc<Entry>]>,
    id: u64,
    refused: mpsc::UnboundedSender<Refused>,
) {
    let settings = api.transport.settings.clone();
    let by_id: HashMap<String, usize> = queries
        .iter()
        .enumerate()
        .map(|(i, e)| (e.id.to_string(), i))
        .collect();
    let mut failures: u32 = 0;
    loop {
        let error = match follow(&api, &queries, &by_id, settings.timeouts.watch_idle).await {
            Ok(()) => Error::Unreachable {
                addrs: api.transport.addrs(),
                reason: "the registry closed the watch".into(),
            },
            Err(
                error @ Error::Api {
                    status: 400 | 413, ..
                },
            ) => {
                let _ = refused.send(Refused { stream: id, error });
                return;
            }
            Err(e) => e,
        };
        tracing::debug!(queries = queries.len(), %error, "watch down; reconnecting");
        let mut was_live = false;
        for e in queries.iter() {
            was_live |= e.mark_down(error.clone());
        }
        if was_live {
            failures = 0;
        }
        let delay = jitter(settings.backoff.delay(failures).min(MAX_RECONNECT_DELAY));
        failures = failures.saturating_add(1);
        tokio::time::sleep(delay).await;
    }
}

/// One connection of a stream: applies events until it breaks.
async fn follow(
    api: &Api,
    queries: &[Arc<Entry>],
    by_id: &HashMap<String, usize>,
    idle: Duration,
) -> Result<()> {
    let body = queries
        .iter()
        .map(|e| e.query.to_watch_query(e.id.to_string(), e.resume_index()))
        .collect();
    let mut events = api.watch_many(body).await?;
    loop {
        let read = tokio::time::timeout(idle, events.next_read())
            .await
            .map_err(|_| {
                Error::Protocol(format!(
                    "the watch was silent for {idle:?}, longer than keep-alives allow"
                ))
            })??;
        match read {
            QueryRead::Event(e) => {
                if let Some(&i) = by_id.get(&e.query) {
                    queries[i].apply(e.event);
                }
            }
            QueryRead::KeepAlive => {}
            QueryRead::End => return Ok(()),
        }
    }
}
