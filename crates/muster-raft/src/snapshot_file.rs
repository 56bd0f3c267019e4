//! The current snapshot as one file beside the store.
//!
//! A snapshot holds the whole catalog (hundreds of megabytes at a million
//! instances), so it lives in its own file rather than in the store: written
//! once, read once at start-up, and never held in memory in between.
//!
//! A new snapshot is written to a temporary file, fsynced, renamed over the
//! old one and the directory fsynced, so after a crash the file is either
//! the old snapshot or the new one, whole.
//!
//! Layout: the magic `MSN2`, the metadata's length (u32, big-endian), the
//! data's length (u64, big-endian), the metadata (encoded by [`codec`]),
//! then the data. The lengths make a truncated file an error, not a short
//! catalog.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use crate::codec::{self, CodecError};
use crate::types::SnapshotMeta;

/// Name of the snapshot file in the data directory.
pub(crate) const SNAPSHOT_FILE: &str = "snapshot.bin";

const MAGIC: &[u8; 4] = b"MSN2";
const HEADER: usize = 4 + 4 + 8;

/// Why the snapshot file could not be read or written.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SnapshotFileError {
    /// Reading or writing the file failed.
    #[error("snapshot file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// The file is not a whole snapshot.
    #[error("snapshot file {path} is corrupt: {reason}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
}

/// A snapshot read back: its metadata and the whole file, whose bytes from
/// `data_start` on are the data (kept in place: no copy of a large buffer).
pub(crate) struct StoredSnapshot {
    pub(crate) meta: SnapshotMeta,
    blob: Vec<u8>,
    data_start: usize,
}

impl StoredSnapshot {
    /// A snapshot whose data are `blob[data_start..]`.
    pub(crate) fn new(meta: SnapshotMeta, blob: Vec<u8>, data_start: usize) -> Self {
        StoredSnapshot {
            meta,
            blob,
            data_start,
        }
    }

    /// The snapshot data.
    pub(crate) fn data(&self) -> &[u8] {
        &self.blob[self.data_start..]
    }

    /// The snapshot data, owned.
    pub(crate) fn into_data(mut self) -> Vec<u8> {
        self.blob.drain(..self.data_start);
        self.blob
    }
}

/// The snapshot file of a data directory.
#[derive(Debug, Clone)]
pub(crate) struct SnapshotFile {
    path: PathBuf,
}

impl SnapshotFile {
    /// The snapshot file in `dir`.
    pub(crate) fn in_dir(dir: &Path) -> Self {
        SnapshotFile {
            path: dir.join(SNAPSHOT_FILE),
        }
    }

    fn io(&self, source: io::Error) -> SnapshotFileError {
        SnapshotFileError::Io {
            path: self.path.clone(),
            source,
        }
    }

    fn corrupt(&self, reason: impl Into<String>) -> SnapshotFileError {
        SnapshotFileError::Corrupt {
            path: self.path.clone(),
            reason: reason.into(),
        }
    }

    /// Whether a snapshot file exists.
    pub(crate) fn exists(&self) -> bool {
        self.path.exists()
    }

    /// Reads the snapshot, if there is one. Blocking.
    pub(crate) fn read(&self) -> Result<Option<StoredSnapshot>, SnapshotFileError> {
        let mut file = match File::open(&self.path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(self.io(e)),
        };
        let len = file.metadata().map_err(|e| self.io(e))?.len();
        let mut blob = Vec::with_capacity(usize::try_from(len).unwrap_or(0));
        file.read_to_end(&mut blob).map_err(|e| self.io(e))?;
        self.parse(blob).map(Some)
    }

    fn parse(&self, blob: Vec<u8>) -> Result<StoredSnapshot, SnapshotFileError> {
        let Some(header) = blob.get(..HEADER) else {
            return Err(self.corrupt("shorter than its header"));
        };
        if &header[..4] != MAGIC {
            return Err(self.corrupt("bad magic"));
        }
        let meta_len = u32::from_be_bytes(header[4..8].try_into().expect("4 bytes")) as usize;
        let data_len = u64::from_be_bytes(header[8..16].try_into().expect("8 bytes"));
        let expected = (HEADER as u64)
            .checked_add(meta_len as u64)
            .and_then(|n| n.checked_add(data_len));
        if expected != Some(blob.len() as u64) {
            return Err(self.corrupt(format!(
                "{} bytes, but its header promises {}",
                blob.len(),
                HEADER as u64 + meta_len as u64 + data_len
            )));
        }
        let meta = codec::decode_value::<SnapshotMeta>(&blob[HEADER..HEADER + meta_len])
            .map_err(|e: CodecError| self.corrupt(format!("metadata: {e}")))?;
        Ok(StoredSnapshot::new(meta, blob, HEADER + meta_len))
    }

    /// Durably replaces the snapshot with `meta` and `data`. Blocking.
    pub(crate) fn write(&self, meta: &SnapshotMeta, data: &[u8]) -> Result<(), SnapshotFileError> {
        let meta = codec::encode_value(meta)
            .map_err(|e| self.corrupt(format!("encoding metadata: {e}")))?;
        let meta_len =
            u32::try_from(meta.len()).map_err(|_| self.corrupt("metadata larger than 4 GiB"))?;
        let tmp = self.path.with_extension("bin.tmp");
        let write = || -> io::Result<()> {
            let mut file = File::create(&tmp)?;
            let mut header = [0u8; HEADER];
            header[..4].copy_from_slice(MAGIC);
            header[4..8].copy_from_slice(&meta_len.to_be_bytes());
            header[8..16].copy_from_slice(&(data.len() as u64).to_be_bytes());
            file.write_all(&header)?;
            file.write_all(&meta)?;
            file.write_all(data)?;
            file.sync_all()?;
            drop(file);
            fs::rename(&tmp, &self.path)?;
            // The rename is durable once the directory is.
            if let Some(dir) = self.path.parent() {
                File::open(dir)?.sync_all()?;
            }
            Ok(())
        };
        write().map_err(|e| {
            let _ = fs::remove_file(&tmp);
            self.io(e)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::{LogId, StoredMembership};

    fn meta(index: u64) -> SnapshotMeta {
        SnapshotMeta {
            last_log_id: Some(LogId::new(openraft::CommittedLeaderId::new(1, 1), index)),
            last_membership: StoredMembership::default(),
            snapshot_id: format!("snap-{index}"),
        }
    }

    #[test]
    fn written_snapshots_read_back_and_replace_each_other() {
        let dir = tempfile::tempdir().unwrap();
        let file = SnapshotFile::in_dir(dir.path());
        assert!(file.read().unwrap().is_none());
        assert!(!file.exists());

        file.write(&meta(5), b"first data").unwrap();
        let s = file.read().unwrap().unwrap();
        assert_eq!(s.meta, meta(5));
        assert_eq!(s.data(), b"first data");

        file.write(&meta(9), b"second").unwrap();
        let s = file.read().unwrap().unwrap();
        assert_eq!(s.meta, meta(9));
        assert_eq!(s.into_data(), b"second");
        // No temporary file is left behind.
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![SNAPSHOT_FILE]);
    }

    #[test]
    fn a_truncated_or_foreign_file_is_corrupt_not_short() {
        let dir = tempfile::tempdir().unwrap();
        let file = SnapshotFile::in_dir(dir.path());
        file.write(&meta(3), b"0123456789").unwrap();
        let path = dir.path().join(SNAPSHOT_FILE);
        let whole = fs::read(&path).unwrap();

        fs::write(&path, &whole[..whole.len() - 1]).unwrap();
        let err = file.read().err().expect("truncated file refused");
        assert!(err.to_string().contains("promises"), "{err}");

        fs::write(&path, b"MSN1 an old blob").unwrap();
        let err = file.read().err().expect("bad magic refused");
        assert!(err.to_string().contains("bad magic"), "{err}");

        fs::write(&path, b"MS").unwrap();
        let err = file.read().err().expect("short file refused");
        assert!(err.to_string().contains("header"), "{err}");
    }
}
