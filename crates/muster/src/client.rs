//! The client commands: plain HTTP calls to the registry's API.

use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use futures::StreamExt;
use muster_types::{
    ErrorBody, Instance, InstancesResponse, RegisterRequest, ServicesResponse, WatchEvent,
    WriteResponse,
};
use reqwest::{Method, Response, StatusCode};

use crate::cli::{Command, Global};
use crate::output;

struct Api {
    http: reqwest::Client,
    base: String,
    namespace: String,
}

impl Api {
    fn new(g: &Global) -> anyhow::Result<Self> {
        let base = g.addr.trim_end_matches('/').to_string();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            bail!("--addr {base:?} must start with http:// or https://");
        }
        let http = reqwest::Client::builder()
            .no_proxy()
            .connect_timeout(Duration::from_secs(3))
            .build()
            .context("cannot build the HTTP client")?;
        Ok(Api {
            http,
            base,
            namespace: g.namespace.clone(),
        })
    }

    fn request(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, String)],
    ) -> reqwest::RequestBuilder {
        let mut q: Vec<(&str, String)> = vec![("namespace", self.namespace.clone())];
        q.extend_from_slice(query);
        self.http
            .request(method, format!("{}{}", self.base, path))
            .query(&q)
    }

    async fn send(&self, req: reqwest::RequestBuilder) -> anyhow::Result<Response> {
        let resp = req.send().await.map_err(|e| {
            if e.is_connect() || e.is_timeout() {
                anyhow!("cannot reach the registry at {}: {e}. Is `muster agent` running there? (set --addr or MUSTER_ADDR)", self.base)
            } else {
                anyhow!("request to {} failed: {e}", self.base)
            }
        })?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        match serde_json::from_str::<ErrorBody>(&text) {
            Ok(b) => {
                let field = b
                    .error
                    .field
                    .map(|f| format!(" (field {f})"))
                    .unwrap_or_default();
                bail!(
                    "{}{field} [{} {}]",
                    b.error.message,
                    status.as_u16(),
                    b.error.code
                )
            }
            Err(_) => bail!("registry answered {status}: {text}"),
        }
    }
}

/// Runs one client command.
pub async fn run(g: Global, cmd: Command) -> anyhow::Result<()> {
    let api = Api::new(&g)?;
    match cmd {
        Command::Agent(_) => unreachable!("handled in main"),
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
            let path = format!("/v1/services/{}/instances/{}", a.service, a.id);
            let inst: Instance = api
                .send(api.request(Method::PUT, &path, &[]).json(&body))
                .await?
                .json()
                .await?;
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
            let path = format!("/v1/services/{service}/instances/{id}");
            let w: WriteResponse = api
                .send(api.request(Method::DELETE, &path, &[]))
                .await?
                .json()
                .await?;
            if g.json {
                output::json(&w);
            } else {
                println!("deregistered {service}/{id} (index {})", w.index);
            }
        }
        Command::Services => {
            let s: ServicesResponse = api
                .send(api.request(Method::GET, "/v1/services", &[]))
                .await?
                .json()
                .await?;
            if g.json {
                output::json(&s);
            } else {
                output::services(&s);
            }
        }
        Command::Instance { service, id } => {
            let path = format!("/v1/services/{service}/instances/{id}");
            let inst: Instance = api
                .send(api.request(Method::GET, &path, &[]))
                .await?
                .json()
                .await?;
            if g.json {
                output::json(&inst);
            } else {
                output::instance_detail(&inst);
            }
        }
        Command::Instances { service, filter } => {
            let path = format!("/v1/services/{service}/instances");
            let r: InstancesResponse = api
                .send(api.request(Method::GET, &path, &filter.pairs()))
                .await?
                .json()
                .await?;
            if g.json {
                output::json(&r);
            } else {
                output::instances(&r.instances);
            }
        }
        Command::Watch { service, filter } => watch(&api, &service, filter.pairs(), g.json).await?,
    }
    Ok(())
}

/// Follows the SSE stream, reconnecting with `Last-Event-ID` if it breaks.
async fn watch(
    api: &Api,
    service: &str,
    filter: Vec<(&'static str, String)>,
    json: bool,
) -> anyhow::Result<()> {
    let mut query = vec![("service", service.to_string())];
    query.extend(filter);
    let mut last_id: Option<String> = None;
    let mut failures = 0u32;
    loop {
        let mut req = api.request(Method::GET, "/v1/watch", &query);
        if let Some(id) = &last_id {
            req = req.header("Last-Event-ID", id);
        }
        let resp = match api.send(req).await {
            Ok(r) => r,
            Err(e) if last_id.is_some() && failures < 30 => {
                failures += 1;
                eprintln!("watch interrupted ({e}); reconnecting");
                tokio::time::sleep(Duration::from_millis(500 * u64::from(failures.min(6)))).await;
                continue;
            }
            Err(e) => return Err(e),
        };
        if resp.status() != StatusCode::OK {
            bail!("unexpected status {}", resp.status());
        }
        failures = 0;
        let mut stream = resp.bytes_stream();
        let mut buf = String::new();
        while let Some(chunk) = stream.next().await {
            let Ok(chunk) = chunk else { break };
            buf.push_str(&String::from_utf8_lossy(&chunk));
            while let Some(end) = buf.find("\n\n") {
                let frame: String = buf.drain(..end + 2).collect();
                let mut data = String::new();
                for line in frame.lines() {
                    if let Some(id) = line.strip_prefix("id:") {
                        last_id = Some(id.trim().to_string());
                    } else if let Some(d) = line.strip_prefix("data:") {
                        data.push_str(d.trim_start());
                    }
                }
                if data.is_empty() {
                    continue; // keep-alive comment
                }
                if json {
                    println!("{data}");
                } else {
                    let ev: WatchEvent =
                        serde_json::from_str(&data).context("unreadable watch event")?;
                    output::event(&ev);
                }
            }
        }
        eprintln!("watch stream ended; reconnecting");
    }
}
