//! Acknowledged means durable: `kill -9` in the middle of a storm of
//! concurrent registrations loses none that were acknowledged.

use std::sync::{Arc, Mutex};

use serde_json::json;

use crate::harness::{Agent, http};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledged_registration_survives_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::spawn(dir.path());
    let acked: Arc<Mutex<Vec<String>>> = Arc::default();
    let (enough_tx, enough_rx) = tokio::sync::watch::channel(false);
    let mut writers = Vec::new();
    for w in 0..16 {
        let (client, base, acked, enough_tx) =
            (http(), agent.base.clone(), acked.clone(), enough_tx.clone());
        writers.push(tokio::spawn(async move {
            // Bounded: at most 2,000 writes per writer.
            for n in 0..2_000 {
                let id = format!("w{w}-{n}");
                let body =
                    json!({"address": "10.0.0.1", "port": 1000 + n, "tags": [format!("w{w}")]});
                let r = client
                    .put(format!("{base}/v1/services/storm/instances/{id}"))
                    .json(&body)
                    .send()
                    .await;
                match r {
                    Ok(r) if r.status() == 200 => {
                        let mut a = acked.lock().unwrap();
                        a.push(id);
                        if a.len() >= 600 {
                            let _ = enough_tx.send(true);
                        }
                    }
                    // The server died under us: stop writing.
                    _ => return,
                }
            }
        }));
    }
    let mut enough = enough_rx;
    enough.wait_for(|e| *e).await.unwrap();
    // Mid-storm: writers are still sending.
    agent.kill9();
    for w in writers {
        w.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() >= 600);

    let agent = Agent::spawn(dir.path());
    let v = agent
        .get_json("/v1/services/storm/instances?health=any")
        .await;
    let present: std::collections::HashSet<&str> = v["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["id"].as_str().unwrap())
        .collect();
    let lost: Vec<&String> = acked
        .iter()
        .filter(|id| !present.contains(id.as_str()))
        .collect();
    assert!(
        lost.is_empty(),
        "{} acknowledged registrations lost, e.g. {:?}",
        lost.len(),
        &lost[..lost.len().min(5)]
    );
    // Nothing corrupt: every instance reads back whole, and writes work again.
    for i in v["instances"].as_array().unwrap() {
        assert_eq!(i["address"], "10.0.0.1");
        assert!(i["modify_index"].as_u64().unwrap() >= i["create_index"].as_u64().unwrap());
    }
    let r = http()
        .put(agent.url("/v1/services/storm/instances/after"))
        .json(&json!({"address": "10.0.0.2", "port": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

/// What the writers of a storm saw acknowledged.
#[derive(Default)]
struct Acked {
    /// Registered, and no deregistration of it was sent.
    present: Vec<String>,
    /// Deregistered, acknowledged.
    absent: Vec<String>,
}

/// A storm of registrations and deregistrations from 8 writers (bounded:
/// 1,500 rounds each); each writer stops at its first failed call.
struct Storm {
    writers: Vec<tokio::task::JoinHandle<()>>,
    acked: Arc<Mutex<Acked>>,
    enough: tokio::sync::watch::Receiver<bool>,
}

impl Storm {
    fn start(base: &str, round: usize, enough: usize) -> Storm {
        let acked: Arc<Mutex<Acked>> = Arc::default();
        let (enough_tx, enough_rx) = tokio::sync::watch::channel(false);
        let writers = (0..8)
            .map(|w| {
                let (client, base, acked, enough_tx) =
                    (http(), base.to_string(), acked.clone(), enough_tx.clone());
                tokio::spawn(async move {
                    for n in 0..1_500 {
                        let id = format!("r{round}-w{w}-{n}");
                        let url = format!("{base}/v1/services/storm/instances/{id}");
                        let body = json!({"address": "10.0.0.1", "port": 1000 + n});
                        match client.put(&url).json(&body).send().await {
                            Ok(r) if r.status() == 200 => {}
                            _ => return,
                        }
                        // Every third one is removed again at once.
                        if n % 3 == 0 {
                            match client.delete(&url).send().await {
                                Ok(r) if r.status() == 200 => acked.lock().unwrap().absent.push(id),
                                // Killed with the removal in flight: either state.
                                _ => return,
                            }
                        } else {
                            acked.lock().unwrap().present.push(id);
                        }
                        let a = acked.lock().unwrap();
                        if a.present.len() + a.absent.len() >= enough {
                            let _ = enough_tx.send(true);
                        }
                    }
                })
            })
            .collect();
        Storm {
            writers,
            acked,
            enough: enough_rx,
        }
    }

    /// Waits until enough writes were acknowledged (or every writer ended).
    async fn wait_enough(&mut self) {
        let _ = self.enough.wait_for(|e| *e).await;
    }

    /// Once the agent is gone: what was acknowledged.
    async fn finish(self) -> Acked {
        for w in self.writers {
            w.await.unwrap();
        }
        std::mem::take(&mut *self.acked.lock().unwrap())
    }
}

async fn ids(agent: &Agent) -> std::collections::HashSet<String> {
    let v = agent
        .get_json("/v1/services/storm/instances?health=any")
        .await;
    v["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["id"].as_str().unwrap().to_string())
        .collect()
}

/// Snapshots every 20 entries (and the log purged behind them), with
/// kill -9 in the middle of storms of registrations and deregistrations,
/// three times: every acknowledged registration is there after each
/// restart, and every acknowledged deregistration stays done.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_across_snapshots_and_purges_keeps_every_acknowledged_write_and_removal() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let config = dir.path().join("muster.toml");
    std::fs::write(&config, "snapshot_logs = 20\nsnapshot_commands = 50\n").unwrap();
    let config = config.to_str().unwrap().to_string();
    let mut present = Vec::new();
    let mut absent = Vec::new();
    for round in 0..3 {
        let agent = Agent::spawn_with(&data, &["--config", &config], &[]);
        let have = ids(&agent).await;
        for id in &present {
            assert!(
                have.contains(id),
                "round {round}: acknowledged {id} is gone"
            );
        }
        for id in &absent {
            assert!(
                !have.contains(id),
                "round {round}: deregistered {id} is back"
            );
        }
        let mut storm = Storm::start(&agent.base, round, 600);
        storm.wait_enough().await;
        agent.kill9();
        let acked = storm.finish().await;
        assert!(acked.present.len() + acked.absent.len() >= 600);
        present.extend(acked.present);
        absent.extend(acked.absent);
        // Snapshots were taken (and the log purged behind them).
        assert!(
            data.join("snapshot.json").exists(),
            "round {round}: no snapshot"
        );
    }
    let agent = Agent::spawn_with(&data, &["--config", &config], &[]);
    let have = ids(&agent).await;
    let lost: Vec<_> = present.iter().filter(|id| !have.contains(*id)).collect();
    assert!(
        lost.is_empty(),
        "{} acknowledged lost: {:?}",
        lost.len(),
        &lost[..lost.len().min(5)]
    );
    let back: Vec<_> = absent.iter().filter(|id| have.contains(*id)).collect();
    assert!(
        back.is_empty(),
        "{} removals undone: {:?}",
        back.len(),
        &back[..back.len().min(5)]
    );
}
