//! TLS on the HTTP listener, with certificates made by `muster tls`: a
//! client must trust the CA, client certificates are required when the
//! agent asks for them, and SIGHUP swaps the certificate without dropping
//! open watches.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::json;

use crate::harness::{Agent, BIN, cli, http};

/// How long anything here may take on a busy machine.
const WAIT: Duration = Duration::from_secs(20);

/// `muster tls …` in `dir`, which must succeed.
pub(crate) fn tls(dir: &Path, args: &[&str]) -> String {
    let out = Command::new(BIN)
        .arg("tls")
        .args(args)
        .arg("--dir")
        .arg(dir)
        .current_dir(dir)
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    assert!(out.status.success(), "muster tls {args:?}: {stderr}");
    stdout
}

/// A CA, a server certificate and a client certificate in `dir`.
fn certificates(dir: &Path) {
    tls(dir, &["ca", "create"]);
    tls(dir, &["cert", "create", "--server"]);
    tls(dir, &["cert", "create", "--client"]);
}

pub(crate) fn path(dir: &Path, file: &str) -> String {
    dir.join(file).to_str().unwrap().to_string()
}

/// A client that trusts only the CA in `dir`, optionally with the client
/// certificate there.
fn client(dir: &Path, with_cert: bool) -> reqwest::Client {
    let _ = http(); // installs the crypto provider
    let ca = std::fs::read(dir.join("muster-ca.pem")).unwrap();
    let mut b = reqwest::Client::builder()
        .no_proxy()
        .tls_certs_only([reqwest::Certificate::from_pem(&ca).unwrap()]);
    if with_cert {
        let mut pem = std::fs::read(dir.join("muster-client.pem")).unwrap();
        pem.extend(std::fs::read(dir.join("muster-client-key.pem")).unwrap());
        b = b.identity(reqwest::Identity::from_pem(&pem).unwrap());
    }
    b.build().unwrap()
}

async fn status(client: &reqwest::Client, url: &str) -> Result<u16, String> {
    client
        .get(url)
        .timeout(WAIT)
        .send()
        .await
        .map(|r| r.status().as_u16())
        .map_err(|e| format!("{e:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_needs_a_client_that_trusts_the_ca() {
    let certs = tempfile::tempdir().unwrap();
    certificates(certs.path());
    // The CLI never overwrites a key.
    let (ok, _, err) = cli(
        "http://unused",
        &[
            "tls",
            "ca",
            "create",
            "--dir",
            certs.path().to_str().unwrap(),
        ],
    );
    assert!(!ok && err.contains("exists"), "{err}");

    let data = tempfile::tempdir().unwrap();
    let agent = Agent::spawn_with(
        data.path(),
        &[
            "--tls-cert",
            &path(certs.path(), "muster-server.pem"),
            "--tls-key",
            &path(certs.path(), "muster-server-key.pem"),
        ],
        &[],
    );
    assert!(
        agent.base.starts_with("https://127.0.0.1:"),
        "{}",
        agent.base
    );
    let url = agent.url("/v1/services");

    assert_eq!(status(&client(certs.path(), false), &url).await, Ok(200));
    // The system's roots do not know the development CA.
    let refused = status(&http(), &url).await.unwrap_err();
    assert!(refused.contains("UnknownIssuer"), "{refused}");
    // No cleartext on the TLS port.
    let plain = url.replacen("https://", "http://", 1);
    assert!(status(&http(), &plain).await.is_err());

    // The CLI, with and without --cacert.
    let (ok, out, err) = cli(
        &agent.base,
        &[
            "--cacert",
            &path(certs.path(), "muster-ca.pem"),
            "register",
            "web",
            "w1",
            "--address",
            "10.0.0.1",
            "--port",
            "80",
        ],
    );
    assert!(ok, "{err}");
    assert!(out.contains("w1"), "{out}");
    // The snapshot commands take the same option.
    let backup = certs.path().join("backup.msnap");
    let (ok, _, err) = cli(
        &agent.base,
        &[
            "--cacert",
            &path(certs.path(), "muster-ca.pem"),
            "snapshot",
            "save",
            backup.to_str().unwrap(),
        ],
    );
    assert!(ok, "{err}");
    let (ok, out, err) = cli(
        &agent.base,
        &["snapshot", "inspect", backup.to_str().unwrap()],
    );
    assert!(ok && out.contains("1 instances"), "{out}{err}");
    let (ok, _, err) = cli(&agent.base, &["services"]);
    assert!(!ok, "an untrusted registry was accepted");
    assert!(
        err.contains("certificate") && err.contains("--cacert"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_required_client_certificate_must_come_from_the_ca() {
    let certs = tempfile::tempdir().unwrap();
    certificates(certs.path());
    let other = tempfile::tempdir().unwrap();
    certificates(other.path());

    let data = tempfile::tempdir().unwrap();
    let agent = Agent::spawn_with(
        data.path(),
        &[],
        &[
            ("MUSTER_TLS_CERT", &path(certs.path(), "muster-server.pem")),
            (
                "MUSTER_TLS_KEY",
                &path(certs.path(), "muster-server-key.pem"),
            ),
            ("MUSTER_TLS_CLIENT_CA", &path(certs.path(), "muster-ca.pem")),
        ],
    );
    let url = agent.url("/v1/services");
    assert_eq!(status(&client(certs.path(), true), &url).await, Ok(200));
    // Without a certificate, the handshake fails.
    assert!(status(&client(certs.path(), false), &url).await.is_err());
    // A certificate from another CA (the server trusted as before).
    let mut pem = std::fs::read(other.path().join("muster-client.pem")).unwrap();
    pem.extend(std::fs::read(other.path().join("muster-client-key.pem")).unwrap());
    let stranger = reqwest::Client::builder()
        .no_proxy()
        .tls_certs_only([reqwest::Certificate::from_pem(
            &std::fs::read(certs.path().join("muster-ca.pem")).unwrap(),
        )
        .unwrap()])
        .identity(reqwest::Identity::from_pem(&pem).unwrap())
        .build()
        .unwrap();
    assert!(status(&stranger, &url).await.is_err());

    // The CLI with its certificate, from the environment.
    let out = Command::new(BIN)
        .args(["--addr", &agent.base, "services"])
        .env("MUSTER_CACERT", path(certs.path(), "muster-ca.pem"))
        .env(
            "MUSTER_CLIENT_CERT",
            path(certs.path(), "muster-client.pem"),
        )
        .env(
            "MUSTER_CLIENT_KEY",
            path(certs.path(), "muster-client-key.pem"),
        )
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Lines of the agent's log, as they come.
fn log_lines(agent: &mut Agent) -> mpsc::Receiver<String> {
    let stderr = agent.child.stderr.take().expect("stderr piped");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    rx
}

/// Waits for a log line containing `want`.
async fn logged(lines: &mpsc::Receiver<String>, want: &str) -> String {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let line = tokio::task::block_in_place(|| lines.recv_timeout(left))
            .unwrap_or_else(|_| panic!("no log line with {want:?} within {WAIT:?}"));
        if line.contains(want) {
            return line;
        }
    }
}

/// Reads `resp` (an SSE stream) until its text holds `want`.
async fn read_until(resp: &mut reqwest::Response, seen: &mut String, want: &str) {
    while !seen.contains(want) {
        let chunk = tokio::time::timeout(WAIT, resp.chunk())
            .await
            .unwrap_or_else(|_| panic!("no {want:?} on the watch; saw {seen:?}"))
            .unwrap()
            .expect("the watch ended");
        seen.push_str(std::str::from_utf8(&chunk).unwrap());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_swaps_the_certificate_and_keeps_open_watches() {
    let old = tempfile::tempdir().unwrap();
    certificates(old.path());
    let new = tempfile::tempdir().unwrap();
    certificates(new.path());
    // The files the agent reads, first with the old CA's certificate.
    let live = tempfile::tempdir().unwrap();
    let (cert, key) = (live.path().join("cert.pem"), live.path().join("key.pem"));
    std::fs::copy(old.path().join("muster-server.pem"), &cert).unwrap();
    std::fs::copy(old.path().join("muster-server-key.pem"), &key).unwrap();

    let data = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(BIN);
    cmd.args(["agent", "--http-addr", "127.0.0.1:0", "--data-dir"])
        .arg(data.path())
        .arg("--tls-cert")
        .arg(&cert)
        .arg("--tls-key")
        .arg(&key)
        .env("MUSTER_LOG", "warn,muster_agent=info")
        .stderr(Stdio::piped());
    let mut agent = Agent::start(cmd);
    let lines = log_lines(&mut agent);

    let old_client = client(old.path(), false);
    let mut watch = old_client
        .get(agent.url("/v1/watch?service=web"))
        .send()
        .await
        .unwrap();
    assert_eq!(watch.status(), 200);
    let mut seen = String::new();
    read_until(&mut watch, &mut seen, "event: snapshot").await;

    // New files in place (each replaced whole), then SIGHUP.
    let swap = |from: &Path, to: &Path| {
        let tmp = to.with_extension("tmp");
        std::fs::copy(from, &tmp).unwrap();
        std::fs::rename(&tmp, to).unwrap();
    };
    swap(&new.path().join("muster-server.pem"), &cert);
    swap(&new.path().join("muster-server-key.pem"), &key);
    let hup = |agent: &Agent| {
        let pid = agent.child.id().to_string();
        assert!(
            Command::new("kill")
                .args(["-HUP", &pid])
                .status()
                .unwrap()
                .success()
        );
    };
    hup(&agent);
    logged(&lines, "TLS files reloaded").await;

    // New connections get the new certificate.
    let new_client = client(new.path(), false);
    let url = agent.url("/v1/services/web/instances/w1");
    let r = new_client
        .put(&url)
        .json(&json!({"address": "10.0.0.1", "port": 80}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let fresh_old = client(old.path(), false);
    assert!(status(&fresh_old, &url).await.is_err());
    // The watch opened before the swap is still served.
    read_until(&mut watch, &mut seen, "event: upsert").await;
    assert!(seen.contains("\"w1\""), "{seen}");

    // A broken file is refused and the certificate in use stays.
    std::fs::write(&cert, "not a certificate").unwrap();
    hup(&agent);
    let line = logged(&lines, "not reloaded").await;
    assert!(line.contains("cert.pem"), "{line}");
    assert_eq!(status(&new_client, &url).await, Ok(200));
}
