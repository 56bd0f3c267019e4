//! openraft's storage test suite against the real store on a temp dir.

use std::sync::atomic::AtomicU64;
use std::sync::{Arc, RwLock};

use muster_catalog::{ApplyResult, Catalog};
use muster_store::LogStore;
use openraft::testing::{StoreBuilder, Suite};

use crate::ApplyObserver;
use crate::log_store::RaftLog;
use crate::snapshot_file::SnapshotDir;
use crate::state_machine::StateMachine;
use crate::types::{StorageError, TypeConfig};

struct NoObserver;

impl ApplyObserver for NoObserver {
    fn applied(&self, _index: u64, _result: &ApplyResult) {}
    fn restored(&self, _catalog: &Catalog) {}
}

struct Builder;

impl StoreBuilder<TypeConfig, RaftLog, StateMachine, tempfile::TempDir> for Builder {
    async fn build(&self) -> Result<(tempfile::TempDir, RaftLog, StateMachine), StorageError> {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = LogStore::open(&dir.path().join("raft.redb")).expect("open store");
        let log = RaftLog::new(store.clone(), Arc::new(AtomicU64::new(0)));
        let sm = StateMachine::open(
            &store,
            SnapshotDir::in_dir(dir.path()),
            Arc::new(RwLock::new(Catalog::new())),
            Arc::new(NoObserver),
        )?;
        Ok((dir, log, sm))
    }
}

#[test]
fn openraft_storage_suite() -> Result<(), StorageError> {
    Suite::test_all(Builder)
}

/// A data directory written by a version that kept the snapshot in the
/// store's metadata still loads, and the snapshot moves to its own files.
#[tokio::test]
async fn a_snapshot_in_the_store_metadata_loads_and_moves_to_its_files() {
    use openraft::storage::RaftStateMachine;
    use openraft::{CommittedLeaderId, StoredMembership};
    use tokio::io::AsyncReadExt;

    use crate::codec;
    use crate::log_store::KEY_SNAPSHOT;
    use crate::types::{LogId, SnapshotMeta};

    let dir = tempfile::tempdir().unwrap();
    let mut catalog = Catalog::new();
    catalog
        .apply(
            1,
            0,
            &muster_catalog::Command::CreateLease {
                id: 7,
                ttl_ms: 10_000,
            },
        )
        .unwrap();
    let meta = SnapshotMeta {
        last_log_id: Some(LogId::new(CommittedLeaderId::new(1, 1), 1)),
        last_membership: StoredMembership::default(),
        snapshot_id: "legacy".into(),
    };
    let store = LogStore::open(&dir.path().join("raft.redb")).unwrap();
    let legacy_data = serde_json::to_vec(&catalog).unwrap();
    store
        .put_meta_sync(
            KEY_SNAPSHOT,
            Some(codec::encode_legacy_snapshot(&meta, &legacy_data)),
        )
        .unwrap();

    let snapshots = SnapshotDir::in_dir(dir.path());
    let loaded = Arc::new(RwLock::new(Catalog::new()));
    let mut sm = StateMachine::open(
        &store,
        snapshots.clone(),
        Arc::clone(&loaded),
        Arc::new(NoObserver),
    )
    .unwrap();
    assert_eq!(*loaded.read().unwrap(), catalog);
    assert_eq!(sm.applied_state().await.unwrap().0, meta.last_log_id);
    assert!(snapshots.exists());
    assert_eq!(store.get_meta(KEY_SNAPSHOT), None, "legacy copy deleted");

    // openraft gets the moved snapshot, in the new data format.
    let current = sm.get_current_snapshot().await.unwrap().unwrap();
    assert_eq!(current.meta, meta);
    let mut data = Vec::new();
    let mut file = current.snapshot;
    file.read_to_end(&mut data).await.unwrap();
    assert_eq!(codec::read_catalog(&mut data.as_slice()).unwrap(), catalog);

    // And the files alone restore the same catalog.
    let reloaded = Arc::new(RwLock::new(Catalog::new()));
    StateMachine::open(
        &store,
        snapshots,
        Arc::clone(&reloaded),
        Arc::new(NoObserver),
    )
    .unwrap();
    assert_eq!(*reloaded.read().unwrap(), catalog);
}
