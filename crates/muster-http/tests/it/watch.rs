//! The SSE watch: snapshot, deltas, resume by Last-Event-ID.

use serde_json::json;

use crate::harness::{Sse, TestServer};

#[tokio::test]
async fn snapshot_then_deltas_with_index_ids() {
    let s = TestServer::start().await;
    let a = s.register("pay", "a", json!({})).await;
    let mut w = Sse::open(&s, "service=pay", None).await;
    let snap = w.next().await;
    assert_eq!(snap.event, "snapshot");
    assert_eq!(snap.id, a["modify_index"].as_u64().unwrap());
    assert_eq!(snap.data["instances"][0]["id"], "a");

    let b = s.register("pay", "b", json!({"tags": ["x"]})).await;
    let e = w.next().await;
    assert_eq!(
        (e.event.as_str(), e.id),
        ("upsert", b["modify_index"].as_u64().unwrap())
    );
    assert_eq!(e.data["instance"]["id"], "b");

    // Another service's change does not reach this stream.
    s.register("cart", "c", json!({})).await;
    let (_, del) = s.delete("/v1/services/pay/instances/a").await;
    let e = w.next().await;
    assert_eq!(
        (e.event.as_str(), e.data["id"].as_str()),
        ("delete", Some("a"))
    );
    assert_eq!(e.id, del["index"].as_u64().unwrap());
    s.stop().await;
}

#[tokio::test]
async fn resume_by_last_event_id_sends_only_what_was_missed() {
    let s = TestServer::start().await;
    s.register("pay", "a", json!({})).await;
    let mut w = Sse::open(&s, "service=pay", None).await;
    let seen = w.next().await.id;
    drop(w);
    // While disconnected: two changes.
    let b = s.register("pay", "b", json!({})).await;
    s.delete("/v1/services/pay/instances/a").await;
    let mut w = Sse::open(&s, "service=pay", Some(seen)).await;
    let e1 = w.next().await;
    assert_eq!(
        (e1.event.as_str(), e1.data["instance"]["id"].as_str()),
        ("upsert", Some("b"))
    );
    assert_eq!(e1.id, b["modify_index"].as_u64().unwrap());
    let e2 = w.next().await;
    assert_eq!(
        (e2.event.as_str(), e2.data["id"].as_str()),
        ("delete", Some("a"))
    );
    s.stop().await;
}

#[tokio::test]
async fn a_too_old_or_future_id_gets_a_fresh_snapshot() {
    let s = TestServer::start().await;
    // More changes than the service's history keeps.
    for i in 0..(muster_registry::HISTORY_PER_SERVICE as u16 + 20) {
        s.register("pay", "a", json!({"port": 1000 + i})).await;
    }
    let mut w = Sse::open(&s, "service=pay", Some(1)).await;
    let e = w.next().await;
    assert_eq!(e.event, "snapshot");
    assert_eq!(e.data["instances"].as_array().unwrap().len(), 1);
    let mut w = Sse::open(&s, "service=pay", Some(1_000_000)).await;
    assert_eq!(w.next().await.event, "snapshot");
    s.stop().await;
}

#[tokio::test]
async fn filtered_watch_turns_non_matching_upserts_into_deletes() {
    let s = TestServer::start().await;
    s.register("pay", "a", json!({"tags": ["v2"]})).await;
    let mut w = Sse::open(&s, "service=pay&tag=v2", None).await;
    assert_eq!(
        w.next().await.data["instances"].as_array().unwrap().len(),
        1
    );
    s.register("pay", "a", json!({"tags": ["v1"]})).await;
    let e = w.next().await;
    assert_eq!(
        (e.event.as_str(), e.data["id"].as_str()),
        ("delete", Some("a"))
    );
    s.stop().await;
}

/// Reads `n` events; fails (rather than hangs) when they do not come.
async fn take(w: &mut Sse, n: usize) -> Vec<crate::harness::SseEvent> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let next = tokio::time::timeout(std::time::Duration::from_secs(10), w.next());
        match next.await {
            Ok(e) => out.push(e),
            Err(_) => panic!("only {} of {n} events arrived: {out:?}", out.len()),
        }
    }
    out
}

fn instance_id(e: &crate::harness::SseEvent) -> String {
    match e.event.as_str() {
        "upsert" => e.data["instance"]["id"].as_str().unwrap().to_string(),
        _ => e.data["id"].as_str().unwrap().to_string(),
    }
}

#[tokio::test]
async fn resume_from_an_id_shared_by_two_changes_resends_both() {
    // Revoking a lease removes both instances at one index: two events of
    // one service with the same id, as two commands of one batch have.
    let s = TestServer::start().await;
    let (_, lease) = s.post("/v1/leases", json!({"ttl": "30s"})).await;
    let lease = lease["id"].as_str().unwrap().to_string();
    s.register("pay", "a", json!({"lease": lease})).await;
    s.register("pay", "b", json!({"lease": lease})).await;
    let mut w = Sse::open(&s, "service=pay", None).await;
    assert_eq!(w.next().await.event, "snapshot");
    s.delete(&format!("/v1/leases/{lease}")).await;
    let live = take(&mut w, 2).await;
    assert_eq!(live[0].id, live[1].id, "both removals share the index");
    drop(w);

    // The client got the first removal only, then lost the stream: resuming
    // from its id must still deliver the second.
    let shared = live[0].id;
    let c = s.register("pay", "c", json!({})).await;
    let mut w = Sse::open(&s, "service=pay", Some(shared)).await;
    let resumed = take(&mut w, 3).await;
    let got: Vec<(String, u64, String)> = resumed
        .iter()
        .map(|e| (e.event.clone(), e.id, instance_id(e)))
        .collect();
    assert_eq!(
        got,
        [
            ("delete".to_string(), shared, "a".to_string()),
            ("delete".to_string(), shared, "b".to_string()),
            (
                "upsert".to_string(),
                c["modify_index"].as_u64().unwrap(),
                "c".to_string()
            ),
        ]
    );
    s.stop().await;
}

#[tokio::test]
async fn resume_inside_a_batch_of_registrations_misses_nothing() {
    // Concurrent registrations are batched into shared log entries. Find
    // two events of one id and resume from it as a client that got only the
    // first of them: the second (and everything after) must arrive.
    let s = TestServer::start().await;
    s.register("pay", "seed", json!({})).await;
    for round in 0..20 {
        let mut w = Sse::open(&s, "service=pay", None).await;
        assert_eq!(w.next().await.event, "snapshot");
        let tasks: Vec<_> = (0..32)
            .map(|n| {
                let (http, url) = (
                    s.http.clone(),
                    s.url(&format!("/v1/services/pay/instances/r{round}-{n}")),
                );
                tokio::spawn(async move {
                    let r = http
                        .put(url)
                        .json(&json!({"address": "10.0.0.1", "port": 8080}))
                        .send()
                        .await
                        .unwrap();
                    assert_eq!(r.status(), 200);
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        let live = take(&mut w, 32).await;
        drop(w);
        let Some(at) = live.windows(2).position(|p| p[0].id == p[1].id) else {
            continue; // no two in one entry this round; try again
        };
        // `at` is the first event of its id: the client got it and lost
        // the stream before the next one of the same id.
        let first = &live[at];
        let mut w = Sse::open(&s, "service=pay", Some(first.id)).await;
        let resumed = take(&mut w, live.len() - at).await;
        let got: Vec<(u64, String)> = resumed.iter().map(|e| (e.id, instance_id(e))).collect();
        let want: Vec<(u64, String)> = live[at..].iter().map(|e| (e.id, instance_id(e))).collect();
        assert_eq!(got, want, "round {round}");
        s.stop().await;
        return;
    }
    panic!("32 concurrent registrations never shared a log entry in 20 rounds");
}

#[tokio::test]
async fn a_resume_that_missed_nothing_is_confirmed_at_once_even_after_a_restart() {
    let s = TestServer::start().await;
    s.register("pay", "a", json!({})).await;
    let mut w = Sse::open(&s, "service=pay", None).await;
    let seen = w.next().await.id;
    drop(w);

    // Reconnecting with the current index: nothing was missed, and the
    // client learns so at once, not at the next change.
    let mut w = Sse::open(&s, "service=pay", Some(seen)).await;
    let e = w.next().await;
    assert_eq!((e.event.as_str(), e.id), ("current", seen), "{:?}", e.data);
    assert_eq!(e.data, json!({"type": "current", "index": seen}));
    // The stream goes on from there.
    let b = s.register("pay", "b", json!({})).await;
    let e = w.next().await;
    assert_eq!(
        (e.event.as_str(), e.id),
        ("upsert", b["modify_index"].as_u64().unwrap())
    );
    let seen = e.id;
    drop(w);

    // The registry restarts on the same data: a client resuming where it
    // was is confirmed current as soon as it reconnects.
    let dir = s.stop().await;
    let s = TestServer::start_in(dir, |_| {}).await;
    let mut w = Sse::open(&s, "service=pay", Some(seen)).await;
    let e = w.next().await;
    assert_eq!((e.event.as_str(), e.id), ("current", seen));
    s.stop().await;
}

/// A watcher that lost its connection when the registry restarted resumes
/// with its `Last-Event-ID` on the same data: exactly the changes it
/// missed, those before the stop and those after the start, in order; none
/// twice, none lost.
#[tokio::test]
async fn resume_across_a_registry_restart_has_no_gap() {
    let s = TestServer::start().await;
    s.register("pay", "a", json!({})).await;
    let mut w = Sse::open(&s, "service=pay", None).await;
    let seen = w.next().await.id;
    drop(w);
    // Missed before the stop, then the registry restarts on its data.
    let b = s.register("pay", "b", json!({})).await;
    let dir = s.stop().await;
    let s = TestServer::start_in(dir, |_| {}).await;
    // ... and missed after the start.
    s.delete("/v1/services/pay/instances/a").await;
    let c = s.register("pay", "c", json!({})).await;

    let mut w = Sse::open(&s, "service=pay", Some(seen)).await;
    let e = w.next().await;
    assert_eq!(
        (e.event.as_str(), e.data["instance"]["id"].as_str(), e.id),
        ("upsert", Some("b"), b["modify_index"].as_u64().unwrap())
    );
    let e = w.next().await;
    assert_eq!(
        (e.event.as_str(), e.data["id"].as_str()),
        ("delete", Some("a"))
    );
    let e = w.next().await;
    assert_eq!(
        (e.event.as_str(), e.data["instance"]["id"].as_str(), e.id),
        ("upsert", Some("c"), c["modify_index"].as_u64().unwrap())
    );
    // Resumed at the newest index: told at once that it is current.
    let mut w = Sse::open(&s, "service=pay", Some(e.id)).await;
    assert_eq!(w.next().await.event, "current");
    s.stop().await;
}
