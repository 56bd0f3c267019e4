//! Every committed input of `fuzz/corpus/<target>/` goes through its
//! target's body, on the stable toolchain, in every run of the tests: the
//! seeds stay valid examples and the inputs that once found a bug keep
//! being checked without `cargo fuzz`.

use std::fs;
use std::path::{Path, PathBuf};

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz")
}

/// The names of the entries of `dir`, sorted.
fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    names
}

fn targets() -> Vec<String> {
    let mut t: Vec<String> = muster_fuzz::TARGETS
        .iter()
        .map(|(name, _)| name.to_string())
        .collect();
    t.sort();
    t
}

/// Runs every input of one target's corpus; the panic of a failing one
/// names its file.
fn check(target: &str) {
    let (_, body) = muster_fuzz::TARGETS
        .iter()
        .find(|(name, _)| *name == target)
        .expect("a known target");
    let dir = fuzz_dir().join("corpus").join(target);
    let inputs = names(&dir);
    assert!(!inputs.is_empty(), "{} has no seeds", dir.display());
    for name in inputs {
        let path = dir.join(&name);
        let data = fs::read(&path).unwrap();
        eprintln!("{target}: {name} ({} bytes)", data.len());
        body(&data);
    }
}

#[test]
fn registration_corpus() {
    check("registration");
}

#[test]
fn discovery_query_corpus() {
    check("discovery_query");
}

#[test]
fn last_event_id_corpus() {
    check("last_event_id");
}

#[test]
fn log_entry_corpus() {
    check("log_entry");
}

#[test]
fn snapshot_corpus() {
    check("snapshot");
}

/// Each target has a fuzz target file, a corpus and a test above; nothing
/// else is there.
#[test]
fn every_target_has_a_file_and_a_corpus() {
    let fuzz = fuzz_dir();
    assert_eq!(names(&fuzz.join("corpus")), targets());
    let files: Vec<String> = targets().iter().map(|t| format!("{t}.rs")).collect();
    assert_eq!(names(&fuzz.join("fuzz_targets")), files);
    let manifest = fs::read_to_string(fuzz.join("Cargo.toml")).unwrap();
    for t in targets() {
        assert!(
            manifest.contains(&format!("name = \"{t}\"")),
            "fuzz/Cargo.toml has no [[bin]] {t}"
        );
        let source = fs::read_to_string(fuzz.join("fuzz_targets").join(format!("{t}.rs"))).unwrap();
        assert!(
            source.contains(&format!("muster_fuzz::{t}(")),
            "fuzz_targets/{t}.rs does not call muster_fuzz::{t}"
        );
    }
}
