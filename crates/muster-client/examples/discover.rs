//! Discovers the `hello` service (see `examples/register.rs`) and calls it
//! through a power-of-two-choices balancer that prefers zone `eu-1a`.
//! Failed calls eject the instance for a while.
//!
//! ```text
//! cargo run -p muster-client --example discover -- 10
//! ```

use std::time::Duration;

use muster_client::{Client, Strategy};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
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
    let hello = client.discover("hello").tag("example");

    let snapshot = hello.get().await?;
    println!(
        "{} instance(s) of hello at index {}",
        snapshot.len(),
        snapshot.index()
    );

    let balancer = hello
        .balancer(Strategy::PowerOfTwoChoices)
        .prefer_zone("eu-1a");
    let http = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(2))
        .build()?;
    for _ in 0..calls {
        let pick = balancer.pick().await?;
        let url = format!("http://{}/", pick.authority());
        match http.get(&url).send().await {
            Ok(resp) => {
                print!("{} -> {}", pick.id(), resp.text().await?);
                pick.report_success();
            }
            Err(e) => {
                println!("{} failed ({e}); ejecting it for a while", pick.id());
                pick.report_failure();
            }
        }
    }
    Ok(())
}
