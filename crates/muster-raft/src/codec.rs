//! Every byte format this crate writes, in one place so it can be swapped.
//!
//! Log entries and snapshot data carry a format version, so that a build
//! never misreads data written in another format: an entry is
//! [`LOG_FORMAT`] (one byte), the CRC-32C of its JSON (u32, big-endian),
//! then the JSON; snapshot data is [`SNAPSHOT_MAGIC`], [`SNAPSHOT_FORMAT`]
//! (u16, big-endian), then frames, each its length, its CRC-32C and its
//! JSON. A checksum that does not match is refused (a flipped byte inside
//! valid JSON would otherwise be served as data), and so is an unknown
//! version. Version 1 (no checksums) is still read. Each version
//! has golden fixtures (`testdata/`), checked byte for byte by the tests
//! below: a change to the types that would change what is written fails
//! them, and must come with a new version. Small metadata values (vote,
//! log ids) are JSON. The snapshot file's framing is in
//! [`crate::snapshot_file`].

use std::io::{Read, Write};

use muster_catalog::{Catalog, CatalogHead};

use crate::format_v1::{HeadIn, HeadOut, ServiceEntryIn, service_out};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::types::{Entry, LogId};

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

/// Version of the log entry encoding: the first byte of every stored entry.
pub(crate) const LOG_FORMAT: u8 = 2;

/// The first log entry encoding: the version byte, then JSON, unchecked.
const LOG_FORMAT_V1: u8 = 1;

/// Encodes a log entry: [`LOG_FORMAT`], the CRC-32C of the JSON, the JSON.
pub(crate) fn encode_entry(entry: &Entry) -> Result<Vec<u8>, CodecError> {
    let mut out = vec![LOG_FORMAT, 0, 0, 0, 0];
    serde_json::to_writer(&mut out, entry)?;
    let crc = crc32c::crc32c(&out[5..]);
    out[1..5].copy_from_slice(&crc.to_be_bytes());
    Ok(out)
}

/// The JSON of an encoded entry, once its format version and checksum are
/// checked.
fn entry_body(bytes: &[u8]) -> Result<&[u8], CodecError> {
    match bytes.split_first() {
        Some((&LOG_FORMAT, rest)) => {
            let (crc, body) = rest
                .split_first_chunk::<4>()
                .ok_or_else(|| CodecError("log entry is shorter than its checksum".into()))?;
            let (stored, computed) = (u32::from_be_bytes(*crc), crc32c::crc32c(body));
            if stored != computed {
                return Err(CodecError(format!(
                    "log entry fails its checksum (stored {stored:08x}, computed \
                     {computed:08x}): its bytes were changed after muster wrote them"
                )));
            }
            Ok(body)
        }
        Some((&LOG_FORMAT_V1, body)) => Ok(body),
        Some((b'{', _)) => Err(CodecError(
            "log entry is in the unversioned format of pre-release builds; \
             this data directory cannot be read by this version"
                .into(),
        )),
        Some((v, _)) => Err(CodecError(format!(
            "log entry has format version {v}; this build reads versions {LOG_FORMAT_V1} and {LOG_FORMAT} \
             (was the data directory written by another muster version?)"
        ))),
        None => Err(CodecError("log entry is empty".into())),
    }
}

/// Checks that an encoded entry is in a format this build reads.
pub(crate) fn check_entry_format(bytes: &[u8]) -> Result<(), CodecError> {
    entry_body(bytes).map(|_| ())
}

/// Decodes a log entry.
pub(crate) fn decode_entry(bytes: &[u8]) -> Result<Entry, CodecError> {
    Ok(serde_json::from_slice(entry_body(bytes)?)?)
}

/// Decodes only the log id of an encoded entry.
pub(crate) fn decode_entry_log_id(bytes: &[u8]) -> Result<LogId, CodecError> {
    #[derive(serde::Deserialize)]
    struct Head {
        log_id: LogId,
    }
    let head: Head = serde_json::from_slice(entry_body(bytes)?)?;
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

/// The first bytes of snapshot data ([`write_catalog`]).
pub(crate) const SNAPSHOT_MAGIC: &[u8; 4] = b"MSNP";

/// Version of the snapshot data encoding, after [`SNAPSHOT_MAGIC`]: 3 when
/// the head carries state a build of version 2 would drop without a word
/// (ACL tokens and policies, a staged restore), else
/// [`SNAPSHOT_FORMAT_V2`], byte for byte as before. So a catalog that never
/// used them is still read by older builds, and one that did is refused by
/// them rather than misread.
pub(crate) const SNAPSHOT_FORMAT: u16 = 3;

/// Checksummed frames, a head without ACL state or a staged restore.
const SNAPSHOT_FORMAT_V2: u16 = 2;

/// The first snapshot data encoding: frames without checksums.
const SNAPSHOT_FORMAT_V1: u16 = 1;

/// The magic of the unversioned snapshot data of pre-release builds.
const PRE_RELEASE_MAGIC: &[u8; 4] = b"MCF1";

/// Writes the catalog as snapshot data, a frame at a time, so neither side
/// ever holds the whole encoding: [`SNAPSHOT_MAGIC`], [`SNAPSHOT_FORMAT`]
/// (u16, big-endian), then frames of a length and a CRC-32C (u32,
/// big-endian, each) and JSON: the catalog's head ([`Catalog::head`]), then
/// one `[key, service]` pair per service.
pub(crate) fn write_catalog(catalog: &Catalog, out: &mut impl Write) -> Result<(), CodecError> {
    let head = catalog.head();
    let version = if head.staged.is_some() || !head.acl.is_empty() {
        SNAPSHOT_FORMAT
    } else {
        SNAPSHOT_FORMAT_V2
    };
    out.write_all(SNAPSHOT_MAGIC)?;
    out.write_all(&version.to_be_bytes())?;
    let mut frame = Vec::new();
    write_frame(out, &mut frame, &HeadOut(&head))?;
    for (key, service) in catalog.service_entries() {
        write_frame(out, &mut frame, &service_out(key, service))?;
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
    out.write_all(&crc32c::crc32c(frame).to_be_bytes())?;
    out.write_all(frame)?;
    Ok(())
}

/// Reads snapshot data written by [`write_catalog`], a frame at a time
/// through one reused buffer. Anything but exactly the frames the head
/// announces is an error.
pub(crate) fn read_catalog(input: &mut impl Read) -> Result<Catalog, CodecError> {
    let (checked, mut frame, head) = read_head(input)?;
    let count = head.services();
    let services = if count < PARALLEL_FROM_SERVICES {
        let mut services = Vec::new();
        for n in 1..=count {
            let crc = read_frame(input, &mut frame, checked)?;
            services.push(decode_service(&frame, crc, n)?);
        }
        services
    } else {
        read_services_in_parallel(input, checked, count)?
    };
    read_end(input, count)?;
    Ok(Catalog::from_parts(head.into_head(), services))
}

/// Reads snapshot data as [`read_catalog`] does, but hands over the head,
/// then each service in order, without building the catalog (a restore
/// streams them to the log).
pub(crate) fn read_catalog_parts(
    input: &mut impl Read,
    mut on_head: impl FnMut(CatalogHead<'static>) -> Result<(), CodecError>,
    mut on_service: impl FnMut(Service) -> Result<(), CodecError>,
) -> Result<(), CodecError> {
    let (checked, mut frame, head) = read_head(input)?;
    let count = head.services();
    on_head(head.into_head())?;
    for n in 1..=count {
        let crc = read_frame(input, &mut frame, checked)?;
        on_service(decode_service(&frame, crc, n)?)?;
    }
    read_end(input, count)
}

/// Reads the prelude and the head frame: whether frames carry checksums,
/// the frame buffer to reuse, and the head.
fn read_head(input: &mut impl Read) -> Result<(bool, Vec<u8>, HeadIn), CodecError> {
    let checked = read_prelude(input)?;
    let mut frame = Vec::new();
    let crc = read_frame(input, &mut frame, checked)?;
    check_frame(&frame, crc, 0)?;
    let head: HeadIn = serde_json::from_slice(&frame)?;
    Ok((checked, frame, head))
}

fn read_end(input: &mut impl Read, count: u64) -> Result<(), CodecError> {
    let mut byte = [0u8; 1];
    if input.read(&mut byte)? != 0 {
        return Err(CodecError(format!(
            "snapshot data goes on after its {count} services"
        )));
    }
    Ok(())
}

/// Reads the magic and the format version; whether frames carry checksums.
fn read_prelude(input: &mut impl Read) -> Result<bool, CodecError> {
    let mut magic = [0u8; 4];
    input.read_exact(&mut magic)?;
    if &magic == PRE_RELEASE_MAGIC {
        return Err(CodecError(
            "snapshot data is in the unversioned format of pre-release builds; \
             this data directory cannot be read by this version"
                .into(),
        ));
    }
    if &magic != SNAPSHOT_MAGIC {
        return Err(CodecError("snapshot data has a bad header".into()));
    }
    let mut version = [0u8; 2];
    input.read_exact(&mut version)?;
    let version = u16::from_be_bytes(version);
    let checked = match version {
        SNAPSHOT_FORMAT | SNAPSHOT_FORMAT_V2 => true,
        SNAPSHOT_FORMAT_V1 => false,
        _ => {
            return Err(CodecError(format!(
                "snapshot data has format version {version}; this build reads versions \
                 {SNAPSHOT_FORMAT_V1} and {SNAPSHOT_FORMAT} (was the data directory written by \
                 a newer muster?)"
            )));
        }
    };
    Ok(checked)
}

/// Snapshots of at least this many services are decoded on several
/// threads; smaller ones on the caller's.
const PARALLEL_FROM_SERVICES: u64 = 16;

/// Raw frames read ahead of the decoding threads, at most.
const FRAMES_IN_FLIGHT: usize = 32;

/// Reads the `count` service frames on this thread and decodes them (CRC,
/// JSON, interning) on up to four others: decoding is most of a restart's
/// time, and services decode independently. The services come back in
/// the order they were written, and an error is the one of the first bad
/// frame, as a sequential read would report it.
fn read_services_in_parallel(
    input: &mut impl Read,
    checked: bool,
    count: u64,
) -> Result<Vec<Service>, CodecError> {
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .clamp(1, 4);
    let (frames_tx, frames_rx) =
        std::sync::mpsc::sync_channel::<(u64, Option<u32>, Vec<u8>)>(FRAMES_IN_FLIGHT);
    let frames_rx = std::sync::Mutex::new(frames_rx);
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let read_result = std::thread::scope(|scope| {
        for _ in 0..threads {
            let done_tx = done_tx.clone();
            let frames_rx = &frames_rx;
            scope.spawn(move || {
                loop {
                    let next = frames_rx
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .recv();
                    let Ok((n, crc, frame)) = next else { break };
                    if done_tx.send((n, decode_service(&frame, crc, n))).is_err() {
                        break;
                    }
                }
            });
        }
        drop(done_tx);
        let mut read = Ok(());
        for n in 1..=count {
            let mut frame = Vec::new();
            match read_frame(input, &mut frame, checked) {
                Ok(crc) => {
                    if frames_tx.send((n, crc, frame)).is_err() {
                        break;
                    }
                }
                Err(e) => {
                    read = Err((n, e));
                    break;
                }
            }
        }
        drop(frames_tx);
        read
    });
    let mut decoded: Vec<(u64, Result<Service, CodecError>)> = done_rx.into_iter().collect();
    decoded.sort_unstable_by_key(|(n, _)| *n);
    let read_failed_at = read_result.as_ref().err().map(|(n, _)| *n);
    let mut services = Vec::with_capacity(decoded.len());
    for (n, service) in decoded {
        if read_failed_at.is_some_and(|at| n > at) {
            break;
        }
        services.push(service?);
    }
    read_result.map_err(|(_, e)| e)?;
    Ok(services)
}

type Service = (muster_catalog::ServiceKey, muster_catalog::Service);

/// Service frame `n`: its checksum checked, then decoded.
fn decode_service(frame: &[u8], crc: Option<u32>, n: u64) -> Result<Service, CodecError> {
    check_frame(frame, crc, n)?;
    let entry: ServiceEntryIn = serde_json::from_slice(frame)?;
    entry.into_entry().map_err(CodecError)
}

/// Reads the next frame into `frame`; its stored CRC-32C when the format
/// has one.
fn read_frame(
    input: &mut impl Read,
    frame: &mut Vec<u8>,
    checked: bool,
) -> Result<Option<u32>, CodecError> {
    let mut len = [0u8; 4];
    input.read_exact(&mut len)?;
    let len = u32::from_be_bytes(len) as usize;
    let mut crc = [0u8; 4];
    if checked {
        input.read_exact(&mut crc)?;
    }
    frame.clear();
    let read = input.take(len as u64).read_to_end(frame)?;
    if read != len {
        return Err(CodecError(format!(
            "snapshot data ends inside a frame ({read} of {len} bytes)"
        )));
    }
    Ok(checked.then(|| u32::from_be_bytes(crc)))
}

/// Checks frame `n` (0: the head) against its stored CRC-32C, if any.
fn check_frame(frame: &[u8], crc: Option<u32>, n: u64) -> Result<(), CodecError> {
    let Some(stored) = crc else { return Ok(()) };
    let computed = crc32c::crc32c(frame);
    if stored != computed {
        let what = if n == 0 {
            "the head frame".to_string()
        } else {
            format!("frame {n} (service {n} of the snapshot)")
        };
        return Err(CodecError(format!(
            "snapshot data: {what} fails its checksum (stored {stored:08x}, computed \
             {computed:08x}): its bytes were changed after muster wrote them"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use std::sync::Arc;

    use muster_catalog::testing::scenario_catalog;
    use muster_catalog::{Change, Command, InstanceData, LeaseRef, ServiceKey};
    use muster_types::SharedStr;

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
    fn a_snapshot_taken_while_a_restore_is_staged_carries_it() {
        let mut c = catalog();
        let backup = catalog();
        c.apply(10, 1_000, &Command::RestoreBegin { id: 4 })
            .unwrap();
        let stage = Command::RestoreStage {
            id: 4,
            leases: backup.leases().cloned().collect(),
            instances: backup
                .service_entries()
                .flat_map(|(_, s)| s.instances.values().cloned())
                .collect(),
        };
        c.apply(11, 1_000, &stage).unwrap();
        let mut data = Vec::new();
        write_catalog(&c, &mut data).unwrap();
        let mut read = read_catalog(&mut data.as_slice()).unwrap();
        assert_eq!(read, c);
        // And the node that loads it commits the same restore.
        let commit = Command::RestoreCommit { id: 4 };
        assert_eq!(
            read.apply(12, 1_000, &commit).unwrap(),
            c.apply(12, 1_000, &commit).unwrap()
        );
        assert_eq!(read, c);
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

    /// A catalog of `services` services `svc-01`, `svc-02`..., frame `n`
    /// holding `svc-n` with two instances at `10.1.<n>.1` and `10.1.<n>.2`.
    fn many_services(services: u64) -> Catalog {
        let mut c = Catalog::new();
        let mut index = 0;
        for n in 1..=services {
            for i in 1..=2 {
                index += 1;
                let cmd = Command::Register {
                    namespace: "default".into(),
                    service: format!("svc-{n:02}"),
                    instance: InstanceData {
                        id: format!("i{i}"),
                        address: format!("10.1.{n}.{i}"),
                        port: 8080,
                        tags: BTreeSet::from([format!("t{n}")]),
                        meta: BTreeMap::new(),
                        version: None,
                        zone: None,
                        weight: 100,
                        checks: Vec::new(),
                    },
                    lease: LeaseRef::None,
                };
                c.apply(index, 1_000, &cmd).unwrap();
            }
        }
        c
    }

    #[test]
    fn many_services_decoded_on_several_threads_read_back_equal_and_in_order() {
        let c = many_services(3 * PARALLEL_FROM_SERVICES);
        let (data, _) = snapshot_text(&c);
        assert_eq!(read_catalog(&mut data.as_slice()).unwrap(), c);
    }

    #[test]
    fn of_many_services_the_first_bad_frame_is_the_one_named() {
        let c = many_services(3 * PARALLEL_FROM_SERVICES);
        let (data, _) = snapshot_text(&c);
        // Two bad frames: the error names the first, whichever thread
        // decodes it.
        let bad = tamper(&data, b"10.1.20.1", b"10.1.20.9");
        let bad = tamper(&bad, b"10.1.30.1", b"10.1.30.9");
        for _ in 0..20 {
            let e = read_catalog(&mut bad.as_slice()).unwrap_err().to_string();
            assert!(
                e.contains("frame 20 ") && e.contains("fails its checksum"),
                "{e}"
            );
        }
        // A bad frame before the data ends is named before the truncation.
        let cut = data.len() - 10;
        let e = read_catalog(&mut &tamper(&data, b"10.1.5.2", b"10.1.5.7")[..cut])
            .unwrap_err()
            .to_string();
        assert!(e.contains("frame 5 "), "{e}");
        // A truncation with every frame before it good is the truncation.
        let e = read_catalog(&mut &data[..cut]).unwrap_err().to_string();
        assert!(e.contains("ends inside") || e.contains("truncated"), "{e}");
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

    fn fixture(name: &str) -> std::path::PathBuf {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("testdata")
            .join(name)
    }

    /// `bytes` must be exactly the committed fixture `name` (rewritten when
    /// `MUSTER_UPDATE_FIXTURES` is set, for a new format version only).
    fn golden(name: &str, bytes: &[u8]) {
        let path = fixture(name);
        if std::env::var_os("MUSTER_UPDATE_FIXTURES").is_some() {
            std::fs::write(&path, bytes).unwrap();
        }
        let want = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert!(
            want == bytes,
            "what is written no longer matches {name}: data written by this version \
             would not be what older builds of the same format version read. A change \
             to the stored form needs a new format version, with fixtures of its own."
        );
    }

    /// One entry with every command, each field set.
    fn entry_with_every_command() -> Entry {
        use muster_catalog::Check;
        use muster_types::{CheckKind, Health};
        use openraft::{CommittedLeaderId, EntryPayload};

        let http = Check {
            id: "web".into(),
            name: "web answers".into(),
            kind: CheckKind::Http {
                url: "https://10.0.0.1:8443/health".into(),
                method: "HEAD".into(),
                headers: BTreeMap::from([("x-probe".to_string(), "muster".to_string())]),
                tls_skip_verify: true,
            },
            interval_ms: 5_000,
            timeout_ms: 1_000,
            success_before_passing: 2,
            failures_before_critical: 3,
            deregister_critical_after_ms: Some(600_000),
            notes: None,
            status: Health::Warning,
            output: String::new(),
            status_index: 0,
        };
        let ttl = Check {
            id: "check-2".into(),
            name: "ttl check check-2".into(),
            kind: CheckKind::Ttl,
            interval_ms: 30_000,
            timeout_ms: 10_000,
            success_before_passing: 1,
            failures_before_critical: 1,
            deregister_critical_after_ms: None,
            notes: None,
            status: Health::Critical,
            output: String::new(),
            status_index: 0,
        };
        let (ns, svc) = (|| "default".to_string(), || "payments".to_string());
        let commands = vec![
            Command::CreateLease {
                id: 0xfeed,
                ttl_ms: 10_000,
            },
            Command::Register {
                namespace: ns(),
                service: svc(),
                instance: InstanceData {
                    id: "pay-1".into(),
                    address: "10.0.0.1".into(),
                    port: 8080,
                    tags: BTreeSet::from(["v2".to_string(), "eu".to_string()]),
                    meta: BTreeMap::from([("team".to_string(), "core".to_string())]),
                    version: Some("1.4.2".into()),
                    zone: Some("eu-1a".into()),
                    weight: 50,
                    checks: vec![http.clone(), ttl],
                },
                lease: LeaseRef::Existing(0xfeed),
            },
            Command::Register {
                namespace: ns(),
                service: svc(),
                instance: InstanceData {
                    id: "pay-2".into(),
                    address: "pay-2.internal".into(),
                    port: 9090,
                    tags: BTreeSet::new(),
                    meta: BTreeMap::new(),
                    version: None,
                    zone: None,
                    weight: 100,
                    checks: Vec::new(),
                },
                lease: LeaseRef::Own {
                    id: 0xbeef,
                    ttl_ms: 5_000,
                },
            },
            Command::CheckStatus {
                namespace: ns(),
                service: svc(),
                id: "pay-1".into(),
                check: "web".into(),
                status: Health::Critical,
                output: "HTTP 503".into(),
            },
            Command::Maintenance {
                namespace: ns(),
                service: svc(),
                id: "pay-1".into(),
                reason: Some("deploy".into()),
            },
            Command::PutCheck {
                namespace: ns(),
                service: svc(),
                id: "pay-2".into(),
                check: http,
            },
            Command::RemoveCheck {
                namespace: ns(),
                service: svc(),
                id: "pay-2".into(),
                check: "web".into(),
            },
            Command::Deregister {
                namespace: ns(),
                service: svc(),
                id: "pay-2".into(),
            },
            Command::RevokeLease { id: 0xfeed },
            Command::ExpireLeases {
                ids: vec![0xbeef, 7],
            },
        ];
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(3, 1), 42),
            payload: EntryPayload::Normal(crate::types::Request {
                now_ms: 1_764_633_600_000,
                commands: commands.into(),
            }),
        }
    }

    fn blank_entry() -> Entry {
        Entry {
            log_id: LogId::new(openraft::CommittedLeaderId::new(1, 1), 1),
            payload: openraft::EntryPayload::Blank,
        }
    }

    #[test]
    fn log_entry_format_2_reads_and_writes_its_fixture() {
        let entry = entry_with_every_command();
        let bytes = encode_entry(&entry).unwrap();
        assert_eq!(bytes[0], LOG_FORMAT);
        golden("log-entry-v2.bin", &bytes);
        let stored = std::fs::read(fixture("log-entry-v2.bin")).unwrap();
        assert_eq!(decode_entry(&stored).unwrap(), entry);
        assert_eq!(decode_entry_log_id(&stored).unwrap(), entry.log_id);

        golden(
            "log-entry-blank-v2.bin",
            &encode_entry(&blank_entry()).unwrap(),
        );
        let stored = std::fs::read(fixture("log-entry-blank-v2.bin")).unwrap();
        assert_eq!(decode_entry(&stored).unwrap(), blank_entry());
    }

    /// Self-preservation came after format 2's first fixtures: its command
    /// and fields are an addition (fixtures of their own) that leaves what
    /// was written before unchanged (the fixtures above).
    #[test]
    fn preservation_is_stored_in_format_2() {
        use muster_catalog::Preservation;
        let entry = Entry {
            log_id: LogId::new(openraft::CommittedLeaderId::new(4, 2), 77),
            payload: openraft::EntryPayload::Normal(crate::types::Request {
                now_ms: 1_764_633_600_000,
                commands: [Preservation::Held, Preservation::Lapsed, Preservation::None]
                    .into_iter()
                    .map(|state| Command::PreserveLeases {
                        ids: vec![0xbeef, 7],
                        state,
                    })
                    .collect(),
            }),
        };
        golden("log-entry-preserve-v2.bin", &encode_entry(&entry).unwrap());
        let stored = std::fs::read(fixture("log-entry-preserve-v2.bin")).unwrap();
        assert_eq!(decode_entry(&stored).unwrap(), entry);

        let mut c = scenario_catalog();
        let ids: Vec<u64> = c.leases().map(|l| l.id).collect();
        assert!(ids.len() >= 2, "the scenario has leases to preserve");
        let next = c.applied_index() + 1;
        for (i, (id, state)) in ids
            .iter()
            .zip([Preservation::Held, Preservation::Lapsed])
            .enumerate()
        {
            let cmd = Command::PreserveLeases {
                ids: vec![*id],
                state,
            };
            c.apply(next + i as u64, 0, &cmd).unwrap();
        }
        let mut data = Vec::new();
        write_catalog(&c, &mut data).unwrap();
        golden("snapshot-preserved-v2.bin", &data);
        let stored = std::fs::read(fixture("snapshot-preserved-v2.bin")).unwrap();
        assert_eq!(read_catalog(&mut stored.as_slice()).unwrap(), c);
    }

    /// Retired node ids: a command of their own in the log, and a field of
    /// the snapshot's head written only when there are some (so the other
    /// fixtures, without any, are unchanged).
    #[test]
    fn retired_nodes_are_stored_in_format_2() {
        let entry = Entry {
            log_id: LogId::new(openraft::CommittedLeaderId::new(5, 1), 90),
            payload: openraft::EntryPayload::Normal(crate::types::Request {
                now_ms: 1_764_633_600_000,
                commands: vec![Command::RetireNode { id: 3 }].into(),
            }),
        };
        golden("log-entry-retire-v2.bin", &encode_entry(&entry).unwrap());
        let stored = std::fs::read(fixture("log-entry-retire-v2.bin")).unwrap();
        assert_eq!(decode_entry(&stored).unwrap(), entry);

        let mut c = scenario_catalog();
        let next = c.applied_index() + 1;
        for (i, id) in [3, 7, 3].into_iter().enumerate() {
            c.apply(next + i as u64, 0, &Command::RetireNode { id })
                .unwrap();
        }
        assert_eq!(
            c.retired_nodes().iter().copied().collect::<Vec<_>>(),
            [3, 7]
        );
        let mut data = Vec::new();
        write_catalog(&c, &mut data).unwrap();
        golden("snapshot-retired-v2.bin", &data);
        let stored = std::fs::read(fixture("snapshot-retired-v2.bin")).unwrap();
        assert_eq!(read_catalog(&mut stored.as_slice()).unwrap(), c);
    }

    /// ACL commands are log format 2 entries; a catalog holding ACL state
    /// is snapshot format 3 (a version-2 build would drop it silently), one
    /// without stays format 2.
    #[test]
    fn acl_state_is_stored_in_snapshot_format_3() {
        use muster_catalog::acl::{AclToken, Policy, ServiceAccess, ServiceRule};
        let token = AclToken {
            accessor: "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0".into(),
            secret_hash: "ab".repeat(32),
            description: "payments pods".into(),
            policies: vec!["payments-write".into()],
            management: false,
            created_ms: 1_764_633_600_000,
            expires_ms: Some(1_764_720_000_000),
        };
        let policy = Policy {
            name: "payments-write".into(),
            description: "write payments".into(),
            services: vec![ServiceRule {
                namespace: "*".into(),
                service: "pay*".into(),
                access: ServiceAccess::Write,
            }],
            operator: true,
            acl: false,
        };
        let commands = vec![
            Command::AclBootstrap {
                token: AclToken {
                    accessor: "management".into(),
                    secret_hash: "cd".repeat(32),
                    management: true,
                    policies: vec![],
                    expires_ms: None,
                    ..token.clone()
                },
            },
            Command::AclSetPolicy {
                policy: policy.clone(),
            },
            Command::AclSetToken {
                token: token.clone(),
            },
            Command::AclDeleteToken {
                accessor: "management".into(),
            },
            Command::AclDeletePolicy {
                name: "gone".into(),
            },
        ];
        let entry = Entry {
            log_id: LogId::new(openraft::CommittedLeaderId::new(5, 1), 91),
            payload: openraft::EntryPayload::Normal(crate::types::Request {
                now_ms: 1_764_633_600_000,
                commands: commands.clone().into(),
            }),
        };
        golden("log-entry-acl-v2.bin", &encode_entry(&entry).unwrap());
        let stored = std::fs::read(fixture("log-entry-acl-v2.bin")).unwrap();
        assert_eq!(decode_entry(&stored).unwrap(), entry);

        let mut c = scenario_catalog();
        let mut data = Vec::new();
        write_catalog(&c, &mut data).unwrap();
        assert_eq!(&data[4..6], &2u16.to_be_bytes(), "no ACL state: format 2");
        let next = c.applied_index() + 1;
        for (i, cmd) in commands[..3].iter().enumerate() {
            c.apply(next + i as u64, 0, cmd).unwrap();
        }
        let mut data = Vec::new();
        write_catalog(&c, &mut data).unwrap();
        assert_eq!(&data[4..6], &3u16.to_be_bytes(), "ACL state: format 3");
        golden("snapshot-acl-v3.bin", &data);
        let stored = std::fs::read(fixture("snapshot-acl-v3.bin")).unwrap();
        let read = read_catalog(&mut stored.as_slice()).unwrap();
        assert_eq!(read, c);
        assert_eq!(read.acl().token(&token.accessor), Some(&token));
        assert_eq!(read.acl().policy("payments-write"), Some(&policy));
        assert!(read.acl().bootstrapped);
        // Looked up by the secret's hash, as requests are.
        assert_eq!(
            read.acl()
                .token_by_hash(&token.secret_hash)
                .map(|t| &t.accessor),
            Some(&token.accessor)
        );
    }

    /// Version 1 (no checksum) is still read, as its fixtures were written.
    #[test]
    fn log_entry_format_1_is_still_read() {
        let stored = std::fs::read(fixture("log-entry-v1.bin")).unwrap();
        assert_eq!(stored[0], 1);
        assert_eq!(decode_entry(&stored).unwrap(), entry_with_every_command());
        let stored = std::fs::read(fixture("log-entry-blank-v1.bin")).unwrap();
        assert_eq!(decode_entry(&stored).unwrap(), blank_entry());
    }

    #[test]
    fn snapshot_format_2_reads_and_writes_its_fixture() {
        // Services in two namespaces; own and shared leases; checks, one
        // critical; maintenance; a history with current, replaced and
        // deleted instances.
        let c = scenario_catalog();
        let mut data = Vec::new();
        write_catalog(&c, &mut data).unwrap();
        assert_eq!(&data[..6], b"MSNP\x00\x02");
        golden("snapshot-v2.bin", &data);
        let stored = std::fs::read(fixture("snapshot-v2.bin")).unwrap();
        assert_eq!(read_catalog(&mut stored.as_slice()).unwrap(), c);
    }

    #[test]
    fn snapshot_format_1_is_still_read() {
        let stored = std::fs::read(fixture("snapshot-v1.bin")).unwrap();
        assert_eq!(&stored[..6], b"MSNP\x00\x01");
        assert_eq!(
            read_catalog(&mut stored.as_slice()).unwrap(),
            scenario_catalog()
        );
    }

    /// Replaces the first `from` in `data` with `to` (same length): a
    /// change that keeps the JSON valid.
    fn tamper(data: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
        assert_eq!(from.len(), to.len());
        let at = data
            .windows(from.len())
            .position(|w| w == from)
            .expect("the bytes to change are there");
        let mut out = data.to_vec();
        out[at..at + to.len()].copy_from_slice(to);
        out
    }

    #[test]
    fn a_changed_byte_inside_valid_json_fails_the_checksum() {
        let bytes = encode_entry(&entry_with_every_command()).unwrap();
        let bad = tamper(&bytes, b"10.0.0.1", b"10.0.0.7");
        let e = decode_entry(&bad).unwrap_err().to_string();
        assert!(e.contains("fails its checksum"), "{e}");
        assert!(check_entry_format(&bad).is_err());
        assert!(decode_entry_log_id(&bad).is_err());

        let (data, _) = snapshot_text(&scenario_catalog());
        let bad = tamper(&data, b"10.0.0.1", b"10.0.0.7");
        let e = read_catalog(&mut bad.as_slice()).unwrap_err().to_string();
        assert!(e.contains("fails its checksum"), "{e}");
        assert!(e.contains("frame 1 "), "{e}");
        // The head frame too.
        let bad = tamper(&data, br#""ttl_ms":10000"#, br#""ttl_ms":90000"#);
        let e = read_catalog(&mut bad.as_slice()).unwrap_err().to_string();
        assert!(e.contains("the head frame fails its checksum"), "{e}");
    }

    fn snapshot_text(c: &Catalog) -> (Vec<u8>, String) {
        let mut data = Vec::new();
        write_catalog(c, &mut data).unwrap();
        let text = String::from_utf8_lossy(&data).into_owned();
        (data, text)
    }

    #[test]
    fn histories_name_current_instances_by_id() {
        let c = scenario_catalog();
        let (data, text) = snapshot_text(&c);
        assert!(
            text.contains(r#"{"index":5,"change":{"Current":"a"}}"#),
            "{text}"
        );
        assert!(
            text.contains(r#"{"index":8,"change":{"Delete":"d"}}"#),
            "{text}"
        );
        // An instance replaced since is still written in full.
        assert!(
            text.contains(r#"{"index":2,"change":{"Upsert":{"id":"a""#),
            "{text}"
        );
        let back = read_catalog(&mut data.as_slice()).unwrap();
        assert_eq!(back, c);
        assert_eq!(snapshot_text(&back).0, data);
    }

    #[test]
    fn a_history_naming_an_instance_the_service_lacks_is_refused() {
        let c = scenario_catalog();
        let (key, svc) = c
            .service_entries()
            .find(|(k, _)| k.service.as_str() == "pay")
            .unwrap();
        let json = serde_json::to_string(&service_out(key, svc))
            .unwrap()
            .replace(r#"{"Current":"a"}"#, r#"{"Current":"z"}"#);
        let entry: ServiceEntryIn = serde_json::from_str(&json).unwrap();
        let err = entry.into_entry().unwrap_err();
        assert!(err.contains(r#"names instance "z""#), "{err}");
    }

    #[test]
    fn a_restored_history_shares_the_current_instances_and_strings() {
        let (data, _) = snapshot_text(&scenario_catalog());
        let restored = read_catalog(&mut data.as_slice()).unwrap();
        let k = ServiceKey::new("default", "pay");
        let svc = restored.service(&k).unwrap();
        let mut shared = 0;
        for ch in restored.changes_since(&k, 0).unwrap() {
            if let Change::Upsert(i) = ch.change
                && let Some(current) = svc.instances.get(&i.id)
                && *current == i
            {
                assert!(Arc::ptr_eq(current, &i), "history holds a copy of {}", i.id);
                shared += 1;
            }
        }
        assert_eq!(shared, 2, "the last upserts of a and b");
        // Decoding interns: the restored instances share their strings.
        let (a, b) = (
            svc.instances.get("a").unwrap(),
            svc.instances.get("b").unwrap(),
        );
        assert!(SharedStr::ptr_eq(&a.namespace, &b.namespace));
        assert!(SharedStr::ptr_eq(&a.service, &b.service));
        assert!(SharedStr::ptr_eq(
            a.version.as_ref().unwrap(),
            b.version.as_ref().unwrap()
        ));
        assert!(SharedStr::ptr_eq(
            &a.tags.as_slice()[0],
            &b.tags.as_slice()[0]
        ));
    }

    proptest::proptest! {
        /// Whatever commands built it, a catalog's snapshot restores the
        /// same catalog, whose history points at its current instances.
        #[test]
        fn any_catalog_restores_equal(
            cmds in proptest::collection::vec(muster_catalog::testing::arb_command(), 0..60),
        ) {
            let (c, _) = muster_catalog::testing::run(&cmds);
            let (data, _) = snapshot_text(&c);
            let restored = read_catalog(&mut data.as_slice()).unwrap();
            proptest::prop_assert_eq!(&restored, &c);
            for k in restored.service_keys() {
                let svc = restored.service(k).unwrap();
                for ch in restored.changes_since(k, 0).into_iter().flatten() {
                    if let Change::Upsert(i) = ch.change
                        && let Some(current) = svc.instances.get(&i.id)
                        && *current == i
                    {
                        proptest::prop_assert!(Arc::ptr_eq(current, &i));
                    }
                }
            }
        }
    }

    #[test]
    fn unknown_format_versions_are_refused() {
        let mut entry = encode_entry(&entry_with_every_command()).unwrap();
        entry[0] = 3;
        let e = decode_entry(&entry).unwrap_err().to_string();
        assert!(e.contains("format version 3"), "{e}");
        let v1 = std::fs::read(fixture("log-entry-v1.bin")).unwrap();
        let e = decode_entry(&v1[1..]).unwrap_err().to_string();
        assert!(e.contains("pre-release"), "{e}");

        let mut data = Vec::new();
        write_catalog(&catalog(), &mut data).unwrap();
        data[5] = 9;
        let e = read_catalog(&mut data.as_slice()).unwrap_err().to_string();
        assert!(e.contains("format version 9"), "{e}");
        data[..4].copy_from_slice(b"MCF1");
        let e = read_catalog(&mut data.as_slice()).unwrap_err().to_string();
        assert!(e.contains("pre-release"), "{e}");
    }
}
