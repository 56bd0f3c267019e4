//! The agent as a process: expiry in real time, signals, configuration.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::harness::{Agent, BIN, http};

/// Order, not tight bounds (a loaded 2-core machine can delay the sweep):
/// never before the TTL ran out, and by the wait's deadline. How fast
/// expiry is, is measured in BENCHMARKS.md (failure-detection).
#[tokio::test]
async fn a_lapsed_lease_leaves_discovery_after_its_ttl() {
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
        elapsed >= Duration::from_millis(1_900),
        "removed after {elapsed:?}, before the TTL ran out"
    );
    let v = agent.get_json("/v1/services/pay/instances").await;
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
    let v = agent.get_json("/v1/services/pay/instances").await;
    assert_eq!(v["instances"][0]["id"], "p1");
}

/// A connection that never sent a byte (a port probe, a client stalled
/// after connecting) used to hold up a clean stop for the whole header
/// timeout, 30 s: past a supervisor's stop timeout (Kubernetes gives 30 s),
/// so the agent was killed instead of stopping. Now it is closed as the
/// stop begins, and one that never finishes its request is closed once the
/// stop has waited 10 s for it.
#[tokio::test]
async fn connections_that_never_finish_a_request_do_not_hold_up_a_stop() {
    use std::io::{Read, Write};
    let dir = tempfile::tempdir().unwrap();
    let mut agent = Agent::spawn(dir.path());
    let addr = agent.base.strip_prefix("http://").unwrap().to_string();
    let mut silent = std::net::TcpStream::connect(&addr).unwrap();
    // A request half sent: its head never ends.
    let mut half = std::net::TcpStream::connect(&addr).unwrap();
    half.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    // Accepted in order: once a later connection is answered, both are
    // the server's, before it stops.
    let r = http().get(agent.url("/healthz")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    agent.send_term();
    let closed = tokio::task::spawn_blocking(move || {
        silent
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        silent.read(&mut [0u8; 16])
    });
    match closed.await.unwrap() {
        Ok(0) => {}
        other => panic!("the silent connection was not closed as the stop began: {other:?}"),
    }
    let status = agent
        .exit_status(Duration::from_secs(20))
        .await
        .expect("the agent did not stop within 20 s of SIGTERM");
    assert!(status.success(), "exit status {status:?}");
    drop(half);
}

/// A second agent on a data directory in use refuses to start, and says
/// why in words an operator acts on; the first goes on serving.
#[tokio::test]
async fn a_second_agent_on_the_same_data_directory_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::spawn(dir.path());
    let out = std::process::Command::new(BIN)
        .args(["agent", "--http-addr", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .env("MUSTER_LOG", "off")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("in use by another process") && err.contains("already running"),
        "{err}"
    );
    let h = http().get(agent.url("/healthz")).send().await.unwrap();
    assert_eq!(h.status(), 200);
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

/// Runs `muster agent` on `data`, expecting it to refuse to start; returns
/// what it printed on stderr.
fn refused(data: &std::path::Path, extra: &[&str]) -> String {
    let out = std::process::Command::new(BIN)
        .args(["agent", "--http-addr", "127.0.0.1:0", "--data-dir"])
        .arg(data)
        .args(extra)
        .env("MUSTER_LOG", "warn")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[tokio::test]
async fn a_deleted_log_is_refused_in_one_clear_line_until_the_operator_forces_it() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let config = dir.path().join("muster.toml");
    std::fs::write(&config, "snapshot_logs = 10\nsnapshot_commands = 10\n").unwrap();
    let config = config.to_str().unwrap();

    // Writes until a snapshot exists (bounded), then a few more after it.
    let agent = Agent::spawn_with(&data, &["--config", config], &[]);
    let client = http();
    let put = |i: u32| {
        client
            .put(agent.url(&format!("/v1/services/pay/instances/p{i}")))
            .json(&json!({"address": "10.0.0.1", "port": 80}))
            .send()
    };
    let mut written = 0;
    while !data.join("snapshot.json").exists() {
        assert!(written < 2_000, "no snapshot after {written} writes");
        assert_eq!(put(written).await.unwrap().status(), 200);
        written += 1;
    }
    for i in written..written + 5 {
        assert_eq!(put(i).await.unwrap().status(), 200);
    }
    assert!(agent.terminate().success());

    std::fs::remove_file(data.join("raft.redb")).unwrap();
    let err = refused(&data, &[]);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.starts_with("error: the log "), "{err}");
    assert!(err.contains("raft.redb is missing or empty"), "{err}");
    assert!(err.contains("--force-recover-from-snapshot"), "{err}");

    // Forced: it serves what the snapshot held and takes writes again.
    let agent = Agent::spawn_with(&data, &["--force-recover-from-snapshot"], &[]);
    let v = agent.get_json("/v1/services/pay/instances").await;
    // (A later snapshot may have taken some of the last five along.)
    let kept = v["instances"].as_array().unwrap().len();
    assert!(
        kept > 0 && kept <= written as usize + 5,
        "kept {kept} of {}",
        written + 5
    );
    let r = client
        .put(agent.url("/v1/services/pay/instances/after"))
        .json(&json!({"address": "10.0.0.1", "port": 80}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[test]
fn start_up_errors_say_each_cause_once() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("raft.redb"), b"not a database").unwrap();
    let err = refused(dir.path(), &[]);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("raft.redb"), "{err}");
    assert_eq!(err.matches("magic number").count(), 1, "{err}");

    let file = dir.path().join("a-file");
    std::fs::write(&file, b"").unwrap();
    let err = refused(&file.join("data"), &[]);
    assert!(err.contains("cannot create the data directory"), "{err}");
    assert!(err.contains("a-file/data"), "{err}");
}

/// Reads the SSE stream until an event of `kind`, by a 30 s deadline.
async fn until_event(watch: &mut reqwest::Response, kind: &str) -> String {
    let mut seen = String::new();
    while !seen.contains(&format!("event: {kind}")) && !seen.contains(&format!("event:{kind}")) {
        let chunk = tokio::time::timeout(Duration::from_secs(30), watch.chunk())
            .await
            .expect("event before the deadline")
            .unwrap()
            .expect("stream open");
        seen.push_str(std::str::from_utf8(&chunk).unwrap());
    }
    seen
}

#[tokio::test]
async fn a_lease_survives_kill_9_with_a_fresh_ttl_then_expires() {
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::spawn(dir.path());
    let client = http();
    let r = client
        .put(agent.url("/v1/services/pay/instances/p1"))
        .json(&json!({"address": "10.0.0.1", "port": 80, "ttl": "2s"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let registered = Instant::now();
    agent.kill9();
    // Pacing, not a wait for state: the registry is down for longer than
    // the TTL, so only a fresh TTL at restart can keep the instance.
    tokio::time::sleep(Duration::from_millis(2_500)).await;

    let agent = Agent::spawn(dir.path());
    let mut watch = client
        .get(agent.url("/v1/watch?service=pay"))
        .send()
        .await
        .unwrap();
    let snapshot = until_event(&mut watch, "snapshot").await;
    let restarted = Instant::now();
    assert!(registered.elapsed() > Duration::from_secs(2));
    assert!(snapshot.contains("\"p1\""), "lost at restart: {snapshot}");
    // Nobody renews: it goes, a full TTL after the restart at the earliest.
    until_event(&mut watch, "delete").await;
    assert!(restarted.elapsed() >= Duration::from_millis(1_500));
    let v = agent.get_json("/v1/services/pay/instances").await;
    assert!(v["instances"].as_array().unwrap().is_empty());
}

/// Under a low open-file limit, a flood of idle connections meets the
/// connection cap (fitted to the limit at start), not EMFILE: a new
/// connection still gets its `/healthz` answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_connections_meets_the_cap_not_the_file_limit() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let dir = tempfile::tempdir().unwrap();
    let mut cmd = std::process::Command::new("sh");
    // Soft and hard limit 600: the cap becomes 600 - 256 = 344.
    cmd.arg("-c")
        .arg("ulimit -n 600 && exec \"$0\" agent --http-addr 127.0.0.1:0 --data-dir \"$1\"")
        .arg(BIN)
        .arg(dir.path())
        .env("MUSTER_LOG", "warn");
    let agent = Agent::start(cmd);
    let addr = agent.base.trim_start_matches("http://").to_string();
    // Twice the file limit in idle connections (bounded: 1,200).
    let mut idle = Vec::new();
    for _ in 0..1_200 {
        match tokio::net::TcpStream::connect(&addr).await {
            Ok(s) => idle.push(s),
            Err(e) => panic!("connect failed after {}: {e}", idle.len()),
        }
    }
    // Idle connections past the cap give their places up within a second;
    // a probe gets one then (bounded: 30 s, one probe at a time).
    let deadline = Instant::now() + Duration::from_secs(30);
    let answer = loop {
        assert!(
            Instant::now() < deadline,
            "no /healthz answer by the deadline"
        );
        let mut probe = tokio::net::TcpStream::connect(&addr).await.unwrap();
        let sent = probe
            .write_all(b"GET /healthz HTTP/1.1\r\nhost: muster\r\nconnection: close\r\n\r\n")
            .await;
        let mut answer = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(30), probe.read_to_end(&mut answer))
            .await
            .expect("an answer or a close by the deadline");
        if sent.is_ok() && read.is_ok() && !answer.is_empty() {
            break String::from_utf8_lossy(&answer).into_owned();
        }
    };
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    drop(idle);
}

#[tokio::test]
async fn the_limits_come_from_flags_and_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::spawn_with(
        dir.path(),
        &["--max-watches-per-ip", "1"],
        &[("MUSTER_RATE_LIMIT", "1"), ("MUSTER_RATE_LIMIT_BURST", "3")],
    );
    let http = http();
    let watch = agent.url("/v1/watch?service=pay");
    let first = http.get(&watch).send().await.unwrap();
    assert_eq!(first.status(), 200);
    let second = http.get(&watch).send().await.unwrap();
    assert_eq!(second.status(), 429);
    let v: serde_json::Value = second.json().await.unwrap();
    assert_eq!(v["error"]["code"], "too_many_watches", "{v}");
    // A bucket of three refilled at one a second: requests in a row are
    // refused soon.
    let services = agent.url("/v1/services");
    let mut limited = None;
    for _ in 0..20 {
        let r = http.get(&services).send().await.unwrap();
        if r.status() != 200 {
            limited = Some(r);
            break;
        }
    }
    let limited = limited.expect("never rate-limited");
    assert_eq!(limited.status(), 429);
    assert!(limited.headers().contains_key("retry-after"));
    drop(first);
    agent.terminate();
}
