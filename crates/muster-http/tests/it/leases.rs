//! Leases: shared leases, revocation, renewal, expiry on a paused clock,
//! self-preservation.

use std::time::Duration;

use serde_json::json;

use crate::harness::{Sse, TestServer};

#[tokio::test]
async fn revoke_removes_every_instance_of_the_lease() {
    let s = TestServer::start().await;
    let (status, lease) = s.post("/v1/leases", json!({"ttl": "30s"})).await;
    assert_eq!(status, 201, "{lease}");
    let id = lease["id"].as_str().unwrap().to_string();
    for (svc, inst) in [("pay", "p1"), ("pay", "p2"), ("cart", "c1")] {
        s.register(svc, inst, json!({"lease": id})).await;
    }
    s.register("pay", "keeper", json!({})).await;
    let (_, info, _) = s.get(&format!("/v1/leases/{id}")).await;
    assert_eq!(info["instances"], 3);

    // One renewal keeps them all alive.
    let r = s
        .http
        .put(s.url(&format!("/v1/leases/{id}/renew")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    let (status, w) = s.delete(&format!("/v1/leases/{id}")).await;
    assert_eq!((status, w["removed"].as_u64()), (200, Some(3)));
    assert_eq!(s.ids("/v1/services/pay/instances").await, ["keeper"]);
    assert!(s.ids("/v1/services/cart/instances").await.is_empty());
    let (status, e) = s.delete(&format!("/v1/leases/{id}")).await;
    assert_eq!(
        (status, e["error"]["code"].as_str()),
        (404, Some("lease_not_found"))
    );
    let r = s
        .http
        .put(s.url(&format!("/v1/leases/{id}/renew")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    s.stop().await;
}

#[tokio::test]
async fn heartbeats_and_batch_renewal() {
    let s = TestServer::start().await;
    let inst = s.register("pay", "p1", json!({"ttl": "10s"})).await;
    let lease = inst["lease"].as_str().unwrap().to_string();
    let r = s
        .http
        .put(s.url("/v1/services/pay/instances/p1/heartbeat"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(
        (v["id"].as_str(), v["ttl_ms"].as_u64()),
        (Some(lease.as_str()), Some(10_000))
    );

    s.register("pay", "persistent", json!({})).await;
    let r = s
        .http
        .put(s.url("/v1/services/pay/instances/persistent/heartbeat"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 409);

    let (status, v) = s
        .post(
            "/v1/leases/renew",
            json!({"ids": [lease, "00000000000000aa"]}),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(v["renewed"], json!([lease]));
    assert_eq!(v["not_found"], json!(["00000000000000aa"]));
    s.stop().await;
}

#[tokio::test]
async fn expiry_removes_instances_on_a_paused_clock() {
    let s = TestServer::start().await;
    let short = s.register("pay", "short", json!({"ttl": "5s"})).await;
    s.register("pay", "long", json!({"ttl": "1h"})).await;
    let mut w = Sse::open(&s, "service=pay", None).await.untimed();
    let snap = w.next().await;
    assert_eq!(snap.event, "snapshot");
    assert_eq!(snap.data["instances"].as_array().unwrap().len(), 2);
    // The store's fsync runs on its own thread, which a paused clock would
    // race at start-up; so the clock stops only once everything is in place.
    tokio::time::pause();
    // The paused clock jumps to the next timer whenever the runtime idles,
    // so the 5 s lease lapses without the test waiting 5 s.
    let gone = w.next().await;
    assert_eq!(
        (gone.event.as_str(), gone.data["id"].as_str()),
        ("delete", Some("short"))
    );
    assert!(gone.id > short["modify_index"].as_u64().unwrap());
    assert_eq!(s.ids("/v1/services/pay/instances").await, ["long"]);
    let lease = short["lease"].as_str().unwrap();
    let (status, _, _) = s.get(&format!("/v1/leases/{lease}")).await;
    assert_eq!(status, 404, "the instance's own lease went with it");
    s.stop().await;
}

#[tokio::test]
async fn renewals_keep_an_instance_past_many_ttls() {
    let s = TestServer::start().await;
    s.register("pay", "p1", json!({"ttl": "3s"})).await;
    tokio::time::pause();
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_secs(1)).await; // paced renewals, not waiting on state
        let r = s
            .http
            .put(s.url("/v1/services/pay/instances/p1/heartbeat"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    assert_eq!(s.ids("/v1/services/pay/instances").await, ["p1"]);
    s.stop().await;
}

#[tokio::test]
async fn self_preservation_pauses_expiry_and_resumes() {
    let s = TestServer::start_with(|c| {
        c.self_preservation_threshold = 0.5;
        c.self_preservation_min_leases = 4;
    })
    .await;
    let mut leases = Vec::new();
    for i in 0..10 {
        let v = s
            .register("pay", &format!("p{i}"), json!({"ttl": "10s"}))
            .await;
        leases.push(v["lease"].as_str().unwrap().to_string());
    }
    // Every client renews once (so each lease shows a live client) ...
    let (status, _) = s.post("/v1/leases/renew", json!({"ids": leases})).await;
    assert_eq!(status, 200);
    tokio::time::pause();
    let mut preserving = s.registry.self_preservation();
    // ... then nobody renews: every lease falls silent at once and the
    // registry hears nobody, so expiry pauses.
    preserving.wait_for(|on| *on).await.unwrap();
    tokio::time::sleep(Duration::from_secs(30)).await; // well past every TTL
    assert_eq!(
        s.ids("/v1/services/pay/instances").await.len(),
        10,
        "nothing dropped"
    );
    let (_, c, _) = s.get("/v1/cluster").await;
    assert_eq!(c["self_preservation"], true);

    // Renewals return for eight of ten (and go on, every third of the TTL,
    // as a client's do: with the clock paused, time jumps ahead whenever
    // the runtime waits on an fsync, so one renewal would not keep them):
    // expiry resumes and takes the other two.
    let (status, v) = s
        .post("/v1/leases/renew", json!({"ids": leases[..8]}))
        .await;
    assert_eq!((status, v["renewed"].as_array().unwrap().len()), (200, 8));
    let renewer = tokio::spawn({
        let (http, url) = (s.http.clone(), s.url("/v1/leases/renew"));
        let ids = json!({"ids": leases[..8]});
        async move {
            loop {
                tokio::time::sleep(Duration::from_secs(3)).await; // pacing, not waiting on state
                let r = http.post(&url).json(&ids).send().await.unwrap();
                assert_eq!(r.status(), 200);
            }
        }
    });
    preserving.wait_for(|on| !*on).await.unwrap();
    let mut w = Sse::open(&s, "service=pay", None).await.untimed();
    let mut left = w.next().await.data["instances"].as_array().unwrap().len();
    while left > 8 {
        assert_eq!(w.next().await.event, "delete");
        left -= 1;
    }
    let ids = s.ids("/v1/services/pay/instances").await;
    assert_eq!(ids, (0..8).map(|i| format!("p{i}")).collect::<Vec<_>>());
    renewer.abort();
    s.stop().await;
}

/// Instances kept by self-preservation say so, in answers and watches;
/// past the bound they turn critical (kept, but no longer passing); renewed
/// ones are released and the silent ones expire once renewals return.
#[tokio::test]
async fn preserved_instances_are_marked_then_lapse_then_are_released() {
    let s = TestServer::start_with(|c| {
        c.self_preservation_threshold = 0.5;
        c.self_preservation_min_leases = 4;
        c.self_preservation_bound = Duration::from_secs(20);
    })
    .await;
    let mut leases = Vec::new();
    for i in 0..10 {
        let v = s
            .register("pay", &format!("p{i}"), json!({"ttl": "10s"}))
            .await;
        leases.push(v["lease"].as_str().unwrap().to_string());
    }
    let (status, _) = s.post("/v1/leases/renew", json!({"ids": leases})).await;
    assert_eq!(status, 200);
    tokio::time::pause();
    let mut any = Sse::open(&s, "service=pay&health=any", None)
        .await
        .untimed();
    assert_eq!(
        any.next().await.data["instances"].as_array().unwrap().len(),
        10
    );
    let mut passing = Sse::open(&s, "service=pay", None).await.untimed();
    assert_eq!(
        passing.next().await.data["instances"]
            .as_array()
            .unwrap()
            .len(),
        10
    );

    // Past their deadlines with nobody heard: kept, marked, still passing.
    let mut marked = std::collections::BTreeSet::new();
    while marked.len() < 10 {
        let e = any.next().await;
        assert_eq!(e.event, "upsert", "{e:?}");
        let i = &e.data["instance"];
        assert_eq!(
            (&i["preserved"], &i["health"]),
            (&json!(true), &json!("passing"))
        );
        marked.insert(i["id"].as_str().unwrap().to_string());
    }
    let (_, v, _) = s.get("/v1/services/pay/instances").await;
    let instances = v["instances"].as_array().unwrap();
    assert_eq!(instances.len(), 10);
    assert!(instances.iter().all(|i| i["preserved"] == true));
    let (_, c, _) = s.get("/v1/cluster").await;
    assert_eq!(
        (
            &c["self_preservation"],
            &c["preserved_leases"],
            &c["lapsed_leases"]
        ),
        (&json!(true), &json!(10), &json!(0))
    );

    // Past the bound: critical, so passing-only discovery drops them, but
    // they are still there.
    let mut left = 10;
    while left > 0 {
        let e = passing.next().await;
        if e.event == "delete" {
            left -= 1;
        } else {
            assert_eq!(e.event, "upsert", "{e:?}");
        }
    }
    assert!(s.ids("/v1/services/pay/instances").await.is_empty());
    let all = s.ids("/v1/services/pay/instances?health=any").await;
    assert_eq!(all.len(), 10);
    let (_, v, _) = s.get("/v1/services/pay/instances/p0").await;
    assert_eq!(
        (&v["preserved"], &v["health"]),
        (&json!(true), &json!("critical"))
    );
    let (_, c, _) = s.get("/v1/cluster").await;
    assert_eq!(
        (&c["preserved_leases"], &c["lapsed_leases"]),
        (&json!(0), &json!(10))
    );
    let metrics = s.metrics().await;
    assert!(
        metrics.contains("muster_preserved_leases{state=\"lapsed\"} 10"),
        "{metrics}"
    );

    // Renewals return for eight (and go on, every third of the TTL, as a
    // client's do): those are released and pass again, the other two expire.
    let renewer = tokio::spawn({
        let (http, url) = (s.http.clone(), s.url("/v1/leases/renew"));
        let ids = json!({"ids": leases[..8]});
        async move {
            loop {
                let r = http.post(&url).json(&ids).send().await.unwrap();
                assert_eq!(r.status(), 200);
                tokio::time::sleep(Duration::from_secs(3)).await; // pacing, not waiting on state
            }
        }
    });
    let mut back = std::collections::BTreeSet::new();
    while back.len() < 8 {
        let e = passing.next().await;
        if e.event == "delete" {
            // A removal is announced to every watch of the service, also
            // to one that no longer showed the instance.
            assert!(
                ["p8", "p9"].contains(&e.data["id"].as_str().unwrap()),
                "{e:?}"
            );
            continue;
        }
        assert_eq!(e.event, "upsert", "{e:?}");
        let i = &e.data["instance"];
        assert_eq!(
            (i.get("preserved"), &i["health"]),
            (None, &json!("passing"))
        );
        back.insert(i["id"].as_str().unwrap().to_string());
    }
    let expected: Vec<String> = (0..8).map(|i| format!("p{i}")).collect();
    assert_eq!(back.into_iter().collect::<Vec<_>>(), expected);
    let mut gone = 0;
    while gone < 2 {
        let e = any.next().await;
        if e.event == "delete" {
            gone += 1;
        }
    }
    assert_eq!(
        s.ids("/v1/services/pay/instances?health=any").await,
        expected
    );
    let (_, c, _) = s.get("/v1/cluster").await;
    assert_eq!(
        (
            &c["self_preservation"],
            &c["preserved_leases"],
            &c["lapsed_leases"]
        ),
        (&json!(false), &json!(0), &json!(0))
    );
    renewer.abort();
    s.stop().await;
}

/// The probe's case: leases that were never renewed are no evidence of a
/// registry cut off from its clients, however many of them go silent.
#[tokio::test]
async fn instances_never_renewed_expire_even_as_a_silent_majority() {
    let s = TestServer::start_with(|c| {
        c.self_preservation_threshold = 0.85;
        c.self_preservation_min_leases = 10;
    })
    .await;
    for i in 0..20 {
        s.register("batch", &format!("b{i}"), json!({"ttl": "2s"}))
            .await;
    }
    tokio::time::pause();
    let mut w = Sse::open(&s, "service=batch", None).await.untimed();
    let mut left = w.next().await.data["instances"].as_array().unwrap().len();
    assert_eq!(left, 20);
    while left > 0 {
        assert_eq!(w.next().await.event, "delete");
        left -= 1;
    }
    assert!(!*s.registry.self_preservation().borrow());
    let (_, c, _) = s.get("/v1/cluster").await;
    assert_eq!(c["self_preservation"], false);
    s.stop().await;
}

/// Many tasks register (with an own lease, a shared lease or none),
/// deregister and revoke the leases of the same two ids at once. Whatever
/// order the writes took, the result is one that a serial order gives:
/// every instance's lease exists and counts it, every lease counts exactly
/// the instances that name it, and no own lease outlives its instances.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writes_to_the_same_ids_leave_nothing_half_applied() {
    let s = std::sync::Arc::new(TestServer::start().await);
    let (status, shared) = s.post("/v1/leases", json!({"ttl": "60s"})).await;
    assert_eq!(status, 201, "{shared}");
    let shared = shared["id"].as_str().unwrap().to_string();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(vec![shared.clone()]));
    let tasks: Vec<_> = (0..8u64)
        .map(|t| {
            let (s, shared, seen) = (s.clone(), shared.clone(), seen.clone());
            tokio::spawn(async move {
                let mut last_lease: Option<String> = None;
                // Bounded: 40 operations per task, in a fixed pseudo-random mix.
                for n in 0..40u64 {
                    let id = if (t + n) % 2 == 0 { "x" } else { "y" };
                    let path = format!("/v1/services/race/instances/{id}");
                    match (t * 7 + n * 13) % 5 {
                        0 => {
                            let (st, v) = s
                                .put(
                                    &path,
                                    json!({"address": "10.0.0.1", "port": 1, "ttl": "60s"}),
                                )
                                .await;
                            if st == 200 {
                                last_lease = v["lease"].as_str().map(String::from);
                                seen.lock().unwrap().extend(last_lease.clone());
                            }
                        }
                        1 => {
                            let (st, _) = s
                                .put(
                                    &path,
                                    json!({"address": "10.0.0.1", "port": 2, "lease": shared}),
                                )
                                .await;
                            assert_eq!(st, 200);
                        }
                        2 => {
                            let (st, _) = s
                                .put(&path, json!({"address": "10.0.0.1", "port": 3}))
                                .await;
                            assert_eq!(st, 200);
                        }
                        3 => {
                            let (st, _) = s.delete(&path).await;
                            assert!(st == 200 || st == 404, "deregister: {st}");
                        }
                        _ => {
                            if let Some(l) = last_lease.take() {
                                let (st, _) = s.delete(&format!("/v1/leases/{l}")).await;
                                assert!(st == 200 || st == 404, "revoke: {st}");
                            }
                        }
                    }
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }

    let (_, v, _) = s.get("/v1/services/race/instances?health=any").await;
    let instances = v["instances"].as_array().unwrap().clone();
    let mut seen = seen.lock().unwrap().clone();
    seen.sort();
    seen.dedup();
    for lease in &seen {
        let naming = instances
            .iter()
            .filter(|i| i["lease"].as_str() == Some(lease.as_str()))
            .count() as u64;
        let (status, info, _) = s.get(&format!("/v1/leases/{lease}")).await;
        if status == 200 {
            assert_eq!(info["instances"], naming, "lease {lease}: {info}");
            if *lease != shared {
                assert!(naming > 0, "own lease {lease} outlived its instances");
            }
        } else {
            assert_eq!(status, 404);
            assert_eq!(naming, 0, "instances name lease {lease}, which is gone");
        }
    }
    for i in &instances {
        if let Some(l) = i["lease"].as_str() {
            assert!(seen.iter().any(|s| s == l), "unknown lease {l} on {i}");
        }
    }
}
