//! Requests refused before a handler runs (wrong method, a path that does
//! not decode, an oversized target or header block) get the typed error
//! body of the API like any other error.
//! Sent over raw sockets where HTTP clients would refuse or normalise the
//! request.

use muster_types::limits;

use crate::harness::{RawResponse, TestServer, raw_request};

/// The answer is the API's typed error: JSON, `status`, `code`, a message.
fn assert_typed(what: &str, r: &RawResponse, status: u16, code: &str) -> serde_json::Value {
    assert_eq!(
        r.status,
        status,
        "{what}: {:?}",
        String::from_utf8_lossy(&r.body)
    );
    assert_eq!(r.header("content-type"), Some("application/json"), "{what}");
    let v = r.json();
    assert_eq!(v["error"]["code"], code, "{what}: {v}");
    assert!(
        !v["error"]["message"].as_str().unwrap_or("").is_empty(),
        "{what}: {v}"
    );
    v
}

#[tokio::test]
async fn a_wrong_method_is_a_typed_405_that_keeps_allow() {
    let s = TestServer::start().await;
    for (method, target, allow) in [
        ("POST", "/v1/services", "GET,HEAD"),
        ("OPTIONS", "/v1/services", "GET,HEAD"),
        ("DELETE", "/v1/leases/renew", "POST"),
        (
            "POST",
            "/v1/services/web/instances/w1",
            "PUT,GET,HEAD,DELETE",
        ),
    ] {
        let what = format!("{method} {target}");
        let r = s.raw(&raw_request(method, target.as_bytes(), "", "")).await;
        assert_typed(&what, &r, 405, "method_not_allowed");
        assert_eq!(r.header("allow"), Some(allow), "{what}");
    }
    s.stop().await;
}

#[tokio::test]
async fn a_path_segment_that_is_not_utf8_is_a_typed_400_naming_it() {
    let s = TestServer::start().await;
    for (method, target, field) in [
        ("GET", "/v1/services/web/instances/%C0%AF", "id"),
        ("DELETE", "/v1/services/web/instances/a%FFb", "id"),
        ("GET", "/v1/services/%FF/instances", "service"),
        ("GET", "/v1/leases/%C0", "id"),
        (
            "DELETE",
            "/v1/services/web/instances/w1/checks/%C0",
            "check",
        ),
    ] {
        let what = format!("{method} {target}");
        let r = s.raw(&raw_request(method, target.as_bytes(), "", "")).await;
        let v = assert_typed(&what, &r, 400, "invalid_path");
        assert_eq!(v["error"]["field"], field, "{what}: {v}");
    }
    s.stop().await;
}

#[tokio::test]
async fn an_oversized_target_or_header_block_is_typed() {
    let s = TestServer::start().await;

    // The target: one byte over the limit is refused, at the limit it is
    // routed (and answered by the route: an unknown parameter).
    let target = |len: usize| {
        let mut t = String::from("/v1/services?x=");
        t.push_str(&"a".repeat(len - t.len()));
        t
    };
    let r = s
        .raw(&raw_request(
            "GET",
            target(limits::MAX_URI_BYTES + 1).as_bytes(),
            "",
            "",
        ))
        .await;
    assert_typed("long target", &r, 414, "uri_too_long");
    let r = s
        .raw(&raw_request(
            "GET",
            target(limits::MAX_URI_BYTES).as_bytes(),
            "",
            "",
        ))
        .await;
    let v = assert_typed("target at the limit", &r, 400, "invalid_parameter");
    assert_eq!(v["error"]["field"], "x");

    // The header block: one large header, or many small ones.
    let big = format!("X-Big: {}\r\n", "a".repeat(limits::MAX_HEADER_BYTES));
    let r = s.raw(&raw_request("GET", b"/v1/services", &big, "")).await;
    assert_typed("one large header", &r, 431, "headers_too_large");
    let many: String = (0..90)
        .map(|i| format!("X-Header-{i:02}: {}\r\n", "b".repeat(200)))
        .collect();
    let r = s.raw(&raw_request("GET", b"/v1/services", &many, "")).await;
    assert_typed("many headers", &r, 431, "headers_too_large");

    // Ordinary requests still pass; the refusals are counted.
    let r = s.raw(&raw_request("GET", b"/v1/services", "", "")).await;
    assert_eq!(r.status, 200);
    let metrics = s.metrics().await;
    for status in ["414", "431"] {
        let line = format!(
            r#"muster_http_requests_total{{method="GET",route="unmatched",status="{status}"}}"#
        );
        assert!(metrics.contains(&line), "{line} in\n{metrics}");
    }
    s.stop().await;
}

/// What hyper refuses while parsing the request line or the head never
/// reaches muster: hyper writes the bare status and closes the connection,
/// with no hook for a body. This pins that such bytes go no further and
/// that the server keeps serving.
#[tokio::test]
async fn a_request_line_hyper_cannot_parse_goes_no_further() {
    let s = TestServer::start().await;
    for target in [
        &b"/v1/services/web/instances/a\x01b"[..],
        b"/v1/services/web/instances/a\x7fb",
        b"/v1/services/web/instances/a\tb",
        b"/v1/services/web/instances/a\xc0\xafb",
    ] {
        let r = s.raw(&raw_request("GET", target, "", "")).await;
        assert_eq!(r.status, 400, "{:?}", String::from_utf8_lossy(target));
    }
    let r = s.raw(&raw_request("GET", b"/v1/services", "", "")).await;
    assert_eq!(r.status, 200);
    s.stop().await;
}
