//! Rust client of the muster service registry.
//!
//! A service adds it to register itself and to find its peers:
//!
//! ```no_run
//! use muster_client::{Client, InstanceSpec, Strategy};
//!
//! # async fn f() -> muster_client::Result<()> {
//! let client = Client::builder().addrs(["http://127.0.0.1:7700"]).build()?;
//!
//! // Self-registration: kept alive in the background, re-registered if the
//! // registry loses it, removed on SIGTERM/ctrl-c.
//! let _me = client
//!     .register(InstanceSpec::new("orders", "orders-1", "10.0.0.7", 8080).tag("v2"))
//!     .await?;
//! tokio::spawn(client.deregister_on_shutdown());
//!
//! // Discovery from a local cache kept fresh by a watch.
//! let payments = client.discover("payments").tag("v2").version("^1.4");
//! let snapshot = payments.get().await?;
//! println!("{} instances, {:?} old", snapshot.len(), snapshot.age());
//!
//! // Load balancing over the same cache.
//! let balancer = payments.balancer(Strategy::PowerOfTwoChoices).prefer_zone("eu-1a");
//! let pick = balancer.pick().await?;
//! println!("calling http://{}/pay", pick.authority());
//! # Ok(()) }
//! ```
//!
//! # Map of the crate
//!
//! - [`Client`] ([`ClientBuilder`]): registry addresses with failover and
//!   jittered back-off, a namespace, timeouts.
//! - Registration ([`Client::register`], [`Registration`], [`LeaseStatus`]):
//!   one lease per client holds every registration; it is renewed about every
//!   third of its TTL; when the registry says the lease is unknown the client
//!   creates a new one and registers everything again.
//!   [`Client::connection_state`] ([`ConnectionState`]) says whether the
//!   registry is reached, suspended or lost.
//! - Discovery ([`Client::discover`], [`Discovery`], [`Snapshot`],
//!   [`Watcher`]): one cache entry per query; all entries of a client are
//!   kept fresh by one multiplexed watch connection (`POST /v1/watch`,
//!   Server-Sent Events, each query resumed by its own index; more than
//!   one only past [`ClientBuilder::watch_queries_per_stream`] queries, or
//!   for a moment while lookups are added). Stale answers carry their age
//!   until the maximum staleness; after a reconnect an answer is fresh
//!   again once the registry confirmed its query (within about a second of
//!   the registry being back). Lookups unused for
//!   [`ClientBuilder::lookup_idle_timeout`] are dropped from the cache and
//!   the stream. Watches have a connection pool of their own, so lease
//!   renewal never waits behind them.
//! - Checks ([`HealthCheck`], [`Registration::report`],
//!   [`Registration::set_maintenance`]): HTTP, TCP, gRPC and TTL checks on
//!   a registration, TTL reports and maintenance, all kept across
//!   re-registrations.
//! - Balancing ([`Balancer`], [`Strategy`], [`Pick`]): round robin, random,
//!   weighted, power of two choices, least outstanding requests, zone
//!   preference, passive ejection; custom rules through [`Choose`].
//! - [`Api`]: plain calls, one per route (the CLI uses them), including
//!   [`Api::watch`] and [`Api::watch_many`] ([`QueryEvents`]).
//! - `tower` feature: [`Discovery::discover_services`], a
//!   `tower::discover::Discover` stream for `tower::balance` and tonic.
//! - [`metrics`]: names of the metrics recorded through the `metrics` crate.
//! - Tracing: every registry call is one `muster.registry` span (info level)
//!   described after OpenTelemetry's HTTP client conventions (`otel.name`
//!   `PUT /v1/services/{service}/instances/{id}`, `otel.kind` client,
//!   `http.request.method`, `url.template`, `server.address`,
//!   `http.response.status_code`, `http.request.resend_count`, `error.type`
//!   and an error status), so a `tracing-opentelemetry` layer in the
//!   program exports them as OpenTelemetry spans; without a subscriber they
//!   cost nothing. Spans never carry instance ids or other identifiers in
//!   their names.
//! - [`Error`]: the one error type.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod api;
mod balance;
mod cache;
mod checks;
mod config;
mod discovery;
mod error;
mod lease;
pub mod metrics;
mod query;
mod sse;
#[cfg(feature = "tower")]
mod tower;
mod transport;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

pub use api::{Api, QueryEvents, WatchEvents};
pub use balance::{Balancer, Candidate, Choose, Pick, Strategy};
pub use cache::Snapshot;
pub use checks::{CheckStatus, HealthCheck};
pub use config::{Backoff, ClientBuilder, Timeouts};
pub use discovery::{Discovery, Watcher};
pub use error::{Error, Result};
pub use lease::{ConnectionState, InstanceSpec, LeaseStatus, Registration};
pub use muster_types as types;
pub use query::{HealthFilter, Query};
#[cfg(feature = "tower")]
pub use tower::ServiceDiscover;

use crate::cache::Cache;
use crate::config::Settings;
use crate::lease::Leases;
use crate::transport::Transport;

/// A connection to the registry: registrations, cached discovery and plain
/// API calls. Cheap to clone; clones share everything. Background tasks
/// (lease renewal, watches) stop when the last clone and the last
/// [`Registration`] are dropped.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    settings: Arc<Settings>,
    api: Api,
    leases: Arc<Leases>,
    cache: Cache,
    /// Dropped with the client: every background task watches it.
    stop: watch::Sender<()>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("addrs", &self.inner.settings.addrs)
            .field("namespace", &self.inner.settings.namespace)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// Starts building a client.
    pub fn builder() -> ClientBuilder {
        ClientBuilder::default()
    }

    fn from_settings(settings: Arc<Settings>) -> Result<Self> {
        let transport = Arc::new(Transport::new(settings.clone())?);
        let api = Api { transport };
        let leases = Arc::new(Leases::new(api.clone(), settings.lease_ttl));
        Ok(Client {
            inner: Arc::new(Inner {
                settings,
                api,
                leases,
                cache: Cache::default(),
                stop: watch::channel(()).0,
            }),
        })
    }

    /// Plain API calls (no cache, no background work).
    pub fn api(&self) -> &Api {
        &self.inner.api
    }

    /// The namespace of every call.
    pub fn namespace(&self) -> &str {
        &self.inner.settings.namespace
    }

    /// Registers an instance on the client's lease (created on first use) and
    /// keeps it alive until [`Registration::deregister`], the handle's drop,
    /// or [`Client::shutdown`].
    pub async fn register(&self, spec: InstanceSpec) -> Result<Registration> {
        let instance = self.inner.leases.register(&spec, &self.inner.stop).await?;
        Ok(Registration::new(self.clone(), instance))
    }

    /// The services of the namespace, with their instance counts by health
    /// (straight from the registry, not cached).
    pub async fn services(&self) -> Result<muster_types::ServicesResponse> {
        self.inner.api.services().await
    }

    /// The client's session with the registry ([`ConnectionState`]:
    /// idle, connected, suspended, lost), as its lease renewals see it;
    /// wait on changes to react to a registry going away and coming back.
    pub fn connection_state(&self) -> watch::Receiver<ConnectionState> {
        self.inner.leases.connection()
    }

    /// The lease and its renewal counters; changes as renewals happen.
    pub fn lease_status(&self) -> watch::Receiver<LeaseStatus> {
        self.inner.leases.status()
    }

    /// Removes every registration of this client at once, by revoking its
    /// lease. Later registrations start a new lease.
    pub async fn shutdown(&self) -> Result<()> {
        self.inner.leases.shutdown().await
    }

    /// A future that waits for SIGTERM or ctrl-c, then removes every
    /// registration ([`Client::shutdown`]). Spawn it, or hand it to a server
    /// as its graceful-shutdown signal, e.g. axum's
    /// `serve(..).with_graceful_shutdown(client.deregister_on_shutdown())`,
    /// so a graceful stop never leaves a stale entry.
    pub fn deregister_on_shutdown(&self) -> impl Future<Output = ()> + Send + 'static {
        let client = self.clone();
        async move {
            shutdown_signal().await;
            if let Err(e) = client.shutdown().await {
                tracing::warn!(error = %e, "deregistration on shutdown failed; the lease will expire");
            }
        }
    }

    /// A discovery query for `service`; add filters, then
    /// [`get`](Discovery::get) the answer from the local cache.
    pub fn discover(&self, service: impl Into<String>) -> Discovery {
        Discovery::new(self.clone(), Query::new(service))
    }

    /// A discovery query from a prepared [`Query`].
    pub fn query(&self, query: Query) -> Discovery {
        Discovery::new(self.clone(), query)
    }

    /// How long a first lookup may wait for its first snapshot.
    fn first_wait(&self) -> Duration {
        let s = &self.inner.settings;
        s.timeouts
            .request
            .saturating_mul(s.backoff.attempts)
            .saturating_add(s.backoff.max)
    }
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
