//! The closed-loop load driver: a fixed number of workers, each issuing one
//! request at a time as fast as answers come back, bounded in both count and
//! time. Latency is recorded per request into HDR histograms.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::{HeaderMap, Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use tokio::net::TcpStream;

/// How long and how much a run may go on.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Stop issuing requests after this long.
    pub duration: Duration,
    /// Stop after this many requests in all (whichever comes first).
    pub max_requests: u64,
}

/// What a run measured.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Summary {
    /// Requests answered successfully.
    pub requests: u64,
    /// Requests that failed (transport error or non-2xx answer).
    pub errors: u64,
    /// Wall time of the run in seconds.
    pub seconds: f64,
    /// Successful requests per second.
    pub rps: f64,
    /// Latency percentiles in microseconds.
    pub p50_us: f64,
    /// 99th percentile.
    pub p99_us: f64,
    /// 99.9th percentile.
    pub p999_us: f64,
    /// Worst latency.
    pub max_us: f64,
    /// The first error seen, for the report.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_error: Option<String>,
}

pub fn new_histogram() -> Histogram<u64> {
    // 1 µs .. 100 s at 3 significant digits.
    Histogram::new_with_bounds(1, 100_000_000, 3).expect("valid histogram bounds")
}

impl Summary {
    /// Summarises a latency histogram (values in microseconds).
    pub fn from_histogram(h: &Histogram<u64>, errors: u64, elapsed: Duration) -> Summary {
        let seconds = elapsed.as_secs_f64().max(1e-9);
        let q = |p: f64| {
            if h.is_empty() {
                0.0
            } else {
                h.value_at_quantile(p) as f64
            }
        };
        Summary {
            requests: h.len(),
            errors,
            seconds,
            rps: h.len() as f64 / seconds,
            p50_us: q(0.50),
            p99_us: q(0.99),
            p999_us: q(0.999),
            max_us: if h.is_empty() { 0.0 } else { h.max() as f64 },
            first_error: None,
        }
    }
}

/// One load worker: owns its connection and whatever state its requests need.
pub trait Worker: Send + 'static {
    /// Issues request number `seq` of this worker and waits for its answer.
    fn call(&mut self, seq: u64) -> impl Future<Output = Result<()>> + Send;
}

/// Runs `workers` concurrently in a closed loop until `limits` is reached.
pub async fn drive<W: Worker>(workers: Vec<W>, limits: Limits) -> Summary {
    let issued = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let deadline = start + limits.duration;
    let mut tasks = Vec::with_capacity(workers.len());
    for mut w in workers {
        let issued = Arc::clone(&issued);
        tasks.push(tokio::spawn(async move {
            let mut hist = new_histogram();
            let mut errors = 0u64;
            let mut first_error = None;
            let mut seq = 0u64;
            loop {
                if issued.fetch_add(1, Ordering::Relaxed) >= limits.max_requests
                    || Instant::now() >= deadline
                {
                    break;
                }
                let t = Instant::now();
                match w.call(seq).await {
                    Ok(()) => {
                        let _ = hist.record((t.elapsed().as_micros() as u64).max(1));
                    }
                    Err(e) => {
                        errors += 1;
                        if first_error.is_none() {
                            first_error = Some(format!("{e:#}"));
                        }
                        // A broken connection would fail every call at once:
                        // stop this worker instead of spinning.
                        if errors > 1000 && hist.is_empty() {
                            break;
                        }
                    }
                }
                seq += 1;
            }
            (hist, errors, first_error)
        }));
    }
    let mut hist = new_histogram();
    let mut errors = 0;
    let mut first_error = None;
    for t in tasks {
        match t.await {
            Ok((h, e, fe)) => {
                hist.add(&h).expect("same histogram bounds");
                errors += e;
                if first_error.is_none() {
                    first_error = fe;
                }
            }
            Err(e) => {
                errors += 1;
                first_error.get_or_insert_with(|| format!("worker panicked: {e}"));
            }
        }
    }
    let mut s = Summary::from_histogram(&hist, errors, start.elapsed());
    s.first_error = first_error;
    s
}

/// How a connection reaches the server: over TLS (trusting a CA) or not,
/// and with an ACL token on every request or not.
#[derive(Clone, Default)]
pub struct Access {
    /// TLS towards the server.
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// `Authorization: Bearer …` for every request.
    pub token: Option<hyper::header::HeaderValue>,
}

impl Access {
    /// TLS trusting only the CA in `ca_pem`, HTTP/1.1 by ALPN.
    pub fn tls(ca_pem: &std::path::Path) -> Result<Access> {
        let mut roots = rustls::RootCertStore::empty();
        let pem = std::fs::read(ca_pem).with_context(|| format!("reading {}", ca_pem.display()))?;
        for cert in rustls::pki_types::pem::PemObject::pem_slice_iter(&pem) {
            roots.add(cert.context("a CA certificate")?)?;
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Access {
            tls: Some(Arc::new(config)),
            token: None,
        })
    }
}

/// One HTTP/1.1 keep-alive connection.
pub struct Conn {
    send: SendRequest<Full<Bytes>>,
    token: Option<hyper::header::HeaderValue>,
}

impl Conn {
    pub async fn connect(addr: SocketAddr) -> Result<Conn> {
        Self::connect_with(addr, &Access::default()).await
    }

    /// A connection as `access` says: TLS or not, a token or not.
    pub async fn connect_with(addr: SocketAddr, access: &Access) -> Result<Conn> {
        let stream = TcpStream::connect(addr)
            .await
            .with_context(|| format!("connecting to {addr}"))?;
        stream.set_nodelay(true)?;
        let send = match &access.tls {
            None => {
                let (send, conn) =
                    hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
                tokio::spawn(async move {
                    let _ = conn.await;
                });
                send
            }
            Some(config) => {
                let name = rustls::pki_types::ServerName::IpAddress(addr.ip().into());
                let tls = tokio_rustls::TlsConnector::from(Arc::clone(config))
                    .connect(name, stream)
                    .await
                    .with_context(|| format!("TLS handshake with {addr}"))?;
                let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await?;
                tokio::spawn(async move {
                    let _ = conn.await;
                });
                send
            }
        };
        Ok(Conn {
            send,
            token: access.token.clone(),
        })
    }

    /// Sends a request and reads the whole answer.
    pub async fn call(&mut self, mut req: Request<Full<Bytes>>) -> Result<(StatusCode, Bytes)> {
        self.authorize(&mut req);
        self.send.ready().await?;
        let resp = self.send.send_request(req).await?;
        let status = resp.status();
        let body = resp.into_body().collect().await?.to_bytes();
        Ok((status, body))
    }

    /// Sends a request and fails unless the answer is 2xx.
    pub async fn call_ok(&mut self, req: Request<Full<Bytes>>) -> Result<Bytes> {
        let (status, body) = self.call(req).await?;
        if !status.is_success() {
            bail!("HTTP {status}: {}", String::from_utf8_lossy(&body));
        }
        Ok(body)
    }

    /// Like [`Conn::call_ok`], but keeps the status and headers too: what the
    /// ceiling is to answer with.
    pub async fn call_answer(&mut self, mut req: Request<Full<Bytes>>) -> Result<Answer> {
        self.authorize(&mut req);
        self.send.ready().await?;
        let resp = self.send.send_request(req).await?;
        let (parts, body) = resp.into_parts();
        let body = body.collect().await?.to_bytes();
        if !parts.status.is_success() {
            bail!("HTTP {}: {}", parts.status, String::from_utf8_lossy(&body));
        }
        Ok(Answer {
            status: parts.status,
            headers: parts.headers,
            body,
        })
    }
}

impl Conn {
    fn authorize(&self, req: &mut Request<Full<Bytes>>) {
        if let Some(t) = &self.token {
            req.headers_mut()
                .insert(hyper::header::AUTHORIZATION, t.clone());
        }
    }
}

/// A whole HTTP answer: status, headers and body.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// Builds a request with the `host` header hyper's client does not add.
pub fn request(method: &str, path: &str, body: Option<Bytes>) -> Request<Full<Bytes>> {
    let mut b = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "127.0.0.1");
    if body.is_some() {
        b = b.header("content-type", "application/json");
    }
    b.body(Full::new(body.unwrap_or_default()))
        .expect("valid request")
}

/// A worker that sends whatever its plan builds next over its own connection.
pub struct HttpWorker {
    conn: Conn,
    plan: Box<dyn FnMut(u64) -> Request<Full<Bytes>> + Send>,
}

impl HttpWorker {
    pub async fn new(
        addr: SocketAddr,
        access: &Access,
        plan: Box<dyn FnMut(u64) -> Request<Full<Bytes>> + Send>,
    ) -> Result<HttpWorker> {
        Ok(HttpWorker {
            conn: Conn::connect_with(addr, access).await?,
            plan,
        })
    }
}

impl Worker for HttpWorker {
    async fn call(&mut self, seq: u64) -> Result<()> {
        let req = (self.plan)(seq);
        self.conn.call_ok(req).await.map(|_| ())
    }
}

/// Opens `n` HTTP workers, the plan of worker `i` made by `plan(i)`.
pub async fn http_workers(
    addr: SocketAddr,
    n: usize,
    plan: impl FnMut(usize) -> Box<dyn FnMut(u64) -> Request<Full<Bytes>> + Send>,
) -> Result<Vec<HttpWorker>> {
    http_workers_over(&[addr], &Access::default(), n, plan).await
}

/// Opens `n` HTTP workers spread over `addrs` (worker `i` talks to
/// `addrs[i % addrs.len()]`), the plan of worker `i` made by `plan(i)`.
pub async fn http_workers_over(
    addrs: &[SocketAddr],
    access: &Access,
    n: usize,
    mut plan: impl FnMut(usize) -> Box<dyn FnMut(u64) -> Request<Full<Bytes>> + Send>,
) -> Result<Vec<HttpWorker>> {
    if addrs.is_empty() {
        bail!("no server to send requests to");
    }
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        out.push(HttpWorker::new(addrs[i % addrs.len()], access, plan(i)).await?);
    }
    Ok(out)
}
