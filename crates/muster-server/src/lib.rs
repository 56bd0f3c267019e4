//! The muster registry server.
//!
//! - [`serve`] runs the server on a bound listener until a shutdown future
//!   resolves; tests bind port 0 and call it directly.
//! - [`config`]: the one typed configuration.
//! - [`api`]: the HTTP API v1 routes; [`error`] maps every failure to a
//!   status and a stable JSON code in one place.
//! - [`leases`]: lease timers on the leader (renewals never touch the log).
//! - [`hub`]: per-service wake-ups for blocking queries and watches.
//! - [`cache`]: pre-serialised discovery answers.
//! - [`metrics`] and [`openapi`]: `/metrics` and `/v1/openapi.json`.
#![forbid(unsafe_code)]

pub mod api;
pub mod cache;
pub mod checks;
pub mod config;
pub mod error;
pub mod hub;
pub mod leases;
pub mod metrics;
pub mod openapi;
pub mod state;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use muster_raft::{Node, RaftConfig};
use tokio::net::TcpListener;
use tokio::sync::watch;

pub use config::Config;

use crate::hub::Hub;
use crate::leases::LeaseManager;
use crate::state::{AppState, Observer};

/// Shared state as handlers receive it.
pub type AppStateRef = Arc<AppState>;

/// Why the server could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The configuration is invalid.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The storage or consensus layer failed.
    #[error("storage: {0}")]
    Raft(#[from] muster_raft::RaftError),
    /// A socket failed.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
}

/// A started server: its state, for tests and embedding.
pub struct Started {
    /// Address the HTTP API listens on.
    pub addr: SocketAddr,
    /// Shared state (catalog, leases, ...).
    pub state: AppStateRef,
}

/// Opens the store, waits until this node leads and has replayed its log,
/// then serves HTTP on `listener` until `shutdown` resolves. `on_ready` is
/// called once the API is about to accept requests.
pub async fn serve(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
    on_ready: impl FnOnce(&Started) + Send,
) -> Result<(), ServerError> {
    config.validate().map_err(ServerError::Config)?;
    let addr = listener.local_addr()?;
    let metrics = crate::metrics::handle();
    let hub = Arc::new(Hub::default());
    let leases = Arc::new(LeaseManager::new(
        config.self_preservation_threshold,
        config.self_preservation_min_leases,
    ));
    let (reconcile_tx, mut reconcile_rx) = tokio::sync::mpsc::unbounded_channel();
    let observer = Arc::new(Observer {
        hub: hub.clone(),
        leases: leases.clone(),
        reconcile: reconcile_tx,
    });
    // HTTPS health checks use rustls; exactly one crypto provider is built in.
    let _ = rustls::crypto::ring::default_provider().install_default();
    std::fs::create_dir_all(&config.data_dir)?;
    let node = Node::open(
        RaftConfig {
            node_id: config.node_id,
            data_dir: config.data_dir.clone(),
            snapshot_logs: config.snapshot_logs,
            snapshot_commands: config.snapshot_commands,
        },
        observer,
    )
    .await?;
    node.wait_ready(config.startup_timeout).await?;

    let (stop_tx, stop_rx) = watch::channel(false);
    let checks = checks::CheckRunner::new(node.clone(), config.check_concurrency);
    let reconciler = tokio::spawn({
        let checks = checks.clone();
        let mut stop = stop_rx.clone();
        async move {
            loop {
                let first = tokio::select! {
                    key = reconcile_rx.recv() => match key {
                        Some(k) => k,
                        None => return,
                    },
                    _ = stop.changed() => return,
                };
                // A batch of writes queues many requests at once, mostly for
                // the same services: merge them, then reconcile each once.
                let mut all = false;
                let mut keys: std::collections::HashMap<muster_catalog::ServiceKey, bool> =
                    std::collections::HashMap::new();
                let mut next = Some(first);
                while let Some(k) = next {
                    match k {
                        None => all = true,
                        Some((key, may)) => *keys.entry(key).or_default() |= may,
                    }
                    next = reconcile_rx.try_recv().ok();
                }
                if all {
                    checks.reconcile_all();
                } else {
                    for (key, may) in keys {
                        checks.reconcile_if_needed(&key, may);
                    }
                }
            }
        }
    });
    let keepalive = api::watch::spawn_keepalive(stop_rx.clone());
    let state = Arc::new(AppState {
        node: node.clone(),
        keepalive,
        hub,
        leases: leases.clone(),
        checks: checks.clone(),
        cache: Default::default(),
        frames: Default::default(),
        shutdown: stop_rx.clone(),
        metrics,
        config: config.clone(),
    });

    // Lease timers follow leadership: a new leader gives every lease a full TTL.
    let leader_task = tokio::spawn({
        let node = node.clone();
        let leases = leases.clone();
        let checks = checks.clone();
        let mut stop = stop_rx.clone();
        async move {
            let mut leader = node.leader_watch();
            loop {
                let is_leader = *leader.borrow_and_update();
                if is_leader {
                    leases.become_leader(&node.catalog().read().expect("catalog lock"));
                } else {
                    leases.step_down();
                }
                checks.set_leader(is_leader);
                tokio::select! {
                    r = leader.changed() => if r.is_err() { return },
                    _ = stop.changed() => return,
                }
            }
        }
    });
    let sweeper = tokio::spawn({
        let node = node.clone();
        leases::run_sweeper(
            leases.clone(),
            config.sweep_interval,
            stop_rx.clone(),
            move |cmd| {
                let node = node.clone();
                async move {
                    node.propose(cmd)
                        .await
                        .map(|a| a.index)
                        .map_err(|e| e.to_string())
                }
            },
        )
    });

    let app = api::router(state.clone());
    on_ready(&Started {
        addr,
        state: state.clone(),
    });
    tracing::info!(%addr, data_dir = %config.data_dir.display(), "muster is serving");
    let server = axum::serve(listener, app).with_graceful_shutdown(async move {
        shutdown.await;
        // End long polls and watches so graceful shutdown can finish.
        let _ = stop_tx.send(true);
    });
    let result = server.await;
    let _ = sweeper.await;
    let _ = leader_task.await;
    let _ = reconciler.await;
    checks.set_leader(false);
    node.shutdown().await?;
    tracing::info!("muster stopped");
    result.map_err(ServerError::Io)
}
