//! Discovery filters. All given filters must match (logical AND).

use muster_types::{FieldError, Health};

use crate::Instance;

/// Which health states a query returns.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum HealthFilter {
    /// Only passing instances (the default).
    #[default]
    Passing,
    /// Every instance whatever its health.
    Any,
}

/// A version filter: a semver range, or a literal for non-semver versions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionMatch {
    raw: String,
    req: Option<semver::VersionReq>,
}

impl VersionMatch {
    /// Parses a filter. Strings that are not a semver range (`"blue"`) are
    /// kept as literals and match only an identical version string.
    pub fn parse(raw: &str) -> Result<Self, FieldError> {
        if raw.is_empty() || raw.len() > muster_types::limits::MAX_VERSION_LEN {
            return Err(FieldError::invalid(
                "version",
                "version filter must be 1 to 64 characters",
            ));
        }
        Ok(VersionMatch {
            raw: raw.to_string(),
            req: semver::VersionReq::parse(raw).ok(),
        })
    }

    /// Whether an instance version matches: semver versions are tested
    /// against the range, anything else only by equality.
    pub fn matches(&self, version: Option<&str>) -> bool {
        let Some(v) = version else {
            return false;
        };
        match (&self.req, semver::Version::parse(v)) {
            (Some(req), Ok(parsed)) => req.matches(&parsed),
            _ => v == self.raw,
        }
    }

    /// The filter as given.
    pub fn as_str(&self) -> &str {
        &self.raw
    }
}

/// A discovery query.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Query {
    /// Tags that must all be present.
    pub tags: Vec<String>,
    /// Metadata entries that must all be present with these values.
    pub meta: Vec<(String, String)>,
    /// Version filter.
    pub version: Option<VersionMatch>,
    /// Zone that must match exactly.
    pub zone: Option<String>,
    /// Health filter.
    pub health: HealthFilter,
}

impl Query {
    /// Whether an instance passes every filter.
    pub fn matches(&self, i: &Instance) -> bool {
        (self.health == HealthFilter::Any || i.health == Health::Passing)
            && self.tags.iter().all(|t| i.tags.contains(t))
            && self
                .meta
                .iter()
                .all(|(k, v)| i.meta.get(k).is_some_and(|have| have == v))
            && self
                .zone
                .as_ref()
                .is_none_or(|z| i.zone.as_deref() == Some(z.as_str()))
            && self
                .version
                .as_ref()
                .is_none_or(|vm| vm.matches(i.version.as_deref()))
    }

    /// A canonical text form: equal queries give equal keys, whatever the
    /// order their parameters came in, and different ones different keys,
    /// whatever their strings hold (each is written after its length, so
    /// none can pass for a separator). Used as the read-cache key.
    pub fn cache_key(&self) -> String {
        let mut tags = self.tags.clone();
        tags.sort();
        tags.dedup();
        let mut meta = self.meta.clone();
        meta.sort();
        meta.dedup();
        let mut s = String::new();
        for t in &tags {
            push_field(&mut s, 't', t);
        }
        for (k, v) in &meta {
            push_field(&mut s, 'm', k);
            push_field(&mut s, '=', v);
        }
        if let Some(v) = &self.version {
            push_field(&mut s, 'v', v.as_str());
        }
        if let Some(z) = &self.zone {
            push_field(&mut s, 'z', z);
        }
        s.push_str(match self.health {
            HealthFilter::Passing => "h=passing",
            HealthFilter::Any => "h=any",
        });
        s
    }
}

/// Appends a field of a cache key: its letter, the value's length in
/// bytes, `:`, the value.
fn push_field(key: &mut String, letter: char, value: &str) {
    use std::fmt::Write;

    key.push(letter);
    write!(key, "{}:", value.len()).expect("writing to a String does not fail");
    key.push_str(value);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_ranges_and_literals() {
        let caret = VersionMatch::parse("^1.4").unwrap();
        assert!(caret.matches(Some("1.4.0")));
        assert!(caret.matches(Some("1.9.3")));
        assert!(!caret.matches(Some("1.3.9")));
        assert!(!caret.matches(Some("2.0.0")));
        assert!(!caret.matches(None));

        let window = VersionMatch::parse(">=2, <3").unwrap();
        assert!(window.matches(Some("2.5.1")));
        assert!(!window.matches(Some("3.0.0")));

        // A non-semver instance version matches only by equality.
        let lit = VersionMatch::parse("blue").unwrap();
        assert!(lit.matches(Some("blue")));
        assert!(!lit.matches(Some("green")));
        let r = VersionMatch::parse("^1").unwrap();
        assert!(!r.matches(Some("v1-beta")));
        let eq = VersionMatch::parse("v1-beta").unwrap();
        assert!(eq.matches(Some("v1-beta")));
    }

    /// Filters that select differently never share a key, whatever their
    /// strings hold: a tag, meta value or version holding what a key
    /// separates fields with passed for several filters, and the caches
    /// keyed by it (discovery answers, watch frames) served one query the
    /// answer of another. The `discovery_query` fuzz target checks this
    /// for any two queries and keeps these in its corpus.
    #[test]
    fn different_filters_have_different_cache_keys() {
        let version = |v: &str| Some(VersionMatch::parse(v).unwrap());
        let pairs = [
            (
                Query {
                    tags: vec!["a".into(), "b".into()],
                    ..Default::default()
                },
                Query {
                    tags: vec!["a\u{1}t=b".into()],
                    ..Default::default()
                },
            ),
            (
                Query {
                    meta: vec![("k".into(), "v".into()), ("l".into(), "w".into())],
                    ..Default::default()
                },
                Query {
                    meta: vec![("k".into(), "v\u{1}m=l:w".into())],
                    ..Default::default()
                },
            ),
            (
                Query {
                    version: version("1"),
                    zone: Some("eu".into()),
                    ..Default::default()
                },
                Query {
                    version: version("1\u{1}z=eu"),
                    ..Default::default()
                },
            ),
        ];
        for (a, b) in pairs {
            assert_ne!(a.cache_key(), b.cache_key(), "{a:?} and {b:?}");
        }
    }

    #[test]
    fn cache_key_ignores_parameter_order() {
        let a = Query {
            tags: vec!["b".into(), "a".into()],
            meta: vec![("k".into(), "v".into()), ("a".into(), "1".into())],
            ..Default::default()
        };
        let b = Query {
            tags: vec!["a".into(), "b".into(), "a".into()],
            meta: vec![("a".into(), "1".into()), ("k".into(), "v".into())],
            ..Default::default()
        };
        assert_eq!(a.cache_key(), b.cache_key());
        let c = Query {
            health: HealthFilter::Any,
            ..a.clone()
        };
        assert_ne!(a.cache_key(), c.cache_key());
    }
}
