//! The Rust runner of the clients' behavioural spec: every scenario of
//! `spec/client/*.toml` (format in `spec/client/README.md`) against a real
//! `muster agent` process, one test per file. The Python runner
//! (`python/tests/test_spec.py`) runs the same files.
//!
//! The agent binary is `$MUSTER_BIN`, or `muster` in this test's target
//! directory (`cargo nextest run --workspace` builds it; alone, run
//! `cargo build -p muster` first). A missing binary fails every scenario.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use muster_client::{
    Backoff, Balancer, Client, ConnectionState, Discovery, Error, HealthFilter, InstanceSpec,
    Registration, Strategy, Timeouts,
};
use muster_types::parse_duration;
use tempfile::TempDir;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::net::TcpListener;
use tokio::process::{Child, Command};
use tokio::time::Instant;

/// One test per scenario file; `every_scenario_file_has_a_test` keeps the
/// list and the folder equal.
macro_rules! scenarios {
    ($($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                run(stringify!($name)).await;
            }
        )*
        const SCENARIOS: &[&str] = &[$(stringify!($name)),*];
    };
}

scenarios!(
    bad_request_not_unavailable,
    balancer_distribution,
    connection_state,
    every_instance_ejected,
    lease_lost_reregisters,
    register_visible,
    registry_down_stale_then_error,
    renewal_past_many_ttls,
    restart_after_crash_fresh_again,
    restart_same_data_fresh_again,
    timeouts_and_retries,
    version_filter_trusts_server,
);

/// How often a `wait` or `hold` checks its observations.
const TICK: Duration = Duration::from_millis(10);

fn spec_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../spec/client")
}

#[test]
fn every_scenario_file_has_a_test() {
    let files: BTreeSet<String> = std::fs::read_dir(spec_dir())
        .expect("spec/client exists")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .map(|p| p.file_stem().unwrap().to_string_lossy().into_owned())
        .collect();
    let listed: BTreeSet<String> = SCENARIOS.iter().map(|s| s.to_string()).collect();
    assert_eq!(
        files, listed,
        "every spec/client/*.toml needs its name in the scenarios! list of tests/it/spec.rs"
    );
}

#[tokio::test]
#[should_panic(expected = "unknown step \"dance\"")]
async fn an_unknown_step_fails() {
    let t: toml::Table = r#"do = "dance""#.parse().unwrap();
    World::new().step(&Keys::new(&t, "test".into())).await;
}

#[tokio::test]
#[should_panic(expected = "unknown observation \"vibes\"")]
async fn an_unknown_observation_fails() {
    let t: toml::Table = r#"do = "expect"
look = "vibes""#
        .parse()
        .unwrap();
    World::new().step(&Keys::new(&t, "test".into())).await;
}

#[test]
#[should_panic(expected = "unknown keys [\"withn\"]")]
fn an_unknown_key_fails() {
    let t: toml::Table = r#"do = "wait"
withn = "1s""#
        .parse()
        .unwrap();
    let keys = Keys::new(&t, "test".into());
    keys.req_str("do");
    keys.done();
}

async fn run(name: &str) {
    let path = spec_dir().join(format!("{name}.toml"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
    let doc: toml::Table = text.parse().unwrap_or_else(|e| panic!("{path:?}: {e}"));
    let top = Keys::new(&doc, name.to_string());
    assert_eq!(
        top.req_str("name"),
        name,
        "a scenario's name is its file's stem"
    );
    top.str("about");
    let steps = top.array("step").expect("a scenario has steps");
    top.done();
    let mut world = World::new();
    for (n, step) in steps.iter().enumerate() {
        let table = step
            .as_table()
            .unwrap_or_else(|| panic!("{name}: step {} is not a table", n + 1));
        let keys = Keys::new(table, format!("{name}, step {}", n + 1));
        world.step(&keys).await;
        keys.done();
    }
    world.shutdown().await;
}

// --- reading the TOML, refusing what is not understood -----------------------

/// A table whose keys are consumed as they are read; [`Keys::done`] fails on
/// any key left unread, so a typo never passes silently.
struct Keys<'a> {
    table: &'a toml::Table,
    used: RefCell<BTreeSet<String>>,
    ctx: String,
}

impl<'a> Keys<'a> {
    fn new(table: &'a toml::Table, ctx: String) -> Self {
        Keys {
            table,
            used: RefCell::default(),
            ctx,
        }
    }

    fn get(&self, key: &str) -> Option<&'a toml::Value> {
        self.used.borrow_mut().insert(key.to_string());
        self.table.get(key)
    }

    fn fail(&self, msg: impl std::fmt::Display) -> ! {
        panic!("{}: {msg}", self.ctx)
    }

    fn str(&self, key: &str) -> Option<String> {
        self.get(key).map(|v| match v.as_str() {
            Some(s) => s.to_string(),
            None => self.fail(format!("`{key}` must be a string")),
        })
    }

    fn req_str(&self, key: &str) -> String {
        self.str(key)
            .unwrap_or_else(|| self.fail(format!("`{key}` is required")))
    }

    fn int(&self, key: &str) -> Option<i64> {
        self.get(key).map(|v| {
            v.as_integer()
                .unwrap_or_else(|| self.fail(format!("`{key}` must be an integer")))
        })
    }

    fn bool(&self, key: &str) -> Option<bool> {
        self.get(key).map(|v| {
            v.as_bool()
                .unwrap_or_else(|| self.fail(format!("`{key}` must be true or false")))
        })
    }

    fn dur(&self, key: &str) -> Option<Duration> {
        self.str(key)
            .map(|s| parse_duration(&s).unwrap_or_else(|e| self.fail(format!("`{key}`: {e}"))))
    }

    fn req_dur(&self, key: &str) -> Duration {
        self.dur(key)
            .unwrap_or_else(|| self.fail(format!("`{key}` is required")))
    }

    fn array(&self, key: &str) -> Option<&'a Vec<toml::Value>> {
        self.get(key).map(|v| {
            v.as_array()
                .unwrap_or_else(|| self.fail(format!("`{key}` must be an array")))
        })
    }

    fn strs(&self, key: &str) -> Option<Vec<String>> {
        self.array(key).map(|a| {
            a.iter()
                .map(|v| {
                    v.as_str()
                        .unwrap_or_else(|| self.fail(format!("`{key}` must hold strings")))
                        .to_string()
                })
                .collect()
        })
    }

    fn table(&self, key: &str) -> Option<Keys<'a>> {
        self.get(key).map(|v| match v.as_table() {
            Some(t) => Keys::new(t, format!("{}, `{key}`", self.ctx)),
            None => self.fail(format!("`{key}` must be a table")),
        })
    }

    /// The table's entries, every one of them taken as read.
    fn entries(&self) -> Vec<(&'a str, &'a toml::Value)> {
        let mut used = self.used.borrow_mut();
        self.table
            .iter()
            .map(|(k, v)| {
                used.insert(k.clone());
                (k.as_str(), v)
            })
            .collect()
    }

    fn done(&self) {
        let used = self.used.borrow();
        let unknown: Vec<&String> = self.table.keys().filter(|k| !used.contains(*k)).collect();
        if !unknown.is_empty() {
            self.fail(format!("unknown keys {unknown:?}"));
        }
    }
}

// --- the world a scenario acts on ----------------------------------------------

/// A `muster agent` process: the first start on a free port, later starts on
/// the same one.
struct Agent {
    bin: PathBuf,
    root: TempDir,
    generation: u32,
    port: Option<u16>,
    child: Option<Child>,
}

impl Agent {
    fn new() -> Self {
        let bin = match std::env::var_os("MUSTER_BIN") {
            Some(b) => PathBuf::from(b),
            None => {
                // <target>/debug/deps/it-<hash> -> <target>/debug/muster
                let exe = std::env::current_exe().expect("the test's own path");
                exe.parent()
                    .and_then(Path::parent)
                    .expect("a target directory")
                    .join(format!("muster{}", std::env::consts::EXE_SUFFIX))
            }
        };
        assert!(
            bin.is_file(),
            "no muster binary at {bin:?}: run `cargo build -p muster` or set MUSTER_BIN"
        );
        Agent {
            bin,
            root: tempfile::tempdir().unwrap(),
            generation: 0,
            port: None,
            child: None,
        }
    }

    fn base(&self) -> String {
        let port = self
            .port
            .expect("a client of the registry needs a start_registry step first");
        format!("http://127.0.0.1:{port}")
    }

    async fn start(&mut self, fresh: bool) {
        assert!(self.child.is_none(), "the registry is already running");
        if fresh {
            self.generation += 1;
        }
        let data = self.root.path().join(format!("data-{}", self.generation));
        let port = self.port.unwrap_or(0);
        let stderr = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.root.path().join("stderr.log"))
            .unwrap();
        let mut child = Command::new(&self.bin)
            .args(["agent", "--http-addr", &format!("127.0.0.1:{port}")])
            .arg("--data-dir")
            .arg(&data)
            .args(["--self-preservation-threshold", "1"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {:?}: {e}", self.bin));
        // The agent prints one line once it serves: wait for it, no sleeping.
        let mut line = String::new();
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let read = tokio::time::timeout(Duration::from_secs(30), out.read_line(&mut line)).await;
        let url = line.trim().strip_prefix("muster listening on ");
        let Some(url) = url.filter(|_| matches!(read, Ok(Ok(_)))) else {
            let _ = child.start_kill();
            let log = std::fs::read_to_string(self.root.path().join("stderr.log"));
            panic!(
                "muster did not start: {line:?}\n{}",
                log.unwrap_or_default()
            );
        };
        let got: u16 = url.rsplit(':').next().unwrap().parse().unwrap();
        assert!(port == 0 || got == port, "restarted on {got}, not {port}");
        self.port = Some(got);
        self.child = Some(child);
    }

    async fn stop(&mut self, signal: &str) {
        let mut child = self.child.take().expect("the registry is not running");
        match signal {
            "kill" => child.start_kill().unwrap(),
            "term" => {
                let pid = child.id().expect("a running child").to_string();
                let status = Command::new("kill")
                    .args(["-TERM", &pid])
                    .status()
                    .await
                    .unwrap();
                assert!(status.success(), "kill -TERM {pid}");
            }
            other => panic!("unknown signal {other:?} (term, kill)"),
        }
        tokio::time::timeout(Duration::from_secs(10), child.wait())
            .await
            .expect("the registry stops within 10 s")
            .unwrap();
    }
}

/// A registry that hangs: accepts connections, reads them, never answers.
struct SilentPeer {
    addr: String,
    connections: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl SilentPeer {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = format!("http://{}", listener.local_addr().unwrap());
        let connections = Arc::new(AtomicUsize::new(0));
        let count = connections.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut buf = [0u8; 4096];
                    while matches!(conn.read(&mut buf).await, Ok(n) if n > 0) {}
                });
            }
        });
        SilentPeer {
            addr,
            connections,
            task,
        }
    }
}

struct World {
    agent: Agent,
    peers: HashMap<String, SilentPeer>,
    clients: HashMap<String, Client>,
    registrations: HashMap<(String, String, String), Registration>,
    balancers: HashMap<String, Balancer>,
}

/// The spec's name for an error (`spec/client/README.md`, "Error kinds").
fn kind(e: &Error) -> String {
    match e {
        Error::Api {
            status: 400 | 413 | 414 | 422,
            ..
        } => "bad_request".into(),
        Error::Api { status: 404, .. } => "not_found".into(),
        Error::Unreachable { .. } => "unavailable".into(),
        Error::Stale { .. } => "stale".into(),
        Error::NoHealthyInstance { .. } => "no_healthy_instance".into(),
        other => format!("no kind ({other})"),
    }
}

fn strategy(keys: &Keys<'_>, name: &str) -> Strategy {
    match name {
        "round_robin" => Strategy::RoundRobin,
        "random" => Strategy::Random,
        "weighted" => Strategy::Weighted,
        "p2c" => Strategy::PowerOfTwoChoices,
        other => keys.fail(format!("unknown strategy {other:?}")),
    }
}

impl World {
    fn new() -> Self {
        // The dev-dependencies turn on reqwest's rustls without a provider
        // (feature unification); the in-process registry of the other tests
        // installs one, this runner has none of its own.
        let _ = rustls::crypto::ring::default_provider().install_default();
        World {
            agent: Agent::new(),
            peers: HashMap::new(),
            clients: HashMap::new(),
            registrations: HashMap::new(),
            balancers: HashMap::new(),
        }
    }

    async fn shutdown(mut self) {
        self.balancers.clear();
        self.registrations.clear();
        self.clients.clear();
        for peer in self.peers.values() {
            peer.task.abort();
        }
        if self.agent.child.is_some() {
            self.agent.stop("kill").await;
        }
    }

    fn client(&self, keys: &Keys<'_>) -> &Client {
        let name = keys.req_str("client");
        self.clients
            .get(&name)
            .unwrap_or_else(|| keys.fail(format!("no client {name:?}")))
    }

    fn data_is_fresh(keys: &Keys<'_>) -> bool {
        match keys.str("data").as_deref() {
            None | Some("same") => false,
            Some("fresh") => true,
            Some(other) => keys.fail(format!("unknown data {other:?} (same, fresh)")),
        }
    }

    async fn step(&mut self, keys: &Keys<'_>) {
        let what = keys.req_str("do");
        match what.as_str() {
            "start_registry" => self.agent.start(Self::data_is_fresh(keys)).await,
            "stop_registry" => {
                let signal = keys.str("signal").unwrap_or_else(|| "term".into());
                self.agent.stop(&signal).await;
            }
            "restart_registry" => {
                let signal = keys.str("signal").unwrap_or_else(|| "term".into());
                let fresh = Self::data_is_fresh(keys);
                self.agent.stop(&signal).await;
                self.agent.start(fresh).await;
            }
            "silent_peer" => {
                let name = keys.req_str("name");
                self.peers.insert(name, SilentPeer::start().await);
            }
            "client" => self.make_client(keys),
            "register" => self.register(keys).await,
            "deregister" => {
                let key = (
                    keys.req_str("client"),
                    keys.req_str("service"),
                    keys.req_str("id"),
                );
                let reg = self
                    .registrations
                    .remove(&key)
                    .unwrap_or_else(|| keys.fail(format!("no registration {key:?}")));
                reg.deregister()
                    .await
                    .unwrap_or_else(|e| keys.fail(format!("deregister: {e}")));
            }
            "balancer" => self.make_balancer(keys),
            "eject" => {
                let name = keys.req_str("balancer");
                let b = self
                    .balancers
                    .get(&name)
                    .unwrap_or_else(|| keys.fail(format!("no balancer {name:?}")));
                b.report_failure(&keys.req_str("id"));
            }
            "pick" => self.pick(keys).await,
            "expect" => {
                if let Err(m) = self.observe(keys, None).await {
                    keys.fail(m);
                }
            }
            "wait" => {
                let within = keys.req_dur("within");
                let until = keys
                    .table("until")
                    .unwrap_or_else(|| keys.fail("`until` is required"));
                let throughout = keys.table("throughout");
                let deadline = Instant::now() + within;
                loop {
                    if let Some(t) = &throughout
                        && let Err(m) = self.observe(t, Some(deadline)).await
                    {
                        keys.fail(format!("`throughout` broke while waiting: {m}"));
                    }
                    match self.observe(&until, Some(deadline)).await {
                        Ok(()) => break,
                        Err(m) if Instant::now() >= deadline => {
                            keys.fail(format!("not within {within:?}: {m}"))
                        }
                        Err(_) => tokio::time::sleep(TICK).await,
                    }
                }
                until.done();
                if let Some(t) = &throughout {
                    t.done();
                }
            }
            "hold" => {
                let period = keys.req_dur("for");
                let throughout = keys
                    .table("throughout")
                    .unwrap_or_else(|| keys.fail("`throughout` is required"));
                let end = Instant::now() + period;
                loop {
                    if let Err(m) = self.observe(&throughout, Some(end + period)).await {
                        keys.fail(format!("did not hold for {period:?}: {m}"));
                    }
                    if Instant::now() >= end {
                        break;
                    }
                    tokio::time::sleep(TICK).await;
                }
                throughout.done();
            }
            other => keys.fail(format!("unknown step {other:?}")),
        }
    }

    fn make_client(&mut self, keys: &Keys<'_>) {
        let name = keys.req_str("name");
        let addr = match keys.str("registry").as_deref() {
            None | Some("agent") => self.agent.base(),
            Some(peer) => self
                .peers
                .get(peer)
                .unwrap_or_else(|| keys.fail(format!("no silent peer {peer:?}")))
                .addr
                .clone(),
        };
        let mut b = Client::builder().addrs([addr]);
        if let Some(ttl) = keys.dur("ttl") {
            b = b.lease_ttl(ttl);
        }
        if let Some(m) = keys.dur("max_staleness") {
            b = b.max_staleness(m);
        }
        if let Some(t) = keys.dur("timeout") {
            b = b.timeouts(Timeouts {
                request: t,
                ..Timeouts::default()
            });
        }
        if let Some(r) = keys.int("retries") {
            b = b.backoff(Backoff {
                attempts: u32::try_from(r).unwrap(),
                ..Backoff::default()
            });
        }
        let client = b.build().unwrap_or_else(|e| keys.fail(e));
        self.clients.insert(name, client);
    }

    async fn register(&mut self, keys: &Keys<'_>) {
        let client = self.client(keys).clone();
        let (service, id) = (keys.req_str("service"), keys.req_str("id"));
        let address = keys.str("address").unwrap_or_else(|| "127.0.0.1".into());
        let port = keys.int("port").unwrap_or(8080);
        let mut spec = InstanceSpec::new(&service, &id, address, u16::try_from(port).unwrap());
        for t in keys.strs("tags").unwrap_or_default() {
            spec = spec.tag(t);
        }
        if let Some(meta) = keys.table("meta") {
            for (k, v) in meta.entries() {
                spec = spec.meta(k, v.as_str().expect("meta values are strings"));
            }
        }
        if let Some(v) = keys.str("version") {
            spec = spec.version(v);
        }
        if let Some(z) = keys.str("zone") {
            spec = spec.zone(z);
        }
        if let Some(w) = keys.int("weight") {
            spec = spec.weight(u32::try_from(w).unwrap());
        }
        let expected = keys.str("error");
        let (took_min, took_max) = (keys.dur("took_min"), keys.dur("took_max"));
        let start = Instant::now();
        let result = client.register(spec).await;
        let took = start.elapsed();
        match (result, expected) {
            (Ok(reg), None) => {
                let name = keys.req_str("client");
                self.registrations.insert((name, service, id), reg);
            }
            (Ok(_), Some(k)) => keys.fail(format!("registered, expected the error {k}")),
            (Err(e), None) => keys.fail(format!("register failed: {e}")),
            (Err(e), Some(k)) if kind(&e) != k => {
                keys.fail(format!("expected {k}, got {}: {e}", kind(&e)))
            }
            (Err(_), Some(_)) => {}
        }
        if took_min.is_some_and(|m| took < m) || took_max.is_some_and(|m| took > m) {
            keys.fail(format!(
                "took {took:?}, outside [{took_min:?}, {took_max:?}]"
            ));
        }
    }

    fn discovery(&self, keys: &Keys<'_>) -> Discovery {
        let mut d = self.client(keys).discover(keys.req_str("service"));
        for t in keys.strs("tags").unwrap_or_default() {
            d = d.tag(t);
        }
        if let Some(meta) = keys.table("meta") {
            for (k, v) in meta.entries() {
                d = d.meta(k, v.as_str().expect("meta values are strings"));
            }
        }
        if let Some(v) = keys.str("version") {
            d = d.version(v);
        }
        if let Some(z) = keys.str("zone") {
            d = d.zone(z);
        }
        match keys.str("health").as_deref() {
            None | Some("passing") => {}
            Some("any") => d = d.health(HealthFilter::Any),
            Some(other) => keys.fail(format!("unknown health {other:?}")),
        }
        d
    }

    fn make_balancer(&mut self, keys: &Keys<'_>) {
        let name = keys.req_str("name");
        let strategy = strategy(keys, &keys.req_str("strategy"));
        let mut b = self.discovery(keys).balancer(strategy);
        if let Some(seed) = keys.int("seed") {
            b = b.seed(u64::try_from(seed).unwrap());
        }
        if let Some(e) = keys.dur("ejection") {
            b = b.ejection(e, e);
        }
        self.balancers.insert(name, b);
    }

    async fn pick(&mut self, keys: &Keys<'_>) {
        let names = keys
            .strs("balancers")
            .unwrap_or_else(|| keys.fail("`balancers` is required"));
        let rounds = keys.int("rounds").unwrap_or(1);
        let mut counts: BTreeMap<String, BTreeMap<String, i64>> = BTreeMap::new();
        let mut errors: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for _ in 0..rounds {
            for name in &names {
                let b = self
                    .balancers
                    .get(name)
                    .unwrap_or_else(|| keys.fail(format!("no balancer {name:?}")));
                match b.pick().await {
                    Ok(p) => {
                        *counts
                            .entry(name.clone())
                            .or_default()
                            .entry(p.id().to_string())
                            .or_default() += 1
                    }
                    Err(e) => {
                        errors.entry(name.clone()).or_default().insert(kind(&e));
                    }
                }
            }
        }
        if let Some(k) = keys.str("error") {
            for name in &names {
                let got = errors.get(name).cloned().unwrap_or_default();
                if counts.contains_key(name) || got != BTreeSet::from([k.clone()]) {
                    keys.fail(format!(
                        "{name}: expected every pick to fail with {k}, got picks {:?} and errors {got:?}",
                        counts.get(name)
                    ));
                }
            }
            return;
        }
        if !errors.is_empty() {
            keys.fail(format!("picks failed: {errors:?}"));
        }
        if let Some(expected) = keys.table("counts") {
            for (b, want) in expected.entries() {
                let want: BTreeMap<String, i64> = want
                    .as_table()
                    .expect("counts per balancer are tables")
                    .iter()
                    .map(|(k, v)| (k.clone(), v.as_integer().expect("counts are integers")))
                    .collect();
                let got = counts.get(b).cloned().unwrap_or_default();
                if got != want {
                    keys.fail(format!("{b}: picked {got:?}, expected {want:?}"));
                }
            }
        }
        if let Some(bounds) = keys.table("between") {
            for (b, want) in bounds.entries() {
                let want = want.as_table().expect("bounds per balancer are tables");
                let got = counts.get(b).cloned().unwrap_or_default();
                let ids: BTreeSet<&String> = got.keys().collect();
                if ids != want.keys().collect() {
                    keys.fail(format!(
                        "{b}: picked {got:?}, expected only {:?}",
                        want.keys().collect::<Vec<_>>()
                    ));
                }
                for (id, range) in want {
                    let r = range.as_array().expect("bounds are [lo, hi]");
                    let (lo, hi) = (r[0].as_integer().unwrap(), r[1].as_integer().unwrap());
                    let n = got[id];
                    if n < lo || n > hi {
                        keys.fail(format!("{b}: {id} picked {n} times, not in [{lo}, {hi}]"));
                    }
                }
            }
        }
    }

    /// Checks one observation; `Err` says what differs. `deadline` bounds a
    /// first lookup, which waits for the registry's first answer.
    async fn observe(&self, keys: &Keys<'_>, deadline: Option<Instant>) -> Result<(), String> {
        let look = keys.req_str("look");
        match look.as_str() {
            "discovery" => {
                let d = self.discovery(keys);
                let expected_error = keys.str("error");
                let ids = keys.strs("ids");
                let stale = keys.bool("stale");
                let (age_min, age_max) = (keys.dur("age_min"), keys.dur("age_max"));
                let limit = deadline.unwrap_or_else(|| Instant::now() + Duration::from_secs(30));
                let got = tokio::time::timeout_at(limit, d.get())
                    .await
                    .map_err(|_| format!("{}: no answer in time", d.query()))?;
                let snap = match (got, expected_error) {
                    (Err(e), Some(k)) if kind(&e) == k => return Ok(()),
                    (Err(e), _) => return Err(format!("{}: {} ({e})", d.query(), kind(&e))),
                    (Ok(s), Some(k)) => {
                        return Err(format!("{}: answered {:?}, not {k}", d.query(), s.ids()));
                    }
                    (Ok(s), None) => s,
                };
                let mut diffs = Vec::new();
                if let Some(mut want) = ids {
                    want.sort();
                    let got: Vec<String> = snap.ids().iter().map(|s| s.to_string()).collect();
                    if got != want {
                        diffs.push(format!("ids {got:?}, expected {want:?}"));
                    }
                }
                if stale.is_some_and(|s| s != snap.is_stale()) {
                    diffs.push(format!("stale is {}", snap.is_stale()));
                }
                if age_min.is_some_and(|m| snap.age() < m)
                    || age_max.is_some_and(|m| snap.age() > m)
                {
                    diffs.push(format!(
                        "age {:?} outside [{age_min:?}, {age_max:?}]",
                        snap.age()
                    ));
                }
                if diffs.is_empty() {
                    Ok(())
                } else {
                    Err(format!("{}: {}", d.query(), diffs.join("; ")))
                }
            }
            "lease" => {
                let status = self.client(keys).lease_status().borrow().clone();
                let mut diffs = Vec::new();
                if let Some(n) = keys.int("renewals_min")
                    && status.renewals < u64::try_from(n).unwrap()
                {
                    diffs.push(format!("{} renewals, fewer than {n}", status.renewals));
                }
                if let Some(n) = keys.int("reregistrations")
                    && status.reregistrations != u64::try_from(n).unwrap()
                {
                    diffs.push(format!(
                        "{} reregistrations, not {n}",
                        status.reregistrations
                    ));
                }
                if let Some(want) = keys.str("connection") {
                    let state = match *self.client(keys).connection_state().borrow() {
                        ConnectionState::Idle => "idle",
                        ConnectionState::Connected => "connected",
                        ConnectionState::Suspended => "suspended",
                        ConnectionState::Lost => "lost",
                    };
                    if !["idle", "connected", "suspended", "lost"].contains(&want.as_str()) {
                        keys.fail(format!("unknown connection state {want:?}"));
                    }
                    if state != want {
                        diffs.push(format!("connection {state}, not {want}"));
                    }
                }
                if diffs.is_empty() {
                    Ok(())
                } else {
                    Err(format!("lease: {}", diffs.join("; ")))
                }
            }
            "peer" => {
                let name = keys.req_str("name");
                let peer = self
                    .peers
                    .get(&name)
                    .unwrap_or_else(|| keys.fail(format!("no silent peer {name:?}")));
                let got = peer.connections.load(Ordering::SeqCst);
                match keys.int("connections") {
                    Some(n) if usize::try_from(n).unwrap() != got => {
                        Err(format!("{name}: {got} connections, not {n}"))
                    }
                    _ => Ok(()),
                }
            }
            "defaults" => {
                let (t, b) = (Timeouts::default(), Backoff::default());
                let mut diffs = Vec::new();
                if keys.dur("timeout").is_some_and(|d| d != t.request) {
                    diffs.push(format!("timeout {:?}", t.request));
                }
                if keys
                    .int("retries")
                    .is_some_and(|r| u32::try_from(r).unwrap() != b.attempts)
                {
                    diffs.push(format!("retries {}", b.attempts));
                }
                if keys.dur("backoff_initial").is_some_and(|d| d != b.initial) {
                    diffs.push(format!("backoff_initial {:?}", b.initial));
                }
                if keys.dur("backoff_max").is_some_and(|d| d != b.max) {
                    diffs.push(format!("backoff_max {:?}", b.max));
                }
                if diffs.is_empty() {
                    Ok(())
                } else {
                    Err(format!("defaults differ: {}", diffs.join("; ")))
                }
            }
            other => keys.fail(format!("unknown observation {other:?}")),
        }
    }
}
