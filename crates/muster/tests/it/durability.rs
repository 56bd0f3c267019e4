//! Acknowledged means durable: `kill -9` in the middle of a storm of
//! concurrent registrations loses none that were acknowledged.

use std::sync::{Arc, Mutex};

use serde_json::{Value, json};

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
    let v: Value = http()
        .get(agent.url("/v1/services/storm/instances?health=any"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
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
