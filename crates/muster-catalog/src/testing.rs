//! Generators and scenarios for tests of the catalog and of what stores
//! it (the snapshot codec): behind the `testing` feature.

use muster_types::{CheckKind, Health};
use proptest::prelude::*;

use crate::{ApplyResult, Catalog, Check, Command, InstanceData, LeaseRef, Preservation};

/// A plain instance `id` at 10.0.0.1:8080, nothing else set.
pub fn data(id: &str) -> InstanceData {
    InstanceData {
        id: id.into(),
        address: "10.0.0.1".into(),
        port: 8080,
        tags: Default::default(),
        meta: Default::default(),
        version: None,
        zone: None,
        weight: 100,
        checks: Vec::new(),
    }
}

/// A registration in namespace `default`.
pub fn reg(svc: &str, d: InstanceData, lease: LeaseRef) -> Command {
    Command::Register {
        namespace: "default".into(),
        service: svc.into(),
        instance: d,
        lease,
    }
}

/// Services the generators use.
pub const SERVICES: &[&str] = &["pay", "cart", "auth"];
/// Tags the generators use.
pub const TAGS: &[&str] = &["v1", "v2", "eu", "canary"];
/// Versions the generators use.
pub const VERSIONS: &[&str] = &["1.0.0", "1.4.2", "2.0.1", "blue"];
/// Zones the generators use.
pub const ZONES: &[&str] = &["eu-1a", "eu-1b", "us-1"];

/// Every health.
pub const HEALTHS: &[Health] = &[Health::Passing, Health::Warning, Health::Critical];

/// Every preservation state.
pub const PRESERVATIONS: &[Preservation] =
    &[Preservation::None, Preservation::Held, Preservation::Lapsed];

/// A TTL check `c1` (10 s) with the given status.
pub fn ttl_check(status: Health) -> Check {
    Check {
        id: "c1".into(),
        name: "ttl check c1".into(),
        kind: CheckKind::Ttl,
        interval_ms: 10_000,
        timeout_ms: 10_000,
        success_before_passing: 1,
        failures_before_critical: 1,
        deregister_critical_after_ms: None,
        notes: None,
        status,
        output: String::new(),
        status_index: 0,
    }
}

fn arb_data() -> impl Strategy<Value = InstanceData> {
    (
        (
            0..6u8,
            proptest::option::of(proptest::sample::select(HEALTHS)),
        ),
        1..4u16,
        proptest::sample::subsequence(TAGS, 0..=3),
        proptest::option::of(proptest::sample::select(VERSIONS)),
        proptest::option::of(proptest::sample::select(ZONES)),
        proptest::option::of(0..3u8),
    )
        .prop_map(
            |((id, check), port, tags, version, zone, team)| InstanceData {
                id: format!("i{id}"),
                address: "10.0.0.1".into(),
                port,
                tags: tags.into_iter().map(String::from).collect(),
                meta: team
                    .map(|t| [("team".to_string(), format!("t{t}"))].into())
                    .unwrap_or_default(),
                version: version.map(String::from),
                zone: zone.map(String::from),
                weight: 100,
                checks: check.map(ttl_check).into_iter().collect(),
            },
        )
}

/// Any command on a small space of services, ids and leases, so that
/// random sequences collide: replacements, shared leases, expiry races.
pub fn arb_command() -> impl Strategy<Value = Command> {
    let svc = proptest::sample::select(SERVICES).prop_map(String::from);
    let lease = prop_oneof![
        Just(LeaseRef::None),
        (1..5u64, 1..3u64).prop_map(|(id, t)| LeaseRef::Own {
            id,
            ttl_ms: t * 1000
        }),
        (1..5u64).prop_map(LeaseRef::Existing),
    ];
    prop_oneof![
        4 => (svc.clone(), arb_data(), lease).prop_map(|(s, d, l)| reg(&s, d, l)),
        2 => (svc, 0..6u8).prop_map(|(s, id)| Command::Deregister {
            namespace: "default".into(),
            service: s,
            id: format!("i{id}"),
        }),
        1 => (1..5u64).prop_map(|id| Command::CreateLease { id, ttl_ms: 5_000 }),
        1 => (1..5u64).prop_map(|id| Command::RevokeLease { id }),
        1 => proptest::collection::vec(1..5u64, 0..3).prop_map(|ids| Command::ExpireLeases { ids }),
        1 => (proptest::collection::vec(1..5u64, 0..3), proptest::sample::select(PRESERVATIONS)).prop_map(|(ids, state)| Command::PreserveLeases { ids, state }),
        2 => (proptest::sample::select(SERVICES), 0..6u8, proptest::sample::select(HEALTHS)).prop_map(|(s, id, status)| Command::CheckStatus {
            namespace: "default".into(),
            service: s.into(),
            id: format!("i{id}"),
            check: "c1".into(),
            status,
            output: format!("{status:?}"),
        }),
        1 => (proptest::sample::select(SERVICES), 0..6u8, any::<bool>()).prop_map(|(s, id, on)| Command::Maintenance {
            namespace: "default".into(),
            service: s.into(),
            id: format!("i{id}"),
            reason: on.then(|| "upgrade".to_string()),
        }),
    ]
}

/// Applies `cmds`, one per index from 1, at 1 s apart.
pub fn run(cmds: &[Command]) -> (Catalog, Vec<ApplyResult>) {
    let mut c = Catalog::new();
    let results = cmds
        .iter()
        .enumerate()
        .map(|(i, cmd)| c.apply(i as u64 + 1, 1_000 * i as u64, cmd))
        .collect();
    (c, results)
}

/// Commands that leave a history with current, replaced and deleted
/// instances.
pub fn snapshot_scenario() -> Vec<Command> {
    let data = |id: &str, tags: &[&str], meta: &[(&str, &str)]| InstanceData {
        tags: tags.iter().map(|t| t.to_string()).collect(),
        meta: meta
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        version: Some("1.4.2".into()),
        zone: Some("eu-1a".into()),
        checks: vec![Check {
            id: "ttl".into(),
            name: "ttl".into(),
            ..ttl_check(Health::Passing)
        }],
        address: "10.0.0.1".into(),
        port: 8080,
        weight: 100,
        id: id.into(),
    };
    let at = |ns: &str, svc: &str, d: InstanceData, lease: LeaseRef| Command::Register {
        namespace: ns.into(),
        service: svc.into(),
        instance: d,
        lease,
    };
    vec![
        Command::CreateLease {
            id: 7,
            ttl_ms: 10_000,
        },
        at(
            "default",
            "pay",
            data("a", &["v2", "prod"], &[("team", "pay")]),
            LeaseRef::Existing(7),
        ),
        at(
            "default",
            "pay",
            data("b", &["prod"], &[]),
            LeaseRef::Own {
                id: 9,
                ttl_ms: 5_000,
            },
        ),
        at(
            "ops",
            "cart",
            data(
                "c\"é",
                &[],
                &[
                    ("k", "v"),
                    (
                        "a-very-long-meta-value-key",
                        "a value well over twenty-four bytes long",
                    ),
                ],
            ),
            LeaseRef::None,
        ),
        Command::Maintenance {
            namespace: "default".into(),
            service: "pay".into(),
            id: "a".into(),
            reason: Some("upgrade".into()),
        },
        Command::CheckStatus {
            namespace: "default".into(),
            service: "pay".into(),
            id: "b".into(),
            check: "ttl".into(),
            status: Health::Critical,
            output: "late".into(),
        },
        at(
            "default",
            "pay",
            data("d", &["prod"], &[]),
            LeaseRef::Existing(7),
        ),
        Command::Deregister {
            namespace: "default".into(),
            service: "pay".into(),
            id: "d".into(),
        },
    ]
}

/// The catalog [`snapshot_scenario`] builds, one command per index.
pub fn scenario_catalog() -> Catalog {
    let mut c = Catalog::new();
    for (i, cmd) in snapshot_scenario().iter().enumerate() {
        let n = i as u64 + 1;
        c.apply(n, 1_000 * n, cmd).unwrap();
    }
    c
}
