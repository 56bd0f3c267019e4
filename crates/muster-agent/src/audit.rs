//! The audit file: one JSON line per audited write, appended.

use std::io::Write as _;
use std::sync::Mutex;

use muster_registry::{AuditRecord, AuditSink};
use serde::Serialize;

/// An append-only file of JSON lines, created `0600`.
pub(crate) struct AuditFile(Mutex<std::fs::File>);

impl AuditFile {
    pub(crate) fn open(path: &std::path::Path) -> std::io::Result<AuditFile> {
        let mut o = std::fs::OpenOptions::new();
        o.create(true).append(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut o, 0o600);
        Ok(AuditFile(Mutex::new(o.open(path)?)))
    }
}

#[derive(Serialize)]
struct Line<'a> {
    time_ms: u64,
    accessor: &'a str,
    op: &'a str,
    target: &'a str,
    result: &'a str,
    error: Option<&'a str>,
}

impl AuditSink for AuditFile {
    fn record(&self, r: &AuditRecord) {
        let mut line = serde_json::to_vec(&Line {
            time_ms: r.time_ms,
            accessor: &r.accessor,
            op: r.op,
            target: &r.target,
            result: r.result,
            error: r.error.as_deref(),
        })
        .expect("an audit line serialises");
        line.push(b'\n');
        // One write per line, in append mode: lines never interleave.
        let mut f = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Err(e) = f.write_all(&line) {
            tracing::error!(error = %e, "could not write to the audit file");
            metrics::counter!("muster_audit_file_errors_total").increment(1);
        }
    }
}
