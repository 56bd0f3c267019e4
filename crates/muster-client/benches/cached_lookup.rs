//! A warm cached lookup: `Discovery::get` on a query whose cache entry is
//! live. Target: at most 1 µs. Run with `cargo bench -p muster-client`.

use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use muster_agent::Config;
use muster_client::Client;
use muster_types::RegisterRequest;

fn cached_lookup(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let (client, discovery, server) = rt.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let config = Config {
            data_dir: dir.path().join("data"),
            ..Config::default()
        };
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let server = tokio::spawn(muster_agent::run(
            listener,
            config,
            async move {
                let _ = stop_rx.await;
            },
            move |_| {
                let _ = ready_tx.send(());
            },
        ));
        ready_rx.await.unwrap();
        let client = Client::builder()
            .addrs([format!("http://{addr}")])
            .build()
            .unwrap();
        for i in 0..10 {
            let body = RegisterRequest {
                address: format!("10.0.0.{i}"),
                port: 8080,
                tags: vec!["v2".into()],
                version: Some("1.4.2".into()),
                zone: Some("eu-1a".into()),
                ..RegisterRequest::default()
            };
            client
                .api()
                .register("payments", &format!("pay-{i}"), &body)
                .await
                .unwrap();
        }
        let discovery = client
            .discover("payments")
            .tag("v2")
            .version("^1.4")
            .zone("eu-1a");
        let warm = discovery.get().await.unwrap();
        assert_eq!(warm.len(), 10);
        (client, discovery, server)
    });

    let mut group = c.benchmark_group("cached_lookup");
    group.bench_function("warm get, 10 instances", |b| {
        b.iter(|| {
            let snap = futures::executor::block_on(discovery.get()).unwrap();
            std::hint::black_box(snap.len())
        })
    });
    group.bench_function("warm get, query built per call", |b| {
        b.iter(|| {
            let d = client
                .discover("payments")
                .tag("v2")
                .version("^1.4")
                .zone("eu-1a");
            let snap = futures::executor::block_on(d.get()).unwrap();
            std::hint::black_box(snap.len())
        })
    });
    group.finish();

    let _ = stop_tx.send(());
    rt.block_on(async {
        let _ = tokio::time::timeout(Duration::from_secs(10), server).await;
    });
}

criterion_group!(benches, cached_lookup);
criterion_main!(benches);
