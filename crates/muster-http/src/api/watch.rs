//! `GET /v1/watch`: Server-Sent Events of one service, encoding the
//! registry's typed watch ([`muster_registry::Watch`]): a snapshot first,
//! then `upsert`/`delete` deltas, each with `id:` = the index. A client that
//! reconnects with `Last-Event-ID` gets what it missed, a fresh snapshot
//! when the service's history no longer reaches back that far, or, when it
//! missed nothing, a `current` event at once (so a client that waits for an
//! event to know it is connected and fresh does not wait for a change).
//! The registry's notes on events that share an index apply.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures::StreamExt;
use muster_registry::{ServiceKey, Watch};
use muster_types::{ErrorBody, WatchEvent, validate_service_name};
use tokio_stream::wrappers::WatchStream;

use super::instances::parse_query;
use super::{Call, Params};
use crate::HttpStateRef;
use crate::error::ApiError;
use crate::limit::{Peer, Permit};
use crate::wire;

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
pub(crate) const KEEPALIVE_FRAME: &[u8] = b": \n\n";

/// Watch a service.
#[utoipa::path(get, path = "/v1/watch", tag = "watch",
    params(("service" = String, Query, description = "Service to watch"),
           ("namespace" = Option<String>, Query, description = "Namespace"),
           ("tag" = Option<Vec<String>>, Query, description = "Filter, as for discovery"),
           ("meta" = Option<Vec<String>>, Query, description = "Filter, as for discovery"),
           ("version" = Option<String>, Query, description = "Filter, as for discovery"),
           ("zone" = Option<String>, Query, description = "Filter, as for discovery"),
           ("health" = Option<String>, Query, description = "Filter, as for discovery"),
           ("Last-Event-ID" = Option<u64>, Header, description = "Resume from this index: what came after it, and again the events that share it; a `current` event at once when nothing was missed")),
    responses((status = 200, description = "text/event-stream of WatchEvent (event names snapshot, upsert, delete, current)", body = WatchEvent, content_type = "text/event-stream"),
              (status = 400, description = "Invalid parameter", body = ErrorBody),
              (status = 429, description = "`too_many_watches`: the caps on open watches (in all, or from this address) are reached; or `rate_limited`, over the request-rate limit; header Retry-After", body = ErrorBody)))]
pub async fn watch(
    State(state): State<HttpStateRef>,
    Call(caller): Call,
    Peer(peer): Peer,
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
    let last_id = headers
        .get("last-event-id")
        .map(parse_last_event_id)
        .transpose()?;
    let permit = state.caps.watches.acquire(peer)?;
    let watch = state.registry.watch(&caller, &key, query, last_id)?;
    let stream = SseStream {
        _permit: permit,
        keepalive: WatchStream::from_changes(state.keepalive.clone()),
        state,
        watch,
        pending: Arc::from(Vec::new()),
        next: 0,
        _gauge: WatcherGauge::new(),
    };
    // Shared frames go out as they are: each watcher's body hands hyper a
    // reference-counted `Bytes`, no copy and no per-watcher timer.
    let events = futures::stream::unfold(stream, |mut w| async move {
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

/// The index in a `Last-Event-ID` header: the decimal `id` of an event
/// this server sent, surrounding whitespace allowed.
pub fn parse_last_event_id(value: &HeaderValue) -> Result<u64, ApiError> {
    value
        .to_str()
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .ok_or_else(|| {
            ApiError::bad_param(
                "Last-Event-ID",
                "Last-Event-ID must be an index (a non-negative integer)",
            )
        })
}

/// The wire form of a registry watch event.
pub(crate) fn wire(e: &muster_registry::WatchEvent) -> WatchEvent {
    use muster_registry::WatchEvent as E;
    match e {
        E::Snapshot { index, instances } => WatchEvent::Snapshot {
            index: *index,
            instances: instances.iter().map(|i| wire::instance(i)).collect(),
        },
        E::Upsert { index, instance } => WatchEvent::Upsert {
            index: *index,
            instance: Box::new(wire::instance(instance)),
        },
        E::Delete { index, id } => WatchEvent::Delete {
            index: *index,
            id: id.to_string(),
        },
        E::Current { index } => WatchEvent::Current { index: *index },
    }
}

/// One watcher's SSE body. It polls the registry's watch directly (no task
/// or channel in between), so a change reaches a watcher through one wake-up
/// of its connection.
struct SseStream {
    state: HttpStateRef,
    watch: Watch,
    /// Keep-alive ticks as a stream: its wait stays registered between
    /// events instead of being made again (a lock on a list shared by every
    /// watcher) on each one.
    keepalive: WatchStream<u64>,
    pending: Arc<[Bytes]>,
    next: usize,
    _gauge: WatcherGauge,
    /// The watch's place in the caps, freed when the body is dropped.
    _permit: Permit,
}

impl SseStream {
    /// The next frame to send; `None` ends the stream (shutdown).
    async fn next(&mut self) -> Option<Bytes> {
        loop {
            if let Some(e) = self.pending.get(self.next) {
                self.next += 1;
                return Some(e.clone());
            }
            tokio::select! {
                biased;
                batch = self.watch.next() => {
                    let batch = batch?;
                    let encode = |events: &[muster_registry::WatchEvent]| {
                        events.iter().map(|e| sse(&wire(e))).collect::<Arc<[Bytes]>>()
                    };
                    self.pending = if batch.shared {
                        self.state.frames.get_or_encode(&batch.events, encode)
                    } else {
                        encode(&batch.events)
                    };
                    self.next = 0;
                }
                tick = self.keepalive.next() => {
                    // `None`: the ticker stopped, with the server.
                    tick?;
                    return Some(Bytes::from_static(KEEPALIVE_FRAME));
                }
            }
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
