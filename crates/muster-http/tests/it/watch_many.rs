//! The multiplexed watch (`POST /v1/watch`): many queries over one stream,
//! each resumed by its own index.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use crate::harness::{Sse, SseEvent, TestServer};

/// Reads events until every query in `ids` is up to date (got a snapshot or
/// a `current`), returning them all in arrival order.
async fn until_current(w: &mut Sse, ids: &[&str]) -> Vec<SseEvent> {
    let mut waiting: Vec<&str> = ids.to_vec();
    let mut out = Vec::new();
    while !waiting.is_empty() {
        let e = w.next().await;
        let q = e.data["query"]
            .as_str()
            .expect("every event names its query");
        assert_eq!(e.event, e.data["type"], "the SSE event name is the type");
        if matches!(e.event.as_str(), "snapshot" | "current") {
            waiting.retain(|w| *w != q);
        }
        out.push(e);
    }
    out
}

/// The events of one query, as (type, instance id or ids).
fn of(events: &[SseEvent], query: &str) -> Vec<(String, String)> {
    events
        .iter()
        .filter(|e| e.data["query"] == query)
        .map(|e| {
            let what = match e.event.as_str() {
                "snapshot" => e.data["instances"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|i| i["id"].as_str().unwrap())
                    .collect::<Vec<_>>()
                    .join(","),
                "upsert" => e.data["instance"]["id"].as_str().unwrap().to_string(),
                "delete" => e.data["id"].as_str().unwrap().to_string(),
                _ => String::new(),
            };
            (e.event.clone(), what)
        })
        .collect()
}

fn ev(t: &str, what: &str) -> (String, String) {
    (t.to_string(), what.to_string())
}

/// The value of an unlabelled gauge in the Prometheus text.
fn gauge(metrics: &str, name: &str) -> f64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no {name} in {metrics}"))
        .trim()
        .parse()
        .unwrap()
}

#[tokio::test]
async fn many_services_and_filters_over_one_stream() {
    let s = TestServer::start().await;
    s.register("pay", "a", json!({"tags": ["v2"]})).await;
    s.register("pay", "b", json!({"tags": ["v1"]})).await;
    s.register("cart", "c", json!({})).await;
    let mut w = Sse::post(
        &s,
        "",
        &json!({"queries": [
            {"id": "pay-v2", "service": "pay", "tag": ["v2"]},
            {"id": "pay", "service": "pay"},
            {"id": "cart", "service": "cart"},
            {"id": "gone", "service": "nothing-here"},
        ]}),
    )
    .await
    .unwrap();
    let first = until_current(&mut w, &["pay-v2", "pay", "cart", "gone"]).await;
    assert_eq!(first.len(), 4, "one snapshot per query: {first:?}");
    assert_eq!(of(&first, "pay-v2"), [ev("snapshot", "a")]);
    assert_eq!(of(&first, "pay"), [ev("snapshot", "a,b")]);
    assert_eq!(of(&first, "cart"), [ev("snapshot", "c")]);
    assert_eq!(of(&first, "gone"), [ev("snapshot", "")]);

    // One stream, four queries, no single-service watcher.
    let m = s.metrics().await;
    assert_eq!(gauge(&m, "muster_watch_streams"), 1.0, "{m}");
    assert_eq!(gauge(&m, "muster_watch_queries"), 4.0, "{m}");

    // A change reaches every query it concerns, through its filter.
    let d = s.register("pay", "d", json!({"tags": ["v2"]})).await;
    let e1 = w.next().await;
    let e2 = w.next().await;
    let mut got = [&e1, &e2]
        .iter()
        .map(|e| (e.data["query"].as_str().unwrap(), e.event.as_str()))
        .collect::<Vec<_>>();
    got.sort();
    assert_eq!(got, [("pay", "upsert"), ("pay-v2", "upsert")]);
    assert_eq!(e1.data["index"], d["modify_index"]);
    // Leaving the filter is a delete for the filtered query only.
    s.register("pay", "a", json!({"tags": ["v1"]})).await;
    let mut got = vec![w.next().await, w.next().await]
        .into_iter()
        .map(|e| (e.data["query"].as_str().unwrap().to_string(), e.event))
        .collect::<Vec<_>>();
    got.sort();
    assert_eq!(
        got,
        [
            ("pay".to_string(), "upsert".to_string()),
            ("pay-v2".to_string(), "delete".to_string())
        ]
    );
    drop(w);
    s.stop().await;
}

#[tokio::test]
async fn a_change_to_one_service_reaches_only_its_query() {
    let s = TestServer::start().await;
    s.register("a", "a1", json!({})).await;
    s.register("b", "b1", json!({})).await;
    let body = json!({"queries": [{"id": "A", "service": "a"}, {"id": "B", "service": "b"}]});
    let mut w = Sse::post(&s, "", &body).await.unwrap();
    until_current(&mut w, &["A", "B"]).await;
    // Each query waits on its own service, once.
    let key = |svc: &str| muster_registry::ServiceKey::new("default", svc);
    assert_eq!(s.registry.service_waiters(&key("a")), 1);
    assert_eq!(s.registry.service_waiters(&key("b")), 1);

    // Three changes to A, then one to B: the stream carries A's three
    // events and then B's, nothing for B before its own change.
    for port in [1, 2, 3] {
        s.register("a", "a1", json!({"port": port})).await;
    }
    s.register("b", "b2", json!({})).await;
    let events: Vec<SseEvent> = vec![
        w.next().await,
        w.next().await,
        w.next().await,
        w.next().await,
    ];
    let seen: Vec<(&str, &str)> = events
        .iter()
        .map(|e| {
            (
                e.data["query"].as_str().unwrap(),
                e.data["instance"]["id"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(seen, [("A", "a1"), ("A", "a1"), ("A", "a1"), ("B", "b2")]);
    s.stop().await;
}

#[tokio::test]
async fn each_query_resumes_from_its_own_index_without_gaps_or_duplicates() {
    let s = TestServer::start().await;
    s.register("pay", "a", json!({})).await;
    s.register("cart", "c", json!({})).await;
    s.register("still", "s", json!({})).await;
    let queries = |idx: &BTreeMap<&str, u64>| {
        let q = |id: &str, svc: &str| match idx.get(id) {
            Some(i) => json!({"id": id, "service": svc, "index": i}),
            None => json!({"id": id, "service": svc}),
        };
        json!({"queries": [q("pay", "pay"), q("cart", "cart"), q("still", "still")]})
    };
    let mut w = Sse::post(&s, "", &queries(&BTreeMap::new())).await.unwrap();
    let first = until_current(&mut w, &["pay", "cart", "still"]).await;
    let mut index = BTreeMap::new();
    for e in &first {
        index.insert(
            match e.data["query"].as_str().unwrap() {
                "pay" => "pay",
                "cart" => "cart",
                _ => "still",
            },
            e.data["index"].as_u64().unwrap(),
        );
    }
    drop(w);

    // While disconnected: changes to pay and cart, interleaved; none to still.
    let b = s.register("pay", "b", json!({})).await;
    s.delete("/v1/services/cart/instances/c").await;
    s.register("cart", "d", json!({})).await;
    let (_, del) = s.delete("/v1/services/pay/instances/a").await;

    let mut w = Sse::post(&s, "", &queries(&index)).await.unwrap();
    let resumed = until_current(&mut w, &["pay", "cart", "still"]).await;
    // Each query gets exactly what it missed, in order, then `current`.
    assert_eq!(
        of(&resumed, "pay"),
        [ev("upsert", "b"), ev("delete", "a"), ev("current", "")]
    );
    assert_eq!(
        of(&resumed, "cart"),
        [ev("delete", "c"), ev("upsert", "d"), ev("current", "")]
    );
    assert_eq!(of(&resumed, "still"), [ev("current", "")]);
    let pay: Vec<&SseEvent> = resumed
        .iter()
        .filter(|e| e.data["query"] == "pay")
        .collect();
    assert_eq!(pay[0].data["index"], b["modify_index"]);
    assert_eq!(
        pay[2].data["index"], del["index"],
        "current at the last change"
    );
    let still = resumed.iter().find(|e| e.data["query"] == "still").unwrap();
    assert_eq!(still.data["index"].as_u64(), index.get("still").copied());

    // Live again: a new change arrives once, for its query.
    s.register("pay", "e", json!({})).await;
    let e = w.next().await;
    assert_eq!(
        (e.data["query"].as_str(), e.event.as_str()),
        (Some("pay"), "upsert")
    );
    s.stop().await;
}

#[tokio::test]
async fn a_too_old_or_future_index_gets_a_fresh_snapshot() {
    let s = TestServer::start().await;
    for i in 0..(muster_registry::HISTORY_PER_SERVICE as u16 + 20) {
        s.register("pay", "a", json!({"port": 1000 + i})).await;
    }
    let body = json!({"queries": [
        {"id": "old", "service": "pay", "index": 1},
        {"id": "future", "service": "pay", "index": 1_000_000},
    ]});
    let mut w = Sse::post(&s, "", &body).await.unwrap();
    let events = until_current(&mut w, &["old", "future"]).await;
    assert_eq!(of(&events, "old"), [ev("snapshot", "a")]);
    assert_eq!(of(&events, "future"), [ev("snapshot", "a")]);
    s.stop().await;
}

#[tokio::test]
async fn queries_take_their_namespace_from_the_query_or_the_request() {
    let s = TestServer::start().await;
    s.put(
        "/v1/services/pay/instances/staging-1?namespace=staging",
        json!({"address": "10.0.0.2", "port": 1}),
    )
    .await;
    s.register("pay", "prod-1", json!({})).await;
    let body = json!({"queries": [
        {"id": "here", "service": "pay"},
        {"id": "default", "service": "pay", "namespace": "default"},
    ]});
    let mut w = Sse::post(&s, "namespace=staging", &body).await.unwrap();
    let events = until_current(&mut w, &["here", "default"]).await;
    assert_eq!(of(&events, "here"), [ev("snapshot", "staging-1")]);
    assert_eq!(of(&events, "default"), [ev("snapshot", "prod-1")]);
    s.stop().await;
}

/// The error of a refused multiplexed watch.
async fn refused(s: &TestServer, query: &str, body: Value) -> (u16, String, Value) {
    let (status, v) = match Sse::post(s, query, &body).await {
        Ok(_) => panic!("{body} was accepted"),
        Err(e) => e,
    };
    (
        status,
        v["error"]["code"].as_str().unwrap_or_default().to_string(),
        v["error"]["field"].clone(),
    )
}

#[tokio::test]
async fn limits_and_bad_queries_are_typed_errors_and_open_nothing() {
    let s = TestServer::start_with(|c| c.watch_max_queries = 3).await;
    let q = |id: &str| json!({"id": id, "service": "pay"});
    let cases = [
        (
            json!({"queries": [q("1"), q("2"), q("3"), q("4")]}),
            (400, "too_many_queries", json!("queries")),
        ),
        (
            json!({"queries": []}),
            (400, "invalid_field", json!("queries")),
        ),
        (
            json!({"queries": [q("1"), q("1")]}),
            (400, "invalid_field", json!("queries[1].id")),
        ),
        (
            json!({"queries": [q("")]}),
            (400, "invalid_field", json!("queries[0].id")),
        ),
        (
            json!({"queries": [q("1"), {"id": "2", "service": "Bad_Name"}]}),
            (400, "invalid_field", json!("queries[1].service")),
        ),
        (
            json!({"queries": [{"id": "1", "service": "pay", "health": "sick"}]}),
            (400, "invalid_parameter", json!("queries[0].health")),
        ),
        (
            json!({"queries": [{"id": "1", "service": "pay", "meta": ["nokey"]}]}),
            (400, "invalid_parameter", json!("queries[0].meta")),
        ),
        (
            json!({"queries": [{"id": "1", "service": "pay", "namespace": "NO"}]}),
            (400, "invalid_field", json!("queries[0].namespace")),
        ),
        (
            json!({"queries": [{"id": "1", "service": "pay", "colour": "red"}]}),
            (400, "invalid_field", json!("queries[0]")),
        ),
        (
            json!({"queries": [{"id": "1"}]}),
            (400, "invalid_field", json!("queries[0]")),
        ),
        (
            json!({"queries": [{"id": "1", "service": "pay", "index": -1}]}),
            (400, "invalid_field", json!("queries[0].index")),
        ),
    ];
    for (body, (status, code, field)) in cases {
        let got = refused(&s, "", body.clone()).await;
        assert_eq!(got.0, status, "{body}: {got:?}");
        assert_eq!(got.1, code, "{body}: {got:?}");
        if field.as_str().is_some_and(|f| f.ends_with(']')) {
            // serde names the object for an unknown or missing field.
            assert!(
                got.2
                    .as_str()
                    .unwrap_or_default()
                    .starts_with(field.as_str().unwrap()),
                "{body}: {got:?}"
            );
        } else {
            assert_eq!(got.2, field, "{body}: {got:?}");
        }
    }
    let (status, code, _) = refused(&s, "namespace=NO", json!({"queries": [q("1")]})).await;
    assert_eq!((status, code.as_str()), (400, "invalid_field"));
    let (status, code, _) = refused(&s, "colour=red", json!({"queries": [q("1")]})).await;
    assert_eq!((status, code.as_str()), (400, "invalid_parameter"));

    // Over the body limit: 413, as every route.
    let many: Vec<Value> = (0..2000)
        .map(|i| json!({"id": format!("query-{i:04}"), "service": "pay"}))
        .collect();
    let (status, code, _) = refused(&s, "", json!({ "queries": many })).await;
    assert_eq!((status, code.as_str()), (413, "body_too_large"));
    let r = s
        .http
        .post(s.url("/v1/watch"))
        .header("content-type", "application/json")
        .body("{\"queries\": [")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "malformed_json");

    // Nothing refused opened a watch; the limit itself is accepted.
    let m = s.metrics().await;
    assert!(!m.contains("muster_watch_streams_opened_total"), "{m}");
    let mut w = Sse::post(&s, "", &json!({"queries": [q("1"), q("2"), q("3")]}))
        .await
        .unwrap();
    until_current(&mut w, &["1", "2", "3"]).await;
    s.stop().await;
}

#[tokio::test]
async fn server_shutdown_ends_the_stream() {
    let s = TestServer::start().await;
    s.register("pay", "a", json!({})).await;
    let body = json!({"queries": [{"id": "p", "service": "pay"}, {"id": "c", "service": "cart"}]});
    let mut w = Sse::post(&s, "", &body).await.unwrap();
    until_current(&mut w, &["p", "c"]).await;
    let reader = tokio::spawn(async move { w.ended().await });
    s.stop().await;
    tokio::time::timeout(std::time::Duration::from_secs(10), reader)
        .await
        .expect("the stream ended")
        .unwrap();
}
