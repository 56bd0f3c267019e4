//! Validation at the edge: every input is checked here before it can reach
//! the log, so a bad request never half-applies.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use crate::limits::*;
use crate::{DEFAULT_WEIGHT, RegisterRequest, parse_duration, parse_lease_id};

/// A rejected input: which field, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct FieldError {
    /// Stable error code (`invalid_field`, `not_supported`, ...).
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
}

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

/// Checks an instance id: 1 to 128 characters of `[A-Za-z0-9._:-]`.
pub fn validate_instance_id(s: &str) -> Result<(), FieldError> {
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
                 A-Z, a-z, 0-9, '.', '_', ':' and '-'"
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
        if !self.checks.is_empty() {
            return Err(FieldError {
                code: "not_supported",
                field: "checks".into(),
                message: "server-run health checks are not supported yet by this registry; \
                          register without `checks` and use a ttl lease for liveness"
                    .into(),
            });
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
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let e = RegisterRequest { checks, ..base() }.validate().unwrap_err();
        assert_eq!((e.code, e.field.as_str()), ("not_supported", "checks"));
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
}
