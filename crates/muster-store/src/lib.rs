//! Durable storage for muster: an fsynced, group-committed log plus a small
//! metadata key/value space (vote, committed log id, snapshot), kept in one
//! [redb] file.
//!
//! # Model
//!
//! * The log maps a `u64` index to opaque entry bytes. Metadata maps a string
//!   key to opaque bytes.
//! * Every metadata value is mirrored in memory. The log is mirrored as an
//!   index of which entries exist; an entry's bytes stay in memory only until
//!   the commit that writes them, and are read back from redb after that.
//!   So memory holds the metadata and the not-yet-durable writes, never the
//!   whole log. The mirror is loaded once by [`LogStore::open`].
//! * Mutations update the mirror *before* they return, and are queued for one
//!   dedicated writer thread. The writer drains everything queued so far and
//!   commits it in one redb write transaction with
//!   [`redb::Durability::Immediate`] (an fsync), then runs the callbacks of all
//!   operations in that batch. N concurrent appends thus share one fsync
//!   (group commit). Operations reach the disk in the order they were queued.
//! * A *lazy* metadata write ([`LogStore::put_meta_lazy`]) is queued like any
//!   other operation but does not wake the writer: it rides along with the
//!   next commit that something else asks for (or with [`LogStore::close`]),
//!   and costs no fsync of its own. A crash may lose it.
//! * A durability callback runs only after the commit that contains its
//!   operation returned `Ok`. If a commit fails, every callback of the batch
//!   gets the error and the store becomes *poisoned*: all later writes are
//!   refused with [`StoreError::Poisoned`].
//!
//! The writer thread stops when the last [`LogStore`] handle is dropped or
//! [`LogStore::close`] is called; queued operations are committed first.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

use std::collections::{BTreeMap, HashMap};
use std::ops::{Bound, RangeBounds};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError, RwLock, mpsc};
use std::thread::{self, JoinHandle, ThreadId};

use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};

/// The table holding log entries: index -> entry bytes.
const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("log");
/// The table holding metadata: key -> value bytes.
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");

/// redb's page cache. Writes append at the log's end and reads are rare
/// (openraft reads back an entry it just appended from memory, see
/// `muster-raft`), so a small cache loses nothing; redb's default of 1 GiB
/// kept every log page read at start-up resident.
const CACHE_BYTES: usize = 32 * 1024 * 1024;

/// A log entry's bytes, shared between the in-memory mirror and readers.
pub type Bytes = Arc<[u8]>;

/// A callback run once an operation is durable (its commit was fsynced), or
/// with the error that prevented it.
///
/// Callbacks run on the store's writer thread: they must be quick and must not
/// block on further store writes.
pub type OnDurable = Box<dyn FnOnce(Result<(), StoreError>) + Send + 'static>;

/// Everything that can go wrong in the store.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The directory holding the database file could not be created.
    #[error("cannot create directory {path}: {source}")]
    CreateDir {
        /// The directory.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: Arc<std::io::Error>,
    },
    /// Another process holds the database file open (redb locks it): most
    /// likely a second agent started on the same data directory.
    #[error(
        "{path} is in use by another process: is a muster agent already running on this data \
         directory?"
    )]
    InUse {
        /// The database file.
        path: PathBuf,
    },
    /// The database file could not be opened or created.
    #[error("cannot open store {path}: {source}")]
    Open {
        /// The database file.
        path: PathBuf,
        /// The redb error.
        #[source]
        source: Arc<redb::Error>,
    },
    /// A redb operation failed.
    #[error("store {op} failed: {source}")]
    Redb {
        /// What the store was doing.
        op: &'static str,
        /// The redb error.
        #[source]
        source: Arc<redb::Error>,
    },
    /// An earlier commit failed; the store refuses further writes.
    #[error("store is poisoned by an earlier failed commit: {0}")]
    Poisoned(Box<StoreError>),
    /// The store was closed; it accepts no more writes.
    #[error("store is closed")]
    Closed,
    /// The writer thread could not be started or went away.
    #[error("store writer thread failed: {0}")]
    Writer(String),
}

impl StoreError {
    /// Whether the disk (or the file system's quota) is full: the failure
    /// passes once space is freed, unlike corruption.
    pub fn is_storage_full(&self) -> bool {
        fn full(e: &std::io::Error) -> bool {
            // ENOSPC, and EDQUOT (a quota is a full disk to its user).
            e.kind() == std::io::ErrorKind::StorageFull
                || e.kind() == std::io::ErrorKind::QuotaExceeded
        }
        let redb_full = |e: &redb::Error| match e {
            redb::Error::Io(io) => full(io),
            _ => false,
        };
        match self {
            StoreError::CreateDir { source, .. } => full(source),
            StoreError::Open { source, .. } | StoreError::Redb { source, .. } => redb_full(source),
            StoreError::Poisoned(e) => e.is_storage_full(),
            _ => false,
        }
    }

    fn redb(op: &'static str) -> impl FnOnce(redb::Error) -> StoreError {
        move |e| StoreError::Redb {
            op,
            source: Arc::new(e),
        }
    }
}

/// One queued disk operation.
enum Op {
    Append(Vec<(u64, Bytes)>),
    TruncateFrom(u64),
    PurgeTo(u64),
    PutMeta(String, Option<Bytes>),
    /// Nothing to write; only waits for everything queued before it.
    Barrier,
}

/// The queue shared between handles and the writer thread.
struct Queue {
    ops: Vec<(Op, Option<OnDurable>)>,
    /// Whether `ops` holds an operation that is not lazy: only those make
    /// the writer commit.
    urgent: bool,
    /// Set when the store is poisoned, with the commit's error.
    poisoned: Option<StoreError>,
    /// Set when no more writes are accepted; the writer exits once drained.
    closed: bool,
}

/// Where a log entry's bytes are.
#[derive(Clone)]
enum Slot {
    /// Queued and not yet committed, or committed by a batch whose writer
    /// has not yet released them: here and only here are they current.
    Pending(Bytes),
    /// Committed: read them from redb.
    Disk,
}

/// The in-memory mirror of the disk state, ahead of the disk by the
/// operations still queued.
#[derive(Default)]
struct Mirror {
    /// Every log index the store holds, with the bytes of those whose write
    /// is not durable yet.
    log: BTreeMap<u64, Slot>,
    meta: HashMap<String, Bytes>,
}

struct Shared {
    /// The database, for readers of entries that are no longer pending (the
    /// writer thread holds its own handle). `None` once the store is closed,
    /// so that closing releases the file.
    db: Mutex<Option<Arc<Database>>>,
    queue: Mutex<Queue>,
    wake: Condvar,
    mirror: RwLock<Mirror>,
    commits: AtomicU64,
}

impl Shared {
    fn lock_queue(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn read_mirror(&self) -> std::sync::RwLockReadGuard<'_, Mirror> {
        self.mirror.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write_mirror(&self) -> std::sync::RwLockWriteGuard<'_, Mirror> {
        self.mirror.write().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Owned by all clones of a [`LogStore`]; dropping the last one stops the writer.
struct Handle {
    shared: Arc<Shared>,
    writer: Mutex<Option<JoinHandle<()>>>,
    writer_id: ThreadId,
    path: PathBuf,
}

impl Handle {
    /// Marks the queue closed and waits for the writer to drain it and exit.
    fn stop_writer(&self) {
        {
            let mut q = self.shared.lock_queue();
            q.closed = true;
        }
        self.shared.wake.notify_all();
        let handle = self
            .writer
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(handle) = handle {
            // A callback holding the last handle may drop it on the writer
            // thread itself; joining there would deadlock. The writer exits on
            // its own once it sees `closed`.
            if thread::current().id() != self.writer_id && handle.join().is_err() {
                tracing::error!(path = %self.path.display(), "store writer thread panicked");
            }
        }
        self.shared
            .db
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.stop_writer();
    }
}

/// A durable, group-committed log and metadata store.
///
/// Cheap to clone; all clones share one database and one writer thread.
#[derive(Clone)]
pub struct LogStore {
    inner: Arc<Handle>,
}

impl std::fmt::Debug for LogStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogStore")
            .field("path", &self.inner.path)
            .field("commits", &self.commits())
            .finish_non_exhaustive()
    }
}

impl LogStore {
    /// Opens the store in the redb file at `path`, creating the file (and its
    /// parent directory) if needed, loads the mirror and starts the writer
    /// thread.
    pub fn open(path: &Path) -> Result<LogStore, StoreError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| StoreError::CreateDir {
                path: dir.to_path_buf(),
                source: Arc::new(e),
            })?;
        }
        let db = Database::builder()
            .set_cache_size(CACHE_BYTES)
            .create(path)
            .map_err(|e| match e {
                redb::DatabaseError::DatabaseAlreadyOpen => StoreError::InUse {
                    path: path.to_path_buf(),
                },
                e => StoreError::Open {
                    path: path.to_path_buf(),
                    source: Arc::new(e.into()),
                },
            })?;

        // Make sure both tables exist so that read transactions can open them.
        let mut txn = db
            .begin_write()
            .map_err(|e| StoreError::redb("begin write")(e.into()))?;
        txn.set_durability(Durability::Immediate)
            .map_err(|e| StoreError::redb("set durability")(e.into()))?;
        txn.open_table(LOG)
            .map_err(|e| StoreError::redb("open log table")(e.into()))?;
        txn.open_table(META)
            .map_err(|e| StoreError::redb("open meta table")(e.into()))?;
        txn.commit()
            .map_err(|e| StoreError::redb("commit")(e.into()))?;

        let mirror = load_mirror(&db)?;
        tracing::debug!(
            path = %path.display(),
            entries = mirror.log.len(),
            meta = mirror.meta.len(),
            "store opened"
        );

        let db = Arc::new(db);
        let shared = Arc::new(Shared {
            db: Mutex::new(Some(Arc::clone(&db))),
            queue: Mutex::new(Queue {
                ops: Vec::new(),
                urgent: false,
                poisoned: None,
                closed: false,
            }),
            wake: Condvar::new(),
            mirror: RwLock::new(mirror),
            commits: AtomicU64::new(0),
        });
        let writer_shared = Arc::clone(&shared);
        let writer = thread::Builder::new()
            .name("muster-store-writer".into())
            .spawn(move || writer_loop(db, writer_shared))
            .map_err(|e| StoreError::Writer(e.to_string()))?;
        let writer_id = writer.thread().id();
        Ok(LogStore {
            inner: Arc::new(Handle {
                shared,
                writer: Mutex::new(Some(writer)),
                writer_id,
                path: path.to_path_buf(),
            }),
        })
    }

    /// The path of the database file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    fn shared(&self) -> &Shared {
        &self.inner.shared
    }

    /// Queues `op` after `mutate` updated the mirror, both under the queue
    /// lock so that mirror order equals disk order. If the store refuses
    /// writes, the mirror is left untouched and the error is returned
    /// (and handed to `on_durable`, if any). A `lazy` op does not wake the
    /// writer: it is committed with the next op that does.
    fn submit(
        &self,
        op: Op,
        on_durable: Option<OnDurable>,
        lazy: bool,
        mutate: impl FnOnce(&mut Mirror),
    ) -> Result<(), StoreError> {
        let shared = self.shared();
        let mut q = shared.lock_queue();
        let refused = if let Some(e) = &q.poisoned {
            Some(StoreError::Poisoned(Box::new(e.clone())))
        } else if q.closed {
            Some(StoreError::Closed)
        } else {
            None
        };
        if let Some(err) = refused {
            drop(q);
            if let Some(cb) = on_durable {
                cb(Err(err.clone()));
            }
            return Err(err);
        }
        mutate(&mut shared.write_mirror());
        q.ops.push((op, on_durable));
        if lazy {
            return Ok(());
        }
        q.urgent = true;
        drop(q);
        shared.wake.notify_one();
        Ok(())
    }

    /// Appends (or overwrites) log entries. Bytes already shared
    /// ([`Bytes`]) are kept as they are, not copied.
    ///
    /// The entries are readable from the mirror when this returns; they are
    /// written by the writer thread in the next group commit, after which
    /// `on_durable` is called with `Ok(())`. If the store refuses writes,
    /// nothing is changed and `on_durable` is called at once with the error.
    pub fn append<B: Into<Bytes>>(&self, entries: Vec<(u64, B)>, on_durable: OnDurable) {
        let entries: Vec<(u64, Bytes)> = entries
            .into_iter()
            .map(|(i, bytes)| (i, bytes.into()))
            .collect();
        let for_mirror: Vec<(u64, Slot)> = entries
            .iter()
            .map(|(i, b)| (*i, Slot::Pending(Arc::clone(b))))
            .collect();
        let _ = self.submit(Op::Append(entries), Some(on_durable), false, move |m| {
            m.log.extend(for_mirror);
        });
    }

    /// Removes every entry with index `>= index`.
    ///
    /// The mirror changes at once; the disk change is queued. Use
    /// [`LogStore::flush`] or [`LogStore::barrier`] to wait for durability.
    pub fn truncate_from(&self, index: u64) -> Result<(), StoreError> {
        self.submit(Op::TruncateFrom(index), None, false, |m| {
            m.log.split_off(&index);
        })
    }

    /// Removes every entry with index `<= index`.
    ///
    /// The mirror changes at once; the disk change is queued. Use
    /// [`LogStore::flush`] or [`LogStore::barrier`] to wait for durability.
    pub fn purge_to(&self, index: u64) -> Result<(), StoreError> {
        self.submit(Op::PurgeTo(index), None, false, |m| {
            match index.checked_add(1) {
                Some(next) => m.log = m.log.split_off(&next),
                None => m.log.clear(),
            }
        })
    }

    /// Sets (`Some`) or deletes (`None`) the metadata value under `key`.
    ///
    /// [`LogStore::get_meta`] sees the new value at once; `on_durable` is
    /// called after the commit, ordered with all other queued operations.
    pub fn put_meta(&self, key: &str, value: Option<Vec<u8>>, on_durable: OnDurable) {
        let _ = self.queue_meta(key, value, Some(on_durable), false);
    }

    /// Like [`LogStore::put_meta`], but without a commit of its own: the
    /// value is queued in order with everything else, yet the writer is not
    /// woken for it. It reaches the disk with the next commit another
    /// operation asks for (an append, a strict metadata write, a barrier) or
    /// at [`LogStore::close`]. Until then a crash loses it, so use this only
    /// for values whose loss is harmless (a hint that can be re-derived).
    ///
    /// [`LogStore::get_meta`] sees the new value at once. An error (store
    /// poisoned or closed) is returned, and nothing is changed.
    pub fn put_meta_lazy(&self, key: &str, value: Option<Vec<u8>>) -> Result<(), StoreError> {
        self.queue_meta(key, value, None, true)
    }

    fn queue_meta(
        &self,
        key: &str,
        value: Option<Vec<u8>>,
        on_durable: Option<OnDurable>,
        lazy: bool,
    ) -> Result<(), StoreError> {
        let value = value.map(Bytes::from);
        let key_owned = key.to_owned();
        let for_mirror = value.clone();
        self.submit(
            Op::PutMeta(key_owned.clone(), value),
            on_durable,
            lazy,
            move |m| match for_mirror {
                Some(v) => {
                    m.meta.insert(key_owned, v);
                }
                None => {
                    m.meta.remove(&key_owned);
                }
            },
        )
    }

    /// Like [`LogStore::put_meta`], but blocks until the value is durable.
    ///
    /// Blocks the calling thread on an fsync: do not call from an async task
    /// without `spawn_blocking` (or use [`LogStore::put_meta`] with a channel).
    pub fn put_meta_sync(&self, key: &str, value: Option<Vec<u8>>) -> Result<(), StoreError> {
        let (tx, rx) = mpsc::sync_channel(1);
        self.put_meta(
            key,
            value,
            Box::new(move |r| {
                let _ = tx.send(r);
            }),
        );
        rx.recv()
            .map_err(|_| StoreError::Writer("writer dropped a callback".into()))?
    }

    /// Calls `on_durable` once every operation queued before it is durable.
    pub fn barrier(&self, on_durable: OnDurable) {
        let _ = self.submit(Op::Barrier, Some(on_durable), false, |_| {});
    }

    /// Blocks until every operation queued so far is durable.
    ///
    /// Blocks the calling thread on an fsync: do not call from an async task
    /// without `spawn_blocking` (or use [`LogStore::barrier`] with a channel).
    pub fn flush(&self) -> Result<(), StoreError> {
        let (tx, rx) = mpsc::sync_channel(1);
        self.barrier(Box::new(move |r| {
            let _ = tx.send(r);
        }));
        rx.recv()
            .map_err(|_| StoreError::Writer("writer dropped a callback".into()))?
    }

    /// Returns the metadata value under `key`, from memory.
    pub fn get_meta(&self, key: &str) -> Option<Vec<u8>> {
        self.shared()
            .read_mirror()
            .meta
            .get(key)
            .map(|v| v.to_vec())
    }

    /// Returns the log entries whose indexes fall in `range`, in index order.
    ///
    /// Entries not yet durable come from memory, the others from redb, as of
    /// the latest write queued when the call began.
    pub fn range(&self, range: impl RangeBounds<u64>) -> Result<Vec<(u64, Bytes)>, StoreError> {
        let bounds = (
            clone_bound(range.start_bound()),
            clone_bound(range.end_bound()),
        );
        if is_empty_range(&bounds) {
            return Ok(Vec::new());
        }
        let (slots, txn) = {
            let mirror = self.shared().read_mirror();
            let slots: Vec<(u64, Slot)> = mirror
                .log
                .range(bounds)
                .map(|(i, s)| (*i, s.clone()))
                .collect();
            // Begun under the mirror lock: a `Disk` slot is only changed
            // (made pending again, or removed) in the mirror before its new
            // write is queued, so the disk still holds what the slot names.
            let txn = if slots.iter().any(|(_, s)| matches!(s, Slot::Disk)) {
                Some(self.begin_read()?)
            } else {
                None
            };
            (slots, txn)
        };
        let Some(txn) = txn else {
            return Ok(slots
                .into_iter()
                .map(|(i, s)| match s {
                    Slot::Pending(b) => (i, b),
                    Slot::Disk => unreachable!("no disk slot without a read transaction"),
                })
                .collect());
        };
        let log = txn
            .open_table(LOG)
            .map_err(|e| StoreError::redb("open log table")(e.into()))?;
        slots
            .into_iter()
            .map(|(i, s)| match s {
                Slot::Pending(b) => Ok((i, b)),
                Slot::Disk => read_entry(&log, i).map(|b| (i, b)),
            })
            .collect()
    }

    /// The indexes of the entries in `range`, in order, from memory.
    pub fn indexes(&self, range: impl RangeBounds<u64>) -> Vec<u64> {
        let bounds = (
            clone_bound(range.start_bound()),
            clone_bound(range.end_bound()),
        );
        if is_empty_range(&bounds) {
            return Vec::new();
        }
        self.shared()
            .read_mirror()
            .log
            .range(bounds)
            .map(|(i, _)| *i)
            .collect()
    }

    fn begin_read(&self) -> Result<redb::ReadTransaction, StoreError> {
        let db = self
            .shared()
            .db
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
            .ok_or(StoreError::Closed)?;
        db.begin_read()
            .map_err(|e| StoreError::redb("begin read")(e.into()))
    }

    /// Returns the entry at `index`, if present.
    pub fn get(&self, index: u64) -> Result<Option<Bytes>, StoreError> {
        Ok(self.range(index..=index)?.pop().map(|(_, b)| b))
    }

    /// Returns the last (highest-index) entry, if any.
    pub fn last(&self) -> Result<Option<(u64, Bytes)>, StoreError> {
        match self.last_index() {
            Some(i) => self.range(i..=i).map(|mut v| v.pop()),
            None => Ok(None),
        }
    }

    /// Returns the index of the first (lowest-index) entry, if any.
    pub fn first_index(&self) -> Option<u64> {
        self.shared()
            .read_mirror()
            .log
            .first_key_value()
            .map(|(i, _)| *i)
    }

    /// Returns the index of the last entry, if any.
    pub fn last_index(&self) -> Option<u64> {
        self.shared()
            .read_mirror()
            .log
            .last_key_value()
            .map(|(i, _)| *i)
    }

    /// The number of entries whose bytes are held in memory because their
    /// write is not durable yet.
    pub fn pending_entries(&self) -> usize {
        self.shared()
            .read_mirror()
            .log
            .values()
            .filter(|s| matches!(s, Slot::Pending(_)))
            .count()
    }

    /// The number of entries in the log.
    pub fn len(&self) -> usize {
        self.shared().read_mirror().log.len()
    }

    /// Whether the log holds no entries.
    pub fn is_empty(&self) -> bool {
        self.shared().read_mirror().log.is_empty()
    }

    /// The number of write transactions committed since open.
    ///
    /// With group commit this grows slower than the number of operations.
    pub fn commits(&self) -> u64 {
        self.shared().commits.load(Ordering::Relaxed)
    }

    /// Whether an earlier commit failed, so that writes are refused.
    pub fn is_poisoned(&self) -> bool {
        self.shared().lock_queue().poisoned.is_some()
    }

    /// The error of the commit that poisoned the store, if one did.
    pub fn poisoned(&self) -> Option<StoreError> {
        self.shared().lock_queue().poisoned.clone()
    }

    /// Stops accepting writes, commits everything queued and waits for the
    /// writer thread to exit (closing the database file).
    ///
    /// Affects every clone. Metadata and log indexes can still be read from
    /// memory; reading a durable entry's bytes fails with
    /// [`StoreError::Closed`]. Called implicitly when the last handle is
    /// dropped.
    pub fn close(&self) {
        self.inner.stop_writer();
    }
}

fn clone_bound(b: Bound<&u64>) -> Bound<u64> {
    match b {
        Bound::Included(i) => Bound::Included(*i),
        Bound::Excluded(i) => Bound::Excluded(*i),
        Bound::Unbounded => Bound::Unbounded,
    }
}

/// `BTreeMap::range` panics on inverted or empty-excluded bounds; treat them as empty.
fn is_empty_range(bounds: &(Bound<u64>, Bound<u64>)) -> bool {
    match *bounds {
        (Bound::Included(s), Bound::Included(e)) => s > e,
        (Bound::Included(s), Bound::Excluded(e)) => s >= e,
        (Bound::Excluded(s), Bound::Included(e)) => s >= e,
        (Bound::Excluded(s), Bound::Excluded(e)) => s >= e || s + 1 >= e,
        (Bound::Excluded(s), Bound::Unbounded) => s == u64::MAX,
        (Bound::Unbounded, Bound::Excluded(0)) => true,
        _ => false,
    }
}

fn read_entry(log: &redb::ReadOnlyTable<u64, &[u8]>, index: u64) -> Result<Bytes, StoreError> {
    match log
        .get(index)
        .map_err(|e| StoreError::redb("read log")(e.into()))?
    {
        Some(v) => Ok(Bytes::from(v.value())),
        // The mirror says the entry is durable: the file lost it.
        None => Err(StoreError::Redb {
            op: "read log",
            source: Arc::new(redb::Error::Corrupted(format!(
                "log entry {index} is missing from the file"
            ))),
        }),
    }
}

fn load_mirror(db: &Database) -> Result<Mirror, StoreError> {
    let txn = db
        .begin_read()
        .map_err(|e| StoreError::redb("begin read")(e.into()))?;
    let mut mirror = Mirror::default();
    let log = txn
        .open_table(LOG)
        .map_err(|e| StoreError::redb("open log table")(e.into()))?;
    for row in log
        .iter()
        .map_err(|e| StoreError::redb("read log")(e.into()))?
    {
        let (k, _) = row.map_err(|e| StoreError::redb("read log")(e.into()))?;
        mirror.log.insert(k.value(), Slot::Disk);
    }
    let meta = txn
        .open_table(META)
        .map_err(|e| StoreError::redb("open meta table")(e.into()))?;
    for row in meta
        .iter()
        .map_err(|e| StoreError::redb("read meta")(e.into()))?
    {
        let (k, v) = row.map_err(|e| StoreError::redb("read meta")(e.into()))?;
        mirror
            .meta
            .insert(k.value().to_owned(), Bytes::from(v.value()));
    }
    Ok(mirror)
}

/// Writes one batch in one durable transaction.
fn commit_batch(db: &Database, ops: &[(Op, Option<OnDurable>)]) -> Result<(), StoreError> {
    let mut txn = db
        .begin_write()
        .map_err(|e| StoreError::redb("begin write")(e.into()))?;
    txn.set_durability(Durability::Immediate)
        .map_err(|e| StoreError::redb("set durability")(e.into()))?;
    {
        let mut log = txn
            .open_table(LOG)
            .map_err(|e| StoreError::redb("open log table")(e.into()))?;
        let mut meta = txn
            .open_table(META)
            .map_err(|e| StoreError::redb("open meta table")(e.into()))?;
        for (op, _) in ops {
            match op {
                Op::Append(entries) => {
                    for (i, bytes) in entries {
                        log.insert(*i, &bytes[..])
                            .map_err(|e| StoreError::redb("append")(e.into()))?;
                    }
                }
                Op::TruncateFrom(index) => {
                    log.retain_in(*index.., |_, _| false)
                        .map_err(|e| StoreError::redb("truncate")(e.into()))?;
                }
                Op::PurgeTo(index) => {
                    log.retain_in(..=*index, |_, _| false)
                        .map_err(|e| StoreError::redb("purge")(e.into()))?;
                }
                Op::PutMeta(key, Some(value)) => {
                    meta.insert(key.as_str(), &value[..])
                        .map_err(|e| StoreError::redb("put meta")(e.into()))?;
                }
                Op::PutMeta(key, None) => {
                    meta.remove(key.as_str())
                        .map_err(|e| StoreError::redb("delete meta")(e.into()))?;
                }
                Op::Barrier => {}
            }
        }
    }
    txn.commit()
        .map_err(|e| StoreError::redb("commit")(e.into()))
}

/// After `batch` was committed: its appended entries are on disk now, so
/// their slots stop holding the bytes, unless a later write of the same
/// index (not durable yet) replaced them.
fn release_committed(shared: &Shared, batch: &[(Op, Option<OnDurable>)]) {
    let mut mirror = shared.write_mirror();
    for (op, _) in batch {
        if let Op::Append(entries) = op {
            for (i, bytes) in entries {
                if let Some(slot) = mirror.log.get_mut(i)
                    && matches!(slot, Slot::Pending(b) if Arc::ptr_eq(b, bytes))
                {
                    *slot = Slot::Disk;
                }
            }
        }
    }
}

fn writer_loop(db: Arc<Database>, shared: Arc<Shared>) {
    loop {
        let (batch, poisoned) = {
            let mut q = shared.lock_queue();
            // Lazy ops alone do not make a commit; at close they are
            // committed with the rest.
            while !q.urgent && !q.closed {
                q = shared.wake.wait(q).unwrap_or_else(PoisonError::into_inner);
            }
            if q.ops.is_empty() {
                // Closed and drained.
                break;
            }
            q.urgent = false;
            (std::mem::take(&mut q.ops), q.poisoned.clone())
        };

        let result = match poisoned {
            // Ops queued before the poisoning was noticed: refuse them too.
            Some(e) => Err(StoreError::Poisoned(Box::new(e))),
            None => {
                let r = commit_batch(&db, &batch);
                match &r {
                    Ok(()) => {
                        shared.commits.fetch_add(1, Ordering::Relaxed);
                        release_committed(&shared, &batch);
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "store commit failed; store is now poisoned");
                        shared.lock_queue().poisoned = Some(e.clone());
                    }
                }
                r
            }
        };

        for (_, cb) in batch {
            if let Some(cb) = cb {
                // A panicking callback must not kill the writer (later ops
                // would never complete).
                let r = result.clone();
                if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| cb(r))).is_err() {
                    tracing::error!("a store durability callback panicked");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
