//! Self-registration: lifecycle, renewal, recovery after the registry lost
//! its state, failover.

use std::time::Duration;

use muster_client::types::RegisterRequest;
use muster_client::{Client, Error, InstanceSpec, Query};

use crate::harness::{TestServer, fast, within};

async fn ids(client: &Client, service: &str) -> Vec<String> {
    let r = client.api().instances(&Query::new(service)).await.unwrap();
    r.instances.into_iter().map(|i| i.id.to_string()).collect()
}

#[tokio::test]
async fn registration_lifecycle() {
    let s = TestServer::start().await;
    let client = s.client();
    let mut pay = within("first snapshot", client.discover("pay").watch())
        .await
        .unwrap();

    let r1 = client
        .register(
            InstanceSpec::new("pay", "pay-1", "10.0.0.5", 8080)
                .tag("v2")
                .version("1.4.2")
                .zone("eu-1a")
                .weight(200)
                .meta("team", "core"),
        )
        .await
        .unwrap();
    let lease = client
        .lease_status()
        .borrow()
        .lease
        .clone()
        .expect("a lease");
    assert_eq!(r1.instance().lease.as_deref(), Some(lease.as_str()));
    assert_eq!(r1.instance().weight, 200);
    let snap = within("pay-1 in the cache", pay.wait_for(|s| s.len() == 1))
        .await
        .unwrap();
    let i = snap.get("pay-1").unwrap();
    assert_eq!(
        (i.port, i.zone.as_deref(), i.meta["team"].as_str()),
        (8080, Some("eu-1a"), "core")
    );

    // A second registration joins the same lease: one renewal for both.
    let r2 = client
        .register(InstanceSpec::new("pay", "pay-2", "10.0.0.6", 8080))
        .await
        .unwrap();
    assert_eq!(r2.instance().lease.as_deref(), Some(lease.as_str()));
    let st = client.lease_status().borrow().clone();
    assert_eq!((st.leases_created, st.registrations), (1, 2));

    // Explicit deregistration.
    r1.deregister().await.unwrap();
    within("pay-1 gone", pay.wait_for(|s| s.ids() == ["pay-2"]))
        .await
        .unwrap();
    assert_eq!(ids(&client, "pay").await, ["pay-2"]);

    // Dropping the handle deregisters too.
    drop(r2);
    within("pay-2 gone", pay.wait_for(|s| s.is_empty()))
        .await
        .unwrap();

    // Shutdown removes everything at once by revoking the lease.
    let _a = client
        .register(InstanceSpec::new("pay", "pay-3", "10.0.0.7", 8080))
        .await
        .unwrap();
    let _b = client
        .register(InstanceSpec::new("cart", "cart-1", "10.0.0.8", 8080))
        .await
        .unwrap();
    within("pay-3 in the cache", pay.wait_for(|s| s.len() == 1))
        .await
        .unwrap();
    client.shutdown().await.unwrap();
    within("pay-3 gone", pay.wait_for(|s| s.is_empty()))
        .await
        .unwrap();
    assert!(ids(&client, "cart").await.is_empty());
    let e = client
        .api()
        .renew_lease(&lease)
        .await
        .expect_err("the lease was revoked");
    assert!(e.is_lease_not_found(), "{e}");

    // Invalid input comes back as a typed, readable error.
    let e = client
        .register(InstanceSpec::new("pay", "bad", "10.0.0.9", 0))
        .await
        .expect_err("port 0 is refused");
    assert_eq!(e.code(), Some("invalid_field"), "{e}");
    assert!(e.to_string().contains("(field port)"), "{e}");
    s.stop().await;
}

#[tokio::test]
async fn renewal_keeps_instances_alive_past_several_ttls() {
    let s = TestServer::start().await;
    let client = s.short_lease_client();
    let _a = client
        .register(InstanceSpec::new("pay", "kept-1", "10.0.0.1", 80))
        .await
        .unwrap();
    let _b = client
        .register(InstanceSpec::new("pay", "kept-2", "10.0.0.2", 80))
        .await
        .unwrap();
    // A control instance with a lease of its own that nobody renews.
    client
        .api()
        .register(
            "pay",
            "control",
            &RegisterRequest {
                address: "10.0.0.3".into(),
                port: 80,
                ttl: Some("1s".into()),
                ..RegisterRequest::default()
            },
        )
        .await
        .unwrap();
    let started = tokio::time::Instant::now();
    let mut status = client.lease_status();
    // Eight renewals at a third of the TTL: about 2.7 s, past 2.5 TTLs.
    let st = within("eight renewals", status.wait_for(|s| s.renewals >= 8))
        .await
        .unwrap()
        .clone();
    assert!(started.elapsed() >= Duration::from_secs(2), "{st:?}");
    assert_eq!((st.leases_created, st.reregistrations), (1, 0), "{st:?}");
    // The unrenewed control has expired; the renewed instances have not.
    assert_eq!(ids(&client, "pay").await, ["kept-1", "kept-2"]);
    s.stop().await;
}

#[tokio::test]
async fn client_reregisters_after_the_registry_restarts_on_fresh_data() {
    let s = TestServer::start().await;
    let addr = s.addr;
    let client = s.short_lease_client();
    let _a = client
        .register(InstanceSpec::new("pay", "pay-1", "10.0.0.1", 80).tag("v2"))
        .await
        .unwrap();
    let _b = client
        .register(InstanceSpec::new("cart", "cart-1", "10.0.0.2", 80))
        .await
        .unwrap();
    let old_lease = client.lease_status().borrow().lease.clone().unwrap();
    drop(s.stop().await);

    // A new registry on the same address but with an empty data directory:
    // it knows neither the lease nor the instances.
    let s2 = TestServer::start_on(addr, tempfile::tempdir().unwrap()).await;
    let mut status = client.lease_status();
    let st = within(
        "re-registration",
        status.wait_for(|s| s.reregistrations >= 2),
    )
    .await
    .unwrap()
    .clone();
    assert_eq!(st.leases_created, 2, "{st:?}");
    assert_ne!(st.lease.as_deref(), Some(old_lease.as_str()));
    assert_eq!(ids(&client, "pay").await, ["pay-1"]);
    assert_eq!(ids(&client, "cart").await, ["cart-1"]);
    let inst = client.api().instance("pay", "pay-1").await.unwrap();
    assert!(inst.tags.contains("v2"));
    assert_eq!(inst.lease.as_deref(), st.lease.as_deref());
    s2.stop().await;
}

#[tokio::test]
async fn failover_from_a_dead_registry_address() {
    let s = TestServer::start().await;
    // Port 1 on loopback: nothing listens there.
    let client = fast(Client::builder().addrs(["http://127.0.0.1:1", s.base.as_str()]))
        .build()
        .unwrap();
    let _r = client
        .register(InstanceSpec::new("pay", "pay-1", "10.0.0.1", 80))
        .await
        .unwrap();
    let snap = client.discover("pay").get().await.unwrap();
    assert_eq!(snap.ids(), ["pay-1"]);
    assert_eq!(client.api().services().await.unwrap().services.len(), 1);

    // With only the dead address, a clear error, at once for a cold lookup.
    let dead = fast(Client::builder().addrs(["127.0.0.1:1"]))
        .build()
        .unwrap();
    let e = dead.api().services().await.expect_err("nothing listens");
    assert!(matches!(e, Error::Unreachable { .. }), "{e:?}");
    assert!(
        e.to_string()
            .starts_with("cannot reach the registry at http://127.0.0.1:1"),
        "{e}"
    );
    let e = dead.discover("pay").get().await.expect_err("no cache yet");
    assert!(matches!(e, Error::Unreachable { .. }), "{e:?}");
    s.stop().await;
}

/// The session states a ZooKeeper user knows: connected while renewals
/// land, suspended when the registry goes away, lost once a whole TTL has
/// passed without it, connected again once the registrations are back.
#[tokio::test]
async fn connection_state_follows_the_registry_away_and_back() {
    use muster_client::ConnectionState;

    let s = TestServer::start().await;
    let addr = s.addr;
    let client = s.short_lease_client();
    let mut state = client.connection_state();
    assert_eq!(*state.borrow(), ConnectionState::Idle);
    let _r = client
        .register(InstanceSpec::new("pay", "pay-1", "10.0.0.1", 80))
        .await
        .unwrap();
    assert_eq!(*state.borrow_and_update(), ConnectionState::Connected);

    drop(s.stop().await);
    within(
        "suspended",
        state.wait_for(|c| *c == ConnectionState::Suspended),
    )
    .await
    .unwrap();
    within("lost", state.wait_for(|c| *c == ConnectionState::Lost))
        .await
        .unwrap();

    let s2 = TestServer::start_on(addr, tempfile::tempdir().unwrap()).await;
    within(
        "connected again",
        state.wait_for(|c| *c == ConnectionState::Connected),
    )
    .await
    .unwrap();
    assert_eq!(ids(&client, "pay").await, ["pay-1"]);
    s2.stop().await;
}
