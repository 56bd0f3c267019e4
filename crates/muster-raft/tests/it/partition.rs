//! Partition tests: a cluster of real nodes in this process (each its own
//! data directory and cluster listener on 127.0.0.1), whose links are cut,
//! delayed and made to lose answers through the cluster's [`LinkFaults`]
//! hook, following a schedule drawn from a seed, while writers propose
//! through random nodes and readers ask for consistent reads. After each
//! run every invariant is checked:
//!
//! * no acknowledged write lost: every write `Node::propose` answered `Ok`
//!   is on every node at the index it was acknowledged with, applied once;
//! * at most one leader per term (muster's vote rule: a node votes once
//!   per term), and each node's view of its leader, watched as it
//!   changes, only ever moves forward in (term, node id) order;
//! * every node's applied sequence (index and a digest of each command's
//!   result, as its `ApplyObserver` saw them, per process lifetime and
//!   since the last snapshot it restored) is a stretch of one sequence:
//!   the same commands at every index as every other node, and no entry
//!   skipped; and every catalog ends equal;
//! * a minority side neither acknowledges writes nor answers consistent
//!   reads: nothing sent through a node while it is cut off from a quorum
//!   succeeds before the partition heals, and probes sent there during
//!   each partition fail or wait;
//! * a consistent read is not stale: its index is at least that of every
//!   write acknowledged before it started.
//!
//! Every even seed runs with snapshots (one every 5 entries, 5 entries kept
//! after it), so nodes that fall behind or restart catch up from snapshots
//! streamed over the faulty links; `MUSTER_PARTITION_SNAPSHOTS=0|1`
//! overrides it.
//!
//! The raft timers are real, so a seed fixes the schedule, not every
//! interleaving. Every failure prints its seed and schedule;
//! `MUSTER_PARTITION_SEED=<n>` replays one seed, `MUSTER_PARTITION_SEEDS=
//! <count>` runs that many fresh seeds (a soak).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use muster_catalog::{ApplyResult, Catalog, Command, LeaseRef, ServiceKey};
use muster_raft::cluster::{FaultHook, LinkFault, LinkFaults};
use muster_raft::{ApplyObserver, ClusterConfig, Node, RaftConfig};
use rand::rngs::StdRng;
use rand::seq::{IndexedRandom, SliceRandom};
use rand::{Rng, SeedableRng};
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::{Instant, timeout};

/// The seeds every CI run replays. A seed that once found a bug stays.
const CI_SEEDS: &[u64] = &[1, 2, 3, 4, 1_796_322_892_000];
/// Steps in one schedule.
const STEPS: usize = 6;
/// How long one write or read may take before the client gives up on it
/// (its outcome is then unknown).
const OP_TIMEOUT: Duration = Duration::from_secs(2);
/// Bound on a whole run (schedule, convergence and checks).
const RUN_TIMEOUT: Duration = Duration::from_secs(90);
/// Bound on the cluster agreeing again after the schedule.
const CONVERGE: Duration = Duration::from_secs(20);
/// Bound on one node stopping or starting.
const NODE_STOP: Duration = Duration::from_secs(20);
/// Concurrent writers and readers.
const WRITERS: usize = 3;
const READERS: usize = 2;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

// ----- the fault hook -------------------------------------------------------

/// The faults on every directed link, as the schedule sets them.
#[derive(Default)]
struct Faults(Mutex<Links>);

#[derive(Default)]
struct Links {
    /// Calls never sent.
    cut: BTreeSet<(u64, u64)>,
    /// Calls handled, answers lost.
    lose_answers: BTreeSet<(u64, u64)>,
    /// Calls delayed by up to this.
    delay: BTreeMap<(u64, u64), Duration>,
    /// A share (percent) of calls on every link dropped or answer-lost.
    flaky_percent: u64,
    /// xorshift state for delays and flaky drops (seeded by the run).
    rng: u64,
}

impl Links {
    fn next(&mut self) -> u64 {
        let mut x = self.rng.max(1);
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.rng = x;
        x
    }
}

impl LinkFaults for Faults {
    fn on_send(&self, from: u64, to: u64, _rpc: &str) -> LinkFault {
        let mut l = lock(&self.0);
        if l.cut.contains(&(from, to)) {
            return LinkFault::Drop;
        }
        if l.lose_answers.contains(&(from, to)) {
            return LinkFault::DropResponse;
        }
        if l.flaky_percent > 0 && l.next() % 100 < l.flaky_percent {
            return if l.next().is_multiple_of(2) {
                LinkFault::Drop
            } else {
                LinkFault::DropResponse
            };
        }
        if let Some(max) = l.delay.get(&(from, to)).copied() {
            let ms = u64::try_from(max.as_millis()).unwrap_or(u64::MAX).max(1);
            return LinkFault::Delay(Duration::from_millis(l.next() % ms));
        }
        LinkFault::Deliver
    }
}

impl Faults {
    fn heal(&self) {
        let mut l = lock(&self.0);
        l.cut.clear();
        l.lose_answers.clear();
        l.delay.clear();
        l.flaky_percent = 0;
    }

    /// Cuts every link between `side` and the other nodes, both ways.
    fn partition(&self, side: &[u64], all: &[u64]) {
        let mut l = lock(&self.0);
        for a in side {
            for b in all.iter().filter(|b| !side.contains(b)) {
                l.cut.insert((*a, *b));
                l.cut.insert((*b, *a));
            }
        }
    }
}

// ----- what each node applied -----------------------------------------------

/// What one node saw applied during one lifetime of its process.
struct Recorder {
    /// (log index, digest of the command's result), in order.
    applied: Mutex<Vec<(u64, u64)>>,
    /// The highest index applied (a command's, or a snapshot's).
    last: watch::Sender<u64>,
    /// Snapshots the catalog was replaced with (opened or installed).
    restores: std::sync::atomic::AtomicUsize,
}

impl Recorder {
    fn new() -> Recorder {
        Recorder {
            applied: Mutex::new(Vec::new()),
            last: watch::Sender::new(0),
            restores: Default::default(),
        }
    }

    /// (index, digest) of every command applied since the last snapshot
    /// restored (the sequence continues from the snapshot).
    fn sequence(&self) -> Vec<(u64, u64)> {
        lock(&self.applied).clone()
    }

    /// Waits until this node applied `index`.
    async fn wait_applied(&self, index: u64, within: Duration) -> Result<(), String> {
        let mut rx = self.last.subscribe();
        let reached = timeout(within, rx.wait_for(|i| *i >= index))
            .await
            .is_ok_and(|r| r.is_ok());
        match reached {
            true => Ok(()),
            false => Err(format!(
                "applied only up to {} after {within:?}, not {index}",
                *rx.borrow()
            )),
        }
    }
}

impl ApplyObserver for Recorder {
    fn applied(&self, index: u64, result: &ApplyResult) {
        let mut h = DefaultHasher::new();
        format!("{result:?}").hash(&mut h);
        lock(&self.applied).push((index, h.finish()));
        self.last.send_if_modified(|l| {
            let moved = index > *l;
            *l = (*l).max(index);
            moved
        });
    }

    fn restored(&self, catalog: &Catalog) {
        let index = catalog.applied_index();
        self.restores
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        lock(&self.applied).clear();
        self.last.send_replace(index);
    }
}

// ----- the cluster ----------------------------------------------------------

struct Member {
    addr: SocketAddr,
    dir: PathBuf,
    node: Option<Node>,
    /// One recorder per process lifetime (start, then each restart).
    lives: Vec<Arc<Recorder>>,
}

struct Cluster {
    _tmp: tempfile::TempDir,
    /// Whether nodes build snapshots (and purge their logs) during the run.
    snapshots: bool,
    members: BTreeMap<u64, Member>,
    peers: BTreeMap<u64, String>,
    faults: Arc<Faults>,
    hook: FaultHook,
    /// The nodes running, for writers and readers to pick from.
    up: Arc<RwLock<BTreeMap<u64, Node>>>,
    /// Per node, the (term, leader) pairs it followed, in order.
    terms: Arc<Mutex<Terms>>,
}

/// Per node, the (term, leader) pairs it followed, in order.
type Terms = BTreeMap<u64, Vec<(u64, u64)>>;

/// One lifetime's applied entries: (log index, digest of each of its
/// commands' results), with the node and lifetime.
type Run = (u64, usize, Vec<(u64, Vec<u64>)>);

/// Binds `addr` (port 0 for a fresh one) on loopback; the same port again
/// after a restart, which address reuse allows at once.
fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = TcpSocket::new_v4()?;
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

impl Cluster {
    async fn start(n: u64, seed: u64, snapshots: bool) -> Result<Cluster, String> {
        // The cluster's HTTP client needs a TLS crypto provider in the
        // process (the agent installs it at start-up; so does this test).
        let _ = rustls::crypto::ring::default_provider().install_default();
        let tmp = tempfile::tempdir().map_err(|e| e.to_string())?;
        let faults = Arc::new(Faults::default());
        lock(&faults.0).rng = seed | 1;
        let hook = FaultHook::new(faults.clone());
        let mut listeners = BTreeMap::new();
        let mut members = BTreeMap::new();
        let mut peers = BTreeMap::new();
        // Every listener is bound before any node starts: the static
        // bootstrap needs every peer's address up front.
        for id in 1..=n {
            let listener = bind("127.0.0.1:0".parse().expect("address"))
                .map_err(|e| format!("binding node {id}: {e}"))?;
            let addr = listener.local_addr().map_err(|e| e.to_string())?;
            peers.insert(id, addr.to_string());
            listeners.insert(id, listener);
            members.insert(
                id,
                Member {
                    addr,
                    dir: tmp.path().join(format!("node-{id}")),
                    node: None,
                    lives: Vec::new(),
                },
            );
        }
        let mut cluster = Cluster {
            _tmp: tmp,
            snapshots,
            members,
            peers,
            faults,
            hook,
            up: Arc::default(),
            terms: Arc::default(),
        };
        for (id, listener) in listeners {
            cluster.open(id, listener).await?;
        }
        Ok(cluster)
    }

    fn ids(&self) -> Vec<u64> {
        self.members.keys().copied().collect()
    }

    async fn open(&mut self, id: u64, listener: TcpListener) -> Result<(), String> {
        let member = self.members.get_mut(&id).expect("member");
        let recorder = Arc::new(Recorder::new());
        let cfg = RaftConfig {
            node_id: id,
            data_dir: member.dir.clone(),
            // With snapshots, one every 5 entries and 5 entries kept
            // after it: a node that falls behind or restarts catches up
            // from a snapshot streamed over the (faulty) links, and a
            // lifetime's applied sequence starts at the snapshot it began
            // from (see the prefix check).
            snapshot_logs: if self.snapshots { 5 } else { 1_000_000 },
            snapshot_commands: if self.snapshots { 20 } else { 1_000_000_000 },
            force_recover_from_snapshot: false,
        };
        let cluster = ClusterConfig {
            peers: self.peers.clone(),
            join: false,
            http_addr: format!("127.0.0.1:{}", 7700 + id),
            link_faults: Some(self.hook.clone()),
            tls: None,
        };
        let node = timeout(
            NODE_STOP,
            Node::open_cluster(cfg, recorder.clone(), cluster, listener),
        )
        .await
        .map_err(|_| format!("node {id} did not open within {NODE_STOP:?}"))?
        .map_err(|e| format!("opening node {id}: {e}"))?;
        let mut leadership = node.leadership();
        let terms = self.terms.clone();
        tokio::spawn(async move {
            loop {
                let now = *leadership.borrow_and_update();
                if let Some(leader) = now.leader {
                    let mut terms = lock(&terms);
                    let seen = terms.entry(id).or_default();
                    if seen.last() != Some(&(now.term, leader)) {
                        seen.push((now.term, leader));
                    }
                }
                if leadership.changed().await.is_err() {
                    break;
                }
            }
        });
        member.lives.push(recorder);
        member.node = Some(node.clone());
        self.up
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(id, node);
        Ok(())
    }

    async fn stop(&mut self, id: u64) -> Result<(), String> {
        self.up
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&id);
        let Some(node) = self.members.get_mut(&id).and_then(|m| m.node.take()) else {
            return Ok(());
        };
        match timeout(NODE_STOP, node.shutdown()).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(format!("node {id} stopped with an error: {e}")),
            Err(_) => Err(format!("node {id} did not stop within {NODE_STOP:?}")),
        }
    }

    async fn restart(&mut self, id: u64) -> Result<(), String> {
        let addr = self.members[&id].addr;
        // The port was just released; another process may take it in the
        // meantime, so a few attempts, a moment apart.
        let deadline = Instant::now() + Duration::from_secs(5);
        let listener = loop {
            match bind(addr) {
                Ok(l) => break l,
                Err(e) if Instant::now() >= deadline => {
                    return Err(format!("node {id} cannot bind {addr} again: {e}"));
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        };
        self.open(id, listener).await
    }

    fn node(&self, id: u64) -> Option<Node> {
        self.members[&id].node.clone()
    }

    /// The leader every running node names, once they agree.
    async fn agreed_leader(&self, within: Duration) -> Result<u64, String> {
        let deadline = Instant::now() + within;
        let nodes: Vec<Node> = self
            .members
            .values()
            .filter_map(|m| m.node.clone())
            .collect();
        let mut watches: Vec<_> = nodes.iter().map(Node::leadership).collect();
        loop {
            let seen: BTreeSet<Option<u64>> = watches
                .iter_mut()
                .map(|w| w.borrow_and_update().leader)
                .collect();
            if let [Some(l)] = seen.iter().copied().collect::<Vec<_>>()[..] {
                return Ok(l);
            }
            let changed = futures_any(&mut watches);
            if timeout(deadline.saturating_duration_since(Instant::now()), changed)
                .await
                .is_err()
            {
                return Err(format!("no agreed leader within {within:?}: {seen:?}"));
            }
        }
    }
}

/// Resolves when any of `watches` changes (or closes).
async fn futures_any<T: Send + Sync + 'static>(watches: &mut [watch::Receiver<T>]) {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<()>(1);
    let mut set = JoinSet::new();
    for w in watches.iter() {
        let mut w = w.clone();
        let tx = tx.clone();
        set.spawn(async move {
            let _ = w.changed().await;
            let _ = tx.send(()).await;
        });
    }
    drop(tx);
    let _ = rx.recv().await;
    set.abort_all();
}

// ----- the schedule ---------------------------------------------------------

/// One step of a schedule; each lasts `hold`. A partition ends with its
/// step; a delay, lost answers or a flaky network that `lingers` last on
/// under the next steps, until a quiet step or the end of the run.
#[derive(Debug, Clone)]
enum Step {
    /// Cut every link between `minority` and the other nodes, both ways.
    Partition { minority: Vec<u64>, hold: Duration },
    /// Cut the node leading when the step starts from every other node.
    IsolateLeader { hold: Duration },
    /// Delay each call on `from → to` and back by up to `max`.
    Delay {
        from: u64,
        to: u64,
        max: Duration,
        hold: Duration,
        lingers: bool,
    },
    /// Calls from `from` to `to` are handled, their answers lost.
    LoseAnswers {
        from: u64,
        to: u64,
        hold: Duration,
        lingers: bool,
    },
    /// A share of every call on every link dropped or answer-lost.
    Flaky {
        percent: u64,
        hold: Duration,
        lingers: bool,
    },
    /// Stop `node`, and start it again on its data after `hold`.
    Restart { node: u64, hold: Duration },
    /// Every link healed.
    Quiet { hold: Duration },
}

impl Step {
    fn hold(&self) -> Duration {
        match self {
            Step::Partition { hold, .. }
            | Step::IsolateLeader { hold }
            | Step::Delay { hold, .. }
            | Step::LoseAnswers { hold, .. }
            | Step::Flaky { hold, .. }
            | Step::Restart { hold, .. }
            | Step::Quiet { hold } => *hold,
        }
    }
}

/// A cluster size and its steps, drawn from `seed`.
fn schedule(seed: u64) -> (u64, Vec<Step>) {
    let mut rng = StdRng::seed_from_u64(seed);
    let n: u64 = if rng.random_bool(0.25) { 5 } else { 3 };
    let ids: Vec<u64> = (1..=n).collect();
    let ms = |rng: &mut StdRng, lo: u64, hi: u64| Duration::from_millis(rng.random_range(lo..=hi));
    let link = |rng: &mut StdRng| {
        let mut two: Vec<u64> = ids.clone();
        two.shuffle(rng);
        (two[0], two[1])
    };
    let steps = (0..STEPS)
        .map(|_| match rng.random_range(0..100u32) {
            // Long enough for the majority to elect a leader of its own
            // (election timeouts are 600-1200 ms) and work under it.
            0..25 => {
                let size = rng.random_range(1..=(ids.len() - 1) / 2);
                let mut minority: Vec<u64> = ids.choose_multiple(&mut rng, size).copied().collect();
                minority.sort_unstable();
                Step::Partition {
                    minority,
                    hold: ms(&mut rng, 1200, 2500),
                }
            }
            25..45 => Step::IsolateLeader {
                hold: ms(&mut rng, 1200, 2500),
            },
            45..57 => {
                let (from, to) = link(&mut rng);
                Step::Delay {
                    from,
                    to,
                    max: ms(&mut rng, 20, 400),
                    hold: ms(&mut rng, 500, 1200),
                    lingers: rng.random_bool(0.4),
                }
            }
            57..69 => {
                let (from, to) = link(&mut rng);
                Step::LoseAnswers {
                    from,
                    to,
                    hold: ms(&mut rng, 500, 1200),
                    lingers: rng.random_bool(0.4),
                }
            }
            69..79 => Step::Flaky {
                percent: rng.random_range(5..=30),
                hold: ms(&mut rng, 500, 1200),
                lingers: rng.random_bool(0.4),
            },
            79..92 => Step::Restart {
                node: *ids.choose(&mut rng).expect("a node"),
                hold: ms(&mut rng, 100, 800),
            },
            _ => Step::Quiet {
                hold: ms(&mut rng, 200, 600),
            },
        })
        .collect();
    (n, steps)
}

// ----- writers and readers --------------------------------------------------

#[derive(Debug, Clone)]
enum OpKind {
    /// A registration of an instance of its own.
    Write(String),
    /// A consistent read (`read_barrier`).
    Read,
}

/// One call made through one node, and what it answered.
#[derive(Debug, Clone)]
struct Op {
    kind: OpKind,
    node: u64,
    start: Instant,
    end: Instant,
    /// The index answered; `Err` for a failure or a timeout.
    result: Result<u64, String>,
    /// A probe sent into a minority on purpose.
    probe: bool,
}

fn register(id: &str) -> Command {
    muster_catalog::testing::reg(
        "partition",
        muster_catalog::testing::data(id),
        LeaseRef::None,
    )
}

async fn write(node: &Node, id: u64, instance: String, within: Duration, probe: bool) -> Op {
    let start = Instant::now();
    let result = match timeout(within, node.propose(register(&instance))).await {
        Ok(Ok(applied)) => Ok(applied.index),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("timed out".into()),
    };
    Op {
        kind: OpKind::Write(instance),
        node: id,
        start,
        end: Instant::now(),
        result,
        probe,
    }
}

async fn read(node: &Node, id: u64, within: Duration, probe: bool) -> Op {
    let start = Instant::now();
    let result = match timeout(within, node.read_barrier()).await {
        Ok(Ok(index)) => Ok(index),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("timed out".into()),
    };
    Op {
        kind: OpKind::Read,
        node: id,
        start,
        end: Instant::now(),
        result,
        probe,
    }
}

fn pick(up: &RwLock<BTreeMap<u64, Node>>, rng: &mut StdRng) -> Option<(u64, Node)> {
    let up = up.read().unwrap_or_else(PoisonError::into_inner);
    let ids: Vec<u64> = up.keys().copied().collect();
    let id = *ids.choose(rng)?;
    Some((id, up[&id].clone()))
}

/// Writes (or reads) through random running nodes until `stop`.
async fn client(
    up: Arc<RwLock<BTreeMap<u64, Node>>>,
    seed: u64,
    name: String,
    writes: bool,
    mut stop: watch::Receiver<bool>,
) -> Vec<Op> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut ops = Vec::new();
    let mut n = 0u64;
    while !*stop.borrow() {
        if let Some((id, node)) = pick(&up, &mut rng) {
            n += 1;
            ops.push(if writes {
                write(&node, id, format!("{name}-{n}"), OP_TIMEOUT, false).await
            } else {
                read(&node, id, OP_TIMEOUT, false).await
            });
        }
        // Pacing, not a wait for state: a few tens of calls a second each.
        let pause = Duration::from_millis(rng.random_range(5..=30));
        let _ = timeout(pause, stop.wait_for(|s| *s)).await;
    }
    ops
}

// ----- a run ----------------------------------------------------------------

/// When `node` was cut off from a quorum.
struct Window {
    node: u64,
    start: Instant,
    end: Instant,
}

/// What a run found: the violated invariants, and how much it checked.
#[derive(Default)]
struct Outcome {
    violations: Vec<String>,
    acked_writes: usize,
    ok_reads: usize,
    minority_refusals: usize,
    /// Leaders seen (distinct leader ids).
    elections: usize,
    /// Snapshots a node's catalog was replaced with (at start or streamed).
    restores: usize,
}

async fn run(seed: u64, n: u64, steps: &[Step]) -> Result<Outcome, String> {
    let mut cluster = Cluster::start(n, seed, snapshots(seed)).await?;
    let ids = cluster.ids();
    let mut rng = StdRng::seed_from_u64(seed ^ 0x5eed);
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut clients = JoinSet::new();
    for w in 0..WRITERS {
        clients.spawn(client(
            cluster.up.clone(),
            seed.wrapping_add(w as u64 + 1),
            format!("w{w}"),
            true,
            stop_rx.clone(),
        ));
    }
    for r in 0..READERS {
        clients.spawn(client(
            cluster.up.clone(),
            seed.wrapping_add(100 + r as u64),
            format!("r{r}"),
            false,
            stop_rx.clone(),
        ));
    }

    let mut windows = Vec::new();
    let mut probes = JoinSet::new();
    let mut probe_n = 0u64;
    for step in steps {
        let hold = step.hold();
        let mut minority: Vec<u64> = Vec::new();
        match step {
            Step::Partition { minority: m, .. } => minority.clone_from(m),
            Step::IsolateLeader { .. } => {
                // The leader as the nodes see it now (none in the middle
                // of an election: then a random node).
                let leader = cluster.agreed_leader(Duration::from_millis(1500)).await;
                minority.push(leader.unwrap_or_else(|_| *ids.choose(&mut rng).expect("a node")));
            }
            Step::Delay { from, to, max, .. } => {
                let mut l = lock(&cluster.faults.0);
                l.delay.insert((*from, *to), *max);
                l.delay.insert((*to, *from), *max);
            }
            Step::LoseAnswers { from, to, .. } => {
                lock(&cluster.faults.0).lose_answers.insert((*from, *to));
            }
            Step::Flaky { percent, .. } => lock(&cluster.faults.0).flaky_percent = *percent,
            Step::Restart { node, .. } => cluster.stop(*node).await?,
            Step::Quiet { .. } => cluster.faults.heal(),
        }
        let start = Instant::now();
        if !minority.is_empty() {
            cluster.faults.partition(&minority, &ids);
            // Probes into the minority: none may succeed while it is cut
            // off (they give up a little before the partition heals).
            for id in &minority {
                if let Some(node) = cluster.node(*id) {
                    probe_n += 1;
                    let instance = format!("probe-{probe_n}");
                    let (node2, id2) = (node.clone(), *id);
                    let within = hold.mul_f64(0.9);
                    probes.spawn(async move { write(&node2, id2, instance, within, true).await });
                    probes.spawn(async move { read(&node, id2, within, true).await });
                }
            }
        }
        // The schedule's pacing: the fault holds this long.
        tokio::time::sleep(hold).await;
        let end = Instant::now();
        {
            let mut l = lock(&cluster.faults.0);
            l.cut.clear();
            match step {
                Step::Delay {
                    from,
                    to,
                    lingers: false,
                    ..
                } => {
                    l.delay.remove(&(*from, *to));
                    l.delay.remove(&(*to, *from));
                }
                Step::LoseAnswers {
                    from,
                    to,
                    lingers: false,
                    ..
                } => {
                    l.lose_answers.remove(&(*from, *to));
                }
                Step::Flaky { lingers: false, .. } => l.flaky_percent = 0,
                _ => {}
            }
        }
        for node in minority {
            windows.push(Window { node, start, end });
        }
        if let Step::Restart { node, .. } = step {
            cluster.restart(*node).await?;
        }
    }

    stop_tx.send_replace(true);
    let mut ops: Vec<Op> = Vec::new();
    let clients = timeout(Duration::from_secs(15), clients.join_all())
        .await
        .map_err(|_| "writers and readers did not stop".to_string())?;
    ops.extend(clients.into_iter().flatten());
    let probes = timeout(Duration::from_secs(15), probes.join_all())
        .await
        .map_err(|_| "probes did not finish".to_string())?;
    ops.extend(probes);

    let out = converge_and_check(&mut cluster, &ops, &windows).await;
    for id in cluster.ids() {
        cluster.stop(id).await?;
    }
    out
}

/// Heals, waits until every node holds the same log, then checks every
/// invariant.
async fn converge_and_check(
    cluster: &mut Cluster,
    ops: &[Op],
    windows: &[Window],
) -> Result<Outcome, String> {
    cluster.faults.heal();
    let mut out = Outcome::default();
    // A last write, through every node in turn, commits every entry still
    // pending before it (and truncates those that never will).
    let deadline = Instant::now() + CONVERGE;
    let mut last = 0;
    for id in cluster.ids() {
        let node = cluster
            .node(id)
            .ok_or("a node is down after the schedule")?;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(format!(
                    "no write through node {id} succeeded after healing"
                ));
            }
            let op = write(
                &node,
                id,
                format!("final-{id}"),
                left.min(OP_TIMEOUT * 3),
                false,
            )
            .await;
            if let Ok(index) = op.result {
                last = last.max(index);
                break;
            }
        }
    }
    let lives = |c: &Cluster, id: u64| c.members[&id].lives.last().cloned().expect("a life");
    for id in cluster.ids() {
        let left = deadline.saturating_duration_since(Instant::now());
        lives(cluster, id)
            .wait_applied(last, left)
            .await
            .map_err(|e| format!("node {id} did not catch up: {e}"))?;
    }

    // Every acknowledged write, once, at its index, on every node.
    let key = ServiceKey::new("default", "partition");
    let catalogs: BTreeMap<u64, Catalog> = cluster
        .ids()
        .into_iter()
        .map(|id| {
            let node = cluster.node(id).expect("running");
            let c = node
                .catalog()
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .clone();
            (id, c)
        })
        .collect();
    for op in ops {
        let (OpKind::Write(instance), Ok(index)) = (&op.kind, &op.result) else {
            continue;
        };
        out.acked_writes += 1;
        for (id, catalog) in &catalogs {
            match catalog.instance(&key, instance) {
                None => out.violations.push(format!(
                    "acknowledged write {instance} (index {index}, through node {}) is missing on node {id}",
                    op.node
                )),
                Some(i) if i.create_index != *index || i.modify_index != *index => {
                    out.violations.push(format!(
                        "acknowledged write {instance} was answered with index {index} but node {id} \
                         holds it created at {} and modified at {} (applied twice?)",
                        i.create_index, i.modify_index
                    ));
                }
                Some(_) => {}
            }
        }
    }

    // Every catalog the same, once at the same index.
    let top = catalogs
        .values()
        .map(Catalog::applied_index)
        .max()
        .unwrap_or(0);
    let mut reference: Option<(u64, Catalog)> = None;
    for (id, catalog) in &catalogs {
        let mut c = catalog.clone();
        c.advance(top);
        match &reference {
            None => reference = Some((*id, c)),
            Some((rid, r)) if *r != c => out.violations.push(format!(
                "the catalogs of nodes {rid} and {id} differ ({} and {} instances)",
                r.instance_count(),
                c.instance_count()
            )),
            Some(_) => {}
        }
    }

    out.restores = cluster
        .members
        .values()
        .flat_map(|m| &m.lives)
        .map(|r| r.restores.load(std::sync::atomic::Ordering::Relaxed))
        .sum();

    // Every lifetime's applied sequence agrees with every other at every
    // index (the same commands, in the same order) and has no hole: between
    // two entries it applied, it applied every entry some node applied.
    // Together: each is a stretch of one sequence. A lifetime starts where
    // the node's snapshot left it (opened on its own, or installed).
    let mut entries: BTreeMap<u64, (u64, usize, Vec<u64>)> = BTreeMap::new();
    let mut runs: Vec<Run> = Vec::new();
    for (id, m) in &cluster.members {
        for (life, r) in m.lives.iter().enumerate() {
            let seq = r.sequence();
            let mut run: Vec<(u64, Vec<u64>)> = Vec::new();
            for (index, digest) in seq {
                match run.last_mut() {
                    Some((i, digests)) if *i == index => digests.push(digest),
                    Some((i, _)) if *i > index => {
                        out.violations.push(format!(
                            "node {id} (lifetime {life}) applied index {index} after {i}"
                        ));
                    }
                    _ => run.push((index, vec![digest])),
                }
            }
            runs.push((*id, life, run));
        }
    }
    for (id, life, run) in &runs {
        for (index, digests) in run {
            match entries.get(index) {
                None => {
                    entries.insert(*index, (*id, *life, digests.clone()));
                }
                Some((other, other_life, theirs)) if theirs != digests => {
                    out.violations.push(format!(
                        "index {index}: node {id} (lifetime {life}) applied {digests:?}, node \
                         {other} (lifetime {other_life}) applied {theirs:?}"
                    ));
                }
                Some(_) => {}
            }
        }
    }
    for (id, life, run) in &runs {
        for pair in run.windows(2) {
            let (a, b) = (pair[0].0, pair[1].0);
            if let Some((skipped, _)) = entries.range(a + 1..b).next() {
                out.violations.push(format!(
                    "node {id} (lifetime {life}) applied {a} then {b}, skipping {skipped}"
                ));
            }
        }
    }

    // At most one leader per term, and leadership only moves forward.
    // openraft's default mode would let two candidates of one term win one
    // after the other (it orders votes by (term, node id)); muster's vote
    // rule (a node votes once per term, `cluster/server.rs`) forbids it, so
    // a term with two leaders is a violation. Every node's view of its
    // leader must also only move forward in (term, node id) order: a vote
    // that went back, e.g. lost in a restart, would show here.
    let terms = lock(&cluster.terms).clone();
    let mut by_term: BTreeMap<u64, BTreeSet<u64>> = BTreeMap::new();
    for (id, seen) in &terms {
        for pair in seen.windows(2) {
            if pair[1] <= pair[0] {
                out.violations.push(format!(
                    "node {id} followed leader {} of term {} after leader {} of term {}",
                    pair[1].1, pair[1].0, pair[0].1, pair[0].0
                ));
            }
        }
        for (term, leader) in seen {
            by_term.entry(*term).or_default().insert(*leader);
        }
    }
    out.elections = by_term.values().map(BTreeSet::len).sum();
    for (term, leaders) in &by_term {
        if leaders.len() > 1 {
            out.violations.push(format!(
                "term {term} had {} leaders: {leaders:?}",
                leaders.len()
            ));
        }
    }

    // A minority side neither acknowledges writes nor answers consistent
    // reads while it is cut off.
    for op in ops {
        let inside = windows
            .iter()
            .find(|w| w.node == op.node && op.start >= w.start && op.end <= w.end);
        let Some(w) = inside else { continue };
        match &op.result {
            Ok(index) => out.violations.push(format!(
                "node {} answered {:?} (index {index}) {:?} into a partition that cut it off from \
                 a quorum for {:?}",
                op.node,
                op.kind,
                op.start - w.start,
                w.end - w.start
            )),
            Err(_) => out.minority_refusals += 1,
        }
    }
    // Not vacuous: the probes sent into each partition gave up (or
    // failed) before it healed, so each was checked.
    for w in windows {
        let probed = ops
            .iter()
            .filter(|o| o.probe && o.node == w.node && o.start >= w.start && o.end <= w.end)
            .count();
        if probed < 2 {
            out.violations.push(format!(
                "only {probed} of the 2 probes into node {}'s partition finished before it healed",
                w.node
            ));
        }
    }

    // A consistent read reflects every write acknowledged before it began.
    let mut acked: Vec<(Instant, u64)> = ops
        .iter()
        .filter(|o| matches!(o.kind, OpKind::Write(_)))
        .filter_map(|o| o.result.as_ref().ok().map(|i| (o.end, *i)))
        .collect();
    acked.sort_unstable();
    for op in ops.iter().filter(|o| matches!(o.kind, OpKind::Read)) {
        let Ok(index) = op.result else { continue };
        out.ok_reads += 1;
        let before = acked
            .iter()
            .take_while(|(end, _)| *end < op.start)
            .map(|(_, i)| *i)
            .max();
        if let Some(w) = before.filter(|w| *w > index) {
            out.violations.push(format!(
                "a consistent read through node {} answered index {index}, older than write \
                 index {w} acknowledged before it began",
                op.node
            ));
        }
    }
    Ok(out)
}

// ----- the tests ------------------------------------------------------------

fn env_u64(name: &str) -> Option<u64> {
    let v = std::env::var(name).ok()?;
    Some(
        v.parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a number")),
    )
}

/// Whether a seed's run builds snapshots: every even seed does, unless
/// `MUSTER_PARTITION_SNAPSHOTS` is set (to 0 or 1).
fn snapshots(seed: u64) -> bool {
    env_u64("MUSTER_PARTITION_SNAPSHOTS").map_or(seed.is_multiple_of(2), |on| on != 0)
}

/// Runs each seed; panics naming every failing seed, with its schedule.
async fn check_seeds(seeds: &[u64]) {
    let mut failed = Vec::new();
    for &seed in seeds {
        let (n, steps) = schedule(seed);
        let mut plan = String::new();
        for (i, s) in steps.iter().enumerate() {
            let _ = writeln!(plan, "  {i}: {s:?}");
        }
        let began = Instant::now();
        let result = match timeout(RUN_TIMEOUT, run(seed, n, &steps)).await {
            Ok(r) => r,
            Err(_) => Err(format!("the run did not finish within {RUN_TIMEOUT:?}")),
        };
        match result {
            Ok(out) if out.violations.is_empty() => println!(
                "partition seed {seed}: {n} nodes, snapshots {}, {} acknowledged writes, {} consistent \
                 reads, {} refusals in a minority, {} leaders, {} snapshot restores, in {:?}",
                if snapshots(seed) { "on" } else { "off" },
                out.acked_writes,
                out.ok_reads,
                out.minority_refusals,
                out.elections,
                out.restores,
                began.elapsed()
            ),
            Ok(out) => {
                eprintln!(
                    "partition seed {seed} FAILED ({n} nodes); schedule:\n{plan}violations:\n  {}\n\
                     replay: MUSTER_PARTITION_SEED={seed} cargo nextest run -p muster-raft \
                     --test it partition",
                    out.violations.join("\n  ")
                );
                failed.push(seed);
            }
            Err(e) => {
                eprintln!(
                    "partition seed {seed} FAILED ({n} nodes); schedule:\n{plan}error: {e}\n\
                     replay: MUSTER_PARTITION_SEED={seed} cargo nextest run -p muster-raft \
                     --test it partition"
                );
                failed.push(seed);
            }
        }
    }
    assert!(
        failed.is_empty(),
        "failing partition seeds: {failed:?} (each printed above with its schedule; \
         MUSTER_PARTITION_SEED=<seed> replays one)"
    );
}

/// The seeds to run: `MUSTER_PARTITION_SEED` alone, or
/// `MUSTER_PARTITION_SEEDS` fresh ones, or else `ci`.
fn seeds(ci: &[u64]) -> Vec<u64> {
    if let Some(seed) = env_u64("MUSTER_PARTITION_SEED") {
        return vec![seed];
    }
    if let Some(count) = env_u64("MUSTER_PARTITION_SEEDS") {
        let base = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_secs() * 1000);
        return (base..base + count).collect();
    }
    ci.to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn seeded_partition_schedules_keep_the_cluster_invariants() {
    // `RUST_LOG=…` shows the nodes' logs when replaying a seed.
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
    }
    check_seeds(&seeds(CI_SEEDS)).await;
}

/// A cluster of three (seeded by `seed`), its leader and a follower that
/// forwarded a first write: every path works.
async fn three_with_a_follower(seed: u64) -> (Cluster, u64, u64) {
    let cluster = Cluster::start(3, seed, false).await.expect("cluster");
    let leader = cluster
        .agreed_leader(Duration::from_secs(30))
        .await
        .expect("leader");
    let follower = *cluster.ids().iter().find(|id| **id != leader).unwrap();
    cluster
        .node(follower)
        .unwrap()
        .propose(register("before"))
        .await
        .expect("a forwarded write");
    (cluster, leader, follower)
}

/// `cmd` proposed through `node`, answered within 30 s.
async fn propose_within_30s(
    node: &Node,
    cmd: Command,
) -> Result<muster_raft::Applied, muster_raft::ProposeError> {
    timeout(Duration::from_secs(30), node.propose(cmd))
        .await
        .expect("an answer within 30 s")
}

/// Whether `node` holds instance `id` of the partition tests' service.
fn holds(node: &Node, id: &str) -> bool {
    let key = ServiceKey::new("default", "partition");
    node.catalog().read().unwrap().instance(&key, id).is_some()
}

/// A write a follower forwards to the leader, whose answer is lost on the
/// way back (the leader killed mid-call looks the same to the follower):
/// the leader applied it, the follower cannot know, so it neither sends it
/// again nor says it was refused. It says the outcome is unknown, naming
/// the leader.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forwarded_write_whose_answer_is_lost_is_reported_as_of_unknown_outcome() {
    let (mut cluster, leader, follower) = three_with_a_follower(7).await;
    let (on_leader, on_follower) = (
        cluster.node(leader).unwrap(),
        cluster.node(follower).unwrap(),
    );

    lock(&cluster.faults.0)
        .lose_answers
        .insert((follower, leader));
    let r = propose_within_30s(&on_follower, register("answer-lost")).await;
    match r {
        Err(muster_raft::ProposeError::OutcomeUnknown { leader: named }) => {
            assert_eq!(named, leader)
        }
        other => panic!("expected an unknown outcome, got {other:?}"),
    }
    // It was applied, once, by the leader: the follower did not send it
    // again, and it was not refused.
    assert!(
        holds(&on_leader, "answer-lost"),
        "the leader applied the write whose answer was lost"
    );

    cluster.faults.heal();
    on_follower
        .propose(register("after"))
        .await
        .expect("forwarded writes work again once answers arrive");
    for id in cluster.ids() {
        cluster.stop(id).await.expect("stop");
    }
}

/// A follower cut off while the others remove it never receives its
/// removal, and still counts itself a member. Once its links heal, the
/// first call it makes (a write it forwards, its vote request, its
/// `hello`) is refused by a member before anything handles it: the write
/// is answered "removed", the node knows it, and the leader applied
/// nothing of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_removed_while_cut_off_is_told_by_the_first_call_it_makes() {
    let (mut cluster, leader, gone) = three_with_a_follower(11).await;
    let (on_leader, on_gone) = (cluster.node(leader).unwrap(), cluster.node(gone).unwrap());

    cluster.faults.partition(&[gone], &cluster.ids());
    on_leader
        .change_members(muster_raft::MemberChange::Remove { id: gone })
        .await
        .expect("removed with the other two");
    assert!(!on_gone.removed(), "cut off, it cannot know yet");

    cluster.faults.heal();
    let r = propose_within_30s(&on_gone, register("after-removal")).await;
    match r {
        Err(muster_raft::ProposeError::Removed { node }) => assert_eq!(node, gone),
        other => panic!("expected the write refused as from a removed node, got {other:?}"),
    }
    assert!(on_gone.removed(), "told, it knows it was removed");
    assert!(
        !holds(&on_leader, "after-removal"),
        "the leader applied a write from a removed node"
    );
    on_leader
        .propose(register("after"))
        .await
        .expect("the members take writes");
    for id in cluster.ids() {
        cluster.stop(id).await.expect("stop");
    }
}
