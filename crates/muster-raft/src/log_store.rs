//! openraft's [`RaftLogStorage`] over [`muster_store::LogStore`].

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::io;
use std::ops::RangeBounds;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use muster_store::{LogStore, OnDurable, StoreError};
use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{AnyError, OptionalSend, RaftLogReader, StorageIOError, Vote};

use crate::codec;
use crate::types::{Entry, LogId, StorageError, TypeConfig};

/// Metadata key of the vote.
pub(crate) const KEY_VOTE: &str = "raft/vote";
/// Metadata key of the last committed log id.
pub(crate) const KEY_COMMITTED: &str = "raft/committed";
/// Metadata key of the last purged log id.
pub(crate) const KEY_LAST_PURGED: &str = "raft/last_purged";
/// Metadata key under which older versions kept the current snapshot
/// (framed meta + data); read once if there is no snapshot file, and
/// deleted when the next snapshot is saved.
pub(crate) const KEY_SNAPSHOT: &str = "raft/snapshot";

/// Runs `submit` with a durability callback and waits for it.
pub(crate) async fn durable(submit: impl FnOnce(OnDurable)) -> Result<(), StoreError> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    submit(Box::new(move |r| {
        let _ = tx.send(r);
    }));
    rx.await
        .map_err(|_| StoreError::Writer("durability callback dropped".into()))?
}

/// A durability callback for a write nobody waits for: a failure is
/// logged, saying what was being saved.
pub(crate) fn log_failure(what: &'static str) -> muster_store::OnDurable {
    Box::new(move |r| {
        if let Err(e) = r {
            tracing::error!(error = %e, "saving {what} failed");
        }
    })
}

/// Reads and decodes a metadata value.
pub(crate) fn read_meta<T: serde::de::DeserializeOwned>(
    store: &LogStore,
    key: &str,
) -> Result<Option<T>, codec::CodecError> {
    store
        .get_meta(key)
        .map(|bytes| codec::decode_value(&bytes))
        .transpose()
}

/// At most this many appended entries are kept decoded for their reads.
const MAX_RECENT: usize = 64;
/// And at most this many commands in them (a full batch is 4,096).
const MAX_RECENT_COMMANDS: usize = 16 * 1024;

/// The stored bytes of recent entries, by log id: what [`RaftLog::append`]
/// encoded on a leader (so append-entries sends them as they are, see
/// `cluster::wire::encode_append`), and what a follower received (so its
/// `append` stores them without encoding the entry again). A log id names
/// one entry only, so bytes found under it are that entry's.
#[derive(Clone, Default)]
pub(crate) struct EncodedEntries(Arc<Mutex<BTreeMap<u64, (LogId, muster_store::Bytes)>>>);

impl EncodedEntries {
    fn lock(&self) -> MutexGuard<'_, BTreeMap<u64, (LogId, muster_store::Bytes)>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Keeps `bytes` as the encoding of the entry `log_id`.
    pub(crate) fn put(&self, log_id: LogId, bytes: muster_store::Bytes) {
        let mut m = self.lock();
        m.insert(log_id.index, (log_id, bytes));
        while m.len() > MAX_RECENT {
            m.pop_first();
        }
    }

    /// The encoding of the entry `log_id`, if kept.
    pub(crate) fn get(&self, log_id: &LogId) -> Option<muster_store::Bytes> {
        match self.lock().get(&log_id.index) {
            Some((id, bytes)) if id == log_id => Some(Arc::clone(bytes)),
            _ => None,
        }
    }
}

/// The entries appended last, decoded, as [`RaftLog`] keeps them.
#[derive(Default)]
struct Recent {
    entries: BTreeMap<u64, Entry>,
    /// Commands in `entries`.
    commands: usize,
}

fn commands_in(entry: &Entry) -> usize {
    match &entry.payload {
        openraft::EntryPayload::Normal(req) => req.commands.len(),
        _ => 0,
    }
}

impl Recent {
    fn insert(&mut self, entry: Entry) {
        self.commands += commands_in(&entry);
        if let Some(old) = self.entries.insert(entry.log_id.index, entry) {
            self.commands -= commands_in(&old);
        }
        while self.entries.len() > MAX_RECENT
            || (self.commands > MAX_RECENT_COMMANDS && self.entries.len() > 1)
        {
            if let Some((_, old)) = self.entries.pop_first() {
                self.commands -= commands_in(&old);
            }
        }
    }

    /// Drops the entries from `index` on.
    fn truncate(&mut self, index: u64) {
        for (_, old) in self.entries.split_off(&index) {
            self.commands -= commands_in(&old);
        }
    }

    /// Drops the entries up to `index`.
    fn purge(&mut self, index: u64) {
        let kept = self.entries.split_off(&(index + 1));
        for old in self.entries.values() {
            self.commands -= commands_in(old);
        }
        self.entries = kept;
    }
}

/// The raft log and vote, kept in a [`LogStore`]. Also the log reader.
#[derive(Clone)]
pub(crate) struct RaftLog {
    store: LogStore,
    /// Highest committed index saved, for [`crate::NodeInfo`].
    committed: Arc<AtomicU64>,
    /// The entries appended last, as handed to `append`.
    ///
    /// openraft reads every entry it appended back from the log moments
    /// later: to apply it, and on a leader once more per follower it sends
    /// the entry to. Keeping the entry spares decoding what was just
    /// encoded (a batch of up to thousands of commands); a read clones it,
    /// which shares the commands ([`crate::types::Request`]). Older entries
    /// are decoded from the stored bytes, which are the same.
    recent: Arc<Mutex<Recent>>,
    /// The stored bytes of recent entries (shared with cluster RPC).
    encoded: EncodedEntries,
}

impl RaftLog {
    /// Wraps `store`; `committed` is updated on every saved commit.
    pub(crate) fn new(store: LogStore, committed: Arc<AtomicU64>, encoded: EncodedEntries) -> Self {
        if let Ok(Some(c)) = read_meta::<LogId>(&store, KEY_COMMITTED) {
            committed.fetch_max(c.index, Ordering::Relaxed);
        }
        RaftLog {
            store,
            committed,
            recent: Arc::default(),
            encoded,
        }
    }

    fn recent(&self) -> MutexGuard<'_, Recent> {
        self.recent.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn last_purged(&self) -> Result<Option<LogId>, StorageError> {
        read_meta(&self.store, KEY_LAST_PURGED).map_err(|e| StorageIOError::read_logs(&e).into())
    }
}

fn store_err(e: StoreError) -> AnyError {
    AnyError::new(&e)
}

impl RaftLogReader<TypeConfig> for RaftLog {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        // Usually every entry asked for was just appended here: clone them
        // without reading their bytes back from the store.
        {
            let indexes = self.store.indexes(range.clone());
            let recent = self.recent();
            if indexes.iter().all(|i| recent.entries.contains_key(i)) {
                return Ok(indexes
                    .iter()
                    .filter_map(|i| recent.entries.get(i).cloned())
                    .collect());
            }
        }
        let stored = self
            .store
            .range(range)
            .map_err(|e| StorageIOError::read_logs(store_err(e)))?;
        let recent = self.recent();
        stored
            .into_iter()
            .map(|(i, bytes)| match recent.entries.get(&i) {
                Some(entry) => Ok(entry.clone()),
                None => codec::decode_entry(&bytes)
                    .map_err(|e| StorageIOError::read_log_at_index(i, &e).into()),
            })
            .collect()
    }
}

impl RaftLogStorage<TypeConfig> for RaftLog {
    type LogReader = RaftLog;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let last_purged_log_id = self.last_purged()?;
        let last = self
            .store
            .last()
            .map_err(|e| StorageIOError::read_logs(store_err(e)))?;
        let last_log_id = match last {
            Some((i, bytes)) => Some(
                codec::decode_entry_log_id(&bytes)
                    .map_err(|e| StorageIOError::read_log_at_index(i, &e))?,
            ),
            None => last_purged_log_id,
        };
        Ok(LogState {
            last_purged_log_id,
            last_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<u64>) -> Result<(), StorageError> {
        let bytes = codec::encode_value(vote).map_err(|e| StorageIOError::write_vote(&e))?;
        durable(|cb| self.store.put_meta(KEY_VOTE, Some(bytes), cb))
            .await
            .map_err(|e| StorageIOError::write_vote(store_err(e)).into())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<u64>>, StorageError> {
        read_meta(&self.store, KEY_VOTE).map_err(|e| StorageIOError::read_vote(&e).into())
    }

    /// Saved lazily: the value is queued without a commit (and fsync) of its
    /// own and reaches the disk with the next append (or at close). openraft
    /// calls this after every commit, so a strict write would double the
    /// fsyncs per batch of proposals.
    ///
    /// Losing the latest value in a crash is safe:
    /// * it is only ever behind, never ahead: it is queued after the appends
    ///   of the entries it names, which were flushed before openraft could
    ///   commit them, so a stored committed id never points past durable
    ///   logs;
    /// * the committed index is not needed for correctness. For a single
    ///   voter, openraft re-derives it at start-up from its own durable log
    ///   (the quorum of one has flushed its last log id) and re-applies
    ///   everything up to it; in a cluster it is re-learnt from the leader.
    ///   A stale value only means re-applying more entries on restart
    ///   (`tests/node.rs` checks recovery with the marker deleted).
    ///
    /// Vote writes and appends stay strict (fsynced before they are reported).
    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        let value = committed
            .as_ref()
            .map(codec::encode_value)
            .transpose()
            .map_err(|e| StorageIOError::write(&e))?;
        if let Some(c) = &committed {
            self.committed.fetch_max(c.index, Ordering::Relaxed);
        }
        self.store
            .put_meta_lazy(KEY_COMMITTED, value)
            .map_err(|e| StorageIOError::write(store_err(e)).into())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        read_meta(&self.store, KEY_COMMITTED).map_err(|e| StorageIOError::read(&e).into())
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut batch = Vec::new();
        let mut decoded = Vec::new();
        for entry in entries {
            // A follower usually received the bytes with the entry. The
            // same shared bytes go to the store, kept once in memory.
            let bytes = match self.encoded.get(&entry.log_id) {
                Some(bytes) => bytes,
                None => {
                    let bytes: muster_store::Bytes = codec::encode_entry(&entry)
                        .map_err(|e| StorageIOError::write_log_entry(entry.log_id, &e))?
                        .into();
                    self.encoded.put(entry.log_id, Arc::clone(&bytes));
                    bytes
                }
            };
            batch.push((entry.log_id.index, bytes));
            decoded.push(entry);
        }
        {
            // Before the store append, so a reader that sees the new bytes
            // never takes an older entry of the same index from here.
            let mut recent = self.recent();
            for entry in decoded {
                recent.insert(entry);
            }
        }
        // Readable when `append` returns; `callback` runs after the fsync.
        self.store.append(
            batch,
            Box::new(move |r| callback.log_io_completed(r.map_err(io::Error::other))),
        );
        Ok(())
    }

    /// Not waited for: later appends are queued behind the truncation, so
    /// they are never reported durable before it is.
    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        self.recent().truncate(log_id.index);
        self.store
            .truncate_from(log_id.index)
            .map_err(|e| StorageIOError::write_logs(store_err(e)).into())
    }

    /// The last purged id is queued before the deletion, so after a crash the
    /// store holds either the old state or the new one.
    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let value = codec::encode_value(&log_id).map_err(|e| StorageIOError::write_logs(&e))?;
        self.recent().purge(log_id.index);
        self.store.put_meta(
            KEY_LAST_PURGED,
            Some(value),
            log_failure("the last purged log id"),
        );
        self.store
            .purge_to(log_id.index)
            .map_err(|e| StorageIOError::write_logs(store_err(e)).into())
    }
}
