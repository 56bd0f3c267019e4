//! Every byte format this crate writes, in one place so it can be swapped.
//!
//! Today everything is JSON (serde_json); the snapshot blob frames the JSON
//! metadata in front of the raw snapshot data.

use muster_catalog::Catalog;
use serde::Serialize;
use serde::de::DeserializeOwned;

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

const SNAPSHOT_MAGIC: &[u8; 4] = b"MSN1";

/// Frames snapshot metadata and data into one stored blob, so both are
/// written in one store operation.
pub(crate) fn encode_snapshot(meta: &SnapshotMeta, data: &[u8]) -> Result<Vec<u8>, CodecError> {
    let meta = serde_json::to_vec(meta)?;
    let len =
        u32::try_from(meta.len()).map_err(|_| CodecError("snapshot metadata too large".into()))?;
    let mut out = Vec::with_capacity(8 + meta.len() + data.len());
    out.extend_from_slice(SNAPSHOT_MAGIC);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&meta);
    out.extend_from_slice(data);
    Ok(out)
}

/// Splits a blob made by [`encode_snapshot`].
pub(crate) fn decode_snapshot(blob: &[u8]) -> Result<(SnapshotMeta, Vec<u8>), CodecError> {
    let bad = || CodecError("snapshot blob is truncated or has a bad header".into());
    let rest = blob.strip_prefix(SNAPSHOT_MAGIC).ok_or_else(bad)?;
    let (len, rest) = rest.split_first_chunk::<4>().ok_or_else(bad)?;
    let len = u32::from_be_bytes(*len) as usize;
    if rest.len() < len {
        return Err(bad());
    }
    let (meta, data) = rest.split_at(len);
    Ok((serde_json::from_slice(meta)?, data.to_vec()))
}
