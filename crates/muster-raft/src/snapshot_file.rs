//! The current snapshot as files beside the store.
//!
//! A snapshot holds the whole catalog (hundreds of megabytes at a million
//! instances), so it lives in files rather than in the store, is written and
//! read a frame at a time ([`crate::codec::write_catalog`]), and is never
//! held in memory: openraft gets an open file as the snapshot's data.
//!
//! Two kinds of file:
//! * a *data file*, `snapshot-<hex>.data`, holding only the snapshot data
//!   (so an open handle at offset 0 is exactly what openraft expects);
//! * the *pointer*, `snapshot.json`: the snapshot's metadata, the name of
//!   its data file and that file's length.
//!
//! Saving writes and fsyncs a new data file, then replaces the pointer
//! (temporary file, fsync, rename, directory fsync) and only then deletes
//! the old data file. A crash leaves either the old pointer and data or the
//! new ones; data files no pointer names are leftovers, removed at open.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::types::SnapshotMeta;

/// Name of the pointer file in the data directory.
pub(crate) const POINTER_FILE: &str = "snapshot.json";
const DATA_PREFIX: &str = "snapshot-";
const DATA_SUFFIX: &str = ".data";

/// Why the snapshot files could not be read or written.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SnapshotFileError {
    /// Reading or writing a file failed.
    #[error("snapshot file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// The files do not hold a whole snapshot.
    #[error("snapshot file {path} is corrupt: {reason}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
}

/// The content of the pointer file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Pointer {
    meta: SnapshotMeta,
    /// File name of the data file, in the same directory.
    data: String,
    /// Length of the data file in bytes.
    len: u64,
}

/// The current snapshot: its metadata and where its data are.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Current {
    pub(crate) meta: SnapshotMeta,
    pub(crate) data: PathBuf,
}

/// A data file being written, not yet a snapshot.
#[derive(Debug)]
pub(crate) struct NewData {
    pub(crate) path: PathBuf,
    pub(crate) file: File,
}

/// The snapshot files of a data directory.
#[derive(Debug, Clone)]
pub(crate) struct SnapshotDir {
    dir: PathBuf,
}

/// Makes data file names unique within this process (with the clock, across
/// processes).
static NEXT_DATA: AtomicU64 = AtomicU64::new(0);

impl SnapshotDir {
    /// The snapshot files in `dir`.
    pub(crate) fn in_dir(dir: &Path) -> Self {
        SnapshotDir {
            dir: dir.to_path_buf(),
        }
    }

    pub(crate) fn pointer_path(&self) -> PathBuf {
        self.dir.join(POINTER_FILE)
    }

    fn io(path: &Path, source: io::Error) -> SnapshotFileError {
        SnapshotFileError::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    fn corrupt(path: &Path, reason: impl Into<String>) -> SnapshotFileError {
        SnapshotFileError::Corrupt {
            path: path.to_path_buf(),
            reason: reason.into(),
        }
    }

    /// Whether a snapshot exists.
    pub(crate) fn exists(&self) -> bool {
        self.pointer_path().exists()
    }

    /// The current snapshot, if there is one, after checking that its data
    /// file is whole. Blocking.
    pub(crate) fn current(&self) -> Result<Option<Current>, SnapshotFileError> {
        let path = self.pointer_path();
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Self::io(&path, e)),
        };
        let pointer: Pointer =
            serde_json::from_slice(&bytes).map_err(|e| Self::corrupt(&path, e.to_string()))?;
        if !is_data_name(&pointer.data) {
            return Err(Self::corrupt(
                &path,
                format!("names {:?}, not a snapshot data file", pointer.data),
            ));
        }
        let data = self.dir.join(&pointer.data);
        let len = fs::metadata(&data).map_err(|e| Self::io(&data, e))?.len();
        if len != pointer.len {
            return Err(Self::corrupt(
                &data,
                format!("{len} bytes, but {POINTER_FILE} says {}", pointer.len),
            ));
        }
        Ok(Some(Current {
            meta: pointer.meta,
            data,
        }))
    }

    /// Creates a new, empty data file to write a snapshot into. Blocking.
    pub(crate) fn create_data(&self) -> Result<NewData, SnapshotFileError> {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or_default();
        let seq = NEXT_DATA.fetch_add(1, Ordering::Relaxed);
        let path = self
            .dir
            .join(format!("{DATA_PREFIX}{nanos:016x}-{seq:x}{DATA_SUFFIX}"));
        let file = File::options()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| Self::io(&path, e))?;
        Ok(NewData { path, file })
    }

    /// Makes `data` (a file from [`SnapshotDir::create_data`], completely
    /// written) the current snapshot with `meta`: fsyncs it, replaces the
    /// pointer durably, then deletes every other data file. Blocking.
    pub(crate) fn commit(
        &self,
        meta: &SnapshotMeta,
        data: NewData,
    ) -> Result<Current, SnapshotFileError> {
        let NewData { path, mut file } = data;
        file.flush().map_err(|e| Self::io(&path, e))?;
        file.sync_all().map_err(|e| Self::io(&path, e))?;
        let len = file.metadata().map_err(|e| Self::io(&path, e))?.len();
        drop(file);
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .filter(|n| is_data_name(n))
            .ok_or_else(|| Self::corrupt(&path, "not a snapshot data file"))?
            .to_owned();
        let pointer = Pointer {
            meta: meta.clone(),
            data: name,
            len,
        };
        let bytes = serde_json::to_vec(&pointer)
            .map_err(|e| Self::corrupt(&self.pointer_path(), e.to_string()))?;
        let tmp = self.dir.join(format!("{POINTER_FILE}.tmp"));
        let write = || -> io::Result<()> {
            let mut f = File::create(&tmp)?;
            f.write_all(&bytes)?;
            f.sync_all()?;
            drop(f);
            fs::rename(&tmp, self.pointer_path())?;
            // The rename is durable once the directory is.
            File::open(&self.dir)?.sync_all()
        };
        write().map_err(|e| Self::io(&tmp, e))?;
        self.remove_other_data(Some(&path));
        Ok(Current {
            meta: meta.clone(),
            data: path,
        })
    }

    /// Deletes a data file that was not committed. Blocking.
    pub(crate) fn discard(&self, data: NewData) {
        drop(data.file);
        if let Err(e) = fs::remove_file(&data.path) {
            tracing::warn!(path = %data.path.display(), error = %e, "cannot remove an unused snapshot file");
        }
    }

    /// Deletes every data file the pointer does not name (leftovers of a
    /// crash mid-save). Blocking.
    pub(crate) fn remove_leftovers(&self) -> Result<(), SnapshotFileError> {
        let keep = self.current()?.map(|c| c.data);
        self.remove_other_data(keep.as_deref());
        Ok(())
    }

    /// Deletes every data file but `keep`.
    fn remove_other_data(&self, keep: Option<&Path>) {
        let Ok(entries) = fs::read_dir(&self.dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let is_data = entry.file_name().to_str().is_some_and(is_data_name);
            if is_data
                && Some(path.as_path()) != keep
                && let Err(e) = fs::remove_file(&path)
            {
                tracing::warn!(path = %path.display(), error = %e, "cannot remove an old snapshot file");
            }
        }
    }
}

fn is_data_name(name: &str) -> bool {
    name.starts_with(DATA_PREFIX) && name.ends_with(DATA_SUFFIX) && !name.contains(['/', '\\'])
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

    fn write(dir: &SnapshotDir, index: u64, data: &[u8]) -> Current {
        let mut new = dir.create_data().unwrap();
        new.file.write_all(data).unwrap();
        dir.commit(&meta(index), new).unwrap()
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn a_committed_snapshot_replaces_the_last_and_its_data_file() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = SnapshotDir::in_dir(tmp.path());
        assert_eq!(dir.current().unwrap(), None);
        assert!(!dir.exists());

        let first = write(&dir, 5, b"first data");
        assert_eq!(dir.current().unwrap(), Some(first.clone()));
        assert_eq!(fs::read(&first.data).unwrap(), b"first data");

        let second = write(&dir, 9, b"second");
        let current = dir.current().unwrap().unwrap();
        assert_eq!(current, second);
        assert_eq!(current.meta, meta(9));
        assert_eq!(fs::read(&current.data).unwrap(), b"second");
        // One pointer, one data file: the old one is gone, no temporary left.
        let files = names(tmp.path());
        assert_eq!(files.len(), 2, "{files:?}");
        assert!(files.contains(&POINTER_FILE.to_string()));
        assert!(!first.data.exists());
    }

    #[test]
    fn leftovers_of_an_interrupted_save_are_removed_and_the_snapshot_kept() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = SnapshotDir::in_dir(tmp.path());
        let kept = write(&dir, 3, b"kept");
        // A crash after writing a new data file, before the pointer moved.
        let mut orphan = dir.create_data().unwrap();
        orphan.file.write_all(b"half a snapshot").unwrap();
        drop(orphan);
        let unused = dir.create_data().unwrap();
        dir.discard(unused);
        assert_eq!(names(tmp.path()).len(), 3);

        dir.remove_leftovers().unwrap();
        assert_eq!(names(tmp.path()).len(), 2);
        assert_eq!(dir.current().unwrap(), Some(kept.clone()));
        assert_eq!(fs::read(&kept.data).unwrap(), b"kept");
    }

    #[test]
    fn a_short_data_file_or_a_bad_pointer_is_corrupt() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = SnapshotDir::in_dir(tmp.path());
        let current = write(&dir, 3, b"0123456789");

        fs::write(&current.data, b"01234").unwrap();
        let err = dir.current().expect_err("short data refused");
        assert!(err.to_string().contains("says 10"), "{err}");

        fs::write(tmp.path().join(POINTER_FILE), b"{not json").unwrap();
        let err = dir.current().expect_err("bad pointer refused");
        assert!(err.to_string().contains("corrupt"), "{err}");

        let pointer = Pointer {
            meta: meta(3),
            data: "../raft.redb".into(),
            len: 0,
        };
        fs::write(
            tmp.path().join(POINTER_FILE),
            serde_json::to_vec(&pointer).unwrap(),
        )
        .unwrap();
        let err = dir.current().expect_err("foreign file refused");
        assert!(
            err.to_string().contains("not a snapshot data file"),
            "{err}"
        );
    }
}
