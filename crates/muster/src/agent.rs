//! `muster agent`: configuration (file, then environment, then flags),
//! logging, signals, and the server.

use anyhow::{Context, bail};
use muster_agent::Config;
use tracing_subscriber::EnvFilter;

use crate::cli::AgentArgs;

fn load_config(args: &AgentArgs) -> anyhow::Result<Config> {
    let mut cfg = match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read config file {}", path.display()))?;
            toml::from_str::<Config>(&text)
                .with_context(|| format!("invalid config file {}", path.display()))?
        }
        None => Config::default(),
    };
    if let Some(a) = args.http_addr {
        cfg.http_addr = a;
    }
    if let Some(d) = &args.data_dir {
        cfg.data_dir = d.clone();
    }
    if let Some(n) = args.node_id {
        cfg.node_id = n;
    }
    if let Some(a) = args.cluster_addr {
        cfg.cluster_addr = a;
    }
    if let Some(a) = &args.cluster_advertise {
        cfg.cluster_advertise = Some(a.clone());
    }
    if let Some(p) = &args.peers {
        cfg.peers = muster_agent::config::parse_peers(p)
            .map_err(|e| anyhow::anyhow!("invalid --peers: {e}"))?;
    }
    if args.join {
        cfg.join = true;
    }
    if let Some(t) = args.self_preservation_threshold {
        cfg.self_preservation_threshold = t;
    }
    if let Some(p) = &args.tls_cert {
        cfg.tls_cert = Some(p.clone());
    }
    if let Some(p) = &args.tls_key {
        cfg.tls_key = Some(p.clone());
    }
    if let Some(p) = &args.tls_client_ca {
        cfg.tls_client_ca = Some(p.clone());
    }
    if let Some(p) = &args.cluster_tls_cert {
        cfg.cluster_tls_cert = Some(p.clone());
    }
    if let Some(p) = &args.cluster_tls_key {
        cfg.cluster_tls_key = Some(p.clone());
    }
    if let Some(p) = &args.cluster_tls_ca {
        cfg.cluster_tls_ca = Some(p.clone());
    }
    if args.enable_command_checks {
        cfg.enable_command_checks = true;
    }
    if args.acl {
        cfg.acl = true;
    }
    if let Some(p) = &args.audit_file {
        cfg.audit_file = Some(p.clone());
    }
    args.limits.apply(&mut cfg);
    cfg.force_recover_from_snapshot = args.force_recover_from_snapshot;
    if let Err(e) = cfg.validate() {
        bail!("invalid configuration: {e}");
    }
    Ok(cfg)
}

fn init_logging(format: &str) {
    let filter = EnvFilter::try_from_env("MUSTER_LOG")
        .unwrap_or_else(|_| EnvFilter::new("info,openraft=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("shutdown signal received; stopping");
}

/// File descriptors kept for everything but HTTP connections: the store,
/// snapshot files, health-check probes, the runtime.
const FDS_RESERVED: u64 = 256;

/// Raises the soft open-file limit to the hard one (a connection is a file
/// descriptor; the usual soft limit of 1024 is far below what a registry
/// serves), and keeps `max_connections` under it, so that a flood of
/// connections meets the cap, not EMFILE.
fn fit_connections_to_file_limit(cfg: &mut muster_agent::Config) {
    let limit = match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => limit,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read or raise the open-file limit");
            return;
        }
    };
    let room = limit.saturating_sub(FDS_RESERVED).max(1);
    if cfg.max_connections as u64 > room {
        tracing::warn!(
            max_connections = cfg.max_connections,
            open_file_limit = limit,
            using = room,
            "max_connections is above what the open-file limit allows; raise `ulimit -n` \
             (LimitNOFILE= under systemd) to serve more"
        );
        cfg.max_connections = room as usize;
    }
}

/// Runs the agent until SIGINT or SIGTERM.
pub async fn run(args: AgentArgs) -> anyhow::Result<()> {
    init_logging(&args.log_format);
    let mut cfg = load_config(&args)?;
    fit_connections_to_file_limit(&mut cfg);
    let _dev_dir = if args.dev {
        let dir = tempfile::Builder::new()
            .prefix("muster-dev-")
            .tempdir()
            .context("cannot create a temporary directory")?;
        cfg.data_dir = dir.path().to_path_buf();
        tracing::warn!(dir = %dir.path().display(), "--dev: data is thrown away on exit");
        Some(dir)
    } else {
        None
    };
    let listener = tokio::net::TcpListener::bind(cfg.http_addr)
        .await
        .with_context(|| format!("cannot listen on {}", cfg.http_addr))?;
    muster_agent::run(listener, cfg, shutdown_signal(), |started| {
        // One parseable line on stdout so scripts and tests know where we listen.
        let scheme = if started.tls { "https" } else { "http" };
        println!("muster listening on {scheme}://{}", started.addr);
    })
    .await
    .map_err(anyhow::Error::from)
}
