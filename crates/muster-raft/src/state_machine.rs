//! openraft's [`RaftStateMachine`] over the in-memory catalog, with the
//! current snapshot in files of its own ([`crate::snapshot_file`]), handed
//! to openraft as an open file.

use std::fs::File;
use std::io::{BufReader, BufWriter, Seek, Write};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use muster_catalog::Catalog;
use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    AnyError, EntryPayload, OptionalSend, RaftSnapshotBuilder, SnapshotId, StorageIOError,
};

use crate::ApplyObserver;
use crate::codec;
use crate::snapshot_file::{Current, NewData, SnapshotDir};
use crate::types::{
    Entry, LogId, Response, SnapshotMeta, StorageError, StoredMembership, TypeConfig,
};

/// A snapshot is due after commands numbering this fraction (1/n) of the
/// last snapshot's instances. Measured at 1,000,000 instances: loading
/// the snapshot takes ~2 µs per instance and replaying ~5 µs per command,
/// so 1/8 keeps a restart within about 2.6 s, and the snapshots built while
/// a million instances register cost ~5 % of the registration rate.
pub(crate) const INSTANCES_PER_SNAPSHOT_COMMAND: u64 = 8;

/// Snapshots paced by commands, beside openraft's policy by entries.
///
/// One entry carries a whole batch (up to thousands of commands), so a
/// count of entries says little about how long a restart replays. A
/// snapshot is due once the commands applied since the last one reach an
/// eighth ([`INSTANCES_PER_SNAPSHOT_COMMAND`]) of the instances that one
/// held (at least [`crate::RaftConfig::snapshot_commands`]): a restart then replays at most that many
/// commands after loading the snapshot, and each snapshot's cost is spread
/// over a number of commands that grows with the catalog.
#[derive(Debug, Default)]
pub(crate) struct SnapshotPace {
    /// The fewest commands that make a snapshot due.
    min_commands: AtomicU64,
    /// Commands applied since the last snapshot build began.
    commands: AtomicU64,
    /// Instances in the last snapshot built or loaded.
    instances: AtomicU64,
    /// Snapshot builds begun since start.
    builds: AtomicU64,
    /// Snapshots received from a leader and installed since start.
    pub(crate) installed: AtomicU64,
}

impl SnapshotPace {
    /// Commands after which a snapshot is due.
    pub(crate) fn threshold(&self) -> u64 {
        self.min_commands
            .load(Ordering::Relaxed)
            .max(self.instances.load(Ordering::Relaxed) / INSTANCES_PER_SNAPSHOT_COMMAND)
    }

    /// Commands applied since the last snapshot build began.
    pub(crate) fn commands(&self) -> u64 {
        self.commands.load(Ordering::Relaxed)
    }

    /// Snapshot builds begun since start.
    pub(crate) fn builds(&self) -> u64 {
        self.builds.load(Ordering::Relaxed)
    }
}

/// What is shared between the state machine and its snapshot builders.
struct Shared {
    dir: SnapshotDir,
    /// The stored snapshot. Its lock serialises "is the stored snapshot
    /// older?" with "store this one".
    current: tokio::sync::Mutex<Option<Current>>,
    /// Makes snapshot ids unique within this process.
    snapshot_seq: AtomicU64,
    /// Counts for the batcher's snapshot triggers.
    pace: Arc<SnapshotPace>,
    /// The index of the last entry applied (or snapshot restored): waited
    /// on by writes forwarded from here and by consistent reads, which
    /// openraft's metrics wait would wake (and clone the metrics for) on
    /// every change of any metric.
    applied: tokio::sync::watch::Sender<u64>,
}

/// Runs blocking file work off the async threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StorageError> + Send + 'static,
) -> Result<T, StorageError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| StorageIOError::write_snapshot(None, AnyError::error(e)))?
}

fn snapshot_err(
    meta: Option<&SnapshotMeta>,
    e: &(dyn std::error::Error + 'static),
) -> StorageError {
    let source = AnyError::error(e.to_string());
    StorageIOError::write_snapshot(meta.map(|m| m.signature()), source).into()
}

impl Shared {
    /// Makes `data` (completely written) the stored snapshot, unless the
    /// stored one is newer; then `data` is discarded. Returns whether it was
    /// stored.
    async fn save_snapshot(
        &self,
        meta: &SnapshotMeta,
        data: NewData,
    ) -> Result<bool, StorageError> {
        let mut current = self.current.lock().await;
        let dir = self.dir.clone();
        if let Some(stored) = current.as_ref()
            && stored.meta.last_log_id > meta.last_log_id
        {
            blocking(move || {
                dir.discard(data);
                Ok(())
            })
            .await?;
            return Ok(false);
        }
        let owned_meta = meta.clone();
        let committed = blocking(move || {
            dir.commit(&owned_meta, data)
                .map_err(|e| snapshot_err(Some(&owned_meta), &e))
        })
        .await?;
        *current = Some(committed);
        Ok(true)
    }

    /// Writes `catalog` as a new data file, fsynced by the commit. Blocking.
    fn write_data(dir: &SnapshotDir, catalog: &Catalog) -> Result<NewData, StorageError> {
        let mut new = dir.create_data().map_err(|e| snapshot_err(None, &e))?;
        let mut out = BufWriter::with_capacity(IO_BUFFER, &mut new.file);
        codec::write_catalog(catalog, &mut out)
            .and_then(|()| out.flush().map_err(codec::CodecError::from))
            .map_err(|e| snapshot_err(None, &e))?;
        drop(out);
        Ok(new)
    }

    /// Opens the data of the stored snapshot for openraft.
    async fn open_current(&self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        // Held while opening: a save replaces the file only under this lock,
        // and the open handle stays valid after that.
        let current = self.current.lock().await;
        let Some(current) = current.as_ref() else {
            return Ok(None);
        };
        let file = tokio::fs::File::open(&current.data)
            .await
            .map_err(|e| StorageIOError::read_snapshot(Some(current.meta.signature()), &e))?;
        Ok(Some(Snapshot {
            meta: current.meta.clone(),
            snapshot: Box::new(file),
        }))
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

// Locks are taken the same way throughout muster: a poisoned lock is
// recovered (`PoisonError::into_inner`). A panic inside apply ends the raft
// core, so nothing applies to a catalog it may have left half-changed; a
// panicked reader changed nothing.
fn write_catalog(catalog: &RwLock<Catalog>) -> Result<RwLockWriteGuard<'_, Catalog>, StorageError> {
    Ok(catalog.write().unwrap_or_else(PoisonError::into_inner))
}

fn read_catalog(catalog: &RwLock<Catalog>) -> Result<RwLockReadGuard<'_, Catalog>, StorageError> {
    Ok(catalog.read().unwrap_or_else(PoisonError::into_inner))
}

impl StateMachine {
    /// Builds the state machine. If `dir` holds a snapshot, it replaces the
    /// catalog's content and `observer.restored` is called. Blocking: it
    /// reads the snapshot.
    pub(crate) fn open(
        dir: SnapshotDir,
        catalog: Arc<RwLock<Catalog>>,
        observer: Arc<dyn ApplyObserver>,
    ) -> Result<StateMachine, StorageError> {
        dir.remove_leftovers()
            .map_err(|e| StorageIOError::read_snapshot(None, &e))?;
        let current = dir
            .current()
            .map_err(|e| StorageIOError::read_snapshot(None, &e))?;
        let shared = Arc::new(Shared {
            dir,
            current: tokio::sync::Mutex::new(None),
            snapshot_seq: AtomicU64::new(0),
            pace: Arc::default(),
            applied: tokio::sync::watch::Sender::new(0),
        });
        let mut sm = StateMachine {
            catalog,
            applied: None,
            membership: StoredMembership::default(),
            observer,
            shared,
        };
        let loaded = match current {
            Some(current) => {
                let restored = read_snapshot_data(&current.meta, &current.data)?;
                Some((current, restored))
            }
            None => None,
        };
        if let Some((current, restored)) = loaded {
            let instances = restored.instance_count() as u64;
            sm.restore(&current.meta, restored)?;
            sm.shared.pace.instances.store(instances, Ordering::Relaxed);
            tracing::info!(snapshot = %current.meta, instances, "catalog loaded from snapshot");
            *sm.shared.current.try_lock().expect("not shared yet") = Some(current);
        }
        Ok(sm)
    }

    /// The index of the last entry applied, as it moves.
    pub(crate) fn applied_watch(&self) -> tokio::sync::watch::Receiver<u64> {
        self.shared.applied.subscribe()
    }

    fn published(&self) {
        let index = self.applied.map_or(0, |l| l.index);
        self.shared.applied.send_if_modified(|i| {
            let moved = *i != index;
            *i = index;
            moved
        });
    }

    /// The counts that pace snapshots by commands, due after at least
    /// `min_commands`.
    pub(crate) fn pace(&self, min_commands: u64) -> Arc<SnapshotPace> {
        let pace = Arc::clone(&self.shared.pace);
        pace.min_commands.store(min_commands, Ordering::Relaxed);
        pace
    }

    /// Replaces the catalog with a snapshot's.
    fn restore(&mut self, meta: &SnapshotMeta, restored: Catalog) -> Result<(), StorageError> {
        *write_catalog(&self.catalog)? = restored;
        self.applied = meta.last_log_id;
        self.membership = meta.last_membership.clone();
        let catalog = read_catalog(&self.catalog)?;
        self.observer.restored(&catalog);
        drop(catalog);
        self.published();
        Ok(())
    }
}

/// Reads a catalog from snapshot data, a frame at a time. Blocking.
fn read_snapshot_data(meta: &SnapshotMeta, path: &Path) -> Result<Catalog, StorageError> {
    let err = |e: &(dyn std::error::Error + 'static)| -> StorageError {
        let what = format!("{}: {e}", path.display());
        StorageIOError::read_snapshot(Some(meta.signature()), AnyError::error(what)).into()
    };
    let file = File::open(path).map_err(|e| err(&e))?;
    codec::read_catalog(&mut BufReader::with_capacity(IO_BUFFER, file)).map_err(|e| err(&e))
}

/// Buffer size for reading and writing snapshot data.
const IO_BUFFER: usize = 1 << 20;

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
        let catalog = std::mem::take(&mut self.catalog);
        let instances = catalog.instance_count() as u64;
        let dir = self.shared.dir.clone();
        // Written to disk a frame at a time, on a blocking thread.
        let data = blocking(move || Shared::write_data(&dir, &catalog)).await?;
        let bytes = data.file.metadata().map(|m| m.len()).unwrap_or_default();
        // A handle of its own, still valid if the file is later replaced.
        let reader = data.file.try_clone().map_err(|e| snapshot_err(None, &e))?;
        self.shared
            .pace
            .instances
            .store(instances, Ordering::Relaxed);
        let meta = SnapshotMeta {
            last_log_id: self.applied,
            last_membership: self.membership.clone(),
            snapshot_id: self.shared.next_snapshot_id(self.applied.as_ref()),
        };
        if self.shared.save_snapshot(&meta, data).await? {
            tracing::info!(snapshot = %meta, bytes, instances, "snapshot built");
        }
        // A duplicated handle shares the writer's offset: back to the start.
        let mut reader = reader;
        reader.rewind().map_err(|e| snapshot_err(Some(&meta), &e))?;
        Ok(Snapshot {
            meta,
            snapshot: Box::new(tokio::fs::File::from_std(reader)),
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
                        Response::default()
                    }
                    EntryPayload::Normal(req) => {
                        // Every command of the batch at the entry's index.
                        catalog.advance(index);
                        self.shared
                            .pace
                            .commands
                            .fetch_add(req.commands.len() as u64, Ordering::Relaxed);
                        Response(
                            req.commands
                                .iter()
                                .map(|cmd| catalog.apply(index, req.now_ms, cmd))
                                .collect(),
                        )
                    }
                    EntryPayload::Membership(m) => {
                        self.membership = StoredMembership::new(Some(entry.log_id), m);
                        catalog.advance(index);
                        Response::default()
                    }
                };
                responses.push(response);
                indexes.push(index);
                self.applied = Some(entry.log_id);
            }
        }
        // Blank and membership entries have no results, so no calls.
        for (index, response) in indexes.into_iter().zip(&responses) {
            for result in &response.0 {
                self.observer.applied(index, result);
            }
        }
        self.published();
        Ok(responses)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        // Copying under the read lock is cheap next to serialising (instances
        // are shared `Arc`s) and keeps the copy consistent with `applied`.
        let catalog = match self.catalog.read() {
            Ok(c) => c.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        };
        // The copy holds every command applied so far.
        let pace = &self.shared.pace;
        pace.commands.store(0, Ordering::Relaxed);
        pace.builds.fetch_add(1, Ordering::Relaxed);
        SnapshotBuilder {
            catalog,
            applied: self.applied,
            membership: self.membership.clone(),
            shared: Arc::clone(&self.shared),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<tokio::fs::File>, StorageError> {
        let dir = self.shared.dir.clone();
        let new = blocking(move || dir.create_data().map_err(|e| snapshot_err(None, &e))).await?;
        // Not a snapshot until installed: an unnamed handle is enough, and
        // the file must not outlive an abandoned transfer.
        let NewData { path, file } = new;
        std::fs::remove_file(&path).map_err(|e| snapshot_err(None, &e))?;
        Ok(Box::new(tokio::fs::File::from_std(file)))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<tokio::fs::File>,
    ) -> Result<(), StorageError> {
        let mut received = snapshot.into_std().await;
        let dir = self.shared.dir.clone();
        let owned_meta = meta.clone();
        // Decoded before it is stored: a snapshot that does not decode is
        // refused. Then copied into a data file of our own.
        let (restored, data) = blocking(move || {
            let err = |e: &(dyn std::error::Error + 'static)| snapshot_err(Some(&owned_meta), e);
            received.rewind().map_err(|e| err(&e))?;
            let restored = codec::read_catalog(&mut BufReader::with_capacity(IO_BUFFER, &received))
                .map_err(|e| err(&e))?;
            received.rewind().map_err(|e| err(&e))?;
            let mut data = dir.create_data().map_err(|e| err(&e))?;
            if let Err(e) = std::io::copy(&mut received, &mut data.file) {
                dir.discard(data);
                return Err(err(&e));
            }
            Ok((restored, data))
        })
        .await?;
        self.shared.save_snapshot(meta, data).await?;
        self.restore(meta, restored)?;
        self.shared.pace.installed.fetch_add(1, Ordering::Relaxed);
        tracing::info!(snapshot = %meta, "snapshot installed");
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        self.shared.open_current().await
    }
}
