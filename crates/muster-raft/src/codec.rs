//! Every byte format this crate writes, in one place so it can be swapped.
//!
//! Today everything is JSON (serde_json). The snapshot file's framing is in
//! [`crate::snapshot_file`].

use muster_catalog::Catalog;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::snapshot_file::StoredSnapshot;
use crate::types::{Entry, LogId, SnapshotMeta};

/// A value could not be encoded or decoded.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct CodecError(String);

impl From<serde_json::Error> for CodecError {
    fn from(e: serde_json::Error) -> Self {
        CodecError(e.to_string())
    }
}

/// Encodes a log entry.
pub(crate) fn encode_entry(entry: &Entry) -> Result<Vec<u8>, CodecError> {
    Ok(serde_json::to_vec(entry)?)
}

/// Decodes a log entry.
pub(crate) fn decode_entry(bytes: &[u8]) -> Result<Entry, CodecError> {
    Ok(serde_json::from_slice(bytes)?)
}

/// Decodes only the log id of an encoded entry.
pub(crate) fn decode_entry_log_id(bytes: &[u8]) -> Result<LogId, CodecError> {
    #[derive(serde::Deserialize)]
    struct Head {
        log_id: LogId,
    }
    let head: Head = serde_json::from_slice(bytes)?;
    Ok(head.log_id)
}

/// Encodes a small metadata value (vote, log id).
pub(crate) fn encode_value<T: Serialize>(value: &T) -> Result<Vec<u8>, CodecError> {
    Ok(serde_json::to_vec(value)?)
}

/// Decodes a small metadata value (vote, log id).
pub(crate) fn decode_value<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    Ok(serde_json::from_slice(bytes)?)
}

/// Encodes the catalog as snapshot data.
pub(crate) fn encode_catalog(catalog: &Catalog) -> Result<Vec<u8>, CodecError> {
    Ok(serde_json::to_vec(catalog)?)
}

/// Decodes snapshot data into a catalog.
pub(crate) fn decode_catalog(bytes: &[u8]) -> Result<Catalog, CodecError> {
    Ok(serde_json::from_slice(bytes)?)
}

const LEGACY_SNAPSHOT_MAGIC: &[u8; 4] = b"MSN1";

/// Splits the snapshot blob older versions kept in the store's metadata:
/// `MSN1`, the metadata's length (u32, big-endian), the metadata, the data.
pub(crate) fn decode_legacy_snapshot(blob: Vec<u8>) -> Result<StoredSnapshot, CodecError> {
    let bad = || CodecError("snapshot blob is truncated or has a bad header".into());
    let rest = blob.strip_prefix(LEGACY_SNAPSHOT_MAGIC).ok_or_else(bad)?;
    let (len, rest) = rest.split_first_chunk::<4>().ok_or_else(bad)?;
    let len = u32::from_be_bytes(*len) as usize;
    if rest.len() < len {
        return Err(bad());
    }
    let meta: SnapshotMeta = serde_json::from_slice(&rest[..len])?;
    Ok(StoredSnapshot::new(meta, blob, 8 + len))
}

#[cfg(test)]
/// Frames a snapshot the way older versions stored it, for upgrade tests.
pub(crate) fn encode_legacy_snapshot(meta: &SnapshotMeta, data: &[u8]) -> Vec<u8> {
    let meta = serde_json::to_vec(meta).expect("metadata encodes");
    let mut out = Vec::with_capacity(8 + meta.len() + data.len());
    out.extend_from_slice(LEGACY_SNAPSHOT_MAGIC);
    out.extend_from_slice(&(meta.len() as u32).to_be_bytes());
    out.extend_from_slice(&meta);
    out.extend_from_slice(data);
    out
}
