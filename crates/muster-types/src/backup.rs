//! The backup file (`muster snapshot save`): a small header, the snapshot
//! data of the catalog (the raft crate's frames, each with its own
//! CRC-32C), and a trailer with a CRC-32C over everything before it.
//!
//! ```text
//! "MBAK" | format u16 BE | header length u32 BE | header JSON (BackupHeader)
//! snapshot data ("MSNP", its version, frames)
//! "MEND" | CRC-32C u32 BE of every byte before "MEND"
//! ```
//!
//! Shared by the server, which writes and restores it, and the CLI, which
//! checks it before it renames a download into place or sends a restore,
//! and shows its header (`muster snapshot inspect`). The checksum is read
//! as the file streams by: nothing holds the whole file.

use std::io::Read;

use serde::{Deserialize, Serialize};

/// First bytes of a backup file.
pub const MAGIC: &[u8; 4] = b"MBAK";
/// Version of the backup file format.
pub const FORMAT: u16 = 1;
/// First bytes of the trailer.
pub const TRAILER_MAGIC: &[u8; 4] = b"MEND";
/// Length of the trailer: its magic and the CRC-32C.
pub const TRAILER_LEN: usize = 8;
/// The longest header accepted.
const MAX_HEADER: u32 = 64 * 1024;

/// What a backup holds, at its start.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct BackupHeader {
    /// The log index the backup reflects: every write acknowledged before
    /// the save began, and nothing after this index.
    pub index: u64,
    /// The term of the cluster when it was saved.
    pub term: u64,
    /// When it was saved, Unix milliseconds.
    pub created_at_ms: u64,
    /// The node that wrote it.
    pub node_id: u64,
    /// Services in it.
    pub services: u64,
    /// Instances in it.
    pub instances: u64,
    /// Leases in it.
    pub leases: u64,
}

/// Why a backup file is refused.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    /// Reading failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The file is not a whole, unchanged backup.
    #[error("not a valid muster backup: {0}")]
    Invalid(String),
}

/// The bytes a backup starts with: magic, format, header.
pub fn encode_header(header: &BackupHeader) -> Vec<u8> {
    let json = serde_json::to_vec(header).expect("a header always encodes");
    let mut out = Vec::with_capacity(10 + json.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&FORMAT.to_be_bytes());
    out.extend_from_slice(&(json.len() as u32).to_be_bytes());
    out.extend_from_slice(&json);
    out
}

/// The trailer of a backup whose bytes before it have CRC-32C `crc`.
pub fn encode_trailer(crc: u32) -> [u8; TRAILER_LEN] {
    let mut out = [0u8; TRAILER_LEN];
    out[..4].copy_from_slice(TRAILER_MAGIC);
    out[4..].copy_from_slice(&crc.to_be_bytes());
    out
}

fn invalid(what: impl Into<String>) -> BackupError {
    BackupError::Invalid(what.into())
}

fn read_exact(input: &mut impl Read, buf: &mut [u8], what: &str) -> Result<(), BackupError> {
    input.read_exact(buf).map_err(|e| {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            invalid(format!("the file is truncated (it ends inside {what})"))
        } else {
            BackupError::Io(e)
        }
    })
}

/// Reads the header at the start of a backup (not checking the rest).
/// Returns it and the number of bytes it took.
pub fn read_header(input: &mut impl Read) -> Result<(BackupHeader, usize), BackupError> {
    let mut fixed = [0u8; 10];
    read_exact(input, &mut fixed, "its header")?;
    if &fixed[..4] != MAGIC {
        return Err(invalid(
            "it does not start with MBAK (not a muster backup file)",
        ));
    }
    let format = u16::from_be_bytes([fixed[4], fixed[5]]);
    if format != FORMAT {
        return Err(invalid(format!(
            "format version {format}; this build reads version {FORMAT}"
        )));
    }
    let len = u32::from_be_bytes([fixed[6], fixed[7], fixed[8], fixed[9]]);
    if len > MAX_HEADER {
        return Err(invalid(format!("a header of {len} bytes")));
    }
    let mut json = vec![0u8; len as usize];
    read_exact(input, &mut json, "its header")?;
    let header = serde_json::from_slice(&json)
        .map_err(|e| invalid(format!("its header does not decode: {e}")))?;
    Ok((header, 10 + len as usize))
}

/// Checks a backup's trailer as its bytes stream by: feed every byte to
/// [`Verifier::update`], then [`Verifier::finish`]. Holds back only the
/// last [`TRAILER_LEN`] bytes seen.
#[derive(Debug, Default)]
pub struct Verifier {
    crc: u32,
    tail: Vec<u8>,
    len: u64,
}

impl Verifier {
    /// A verifier at the start of a file.
    pub fn new() -> Self {
        Self::default()
    }

    /// The next bytes of the file.
    pub fn update(&mut self, bytes: &[u8]) {
        self.len += bytes.len() as u64;
        if bytes.len() >= TRAILER_LEN {
            self.crc = crc32c::crc32c_append(self.crc, &self.tail);
            let (body, tail) = bytes.split_at(bytes.len() - TRAILER_LEN);
            self.crc = crc32c::crc32c_append(self.crc, body);
            self.tail.clear();
            self.tail.extend_from_slice(tail);
        } else {
            self.tail.extend_from_slice(bytes);
            if self.tail.len() > TRAILER_LEN {
                let extra = self.tail.len() - TRAILER_LEN;
                self.crc = crc32c::crc32c_append(self.crc, &self.tail[..extra]);
                self.tail.drain(..extra);
            }
        }
    }

    /// Bytes seen so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether no byte was seen.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether the file ended with a trailer matching its bytes.
    pub fn finish(&self) -> Result<(), BackupError> {
        if self.tail.len() < TRAILER_LEN || &self.tail[..4] != TRAILER_MAGIC {
            return Err(invalid(
                "it has no trailer: the file is truncated (or was not written whole)",
            ));
        }
        let stored = u32::from_be_bytes([self.tail[4], self.tail[5], self.tail[6], self.tail[7]]);
        if stored != self.crc {
            return Err(invalid(format!(
                "its checksum does not match (stored {stored:08x}, computed {:08x}): \
                 the file was changed or damaged after it was written",
                self.crc
            )));
        }
        Ok(())
    }
}

/// Reads a whole backup: its header, and its checksum checked over every
/// byte. `progress` is called with the bytes read so far.
pub fn verify(
    input: &mut impl Read,
    mut progress: impl FnMut(u64),
) -> Result<BackupHeader, BackupError> {
    let mut verifier = Verifier::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut first = Vec::new();
    let mut header = None;
    loop {
        let n = input.read(&mut buf)?;
        if n == 0 {
            break;
        }
        verifier.update(&buf[..n]);
        if header.is_none() {
            first.extend_from_slice(&buf[..n]);
            match read_header(&mut first.as_slice()) {
                Ok((h, _)) => header = Some(h),
                Err(BackupError::Invalid(m)) if m.contains("truncated") => {}
                Err(e) => return Err(e),
            }
        }
        progress(verifier.len());
    }
    let header = match header {
        Some(h) => h,
        None => read_header(&mut first.as_slice())?.0,
    };
    verifier.finish()?;
    Ok(header)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(payload: &[u8]) -> Vec<u8> {
        let header = BackupHeader {
            index: 42,
            term: 3,
            created_at_ms: 1_700_000_000_000,
            node_id: 1,
            services: 2,
            instances: 5,
            leases: 1,
        };
        let mut out = encode_header(&header);
        out.extend_from_slice(payload);
        let crc = crc32c::crc32c(&out);
        out.extend_from_slice(&encode_trailer(crc));
        out
    }

    #[test]
    fn a_whole_file_verifies_in_any_chunking_and_a_changed_or_short_one_does_not() {
        let data = file(&(0..5000u32).map(|i| i as u8).collect::<Vec<_>>());
        for chunk in [1, 3, 8, 9, 100, 4096, data.len()] {
            let mut v = Verifier::new();
            for c in data.chunks(chunk) {
                v.update(c);
            }
            v.finish().unwrap_or_else(|e| panic!("chunk {chunk}: {e}"));
        }
        let h = verify(&mut data.as_slice(), |_| {}).unwrap();
        assert_eq!((h.index, h.instances), (42, 5));

        for at in [0, 5, 20, 2000, data.len() - 3] {
            let mut bad = data.clone();
            bad[at] ^= 0x40;
            let e = verify(&mut bad.as_slice(), |_| {}).unwrap_err();
            assert!(matches!(e, BackupError::Invalid(_)), "flip at {at}: {e}");
        }
        for cut in [0, 4, 12, data.len() / 2, data.len() - 1] {
            let e = verify(&mut &data[..cut], |_| {}).unwrap_err().to_string();
            assert!(e.contains("truncated"), "cut at {cut}: {e}");
        }
    }
}
