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
    for i in 0..(muster_catalog::HISTORY_PER_SERVICE as u16 + 20) {
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
