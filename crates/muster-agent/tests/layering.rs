//! The direction of dependencies between the workspace's crates, read from
//! their manifests: front-ends reach the catalog and the raft node only
//! through the registry, openraft stays inside muster-raft, and the pure
//! core stays pure.

use std::collections::BTreeMap;
use std::path::Path;

/// Every crate of the workspace with the names of its normal (not dev or
/// build) dependencies.
fn crates() -> BTreeMap<String, Vec<String>> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut out = BTreeMap::new();
    for entry in std::fs::read_dir(&root).unwrap() {
        let manifest = entry.unwrap().path().join("Cargo.toml");
        let Ok(text) = std::fs::read_to_string(&manifest) else {
            continue;
        };
        let doc: toml::Table = toml::from_str(&text).unwrap();
        let name = doc["package"]["name"].as_str().unwrap().to_string();
        let deps = doc
            .get("dependencies")
            .and_then(|d| d.as_table())
            .map(|t| t.keys().cloned().collect())
            .unwrap_or_default();
        out.insert(name, deps);
    }
    out
}

fn depends(crates: &BTreeMap<String, Vec<String>>, krate: &str, on: &str) -> bool {
    crates[krate].iter().any(|d| d == on)
}

#[test]
fn the_workspace_is_what_this_test_knows() {
    let crates = crates();
    for known in [
        "muster-types",
        "muster-catalog",
        "muster-store",
        "muster-raft",
        "muster-registry",
        "muster-http",
        "muster-agent",
        "muster-client",
        "muster",
        "muster-bench",
        "muster-fuzz",
        "muster-tls",
    ] {
        assert!(crates.contains_key(known), "{known} is missing: {crates:?}");
    }
}

#[test]
fn only_the_registry_reaches_the_catalog_and_the_raft_node() {
    let crates = crates();
    let core = ["muster-catalog", "muster-store", "muster-raft"];
    for name in crates.keys() {
        // The fuzz targets' bodies decode stored data as a starting node
        // does: a test harness, not a front-end, and linked into no binary.
        assert!(
            !depends(&crates, name, "muster-fuzz"),
            "{name} depends on the fuzz targets' harness"
        );
        if name == "muster-fuzz" {
            continue;
        }
        for inner in core {
            let allowed = match inner {
                "muster-catalog" => ["muster-raft", "muster-registry"].contains(&name.as_str()),
                "muster-store" => name == "muster-raft",
                "muster-raft" => name == "muster-registry",
                _ => unreachable!(),
            };
            assert!(
                allowed || !depends(&crates, name, inner),
                "{name} depends on {inner}: front-ends go through muster-registry"
            );
        }
    }
}

#[test]
fn openraft_is_named_by_one_crate() {
    let crates = crates();
    for name in crates.keys() {
        assert_eq!(
            depends(&crates, name, "openraft"),
            name == "muster-raft",
            "{name} and openraft"
        );
    }
}

#[test]
fn the_registry_speaks_no_protocol_and_the_core_does_no_io() {
    let crates = crates();
    for proto in ["axum", "hyper", "utoipa", "serde_json"] {
        assert!(
            !depends(&crates, "muster-registry", proto),
            "muster-registry depends on {proto}: protocols belong to front-ends"
        );
    }
    for io in ["tokio", "redb", "reqwest", "openraft"] {
        assert!(
            !depends(&crates, "muster-catalog", io),
            "muster-catalog depends on {io}: the core is pure"
        );
    }
    // Front-ends are mounted by the composition root, not by each other.
    assert!(depends(&crates, "muster-agent", "muster-http"));
    assert!(!depends(&crates, "muster-http", "muster-agent"));
}
