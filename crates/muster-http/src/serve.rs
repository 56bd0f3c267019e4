//! The accept loop, with the limits that keep abusive connections from
//! starving everyone else: a cap on connections in all and per source
//! address ([`crate::limit`]), a cap on the streams of an HTTP/2
//! connection, a deadline for each request head (which also closes idle
//! keep-alive connections and trickling heads, slowloris) and one for each
//! request body, and the request-rate limit, checked before routing
//! ([`Edge`]).
//!
//! At the cap, a few more connections are still accepted, each for one
//! request and closed after it, and they answer only `/healthz` (everything
//! else gets 503 `too_many_connections`): a supervisor's probe keeps its
//! answer while the registry is full. Beyond those, connections are closed
//! at once.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::Request;
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tower::ServiceExt;

use crate::edge::Edge;
use crate::error::ApiError;
use crate::limit::{self, Cap, Conn, Kind, Rate, Source};
use crate::tls::Tls;

/// Connections accepted past the cap, for health probes only.
const OVERFLOW_CONNECTIONS: usize = 64;

/// How long a connection past the cap may take to send its request head: a
/// probe sends at once, and idle connections must not hold these places.
const OVERFLOW_HEADER_TIMEOUT: Duration = Duration::from_secs(1);

/// Limits of the HTTP listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Most connections served at once (watches and blocking queries
    /// included). Keep it below the process's file-descriptor limit.
    pub max_connections: usize,
    /// How long a connection may take to send a whole request head,
    /// counted from when the server starts waiting for it: a slow client
    /// (slowloris) and an idle keep-alive connection are both closed after
    /// it.
    pub header_timeout: Duration,
    /// How long a request body may take to arrive.
    pub body_timeout: Duration,
    /// Most queries one multiplexed watch (`POST /v1/watch`) carries;
    /// more is a 400 `too_many_queries`.
    pub max_watch_queries: usize,
    /// Most connections from one source address (an IPv6 /64) at once;
    /// past it, new ones are closed. 0: no per-address cap.
    pub max_connections_per_ip: usize,
    /// Most watches open at once (`GET /v1/watch` and `POST /v1/watch`
    /// streams, each counting one); past it, 429 `too_many_watches`.
    pub max_watches: usize,
    /// Most watches open at once from one source address. 0: no cap.
    pub max_watches_per_ip: usize,
    /// Most blocking queries (`index` + `wait`) parked at once; past it,
    /// 429 `too_many_blocking_queries`.
    pub max_blocking_queries: usize,
    /// Most blocking queries parked at once from one source address. 0:
    /// no cap.
    pub max_blocking_queries_per_ip: usize,
    /// Most concurrent streams (requests) on one HTTP/2 connection.
    pub http2_max_streams: u32,
    /// Requests a second allowed per token (per source address for
    /// requests without one), in a token bucket; past it, 429
    /// `rate_limited`. 0: off.
    pub rate_limit: u32,
    /// Requests a token or address may send at once above `rate_limit`
    /// (the bucket's size). 0: as many as `rate_limit`.
    pub rate_limit_burst: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 16_384,
            header_timeout: Duration::from_secs(30),
            body_timeout: Duration::from_secs(30),
            max_watch_queries: muster_types::limits::DEFAULT_MAX_WATCH_QUERIES,
            max_connections_per_ip: 512,
            max_watches: 16_384,
            max_watches_per_ip: 512,
            max_blocking_queries: 16_384,
            max_blocking_queries_per_ip: 512,
            http2_max_streams: 256,
            // Off: clients of a registry often share one address (a NAT, a
            // node's sidecars), and one service's heartbeats and lookups
            // can run to thousands a second; no rate suits everyone.
            rate_limit: 0,
            rate_limit_burst: 0,
        }
    }
}

impl Limits {
    /// Checks every field; the message names the field.
    pub fn validate(&self) -> Result<(), String> {
        if self.max_connections == 0 {
            return Err("max_connections must be at least 1".into());
        }
        if self.header_timeout.is_zero() {
            return Err("http_header_timeout must be more than 0".into());
        }
        if self.body_timeout.is_zero() {
            return Err("http_body_timeout must be more than 0".into());
        }
        if self.max_watch_queries == 0 {
            return Err("watch_max_queries must be at least 1".into());
        }
        if self.max_watches == 0 {
            return Err("max_watches must be at least 1".into());
        }
        if self.max_blocking_queries == 0 {
            return Err("max_blocking_queries must be at least 1".into());
        }
        if self.http2_max_streams == 0 {
            return Err("http2_max_streams must be at least 1".into());
        }
        if self.rate_limit == 0 && self.rate_limit_burst > 0 {
            return Err("rate_limit_burst needs rate_limit (a rate of 0 is off)".into());
        }
        Ok(())
    }
}

/// Serves `app` on `listener` within `limits` until `shutdown` resolves,
/// then stops accepting and waits for the open connections to finish.
///
/// With `tls`, every connection is a TLS one (there is no cleartext
/// fallback); its handshake must end within the header timeout.
pub async fn run(
    listener: TcpListener,
    app: Router,
    limits: Limits,
    tls: Option<Arc<Tls>>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let rate = Rate::new(limits.rate_limit, limits.rate_limit_burst);
    let full = Edge::with_rate(
        app.clone().layer(middleware::from_fn(health_only)),
        rate.clone(),
    );
    let app = Edge::with_rate(app, rate);
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let overflow = Arc::new(Semaphore::new(OVERFLOW_CONNECTIONS));
    // The cap in all is the semaphore's; this one counts per source.
    let per_source = Cap::new(Kind::Connections, usize::MAX, limits.max_connections_per_ip);
    let graceful = GracefulShutdown::new();
    // Where the stop is: see [`Phase`].
    let (phase_tx, phase) = tokio::sync::watch::channel(Phase::Serving);
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors, or a connection reset before
                    // it was accepted: wait a little rather than spin.
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let source = Source::of(peer.ip());
        // One source past its share is closed before it can take a place
        // (or an overflow place) from everyone else.
        let Ok(source_permit) = per_source.acquire(Some(source)) else {
            drop(stream);
            continue;
        };
        let (permit, service, keep_alive) = match permits.clone().try_acquire_owned() {
            Ok(permit) => (permit, app.clone(), true),
            Err(_) => match overflow.clone().try_acquire_owned() {
                Ok(permit) => {
                    metrics::counter!("muster_http_connections_refused_total", "how" => "health_only")
                        .increment(1);
                    limit::count_refusal("connections");
                    (permit, full.clone(), false)
                }
                Err(_) => {
                    metrics::counter!("muster_http_connections_refused_total", "how" => "closed")
                        .increment(1);
                    limit::count_refusal("connections");
                    drop(stream);
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let conn = Conn {
            body_timeout: limits.body_timeout,
            source,
        };
        let service = TowerToHyperService::new(service.map_request(move |r: Request<Incoming>| {
            let mut r = r.map(axum::body::Body::new);
            r.extensions_mut().insert(conn);
            r
        }));
        let header_timeout = if keep_alive {
            limits.header_timeout
        } else {
            limits.header_timeout.min(OVERFLOW_HEADER_TIMEOUT)
        };
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(header_timeout)
            .keep_alive(keep_alive);
        builder
            .http2()
            .max_concurrent_streams(limits.http2_max_streams);
        let watcher = graceful.watcher();
        let open = OpenConnection::new();
        let acceptor = tls.as_ref().map(|t| t.acceptor());
        let mut phase = phase.clone();
        tokio::spawn(async move {
            let _open = open;
            // hyper reads the first bytes to tell HTTP/1 from HTTP/2 with no
            // deadline of its own: a connection that sends nothing at all is
            // closed here, after the header timeout or as the server stops.
            let mut first = [0u8; 1];
            let peek = tokio::time::timeout(header_timeout, stream.peek(&mut first));
            let Some(peeked) = before(&mut phase, Phase::Stopping, peek).await else {
                return;
            };
            match peeked {
                Ok(Ok(n)) if n > 0 => {}
                _ => return,
            }
            let ended = match acceptor {
                None => {
                    let conn =
                        builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
                    before(&mut phase, Phase::Closing, watcher.watch(conn)).await
                }
                Some(acceptor) => {
                    let accept = tokio::time::timeout(header_timeout, acceptor.accept(stream));
                    let Some(handshake) = before(&mut phase, Phase::Stopping, accept).await else {
                        return;
                    };
                    let stream = match handshake {
                        Ok(Ok(s)) => s,
                        Ok(Err(e)) => {
                            metrics::counter!("muster_http_tls_handshake_failures_total")
                                .increment(1);
                            tracing::debug!(error = %e, "TLS handshake failed");
                            return;
                        }
                        Err(_) => {
                            metrics::counter!("muster_http_tls_handshake_failures_total")
                                .increment(1);
                            return;
                        }
                    };
                    let conn =
                        builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
                    before(&mut phase, Phase::Closing, watcher.watch(conn)).await
                }
            };
            // `None`: closed as the stop's drain ran out.
            if let Some(Err(e)) = ended {
                tracing::debug!(error = %e, "connection ended with an error");
            }
            drop((permit, source_permit));
        });
    }
    drop(listener);
    let _ = phase_tx.send(Phase::Stopping);
    if tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            "connections still open {DRAIN_TIMEOUT:?} after the stop began are closed \
             (a request head or body never finished, or a request outlived every bound)"
        );
        let _ = phase_tx.send(Phase::Closing);
    }
    Ok(())
}

/// How long a stop waits for open requests to finish before it closes
/// their connections. Beyond the longest a request normally takes: a
/// write waiting out an election and its forwarding is bounded at a few
/// seconds, and watches and blocking queries end as the stop begins. What
/// it cuts is a client that never finishes sending (its head or body is
/// bounded only by the 30 s header and body timeouts), so that a
/// supervisor's stop timeout (Kubernetes gives 30 s) is not overrun.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// `fut`'s output, or `None` (and `fut` dropped) once the stop reached
/// `phase`.
async fn before<T>(
    stop: &mut tokio::sync::watch::Receiver<Phase>,
    phase: Phase,
    fut: impl Future<Output = T>,
) -> Option<T> {
    tokio::select! {
        out = fut => Some(out),
        _ = stop.wait_for(|p| *p >= phase) => None,
    }
}

/// Where a stop is, as the connection tasks see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Phase {
    Serving,
    /// No more connections are accepted; one that has not sent its first
    /// byte (or finished its TLS handshake) is closed at once, since
    /// hyper's graceful shutdown reaches only connections handed to it;
    /// the others finish the request under way.
    Stopping,
    /// [`DRAIN_TIMEOUT`] has passed: the connections still open are closed.
    Closing,
}

/// Counts open connections (`muster_http_connections`) for as long as it
/// lives: one per accepted connection, moved into its task.
struct OpenConnection;

impl OpenConnection {
    fn new() -> Self {
        metrics::gauge!("muster_http_connections").increment(1.0);
        OpenConnection
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        metrics::gauge!("muster_http_connections").decrement(1.0);
    }
}

/// What a connection past the cap may do: ask whether the agent is up.
async fn health_only(req: Request, next: Next) -> Response {
    if req.uri().path() == "/healthz" {
        return next.run(req).await;
    }
    let mut res = ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "too_many_connections",
        "the registry serves as many connections as it is configured to; retry shortly",
    )
    .into_response();
    res.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    res
}
