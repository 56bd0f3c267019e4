//! Prometheus metrics: one recorder per process, request counts and latency
//! by route and status, and registry gauges refreshed at scrape time.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock, PoisonError, RwLock};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::http::Method;
use axum::response::{IntoResponse, Response};
use metrics::{Counter, Histogram};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tower::{Layer, Service};

use crate::HttpStateRef;

/// Installs the process-wide recorder once and returns its handle.
pub fn handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets(&[
                    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                    0.5, 1.0, 2.5, 5.0,
                ])
                .expect("static buckets are valid")
                .build_recorder();
            let handle = recorder.handle();
            // Histograms keep raw samples until they are folded into their
            // buckets; without a scrape that is memory growing with every
            // request. Fold them every few seconds.
            let upkeep = handle.clone();
            let spawned = std::thread::Builder::new()
                .name("metrics-upkeep".into())
                .spawn(move || {
                    loop {
                        std::thread::sleep(std::time::Duration::from_secs(5));
                        upkeep.run_upkeep();
                    }
                });
            if let Err(e) = spawned {
                tracing::warn!(error = %e, "cannot start the metrics upkeep thread");
            }
            // Another recorder may already be installed (an embedding
            // program's); then metrics go there and /metrics shows ours empty.
            if metrics::set_global_recorder(recorder).is_err() {
                tracing::warn!("a metrics recorder was already installed; /metrics will be empty");
            }
            handle
        })
        .clone()
}

/// Counts and times every request of one route, labelled by the route's
/// template, the method and the status.
///
/// The router applies one layer per route (see `api::router`), so the layer
/// knows its template and keeps that route's metric handles itself: a
/// request costs no boxed middleware future, no `MatchedPath` extension and
/// no lookup in a shared table (each of which showed in the profile of a
/// lease renewal).
#[derive(Clone)]
pub struct TrackLayer {
    route: Arc<RouteMetrics>,
}

impl TrackLayer {
    /// Tracks requests under `route`: the route's template, such as
    /// `/v1/leases/{id}/renew`, or [`UNMATCHED`] for the fallback.
    pub fn new(route: &'static str) -> Self {
        TrackLayer {
            route: Arc::new(RouteMetrics {
                route,
                handles: RwLock::default(),
            }),
        }
    }
}

/// The `route` label of requests that matched no route.
pub const UNMATCHED: &str = "unmatched";

impl<S> Layer<S> for TrackLayer {
    type Service = Track<S>;

    fn layer(&self, inner: S) -> Track<S> {
        Track {
            inner,
            route: Arc::clone(&self.route),
        }
    }
}

/// The service made by [`TrackLayer`].
#[derive(Clone)]
pub struct Track<S> {
    inner: S,
    route: Arc<RouteMetrics>,
}

impl<S> Service<Request> for Track<S>
where
    S: Service<Request, Response = Response>,
{
    type Response = Response;
    type Error = S::Error;
    type Future = TrackFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request) -> Self::Future {
        TrackFuture {
            method: req.method().clone(),
            route: Arc::clone(&self.route),
            start: Instant::now(),
            inner: self.inner.call(req),
        }
    }
}

pin_project_lite::pin_project! {
    /// A tracked request: records its status and duration when it completes.
    pub struct TrackFuture<F> {
        #[pin]
        inner: F,
        method: Method,
        route: Arc<RouteMetrics>,
        start: Instant,
    }
}

impl<F, E> Future for TrackFuture<F>
where
    F: Future<Output = Result<Response, E>>,
{
    type Output = Result<Response, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let out = ready!(this.inner.poll(cx));
        if let Ok(resp) = &out {
            this.route
                .record(this.method, resp.status().as_u16(), this.start.elapsed());
        }
        Poll::Ready(out)
    }
}

/// The metric handles of one route, one entry per (method, status) seen,
/// made on first use: building a labelled key per request (allocating and
/// hashing labels, locking the registry) costs more than a lease renewal.
pub struct RouteMetrics {
    route: &'static str,
    handles: RwLock<Vec<RouteHandles>>,
}

struct RouteHandles {
    method: Method,
    status: u16,
    requests: Counter,
    duration: Histogram,
}

impl RouteHandles {
    fn record(&self, elapsed: Duration) {
        self.requests.increment(1);
        self.duration.record(elapsed.as_secs_f64());
    }
}

impl RouteMetrics {
    fn record(&self, method: &Method, status: u16, elapsed: Duration) {
        let is = |h: &RouteHandles| h.status == status && h.method == *method;
        if let Some(h) = self
            .handles
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .find(|h| is(h))
        {
            return h.record(elapsed);
        }
        let mut handles = self.handles.write().unwrap_or_else(PoisonError::into_inner);
        if let Some(h) = handles.iter().find(|h| is(h)) {
            return h.record(elapsed);
        }
        let (m, r) = (method.to_string(), self.route.to_string());
        let h = RouteHandles {
            method: method.clone(),
            status,
            requests: metrics::counter!("muster_http_requests_total", "method" => m.clone(), "route" => r.clone(), "status" => status.to_string()),
            duration: metrics::histogram!("muster_http_request_duration_seconds", "method" => m, "route" => r),
        };
        h.record(elapsed);
        handles.push(h);
    }
}

/// Counts a request refused before routing ([`crate::edge`]) under the
/// [`UNMATCHED`] route. Such refusals are rare, so the labelled key is
/// made each time.
pub(crate) fn count_unrouted(method: &Method, status: u16) {
    metrics::counter!("muster_http_requests_total", "method" => method.to_string(), "route" => UNMATCHED, "status" => status.to_string())
        .increment(1);
}

/// `GET /metrics`: Prometheus text format.
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "Prometheus text exposition format", content_type = "text/plain")))]
pub async fn render(State(state): State<HttpStateRef>) -> impl IntoResponse {
    state.registry.refresh_gauges();
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        state.metrics.render(),
    )
}
