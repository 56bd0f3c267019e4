//! The client's registry calls as OpenTelemetry spans: a real
//! `tracing-opentelemetry` pipeline with the SDK's in-memory exporter, a
//! real registry, real failures.

use std::time::Duration;

use muster_client::{Client, InstanceSpec};
use opentelemetry::trace::{SpanKind, Status, TracerProvider as _};
use opentelemetry::{KeyValue, Value};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use tracing_subscriber::layer::SubscriberExt;

use crate::harness::{TestServer, fast};

fn attr<'a>(span: &'a SpanData, key: &str) -> Option<&'a Value> {
    // The last value recorded wins, as an exporter keeps it.
    span.attributes
        .iter()
        .rev()
        .find(|kv: &&KeyValue| kv.key.as_str() == key)
        .map(|kv| &kv.value)
}

fn spans_named<'a>(spans: &'a [SpanData], name: &str) -> Vec<&'a SpanData> {
    spans.iter().filter(|s| s.name == name).collect()
}

#[tokio::test]
async fn registry_calls_are_client_spans_after_the_http_conventions() {
    let server = TestServer::start().await;
    // An address where nothing listens, tried first: the call fails over.
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    let subscriber = tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
    // The test's runtime runs on this thread only: every span is seen.
    let _guard = tracing::subscriber::set_default(subscriber);

    let client = fast(Client::builder().addrs([format!("http://{dead}"), server.base.clone()]))
        .lease_ttl(Duration::from_secs(30))
        .build()
        .unwrap();
    let reg = client
        .register(InstanceSpec::new("pay", "pay-1", "127.0.0.1", 8080))
        .await
        .unwrap();
    let missing = client.api().instance("pay", "nope").await.unwrap_err();
    assert_eq!(missing.code(), Some("not_found"));
    reg.deregister().await.unwrap();
    provider.force_flush().unwrap();
    let spans = exporter.get_finished_spans().unwrap();

    // The lease, created first, found the dead address first.
    let lease = spans_named(&spans, "POST /v1/leases");
    assert_eq!(lease.len(), 1, "{spans:#?}");
    let lease = lease[0];
    assert_eq!(lease.span_kind, SpanKind::Client);
    assert_eq!(
        attr(lease, "http.request.resend_count"),
        Some(&Value::I64(1))
    );
    assert_eq!(
        attr(lease, "server.address").map(|v| v.as_str().into_owned()),
        Some(server.base.trim_start_matches("http://").to_string())
    );
    assert_eq!(
        attr(lease, "http.response.status_code"),
        Some(&Value::I64(201))
    );
    assert_eq!(lease.status, Status::Unset);

    // Named by its route, never by an id; the answer that worked is kept.
    let put = spans_named(&spans, "PUT /v1/services/{service}/instances/{id}");
    assert_eq!(put.len(), 1, "{spans:#?}");
    assert_eq!(
        attr(put[0], "http.request.method").map(|v| v.as_str().into_owned()),
        Some("PUT".to_string())
    );
    assert_eq!(
        attr(put[0], "url.template").map(|v| v.as_str().into_owned()),
        Some("/v1/services/{service}/instances/{id}".to_string())
    );
    assert_eq!(attr(put[0], "http.request.resend_count"), None);

    // A refusal is an error span with the registry's code as its type.
    let get = spans_named(&spans, "GET /v1/services/{service}/instances/{id}");
    assert_eq!(get.len(), 1, "{spans:#?}");
    assert!(
        matches!(get[0].status, Status::Error { .. }),
        "{:?}",
        get[0].status
    );
    assert_eq!(
        attr(get[0], "error.type").map(|v| v.as_str().into_owned()),
        Some("not_found".to_string())
    );
    assert_eq!(
        attr(get[0], "http.response.status_code"),
        Some(&Value::I64(404))
    );
    assert!(
        spans
            .iter()
            .all(|s| !s.name.contains("pay-1") && !s.name.contains("nope"))
    );
    client.shutdown().await.unwrap();
}
