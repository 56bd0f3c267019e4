//! A service that registers itself: serves `GET /` on a free port, registers
//! as `hello` with muster, stays registered while it runs (the client renews
//! the lease), and deregisters on ctrl-c or SIGTERM.
//!
//! ```text
//! muster agent &                      # a registry on 127.0.0.1:7700
//! cargo run -p muster-client --example register -- hello-1
//! cargo run -p muster-client --example register -- hello-2 eu-1b
//! cargo run -p muster-client --example discover
//! ```
//!
//! `MUSTER_ADDR` overrides the registry address.

use axum::Router;
use axum::routing::get;
use muster_client::{Client, InstanceSpec};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Only needed inside the muster workspace, where the registry server in
    // the same build turns on reqwest's rustls without a default crypto
    // provider; a service depending on muster-client alone can drop it.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut args = std::env::args().skip(1);
    let id = args.next().unwrap_or_else(|| "hello-1".into());
    let zone = args.next().unwrap_or_else(|| "eu-1a".into());
    let registry = std::env::var("MUSTER_ADDR").unwrap_or_else(|_| "http://127.0.0.1:7700".into());

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let greeting = format!("hello from {id}\n");
    let app = Router::new().route("/", get(move || async move { greeting }));

    let client = Client::builder().addrs([registry]).build()?;
    let registration = client
        .register(
            InstanceSpec::new("hello", &id, addr.ip().to_string(), addr.port())
                .zone(&zone)
                .version(env!("CARGO_PKG_VERSION"))
                .tag("example"),
        )
        .await?;
    println!(
        "{id} serving on http://{addr}, registered as hello/{} (lease {}); ctrl-c to stop",
        registration.id(),
        registration.instance().lease.as_deref().unwrap_or("-"),
    );

    // The server stops once the signal came and the instance is deregistered.
    axum::serve(listener, app)
        .with_graceful_shutdown(client.deregister_on_shutdown())
        .await?;
    println!("{id} deregistered; bye");
    Ok(())
}
