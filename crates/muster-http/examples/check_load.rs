//! Load benchmark of the health-check runner: N instances, each with a TCP
//! check at a fixed interval against one local listener, run in-process.
//! Reports probe runs per second against the rate the schedule asks for,
//! the server's CPU time per second, and RSS. Bounded: N instances, one
//! warm-up interval, then a fixed measuring window.
//!
//! `cargo run --release -p muster-http --example check_load -- 10000 10 30`
//! (instances, interval seconds, measuring seconds).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

fn cpu_seconds() -> f64 {
    // utime + stime of this process, in clock ticks (100 per second on Linux).
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    let ticks: f64 = fields.get(11).and_then(|f| f.parse().ok()).unwrap_or(0.0)
        + fields.get(12).and_then(|f| f.parse().ok()).unwrap_or(0.0);
    ticks / 100.0
}

fn rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        .map_or(0.0, |kib| kib / 1024.0)
}

#[tokio::main]
async fn main() {
    let args: Vec<u64> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let n = args.first().copied().unwrap_or(10_000).min(100_000);
    let interval = args.get(1).copied().unwrap_or(10).clamp(1, 3600);
    let window = args.get(2).copied().unwrap_or(30).clamp(1, 600);

    // The target: accepts and drops connections, counting them.
    let target = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let target_addr = target.local_addr().unwrap().to_string();
    let accepted = Arc::new(AtomicU64::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((sock, _)) = target.accept().await {
            count.fetch_add(1, Ordering::Relaxed);
            drop(sock);
        }
    });

    let dir = tempfile::tempdir().unwrap();
    let config = muster_agent::Config {
        data_dir: dir.path().join("data"),
        ..Default::default()
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(muster_agent::run(
        listener,
        config,
        async {
            let _ = stop_rx.await;
        },
        move |s| {
            let _ = ready_tx.send(s.addr);
        },
    ));
    let addr = ready_rx.await.unwrap();
    let http = reqwest::Client::builder().no_proxy().build().unwrap();

    let started = Instant::now();
    let next = Arc::new(AtomicU64::new(0));
    let mut writers = Vec::new();
    for _ in 0..64 {
        let (http, next, target_addr) = (http.clone(), next.clone(), target_addr.clone());
        writers.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    return;
                }
                let body = serde_json::json!({"address": "127.0.0.1", "port": 1,
                    "checks": [{"tcp": target_addr, "interval": format!("{interval}s"), "timeout": "2s"}]});
                let r = http.put(format!("http://{addr}/v1/services/svc-{}/instances/i-{i}", i % 100)).json(&body).send().await.unwrap();
                assert_eq!(r.status(), 200);
            }
        }));
    }
    for w in writers {
        w.await.unwrap();
    }
    println!(
        "registered {n} instances with a TCP check each in {:.1}s",
        started.elapsed().as_secs_f64()
    );

    // Warm up for one interval: every check has started and run once.
    tokio::time::sleep(Duration::from_secs(interval)).await;
    let (a0, c0, t0) = (
        accepted.load(Ordering::Relaxed),
        cpu_seconds(),
        Instant::now(),
    );
    tokio::time::sleep(Duration::from_secs(window)).await;
    let (a1, c1, secs) = (
        accepted.load(Ordering::Relaxed),
        cpu_seconds(),
        t0.elapsed().as_secs_f64(),
    );
    let runs = (a1 - a0) as f64 / secs;
    let expected = n as f64 / interval as f64;
    println!(
        "checks={n} interval={interval}s window={secs:.1}s runs/s={runs:.0} expected={expected:.0} kept_up={:.1}% cpu={:.2} cores rss={:.0}MiB",
        100.0 * runs / expected,
        (c1 - c0) / secs,
        rss_mib()
    );
    let _ = stop_tx.send(());
    let _ = server.await;
}
