//! Cluster mode (`--cluster 3`): the same flows against a muster cluster
//! formed from static peers and an etcd cluster of as many members, all
//! members on loopback and pinned to the servers' core, plus the failover
//! of a muster cluster whose leader is killed with `kill -9`.
//!
//! Where the clients send requests (`--send-to`): `spread` opens the
//! connections round-robin over every member, as real clients configured
//! with every address do (followers forward writes to the leader in both
//! systems); `leader` sends all of them to the leader, the best case for
//! writes. Lookups and heartbeats are measured on the leader and on a
//! follower of the same cluster, to give the follower's share.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use bytes::Bytes;
use serde_json::Value;
use tokio::sync::mpsc;

use crate::etcd::{EtcdClient, EtcdCluster};
use crate::load::{self, Access, Conn, Summary, http_workers_over, request};
use crate::scenarios::{
    self, ETCD_CHANNELS, EtcdPut, Row, Settings, Target, create_leases, drive_measured_over,
    instance_body, limits, put_instance, record_server_cpu,
};
use crate::servers::{self, Proc};

/// The scenarios cluster mode runs, in the order `all` runs them.
pub const SCENARIOS: &[&str] = &["register", "heartbeat", "lookup-1", "failover"];

/// How long a cluster may take to form, elect a leader or catch up on
/// this loaded machine.
const FORM: Duration = Duration::from_secs(60);
/// Between two polls of `/v1/cluster`.
const POLL: Duration = Duration::from_millis(10);
/// Clients writing during `failover` (spread over the surviving nodes).
pub const FAILOVER_WRITERS: usize = 12;
/// How long one write of `failover` may take before its client gives up on
/// it and tries the next node.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// Where the clients of a flow send their requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendTo {
    /// Round-robin over every member.
    Spread,
    /// All to the leader.
    Leader,
}

impl SendTo {
    pub fn parse(s: &str) -> Result<SendTo> {
        match s {
            "spread" => Ok(SendTo::Spread),
            "leader" => Ok(SendTo::Leader),
            other => bail!("unknown --send-to {other:?}; known: spread, leader"),
        }
    }

    /// The row's target name: `muster`/`etcd` for the default (spread),
    /// `muster@leader`/`etcd@leader` otherwise.
    fn target(self, t: Target) -> String {
        match self {
            SendTo::Spread => t.name().to_string(),
            SendTo::Leader => format!("{}@leader", t.name()),
        }
    }
}

/// A muster cluster of `n` nodes (ids 1..=n) formed from `--peers`, each
/// with its own data directory under the run's work directory; killed on
/// drop.
pub struct MusterCluster {
    bin: PathBuf,
    cpu: Option<usize>,
    dirs: Vec<PathBuf>,
    ports: Vec<u16>,
    /// Indexed by node id - 1; `None` while a node is down.
    nodes: Vec<Option<Proc>>,
}

impl MusterCluster {
    /// Starts every node and waits until they agree on a leader. The
    /// cluster ports are picked free (bound, then released); if one was
    /// taken in between (a node exits at start), the cluster is started
    /// again on fresh ports, up to 3 times in all.
    pub async fn start(s: &Settings, n: usize, name: &str) -> Result<MusterCluster> {
        let mut attempt = 1;
        loop {
            match Self::launch(s, n, name).await {
                Ok(c) => return Ok(c),
                Err(e) if attempt < 3 => {
                    tracing::warn!(attempt, error = %format!("{e:#}"), "cluster did not start; again on fresh ports");
                    attempt += 1;
                }
                Err(e) => {
                    return Err(e.context(format!(
                        "starting a cluster of {n} (attempt {attempt} of 3)"
                    )));
                }
            }
        }
    }

    async fn launch(s: &Settings, n: usize, name: &str) -> Result<MusterCluster> {
        let root = s.work.join(format!("{name}-{}", scenarios::unique()));
        std::fs::create_dir_all(&root)?;
        let listeners = (0..n)
            .map(|_| std::net::TcpListener::bind("127.0.0.1:0"))
            .collect::<std::io::Result<Vec<_>>>()?;
        let ports = listeners
            .iter()
            .map(|l| Ok(l.local_addr()?.port()))
            .collect::<std::io::Result<Vec<_>>>()?;
        drop(listeners);
        let mut c = MusterCluster {
            bin: s.muster_bin.clone(),
            cpu: s.server_cpu,
            dirs: (1..=n).map(|i| root.join(format!("node-{i}"))).collect(),
            ports,
            nodes: (0..n).map(|_| None).collect(),
        };
        for id in 1..=n as u64 {
            c.start_node(id).await?;
        }
        c.leader(None).await?;
        Ok(c)
    }

    /// Starts (or restarts, on its data) node `id`.
    pub async fn start_node(&mut self, id: u64) -> Result<SocketAddr> {
        let i = (id - 1) as usize;
        let peers = self
            .ports
            .iter()
            .enumerate()
            .map(|(k, p)| format!("{}=127.0.0.1:{p}", k + 1))
            .collect::<Vec<_>>()
            .join(",");
        let (id_s, addr) = (id.to_string(), format!("127.0.0.1:{}", self.ports[i]));
        let args = [
            "--node-id",
            &id_s,
            "--cluster-addr",
            &addr,
            "--peers",
            &peers,
        ];
        let proc = servers::spawn_muster(&self.bin, self.cpu, &self.dirs[i], &args)
            .await
            .with_context(|| format!("starting node {id}"))?;
        let http = proc.addr;
        self.nodes[i] = Some(proc);
        Ok(http)
    }

    /// SIGKILL node `id`.
    pub async fn kill9(&mut self, id: u64) -> Result<()> {
        let proc = self.nodes[(id - 1) as usize]
            .take()
            .ok_or_else(|| anyhow!("node {id} is not running"))?;
        proc.kill9().await
    }

    /// The ids of the running nodes.
    pub fn up(&self) -> Vec<u64> {
        (1..=self.nodes.len() as u64)
            .filter(|id| self.nodes[(*id - 1) as usize].is_some())
            .collect()
    }

    /// The HTTP address of node `id`.
    pub fn addr(&self, id: u64) -> Result<SocketAddr> {
        self.nodes[(id - 1) as usize]
            .as_ref()
            .map(|p| p.addr)
            .ok_or_else(|| anyhow!("node {id} is not running"))
    }

    /// The process ids of the running nodes.
    pub fn pids(&self) -> Vec<u32> {
        self.nodes.iter().flatten().map(|p| p.pid).collect()
    }

    /// Polls `/v1/cluster` on every running node until all of them name
    /// the same running leader (other than `not`), and it says it leads.
    pub async fn leader(&self, not: Option<u64>) -> Result<u64> {
        let deadline = Instant::now() + FORM;
        loop {
            let mut seen = Vec::new();
            for id in self.up() {
                let v = cluster_info(self.addr(id)?).await.ok();
                seen.push(v.and_then(|v| v["leader"].as_u64()));
            }
            if let Some(Some(l)) = seen.first().copied()
                && seen.iter().all(|s| *s == Some(l))
                && self.up().contains(&l)
                && Some(l) != not
                && role(&cluster_info(self.addr(l)?).await?, l).as_deref() == Some("leader")
            {
                return Ok(l);
            }
            if Instant::now() >= deadline {
                bail!(
                    "no agreed leader among nodes {:?} within {FORM:?}: {seen:?}",
                    self.up()
                );
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// A running node other than `leader` (the lowest id).
    pub fn follower(&self, leader: u64) -> Result<u64> {
        self.up()
            .into_iter()
            .find(|id| *id != leader)
            .ok_or_else(|| anyhow!("no follower is running"))
    }

    /// Waits until node `id` has applied the leader's commit index of now.
    pub async fn wait_caught_up(&self, id: u64, leader: u64) -> Result<()> {
        let target = cluster_info(self.addr(leader)?).await?["commit_index"]
            .as_u64()
            .ok_or_else(|| anyhow!("no commit_index in /v1/cluster"))?;
        let deadline = Instant::now() + FORM;
        loop {
            let applied = cluster_info(self.addr(id)?)
                .await
                .ok()
                .and_then(|v| v["applied_index"].as_u64());
            if applied.is_some_and(|a| a >= target) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!("node {id} applied {applied:?} of {target} within {FORM:?}");
            }
            tokio::time::sleep(POLL).await;
        }
    }
}

/// `GET /v1/cluster` of the node at `addr`.
async fn cluster_info(addr: SocketAddr) -> Result<Value> {
    let body = Conn::connect(addr)
        .await?
        .call_ok(request("GET", "/v1/cluster", None))
        .await?;
    Ok(serde_json::from_slice(&body)?)
}

/// The role node `id` has in a `/v1/cluster` answer.
fn role(info: &Value, id: u64) -> Option<String> {
    info["nodes"].as_array()?.iter().find(|n| n["id"] == id)?["role"]
        .as_str()
        .map(str::to_string)
}

/// Runs one cluster scenario once against each target (one round).
pub async fn run(s: &Settings, scenario: &str, targets: &[Target], run: usize) -> Result<Vec<Row>> {
    let mut rows = Vec::new();
    for &t in targets {
        let got = match (scenario, t) {
            ("register", Target::Muster) => register(s, run).await,
            ("register", Target::Etcd) => etcd_register(s, run).await,
            ("heartbeat", Target::Muster) => leader_and_follower(s, run, Flow::Heartbeat).await,
            ("lookup-1", Target::Muster) => leader_and_follower(s, run, Flow::Lookup).await,
            ("failover", Target::Muster) => failover(s, run).await.map(|r| vec![r]),
            // No equivalent on this target in cluster mode.
            _ => continue,
        }
        .with_context(|| format!("{scenario} against a cluster of {} {}", s.cluster, t.name()))?;
        rows.extend(got);
    }
    Ok(rows)
}

/// Adds what every cluster row carries.
fn cluster_row(s: &Settings, scenario: &str, target: String, run: usize, summary: Summary) -> Row {
    let mut row = Row::new(scenario, Target::Muster, run, summary);
    row.target = target;
    row.extra.insert("cluster".into(), Value::from(s.cluster));
    row
}

/// Durable registrations through a fresh cluster per `--send-to` mode.
async fn register(s: &Settings, run: usize) -> Result<Vec<Row>> {
    let mut rows = Vec::new();
    for &to in &s.send_to {
        let c = MusterCluster::start(s, s.cluster, "cluster-register").await?;
        let leader = c.leader(None).await?;
        let addrs = match to {
            SendTo::Spread => c.up().iter().map(|id| c.addr(*id)).collect::<Result<_>>()?,
            SendTo::Leader => vec![c.addr(leader)?],
        };
        // One write through each node first: every path works before the
        // clock starts.
        for addr in &addrs {
            put_instance(
                &mut Conn::connect(*addr).await?,
                "reg",
                &format!("warm-{addr}"),
                instance_body(0),
            )
            .await?;
        }
        let workers = http_workers_over(&addrs, &Access::default(), s.connections, |w| {
            Box::new(move |seq| {
                request(
                    "PUT",
                    &format!("/v1/services/reg/instances/w{w}-{seq}"),
                    Some(instance_body(seq)),
                )
            })
        })
        .await?;
        let (summary, cpu) = drive_measured_over(&c.pids(), workers, limits(s)).await?;
        let mut row = cluster_row(s, "register", to.target(Target::Muster), run, summary);
        record_server_cpu(&mut row, cpu);
        row.rss_bytes = c.pids().iter().map(|p| servers::rss_bytes(*p).ok()).sum();
        rows.push(row);
    }
    Ok(rows)
}

/// etcd puts through a fresh cluster per `--send-to` mode: `ETCD_CHANNELS`
/// gRPC connections round-robin over the members (or all to the leader),
/// the clients spread over the connections.
async fn etcd_register(s: &Settings, run: usize) -> Result<Vec<Row>> {
    let mut rows = Vec::new();
    for &to in &s.send_to {
        let e = EtcdCluster::start(s.server_cpu, &s.etcd_data, s.cluster).await?;
        let endpoints: Vec<&str> = match to {
            SendTo::Spread => e.members.iter().map(|m| m.endpoint()).collect(),
            SendTo::Leader => vec![e.members[e.leader().await?].endpoint()],
        };
        let mut clients = Vec::new();
        for k in 0..ETCD_CHANNELS {
            let mut c = EtcdClient::connect(endpoints[k % endpoints.len()]).await?;
            // Every path works before the clock starts.
            c.put(
                format!("/services/reg/warm-{k}").as_bytes(),
                &instance_body(0),
                0,
            )
            .await?;
            clients.push(c);
        }
        let workers = (0..s.connections)
            .map(|w| EtcdPut {
                client: clients[w % clients.len()].clone(),
                w,
            })
            .collect();
        let (summary, cpu) = drive_measured_over(&e.pids(), workers, limits(s)).await?;
        let mut row = cluster_row(s, "register", to.target(Target::Etcd), run, summary);
        record_server_cpu(&mut row, cpu);
        row.rss_bytes = e.pids().iter().map(|p| servers::rss_bytes(*p).ok()).sum();
        rows.push(row);
    }
    Ok(rows)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flow {
    Heartbeat,
    Lookup,
}

/// The same flow against the leader and against a follower of one cluster
/// (which goes first alternates with the round), as rows `muster@leader`
/// and `muster@follower`. Server CPU is the whole cluster's.
async fn leader_and_follower(s: &Settings, run: usize, flow: Flow) -> Result<Vec<Row>> {
    let scenario = match flow {
        Flow::Heartbeat => "heartbeat",
        Flow::Lookup => "lookup-1",
    };
    let c = MusterCluster::start(s, s.cluster, &format!("cluster-{scenario}")).await?;
    let leader = c.leader(None).await?;
    let follower = c.follower(leader)?;
    let mut conn = Conn::connect(c.addr(leader)?).await?;
    let plan: Arc<dyn Fn(usize, u64) -> hyper::Request<http_body_util::Full<Bytes>> + Send + Sync> =
        match flow {
            Flow::Heartbeat => {
                let leases = Arc::new(create_leases(&mut conn, s.leases).await?);
                let conns = s.connections;
                Arc::new(move |w, seq| {
                    let l = &leases[(w + seq as usize * conns) % leases.len()];
                    request("PUT", &format!("/v1/leases/{l}/renew"), None)
                })
            }
            Flow::Lookup => {
                put_instance(&mut conn, "one", "i0", instance_body(0)).await?;
                Arc::new(|_, _| request("GET", "/v1/services/one/instances", None))
            }
        };
    // The follower answers the flow before the clock starts (it has
    // applied the setup's writes, and forwards renewals).
    let deadline = Instant::now() + FORM;
    let mut fconn = Conn::connect(c.addr(follower)?).await?;
    loop {
        let (status, body) = fconn.call(plan(0, 0)).await?;
        let ready = status.is_success()
            && (flow == Flow::Heartbeat
                || serde_json::from_slice::<Value>(&body)
                    .ok()
                    .and_then(|v| v["instances"].as_array().map(Vec::len))
                    == Some(1));
        if ready {
            break;
        }
        if Instant::now() >= deadline {
            bail!("follower {follower} does not answer {scenario}: HTTP {status}");
        }
        tokio::time::sleep(POLL).await;
    }
    let mut order = [("leader", leader), ("follower", follower)];
    if run % 2 == 1 {
        order.reverse();
    }
    let mut rows = Vec::new();
    for (role, id) in order {
        let plan = Arc::clone(&plan);
        let workers = http_workers_over(&[c.addr(id)?], &Access::default(), s.connections, |w| {
            let plan = Arc::clone(&plan);
            Box::new(move |seq| plan(w, seq))
        })
        .await?;
        let (summary, cpu) = drive_measured_over(&c.pids(), workers, limits(s)).await?;
        let mut row = cluster_row(s, scenario, format!("muster@{role}"), run, summary);
        record_server_cpu(&mut row, cpu);
        row.rss_bytes =
            servers::rss_bytes(c.nodes[(id - 1) as usize].as_ref().expect("up").pid).ok();
        row.extra.insert("node".into(), Value::from(id));
        if flow == Flow::Heartbeat {
            row.extra.insert("leases".into(), Value::from(s.leases));
        }
        rows.push(row);
    }
    Ok(rows)
}

/// One acknowledged write of `failover`.
struct Ack {
    sent: Instant,
    acked: Instant,
}

/// `FAILOVER_WRITERS` clients writing continuously, each to one node of
/// `nodes` at a time (worker `w` starts on node `w % n`); a write that
/// fails (its node died, a timeout, a refusal) moves the client on to the
/// next running node at once. Every acknowledged write is sent on `acks`.
fn start_writers(
    nodes: Arc<RwLock<Vec<Option<SocketAddr>>>>,
    acks: mpsc::UnboundedSender<Ack>,
    failed: Arc<std::sync::atomic::AtomicU64>,
) -> Vec<tokio::task::JoinHandle<()>> {
    (0..FAILOVER_WRITERS)
        .map(|w| {
            let (nodes, acks, failed) = (Arc::clone(&nodes), acks.clone(), Arc::clone(&failed));
            tokio::spawn(async move {
                let mut at = w;
                let mut seq = 0u64;
                loop {
                    let addr = {
                        let nodes = nodes.read().expect("not poisoned");
                        let n = nodes.len();
                        (0..n).find_map(|k| nodes[(at + k) % n].map(|a| (at + k, a)))
                    };
                    let Some((i, addr)) = addr else {
                        tokio::time::sleep(POLL).await;
                        continue;
                    };
                    at = i;
                    let Ok(mut conn) = Conn::connect(addr).await else {
                        failed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        at += 1;
                        continue;
                    };
                    loop {
                        seq += 1;
                        let sent = Instant::now();
                        let req = request(
                            "PUT",
                            &format!("/v1/services/failover/instances/w{w}-{seq}"),
                            Some(instance_body(seq)),
                        );
                        match tokio::time::timeout(WRITE_TIMEOUT, conn.call_ok(req)).await {
                            Ok(Ok(_)) => {
                                let acked = Instant::now();
                                if acks.send(Ack { sent, acked }).is_err() {
                                    return;
                                }
                            }
                            _ => {
                                failed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                                at += 1;
                                break;
                            }
                        }
                    }
                }
            })
        })
        .collect()
}

/// `kill -9` of the leader, `--kills` times, with `FAILOVER_WRITERS`
/// clients writing continuously through the running nodes: the time from
/// the kill to the first acknowledged write sent after it (which only a
/// new leader can have committed). Between kills the killed node is
/// restarted on its data and waited for until it has applied the leader's
/// commit index. The row's histogram holds one sample per kill; `extra`
/// has every kill, and when a surviving node first named the new leader.
async fn failover(s: &Settings, run: usize) -> Result<Row> {
    let mut c = MusterCluster::start(s, s.cluster, "cluster-failover").await?;
    let nodes: Arc<RwLock<Vec<Option<SocketAddr>>>> = Arc::new(RwLock::new(
        (1..=s.cluster as u64).map(|id| c.addr(id).ok()).collect(),
    ));
    let (tx, mut acks) = mpsc::unbounded_channel();
    let failed = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let writers = start_writers(Arc::clone(&nodes), tx, Arc::clone(&failed));
    let mut hist = load::new_histogram();
    let mut kills = Vec::new();
    let start = Instant::now();
    let result: Result<()> = async {
        for k in 0..s.kills {
            let old = c.leader(None).await?;
            // The writers are getting through before the kill.
            while acks.try_recv().is_ok() {}
            let now = Instant::now();
            loop {
                let a = tokio::time::timeout(FORM, acks.recv())
                    .await
                    .context("no write acknowledged before the kill")?
                    .ok_or_else(|| anyhow!("writers ended"))?;
                if a.sent >= now {
                    break;
                }
            }
            let survivors: Vec<SocketAddr> = c
                .up()
                .into_iter()
                .filter(|id| *id != old)
                .map(|id| c.addr(id))
                .collect::<Result<_>>()?;
            let t0 = Instant::now();
            nodes.write().expect("not poisoned")[(old - 1) as usize] = None;
            c.kill9(old).await?;
            let named = tokio::spawn(first_named_leader(survivors, old, t0));
            let deadline = t0 + FORM;
            let first = loop {
                let a = tokio::time::timeout_at(deadline.into(), acks.recv())
                    .await
                    .with_context(|| {
                        format!("kill {}: no write acknowledged within {FORM:?}", k + 1)
                    })?
                    .ok_or_else(|| anyhow!("writers ended"))?;
                if a.sent >= t0 {
                    break a.acked.duration_since(t0);
                }
            };
            let named = named.await?.ok();
            let _ = hist.record((first.as_micros() as u64).max(1));
            let new = c.leader(Some(old)).await?;
            let restart = Instant::now();
            // Its cluster port is fixed; a client connection may hold it
            // for a moment (its log says "Address already in use").
            let mut tries = 1;
            let addr = loop {
                match c.start_node(old).await {
                    Ok(addr) => break addr,
                    Err(e) if tries < 5 => {
                        tracing::warn!(node = old, error = %format!("{e:#}"), "restart failed; again");
                        tries += 1;
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                    Err(e) => return Err(e),
                }
            };
            nodes.write().expect("not poisoned")[(old - 1) as usize] = Some(addr);
            c.wait_caught_up(old, new).await?;
            let ms = |d: Duration| (d.as_secs_f64() * 1e4).round() / 10.0;
            eprintln!(
                "    kill {}: leader {old} -> {new}: first write acknowledged after {:.0} ms{}",
                k + 1,
                ms(first),
                named
                    .map(|n| format!(" (new leader named after {:.0} ms)", ms(n)))
                    .unwrap_or_default()
            );
            kills.push(serde_json::json!({
                "old_leader": old,
                "new_leader": new,
                "first_ack_ms": ms(first),
                "leader_named_ms": named.map(ms),
                "restart_and_catch_up_ms": ms(restart.elapsed()),
            }));
        }
        Ok(())
    }
    .await;
    for w in &writers {
        w.abort();
    }
    result?;
    let summary = Summary::from_histogram(&hist, 0, start.elapsed());
    let mut row = cluster_row(s, "failover", "muster".into(), run, summary);
    row.extra.insert("kills".into(), Value::from(kills.len()));
    row.extra
        .insert("writers".into(), Value::from(FAILOVER_WRITERS));
    row.extra.insert(
        "failed_writes".into(),
        Value::from(failed.load(std::sync::atomic::Ordering::Relaxed)),
    );
    row.extra.insert("per_kill".into(), Value::from(kills));
    Ok(row)
}

/// How long after `t0` one of `survivors` first names a leader other than
/// `old` in `/v1/cluster` (polled every 10 ms).
async fn first_named_leader(survivors: Vec<SocketAddr>, old: u64, t0: Instant) -> Result<Duration> {
    let deadline = t0 + FORM;
    loop {
        for addr in &survivors {
            if let Ok(v) = cluster_info(*addr).await
                && v["leader"].as_u64().is_some_and(|l| l != old)
            {
                return Ok(t0.elapsed());
            }
        }
        if Instant::now() >= deadline {
            bail!("no new leader named within {FORM:?}");
        }
        tokio::time::sleep(POLL).await;
    }
}
