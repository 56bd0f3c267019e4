//! Server-run health checks against real targets: an HTTP server, a TCP
//! listener and a gRPC health server that the tests flip, and TTL checks.
//! Probes use real time (a paused clock would fire their timeouts while
//! loopback I/O is in flight); every wait is on a watch event.

use std::sync::Arc;
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};

use axum::http::StatusCode;
use serde_json::{Value, json};

use crate::harness::{Sse, TestServer, until};

/// An HTTP target whose answer the test sets, counting requests by status.
struct Target {
    addr: String,
    status: Arc<AtomicU16>,
    hits: Arc<AtomicUsize>,
}

async fn http_target() -> Target {
    let status = Arc::new(AtomicU16::new(200));
    let hits = Arc::new(AtomicUsize::new(0));
    let (st, h) = (status.clone(), hits.clone());
    let app = axum::Router::new().route(
        "/health",
        axum::routing::get(move || {
            let (st, h) = (st.clone(), h.clone());
            async move {
                h.fetch_add(1, Ordering::SeqCst);
                let code = st.load(Ordering::SeqCst);
                (
                    StatusCode::from_u16(code).unwrap(),
                    format!("answered {code}"),
                )
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    Target { addr, status, hits }
}

/// Reads watch events until instance `id` has health `want`; returns it.
async fn wait_health(w: &mut Sse, id: &str, want: &str) -> Value {
    loop {
        let e = w.next().await;
        let inst = match e.event.as_str() {
            "upsert" => e.data["instance"].clone(),
            "snapshot" => match e.data["instances"]
                .as_array()
                .unwrap()
                .iter()
                .find(|i| i["id"] == id)
            {
                Some(i) => i.clone(),
                None => continue,
            },
            _ => continue,
        };
        if inst["id"] == id && inst["health"] == want {
            return inst;
        }
    }
}

async fn wait_deleted(w: &mut Sse, id: &str) -> u64 {
    loop {
        let e = w.next().await;
        if e.event == "delete" && e.data["id"] == id {
            return e.id;
        }
    }
}

#[tokio::test]
async fn http_check_follows_200_500_429() {
    let s = TestServer::start().await;
    let t = http_target().await;
    let mut w = Sse::open(&s, "service=web&health=any", None).await;
    s.register("web", "w1", json!({"checks": [{"id": "http", "http": format!("http://{}/health", t.addr), "interval": "1s", "timeout": "1s"}]})).await;
    let inst = wait_health(&mut w, "w1", "passing").await;
    assert_eq!(inst["checks"][0]["status"], "passing");
    assert!(
        inst["checks"][0]["output"]
            .as_str()
            .unwrap()
            .contains("200 OK")
    );
    assert_eq!(s.ids("/v1/services/web/instances").await, ["w1"]);

    t.status.store(500, Ordering::SeqCst);
    let inst = wait_health(&mut w, "w1", "critical").await;
    assert!(
        inst["checks"][0]["output"]
            .as_str()
            .unwrap()
            .contains("500"),
        "{inst}"
    );
    assert!(
        s.ids("/v1/services/web/instances").await.is_empty(),
        "critical is not discovered"
    );

    t.status.store(429, Ordering::SeqCst);
    wait_health(&mut w, "w1", "warning").await;
    assert!(
        s.ids("/v1/services/web/instances").await.is_empty(),
        "warning is not passing"
    );
    assert_eq!(s.ids("/v1/services/web/instances?health=any").await, ["w1"]);

    // The single-instance read shows the last run, kept in memory.
    let (_, one, _) = s.get("/v1/services/web/instances/w1").await;
    assert!(
        one["checks"][0]["last_run_ms"].as_u64().unwrap() > 0,
        "{one}"
    );
    let metrics = s.metrics().await;
    assert!(
        metrics.contains("muster_check_runs_total{kind=\"http\"}"),
        "{metrics}"
    );
    assert!(metrics.contains("muster_check_failures_total{kind=\"http\"}"));
    s.stop().await;
}

#[tokio::test]
async fn repeated_results_write_nothing() {
    let s = TestServer::start().await;
    let t = http_target().await;
    let mut w = Sse::open(&s, "service=web&health=any", None).await;
    s.register(
        "web",
        "w1",
        json!({"checks": [{"http": format!("http://{}/health", t.addr), "interval": "1s"}]}),
    )
    .await;
    wait_health(&mut w, "w1", "passing").await;
    let applied = s
        .registry
        .cluster(&muster_registry::Caller::anonymous())
        .unwrap()
        .applied_index;
    let hits = t.hits.load(Ordering::SeqCst);
    // Wait for two more passing runs; they must not touch the log.
    until("two more runs", || {
        t.hits.load(Ordering::SeqCst) >= hits + 2
    })
    .await;
    assert_eq!(
        s.registry
            .cluster(&muster_registry::Caller::anonymous())
            .unwrap()
            .applied_index,
        applied
    );
    s.stop().await;
}

#[tokio::test]
async fn thresholds_need_consecutive_results() {
    let s = TestServer::start().await;
    let t = http_target().await;
    let mut w = Sse::open(&s, "service=web&health=any", None).await;
    let check = json!({"http": format!("http://{}/health", t.addr), "interval": "1s",
                       "success_before_passing": 2, "failures_before_critical": 2});
    s.register("web", "w1", json!({"checks": [check]})).await;
    wait_health(&mut w, "w1", "passing").await;
    assert!(
        t.hits.load(Ordering::SeqCst) >= 2,
        "passing only after two successes"
    );
    let before = t.hits.load(Ordering::SeqCst);
    t.status.store(500, Ordering::SeqCst);
    wait_health(&mut w, "w1", "critical").await;
    assert!(
        t.hits.load(Ordering::SeqCst) >= before + 2,
        "critical only after two failures"
    );
    s.stop().await;
}

#[tokio::test]
async fn tcp_check_follows_a_listener_opened_and_closed() {
    let s = TestServer::start().await;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let mut w = Sse::open(&s, "service=db&health=any", None).await;
    s.register(
        "db",
        "d1",
        json!({"checks": [{"tcp": addr, "interval": "1s", "timeout": "1s"}]}),
    )
    .await;
    wait_health(&mut w, "d1", "passing").await;
    drop(listener);
    let inst = wait_health(&mut w, "d1", "critical").await;
    assert!(
        inst["checks"][0]["output"]
            .as_str()
            .unwrap()
            .contains("TCP connect")
    );
    s.stop().await;
}

#[tokio::test]
async fn grpc_check_follows_serving_and_not_serving() {
    use tonic_health::ServingStatus;
    let s = TestServer::start().await;
    let (reporter, service) = tonic_health::server::health_reporter();
    reporter
        .set_service_status("payments", ServingStatus::Serving)
        .await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let mut w = Sse::open(&s, "service=payments&health=any", None).await;
    s.register(
        "payments",
        "p1",
        json!({"checks": [{"grpc": format!("{addr}/payments"), "interval": "1s"}]}),
    )
    .await;
    let inst = wait_health(&mut w, "p1", "passing").await;
    assert!(
        inst["checks"][0]["output"]
            .as_str()
            .unwrap()
            .contains("SERVING")
    );
    reporter
        .set_service_status("payments", ServingStatus::NotServing)
        .await;
    let inst = wait_health(&mut w, "p1", "critical").await;
    assert!(
        inst["checks"][0]["output"]
            .as_str()
            .unwrap()
            .contains("NOT_SERVING"),
        "{inst}"
    );
    reporter
        .set_service_status("payments", ServingStatus::Serving)
        .await;
    wait_health(&mut w, "p1", "passing").await;
    s.stop().await;
}

#[tokio::test]
async fn ttl_check_is_passing_only_while_reported() {
    let s = TestServer::start().await;
    let mut w = Sse::open(&s, "service=job&health=any", None).await;
    s.register(
        "job",
        "j1",
        json!({"checks": [{"id": "alive", "ttl": "2s"}]}),
    )
    .await;
    wait_health(&mut w, "j1", "critical").await; // initial status
    let report = |status: &str, out: &str| {
        let url = s.url(&format!(
            "/v1/services/job/instances/j1/checks/alive/{status}"
        ));
        let body = json!({"output": out});
        let http = s.http.clone();
        async move {
            http.put(url)
                .json(&body)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    assert_eq!(report("pass", "all good").await, 204);
    let inst = wait_health(&mut w, "j1", "passing").await;
    assert_eq!(inst["checks"][0]["output"], "all good");
    let applied = s
        .registry
        .cluster(&muster_registry::Caller::anonymous())
        .unwrap()
        .applied_index;
    assert_eq!(report("pass", "still good").await, 204);
    assert_eq!(report("warn", "disk 91%").await, 204);
    let inst = wait_health(&mut w, "j1", "warning").await;
    // The repeated pass wrote nothing: only the warning took a log entry.
    assert_eq!(inst["modify_index"].as_u64().unwrap(), applied + 1);
    // Left alone, it lapses to critical.
    let inst = wait_health(&mut w, "j1", "critical").await;
    assert!(
        inst["checks"][0]["output"]
            .as_str()
            .unwrap()
            .contains("expired"),
        "{inst}"
    );
    // Reports to a non-TTL or unknown check are refused.
    assert_eq!(report("pass", "x").await, 204);
    let r = s
        .http
        .put(s.url("/v1/services/job/instances/j1/checks/nope/pass"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let r = s
        .http
        .put(s.url("/v1/services/job/instances/j1/checks/alive/maybe"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    s.stop().await;
}

#[tokio::test]
async fn deregister_critical_after_removes_the_instance_and_stops_its_checks() {
    let s = TestServer::start().await;
    // A port nothing listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .to_string();
    let mut w = Sse::open(&s, "service=db&health=any", None).await;
    s.register(
        "db",
        "gone",
        json!({"checks": [{"tcp": closed, "interval": "1s", "deregister_critical_after": "1s"}]}),
    )
    .await;
    s.register("db", "stays", json!({})).await;
    wait_deleted(&mut w, "gone").await;
    assert_eq!(
        s.ids("/v1/services/db/instances?health=any").await,
        ["stays"]
    );
    until("the removed instance's check to stop", || {
        s.registry.running_checks() == 0
    })
    .await;
    s.stop().await;
}

#[tokio::test]
async fn a_deregistered_instance_stops_its_checks() {
    let s = TestServer::start().await;
    let t = http_target().await;
    s.register(
        "web",
        "w1",
        json!({"checks": [{"http": format!("http://{}/health", t.addr), "interval": "1s"}]}),
    )
    .await;
    until("the check to start", || s.registry.running_checks() == 1).await;
    s.delete("/v1/services/web/instances/w1").await;
    until("the check to stop", || s.registry.running_checks() == 0).await;
    s.stop().await;
}

#[tokio::test]
async fn maintenance_takes_an_instance_out_without_deregistering() {
    let s = TestServer::start().await;
    s.register("web", "w1", json!({})).await;
    let (status, inst) = s
        .put(
            "/v1/services/web/instances/w1/maintenance",
            json!({"enabled": true, "reason": "kernel upgrade"}),
        )
        .await;
    assert_eq!(status, 200, "{inst}");
    assert_eq!(
        (inst["health"].as_str(), inst["maintenance"].as_str()),
        (Some("critical"), Some("kernel upgrade"))
    );
    assert!(s.ids("/v1/services/web/instances").await.is_empty());
    assert_eq!(s.ids("/v1/services/web/instances?health=any").await, ["w1"]);
    let (status, inst) = s
        .put(
            "/v1/services/web/instances/w1/maintenance",
            json!({"enabled": false}),
        )
        .await;
    assert_eq!((status, inst["health"].as_str()), (200, Some("passing")));
    assert_eq!(s.ids("/v1/services/web/instances").await, ["w1"]);
    s.stop().await;
}

#[tokio::test]
async fn checks_can_be_added_and_removed_on_their_own() {
    let s = TestServer::start().await;
    s.register("web", "w1", json!({})).await;
    let (status, inst) = s
        .put(
            "/v1/services/web/instances/w1/checks/hb",
            json!({"ttl": "30s"}),
        )
        .await;
    assert_eq!(
        (status, inst["health"].as_str()),
        (200, Some("critical")),
        "{inst}"
    );
    until("the check to start", || s.registry.running_checks() == 1).await;
    let (status, inst) = s.delete("/v1/services/web/instances/w1/checks/hb").await;
    assert_eq!((status, inst["health"].as_str()), (200, Some("passing")));
    until("the check to stop", || s.registry.running_checks() == 0).await;
    let (status, _) = s.delete("/v1/services/web/instances/w1/checks/hb").await;
    assert_eq!(status, 404);
    s.stop().await;
}

#[tokio::test]
async fn command_checks_need_the_opt_in() {
    let s = TestServer::start().await;
    let (status, v) = s
        .put("/v1/services/job/instances/j1", json!({"address": "10.0.0.1", "port": 1, "checks": [{"args": ["true"], "interval": "1s"}]}))
        .await;
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (403, Some("command_checks_disabled")),
        "{v}"
    );
    assert_eq!(v["error"]["field"], "checks[0].args");
    assert!(
        s.ids("/v1/services/job/instances?health=any")
            .await
            .is_empty()
    );
    s.stop().await;

    let s = TestServer::start_with(|c| c.enable_command_checks = true).await;
    let mut w = Sse::open(&s, "service=job&health=any", None).await;
    s.register(
        "job",
        "j1",
        json!({"checks": [{"args": ["sh", "-c", "echo degraded; exit 1"], "interval": "1s"}]}),
    )
    .await;
    let inst = wait_health(&mut w, "j1", "warning").await;
    assert!(
        inst["checks"][0]["output"]
            .as_str()
            .unwrap()
            .contains("degraded")
    );
    s.stop().await;
}

#[tokio::test]
async fn invalid_checks_are_refused_and_change_nothing() {
    let s = TestServer::start().await;
    s.register("web", "w1", json!({})).await;
    let (_, before, before_index) = s.get("/v1/services/web/instances?health=any").await;
    for (check, field) in [
        (
            json!({"http": "http://10.0.0.1/h", "interval": "0s"}),
            "checks[0].interval",
        ),
        (
            json!({"smoke": "signal", "interval": "10s"}),
            "checks[0].smoke",
        ),
        (json!({"interval": "10s"}), "checks[0]"),
        (
            json!({"http": "not a url", "interval": "10s"}),
            "checks[0].http",
        ),
        (
            json!({"http": "http://10.0.0.1/h", "tcp": "h:1", "interval": "10s"}),
            "checks[0]",
        ),
        (
            json!({"tcp": "10.0.0.1", "interval": "10s"}),
            "checks[0].tcp",
        ),
    ] {
        let (status, v) = s
            .put(
                "/v1/services/web/instances/w1",
                json!({"address": "10.0.0.1", "port": 8080, "checks": [check]}),
            )
            .await;
        assert_eq!(status, 400, "{v}");
        assert_eq!(v["error"]["field"], field, "{v}");
        let (_, after, after_index) = s.get("/v1/services/web/instances?health=any").await;
        assert_eq!((after, after_index), (before.clone(), before_index));
    }
    s.stop().await;
}

/// An HTTPS target with a self-signed certificate, answering 200.
async fn https_target() -> String {
    use std::sync::Arc;

    let cert =
        rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
    let der = cert.cert.der().clone();
    let key = rustls_pki_key(&cert.signing_key.serialize_der());
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![der], key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((sock, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(sock).await else {
                    return;
                };
                let svc = hyper::service::service_fn(|_req| async {
                    Ok::<_, std::convert::Infallible>(hyper::Response::new("secure ok".to_string()))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    format!("https://127.0.0.1:{}/health", addr.port())
}

fn rustls_pki_key(der: &[u8]) -> rustls::pki_types::PrivateKeyDer<'static> {
    rustls::pki_types::PrivateKeyDer::Pkcs8(der.to_vec().into())
}

#[tokio::test]
async fn https_check_verifies_certificates_unless_told_not_to() {
    let s = TestServer::start().await;
    let url = https_target().await;
    // One watch per service: waiting for one instance must not consume the
    // other's events.
    let mut strict = Sse::open(&s, "service=tls-strict&health=any", None).await;
    let mut lenient = Sse::open(&s, "service=tls-lenient&health=any", None).await;
    s.register(
        "tls-strict",
        "strict",
        json!({"checks": [{"http": url, "interval": "1s", "status": "passing"}]}),
    )
    .await;
    s.register(
        "tls-lenient",
        "lenient",
        json!({"checks": [{"http": url, "interval": "1s", "tls_skip_verify": true}]}),
    )
    .await;
    // A self-signed certificate fails verification...
    let inst = wait_health(&mut strict, "strict", "critical").await;
    assert!(
        inst["checks"][0]["output"]
            .as_str()
            .unwrap()
            .contains("HTTP GET"),
        "{inst}"
    );
    // ...unless verification is skipped for that check.
    let inst = wait_health(&mut lenient, "lenient", "passing").await;
    assert!(
        inst["checks"][0]["output"]
            .as_str()
            .unwrap()
            .contains("secure ok"),
        "{inst}"
    );
    s.stop().await;
}

#[tokio::test]
async fn a_ttl_report_body_is_limited_and_its_errors_are_typed() {
    let s = TestServer::start().await;
    s.register(
        "pay",
        "a",
        json!({"checks": [{"id": "alive", "ttl": "30s"}]}),
    )
    .await;
    let path = "/v1/services/pay/instances/a/checks/alive/pass";
    let big = format!(
        "{{\"output\": \"{}\"}}",
        "x".repeat(muster_types::limits::MAX_BODY_BYTES)
    );
    let (status, v) = s.put_raw(path, big).await;
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (413, Some("body_too_large")),
        "{v}"
    );
    let (status, v) = s.put_raw(path, "{\"output\": ").await;
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (400, Some("malformed_json")),
        "{v}"
    );
    let (status, v) = s.put_raw(path, "{\"colour\": 1}").await;
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (400, Some("invalid_field")),
        "{v}"
    );
    // An empty body and a small one are reports.
    let (status, _) = s.put_raw(path, "").await;
    assert_eq!(status, 204);
    let (status, _) = s.put_raw(path, "{\"output\": \"fine\"}").await;
    assert_eq!(status, 204);
    s.stop().await;
}
