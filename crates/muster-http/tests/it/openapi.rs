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

/// Every answer an operation can give is in the document, so a client
/// generated from it (and the schemathesis run of python/tests) knows
/// them: a 400 wherever a parameter or a body can be wrong, 408 and 413
/// wherever a body is read, 503 and 507 wherever the log is written (or,
/// for renewals, the leader and a writable store are needed), and
/// `X-Muster-Index` on the answers that carry it.
#[test]
fn every_operation_documents_the_errors_it_can_answer() {
    let doc: serde_json::Value = serde_json::from_str(&muster_http::openapi::document()).unwrap();
    let mut missing = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            let responses = op["responses"].as_object().unwrap();
            let mut need = Vec::new();
            let params = op["parameters"].as_array().is_some_and(|p| !p.is_empty());
            let body = op.get("requestBody").is_some();
            if params || body {
                need.push("400");
            }
            if body {
                need.extend(["408", "413"]);
            }
            // `POST /v1/watch` reads: its body is a list of queries.
            let writes =
                matches!(method.as_str(), "put" | "post" | "delete") && path != "/v1/watch";
            if writes {
                need.extend(["503", "507"]);
            }
            for status in need {
                match responses.get(status) {
                    None => missing.push(format!("{method} {path}: {status}")),
                    Some(r) => {
                        let schema = &r["content"]["application/json"]["schema"]["$ref"];
                        if schema != "#/components/schemas/ErrorBody" {
                            missing.push(format!("{method} {path}: {status} without ErrorBody"));
                        }
                    }
                }
            }
        }
    }
    assert!(missing.is_empty(), "undocumented answers: {missing:#?}");
}

#[test]
fn reads_document_their_index_header_and_names_their_rules() {
    let doc: serde_json::Value = serde_json::from_str(&muster_http::openapi::document()).unwrap();
    for (path, method, status) in [
        ("/v1/services", "get", "200"),
        ("/v1/services/{service}/instances", "get", "200"),
        ("/v1/services/{service}/instances/{id}", "get", "200"),
        ("/v1/services/{service}/instances/{id}", "put", "200"),
        ("/v1/leases", "post", "201"),
        ("/v1/leases/{id}", "get", "200"),
    ] {
        let headers = &doc["paths"][path][method]["responses"][status]["headers"];
        assert!(
            headers.get("X-Muster-Index").is_some(),
            "{method} {path} {status}: no X-Muster-Index"
        );
    }
    let params = |path: &str, method: &str| -> Vec<serde_json::Value> {
        doc["paths"][path][method]["parameters"]
            .as_array()
            .unwrap()
            .clone()
    };
    let pattern = |ps: &[serde_json::Value], name: &str| -> String {
        let p = ps.iter().find(|p| p["name"] == name).unwrap();
        p["schema"]["pattern"].as_str().unwrap().to_string()
    };
    let instance = params("/v1/services/{service}/instances/{id}", "get");
    assert_eq!(pattern(&instance, "service"), muster_types::LABEL_PATTERN);
    assert_eq!(pattern(&instance, "namespace"), muster_types::LABEL_PATTERN);
    assert_eq!(pattern(&instance, "id"), muster_types::ID_PATTERN);
    for path in ["/v1/services", "/v1/services/{service}/instances"] {
        let ps = params(path, "get");
        let index = ps.iter().find(|p| p["name"] == "index").unwrap();
        // The server takes any u64; `int64` would say the upper half is out.
        assert_eq!(index["schema"].get("format"), None, "{path}: {index:#}");
        assert_eq!(index["schema"]["minimum"], 0, "{path}: {index:#}");
    }
    let lease = params("/v1/leases/{id}", "get");
    assert_eq!(pattern(&lease, "id"), muster_types::LEASE_ID_PATTERN);
    let register = &doc["components"]["schemas"]["RegisterRequest"]["properties"];
    let limits = [
        (
            &register["address"]["maxLength"],
            muster_types::limits::MAX_ADDRESS_LEN,
        ),
        (
            &register["version"]["maxLength"],
            muster_types::limits::MAX_VERSION_LEN,
        ),
        (
            &register["zone"]["maxLength"],
            muster_types::limits::MAX_VERSION_LEN,
        ),
        (
            &register["tags"]["maxItems"],
            muster_types::limits::MAX_TAGS,
        ),
        (
            &register["checks"]["maxItems"],
            muster_types::limits::MAX_CHECKS,
        ),
        (
            &register["weight"]["maximum"],
            muster_types::limits::MAX_WEIGHT as usize,
        ),
    ];
    for (documented, limit) in limits {
        assert_eq!(documented.as_u64(), Some(limit as u64), "{register:#}");
    }
}
