//! Prometheus metrics: one recorder per process, request counts and latency
//! by route and status, and registry gauges refreshed at scrape time.

use std::collections::HashMap;
use std::sync::{OnceLock, RwLock};
use std::time::Instant;

use axum::http::Method;
use metrics::{Counter, Histogram};

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

use crate::AppStateRef;

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

/// The metric handles of one (route, method, status), made once: building a
/// labelled key per request (allocating and hashing labels, locking the
/// registry) cost more than the rest of a lease renewal.
#[derive(Clone)]
struct RouteHandles {
    method: Method,
    status: u16,
    requests: Counter,
    duration: Histogram,
}

type HandleCache = RwLock<HashMap<Box<str>, Vec<RouteHandles>>>;

fn route_handles(route: &str, method: &Method, status: u16) -> (Counter, Histogram) {
    static CACHE: OnceLock<HandleCache> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    let find = |v: &Vec<RouteHandles>| {
        v.iter()
            .find(|h| h.status == status && h.method == *method)
            .map(|h| (h.requests.clone(), h.duration.clone()))
    };
    if let Some(found) = cache
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .get(route)
        .and_then(find)
    {
        return found;
    }
    let mut w = cache.write().unwrap_or_else(|p| p.into_inner());
    let entry = w.entry(route.into()).or_default();
    if let Some(found) = find(entry) {
        return found;
    }
    let (m, r) = (method.to_string(), route.to_string());
    let h = RouteHandles {
        method: method.clone(),
        status,
        requests: metrics::counter!("muster_http_requests_total", "method" => m.clone(), "route" => r.clone(), "status" => status.to_string()),
        duration: metrics::histogram!("muster_http_request_duration_seconds", "method" => m, "route" => r),
    };
    let out = (h.requests.clone(), h.duration.clone());
    entry.push(h);
    out
}

/// Counts each request and times it, labelled by route template and status.
pub async fn track(req: Request, next: Next) -> Response {
    let route = req.extensions().get::<MatchedPath>().cloned();
    let method = req.method().clone();
    let start = Instant::now();
    let resp = next.run(req).await;
    let (requests, duration) = route_handles(
        route.as_ref().map_or("unmatched", |p| p.as_str()),
        &method,
        resp.status().as_u16(),
    );
    requests.increment(1);
    duration.record(start.elapsed().as_secs_f64());
    resp
}

/// `GET /metrics`: Prometheus text format.
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "Prometheus text exposition format", content_type = "text/plain")))]
pub async fn render(State(state): State<AppStateRef>) -> impl IntoResponse {
    {
        let c = state.node.catalog().read().expect("catalog lock");
        metrics::gauge!("muster_instances").set(c.instance_count() as f64);
        metrics::gauge!("muster_leases").set(c.lease_count() as f64);
        metrics::gauge!("muster_applied_index").set(c.applied_index() as f64);
    }
    metrics::gauge!("muster_self_preservation").set(if state.leases.preserving() {
        1.0
    } else {
        0.0
    });
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        state.metrics.render(),
    )
}
