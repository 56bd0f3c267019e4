//! Feeds tonic's load-balanced `Channel::balance_channel` from muster.
//!
//! Self-contained: it starts two gRPC servers (the standard health service)
//! on free ports, registers them as `grpc-health` with the registry at
//! `MUSTER_ADDR` (default `http://127.0.0.1:7700`), discovers them, and sends
//! health checks through one balanced channel. Requires the `tower` feature.
//!
//! ```text
//! muster agent &
//! cargo run -p muster-client --features tower --example tonic_balance
//! ```

use futures::StreamExt;
use muster_client::{Client, InstanceSpec};
use tonic::transport::channel::Change as ChannelChange;
use tonic::transport::{Channel, Endpoint, Server};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;
use tower::discover::Change;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Only needed inside the muster workspace, where the registry server in
    // the same build turns on reqwest's rustls without a default crypto
    // provider; a service depending on muster-client alone can drop it.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let registry = std::env::var("MUSTER_ADDR").unwrap_or_else(|_| "http://127.0.0.1:7700".into());
    let client = Client::builder().addrs([registry]).build()?;

    // Two gRPC servers, registered on the client's one lease.
    let mut registrations = Vec::new();
    for n in 1..=2 {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (_reporter, health) = tonic_health::server::health_reporter();
        let incoming = futures::stream::unfold(listener, |l| async move {
            let conn = l.accept().await.map(|(stream, _)| stream);
            Some((conn, l))
        });
        tokio::spawn(
            Server::builder()
                .add_service(health)
                .serve_with_incoming(incoming),
        );
        let id = format!("grpc-{n}");
        registrations.push(
            client
                .register(InstanceSpec::new(
                    "grpc-health",
                    &id,
                    addr.ip().to_string(),
                    addr.port(),
                ))
                .await?,
        );
    }

    // The balanced channel and the discovery stream that feeds it.
    let (channel, feed) = Channel::balance_channel::<String>(16);
    let mut changes = client
        .discover("grpc-health")
        .discover_services(|instance| {
            Endpoint::from_shared(format!("http://{}:{}", instance.address, instance.port))
                .expect("a valid URI")
        })
        .await?;
    tokio::spawn(async move {
        while let Some(Ok(change)) = changes.next().await {
            // tonic has a `Change` of its own, with the same two cases.
            let change = match change {
                Change::Insert(id, endpoint) => ChannelChange::Insert(id, endpoint),
                Change::Remove(id) => ChannelChange::Remove(id),
            };
            if feed.send(change).await.is_err() {
                return; // The channel was dropped.
            }
        }
    });

    let mut health = HealthClient::new(channel);
    for _ in 0..4 {
        let answer = health
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await?;
        println!("status: {:?}", answer.into_inner().status());
    }
    for r in registrations {
        r.deregister().await?;
    }
    Ok(())
}
