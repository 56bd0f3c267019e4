//! The registry used as a front-end uses it: a real store in a temporary
//! directory, typed operations, typed errors, typed watches.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use muster_registry::{
    Caller, HealthFilter, LeaseChoice, Query, Registration, Registry, RegistryConfig,
    RegistryError, ServiceKey, WatchEvent,
};

async fn open(dir: &tempfile::TempDir) -> Registry {
    Registry::open(RegistryConfig {
        data_dir: dir.path().join("data"),
        ..RegistryConfig::default()
    })
    .await
    .unwrap()
}

fn reg(tags: &[&str]) -> Registration {
    Registration {
        address: "10.0.0.1".into(),
        port: 8080,
        tags: tags.iter().map(|t| t.to_string()).collect(),
        meta: Default::default(),
        version: None,
        zone: None,
        weight: 100,
        lease: LeaseChoice::Persistent,
        checks: Vec::new(),
    }
}

fn query(tags: &[&str]) -> Query {
    Query {
        tags: tags.iter().map(|t| t.to_string()).collect(),
        meta: Vec::new(),
        version: None,
        zone: None,
        health: HealthFilter::Passing,
    }
}

async fn next(w: &mut muster_registry::Watch) -> muster_registry::WatchBatch {
    tokio::time::timeout(Duration::from_secs(10), w.next())
        .await
        .expect("a watch batch within 10 s")
        .expect("the registry is running")
}

#[tokio::test]
async fn typed_operations_and_typed_errors() {
    let dir = tempfile::tempdir().unwrap();
    let r = open(&dir).await;
    let me = Caller::anonymous();
    let pay = ServiceKey::new("default", "pay");

    let w = r.register(&me, &pay, "a", reg(&["v2"])).await.unwrap();
    assert_eq!(w.value.id.as_str(), "a");
    let found = r.discover(&me, &pay, &query(&["v2"])).unwrap();
    assert_eq!(found.index, w.index);
    assert_eq!(found.instances.len(), 1);
    // The same question at the same index is answered by the same value.
    assert!(Arc::ptr_eq(
        &found,
        &r.discover(&me, &pay, &query(&["v2"])).unwrap()
    ));
    assert_eq!(r.instance(&me, &pay, "a").unwrap().index, w.index);

    assert!(matches!(
        r.instance(&me, &pay, "nope"),
        Err(RegistryError::InstanceNotFound { .. })
    ));
    assert!(matches!(
        r.heartbeat(&me, &pay, "a").await,
        Err(RegistryError::NoLease { .. })
    ));
    assert!(matches!(
        r.register(&me, &ServiceKey::new("default", "Bad_Name"), "a", reg(&[]))
            .await,
        Err(RegistryError::Invalid(_))
    ));
    let mut unknown_lease = reg(&[]);
    unknown_lease.lease = LeaseChoice::Existing(42);
    assert_eq!(
        r.register(&me, &pay, "b", unknown_lease).await,
        Err(RegistryError::LeaseNotFound(42))
    );

    // A leased instance renews through its heartbeat; revoking removes it.
    let lease = r.create_lease(&me, Duration::from_secs(10)).await.unwrap();
    let mut leased = reg(&[]);
    leased.lease = LeaseChoice::Existing(lease.id);
    r.register(&me, &pay, "c", leased).await.unwrap();
    assert_eq!(r.heartbeat(&me, &pay, "c").await.unwrap().lease, lease.id);
    assert_eq!(r.revoke_lease(&me, lease.id).await.unwrap().value, 1);
    assert_eq!(
        r.renew_lease(&me, lease.id).await,
        Err(RegistryError::LeaseNotFound(lease.id))
    );
    let too_many = vec![1; muster_types::limits::MAX_RENEW_BATCH + 1];
    assert!(matches!(
        r.renew_leases(&me, &too_many).await,
        Err(RegistryError::Invalid(f)) if f.field == "ids"
    ));
    r.shutdown().await.unwrap();
}

#[tokio::test]
async fn watchers_with_equal_filters_in_any_order_share_one_batch() {
    let dir = tempfile::tempdir().unwrap();
    let r = open(&dir).await;
    let me = Caller::anonymous();
    let pay = ServiceKey::new("default", "pay");
    r.register(&me, &pay, "a", reg(&["a", "b"])).await.unwrap();

    let mut ab = r.watch(&me, &pay, query(&["a", "b"]), None).unwrap();
    let mut ba = r.watch(&me, &pay, query(&["b", "a"]), None).unwrap();
    let (x, y) = (next(&mut ab).await, next(&mut ba).await);
    assert!(x.shared && y.shared);
    assert!(
        Arc::ptr_eq(&x.events, &y.events),
        "one snapshot for both orders of the same tags"
    );

    let w = r.register(&me, &pay, "b", reg(&["b", "a"])).await.unwrap();
    let (x, y) = (next(&mut ab).await, next(&mut ba).await);
    assert!(Arc::ptr_eq(&x.events, &y.events));
    assert!(matches!(
        &x.events[..],
        [WatchEvent::Upsert { index, instance }] if *index == w.index && instance.id.as_str() == "b"
    ));
    r.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_watch_resumed_at_the_current_index_is_told_so_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let r = open(&dir).await;
    let me = Caller::anonymous();
    let pay = ServiceKey::new("default", "pay");
    let w = r.register(&me, &pay, "a", reg(&[])).await.unwrap();
    let mut resumed = r.watch(&me, &pay, query(&[]), Some(w.index)).unwrap();
    let batch = next(&mut resumed).await;
    assert_eq!(&batch.events[..], &[WatchEvent::Current { index: w.index }]);
    assert!(!batch.shared);
    r.shutdown().await.unwrap();
}

#[tokio::test]
async fn the_checks_limit_holds_against_concurrent_additions() {
    let dir = tempfile::tempdir().unwrap();
    let r = open(&dir).await;
    let me = Caller::anonymous();
    let pay = ServiceKey::new("default", "pay");
    r.register(&me, &pay, "a", reg(&[])).await.unwrap();
    let max = muster_types::limits::MAX_CHECKS;
    // Twice the limit of distinct checks, all at once: the edge check sees
    // room for each, apply lets exactly `max` in.
    let adds = (0..2 * max).map(|i| {
        let spec = muster_types::CheckSpec {
            id: Some(format!("c{i}")),
            ttl: Some("30s".into()),
            ..Default::default()
        };
        let check = muster_types::validate_check(0, &spec).unwrap();
        let (r, me, pay) = (r.clone(), me.clone(), pay.clone());
        async move { r.put_check(&me, &pay, "a", check.into()).await }
    });
    let results = futures::future::join_all(adds).await;
    let ok = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!(ok, max, "{results:?}");
    assert!(
        results.iter().all(
            |r| r.is_ok() || matches!(r, Err(RegistryError::Invalid(f)) if f.field == "checks")
        )
    );
    let checks: BTreeSet<String> = r
        .instance(&me, &pay, "a")
        .unwrap()
        .value
        .instance
        .checks
        .iter()
        .map(|c| c.id.clone())
        .collect();
    assert_eq!(checks.len(), max);
    r.shutdown().await.unwrap();
}

/// A TTL report sent the moment the registration is answered is accepted
/// (the check's runner may not have started yet) and answered once its
/// status is committed, so a read right after it sees the status. Clients
/// need not retry a report after registering.
#[tokio::test]
async fn a_ttl_report_right_after_registering_is_accepted_and_committed_when_answered() {
    let dir = tempfile::tempdir().unwrap();
    let r = open(&dir).await;
    let me = Caller::anonymous();
    let pay = ServiceKey::new("default", "pay");
    let spec = muster_types::CheckSpec {
        id: Some("alive".into()),
        ttl: Some("30s".into()),
        ..Default::default()
    };
    for round in 0..50 {
        let id = format!("i{round}");
        let mut registration = reg(&[]);
        registration.checks = vec![muster_types::validate_check(0, &spec).unwrap().into()];
        r.register(&me, &pay, &id, registration).await.unwrap();
        let status = if round % 2 == 0 {
            muster_types::Health::Passing
        } else {
            muster_types::Health::Warning
        };
        r.report_check(&me, &pay, &id, "alive", status, format!("round {round}"))
            .await
            .unwrap_or_else(|e| panic!("report of round {round}: {e}"));
        let seen = r.instance(&me, &pay, &id).unwrap().value.instance.checks[0].status;
        assert_eq!(seen, status, "round {round}");
    }
    // An unknown check of a known instance is still refused, as is a
    // report for an unknown instance.
    assert!(matches!(
        r.report_check(
            &me,
            &pay,
            "i0",
            "nope",
            muster_types::Health::Passing,
            String::new()
        )
        .await,
        Err(RegistryError::CheckNotFound { .. })
    ));
    assert!(matches!(
        r.report_check(
            &me,
            &pay,
            "zz",
            "alive",
            muster_types::Health::Passing,
            String::new()
        )
        .await,
        Err(RegistryError::CheckNotFound { .. })
    ));
    r.shutdown().await.unwrap();
}
