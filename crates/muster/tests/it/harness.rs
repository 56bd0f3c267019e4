//! Spawns the real binary on 127.0.0.1:0 and finds its address from the
//! one line it prints when ready.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, ChildStdout, Command, ExitStatus, Stdio};
use std::time::Duration;

pub const BIN: &str = env!("CARGO_BIN_EXE_muster");

pub struct Agent {
    pub child: Child,
    pub base: String,
    /// The agent's stdout after its listening line, held open: it reaches
    /// its end when the process exits.
    stdout: Option<BufReader<ChildStdout>>,
}

impl Agent {
    pub fn spawn(data_dir: &Path) -> Agent {
        Self::spawn_with(data_dir, &[], &[])
    }

    pub fn spawn_with(data_dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Agent {
        let mut cmd = Command::new(BIN);
        cmd.args(["agent", "--http-addr", "127.0.0.1:0", "--data-dir"])
            .arg(data_dir)
            .args(args)
            .env("MUSTER_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        for (k, v) in env {
            cmd.env(k, v);
        }
        Self::start(cmd)
    }

    /// Starts `cmd` (a `muster agent` on 127.0.0.1:0, however launched)
    /// and waits for its listening line.
    pub fn start(mut cmd: Command) -> Agent {
        cmd.stdout(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn muster agent");
        let mut line = String::new();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        stdout.read_line(&mut line).unwrap();
        let base = line
            .trim()
            .strip_prefix("muster listening on ")
            .unwrap_or_else(|| panic!("agent did not start; first line: {line:?}"))
            .to_string();
        Agent {
            child,
            base,
            stdout: Some(stdout),
        }
    }

    /// SIGKILL: no chance to flush or clean up.
    pub fn kill9(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// SIGTERM, and the exit status.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        self.send_term();
        self.child.wait().unwrap()
    }

    /// SIGTERM, without waiting: see [`Agent::exit_status`].
    pub fn send_term(&self) {
        let pid = self.child.id().to_string();
        assert!(
            Command::new("kill")
                .args(["-TERM", &pid])
                .status()
                .unwrap()
                .success()
        );
    }

    /// Waits for the process to exit by itself, at most `within`: its
    /// stdout reaches its end when it does.
    pub async fn exit_status(&mut self, within: Duration) -> Option<ExitStatus> {
        let mut stdout = self.stdout.take().expect("stdout is held until exit");
        let closed = tokio::task::spawn_blocking(move || {
            std::io::copy(&mut stdout, &mut std::io::sink()).map(|_| ())
        });
        match tokio::time::timeout(within, closed).await {
            Ok(_) => Some(self.child.wait().unwrap()),
            // Still running; dropping the agent kills it, which ends the read.
            Err(_) => None,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// `GET path` as JSON, which must succeed.
    pub async fn get_json(&self, path: &str) -> serde_json::Value {
        let r = http().get(self.url(path)).send().await.unwrap();
        assert!(r.status().is_success(), "GET {path}: {}", r.status());
        r.json().await.unwrap()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn http() -> reqwest::Client {
    // The workspace build gives reqwest rustls without a default provider.
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder().no_proxy().build().unwrap()
}

/// Runs the CLI and returns (success, stdout, stderr).
pub fn cli(base: &str, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(BIN)
        .arg("--addr")
        .arg(base)
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
