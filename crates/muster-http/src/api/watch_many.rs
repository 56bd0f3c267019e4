//! `POST /v1/watch`: many discovery queries over one Server-Sent Events
//! stream. The body names each query with a client-chosen `id`; every event
//! carries it (`{"query": "<id>", "type": ..., ...}`), so a client with a
//! thousand lookups holds one connection, not a thousand.
//!
//! Each query is one registry [`Watch`]: a snapshot, deltas, and on resume
//! (the query's own `index`, since one `Last-Event-ID` cannot resume
//! services whose events interleave) what it missed, a fresh snapshot when
//! the history no longer reaches back, or `current`. A resumed query that
//! missed changes gets them followed by `current`, so for every query the
//! rule is the same: it is up to date once it got a `snapshot` or a
//! `current` on this stream. Frames carry no `id:` line for the same reason.
//!
//! The set of queries is fixed for the life of the stream: to add or remove
//! one, open a new stream with the new set, each query resuming from the
//! index it reached, and close the old one.
//!
//! The queries' watches are polled as one `SelectAll`: a change to service
//! A wakes the connection and polls only A's watch. The JSON of shared
//! batches is encoded once (the [`crate::cache::FrameCache`] of multiplexed
//! frames) and spliced after a per-query prefix made when the stream opens,
//! so an event costs two reference-counted `Bytes` per watcher, no copy.

use std::collections::HashSet;
use std::convert::Infallible;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures::StreamExt;
use futures::stream::{BoxStream, SelectAll};
use muster_registry::{ServiceKey, Watch, WatchBatch};
use muster_types::{
    ErrorBody, QueryEvent, WatchQuery, WatchRequest, limits, validate_namespace,
    validate_service_name,
};
use tokio_stream::wrappers::WatchStream;

use super::instances::parse_query;
use super::watch::{KEEPALIVE_FRAME, wire};
use super::{Call, JsonBody, Params};
use crate::HttpStateRef;
use crate::error::ApiError;
use crate::limit::{Peer, Permit};
use crate::openapi::BodyErrors;

/// Counts open multiplexed streams and the queries they carry; lives as
/// long as the stream.
struct StreamGauge {
    queries: f64,
}

impl StreamGauge {
    fn new(queries: usize) -> Self {
        let queries = queries as f64;
        metrics::gauge!("muster_watch_streams").increment(1.0);
        metrics::gauge!("muster_watch_queries").increment(queries);
        metrics::counter!("muster_watch_streams_opened_total").increment(1);
        StreamGauge { queries }
    }
}

impl Drop for StreamGauge {
    fn drop(&mut self) {
        metrics::gauge!("muster_watch_streams").decrement(1.0);
        metrics::gauge!("muster_watch_queries").decrement(self.queries);
    }
}

/// Watch many queries over one stream.
#[utoipa::path(post, path = "/v1/watch", tag = "watch",
    params(("namespace" = Option<String>, Query, description = "Namespace of the queries that name none (default `default`)")),
    request_body = WatchRequest,
    description = "Many discovery queries over one Server-Sent Events stream. Each query of the body has a client-chosen `id` and the filters of discovery; every event is one SSE frame `event: <type>` with `data:` a QueryEvent, `{\"query\": \"<id>\", \"type\": \"snapshot\"|\"upsert\"|\"delete\"|\"current\", \"index\": ..., ...}` (the fields of the single-service watch's event, plus `query`). Frames have no `id:` line: resume per query instead, by giving each query the `index` of the last event received for it. A query without `index` starts with a `snapshot`; a resumed one gets what it missed followed by `current`, `current` alone when it missed nothing, or a fresh `snapshot` when its service's history no longer reaches back (or the index is from the future). A query is up to date once it got a `snapshot` or `current` on the stream. A comment (`: `) is sent every 15 s as keep-alive. The set of queries is fixed per stream: to add or remove one, open a new stream with the new set, each query resuming from its index, then close the old one. At most `watch_max_queries` (default 1024) queries and the 64 KiB body limit; every query is validated as the single watch's parameters are, errors naming the field as `queries[i].<name>`.",
    responses((status = 200, description = "text/event-stream of QueryEvent (event names snapshot, upsert, delete, current)", body = QueryEvent, content_type = "text/event-stream"),
              (status = 400, description = "Invalid body or query (`too_many_queries` past the limit)", body = ErrorBody),
              (status = 429, description = "`too_many_watches`: the caps on open watches (in all, or from this address) are reached; or `rate_limited`, over the request-rate limit; header Retry-After", body = ErrorBody),
              BodyErrors))]
pub async fn watch_many(
    State(state): State<HttpStateRef>,
    Call(caller): Call,
    Peer(peer): Peer,
    params: Params,
    JsonBody(req): JsonBody<WatchRequest>,
) -> Result<Response, ApiError> {
    params.only(&["namespace"])?;
    let namespace = params.namespace()?;
    if req.queries.is_empty() {
        return Err(ApiError::bad_field(
            "queries",
            "queries must name at least one query",
        ));
    }
    let max = state.max_watch_queries;
    if req.queries.len() > max {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "too_many_queries",
            format!(
                "{} queries in one watch; at most {max}: split them over several streams",
                req.queries.len()
            ),
        )
        .with_field("queries"));
    }
    let mut ids = HashSet::with_capacity(req.queries.len());
    let mut opened = Vec::with_capacity(req.queries.len());
    for (i, q) in req.queries.iter().enumerate() {
        let at = |e: ApiError| {
            let field = e.field.clone().unwrap_or_else(|| "query".into());
            let name = field.rsplit('.').next().unwrap_or(&field).to_string();
            e.with_field(format!("queries[{i}].{name}"))
        };
        validate_query_id(&q.id)
            .map_err(|m| ApiError::bad_field(&format!("queries[{i}].id"), m))?;
        if !ids.insert(q.id.as_str()) {
            return Err(ApiError::bad_field(
                &format!("queries[{i}].id"),
                format!("query id {:?} is used twice; ids must be unique", q.id),
            ));
        }
        let (key, query) = decode_query(q, namespace).map_err(at)?;
        opened.push((key, query, q.index));
    }
    // Every query is valid: only now open the watches, so a bad one opens
    // none. The whole stream counts as one watch in the caps.
    let permit = state.caps.watches.acquire(peer)?;
    let mut watches = SelectAll::new();
    let mut prefixes = Vec::with_capacity(opened.len());
    for (n, ((key, query, index), q)) in opened.into_iter().zip(&req.queries).enumerate() {
        let watch = state.registry.watch(&caller, &key, query, index)?;
        watches.push(follow(n, watch));
        prefixes.push(Prefixes::new(&q.id, index.is_some()));
    }
    let stream = MuxStream {
        keepalive: WatchStream::from_changes(state.keepalive.clone()),
        _gauge: StreamGauge::new(prefixes.len()),
        _permit: permit,
        state,
        watches,
        queries: prefixes,
        pending: Vec::new(),
    };
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

/// Checks a client-chosen query id: 1 to
/// [`limits::MAX_WATCH_QUERY_ID_LEN`] characters, no control characters.
fn validate_query_id(id: &str) -> Result<(), String> {
    if id.is_empty() {
        return Err("a query id must not be empty".into());
    }
    if id.chars().count() > limits::MAX_WATCH_QUERY_ID_LEN {
        return Err(format!(
            "a query id has at most {} characters",
            limits::MAX_WATCH_QUERY_ID_LEN
        ));
    }
    if id.chars().any(char::is_control) {
        return Err(format!("query id {id:?} contains a control character"));
    }
    Ok(())
}

/// A query of the body as the single watch's parameters would give it,
/// checked by the same rules.
fn decode_query(
    q: &WatchQuery,
    namespace: &str,
) -> Result<(ServiceKey, muster_registry::Query), ApiError> {
    let namespace = match &q.namespace {
        Some(ns) => {
            validate_namespace(ns)?;
            ns.as_str()
        }
        None => namespace,
    };
    validate_service_name(&q.service)?;
    let mut pairs: Vec<(String, String)> = Vec::new();
    pairs.extend(q.tag.iter().map(|t| ("tag".to_string(), t.clone())));
    pairs.extend(q.meta.iter().map(|m| ("meta".to_string(), m.clone())));
    for (k, v) in [
        ("version", &q.version),
        ("zone", &q.zone),
        ("health", &q.health),
    ] {
        if let Some(v) = v {
            pairs.push((k.to_string(), v.clone()));
        }
    }
    let query = parse_query(&Params(pairs))?;
    Ok((ServiceKey::new(namespace, &q.service), query))
}

/// One query's watch as a stream of `(query number, batch)`; `None` for the
/// batch (the registry shut down) ends it.
fn follow(n: usize, watch: Watch) -> BoxStream<'static, (usize, Option<WatchBatch>)> {
    futures::stream::unfold(Some(watch), move |w| async move {
        let mut w = w?;
        match w.next().await {
            Some(b) => Some(((n, Some(b)), Some(w))),
            None => Some(((n, None), None)),
        }
    })
    .boxed()
}

/// The start of every frame of one query, per event type, made once:
/// `event: upsert\ndata: {"query":"<id>",`. The shared encoding of the
/// event (its JSON without the opening brace) follows.
struct Prefixes {
    by_type: [Bytes; 4],
    /// Resumed and not yet confirmed: after its first batch of deltas a
    /// `current` follows.
    confirm: bool,
}

impl Prefixes {
    fn new(id: &str, resumed: bool) -> Self {
        let id = serde_json::to_string(id).expect("a string serialises");
        let make = |name: &str| Bytes::from(format!("event: {name}\ndata: {{\"query\":{id},"));
        Prefixes {
            by_type: [
                make("snapshot"),
                make("upsert"),
                make("delete"),
                make("current"),
            ],
            confirm: resumed,
        }
    }

    fn of(&self, e: &muster_registry::WatchEvent) -> Bytes {
        use muster_registry::WatchEvent as E;
        self.by_type[match e {
            E::Snapshot { .. } => 0,
            E::Upsert { .. } => 1,
            E::Delete { .. } => 2,
            E::Current { .. } => 3,
        }]
        .clone()
    }
}

/// The rest of an event's frame after its query's prefix: the event's JSON
/// without its opening brace, and the blank line.
fn body(e: &muster_registry::WatchEvent) -> Bytes {
    let json = serde_json::to_vec(&wire(e)).expect("wire types serialise");
    let mut out = Vec::with_capacity(json.len() + 1);
    out.extend_from_slice(&json[1..]);
    out.extend_from_slice(b"\n\n");
    Bytes::from(out)
}

fn encode(events: &[muster_registry::WatchEvent]) -> Arc<[Bytes]> {
    events.iter().map(body).collect()
}

/// One multiplexed SSE body: polls the queries' watches directly (no task
/// or channel between the registry and the socket).
struct MuxStream {
    state: HttpStateRef,
    watches: SelectAll<BoxStream<'static, (usize, Option<WatchBatch>)>>,
    queries: Vec<Prefixes>,
    keepalive: WatchStream<u64>,
    /// Chunks to send, in reverse order (popped from the end).
    pending: Vec<Bytes>,
    _gauge: StreamGauge,
    /// The stream's place in the caps, freed when the body is dropped.
    _permit: Permit,
}

impl MuxStream {
    /// The next chunk to send; `None` ends the stream (shutdown).
    async fn next(&mut self) -> Option<Bytes> {
        loop {
            if let Some(b) = self.pending.pop() {
                return Some(b);
            }
            tokio::select! {
                biased;
                item = self.watches.next() => {
                    let (n, batch) = item?;
                    // One watch ends only when the registry shuts down.
                    let batch = batch?;
                    self.queue(n, &batch);
                }
                tick = self.keepalive.next() => {
                    tick?;
                    return Some(Bytes::from_static(KEEPALIVE_FRAME));
                }
            }
        }
    }

    /// Queues the frames of one query's batch.
    fn queue(&mut self, n: usize, batch: &WatchBatch) {
        let bodies = if batch.shared {
            self.state.mux_frames.get_or_encode(&batch.events, encode)
        } else {
            encode(&batch.events)
        };
        let prefixes = &mut self.queries[n];
        let mut frames = Vec::with_capacity(bodies.len() * 2 + 2);
        for (e, b) in batch.events.iter().zip(bodies.iter()) {
            frames.push(prefixes.of(e));
            frames.push(b.clone());
        }
        if std::mem::take(&mut prefixes.confirm)
            && let Some(last) = batch.events.last()
            && matches!(
                last,
                muster_registry::WatchEvent::Upsert { .. }
                    | muster_registry::WatchEvent::Delete { .. }
            )
        {
            let current = muster_registry::WatchEvent::Current {
                index: last.index(),
            };
            frames.push(prefixes.of(&current));
            frames.push(body(&current));
        }
        frames.reverse();
        self.pending = frames;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_frame_is_the_query_prefix_then_the_shared_event() {
        let e = muster_registry::WatchEvent::Delete {
            index: 42,
            id: "i-1".into(),
        };
        let p = Prefixes::new("pay \"v2\"", false);
        let mut frame = p.of(&e).to_vec();
        frame.extend_from_slice(&body(&e));
        let text = String::from_utf8(frame).unwrap();
        assert_eq!(
            text,
            "event: delete\ndata: {\"query\":\"pay \\\"v2\\\"\",\"type\":\"delete\",\"index\":42,\"id\":\"i-1\"}\n\n"
        );
        let data = text.lines().nth(1).unwrap().strip_prefix("data: ").unwrap();
        let decoded: QueryEvent = serde_json::from_str(data).unwrap();
        assert_eq!(decoded.query, "pay \"v2\"");
        assert_eq!(
            decoded.event,
            muster_types::WatchEvent::Delete {
                index: 42,
                id: "i-1".into()
            }
        );
    }

    #[test]
    fn query_ids_are_bounded_and_printable() {
        assert!(validate_query_id("payments?tag=v2").is_ok());
        assert!(validate_query_id("").is_err());
        assert!(validate_query_id("a\nb").is_err());
        assert!(validate_query_id(&"x".repeat(limits::MAX_WATCH_QUERY_ID_LEN)).is_ok());
        assert!(validate_query_id(&"x".repeat(limits::MAX_WATCH_QUERY_ID_LEN + 1)).is_err());
    }
}
