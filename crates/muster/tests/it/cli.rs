//! The client commands against a real agent.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use crate::harness::{Agent, BIN, cli};

#[test]
fn register_discover_list_deregister() {
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::spawn(dir.path());
    let (ok, out, err) = cli(
        &agent.base,
        &[
            "register",
            "payments",
            "pay-1",
            "--address",
            "10.0.0.5",
            "--port",
            "8080",
            "--tag",
            "v2",
            "--meta",
            "team=core",
            "--version",
            "1.4.2",
        ],
    );
    assert!(ok, "{err}");
    assert!(
        out.contains("registered payments/pay-1 at 10.0.0.5:8080"),
        "{out}"
    );
    cli(
        &agent.base,
        &[
            "register",
            "payments",
            "pay-2",
            "--address",
            "10.0.0.6",
            "--port",
            "8080",
            "--version",
            "2.0.0",
        ],
    );

    let (ok, out, _) = cli(&agent.base, &["instances", "payments", "--version", "^1.4"]);
    assert!(ok);
    assert!(out.starts_with("ID"), "a table with a header: {out}");
    assert!(out.contains("pay-1") && !out.contains("pay-2"), "{out}");

    let (ok, out, _) = cli(
        &agent.base,
        &["--json", "instances", "payments", "--tag", "v2"],
    );
    assert!(ok);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["instances"][0]["meta"]["team"], "core");

    let (ok, out, _) = cli(&agent.base, &["services"]);
    assert!(ok);
    assert!(out.contains("payments") && out.contains('2'), "{out}");

    let (ok, out, _) = cli(&agent.base, &["deregister", "payments", "pay-1"]);
    assert!(ok, "{out}");
    let (_, out, _) = cli(&agent.base, &["--json", "instances", "payments"]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["instances"].as_array().unwrap().len(), 1);

    // API errors come back readable, with a non-zero exit.
    let (ok, _, err) = cli(
        &agent.base,
        &[
            "register",
            "payments",
            "bad",
            "--address",
            "10.0.0.5",
            "--port",
            "0",
        ],
    );
    assert!(!ok);
    assert!(
        err.contains("port") && err.contains("invalid_field"),
        "{err}"
    );
}

#[test]
fn an_unreachable_registry_is_a_clear_error() {
    // Port 1 on loopback: nothing listens there.
    let (ok, _, err) = cli("http://127.0.0.1:1", &["services"]);
    assert!(!ok);
    assert!(
        err.contains("cannot reach the registry at http://127.0.0.1:1"),
        "{err}"
    );
}

#[test]
fn watch_prints_changes_as_they_happen() {
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::spawn(dir.path());
    let mut watch = Command::new(BIN)
        .args(["--addr", &agent.base, "watch", "orders"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(watch.stdout.take().unwrap()).lines();
    let first = lines.next().unwrap().unwrap();
    assert!(first.contains("snapshot: 0 instance(s)"), "{first}");
    cli(
        &agent.base,
        &[
            "register",
            "orders",
            "o-1",
            "--address",
            "10.0.0.7",
            "--port",
            "9000",
        ],
    );
    let line = lines.next().unwrap().unwrap();
    assert!(line.contains("upsert o-1 10.0.0.7:9000"), "{line}");
    cli(&agent.base, &["deregister", "orders", "o-1"]);
    let line = lines.next().unwrap().unwrap();
    assert!(line.contains("delete o-1"), "{line}");
    watch.kill().unwrap();
    watch.wait().unwrap();
}

#[test]
fn help_teaches_with_examples() {
    let out = Command::new(BIN)
        .args(["register", "--help"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("muster register payments pay-1"), "{text}");
}
