//! The CLI shows checks: a summary in the table, details per instance.

use serde_json::json;

use crate::harness::{Agent, cli, http};

#[tokio::test]
async fn instance_shows_each_check_and_the_table_summarises() {
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::spawn(dir.path());
    let body = json!({"address": "10.0.0.1", "port": 80, "checks": [{"id": "alive", "ttl": "1h"}]});
    let r = http()
        .put(agent.url("/v1/services/job/instances/j1"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let base = agent.base.clone();
    let (ok, out, err) =
        tokio::task::spawn_blocking(move || cli(&base, &["instance", "job", "j1"]))
            .await
            .unwrap();
    assert!(ok, "{err}");
    assert!(out.contains("health critical"), "{out}");
    assert!(out.contains("check alive [ttl] critical"), "{out}");
    let base = agent.base.clone();
    let (ok, out, _) =
        tokio::task::spawn_blocking(move || cli(&base, &["instances", "job", "--all"]))
            .await
            .unwrap();
    assert!(ok);
    assert!(out.contains("0/1 passing"), "{out}");
}
