//! A cluster of three real `muster agent` processes on loopback: formed
//! from static peers started in a random order, writes taken by any node,
//! and `kill -9` of the leader under writes from several clients.
//!
//! Cluster state has no event a test can subscribe to from outside the
//! processes, so these tests poll `/v1/cluster` and reads with a deadline.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::time::Instant;

use crate::harness::{Agent, cli, http};

/// How long a cluster may take to form or to elect a new leader on a
/// loaded machine.
pub(crate) const FORM: Duration = Duration::from_secs(30);
/// How long a surviving or restarted node may take to hold every write.
pub(crate) const CATCH_UP: Duration = Duration::from_secs(30);
/// Between two polls of an API.
pub(crate) const POLL: Duration = Duration::from_millis(100);

/// Free loopback ports for the cluster listeners (bound, then released
/// for the agent to bind).
pub(crate) fn free_ports(n: usize) -> Vec<u16> {
    let listeners: Vec<_> = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    listeners
        .iter()
        .map(|l| l.local_addr().unwrap().port())
        .collect()
}

/// A seed for the start order: `MUSTER_TEST_SEED` replays one.
fn seed() -> u64 {
    std::env::var("MUSTER_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .subsec_nanos() as u64
        })
}

/// `ids` shuffled by `seed` (Fisher-Yates over a small LCG).
fn shuffled(mut ids: Vec<u64>, seed: u64) -> Vec<u64> {
    let mut state = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    for i in (1..ids.len()).rev() {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let j = (state >> 33) as usize % (i + 1);
        ids.swap(i, j);
    }
    ids
}

/// N nodes' settings: ids 1..=N, their data dirs and cluster ports.
pub(crate) struct Cluster {
    pub(crate) dirs: Vec<tempfile::TempDir>,
    pub(crate) ports: Vec<u16>,
    /// Arguments every agent also gets (e.g. a `--config` file).
    pub(crate) args: Vec<String>,
    /// Nodes 1..=initial form the cluster from `--peers`; the others
    /// join it later.
    pub(crate) initial: usize,
    /// Indexed by node id - 1; `None` while a node is down.
    agents: Vec<Option<Agent>>,
}

impl Cluster {
    pub(crate) fn new(n: usize) -> Cluster {
        Cluster {
            dirs: (0..n).map(|_| tempfile::tempdir().unwrap()).collect(),
            ports: free_ports(n),
            args: Vec::new(),
            initial: n,
            agents: (0..n).map(|_| None).collect(),
        }
    }

    fn peers(&self) -> String {
        let peers: Vec<String> = self.ports[..self.initial]
            .iter()
            .enumerate()
            .map(|(i, p)| format!("{}=127.0.0.1:{p}", i + 1))
            .collect();
        peers.join(",")
    }

    pub(crate) fn start(&mut self, id: u64) {
        let i = (id - 1) as usize;
        let (id_s, peers) = (id.to_string(), self.peers());
        let cluster_addr = self.cluster_addr(id);
        let data: &Path = self.dirs[i].path();
        let mut args = vec!["--node-id", &id_s, "--cluster-addr", &cluster_addr];
        if i < self.initial {
            args.extend(["--peers", &peers]);
        } else {
            args.push("--join");
        }
        args.extend(self.args.iter().map(String::as_str));
        let agent = Agent::spawn_with(data, &args, &[]);
        self.agents[i] = Some(agent);
    }

    pub(crate) fn cluster_addr(&self, id: u64) -> String {
        format!("127.0.0.1:{}", self.ports[(id - 1) as usize])
    }

    pub(crate) fn agent(&self, id: u64) -> &Agent {
        self.agents[(id - 1) as usize].as_ref().expect("node is up")
    }

    pub(crate) fn up(&self) -> Vec<u64> {
        (1..=self.agents.len() as u64)
            .filter(|id| self.agents[(*id - 1) as usize].is_some())
            .collect()
    }

    /// The HTTP base URLs of the running nodes.
    fn bases(&self) -> Vec<String> {
        self.up()
            .iter()
            .map(|id| self.agent(*id).base.clone())
            .collect()
    }

    /// Waits (at most `within`) for node `id` to exit by itself, and
    /// counts it as down; its exit status, `None` if it did not exit.
    pub(crate) async fn exited(
        &mut self,
        id: u64,
        within: Duration,
    ) -> Option<std::process::ExitStatus> {
        let mut agent = self.agents[(id - 1) as usize].take().expect("node is up");
        agent.exit_status(within).await
    }

    fn kill9(&mut self, id: u64) {
        self.agents[(id - 1) as usize].take().unwrap().kill9();
    }

    /// Polls `/v1/cluster` on every running node until all of them name
    /// the same leader, one of them, that says it leads; returns it.
    pub(crate) async fn leader(&self, not: Option<u64>) -> u64 {
        let deadline = Instant::now() + FORM;
        loop {
            let mut seen = BTreeSet::new();
            for id in self.up() {
                let v = cluster_info(self.agent(id)).await;
                seen.insert(v.as_ref().and_then(|v| v["leader"].as_u64()));
            }
            if let [Some(l)] = seen.iter().copied().collect::<Vec<_>>()[..]
                && self.up().contains(&l)
                && Some(l) != not
            {
                let v = cluster_info(self.agent(l)).await.unwrap();
                let me = v["nodes"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .find(|n| n["id"] == l)
                    .unwrap()
                    .clone();
                if me["role"] == "leader" {
                    return l;
                }
            }
            assert!(
                Instant::now() < deadline,
                "no agreed leader among {:?} within {FORM:?}: {seen:?}",
                self.up()
            );
            tokio::time::sleep(POLL).await;
        }
    }
}

pub(crate) async fn cluster_info(agent: &Agent) -> Option<Value> {
    let r = http().get(agent.url("/v1/cluster")).send().await.ok()?;
    r.json().await.ok()
}

/// Registers `id` of service `svc` through `agent`; `true` if acknowledged.
pub(crate) async fn register(client: &reqwest::Client, base: &str, svc: &str, id: &str) -> bool {
    register_answer(client, base, svc, id).await.is_ok()
}

/// Registers `id`; a refusal as its status and error code (status 0: no
/// answer at all).
async fn register_answer(
    client: &reqwest::Client,
    base: &str,
    svc: &str,
    id: &str,
) -> Result<(), (u16, String)> {
    let r = client
        .put(format!("{base}/v1/services/{svc}/instances/{id}"))
        .json(&json!({"address": "10.0.0.1", "port": 8080}))
        .timeout(Duration::from_secs(15))
        .send()
        .await;
    match r {
        Ok(r) if r.status() == 200 => Ok(()),
        Ok(r) => {
            let status = r.status().as_u16();
            let body: Value = r.json().await.unwrap_or_default();
            Err((status, body["error"]["code"].as_str().unwrap_or("").into()))
        }
        Err(e) => Err((0, e.to_string())),
    }
}

/// The instance ids of `svc` on `agent` (any health), if it answers.
async fn ids(agent: &Agent, svc: &str) -> Option<HashSet<String>> {
    let r = http()
        .get(agent.url(&format!("/v1/services/{svc}/instances?health=any")))
        .send()
        .await
        .ok()?;
    let v: Value = r.json().await.ok()?;
    Some(
        v["instances"]
            .as_array()?
            .iter()
            .map(|i| i["id"].as_str().unwrap().to_string())
            .collect(),
    )
}

/// Polls `agent` until it holds every id of `want`; panics with what is
/// missing after `within`.
pub(crate) async fn wait_holds(
    agent: &Agent,
    svc: &str,
    want: &[String],
    within: Duration,
    who: &str,
) {
    wait_ids(agent, svc, within, |have| {
        let missing: Vec<&String> = want.iter().filter(|id| !have.contains(*id)).collect();
        (!missing.is_empty()).then(|| {
            format!(
                "{who} lacks {} of {} acknowledged writes after {within:?}, e.g. {:?}",
                missing.len(),
                want.len(),
                &missing[..missing.len().min(5)]
            )
        })
    })
    .await;
}

/// Polls `agent`'s ids of `svc` until `wrong` finds nothing wrong with
/// them; panics with what it found after `within`.
async fn wait_ids(
    agent: &Agent,
    svc: &str,
    within: Duration,
    wrong: impl Fn(&HashSet<String>) -> Option<String>,
) {
    let deadline = Instant::now() + within;
    loop {
        let have = ids(agent, svc).await.unwrap_or_default();
        let Some(why) = wrong(&have) else {
            return;
        };
        assert!(Instant::now() < deadline, "{why}");
        tokio::time::sleep(POLL).await;
    }
}

/// Four clients writing `service` through every node in turn (bounded: at
/// most 5,000 writes each); a write that fails (its node died, an election)
/// moves on to the next node. Every acknowledged id is kept, every refusal
/// counted, and the count of acknowledged writes is published so a test
/// waits on it instead of polling.
pub(crate) struct Writers {
    acked: Arc<Mutex<Vec<String>>>,
    refused: Arc<Mutex<BTreeMap<(u16, String), usize>>>,
    count: tokio::sync::watch::Receiver<usize>,
    stop: tokio::sync::watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Writers {
    pub(crate) fn start(bases: Vec<String>, service: &'static str) -> Writers {
        let acked: Arc<Mutex<Vec<String>>> = Arc::default();
        let refused: Arc<Mutex<BTreeMap<(u16, String), usize>>> = Arc::default();
        let (count_tx, count) = tokio::sync::watch::channel(0usize);
        let count_tx = Arc::new(count_tx);
        let (stop, stop_rx) = tokio::sync::watch::channel(false);
        let tasks = (0..4usize)
            .map(|w| {
                let (bases, acked, stop) = (bases.clone(), acked.clone(), stop_rx.clone());
                let refused = refused.clone();
                let count_tx = count_tx.clone();
                tokio::spawn(async move {
                    let client = http();
                    for n in 0..5_000usize {
                        if *stop.borrow() {
                            return;
                        }
                        let id = format!("w{w}-{n}");
                        let base = &bases[(w + n) % bases.len()];
                        match register_answer(&client, base, service, &id).await {
                            Ok(()) => {
                                let total = {
                                    let mut a = acked.lock().unwrap();
                                    a.push(id);
                                    a.len()
                                };
                                count_tx.send_replace(total);
                            }
                            Err(why) => *refused.lock().unwrap().entry(why).or_default() += 1,
                        }
                    }
                })
            })
            .collect();
        Writers {
            acked,
            refused,
            count,
            stop,
            tasks,
        }
    }

    /// The ids acknowledged so far.
    fn acked_now(&self) -> Vec<String> {
        self.acked.lock().unwrap().clone()
    }

    /// The refusals so far: (status, error code) and how many times.
    pub(crate) fn refused(&self) -> BTreeMap<(u16, String), usize> {
        self.refused.lock().unwrap().clone()
    }

    /// Writes acknowledged so far.
    pub(crate) fn count(&self) -> usize {
        *self.count.borrow()
    }

    /// Waits (up to [`FORM`]) until `target` writes were acknowledged.
    pub(crate) async fn wait_for(&self, target: usize, what: &str) {
        let mut rx = self.count.clone();
        let reached = tokio::time::timeout(FORM, rx.wait_for(|n| *n >= target)).await;
        assert!(
            matches!(reached, Ok(Ok(_))),
            "{what}: {} of {target} acks",
            self.count()
        );
    }

    /// Stops the writers and gives every acknowledged id.
    pub(crate) async fn stop(self) -> Vec<String> {
        self.stop.send_replace(true);
        for t in self.tasks {
            t.await.unwrap();
        }
        let acked = self.acked.lock().unwrap().clone();
        println!("{} acknowledged writes", acked.len());
        acked
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_form_in_any_order_and_a_follower_takes_writes() {
    let seed = seed();
    let order = shuffled(vec![1, 2, 3], seed);
    println!("start order {order:?} (seed {seed}; MUSTER_TEST_SEED={seed} replays it)");
    let mut c = Cluster::new(3);
    for id in &order {
        c.start(*id);
    }
    let leader = c.leader(None).await;

    // Every node lists every member once, one leader, and each member's
    // HTTP address (learned from the peers themselves) once known.
    let deadline = Instant::now() + FORM;
    loop {
        let v = cluster_info(c.agent(leader)).await.unwrap();
        let nodes = v["nodes"].as_array().unwrap().clone();
        assert_eq!(
            nodes
                .iter()
                .map(|n| n["id"].as_u64().unwrap())
                .collect::<Vec<_>>(),
            vec![1, 2, 3]
        );
        assert_eq!(
            nodes.iter().filter(|n| n["role"] == "leader").count(),
            1,
            "{nodes:?}"
        );
        let known = nodes.iter().all(|n| {
            let id = n["id"].as_u64().unwrap();
            n["http_addr"].as_str().map(|a| format!("http://{a}")) == Some(c.agent(id).base.clone())
        });
        // The leader knows each follower's match index.
        let matched = nodes.iter().all(|n| n["match_index"].as_u64().is_some());
        if known && matched {
            break;
        }
        assert!(Instant::now() < deadline, "members incomplete: {nodes:?}");
        tokio::time::sleep(POLL).await;
    }

    // `muster cluster members` on the leader: one line per member.
    let (ok, out, err) = cli(&c.agent(leader).base, &["cluster", "members"]);
    assert!(ok, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].starts_with("ID"), "{out}");
    for id in 1..=3u64 {
        let role = if id == leader { "leader" } else { "follower" };
        let port = c.ports[(id - 1) as usize];
        assert!(
            lines.iter().any(|l| l.starts_with(&format!("{id} "))
                && l.contains(role)
                && l.contains(&format!("127.0.0.1:{port}"))),
            "{out}"
        );
    }

    let follower = *c.up().iter().find(|id| **id != leader).unwrap();
    let client = http();
    assert!(
        register(&client, &c.agent(follower).base, "payments", "via-follower").await,
        "a write to follower {follower} was refused"
    );
    // The follower answered after applying it: it reads its own write.
    assert!(
        ids(c.agent(follower), "payments")
            .await
            .unwrap()
            .contains("via-follower")
    );
    // A consistent read on the other follower, right after: read-index
    // through the leader, so it holds the write without waiting.
    let other = *c
        .up()
        .iter()
        .find(|id| **id != leader && **id != follower)
        .unwrap();
    let v: Value = client
        .get(
            c.agent(other)
                .url("/v1/services/payments/instances?consistent&health=any"),
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["instances"][0]["id"], "via-follower", "{v}");
    // The other reads take `?consistent` too.
    let get = |path: &str| client.get(c.agent(other).url(path)).send();
    let one = get("/v1/services/payments/instances/via-follower?consistent")
        .await
        .unwrap();
    assert_eq!(one.status(), 200, "{}", one.text().await.unwrap());
    let list: Value = get("/v1/services?consistent=true")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list["services"][0]["name"], "payments", "{list}");
    assert_eq!(list["services"][0]["instances"], 1, "{list}");
    let want = vec!["via-follower".to_string()];
    for id in c.up() {
        wait_holds(
            c.agent(id),
            "payments",
            &want,
            CATCH_UP,
            &format!("node {id}"),
        )
        .await;
    }
    // A heartbeat to a follower renews the lease on the leader.
    let r = client
        .put(
            c.agent(follower)
                .url("/v1/services/payments/instances/leased"),
        )
        .json(&json!({"address": "10.0.0.2", "port": 8080, "ttl": "10s"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = client
        .put(
            c.agent(follower)
                .url("/v1/services/payments/instances/leased/heartbeat"),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    // Writes arriving together at a follower share calls to the leader,
    // each answered with its own result and applied once.
    let writes = (0..100).map(|i| {
        client
            .put(
                c.agent(follower)
                    .url(&format!("/v1/services/batched/instances/b{i}")),
            )
            .json(&json!({"address": "10.0.0.3", "port": 8000 + i}))
            .send()
    });
    for r in futures::future::join_all(writes).await {
        let v: Value = r.unwrap().json().await.unwrap();
        let port = v["port"].as_u64().unwrap();
        assert_eq!(v["id"], format!("b{}", port - 8000), "{v}");
        assert_eq!(v["create_index"], v["modify_index"], "{v}");
    }
    assert_eq!(ids(c.agent(follower), "batched").await.unwrap().len(), 100);
    // Heartbeats arriving together at a follower share calls to the
    // leader: 200 at once, every one renewed, in few calls (answered by the
    // follower itself and passed on in batches while it hears from the
    // leader, else forwarded, coalesced).
    let url = c
        .agent(follower)
        .url("/v1/services/payments/instances/leased/heartbeat");
    let beats = (0..200).map(|_| client.put(&url).send());
    for r in futures::future::join_all(beats).await {
        assert_eq!(r.unwrap().status(), 200);
    }
    let metrics = client
        .get(c.agent(follower).url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let sample = |name: &str| -> u64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {name} in {metrics}"))
    };
    let renewals = sample("muster_raft_forwarded_renewals_total ");
    let calls = sample("muster_raft_forwarded_renewal_calls_total ");
    let passed_on = sample("muster_raft_renewals_passed_on_total ");
    println!("{passed_on} renewals answered here, {renewals} forwarded in {calls} calls");
    assert!(
        passed_on + renewals >= 201 && calls < 50,
        "{passed_on} answered here, {renewals} forwarded in {calls} calls"
    );
    let writes = sample("muster_raft_forwarded_writes_total ");
    let write_calls = sample("muster_raft_forwarded_write_calls_total ");
    println!("{writes} writes forwarded in {write_calls} calls");
    assert!(
        writes >= 102 && write_calls < writes,
        "{writes} in {write_calls} calls"
    );

    // A TTL report to a follower is made on the leader (which runs the
    // checks) and answered once the follower applied the status: it reads
    // it at once, even sent right after the registration.
    let ttl_instance = c
        .agent(follower)
        .url("/v1/services/payments/instances/ttl-1");
    let r = client
        .put(&ttl_instance)
        .json(&json!({"address": "10.0.0.3", "port": 8080,
            "checks": [{"id": "alive", "ttl": "30s"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    for status in ["pass", "warn", "fail", "pass"] {
        let r = client
            .put(format!("{ttl_instance}/checks/alive/{status}"))
            .json(&json!({"output": status}))
            .send()
            .await
            .unwrap();
        assert!(
            r.status().is_success(),
            "{status}: {}",
            r.text().await.unwrap()
        );
        let v: Value = client
            .get(&ttl_instance)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let want = match status {
            "pass" => "passing",
            "warn" => "warning",
            _ => "critical",
        };
        assert_eq!(v["checks"][0]["status"], want, "after {status}: {v}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_the_leader_under_writes_loses_no_acknowledged_write() {
    let seed = seed();
    let order = shuffled(vec![1, 2, 3], seed);
    println!("start order {order:?} (seed {seed}; MUSTER_TEST_SEED={seed} replays it)");
    let mut c = Cluster::new(3);
    for id in &order {
        c.start(*id);
    }
    let leader = c.leader(None).await;

    let bases: Vec<String> = c.up().iter().map(|id| c.agent(*id).base.clone()).collect();
    let writers = Writers::start(bases, "storm");
    writers.wait_for(200, "writes before the kill").await;
    println!(
        "killing leader {leader} after {} acknowledged writes",
        writers.count()
    );
    c.kill9(leader);
    let at_kill = writers.count();
    let new_leader = c.leader(Some(leader)).await;
    println!("new leader {new_leader}");
    writers
        .wait_for(at_kill + 200, "writes after the kill")
        .await;
    let acked = writers.stop().await;
    for id in c.up() {
        wait_holds(
            c.agent(id),
            "storm",
            &acked,
            CATCH_UP,
            &format!("survivor {id}"),
        )
        .await;
    }

    // The killed node restarts on its data and catches up.
    c.start(leader);
    wait_holds(
        c.agent(leader),
        "storm",
        &acked,
        CATCH_UP,
        &format!("restarted node {leader}"),
    )
    .await;
    // And takes writes again, as a follower.
    assert!(register(&http(), &c.agent(leader).base, "storm", "after-restart").await);
}

/// Writes `n` instances `{prefix}-{i}` of `svc` from four clients, each
/// through the nodes of `bases` in turn; every write must be acknowledged
/// (the cluster has a quorum). Returns their ids.
async fn write_all(bases: &[String], svc: &'static str, prefix: &str, n: usize) -> Vec<String> {
    let mut tasks = Vec::new();
    for w in 0..4usize {
        let (bases, prefix) = (bases.to_vec(), prefix.to_string());
        tasks.push(tokio::spawn(async move {
            let client = http();
            let mut acked = Vec::new();
            for i in (w..n).step_by(4) {
                let id = format!("{prefix}-{i}");
                let base = &bases[i % bases.len()];
                assert!(
                    register(&client, base, svc, &id).await,
                    "write {id} through {base} was not acknowledged"
                );
                acked.push(id);
            }
            acked
        }));
    }
    let mut acked = Vec::new();
    for t in tasks {
        acked.extend(t.await.unwrap());
    }
    acked
}

/// A counter or gauge from `agent`'s `/metrics`.
pub(crate) async fn metric(agent: &Agent, name: &str) -> f64 {
    let text = http()
        .get(agent.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in /metrics:\n{text}"))
}

/// 5 nodes compacting their log every 20 entries: with the leader and one
/// follower killed (`kill -9`), the other three elect a leader and
/// acknowledge every write; restarted, the two are far behind the
/// survivors' compacted log and catch up from a streamed snapshot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_nodes_serve_writes_with_two_killed_and_they_catch_up_from_a_snapshot() {
    let seed = seed();
    let order = shuffled(vec![1, 2, 3, 4, 5], seed);
    println!("start order {order:?} (seed {seed}; MUSTER_TEST_SEED={seed} replays it)");
    let mut c = Cluster::new(5);
    let config = c.dirs[0].path().join("muster.toml");
    std::fs::write(&config, "snapshot_logs = 20\nsnapshot_commands = 20\n").unwrap();
    c.args = vec!["--config".into(), config.display().to_string()];
    for id in &order {
        c.start(*id);
    }
    let leader = c.leader(None).await;
    let mut acked = write_all(&c.bases(), "five", "before", 40).await;

    let follower = *c.up().iter().find(|id| **id != leader).unwrap();
    println!("killing leader {leader} and follower {follower}");
    c.kill9(leader);
    c.kill9(follower);
    let new_leader = c.leader(Some(leader)).await;
    println!("new leader {new_leader}");
    // Far more entries than the survivors keep after a snapshot.
    acked.extend(write_all(&c.bases(), "five", "after", 400).await);
    for id in c.up() {
        wait_holds(
            c.agent(id),
            "five",
            &acked,
            CATCH_UP,
            &format!("survivor {id}"),
        )
        .await;
    }
    // The new leader shows the two dead members unreachable, the others
    // reachable, and the CLI says so.
    let dead = [leader, follower];
    let deadline = Instant::now() + FORM;
    loop {
        let v = cluster_info(c.agent(new_leader)).await.unwrap();
        let nodes = v["nodes"].as_array().unwrap();
        let shown = |n: &Value| n["reachable"] == json!(!dead.contains(&n["id"].as_u64().unwrap()));
        if nodes.len() == 5 && nodes.iter().all(shown) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "reachability of {dead:?} not shown: {v}"
        );
        tokio::time::sleep(POLL).await;
    }
    let (ok, out, err) = cli(&c.agent(new_leader).base, &["cluster", "members"]);
    assert!(ok, "{err}");
    for id in dead {
        let row = out
            .lines()
            .find(|l| l.starts_with(&format!("{id} ")))
            .unwrap();
        assert!(row.trim_end().ends_with("NO"), "{out}");
    }

    for id in [leader, follower] {
        c.start(id);
    }
    for id in [leader, follower] {
        wait_holds(
            c.agent(id),
            "five",
            &acked,
            CATCH_UP,
            &format!("restarted {id}"),
        )
        .await;
        let installed = metric(c.agent(id), "muster_raft_snapshots_installed_total").await;
        assert!(
            installed >= 1.0,
            "restarted node {id} caught up without installing a snapshot"
        );
    }
    // The survivors never needed one.
    assert_eq!(
        metric(c.agent(new_leader), "muster_raft_snapshots_installed_total").await,
        0.0
    );
}

/// One Server-Sent Event: its type, `id:` (the index) and the instance it
/// names (`instance.id` of an upsert, `id` of a delete).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Event {
    event: String,
    index: u64,
    instance: Option<String>,
}

/// A minimal reader of `GET /v1/watch` on one node.
struct Watch {
    resp: reqwest::Response,
    buf: String,
}

impl Watch {
    async fn open(agent: &Agent, service: &str, last_id: Option<u64>) -> Watch {
        let mut req = http().get(agent.url(&format!("/v1/watch?service={service}")));
        if let Some(id) = last_id {
            req = req.header("Last-Event-ID", id.to_string());
        }
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status(), 200);
        Watch {
            resp,
            buf: String::new(),
        }
    }

    /// The next event, or `None` if none came by `deadline`.
    async fn next_by(&mut self, deadline: Instant) -> Option<Event> {
        loop {
            if let Some(end) = self.buf.find("\n\n") {
                let frame: String = self.buf.drain(..end + 2).collect();
                let (mut event, mut index, mut data) = (String::new(), 0, String::new());
                for line in frame.lines() {
                    if let Some(v) = line.strip_prefix("event:") {
                        event = v.trim().to_string();
                    } else if let Some(v) = line.strip_prefix("id:") {
                        index = v.trim().parse().unwrap();
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data.push_str(v.trim_start());
                    }
                }
                if event.is_empty() {
                    continue; // a keep-alive comment
                }
                let data: Value = serde_json::from_str(&data).unwrap();
                let instance = data["instance"]["id"]
                    .as_str()
                    .or(data["id"].as_str())
                    .map(str::to_string);
                return Some(Event {
                    event,
                    index,
                    instance,
                });
            }
            let chunk = tokio::time::timeout_at(deadline, self.resp.chunk())
                .await
                .ok()?;
            let chunk = chunk.expect("the watch failed").expect("the watch ended");
            self.buf.push_str(std::str::from_utf8(&chunk).unwrap());
        }
    }

    /// Whether the server ended the stream by `deadline` (reading past
    /// any events still coming).
    async fn ended_by(&mut self, deadline: Instant) -> bool {
        loop {
            match tokio::time::timeout_at(deadline, self.resp.chunk()).await {
                Err(_) => return false,
                Ok(Ok(None)) => return true,
                Ok(Ok(Some(_))) => {}
                Ok(Err(e)) => panic!("the watch failed: {e}"),
            }
        }
    }

    /// Events until one matches `want`, that one included; panics at
    /// `deadline`.
    async fn until(&mut self, deadline: Instant, want: impl Fn(&Event) -> bool) -> Vec<Event> {
        let mut seen = Vec::new();
        loop {
            let Some(e) = self.next_by(deadline).await else {
                panic!("the awaited event did not come; saw {seen:?}");
            };
            let done = want(&e);
            seen.push(e);
            if done {
                return seen;
            }
        }
    }
}

/// The PUT of an instance with its own lease of `ttl`.
async fn register_leased(base: &str, svc: &str, id: &str, ttl: &str) {
    let r = http()
        .put(format!("{base}/v1/services/{svc}/instances/{id}"))
        .json(&json!({"address": "10.0.0.1", "port": 8080, "ttl": ttl}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
}

/// A client heartbeating `id` to `base` every `every` until aborted; a
/// heartbeat that fails (an election) is tried again at the next beat.
fn heartbeat(
    base: String,
    svc: &'static str,
    id: &'static str,
    every: Duration,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let client = http();
        let url = format!("{base}/v1/services/{svc}/instances/{id}/heartbeat");
        loop {
            let _ = client.put(&url).timeout(every * 4).send().await;
            // The client's own cadence, not a wait for state.
            tokio::time::sleep(every).await;
        }
    })
}

/// On a follower that stays up, across the leader's `kill -9`: the
/// instance whose client keeps heartbeating to it survives; the one whose
/// client died with the leader expires within its TTL plus the election;
/// a watch opened before the kill sees every change after it, in index
/// order, and a watch resumed on another node from the last index seen
/// before the kill gets the same changes; a blocking query opened before
/// the kill answers the first write after it; health checks run on the
/// new leader.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_watches_and_blocking_queries_on_a_follower_survive_a_leader_change() {
    const TTL: Duration = Duration::from_secs(3);
    let mut c = Cluster::new(3);
    for id in shuffled(vec![1, 2, 3], seed()) {
        c.start(id);
    }
    let leader = c.leader(None).await;
    let up = c.up();
    let others: Vec<u64> = up.iter().copied().filter(|id| *id != leader).collect();
    let (follower, other) = (others[0], others[1]);
    let fbase = c.agent(follower).base.clone();

    let mut watch = Watch::open(c.agent(follower), "leased", None).await;
    let start = Instant::now() + FORM;
    let snapshot = watch.until(start, |e| e.event == "snapshot").await;
    println!("watch on follower {follower} from {snapshot:?}");
    register_leased(&fbase, "leased", "kept", "3s").await;
    register_leased(&fbase, "leased", "orphan", "3s").await;
    let kept = heartbeat(fbase.clone(), "leased", "kept", Duration::from_millis(500));
    let orphan = heartbeat(
        fbase.clone(),
        "leased",
        "orphan",
        Duration::from_millis(500),
    );
    let before = watch
        .until(start, |e| e.instance.as_deref() == Some("orphan"))
        .await;
    let last_before = before.last().unwrap().index;

    // An instance with a TCP check the leader runs every second, against a
    // port that accepts (the kernel's backlog) until it is closed.
    let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let probe_addr = probe.local_addr().unwrap().to_string();
    let r = http()
        .put(format!("{fbase}/v1/services/probed/instances/p1"))
        .json(&json!({"address": "127.0.0.1", "port": 1,
            "checks": [{"tcp": probe_addr, "interval": "1s"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    let mut probed = Watch::open(c.agent(other), "probed", None).await;
    probed
        .until(Instant::now() + FORM, |e| {
            e.event == "upsert" && e.instance.as_deref() == Some("p1")
        })
        .await;

    // A blocking query on the follower, at the index it answers now.
    let r = http()
        .get(c.agent(follower).url("/v1/services/later/instances"))
        .send()
        .await
        .unwrap();
    let index: u64 = r.headers()["x-muster-index"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let blocking = tokio::spawn(
        http()
            .get(c.agent(follower).url(&format!(
                "/v1/services/later/instances?index={index}&wait=60s"
            )))
            .send(),
    );

    // The leader dies, and with it the orphan's client.
    orphan.abort();
    c.kill9(leader);
    let killed = Instant::now();
    let new_leader = c.leader(Some(leader)).await;
    let election = killed.elapsed();
    println!("new leader {new_leader} after {election:?}");

    // Checks run on the new leader: the port closes, and within an
    // interval (plus the run's timeout) the instance leaves the passing
    // answers.
    drop(probe);
    let closed = Instant::now();
    probed
        .until(closed + FORM, |e| {
            e.event == "delete" && e.instance.as_deref() == Some("p1")
        })
        .await;
    println!(
        "the new leader's check found the port closed after {:?}",
        closed.elapsed()
    );

    // Changes after the kill, through both survivors.
    register_leased(&fbase, "later", "l1", "30s").await;
    for (i, id) in ["a1", "a2", "a3", "a4"].iter().enumerate() {
        let base = &c.agent(if i % 2 == 0 { follower } else { other }).base;
        assert!(register(&http(), base, "leased", id).await, "write {id}");
    }
    let r = blocking.await.unwrap().unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["instances"][0]["id"], "l1", "{v}");

    // The orphan expires: not before a full TTL from the new leader's
    // start, and within TTL + the election (+1 s for a loaded machine).
    let after = watch
        .until(killed + TTL + FORM, |e| {
            e.event == "delete" && e.instance.as_deref() == Some("orphan")
        })
        .await;
    let expired = killed.elapsed();
    println!("orphan expired {expired:?} after the kill");
    assert!(expired >= TTL, "expired after {expired:?}, within its TTL");
    assert!(
        expired <= TTL + election + Duration::from_secs(1),
        "expired {expired:?} after the kill (TTL {TTL:?}, election {election:?})"
    );
    // Every write after the kill reached the watch, in index order, and
    // the kept instance was never deleted.
    let mut changes = after.clone();
    for id in ["a1", "a2", "a3", "a4"] {
        if !changes.iter().any(|e| e.instance.as_deref() == Some(id)) {
            changes.extend(
                watch
                    .until(Instant::now() + CATCH_UP, |e| {
                        e.instance.as_deref() == Some(id)
                    })
                    .await,
            );
        }
    }
    assert!(
        changes.windows(2).all(|w| w[0].index < w[1].index),
        "{changes:?}"
    );
    // Another full TTL with the kept instance's client still beating: no
    // deletion of it comes.
    let quiet_until = Instant::now() + TTL;
    while let Some(e) = watch.next_by(quiet_until).await {
        assert_ne!(e.instance.as_deref(), Some("kept"), "{e:?}");
        changes.push(e);
    }
    assert!(
        !changes
            .iter()
            .any(|e| e.instance.as_deref() == Some("kept")),
        "{changes:?}"
    );
    for id in [follower, other] {
        let have = ids(c.agent(id), "leased").await.unwrap();
        assert!(
            have.contains("kept") && !have.contains("orphan"),
            "node {id}: {have:?}"
        );
    }
    kept.abort();

    // A watcher that resumes on the other survivor from the last index it
    // saw before the kill gets exactly the changes the follower's watch
    // got after it.
    let mut resumed = Watch::open(c.agent(other), "leased", Some(last_before)).await;
    let last = changes.last().unwrap().index;
    let got = resumed
        .until(Instant::now() + CATCH_UP, |e| e.index >= last)
        .await;
    let strip = |v: &[Event]| -> Vec<(String, Option<String>)> {
        v.iter()
            .filter(|e| e.event == "upsert" || e.event == "delete")
            .map(|e| (e.event.clone(), e.instance.clone()))
            .collect()
    };
    assert_eq!(strip(&got), strip(&changes));

    // Alone (a minority of one), the follower still reads its applied
    // state, but refuses a consistent read.
    c.kill9(other);
    let url = c
        .agent(follower)
        .url("/v1/services/leased/instances?health=any");
    assert_eq!(http().get(&url).send().await.unwrap().status(), 200);
    // Every read that takes `?consistent` refuses it (asked at once: each
    // waits for a leader before it gives up).
    let refused = |url: String| async move {
        let r = http().get(url).timeout(FORM).send().await.unwrap();
        (r.status(), r.text().await.unwrap())
    };
    let agent = c.agent(follower);
    let answers = tokio::join!(
        refused(format!("{url}&consistent")),
        refused(agent.url("/v1/services?consistent")),
        refused(agent.url("/v1/services/leased/instances/kept?consistent")),
    );
    for (status, body) in [answers.0, answers.1, answers.2] {
        assert_eq!(status, 503, "{body}");
        assert!(body.contains("not_leader"), "{body}");
    }
}

/// Polls `/v1/cluster` on `agent` until its voters are `want`.
pub(crate) async fn wait_voters(agent: &Agent, want: &[u64]) {
    let deadline = Instant::now() + FORM;
    loop {
        let v = cluster_info(agent).await;
        let voters: Option<Vec<u64>> = v.as_ref().and_then(|v| {
            v["members"]
                .as_array()
                .map(|m| m.iter().filter_map(Value::as_u64).collect())
        });
        if voters.as_deref() == Some(want) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "voters {voters:?}, not {want:?}, after {FORM:?}"
        );
        tokio::time::sleep(POLL).await;
    }
}

/// Whether `v` is the `503 node_removed` answer of removed node `gone`.
fn says_removed(v: &Value, gone: u64) -> bool {
    v["error"]["code"] == "node_removed"
        && v["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains(&format!("node {gone} was removed")))
}

/// Sends `req` to removed node `gone`: it must answer `503 node_removed`.
async fn assert_refused_as_removed(req: reqwest::RequestBuilder, gone: u64) {
    let r = req.send().await.unwrap();
    assert_eq!(r.status(), 503);
    let v: Value = r.json().await.unwrap();
    assert!(says_removed(&v, gone), "{v}");
}

/// Under writes from four clients: a 4th node started with `--join` is
/// added through a follower and becomes a voter; a follower is removed
/// (through the new node) and its id is refused for good; leadership moves
/// to the new node on request, and the leader cannot remove itself. No
/// acknowledged write is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_leave_and_transfer_leader_under_writes_lose_no_acknowledged_write() {
    let mut c = Cluster::new(4);
    c.initial = 3;
    for id in shuffled(vec![1, 2, 3], seed()) {
        c.start(id);
    }
    let leader = c.leader(None).await;

    let writers = Writers::start(c.bases(), "churn");
    let acks = || writers.count();

    // Join node 4 through a follower.
    c.start(4);
    let follower = *c
        .up()
        .iter()
        .find(|id| **id != leader && **id != 4)
        .unwrap();
    let (ok, out, err) = cli(
        &c.agent(follower).base,
        &["cluster", "join", "4", &c.cluster_addr(4)],
    );
    assert!(ok, "join: {err}");
    assert!(out.lines().any(|l| l.starts_with("4 ")), "{out}");
    wait_voters(c.agent(leader), &[1, 2, 3, 4]).await;
    println!("node 4 joined after {} acknowledged writes", acks());
    // Asking again is safe (a retried join); the same id elsewhere, or
    // another id at its address, is refused and changes nothing.
    let (ok, _, err) = cli(
        &c.agent(leader).base,
        &["cluster", "join", "4", &c.cluster_addr(4)],
    );
    assert!(ok, "join again: {err}");
    let (ok, _, err) = cli(&c.agent(4).base, &["cluster", "join", "4", "127.0.0.1:1"]);
    assert!(!ok && err.contains("already a member"), "{err}");
    let (ok, _, err) = cli(
        &c.agent(follower).base,
        &["cluster", "join", "9", &c.cluster_addr(4)],
    );
    assert!(!ok && err.contains("node 4 is already at"), "{err}");
    wait_voters(c.agent(leader), &[1, 2, 3, 4]).await;

    // Remove a follower other than node 4, asked of node 4.
    let gone = *c
        .up()
        .iter()
        .find(|id| **id != leader && **id != 4)
        .unwrap();
    let mut gone_watch = Watch::open(c.agent(gone), "churn", None).await;
    let (ok, _, err) = cli(&c.agent(4).base, &["cluster", "leave", &gone.to_string()]);
    assert!(ok, "leave {gone}: {err}");
    let mut voters: Vec<u64> = vec![1, 2, 3, 4];
    voters.retain(|id| *id != gone);
    wait_voters(c.agent(leader), &voters).await;
    // The removed node gets no more of the log: once it applied its own
    // retirement it ends its watches and refuses reads and writes with
    // 503, which sends clients on to another member, instead of serving
    // a state that only ages (or holding writes 5 s for an apply that
    // never comes).
    assert!(
        gone_watch.ended_by(Instant::now() + CATCH_UP).await,
        "a watch on removed node {gone} did not end"
    );
    for req in [
        http().get(c.agent(gone).url("/v1/services/churn/instances")),
        http()
            .put(
                c.agent(gone)
                    .url("/v1/services/churn/instances/after-removal"),
            )
            .json(&json!({"address": "10.0.0.1", "port": 80})),
        http().get(c.agent(gone).url("/v1/cluster")),
        http().get(c.agent(gone).url("/healthz")),
    ] {
        assert_refused_as_removed(req, gone).await;
    }
    // Killed and started again on its data, it is still removed, and says
    // so: told no commit index any more, it may not apply its retirement
    // again, so its store keeps the fact (this failed 1 run in 8 on a
    // loaded machine while the node relied on re-applying it).
    c.kill9(gone);
    c.start(gone);
    let req = http().get(c.agent(gone).url("/v1/services/churn/instances"));
    assert_refused_as_removed(req, gone).await;
    c.kill9(gone);
    // Its id is never reused, whatever the address.
    let (ok, _, err) = cli(
        &c.agent(leader).base,
        &["cluster", "join", &gone.to_string(), &c.cluster_addr(gone)],
    );
    assert!(!ok && err.contains("never reused"), "{err}");
    let r = http()
        .post(c.agent(4).url("/v1/cluster/members"))
        .json(&json!({"id": gone, "cluster_addr": "127.0.0.1:1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 409);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "membership_refused", "{v}");
    println!("node {gone} removed after {} acknowledged writes", acks());

    // Leadership moves to node 4, asked of a follower; then node 4 cannot
    // remove itself.
    let asked = *c
        .up()
        .iter()
        .find(|id| **id != leader && **id != 4)
        .unwrap_or(&leader);
    let (ok, _, err) = cli(&c.agent(asked).base, &["cluster", "transfer-leader", "4"]);
    assert!(ok, "transfer-leader: {err}");
    assert_eq!(c.leader(None).await, 4);
    let (ok, _, err) = cli(&c.agent(leader).base, &["cluster", "leave", "4"]);
    assert!(!ok && err.contains("leads"), "{err}");
    println!("leadership on node 4 after {} acknowledged writes", acks());
    // Without a target, leadership moves to another voter.
    let (ok, _, err) = cli(&c.agent(4).base, &["cluster", "transfer-leader"]);
    assert!(ok, "transfer-leader without a target: {err}");
    let moved = c.leader(Some(4)).await;
    assert!(voters.contains(&moved), "{moved} is not one of {voters:?}");
    let at_transfer = acks();
    println!("leadership on node {moved} after {at_transfer} acknowledged writes");

    // Writes go on after the transfer, then every acknowledged write is on
    // every member.
    writers
        .wait_for(at_transfer + 100, "writes after the transfer")
        .await;
    let acked = writers.stop().await;
    for id in c.up() {
        wait_holds(
            c.agent(id),
            "churn",
            &acked,
            CATCH_UP,
            &format!("node {id}"),
        )
        .await;
    }
}

/// The "replace a dead node" mistake: a follower is removed while it is
/// down, then started again on its old data. It never applied its
/// retirement nor received the membership that left it out; its first
/// call to a member tells it (the member refuses it: "removed"), from then
/// on it answers 503 `node_removed` like any removed node, and keeps
/// saying so after a restart. The members' leader and writes go on
/// undisturbed. Last, a member asked to remove itself answers that call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_removed_while_down_learns_it_when_started_again_on_its_old_data() {
    let mut c = Cluster::new(3);
    for id in shuffled(vec![1, 2, 3], seed()) {
        c.start(id);
    }
    let leader = c.leader(None).await;
    let gone = *c.up().iter().find(|id| **id != leader).unwrap();
    let before = write_all(&c.bases(), "replaced", "before", 20).await;
    wait_holds(c.agent(gone), "replaced", &before, CATCH_UP, "the follower").await;

    c.kill9(gone);
    let (ok, _, err) = cli(
        &c.agent(leader).base,
        &["cluster", "leave", &gone.to_string()],
    );
    assert!(ok, "leave {gone} while it is down: {err}");
    let mut voters = vec![1, 2, 3];
    voters.retain(|id| *id != gone);
    wait_voters(c.agent(leader), &voters).await;

    // Started again on its old data: it serves until its first call to a
    // member (at start-up, or its first election at the latest), then
    // knows it was removed. Waited on as an event: a watch opened on it
    // is refused if it knows already, else ends when it learns.
    c.start(gone);
    let watch = http()
        .get(c.agent(gone).url("/v1/watch?service=replaced"))
        .send()
        .await
        .unwrap();
    if watch.status() == 200 {
        let mut watch = Watch {
            resp: watch,
            buf: String::new(),
        };
        assert!(
            watch.ended_by(Instant::now() + FORM).await,
            "node {gone}, removed while down, still serves a watch after {FORM:?}"
        );
    } else {
        assert_eq!(watch.status(), 503);
        let v: Value = watch.json().await.unwrap();
        assert!(says_removed(&v, gone), "{v}");
    }
    assert_refused_as_removed(http().get(c.agent(gone).url("/healthz")), gone).await;
    for req in [
        http().get(c.agent(gone).url("/v1/services/replaced/instances")),
        http()
            .put(c.agent(gone).url("/v1/services/replaced/instances/late"))
            .json(&json!({"address": "10.0.0.1", "port": 80})),
    ] {
        assert_refused_as_removed(req, gone).await;
    }

    // The members kept their leader and take writes; the write sent to
    // the removed node was not applied.
    let others: Vec<String> = voters.iter().map(|id| c.agent(*id).base.clone()).collect();
    let after = write_all(&others, "replaced", "after", 20).await;
    for id in &voters {
        let who = format!("node {id}");
        let v = cluster_info(c.agent(*id)).await.unwrap();
        assert_eq!(v["leader"], leader, "{who}: {v}");
        wait_holds(c.agent(*id), "replaced", &after, CATCH_UP, &who).await;
        let have = ids(c.agent(*id), "replaced").await.unwrap();
        assert!(
            !have.contains("late"),
            "{who} applied a write sent to the removed node"
        );
    }

    // What it was told is kept: started again, it refuses at once.
    c.kill9(gone);
    c.start(gone);
    assert_refused_as_removed(http().get(c.agent(gone).url("/healthz")), gone).await;
    c.kill9(gone);

    // A member asked to remove itself answers that call (with its last
    // view of the cluster), though it refuses everything after.
    let other = *voters.iter().find(|id| **id != leader).unwrap();
    let (ok, out, err) = cli(
        &c.agent(other).base,
        &["cluster", "leave", &other.to_string()],
    );
    assert!(ok, "leave {other} asked of node {other}: {err}");
    assert!(out.contains(&format!("as node {other} sees it")), "{out}");
    wait_voters(c.agent(leader), &[leader]).await;
}

/// `muster snapshot inspect --json FILE`: the backup's header.
fn inspect(base: &str, file: &Path) -> Value {
    let (ok, out, err) = cli(
        base,
        &["--json", "snapshot", "inspect", file.to_str().unwrap()],
    );
    assert!(ok, "inspect failed: {err}");
    serde_json::from_str(out.trim()).unwrap()
}

/// Polls until `agent`'s ids of `svc` are exactly `want`.
async fn wait_exactly(agent: &Agent, svc: &str, want: &HashSet<String>, who: &str) {
    wait_ids(agent, svc, CATCH_UP, |have| {
        (have != want).then(|| {
            format!(
                "{who} holds {} ids of {svc}, not the {} restored (extra e.g. {:?})",
                have.len(),
                want.len(),
                have.difference(want).take(3).collect::<Vec<_>>()
            )
        })
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_saved_under_writes_restores_into_a_fresh_node_and_a_running_cluster() {
    let mut c = Cluster::new(3);
    for id in shuffled(vec![1, 2, 3], seed()) {
        c.start(id);
    }
    let leader = c.leader(None).await;
    let follower = c.up().into_iter().find(|id| *id != leader).unwrap();
    let writers = Writers::start(c.bases(), "storm");
    writers.wait_for(150, "writes before the save").await;

    // Saved from a follower while four clients write.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("backup.msnap");
    let before_save = writers.acked_now();
    let (ok, out, err) = cli(
        &c.agent(follower).base,
        &["snapshot", "save", file.to_str().unwrap()],
    );
    assert!(ok, "save failed: {out} {err}");
    assert!(
        err.is_empty(),
        "no progress noise when stderr is not a terminal: {err}"
    );
    writers
        .wait_for(before_save.len() + 50, "writes after the save")
        .await;
    writers.stop().await;
    let header = inspect(&c.agent(follower).base, &file);
    let (index, instances) = (
        header["index"].as_u64().unwrap(),
        header["instances"].as_u64().unwrap(),
    );
    println!("backup at index {index}: {instances} instances");
    assert!(instances as usize >= before_save.len());
    let leftovers: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert_eq!(leftovers.len(), 1, "only the backup, no temporary file");

    // Restored into a fresh node: every write acknowledged before the save.
    let fresh_dir = tempfile::tempdir().unwrap();
    let fresh = Agent::spawn(fresh_dir.path());
    let (ok, out, err) = cli(
        &fresh.base,
        &["snapshot", "restore", "--progress", file.to_str().unwrap()],
    );
    assert!(ok, "restore failed: {out} {err}");
    // Asked for, progress ends each of its lines (checking the file, then
    // sending it) with where the work ended.
    let finals: Vec<&str> = err
        .lines()
        .map(|l| l.rsplit('\r').next().unwrap_or(l).trim_end())
        .filter(|l| !l.is_empty())
        .collect();
    assert_eq!(finals.len(), 2, "{err:?}");
    assert!(finals[0].starts_with("checking: "), "{err:?}");
    assert!(
        finals[1].starts_with(&format!("restoring {instances} instances: ")),
        "{err:?}"
    );
    assert!(finals.iter().all(|l| l.ends_with("(100%)")), "{err:?}");
    wait_holds(&fresh, "storm", &before_save, CATCH_UP, "the fresh node").await;
    let restored = ids(&fresh, "storm").await.unwrap();
    assert_eq!(
        restored.len() as u64,
        instances,
        "exactly the backup's instances"
    );
    let one = fresh
        .get_json(&format!("/v1/services/storm/instances/{}", before_save[0]))
        .await;
    assert_eq!(
        (one["address"].as_str(), one["port"].as_u64()),
        (Some("10.0.0.1"), Some(8080))
    );

    // A flipped byte and a truncated file are refused and change nothing.
    let bytes = std::fs::read(&file).unwrap();
    let mut flipped = bytes.clone();
    let at = bytes.len() / 2;
    flipped[at] ^= 0x01;
    let bad = dir.path().join("flipped.msnap");
    std::fs::write(&bad, &flipped).unwrap();
    let short = dir.path().join("short.msnap");
    std::fs::write(&short, &bytes[..bytes.len() * 2 / 3]).unwrap();
    assert!(register(&http(), &fresh.base, "storm", "after-restore").await);
    let index_before = fresh.get_json("/v1/cluster").await["applied_index"]
        .as_u64()
        .unwrap();
    for (path, why) in [(&bad, "checksum does not match"), (&short, "truncated")] {
        let (ok, _, err) = cli(
            &fresh.base,
            &["snapshot", "restore", path.to_str().unwrap()],
        );
        assert!(!ok && err.contains(why), "{}: {err}", path.display());
        // The server checks too, whatever the client did.
        let r = http()
            .post(fresh.url("/v1/snapshot/restore"))
            .body(std::fs::read(path).unwrap())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400);
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["error"]["code"], "invalid_backup", "{body}");
    }
    let mut with_extra = restored.clone();
    with_extra.insert("after-restore".into());
    assert_eq!(ids(&fresh, "storm").await.unwrap(), with_extra);
    let index_after = fresh.get_json("/v1/cluster").await["applied_index"]
        .as_u64()
        .unwrap();
    assert_eq!(
        index_before, index_after,
        "a refused restore writes nothing"
    );

    // Restored into the running cluster through a follower (forwarded to
    // the leader), with a watch open across it on another node.
    let bases = c.bases();
    let extra = write_all(&bases, "storm", "extra", 8).await;
    let watcher = c.up().into_iter().find(|id| *id != follower).unwrap();
    let mut watch = Watch::open(c.agent(watcher), "storm", None).await;
    let deadline = Instant::now() + CATCH_UP;
    watch.until(deadline, |e| e.event == "snapshot").await;
    let (ok, out, err) = cli(
        &c.agent(follower).base,
        &["snapshot", "restore", file.to_str().unwrap()],
    );
    assert!(ok, "restore through a follower failed: {out} {err}");
    for id in c.up() {
        wait_exactly(c.agent(id), "storm", &restored, &format!("node {id}")).await;
    }
    // The watcher gets the difference, at one index: the extras deleted.
    let mut deleted = HashSet::new();
    let mut at = BTreeSet::new();
    while deleted.len() < extra.len() {
        let e = watch
            .until(deadline, |e| e.event == "delete")
            .await
            .pop()
            .unwrap();
        at.insert(e.index);
        deleted.insert(e.instance.unwrap());
    }
    assert_eq!(deleted, extra.into_iter().collect::<HashSet<_>>());
    assert_eq!(
        at.len(),
        1,
        "every change of the restore at one index: {at:?}"
    );
}

/// `muster --json acl …` through node `base`, with `token`; its JSON.
fn acl_cli(base: &str, token: Option<&str>, args: &[&str]) -> Value {
    let mut all = vec!["--json"];
    if let Some(t) = token {
        all.extend(["--token", t]);
    }
    all.push("acl");
    all.extend(args);
    let (ok, out, err) = cli(base, &all);
    assert!(ok, "muster acl {args:?} failed: {err}");
    serde_json::from_str(out.trim()).unwrap_or(Value::Null)
}

/// A `?consistent` read through `base`: once it answers, that node applied
/// everything committed before it was asked.
async fn caught_up(base: &str, token: &str) {
    let r = http()
        .get(format!("{base}/v1/services?consistent"))
        .bearer_auth(token)
        .timeout(Duration::from_secs(15))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
}

async fn put_as(base: &str, token: &str, svc: &str, id: &str) -> u16 {
    http()
        .put(format!("{base}/v1/services/{svc}/instances/{id}"))
        .bearer_auth(token)
        .json(&json!({"address": "10.0.0.1", "port": 8080}))
        .timeout(Duration::from_secs(15))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acl_tokens_made_on_one_node_are_enforced_and_revoked_on_every_node() {
    let mut c = Cluster::new(3);
    c.args = vec!["--acl".into()];
    for id in 1..=3 {
        c.start(id);
    }
    let leader = c.leader(None).await;
    let followers: Vec<u64> = (1..=3).filter(|id| *id != leader).collect();
    let bases: Vec<String> = (1..=3).map(|id| c.agent(id).base.clone()).collect();
    let (f1, f2) = (
        c.agent(followers[0]).base.clone(),
        c.agent(followers[1]).base.clone(),
    );

    // Bootstrap on one follower, once for the whole cluster.
    let boot = acl_cli(&f1, None, &["bootstrap"]);
    let mgmt = boot["secret"].as_str().unwrap().to_string();
    let (ok, _, err) = cli(&f2, &["acl", "bootstrap"]);
    assert!(!ok && err.contains("already bootstrapped"), "{err}");

    // A policy and a token made through the other follower.
    acl_cli(
        &f2,
        Some(&mgmt),
        &["policy", "create", "payments-write", "--write", "payments"],
    );
    let t = acl_cli(
        &f2,
        Some(&mgmt),
        &["token", "create", "--policy", "payments-write"],
    );
    let (secret, accessor) = (
        t["secret"].as_str().unwrap().to_string(),
        t["accessor"].as_str().unwrap().to_string(),
    );
    for (i, base) in bases.iter().enumerate() {
        caught_up(base, &mgmt).await;
        assert_eq!(
            put_as(base, &secret, "payments", &format!("p{i}")).await,
            200,
            "node {}",
            i + 1
        );
        assert_eq!(
            put_as(base, &secret, "orders", &format!("o{i}")).await,
            403,
            "node {}",
            i + 1
        );
        assert_eq!(put_as(base, "not-a-token", "payments", "x").await, 401);
    }

    // Revoked through the leader: refused by every node once it applied
    // the revoke, whichever node is asked.
    acl_cli(
        &bases[(leader - 1) as usize],
        Some(&mgmt),
        &["token", "revoke", &accessor],
    );
    for (i, base) in bases.iter().enumerate() {
        caught_up(base, &mgmt).await;
        assert_eq!(
            put_as(base, &secret, "payments", "late").await,
            401,
            "node {}",
            i + 1
        );
    }
    // The list names the token no more; no secret is ever listed.
    let list = acl_cli(&f1, Some(&mgmt), &["token", "list"]);
    assert!(!list.to_string().contains(&accessor), "{list}");
    assert!(!list.to_string().contains(&mgmt), "{list}");
}

/// A follower answers renewals itself while it hears from the leader and
/// passes them on in batches: the lease heartbeated only through it lives
/// on the leader past many TTLs, while its neighbour, not heartbeated,
/// expires; once its client stops, it expires too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewals_a_follower_answers_itself_keep_the_lease_alive_on_the_leader() {
    let mut c = Cluster::new(3);
    for id in 1..=3 {
        c.start(id);
    }
    let leader = c.leader(None).await;
    let follower = (1..=3).find(|id| *id != leader).unwrap();
    let fbase = c.agent(follower).base.clone();
    register_leased(&fbase, "passed", "kept", "1s").await;
    register_leased(&fbase, "passed", "dropped", "1s").await;
    let started = Instant::now();
    let kept = heartbeat(fbase.clone(), "passed", "kept", Duration::from_millis(200));
    // On the leader: the one without heartbeats expires...
    wait_ids(c.agent(leader), "passed", Duration::from_secs(15), |have| {
        (have.contains("dropped") || !have.contains("kept"))
            .then(|| format!("the leader holds {have:?}"))
    })
    .await;
    // ...and the one heartbeated through the follower is still there, past
    // its TTL several times over by now.
    let mut held = Duration::ZERO;
    while held < Duration::from_secs(3) {
        let have = ids(c.agent(leader), "passed").await.unwrap();
        assert!(
            have.contains("kept"),
            "kept expired on the leader after {held:?}"
        );
        tokio::time::sleep(POLL).await;
        held = started.elapsed();
    }
    let passed_on = metric(c.agent(follower), "muster_raft_renewals_passed_on_total").await;
    assert!(
        passed_on >= 5.0,
        "the follower answered {passed_on} renewals itself"
    );
    kept.abort();
    wait_ids(c.agent(leader), "passed", Duration::from_secs(15), |have| {
        have.contains("kept")
            .then(|| "kept outlived its client on the leader".to_string())
    })
    .await;
}
