//! The bodies of muster's fuzz targets: one function per target of
//! `fuzz/fuzz_targets/`, each taking arbitrary bytes through what muster
//! does with such input at its edges (a registration body, a discovery
//! query string, a `Last-Event-ID` header) or at start-up (a stored log
//! entry, snapshot data).
//!
//! Every input must be answered with a value or a typed error; a panic is a
//! bug. Where it is cheap, a target checks more than that: what decodes
//! encodes and decodes back equal, what is accepted is what was sent, and
//! two answers that must agree do.
//!
//! The bodies live here, in the workspace, rather than in `fuzz/` (built
//! only by `cargo +nightly fuzz`), so that `tests/corpus.rs` runs every
//! committed input of `fuzz/corpus/<target>/` through them on the stable
//! toolchain, in every run of the test suite.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod query;
mod registration;
mod storage;

pub use query::{discovery_query, last_event_id};
pub use registration::registration;
pub use storage::{log_entry, snapshot};

/// The body of a fuzz target: takes any bytes, panics only on a bug.
pub type Target = fn(&[u8]);

/// Every target: its name (that of its file in `fuzz/fuzz_targets/` and
/// its corpus directory in `fuzz/corpus/`) and its body.
pub const TARGETS: &[(&str, Target)] = &[
    ("registration", registration),
    ("discovery_query", discovery_query),
    ("last_event_id", last_event_id),
    ("log_entry", log_entry),
    ("snapshot", snapshot),
];
