//! `GET /v1/watch`: Server-Sent Events of one service. A snapshot first, then
//! `upsert`/`delete` deltas, each with `id:` = the log index. A client that
//! reconnects with `Last-Event-ID` gets what it missed, or a fresh snapshot
//! when the service's history no longer reaches back that far.
//!
//! Several events of one service can share an id (one log entry carries a
//! batch of commands; one command can remove several instances). A client
//! that lost the stream between two of them cannot tell by its id which it
//! got, so a resume from such an id sends all events of that id again (at
//! least once; upserts and deletes are idempotent). A resume from an id with
//! a single event sends exactly what came after it. Within one stream every
//! event is sent once: an entry is applied whole under the catalog lock.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures::StreamExt;
use muster_catalog::{Change, Query, ServiceKey};
use muster_types::{ErrorBody, WatchEvent, validate_service_name};
use tokio_stream::wrappers::WatchStream;

use super::Params;
use super::instances::parse_query;
use crate::AppStateRef;
use crate::cache::SharedFrames;
use crate::error::ApiError;

/// Counts open watchers; the guard lives as long as the stream's task.
struct WatcherGauge;

impl WatcherGauge {
    fn new() -> Self {
        metrics::gauge!("muster_watchers").increment(1.0);
        WatcherGauge
    }
}

impl Drop for WatcherGauge {
    fn drop(&mut self) {
        metrics::gauge!("muster_watchers").decrement(1.0);
    }
}

/// One whole SSE frame: `event:`, `id:` (the index) and `data:` (the event
/// as JSON, which has no newline), then the blank line.
fn sse(e: &WatchEvent) -> Bytes {
    let data = serde_json::to_vec(e).expect("wire types serialise");
    let mut frame = Vec::with_capacity(data.len() + 48);
    frame.extend_from_slice(b"event: ");
    frame.extend_from_slice(e.name().as_bytes());
    frame.extend_from_slice(b"\nid: ");
    frame.extend_from_slice(e.index().to_string().as_bytes());
    frame.extend_from_slice(b"\ndata: ");
    frame.extend_from_slice(&data);
    frame.extend_from_slice(b"\n\n");
    Bytes::from(frame)
}

/// How often every watch sends [`KEEPALIVE_FRAME`].
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(15);

/// Starts the one keep-alive ticker of all watches; it stops when `stop`
/// turns `true`.
pub fn spawn_keepalive(
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> tokio::sync::watch::Receiver<u64> {
    let (tx, rx) = tokio::sync::watch::channel(0u64);
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval_at(
            tokio::time::Instant::now() + KEEPALIVE_INTERVAL,
            KEEPALIVE_INTERVAL,
        );
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut n = 0u64;
        loop {
            tokio::select! {
                _ = ticks.tick() => {
                    n += 1;
                    tx.send_replace(n);
                }
                _ = stop.changed() => return,
            }
        }
    });
    rx
}

/// An SSE comment, sent to every watcher on each keep-alive tick so that
/// proxies and clients see a live connection.
const KEEPALIVE_FRAME: &[u8] = b": \n\n";

/// Watch a service.
#[utoipa::path(get, path = "/v1/watch", tag = "watch",
    params(("service" = String, Query, description = "Service to watch"),
           ("namespace" = Option<String>, Query, description = "Namespace"),
           ("tag" = Option<Vec<String>>, Query, description = "Filter, as for discovery"),
           ("meta" = Option<Vec<String>>, Query, description = "Filter, as for discovery"),
           ("version" = Option<String>, Query, description = "Filter, as for discovery"),
           ("zone" = Option<String>, Query, description = "Filter, as for discovery"),
           ("health" = Option<String>, Query, description = "Filter, as for discovery"),
           ("Last-Event-ID" = Option<u64>, Header, description = "Resume from this index: what came after it, and again the events that share it")),
    responses((status = 200, description = "text/event-stream of WatchEvent (event names snapshot, upsert, delete)", body = WatchEvent, content_type = "text/event-stream"),
              (status = 400, description = "Invalid parameter", body = ErrorBody)))]
pub async fn watch(
    State(state): State<AppStateRef>,
    headers: HeaderMap,
    params: Params,
) -> Result<Response, ApiError> {
    params.only(&[
        "service",
        "namespace",
        "tag",
        "meta",
        "version",
        "zone",
        "health",
    ])?;
    let service = params.get("service").ok_or_else(|| {
        ApiError::bad_param("service", "service is required: /v1/watch?service=payments")
    })?;
    validate_service_name(service)?;
    let key = ServiceKey::new(params.namespace()?, service);
    let query = parse_query(&params)?;
    let last_id = match headers.get("last-event-id") {
        None => None,
        Some(v) => Some(
            v.to_str()
                .ok()
                .and_then(|s| s.trim().parse::<u64>().ok())
                .ok_or_else(|| {
                    ApiError::bad_param(
                        "Last-Event-ID",
                        "Last-Event-ID must be an index (a non-negative integer)",
                    )
                })?,
        ),
    };
    let watcher = Watcher {
        // Subscribe before the first read so no change slips in between.
        changed: state.hub.subscribe_service(key.clone()),
        shutdown: WatchStream::from_changes(state.shutdown.clone()),
        keepalive: WatchStream::from_changes(state.keepalive.clone()),
        filter: format!("{query:?}"),
        since: last_id.map_or(Since::Start, Since::Resume),
        state,
        key,
        query,
        pending: Arc::from(Vec::new()),
        next: 0,
        started: false,
        _gauge: WatcherGauge::new(),
    };
    // Shared frames go out as they are: each watcher's body hands hyper a
    // reference-counted `Bytes`, no copy and no per-watcher timer.
    let events = futures::stream::unfold(watcher, |mut w| async move {
        w.next().await.map(|e| (Ok::<_, Infallible>(e), w))
    });
    Ok((
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        Body::from_stream(events),
    )
        .into_response())
}

/// Where a stream stands.
#[derive(Debug, Clone, Copy)]
enum Since {
    /// Nothing sent yet: a snapshot.
    Start,
    /// Reconnected with `Last-Event-ID`: what the client may have missed.
    Resume(u64),
    /// Everything up to and including this index was sent on this stream.
    Sent(u64),
}

/// What to send next: a whole snapshot or the deltas after `since`.
fn next_events(
    state: &AppStateRef,
    key: &ServiceKey,
    query: &Query,
    since: Since,
) -> (u64, Vec<WatchEvent>) {
    let c = state.node.catalog().read().expect("catalog lock");
    let deltas = match since {
        Since::Start => None,
        // An id from the future (e.g. after data loss) gets a snapshot.
        Since::Resume(id) if id > c.applied_index() => None,
        Since::Resume(id) => c.changes_to_resume(key, id).map(|ch| (id, ch)),
        Since::Sent(index) => c.changes_since(key, index).map(|ch| (index, ch)),
    };
    match deltas {
        Some((since, changes)) => {
            let last = changes.last().map_or(since, |c| c.index);
            let events = changes
                .into_iter()
                .map(|c| match c.change {
                    Change::Upsert(i) if query.matches(&i) => WatchEvent::Upsert {
                        index: c.index,
                        instance: Box::new((*i).clone()),
                    },
                    // No longer matching the filter is, for this watcher, a removal.
                    Change::Upsert(i) => WatchEvent::Delete {
                        index: c.index,
                        id: i.id.to_string(),
                    },
                    Change::Delete(id) => WatchEvent::Delete {
                        index: c.index,
                        id: id.to_string(),
                    },
                })
                .collect();
            (last, events)
        }
        None => {
            let (index, found) = c.query(key, query);
            let snapshot = WatchEvent::Snapshot {
                index,
                instances: found.iter().map(|i| (**i).clone()).collect(),
            };
            (index, vec![snapshot])
        }
    }
}

/// One watcher's place in the stream. The SSE body polls it directly (no
/// task or channel in between), so a change reaches a watcher through one
/// wake-up of its connection.
struct Watcher {
    state: AppStateRef,
    key: ServiceKey,
    query: Query,
    filter: String,
    since: Since,
    changed: tokio::sync::watch::Receiver<u64>,
    /// Shutdown and keep-alive ticks as streams: their wait stays
    /// registered between events, instead of being dropped and registered
    /// again (a lock on a list shared by every watcher) on each one.
    shutdown: WatchStream<bool>,
    keepalive: WatchStream<u64>,
    pending: Arc<[Bytes]>,
    next: usize,
    started: bool,
    _gauge: WatcherGauge,
}

impl Watcher {
    /// The frames that bring this watcher from `since` to the present.
    fn frames(&self) -> (u64, Arc<[Bytes]>) {
        let since = self.since;
        match since {
            // Where many watchers stand at once: encode once, share.
            Since::Start | Since::Sent(_) => {
                let (from, snapshot) = match since {
                    Since::Sent(i) => (i, false),
                    _ => (0, true),
                };
                let current = self
                    .state
                    .node
                    .catalog()
                    .read()
                    .expect("catalog lock")
                    .service_index(&self.key);
                let shared = self.state.frames.get_or_make(
                    &self.key,
                    &self.filter,
                    from,
                    snapshot,
                    current,
                    || {
                        let (last, events) =
                            next_events(&self.state, &self.key, &self.query, since);
                        SharedFrames {
                            from,
                            snapshot,
                            last,
                            frames: events.iter().map(sse).collect(),
                        }
                    },
                );
                (shared.last, shared.frames)
            }
            Since::Resume(_) => {
                let (last, events) = next_events(&self.state, &self.key, &self.query, since);
                (last, events.iter().map(sse).collect())
            }
        }
    }

    /// The next event to send; `None` ends the stream (shutdown).
    async fn next(&mut self) -> Option<Bytes> {
        loop {
            if let Some(e) = self.pending.get(self.next) {
                self.next += 1;
                return Some(e.clone());
            }
            if self.started {
                tokio::select! {
                    biased;
                    r = self.changed.changed() => if r.is_err() { return None },
                    _ = self.shutdown.next() => return None,
                    tick = self.keepalive.next() => {
                        // `None`: the ticker stopped, with the server.
                        tick?;
                        return Some(Bytes::from_static(KEEPALIVE_FRAME));
                    }
                }
            }
            self.started = true;
            let (last, frames) = self.frames();
            self.pending = frames;
            self.next = 0;
            self.since = Since::Sent(last);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_keepalive_ticks_once_per_interval_and_stops_with_the_server() {
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let mut ticks = spawn_keepalive(stop_rx);
        let start = tokio::time::Instant::now();
        ticks.changed().await.unwrap();
        assert_eq!(start.elapsed(), KEEPALIVE_INTERVAL);
        ticks.changed().await.unwrap();
        assert_eq!(start.elapsed(), KEEPALIVE_INTERVAL * 2);
        assert_eq!(*ticks.borrow(), 2);
        stop_tx.send(true).unwrap();
        assert!(ticks.changed().await.is_err(), "ticker ends at shutdown");
    }

    #[test]
    fn an_event_is_one_whole_sse_frame() {
        let frame = sse(&WatchEvent::Delete {
            index: 42,
            id: "i-1".into(),
        });
        assert_eq!(
            &frame[..],
            b"event: delete\nid: 42\ndata: {\"type\":\"delete\",\"index\":42,\"id\":\"i-1\"}\n\n"
        );
    }
}
