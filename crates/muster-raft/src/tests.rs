//! openraft's storage test suite against the real store on a temp dir.

use std::sync::atomic::AtomicU64;
use std::sync::{Arc, RwLock};

use muster_catalog::{ApplyResult, Catalog};
use muster_store::LogStore;
use openraft::testing::{StoreBuilder, Suite};

use crate::ApplyObserver;
use crate::log_store::RaftLog;
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
            store,
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
