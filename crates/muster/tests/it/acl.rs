//! ACLs through the real binary: the CLI end to end, and no secret in any
//! output of a run (logs at trace level, the audit file, metrics, error
//! answers, the data directory, a backup).

use std::path::Path;
use std::process::{Command, Stdio};

use serde_json::Value;

use crate::harness::{Agent, BIN, cli, http};

fn json_cli(base: &str, token: Option<&str>, args: &[&str]) -> Value {
    let mut all = vec!["--json"];
    if let Some(t) = token {
        all.extend(["--token", t]);
    }
    all.extend(args);
    let (ok, out, err) = cli(base, &all);
    assert!(ok, "muster {args:?} failed: {err}");
    serde_json::from_str(out.trim()).unwrap_or(Value::Null)
}

/// Every file under `dir`, read whole.
fn files(dir: &Path, out: &mut Vec<(String, Vec<u8>)>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            files(&p, out);
        } else {
            out.push((p.display().to_string(), std::fs::read(&p).unwrap()));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_reaches_logs_audit_metrics_errors_data_or_backups() {
    let dir = tempfile::tempdir().unwrap();
    let (data, log, audit, backup) = (
        dir.path().join("data"),
        dir.path().join("agent.log"),
        dir.path().join("audit.jsonl"),
        dir.path().join("backup.msnap"),
    );
    let mut cmd = Command::new(BIN);
    cmd.args(["agent", "--http-addr", "127.0.0.1:0", "--acl", "--data-dir"])
        .arg(&data)
        .arg("--audit-file")
        .arg(&audit)
        // Everything muster logs, at every level.
        .env("MUSTER_LOG", "trace,h2=info,hyper=info,openraft=info")
        .stderr(Stdio::from(std::fs::File::create(&log).unwrap()));
    let agent = Agent::start(cmd);
    let base = agent.base.clone();

    let boot = json_cli(&base, None, &["acl", "bootstrap"]);
    let mgmt = boot["secret"].as_str().unwrap().to_string();
    json_cli(
        &base,
        Some(&mgmt),
        &["acl", "policy", "create", "w", "--write", "pay*"],
    );
    let t = json_cli(
        &base,
        Some(&mgmt),
        &["acl", "token", "create", "--policy", "w"],
    );
    let secret = t["secret"].as_str().unwrap().to_string();
    let accessor = t["accessor"].as_str().unwrap().to_string();

    // Use both: accepted and refused writes, reads, bad tokens, errors.
    let mut answers = String::new();
    for (token, svc) in [
        (&secret, "payments"),
        (&secret, "orders"),
        (&mgmt, "orders"),
    ] {
        let (ok, out, err) = cli(
            &base,
            &[
                "--token",
                token,
                "register",
                svc,
                "i1",
                "--address",
                "10.0.0.1",
                "--port",
                "80",
            ],
        );
        assert_eq!(ok, svc == "payments" || token == &mgmt, "{err}");
        answers.push_str(&out);
        answers.push_str(&err);
    }
    let (ok, out, err) = cli(&base, &["--token", "wrong-secret", "services"]);
    assert!(!ok && err.contains("401"), "{err}");
    answers.push_str(&out);
    answers.push_str(&err);
    for path in [
        "/v1/acl/tokens",
        "/v1/acl/token/self",
        "/v1/services/orders/instances",
    ] {
        for token in [&secret, &mgmt] {
            let r = http()
                .get(format!("{base}{path}"))
                .bearer_auth(token)
                .send()
                .await
                .unwrap();
            answers.push_str(&r.text().await.unwrap());
        }
    }
    let (ok, _, err) = cli(&base, &["snapshot", "save", backup.to_str().unwrap()]);
    assert!(
        !ok && err.contains("403"),
        "a backup needs the operator right: {err}"
    );
    let (ok, _, err) = cli(
        &base,
        &[
            "--token",
            &mgmt,
            "snapshot",
            "save",
            backup.to_str().unwrap(),
        ],
    );
    assert!(ok, "{err}");
    // The revoke is audited too.
    json_cli(&base, Some(&mgmt), &["acl", "token", "revoke", &accessor]);
    let metrics = http()
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("muster_audit_writes_total{op=\"register\",result=\"denied\"} 1"),
        "{metrics}"
    );
    drop(agent);

    let audit_text = std::fs::read_to_string(&audit).unwrap();
    assert!(
        audit_text.contains(&accessor),
        "the audit names the accessor:\n{audit_text}"
    );
    assert!(audit_text.contains("\"result\":\"denied\""), "{audit_text}");
    let mut outputs = vec![
        ("agent log".to_string(), std::fs::read(&log).unwrap()),
        ("audit file".to_string(), audit_text.into_bytes()),
        ("metrics".to_string(), metrics.into_bytes()),
        ("answers".to_string(), answers.into_bytes()),
        ("backup".to_string(), std::fs::read(&backup).unwrap()),
    ];
    files(&data, &mut outputs);
    assert!(outputs.len() > 5, "the data directory has files");
    for (what, bytes) in &outputs {
        for s in [&secret, &mgmt] {
            assert!(
                !bytes.windows(s.len()).any(|w| w == s.as_bytes()),
                "a secret is in the {what}"
            );
        }
    }
}
