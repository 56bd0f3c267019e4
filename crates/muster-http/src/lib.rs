//! The native HTTP API (v1) of muster: a thin front-end on the registry.
//!
//! It decodes requests into the registry's typed operations, encodes what
//! they return, and maps every [`muster_registry::RegistryError`] to a status
//! and a stable JSON code in one place ([`error`]). It touches no catalog,
//! lock or raft node; what it keeps of its own are bytes: discovery answers
//! per service index and canonical query, and watch frames per shared batch
//! ([`cache`]).
//!
//! - [`router`] builds the routes for a [`Registry`]; [`serve`] runs them on
//!   a listener until a shutdown future resolves, behind [`edge`]'s checks
//!   of the target and header sizes.
//! - [`api`]: the routes; [`metrics`] and [`openapi`]: `/metrics` and
//!   `/v1/openapi.json`.
#![forbid(unsafe_code)]

pub mod api;
pub mod cache;
pub mod edge;
pub mod error;
pub mod limit;
pub mod metrics;
pub mod openapi;
pub mod serve;
pub mod tls;
mod wire;

use std::future::Future;
use std::sync::Arc;

use muster_registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// What every handler can reach.
pub struct HttpState {
    /// The registry every route calls.
    pub registry: Registry,
    /// Encoded discovery answers.
    pub cache: cache::ReadCache,
    /// Encoded watch frames, shared by the watchers of a batch.
    pub frames: cache::FrameCache,
    /// The same for multiplexed watches, whose frames are encoded
    /// differently (a query's prefix, then the shared event).
    pub mux_frames: cache::FrameCache,
    /// Most queries one multiplexed watch carries.
    pub max_watch_queries: usize,
    /// Caps on open watches and parked blocking queries.
    pub(crate) caps: limit::Caps,
    /// Flips to `true` when the registry shuts down, ending watches.
    pub shutdown: watch::Receiver<bool>,
    /// Ticks every [`api::watch::KEEPALIVE_INTERVAL`]: each watch then sends
    /// a comment (one timer for all watches, not one each).
    pub keepalive: watch::Receiver<u64>,
    /// Renders `/metrics`.
    pub metrics: metrics_exporter_prometheus::PrometheusHandle,
}

/// Shared state as handlers receive it.
pub type HttpStateRef = Arc<HttpState>;

/// The routes of the API on `registry`. Call [`metrics::handle`] first,
/// before the registry is opened, so every metric is recorded.
pub fn router(registry: Registry) -> axum::Router {
    router_with(registry, &serve::Limits::default())
}

/// [`router`] with the limits the routes enforce themselves (queries per
/// multiplexed watch).
pub fn router_with(registry: Registry, limits: &serve::Limits) -> axum::Router {
    let shutdown = registry.shutdown_signal();
    let state = Arc::new(HttpState {
        keepalive: api::watch::spawn_keepalive(shutdown.clone()),
        shutdown,
        registry,
        cache: Default::default(),
        frames: Default::default(),
        mux_frames: Default::default(),
        max_watch_queries: limits.max_watch_queries,
        caps: limit::Caps::new(limits),
        metrics: metrics::handle(),
    });
    api::router(state)
}

/// Serves the API on `listener` within `limits` until `shutdown` resolves,
/// then lets the registry end its long polls and watches and waits for open
/// requests. Requests whose target or headers are too large are refused
/// before routing ([`edge`]).
pub async fn serve(
    listener: TcpListener,
    registry: Registry,
    limits: serve::Limits,
    tls: Option<Arc<tls::Tls>>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = router_with(registry.clone(), &limits);
    serve::run(listener, app, limits, tls, async move {
        shutdown.await;
        registry.begin_shutdown();
    })
    .await
}
