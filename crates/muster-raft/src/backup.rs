//! Backups: the catalog streamed out as a backup file
//! ([`muster_types::backup`]: a header, the snapshot data of
//! [`crate::codec`], a checksum), and a backup file restored through the
//! log in chunks.
//!
//! A save reads through the leader's read-index first, then copies the
//! catalog under its read lock (instances are shared, so the copy is
//! cheap) and encodes the copy a frame at a time on a blocking thread into
//! a bounded channel: the reader's pace drives the encoding, and neither
//! side holds the whole encoding.
//!
//! A restore spools the upload to an unnamed file in the data directory,
//! checking the backup's checksum as it streams by; a file that fails it is
//! refused before anything is proposed. Then it reads the file a frame at a
//! time and proposes `RestoreBegin`, `RestoreStage` chunks of at most
//! [`CHUNK_ITEMS`] leases or instances and about [`CHUNK_BYTES`], and `RestoreCommit`, which swaps
//! the staged state in at once on every node. Any failure on the way
//! proposes `RestoreAbort`; a restore whose driver died is discarded by
//! the next one, or after [`muster_catalog::RESTORE_STAGE_TIMEOUT_MS`].

use std::io::{self, BufReader, Read, Seek, Write};
use std::sync::{Arc, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use muster_catalog::{ApplyError, Command, Done, Instance, Lease};
use muster_types::backup::{self, BackupHeader, Verifier};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

use crate::codec::{self, CodecError};
use crate::{Node, ProposeError};

/// Leases or instances per `RestoreStage` entry at most: with instances of
/// a few hundred bytes, entries of a few hundred KiB.
pub const CHUNK_ITEMS: usize = 1000;

/// A `RestoreStage` entry stops growing once its leases or instances are
/// estimated at this many encoded bytes (one larger item still goes alone):
/// instances with many tags, metadata and checks, or leases shared by many
/// instances, would otherwise make entries of tens of MiB.
pub const CHUNK_BYTES: usize = 512 * 1024;

/// An upper-bound-ish estimate of an instance's encoded size.
fn instance_bytes(i: &Instance) -> usize {
    const FRAME: usize = 256;
    const PER_CHECK: usize = 512;
    FRAME
        + crate::batcher::instance_fields_bytes(
            &i.id,
            &i.address,
            i.tags.iter().map(|t| &**t),
            i.meta.iter().map(|(k, v)| (&**k, &**v)),
            i.version.as_deref(),
            i.zone.as_deref(),
        )
        + i.maintenance.as_ref().map_or(0, |m| m.len())
        + i.checks
            .iter()
            .map(|c| PER_CHECK + c.output.len())
            .sum::<usize>()
}

/// An estimate of a lease's encoded size: its members are most of it.
fn lease_bytes(l: &Lease) -> usize {
    64 + l.instances.len() * 96
}

/// Splits `items` into runs of at most [`CHUNK_ITEMS`] items and, unless a
/// single item is larger, [`CHUNK_BYTES`] estimated bytes.
struct Chunker<T> {
    pending: Vec<T>,
    bytes: usize,
}

impl<T> Chunker<T> {
    fn new() -> Self {
        Chunker {
            pending: Vec::new(),
            bytes: 0,
        }
    }

    /// Adds `item` of `size` bytes; the run it completes, if any.
    fn push(&mut self, item: T, size: usize) -> Option<Vec<T>> {
        let full = !self.pending.is_empty()
            && (self.pending.len() >= CHUNK_ITEMS || self.bytes + size > CHUNK_BYTES);
        let out = full.then(|| self.take());
        self.bytes += size;
        self.pending.push(item);
        out
    }

    /// What is left.
    fn take(&mut self) -> Vec<T> {
        self.bytes = 0;
        std::mem::take(&mut self.pending)
    }
}

/// Bytes per piece of a backup stream.
const PIECE: usize = 64 * 1024;

/// A backup being written: its header, then its bytes in pieces.
pub struct BackupStream {
    header: BackupHeader,
    rx: mpsc::Receiver<io::Result<Vec<u8>>>,
}

impl std::fmt::Debug for BackupStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackupStream")
            .field("header", &self.header)
            .finish_non_exhaustive()
    }
}

impl BackupStream {
    /// What the backup holds.
    pub fn header(&self) -> &BackupHeader {
        &self.header
    }

    /// The next bytes of the file; `None` after the last.
    pub async fn next_piece(&mut self) -> Option<io::Result<Vec<u8>>> {
        self.rx.recv().await
    }
}

/// Sends what is written in pieces, keeping the running checksum.
struct PieceWriter {
    tx: mpsc::Sender<io::Result<Vec<u8>>>,
    buf: Vec<u8>,
    crc: u32,
}

impl PieceWriter {
    fn send(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let piece = std::mem::replace(&mut self.buf, Vec::with_capacity(PIECE));
        self.tx
            .blocking_send(Ok(piece))
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the reader went away"))
    }
}

impl Write for PieceWriter {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.crc = crc32c::crc32c_append(self.crc, bytes);
        self.buf.extend_from_slice(bytes);
        if self.buf.len() >= PIECE {
            self.send()?;
        }
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// What a restore did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestoreReport {
    /// The backup's header.
    pub header: BackupHeader,
    /// The log index at which the restored catalog took effect.
    pub index: u64,
    /// Instances restored.
    pub instances: u64,
    /// Leases restored.
    pub leases: u64,
}

/// Why a restore failed. Nothing was changed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RestoreError {
    /// The file is not a whole, unchanged backup.
    #[error("{0}")]
    Invalid(String),
    /// Another restore replaced this one while it was staged.
    #[error("{0}")]
    Conflict(String),
    /// Reading the upload or the spool failed.
    #[error("{0}")]
    Io(String),
    /// A proposal failed.
    #[error(transparent)]
    Propose(#[from] ProposeError),
}

fn millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or_default()
}

/// A chunk read from the spooled backup.
enum Chunk {
    Leases(Vec<Lease>),
    Instances(Vec<Arc<Instance>>),
}

impl Node {
    /// A consistent backup of the catalog: every write acknowledged before
    /// the call is in it (read-index through the leader), and it reflects
    /// exactly the index in its header.
    pub async fn backup(&self) -> Result<BackupStream, ProposeError> {
        self.read_barrier().await?;
        let catalog = self
            .catalog()
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let header = BackupHeader {
            index: catalog.applied_index(),
            term: self.current_term(),
            created_at_ms: millis(),
            node_id: self.node_id(),
            services: catalog.service_entries().len() as u64,
            instances: catalog.instance_count() as u64,
            leases: catalog.lease_count() as u64,
        };
        let (tx, rx) = mpsc::channel(4);
        let head = backup::encode_header(&header);
        tokio::task::spawn_blocking(move || {
            let mut w = PieceWriter {
                tx,
                buf: Vec::with_capacity(PIECE),
                crc: 0,
            };
            let written = w
                .write_all(&head)
                .and_then(|()| {
                    codec::write_catalog(&catalog, &mut w)
                        .map_err(|e| io::Error::other(e.to_string()))
                })
                .and_then(|()| {
                    let trailer = backup::encode_trailer(w.crc);
                    w.buf.extend_from_slice(&trailer);
                    w.send()
                });
            if let Err(e) = written
                && e.kind() != io::ErrorKind::BrokenPipe
            {
                tracing::warn!(error = %e, "backup failed");
                let _ = w.tx.blocking_send(Err(e));
            }
        });
        Ok(BackupStream { header, rx })
    }

    /// Replaces the catalog of the whole cluster with a backup read from
    /// `input`, through the log (see the module documentation). The
    /// backup's checksum is checked before anything is proposed.
    pub async fn restore(
        &self,
        mut input: impl AsyncRead + Unpin + Send,
    ) -> Result<RestoreReport, RestoreError> {
        let io_err = |e: io::Error| RestoreError::Io(e.to_string());
        // An unnamed spool: it goes with its handle, even after a crash.
        let path =
            self.data_dir()
                .join(format!("restore-{}-{}.spool", millis(), std::process::id()));
        let spool = std::fs::File::options()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(io_err)?;
        std::fs::remove_file(&path).map_err(io_err)?;
        let mut spool = tokio::fs::File::from_std(spool);
        let mut verifier = Verifier::new();
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            let n = input.read(&mut buf).await.map_err(io_err)?;
            if n == 0 {
                break;
            }
            verifier.update(&buf[..n]);
            spool.write_all(&buf[..n]).await.map_err(io_err)?;
        }
        verifier
            .finish()
            .map_err(|e| RestoreError::Invalid(e.to_string()))?;
        spool.flush().await.map_err(io_err)?;
        let mut spool = spool.into_std().await;
        spool.rewind().map_err(io_err)?;
        let mut reader = BufReader::with_capacity(1 << 20, spool);
        let (header, header_len) =
            backup::read_header(&mut reader).map_err(|e| RestoreError::Invalid(e.to_string()))?;
        // The snapshot data lies between the header and the trailer.
        let data_len = verifier
            .len()
            .checked_sub((header_len + backup::TRAILER_LEN) as u64)
            .ok_or_else(|| RestoreError::Invalid("the file is shorter than its header".into()))?;
        let mut reader = reader.take(data_len);

        // Frames are read and checked on a blocking thread, a few chunks
        // ahead of the proposals.
        let (tx, mut rx) = mpsc::channel::<Result<Chunk, String>>(2);
        tokio::task::spawn_blocking(move || {
            let send = |chunk: Chunk| {
                tx.blocking_send(Ok(chunk))
                    .map_err(|_| CodecError::from(io::Error::other("restore stopped")))
            };
            let mut pending = Chunker::new();
            let read = codec::read_catalog_parts(
                &mut reader,
                |head| {
                    let mut leases = Chunker::new();
                    for l in head.leases.into_owned().into_values() {
                        let size = lease_bytes(&l);
                        if let Some(run) = leases.push(l, size) {
                            send(Chunk::Leases(run))?;
                        }
                    }
                    let rest = leases.take();
                    if !rest.is_empty() {
                        send(Chunk::Leases(rest))?;
                    }
                    Ok(())
                },
                |(_, service)| {
                    for inst in service.instances.values() {
                        if let Some(run) = pending.push(inst.clone(), instance_bytes(inst)) {
                            send(Chunk::Instances(run))?;
                        }
                    }
                    Ok(())
                },
            );
            let rest = pending.take();
            match read {
                Ok(()) if !rest.is_empty() => {
                    let _ = send(Chunk::Instances(rest));
                }
                Ok(()) => {}
                Err(e) => {
                    let _ = tx.blocking_send(Err(e.to_string()));
                }
            }
        });

        let id = millis() ^ (self.node_id() << 48) ^ u64::from(std::process::id());
        self.restore_step(Command::RestoreBegin { id }).await?;
        let staged = async {
            let (mut instances, mut leases) = (0u64, 0u64);
            while let Some(chunk) = rx.recv().await {
                let cmd = match chunk.map_err(RestoreError::Invalid)? {
                    Chunk::Leases(l) => {
                        leases += l.len() as u64;
                        Command::RestoreStage {
                            id,
                            leases: l,
                            instances: Vec::new(),
                        }
                    }
                    Chunk::Instances(i) => {
                        instances += i.len() as u64;
                        Command::RestoreStage {
                            id,
                            leases: Vec::new(),
                            instances: i,
                        }
                    }
                };
                self.restore_step(cmd).await?;
            }
            Ok::<_, RestoreError>((instances, leases))
        }
        .await;
        let (instances, leases) = match staged {
            Ok(counts) => counts,
            Err(e) => {
                if let Err(abort) = self.restore_step(Command::RestoreAbort { id }).await {
                    tracing::warn!(error = %abort, "could not abort a failed restore; the next restore or a timeout discards it");
                }
                return Err(e);
            }
        };
        let index = self.restore_step(Command::RestoreCommit { id }).await?;
        tracing::info!(
            index,
            instances,
            leases,
            backup_index = header.index,
            "backup restored"
        );
        Ok(RestoreReport {
            header,
            index,
            instances,
            leases,
        })
    }

    /// Proposes one step of a restore; its index once applied.
    async fn restore_step(&self, cmd: Command) -> Result<u64, RestoreError> {
        let applied = self.propose(cmd).await?;
        match applied.result {
            Ok(out) => {
                debug_assert!(matches!(out.done, Done::Restore(_)));
                Ok(applied.index)
            }
            Err(ApplyError::NoRestore(id)) => Err(RestoreError::Conflict(format!(
                "restore {id} was replaced by another restore started meanwhile (or abandoned)"
            ))),
            Err(e) => Err(RestoreError::Invalid(e.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn runs(sizes: &[usize]) -> Vec<usize> {
        let mut c = Chunker::new();
        let mut out = Vec::new();
        for (i, &size) in sizes.iter().enumerate() {
            if let Some(run) = c.push(i, size) {
                out.push(run.len());
            }
        }
        let rest = c.take();
        if !rest.is_empty() {
            out.push(rest.len());
        }
        assert_eq!(out.iter().sum::<usize>(), sizes.len(), "every item, once");
        out
    }

    #[test]
    fn restore_chunks_are_bounded_by_count_and_by_bytes() {
        assert_eq!(runs(&[300; 2500]), [1000, 1000, 500]);
        // 200 KiB items: two fit under 512 KiB, a third does not.
        assert_eq!(runs(&[200 * 1024; 5]), [2, 2, 1]);
        // An item larger than the bound goes alone, and closes the run before.
        assert_eq!(runs(&[1000, 2 * CHUNK_BYTES, 1000]), [1, 1, 1]);
        assert_eq!(runs(&[]), Vec::<usize>::new());
    }
}
