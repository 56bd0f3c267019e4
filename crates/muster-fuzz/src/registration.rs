//! A registration: the instance path's service and id, and the JSON body,
//! through the checks `PUT /v1/services/{service}/instances/{id}` makes.

use std::time::Duration;

use axum::http::StatusCode;
use muster_http::api::{Params, decode_json};
use muster_types::limits::*;
use muster_types::{
    CheckKind, CheckSpec, RegisterRequest, Registration, parse_duration, validate_instance_id,
};

/// The service and id of the instance path, the first line of the input
/// (`payments/pay-1`), and the JSON body, the rest. An input without a
/// line break is all body, registered as `payments/pay-1`.
pub fn registration(data: &[u8]) {
    let (path, body) = match data.iter().position(|&b| b == b'\n') {
        Some(at) => (&data[..at], &data[at + 1..]),
        None => (&b"payments/pay-1"[..], data),
    };
    if let Some((service, id)) = std::str::from_utf8(path)
        .ok()
        .and_then(|p| p.split_once('/'))
    {
        instance_path(service, id);
    }
    register_body(body);
}

/// A service name and instance id the server accepts are addressable: the
/// path a client builds from them comes back unchanged from a URL parser
/// (which resolves dot segments and percent-encodes what a path cannot
/// hold), so the instance can be read and deleted again.
fn instance_path(service: &str, id: &str) {
    let params = Params::parse(None).expect("no query string is a valid one");
    if let Err(e) = params.instance_key(service.to_string(), id) {
        assert_eq!(e.status, StatusCode::BAD_REQUEST, "{e:?}");
        assert!(
            matches!(e.field.as_deref(), Some("service" | "id")),
            "{e:?}"
        );
        return;
    }
    let path = format!("/v1/services/{service}/instances/{id}");
    let url = url::Url::parse(&format!("http://127.0.0.1:7700{path}"))
        .unwrap_or_else(|e| panic!("{path:?} is not a URL path: {e}"));
    assert_eq!(url.path(), path, "the path of {service:?}/{id:?} changed");
    // The server percent-decodes segments: nothing to decode in a valid id.
    assert!(!id.contains('%') && !service.contains('%'), "{path:?}");
}

/// The body as the server decodes and validates it: a typed 400 for what
/// is refused; for what is accepted, a registration that says what the
/// body says, and the same one again when the body is sent again.
fn register_body(body: &[u8]) {
    let req: RegisterRequest = match decode_json(body) {
        Ok(req) => req,
        Err(e) => {
            assert_eq!(e.status, StatusCode::BAD_REQUEST, "{e:?}");
            assert!(
                matches!(e.code, "malformed_json" | "invalid_field"),
                "{e:?}"
            );
            return;
        }
    };
    let reg = match req.validate() {
        Ok(reg) => reg,
        Err(e) => {
            assert_eq!(e.code, "invalid_field", "{e:?}");
            assert!(!e.field.is_empty(), "{e:?}");
            return;
        }
    };
    accepted_as_sent(&req, &reg);
    let again = serde_json::to_vec(&req).expect("a request serialises");
    let again: RegisterRequest = decode_json(&again).expect("a re-encoded request decodes");
    assert_eq!(again, req);
    assert_eq!(again.validate(), Ok(reg));
}

/// Milliseconds of a wire duration, exactly (u128: no truncation).
fn millis(s: &str) -> u128 {
    parse_duration(s)
        .unwrap_or_else(|e| panic!("an accepted duration {s:?} does not parse: {e}"))
        .as_millis()
}

/// What validation accepted is within the limits and means what the
/// request said: no value was cut, wrapped or defaulted into range.
fn accepted_as_sent(req: &RegisterRequest, reg: &Registration) {
    assert_eq!(u32::from(reg.port), req.port);
    assert!(reg.port >= 1);
    assert!(reg.tags.len() <= MAX_TAGS);
    assert_eq!(reg.tags, req.tags.iter().cloned().collect());
    assert_eq!(reg.meta, req.meta);
    assert!((1..=MAX_WEIGHT).contains(&reg.weight));
    if let Some(ttl) = &req.ttl {
        let d = reg.ttl.expect("a ttl given is kept");
        assert_eq!(d.as_millis(), millis(ttl));
        let (min, max) = (
            Duration::from_millis(MIN_TTL_MS),
            Duration::from_millis(MAX_TTL_MS),
        );
        assert!((min..=max).contains(&d), "ttl {ttl:?} accepted as {d:?}");
    }
    assert_eq!(reg.checks.len(), req.checks.len());
    assert!(reg.checks.len() <= MAX_CHECKS);
    for (spec, check) in req.checks.iter().zip(&reg.checks) {
        check_as_sent(spec, check);
    }
}

fn check_as_sent(spec: &CheckSpec, check: &muster_types::Check) {
    validate_instance_id(&check.id).expect("a check id is a valid path segment");
    let interval = u128::from(check.interval_ms);
    if let Some(ttl) = &spec.ttl {
        assert_eq!(check.kind, CheckKind::Ttl);
        assert_eq!(interval, millis(ttl), "ttl {ttl:?}");
        assert!((MIN_TTL_MS..=MAX_TTL_MS).contains(&check.interval_ms));
    } else {
        let given = spec.interval.as_deref().expect("an interval is required");
        assert_eq!(interval, millis(given), "interval {given:?}");
        assert!((MIN_CHECK_INTERVAL_MS..=MAX_CHECK_INTERVAL_MS).contains(&check.interval_ms));
    }
    assert!((1..=check.interval_ms).contains(&check.timeout_ms));
    if let Some(t) = &spec.timeout {
        assert_eq!(u128::from(check.timeout_ms), millis(t), "timeout {t:?}");
    }
    match (
        &spec.deregister_critical_after,
        check.deregister_critical_after_ms,
    ) {
        (None, None) => {}
        (Some(d), Some(ms)) => {
            assert_eq!(u128::from(ms), millis(d), "deregister_critical_after {d:?}");
            assert!((1_000..=MAX_CHECK_INTERVAL_MS).contains(&ms));
        }
        other => panic!("deregister_critical_after changed: {other:?}"),
    }
    assert!((1..=100).contains(&check.success_before_passing));
    assert!((1..=100).contains(&check.failures_before_critical));
}
