//! What a starting node reads from its data directory: stored log entries
//! and snapshot data. Anything there may be damaged; decoding must refuse
//! it with an error, never panic, and what decodes must be written back
//! the same.

use muster_catalog::Catalog;
use muster_raft::fuzzing::{
    LOG_FORMAT, LogEntry, SNAPSHOT_FORMAT, SNAPSHOT_MAGIC, check_log_entry_format,
    decode_log_entry, decode_log_index, decode_snapshot, encode_snapshot,
};

/// A stored log entry. The input is decoded as it is, and also as the
/// JSON of an entry in format 1 (no checksum) and in format 2 under its
/// correct checksum: those two must decode alike, and the second lets the
/// fuzzer reach the decoding behind the checksum without forging one.
pub fn log_entry(data: &[u8]) {
    stored_entry(data);
    let v1 = [&[1u8][..], data].concat();
    let v2 = [&[LOG_FORMAT][..], &crc32c::crc32c(data).to_be_bytes(), data].concat();
    assert_eq!(stored_entry(&v1), stored_entry(&v2), "{data:?}");
}

/// Decodes a stored entry the three ways the store reads one; an entry
/// that decodes re-encodes in the current format to itself.
fn stored_entry(bytes: &[u8]) -> Option<LogEntry> {
    let entry = decode_log_entry(bytes);
    let format = check_log_entry_format(bytes);
    let index = decode_log_index(bytes);
    let Ok(entry) = entry else {
        // A bad version or checksum fails every way of reading.
        if format.is_err() {
            assert!(index.is_err(), "{bytes:?}");
        }
        return None;
    };
    assert_eq!(format, Ok(()));
    assert_eq!(index, Ok(entry.index()));
    let encoded = entry.encode();
    assert_eq!(encoded[0], LOG_FORMAT);
    let back = decode_log_entry(&encoded).expect("an encoded entry decodes");
    assert_eq!(back, entry);
    assert_eq!(back.encode(), encoded);
    Some(entry)
}

/// Snapshot data. When the input is in format 1 (frames without
/// checksums), it is also decoded rewritten in format 2 with each frame's
/// correct checksum: the same frames must give the same catalog, and the
/// fuzzer reaches the frames of format 2 without forging checksums.
pub fn snapshot(data: &[u8]) {
    let direct = snapshot_data(data);
    if let Some(checked) = with_checksums(data) {
        assert_eq!(snapshot_data(&checked), direct);
    }
}

/// Decodes snapshot data; a catalog that decodes is written back (in the
/// format this build writes for it) to data that decodes to it again, and to the same
/// bytes a second time.
fn snapshot_data(data: &[u8]) -> Option<Catalog> {
    let catalog = decode_snapshot(data).ok()?;
    let encoded = encode_snapshot(&catalog);
    assert_eq!(&encoded[..4], SNAPSHOT_MAGIC);
    // The current format where the head holds what format 2 cannot (ACL
    // state, a staged restore); format 2, as before, otherwise.
    let version = if catalog.staged().is_some() || !catalog.acl().is_empty() {
        SNAPSHOT_FORMAT
    } else {
        2
    };
    assert_eq!(encoded[4..6], version.to_be_bytes());
    let back = decode_snapshot(&encoded).expect("written snapshot data reads back");
    assert_eq!(back, catalog);
    assert_eq!(encode_snapshot(&back), encoded);
    Some(catalog)
}

/// Format 1 snapshot data rewritten in format 2: a CRC-32C after each
/// frame's length, everything else as it was (a truncated last frame and
/// trailing bytes too, so both fail alike).
fn with_checksums(data: &[u8]) -> Option<Vec<u8>> {
    let mut rest = data.strip_prefix(b"MSNP\x00\x01")?;
    let mut out = b"MSNP".to_vec();
    out.extend_from_slice(&SNAPSHOT_FORMAT.to_be_bytes());
    while let Some((len, after)) = rest.split_first_chunk::<4>() {
        let n = (u32::from_be_bytes(*len) as usize).min(after.len());
        let (frame, next) = after.split_at(n);
        out.extend_from_slice(len);
        out.extend_from_slice(&crc32c::crc32c(frame).to_be_bytes());
        out.extend_from_slice(frame);
        rest = next;
    }
    out.extend_from_slice(rest);
    Some(out)
}
