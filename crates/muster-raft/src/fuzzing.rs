//! The stored formats as plain functions of bytes, for the fuzz targets
//! (`fuzz/`) and their corpus test (`crates/muster-fuzz`); compiled only
//! with the `fuzzing` feature, and no part of what a program uses.
//!
//! Decoding reads what a data directory holds (a log entry as the store
//! keeps it, snapshot data as its file holds it) exactly as a starting node
//! does, so any input must give a value or an error, never a panic.
//! Encoding writes the current format, for round trips.

use muster_catalog::Catalog;

use crate::codec;
use crate::types::Entry;

/// The log entry format this build writes (the first byte of an entry).
pub const LOG_FORMAT: u8 = codec::LOG_FORMAT;

/// The snapshot data format this build writes (after [`SNAPSHOT_MAGIC`]).
pub const SNAPSHOT_FORMAT: u16 = codec::SNAPSHOT_FORMAT;

/// The first bytes of snapshot data.
pub const SNAPSHOT_MAGIC: &[u8; 4] = codec::SNAPSHOT_MAGIC;

/// A decoded log entry. Its type is openraft's, which no other crate
/// names, so it is only compared, printed and encoded again.
#[derive(Debug, Clone, PartialEq)]
pub struct LogEntry(Entry);

impl LogEntry {
    /// The entry's log index.
    pub fn index(&self) -> u64 {
        self.0.log_id.index
    }

    /// The entry in the current format ([`LOG_FORMAT`]).
    pub fn encode(&self) -> Vec<u8> {
        codec::encode_entry(&self.0).expect("a decoded entry encodes")
    }
}

/// Decodes a stored log entry, checking its format version and checksum.
pub fn decode_log_entry(bytes: &[u8]) -> Result<LogEntry, String> {
    codec::decode_entry(bytes)
        .map(LogEntry)
        .map_err(|e| e.to_string())
}

/// The log index of a stored entry, read the way the store's start-up
/// checks read it (only the log id is decoded).
pub fn decode_log_index(bytes: &[u8]) -> Result<u64, String> {
    codec::decode_entry_log_id(bytes)
        .map(|id| id.index)
        .map_err(|e| e.to_string())
}

/// Checks only an entry's format version and checksum.
pub fn check_log_entry_format(bytes: &[u8]) -> Result<(), String> {
    codec::check_entry_format(bytes).map_err(|e| e.to_string())
}

/// Decodes snapshot data into the catalog it holds.
pub fn decode_snapshot(mut bytes: &[u8]) -> Result<Catalog, String> {
    codec::read_catalog(&mut bytes).map_err(|e| e.to_string())
}

/// The catalog as snapshot data in the current format ([`SNAPSHOT_FORMAT`]).
pub fn encode_snapshot(catalog: &Catalog) -> Vec<u8> {
    let mut out = Vec::new();
    codec::write_catalog(catalog, &mut out).expect("writing to memory does not fail");
    out
}
