//! openraft's [`RaftStateMachine`] over the in-memory catalog, with the
//! current snapshot in its own file ([`crate::snapshot_file`]).

use std::io::Cursor;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use muster_catalog::Catalog;
use muster_store::LogStore;
use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    AnyError, EntryPayload, OptionalSend, RaftSnapshotBuilder, SnapshotId, StorageIOError,
};

use crate::ApplyObserver;
use crate::codec;
use crate::log_store::{KEY_SNAPSHOT, durable};
use crate::snapshot_file::{SnapshotFile, StoredSnapshot};
use crate::types::{
    Entry, LogId, Response, SnapshotMeta, StorageError, StoredMembership, TypeConfig,
};

/// What is shared between the state machine and its snapshot builders.
struct Shared {
    store: LogStore,
    file: SnapshotFile,
    /// The metadata of the stored snapshot. Its lock serialises "is the
    /// stored snapshot older?" with "store this one".
    current: tokio::sync::Mutex<Option<SnapshotMeta>>,
    /// Makes snapshot ids unique within this process.
    snapshot_seq: AtomicU64,
}

impl Shared {
    /// Reads the current snapshot: the file, or else one an older version
    /// kept in the store's metadata (moved to the file by the next save).
    /// Blocking: it reads the whole file.
    fn read_current(&self) -> Result<Option<StoredSnapshot>, StorageError> {
        if let Some(snapshot) = self
            .file
            .read()
            .map_err(|e| StorageIOError::read_snapshot(None, &e))?
        {
            return Ok(Some(snapshot));
        }
        self.store
            .get_meta(KEY_SNAPSHOT)
            .map(codec::decode_legacy_snapshot)
            .transpose()
            .map_err(|e| StorageIOError::read_snapshot(None, &e).into())
    }

    /// [`Shared::read_current`] on a blocking thread.
    async fn read_current_async(self: &Arc<Self>) -> Result<Option<StoredSnapshot>, StorageError> {
        let shared = Arc::clone(self);
        tokio::task::spawn_blocking(move || shared.read_current())
            .await
            .map_err(|e| StorageIOError::read_snapshot(None, AnyError::error(e)))?
    }

    /// Durably stores a snapshot unless the stored one is newer.
    /// Returns whether it was stored.
    async fn save_snapshot(
        &self,
        meta: &SnapshotMeta,
        data: Arc<Vec<u8>>,
    ) -> Result<bool, StorageError> {
        let mut current = self.current.lock().await;
        if let Some(stored) = current.as_ref()
            && stored.last_log_id > meta.last_log_id
        {
            return Ok(false);
        }
        let err = |e: AnyError| StorageIOError::write_snapshot(Some(meta.signature()), e);
        let file = self.file.clone();
        let owned_meta = meta.clone();
        tokio::task::spawn_blocking(move || file.write(&owned_meta, &data))
            .await
            .map_err(|e| err(AnyError::new(&e)))?
            .map_err(|e| err(AnyError::new(&e)))?;
        *current = Some(meta.clone());
        if self.store.get_meta(KEY_SNAPSHOT).is_some() {
            // The file supersedes the copy an older version kept here.
            durable(|cb| self.store.put_meta(KEY_SNAPSHOT, None, cb))
                .await
                .map_err(|e| err(AnyError::new(&e)))?;
        }
        Ok(true)
    }

    fn next_snapshot_id(&self, last: Option<&LogId>) -> SnapshotId {
        let seq = self.snapshot_seq.fetch_add(1, Ordering::Relaxed);
        let millis = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or_default();
        match last {
            Some(l) => format!(
                "{}-{}-{}-{millis}-{seq}",
                l.leader_id.term, l.leader_id.node_id, l.index
            ),
            None => format!("none-{millis}-{seq}"),
        }
    }
}

/// The catalog as openraft's state machine.
pub(crate) struct StateMachine {
    catalog: Arc<RwLock<Catalog>>,
    applied: Option<LogId>,
    membership: StoredMembership,
    observer: Arc<dyn ApplyObserver>,
    shared: Arc<Shared>,
}

fn write_catalog(catalog: &RwLock<Catalog>) -> Result<RwLockWriteGuard<'_, Catalog>, StorageError> {
    catalog.write().map_err(|_| {
        StorageIOError::write_state_machine(AnyError::error("catalog lock poisoned by a panic"))
            .into()
    })
}

fn read_catalog(catalog: &RwLock<Catalog>) -> Result<RwLockReadGuard<'_, Catalog>, StorageError> {
    catalog.read().map_err(|_| {
        StorageIOError::read_state_machine(AnyError::error("catalog lock poisoned by a panic"))
            .into()
    })
}

impl StateMachine {
    /// Builds the state machine; if `file` (or, from an older version, the
    /// store) holds a snapshot, it replaces the catalog's content and
    /// `observer.restored` is called. Blocking: it reads the snapshot.
    pub(crate) fn open(
        store: LogStore,
        file: SnapshotFile,
        catalog: Arc<RwLock<Catalog>>,
        observer: Arc<dyn ApplyObserver>,
    ) -> Result<StateMachine, StorageError> {
        let shared = Arc::new(Shared {
            store,
            file,
            current: tokio::sync::Mutex::new(None),
            snapshot_seq: AtomicU64::new(0),
        });
        let mut sm = StateMachine {
            catalog,
            applied: None,
            membership: StoredMembership::default(),
            observer,
            shared,
        };
        if let Some(stored) = sm.shared.read_current()? {
            let restored = decode_snapshot_data(&stored.meta, stored.data())?;
            let bytes = stored.data().len();
            let meta = stored.meta;
            sm.restore(&meta, restored)?;
            *sm.shared.current.try_lock().expect("not shared yet") = Some(meta.clone());
            tracing::info!(snapshot = %meta, bytes, "catalog loaded from snapshot");
        }
        Ok(sm)
    }

    /// Replaces the catalog with a snapshot's.
    fn restore(&mut self, meta: &SnapshotMeta, restored: Catalog) -> Result<(), StorageError> {
        *write_catalog(&self.catalog)? = restored;
        self.applied = meta.last_log_id;
        self.membership = meta.last_membership.clone();
        let catalog = read_catalog(&self.catalog)?;
        self.observer.restored(&catalog);
        Ok(())
    }
}

fn decode_snapshot_data(meta: &SnapshotMeta, data: &[u8]) -> Result<Catalog, StorageError> {
    codec::decode_catalog(data)
        .map_err(|e| StorageIOError::read_snapshot(Some(meta.signature()), &e).into())
}

/// Builds a snapshot from a copy of the catalog taken when it was created,
/// so it is consistent with `applied` while apply goes on.
pub(crate) struct SnapshotBuilder {
    catalog: Catalog,
    applied: Option<LogId>,
    membership: StoredMembership,
    shared: Arc<Shared>,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        let data = codec::encode_catalog(&self.catalog)
            .map_err(|e| StorageIOError::write_snapshot(None, &e))?;
        let meta = SnapshotMeta {
            last_log_id: self.applied,
            last_membership: self.membership.clone(),
            snapshot_id: self.shared.next_snapshot_id(self.applied.as_ref()),
        };
        let data = Arc::new(data);
        if self.shared.save_snapshot(&meta, Arc::clone(&data)).await? {
            tracing::info!(snapshot = %meta, bytes = data.len(), "snapshot built");
        }
        // The writer has finished with its reference by now.
        let data = Arc::try_unwrap(data).unwrap_or_else(|shared| (*shared).clone());
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        Ok((self.applied, self.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Response>, StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries = entries.into_iter();
        let mut responses: Vec<Response> = Vec::with_capacity(entries.size_hint().0);
        let mut indexes: Vec<u64> = Vec::with_capacity(entries.size_hint().0);
        {
            // One write lock for every entry handed over: readers see whole
            // entries (whole batches), never a part of one.
            let mut catalog = write_catalog(&self.catalog)?;
            for entry in entries {
                let index = entry.log_id.index;
                let response = match entry.payload {
                    EntryPayload::Blank => {
                        catalog.advance(index);
                        Vec::new()
                    }
                    EntryPayload::Normal(req) => {
                        // Every command of the batch at the entry's index.
                        catalog.advance(index);
                        req.commands
                            .iter()
                            .map(|cmd| catalog.apply(index, req.now_ms, cmd))
                            .collect()
                    }
                    EntryPayload::Membership(m) => {
                        self.membership = StoredMembership::new(Some(entry.log_id), m);
                        catalog.advance(index);
                        Vec::new()
                    }
                };
                responses.push(response);
                indexes.push(index);
                self.applied = Some(entry.log_id);
            }
        }
        // Blank and membership entries have no results, so no calls.
        for (index, response) in indexes.into_iter().zip(&responses) {
            for result in response {
                self.observer.applied(index, result);
            }
        }
        Ok(responses)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        // Copying under the read lock is cheap next to serialising (instances
        // are shared `Arc`s) and keeps the copy consistent with `applied`.
        let catalog = match self.catalog.read() {
            Ok(c) => c.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        };
        SnapshotBuilder {
            catalog,
            applied: self.applied,
            membership: self.membership.clone(),
            shared: Arc::clone(&self.shared),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        let data = snapshot.into_inner();
        // Decode before storing: a snapshot that does not decode is refused.
        let restored = decode_snapshot_data(meta, &data)?;
        self.shared.save_snapshot(meta, Arc::new(data)).await?;
        self.restore(meta, restored)?;
        tracing::info!(snapshot = %meta, "snapshot installed");
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        Ok(self
            .shared
            .read_current_async()
            .await?
            .map(|stored| Snapshot {
                meta: stored.meta.clone(),
                snapshot: Box::new(Cursor::new(stored.into_data())),
            }))
    }
}
