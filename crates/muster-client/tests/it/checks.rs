//! Health checks, TTL reports and maintenance through the client, against a
//! real registry that runs the checks.

use std::time::Duration;

use muster_client::types::{Health, Instance};
use muster_client::{CheckStatus, Client, HealthCheck, HealthFilter, InstanceSpec};

use crate::harness::{TestServer, within};

/// Waits until the registry's discovery answer for `service` (passing
/// instances only) holds exactly `ids`, following its index.
async fn passing_becomes(client: &Client, service: &str, ids: &[&str]) {
    let mut watch = client.discover(service).watch().await.unwrap();
    let want: Vec<String> = ids.iter().map(|s| s.to_string()).collect();
    within(
        &format!("{service} passing = {ids:?}"),
        watch.wait_for(|s| s.ids() == want),
    )
    .await
    .unwrap();
}

/// Waits until instance `id` of `service`, whatever its health, satisfies
/// `ok` (check results are committed after the report is accepted).
async fn instance_becomes(
    client: &Client,
    service: &str,
    id: &str,
    what: &str,
    ok: impl Fn(&Instance) -> bool,
) -> Instance {
    let mut watch = client
        .discover(service)
        .health(HealthFilter::Any)
        .watch()
        .await
        .unwrap();
    let snap = within(
        &format!("{service}/{id}: {what}"),
        watch.wait_for(|s| s.get(id).is_some_and(&ok)),
    )
    .await
    .unwrap();
    snap.get(id).unwrap().clone()
}

#[tokio::test]
async fn a_tcp_check_run_by_the_registry_gates_discovery() {
    let s = TestServer::start().await;
    let client = s.client();
    // Something listening: the check passes once it has run.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let reg =
        client
            .register(InstanceSpec::new("db", "db-1", "127.0.0.1", port).check(
                HealthCheck::tcp(format!("127.0.0.1:{port}"), Duration::from_secs(1)).id("tcp"),
            ))
            .await
            .unwrap();
    // Registered critical (nothing has run yet), so no caller gets it
    // before it is known to serve.
    let stored = &reg.instance().checks;
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].id, "tcp");
    assert_eq!(stored[0].status, Health::Critical);
    passing_becomes(&client, "db", &["db-1"]).await;

    // Nothing listening any more: the check fails and discovery drops it.
    drop(listener);
    passing_becomes(&client, "db", &[]).await;
    s.stop().await;
}

#[tokio::test]
async fn an_http_check_sees_the_status_the_service_answers() {
    let s = TestServer::start().await;
    let client = s.client();
    let healthy = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let flag = healthy.clone();
    let app = axum::Router::new().route(
        "/health",
        axum::routing::get(move || {
            let ok = flag.load(std::sync::atomic::Ordering::SeqCst);
            async move {
                if ok {
                    axum::http::StatusCode::OK
                } else {
                    axum::http::StatusCode::SERVICE_UNAVAILABLE
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    let _reg = client
        .register(
            InstanceSpec::new("web", "web-1", "127.0.0.1", port).check(
                HealthCheck::http(
                    format!("http://127.0.0.1:{port}/health"),
                    Duration::from_secs(1),
                )
                .timeout(Duration::from_millis(500))
                .name("liveness"),
            ),
        )
        .await
        .unwrap();
    passing_becomes(&client, "web", &["web-1"]).await;
    healthy.store(false, std::sync::atomic::Ordering::SeqCst);
    passing_becomes(&client, "web", &[]).await;
    let inst = client.api().instance("web", "web-1").await.unwrap();
    assert_eq!(inst.checks[0].name, "liveness");
    assert_eq!(inst.checks[0].status, Health::Critical);
    server.abort();
    s.stop().await;
}

#[tokio::test]
async fn ttl_reports_and_maintenance_move_the_instance_in_and_out_of_discovery() {
    let s = TestServer::start().await;
    let client = s.client();
    let reg = client
        .register(
            InstanceSpec::new("jobs", "w-1", "10.0.0.9", 9000)
                .check(HealthCheck::ttl(Duration::from_secs(60)).id("worker")),
        )
        .await
        .unwrap();
    passing_becomes(&client, "jobs", &[]).await;

    reg.report("worker", CheckStatus::Pass, Some("queue drained"))
        .await
        .unwrap();
    passing_becomes(&client, "jobs", &["w-1"]).await;
    let inst = client.api().instance("jobs", "w-1").await.unwrap();
    assert_eq!(inst.checks[0].output, "queue drained");

    reg.report("worker", CheckStatus::Warn, None).await.unwrap();
    instance_becomes(&client, "jobs", "w-1", "warning", |i| {
        i.health == Health::Warning
    })
    .await;

    reg.report("worker", CheckStatus::Fail, Some("stuck"))
        .await
        .unwrap();
    passing_becomes(&client, "jobs", &[]).await;

    // A report for a check the instance does not have is the registry's
    // typed not_found, not a transport failure.
    let e = reg
        .report("nope", CheckStatus::Pass, None)
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some("check_not_found"), "{e}");

    reg.report("worker", CheckStatus::Pass, None).await.unwrap();
    passing_becomes(&client, "jobs", &["w-1"]).await;
    let inst = reg.set_maintenance(Some("draining")).await.unwrap();
    assert_eq!(inst.maintenance.as_deref(), Some("draining"));
    passing_becomes(&client, "jobs", &[]).await;
    reg.set_maintenance(None).await.unwrap();
    passing_becomes(&client, "jobs", &["w-1"]).await;

    let services = client.services().await.unwrap();
    let jobs = services
        .services
        .iter()
        .find(|s| s.name == "jobs")
        .expect("jobs listed");
    assert_eq!(jobs.instances, 1);
    s.stop().await;
}

#[tokio::test]
async fn checks_reports_and_maintenance_survive_a_reregistration() {
    let s = TestServer::start().await;
    let addr = s.addr;
    let client = s.short_lease_client();
    let a = client
        .register(
            InstanceSpec::new("jobs", "w-1", "10.0.0.9", 9000)
                .check(HealthCheck::ttl(Duration::from_secs(60)).id("worker")),
        )
        .await
        .unwrap();
    let b = client
        .register(
            InstanceSpec::new("jobs", "w-2", "10.0.0.10", 9000)
                .check(HealthCheck::ttl(Duration::from_secs(60)).id("worker")),
        )
        .await
        .unwrap();
    a.report("worker", CheckStatus::Pass, Some("ok"))
        .await
        .unwrap();
    b.report("worker", CheckStatus::Pass, None).await.unwrap();
    b.set_maintenance(Some("draining")).await.unwrap();
    drop(s.stop().await);

    // The registry comes back empty: the client registers both again, with
    // their checks, the last report of each and w-2's maintenance.
    let s2 = TestServer::start_on(addr, tempfile::tempdir().unwrap()).await;
    let mut status = client.lease_status();
    within(
        "re-registration",
        status.wait_for(|s| s.reregistrations >= 2),
    )
    .await
    .unwrap();
    let w1 = instance_becomes(&client, "jobs", "w-1", "its report applied again", |i| {
        i.checks.len() == 1 && i.checks[0].status == Health::Passing
    })
    .await;
    assert_eq!(w1.checks[0].output, "ok");
    let w2 = instance_becomes(&client, "jobs", "w-2", "its report applied again", |i| {
        i.checks.len() == 1 && i.checks[0].status == Health::Passing
    })
    .await;
    assert_eq!(w2.maintenance.as_deref(), Some("draining"));
    passing_becomes(&client, "jobs", &["w-1"]).await;
    s2.stop().await;
}
