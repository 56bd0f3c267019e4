//! The client commands: plain HTTP calls to the registry's API.

use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use muster_client::{Backoff, Client, Error, HealthFilter, Query, Timeouts};
use muster_types::RegisterRequest;

use crate::cli::{Command, Global};
use crate::output;

/// The registry's API through `muster-client`, failing fast: one pass over
/// the address, no retries.
struct Api {
    client: Client,
    base: String,
}

impl Api {
    fn new(g: &Global) -> anyhow::Result<Self> {
        let base = g.addr.trim_end_matches('/').to_string();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            bail!("--addr {base:?} must start with http:// or https://");
        }
        let mut builder = Client::builder();
        if let Some(ca) = &g.cacert {
            builder = builder.tls_ca_file(ca);
        }
        if let (Some(cert), Some(key)) = (&g.client_cert, &g.client_key) {
            builder = builder.tls_client_cert(cert, key);
        }
        if let Some(token) = &g.token {
            builder = builder.token(token.clone());
        }
        let client = builder
            .addrs([base.clone()])
            .namespace(g.namespace.clone())
            .timeouts(Timeouts {
                connect: Duration::from_secs(3),
                request: Duration::from_secs(60),
                ..Timeouts::default()
            })
            .backoff(Backoff {
                attempts: 1,
                ..Backoff::default()
            })
            .build()?;
        Ok(Api { client, base })
    }

    fn api(&self) -> &muster_client::Api {
        self.client.api()
    }

    /// Makes a client error readable, with a hint when nothing answered.
    fn explain(&self, e: Error) -> anyhow::Error {
        match e {
            Error::Unreachable { .. } if e.to_string().contains("certificate") => anyhow!(
                "{e}. The registry's certificate is not trusted: give its CA with --cacert \
                 (or MUSTER_CACERT); a registry that requires client certificates also needs \
                 --client-cert and --client-key"
            ),
            Error::Unreachable { .. } => {
                anyhow!("{e}. Is `muster agent` running there? (set --addr or MUSTER_ADDR)")
            }
            Error::Protocol(_) => anyhow!("request to {} failed: {e}", self.base),
            Error::Api { status: 401, .. } => {
                anyhow!("{e}. Give a valid ACL token with --token or MUSTER_TOKEN")
            }
            e => anyhow!(e),
        }
    }
}

/// The discovery filters of the command line as a client query.
fn query(service: &str, pairs: Vec<(&'static str, String)>) -> anyhow::Result<Query> {
    let mut q = Query::new(service);
    for (k, v) in pairs {
        q = match k {
            "tag" => q.tag(v),
            "meta" => match v.split_once(':') {
                Some((key, value)) if !key.is_empty() => q.meta(key, value),
                _ => bail!("meta filter {v:?} must look like key:value"),
            },
            "version" => q.version(v),
            "zone" => q.zone(v),
            "health" if v == "any" => q.health(HealthFilter::Any),
            other => bail!("unknown filter {other}"),
        };
    }
    Ok(q)
}

/// Runs one client command.
pub async fn run(g: Global, cmd: Command) -> anyhow::Result<()> {
    let api = Api::new(&g)?;
    match cmd {
        Command::Agent(_) | Command::Tls { .. } | Command::Snapshot { .. } => {
            unreachable!("handled in main")
        }
        Command::Register(a) => {
            let body = RegisterRequest {
                address: a.address,
                port: a.port,
                tags: a.tags,
                meta: a.meta.into_iter().collect(),
                version: a.version,
                zone: a.zone,
                weight: a.weight,
                ttl: a.ttl,
                lease: a.lease,
                checks: Vec::new(),
            };
            let inst = api
                .api()
                .register(&a.service, &a.id, &body)
                .await
                .map_err(|e| api.explain(e))?;
            if g.json {
                output::json(&inst);
            } else {
                println!(
                    "registered {}/{} at {}:{} (index {})",
                    inst.service, inst.id, inst.address, inst.port, inst.modify_index
                );
                if let Some(l) = &inst.lease {
                    println!("lease {l}: renew it within its TTL or the instance is removed");
                }
            }
        }
        Command::Deregister { service, id } => {
            let w = api
                .api()
                .deregister(&service, &id)
                .await
                .map_err(|e| api.explain(e))?;
            if g.json {
                output::json(&w);
            } else {
                println!("deregistered {service}/{id} (index {})", w.index);
            }
        }
        Command::Services => {
            let s = api.api().services().await.map_err(|e| api.explain(e))?;
            if g.json {
                output::json(&s);
            } else {
                output::services(&s);
            }
        }
        Command::Instance { service, id } => {
            let inst = api
                .api()
                .instance(&service, &id)
                .await
                .map_err(|e| api.explain(e))?;
            if g.json {
                output::json(&inst);
            } else {
                output::instance_detail(&inst);
            }
        }
        Command::Instances { service, filter } => {
            let q = query(&service, filter.pairs())?;
            let r = api.api().instances(&q).await.map_err(|e| api.explain(e))?;
            if g.json {
                output::json(&r);
            } else {
                output::instances(&r.instances);
            }
        }
        Command::Cluster { command } => {
            use crate::cli::ClusterCommand as C;
            let c = match command {
                C::Members => api.api().cluster().await,
                C::Join { id, cluster_addr } => api.api().join_member(id, &cluster_addr).await,
                C::Leave { id } => api.api().remove_member(id).await,
                C::TransferLeader { id } => api.api().transfer_leader(id).await,
            }
            .map_err(|e| api.explain(e))?;
            if g.json {
                output::json(&c);
            } else {
                output::members(&c);
            }
        }
        Command::Watch { service, filter } => {
            watch(&api, &query(&service, filter.pairs())?, g.json).await?
        }
        Command::Acl { command } => {
            crate::acl::run(&api.client, &g, command)
                .await
                .map_err(|e| match e.downcast::<Error>() {
                    Ok(e) => api.explain(e),
                    Err(e) => e,
                })?
        }
    }
    Ok(())
}

/// Follows the watch, reconnecting with `Last-Event-ID` if it breaks.
async fn watch(api: &Api, query: &Query, json: bool) -> anyhow::Result<()> {
    let mut last_id: Option<u64> = None;
    let mut failures = 0u32;
    loop {
        let mut events = match api.api().watch(query, last_id).await {
            Ok(events) => events,
            Err(e) if last_id.is_some() && failures < 30 => {
                failures += 1;
                eprintln!("watch interrupted ({}); reconnecting", api.explain(e));
                tokio::time::sleep(Duration::from_millis(500 * u64::from(failures.min(6)))).await;
                continue;
            }
            Err(e) => return Err(api.explain(e)),
        };
        failures = 0;
        loop {
            match events.next().await {
                Ok(Some(ev)) => {
                    if json {
                        println!(
                            "{}",
                            serde_json::to_string(&ev).context("cannot print the event")?
                        );
                    } else {
                        output::event(&ev);
                    }
                }
                Ok(None) => break,
                Err(e @ Error::UnreadableEvent { .. }) => bail!("{e}"),
                Err(_) => break,
            }
            last_id = events.last_event_id();
        }
        last_id = events.last_event_id().or(last_id);
        eprintln!("watch stream ended; reconnecting");
    }
}
