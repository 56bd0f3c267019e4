//! Starts a real server in-process on 127.0.0.1:0 and talks HTTP to it.

use std::time::Duration;

use muster_agent::Config;
use muster_registry::Registry;
use serde_json::{Value, json};
use tempfile::TempDir;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub struct TestServer {
    pub base: String,
    pub http: reqwest::Client,
    pub registry: Registry,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), muster_agent::AgentError>>>,
    pub dir: TempDir,
}

impl TestServer {
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with(tweak: impl FnOnce(&mut Config)) -> Self {
        Self::start_in(tempfile::tempdir().unwrap(), tweak).await
    }

    pub async fn start_in(dir: TempDir, tweak: impl FnOnce(&mut Config)) -> Self {
        let mut config = Config {
            data_dir: dir.path().join("data"),
            ..Config::default()
        };
        tweak(&mut config);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let (ready_tx, ready_rx) = oneshot::channel();
        let task = tokio::spawn(muster_agent::run(
            listener,
            config,
            async move {
                let _ = stop_rx.await;
            },
            move |started| {
                let _ = ready_tx.send((started.addr, started.registry.clone()));
            },
        ));
        let (addr, registry) = match ready_rx.await {
            Ok(ready) => ready,
            Err(_) => panic!("server failed to start: {:?}", task.await),
        };
        TestServer {
            base: format!("http://{addr}"),
            http: reqwest::Client::builder().no_proxy().build().unwrap(),
            registry,
            stop: Some(stop_tx),
            task: Some(task),
            dir,
        }
    }

    /// Stops the server gracefully and returns its data directory.
    pub async fn stop(mut self) -> TempDir {
        let _ = self.stop.take().unwrap().send(());
        self.task.take().unwrap().await.unwrap().unwrap();
        self.dir
    }

    /// The Prometheus text of `/metrics`.
    pub async fn metrics(&self) -> String {
        self.http
            .get(self.url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    pub async fn put(&self, path: &str, body: Value) -> (u16, Value) {
        let r = self
            .http
            .put(self.url(path))
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    pub async fn put_raw(&self, path: &str, body: impl Into<reqwest::Body>) -> (u16, Value) {
        let r = self
            .http
            .put(self.url(path))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    pub async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        let r = self
            .http
            .post(self.url(path))
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    pub async fn get(&self, path: &str) -> (u16, Value, u64) {
        let r = self.http.get(self.url(path)).send().await.unwrap();
        let status = r.status().as_u16();
        let index = r
            .headers()
            .get("x-muster-index")
            .map(|v| v.to_str().unwrap().parse().unwrap())
            .unwrap_or(0);
        (status, r.json().await.unwrap_or(Value::Null), index)
    }

    pub async fn delete(&self, path: &str) -> (u16, Value) {
        let r = self.http.delete(self.url(path)).send().await.unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// Registers `id` in `service` with extra fields merged into a base body.
    pub async fn register(&self, service: &str, id: &str, extra: Value) -> Value {
        let mut body = json!({"address": "10.0.0.1", "port": 8080});
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        let (status, v) = self
            .put(&format!("/v1/services/{service}/instances/{id}"), body)
            .await;
        assert_eq!(status, 200, "register {service}/{id}: {v}");
        v
    }

    /// Ids of the instances a discovery query returns.
    pub async fn ids(&self, path: &str) -> Vec<String> {
        let (status, v, _) = self.get(path).await;
        assert_eq!(status, 200, "{path}: {v}");
        v["instances"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["id"].as_str().unwrap().to_string())
            .collect()
    }
}

/// An answer read off a raw socket.
pub struct RawResponse {
    pub status: u16,
    /// Header names in lower case.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RawResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body as JSON; fails the test with the raw answer otherwise.
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "{} with a body that is not JSON ({e}): {:?}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }
}

/// A request as bytes: `target` is sent as given, byte for byte, with
/// `Connection: close` so the answer ends with the connection.
pub fn raw_request(method: &str, target: &[u8], headers: &str, body: &str) -> Vec<u8> {
    let mut r = format!("{method} ").into_bytes();
    r.extend_from_slice(target);
    r.extend_from_slice(
        format!(
            " HTTP/1.1\r\nHost: muster\r\nConnection: close\r\n{headers}\
             Content-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    );
    r
}

impl TestServer {
    /// Sends `request` over a plain TCP socket, for what HTTP clients
    /// refuse to send or would normalise (control bytes, `%2e%2e`), and
    /// reads the answer until the server closes the connection.
    pub async fn raw(&self, request: &[u8]) -> RawResponse {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};

        let addr = self.base.strip_prefix("http://").unwrap();
        let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
        conn.write_all(request).await.unwrap();
        let mut out = Vec::new();
        tokio::time::timeout(Duration::from_secs(30), conn.read_to_end(&mut out))
            .await
            .expect("no answer within the deadline")
            .unwrap();
        let end = out
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .unwrap_or_else(|| panic!("no HTTP head in {:?}", String::from_utf8_lossy(&out)));
        let head = std::str::from_utf8(&out[..end]).unwrap();
        let mut lines = head.split("\r\n");
        let status = lines.next().unwrap().split(' ').nth(1).unwrap();
        RawResponse {
            status: status.parse().unwrap(),
            headers: lines
                .map(|l| {
                    let (n, v) = l.split_once(':').unwrap();
                    (n.trim().to_ascii_lowercase(), v.trim().to_string())
                })
                .collect(),
            body: out[end + 4..].to_vec(),
        }
    }
}

/// Yields until `cond` holds; bounded so a broken test fails rather than hangs.
pub async fn until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::task::yield_now().await;
    }
}

/// A minimal Server-Sent Events reader over a streaming response.
pub struct Sse {
    resp: reqwest::Response,
    buf: String,
    deadline: Option<Duration>,
}

#[derive(Debug)]
pub struct SseEvent {
    pub event: String,
    pub id: u64,
    pub data: Value,
}

impl Sse {
    pub async fn open(server: &TestServer, query: &str, last_id: Option<u64>) -> Sse {
        let mut req = server.http.get(server.url(&format!("/v1/watch?{query}")));
        if let Some(id) = last_id {
            req = req.header("Last-Event-ID", id.to_string());
        }
        Sse::from_response(req.send().await.unwrap())
    }

    /// The stream of an answer to a watch request made elsewhere.
    pub fn from_response(resp: reqwest::Response) -> Sse {
        assert_eq!(resp.status(), 200);
        Sse {
            resp,
            buf: String::new(),
            deadline: Some(Duration::from_secs(10)),
        }
    }

    /// Opens a multiplexed watch (`POST /v1/watch?{query}` with `body`);
    /// an error answer comes back as its status and JSON.
    pub async fn post(server: &TestServer, query: &str, body: &Value) -> Result<Sse, (u16, Value)> {
        let resp = server
            .http
            .post(server.url(&format!("/v1/watch?{query}")))
            .json(body)
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        if status != 200 {
            return Err((status, resp.json().await.unwrap_or(Value::Null)));
        }
        assert_eq!(
            resp.headers()["content-type"],
            "text/event-stream",
            "an SSE answer"
        );
        Ok(Sse {
            resp,
            buf: String::new(),
            deadline: Some(Duration::from_secs(10)),
        })
    }

    /// Waits (with the deadline) for the server to end the stream, failing
    /// on any event before the end.
    pub async fn ended(&mut self) {
        loop {
            let chunk = tokio::time::timeout(Duration::from_secs(10), self.resp.chunk())
                .await
                .expect("the stream did not end within the deadline");
            match chunk {
                Ok(Some(c)) => {
                    let text = std::str::from_utf8(&c).unwrap();
                    assert!(
                        text.trim_start().starts_with(':'),
                        "an event before the end: {text:?}"
                    );
                }
                Ok(None) | Err(_) => return,
            }
        }
    }

    /// Without a deadline on events: for tests on a paused clock, where
    /// tokio's timers jump ahead while the test waits for a socket.
    pub fn untimed(mut self) -> Sse {
        self.deadline = None;
        self
    }

    pub async fn next(&mut self) -> SseEvent {
        loop {
            if let Some(end) = self.buf.find("\n\n") {
                let frame: String = self.buf.drain(..end + 2).collect();
                let (mut event, mut id, mut data) = (String::new(), 0, String::new());
                for line in frame.lines() {
                    if let Some(v) = line.strip_prefix("event:") {
                        event = v.trim().to_string();
                    } else if let Some(v) = line.strip_prefix("id:") {
                        id = v.trim().parse().unwrap();
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data.push_str(v.trim_start());
                    }
                }
                if event.is_empty() {
                    continue; // keep-alive comment
                }
                return SseEvent {
                    event,
                    id,
                    data: serde_json::from_str(&data).unwrap(),
                };
            }
            // A deadline, so a missing event fails the test instead of
            // hanging it (keep-alive comments come every 15 s).
            let chunk = match self.deadline {
                Some(d) => tokio::time::timeout(d, self.resp.chunk())
                    .await
                    .expect("no SSE event within the deadline"),
                None => self.resp.chunk().await,
            };
            let chunk = chunk.unwrap().expect("stream ended");
            self.buf.push_str(std::str::from_utf8(&chunk).unwrap());
        }
    }
}
