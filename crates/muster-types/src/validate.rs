//! Validation at the edge: every input is checked here before it can reach
//! the log, so a bad request never half-applies.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use crate::limits::*;
use crate::{
    Check, CheckKind, CheckSpec, DEFAULT_WEIGHT, Health, RegisterRequest, parse_duration,
    parse_lease_id,
};

/// A rejected input: which field, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct FieldError {
    /// Stable error code (`invalid_field`, ...).
    pub code: &'static str,
    /// The offending field.
    pub field: String,
    /// What is wrong and what would be right.
    pub message: String,
}

impl FieldError {
    /// An `invalid_field` error.
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        FieldError {
            code: "invalid_field",
            field: field.into(),
            message: message.into(),
        }
    }
}

/// A registration that passed validation, normalised.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registration {
    /// Address.
    pub address: String,
    /// Port (1..=65535).
    pub port: u16,
    /// Tags, deduplicated.
    pub tags: BTreeSet<String>,
    /// Metadata.
    pub meta: BTreeMap<String, String>,
    /// Version.
    pub version: Option<String>,
    /// Zone.
    pub zone: Option<String>,
    /// Weight (default 100).
    pub weight: u32,
    /// Own-lease TTL, when `ttl` was given.
    pub ttl: Option<Duration>,
    /// Existing lease to join, when `lease` was given.
    pub lease: Option<u64>,
    /// Validated checks, in their initial state.
    pub checks: Vec<Check>,
}

/// Cuts check output to at most 4 KiB, on a character boundary.
pub fn truncate_output(s: &str) -> String {
    if s.len() <= MAX_CHECK_OUTPUT {
        return s.to_string();
    }
    let mut end = MAX_CHECK_OUTPUT;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

fn host_port(field: &str, s: &str) -> Result<(), FieldError> {
    let bad = || FieldError::invalid(field, format!("{s:?} must look like host:port"));
    let (host, port) = s.rsplit_once(':').ok_or_else(bad)?;
    let port: u16 = port.parse().map_err(|_| bad())?;
    if host.is_empty() || port == 0 || host.contains('/') || host.contains(' ') {
        return Err(bad());
    }
    Ok(())
}

fn check_duration(field: &str, s: &str, min_ms: u64, max_ms: u64) -> Result<u64, FieldError> {
    let d = parse_duration(s).map_err(|m| FieldError::invalid(field, m))?;
    // Past u64::MAX milliseconds is out of range too (a cast would wrap it
    // into range).
    let ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    if ms < min_ms || ms > max_ms {
        return Err(FieldError::invalid(
            field,
            format!(
                "{s:?} is out of range: it must be between {} and {}",
                crate::format_duration(Duration::from_millis(min_ms)),
                crate::format_duration(Duration::from_millis(max_ms))
            ),
        ));
    }
    Ok(ms)
}

/// Validates one check definition; `position` (0-based) names it in errors
/// and gives the default id `check-N`.
pub fn validate_check(position: usize, spec: &CheckSpec) -> Result<Check, FieldError> {
    let f = |name: &str| format!("checks[{position}].{name}");
    let kinds = [
        spec.http.is_some(),
        spec.tcp.is_some(),
        spec.grpc.is_some(),
        spec.ttl.is_some(),
        spec.args.is_some(),
    ];
    if kinds.iter().filter(|k| **k).count() != 1 {
        return Err(FieldError::invalid(
            format!("checks[{position}]"),
            "a check needs exactly one of http, tcp, grpc, ttl or args",
        ));
    }
    let id = spec
        .id
        .clone()
        .unwrap_or_else(|| format!("check-{}", position + 1));
    validate_instance_id(&id).map_err(|e| FieldError::invalid(f("id"), e.message))?;
    let mut interval_ms = match &spec.interval {
        Some(i) => Some(check_duration(
            &f("interval"),
            i,
            MIN_CHECK_INTERVAL_MS,
            MAX_CHECK_INTERVAL_MS,
        )?),
        None => None,
    };
    let kind = if let Some(url) = &spec.http {
        let rest = url
            .strip_prefix("http://")
            .or_else(|| url.strip_prefix("https://"))
            .ok_or_else(|| {
                FieldError::invalid(
                    f("http"),
                    format!("{url:?} is not an http:// or https:// URL"),
                )
            })?;
        let host = rest.split(['/', '?', '#']).next().unwrap_or("");
        if host.is_empty() || url.contains(char::is_whitespace) || url.len() > 2048 {
            return Err(FieldError::invalid(
                f("http"),
                format!("{url:?} is not a valid URL"),
            ));
        }
        let method = spec
            .method
            .clone()
            .unwrap_or_else(|| "GET".into())
            .to_ascii_uppercase();
        if !["GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH"].contains(&method.as_str())
        {
            return Err(FieldError::invalid(
                f("method"),
                format!("unsupported HTTP method {method:?}"),
            ));
        }
        for (k, v) in &spec.headers {
            if k.is_empty()
                || !k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                || !printable(v)
            {
                return Err(FieldError::invalid(
                    f("headers"),
                    format!("invalid header {k:?}"),
                ));
            }
        }
        CheckKind::Http {
            url: url.clone(),
            method,
            headers: spec.headers.clone(),
            tls_skip_verify: spec.tls_skip_verify,
        }
    } else if let Some(addr) = &spec.tcp {
        host_port(&f("tcp"), addr)?;
        CheckKind::Tcp { addr: addr.clone() }
    } else if let Some(target) = &spec.grpc {
        let (addr, service) = target.split_once('/').unwrap_or((target, ""));
        host_port(&f("grpc"), addr)?;
        CheckKind::Grpc {
            addr: addr.to_string(),
            service: service.to_string(),
        }
    } else if let Some(ttl) = &spec.ttl {
        if spec.interval.is_some() {
            return Err(FieldError::invalid(
                f("interval"),
                "a ttl check has no interval: the client reports within the ttl",
            ));
        }
        interval_ms = Some(check_duration(&f("ttl"), ttl, MIN_TTL_MS, MAX_TTL_MS)?);
        CheckKind::Ttl
    } else {
        let args = spec.args.clone().unwrap_or_default();
        if args.is_empty() || args[0].is_empty() {
            return Err(FieldError::invalid(
                f("args"),
                "args needs a program to run",
            ));
        }
        CheckKind::Command { args }
    };
    let interval_ms = interval_ms
        .ok_or_else(|| FieldError::invalid(f("interval"), "interval is required, e.g. \"10s\""))?;
    let timeout_ms = match &spec.timeout {
        None => interval_ms.min(10_000),
        Some(t) => check_duration(&f("timeout"), t, 1, interval_ms)?,
    };
    let threshold = |name: &str, v: Option<u32>| -> Result<u32, FieldError> {
        match v.unwrap_or(1) {
            n @ 1..=100 => Ok(n),
            n => Err(FieldError::invalid(
                f(name),
                format!("{n} is out of range: it must be 1 to 100"),
            )),
        }
    };
    let deregister_critical_after_ms = match &spec.deregister_critical_after {
        None => None,
        Some(d) => Some(check_duration(
            &f("deregister_critical_after"),
            d,
            1_000,
            MAX_CHECK_INTERVAL_MS,
        )?),
    };
    if let Some(n) = &spec.notes
        && (n.len() > MAX_META_VALUE_LEN || !printable(n))
    {
        return Err(FieldError::invalid(
            f("notes"),
            format!("notes must be at most {MAX_META_VALUE_LEN} printable characters"),
        ));
    }
    if let Some(n) = &spec.name
        && (n.is_empty() || n.len() > MAX_TAG_LEN || !printable(n))
    {
        return Err(FieldError::invalid(
            f("name"),
            format!("name must be 1 to {MAX_TAG_LEN} printable characters"),
        ));
    }
    Ok(Check {
        name: spec
            .name
            .clone()
            .unwrap_or_else(|| format!("{} check {id}", kind.name())),
        id,
        kind,
        interval_ms,
        timeout_ms,
        success_before_passing: threshold("success_before_passing", spec.success_before_passing)?,
        failures_before_critical: threshold(
            "failures_before_critical",
            spec.failures_before_critical,
        )?,
        deregister_critical_after_ms,
        notes: spec.notes.clone(),
        status: spec.status.unwrap_or(Health::Critical),
        output: String::new(),
        status_index: 0,
        last_run_ms: None,
        last_output: None,
    })
}

/// Service and namespace names ([`validate_service_name`],
/// [`validate_namespace`]) as a regular expression, for the OpenAPI document.
pub const LABEL_PATTERN: &str = "^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$";

/// Instance and check ids ([`validate_instance_id`]) as a regular
/// expression, for the OpenAPI document. It cannot say that `.` and `..`
/// are refused besides (JSON Schema patterns have no look-ahead everywhere).
pub const ID_PATTERN: &str = "^[A-Za-z0-9._:-]{1,128}$";

/// Lease ids ([`crate::parse_lease_id`]) as a regular expression, for the
/// OpenAPI document.
pub const LEASE_ID_PATTERN: &str = "^[0-9A-Fa-f]{1,16}$";

fn label_ok(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_NAME_LEN
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// Checks a service name: a DNS label, `[a-z0-9-]`, at most 63 characters.
pub fn validate_service_name(s: &str) -> Result<(), FieldError> {
    if label_ok(s) {
        Ok(())
    } else {
        Err(FieldError::invalid(
            "service",
            format!(
                "service name {s:?} is not a DNS label: use 1 to {MAX_NAME_LEN} characters \
                 of a-z, 0-9 and '-', not starting or ending with '-'"
            ),
        ))
    }
}

/// Checks a namespace name: same rule as a service name.
pub fn validate_namespace(s: &str) -> Result<(), FieldError> {
    if label_ok(s) {
        Ok(())
    } else {
        Err(FieldError::invalid(
            "namespace",
            format!(
                "namespace {s:?} is not a DNS label: use 1 to {MAX_NAME_LEN} characters \
                 of a-z, 0-9 and '-'"
            ),
        ))
    }
}

/// Checks an instance id: 1 to 128 characters of `[A-Za-z0-9._:-]`, and
/// not `.` or `..`.
///
/// An id is a URL path segment (`/v1/services/{service}/instances/{id}`),
/// so it must come back unchanged from a client's URL: the characters are
/// all allowed in a segment as they are, and `.` and `..` are refused
/// because clients resolve them as dot segments (RFC 3986, 5.2.4; also
/// when sent as `%2e%2e`), after which an instance so named could not be
/// addressed again. Check ids follow the same rule.
pub fn validate_instance_id(s: &str) -> Result<(), FieldError> {
    if s == "." || s == ".." {
        return Err(FieldError::invalid(
            "id",
            format!(
                "instance id {s:?} is a URL dot segment, which clients resolve away: \
                 use an id that is not only dots"
            ),
        ));
    }
    let ok = !s.is_empty()
        && s.len() <= MAX_ID_LEN
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(FieldError::invalid(
            "id",
            format!(
                "instance id {s:?} is invalid: use 1 to {MAX_ID_LEN} characters of \
                 A-Z, a-z, 0-9, '.', '_', ':' and '-', and not '.' or '..'"
            ),
        ))
    }
}

/// Checks a TTL string: a duration between 1s and 1h.
pub fn validate_ttl(field: &str, s: &str) -> Result<Duration, FieldError> {
    let d = parse_duration(s).map_err(|m| FieldError::invalid(field, m))?;
    let ms = d.as_millis();
    if ms < u128::from(MIN_TTL_MS) || ms > u128::from(MAX_TTL_MS) {
        return Err(FieldError::invalid(
            field,
            format!("ttl {s:?} is out of range: it must be between 1s and 1h"),
        ));
    }
    Ok(d)
}

fn printable(s: &str) -> bool {
    !s.chars().any(char::is_control)
}

fn check_address(a: &str) -> Result<(), FieldError> {
    if a.is_empty() || a.len() > MAX_ADDRESS_LEN {
        return Err(FieldError::invalid(
            "address",
            format!("address must be 1 to {MAX_ADDRESS_LEN} characters"),
        ));
    }
    if a.parse::<std::net::IpAddr>().is_ok() {
        return Ok(());
    }
    // Otherwise a host name: dot-separated labels of letters, digits, '-' and '_'.
    let host_ok = a.split('.').all(|l| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    });
    if host_ok {
        Ok(())
    } else {
        Err(FieldError::invalid(
            "address",
            format!("address {a:?} is neither an IP address nor a host name"),
        ))
    }
}

impl RegisterRequest {
    /// Validates every field; the first problem found is returned.
    pub fn validate(&self) -> Result<Registration, FieldError> {
        check_address(&self.address)?;
        if !(1..=65535).contains(&self.port) {
            return Err(FieldError::invalid(
                "port",
                format!("port {} is out of range: it must be 1 to 65535", self.port),
            ));
        }
        if self.tags.len() > MAX_TAGS {
            return Err(FieldError::invalid(
                "tags",
                format!(
                    "{} tags given; at most {MAX_TAGS} are allowed",
                    self.tags.len()
                ),
            ));
        }
        for t in &self.tags {
            if t.is_empty() || t.len() > MAX_TAG_LEN || !printable(t) {
                return Err(FieldError::invalid(
                    "tags",
                    format!("tag {t:?} must be 1 to {MAX_TAG_LEN} printable characters"),
                ));
            }
        }
        if self.meta.len() > MAX_META {
            return Err(FieldError::invalid(
                "meta",
                format!(
                    "{} meta entries given; at most {MAX_META} are allowed",
                    self.meta.len()
                ),
            ));
        }
        for (k, v) in &self.meta {
            let key_ok = !k.is_empty()
                && k.len() <= MAX_META_KEY_LEN
                && k.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'/'));
            if !key_ok {
                return Err(FieldError::invalid(
                    "meta",
                    format!(
                        "meta key {k:?} must be 1 to {MAX_META_KEY_LEN} characters of \
                         A-Z, a-z, 0-9, '.', '_', '-' and '/'"
                    ),
                ));
            }
            if v.len() > MAX_META_VALUE_LEN || !printable(v) {
                return Err(FieldError::invalid(
                    "meta",
                    format!(
                        "meta value of {k:?} must be at most {MAX_META_VALUE_LEN} printable characters"
                    ),
                ));
            }
        }
        for (field, val) in [("version", &self.version), ("zone", &self.zone)] {
            if let Some(v) = val
                && (v.is_empty() || v.len() > MAX_VERSION_LEN || !printable(v) || v.contains(' '))
            {
                return Err(FieldError::invalid(
                    field,
                    format!(
                        "{field} must be 1 to {MAX_VERSION_LEN} printable characters without spaces"
                    ),
                ));
            }
        }
        let weight = self.weight.unwrap_or(DEFAULT_WEIGHT);
        if !(1..=MAX_WEIGHT).contains(&weight) {
            return Err(FieldError::invalid(
                "weight",
                format!("weight {weight} is out of range: it must be 1 to {MAX_WEIGHT}"),
            ));
        }
        if self.ttl.is_some() && self.lease.is_some() {
            return Err(FieldError::invalid(
                "ttl",
                "give either ttl (a lease of the instance's own) or lease (an existing one), not both",
            ));
        }
        let ttl = self
            .ttl
            .as_deref()
            .map(|t| validate_ttl("ttl", t))
            .transpose()?;
        let lease = match &self.lease {
            None => None,
            Some(l) => Some(parse_lease_id(l).ok_or_else(|| {
                FieldError::invalid(
                    "lease",
                    format!("lease id {l:?} is not a lease id (16 hex digits)"),
                )
            })?),
        };
        if self.checks.len() > MAX_CHECKS {
            return Err(FieldError::invalid(
                "checks",
                format!(
                    "{} checks given; at most {MAX_CHECKS} are allowed",
                    self.checks.len()
                ),
            ));
        }
        let checks = self
            .checks
            .iter()
            .enumerate()
            .map(|(i, c)| validate_check(i, c))
            .collect::<Result<Vec<_>, _>>()?;
        let mut ids: Vec<&str> = checks.iter().map(|c| c.id.as_str()).collect();
        ids.sort_unstable();
        if let Some(w) = ids.windows(2).find(|w| w[0] == w[1]) {
            return Err(FieldError::invalid(
                "checks",
                format!("check id {:?} is used twice", w[0]),
            ));
        }
        Ok(Registration {
            address: self.address.clone(),
            port: self.port as u16,
            tags: self.tags.iter().cloned().collect(),
            meta: self.meta.clone(),
            version: self.version.clone(),
            zone: self.zone.clone(),
            weight,
            ttl,
            lease,
            checks,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Strings of a pattern (proptest generates from a regex without its
    /// anchors; the patterns are anchored at both ends).
    fn of(pattern: &str) -> impl Strategy<Value = String> {
        let inner = pattern.strip_prefix('^').and_then(|p| p.strip_suffix('$'));
        proptest::string::string_regex(inner.expect("anchored at both ends")).unwrap()
    }

    proptest! {
        // What the OpenAPI document's patterns admit, the validators accept
        // (the patterns may only be narrower: `.` and `..` are refused besides).
        #[test]
        fn labels_of_the_pattern_are_valid(s in of(LABEL_PATTERN)) {
            prop_assert!(validate_service_name(&s).is_ok(), "{s:?}");
            prop_assert!(validate_namespace(&s).is_ok(), "{s:?}");
        }

        #[test]
        fn ids_of_the_pattern_are_valid_but_dot_segments(s in of(ID_PATTERN)) {
            prop_assert_eq!(validate_instance_id(&s).is_ok(), s != "." && s != "..", "{:?}", s);
        }

        #[test]
        fn lease_ids_of_the_pattern_parse(s in of(LEASE_ID_PATTERN)) {
            prop_assert!(crate::parse_lease_id(&s).is_some(), "{s:?}");
        }
    }

    fn base() -> RegisterRequest {
        RegisterRequest {
            address: "10.0.0.1".into(),
            port: 8080,
            ..Default::default()
        }
    }

    fn field_of(r: RegisterRequest) -> String {
        r.validate().unwrap_err().field
    }

    #[test]
    fn accepts_a_plain_registration() {
        let r = base().validate().unwrap();
        assert_eq!(r.port, 8080);
        assert_eq!(r.weight, DEFAULT_WEIGHT);
    }

    #[test]
    fn names_the_bad_field() {
        assert_eq!(field_of(RegisterRequest { port: 0, ..base() }), "port");
        assert_eq!(
            field_of(RegisterRequest {
                port: 70000,
                ..base()
            }),
            "port"
        );
        assert_eq!(
            field_of(RegisterRequest {
                address: "".into(),
                ..base()
            }),
            "address"
        );
        assert_eq!(
            field_of(RegisterRequest {
                address: "a b".into(),
                ..base()
            }),
            "address"
        );
        assert_eq!(
            field_of(RegisterRequest {
                ttl: Some("0s".into()),
                ..base()
            }),
            "ttl"
        );
        assert_eq!(
            field_of(RegisterRequest {
                ttl: Some("2h".into()),
                ..base()
            }),
            "ttl"
        );
        assert_eq!(
            field_of(RegisterRequest {
                lease: Some("zz".into()),
                ..base()
            }),
            "lease"
        );
        assert_eq!(
            field_of(RegisterRequest {
                weight: Some(0),
                ..base()
            }),
            "weight"
        );
        assert_eq!(
            field_of(RegisterRequest {
                tags: vec!["".into()],
                ..base()
            }),
            "tags"
        );
        assert_eq!(
            field_of(RegisterRequest {
                tags: vec!["t".into(); MAX_TAGS + 1],
                ..base()
            }),
            "tags"
        );
        let meta = [("bad key".to_string(), "v".to_string())].into();
        assert_eq!(field_of(RegisterRequest { meta, ..base() }), "meta");
        let checks = vec![crate::CheckSpec::default()];
        assert_eq!(field_of(RegisterRequest { checks, ..base() }), "checks[0]");
    }

    #[test]
    fn names_follow_dns_label_rules() {
        assert!(validate_service_name("payments-v2").is_ok());
        for bad in ["", "Payments", "pay_ments", "-a", "a-", &"a".repeat(64)] {
            assert!(validate_service_name(bad).is_err(), "{bad:?}");
        }
        assert!(validate_instance_id("pay-1:8080").is_ok());
        assert!(validate_instance_id("a/b").is_err());
    }

    /// An id is a URL path segment: it must come back the same from a
    /// client's URL. `.` and `..` are dot segments that clients resolve
    /// away; every character outside `[A-Za-z0-9._:-]` is refused already
    /// (one case each here), so nothing needs percent-encoding either.
    #[test]
    fn instance_ids_survive_a_url_path_segment() {
        for dots in [".", ".."] {
            let e = validate_instance_id(dots).unwrap_err();
            assert_eq!(
                (e.code, e.field.as_str()),
                ("invalid_field", "id"),
                "{dots:?}"
            );
            assert!(e.message.contains("dot segment"), "{dots:?}: {}", e.message);
        }
        for ok in [
            "...",
            ".a",
            "a.",
            "a..b",
            "v1.2.3",
            "_",
            ":",
            "-",
            "A-z_0.9:1",
        ] {
            assert!(validate_instance_id(ok).is_ok(), "{ok:?}");
        }
        let long = "a".repeat(MAX_ID_LEN + 1);
        for bad in [
            "",
            &long,
            "a/b",
            "a\\b",
            "a%2Eb",
            "a?b",
            "a#b",
            "a b",
            "a\tb",
            "a\nb",
            "a\0b",
            "a\u{7f}b",
            "a~b",
            "a+b",
            "a;b",
            "a@b",
            "a!b",
            "a*b",
            "a'b",
            "a,b",
            "a=b",
            "a&b",
            "a$b",
            "a(b)",
            "a[b]",
            "a\"b",
            "a<b>",
            "a{b}",
            "a|b",
            "a^b",
            "a`b",
            "\u{e9}",
            "a\u{200b}b",
        ] {
            let e = validate_instance_id(bad).unwrap_err();
            assert_eq!(e.field, "id", "{bad:?}");
        }
        // A check id lives in a path segment too, and follows the same rule.
        let spec = CheckSpec {
            id: Some("..".into()),
            ttl: Some("10s".into()),
            ..CheckSpec::default()
        };
        assert_eq!(validate_check(0, &spec).unwrap_err().field, "checks[0].id");
    }
}

#[cfg(test)]
mod check_tests {
    use super::*;

    fn spec() -> CheckSpec {
        CheckSpec {
            http: Some("http://10.0.0.1:8080/health".into()),
            interval: Some("10s".into()),
            ..Default::default()
        }
    }

    fn field(s: CheckSpec) -> String {
        validate_check(0, &s).unwrap_err().field
    }

    #[test]
    fn defaults_are_filled_in() {
        let c = validate_check(1, &spec()).unwrap();
        assert_eq!(c.id, "check-2");
        assert_eq!((c.interval_ms, c.timeout_ms), (10_000, 10_000));
        assert_eq!(c.status, Health::Critical);
        assert!(matches!(c.kind, CheckKind::Http { ref method, .. } if method == "GET"));
        let ttl = validate_check(
            0,
            &CheckSpec {
                ttl: Some("30s".into()),
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!((ttl.kind, ttl.interval_ms), (CheckKind::Ttl, 30_000));
        let g = validate_check(
            0,
            &CheckSpec {
                grpc: Some("h:9090/pay".into()),
                interval: Some("5s".into()),
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(
            g.kind,
            CheckKind::Grpc {
                addr: "h:9090".into(),
                service: "pay".into()
            }
        );
    }

    #[test]
    fn invalid_checks_name_their_field() {
        assert_eq!(
            field(CheckSpec {
                interval: Some("0s".into()),
                ..spec()
            }),
            "checks[0].interval"
        );
        assert_eq!(
            field(CheckSpec {
                interval: None,
                ..spec()
            }),
            "checks[0].interval"
        );
        assert_eq!(
            field(CheckSpec {
                http: Some("ftp://x".into()),
                ..spec()
            }),
            "checks[0].http"
        );
        assert_eq!(
            field(CheckSpec {
                http: Some("http://".into()),
                ..spec()
            }),
            "checks[0].http"
        );
        assert_eq!(
            field(CheckSpec {
                http: None,
                ..spec()
            }),
            "checks[0]"
        );
        assert_eq!(
            field(CheckSpec {
                tcp: Some("h:1".into()),
                ..spec()
            }),
            "checks[0]"
        );
        assert_eq!(
            field(CheckSpec {
                timeout: Some("20s".into()),
                ..spec()
            }),
            "checks[0].timeout"
        );
        assert_eq!(
            field(CheckSpec {
                failures_before_critical: Some(0),
                ..spec()
            }),
            "checks[0].failures_before_critical"
        );
        assert_eq!(
            field(CheckSpec {
                method: Some("BREW".into()),
                ..spec()
            }),
            "checks[0].method"
        );
        assert_eq!(
            field(CheckSpec {
                http: None,
                tcp: Some("nohost".into()),
                ..spec()
            }),
            "checks[0].tcp"
        );
        assert_eq!(
            field(CheckSpec {
                http: None,
                args: Some(vec![]),
                ..spec()
            }),
            "checks[0].args"
        );
    }

    /// Milliseconds that do not fit 64 bits are out of range, not cut
    /// into it: 2305843009213693962s is 125 × 2⁶⁴ + 10 000 ms, which a
    /// truncating cast took for 10s. The `registration` fuzz target checks
    /// that an accepted duration is the one sent, and keeps this input.
    #[test]
    fn durations_beyond_64_bits_of_milliseconds_are_out_of_range() {
        let huge = || Some("2305843009213693962s".to_string());
        assert_eq!(
            field(CheckSpec {
                interval: huge(),
                ..spec()
            }),
            "checks[0].interval"
        );
        assert_eq!(
            field(CheckSpec {
                timeout: huge(),
                ..spec()
            }),
            "checks[0].timeout"
        );
        assert_eq!(
            field(CheckSpec {
                deregister_critical_after: huge(),
                ..spec()
            }),
            "checks[0].deregister_critical_after"
        );
        let ttl = CheckSpec {
            ttl: huge(),
            ..Default::default()
        };
        assert_eq!(field(ttl), "checks[0].ttl");
    }

    #[test]
    fn output_is_truncated_on_a_char_boundary() {
        let s = "é".repeat(3000);
        let t = truncate_output(&s);
        assert!(t.len() <= MAX_CHECK_OUTPUT);
        assert!(s.starts_with(&t));
    }
}
