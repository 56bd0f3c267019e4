//! Registration, discovery filters, deregistration, services, cluster.

use serde_json::json;

use crate::harness::TestServer;

#[tokio::test]
async fn register_is_idempotent_and_replaces() {
    let s = TestServer::start().await;
    let first = s.register("payments", "p1", json!({"tags": ["v1"]})).await;
    let again = s.register("payments", "p1", json!({"tags": ["v1"]})).await;
    assert_eq!(first, again, "the same registration twice changes nothing");
    assert_eq!(s.ids("/v1/services/payments/instances").await, ["p1"]);

    let replaced = s
        .register("payments", "p1", json!({"port": 9090, "tags": ["v2"]}))
        .await;
    assert_eq!(replaced["port"], 9090);
    assert_eq!(replaced["create_index"], first["create_index"]);
    assert!(replaced["modify_index"].as_u64() > first["modify_index"].as_u64());
    let (_, v, index) = s.get("/v1/services/payments/instances").await;
    assert_eq!(v["instances"].as_array().unwrap().len(), 1, "no duplicate");
    assert_eq!(index, replaced["modify_index"].as_u64().unwrap());
    s.stop().await;
}

#[tokio::test]
async fn every_filter_selects_what_it_should() {
    let s = TestServer::start().await;
    s.register("pay", "a", json!({"tags": ["v2", "eu"], "version": "1.4.2", "zone": "eu-1a", "meta": {"team": "core"}})).await;
    s.register(
        "pay",
        "b",
        json!({"tags": ["v2"], "version": "1.9.0", "zone": "eu-1b", "meta": {"team": "edge"}}),
    )
    .await;
    s.register(
        "pay",
        "c",
        json!({"tags": ["v1"], "version": "2.1.0", "zone": "us-1"}),
    )
    .await;
    s.register("pay", "d", json!({"version": "blue"})).await;
    let q = |query: &str| format!("/v1/services/pay/instances?{query}");
    assert_eq!(s.ids(&q("")).await, ["a", "b", "c", "d"]);
    assert_eq!(s.ids(&q("tag=v2")).await, ["a", "b"]);
    assert_eq!(s.ids(&q("tag=v2&tag=eu")).await, ["a"]);
    assert_eq!(s.ids(&q("meta=team:edge")).await, ["b"]);
    assert_eq!(s.ids(&q("version=%5E1.4")).await, ["a", "b"]);
    assert_eq!(s.ids(&q("version=%3E%3D2,%3C3")).await, ["c"]);
    assert_eq!(s.ids(&q("version=blue")).await, ["d"]);
    assert_eq!(s.ids(&q("zone=us-1")).await, ["c"]);
    assert_eq!(s.ids(&q("health=any&zone=eu-1b")).await, ["b"]);
    assert_eq!(s.ids(&q("tag=v2&zone=eu-1b&version=%5E1")).await, ["b"]);
    assert!(s.ids(&q("tag=nope")).await.is_empty());
    // Namespaces isolate.
    assert!(
        s.ids("/v1/services/pay/instances?namespace=staging")
            .await
            .is_empty()
    );
    s.stop().await;
}

#[tokio::test]
async fn deregister_get_services_and_cluster() {
    let s = TestServer::start().await;
    s.register("pay", "a", json!({})).await;
    s.register("pay", "b", json!({})).await;
    s.register("cart", "x", json!({})).await;
    let (status, one, _) = s.get("/v1/services/pay/instances/a").await;
    assert_eq!((status, one["id"].as_str()), (200, Some("a")));

    let (_, list, _) = s.get("/v1/services").await;
    let names: Vec<_> = list["services"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["cart", "pay"]);
    assert_eq!(list["services"][1]["passing"], 2);

    let (status, w) = s.delete("/v1/services/pay/instances/a").await;
    assert_eq!((status, w["removed"].as_u64()), (200, Some(1)));
    assert_eq!(s.ids("/v1/services/pay/instances").await, ["b"]);
    let (status, e) = s.delete("/v1/services/pay/instances/a").await;
    assert_eq!(
        (status, e["error"]["code"].as_str()),
        (404, Some("not_found"))
    );
    let (status, _, _) = s.get("/v1/services/pay/instances/a").await;
    assert_eq!(status, 404);

    let (_, c, _) = s.get("/v1/cluster").await;
    assert_eq!(c["node_id"], 1);
    assert_eq!(c["leader"], 1);
    assert_eq!(c["members"], json!([1]));
    assert!(c["commit_index"].as_u64().unwrap() >= 4);
    s.stop().await;
}

#[tokio::test]
async fn reads_are_served_from_cache_until_the_index_moves() {
    let s = TestServer::start().await;
    s.register("pay", "a", json!({})).await;
    let first = s
        .http
        .get(s.url("/v1/services/pay/instances?tag=x&health=any"))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let second = s
        .http
        .get(s.url("/v1/services/pay/instances?health=any&tag=x"))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(first, second);
    s.register("pay", "b", json!({"tags": ["x"]})).await;
    assert_eq!(
        s.ids("/v1/services/pay/instances?tag=x&health=any").await,
        ["b"],
        "a change invalidates"
    );
    let metrics = s.metrics().await;
    assert!(
        metrics.contains("muster_read_cache_total{result=\"hit\"}"),
        "{metrics}"
    );
    s.stop().await;
}

#[tokio::test]
async fn metrics_expose_requests_instances_and_leases() {
    let s = TestServer::start().await;
    s.register("pay", "a", json!({"ttl": "30s"})).await;
    let text = s.metrics().await;
    for needle in [
        "muster_http_requests_total{method=\"PUT\",route=\"/v1/services/{service}/instances/{id}\",status=\"200\"}",
        "muster_http_request_duration_seconds_bucket",
        "muster_instances",
        "muster_leases",
        "muster_self_preservation",
    ] {
        assert!(text.contains(needle), "missing {needle} in\n{text}");
    }
    s.stop().await;
}

#[tokio::test]
async fn request_metrics_are_labelled_by_route_template_even_on_errors() {
    let s = TestServer::start().await;
    let renew = s.url("/v1/leases/00000000000000aa/renew");
    let unknown = s.http.put(&renew).send().await.unwrap();
    assert_eq!(unknown.status(), 404);
    let wrong_method = s.http.delete(&renew).send().await.unwrap();
    assert_eq!(wrong_method.status(), 405);
    assert_eq!(wrong_method.headers()["allow"], "PUT");
    let head = s.http.head(s.url("/healthz")).send().await.unwrap();
    assert_eq!(head.status(), 200);
    let no_route = s.http.get(s.url("/v2/nothing")).send().await.unwrap();
    assert_eq!(no_route.status(), 404);
    let text = s.metrics().await;
    for needle in [
        "muster_http_requests_total{method=\"PUT\",route=\"/v1/leases/{id}/renew\",status=\"404\"}",
        "muster_http_requests_total{method=\"DELETE\",route=\"/v1/leases/{id}/renew\",status=\"405\"}",
        "muster_http_requests_total{method=\"GET\",route=\"unmatched\",status=\"404\"}",
        "muster_http_requests_total{method=\"HEAD\",route=\"/healthz\",status=\"200\"}",
        "muster_http_request_duration_seconds_count{method=\"PUT\",route=\"/v1/leases/{id}/renew\"}",
    ] {
        assert!(text.contains(needle), "missing {needle} in\n{text}");
    }
    s.stop().await;
}

#[tokio::test]
async fn state_survives_a_graceful_restart() {
    let s = TestServer::start().await;
    s.register("pay", "a", json!({"tags": ["v2"]})).await;
    s.register("pay", "b", json!({"ttl": "1h"})).await;
    let dir = s.stop().await;
    let s = TestServer::start_in(dir, |_| {}).await;
    assert_eq!(s.ids("/v1/services/pay/instances").await, ["a", "b"]);
    s.stop().await;
}

#[tokio::test]
async fn restart_recovers_from_snapshot_plus_log() {
    // A tiny snapshot interval forces several snapshots and log compaction.
    let s = TestServer::start_with(|c| c.snapshot_logs = 10).await;
    for i in 0..45 {
        s.register("pay", &format!("i{i:02}"), json!({"port": 1000 + i}))
            .await;
    }
    s.delete("/v1/services/pay/instances/i07").await;
    let (_, before, before_index) = s.get("/v1/services/pay/instances").await;
    let dir = s.stop().await;
    let s = TestServer::start_in(dir, |c| c.snapshot_logs = 10).await;
    let (_, after, after_index) = s.get("/v1/services/pay/instances").await;
    assert_eq!(after, before);
    assert_eq!(after_index, before_index);
    s.stop().await;
}
