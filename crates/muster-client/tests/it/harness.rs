//! Starts a real registry in-process, as the server's own tests do.

use std::net::SocketAddr;
use std::time::Duration;

use muster_agent::Config;
use muster_client::{Backoff, Client, ClientBuilder, Timeouts};
use tempfile::TempDir;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub struct TestServer {
    pub addr: SocketAddr,
    pub base: String,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), muster_agent::AgentError>>>,
    pub dir: TempDir,
}

impl TestServer {
    /// A registry on 127.0.0.1:0 with a fresh data directory.
    pub async fn start() -> Self {
        Self::start_on("127.0.0.1:0".parse().unwrap(), tempfile::tempdir().unwrap()).await
    }

    /// A registry on `addr` (port 0 picks a free one) over `dir`.
    pub async fn start_on(addr: SocketAddr, dir: TempDir) -> Self {
        Self::start_with(addr, dir, |_| {}).await
    }

    /// [`TestServer::start_on`] with the configuration changed by `tweak`.
    pub async fn start_with(
        addr: SocketAddr,
        dir: TempDir,
        tweak: impl FnOnce(&mut Config),
    ) -> Self {
        let mut config = Config {
            data_dir: dir.path().join("data"),
            sweep_interval: Duration::from_millis(50),
            ..Config::default()
        };
        tweak(&mut config);
        let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let (ready_tx, ready_rx) = oneshot::channel();
        let task = tokio::spawn(muster_agent::run(
            listener,
            config,
            async move {
                let _ = stop_rx.await;
            },
            move |started| {
                let _ = ready_tx.send(started.addr);
            },
        ));
        let addr = match ready_rx.await {
            Ok(addr) => addr,
            Err(_) => panic!("server failed to start: {:?}", task.await),
        };
        TestServer {
            addr,
            base: format!("http://{addr}"),
            stop: Some(stop_tx),
            task: Some(task),
            dir,
        }
    }

    /// Stops the server gracefully (open watches end) and returns its data
    /// directory.
    pub async fn stop(mut self) -> TempDir {
        let _ = self.stop.take().unwrap().send(());
        self.task.take().unwrap().await.unwrap().unwrap();
        self.dir
    }

    /// A client of this server with quick retries and a 1 s lease, so that
    /// a registry gone for a moment costs it the lease.
    pub fn short_lease_client(&self) -> Client {
        fast(Client::builder().addrs([self.base.clone()]))
            .lease_ttl(Duration::from_secs(1))
            .build()
            .unwrap()
    }

    /// A client of this server with quick retries, for tests.
    pub fn client(&self) -> Client {
        fast(Client::builder().addrs([self.base.clone()]))
            .build()
            .unwrap()
    }
}

/// Short timeouts and back-offs, so failures show within a test's time.
pub fn fast(b: ClientBuilder) -> ClientBuilder {
    b.timeouts(Timeouts {
        connect: Duration::from_millis(500),
        request: Duration::from_secs(5),
        watch_idle: Duration::from_secs(45),
    })
    .backoff(Backoff {
        attempts: 2,
        initial: Duration::from_millis(20),
        max: Duration::from_millis(200),
    })
}

/// Bounds a wait on an event so a broken test fails instead of hanging.
pub async fn within<T>(what: &str, fut: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(20), fut)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}
