//! A cluster of three real `muster agent` processes on loopback: formed
//! from static peers started in a random order, writes taken by any node,
//! and `kill -9` of the leader under writes from several clients.
//!
//! Cluster state has no event a test can subscribe to from outside the
//! processes, so these tests poll `/v1/cluster` and reads with a deadline.

use std::collections::{BTreeSet, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::time::Instant;

use crate::harness::{Agent, cli, http};

/// How long a cluster may take to form or to elect a new leader on a
/// loaded machine.
const FORM: Duration = Duration::from_secs(30);
/// How long a surviving or restarted node may take to hold every write.
const CATCH_UP: Duration = Duration::from_secs(30);
/// Between two polls of an API.
const POLL: Duration = Duration::from_millis(100);

/// Free loopback ports for the cluster listeners (bound, then released
/// for the agent to bind).
fn free_ports(n: usize) -> Vec<u16> {
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

/// Three nodes' settings: ids 1..=3, their data dirs and cluster ports.
struct Cluster {
    dirs: Vec<tempfile::TempDir>,
    ports: Vec<u16>,
    /// Indexed by node id - 1; `None` while a node is down.
    agents: Vec<Option<Agent>>,
}

impl Cluster {
    fn new(n: usize) -> Cluster {
        Cluster {
            dirs: (0..n).map(|_| tempfile::tempdir().unwrap()).collect(),
            ports: free_ports(n),
            agents: (0..n).map(|_| None).collect(),
        }
    }

    fn peers(&self) -> String {
        let peers: Vec<String> = self
            .ports
            .iter()
            .enumerate()
            .map(|(i, p)| format!("{}=127.0.0.1:{p}", i + 1))
            .collect();
        peers.join(",")
    }

    fn start(&mut self, id: u64) {
        let i = (id - 1) as usize;
        let (id_s, peers) = (id.to_string(), self.peers());
        let cluster_addr = format!("127.0.0.1:{}", self.ports[i]);
        let data: &Path = self.dirs[i].path();
        let agent = Agent::spawn_with(
            data,
            &[
                "--node-id",
                &id_s,
                "--peers",
                &peers,
                "--cluster-addr",
                &cluster_addr,
            ],
            &[],
        );
        self.agents[i] = Some(agent);
    }

    fn agent(&self, id: u64) -> &Agent {
        self.agents[(id - 1) as usize].as_ref().expect("node is up")
    }

    fn up(&self) -> Vec<u64> {
        (1..=self.agents.len() as u64)
            .filter(|id| self.agents[(*id - 1) as usize].is_some())
            .collect()
    }

    fn kill9(&mut self, id: u64) {
        self.agents[(id - 1) as usize].take().unwrap().kill9();
    }

    /// Polls `/v1/cluster` on every running node until all of them name
    /// the same leader, one of them, that says it leads; returns it.
    async fn leader(&self, not: Option<u64>) -> u64 {
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

async fn cluster_info(agent: &Agent) -> Option<Value> {
    let r = http().get(agent.url("/v1/cluster")).send().await.ok()?;
    r.json().await.ok()
}

/// Registers `id` of service `svc` through `agent`; `true` if acknowledged.
async fn register(client: &reqwest::Client, base: &str, svc: &str, id: &str) -> bool {
    let r = client
        .put(format!("{base}/v1/services/{svc}/instances/{id}"))
        .json(&json!({"address": "10.0.0.1", "port": 8080}))
        .timeout(Duration::from_secs(15))
        .send()
        .await;
    matches!(r, Ok(r) if r.status() == 200)
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
async fn wait_holds(agent: &Agent, svc: &str, want: &[String], within: Duration, who: &str) {
    let deadline = Instant::now() + within;
    loop {
        let have = ids(agent, svc).await.unwrap_or_default();
        let missing: Vec<&String> = want.iter().filter(|id| !have.contains(*id)).collect();
        if missing.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{who} lacks {} of {} acknowledged writes after {within:?}, e.g. {:?}",
            missing.len(),
            want.len(),
            &missing[..missing.len().min(5)]
        );
        tokio::time::sleep(POLL).await;
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

    // Four clients, each writing through every node in turn; a write that
    // fails (its node died, an election) moves on to the next node.
    let bases: Vec<String> = c.up().iter().map(|id| c.agent(*id).base.clone()).collect();
    let acked: Arc<Mutex<Vec<String>>> = Arc::default();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut writers = Vec::new();
    for w in 0..4usize {
        let (bases, acked, stop) = (bases.clone(), acked.clone(), stop_rx.clone());
        writers.push(tokio::spawn(async move {
            let client = http();
            // Bounded: at most 5,000 writes per client.
            for n in 0..5_000usize {
                if *stop.borrow() {
                    return;
                }
                let id = format!("w{w}-{n}");
                let base = &bases[(w + n) % bases.len()];
                if register(&client, base, "storm", &id).await {
                    acked.lock().unwrap().push(id);
                }
            }
        }));
    }
    let count = |acked: &Arc<Mutex<Vec<String>>>| acked.lock().unwrap().len();
    let wait_count = |target: usize, what: &'static str| {
        let acked = acked.clone();
        async move {
            let deadline = Instant::now() + FORM;
            while count(&acked) < target {
                assert!(Instant::now() < deadline, "{what}: {} acks", count(&acked));
                tokio::time::sleep(POLL).await;
            }
        }
    };
    wait_count(200, "writes before the kill").await;
    println!(
        "killing leader {leader} after {} acknowledged writes",
        count(&acked)
    );
    c.kill9(leader);
    let at_kill = count(&acked);
    let new_leader = c.leader(Some(leader)).await;
    println!("new leader {new_leader}");
    wait_count(at_kill + 200, "writes after the kill").await;
    stop_tx.send_replace(true);
    for w in writers {
        w.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    println!("{} acknowledged writes", acked.len());
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
