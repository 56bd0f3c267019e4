//! Every lookup of a client over one multiplexed watch: one connection for
//! hundreds of lookups, renewals unaffected, eviction, restarts.

use std::time::Duration;

use futures::future::join_all;
use muster_client::types::RegisterRequest;
use muster_client::{Backoff, Client, InstanceSpec, Watcher};
use tokio::time::Instant;

use crate::harness::{TestServer, fast, within};

fn body(port: u16) -> RegisterRequest {
    RegisterRequest {
        address: "10.0.0.1".into(),
        port: port.into(),
        ..RegisterRequest::default()
    }
}

/// The value of an unlabelled metric of the server (0 when not recorded yet).
async fn metric(s: &TestServer, name: &str) -> f64 {
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let text = http
        .get(format!("{}/metrics", s.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .map_or(0.0, |v| v.trim().parse().unwrap())
}

/// Asks the server until `name` equals `want`: each try is a request to
/// `/metrics`, bounded by a deadline.
async fn metric_becomes(s: &TestServer, name: &str, want: f64) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let got = metric(s, name).await;
        if got == want {
            return;
        }
        assert!(Instant::now() < deadline, "{name} stayed {got}, not {want}");
        tokio::task::yield_now().await;
    }
}

/// Registers one instance in each of `n` services `svc-<i>`.
async fn services(s: &TestServer, n: u16) {
    let writer = s.client();
    for i in 0..n {
        writer
            .api()
            .register(&format!("svc-{i}"), "a", &body(1000 + i))
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn two_hundred_and_fifty_lookups_share_one_watch_connection() {
    let s = TestServer::start().await;
    services(&s, 250).await;
    let client = s.client();
    let lookups: Vec<_> = (0..250)
        .map(|i| client.discover(format!("svc-{i}")))
        .collect();
    let answers = within(
        "250 first answers",
        join_all(lookups.iter().map(|d| d.get())),
    )
    .await;
    for (i, a) in answers.into_iter().enumerate() {
        let a = a.unwrap();
        assert_eq!(a.ids(), ["a"], "svc-{i}");
        assert_eq!(a.instances()[0].port, 1000 + i as u16);
    }
    // Merged into one stream carrying every query; no single watch. Each
    // stream is one connection: the merged one, plus at most the client's
    // idle request connection and this test's /metrics request.
    metric_becomes(&s, "muster_watch_streams", 1.0).await;
    assert_eq!(metric(&s, "muster_watch_queries").await, 250.0);
    assert_eq!(metric(&s, "muster_watchers").await, 0.0);
    assert!(metric(&s, "muster_http_connections").await <= 3.0);

    // Every lookup is still live on the merged stream.
    let mut w137 = lookups[137].watch().await.unwrap();
    let mut w3 = lookups[3].watch().await.unwrap();
    let writer = s.client();
    writer
        .api()
        .register("svc-137", "b", &body(1))
        .await
        .unwrap();
    writer.api().deregister("svc-3", "a").await.unwrap();
    within("svc-137/b", w137.wait_for(|s| s.ids() == ["a", "b"]))
        .await
        .unwrap();
    within("svc-3 empty", w3.wait_for(|s| s.is_empty()))
        .await
        .unwrap();
    // A warm lookup adds nothing.
    lookups[42].get().await.unwrap();
    assert_eq!(metric(&s, "muster_watch_streams").await, 1.0);
    s.stop().await;
}

#[tokio::test]
async fn renewals_keep_working_with_many_lookups_open() {
    let s = TestServer::start().await;
    services(&s, 300).await;
    let client = fast(Client::builder().addrs([s.base.clone()]))
        .lease_ttl(Duration::from_secs(1))
        .build()
        .unwrap();
    let _me = client
        .register(InstanceSpec::new("me", "me-1", "10.0.0.9", 80))
        .await
        .unwrap();
    let lookups: Vec<_> = (0..300)
        .map(|i| client.discover(format!("svc-{i}")))
        .collect();
    // Followed, not merely looked up: each holds its query open.
    let _watchers: Vec<Watcher> =
        within("300 watchers", join_all(lookups.iter().map(|d| d.watch())))
            .await
            .into_iter()
            .map(Result::unwrap)
            .collect();
    // Renewal goes on every third of the 1 s TTL; six of them span two TTLs.
    let mut status = client.lease_status();
    let start = status.borrow().renewals;
    within(
        "six renewals",
        status.wait_for(|st| st.renewals >= start + 6),
    )
    .await
    .unwrap();
    let st = status.borrow().clone();
    assert_eq!(
        (st.reregistrations, st.renewal_failures),
        (0, 0),
        "the lease never lapsed nor failed to renew: {st:?}"
    );
    let me = s.client().api().instance("me", "me-1").await.unwrap();
    assert_eq!(me.port, 80);
    assert_eq!(metric(&s, "muster_watch_queries").await, 300.0);
    s.stop().await;
}

#[tokio::test]
async fn unused_lookups_are_evicted_and_their_query_dropped() {
    let s = TestServer::start().await;
    services(&s, 3).await;
    let client = fast(Client::builder().addrs([s.base.clone()]))
        .lookup_idle_timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let idle = client.discover("svc-0");
    let followed = client.discover("svc-1");
    idle.get().await.unwrap();
    let mut watcher = followed.watch().await.unwrap();
    metric_becomes(&s, "muster_watch_queries", 2.0).await;

    // svc-0 is not read again: its query leaves the stream. svc-1 has a
    // watcher, so it stays however long it goes unread.
    metric_becomes(&s, "muster_watch_queries", 1.0).await;
    metric_becomes(&s, "muster_watch_streams", 1.0).await;
    s.client()
        .api()
        .register("svc-1", "b", &body(2))
        .await
        .unwrap();
    within("svc-1/b", watcher.wait_for(|s| s.len() == 2))
        .await
        .unwrap();

    // Looked up again, an evicted query comes back with a fresh answer.
    s.client()
        .api()
        .register("svc-0", "b", &body(3))
        .await
        .unwrap();
    let again = idle.get().await.unwrap();
    assert_eq!(again.ids(), ["a", "b"]);
    assert!(!again.is_stale());
    metric_becomes(&s, "muster_watch_queries", 2.0).await;
    s.stop().await;
}

#[tokio::test]
async fn lookups_are_fresh_again_within_a_second_of_a_restart_on_the_same_data() {
    let s = TestServer::start().await;
    let addr = s.addr;
    services(&s, 50).await;
    // A slow request back-off (first retry after 10 to 20 s): the watch's
    // reconnect delay is capped at a second whatever it is.
    let client = Client::builder()
        .addrs([s.base.clone()])
        .backoff(Backoff {
            attempts: 3,
            initial: Duration::from_secs(20),
            max: Duration::from_secs(60),
        })
        .build()
        .unwrap();
    let lookups: Vec<_> = (0..50)
        .map(|i| client.discover(format!("svc-{i}")))
        .collect();
    let mut watchers: Vec<Watcher> = join_all(lookups.iter().map(|d| d.watch()))
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    let dir = s.stop().await;
    for w in &mut watchers {
        within("stale", w.wait_for(|s| s.is_stale())).await.unwrap();
    }
    // Pacing, not a wait for state: down past the first reconnect attempt
    // (within a second), so the stream is between attempts when the
    // registry comes back.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let s = TestServer::start_on(addr, dir).await;
    let back = Instant::now();
    for w in &mut watchers {
        let fresh = within("fresh", w.wait_for(|s| !s.is_stale()))
            .await
            .unwrap();
        assert_eq!(fresh.ids(), ["a"]);
    }
    let took = back.elapsed();
    // A second of reconnect delay at most, and room for a loaded machine.
    assert!(
        took < Duration::from_millis(1800),
        "fresh again {took:?} after the registry was back"
    );
    // Resumed by index: nothing was missed, and nothing changed.
    assert!(!lookups[7].get().await.unwrap().is_stale());
    s.stop().await;
}

#[tokio::test]
async fn a_registry_on_fresh_data_gets_the_registration_again_and_lookups_follow() {
    let s = TestServer::start().await;
    let addr = s.addr;
    services(&s, 20).await;
    let client = s.client();
    let _me = client
        .register(InstanceSpec::new("me", "me-1", "10.0.0.9", 80))
        .await
        .unwrap();
    let mut me = client.discover("me").watch().await.unwrap();
    let others: Vec<_> = (0..20)
        .map(|i| client.discover(format!("svc-{i}")))
        .collect();
    join_all(others.iter().map(|d| d.get())).await;
    let old = me.current().unwrap();
    assert_eq!(old.ids(), ["me-1"]);

    // A new registry with no data at the same address: the lease is gone,
    // the client registers again, and the lookup (its index now from the
    // future) gets a fresh snapshot with the instance.
    s.stop().await;
    within("stale", me.wait_for(|s| s.is_stale()))
        .await
        .unwrap();
    let s = TestServer::start_on(addr, tempfile::tempdir().unwrap()).await;
    let back = within(
        "me-1 registered again",
        me.wait_for(|s| !s.is_stale() && s.ids() == ["me-1"]),
    )
    .await
    .unwrap();
    assert_eq!(back.get("me-1").unwrap().port, 80);
    let mut gone = others[5].watch().await.unwrap();
    within(
        "svc-5 gone with the old data",
        gone.wait_for(|s| !s.is_stale() && s.is_empty()),
    )
    .await
    .unwrap();
    s.stop().await;
}

#[tokio::test]
async fn a_query_the_registry_refuses_fails_alone() {
    let s = TestServer::start().await;
    services(&s, 5).await;
    let client = s.client();
    let good: Vec<_> = (0..5)
        .map(|i| client.discover(format!("svc-{i}")))
        .collect();
    let mut watchers: Vec<Watcher> = join_all(good.iter().map(|d| d.watch()))
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    let bad = client.discover("svc-0").meta("", "no key");
    let e = bad.get().await.expect_err("a meta filter without a key");
    assert_eq!(e.code(), Some("invalid_parameter"), "{e}");
    assert!(
        matches!(&e, muster_client::Error::Api { status: 400, field: Some(f), .. } if f == "meta"),
        "the error names the query's own field: {e:?}"
    );
    // The other lookups go on over the stream.
    s.client()
        .api()
        .register("svc-4", "b", &body(9))
        .await
        .unwrap();
    within("svc-4/b", watchers[4].wait_for(|s| s.len() == 2))
        .await
        .unwrap();
    metric_becomes(&s, "muster_watch_queries", 5.0).await;
    // Asked again, it is refused again (not cached as an empty answer).
    assert!(bad.get().await.is_err());
    s.stop().await;
}

#[tokio::test]
async fn streams_split_when_the_registry_takes_fewer_queries_per_stream() {
    let s = TestServer::start_with(
        "127.0.0.1:0".parse().unwrap(),
        tempfile::tempdir().unwrap(),
        |c| c.watch_max_queries = 10,
    )
    .await;
    services(&s, 25).await;
    let client = s.client();
    let lookups: Vec<_> = (0..25)
        .map(|i| client.discover(format!("svc-{i}")))
        .collect();
    let mut watchers: Vec<Watcher> =
        within("25 watchers", join_all(lookups.iter().map(|d| d.watch())))
            .await
            .into_iter()
            .map(Result::unwrap)
            .collect();
    // Once merged as far as the registry allows, all 25 are carried, on
    // three streams or more, and all stay live.
    metric_becomes(&s, "muster_watch_queries", 25.0).await;
    assert!(metric(&s, "muster_watch_streams").await >= 3.0);
    s.client()
        .api()
        .register("svc-24", "b", &body(9))
        .await
        .unwrap();
    within("svc-24/b", watchers[24].wait_for(|s| s.len() == 2))
        .await
        .unwrap();
    s.stop().await;
}
