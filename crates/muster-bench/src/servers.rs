//! The processes under load: a muster agent, the bare-HTTP ceiling, and how
//! to read a process's memory.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{HeaderName, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpListener;
use tokio::process::{Child, ChildStdout, Command};

use crate::load::Answer;

/// A server process started by the harness; killed on drop.
pub struct Proc {
    child: Child,
    /// Where it serves HTTP.
    pub addr: SocketAddr,
    /// Its process id (taskset execs, so this is the server itself).
    pub pid: u32,
    /// Kept open so the server never writes into a closed pipe.
    _stdout: ChildStdout,
    /// How long it took from spawn to its "listening" line.
    pub startup: Duration,
}

impl Proc {
    /// SIGKILL and reap: no chance to flush anything.
    pub async fn kill9(mut self) -> Result<()> {
        self.child.kill().await?;
        Ok(())
    }

    /// Resident memory now, in bytes.
    pub fn rss(&self) -> Result<u64> {
        rss_bytes(self.pid)
    }
}

/// `VmRSS` of a process, in bytes.
pub fn rss_bytes(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .ok_or_else(|| anyhow!("no VmRSS for pid {pid}"))?;
    let kib: u64 = line
        .split_whitespace()
        .nth(1)
        .ok_or_else(|| anyhow!("bad VmRSS line {line:?}"))?
        .parse()?;
    Ok(kib * 1024)
}

/// CPU time (user + system) the process `pid` has used so far, in
/// microseconds, from `/proc/<pid>/stat` (clock ticks of 10 ms on Linux's
/// usual `USER_HZ` of 100).
pub fn cpu_us(pid: u32) -> Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    // Fields after the command name, which is in parentheses and may hold
    // spaces: state is field 3, utime 14 and stime 15.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .ok_or_else(|| anyhow!("bad /proc/{pid}/stat"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| -> Result<u64> {
        fields
            .get(i)
            .ok_or_else(|| anyhow!("short /proc/{pid}/stat"))?
            .parse::<u64>()
            .map_err(Into::into)
    };
    // `rest` starts at field 3 (state), so field n is at index n - 3.
    Ok((ticks(14 - 3)? + ticks(15 - 3)?) * 10_000)
}

/// A command, pinned to `cpu` with taskset when one is given.
pub fn pinned(cpu: Option<usize>, program: &Path) -> Command {
    match cpu {
        Some(cpu) => {
            let mut c = Command::new("taskset");
            c.arg("-c").arg(cpu.to_string()).arg(program);
            c
        }
        None => Command::new(program),
    }
}

/// Spawns `cmd`, whose first stdout line is `<prefix><http://addr>`, and
/// waits (up to `timeout`) for that line.
async fn spawn_announcing(
    mut cmd: Command,
    prefix: &str,
    log: &Path,
    timeout: Duration,
) -> Result<Proc> {
    let log_file = std::fs::File::create(log)?;
    cmd.stdout(Stdio::piped())
        .stderr(Stdio::from(log_file))
        .stdin(Stdio::null())
        .kill_on_drop(true);
    let start = Instant::now();
    let mut child = cmd.spawn().context("spawning server")?;
    let pid = child.id().ok_or_else(|| anyhow!("server exited at once"))?;
    let stdout = child.stdout.take().expect("piped stdout");
    let mut reader = BufReader::new(stdout);
    let mut line = String::new();
    let read = tokio::time::timeout(timeout, reader.read_line(&mut line)).await;
    let startup = start.elapsed();
    match read {
        Ok(Ok(n)) if n > 0 => {}
        Ok(_) => bail!(
            "server exited before it was ready; its log:\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        ),
        Err(_) => bail!("server not ready within {timeout:?}"),
    }
    let url = line
        .trim()
        .strip_prefix(prefix)
        .ok_or_else(|| anyhow!("unexpected first line from server: {line:?}"))?;
    let addr: SocketAddr = url
        .trim_start_matches("http://")
        .trim_start_matches("https://")
        .parse()
        .with_context(|| format!("parsing address from {line:?}"))?;
    Ok(Proc {
        child,
        addr,
        pid,
        _stdout: reader.into_inner(),
        startup,
    })
}

/// Starts `muster agent` on 127.0.0.1:0 with its data in `data_dir`.
pub async fn spawn_muster(
    bin: &Path,
    cpu: Option<usize>,
    data_dir: &Path,
    extra: &[&str],
) -> Result<Proc> {
    let mut cmd = pinned(cpu, bin);
    cmd.args(["agent", "--http-addr", "127.0.0.1:0", "--data-dir"])
        .arg(data_dir)
        // Every client of a benchmark comes from 127.0.0.1: its thousands
        // of watchers are the load, not an abuse to cap.
        .args([
            "--max-connections-per-ip=0",
            "--max-watches-per-ip=0",
            "--max-blocking-queries-per-ip=0",
        ])
        .args(extra)
        .env("MUSTER_LOG", "warn");
    let log = data_dir.with_extension("log");
    // Recovering a million instances may take a while; the timeout only
    // guards against a server that never comes up.
    spawn_announcing(cmd, "muster listening on ", &log, Duration::from_secs(300)).await
}

/// Headers the server writes per response itself, which the ceiling must not
/// copy from muster's answer: hyper sets `content-length` (and `date`) on
/// the ceiling's answers exactly as it does on muster's.
const OWN_HEADERS: &[&str] = &[
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "date",
];

/// Status and headers the ceiling answers with: muster's, as captured from
/// the sample answer of a scenario (`x-muster-index` and `content-type`
/// included), less the ones hyper writes itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CeilingHead {
    pub status: u16,
    pub headers: Vec<(String, String)>,
}

impl CeilingHead {
    /// The head of muster's `answer`, for the ceiling to repeat.
    pub fn of(answer: &Answer) -> Result<CeilingHead> {
        let mut headers = Vec::new();
        for (name, value) in &answer.headers {
            if OWN_HEADERS.contains(&name.as_str()) {
                continue;
            }
            let value = value
                .to_str()
                .with_context(|| format!("header {name} of muster's answer is not text"))?;
            headers.push((name.as_str().to_string(), value.to_string()));
        }
        Ok(CeilingHead {
            status: answer.status.as_u16(),
            headers,
        })
    }
}

/// Starts the ceiling server (this binary's `ceiling` subcommand) answering
/// every request with muster's `answer`: its status, headers and body.
pub async fn spawn_ceiling(cpu: Option<usize>, answer: &Answer, dir: &Path) -> Result<Proc> {
    let body_file = dir.join("ceiling-body.json");
    std::fs::write(&body_file, &answer.body)?;
    let head_file = dir.join("ceiling-head.json");
    std::fs::write(&head_file, serde_json::to_vec(&CeilingHead::of(answer)?)?)?;
    let exe = std::env::current_exe()?;
    let mut cmd = pinned(cpu, &exe);
    cmd.args(["ceiling", "--body-file"])
        .arg(&body_file)
        .arg("--head-file")
        .arg(&head_file);
    spawn_announcing(
        cmd,
        "ceiling listening on ",
        &dir.join("ceiling.log"),
        Duration::from_secs(30),
    )
    .await
}

/// The muster binary: `--muster-bin`, else `muster` next to this executable.
pub fn default_muster_bin() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join("muster")))
        .unwrap_or_else(|| PathBuf::from("muster"))
}

/// The ceiling: a minimal hyper HTTP/1.1 server that answers every request
/// with the same status, headers and JSON bytes muster gave, on the same kind
/// of multi-threaded tokio runtime as muster (and, as the bench binary's
/// global allocator, the same mimalloc). Prints `ceiling listening on
/// http://ADDR` once bound.
pub async fn run_ceiling(head: CeilingHead, body: Bytes) -> Result<()> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    println!("ceiling listening on http://{}", listener.local_addr()?);
    serve_ceiling(listener, head, body).await
}

/// Serves the ceiling's one answer on `listener`, for ever.
async fn serve_ceiling(listener: TcpListener, head: CeilingHead, body: Bytes) -> Result<()> {
    let status = StatusCode::from_u16(head.status)?;
    let mut headers = Vec::with_capacity(head.headers.len());
    for (name, value) in &head.headers {
        headers.push((
            HeaderName::from_bytes(name.as_bytes())?,
            HeaderValue::from_str(value)?,
        ));
    }
    let headers: Arc<[(HeaderName, HeaderValue)]> = headers.into();
    loop {
        let (stream, _) = listener.accept().await?;
        stream.set_nodelay(true)?;
        let (body, headers) = (body.clone(), Arc::clone(&headers));
        tokio::spawn(async move {
            let service = service_fn(move |req: Request<hyper::body::Incoming>| {
                let (body, headers) = (body.clone(), Arc::clone(&headers));
                async move {
                    // Read the request body like any real endpoint must.
                    let _ = http_body_util::BodyExt::collect(req.into_body()).await;
                    // Built like muster's answers: a response, then its
                    // headers inserted one by one.
                    let mut resp = Response::new(Full::new(body));
                    *resp.status_mut() = status;
                    for (name, value) in headers.iter() {
                        resp.headers_mut().insert(name.clone(), value.clone());
                    }
                    Ok::<_, Infallible>(resp)
                }
            });
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::load::{Conn, request};

    fn muster_like_answer() -> Answer {
        let mut headers = hyper::HeaderMap::new();
        headers.insert("content-type", HeaderValue::from_static("application/json"));
        headers.insert("x-muster-index", HeaderValue::from_static("42"));
        headers.insert("content-length", HeaderValue::from_static("11"));
        headers.insert(
            "date",
            HeaderValue::from_static("Wed, 02 Dec 2026 21:05:00 GMT"),
        );
        Answer {
            status: StatusCode::CREATED,
            headers,
            body: Bytes::from_static(br#"{"id":"x1"}"#),
        }
    }

    #[test]
    fn ceiling_head_keeps_muster_headers_but_not_the_ones_hyper_writes() {
        let head = CeilingHead::of(&muster_like_answer()).unwrap();
        assert_eq!(head.status, 201);
        assert_eq!(
            head.headers,
            [
                ("content-type".to_string(), "application/json".to_string()),
                ("x-muster-index".to_string(), "42".to_string()),
            ]
        );
    }

    #[tokio::test]
    async fn ceiling_answers_with_muster_status_headers_and_bytes() {
        let answer = muster_like_answer();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(serve_ceiling(
            listener,
            CeilingHead::of(&answer).unwrap(),
            answer.body.clone(),
        ));
        let mut conn = Conn::connect(addr).await.unwrap();
        for _ in 0..2 {
            let got = conn
                .call_answer(request("GET", "/v1/anything", None))
                .await
                .unwrap();
            assert_eq!(got.status, answer.status);
            assert_eq!(got.body, answer.body);
            let mut names: Vec<&str> = got.headers.keys().map(|n| n.as_str()).collect();
            names.sort_unstable();
            // The same header set muster's answers carry.
            assert_eq!(
                names,
                ["content-length", "content-type", "date", "x-muster-index"]
            );
            assert_eq!(got.headers["x-muster-index"], "42");
            assert_eq!(got.headers["content-type"], "application/json");
            assert_eq!(got.headers["content-length"], "11");
        }
        server.abort();
    }
}
