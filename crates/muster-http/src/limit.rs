//! Limits against abuse that are counted per source: caps on what is open
//! at once (connections, watches, parked blocking queries), in all and per
//! source address, and a request-rate limit per token or source address.
//!
//! A cap hands out a [`Permit`] that gives its place back when dropped, so
//! every way a connection, a watch or a blocking query ends (the client
//! goes, the stream is dropped, the wait times out, the server shuts down)
//! frees it; nothing has to remember to.
//!
//! The source of a request is its peer's IP address, IPv6 ones grouped by
//! their /64 prefix: a single IPv6 host usually holds a whole /64, and
//! counting its addresses apart would make a per-source cap no cap at all.
//! There is no exemption for loopback or any other address.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::net::{IpAddr, Ipv6Addr};
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};

use crate::error::ApiError;

/// Where requests come from, as the per-source limits count them: an IPv4
/// address, or the /64 prefix of an IPv6 one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Source(IpAddr);

impl Source {
    /// The source of a peer at `ip` (an IPv4-mapped IPv6 address counts
    /// as its IPv4 address).
    pub fn of(ip: IpAddr) -> Source {
        match ip.to_canonical() {
            IpAddr::V6(v6) => {
                let prefix = u128::from(v6) & !((1u128 << 64) - 1);
                Source(IpAddr::V6(Ipv6Addr::from(prefix)))
            }
            v4 => Source(v4),
        }
    }
}

/// What the accept loop tells each request of a connection: the request
/// body's deadline and where the connection comes from.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Conn {
    pub(crate) body_timeout: Duration,
    pub(crate) source: Source,
}

/// The source of a request, for handlers that count per source; `None`
/// when the router is called without the accept loop (in-process tests).
pub struct Peer(pub Option<Source>);

impl<S: Send + Sync> FromRequestParts<S> for Peer {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        Ok(Peer(parts.extensions.get::<Conn>().map(|c| c.source)))
    }
}

/// What a cap counts; names the metric labels, the error and the
/// configuration keys in messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// Connections per source (the accept loop caps all connections).
    Connections,
    /// Open watches: `GET /v1/watch` streams and `POST /v1/watch` streams.
    Watches,
    /// Blocking queries parked waiting for a change.
    BlockingQueries,
}

impl Kind {
    fn limit(self, per_source: bool) -> &'static str {
        match (self, per_source) {
            (Kind::Connections, false) => "connections",
            (Kind::Connections, true) => "connections_per_ip",
            (Kind::Watches, false) => "watches",
            (Kind::Watches, true) => "watches_per_ip",
            (Kind::BlockingQueries, false) => "blocking_queries",
            (Kind::BlockingQueries, true) => "blocking_queries_per_ip",
        }
    }

    fn gauge(self) -> Option<&'static str> {
        match self {
            Kind::Connections => None,
            Kind::Watches => Some("muster_http_watches"),
            Kind::BlockingQueries => Some("muster_http_blocking_queries"),
        }
    }
}

/// Counts one refusal by a limit in `muster_http_limited_total{limit}`.
pub(crate) fn count_refusal(limit: &'static str) {
    metrics::counter!("muster_http_limited_total", "limit" => limit).increment(1);
}

/// A cap on things open at once: `max` in all, `per_source` from one
/// source (0: no per-source cap).
pub(crate) struct Cap {
    kind: Kind,
    max: usize,
    per_source: usize,
    open: Mutex<Open>,
}

#[derive(Default)]
struct Open {
    total: usize,
    /// Only sources with something open: an entry goes with its last
    /// permit, so memory follows what is open, not who ever came.
    by_source: HashMap<Source, usize>,
}

/// Which part of a cap refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Over {
    kind: Kind,
    per_source: bool,
    max: usize,
}

impl Cap {
    pub(crate) fn new(kind: Kind, max: usize, per_source: usize) -> Arc<Cap> {
        Arc::new(Cap {
            kind,
            max,
            per_source,
            open: Mutex::default(),
        })
    }

    /// A place for `source` (counted in all only when `None`), or which
    /// part of the cap is full; the refusal is counted.
    pub(crate) fn acquire(self: &Arc<Self>, source: Option<Source>) -> Result<Permit, Over> {
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        if open.total >= self.max {
            return Err(self.refuse(false, self.max));
        }
        let source = source.filter(|_| self.per_source > 0);
        if let Some(s) = source {
            let n = open.by_source.entry(s).or_default();
            if *n >= self.per_source {
                return Err(self.refuse(true, self.per_source));
            }
            *n += 1;
        }
        open.total += 1;
        drop(open);
        if let Some(g) = self.kind.gauge() {
            metrics::gauge!(g).increment(1.0);
        }
        Ok(Permit {
            cap: Arc::clone(self),
            source,
        })
    }

    fn refuse(&self, per_source: bool, max: usize) -> Over {
        count_refusal(self.kind.limit(per_source));
        Over {
            kind: self.kind,
            per_source,
            max,
        }
    }

    /// How many are open, in all and from `source` (for tests).
    #[cfg(test)]
    fn open(&self, source: Source) -> (usize, usize) {
        let open = self.open.lock().unwrap();
        (
            open.total,
            open.by_source.get(&source).copied().unwrap_or(0),
        )
    }
}

/// One place in a [`Cap`], given back when dropped.
pub(crate) struct Permit {
    cap: Arc<Cap>,
    source: Option<Source>,
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut open = self.cap.open.lock().unwrap_or_else(PoisonError::into_inner);
        open.total -= 1;
        if let Some(s) = self.source
            && let Some(n) = open.by_source.get_mut(&s)
        {
            *n -= 1;
            if *n == 0 {
                open.by_source.remove(&s);
            }
        }
        drop(open);
        if let Some(g) = self.cap.kind.gauge() {
            metrics::gauge!(g).decrement(1.0);
        }
    }
}

impl From<Over> for ApiError {
    fn from(o: Over) -> Self {
        let (code, what, key) = match o.kind {
            Kind::Watches => ("too_many_watches", "open watches", "max_watches"),
            Kind::BlockingQueries => (
                "too_many_blocking_queries",
                "parked blocking queries",
                "max_blocking_queries",
            ),
            Kind::Connections => ("too_many_connections", "connections", "max_connections"),
        };
        let message = if o.per_source {
            format!(
                "this client address has {} {what}, the most allowed per address \
                 ({key}_per_ip); close one or retry later",
                o.max
            )
        } else {
            format!(
                "the registry has {} {what}, the most it allows ({key}); retry later",
                o.max
            )
        };
        ApiError::new(StatusCode::TOO_MANY_REQUESTS, code, message).retry_after(1)
    }
}

/// The caps counted by the routes themselves.
pub(crate) struct Caps {
    pub(crate) watches: Arc<Cap>,
    pub(crate) blocking: Arc<Cap>,
}

impl Caps {
    pub(crate) fn new(limits: &crate::serve::Limits) -> Caps {
        Caps {
            watches: Cap::new(Kind::Watches, limits.max_watches, limits.max_watches_per_ip),
            blocking: Cap::new(
                Kind::BlockingQueries,
                limits.max_blocking_queries,
                limits.max_blocking_queries_per_ip,
            ),
        }
    }
}

/// What a request is rate-limited by: its token when it presents one
/// (only a keyed hash of it is kept), else its source.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum RateKey {
    Token(u64),
    Source(Source),
    /// No token and no known source (the router called without the
    /// accept loop): one shared bucket.
    Unknown,
}

/// Check the eviction of idle keys every this many requests.
const EVICT_EVERY: u64 = 4096;

/// The request-rate limit: a GCRA bucket of `rate` requests a second
/// (bursts of `burst`) per token or source.
pub(crate) struct Rate {
    limiter: DefaultKeyedRateLimiter<RateKey>,
    /// Keyed with random keys made at start, so the hash of a token is no
    /// stable stand-in for it outside this process.
    hasher: std::hash::RandomState,
    checks: AtomicU64,
}

impl Rate {
    /// A limit of `rate` a second with bursts of `burst` (0: `rate`);
    /// `None` when `rate` is 0 (off).
    pub(crate) fn new(rate: u32, burst: u32) -> Option<Arc<Rate>> {
        let rate = NonZeroU32::new(rate)?;
        let burst = NonZeroU32::new(burst).unwrap_or(rate);
        Some(Arc::new(Rate {
            limiter: DefaultKeyedRateLimiter::dashmap(Quota::per_second(rate).allow_burst(burst)),
            hasher: std::hash::RandomState::new(),
            checks: AtomicU64::new(0),
        }))
    }

    /// Lets a request through, or answers it with 429 `rate_limited` and
    /// the seconds to wait in `Retry-After`.
    pub(crate) fn check(
        &self,
        headers: &HeaderMap,
        source: Option<Source>,
    ) -> Result<(), ApiError> {
        let key = match token(headers) {
            Some(t) => RateKey::Token(self.hasher.hash_one(t)),
            None => source.map_or(RateKey::Unknown, RateKey::Source),
        };
        // Keys whose bucket is full again are as good as absent: drop
        // them now and then, so memory follows the recently active keys.
        if self.checks.fetch_add(1, Ordering::Relaxed) % EVICT_EVERY == EVICT_EVERY - 1 {
            self.limiter.retain_recent();
            self.limiter.shrink_to_fit();
        }
        match self.limiter.check_key(&key) {
            Ok(()) => Ok(()),
            Err(not_until) => {
                count_refusal("rate");
                let wait = not_until.wait_time_from(DefaultClock::default().now());
                let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
                let by = match key {
                    RateKey::Token(_) => "this token",
                    _ => "this client address",
                };
                Err(ApiError::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "rate_limited",
                    format!(
                        "{by} sent more requests than the rate limit allows (rate_limit); \
                         retry after {secs} s"
                    ),
                )
                .retry_after(secs.max(1)))
            }
        }
    }

    /// How many keys are kept (for tests).
    #[cfg(test)]
    fn keys(&self) -> usize {
        self.limiter.len()
    }
}

/// The token a request presents, as bytes: `Authorization: Bearer <t>`,
/// else `X-Muster-Token: <t>`. Not validated here; the registry decides
/// what a token may do.
fn token(headers: &HeaderMap) -> Option<&[u8]> {
    if let Some(v) = headers.get(header::AUTHORIZATION) {
        let v = v.as_bytes();
        if v.len() > 7 && v[..7].eq_ignore_ascii_case(b"bearer ") {
            let t = v[7..].trim_ascii();
            if !t.is_empty() {
                return Some(t);
            }
        }
    }
    headers
        .get("x-muster-token")
        .map(HeaderValue::as_bytes)
        .map(<[u8]>::trim_ascii)
        .filter(|t| !t.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::response::IntoResponse;

    fn src(s: &str) -> Source {
        Source::of(s.parse().unwrap())
    }

    #[test]
    fn ipv6_sources_are_their_64_prefix_and_mapped_ipv4_is_ipv4() {
        assert_eq!(src("2001:db8:1:2:aaaa::1"), src("2001:db8:1:2:bbbb::2"));
        assert_ne!(src("2001:db8:1:2::1"), src("2001:db8:1:3::1"));
        assert_eq!(src("::ffff:10.0.0.1"), src("10.0.0.1"));
        assert_ne!(src("10.0.0.1"), src("10.0.0.2"));
    }

    #[test]
    fn a_cap_counts_in_all_and_per_source_and_every_drop_frees() {
        let cap = Cap::new(Kind::Watches, 3, 2);
        let (a, b) = (src("10.0.0.1"), src("10.0.0.2"));
        let a1 = cap.acquire(Some(a)).unwrap();
        let a2 = cap.acquire(Some(a)).unwrap();
        let over = cap.acquire(Some(a)).err().unwrap();
        assert!(over.per_source);
        let b1 = cap.acquire(Some(b)).unwrap();
        let over = cap.acquire(Some(b)).err().unwrap();
        assert!(!over.per_source, "the cap in all is reached first");
        assert_eq!(cap.open(a), (3, 2));
        drop(a1);
        assert_eq!(cap.open(a), (2, 1));
        let _a3 = cap.acquire(Some(a)).unwrap();
        drop((a2, b1));
        assert_eq!(cap.open(b), (1, 0));
        assert!(
            !cap.open.lock().unwrap().by_source.contains_key(&b),
            "a source with nothing open is forgotten"
        );
    }

    #[test]
    fn a_per_source_cap_of_zero_is_off() {
        let cap = Cap::new(Kind::BlockingQueries, 100, 0);
        let held: Vec<_> = (0..100)
            .map(|_| cap.acquire(Some(src("10.0.0.1"))).unwrap())
            .collect();
        assert!(cap.acquire(Some(src("10.0.0.1"))).is_err());
        assert!(cap.open.lock().unwrap().by_source.is_empty());
        drop(held);
    }

    #[test]
    fn the_rate_key_is_the_token_from_either_header_else_the_source() {
        let mut h = HeaderMap::new();
        assert_eq!(token(&h), None);
        h.insert("x-muster-token", HeaderValue::from_static(" t2 "));
        assert_eq!(token(&h), Some(&b"t2"[..]));
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("bEaReR t1"));
        assert_eq!(token(&h), Some(&b"t1"[..]));
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic x"));
        assert_eq!(token(&h), Some(&b"t2"[..]));
    }

    #[test]
    fn the_rate_limit_is_per_key_and_idle_keys_are_evicted() {
        let rate = Rate::new(1000, 2).unwrap();
        let s = Some(src("10.0.0.1"));
        let none = HeaderMap::new();
        assert!(rate.check(&none, s).is_ok());
        assert!(rate.check(&none, s).is_ok());
        let refused = rate.check(&none, s).unwrap_err().into_response();
        assert_eq!(refused.status(), 429);
        assert_eq!(refused.headers()[header::RETRY_AFTER], "1");
        assert!(rate.check(&none, Some(src("10.0.0.2"))).is_ok());
        let mut tok = HeaderMap::new();
        tok.insert("x-muster-token", HeaderValue::from_static("t"));
        assert!(rate.check(&tok, s).is_ok(), "a token has its own bucket");
        assert!(rate.keys() >= 3);
        // At 1000/s the buckets are full again within milliseconds; the
        // eviction pass then drops them. Bounded by a deadline.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            rate.limiter.retain_recent();
            if rate.keys() == 0 {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "idle keys never evicted"
            );
            std::thread::yield_now();
        }
        assert!(Rate::new(0, 10).is_none(), "a rate of 0 is off");
    }
}
