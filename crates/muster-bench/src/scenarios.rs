//! The scenarios of PERFORMANCE.md, each against muster, the ceiling and
//! etcd where the flow has an equivalent there.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use bytes::Bytes;
use serde::Serialize;
use serde_json::Value;
use tokio::sync::{Semaphore, mpsc};

use crate::cluster::{self, SendTo};
use crate::etcd::{EtcdClient, EtcdServer, KeepAliveStream, Read};
use crate::host;
use crate::load::{
    self, Access, Answer, Conn, Limits, Summary, Worker, http_workers, http_workers_over, request,
};
use crate::servers::{self, Proc};
use crate::sse;

/// Every scenario, in the order `all` runs them.
pub const ALL: &[&str] = &[
    "heartbeat",
    "heartbeat-batch",
    "lookup-1",
    "lookup-100",
    "register",
    "churn",
    "watch-fanout",
    "watch-many",
    "failure-detection",
    "scale",
    "scale-unique",
];

/// Scenarios whose figures include fsyncs: a measured write is acknowledged
/// only once durable (register, churn, scale, the write that watch-fanout
/// times), or the measured event follows a committed write (the expiry
/// failure-detection waits for is proposed and committed through raft).
/// They refuse to run with data on tmpfs. The others write only while
/// setting up.
pub const DURABLE: &[&str] = &[
    "register",
    "churn",
    "watch-fanout",
    "failure-detection",
    "scale",
    "scale-unique",
    "failover",
];

/// Which systems a run measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    Muster,
    /// muster run with `--acl`, every request carrying a token whose
    /// policy grants write on every service (checked on every request).
    MusterAcl,
    /// muster serving HTTPS (keep-alive connections, TLS 1.3).
    MusterTls,
    Ceiling,
    Etcd,
}

impl Target {
    pub fn name(self) -> &'static str {
        match self {
            Target::Muster => "muster",
            Target::MusterAcl => "muster-acl",
            Target::MusterTls => "muster-tls",
            Target::Ceiling => "ceiling",
            Target::Etcd => "etcd",
        }
    }
}

/// Settings shared by all scenarios.
#[derive(Debug, Clone)]
pub struct Settings {
    pub muster_bin: PathBuf,
    pub server_cpu: Option<usize>,
    pub duration: Duration,
    pub connections: usize,
    pub leases: usize,
    pub watchers: usize,
    pub watch_services: usize,
    pub changes: usize,
    pub fd_samples: usize,
    pub scale: Vec<u64>,
    pub work: PathBuf,
    /// Where etcd's data directories are made.
    pub etcd_data: PathBuf,
    pub keep_data: Option<PathBuf>,
    /// Restarts timed after `scale`'s `kill -9`, each from a dropped page
    /// cache where the kernel lets us.
    pub restarts: usize,
    /// Drop the page cache before each timed restart (not in smoke runs,
    /// where it would only slow the machine's other work).
    pub drop_page_cache: bool,
    /// Nodes per cluster; 1 runs the single-node scenarios.
    pub cluster: usize,
    /// Where cluster clients send their requests (one row per mode).
    pub send_to: Vec<SendTo>,
    /// Leader kills timed by `failover`.
    pub kills: usize,
}

/// One measured run of one scenario against one target.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub scenario: String,
    pub target: String,
    pub run: usize,
    #[serde(flatten)]
    pub summary: Summary,
    /// Server resident memory after the load, in bytes.
    pub rss_bytes: Option<u64>,
    /// Scenario-specific figures (bytes per instance, recovery time, ...).
    pub extra: BTreeMap<String, Value>,
}

impl Row {
    pub(crate) fn new(scenario: &str, target: Target, run: usize, summary: Summary) -> Row {
        Row {
            scenario: scenario.to_string(),
            target: target.name().to_string(),
            run,
            summary,
            rss_bytes: None,
            extra: BTreeMap::new(),
        }
    }
}

/// A registration body with 2 tags and 2 meta entries, like the memory
/// target's instances. Tags, meta, version and zone repeat across
/// instances, the best case for the catalog's interning.
pub(crate) fn instance_body(i: u64) -> Bytes {
    Bytes::from(format!(
        r#"{{"address":"10.{}.{}.{}","port":8080,"tags":["prod","v2"],"meta":{{"team":"payments","rev":"r{}"}},"version":"1.4.2","zone":"eu-1a"}}"#,
        (i >> 16) & 255,
        (i >> 8) & 255,
        i & 255,
        i % 1000
    ))
}

/// The same shape as [`instance_body`], but every tag, meta value, version
/// and zone is unique to its instance: the worst case for interning.
fn unique_instance_body(i: u64) -> Bytes {
    Bytes::from(format!(
        r#"{{"address":"10.{}.{}.{}","port":8080,"tags":["t{i}","g{i}"],"meta":{{"team":"team-{i}","rev":"r{i}"}},"version":"1.{}.{i}","zone":"zone-{i}"}}"#,
        (i >> 16) & 255,
        (i >> 8) & 255,
        i & 255,
        i % 1000
    ))
}

struct Muster {
    proc: Proc,
    dir: PathBuf,
    /// How clients reach it (TLS, a token), by target.
    access: Access,
}

impl Muster {
    async fn start(s: &Settings, name: &str) -> Result<Muster> {
        Self::start_for(s, name, Target::Muster).await
    }

    /// A muster as `target` wants it: plain, with ACLs on (and a token
    /// whose policy grants write on every service), or serving HTTPS.
    async fn start_for(s: &Settings, name: &str, target: Target) -> Result<Muster> {
        let dir = s.work.join(format!("{name}-{}", unique()));
        match target {
            Target::MusterAcl => {
                let proc =
                    servers::spawn_muster(&s.muster_bin, s.server_cpu, &dir, &["--acl"]).await?;
                let token = acl_token(proc.addr).await?;
                Ok(Muster {
                    proc,
                    dir,
                    access: Access {
                        tls: None,
                        token: Some(format!("Bearer {token}").parse()?),
                    },
                })
            }
            Target::MusterTls => {
                let certs = s.work.join(format!("certs-{}", unique()));
                std::fs::create_dir_all(&certs)?;
                make_certs(&s.muster_bin, &certs)?;
                let (cert, key) = (
                    certs.join("muster-server.pem"),
                    certs.join("muster-server-key.pem"),
                );
                let args = [
                    "--tls-cert",
                    cert.to_str().context("cert path")?,
                    "--tls-key",
                    key.to_str().context("key path")?,
                ];
                let proc = servers::spawn_muster(&s.muster_bin, s.server_cpu, &dir, &args).await?;
                Ok(Muster {
                    proc,
                    dir,
                    access: Access::tls(&certs.join("muster-ca.pem"))?,
                })
            }
            _ => {
                let proc = servers::spawn_muster(&s.muster_bin, s.server_cpu, &dir, &[]).await?;
                Ok(Muster {
                    proc,
                    dir,
                    access: Access::default(),
                })
            }
        }
    }

    fn addr(&self) -> SocketAddr {
        self.proc.addr
    }

    /// A connection as this muster's clients make them.
    async fn conn(&self) -> Result<Conn> {
        Conn::connect_with(self.addr(), &self.access).await
    }
}

/// Bootstraps ACLs on a fresh `--acl` agent and makes the token the load
/// runs with: a policy granting write on every service, so each request
/// is matched against rules, as an application's token is.
async fn acl_token(addr: SocketAddr) -> Result<String> {
    let mut conn = Conn::connect(addr).await?;
    let boot: Value = serde_json::from_slice(
        &conn
            .call_ok(request("POST", "/v1/acl/bootstrap", None))
            .await?,
    )?;
    let management = boot["secret"]
        .as_str()
        .context("no bootstrap secret")?
        .to_string();
    let mut conn = Conn::connect_with(
        addr,
        &Access {
            tls: None,
            token: Some(format!("Bearer {management}").parse()?),
        },
    )
    .await?;
    let policy =
        serde_json::json!({"services": [{"namespace": "*", "service": "*", "access": "write"}]});
    conn.call_ok(request(
        "PUT",
        "/v1/acl/policies/bench",
        Some(Bytes::from(policy.to_string())),
    ))
    .await?;
    let body = serde_json::json!({"policies": ["bench"], "description": "muster-bench"});
    let t: Value = serde_json::from_slice(
        &conn
            .call_ok(request(
                "POST",
                "/v1/acl/tokens",
                Some(Bytes::from(body.to_string())),
            ))
            .await?,
    )?;
    Ok(t["secret"].as_str().context("no token secret")?.to_string())
}

/// A CA and a server certificate for 127.0.0.1 in `dir`, made by the
/// binary's own `muster tls` commands.
fn make_certs(bin: &std::path::Path, dir: &std::path::Path) -> Result<()> {
    let d = dir.to_str().context("cert dir")?;
    let ca = dir.join("muster-ca.pem");
    let ca_key = dir.join("muster-ca-key.pem");
    for args in [
        vec!["tls", "ca", "create", "--dir", d],
        vec![
            "tls",
            "cert",
            "create",
            "--server",
            "--dir",
            d,
            "--ca",
            ca.to_str().context("ca")?,
            "--ca-key",
            ca_key.to_str().context("ca key")?,
        ],
    ] {
        let out = std::process::Command::new(bin).args(&args).output()?;
        if !out.status.success() {
            bail!(
                "muster {args:?} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    Ok(())
}

pub(crate) fn unique() -> u64 {
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

pub(crate) async fn put_instance(
    conn: &mut Conn,
    service: &str,
    id: &str,
    body: Bytes,
) -> Result<Bytes> {
    conn.call_ok(request(
        "PUT",
        &format!("/v1/services/{service}/instances/{id}"),
        Some(body),
    ))
    .await
}

/// Registers `n` instances of `service` (for lookups).
async fn populate(addr: SocketAddr, service: &str, n: u64) -> Result<()> {
    populate_with(addr, &Access::default(), service, n).await
}

/// [`populate`] through connections made as `access` says.
async fn populate_with(addr: SocketAddr, access: &Access, service: &str, n: u64) -> Result<()> {
    let mut conn = Conn::connect_with(addr, access).await?;
    for i in 0..n {
        put_instance(&mut conn, service, &format!("i{i}"), instance_body(i)).await?;
    }
    Ok(())
}

/// Drives `workers` and returns, with what they measured, the CPU time (user
/// + system, µs) the server process `pid` spent meanwhile.
async fn drive_measured<W: Worker>(
    pid: u32,
    workers: Vec<W>,
    limits: Limits,
) -> Result<(Summary, u64)> {
    drive_measured_over(&[pid], workers, limits).await
}

/// Like [`drive_measured`], with the CPU time of every process of `pids`
/// (the members of a cluster) summed.
pub(crate) async fn drive_measured_over<W: Worker>(
    pids: &[u32],
    workers: Vec<W>,
    limits: Limits,
) -> Result<(Summary, u64)> {
    let cpu = || -> Result<u64> { pids.iter().map(|&p| servers::cpu_us(p)).sum() };
    let before = cpu()?;
    let summary = load::drive(workers, limits).await;
    let spent = cpu()?.saturating_sub(before);
    Ok((summary, spent))
}

/// Server core time per request (`server_cpu_us_per_req`): where the load
/// generator's core is the bottleneck, req/s no longer tells the servers
/// apart, this still does.
pub(crate) fn record_server_cpu(row: &mut Row, cpu_us: u64) {
    if row.summary.requests > 0 {
        let per = cpu_us as f64 / row.summary.requests as f64;
        row.extra.insert(
            "server_cpu_us_per_req".into(),
            Value::from((per * 100.0).round() / 100.0),
        );
    }
}

pub(crate) fn limits(s: &Settings) -> Limits {
    Limits {
        duration: s.duration,
        max_requests: 50_000_000,
    }
}

/// Runs one scenario once against each target (one A/B round).
pub async fn run(s: &Settings, scenario: &str, targets: &[Target], run: usize) -> Result<Vec<Row>> {
    if s.cluster > 1 {
        return cluster::run(s, scenario, targets, run).await;
    }
    let mut rows = Vec::new();
    for &t in targets {
        let row = match (scenario, t) {
            (
                "heartbeat",
                Target::Muster | Target::MusterAcl | Target::MusterTls | Target::Ceiling,
            ) => heartbeat(s, t, run).await,
            ("heartbeat", Target::Etcd) => etcd_heartbeat(s, run).await,
            ("heartbeat-batch", Target::Muster | Target::Ceiling) => {
                heartbeat_batch(s, t, run).await
            }
            (
                "lookup-1",
                Target::Muster | Target::MusterAcl | Target::MusterTls | Target::Ceiling,
            ) => lookup(s, t, run, 1).await,
            ("lookup-100", Target::Muster | Target::Ceiling) => lookup(s, t, run, 100).await,
            ("lookup-1", Target::Etcd) => etcd_lookup(s, run, 1).await,
            ("lookup-100", Target::Etcd) => etcd_lookup(s, run, 100).await,
            ("register", Target::Muster | Target::Ceiling) => register(s, t, run).await,
            ("register", Target::Etcd) => etcd_register(s, run).await,
            ("churn", Target::Muster) => churn(s, run).await,
            ("watch-fanout", Target::Muster) => watch_fanout(s, run).await,
            ("watch-fanout", Target::Etcd) => etcd_watch_fanout(s, run).await,
            ("watch-many", Target::Muster) => watch_many(s, run).await,
            ("failure-detection", Target::Muster) => failure_detection(s, run).await,
            ("scale", Target::Muster) => {
                rows.extend(scale(s, run, false).await?);
                continue;
            }
            ("scale-unique", Target::Muster) => {
                rows.extend(scale(s, run, true).await?);
                continue;
            }
            // No equivalent on this target.
            _ => continue,
        }
        .with_context(|| format!("{scenario} against {}", t.name()))?;
        rows.push(row);
    }
    Ok(rows)
}

/// Runs `plan` against muster, or against the ceiling answering with what
/// muster answered for `sample` (status, headers and bytes).
async fn http_flow(
    s: &Settings,
    scenario: &str,
    target: Target,
    run: usize,
    m: &Muster,
    sample: Answer,
    plan: impl FnMut(usize) -> Box<dyn FnMut(u64) -> hyper::Request<http_body_util::Full<Bytes>> + Send>,
) -> Result<Row> {
    let ceiling;
    let (addr, pid) = match target {
        Target::Ceiling => {
            ceiling = servers::spawn_ceiling(s.server_cpu, &sample, &s.work).await?;
            (ceiling.addr, ceiling.pid)
        }
        _ => (m.addr(), m.proc.pid),
    };
    let access = match target {
        Target::Ceiling => Access::default(),
        _ => m.access.clone(),
    };
    let workers = http_workers_over(&[addr], &access, s.connections, plan).await?;
    let (summary, cpu) = drive_measured(pid, workers, limits(s)).await?;
    let mut row = Row::new(scenario, target, run, summary);
    row.rss_bytes = servers::rss_bytes(pid).ok();
    record_server_cpu(&mut row, cpu);
    row.extra
        .insert("response_bytes".into(), Value::from(sample.body.len()));
    Ok(row)
}

async fn lookup(s: &Settings, target: Target, run: usize, n: u64) -> Result<Row> {
    let m = Muster::start_for(s, "lookup", target).await?;
    let service = if n == 1 { "one" } else { "hundred" };
    populate_with(m.addr(), &m.access, service, n).await?;
    let path = format!("/v1/services/{service}/instances");
    let sample = m
        .conn()
        .await?
        .call_answer(request("GET", &path, None))
        .await?;
    let scenario = if n == 1 { "lookup-1" } else { "lookup-100" };
    http_flow(s, scenario, target, run, &m, sample, |_| {
        let path = path.clone();
        Box::new(move |_| request("GET", &path, None))
    })
    .await
}

/// Creates `n` leases with a 60 s TTL; returns their ids.
pub(crate) async fn create_leases(conn: &mut Conn, n: usize) -> Result<Vec<String>> {
    let mut leases = Vec::with_capacity(n);
    for _ in 0..n {
        let body = conn
            .call_ok(request(
                "POST",
                "/v1/leases",
                Some(Bytes::from_static(br#"{"ttl":"60s"}"#)),
            ))
            .await?;
        let v: Value = serde_json::from_slice(&body)?;
        leases.push(
            v["id"]
                .as_str()
                .ok_or_else(|| anyhow!("no lease id in {v}"))?
                .to_string(),
        );
    }
    Ok(leases)
}

/// Leases renewed per `POST /v1/leases/renew` in `heartbeat-batch`.
pub const RENEW_BATCH: usize = 100;

/// Renewals of many leases per request (`POST /v1/leases/renew`), as an
/// agent renewing for every service of its host sends them. Reports
/// `renewals_per_s`, the figure to hold against etcd's keep-alives.
async fn heartbeat_batch(s: &Settings, target: Target, run: usize) -> Result<Row> {
    let m = Muster::start(s, "heartbeat").await?;
    let mut conn = Conn::connect(m.addr()).await?;
    let leases = create_leases(&mut conn, s.leases.max(RENEW_BATCH)).await?;
    let body = |first: usize| {
        let ids: Vec<&str> = (0..RENEW_BATCH)
            .map(|k| leases[(first + k) % leases.len()].as_str())
            .collect();
        Bytes::from(serde_json::to_vec(&serde_json::json!({ "ids": ids })).expect("json"))
    };
    // Every request renews a different window of the leases.
    let bodies: Arc<Vec<Bytes>> =
        Arc::new((0..leases.len()).step_by(RENEW_BATCH).map(body).collect());
    let sample = conn
        .call_answer(request("POST", "/v1/leases/renew", Some(bodies[0].clone())))
        .await?;
    let v: Value = serde_json::from_slice(&sample.body)?;
    let renewed = v["renewed"].as_array().map_or(0, Vec::len);
    if renewed != RENEW_BATCH {
        bail!("a batch renewal renewed {renewed} of {RENEW_BATCH} leases: {v}");
    }
    let conns = s.connections;
    let mut row = http_flow(s, "heartbeat-batch", target, run, &m, sample, |w| {
        let bodies = Arc::clone(&bodies);
        Box::new(move |seq| {
            let b = &bodies[(w + seq as usize * conns) % bodies.len()];
            request("POST", "/v1/leases/renew", Some(b.clone()))
        })
    })
    .await?;
    row.extra.insert("leases".into(), Value::from(leases.len()));
    row.extra
        .insert("leases_per_request".into(), Value::from(RENEW_BATCH));
    if target == Target::Muster {
        row.extra.insert(
            "renewals_per_s".into(),
            Value::from((row.summary.rps * RENEW_BATCH as f64).round()),
        );
    }
    Ok(row)
}

async fn heartbeat(s: &Settings, target: Target, run: usize) -> Result<Row> {
    let m = Muster::start_for(s, "heartbeat", target).await?;
    let mut conn = m.conn().await?;
    let leases = Arc::new(create_leases(&mut conn, s.leases).await?);
    let sample = conn
        .call_answer(request(
            "PUT",
            &format!("/v1/leases/{}/renew", leases[0]),
            None,
        ))
        .await?;
    let conns = s.connections;
    let mut row = http_flow(s, "heartbeat", target, run, &m, sample, |w| {
        let leases = Arc::clone(&leases);
        Box::new(move |seq| {
            let l = &leases[(w + seq as usize * conns) % leases.len()];
            request("PUT", &format!("/v1/leases/{l}/renew"), None)
        })
    })
    .await?;
    row.extra.insert("leases".into(), Value::from(s.leases));
    Ok(row)
}

async fn register(s: &Settings, target: Target, run: usize) -> Result<Row> {
    let m = Muster::start(s, "register").await?;
    let mut conn = Conn::connect(m.addr()).await?;
    let sample = conn
        .call_answer(request(
            "PUT",
            "/v1/services/reg/instances/sample",
            Some(instance_body(0)),
        ))
        .await?;
    http_flow(s, "register", target, run, &m, sample, |w| {
        Box::new(move |seq| {
            request(
                "PUT",
                &format!("/v1/services/reg/instances/w{w}-{seq}"),
                Some(instance_body(seq)),
            )
        })
    })
    .await
}

/// 20% registrations, 10% deregistrations of the worker's own earlier
/// instances, 70% lookups of the same service.
async fn churn(s: &Settings, run: usize) -> Result<Row> {
    let m = Muster::start(s, "churn").await?;
    populate(m.addr(), "churn", 100).await?;
    let workers = http_workers(m.addr(), s.connections, |w| {
        let mut mine: Vec<u64> = Vec::new();
        Box::new(move |seq| match seq % 10 {
            0 | 1 => {
                mine.push(seq);
                request(
                    "PUT",
                    &format!("/v1/services/churn/instances/c{w}-{seq}"),
                    Some(instance_body(seq)),
                )
            }
            2 if !mine.is_empty() => {
                let old = mine.remove(0);
                request(
                    "DELETE",
                    &format!("/v1/services/churn/instances/c{w}-{old}"),
                    None,
                )
            }
            _ => request("GET", "/v1/services/churn/instances", None),
        })
    })
    .await?;
    let (summary, cpu) = drive_measured(m.proc.pid, workers, limits(s)).await?;
    let mut row = Row::new("churn", Target::Muster, run, summary);
    row.rss_bytes = m.proc.rss().ok();
    record_server_cpu(&mut row, cpu);
    Ok(row)
}

/// Opens `n` SSE watches of `service`, at most 256 connecting at a time, and
/// waits until each has its snapshot.
async fn open_watches(
    addr: SocketAddr,
    service: &str,
    n: usize,
) -> Result<mpsc::UnboundedReceiver<(usize, Instant, String)>> {
    let (ready_tx, mut ready_rx) = mpsc::unbounded_channel();
    let (tx, rx) = mpsc::unbounded_channel();
    let gate = Arc::new(Semaphore::new(256));
    let path = format!("/v1/watch?service={service}");
    let mut opening = Vec::with_capacity(n);
    for i in 0..n {
        let gate = Arc::clone(&gate);
        let (ready_tx, tx, path) = (ready_tx.clone(), tx.clone(), path.clone());
        opening.push(tokio::spawn(async move {
            let _permit = gate.acquire_owned().await?;
            let (sock, rest) = sse::open(addr, &path).await?;
            tokio::spawn(sse::read_events(i, sock, rest, ready_tx, tx));
            anyhow::Ok(())
        }));
    }
    drop(ready_tx);
    for o in opening {
        o.await??;
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    for _ in 0..n {
        tokio::time::timeout_at(deadline.into(), ready_rx.recv())
            .await
            .context("watchers did not all get their snapshot within 120 s")?
            .ok_or_else(|| anyhow!("a watch ended before its snapshot"))?;
    }
    Ok(rx)
}

/// Records, for each of `n` watchers, the time from `t0` to its receipt of
/// one change; returns how many did not get it within 30 s.
async fn record_receipts<T>(
    rx: &mut mpsc::UnboundedReceiver<T>,
    n: usize,
    t0: Instant,
    hist: &mut hdrhistogram::Histogram<u64>,
    at: impl Fn(T) -> Instant,
) -> u64 {
    for got in 0..n {
        match tokio::time::timeout(Duration::from_secs(30), rx.recv()).await {
            Ok(Some(item)) => {
                let _ = hist.record((at(item).duration_since(t0).as_micros() as u64).max(1));
            }
            _ => return (n - got) as u64,
        }
    }
    0
}

async fn watch_fanout(s: &Settings, run: usize) -> Result<Row> {
    let m = Muster::start(s, "fanout").await?;
    let mut conn = Conn::connect(m.addr()).await?;
    put_instance(&mut conn, "fan", "x", instance_body(0)).await?;
    let mut rx = open_watches(m.addr(), "fan", s.watchers).await?;
    let mut hist = load::new_histogram();
    let mut errors = 0;
    let start = Instant::now();
    let (server_before, own_before) = (
        servers::cpu_us(m.proc.pid)?,
        servers::cpu_us(std::process::id())?,
    );
    for k in 1..=s.changes as u64 {
        let t0 = Instant::now();
        put_instance(&mut conn, "fan", "x", instance_body(k)).await?;
        errors += record_receipts(&mut rx, s.watchers, t0, &mut hist, |(_, at, _)| at).await;
    }
    let server_cpu = servers::cpu_us(m.proc.pid)?.saturating_sub(server_before);
    let own_cpu = servers::cpu_us(std::process::id())?.saturating_sub(own_before);
    let summary = Summary::from_histogram(&hist, errors, start.elapsed());
    let mut row = Row::new("watch-fanout", Target::Muster, run, summary);
    row.rss_bytes = m.proc.rss().ok();
    record_cpu_per_change(&mut row, s.changes, server_cpu, own_cpu);
    row.extra.insert("watchers".into(), Value::from(s.watchers));
    row.extra.insert("changes".into(), Value::from(s.changes));
    Ok(row)
}

/// One Rust client (`muster-client`) looking up `watch_services` services,
/// each with one instance, all at once: the latency of each first answer
/// (the histogram), the time until all are answered, and then, once the
/// client has merged its lookups onto one multiplexed watch, the server's
/// open connections, streams and queries, and its memory before and after.
async fn watch_many(s: &Settings, run: usize) -> Result<Row> {
    let n = s.watch_services;
    let m = Muster::start(s, "watch-many").await?;
    let mut conn = Conn::connect(m.addr()).await?;
    for i in 0..n {
        put_instance(&mut conn, &format!("svc-{i}"), "a", instance_body(i as u64)).await?;
    }
    let rss_before = m.proc.rss().ok();
    let client = muster_client::Client::builder()
        .addrs([format!("http://{}", m.addr())])
        .build()?;
    let lookups: Vec<_> = (0..n)
        .map(|i| client.discover(format!("svc-{i}")))
        .collect();
    let start = Instant::now();
    let answers = futures::future::join_all(lookups.iter().map(|d| async move {
        let t0 = Instant::now();
        let r = d.get().await;
        (r, t0.elapsed())
    }))
    .await;
    let all_answered = start.elapsed();
    let mut hist = load::new_histogram();
    let mut errors = 0;
    for (r, took) in answers {
        match r {
            Ok(snap) if snap.len() == 1 => {
                hist.record(took.as_micros() as u64).ok();
            }
            _ => errors += 1,
        }
    }
    // The client merges its streams once no lookup was added for a moment:
    // wait (bounded) until the server carries them on one.
    let deadline = Instant::now() + Duration::from_secs(30);
    let metric = |text: &str, name: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0.0)
    };
    let mut metrics_conn = Conn::connect(m.addr()).await?;
    let text = loop {
        let body = metrics_conn
            .call_ok(request("GET", "/metrics", None))
            .await?;
        let text = String::from_utf8_lossy(&body).into_owned();
        if metric(&text, "muster_watch_streams") == 1.0 || Instant::now() > deadline {
            break text;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let summary = Summary::from_histogram(&hist, errors, all_answered);
    let mut row = Row::new("watch-many", Target::Muster, run, summary);
    row.rss_bytes = m.proc.rss().ok();
    let x = &mut row.extra;
    x.insert("services".into(), Value::from(n));
    x.insert(
        "all_answered_ms".into(),
        Value::from(all_answered.as_millis() as u64),
    );
    x.insert(
        "watch_streams".into(),
        Value::from(metric(&text, "muster_watch_streams")),
    );
    x.insert(
        "watch_queries".into(),
        Value::from(metric(&text, "muster_watch_queries")),
    );
    // The client's watch stream and its idle request connection, and the
    // connection this reads the metrics on.
    x.insert(
        "server_connections".into(),
        Value::from(metric(&text, "muster_http_connections")),
    );
    x.insert("rss_before_watch_bytes".into(), Value::from(rss_before));
    drop(client);
    Ok(row)
}

/// Which side a change's delivery keeps busy: the server's core
/// (`server_cpu_ms_per_change`) or the load generator's, reading every
/// watcher's socket (`loadgen_cpu_ms_per_change`).
fn record_cpu_per_change(row: &mut Row, changes: usize, server_us: u64, loadgen_us: u64) {
    let per_change = |us: u64| (us as f64 / changes.max(1) as f64 / 1000.0).round();
    row.extra.insert(
        "server_cpu_ms_per_change".into(),
        Value::from(per_change(server_us)),
    );
    row.extra.insert(
        "loadgen_cpu_ms_per_change".into(),
        Value::from(per_change(loadgen_us)),
    );
}

/// Instances with a 2 s TTL renewed once, then left silent: the time from
/// the acknowledged last renewal to the instance's delete event.
async fn failure_detection(s: &Settings, run: usize) -> Result<Row> {
    const TTL: Duration = Duration::from_secs(2);
    let m = Muster::start(s, "failure").await?;
    let mut conn = Conn::connect(m.addr()).await?;
    for i in 0..s.fd_samples {
        let body = Bytes::from(format!(
            r#"{{"address":"10.0.0.{}","port":8080,"ttl":"{}s"}}"#,
            i % 250,
            TTL.as_secs()
        ));
        put_instance(&mut conn, "fd", &format!("i{i}"), body).await?;
    }
    let mut rx = open_watches(m.addr(), "fd", 1).await?;
    // Stagger the last renewals over one TTL so the samples fall at
    // different points of the server's expiry sweep.
    let step = TTL / s.fd_samples.max(1) as u32;
    let mut last = BTreeMap::new();
    for i in 0..s.fd_samples {
        conn.call_ok(request(
            "PUT",
            &format!("/v1/services/fd/instances/i{i}/heartbeat"),
            None,
        ))
        .await?;
        last.insert(format!("\"id\":\"i{i}\""), Instant::now());
        tokio::time::sleep(step).await;
    }
    let mut hist = load::new_histogram();
    let start = Instant::now();
    let deadline = Instant::now() + TTL * 10;
    while !last.is_empty() {
        let (_, at, data) = tokio::time::timeout_at(deadline.into(), rx.recv())
            .await
            .context("instances not removed within 10 TTLs")?
            .ok_or_else(|| anyhow!("watch ended"))?;
        if !data.starts_with("delete ") {
            continue;
        }
        let key = last.keys().find(|k| data.contains(k.as_str())).cloned();
        if let Some(k) = key {
            let t = last.remove(&k).expect("present");
            let _ = hist.record((at.duration_since(t).as_micros() as u64).max(1));
        }
    }
    let summary = Summary::from_histogram(&hist, 0, start.elapsed());
    let mut row = Row::new("failure-detection", Target::Muster, run, summary);
    row.rss_bytes = m.proc.rss().ok();
    row.extra.insert("ttl_s".into(), Value::from(TTL.as_secs()));
    row.extra
        .insert("samples".into(), Value::from(s.fd_samples));
    Ok(row)
}

/// Registers N instances (2 tags, 2 meta) over 1,000 services, reports RSS
/// growth per instance, then kills the server with SIGKILL and times its
/// recovery until it serves all N again, `restarts` times, each after
/// dropping the page cache where the kernel allows it (the report says
/// whether it did). `unique` gives every instance its own tags, meta,
/// version and zone.
async fn scale(s: &Settings, run: usize, unique: bool) -> Result<Vec<Row>> {
    let mut rows = Vec::new();
    let name = if unique { "scale-unique" } else { "scale" };
    let body = if unique {
        unique_instance_body
    } else {
        instance_body
    };
    for &n in &s.scale {
        let m = Muster::start(s, name).await?;
        let base = m.proc.rss()?;
        let next = Arc::new(AtomicU64::new(0));
        let workers = http_workers(m.addr(), s.connections.max(128), |_| {
            let next = Arc::clone(&next);
            Box::new(move |_| {
                let i = next.fetch_add(1, Ordering::Relaxed);
                request(
                    "PUT",
                    &format!("/v1/services/svc-{}/instances/i{i}", i % 1000),
                    Some(body(i)),
                )
            })
        })
        .await?;
        let summary = load::drive(
            workers,
            Limits {
                duration: Duration::from_secs(900),
                max_requests: n,
            },
        )
        .await;
        if summary.requests != n {
            bail!(
                "{name} {n}: only {} registrations succeeded ({} errors, first: {:?})",
                summary.requests,
                summary.errors,
                summary.first_error
            );
        }
        let loaded = m.proc.rss()?;
        let count = count_instances(m.addr()).await?;
        if count != n {
            bail!("{name} {n}: the catalog holds {count} instances");
        }
        let Muster { proc, dir, .. } = m;
        proc.kill9().await?;
        let disk = dir_size(&dir);
        if let Some(keep) = &s.keep_data {
            copy_dir(&dir, &keep.join(format!("{name}-{n}")))?;
        }
        let mut recoveries = Vec::new();
        let mut ready = Vec::new();
        let mut after_restart = None;
        let mut page_cache = if s.drop_page_cache {
            "dropped before each restart".to_string()
        } else {
            "warm: not dropped in a smoke run".to_string()
        };
        for _ in 0..s.restarts.max(1) {
            if s.drop_page_cache
                && let Err(why) = host::drop_page_cache()
            {
                page_cache = format!("warm: {why}");
            }
            let t = Instant::now();
            let restarted = servers::spawn_muster(&s.muster_bin, s.server_cpu, &dir, &[]).await?;
            let recovered = count_instances(restarted.addr).await?;
            recoveries.push(t.elapsed().as_secs_f64());
            ready.push(restarted.startup.as_secs_f64());
            if recovered != n {
                bail!("{name} {n}: {recovered} instances after restart");
            }
            after_restart.get_or_insert(restarted.rss()?);
            restarted.kill9().await?;
        }
        let after_restart = after_restart.unwrap_or_default();
        let mut row = Row::new(&format!("{name}-{n}"), Target::Muster, run, summary);
        row.rss_bytes = Some(loaded);
        let per = (loaded.saturating_sub(base)) as f64 / n as f64;
        let per_restarted = (after_restart.saturating_sub(base)) as f64 / n as f64;
        let ms = |v: f64| (v * 1000.0).round() / 1000.0;
        row.extra.insert("instances".into(), Value::from(n));
        row.extra.insert("rss_base_bytes".into(), Value::from(base));
        row.extra
            .insert("bytes_per_instance".into(), Value::from(per.round()));
        row.extra.insert(
            "bytes_per_instance_after_restart".into(),
            Value::from(per_restarted.round()),
        );
        row.extra.insert("disk_bytes".into(), Value::from(disk));
        row.extra
            .insert("ready_s".into(), Value::from(ms(median(&ready))));
        row.extra
            .insert("recovery_s".into(), Value::from(ms(median(&recoveries))));
        row.extra.insert(
            "recovery_rounds_s".into(),
            Value::from(recoveries.iter().map(|&v| ms(v)).collect::<Vec<_>>()),
        );
        row.extra
            .insert("page_cache".into(), Value::from(page_cache));
        rows.push(row);
    }
    Ok(rows)
}

pub(crate) fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or_default()
}

async fn count_instances(addr: SocketAddr) -> Result<u64> {
    let body = Conn::connect(addr)
        .await?
        .call_ok(request("GET", "/v1/services", None))
        .await?;
    let v: Value = serde_json::from_slice(&body)?;
    Ok(v["services"]
        .as_array()
        .ok_or_else(|| anyhow!("no services in the answer"))?
        .iter()
        .filter_map(|s| s["instances"].as_u64())
        .sum())
}

/// Copies the files of `from` (not recursive: a data directory is flat)
/// into `to`, replacing what was there.
fn copy_dir(from: &std::path::Path, to: &std::path::Path) -> Result<()> {
    if to.exists() {
        std::fs::remove_dir_all(to).with_context(|| format!("removing {}", to.display()))?;
    }
    std::fs::create_dir_all(to).with_context(|| format!("creating {}", to.display()))?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        if entry.file_type()?.is_file() {
            std::fs::copy(entry.path(), to.join(entry.file_name()))
                .with_context(|| format!("copying {}", entry.path().display()))?;
        }
    }
    Ok(())
}

fn dir_size(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

// ---------------------------------------------------------------- etcd

/// gRPC connections shared by the etcd workers (etcd's own benchmark tool
/// also multiplexes many clients over a few connections).
pub(crate) const ETCD_CHANNELS: usize = 8;

async fn etcd_clients(e: &EtcdServer) -> Result<Vec<EtcdClient>> {
    let mut v = Vec::new();
    for _ in 0..ETCD_CHANNELS {
        v.push(EtcdClient::connect(e.endpoint()).await?);
    }
    Ok(v)
}

pub(crate) struct EtcdPut {
    pub(crate) client: EtcdClient,
    pub(crate) w: usize,
}

impl Worker for EtcdPut {
    async fn call(&mut self, seq: u64) -> Result<()> {
        let key = format!("/services/reg/w{}-{seq}", self.w);
        self.client
            .put(key.as_bytes(), &instance_body(seq), 0)
            .await
    }
}

struct EtcdRange {
    client: EtcdClient,
    prefix: &'static [u8],
    expect: usize,
}

impl Worker for EtcdRange {
    async fn call(&mut self, _seq: u64) -> Result<()> {
        // Serializable: answered from etcd's own store like muster answers a
        // lookup from its catalog, not through raft's read-index.
        let (n, _) = self
            .client
            .range_prefix(self.prefix, Read::Serializable)
            .await?;
        if n != self.expect {
            bail!("range gave {n} keys, expected {}", self.expect);
        }
        Ok(())
    }
}

struct EtcdKeepAlive {
    stream: KeepAliveStream,
    leases: Arc<Vec<i64>>,
    w: usize,
    stride: usize,
}

impl Worker for EtcdKeepAlive {
    async fn call(&mut self, seq: u64) -> Result<()> {
        let l = self.leases[(self.w + seq as usize * self.stride) % self.leases.len()];
        self.stream.keep_alive(l).await
    }
}

fn etcd_row(scenario: &str, run: usize, summary: Summary, e: &EtcdServer) -> Row {
    let mut row = Row::new(scenario, Target::Etcd, run, summary);
    row.rss_bytes = servers::rss_bytes(e.pid()).ok();
    row
}

/// Drives `workers` against etcd and makes the row, with etcd's server CPU
/// per request measured as muster's is (`/proc/<pid>/stat` of the etcd
/// process around the load).
async fn etcd_flow<W: Worker>(
    s: &Settings,
    scenario: &str,
    run: usize,
    e: &EtcdServer,
    workers: Vec<W>,
) -> Result<Row> {
    let (summary, cpu) = drive_measured(e.pid(), workers, limits(s)).await?;
    let mut row = etcd_row(scenario, run, summary, e);
    record_server_cpu(&mut row, cpu);
    Ok(row)
}

async fn etcd_register(s: &Settings, run: usize) -> Result<Row> {
    let e = EtcdServer::start(s.server_cpu, &s.etcd_data).await?;
    let clients = etcd_clients(&e).await?;
    let workers = (0..s.connections)
        .map(|w| EtcdPut {
            client: clients[w % clients.len()].clone(),
            w,
        })
        .collect();
    etcd_flow(s, "register", run, &e, workers).await
}

async fn etcd_lookup(s: &Settings, run: usize, n: usize) -> Result<Row> {
    let e = EtcdServer::start(s.server_cpu, &s.etcd_data).await?;
    let clients = etcd_clients(&e).await?;
    let prefix: &'static [u8] = if n == 1 {
        b"/services/one/"
    } else {
        b"/services/hundred/"
    };
    let mut c = clients[0].clone();
    for i in 0..n {
        let mut key = prefix.to_vec();
        key.extend_from_slice(format!("i{i}").as_bytes());
        c.put(&key, &instance_body(i as u64), 0).await?;
    }
    let workers = (0..s.connections)
        .map(|w| EtcdRange {
            client: clients[w % clients.len()].clone(),
            prefix,
            expect: n,
        })
        .collect();
    let scenario = if n == 1 { "lookup-1" } else { "lookup-100" };
    etcd_flow(s, scenario, run, &e, workers).await
}

async fn etcd_heartbeat(s: &Settings, run: usize) -> Result<Row> {
    let e = EtcdServer::start(s.server_cpu, &s.etcd_data).await?;
    let mut clients = etcd_clients(&e).await?;
    let mut leases = Vec::with_capacity(s.leases);
    for _ in 0..s.leases {
        leases.push(clients[0].lease_grant(60).await?);
    }
    let leases = Arc::new(leases);
    let mut workers = Vec::with_capacity(s.connections);
    for w in 0..s.connections {
        let n = clients.len();
        workers.push(EtcdKeepAlive {
            stream: clients[w % n].keep_alive_stream().await?,
            leases: Arc::clone(&leases),
            w,
            stride: s.connections,
        });
    }
    let mut row = etcd_flow(s, "heartbeat", run, &e, workers).await?;
    row.extra.insert("leases".into(), Value::from(s.leases));
    Ok(row)
}

async fn etcd_watch_fanout(s: &Settings, run: usize) -> Result<Row> {
    let e = EtcdServer::start(s.server_cpu, &s.etcd_data).await?;
    let mut clients = etcd_clients(&e).await?;
    let (tx, mut rx) = mpsc::unbounded_channel::<Instant>();
    for i in 0..s.watchers {
        let n = clients.len();
        let mut stream = clients[i % n].watch_prefix(b"/services/fan/").await?;
        let tx = tx.clone();
        tokio::spawn(async move {
            while let Ok(k) = stream.next_events().await {
                let now = Instant::now();
                for _ in 0..k {
                    if tx.send(now).is_err() {
                        return;
                    }
                }
            }
        });
    }
    drop(tx);
    let mut hist = load::new_histogram();
    let mut errors = 0;
    let start = Instant::now();
    let (server_before, own_before) = (
        servers::cpu_us(e.pid())?,
        servers::cpu_us(std::process::id())?,
    );
    for k in 1..=s.changes as u64 {
        let t0 = Instant::now();
        clients[0]
            .put(b"/services/fan/x", &instance_body(k), 0)
            .await?;
        errors += record_receipts(&mut rx, s.watchers, t0, &mut hist, |at| at).await;
    }
    let server_cpu = servers::cpu_us(e.pid())?.saturating_sub(server_before);
    let own_cpu = servers::cpu_us(std::process::id())?.saturating_sub(own_before);
    let summary = Summary::from_histogram(&hist, errors, start.elapsed());
    let mut row = etcd_row("watch-fanout", run, summary, &e);
    record_cpu_per_change(&mut row, s.changes, server_cpu, own_cpu);
    row.extra.insert("watchers".into(), Value::from(s.watchers));
    row.extra.insert("changes".into(), Value::from(s.changes));
    Ok(row)
}
