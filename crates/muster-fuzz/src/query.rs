//! Query strings and the `Last-Event-ID` header, as discovery and watch
//! read them.

use std::time::Duration;

use axum::http::{HeaderValue, StatusCode};
use muster_catalog::{HealthFilter, Query};
use muster_http::api::Params;
use muster_http::api::instances::parse_query;
use muster_http::api::watch::parse_last_event_id;
use muster_http::error::ApiError;
use muster_types::limits::MAX_WAIT_MS;

/// The parameters `GET /v1/services/{service}/instances` accepts.
const DISCOVERY: &[&str] = &[
    "namespace",
    "tag",
    "meta",
    "version",
    "zone",
    "health",
    "index",
    "wait",
];

/// One discovery query string, or two separated by a line break, through
/// the checks discovery makes. Of two that both pass, the read cache's keys
/// must be equal exactly when the filters are: equal keys for different
/// filters would serve one query the answer cached for the other.
pub fn discovery_query(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (first, second) = match text.split_once('\n') {
        Some((a, b)) => (a, Some(b)),
        None => (text, None),
    };
    let Some(a) = discovery(first) else {
        return;
    };
    if let Some(b) = second.and_then(discovery) {
        assert_eq!(
            a.cache_key() == b.cache_key(),
            canonical(&a) == canonical(&b),
            "{first:?} and {second:?}: cache keys {:?} and {:?}",
            a.cache_key(),
            b.cache_key()
        );
    }
}

/// A typed 400 naming a parameter, one of `fields` when they are given.
fn bad_param(e: &ApiError, fields: &[&str]) {
    assert_eq!(e.status, StatusCode::BAD_REQUEST, "{e:?}");
    // A name the body would carry too (`namespace`, `version`) is checked
    // by the same rule, under its code.
    assert!(
        matches!(e.code, "invalid_parameter" | "invalid_field"),
        "{e:?}"
    );
    let field = e.field.as_deref().expect("a bad parameter is named");
    assert!(fields.is_empty() || fields.contains(&field), "{e:?}");
}

/// Runs `q` through discovery's checks; the filters when they all pass.
fn discovery(q: &str) -> Option<Query> {
    let params = match Params::parse(Some(q)) {
        Ok(p) => p,
        Err(e) => {
            bad_param(&e, &["query"]);
            return None;
        }
    };
    if let Err(e) = params.only(DISCOVERY) {
        bad_param(&e, &[]);
        let field = e.field.as_deref().unwrap_or_default();
        assert!(!DISCOVERY.contains(&field), "{field:?} is accepted");
        assert!(
            params.0.iter().any(|(k, _)| k == field),
            "{field:?} not sent"
        );
        return None;
    }
    if let Err(e) = params.namespace() {
        bad_param(&e, &["namespace"]);
        return None;
    }
    match params.blocking() {
        Err(e) => {
            bad_param(&e, &["index", "wait"]);
            return None;
        }
        Ok(None) => assert!(params.get("index").is_none()),
        Ok(Some((index, wait))) => {
            assert_eq!(params.get("index").map(str::parse), Some(Ok(index)));
            // At most the longest wait and its jitter (a sixteenth).
            let max = Duration::from_millis(MAX_WAIT_MS + MAX_WAIT_MS / 16);
            assert!(wait <= max, "wait {wait:?}");
        }
    }
    let query = match parse_query(&params) {
        Ok(q) => q,
        Err(e) => {
            bad_param(&e, &["meta", "health", "version"]);
            return None;
        }
    };
    assert_eq!(query.tags, params.all("tag"));
    assert_eq!(query.meta.len(), params.all("meta").len());
    assert_eq!(query.zone.as_deref(), params.get("zone"));
    // The repeated filters in another order are the same query, with the
    // same cache key.
    let (mut reordered, repeated): (Vec<_>, Vec<_>) = params
        .0
        .iter()
        .cloned()
        .partition(|(k, _)| k != "tag" && k != "meta");
    reordered.extend(repeated.into_iter().rev());
    let other = parse_query(&Params(reordered)).expect("the same filters in another order");
    assert_eq!(canonical(&other), canonical(&query));
    assert_eq!(other.cache_key(), query.cache_key());
    Some(query)
}

/// What a query selects, whatever the order and repetition of its filters.
type Canonical = (
    Vec<String>,
    Vec<(String, String)>,
    Option<String>,
    Option<String>,
    HealthFilter,
);

fn canonical(q: &Query) -> Canonical {
    let mut tags = q.tags.clone();
    tags.sort();
    tags.dedup();
    let mut meta = q.meta.clone();
    meta.sort();
    meta.dedup();
    let version = q.version.as_ref().map(|v| v.as_str().to_string());
    (tags, meta, version, q.zone.clone(), q.health)
}

/// A `Last-Event-ID` header value, which the server reads as the index to
/// resume after. It must agree with the rule written out below; and an id
/// the server sent reads back as itself.
pub fn last_event_id(data: &[u8]) {
    let Ok(value) = HeaderValue::from_bytes(data) else {
        return; // no HTTP implementation hands such a value on
    };
    match (parse_last_event_id(&value), expected_id(data)) {
        (Ok(got), Some(want)) => assert_eq!(got, want, "{value:?}"),
        (Err(e), None) => bad_param(&e, &["Last-Event-ID"]),
        (got, want) => panic!("{value:?}: read as {got:?}, expected {want:?}"),
    }
    if let Ok(n) = parse_last_event_id(&value) {
        let sent = HeaderValue::from(n);
        assert_eq!(parse_last_event_id(&sent).ok(), Some(n));
    }
}

/// The rule: visible ASCII, spaces and tabs around it allowed, an optional
/// `+` and then decimal digits whose value fits 64 bits.
fn expected_id(data: &[u8]) -> Option<u64> {
    if !data
        .iter()
        .all(|&b| b == b'\t' || (0x20..0x7f).contains(&b))
    {
        return None;
    }
    let mut s = data;
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    let digits = s.strip_prefix(b"+").unwrap_or(s);
    if digits.is_empty() {
        return None;
    }
    digits.iter().try_fold(0u64, |n, &d| {
        if !d.is_ascii_digit() {
            return None;
        }
        n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
    })
}
