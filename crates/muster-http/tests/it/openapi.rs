//! The committed OpenAPI document must match the code.

use std::path::PathBuf;

use crate::harness::TestServer;

fn committed_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../docs/openapi.json")
}

#[test]
fn committed_openapi_is_current() {
    let generated = muster_http::openapi::document();
    let path = committed_path();
    if std::env::var_os("MUSTER_UPDATE_OPENAPI").is_some() {
        std::fs::write(&path, &generated).unwrap();
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == generated,
        "docs/openapi.json is stale: run `MUSTER_UPDATE_OPENAPI=1 cargo test -p muster-http --test it openapi` and commit it"
    );
}

#[tokio::test]
async fn the_server_serves_the_document_with_every_route() {
    let s = TestServer::start().await;
    let (status, doc, _) = s.get("/v1/openapi.json").await;
    assert_eq!(status, 200);
    for p in [
        "/v1/services/{service}/instances/{id}",
        "/v1/services/{service}/instances/{id}/heartbeat",
        "/v1/services/{service}/instances",
        "/v1/services",
        "/v1/watch",
        "/v1/leases",
        "/v1/leases/{id}/renew",
        "/v1/leases/{id}",
        "/v1/leases/renew",
        "/v1/cluster",
        "/v1/openapi.json",
        "/metrics",
        "/healthz",
    ] {
        assert!(doc["paths"].get(p).is_some(), "missing {p}");
    }
    s.stop().await;
}
