//! Mutual TLS on the cluster port, with certificates made by `muster tls`:
//! a cluster forms and replicates over it, a node or a client with a
//! certificate from another CA (or none, or no TLS at all) is refused at
//! the handshake, SIGHUP reloads the cluster files, and a node joins at
//! the address it advertises.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use tokio::time::Instant;

use crate::cluster::{
    CATCH_UP, Cluster, POLL, cluster_info, metric, register, wait_holds, wait_voters,
};
use crate::harness::{Agent, BIN, cli, http};
use crate::tls::{path, tls};

/// How long one call may take on a busy machine.
const CALL: Duration = Duration::from_secs(10);

/// A CA, a node certificate (`--server`: serverAuth and clientAuth, for
/// localhost, 127.0.0.1 and ::1) and a client certificate, in `dir`.
fn authority(dir: &Path) {
    tls(dir, &["ca", "create"]);
    tls(dir, &["cert", "create", "--server"]);
    tls(dir, &["cert", "create", "--client"]);
}

/// The agent flags of cluster TLS with the files of `dir`, trusting `ca`.
fn cluster_tls_args(dir: &Path, ca: &Path) -> Vec<String> {
    vec![
        "--cluster-tls-cert".into(),
        path(dir, "muster-server.pem"),
        "--cluster-tls-key".into(),
        path(dir, "muster-server-key.pem"),
        "--cluster-tls-ca".into(),
        ca.to_str().unwrap().to_string(),
    ]
}

/// A client trusting the CA of `dir`, presenting `cert` (a directory
/// holding `muster-client.pem` and its key) if given; HTTP/2 only, as
/// cluster RPC is.
fn rpc_client(dir: &Path, cert: Option<&Path>) -> reqwest::Client {
    let _ = http(); // installs the crypto provider
    let ca = std::fs::read(dir.join("muster-ca.pem")).unwrap();
    let mut b = reqwest::Client::builder()
        .no_proxy()
        .http2_prior_knowledge()
        .tls_certs_only([reqwest::Certificate::from_pem(&ca).unwrap()]);
    if let Some(cert) = cert {
        let mut pem = std::fs::read(cert.join("muster-client.pem")).unwrap();
        pem.extend(std::fs::read(cert.join("muster-client-key.pem")).unwrap());
        b = b.identity(reqwest::Identity::from_pem(&pem).unwrap());
    }
    b.build().unwrap()
}

/// A raw raft vote (an empty body: a peer that got through answers 400)
/// to node `id` at `addr`: the status, or why it failed.
async fn vote(client: &reqwest::Client, scheme: &str, addr: &str, id: u64) -> Result<u16, String> {
    client
        .post(format!("{scheme}://{addr}/raft/{id}/vote"))
        .timeout(CALL)
        .send()
        .await
        .map(|r| r.status().as_u16())
        .map_err(|e| {
            let mut out = e.to_string();
            let mut cause = std::error::Error::source(&e);
            while let Some(c) = cause {
                out.push_str(": ");
                out.push_str(&c.to_string());
                cause = c.source();
            }
            out
        })
}

/// Every member's id and cluster address as `agent` sees them.
async fn nodes(agent: &Agent) -> Vec<(u64, String)> {
    let v = cluster_info(agent).await.expect("/v1/cluster answers");
    v["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| {
            (
                n["id"].as_u64().unwrap(),
                n["cluster_addr"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn hup(agent: &Agent) {
    let pid = agent.child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-HUP", &pid])
            .status()
            .unwrap()
            .success()
    );
}

/// Polls `agent`'s `/metrics` until `series` reaches `at_least`.
async fn wait_metric(agent: &Agent, series: &str, at_least: f64) {
    let deadline = Instant::now() + CALL;
    loop {
        let text = http()
            .get(agent.url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let value = text
            .lines()
            .find_map(|l| {
                l.strip_prefix(series)?
                    .strip_prefix(' ')?
                    .trim()
                    .parse()
                    .ok()
            })
            .unwrap_or(0.0);
        if value >= at_least {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{series} is {value}, not {at_least}, after {CALL:?}"
        );
        tokio::time::sleep(POLL).await;
    }
}

/// Three nodes with mTLS form a cluster and replicate a write taken by a
/// follower. A 4th node whose certificate another CA issued cannot join
/// (a clear error; the membership is unchanged). A raft RPC without a
/// client certificate, with one of the other CA, or in cleartext h2c is
/// refused at the handshake and counted; with one of the cluster's CA it
/// reaches the route. SIGHUP reloads the cluster CA file: a bad one is
/// refused and the old one stays, a bundle trusting the other CA too lets
/// its clients in on new connections.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_cluster_replicates_and_refuses_another_cas_node_and_rpcs() {
    let (ours, theirs) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    authority(ours.path());
    authority(theirs.path());
    // The CA file the nodes read, so that it can be changed for a reload.
    let ca = ours.path().join("cluster-ca.pem");
    std::fs::copy(ours.path().join("muster-ca.pem"), &ca).unwrap();

    let mut c = Cluster::new(4);
    c.initial = 3;
    c.args = cluster_tls_args(ours.path(), &ca);
    for id in [1, 2, 3] {
        c.start(id);
    }
    let leader = c.leader(None).await;
    let follower = *c.up().iter().find(|id| **id != leader).unwrap();
    let http = http();
    assert!(register(&http, &c.agent(follower).base, "payments", "pay-1").await);
    for id in c.up() {
        wait_holds(
            c.agent(id),
            "payments",
            &["pay-1".to_string()],
            CATCH_UP,
            &format!("node {id}"),
        )
        .await;
    }

    // Node 4, with a certificate and CA of its own, waits to be added; the
    // cluster cannot reach it, and says so.
    let (id4, addr4) = ("4".to_string(), c.cluster_addr(4));
    let mut args4 = vec!["--node-id", &id4, "--join", "--cluster-addr", &addr4];
    let foreign_ca = theirs.path().join("muster-ca.pem");
    let foreign = cluster_tls_args(theirs.path(), &foreign_ca);
    args4.extend(foreign.iter().map(String::as_str));
    let node4 = Agent::spawn_with(c.dirs[3].path(), &args4, &[]);
    let (ok, _, err) = cli(&c.agent(follower).base, &["cluster", "join", "4", &addr4]);
    assert!(!ok, "a node of another CA joined");
    assert!(
        err.contains("node 4 cannot be reached") && err.contains("certificate"),
        "{err}"
    );
    assert!(err.contains("nothing changed"), "{err}");
    println!("join refused: {err}");
    wait_voters(c.agent(leader), &[1, 2, 3]).await;
    assert_eq!(nodes(c.agent(leader)).await.len(), 3);
    let v = cluster_info(&node4).await.unwrap();
    assert_eq!(v["leader"], Value::Null, "node 4 follows someone: {v}");

    // Raw raft RPCs to the leader's cluster port.
    let addr = c.cluster_addr(leader);
    let before = metric(
        c.agent(leader),
        "muster_cluster_tls_handshake_failures_total",
    )
    .await;
    let ok = vote(
        &rpc_client(ours.path(), Some(ours.path())),
        "https",
        &addr,
        leader,
    )
    .await;
    assert_eq!(
        ok,
        Ok(400),
        "a client of the cluster's CA reaches the route"
    );
    let none = vote(&rpc_client(ours.path(), None), "https", &addr, leader).await;
    assert!(none.is_err(), "no client certificate: {none:?}");
    let other = vote(
        &rpc_client(ours.path(), Some(theirs.path())),
        "https",
        &addr,
        leader,
    )
    .await;
    assert!(other.is_err(), "another CA's client certificate: {other:?}");
    let h2c = vote(&rpc_client(ours.path(), None), "http", &addr, leader).await;
    assert!(h2c.is_err(), "cleartext h2c: {h2c:?}");
    println!("refused: {none:?} / {other:?} / {h2c:?}");
    wait_metric(
        c.agent(leader),
        "muster_cluster_tls_handshake_failures_total",
        before + 3.0,
    )
    .await;

    // SIGHUP with a CA file that does not load: refused, the old one stays.
    std::fs::write(&ca, "not a certificate").unwrap();
    hup(c.agent(leader));
    wait_metric(
        c.agent(leader),
        r#"muster_tls_reloads_total{listener="cluster",result="error"}"#,
        1.0,
    )
    .await;
    let ok = vote(
        &rpc_client(ours.path(), Some(ours.path())),
        "https",
        &addr,
        leader,
    )
    .await;
    assert_eq!(ok, Ok(400), "the previous CA stays in use");
    // A bundle of both CAs: the other CA's clients get in from then on.
    let mut bundle = std::fs::read(ours.path().join("muster-ca.pem")).unwrap();
    bundle.extend(std::fs::read(&foreign_ca).unwrap());
    std::fs::write(&ca, bundle).unwrap();
    hup(c.agent(leader));
    wait_metric(
        c.agent(leader),
        r#"muster_tls_reloads_total{listener="cluster",result="ok"}"#,
        1.0,
    )
    .await;
    let other = vote(
        &rpc_client(ours.path(), Some(theirs.path())),
        "https",
        &addr,
        leader,
    )
    .await;
    assert_eq!(other, Ok(400), "after the reload, the bundle's other CA");
    // The cluster still replicates.
    assert!(register(&http, &c.agent(follower).base, "payments", "pay-2").await);
    wait_holds(
        c.agent(leader),
        "payments",
        &["pay-1".to_string(), "pay-2".to_string()],
        CATCH_UP,
        "the leader",
    )
    .await;
}

/// With mTLS on, `muster cluster join` adds a node started with `--join`
/// at the address it advertises, not the one it was asked at (here
/// `localhost`): peers use that one. A node advertising an address where
/// it does not listen (127.0.0.2, while bound to 127.0.0.1) is refused
/// and nothing changes. An unspecified advertise address is refused at
/// start-up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_joined_node_is_recorded_at_the_address_it_advertises() {
    let certs = tempfile::tempdir().unwrap();
    authority(certs.path());
    let ca = certs.path().join("muster-ca.pem");
    let mut c = Cluster::new(5);
    c.initial = 3;
    c.args = cluster_tls_args(certs.path(), &ca);
    for id in [1, 2, 3] {
        c.start(id);
    }
    let leader = c.leader(None).await;

    let joiner = |id: u64, advertise: String| {
        let mut args = vec![
            "--node-id".to_string(),
            id.to_string(),
            "--join".into(),
            "--cluster-addr".into(),
            c.cluster_addr(id),
            "--cluster-advertise".into(),
            advertise,
        ];
        args.extend(c.args.iter().cloned());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        Agent::spawn_with(c.dirs[(id - 1) as usize].path(), &args, &[])
    };

    // Asked at localhost, recorded at 127.0.0.1, where it advertises.
    let node4 = joiner(4, c.cluster_addr(4));
    let port4 = c.ports[3];
    let (ok, _, err) = cli(
        &c.agent(leader).base,
        &["cluster", "join", "4", &format!("localhost:{port4}")],
    );
    assert!(ok, "join: {err}");
    wait_voters(c.agent(leader), &[1, 2, 3, 4]).await;
    assert!(
        nodes(c.agent(leader))
            .await
            .contains(&(4, c.cluster_addr(4))),
        "{:?}",
        nodes(c.agent(leader)).await
    );
    // Asking again at the address it was asked at is the same join.
    let (ok, _, err) = cli(
        &c.agent(leader).base,
        &["cluster", "join", "4", &format!("localhost:{port4}")],
    );
    assert!(ok, "join again: {err}");
    assert!(register(&http(), &c.agent(leader).base, "payments", "pay-1").await);
    wait_holds(
        &node4,
        "payments",
        &["pay-1".to_string()],
        CATCH_UP,
        "node 4",
    )
    .await;

    // Node 5 listens on 127.0.0.1 but advertises 127.0.0.2.
    let port5 = c.ports[4];
    let _node5 = joiner(5, format!("127.0.0.2:{port5}"));
    let (ok, _, err) = cli(
        &c.agent(leader).base,
        &["cluster", "join", "5", &c.cluster_addr(5)],
    );
    assert!(!ok, "a node was added where it does not listen");
    assert!(
        err.contains(&format!("node 5 advertises 127.0.0.2:{port5}")),
        "{err}"
    );
    wait_voters(c.agent(leader), &[1, 2, 3, 4]).await;
    assert_eq!(nodes(c.agent(leader)).await.len(), 4);

    // An agent bound to every interface must say where it is reached (it
    // stops at validation, before binding anything).
    let out = Command::new(BIN)
        .args(["agent", "--dev", "--join", "--node-id", "6"])
        // HTTP on a free loopback port: were the check ever gone, the
        // agent would not take 7700 (a cluster port must be a real one).
        .args([
            "--cluster-addr",
            "0.0.0.0:7701",
            "--http-addr",
            "127.0.0.1:0",
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("set cluster_advertise"), "{err}");
    let out = Command::new(BIN)
        .args(["agent", "--dev", "--join", "--node-id", "6"])
        .args(["--http-addr", "127.0.0.1:0"])
        .args(["--cluster-advertise", "[::]:7701"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("no address peers can reach"), "{err}");
}
