//! Blocking queries wake on their own service only.

use muster_registry::ServiceKey;
use serde_json::json;

use crate::harness::{TestServer, until};

#[tokio::test]
async fn a_blocking_query_is_not_woken_by_another_service() {
    let s = TestServer::start().await;
    s.register("a", "a1", json!({})).await;
    let (_, _, index_a) = s.get("/v1/services/a/instances").await;

    let url = s.url(&format!(
        "/v1/services/a/instances?index={index_a}&wait=60s"
    ));
    let http = s.http.clone();
    let pending = tokio::spawn(async move {
        let r = http.get(url).send().await.unwrap();
        let index: u64 = r.headers()["x-muster-index"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        (index, r.json::<serde_json::Value>().await.unwrap())
    });
    // Wait until the query is parked on service a's channel.
    let key = ServiceKey::new("default", "a");
    until("the blocking query to park", || {
        s.registry.service_waiters(&key) == 1
    })
    .await;

    // A change to b must not answer it: it is still parked afterwards.
    let b = s.register("b", "b1", json!({})).await;
    assert_eq!(s.registry.service_waiters(&key), 1);
    assert!(!pending.is_finished());

    // A change to a answers it, with a's new index.
    let a2 = s.register("a", "a2", json!({})).await;
    let (index, body) = pending.await.unwrap();
    assert_eq!(index, a2["modify_index"].as_u64().unwrap());
    assert!(index > b["modify_index"].as_u64().unwrap());
    let ids: Vec<_> = body["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["a1", "a2"]);
    s.stop().await;
}

#[tokio::test]
async fn a_blocking_query_returns_at_once_when_already_behind() {
    let s = TestServer::start().await;
    s.register("a", "a1", json!({})).await;
    let (status, v, index) = s.get("/v1/services/a/instances?index=0&wait=10m").await;
    assert_eq!(status, 200);
    assert!(index > 0);
    assert_eq!(v["instances"][0]["id"], "a1");
    s.stop().await;
}

#[tokio::test]
async fn the_service_list_blocks_until_the_namespace_changes() {
    let s = TestServer::start().await;
    s.register("a", "a1", json!({})).await;
    let (_, _, index) = s.get("/v1/services").await;
    let url = s.url(&format!("/v1/services?index={index}&wait=60s"));
    let http = s.http.clone();
    let pending = tokio::spawn(async move {
        http.get(url)
            .send()
            .await
            .unwrap()
            .json::<serde_json::Value>()
            .await
            .unwrap()
    });
    // Another namespace does not count.
    s.put(
        "/v1/services/z/instances/z1?namespace=other",
        json!({"address": "10.0.0.9", "port": 1}),
    )
    .await;
    s.register("c", "c1", json!({})).await;
    let v = pending.await.unwrap();
    let names: Vec<_> = v["services"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["a", "c"]);
    s.stop().await;
}

/// A `wait` over the maximum is the same 400 with or without `index`,
/// on both blocking routes, rather than silently capped when `index` is
/// given. `index=0` is behind, so a query that were accepted would answer
/// at once instead of blocking the test.
#[tokio::test]
async fn a_wait_over_the_maximum_is_refused_with_or_without_index() {
    let s = TestServer::start().await;
    s.register("a", "a1", json!({})).await;
    let get = |path: String| {
        let s = &s;
        async move {
            tokio::time::timeout(std::time::Duration::from_secs(30), s.get(&path))
                .await
                .unwrap_or_else(|_| panic!("{path}: no answer within the deadline"))
        }
    };
    for route in ["/v1/services/a/instances", "/v1/services"] {
        for wait in ["99999h", "10m1s", "601s"] {
            let (status, alone, _) = get(format!("{route}?wait={wait}")).await;
            assert_eq!(status, 400, "{route} wait={wait}: {alone}");
            assert_eq!(alone["error"]["code"], "invalid_parameter");
            assert_eq!(alone["error"]["field"], "wait");
            assert!(
                alone["error"]["message"]
                    .as_str()
                    .unwrap()
                    .contains("at most 10m"),
                "{alone}"
            );
            let (status, indexed, _) = get(format!("{route}?index=0&wait={wait}")).await;
            assert_eq!(status, 400, "{route} index=0&wait={wait}: {indexed}");
            assert_eq!(indexed, alone, "{route} wait={wait}");
        }
        // The maximum itself is accepted.
        let (status, v, _) = get(format!("{route}?index=0&wait=10m")).await;
        assert_eq!(status, 200, "{route}: {v}");
    }
    s.stop().await;
}
