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

/// Data this build cannot read is refused at start-up, naming what and
/// where: a snapshot kept in the store's metadata (pre-release layout),
/// unversioned entries (pre-release format), entries of an unknown version.
#[tokio::test]
async fn data_in_another_format_is_refused_at_start_up() {
    use crate::log_store::KEY_SNAPSHOT;
    use crate::{RaftConfig, RaftError};

    async fn open_with(write: impl FnOnce(&LogStore)) -> Result<crate::Node, RaftError> {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        std::fs::create_dir_all(&data).unwrap();
        let store = LogStore::open(&data.join("raft.redb")).unwrap();
        write(&store);
        store.flush().unwrap();
        store.close();
        drop(store);
        let node = crate::Node::open(
            RaftConfig {
                node_id: 1,
                data_dir: data,
                snapshot_logs: 100,
                snapshot_commands: 100,
                force_recover_from_snapshot: false,
            },
            Arc::new(NoObserver),
        )
        .await;
        if let Ok(n) = &node {
            n.shutdown().await.unwrap();
        }
        node
    }
    fn append(store: &LogStore, index: u64, bytes: &[u8]) {
        let (tx, rx) = std::sync::mpsc::channel();
        store.append(
            vec![(index, bytes.to_vec())],
            Box::new(move |r| tx.send(r).unwrap()),
        );
        rx.recv().unwrap().unwrap();
    }
    let refused = |r: Result<crate::Node, RaftError>| match r {
        Err(RaftError::Corrupt(m)) => m,
        Err(e) => panic!("expected a refusal, got {e}"),
        Ok(_) => panic!("expected a refusal, the node opened"),
    };

    let m = refused(
        open_with(|s| {
            s.put_meta_sync(KEY_SNAPSHOT, Some(b"MSN1".to_vec()))
                .unwrap()
        })
        .await,
    );
    assert!(m.contains("pre-release") && m.contains("raft.redb"), "{m}");

    let m = refused(open_with(|s| append(s, 1, br#"{"log_id":{}}"#)).await);
    assert!(
        m.contains("log entry 1") && m.contains("pre-release"),
        "{m}"
    );

    let m = refused(open_with(|s| append(s, 1, b"\x09{}")).await);
    assert!(m.contains("format version 9"), "{m}");
}
