//! HTTP with failover: every call tries the registry addresses in turn,
//! starting with the last one that answered, and retries whole passes with a
//! jittered exponential back-off.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use muster_types::ErrorBody;
use rand::Rng;
use reqwest::{Method, Response, StatusCode};
use tracing::Instrument;

use crate::config::Settings;
use crate::error::{Error, Result};

/// One request, rebuilt for every address it is tried on.
pub(crate) struct Req<'a> {
    pub method: Method,
    /// The route template (`/v1/leases/{id}`): the span's name, never an id.
    pub route: &'static str,
    pub path: &'a str,
    pub query: &'a [(&'a str, String)],
    pub body: Option<Bytes>,
    pub last_event_id: Option<u64>,
    /// Watches stream for hours: no overall time limit.
    pub streaming: bool,
    /// One pass over the addresses, no retry: for callers that reconnect
    /// on their own schedule (the cache's watch streams), so a registry
    /// that is back is found at their next attempt, not after this call's
    /// back-off.
    pub single_pass: bool,
}

impl<'a> Req<'a> {
    /// A request of `route`, sent to the route itself (a fixed path) unless
    /// [`Req::at`] says where.
    pub fn new(method: Method, route: &'static str) -> Self {
        Req {
            method,
            route,
            path: route,
            query: &[],
            body: None,
            last_event_id: None,
            streaming: false,
            single_pass: false,
        }
    }

    /// The path of this request, `route` with its parameters filled in.
    pub fn at(mut self, path: &'a str) -> Self {
        self.path = path;
        self
    }

    pub fn query(mut self, query: &'a [(&'a str, String)]) -> Self {
        self.query = query;
        self
    }

    pub fn json<T: serde::Serialize>(mut self, body: &T) -> Self {
        self.body = Some(Bytes::from(
            serde_json::to_vec(body).expect("wire types serialise"),
        ));
        self
    }
}

/// Adds the CA and client certificate of the settings (validated: only
/// set with the `tls` feature).
#[cfg(feature = "tls")]
fn with_tls(
    mut builder: reqwest::ClientBuilder,
    tls: &crate::config::TlsSettings,
) -> Result<reqwest::ClientBuilder> {
    if let Some(pem) = &tls.ca_pem {
        let certs = reqwest::Certificate::from_pem_bundle(pem)
            .map_err(|e| Error::Config(format!("the CA file is not valid PEM: {e}")))?;
        builder = builder.tls_certs_only(certs);
    }
    if let Some(pem) = &tls.identity_pem {
        let identity = reqwest::Identity::from_pem(pem).map_err(|e| {
            Error::Config(format!(
                "the client certificate and key are not a valid PEM pair: {e}"
            ))
        })?;
        builder = builder.identity(identity);
    }
    Ok(builder)
}

#[cfg(not(feature = "tls"))]
fn with_tls(
    builder: reqwest::ClientBuilder,
    _tls: &crate::config::TlsSettings,
) -> Result<reqwest::ClientBuilder> {
    Ok(builder)
}

/// The registry addresses and the HTTP clients that reach them.
pub(crate) struct Transport {
    /// Requests: registrations, lease renewals, plain reads.
    http: reqwest::Client,
    /// Watch streams, in a connection pool of their own: however many are
    /// open, they never hold a connection a lease renewal waits for.
    streams: reqwest::Client,
    pub settings: Arc<Settings>,
    preferred: AtomicUsize,
}

impl Transport {
    pub fn new(settings: Arc<Settings>) -> Result<Self> {
        // One crypto provider for rustls; the program may have chosen it.
        #[cfg(feature = "tls")]
        let _ = rustls::crypto::ring::default_provider().install_default();
        let build = || {
            let builder = reqwest::Client::builder()
                // Registry traffic is local infrastructure: never through a proxy.
                .no_proxy()
                .connect_timeout(settings.timeouts.connect)
                .tcp_nodelay(true)
                // The agent closes connections idle for its header timeout (30 s
                // by default); giving them up sooner on this side means a request
                // never races that close on a connection about to go.
                .pool_idle_timeout(std::time::Duration::from_secs(20));
            let builder = match &settings.token {
                None => builder,
                Some(t) => {
                    let mut v = reqwest::header::HeaderValue::try_from(format!("Bearer {}", t.0))
                        .map_err(|_| {
                        Error::Config("token is not a valid header value".into())
                    })?;
                    v.set_sensitive(true);
                    let mut headers = reqwest::header::HeaderMap::new();
                    headers.insert(reqwest::header::AUTHORIZATION, v);
                    builder.default_headers(headers)
                }
            };
            with_tls(builder, &settings.tls)?
                .build()
                .map_err(|e| Error::Config(format!("cannot build the HTTP client: {e}")))
        };
        Ok(Transport {
            http: build()?,
            streams: build()?,
            settings,
            preferred: AtomicUsize::new(0),
        })
    }

    /// The registry addresses, comma-separated, for messages.
    pub fn addrs(&self) -> String {
        self.settings.addrs.join(", ")
    }

    /// Sends `req` with failover and retries. Answers with a success status
    /// are returned; typed errors become [`Error::Api`] at once, except
    /// `503` (not leader, shutting down), which moves on to the next address.
    ///
    /// Each call is one `muster.registry` span (info level) named and
    /// described after OpenTelemetry's HTTP client conventions, so a
    /// `tracing-opentelemetry` layer in the program exports it as is: the
    /// route template (never an id), the address that answered, the status,
    /// how many times the request was sent again, and the error type. For a
    /// watch the span ends when the stream opens.
    pub async fn send(&self, req: Req<'_>) -> Result<Response> {
        let span = tracing::info_span!(
            "muster.registry",
            otel.name = %format_args!("{} {}", req.method, req.route),
            otel.kind = "client",
            otel.status_code = tracing::field::Empty,
            http.request.method = %req.method,
            url.template = req.route,
            server.address = tracing::field::Empty,
            http.response.status_code = tracing::field::Empty,
            http.request.resend_count = tracing::field::Empty,
            error.type = tracing::field::Empty,
        );
        let result = self
            .send_with_retries(&req, &span)
            .instrument(span.clone())
            .await;
        if let Err(e) = &result {
            span.record("otel.status_code", "ERROR");
            span.record("error.type", e.code().unwrap_or(e.kind()));
        }
        result
    }

    async fn send_with_retries(&self, req: &Req<'_>, span: &tracing::Span) -> Result<Response> {
        let addrs = &self.settings.addrs;
        let backoff = self.settings.backoff;
        let attempts = if req.single_pass { 1 } else { backoff.attempts };
        let mut last: Option<Error> = None;
        let mut sent = 0u32;
        for attempt in 0..attempts {
            if attempt > 0 {
                tokio::time::sleep(jitter(backoff.delay(attempt - 1))).await;
            }
            let start = self.preferred.load(Ordering::Relaxed);
            for k in 0..addrs.len() {
                let i = (start + k) % addrs.len();
                if sent > 0 {
                    span.record("http.request.resend_count", i64::from(sent));
                }
                sent += 1;
                let result = self.send_once(&addrs[i], req).await;
                if let Ok(resp) = &result {
                    // The address that answered (an exporter keeps the last
                    // value recorded).
                    span.record("server.address", host_of(&addrs[i]));
                    span.record(
                        "http.response.status_code",
                        i64::from(resp.status().as_u16()),
                    );
                }
                match result {
                    Ok(resp) if is_retryable(resp.status()) => {
                        last = Some(api_error(resp).await);
                    }
                    Ok(resp) if resp.status().is_success() => {
                        self.preferred.store(i, Ordering::Relaxed);
                        return Ok(resp);
                    }
                    Ok(resp) => {
                        self.preferred.store(i, Ordering::Relaxed);
                        return Err(api_error(resp).await);
                    }
                    Err(e) => {
                        tracing::debug!(addr = %addrs[i], error = %e, "registry call failed");
                        last = Some(Error::Unreachable {
                            addrs: self.addrs(),
                            reason: describe(&e),
                        });
                    }
                }
            }
        }
        Err(last.unwrap_or_else(|| Error::Unreachable {
            addrs: self.addrs(),
            reason: "no address".into(),
        }))
    }

    async fn send_once(&self, base: &str, req: &Req<'_>) -> reqwest::Result<Response> {
        let http = if req.streaming {
            &self.streams
        } else {
            &self.http
        };
        let mut b = http.request(req.method.clone(), format!("{base}{}", req.path));
        if !req.query.is_empty() {
            b = b.query(req.query);
        }
        if let Some(body) = &req.body {
            b = b
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body.clone());
        }
        if let Some(id) = req.last_event_id {
            b = b.header("Last-Event-ID", id.to_string());
        }
        if req.streaming {
            b = b.header(reqwest::header::ACCEPT, "text/event-stream");
        } else {
            b = b.timeout(self.settings.timeouts.request);
        }
        b.send().await
    }
}

/// `host:port` of a registry address, for spans.
fn host_of(addr: &str) -> &str {
    let rest = addr.split_once("://").map_or(addr, |(_, r)| r);
    rest.split('/').next().unwrap_or(rest)
}

fn is_retryable(status: StatusCode) -> bool {
    matches!(
        status,
        StatusCode::SERVICE_UNAVAILABLE | StatusCode::BAD_GATEWAY | StatusCode::GATEWAY_TIMEOUT
    )
}

/// A failure of the transport in words, without reqwest's nesting noise.
fn describe(e: &reqwest::Error) -> String {
    use std::error::Error as _;
    let mut msg = if e.is_connect() {
        "connection failed".to_string()
    } else if e.is_timeout() {
        "timed out".to_string()
    } else {
        e.to_string()
    };
    let mut source = e.source();
    while let Some(s) = source {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        source = s.source();
    }
    msg
}

/// Turns an error answer into [`Error::Api`].
pub(crate) async fn api_error(resp: Response) -> Error {
    let status = resp.status();
    let text = resp.text().await.unwrap_or_default();
    match serde_json::from_str::<ErrorBody>(&text) {
        Ok(b) => Error::Api {
            status: status.as_u16(),
            code: b.error.code,
            message: b.error.message,
            field: b.error.field,
        },
        Err(_) => Error::Api {
            status: status.as_u16(),
            code: "http_error".into(),
            message: format!("registry answered {status}: {}", text.trim()),
            field: None,
        },
    }
}

/// Reads a JSON answer.
pub(crate) async fn json<T: serde::de::DeserializeOwned>(resp: Response) -> Result<T> {
    let bytes = resp
        .bytes()
        .await
        .map_err(|e| Error::Protocol(format!("reading the answer: {e}")))?;
    serde_json::from_slice(&bytes).map_err(|e| Error::Protocol(format!("decoding the answer: {e}")))
}

/// "Equal jitter": between half and all of `d`, so clients that failed
/// together do not retry together.
pub(crate) fn jitter(d: Duration) -> Duration {
    let f: f64 = rand::rng().random_range(0.5..=1.0);
    d.mul_f64(f)
}

/// Jitter of ±10 % around `d`, for periodic work such as renewals.
pub(crate) fn spread(d: Duration) -> Duration {
    let f: f64 = rand::rng().random_range(0.9..=1.1);
    d.mul_f64(f)
}
