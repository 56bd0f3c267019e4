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
        let log = RaftLog::new(
            store.clone(),
            Arc::new(AtomicU64::new(0)),
            Default::default(),
        );
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

/// A node votes for at most one candidate per term (raft's rule, which
/// `cluster/server.rs` adds on top of openraft 0.9: alone, openraft would
/// grant a candidate of the same term with a higher node id, and two
/// leaders could win one term). Asked through its real cluster listener.
#[tokio::test]
async fn a_node_votes_for_at_most_one_candidate_per_term() {
    use std::collections::BTreeMap;
    use std::time::Duration;

    use openraft::Vote;
    use openraft::raft::{VoteRequest, VoteResponse};

    use crate::cluster::client::Http;
    use crate::cluster::wire;
    use crate::{ClusterConfig, RaftConfig};

    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    // Nodes 1 and 3 never start: node 2 has no leader, so no leader lease
    // makes it refuse votes, and its log stays empty.
    let absent = || {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().to_string()
    };
    // Node 2 on its data directory (opened again after a restart).
    let open = |listener: tokio::net::TcpListener| {
        let peers = BTreeMap::from([(1, absent()), (2, addr.clone()), (3, absent())]);
        crate::Node::open_cluster(
            RaftConfig {
                node_id: 2,
                data_dir: dir.path().join("node-2"),
                snapshot_logs: 100,
                snapshot_commands: 100,
                force_recover_from_snapshot: false,
            },
            Arc::new(NoObserver),
            ClusterConfig {
                peers,
                join: false,
                http_addr: "127.0.0.1:1".into(),
                link_faults: None,
                tls: None,
            },
            listener,
        )
    };
    let node = open(listener).await.unwrap();

    let http = Http::new(
        9,
        None,
        None,
        Arc::new(std::sync::atomic::AtomicBool::new(false)),
        Arc::new(|_: &crate::cluster::client::CallError| {}),
    )
    .unwrap();
    let ask = |term: u64, candidate: u64| {
        let (http, addr) = (http.clone(), addr.clone());
        async move {
            // As up to date as node 2's log (its initial membership entry).
            let last = openraft::LogId::new(openraft::CommittedLeaderId::new(0, 0), 0);
            let req = VoteRequest::<u64>::new(Vote::new(term, candidate), Some(last));
            let resp: Result<VoteResponse<u64>, openraft::error::RaftError<u64>> = http
                .call(
                    2,
                    &addr,
                    "vote",
                    wire::encode(&req).unwrap(),
                    Duration::from_secs(10),
                )
                .await
                .unwrap();
            let resp = resp.unwrap();
            resp.vote_granted
        }
    };
    // Terms far above the ones node 2 reaches standing alone meanwhile.
    assert!(
        ask(1000, 1).await,
        "the first candidate of a term is granted"
    );
    assert!(
        !ask(1000, 3).await,
        "a second candidate of the same term is refused, though its id is higher"
    );
    assert!(ask(1000, 1).await, "the candidate voted for may ask again");
    assert!(ask(1001, 3).await, "a candidate of a later term is granted");
    assert!(
        !ask(1001, 1).await,
        "and then the other one is refused in that term"
    );
    assert!(!ask(1000, 1).await, "as is an earlier term");

    // The vote is stored: after a restart node 2 still refuses a second
    // candidate of term 1001.
    node.shutdown().await.unwrap();
    drop(node);
    let listener = tokio::net::TcpListener::bind(&addr).await.unwrap();
    let node = open(listener).await.unwrap();
    assert!(
        !ask(1001, 1).await,
        "the vote of term 1001 survived the restart"
    );
    assert!(ask(1002, 1).await);
    node.shutdown().await.unwrap();
}
