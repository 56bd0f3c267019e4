//! The agent as a process: expiry in real time, signals, configuration.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::harness::{Agent, BIN, http};

#[tokio::test]
async fn a_lapsed_lease_leaves_discovery_within_ttl_plus_one_second() {
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::spawn(dir.path());
    let client = http();
    // Watch first, so the removal is observed as an event, not polled for.
    let mut watch = client
        .get(agent.url("/v1/watch?service=pay"))
        .send()
        .await
        .unwrap();
    let r = client
        .put(agent.url("/v1/services/pay/instances/p1"))
        .json(&json!({"address": "10.0.0.1", "port": 80, "ttl": "2s"}))
        .send()
        .await
        .unwrap();
    // The lease starts when the registration is acknowledged.
    let registered = Instant::now();
    assert_eq!(r.status(), 200);
    let mut seen = String::new();
    while !seen.contains("event: delete") && !seen.contains("event:delete") {
        let chunk = tokio::time::timeout(Duration::from_secs(30), watch.chunk())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        seen.push_str(std::str::from_utf8(&chunk).unwrap());
    }
    let elapsed = registered.elapsed();
    assert!(
        elapsed <= Duration::from_secs(3),
        "removed after {elapsed:?}, more than TTL + 1 s"
    );
    assert!(
        elapsed >= Duration::from_millis(1_900),
        "removed after {elapsed:?}, before the TTL ran out"
    );
    let v: serde_json::Value = client
        .get(agent.url("/v1/services/pay/instances"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(v["instances"].as_array().unwrap().is_empty());
}

#[tokio::test]
async fn sigterm_stops_cleanly_and_state_is_kept() {
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::spawn(dir.path());
    let r = http()
        .put(agent.url("/v1/services/pay/instances/p1"))
        .json(&json!({"address": "10.0.0.1", "port": 80}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // An open watch must not hold up shutdown.
    let _watch = http()
        .get(agent.url("/v1/watch?service=pay"))
        .send()
        .await
        .unwrap();
    let status = agent.terminate();
    assert!(status.success(), "exit status {status:?}");
    let agent = Agent::spawn(dir.path());
    let v: serde_json::Value = http()
        .get(agent.url("/v1/services/pay/instances"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["instances"][0]["id"], "p1");
}

#[test]
fn configuration_comes_from_file_env_and_flags_and_is_validated() {
    let dir = tempfile::tempdir().unwrap();
    // A typo in the file is an error, not a silently ignored key.
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "http_adress = \"127.0.0.1:0\"\n").unwrap();
    let out = std::process::Command::new(BIN)
        .args(["agent", "--config"])
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("http_adress"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // An invalid value is refused with its field named.
    let out = std::process::Command::new(BIN)
        .args(["agent", "--http-addr", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path().join("d"))
        .env("MUSTER_SELF_PRESERVATION_THRESHOLD", "7")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("self_preservation_threshold"));

    // File sets the data dir; the environment sets the address; both apply.
    let good = dir.path().join("good.toml");
    let data = dir.path().join("from-file");
    std::fs::write(
        &good,
        format!(
            "data_dir = {:?}\nhttp_addr = \"127.0.0.1:1\"\n",
            data.display().to_string()
        ),
    )
    .unwrap();
    let mut child = std::process::Command::new(BIN)
        .args(["agent", "--config"])
        .arg(&good)
        .env("MUSTER_HTTP_ADDR", "127.0.0.1:0")
        .env("MUSTER_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    assert!(
        line.starts_with("muster listening on http://127.0.0.1:"),
        "{line}"
    );
    assert!(!line.contains(":1\n"));
    assert!(data.join("raft.redb").exists() || data.read_dir().unwrap().next().is_some());
    child.kill().unwrap();
    child.wait().unwrap();
}
