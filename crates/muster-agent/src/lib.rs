//! The composition root: the one place where the registry is opened and
//! every front-end is mounted on it. A new front-end (a Consul-compatible
//! API, DNS, a gateway) is a crate of its own that takes a
//! [`muster_registry::Registry`] and is started here, on its own listener.
//!
//! [`run`] is what `muster agent` does; tests and benchmarks call it on a
//! listener bound to port 0.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod config;

use std::future::Future;
use std::net::SocketAddr;

use muster_registry::{RaftError, Registry, StartError};
use tokio::net::TcpListener;

pub use config::Config;

/// Why the agent could not start, or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The configuration is invalid.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The registry could not start.
    #[error(transparent)]
    Start(#[from] StartError),
    /// The registry did not stop cleanly.
    #[error("the registry did not stop cleanly")]
    Stop(#[from] RaftError),
    /// A listener failed.
    #[error("listener failed")]
    Io(#[from] std::io::Error),
}

/// A started agent, as `on_ready` sees it.
pub struct Started {
    /// Address of the HTTP API.
    pub addr: SocketAddr,
    /// The registry, for tests and embedding.
    pub registry: Registry,
}

/// Opens the registry, mounts the HTTP API on `http`, calls `on_ready`,
/// and serves until `shutdown` resolves; then ends long polls and
/// watches, waits for open requests and stops the registry.
pub async fn run(
    http: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
    on_ready: impl FnOnce(&Started) + Send,
) -> Result<(), AgentError> {
    config.validate().map_err(AgentError::Config)?;
    let addr = http.local_addr()?;
    // The metrics recorder first, so that every metric the registry makes
    // is recorded.
    muster_http::metrics::handle();
    let registry = Registry::open(config.registry()).await?;
    on_ready(&Started {
        addr,
        registry: registry.clone(),
    });
    tracing::info!(%addr, data_dir = %config.data_dir.display(), "muster is serving");
    let served = muster_http::serve(http, registry.clone(), config.http_limits(), shutdown).await;
    registry.shutdown().await?;
    tracing::info!("muster stopped");
    served.map_err(AgentError::Io)
}
