//! Unit and property tests of the catalog.

use std::collections::BTreeMap;

use proptest::prelude::*;

use super::*;
use crate::testing::{SERVICES, TAGS, ZONES, arb_command, data, reg, run, ttl_check};

fn key(svc: &str) -> ServiceKey {
    ServiceKey::new("default", svc)
}

fn all(c: &Catalog, svc: &str) -> Vec<String> {
    let q = Query {
        health: HealthFilter::Any,
        ..Default::default()
    };
    c.query(&key(svc), &q)
        .1
        .iter()
        .map(|i| i.id.to_string())
        .collect()
}

#[test]
fn register_is_idempotent_and_replaces() {
    let mut c = Catalog::new();
    c.apply(1, 0, &reg("pay", data("a"), LeaseRef::None))
        .unwrap();
    // Same registration again: no change, index does not move.
    c.apply(2, 0, &reg("pay", data("a"), LeaseRef::None))
        .unwrap();
    assert_eq!(c.service_index(&key("pay")), 1);
    assert_eq!(all(&c, "pay"), ["a"]);
    // Different data under the same id replaces; create_index is kept.
    let mut d = data("a");
    d.port = 9090;
    let out = c.apply(3, 0, &reg("pay", d, LeaseRef::None)).unwrap();
    let Done::Instance(inst) = out.done else {
        panic!("{:?}", out.done)
    };
    assert_eq!(
        (inst.port, inst.create_index, inst.modify_index),
        (9090, 1, 3)
    );
    assert_eq!(all(&c, "pay"), ["a"]);
    assert_eq!(c.service_index(&key("pay")), 3);
}

#[test]
fn unknown_lease_changes_nothing() {
    let mut c = Catalog::new();
    c.apply(1, 0, &reg("pay", data("a"), LeaseRef::None))
        .unwrap();
    let before = c.clone();
    let err = c
        .apply(2, 0, &reg("pay", data("b"), LeaseRef::Existing(42)))
        .unwrap_err();
    assert_eq!(err, ApplyError::UnknownLease(42));
    // Only the applied index moved.
    c.index = before.index;
    assert_eq!(c, before);
}

#[test]
fn revoke_removes_every_attached_instance() {
    let mut c = Catalog::new();
    c.apply(
        1,
        0,
        &Command::CreateLease {
            id: 7,
            ttl_ms: 10_000,
        },
    )
    .unwrap();
    for (i, svc) in ["pay", "pay", "cart"].iter().enumerate() {
        c.apply(
            2 + i as u64,
            0,
            &reg(svc, data(&format!("i{i}")), LeaseRef::Existing(7)),
        )
        .unwrap();
    }
    c.apply(9, 0, &reg("pay", data("persistent"), LeaseRef::None))
        .unwrap();
    let out = c.apply(10, 0, &Command::RevokeLease { id: 7 }).unwrap();
    assert_eq!(out.done, Done::Removed(3));
    assert_eq!(out.changed, vec![key("cart"), key("pay")]);
    assert_eq!(all(&c, "pay"), ["persistent"]);
    assert!(all(&c, "cart").is_empty());
    assert!(c.lease(7).is_none());
    // The emptied service keeps its index so watchers see the removal.
    assert_eq!(c.service_index(&key("cart")), 10);
    assert!(c.services("default").iter().all(|s| s.name != "cart"));
}

#[test]
fn own_lease_lives_and_dies_with_its_instance() {
    let mut c = Catalog::new();
    let own = LeaseRef::Own {
        id: 5,
        ttl_ms: 3_000,
    };
    let out = c.apply(1, 0, &reg("pay", data("a"), own)).unwrap();
    assert_eq!(out.leases_created, vec![(5, 3_000)]);
    // A retried registration with the same TTL keeps the lease.
    let retry = LeaseRef::Own {
        id: 6,
        ttl_ms: 3_000,
    };
    let out = c.apply(2, 0, &reg("pay", data("a"), retry)).unwrap();
    assert!(out.leases_created.is_empty());
    assert_eq!(instance_of(&out).lease.as_deref(), Some("0000000000000005"));
    let out = c
        .apply(
            3,
            0,
            &Command::Deregister {
                namespace: "default".into(),
                service: "pay".into(),
                id: "a".into(),
            },
        )
        .unwrap();
    assert_eq!(out.leases_removed, vec![5]);
    assert_eq!(c.lease_count(), 0);
}

#[test]
fn expire_skips_missing_leases() {
    let mut c = Catalog::new();
    c.apply(
        1,
        0,
        &reg(
            "pay",
            data("a"),
            LeaseRef::Own {
                id: 1,
                ttl_ms: 1_000,
            },
        ),
    )
    .unwrap();
    let out = c
        .apply(2, 0, &Command::ExpireLeases { ids: vec![1, 99] })
        .unwrap();
    assert_eq!((out.done, out.leases_removed), (Done::Removed(1), vec![1]));
}

#[test]
fn preserved_leases_mark_their_instances() {
    let mut c = Catalog::new();
    c.apply(
        1,
        0,
        &Command::CreateLease {
            id: 7,
            ttl_ms: 1_000,
        },
    )
    .unwrap();
    c.apply(2, 0, &reg("pay", data("a"), LeaseRef::Existing(7)))
        .unwrap();
    c.apply(3, 0, &reg("cart", data("b"), LeaseRef::Existing(7)))
        .unwrap();
    c.apply(4, 0, &reg("pay", data("c"), LeaseRef::None))
        .unwrap();
    let inst = |c: &Catalog, svc: &str, id: &str| c.instance(&key(svc), id).unwrap().clone();
    let hold = |ids: Vec<u64>, state| Command::PreserveLeases { ids, state };

    // Held: marked, health unchanged; unknown ids are skipped.
    let out = c
        .apply(5, 0, &hold(vec![7, 99], Preservation::Held))
        .unwrap();
    assert_eq!(out.done, Done::Preserved(2));
    assert_eq!(out.changed, vec![key("cart"), key("pay")]);
    let a = inst(&c, "pay", "a");
    assert_eq!(
        (a.preserved, a.health, a.modify_index),
        (Preservation::Held, Health::Passing, 5)
    );
    assert_eq!(inst(&c, "pay", "c").preserved, Preservation::None);
    assert_eq!(c.lease(7).unwrap().preserved, Preservation::Held);
    assert_eq!(c.service_index(&key("pay")), 5);
    assert!(
        matches!(&c.changes_since(&key("pay"), 4).unwrap()[..],
            [IndexedChange { index: 5, change: Change::Upsert(i) }] if i.id == "a"),
        "watches see the marking"
    );

    // The same state again changes nothing and wakes nobody.
    let out = c.apply(6, 0, &hold(vec![7], Preservation::Held)).unwrap();
    assert_eq!((out.done, out.changed.len()), (Done::Preserved(0), 0));
    assert_eq!(c.service_index(&key("pay")), 5);

    // A registration onto a held lease is held too.
    c.apply(7, 0, &reg("pay", data("d"), LeaseRef::Existing(7)))
        .unwrap();
    assert_eq!(inst(&c, "pay", "d").preserved, Preservation::Held);

    // Lapsed: critical, so passing-only discovery drops it.
    c.apply(8, 0, &hold(vec![7], Preservation::Lapsed)).unwrap();
    assert_eq!(inst(&c, "cart", "b").health, Health::Critical);
    let passing = c.query(&key("pay"), &Query::default()).1;
    assert_eq!(
        passing.iter().map(|i| i.id.as_str()).collect::<Vec<_>>(),
        ["c"]
    );
    assert_eq!(all(&c, "pay"), ["a", "c", "d"], "still kept");

    // Released: back to its checks' health.
    c.apply(9, 0, &hold(vec![7], Preservation::None)).unwrap();
    let b = inst(&c, "cart", "b");
    assert_eq!(
        (b.preserved, b.health),
        (Preservation::None, Health::Passing)
    );
}

#[test]
fn history_resumes_or_asks_for_snapshot() {
    let mut c = Catalog::new();
    let n = HISTORY_PER_SERVICE as u64 + 10;
    for i in 1..=n {
        let mut d = data("a");
        d.port = i as u16;
        c.apply(i, 0, &reg("pay", d, LeaseRef::None)).unwrap();
    }
    let recent = c.changes_since(&key("pay"), n - 3).unwrap();
    assert_eq!(
        recent.iter().map(|c| c.index).collect::<Vec<_>>(),
        [n - 2, n - 1, n]
    );
    assert!(c.changes_since(&key("pay"), 1).is_none());
    assert_eq!(c.changes_since(&key("never"), 0), Some(vec![]));
}

#[test]
fn resume_repeats_an_index_shared_by_several_changes() {
    let mut c = Catalog::new();
    c.apply(1, 0, &reg("pay", data("a"), LeaseRef::None))
        .unwrap();
    // One batch (one log entry): two changes of `pay` at index 2.
    c.apply(2, 0, &reg("pay", data("b"), LeaseRef::None))
        .unwrap();
    c.apply(2, 0, &reg("pay", data("c"), LeaseRef::None))
        .unwrap();
    c.apply(3, 0, &reg("pay", data("d"), LeaseRef::None))
        .unwrap();
    let ids = |changes: Vec<IndexedChange>| -> Vec<(u64, String)> {
        changes
            .into_iter()
            .map(|ch| match ch.change {
                Change::Upsert(i) => (ch.index, i.id.to_string()),
                Change::Delete(id) => (ch.index, id.to_string()),
            })
            .collect()
    };
    let ic = |i: u64, id: &str| (i, id.to_string());
    // A watcher that got `b` (id 2) but lost the stream before `c` gets
    // both again: its id cannot tell which of the two it had.
    assert_eq!(
        ids(c.changes_to_resume(&key("pay"), 2).unwrap()),
        [ic(2, "b"), ic(2, "c"), ic(3, "d")]
    );
    // An index with a single change was seen whole: only what came after.
    assert_eq!(
        ids(c.changes_to_resume(&key("pay"), 1).unwrap()),
        [ic(2, "b"), ic(2, "c"), ic(3, "d")]
    );
    assert_eq!(ids(c.changes_to_resume(&key("pay"), 3).unwrap()), []);
    assert_eq!(ids(c.changes_to_resume(&key("pay"), 0).unwrap()).len(), 4);
    assert_eq!(c.changes_to_resume(&key("never"), 5), Some(vec![]));
    // The live stream (which sees whole entries) goes on strictly after.
    assert_eq!(ids(c.changes_since(&key("pay"), 2).unwrap()), [ic(3, "d")]);
}

#[test]
fn resume_from_the_history_floor_asks_for_a_snapshot() {
    let mut c = Catalog::new();
    let n = HISTORY_PER_SERVICE as u64 + 2;
    for i in 1..=n {
        let mut d = data("a");
        d.port = i as u16;
        c.apply(i, 0, &reg("pay", d, LeaseRef::None)).unwrap();
    }
    // Changes 1 and 2 were dropped: the floor is 2.
    assert!(c.changes_to_resume(&key("pay"), 1).is_none());
    assert!(c.changes_to_resume(&key("pay"), 2).is_none());
    assert_eq!(
        c.changes_to_resume(&key("pay"), 3).unwrap().len(),
        HISTORY_PER_SERVICE - 1
    );
}

#[test]
fn filters_combine() {
    let mut c = Catalog::new();
    let mut a = data("a");
    a.tags = ["v2".to_string(), "eu".to_string()].into();
    a.version = Some("1.4.2".into());
    a.zone = Some("eu-1a".into());
    a.meta = [("team".to_string(), "pay".to_string())].into();
    let mut b = data("b");
    b.tags = ["v2".to_string()].into();
    b.version = Some("2.0.0".into());
    b.zone = Some("us-1".into());
    c.apply(1, 0, &reg("pay", a, LeaseRef::None)).unwrap();
    c.apply(2, 0, &reg("pay", b, LeaseRef::None)).unwrap();
    let ids = |q: Query| -> Vec<String> {
        c.query(&key("pay"), &q)
            .1
            .iter()
            .map(|i| i.id.to_string())
            .collect()
    };
    assert_eq!(
        ids(Query {
            tags: vec!["v2".into()],
            ..Default::default()
        }),
        ["a", "b"]
    );
    assert_eq!(
        ids(Query {
            tags: vec!["v2".into(), "eu".into()],
            ..Default::default()
        }),
        ["a"]
    );
    assert_eq!(
        ids(Query {
            zone: Some("us-1".into()),
            ..Default::default()
        }),
        ["b"]
    );
    assert_eq!(
        ids(Query {
            meta: vec![("team".into(), "pay".into())],
            ..Default::default()
        }),
        ["a"]
    );
    assert_eq!(
        ids(Query {
            version: Some(VersionMatch::parse("^1.4").unwrap()),
            ..Default::default()
        }),
        ["a"]
    );
    assert_eq!(
        ids(Query {
            version: Some(VersionMatch::parse(">=2,<3").unwrap()),
            ..Default::default()
        }),
        ["b"]
    );
}

#[test]
fn check_transitions_set_health_and_repeats_change_nothing() {
    let mut c = Catalog::new();
    let mut d = data("a");
    d.checks = vec![ttl_check(Health::Critical)];
    c.apply(1, 0, &reg("pay", d.clone(), LeaseRef::None))
        .unwrap();
    let passing = Query::default();
    assert!(
        c.query(&key("pay"), &passing).1.is_empty(),
        "initially critical"
    );
    let status = |s: Health| Command::CheckStatus {
        namespace: "default".into(),
        service: "pay".into(),
        id: "a".into(),
        check: "c1".into(),
        status: s,
        output: "ok".into(),
    };
    let out = c.apply(2, 0, &status(Health::Passing)).unwrap();
    assert_eq!(out.changed, vec![key("pay")]);
    assert_eq!(c.query(&key("pay"), &passing).1.len(), 1);
    // The same status again writes nothing a watcher would see.
    let out = c.apply(3, 0, &status(Health::Passing)).unwrap();
    assert!(out.changed.is_empty());
    assert_eq!(c.service_index(&key("pay")), 2);
    // Re-registering keeps the check's state.
    c.apply(4, 0, &reg("pay", d, LeaseRef::None)).unwrap();
    assert_eq!(
        c.instance(&key("pay"), "a").unwrap().health,
        Health::Passing
    );
    // Maintenance takes it out of passing results without removing it.
    let maint = |r: Option<&str>| Command::Maintenance {
        namespace: "default".into(),
        service: "pay".into(),
        id: "a".into(),
        reason: r.map(String::from),
    };
    c.apply(5, 0, &maint(Some("kernel upgrade"))).unwrap();
    assert!(c.query(&key("pay"), &passing).1.is_empty());
    assert_eq!(all(&c, "pay"), ["a"]);
    c.apply(6, 0, &maint(None)).unwrap();
    assert_eq!(c.query(&key("pay"), &passing).1.len(), 1);
    // An unknown check is an error that changes nothing.
    let mut bad = status(Health::Critical);
    if let Command::CheckStatus { check, .. } = &mut bad {
        *check = "nope".into();
    }
    let before = c.clone();
    assert!(matches!(
        c.apply(7, 0, &bad),
        Err(ApplyError::UnknownCheck { .. })
    ));
    c.index = before.index;
    assert_eq!(c, before);
}

#[test]
fn checks_can_be_added_and_removed_alone() {
    let mut c = Catalog::new();
    c.apply(1, 0, &reg("pay", data("a"), LeaseRef::None))
        .unwrap();
    let put = Command::PutCheck {
        namespace: "default".into(),
        service: "pay".into(),
        id: "a".into(),
        check: ttl_check(Health::Warning),
    };
    c.apply(2, 0, &put).unwrap();
    assert_eq!(
        c.instance(&key("pay"), "a").unwrap().health,
        Health::Warning
    );
    let rm = Command::RemoveCheck {
        namespace: "default".into(),
        service: "pay".into(),
        id: "a".into(),
        check: "c1".into(),
    };
    c.apply(3, 0, &rm).unwrap();
    assert_eq!(
        c.instance(&key("pay"), "a").unwrap().health,
        Health::Passing
    );
    assert!(c.apply(4, 0, &rm).is_err());
}

// ---- property tests ----

fn arb_query() -> impl Strategy<Value = Query> {
    (
        proptest::sample::subsequence(TAGS, 0..=2),
        proptest::option::of(0..3u8),
        proptest::option::of(proptest::sample::select(
            &["^1.4", ">=1, <2", "2", "blue", "^3"][..],
        )),
        proptest::option::of(proptest::sample::select(ZONES)),
        any::<bool>(),
    )
        .prop_map(|(tags, team, version, zone, any_health)| Query {
            tags: tags.into_iter().map(String::from).collect(),
            meta: team
                .map(|t| vec![("team".to_string(), format!("t{t}"))])
                .unwrap_or_default(),
            version: version.map(|v| VersionMatch::parse(v).unwrap()),
            zone: zone.map(String::from),
            health: if any_health {
                HealthFilter::Any
            } else {
                HealthFilter::Passing
            },
        })
}

/// Applies `cmds` in entries of the given sizes (cycled): the commands of
/// one entry share its index, as batched proposals do.
fn run_batched(cmds: &[Command], sizes: &[usize]) -> Catalog {
    let mut c = Catalog::new();
    let mut rest = cmds;
    let mut index = 0;
    for size in sizes.iter().cycle() {
        if rest.is_empty() {
            break;
        }
        let (batch, tail) = rest.split_at((*size).clamp(1, rest.len()));
        index += 1;
        for cmd in batch {
            let _ = c.apply(index, 1_000 * index, cmd);
        }
        rest = tail;
    }
    c
}

#[test]
fn instances_of_a_service_share_their_strings() {
    let mut c = Catalog::new();
    let mut d = data("a");
    d.tags = ["prod".to_string(), "v2".to_string()].into();
    d.meta = [("team".to_string(), "pay".to_string())].into();
    d.version = Some("1.4.2".into());
    d.zone = Some("eu-1a".into());
    let mut e = d.clone();
    e.id = "b".into();
    c.apply(1, 0, &reg("pay", d, LeaseRef::None)).unwrap();
    c.apply(2, 0, &reg("pay", e, LeaseRef::None)).unwrap();
    let (k, svc) = (key("pay"), c.service(&key("pay")).unwrap());
    let (a, b) = (
        svc.instances.get("a").unwrap(),
        svc.instances.get("b").unwrap(),
    );
    let stored_key = c.service_keys().find(|sk| **sk == k).unwrap();
    assert!(SharedStr::ptr_eq(&a.namespace, &stored_key.namespace));
    assert!(SharedStr::ptr_eq(&b.namespace, &stored_key.namespace));
    assert!(SharedStr::ptr_eq(&b.service, &stored_key.service));
    assert!(Tags::ptr_eq(&a.tags, &b.tags));
    assert!(SharedStr::ptr_eq(
        &a.meta.entries()[0].0,
        &b.meta.entries()[0].0
    ));
    assert!(SharedStr::ptr_eq(
        a.zone.as_ref().unwrap(),
        b.zone.as_ref().unwrap()
    ));
}

#[test]
fn instances_look_up_and_replace_by_id() {
    let mut c = Catalog::new();
    for (n, id) in ["b", "a", "c"].into_iter().enumerate() {
        c.apply(n as u64 + 1, 0, &reg("pay", data(id), LeaseRef::None))
            .unwrap();
    }
    let mut d = data("b");
    d.port = 1;
    c.apply(4, 0, &reg("pay", d, LeaseRef::None)).unwrap();
    let svc = c.service(&key("pay")).unwrap();
    assert_eq!(svc.instances.len(), 3);
    assert_eq!(
        svc.instances.keys().map(|k| k.as_str()).collect::<Vec<_>>(),
        ["a", "b", "c"]
    );
    assert_eq!(svc.instances.get("b").unwrap().port, 1);
    assert!(svc.instances.contains_key("c") && !svc.instances.contains_key("d"));
    assert!(
        svc.instances
            .iter()
            .all(|(id, i)| *id == i.id && svc.instances.get(id).is_some())
    );
}

proptest! {
    #[test]
    fn lease_members_behave_as_a_set(
        ops in proptest::collection::vec((any::<bool>(), 0usize..3, 0usize..40), 0..300),
    ) {
        // Crosses between the small sorted vector and the B-tree both ways.
        let keys = [key("a"), key("b"), ServiceKey::new("ops", "a")];
        let mut m = LeaseMembers::new();
        let mut model = BTreeSet::new();
        for (insert, k, id) in ops {
            let (k, id) = (keys[k].clone(), format!("i{id}"));
            if insert {
                let fresh = model.insert((k.clone(), id.clone()));
                prop_assert_eq!(m.insert((k, id.as_str().into())), fresh);
            } else {
                let had = model.remove(&(k.clone(), id.clone()));
                prop_assert_eq!(m.remove(&k, &id), had);
            }
            prop_assert_eq!(m.len(), model.len());
            let got: Vec<(ServiceKey, String)> =
                m.iter().map(|(k, id)| (k.clone(), id.to_string())).collect();
            let want: Vec<(ServiceKey, String)> = model.iter().cloned().collect();
            prop_assert_eq!(&got, &want);
            for (k, id) in &want {
                prop_assert!(m.contains(k, id));
            }
            // Rebuilt from its members, it is the same set.
            let back: LeaseMembers = m.iter().map(|(k, id)| (k.clone(), id.into())).collect();
            prop_assert_eq!(&back, &m);
        }
    }
}

/// The instances as a plain map, the model the tests replay changes into.
fn as_map(instances: &Instances) -> BTreeMap<String, Arc<Instance>> {
    instances
        .iter()
        .map(|(id, i)| (id.to_string(), i.clone()))
        .collect()
}

fn replay(view: &mut BTreeMap<String, Arc<Instance>>, changes: &[IndexedChange]) {
    for ch in changes {
        match &ch.change {
            Change::Upsert(i) => {
                view.insert(i.id.to_string(), i.clone());
            }
            Change::Delete(id) => {
                view.remove(id.as_str());
            }
        }
    }
}

/// A deliberately naive reading of the same semantics, written independently.
fn naive_matches(q: &Query, i: &Instance) -> bool {
    let passing = i.maintenance.is_none()
        && i.preserved != Preservation::Lapsed
        && i.checks.iter().all(|c| c.status == Health::Passing);
    if q.health == HealthFilter::Passing && !passing {
        return false;
    }
    for t in &q.tags {
        if !i.tags.iter().any(|have| have == t) {
            return false;
        }
    }
    for (k, v) in &q.meta {
        if i.meta.get(k).map(|v| v.as_str()) != Some(v.as_str()) {
            return false;
        }
    }
    if let Some(z) = &q.zone
        && i.zone.as_deref() != Some(z.as_str())
    {
        return false;
    }
    if let Some(vm) = &q.version {
        let Some(v) = &i.version else { return false };
        let ok = match (
            semver::VersionReq::parse(vm.as_str()),
            semver::Version::parse(v),
        ) {
            (Ok(req), Ok(ver)) => req.matches(&ver),
            _ => v == vm.as_str(),
        };
        if !ok {
            return false;
        }
    }
    true
}

proptest! {
    #[test]
    fn replay_is_deterministic(cmds in proptest::collection::vec(arb_command(), 0..60)) {
        let (a, ra) = run(&cmds);
        let (b, rb) = run(&cmds);
        prop_assert_eq!(&a, &b);
        prop_assert_eq!(ra, rb);
    }

    #[test]
    fn query_equals_naive_filter(
        cmds in proptest::collection::vec(arb_command(), 0..60),
        q in arb_query(),
    ) {
        let (c, _) = run(&cmds);
        for svc in SERVICES {
            let k = key(svc);
            let got: Vec<String> = c.query(&k, &q).1.iter().map(|i| i.id.to_string()).collect();
            let want: Vec<String> = c
                .service(&k)
                .map(|s| s.instances.values().filter(|i| naive_matches(&q, i)).map(|i| i.id.to_string()).collect())
                .unwrap_or_default();
            prop_assert_eq!(got, want);
        }
    }

    #[test]
    fn leases_and_instances_stay_consistent(cmds in proptest::collection::vec(arb_command(), 0..60)) {
        let (c, _) = run(&cmds);
        // Every instance's lease exists and lists it; every lease member exists.
        for svc in SERVICES {
            let k = key(svc);
            if let Some(s) = c.service(&k) {
                for i in s.instances.values() {
                    if let Some(l) = i.lease.as_deref().and_then(muster_types::parse_lease_id) {
                        let lease = c.lease(l).expect("instance lease exists");
                        prop_assert!(lease.instances.contains(&k, &i.id));
                        prop_assert_eq!(i.preserved, lease.preserved, "an instance carries its lease's mark");
                    } else {
                        prop_assert_eq!(i.preserved, Preservation::None);
                    }
                }
            }
        }
        for l in c.leases() {
            prop_assert!(!(l.own && l.instances.is_empty()), "empty own lease {}", l.id);
            for (k, id) in l.instances.iter() {
                prop_assert!(c.instance(k, id).is_some());
            }
        }
    }

    #[test]
    fn resumed_history_replays_to_the_same_instances(cmds in proptest::collection::vec(arb_command(), 1..60), cut in 0usize..60) {
        // A watcher that saw the state at `cut` and applies the changes since
        // then ends with exactly the current instances.
        let cut = cut.min(cmds.len());
        let (before, _) = run(&cmds[..cut]);
        let (after, _) = run(&cmds);
        for svc in SERVICES {
            let k = key(svc);
            let mut view: BTreeMap<String, Arc<Instance>> =
                before.service(&k).map(|s| as_map(&s.instances)).unwrap_or_default();
            let changes = after.changes_since(&k, cut as u64).expect("history is long enough");
            for ch in changes {
                match ch.change {
                    Change::Upsert(i) => { view.insert(i.id.to_string(), i); }
                    Change::Delete(id) => { view.remove(id.as_str()); }
                }
            }
            let now = after.service(&k).map(|s| as_map(&s.instances)).unwrap_or_default();
            prop_assert_eq!(view, now);
        }
    }

    #[test]
    fn resume_after_any_event_misses_nothing_with_batches(
        cmds in proptest::collection::vec(arb_command(), 1..60),
        sizes in proptest::collection::vec(1usize..6, 1..8),
    ) {
        // A watcher that got the first `seen` events of a service (in any
        // batch, possibly part of one) and resumes from the last one's id
        // gets everything after it, ends with exactly the current instances,
        // and gets repeats only when that id is shared by several changes.
        let c = run_batched(&cmds, &sizes);
        for svc in SERVICES {
            let k = key(svc);
            let Some(s) = c.service(&k) else { continue };
            prop_assert_eq!(s.history_floor, 0, "history is complete here");
            let events: Vec<IndexedChange> = s.history.iter().cloned().collect();
            for seen in 1..=events.len() {
                let mut view = BTreeMap::new();
                replay(&mut view, &events[..seen]);
                let last_id = events[seen - 1].index;
                let resumed = c.changes_to_resume(&k, last_id).expect("history reaches back");
                // At least once: every event not yet seen, in order, at the end.
                prop_assert!(resumed.len() >= events.len() - seen);
                prop_assert_eq!(&resumed[resumed.len() - (events.len() - seen)..], &events[seen..]);
                // Exactly once when the id names one change.
                let sharing = events.iter().filter(|e| e.index == last_id).count();
                if sharing == 1 {
                    prop_assert_eq!(&resumed[..], &events[seen..]);
                }
                replay(&mut view, &resumed);
                prop_assert_eq!(&view, &as_map(&s.instances));
            }
        }
    }
}

/// The instance an instance command yielded.
fn instance_of(out: &Outcome) -> &Arc<Instance> {
    match &out.done {
        Done::Instance(i) => i,
        other => panic!("an instance command did {other:?}"),
    }
}

#[test]
fn limits_hold_at_apply_and_a_refused_command_changes_nothing() {
    let ttl_check = |i: usize| Check {
        id: format!("c{i}"),
        name: format!("c{i}"),
        kind: muster_types::CheckKind::Ttl,
        interval_ms: 30_000,
        timeout_ms: 1_000,
        success_before_passing: 1,
        failures_before_critical: 1,
        deregister_critical_after_ms: None,
        notes: None,
        status: Health::Critical,
        output: String::new(),
        status_index: 0,
    };
    let mut c = Catalog::new();
    c.apply(1, 0, &reg("pay", data("a"), LeaseRef::None))
        .unwrap();
    let before = c.clone();

    let mut d = data("a");
    d.tags = (0..=limits::MAX_TAGS).map(|i| format!("t{i}")).collect();
    let e = c.apply(2, 0, &reg("pay", d, LeaseRef::None)).unwrap_err();
    assert!(
        matches!(&e, ApplyError::OverLimit { field, .. } if field == "tags"),
        "{e}"
    );
    let mut d = data("a");
    d.meta = (0..=limits::MAX_META)
        .map(|i| (format!("k{i}"), "v".into()))
        .collect();
    let e = c.apply(3, 0, &reg("pay", d, LeaseRef::None)).unwrap_err();
    assert!(
        matches!(&e, ApplyError::OverLimit { field, .. } if field == "meta"),
        "{e}"
    );
    let mut d = data("a");
    d.checks = (0..=limits::MAX_CHECKS).map(ttl_check).collect();
    let e = c.apply(4, 0, &reg("pay", d, LeaseRef::None)).unwrap_err();
    assert!(
        matches!(&e, ApplyError::OverLimit { field, .. } if field == "checks"),
        "{e}"
    );
    assert_eq!(
        c.instance(&key("pay"), "a"),
        before.instance(&key("pay"), "a")
    );
    assert_eq!(c.service_index(&key("pay")), 1);

    // Checks added one by one stop at the limit; replacing one still works.
    let put = |i: usize| Command::PutCheck {
        namespace: "default".into(),
        service: "pay".into(),
        id: "a".into(),
        check: ttl_check(i),
    };
    for i in 0..limits::MAX_CHECKS {
        c.apply(10 + i as u64, 0, &put(i)).unwrap();
    }
    let e = c.apply(100, 0, &put(limits::MAX_CHECKS)).unwrap_err();
    assert!(
        matches!(&e, ApplyError::OverLimit { field, max, .. } if field == "checks" && *max == limits::MAX_CHECKS),
        "{e}"
    );
    let mut again = ttl_check(0);
    again.interval_ms = 60_000;
    c.apply(
        101,
        0,
        &Command::PutCheck {
            namespace: "default".into(),
            service: "pay".into(),
            id: "a".into(),
            check: again,
        },
    )
    .unwrap();
    assert_eq!(
        c.instance(&key("pay"), "a").unwrap().checks.len(),
        limits::MAX_CHECKS
    );
}

/// A backup's content as restore chunks: its leases and instances.
fn chunk_of(c: &Catalog, id: u64) -> Command {
    Command::RestoreStage {
        id,
        leases: c.leases().cloned().collect(),
        instances: c
            .service_entries()
            .flat_map(|(_, s)| s.instances.values().cloned())
            .collect(),
    }
}

#[test]
fn a_staged_restore_is_invisible_until_committed_then_swapped_in_whole() {
    let mut backup = Catalog::new();
    backup
        .apply(1, 0, &reg("pay", data("a"), LeaseRef::None))
        .unwrap();
    let own = LeaseRef::Own {
        id: 7,
        ttl_ms: 5000,
    };
    backup.apply(2, 0, &reg("cart", data("b"), own)).unwrap();

    let mut c = Catalog::new();
    c.apply(1, 0, &reg("pay", data("old"), LeaseRef::None))
        .unwrap();
    c.apply(2, 0, &reg("auth", data("x"), LeaseRef::None))
        .unwrap();
    c.apply(3, 10, &Command::RestoreBegin { id: 1 }).unwrap();
    c.apply(4, 10, &chunk_of(&backup, 1)).unwrap();
    // Staged, not visible: readers still see the old state.
    assert_eq!(
        (all(&c, "pay"), all(&c, "cart")),
        (vec!["old".to_string()], vec![])
    );
    assert_eq!(c.staged().unwrap().instance_count(), 2);

    let out = c.apply(5, 10, &Command::RestoreCommit { id: 1 }).unwrap();
    assert_eq!(out.done, Done::Restore(2));
    assert_eq!(all(&c, "pay"), vec!["a"]);
    assert_eq!(all(&c, "cart"), vec!["b"]);
    assert!(all(&c, "auth").is_empty());
    assert!(c.staged().is_none());
    assert_eq!(out.changed, vec![key("auth"), key("cart"), key("pay")]);
    assert_eq!(out.leases_created, vec![(7, 5000)]);
    // Indexes are this log's; watchers get the difference at the commit.
    let b = c.instance(&key("cart"), "b").unwrap();
    assert_eq!((b.create_index, b.modify_index), (5, 5));
    let changes = c.changes_since(&key("pay"), 4).unwrap();
    assert!(matches!(&changes[0].change, Change::Delete(id) if id == "old"));
    assert!(matches!(&changes[1].change, Change::Upsert(i) if i.id == "a"));
    assert!(changes.iter().all(|ch| ch.index == 5));
    assert_eq!(c.lease(7).unwrap().instances.len(), 1);

    // Committed once; a stale id, an abort and an abandoned restore.
    assert_eq!(
        c.apply(6, 10, &Command::RestoreCommit { id: 1 }),
        Err(ApplyError::NoRestore(1))
    );
    c.apply(7, 10, &Command::RestoreBegin { id: 2 }).unwrap();
    c.apply(8, 10, &Command::RestoreAbort { id: 2 }).unwrap();
    assert!(c.staged().is_none());
    c.apply(9, 10, &Command::RestoreBegin { id: 3 }).unwrap();
    c.apply(
        10,
        10 + RESTORE_STAGE_TIMEOUT_MS + 1,
        &Command::RetireNode { id: 9 },
    )
    .unwrap();
    assert!(c.staged().is_none(), "an abandoned restore is discarded");
    assert_eq!(all(&c, "pay"), vec!["a"]);
}
