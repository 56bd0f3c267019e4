//! Every balancing strategy, checked for its distribution with a fixed seed.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use muster_client::types::{Health, Instance, RegisterRequest};
use muster_client::{Balancer, Error, Snapshot, Strategy};

use crate::harness::TestServer;

fn inst(id: &str, zone: &str, weight: u32) -> Instance {
    // From JSON, so fields the registry adds later keep their defaults.
    serde_json::from_value(serde_json::json!({
        "id": id, "namespace": "default", "service": "pay",
        "address": "10.0.0.1", "port": 8080, "tags": [], "meta": {},
        "version": null, "zone": zone, "weight": weight, "health": "passing",
        "lease": null, "create_index": 1, "modify_index": 1, "registered_at_ms": 0
    }))
    .unwrap()
}

fn three() -> Vec<Instance> {
    vec![
        inst("a", "eu-1a", 100),
        inst("b", "eu-1a", 100),
        inst("c", "eu-1b", 100),
    ]
}

/// Picks `n` times (dropping each pick at once) and counts per id.
async fn counts(b: &Balancer, n: usize) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for _ in 0..n {
        let p = b.pick().await.unwrap();
        *out.entry(p.id().to_string()).or_default() += 1;
    }
    out
}

fn share(c: &BTreeMap<String, usize>, id: &str, n: usize) -> f64 {
    *c.get(id).unwrap_or(&0) as f64 / n as f64
}

#[tokio::test]
async fn round_robin_takes_turns() {
    let b = Balancer::fixed(three(), Strategy::RoundRobin);
    let mut order = Vec::new();
    for _ in 0..6 {
        order.push(b.pick().await.unwrap().id().to_string());
    }
    assert_eq!(order, ["a", "b", "c", "a", "b", "c"]);
    let c = counts(&b, 300).await;
    assert_eq!(c.values().copied().collect::<Vec<_>>(), [100, 100, 100]);
}

#[tokio::test]
async fn random_is_uniform_and_reproducible_with_a_seed() {
    let n = 6000;
    let c = counts(&Balancer::fixed(three(), Strategy::Random).seed(7), n).await;
    for id in ["a", "b", "c"] {
        let s = share(&c, id, n);
        assert!((s - 1.0 / 3.0).abs() < 0.03, "{id}: {s} of {c:?}");
    }
    let again = counts(&Balancer::fixed(three(), Strategy::Random).seed(7), n).await;
    assert_eq!(c, again, "same seed, same picks");
}

#[tokio::test]
async fn weighted_respects_weights() {
    let n = 10_000;
    let b = Balancer::fixed(
        vec![
            inst("a", "z", 100),
            inst("b", "z", 300),
            inst("c", "z", 600),
        ],
        Strategy::Weighted,
    )
    .seed(11);
    let c = counts(&b, n).await;
    for (id, want) in [("a", 0.1), ("b", 0.3), ("c", 0.6)] {
        let s = share(&c, id, n);
        assert!((s - want).abs() < 0.02, "{id}: {s}, want {want}: {c:?}");
    }
}

#[tokio::test]
async fn p2c_prefers_the_less_loaded() {
    let b = Balancer::fixed(three(), Strategy::PowerOfTwoChoices).seed(3);
    // Load "a" with 20 outstanding requests (picked from a list of "a" only,
    // since p2c itself would never pile them up).
    let only_a = Snapshot::from_instances(vec![inst("a", "eu-1a", 100)]);
    let held: Vec<_> = (0..20).map(|_| b.pick_from(&only_a).unwrap()).collect();
    assert_eq!(b.outstanding("a"), 20);
    // Of any two distinct instances, the idle one wins: "a" is never picked.
    let c = counts(&b, 600).await;
    assert_eq!(share(&c, "a", 600), 0.0, "{c:?}");
    assert!(
        share(&c, "b", 600) > 0.4 && share(&c, "c", 600) > 0.4,
        "{c:?}"
    );
    drop(held);
    assert_eq!(b.outstanding("a"), 0, "guards give their request back");

    // Requests that stay outstanding end up spread evenly.
    let mut held = Vec::new();
    for _ in 0..90 {
        held.push(b.pick().await.unwrap());
    }
    let loads: Vec<usize> = ["a", "b", "c"].iter().map(|i| b.outstanding(i)).collect();
    let spread = loads.iter().max().unwrap() - loads.iter().min().unwrap();
    assert!(spread <= 2, "loads {loads:?}");

    // Random, for contrast, lets the loaded instance take its third.
    let r = Balancer::fixed(three(), Strategy::Random).seed(3);
    let _pinned: Vec<_> = (0..20).map(|_| r.pick_from(&only_a).unwrap()).collect();
    assert_eq!(r.outstanding("a"), 20);
    let c = counts(&r, 600).await;
    assert!(share(&c, "a", 600) > 0.25, "{c:?}");
}

#[tokio::test(start_paused = true)]
async fn zone_preference_falls_back_and_failures_eject() {
    let b = Balancer::fixed(three(), Strategy::RoundRobin)
        .prefer_zone("eu-1a")
        .ejection(Duration::from_secs(1), Duration::from_secs(8));
    let c = counts(&b, 100).await;
    assert_eq!(c, BTreeMap::from([("a".into(), 50), ("b".into(), 50)]));

    // "a" fails: ejected for one second, its zone peer takes everything.
    let p = loop {
        let p = b.pick().await.unwrap();
        if p.id() == "a" {
            break p;
        }
    };
    p.report_failure();
    assert_eq!(counts(&b, 10).await, BTreeMap::from([("b".into(), 10)]));

    // "b" fails too: the preferred zone is empty, so the other zone serves.
    b.pick().await.unwrap().report_failure();
    assert_eq!(counts(&b, 10).await, BTreeMap::from([("c".into(), 10)]));

    // And "c": nothing is left, which is an immediate error.
    b.pick().await.unwrap().report_failure();
    match b.pick().await {
        Err(Error::NoHealthyInstance {
            matching, ejected, ..
        }) => assert_eq!((matching, ejected), (3, 3)),
        other => panic!("expected NoHealthyInstance, got {other:?}"),
    }

    // After the back-off they return; the preferred zone first.
    tokio::time::advance(Duration::from_millis(1001)).await;
    let c = counts(&b, 10).await;
    assert_eq!(c, BTreeMap::from([("a".into(), 5), ("b".into(), 5)]));

    // A second consecutive failure ejects for twice as long.
    let p = loop {
        let p = b.pick().await.unwrap();
        if p.id() == "a" {
            break p;
        }
    };
    p.report_failure();
    tokio::time::advance(Duration::from_millis(1500)).await;
    assert_eq!(counts(&b, 4).await, BTreeMap::from([("b".into(), 4)]));
    tokio::time::advance(Duration::from_millis(600)).await;
    let p = loop {
        let p = b.pick().await.unwrap();
        if p.id() == "a" {
            break p;
        }
    };
    p.report_success();
}

#[tokio::test]
async fn critical_instances_are_never_picked() {
    let mut list = three();
    list[0].health = Health::Critical;
    let b = Balancer::fixed(list, Strategy::Random).seed(1);
    let c = counts(&b, 200).await;
    assert!(!c.contains_key("a"), "{c:?}");
}

#[tokio::test]
async fn a_balancer_over_a_live_query_follows_weights() {
    let s = TestServer::start().await;
    let client = s.client();
    for (id, weight, zone) in [
        ("a", 100, "eu-1a"),
        ("b", 300, "eu-1a"),
        ("c", 100, "eu-1b"),
    ] {
        client
            .api()
            .register(
                "pay",
                id,
                &RegisterRequest {
                    address: "10.0.0.1".into(),
                    port: 8080,
                    weight: Some(weight),
                    zone: Some(zone.into()),
                    ..RegisterRequest::default()
                },
            )
            .await
            .unwrap();
    }
    let b = client
        .discover("pay")
        .balancer(Strategy::Weighted)
        .seed(5)
        .prefer_zone("eu-1a");
    let n = 4000;
    let mut c: HashMap<String, usize> = HashMap::new();
    for _ in 0..n {
        *c.entry(b.pick().await.unwrap().id().to_string())
            .or_default() += 1;
    }
    let a = c.get("a").copied().unwrap_or(0) as f64 / n as f64;
    assert!((a - 0.25).abs() < 0.03, "{c:?}");
    assert!(
        !c.contains_key("c"),
        "the preferred zone has instances: {c:?}"
    );
    s.stop().await;
}

#[tokio::test]
async fn least_outstanding_picks_the_idlest_instance_and_shares_ties() {
    let b = Balancer::fixed(three(), Strategy::LeastOutstanding);
    // Nothing outstanding: ties take turns.
    let c = counts(&b, 300).await;
    assert_eq!(c.values().copied().collect::<Vec<_>>(), [100, 100, 100]);
    // Hold picks open: each new pick goes where fewest are outstanding.
    let mut held = Vec::new();
    for _ in 0..6 {
        held.push(b.pick().await.unwrap());
    }
    for id in ["a", "b", "c"] {
        assert_eq!(b.outstanding(id), 2, "{id}");
    }
    // Release two of a's: the next two picks both go to a.
    held.retain(|p| p.id() != "a");
    let x = b.pick().await.unwrap();
    let y = b.pick().await.unwrap();
    assert_eq!((x.id(), y.id()), ("a", "a"));
    assert_eq!(b.outstanding("a"), 2);
}

#[tokio::test]
async fn a_custom_rule_chooses_among_usable_instances_only() {
    use muster_client::{Candidate, Choose};
    use std::sync::{Arc, Mutex};

    /// Always the last candidate; records what it was offered.
    struct Last(Arc<Mutex<Vec<Vec<String>>>>);
    impl Choose for Last {
        fn choose(&self, candidates: &[Candidate<'_>], _random: u64) -> usize {
            self.0.lock().unwrap().push(
                candidates
                    .iter()
                    .map(|c| format!("{}:{}", c.instance.id, c.outstanding))
                    .collect(),
            );
            candidates.len() - 1
        }
    }
    let seen = Arc::new(Mutex::new(Vec::new()));
    let b = Balancer::fixed(three(), Strategy::RoundRobin)
        .prefer_zone("eu-1a")
        .choose_with(Last(seen.clone()));
    let first = b.pick().await.unwrap();
    assert_eq!(first.id(), "b");
    // The zone preference applies before the rule; the outstanding pick of
    // b shows in what the rule sees next.
    let second = b.pick().await.unwrap();
    assert_eq!(second.id(), "b");
    // An ejected instance is not offered.
    second.report_failure();
    let third = b.pick().await.unwrap();
    assert_eq!(third.id(), "a");
    assert_eq!(
        *seen.lock().unwrap(),
        [
            vec!["a:0".to_string(), "b:0".to_string()],
            vec!["a:0".to_string(), "b:1".to_string()],
            vec!["a:0".to_string()],
        ]
    );
    drop(first);
}
