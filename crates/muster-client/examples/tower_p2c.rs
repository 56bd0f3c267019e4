//! Feeds `tower::balance::p2c` from muster: every instance of `hello` (see
//! `examples/register.rs`) becomes an HTTP service, inserted and removed as
//! the registry's watch reports changes. Requires the `tower` feature.
//!
//! ```text
//! cargo run -p muster-client --features tower --example tower_p2c -- 10
//! ```

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use muster_client::Client;
use tower::balance::p2c::Balance;
use tower::load::{CompleteOnResponse, PendingRequests};
use tower::{BoxError, Service, ServiceExt, service_fn};

type Call = Pin<Box<dyn Future<Output = Result<String, BoxError>> + Send>>;

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    // Only needed inside the muster workspace, where the registry server in
    // the same build turns on reqwest's rustls without a default crypto
    // provider; a service depending on muster-client alone can drop it.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let calls: usize = std::env::args()
        .nth(1)
        .map(|n| n.parse())
        .transpose()?
        .unwrap_or(10);
    let registry = std::env::var("MUSTER_ADDR").unwrap_or_else(|_| "http://127.0.0.1:7700".into());
    let client = Client::builder().addrs([registry]).build()?;
    let http = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(2))
        .build()?;

    // One service per instance: a GET of `path` on that instance, which
    // counts as pending (for p2c's load) until it answers.
    let discover = client
        .discover("hello")
        .discover_services(move |instance| {
            let http = http.clone();
            let base = format!("http://{}:{}", instance.address, instance.port);
            let id = instance.id.clone();
            let svc = service_fn(move |path: &'static str| -> Call {
                let (http, url, id) = (http.clone(), format!("{base}{path}"), id.clone());
                Box::pin(async move {
                    let body = http.get(url).send().await?.text().await?;
                    Ok(format!("{id} -> {body}"))
                })
            });
            PendingRequests::new(svc, CompleteOnResponse::default())
        })
        .await?;

    let mut balance = Balance::new(discover);
    for _ in 0..calls {
        let answer = balance.ready().await?.call("/").await?;
        print!("{answer}");
    }
    Ok(())
}
