//! The public node API on real temp dirs: persistence across restarts,
//! snapshots, concurrency.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use muster_catalog::{
    ApplyError, ApplyResult, Catalog, Command, Done, InstanceData, LeaseRef, ServiceKey,
};
use muster_raft::{ApplyObserver, Node, ProposeError, RaftConfig};

const READY: Duration = Duration::from_secs(20);

#[derive(Default)]
struct Recorder {
    applied: Mutex<Vec<u64>>,
    restored: Mutex<Vec<u64>>,
}

impl ApplyObserver for Recorder {
    fn applied(&self, index: u64, _result: &ApplyResult) {
        self.applied.lock().unwrap().push(index);
    }
    fn restored(&self, catalog: &Catalog) {
        self.restored.lock().unwrap().push(catalog.applied_index());
    }
}

fn config(dir: &Path, snapshot_logs: u64) -> RaftConfig {
    RaftConfig {
        node_id: 1,
        data_dir: dir.join("data"),
        snapshot_logs,
        snapshot_commands: 1_000_000,
        force_recover_from_snapshot: false,
    }
}

async fn open(dir: &Path, snapshot_logs: u64) -> (Node, Arc<Recorder>) {
    let recorder = Arc::new(Recorder::default());
    let node = Node::open(config(dir, snapshot_logs), recorder.clone())
        .await
        .expect("open node");
    node.wait_ready(READY).await.expect("node ready");
    (node, recorder)
}

fn register(id: &str, lease: u64) -> Command {
    Command::Register {
        namespace: "default".into(),
        service: "payments".into(),
        instance: InstanceData {
            id: id.into(),
            address: "10.0.0.1".into(),
            port: 8080,
            tags: BTreeSet::from(["v2".to_string()]),
            meta: BTreeMap::new(),
            version: Some("1.4.0".into()),
            zone: None,
            weight: 100,
            checks: Vec::new(),
        },
        lease: LeaseRef::Existing(lease),
    }
}

fn catalog(node: &Node) -> Catalog {
    node.catalog().read().unwrap().clone()
}

/// What a catalog looks like after a restart: the same, plus the new
/// leader's blank entry.
fn after_restart(mut before: Catalog, node: &Node) -> Catalog {
    before.advance(node.info().applied_index);
    before
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proposals_survive_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (node, recorder) = open(dir.path(), 1000).await;
    assert!(*node.leader_watch().borrow());
    let info = node.info();
    assert_eq!(info.node_id, 1);
    assert_eq!(info.leader, Some(1));
    assert_eq!(info.members, vec![1]);

    let mut last = 0;
    for lease in 1..=5u64 {
        let a = node
            .propose(Command::CreateLease {
                id: lease,
                ttl_ms: 10_000,
            })
            .await
            .unwrap();
        assert!(a.index > last, "indexes grow");
        last = a.index;
        assert_eq!(a.result.unwrap().leases_created, vec![(lease, 10_000)]);
    }
    let reg = node.propose(register("p-1", 3)).await.unwrap();
    let outcome = reg.result.unwrap();
    assert_eq!(
        outcome.changed,
        vec![ServiceKey::new("default", "payments")]
    );
    let Done::Instance(inst) = outcome.done else {
        panic!("{:?}", outcome.done)
    };
    assert_eq!(inst.create_index, reg.index);
    // A command the catalog refuses is still committed, with its error.
    let dup = node
        .propose(Command::CreateLease { id: 1, ttl_ms: 5 })
        .await
        .unwrap();
    assert!(dup.result.is_err());
    assert!(dup.index > reg.index);

    let before = catalog(&node);
    assert_eq!(before.applied_index(), dup.index);
    let info = node.info();
    assert_eq!(info.applied_index, dup.index);
    assert!(info.commit_index >= dup.index);
    assert_eq!(recorder.applied.lock().unwrap().len(), 7);

    node.shutdown().await.unwrap();
    node.shutdown().await.unwrap(); // idempotent
    assert_eq!(
        node.propose(Command::RevokeLease { id: 1 }).await,
        Err(ProposeError::ShuttingDown)
    );
    assert!(!*node.leader_watch().borrow());

    let (node, recorder) = open(dir.path(), 1000).await;
    let after = catalog(&node);
    assert_eq!(after.applied_index(), node.info().applied_index);
    // A single voter resumes its term (no new entry) or wins a new one (one
    // blank entry); either way every entry on disk is applied.
    assert!(after.applied_index() >= dup.index);
    assert_eq!(after, after_restart(before, &node));
    assert_eq!(after.lease_count(), 5);
    assert_eq!(after.instance_count(), 1);
    // Every command entry was re-applied at start-up, in order.
    let replayed = recorder.applied.lock().unwrap().clone();
    assert_eq!(replayed.len(), 7);
    assert!(replayed.windows(2).all(|w| w[0] < w[1]));
    assert!(
        recorder.restored.lock().unwrap().is_empty(),
        "no snapshot yet"
    );

    // Still writable after the restart.
    let more = node.propose(Command::RevokeLease { id: 3 }).await.unwrap();
    assert_eq!(more.result.unwrap().done, Done::Removed(1));
    node.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_from_snapshot_and_log() {
    let dir = tempfile::tempdir().unwrap();
    let (node, _) = open(dir.path(), 5).await;
    for lease in 1..=23u64 {
        node.propose(Command::CreateLease {
            id: lease,
            ttl_ms: 1000 + lease,
        })
        .await
        .unwrap()
        .result
        .unwrap();
    }
    let snap = node.snapshot(READY).await.unwrap();
    assert!(snap >= 23);
    // Entries after the snapshot: recovered from the log.
    for lease in 1..=3u64 {
        node.propose(Command::RevokeLease { id: lease })
            .await
            .unwrap()
            .result
            .unwrap();
    }
    node.propose(register("after-snapshot", 10))
        .await
        .unwrap()
        .result
        .unwrap();
    let before = catalog(&node);
    node.shutdown().await.unwrap();

    let (node, recorder) = open(dir.path(), 5).await;
    let restored = recorder.restored.lock().unwrap().clone();
    assert_eq!(restored.len(), 1, "catalog loaded from a snapshot");
    assert!(restored[0] >= snap);
    let after = catalog(&node);
    assert_eq!(after, after_restart(before, &node));
    assert_eq!(after.lease_count(), 20);
    assert!(after.lease(1).is_none());
    assert!(after.lease(23).is_some());
    assert_eq!(after.instance_count(), 1);
    node.shutdown().await.unwrap();

    // Automatic snapshots (every 5 logs) plus purging keep working across
    // another restart.
    let (node, _) = open(dir.path(), 5).await;
    let again = catalog(&node);
    assert_eq!(again.lease_count(), 20);
    node.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_proposals_each_get_their_own_result() {
    let dir = tempfile::tempdir().unwrap();
    let (node, recorder) = open(dir.path(), 50).await;
    let tasks: Vec<_> = (1..=200u64)
        .map(|lease| {
            let node = node.clone();
            tokio::spawn(async move {
                let applied = node
                    .propose(Command::CreateLease {
                        id: lease,
                        ttl_ms: 10_000,
                    })
                    .await;
                (lease, applied)
            })
        })
        .collect();
    let mut indexes = BTreeSet::new();
    for t in tasks {
        let (lease, applied) = t.await.unwrap();
        let applied = applied.unwrap();
        // Batched proposals share an index, but each has its own result.
        assert_eq!(
            applied.result.unwrap().leases_created,
            vec![(lease, 10_000)]
        );
        indexes.insert(applied.index);
    }
    let c = catalog(&node);
    assert_eq!(c.lease_count(), 200);
    assert_eq!(c.applied_index(), *indexes.last().unwrap());
    let observed = recorder.applied.lock().unwrap().clone();
    assert_eq!(observed.len(), 200, "one observer call per command");
    assert_eq!(observed.iter().copied().collect::<BTreeSet<_>>(), indexes);
    assert!(
        observed.windows(2).all(|w| w[0] <= w[1]),
        "observer sees log order"
    );
    node.shutdown().await.unwrap();

    let (node, _) = open(dir.path(), 50).await;
    assert_eq!(catalog(&node).lease_count(), 200);
    node.shutdown().await.unwrap();
}

/// Batches carry many commands per entry, so snapshots are also paced by
/// commands: with openraft's entry policy out of reach, enough commands
/// alone bring a snapshot, and a restart loads it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_are_paced_by_commands_not_only_entries() {
    const COMMANDS: u64 = 600;
    let dir = tempfile::tempdir().unwrap();
    let cfg = RaftConfig {
        snapshot_logs: 1_000_000,
        snapshot_commands: 200,
        force_recover_from_snapshot: false,
        ..config(dir.path(), 0)
    };
    let node = Node::open(cfg.clone(), Arc::new(Recorder::default()))
        .await
        .unwrap();
    node.wait_ready(READY).await.unwrap();
    let first = node.info().applied_index;
    // Concurrent, so they share entries; fewer than `snapshot_logs` either way.
    let tasks: Vec<_> = (1..=COMMANDS)
        .map(|id| {
            let node = node.clone();
            tokio::spawn(async move {
                node.propose(Command::CreateLease { id, ttl_ms: 60_000 })
                    .await
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap().unwrap().result.unwrap();
    }
    let covered = node.wait_snapshot(first + 1, READY).await.unwrap();
    assert!(covered > first);
    node.shutdown().await.unwrap();

    let recorder = Arc::new(Recorder::default());
    let node = Node::open(cfg, recorder.clone()).await.unwrap();
    node.wait_ready(READY).await.unwrap();
    assert_eq!(recorder.restored.lock().unwrap().len(), 1);
    assert_eq!(catalog(&node).lease_count(), COMMANDS as usize);
    node.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_proposals_are_batched_into_few_entries() {
    const N: usize = 2000;
    let dir = tempfile::tempdir().unwrap();
    let (node, recorder) = open(dir.path(), 10_000).await;
    let first_index = node.info().applied_index;
    let commits_before = node.store_commits();
    let tasks: Vec<_> = (0..N)
        .map(|n| {
            let node = node.clone();
            tokio::spawn(async move {
                // Every tenth proposal fails at apply, with its own error.
                let cmd = if n % 10 == 9 {
                    Command::Deregister {
                        namespace: "default".into(),
                        service: "payments".into(),
                        id: format!("missing-{n}"),
                    }
                } else {
                    let mut c = register(&format!("i-{n}"), 0);
                    if let Command::Register { lease, .. } = &mut c {
                        *lease = LeaseRef::None;
                    }
                    c
                };
                (n, node.propose(cmd).await)
            })
        })
        .collect();
    let mut entries = BTreeSet::new();
    let mut registered = BTreeSet::new();
    for t in tasks {
        let (n, applied) = t.await.unwrap();
        let applied = applied.unwrap();
        assert!(applied.index > first_index);
        entries.insert(applied.index);
        if n % 10 == 9 {
            assert_eq!(
                applied.result,
                Err(ApplyError::UnknownInstance {
                    service: "payments".into(),
                    id: format!("missing-{n}"),
                })
            );
        } else {
            let Done::Instance(inst) = applied.result.unwrap().done else {
                panic!("a registration yields its instance")
            };
            assert_eq!(inst.id, format!("i-{n}"));
            assert_eq!(inst.modify_index, applied.index);
            registered.insert(inst.id.to_string());
        }
    }
    let commits = node.store_commits() - commits_before;
    eprintln!(
        "{N} proposals in {} entries, {commits} store commits",
        entries.len()
    );
    assert!(
        entries.len() < N / 2,
        "expected batching: {} entries for {N} proposals",
        entries.len()
    );
    assert!(
        commits < (N / 2) as u64,
        "expected group commit: {commits} commits for {N} proposals"
    );
    let observed = recorder.applied.lock().unwrap().clone();
    assert_eq!(observed.len(), N, "one observer call per command");
    assert!(observed.windows(2).all(|w| w[0] <= w[1]));

    let c = catalog(&node);
    assert_eq!(c.instance_count(), N - N / 10);
    let before = c;
    node.shutdown().await.unwrap();

    let (node, _) = open(dir.path(), 10_000).await;
    let after = catalog(&node);
    let key = ServiceKey::new("default", "payments");
    let ids: BTreeSet<String> = after
        .service(&key)
        .unwrap()
        .instances
        .keys()
        .map(|id| id.to_string())
        .collect();
    assert_eq!(ids, registered);
    assert_eq!(after, after_restart(before, &node));
    node.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_answers_every_queued_proposal() {
    let dir = tempfile::tempdir().unwrap();
    let (node, _) = open(dir.path(), 10_000).await;
    let tasks: Vec<_> = (1..=3000u64)
        .map(|lease| {
            let node = node.clone();
            tokio::spawn(async move {
                let r = node
                    .propose(Command::CreateLease {
                        id: lease,
                        ttl_ms: 10_000,
                    })
                    .await;
                (lease, r)
            })
        })
        .collect();
    tokio::task::yield_now().await;
    tokio::time::timeout(READY, node.shutdown())
        .await
        .expect("shutdown does not hang")
        .unwrap();
    let mut acknowledged = BTreeSet::new();
    for t in tasks {
        let (lease, r) = tokio::time::timeout(READY, t)
            .await
            .expect("every proposal is answered")
            .unwrap();
        match r {
            Ok(applied) => {
                applied.result.unwrap();
                acknowledged.insert(lease);
            }
            Err(e) => assert_eq!(e, ProposeError::ShuttingDown),
        }
    }
    // Acknowledged means durable.
    let (node, _) = open(dir.path(), 10_000).await;
    let c = catalog(&node);
    for lease in &acknowledged {
        assert!(c.lease(*lease).is_some(), "acknowledged lease {lease} lost");
    }
    node.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_config_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let err = Node::open(config(dir.path(), 0), Arc::new(Recorder::default()))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("snapshot_logs"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_committed_marker_still_recovers_everything() {
    let dir = tempfile::tempdir().unwrap();
    let (node, _) = open(dir.path(), 1000).await;
    for lease in 1..=10u64 {
        node.propose(Command::CreateLease {
            id: lease,
            ttl_ms: 10_000,
        })
        .await
        .unwrap();
    }
    let before = catalog(&node);
    node.shutdown().await.unwrap();

    // As if the process died before the committed log id reached the disk:
    // the entries are durable, the marker is not.
    let store = muster_store::LogStore::open(&dir.path().join("data").join("raft.redb")).unwrap();
    store.put_meta_sync("raft/committed", None).unwrap();
    drop(store);

    let (node, _) = open(dir.path(), 1000).await;
    let after = catalog(&node);
    assert_eq!(after.lease_count(), 10);
    assert_eq!(after, after_restart(before, &node));
    node.shutdown().await.unwrap();
}

/// Creates leases `ids`, each its own entry.
async fn create_leases(node: &Node, ids: std::ops::RangeInclusive<u64>) {
    for id in ids {
        node.propose(Command::CreateLease { id, ttl_ms: 10_000 })
            .await
            .unwrap()
            .result
            .unwrap();
    }
}

/// A data dir with a snapshot of 23 leases, then 3 more leases in the log
/// only (snapshots every 5 entries, so the log is also purged); returns
/// the snapshot's index.
async fn snapshot_then_more(dir: &Path) -> u64 {
    let (node, _) = open(dir, 1000).await;
    create_leases(&node, 1..=23).await;
    let snap = node.snapshot(READY).await.unwrap();
    create_leases(&node, 24..=26).await;
    node.shutdown().await.unwrap();
    snap
}

async fn open_with(dir: &Path, force: bool) -> Result<Node, muster_raft::RaftError> {
    let cfg = RaftConfig {
        force_recover_from_snapshot: force,
        ..config(dir, 1000)
    };
    Node::open(cfg, Arc::new(Recorder::default())).await
}

fn data_loss(r: Result<Node, muster_raft::RaftError>) -> String {
    match r {
        Err(muster_raft::RaftError::DataLoss(m)) => m,
        Err(other) => panic!("refused, but not as data loss: {other}"),
        Ok(_) => panic!("a data dir that lost acknowledged writes was opened"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_or_empty_log_beside_a_snapshot_is_refused_unless_forced() {
    let dir = tempfile::tempdir().unwrap();
    let snap = snapshot_then_more(dir.path()).await;
    let log = dir.path().join("data/raft.redb");
    let saved = std::fs::read(&log).unwrap();

    for (how, damage) in [
        (
            "deleted",
            Box::new(|p: &Path| std::fs::remove_file(p).unwrap()) as Box<dyn Fn(&Path)>,
        ),
        (
            "emptied",
            Box::new(|p: &Path| std::fs::write(p, b"").unwrap()),
        ),
    ] {
        damage(&log);
        let msg = data_loss(open_with(dir.path(), false).await);
        assert!(msg.contains("raft.redb"), "{how}: {msg}");
        assert!(msg.contains("snapshot.json"), "{how}: {msg}");
        assert!(msg.contains(&format!("index {snap}")), "{how}: {msg}");
        assert!(
            msg.contains("--force-recover-from-snapshot"),
            "{how}: {msg}"
        );
        // Refusing touched nothing: the snapshot is still there.
        assert!(dir.path().join("data/snapshot.json").exists(), "{how}");
        std::fs::write(&log, &saved).unwrap();
    }

    // The log put back: everything is there.
    let node = open_with(dir.path(), false).await.unwrap();
    node.wait_ready(READY).await.unwrap();
    assert_eq!(catalog(&node).lease_count(), 26);
    node.shutdown().await.unwrap();

    // Forced: the snapshot alone, the writes after it lost, and writable.
    std::fs::remove_file(&log).unwrap();
    let node = open_with(dir.path(), true).await.unwrap();
    node.wait_ready(READY).await.unwrap();
    let c = catalog(&node);
    assert_eq!(c.lease_count(), 23);
    assert!(c.lease(24).is_none());
    create_leases(&node, 100..=100).await;
    node.shutdown().await.unwrap();
    // ... and from then on an ordinary data dir.
    let node = open_with(dir.path(), false).await.unwrap();
    node.wait_ready(READY).await.unwrap();
    assert!(catalog(&node).lease(100).is_some());
    node.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_older_than_its_snapshot_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (node, _) = open(dir.path(), 1000).await;
    create_leases(&node, 200..=202).await;
    node.shutdown().await.unwrap();
    let log = dir.path().join("data/raft.redb");
    let old = std::fs::read(&log).unwrap();

    let snap = snapshot_then_more(dir.path()).await;
    std::fs::write(&log, &old).unwrap();
    let msg = data_loss(open_with(dir.path(), false).await);
    assert!(msg.contains("ends at index"), "{msg}");
    assert!(msg.contains(&format!("index {snap}")), "{msg}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_purged_log_without_its_snapshot_is_refused_and_the_data_kept() {
    let dir = tempfile::tempdir().unwrap();
    // Snapshots every 5 entries purge the log behind them.
    let (node, _) = open(dir.path(), 5).await;
    create_leases(&node, 1..=30).await;
    node.snapshot(READY).await.unwrap();
    node.wait_purged(1, READY).await.unwrap();
    node.shutdown().await.unwrap();

    let data = dir.path().join("data");
    std::fs::remove_file(data.join("snapshot.json")).unwrap();
    let files = |d: &Path| {
        let mut v: Vec<String> = std::fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    };
    let before = files(&data);
    assert!(before.iter().any(|f| f.ends_with(".data")), "{before:?}");
    let cfg = config(dir.path(), 5);
    let msg = data_loss(Node::open(cfg, Arc::new(Recorder::default())).await);
    assert!(msg.contains("purged up to index"), "{msg}");
    assert!(msg.contains("snapshot.json is missing"), "{msg}");
    // The snapshot data file an operator may need is not cleaned away.
    assert_eq!(files(&data), before);
}

/// Replaces every `from` in the file with `to` (same length), as a disk or
/// a careless edit would, keeping the JSON valid; returns how many.
fn tamper_file(path: &Path, from: &[u8], to: &[u8]) -> usize {
    let mut bytes = std::fs::read(path).unwrap();
    let mut n = 0;
    let mut at = 0;
    while let Some(pos) = bytes[at..].windows(from.len()).position(|w| w == from) {
        let start = at + pos;
        bytes[start..start + to.len()].copy_from_slice(to);
        at = start + to.len();
        n += 1;
    }
    std::fs::write(path, bytes).unwrap();
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_byte_in_the_log_or_the_snapshot_is_refused_with_the_place_named() {
    let dir = tempfile::tempdir().unwrap();
    let (node, _) = open(dir.path(), 1000).await;
    node.propose(Command::CreateLease {
        id: 10,
        ttl_ms: 10_000,
    })
    .await
    .unwrap();
    node.propose(register("in-snapshot", 10)).await.unwrap();
    node.snapshot(READY).await.unwrap();
    let mut late = register("in-log", 10);
    if let Command::Register { instance, .. } = &mut late {
        instance.address = "10.9.9.9".into();
    }
    node.propose(late).await.unwrap();
    node.shutdown().await.unwrap();
    let data = dir.path().join("data");

    // A log entry: the address of the registration after the snapshot.
    let log = data.join("raft.redb");
    let saved = std::fs::read(&log).unwrap();
    assert!(tamper_file(&log, b"10.9.9.9", b"10.9.9.8") > 0);
    let err = open_with(dir.path(), false).await.unwrap_err().to_string();
    assert!(err.contains("raft.redb"), "{err}");
    assert!(err.contains("log entry"), "{err}");
    assert!(err.contains("fails its checksum"), "{err}");
    std::fs::write(&log, saved).unwrap();

    // The snapshot data: the address of the registration before it.
    let snapshot = std::fs::read_dir(&data)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "data"))
        .unwrap();
    assert_eq!(tamper_file(&snapshot, b"10.0.0.1", b"10.0.0.2"), 1);
    let err = open_with(dir.path(), false).await.unwrap_err().to_string();
    let name = snapshot.file_name().unwrap().to_str().unwrap();
    assert!(err.contains(name), "{err}");
    assert!(err.contains("fails its checksum"), "{err}");
}
