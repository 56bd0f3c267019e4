//! Every byte format this crate writes, in one place so it can be swapped.
//!
//! Today everything is JSON (serde_json). The snapshot file's framing is in
//! [`crate::snapshot_file`].

use std::io::{Read, Write};

use muster_catalog::{Catalog, CatalogHead, Service, ServiceKey};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::types::{Entry, LogId, SnapshotMeta};

/// A value could not be encoded or decoded.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct CodecError(String);

impl From<std::io::Error> for CodecError {
    fn from(e: std::io::Error) -> Self {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            CodecError("snapshot data is truncated".into())
        } else {
            CodecError(e.to_string())
        }
    }
}

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

/// The first bytes of snapshot data in frames ([`write_catalog`]).
const CATALOG_MAGIC: &[u8; 4] = b"MCF1";

/// Writes the catalog as snapshot data, a frame at a time, so neither side
/// ever holds the whole encoding: [`CATALOG_MAGIC`], then frames of a
/// length (u32, big-endian) and JSON: the catalog's head
/// ([`Catalog::head`]), then one `[key, service]` pair per service.
pub(crate) fn write_catalog(catalog: &Catalog, out: &mut impl Write) -> Result<(), CodecError> {
    out.write_all(CATALOG_MAGIC)?;
    let mut frame = Vec::new();
    write_frame(out, &mut frame, &catalog.head())?;
    for entry in catalog.service_entries() {
        write_frame(out, &mut frame, &entry)?;
    }
    Ok(())
}

fn write_frame<T: Serialize>(
    out: &mut impl Write,
    frame: &mut Vec<u8>,
    value: &T,
) -> Result<(), CodecError> {
    frame.clear();
    serde_json::to_writer(&mut *frame, value)?;
    let len = u32::try_from(frame.len())
        .map_err(|_| CodecError(format!("a snapshot frame of {} bytes", frame.len())))?;
    out.write_all(&len.to_be_bytes())?;
    out.write_all(frame)?;
    Ok(())
}

/// Reads snapshot data written by [`write_catalog`], a frame at a time
/// through one reused buffer. Anything but exactly the frames the head
/// announces is an error.
pub(crate) fn read_catalog(input: &mut impl Read) -> Result<Catalog, CodecError> {
    let mut magic = [0u8; 4];
    input.read_exact(&mut magic)?;
    if &magic != CATALOG_MAGIC {
        return Err(CodecError("snapshot data has a bad header".into()));
    }
    let mut frame = Vec::new();
    read_frame(input, &mut frame)?;
    let head: CatalogHead<'static> = serde_json::from_slice(&frame)?;
    let count = head.services;
    let mut services = Vec::new();
    for _ in 0..count {
        read_frame(input, &mut frame)?;
        let entry: (ServiceKey, Service) = serde_json::from_slice(&frame)?;
        services.push(entry);
    }
    if input.read(&mut magic)? != 0 {
        return Err(CodecError(format!(
            "snapshot data goes on after its {count} services"
        )));
    }
    Ok(Catalog::from_parts(head, services))
}

fn read_frame(input: &mut impl Read, frame: &mut Vec<u8>) -> Result<(), CodecError> {
    let mut len = [0u8; 4];
    input.read_exact(&mut len)?;
    let len = u32::from_be_bytes(len) as usize;
    frame.clear();
    let read = input.take(len as u64).read_to_end(frame)?;
    if read != len {
        return Err(CodecError(format!(
            "snapshot data ends inside a frame ({read} of {len} bytes)"
        )));
    }
    Ok(())
}

/// Decodes the snapshot data of older versions: the catalog as one JSON
/// document.
pub(crate) fn decode_legacy_catalog(bytes: &[u8]) -> Result<Catalog, CodecError> {
    Ok(serde_json::from_slice(bytes)?)
}

const LEGACY_SNAPSHOT_MAGIC: &[u8; 4] = b"MSN1";

/// Decodes the snapshot blob older versions kept in the store's metadata:
/// `MSN1`, the metadata's length (u32, big-endian), the metadata, then the
/// catalog as one JSON document.
pub(crate) fn decode_legacy_snapshot(blob: &[u8]) -> Result<(SnapshotMeta, Catalog), CodecError> {
    let bad = || CodecError("snapshot blob is truncated or has a bad header".into());
    let rest = blob.strip_prefix(LEGACY_SNAPSHOT_MAGIC).ok_or_else(bad)?;
    let (len, rest) = rest.split_first_chunk::<4>().ok_or_else(bad)?;
    let len = u32::from_be_bytes(*len) as usize;
    if rest.len() < len {
        return Err(bad());
    }
    let (meta, data) = rest.split_at(len);
    Ok((serde_json::from_slice(meta)?, decode_legacy_catalog(data)?))
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

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use muster_catalog::{Command, InstanceData, LeaseRef};

    use super::*;

    /// Three services, one of them with an own-lease instance, and a change
    /// history: everything a snapshot must carry.
    fn catalog() -> Catalog {
        let mut c = Catalog::new();
        let mut index = 0;
        for (service, id, lease) in [
            ("payments", "a", LeaseRef::None),
            (
                "payments",
                "b",
                LeaseRef::Own {
                    id: 9,
                    ttl_ms: 5000,
                },
            ),
            ("ledger", "c", LeaseRef::None),
            ("search", "d", LeaseRef::None),
        ] {
            index += 1;
            let cmd = Command::Register {
                namespace: "default".into(),
                service: service.into(),
                instance: InstanceData {
                    id: id.into(),
                    address: "10.0.0.1".into(),
                    port: 8080,
                    tags: BTreeSet::from(["v2".to_string()]),
                    meta: BTreeMap::from([("team".to_string(), "core".to_string())]),
                    version: Some("1.4.0".into()),
                    zone: None,
                    weight: 100,
                    checks: Vec::new(),
                },
                lease,
            };
            c.apply(index, 1_000, &cmd).unwrap();
        }
        c.apply(
            index + 1,
            1_000,
            &Command::Deregister {
                namespace: "default".into(),
                service: "search".into(),
                id: "d".into(),
            },
        )
        .unwrap();
        c
    }

    #[test]
    fn a_catalog_written_in_frames_reads_back_equal() {
        let c = catalog();
        let mut data = Vec::new();
        write_catalog(&c, &mut data).unwrap();
        assert_eq!(read_catalog(&mut data.as_slice()).unwrap(), c);

        let empty = Catalog::new();
        let mut data = Vec::new();
        write_catalog(&empty, &mut data).unwrap();
        assert_eq!(read_catalog(&mut data.as_slice()).unwrap(), empty);
    }

    #[test]
    fn truncated_or_padded_data_is_refused() {
        let mut data = Vec::new();
        write_catalog(&catalog(), &mut data).unwrap();

        for cut in [0, 3, 6, data.len() / 2, data.len() - 1] {
            let err = read_catalog(&mut &data[..cut]).unwrap_err();
            assert!(
                err.to_string().contains("truncated") || err.to_string().contains("ends inside"),
                "cut at {cut}: {err}"
            );
        }
        let mut padded = data.clone();
        padded.push(b'x');
        let err = read_catalog(&mut padded.as_slice()).unwrap_err();
        assert!(err.to_string().contains("goes on"), "{err}");

        let mut foreign = data;
        foreign[0] = b'{';
        let err = read_catalog(&mut foreign.as_slice()).unwrap_err();
        assert!(err.to_string().contains("bad header"), "{err}");
    }
}
