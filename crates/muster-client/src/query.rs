//! [`Query`]: a service and the discovery filters of the API.

use std::fmt;

use muster_types::WatchQuery;

/// Which instances a query returns by health.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum HealthFilter {
    /// Only passing instances (the API's default).
    #[default]
    Passing,
    /// Every instance, whatever its health.
    Any,
}

/// A service and the filters of a discovery query, as the API takes them:
/// every tag must be present, every `meta` pair must match, `version` is a
/// semver range (`^1.4`, `>=2,<3`), `zone` an exact zone.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Query {
    service: String,
    tags: Vec<String>,
    meta: Vec<(String, String)>,
    version: Option<String>,
    zone: Option<String>,
    health: HealthFilter,
}

impl Query {
    /// All passing instances of `service`.
    pub fn new(service: impl Into<String>) -> Self {
        Query {
            service: service.into(),
            ..Query::default()
        }
    }

    /// Requires a tag (repeatable; all must match).
    pub fn tag(mut self, tag: impl Into<String>) -> Self {
        let tag = tag.into();
        if let Err(i) = self.tags.binary_search(&tag) {
            self.tags.insert(i, tag);
        }
        self
    }

    /// Requires a metadata entry (repeatable; all must match).
    pub fn meta(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        let pair = (key.into(), value.into());
        if let Err(i) = self.meta.binary_search(&pair) {
            self.meta.insert(i, pair);
        }
        self
    }

    /// Requires a version in this semver range, e.g. `^1.4`.
    pub fn version(mut self, range: impl Into<String>) -> Self {
        self.version = Some(range.into());
        self
    }

    /// Requires this zone.
    pub fn zone(mut self, zone: impl Into<String>) -> Self {
        self.zone = Some(zone.into());
        self
    }

    /// Chooses instances by health (default: passing only).
    pub fn health(mut self, health: HealthFilter) -> Self {
        self.health = health;
        self
    }

    /// The service queried.
    pub fn service(&self) -> &str {
        &self.service
    }

    /// The query as one query of a multiplexed watch (`POST /v1/watch`),
    /// in the client's namespace, resuming from `index` when given.
    pub fn to_watch_query(&self, id: impl Into<String>, index: Option<u64>) -> WatchQuery {
        WatchQuery {
            id: id.into(),
            service: self.service.clone(),
            namespace: None,
            tag: self.tags.clone(),
            meta: self.meta.iter().map(|(k, v)| format!("{k}:{v}")).collect(),
            version: self.version.clone(),
            zone: self.zone.clone(),
            health: (self.health == HealthFilter::Any).then(|| "any".to_string()),
            index,
        }
    }

    /// The filters as query-string pairs (without the service).
    pub fn pairs(&self) -> Vec<(&'static str, String)> {
        let mut p = Vec::new();
        p.extend(self.tags.iter().map(|t| ("tag", t.clone())));
        p.extend(self.meta.iter().map(|(k, v)| ("meta", format!("{k}:{v}"))));
        if let Some(v) = &self.version {
            p.push(("version", v.clone()));
        }
        if let Some(z) = &self.zone {
            p.push(("zone", z.clone()));
        }
        if self.health == HealthFilter::Any {
            p.push(("health", "any".into()));
        }
        p
    }
}

/// `payments?tag=v2&version=^1.4`, for messages.
impl fmt::Display for Query {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.service)?;
        for (i, (k, v)) in self.pairs().iter().enumerate() {
            write!(f, "{}{k}={v}", if i == 0 { '?' } else { '&' })?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_are_canonical() {
        let a = Query::new("pay").tag("b").tag("a").meta("k", "v").tag("a");
        let b = Query::new("pay").meta("k", "v").tag("a").tag("b");
        assert_eq!(a, b);
        assert_eq!(a.to_string(), "pay?tag=a&tag=b&meta=k:v");
        let c = Query::new("pay")
            .version("^1.4")
            .zone("eu-1a")
            .health(HealthFilter::Any);
        assert_eq!(
            c.pairs(),
            vec![
                ("version", "^1.4".into()),
                ("zone", "eu-1a".into()),
                ("health", "any".into())
            ]
        );
    }
}
