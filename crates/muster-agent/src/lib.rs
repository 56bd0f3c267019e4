//! The composition root: the one place where the registry is opened and
//! every front-end is mounted on it. A new front-end (a Consul-compatible
//! API, DNS, a gateway) is a crate of its own that takes a
//! [`muster_registry::Registry`] and is started here, on its own listener.
//!
//! [`run`] is what `muster agent` does; tests and benchmarks call it on a
//! listener bound to port 0.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod audit;
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
    /// The registry's store failed (a full disk, an I/O error) and the
    /// agent stopped so that it is restarted on its intact data: by its
    /// supervisor, or by hand. `muster agent` exits with status 75.
    #[error("{0}")]
    Restart(String),
}

/// Once the disk is full, how often the agent tries whether the data
/// directory takes a write again (nothing announces freed space).
const STORAGE_POLL: std::time::Duration = std::time::Duration::from_millis(500);

/// Waits until the registry's store fails; then, for a full disk, until
/// the data directory can take a write again (reads are served meanwhile,
/// writes refused); returns why the agent must restart.
async fn storage_restart(registry: Registry, data_dir: std::path::PathBuf) -> String {
    let failure = registry.unwritable().await;
    if matches!(failure, muster_registry::RegistryError::ShuttingDown) {
        // The registry stopped for another reason: nothing to restart for.
        return std::future::pending().await;
    }
    let full = matches!(
        failure,
        muster_registry::RegistryError::Unwritable { full: true, .. }
    );
    if !full {
        tracing::error!(error = %failure, "writes can no longer be made durable; stopping");
        return format!("{failure}; stopped so that muster restarts on its data");
    }
    tracing::error!(
        error = %failure,
        "the disk is full: writes are refused, reads go on; muster restarts once space is freed"
    );
    let probe = data_dir.join(".muster-space-probe");
    loop {
        tokio::time::sleep(STORAGE_POLL).await;
        let p = probe.clone();
        let fits = tokio::task::spawn_blocking(move || {
            use std::io::Write;
            let ok = std::fs::File::create(&p)
                .and_then(|mut f| {
                    f.write_all(&[0u8; 1 << 20])?;
                    f.sync_all()
                })
                .is_ok();
            let _ = std::fs::remove_file(&p);
            ok
        })
        .await
        .unwrap_or(false);
        if fits {
            tracing::warn!(
                "disk space is back: stopping so that muster restarts on its intact data"
            );
            return "the disk was full and has room again; stopped so that muster restarts on \
                    its intact data (every acknowledged write is there)"
                .to_string();
        }
    }
}

/// A started agent, as `on_ready` sees it.
pub struct Started {
    /// Address of the HTTP API.
    pub addr: SocketAddr,
    /// Whether it is served over TLS (`https://`).
    pub tls: bool,
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
    let tls = match config.tls_files().map_err(AgentError::Config)? {
        Some(files) => Some(
            muster_http::tls::Tls::load(files).map_err(|e| AgentError::Config(e.to_string()))?,
        ),
        None => None,
    };
    let cluster_tls = match config.cluster_tls_files().map_err(AgentError::Config)? {
        Some(files) => Some(
            muster_tls::MutualTls::load(files).map_err(|e| AgentError::Config(e.to_string()))?,
        ),
        None => None,
    };
    let audit = match &config.audit_file {
        None => None,
        Some(path) => Some(std::sync::Arc::new(audit::AuditFile::open(path).map_err(
            |e| {
                AgentError::Config(format!(
                    "cannot open the audit file {}: {e}",
                    path.display()
                ))
            },
        )?)),
    };
    let addr = http.local_addr()?;
    // The metrics recorder first, so that every metric the registry makes
    // is recorded.
    muster_http::metrics::handle();
    let registry = match config.cluster(addr) {
        None => Registry::open(config.registry()).await?,
        Some(mut cluster) => {
            cluster.tls = cluster_tls.clone();
            let listener = TcpListener::bind(config.cluster_addr).await?;
            tracing::info!(
                cluster_addr = %config.cluster_addr,
                advertised = cluster.peers.get(&config.node_id).map(String::as_str).unwrap_or(""),
                tls = cluster.tls.is_some(),
                node_id = config.node_id,
                "cluster RPC listening"
            );
            Registry::open_cluster(config.registry(), cluster, listener).await?
        }
    };
    if let Some(audit) = audit {
        registry.set_audit_sink(audit);
    }
    on_ready(&Started {
        addr,
        tls: tls.is_some(),
        registry: registry.clone(),
    });
    let reloader = (tls.is_some() || cluster_tls.is_some())
        .then(|| tokio::spawn(reload_on_sighup(tls.clone(), cluster_tls)));
    tracing::info!(%addr, data_dir = %config.data_dir.display(), "muster is serving");
    let (restart_tx, restart_rx) = tokio::sync::oneshot::channel();
    let watcher = tokio::spawn({
        let (registry, dir) = (registry.clone(), config.data_dir.clone());
        async move {
            let _ = restart_tx.send(storage_restart(registry, dir).await);
        }
    });
    let (restart_tx2, mut restart_rx2) = tokio::sync::oneshot::channel();
    let stop = async move {
        tokio::select! {
            () = shutdown => {}
            Ok(why) = restart_rx => { let _ = restart_tx2.send(why); }
        }
    };
    let served = muster_http::serve(http, registry.clone(), config.http_limits(), tls, stop).await;
    watcher.abort();
    if let Some(r) = reloader {
        r.abort();
    }
    let restart = restart_rx2.try_recv().ok();
    let stopped = registry.shutdown().await;
    if let Some(why) = restart {
        return Err(AgentError::Restart(why));
    }
    stopped?;
    tracing::info!("muster stopped");
    served.map_err(AgentError::Io)
}

/// Reads the TLS files again on every SIGHUP, the HTTP listener's and the
/// cluster port's, each all or nothing: a set with a file that does not
/// load leaves that listener's configuration in use and is logged.
async fn reload_on_sighup(
    http: Option<std::sync::Arc<muster_http::tls::Tls>>,
    cluster: Option<std::sync::Arc<muster_tls::MutualTls>>,
) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut hup = match signal(SignalKind::hangup()) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGHUP: TLS files are not reloaded");
                return;
            }
        };
        while hup.recv().await.is_some() {
            if let Some(tls) = &http {
                reloaded("http", &tls.files().cert, tls.reload());
            }
            if let Some(tls) = &cluster {
                reloaded("cluster", &tls.files().cert, tls.reload());
            }
        }
    }
    #[cfg(not(unix))]
    let _ = (http, cluster);
}

/// Counts and logs one listener's reload.
#[cfg(unix)]
fn reloaded(
    listener: &'static str,
    cert: &std::path::Path,
    result: Result<(), muster_tls::TlsError>,
) {
    match result {
        Ok(()) => {
            metrics::counter!("muster_tls_reloads_total", "listener" => listener, "result" => "ok")
                .increment(1);
            tracing::info!(listener, cert = %cert.display(), "SIGHUP: TLS files reloaded");
        }
        Err(e) => {
            metrics::counter!("muster_tls_reloads_total", "listener" => listener, "result" => "error")
                .increment(1);
            tracing::error!(listener, error = %e, "SIGHUP: TLS files not reloaded; the previous ones stay in use");
        }
    }
}
