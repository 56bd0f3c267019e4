//! Bad input gets its typed error and leaves the catalog unchanged.

use serde_json::{Value, json};

use crate::harness::{TestServer, raw_request};

/// name, path, JSON body or raw body, expected status, code and field.
type Case<'a> = (
    &'a str,
    String,
    Option<Value>,
    Option<String>,
    u16,
    &'a str,
    Option<&'a str>,
);

async fn catalog_fingerprint(s: &TestServer) -> (Value, Value, u64) {
    let (_, services, _) = s.get("/v1/services").await;
    let (_, pay, _) = s.get("/v1/services/pay/instances?health=any").await;
    let (_, cluster, _) = s.get("/v1/cluster").await;
    (services, pay, cluster["applied_index"].as_u64().unwrap())
}

#[tokio::test]
async fn bad_input_is_refused_and_changes_nothing() {
    let s = TestServer::start().await;
    s.register("pay", "p1", json!({"tags": ["v1"]})).await;
    let before = catalog_fingerprint(&s).await;
    let ok = json!({"address": "10.0.0.2", "port": 8080});
    let with = |k: &str, v: Value| {
        let mut b = ok.clone();
        b[k] = v;
        b
    };

    let cases: Vec<Case> = vec![
        (
            "malformed json",
            "/v1/services/pay/instances/p2".into(),
            None,
            Some("{\"address\": ".into()),
            400,
            "malformed_json",
            None,
        ),
        (
            "unknown field",
            "/v1/services/pay/instances/p2".into(),
            Some(with("colour", json!("blue"))),
            None,
            400,
            "invalid_field",
            Some("colour"),
        ),
        (
            "nested wrong type",
            "/v1/services/pay/instances/p2".into(),
            Some(with("checks", json!([{"ttl": 5}]))),
            None,
            400,
            "invalid_field",
            Some("checks[0].ttl"),
        ),
        (
            "nested unknown field",
            "/v1/services/pay/instances/p2".into(),
            Some(with(
                "checks",
                json!([{"ttl": "5s"}, {"ttl": "5s", "colour": 1}]),
            )),
            None,
            400,
            "invalid_field",
            Some("checks[1].colour"),
        ),
        (
            "trailing bytes",
            "/v1/services/pay/instances/p2".into(),
            None,
            Some("{\"address\": \"10.0.0.2\", \"port\": 8080} x".into()),
            400,
            "malformed_json",
            None,
        ),
        (
            "missing port",
            "/v1/services/pay/instances/p2".into(),
            Some(json!({"address": "10.0.0.2"})),
            None,
            400,
            "invalid_field",
            Some("port"),
        ),
        (
            "wrong type",
            "/v1/services/pay/instances/p2".into(),
            Some(with("port", json!("80"))),
            None,
            400,
            "invalid_field",
            None,
        ),
        (
            "oversized body",
            "/v1/services/pay/instances/p2".into(),
            None,
            Some(format!("{{\"address\":\"{}\"}}", "a".repeat(70_000))),
            413,
            "body_too_large",
            None,
        ),
        (
            "bad service name",
            "/v1/services/Pay_Ments/instances/p2".into(),
            Some(ok.clone()),
            None,
            400,
            "invalid_field",
            Some("service"),
        ),
        (
            "bad instance id",
            "/v1/services/pay/instances/p%202".into(),
            Some(ok.clone()),
            None,
            400,
            "invalid_field",
            Some("id"),
        ),
        (
            "port 0",
            "/v1/services/pay/instances/p2".into(),
            Some(with("port", json!(0))),
            None,
            400,
            "invalid_field",
            Some("port"),
        ),
        (
            "port 70000",
            "/v1/services/pay/instances/p2".into(),
            Some(with("port", json!(70000))),
            None,
            400,
            "invalid_field",
            Some("port"),
        ),
        (
            "ttl 0",
            "/v1/services/pay/instances/p2".into(),
            Some(with("ttl", json!("0s"))),
            None,
            400,
            "invalid_field",
            Some("ttl"),
        ),
        (
            "ttl 2h",
            "/v1/services/pay/instances/p2".into(),
            Some(with("ttl", json!("2h"))),
            None,
            400,
            "invalid_field",
            Some("ttl"),
        ),
        (
            "ttl without unit",
            "/v1/services/pay/instances/p2".into(),
            Some(with("ttl", json!("10"))),
            None,
            400,
            "invalid_field",
            Some("ttl"),
        ),
        (
            "unknown lease",
            "/v1/services/pay/instances/p2".into(),
            Some(with("lease", json!("00000000deadbeef"))),
            None,
            404,
            "lease_not_found",
            Some("lease"),
        ),
        (
            "invalid check",
            "/v1/services/pay/instances/p2".into(),
            Some(with(
                "checks",
                json!([{"http": "http://10.0.0.2:8080/health", "interval": "0s"}]),
            )),
            None,
            400,
            "invalid_field",
            Some("checks[0].interval"),
        ),
        (
            "bad namespace",
            "/v1/services/pay/instances/p2?namespace=NO".into(),
            Some(ok.clone()),
            None,
            400,
            "invalid_field",
            Some("namespace"),
        ),
        (
            "unknown parameter",
            "/v1/services/pay/instances/p2?nmespace=x".into(),
            Some(ok.clone()),
            None,
            400,
            "invalid_parameter",
            Some("nmespace"),
        ),
        (
            "replace with bad port",
            "/v1/services/pay/instances/p1".into(),
            Some(with("port", json!(0))),
            None,
            400,
            "invalid_field",
            Some("port"),
        ),
    ];
    for (name, path, body, raw, status, code, field) in cases {
        let (got, v) = match (body, raw) {
            (Some(b), _) => s.put(&path, b).await,
            (None, Some(r)) => s.put_raw(&path, r).await,
            _ => unreachable!(),
        };
        assert_eq!(got, status, "{name}: {v}");
        assert_eq!(v["error"]["code"], code, "{name}: {v}");
        assert!(
            !v["error"]["message"].as_str().unwrap().is_empty(),
            "{name}"
        );
        if let Some(f) = field {
            assert_eq!(v["error"]["field"], f, "{name}: {v}");
        }
        assert_eq!(
            catalog_fingerprint(&s).await,
            before,
            "{name} changed the catalog"
        );
    }

    // Lease creation and reads refuse bad input too.
    for (ttl, code) in [
        ("0s", "invalid_field"),
        ("2h", "invalid_field"),
        ("soon", "invalid_field"),
    ] {
        let (status, v) = s.post("/v1/leases", json!({"ttl": ttl})).await;
        assert_eq!(
            (status, v["error"]["code"].as_str()),
            (400, Some(code)),
            "ttl {ttl}"
        );
    }
    for (path, param) in [
        ("/v1/services/pay/instances?health=sick", "health"),
        ("/v1/services/pay/instances?meta=nocolon", "meta"),
        ("/v1/services/pay/instances?index=-1", "index"),
        ("/v1/services/pay/instances?wait=5s", "wait"),
        ("/v1/services/pay/instances?colour=red", "colour"),
        ("/v1/leases/xyz", "id"),
    ] {
        let (status, v, _) = s.get(path).await;
        assert_eq!(
            (status, v["error"]["field"].as_str()),
            (400, Some(param)),
            "{path}: {v}"
        );
    }
    let (status, v, _) = s.get("/v1/nothing-here").await;
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (404, Some("no_route"))
    );
    assert_eq!(catalog_fingerprint(&s).await, before);
    s.stop().await;
}

/// An instance id must survive a trip through a URL path segment: `.` and
/// `..` (however spelled) are dot segments that clients resolve away, so
/// an instance registered under one could never be addressed again.
#[tokio::test]
async fn ids_a_url_path_cannot_carry_are_refused() {
    let s = TestServer::start().await;
    s.register("web", "w1", json!({})).await;
    let before = s.ids("/v1/services/web/instances").await;
    let body = r#"{"address": "10.0.0.2", "port": 8080}"#;
    let json_header = "Content-Type: application/json\r\n";

    // Dot segments, sent raw: clients would resolve them before sending.
    for seg in ["%2e", "%2E", "%2e%2e", "%2E%2e", ".%2e", "%2e."] {
        let target = format!("/v1/services/web/instances/{seg}");
        let r = s
            .raw(&raw_request("PUT", target.as_bytes(), json_header, body))
            .await;
        let v = r.json();
        assert_eq!(
            (
                r.status,
                v["error"]["code"].as_str(),
                v["error"]["field"].as_str()
            ),
            (400, Some("invalid_field"), Some("id")),
            "PUT {target}: {v}"
        );
        let r = s.raw(&raw_request("GET", target.as_bytes(), "", "")).await;
        assert_eq!(
            (r.status, r.json()["error"]["field"].as_str()),
            (400, Some("id")),
            "GET {target}"
        );
    }
    // A check id lives in a path segment too.
    let r = s
        .raw(&raw_request(
            "PUT",
            b"/v1/services/web/instances/w1/checks/%2e%2e",
            json_header,
            r#"{"ttl": "10s"}"#,
        ))
        .await;
    assert_eq!(
        (r.status, r.json()["error"]["field"].as_str()),
        (400, Some("checks[0].id"))
    );

    // Characters refused already, one case each (percent-encoded where a
    // raw byte would end or break the segment).
    for seg in [
        "a%2Fb", "a%3Fb", "a%23b", "a%20b", "a%25b", "a%00b", "a%0Ab", "a~b", "a+b", "a;b", "a@b",
        "a!b", "a*b", "a'b", "a,b", "a=b", "a&b", "a$b", "a(b)", "%C3%A9",
    ] {
        let target = format!("/v1/services/web/instances/{seg}");
        let r = s
            .raw(&raw_request("PUT", target.as_bytes(), json_header, body))
            .await;
        assert_eq!(
            (r.status, r.json()["error"]["field"].as_str()),
            (400, Some("id")),
            "PUT {target}"
        );
    }
    let long = "a".repeat(muster_types::limits::MAX_ID_LEN + 1);
    let (status, v) = s
        .put(
            &format!("/v1/services/web/instances/{long}"),
            json!({"address": "10.0.0.2", "port": 8080}),
        )
        .await;
    assert_eq!((status, v["error"]["field"].as_str()), (400, Some("id")));
    assert_eq!(s.ids("/v1/services/web/instances").await, before);

    // Dots inside an id are fine: these go through an HTTP client's URL
    // unchanged, and can be read and removed the way they were registered.
    for id in ["...", ".a", "a.", "a..b", "v1.2.3"] {
        s.register("web", id, json!({})).await;
        let (status, v, _) = s.get(&format!("/v1/services/web/instances/{id}")).await;
        assert_eq!((status, v["id"].as_str()), (200, Some(id)), "{id}");
        let (status, v) = s.delete(&format!("/v1/services/web/instances/{id}")).await;
        assert_eq!(status, 200, "{id}: {v}");
    }
    assert_eq!(s.ids("/v1/services/web/instances").await, before);
    s.stop().await;
}
