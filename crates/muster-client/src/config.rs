//! [`ClientBuilder`] and the settings it validates once.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use muster_types::{DEFAULT_NAMESPACE, limits, validate_namespace};

use crate::Client;
use crate::error::{Error, Result};

/// Time limits of the client's calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// Longest a TCP connect to one registry address may take before the
    /// next address is tried.
    pub connect: Duration,
    /// Longest one request (connect included) may take (default 5 s).
    /// Watches are exempt.
    pub request: Duration,
    /// A watch that received nothing (not even a keep-alive, which the
    /// registry sends every 15 s) for this long is considered broken and
    /// reconnected.
    pub watch_idle: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect: Duration::from_secs(2),
            request: Duration::from_secs(5),
            watch_idle: Duration::from_secs(45),
        }
    }
}

/// How calls are retried: each attempt tries every registry address in turn,
/// and attempts are separated by a jittered exponential back-off. A broken
/// watch reconnects with the same back-off.
///
/// The defaults (3 passes, 100 ms doubling up to 500 ms, each wait jittered
/// to half to all of it) are the Python client's too (`spec/client/`): the
/// low ceiling brings a watch back within 1 s of the registry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// Passes over the address list before a call gives up (at least 1).
    pub attempts: u32,
    /// Back-off after the first failed pass; doubled after each further one.
    pub initial: Duration,
    /// Largest back-off (default 500 ms).
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            attempts: 3,
            initial: Duration::from_millis(100),
            max: Duration::from_millis(500),
        }
    }
}

impl Backoff {
    /// The back-off before retry number `n` (0-based), without jitter.
    pub(crate) fn delay(&self, n: u32) -> Duration {
        let factor = 1u32.checked_shl(n.min(16)).unwrap_or(u32::MAX);
        self.initial.saturating_mul(factor).min(self.max)
    }
}

/// Everything a [`Client`] was built with.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub addrs: Vec<String>,
    pub namespace: String,
    pub timeouts: Timeouts,
    pub backoff: Backoff,
    pub lease_ttl: Duration,
    pub max_staleness: Duration,
    pub lookup_idle: Duration,
    pub queries_per_stream: usize,
    pub tls: TlsSettings,
    pub token: Option<Token>,
}

/// An ACL token's secret, sent as `Authorization: Bearer`. Its `Debug` is
/// redacted: settings may be logged, the secret must not be.
#[derive(Clone)]
pub(crate) struct Token(pub String);

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

/// The PEM files of [`ClientBuilder::tls_ca_file`] and
/// [`ClientBuilder::tls_client_cert`], read when the client is built.
#[derive(Debug, Clone, Default)]
#[cfg_attr(not(feature = "tls"), allow(dead_code))]
pub(crate) struct TlsSettings {
    /// CA certificates to trust instead of the system's.
    pub ca_pem: Option<Vec<u8>>,
    /// The client certificate chain and its key, concatenated.
    pub identity_pem: Option<Vec<u8>>,
}

/// Builds a [`Client`]; start with [`Client::builder`].
///
/// ```no_run
/// # async fn f() -> muster_client::Result<()> {
/// use std::time::Duration;
/// let client = muster_client::Client::builder()
///     .addrs(["http://10.0.0.1:7700", "http://10.0.0.2:7700"])
///     .namespace("prod")
///     .lease_ttl(Duration::from_secs(10))
///     .max_staleness(Duration::from_secs(300))
///     .build()?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct ClientBuilder {
    addrs: Vec<String>,
    namespace: String,
    timeouts: Timeouts,
    backoff: Backoff,
    lease_ttl: Duration,
    max_staleness: Duration,
    lookup_idle: Duration,
    queries_per_stream: usize,
    ca_file: Option<PathBuf>,
    client_cert: Option<(PathBuf, PathBuf)>,
    token: Option<Token>,
}

/// Default of [`ClientBuilder::lookup_idle_timeout`].
pub const DEFAULT_LOOKUP_IDLE: Duration = Duration::from_secs(600);
/// Default of [`ClientBuilder::watch_queries_per_stream`]: under the
/// registry's default `watch_max_queries` (1024).
pub const DEFAULT_QUERIES_PER_STREAM: usize = 1000;

impl Default for ClientBuilder {
    fn default() -> Self {
        ClientBuilder {
            addrs: Vec::new(),
            namespace: DEFAULT_NAMESPACE.to_string(),
            timeouts: Timeouts::default(),
            backoff: Backoff::default(),
            lease_ttl: Duration::from_secs(10),
            max_staleness: Duration::from_secs(300),
            lookup_idle: DEFAULT_LOOKUP_IDLE,
            queries_per_stream: DEFAULT_QUERIES_PER_STREAM,
            ca_file: None,
            client_cert: None,
            token: None,
        }
    }
}

impl ClientBuilder {
    /// Registry addresses, tried in order with failover: `http://host:port`
    /// or `host:port`. Without any, `http://127.0.0.1:7700`.
    pub fn addrs<I, S>(mut self, addrs: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.addrs.extend(addrs.into_iter().map(Into::into));
        self
    }

    /// Namespace of every registration and lookup (default `default`).
    pub fn namespace(mut self, namespace: impl Into<String>) -> Self {
        self.namespace = namespace.into();
        self
    }

    /// Connect, request and watch-idle time limits.
    pub fn timeouts(mut self, timeouts: Timeouts) -> Self {
        self.timeouts = timeouts;
        self
    }

    /// Retry and failover back-off.
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// TTL of the client's lease (1 s to 1 h, default 10 s). The lease is
    /// renewed about every third of it, so an instance of a crashed process
    /// disappears within one TTL.
    pub fn lease_ttl(mut self, ttl: Duration) -> Self {
        self.lease_ttl = ttl;
        self
    }

    /// How long cached discovery answers stay usable once the registry is
    /// unreachable (default 5 min); later lookups fail with [`Error::Stale`].
    pub fn max_staleness(mut self, max: Duration) -> Self {
        self.max_staleness = max;
        self
    }

    /// How long a discovery query may go unused before its cache entry is
    /// dropped and its watch query removed from the client's stream
    /// (default 10 min). A query in use by a [`Watcher`](crate::Watcher)
    /// or a `tower` discover stream is never dropped; a later lookup of a
    /// dropped query waits for a fresh snapshot again.
    pub fn lookup_idle_timeout(mut self, idle: Duration) -> Self {
        self.lookup_idle = idle;
        self
    }

    /// Most queries on one watch stream (default 1000). Every lookup of the
    /// client shares one multiplexed watch connection (`POST /v1/watch`);
    /// past this many queries, or the registry's request-size limit, it
    /// opens one more. Lower it only for a registry configured with a
    /// `watch_max_queries` below it (the client also halves it by itself
    /// when the registry refuses a stream as too large).
    pub fn watch_queries_per_stream(mut self, n: usize) -> Self {
        self.queries_per_stream = n;
        self
    }

    /// Trust only the CA certificates in this PEM file for `https://`
    /// registry addresses, instead of the system's roots (as `curl
    /// --cacert`): a registry with a certificate from a private CA, such as
    /// one made by `muster tls ca create`. Read when the client is built.
    /// Needs the `tls` feature.
    pub fn tls_ca_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.ca_file = Some(path.into());
        self
    }

    /// Present this client certificate (PEM chain, leaf first) and its
    /// private key (PEM) to registries that require one (`tls_client_ca`
    /// on the agent). Read when the client is built. Needs the `tls`
    /// feature.
    pub fn tls_client_cert(mut self, cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> Self {
        self.client_cert = Some((cert.into(), key.into()));
        self
    }

    /// Present this ACL token (its secret) with every request, as
    /// `Authorization: Bearer <secret>`: needed when the agent runs with
    /// `--acl`. The secret is never logged or shown by the client.
    pub fn token(mut self, secret: impl Into<String>) -> Self {
        self.token = Some(Token(secret.into()));
        self
    }

    /// Validates the settings and builds the client. Makes no network call.
    pub fn build(self) -> Result<Client> {
        let settings = self.validate()?;
        Client::from_settings(Arc::new(settings))
    }

    fn validate(self) -> Result<Settings> {
        let tls = self.tls()?;
        if let Some(t) = &self.token
            && (t.0.is_empty() || !t.0.bytes().all(|b| b.is_ascii_graphic()))
        {
            return Err(Error::Config(
                "token must be a non-empty string of visible ASCII characters".into(),
            ));
        }
        let mut addrs = Vec::new();
        let given = if self.addrs.is_empty() {
            vec!["http://127.0.0.1:7700".to_string()]
        } else {
            self.addrs
        };
        for a in given {
            let a = a.trim().trim_end_matches('/');
            if a.is_empty() {
                return Err(Error::Config("an empty registry address".into()));
            }
            let base = if a.contains("://") {
                a.to_string()
            } else {
                format!("http://{a}")
            };
            if !base.starts_with("http://") && !base.starts_with("https://") {
                return Err(Error::Config(format!(
                    "registry address {a:?} must be http://host:port or host:port"
                )));
            }
            if base.starts_with("https://") && !cfg!(feature = "tls") {
                return Err(Error::Config(format!(
                    "registry address {a:?} is https://: build muster-client with its `tls` feature"
                )));
            }
            addrs.push(base);
        }
        validate_namespace(&self.namespace)
            .map_err(|e| Error::Config(format!("namespace: {}", e.message)))?;
        let ttl_ms = self.lease_ttl.as_millis();
        if ttl_ms < u128::from(limits::MIN_TTL_MS) || ttl_ms > u128::from(limits::MAX_TTL_MS) {
            return Err(Error::Config(format!(
                "lease_ttl must be between 1s and 1h, not {:?}",
                self.lease_ttl
            )));
        }
        if self.backoff.attempts == 0 {
            return Err(Error::Config("backoff.attempts must be at least 1".into()));
        }
        if self.lookup_idle.is_zero() {
            return Err(Error::Config("lookup_idle_timeout must be positive".into()));
        }
        if self.queries_per_stream == 0 {
            return Err(Error::Config(
                "watch_queries_per_stream must be at least 1".into(),
            ));
        }
        if self.timeouts.connect.is_zero() || self.timeouts.request.is_zero() {
            return Err(Error::Config("timeouts must be positive".into()));
        }
        Ok(Settings {
            tls,
            token: self.token,
            addrs,
            namespace: self.namespace,
            timeouts: self.timeouts,
            backoff: self.backoff,
            lease_ttl: self.lease_ttl,
            max_staleness: self.max_staleness,
            lookup_idle: self.lookup_idle,
            queries_per_stream: self.queries_per_stream,
        })
    }

    /// Reads the TLS files, if any.
    fn tls(&self) -> Result<TlsSettings> {
        if (self.ca_file.is_some() || self.client_cert.is_some()) && !cfg!(feature = "tls") {
            return Err(Error::Config(
                "a CA file or client certificate needs muster-client's `tls` feature".into(),
            ));
        }
        let read = |what: &str, path: &Path| {
            std::fs::read(path)
                .map_err(|e| Error::Config(format!("cannot read {what} {}: {e}", path.display())))
        };
        let ca_pem = match &self.ca_file {
            Some(path) => {
                let pem = read("CA file", path)?;
                if !String::from_utf8_lossy(&pem).contains("-----BEGIN CERTIFICATE-----") {
                    return Err(Error::Config(format!(
                        "CA file {} holds no PEM certificate",
                        path.display()
                    )));
                }
                Some(pem)
            }
            None => None,
        };
        let identity_pem = match &self.client_cert {
            Some((cert, key)) => {
                let mut pem = read("client certificate", cert)?;
                pem.push(b'\n');
                pem.extend(read("client key", key)?);
                Some(pem)
            }
            None => None,
        };
        Ok(TlsSettings {
            ca_pem,
            identity_pem,
        })
    }
}

#[cfg(test)]
mod tests {
    use crate::{Client, Error};

    #[tokio::test]
    async fn https_addresses_need_the_tls_feature() {
        let built = Client::builder()
            .addrs(["https://registry.invalid:7700"])
            .build();
        if cfg!(feature = "tls") {
            assert!(built.is_ok(), "{:?}", built.err());
        } else {
            match built {
                Err(Error::Config(m)) => assert!(m.contains("`tls` feature"), "{m}"),
                other => panic!("expected a configuration error, got {:?}", other.err()),
            }
        }
    }
}
