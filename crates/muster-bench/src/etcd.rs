//! etcd as a benchmark peer: start a throwaway single-node etcd (or a
//! cluster of members) on loopback and talk to it over its native v3 gRPC API.
//!
//! There is no protoc in the build, so the handful of etcd protobuf messages the
//! benchmark needs are hand-written below (see [`pb`]) with the field numbers
//! and types of etcd v3.4's `etcdserver/etcdserverpb/rpc.proto` and
//! `mvcc/mvccpb/kv.proto`. Fields we never look at are left out; prost skips
//! unknown fields when decoding and omitting a field when encoding is the same
//! as sending its default.

use std::fs::File;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;
use tonic::codec::Streaming;
use tonic::codegen::http::uri::PathAndQuery;
use tonic::transport::{Channel, Endpoint};
use tonic_prost::ProstCodec;

/// Default location of the etcd binary (Debian's `etcd-server` package).
const DEFAULT_ETCD_BIN: &str = "/usr/bin/etcd";
/// How long [`EtcdServer::start`] waits, in total, for etcd to serve.
const START_DEADLINE: Duration = Duration::from_secs(20);
/// How many times etcd is launched (with fresh ports) if it exits during startup.
const START_ATTEMPTS: usize = 3;
/// Pause between readiness probes.
const PROBE_INTERVAL: Duration = Duration::from_millis(50);
/// Upper bound on one readiness probe (connect + Range).
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

const PATH_PUT: &str = "/etcdserverpb.KV/Put";
const PATH_RANGE: &str = "/etcdserverpb.KV/Range";
const PATH_LEASE_GRANT: &str = "/etcdserverpb.Lease/LeaseGrant";
const PATH_LEASE_KEEP_ALIVE: &str = "/etcdserverpb.Lease/LeaseKeepAlive";
const PATH_WATCH: &str = "/etcdserverpb.Watch/Watch";
const PATH_STATUS: &str = "/etcdserverpb.Maintenance/Status";

/// A single-node etcd started on loopback in a temp dir; killed on drop.
pub struct EtcdServer {
    child: Child,
    endpoint: String,
    /// Data dir and log file. Declared after `child` only for readability: the
    /// `Drop` impl kills and reaps etcd before any field (and so this directory)
    /// is dropped.
    dir: tempfile::TempDir,
}

impl EtcdServer {
    /// Starts `/usr/bin/etcd` (or the `ETCD_BIN` env var) on 127.0.0.1 with free client and peer ports
    /// (picked by binding port 0 and releasing; relaunched with fresh ports, up to 3 launches in all,
    /// if etcd exits during startup), data dir in a fresh tempdir inside `parent`, optionally pinned to
    /// one CPU core via `taskset -c <cpu>` when `cpu` is Some.
    ///
    /// Waits until it serves a linearizable gRPC Range (so a leader has been elected), with an overall
    /// deadline of 20 s. etcd's own log (stdout and stderr) goes to `etcd.log` in the tempdir.
    pub async fn start(cpu: Option<usize>, parent: &Path) -> Result<EtcdServer> {
        let mut members = start_members(cpu, parent, 1).await?;
        Ok(members.pop().expect("one member"))
    }

    /// The client URL, `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Pid of the etcd process itself (`taskset` execs etcd, so this is never the wrapper's).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The last few lines of etcd's log, for error messages.
    fn log_tail(&self) -> String {
        let path = self.dir.path().join("etcd.log");
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                let lines: Vec<&str> = text.lines().collect();
                lines[lines.len().saturating_sub(15)..].join("\n")
            }
            Err(err) => format!("<cannot read {}: {err}>", path.display()),
        }
    }
}

/// Starts `n` etcd members forming one cluster (as [`EtcdServer::start`]
/// does one: free ports, a tempdir each, pinned to `cpu`, up to 3 launches
/// with fresh ports), and waits until every member serves a linearizable
/// Range, so the cluster has a leader. Each member fsyncs as by default.
async fn start_members(cpu: Option<usize>, parent: &Path, n: usize) -> Result<Vec<EtcdServer>> {
    let bin =
        std::env::var_os("ETCD_BIN").map_or_else(|| PathBuf::from(DEFAULT_ETCD_BIN), PathBuf::from);
    let deadline = Instant::now() + START_DEADLINE;
    let mut attempt = 1;
    loop {
        match launch(&bin, cpu, parent, n, deadline).await {
            Ok(members) => return Ok(members),
            Err(Launch::Exited(err)) if attempt < START_ATTEMPTS => {
                tracing::warn!(attempt, error = %format!("{err:#}"), "etcd exited during startup; retrying with fresh ports");
                attempt += 1;
            }
            Err(Launch::Exited(err) | Launch::Fatal(err)) => {
                return Err(err.context(format!(
                    "starting {} (attempt {attempt} of {START_ATTEMPTS})",
                    bin.display()
                )));
            }
        }
    }
}

/// One launch of `n` members: fresh tempdirs and ports, spawn all, wait
/// until each serves. A single member is named `bench`, the members of a
/// cluster `m1`, `m2`, ...
async fn launch(
    bin: &Path,
    cpu: Option<usize>,
    parent: &Path,
    n: usize,
    deadline: Instant,
) -> Result<Vec<EtcdServer>, Launch> {
    let ports = free_ports(2 * n)
        .context("picking free ports for etcd")
        .map_err(Launch::Fatal)?;
    let name = |i: usize| {
        if n == 1 {
            "bench".to_string()
        } else {
            format!("m{}", i + 1)
        }
    };
    let peer_url = |i: usize| format!("http://127.0.0.1:{}", ports[2 * i + 1]);
    let initial_cluster = (0..n)
        .map(|i| format!("{}={}", name(i), peer_url(i)))
        .collect::<Vec<_>>()
        .join(",");
    let mut members = Vec::with_capacity(n);
    for i in 0..n {
        let dir = tempfile::Builder::new()
            .prefix("muster-bench-etcd-")
            .tempdir_in(parent)
            .context("creating etcd temp dir")
            .map_err(Launch::Fatal)?;
        let client_url = format!("http://127.0.0.1:{}", ports[2 * i]);
        let log_path = dir.path().join("etcd.log");
        let log = File::create(&log_path)
            .with_context(|| format!("creating {}", log_path.display()))
            .map_err(Launch::Fatal)?;
        let log_err = log
            .try_clone()
            .context("duplicating etcd log handle")
            .map_err(Launch::Fatal)?;

        // `taskset` execs etcd in place, so the child's pid is etcd's own.
        let mut cmd = match cpu {
            Some(cpu) => {
                let mut cmd = Command::new("taskset");
                cmd.arg("-c").arg(cpu.to_string()).arg(bin);
                cmd
            }
            None => Command::new(bin),
        };
        cmd.arg("--name")
            .arg(name(i))
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .arg("--listen-client-urls")
            .arg(&client_url)
            .arg("--advertise-client-urls")
            .arg(&client_url)
            .arg("--listen-peer-urls")
            .arg(peer_url(i))
            .arg("--initial-advertise-peer-urls")
            .arg(peer_url(i))
            .arg("--initial-cluster")
            .arg(&initial_cluster)
            .arg("--initial-cluster-state")
            .arg("new")
            // 3.4 defaults to the deprecated capnslog logger and warns about it.
            .arg("--logger")
            .arg("zap")
            .arg("--log-outputs")
            .arg("stderr")
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log_err));
        // etcd reads `ETCD_*` variables as flags (and warns about unknown ones such as
        // ETCD_BIN); keep the caller's environment from configuring the benchmark peer.
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("ETCD_") {
                cmd.env_remove(key);
            }
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("spawning {}", Path::new(cmd.get_program()).display()))
            .map_err(Launch::Fatal)?;
        members.push(EtcdServer {
            child,
            endpoint: client_url,
            dir,
        });
    }
    // The members of a cluster elect a leader only once a quorum of them
    // is up, so all are spawned before any is waited on.
    for server in &mut members {
        wait_serving(server, deadline).await?;
    }
    Ok(members)
}

/// Waits until `server` answers a linearizable Range (it has a leader).
async fn wait_serving(server: &mut EtcdServer, deadline: Instant) -> Result<(), Launch> {
    loop {
        if let Some(status) = server
            .child
            .try_wait()
            .map_err(|e| Launch::Fatal(e.into()))?
        {
            return Err(Launch::Exited(anyhow!(
                "etcd exited during startup ({status}); log tail:\n{}",
                server.log_tail()
            )));
        }
        let now = Instant::now();
        if now >= deadline {
            return Err(Launch::Fatal(anyhow!(
                "etcd did not serve {} within {START_DEADLINE:?}; log tail:\n{}",
                server.endpoint,
                server.log_tail()
            )));
        }
        let budget = PROBE_TIMEOUT.min(deadline - now);
        if let Ok(Ok(())) = tokio::time::timeout(budget, probe(&server.endpoint)).await {
            tracing::debug!(endpoint = %server.endpoint, pid = server.pid(), "etcd is serving");
            return Ok(());
        }
        tokio::time::sleep(PROBE_INTERVAL).await;
    }
}

/// A cluster of etcd members on loopback (each with its own data dir and
/// ports, each fsyncing as by default); killed on drop.
pub struct EtcdCluster {
    pub members: Vec<EtcdServer>,
}

impl EtcdCluster {
    /// Starts `n` members and waits until every one serves through a leader.
    pub async fn start(cpu: Option<usize>, parent: &Path, n: usize) -> Result<EtcdCluster> {
        Ok(EtcdCluster {
            members: start_members(cpu, parent, n).await?,
        })
    }

    /// The index in `members` of the current leader (from each member's
    /// Maintenance/Status: its own id against the leader it names).
    pub async fn leader(&self) -> Result<usize> {
        for (i, m) in self.members.iter().enumerate() {
            let (me, leader) = EtcdClient::connect(m.endpoint()).await?.status().await?;
            if me == leader {
                return Ok(i);
            }
        }
        bail!("no etcd member says it leads")
    }

    /// The process ids of every member.
    pub fn pids(&self) -> Vec<u32> {
        self.members.iter().map(EtcdServer::pid).collect()
    }
}

impl Drop for EtcdServer {
    fn drop(&mut self) {
        // SIGKILL and reap before the tempdir is removed, so etcd cannot still be
        // writing into it (or linger as a zombie).
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Why one launch of etcd failed: `Exited` is worth retrying with fresh ports
/// (typically one of them was taken in between), `Fatal` is not.
enum Launch {
    Exited(anyhow::Error),
    Fatal(anyhow::Error),
}

/// `n` distinct free loopback ports. All listeners are held at once so the
/// ports differ, then released for etcd to bind.
fn free_ports(n: usize) -> std::io::Result<Vec<u16>> {
    let listeners = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<std::io::Result<Vec<_>>>()?;
    listeners
        .iter()
        .map(|l| Ok(l.local_addr()?.port()))
        .collect()
}

/// Readiness probe: a linearizable Range only succeeds once a leader exists
/// (a serializable one is answered from the local store even without one).
async fn probe(endpoint: &str) -> Result<()> {
    let mut client = EtcdClient::connect(endpoint).await?;
    client
        .range_prefix(b"/muster-bench-probe/", Read::Linearizable)
        .await?;
    Ok(())
}

/// How etcd answers a Range (`RangeRequest.serializable`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Read {
    /// Through raft's read-index: the leader confirms its leadership (and
    /// waits for its applied index) before answering. etcd's default.
    Linearizable,
    /// From the member's own store, without a round of consensus: the kind
    /// of read muster's lookups are (served from the local catalog), so the
    /// one to compare them with.
    Serializable,
}

/// A cheap-to-clone client over one HTTP/2 connection (tonic Channel).
#[derive(Clone)]
pub struct EtcdClient {
    grpc: tonic::client::Grpc<Channel>,
}

impl EtcdClient {
    /// Connects (eagerly) to `endpoint`, e.g. `http://127.0.0.1:2379`.
    pub async fn connect(endpoint: &str) -> Result<EtcdClient> {
        let channel = Endpoint::from_shared(endpoint.to_owned())
            .with_context(|| format!("invalid etcd endpoint {endpoint:?}"))?
            .connect_timeout(Duration::from_secs(5))
            .connect()
            .await
            .with_context(|| format!("connecting to etcd at {endpoint}"))?;
        Ok(EtcdClient {
            grpc: tonic::client::Grpc::new(channel),
        })
    }

    pub async fn put(&mut self, key: &[u8], value: &[u8], lease: i64) -> Result<()> {
        let req = pb::PutRequest {
            key: key.to_vec(),
            value: value.to_vec(),
            lease,
        };
        let _: pb::PutResponse = self.unary(PATH_PUT, req).await?;
        Ok(())
    }

    /// Range over a prefix (`range_end` = prefix with last byte +1), returns the number of kvs and total value bytes.
    pub async fn range_prefix(&mut self, prefix: &[u8], read: Read) -> Result<(usize, usize)> {
        let (key, range_end) = prefix_range(prefix);
        let req = pb::RangeRequest {
            key,
            range_end,
            serializable: read == Read::Serializable,
        };
        let resp: pb::RangeResponse = self.unary(PATH_RANGE, req).await?;
        let bytes = resp.kvs.iter().map(|kv| kv.value.len()).sum();
        Ok((resp.kvs.len(), bytes))
    }

    /// This member's id and the id of the leader it knows (0: none).
    pub async fn status(&mut self) -> Result<(u64, u64)> {
        let resp: pb::StatusResponse = self.unary(PATH_STATUS, pb::StatusRequest {}).await?;
        let me = resp
            .header
            .map(|h| h.member_id)
            .ok_or_else(|| anyhow!("etcd Status without a header"))?;
        Ok((me, resp.leader))
    }

    /// Grants a lease with the given TTL; returns its id.
    pub async fn lease_grant(&mut self, ttl_secs: i64) -> Result<i64> {
        let req = pb::LeaseGrantRequest {
            ttl: ttl_secs,
            id: 0,
        };
        let resp: pb::LeaseGrantResponse = self.unary(PATH_LEASE_GRANT, req).await?;
        if !resp.error.is_empty() {
            bail!("etcd LeaseGrant failed: {}", resp.error);
        }
        Ok(resp.id)
    }

    /// Opens one `LeaseKeepAlive` bidi stream.
    pub async fn keep_alive_stream(&mut self) -> Result<KeepAliveStream> {
        // `ready` reserves a slot in this very handle's buffer, so it has to be
        // called on the clone that makes the call.
        let mut grpc = self.grpc.clone();
        grpc.ready().await.context("etcd connection is not ready")?;
        let (tx, rx) = mpsc::channel(4);
        // etcd (grpc-go) sends the response headers only along with the first
        // response, so the call cannot complete before the first keep-alive has
        // been sent: drive it on its own task and pick up the response stream
        // when the first response is awaited.
        let call = tokio::spawn(async move {
            grpc.streaming(
                tonic::Request::new(ReceiverStream::new(rx)),
                PathAndQuery::from_static(PATH_LEASE_KEEP_ALIVE),
                ProstCodec::default(),
            )
            .await
            .map(tonic::Response::into_inner)
        });
        Ok(KeepAliveStream {
            inner: Bidi {
                path: PATH_LEASE_KEEP_ALIVE,
                tx,
                rx: Incoming::Opening(call),
            },
        })
    }

    /// Opens one Watch bidi stream watching `prefix` (with `range_end`), waits for the "created" response, returns it.
    pub async fn watch_prefix(&mut self, prefix: &[u8]) -> Result<WatchStream> {
        self.ready().await?;
        let (key, range_end) = prefix_range(prefix);
        let (tx, rx) = mpsc::channel(4);
        let create = pb::WatchRequest {
            create_request: Some(pb::WatchCreateRequest { key, range_end }),
        };
        tx.send(create)
            .await
            .map_err(|_| anyhow!("watch request channel closed"))?;
        // The create request is queued, so etcd's "created" response (and with it
        // the response headers) arrives without further input from us.
        let stream = self
            .grpc
            .streaming(
                tonic::Request::new(ReceiverStream::new(rx)),
                PathAndQuery::from_static(PATH_WATCH),
                ProstCodec::default(),
            )
            .await
            .with_context(|| format!("etcd {PATH_WATCH}"))?
            .into_inner();
        let mut inner = Bidi {
            path: PATH_WATCH,
            tx,
            rx: Incoming::Open(Box::new(stream)),
        };
        let created: pb::WatchResponse = inner.recv().await?;
        if !created.created || created.canceled {
            bail!(
                "etcd watch was not created (created={}, canceled={}, reason={:?})",
                created.created,
                created.canceled,
                created.cancel_reason
            );
        }
        Ok(WatchStream {
            inner,
            watch_id: created.watch_id,
        })
    }

    async fn ready(&mut self) -> Result<()> {
        self.grpc
            .ready()
            .await
            .context("etcd connection is not ready")
    }

    async fn unary<Req, Resp>(&mut self, path: &'static str, req: Req) -> Result<Resp>
    where
        Req: prost::Message + Send + Sync + 'static,
        Resp: prost::Message + Default + Send + Sync + 'static,
    {
        self.ready().await?;
        let resp = self
            .grpc
            .unary(
                tonic::Request::new(req),
                PathAndQuery::from_static(path),
                ProstCodec::default(),
            )
            .await
            .with_context(|| format!("etcd {path}"))?;
        Ok(resp.into_inner())
    }
}

/// `[key, range_end)` covering every key that starts with `prefix`, computed like
/// clientv3's `GetPrefixRangeEnd`: increment the last byte that is not 0xff and
/// drop what follows; if there is none, `"\0"` means "no upper bound". The empty
/// prefix is the whole keyspace (`["\0", "\0")`).
fn prefix_range(prefix: &[u8]) -> (Vec<u8>, Vec<u8>) {
    if prefix.is_empty() {
        return (vec![0], vec![0]);
    }
    let mut end = prefix.to_vec();
    while let Some(last) = end.last_mut() {
        if *last < 0xff {
            *last += 1;
            return (prefix.to_vec(), end);
        }
        end.pop();
    }
    (prefix.to_vec(), vec![0])
}

/// One `LeaseKeepAlive` bidi stream.
pub struct KeepAliveStream {
    inner: Bidi<pb::LeaseKeepAliveRequest, pb::LeaseKeepAliveResponse>,
}

impl KeepAliveStream {
    /// Sends one keep-alive for `lease` and awaits its response (ping-pong on the stream); errors if TTL <= 0 (lease gone).
    pub async fn keep_alive(&mut self, lease: i64) -> Result<()> {
        self.inner
            .send(pb::LeaseKeepAliveRequest { id: lease })
            .await?;
        let resp = self.inner.recv().await?;
        if resp.id != lease {
            bail!(
                "etcd keep-alive response for lease {:#x}, expected {lease:#x}",
                resp.id
            );
        }
        if resp.ttl <= 0 {
            bail!(
                "etcd lease {lease:#x} not found (keep-alive TTL {})",
                resp.ttl
            );
        }
        Ok(())
    }
}

/// One Watch bidi stream with one watcher on it.
pub struct WatchStream {
    inner: Bidi<pb::WatchRequest, pb::WatchResponse>,
    watch_id: i64,
}

impl WatchStream {
    /// Waits for the next `WatchResponse` that carries at least one event; returns the number of events.
    pub async fn next_events(&mut self) -> Result<usize> {
        loop {
            let resp = self.inner.recv().await?;
            if resp.canceled {
                bail!(
                    "etcd canceled watch {} (compact_revision={}, reason={:?})",
                    self.watch_id,
                    resp.compact_revision,
                    resp.cancel_reason
                );
            }
            // Anything without events (e.g. a progress notification) is skipped.
            if !resp.events.is_empty() {
                return Ok(resp.events.len());
            }
        }
    }
}

/// Client half of a bidi gRPC stream: requests go through `tx`; responses come
/// from `rx` once the call has completed.
struct Bidi<Req, Resp> {
    path: &'static str,
    // Must stay alive: etcd ends the whole stream when the client half-closes.
    tx: mpsc::Sender<Req>,
    rx: Incoming<Resp>,
}

enum Incoming<Resp> {
    /// The call is in flight on its own task (see `keep_alive_stream`).
    Opening(JoinHandle<Result<Streaming<Resp>, Status>>),
    Open(Box<Streaming<Resp>>),
    /// The call failed; the error was already reported.
    Failed,
}

impl<Req, Resp> Bidi<Req, Resp> {
    async fn send(&mut self, req: Req) -> Result<()> {
        if self.tx.send(req).await.is_err() {
            // The request stream is gone, so the call is over: report why.
            self.recv()
                .await
                .with_context(|| format!("etcd {} request stream closed", self.path))?;
            bail!("etcd {} request stream closed", self.path);
        }
        Ok(())
    }

    async fn recv(&mut self) -> Result<Resp> {
        if let Incoming::Opening(call) = &mut self.rx {
            let opened = call.await;
            let stream = match opened {
                Ok(Ok(stream)) => stream,
                Ok(Err(status)) => {
                    self.rx = Incoming::Failed;
                    return Err(anyhow::Error::new(status).context(format!("etcd {}", self.path)));
                }
                Err(join) => {
                    self.rx = Incoming::Failed;
                    return Err(anyhow::Error::new(join).context(format!("etcd {}", self.path)));
                }
            };
            self.rx = Incoming::Open(Box::new(stream));
        }
        match &mut self.rx {
            Incoming::Open(stream) => stream
                .message()
                .await
                .with_context(|| format!("etcd {}", self.path))?
                .ok_or_else(|| anyhow!("etcd {} stream ended", self.path)),
            Incoming::Failed => bail!("etcd {} stream already failed", self.path),
            Incoming::Opening(_) => unreachable!("opened above"),
        }
    }
}

impl<Req, Resp> Drop for Bidi<Req, Resp> {
    fn drop(&mut self) {
        if let Incoming::Opening(call) = &self.rx {
            call.abort();
        }
    }
}

/// Hand-written subset of etcd v3.4's protobuf messages (`etcdserverpb` and
/// `mvccpb`). Field numbers and types follow the .proto files; fields the
/// benchmark does not use are omitted.
mod pb {
    /// etcdserverpb.PutRequest
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct PutRequest {
        #[prost(bytes = "vec", tag = "1")]
        pub key: Vec<u8>,
        #[prost(bytes = "vec", tag = "2")]
        pub value: Vec<u8>,
        #[prost(int64, tag = "3")]
        pub lease: i64,
    }

    /// `etcdserverpb.PutResponse` (header and `prev_kv` not needed).
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct PutResponse {}

    /// etcdserverpb.RangeRequest. Defaults of the omitted fields: no limit,
    /// latest revision, no sorting, keys and values.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct RangeRequest {
        #[prost(bytes = "vec", tag = "1")]
        pub key: Vec<u8>,
        #[prost(bytes = "vec", tag = "2")]
        pub range_end: Vec<u8>,
        /// `bool serializable = 7;`: a member-local read instead of a
        /// linearizable one (false, etcd's default, goes through read-index).
        #[prost(bool, tag = "7")]
        pub serializable: bool,
    }

    /// etcdserverpb.RangeResponse
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct RangeResponse {
        #[prost(message, repeated, tag = "2")]
        pub kvs: Vec<KeyValue>,
    }

    /// mvccpb.KeyValue (key and value only; revisions and lease are skipped).
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct KeyValue {
        #[prost(bytes = "vec", tag = "1")]
        pub key: Vec<u8>,
        #[prost(bytes = "vec", tag = "5")]
        pub value: Vec<u8>,
    }

    /// etcdserverpb.StatusRequest (no fields).
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct StatusRequest {}

    /// etcdserverpb.ResponseHeader (`member_id` only).
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ResponseHeader {
        #[prost(uint64, tag = "2")]
        pub member_id: u64,
    }

    /// etcdserverpb.StatusResponse (header and leader only).
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct StatusResponse {
        #[prost(message, optional, tag = "1")]
        pub header: Option<ResponseHeader>,
        #[prost(uint64, tag = "4")]
        pub leader: u64,
    }

    /// etcdserverpb.LeaseGrantRequest
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct LeaseGrantRequest {
        #[prost(int64, tag = "1")]
        pub ttl: i64,
        #[prost(int64, tag = "2")]
        pub id: i64,
    }

    /// etcdserverpb.LeaseGrantResponse
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct LeaseGrantResponse {
        #[prost(int64, tag = "2")]
        pub id: i64,
        #[prost(int64, tag = "3")]
        pub ttl: i64,
        #[prost(string, tag = "4")]
        pub error: String,
    }

    /// etcdserverpb.LeaseKeepAliveRequest
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct LeaseKeepAliveRequest {
        #[prost(int64, tag = "1")]
        pub id: i64,
    }

    /// etcdserverpb.LeaseKeepAliveResponse
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct LeaseKeepAliveResponse {
        #[prost(int64, tag = "2")]
        pub id: i64,
        #[prost(int64, tag = "3")]
        pub ttl: i64,
    }

    /// etcdserverpb.WatchRequest. In the .proto, field 1 is the
    /// `create_request` member of `oneof request_union`; with only that member
    /// used, a plain optional message field has the identical encoding.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct WatchRequest {
        #[prost(message, optional, tag = "1")]
        pub create_request: Option<WatchCreateRequest>,
    }

    /// etcdserverpb.WatchCreateRequest (`start_revision` 0 = from now, `watch_id` 0 =
    /// server-assigned, no filters, no `prev_kv`).
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct WatchCreateRequest {
        #[prost(bytes = "vec", tag = "1")]
        pub key: Vec<u8>,
        #[prost(bytes = "vec", tag = "2")]
        pub range_end: Vec<u8>,
    }

    /// etcdserverpb.WatchResponse
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct WatchResponse {
        #[prost(int64, tag = "2")]
        pub watch_id: i64,
        #[prost(bool, tag = "3")]
        pub created: bool,
        #[prost(bool, tag = "4")]
        pub canceled: bool,
        #[prost(int64, tag = "5")]
        pub compact_revision: i64,
        #[prost(string, tag = "6")]
        pub cancel_reason: String,
        #[prost(message, repeated, tag = "11")]
        pub events: Vec<Event>,
    }

    /// mvccpb.Event (`type` is the enum `EventType`: 0 = PUT, 1 = DELETE).
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Event {
        #[prost(int32, tag = "1")]
        pub r#type: i32,
        #[prost(message, optional, tag = "2")]
        pub kv: Option<KeyValue>,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::time::timeout;

    #[test]
    fn etcd_prefix_range_matches_clientv3() {
        assert_eq!(prefix_range(b"/a/"), (b"/a/".to_vec(), b"/a0".to_vec()));
        assert_eq!(prefix_range(b"a\xff"), (b"a\xff".to_vec(), b"b".to_vec()));
        assert_eq!(prefix_range(b"\xff\xff"), (b"\xff\xff".to_vec(), vec![0]));
        assert_eq!(prefix_range(b""), (vec![0], vec![0]));
    }

    #[test]
    fn etcd_range_request_encodes_serializable_as_field_7() {
        use prost::Message;
        let req = |serializable| pb::RangeRequest {
            key: b"k".to_vec(),
            range_end: Vec::new(),
            serializable,
        };
        // Field 1 (key, length-delimited): 0x0a, length 1, "k".
        assert_eq!(req(false).encode_to_vec(), [0x0a, 1, b'k']);
        // Field 7, varint: tag (7 << 3) | 0 = 0x38, value 1.
        assert_eq!(req(true).encode_to_vec(), [0x0a, 1, b'k', 0x38, 1]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn etcd_end_to_end() {
        timeout(Duration::from_secs(60), end_to_end())
            .await
            .expect("etcd end-to-end test timed out")
            .expect("etcd end-to-end test failed");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn etcd_cluster_of_three_has_one_leader_and_takes_writes_on_a_follower() {
        timeout(Duration::from_secs(60), cluster_end_to_end())
            .await
            .expect("etcd cluster test timed out")
            .expect("etcd cluster test failed");
    }

    async fn cluster_end_to_end() -> Result<()> {
        let parent = tempfile::tempdir()?;
        let cluster = EtcdCluster::start(None, parent.path(), 3).await?;
        assert_eq!(cluster.members.len(), 3);
        let endpoints: std::collections::BTreeSet<&str> =
            cluster.members.iter().map(EtcdServer::endpoint).collect();
        assert_eq!(endpoints.len(), 3, "members share an endpoint");
        let leader = cluster.leader().await?;
        // Every member names the same leader, and only it names itself.
        let mut ids = Vec::new();
        for m in &cluster.members {
            ids.push(EtcdClient::connect(m.endpoint()).await?.status().await?);
        }
        let leader_id = ids[leader].0;
        assert!(ids.iter().all(|(_, l)| *l == leader_id), "{ids:?}");
        assert_eq!(ids.iter().filter(|(me, l)| me == l).count(), 1, "{ids:?}");
        // A put through a follower (forwarded to the leader), read back
        // linearizably on the other follower.
        let followers: Vec<usize> = (0..3).filter(|i| *i != leader).collect();
        let step = Duration::from_secs(10);
        let mut a = EtcdClient::connect(cluster.members[followers[0]].endpoint()).await?;
        timeout(step, a.put(b"/c/x", b"value", 0)).await??;
        let mut b = EtcdClient::connect(cluster.members[followers[1]].endpoint()).await?;
        let got = timeout(step, b.range_prefix(b"/c/", Read::Linearizable)).await??;
        assert_eq!(got, (1, 5));
        Ok(())
    }

    async fn end_to_end() -> Result<()> {
        // Pinned, to exercise the taskset path as well.
        let server = EtcdServer::start(Some(0), &std::env::temp_dir()).await?;
        assert!(server.endpoint().starts_with("http://127.0.0.1:"));
        let status = std::fs::read_to_string(format!("/proc/{}/status", server.pid()))?;
        assert!(
            status.lines().any(|l| l == "Name:\tetcd"),
            "pid is not etcd's: {status}"
        );
        assert!(
            status
                .lines()
                .any(|l| l.split_whitespace().eq(["Cpus_allowed_list:", "0"])),
            "etcd is not pinned to cpu 0: {status}"
        );

        let step = Duration::from_secs(10);
        let mut client = EtcdClient::connect(server.endpoint()).await?;
        let lease = timeout(step, client.lease_grant(30)).await??;
        assert!(lease != 0);
        for name in ["a", "b", "c"] {
            let key = format!("/svc/{name}");
            timeout(step, client.put(key.as_bytes(), b"value", lease)).await??;
        }
        // "/svc0" is exactly the range_end of prefix "/svc/" and must be excluded.
        timeout(step, client.put(b"/svc0", b"outside", 0)).await??;
        for read in [Read::Linearizable, Read::Serializable] {
            let (count, bytes) = timeout(step, client.range_prefix(b"/svc/", read)).await??;
            assert_eq!((count, bytes), (3, 15), "{read:?} range");
        }

        let mut keep_alive = timeout(step, client.keep_alive_stream()).await??;
        timeout(step, keep_alive.keep_alive(lease)).await??;
        timeout(step, keep_alive.keep_alive(lease)).await??;
        let gone = timeout(step, keep_alive.keep_alive(lease + 1)).await?;
        assert!(gone.is_err(), "keep-alive of an unknown lease succeeded");

        let mut watch = timeout(step, client.clone().watch_prefix(b"/svc/")).await??;
        timeout(step, client.put(b"/svc0", b"outside", 0)).await??;
        timeout(step, client.put(b"/svc/d", b"value", lease)).await??;
        let events = timeout(step, watch.next_events()).await??;
        assert_eq!(events, 1);
        Ok(())
    }
}
