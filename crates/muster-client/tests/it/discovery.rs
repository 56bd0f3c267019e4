//! Discovery through the cache: changes arriving through the watch, filters,
//! stale answers while the registry is down.

use std::time::Duration;

use muster_client::types::RegisterRequest;
use muster_client::{Client, Discovery, Error, HealthFilter, Watcher};

use crate::harness::{TestServer, fast, within};

fn body(version: &str, tags: &[&str]) -> RegisterRequest {
    RegisterRequest {
        address: "10.0.0.1".into(),
        port: 8080,
        version: Some(version.into()),
        tags: tags.iter().map(|t| t.to_string()).collect(),
        ..RegisterRequest::default()
    }
}

#[tokio::test]
async fn a_change_reaches_the_cache_through_the_watch() {
    let s = TestServer::start().await;
    let writer = s.client();
    let reader = s.client();
    writer
        .api()
        .register("pay", "p1", &body("1.4.2", &["v2"]))
        .await
        .unwrap();

    let all = reader.discover("pay");
    let first = all.get().await.unwrap();
    assert_eq!(first.ids(), ["p1"]);
    assert!(!first.is_stale() && first.age().is_zero());
    let mut watcher = all.watch().await.unwrap();

    // Filtered queries have their own entry and their own watch.
    let v2 = reader.discover("pay").tag("v2").version("^1.4");
    assert_eq!(v2.get().await.unwrap().ids(), ["p1"]);
    let mut v2_watcher = v2.watch().await.unwrap();

    writer
        .api()
        .register("pay", "p2", &body("2.0.0", &["v2"]))
        .await
        .unwrap();
    let snap = within("p2 through the watch", watcher.wait_for(|s| s.len() == 2))
        .await
        .unwrap();
    assert!(snap.index() > first.index());
    // A warm lookup sees the same answer, from the cache.
    let warm = all.get().await.unwrap();
    assert_eq!((warm.ids(), warm.index()), (vec!["p1", "p2"], snap.index()));
    assert_eq!(v2.get().await.unwrap().ids(), ["p1"], "2.0.0 is not ^1.4");

    // An instance that stops matching the filter leaves the filtered answer.
    writer
        .api()
        .register("pay", "p1", &body("1.5.0", &[]))
        .await
        .unwrap();
    within("p1 no longer v2", v2_watcher.wait_for(|s| s.is_empty()))
        .await
        .unwrap();
    writer.api().deregister("pay", "p2").await.unwrap();
    let snap = within("p2 removed", watcher.wait_for(|s| s.ids() == ["p1"]))
        .await
        .unwrap();
    assert_eq!(snap.get("p1").unwrap().version.as_deref(), Some("1.5.0"));

    // A query the registry refuses is a clear error, not an empty answer.
    let e = reader
        .discover("pay")
        .health(HealthFilter::Any)
        .meta("", "no key")
        .get()
        .await
        .expect_err("a meta filter without a key");
    assert!(matches!(e, Error::Api { status: 400, .. }), "{e:?}");
    assert_eq!(e.code(), Some("invalid_parameter"), "{e}");
    s.stop().await;
}

/// A client with `max` staleness that registered `pay/p1` on `s` and watches
/// it, the watch up to date.
async fn watched_p1(s: &TestServer, max: Duration) -> (Discovery, Watcher) {
    let client = fast(Client::builder().addrs([s.base.clone()]))
        .max_staleness(max)
        .build()
        .unwrap();
    client
        .api()
        .register("pay", "p1", &body("1.0.0", &[]))
        .await
        .unwrap();
    let pay = client.discover("pay");
    let mut watcher = pay.watch().await.unwrap();
    assert_eq!(watcher.current().unwrap().ids(), ["p1"]);
    (pay, watcher)
}

#[tokio::test]
async fn a_stopped_registry_gives_stale_answers_with_their_age_then_an_error() {
    let s = TestServer::start().await;
    let max = Duration::from_millis(800);
    let (pay, mut watcher) = watched_p1(&s, max).await;

    s.stop().await;
    let stale = within("the watch to drop", watcher.wait_for(|s| s.is_stale()))
        .await
        .unwrap();
    assert_eq!(stale.ids(), ["p1"], "the cached answer is still served");
    assert!(stale.age() < max);

    // The server is gone, so nothing but the clock moves: pause it and
    // advance it instead of waiting for the age to grow.
    tokio::time::pause();
    tokio::time::advance(Duration::from_millis(200)).await;
    let older = pay.get().await.unwrap();
    assert!(older.is_stale() && older.ids() == ["p1"]);
    assert!(
        older.age() >= Duration::from_millis(200),
        "{:?}",
        older.age()
    );

    tokio::time::advance(max).await;
    let err = pay.get().await.unwrap_err();
    match &err {
        Error::Stale {
            age, max_staleness, ..
        } => assert!(*age > max && *max_staleness == max, "{err}"),
        other => panic!("expected Stale, got {other:?}"),
    }
    assert!(err.to_string().contains("maximum staleness"), "{err}");
}

#[tokio::test]
async fn answers_are_fresh_again_once_the_registry_restarts_on_the_same_data() {
    let s = TestServer::start().await;
    let addr = s.addr;
    let max = Duration::from_millis(800);
    let (pay, mut watcher) = watched_p1(&s, max).await;

    let dir = s.stop().await;
    within("the watch to drop", watcher.wait_for(|s| s.is_stale()))
        .await
        .unwrap();
    // The same data, the same address: the watch resumes having missed
    // nothing, and the registry confirms it at once.
    let s = TestServer::start_on(addr, dir).await;
    let fresh = within(
        "the answer to be fresh",
        watcher.wait_for(|s| !s.is_stale()),
    )
    .await
    .unwrap();
    assert_eq!(fresh.ids(), ["p1"]);
    // Long past max_staleness with no change to the service, still fresh.
    // Pacing, not a wait for state: the registry runs on this runtime, so
    // the clock cannot be paused; the point is that time passes.
    tokio::time::sleep(max * 2).await;
    let later = pay.get().await.unwrap();
    assert!(!later.is_stale() && later.ids() == ["p1"]);
    s.stop().await;
}
