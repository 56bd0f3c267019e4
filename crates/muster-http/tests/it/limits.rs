//! The listener's limits against abusive connections, over raw sockets:
//! a cap on connections that keeps `/healthz` answering, deadlines for
//! request heads (slowloris, idle keep-alive) and bodies.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

use crate::harness::TestServer;

/// Every wait of these tests ends by this deadline.
const DEADLINE: Duration = Duration::from_secs(20);

fn addr(server: &TestServer) -> String {
    server.base.trim_start_matches("http://").to_string()
}

/// Reads one response (head and a `Content-Length` body); `None` if the
/// server closed the connection first.
async fn read_response(stream: &mut TcpStream) -> Option<(u16, String, String)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = timeout(DEADLINE, stream.read(&mut chunk))
            .await
            .expect("no answer before the deadline")
            .ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_lowercase();
    let status = head[9..12].parse().unwrap();
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length: "))
        .map_or(0, |v| v.trim().parse().unwrap());
    while buf.len() < head_end + len {
        let n = timeout(DEADLINE, stream.read(&mut chunk))
            .await
            .expect("body before the deadline")
            .unwrap();
        assert!(n > 0, "closed inside the body");
        buf.extend_from_slice(&chunk[..n]);
    }
    let body = String::from_utf8_lossy(&buf[head_end..head_end + len]).into_owned();
    Some((status, head, body))
}

async fn get(stream: &mut TcpStream, path: &str) -> Option<(u16, String, String)> {
    let req = format!("GET {path} HTTP/1.1\r\nhost: muster\r\n\r\n");
    stream.write_all(req.as_bytes()).await.unwrap();
    read_response(stream).await
}

/// Waits for the server to close `stream` (EOF or reset), by the deadline.
async fn closed_by_server(stream: &mut TcpStream) {
    let mut chunk = [0u8; 1024];
    loop {
        match timeout(DEADLINE, stream.read(&mut chunk))
            .await
            .expect("the server did not close the connection before the deadline")
        {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

#[tokio::test]
async fn past_the_connection_cap_only_healthz_answers_and_the_rest_is_typed() {
    let server = TestServer::start_with(|c| c.max_connections = 3).await;
    let addr = addr(&server);
    // Three keep-alive connections hold the cap.
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut s = TcpStream::connect(&addr).await.unwrap();
        assert_eq!(get(&mut s, "/v1/services").await.unwrap().0, 200);
        held.push(s);
    }

    let mut extra = TcpStream::connect(&addr).await.unwrap();
    let (status, head, body) = get(&mut extra, "/v1/services").await.unwrap();
    assert_eq!(status, 503, "{head}{body}");
    assert!(head.contains("retry-after: 1"), "{head}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["error"]["code"], "too_many_connections", "{body}");
    // One request per such connection.
    closed_by_server(&mut extra).await;

    let mut probe = TcpStream::connect(&addr).await.unwrap();
    assert_eq!(get(&mut probe, "/healthz").await.unwrap().0, 200);

    // A held connection goes: the next one is served in full again.
    drop(held.pop());
    let mut served = false;
    for _ in 0..200 {
        let mut s = TcpStream::connect(&addr).await.unwrap();
        if get(&mut s, "/v1/services").await.unwrap().0 == 200 {
            served = true;
            break;
        }
        tokio::task::yield_now().await;
    }
    assert!(served, "a freed place was never given to a new connection");
    assert!(
        server
            .metrics()
            .await
            .contains("muster_http_connections_refused_total")
    );
}

#[tokio::test]
async fn a_request_head_that_never_ends_and_an_idle_connection_are_closed() {
    let server = TestServer::start_with(|c| c.http_header_timeout = Duration::from_secs(1)).await;
    let addr = addr(&server);

    // Slowloris: the head starts and never ends.
    let mut slow = TcpStream::connect(&addr).await.unwrap();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nhost: muster\r\nx-a: 1\r\n")
        .await
        .unwrap();
    closed_by_server(&mut slow).await;

    // A connection that sends nothing at all.
    let mut silent = TcpStream::connect(&addr).await.unwrap();
    closed_by_server(&mut silent).await;

    // Idle keep-alive after an answer.
    let mut idle = TcpStream::connect(&addr).await.unwrap();
    assert_eq!(get(&mut idle, "/healthz").await.unwrap().0, 200);
    closed_by_server(&mut idle).await;
}

#[tokio::test]
async fn a_body_that_does_not_arrive_gets_a_typed_408() {
    let server = TestServer::start_with(|c| c.http_body_timeout = Duration::from_secs(1)).await;
    let addr = addr(&server);
    for announced in ["100", "1000000000000"] {
        let mut s = TcpStream::connect(&addr).await.unwrap();
        let req = format!(
            "PUT /v1/services/pay/instances/p1 HTTP/1.1\r\nhost: muster\r\n\
             content-type: application/json\r\ncontent-length: {announced}\r\n\r\n{{\"a"
        );
        s.write_all(req.as_bytes()).await.unwrap();
        let (status, _, body) = read_response(&mut s).await.expect("an answer");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        let code = v["error"]["code"].as_str().unwrap().to_string();
        assert!(
            (status, code.as_str()) == (408, "body_timeout")
                || (status, code.as_str()) == (413, "body_too_large"),
            "announced {announced}: {status} {body}"
        );
    }
    // Nothing was registered.
    let r = server
        .http
        .get(server.url("/v1/services/pay/instances/p1"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
}

/// A connection to `addr` from the loopback address `from` (Linux routes
/// all of 127/8 to `lo`): as many client addresses as a test needs, to see
/// per-address limits work.
async fn connect_from(from: [u8; 4], addr: &str) -> TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket
        .bind((std::net::Ipv4Addr::from(from), 0).into())
        .unwrap();
    timeout(DEADLINE, socket.connect(addr.parse().unwrap()))
        .await
        .expect("connected before the deadline")
        .unwrap()
}

/// Sends a request head and reads the answer's status and head; the body
/// is left unread (a stream's, or a small error's).
async fn open(stream: &mut TcpStream, method: &str, path: &str, body: &str) -> (u16, String) {
    let req = format!(
        "{method} {path} HTTP/1.1\r\nhost: muster\r\ncontent-type: application/json\r\n\
         content-length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(req.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = timeout(DEADLINE, stream.read(&mut byte))
            .await
            .expect("an answer before the deadline")
            .unwrap();
        assert_eq!(
            n,
            1,
            "closed before answering: {}",
            String::from_utf8_lossy(&head)
        );
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).to_lowercase();
    (head[9..12].parse().unwrap(), head)
}

/// A reqwest client whose connections come from `from`.
fn client_from(from: [u8; 4]) -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .local_address(std::net::IpAddr::from(from))
        .build()
        .unwrap()
}

/// Retries `attempt` until it holds, by the deadline: for a place a
/// closed client gave back, which the server frees once it sees the close.
async fn eventually<F: std::future::Future<Output = bool>>(
    what: &str,
    mut attempt: impl FnMut() -> F,
) {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while !attempt().await {
        assert!(tokio::time::Instant::now() < deadline, "never: {what}");
        tokio::task::yield_now().await;
    }
}

#[tokio::test]
async fn a_trickled_request_head_is_closed_at_the_header_deadline() {
    let header_timeout = Duration::from_secs(1);
    let server = TestServer::start_with(|c| c.http_header_timeout = header_timeout).await;
    let mut s = TcpStream::connect(addr(&server)).await.unwrap();
    let head = format!(
        "GET /healthz HTTP/1.1\r\nhost: muster\r\nx-pad: {}",
        "a".repeat(200)
    );
    let start = tokio::time::Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    let mut chunk = [0u8; 64];
    let mut sent = 0;
    // One byte every 200 ms: hyper's deadline is for the whole head, not
    // reset by each byte, so the connection closes at it.
    loop {
        tokio::select! {
            n = s.read(&mut chunk) => {
                assert!(matches!(n, Ok(0) | Err(_)), "an answer to an unfinished head");
                break;
            }
            _ = tick.tick() => {
                assert!(sent < head.len(), "the whole head was trickled out without a close");
                if s.write_all(&head.as_bytes()[sent..=sent]).await.is_err() {
                    break;
                }
                sent += 1;
            }
        }
    }
    let took = start.elapsed();
    assert!(
        took >= header_timeout - Duration::from_millis(50),
        "closed early: {took:?}"
    );
    assert!(
        took < header_timeout * 3,
        "closed only after {took:?} ({sent} bytes)"
    );
}

#[tokio::test]
async fn a_trickled_body_gets_a_408_at_the_body_deadline() {
    let body_timeout = Duration::from_secs(1);
    let server = TestServer::start_with(|c| c.http_body_timeout = body_timeout).await;
    let mut s = TcpStream::connect(addr(&server)).await.unwrap();
    s.write_all(
        b"PUT /v1/services/pay/instances/p1 HTTP/1.1\r\nhost: muster\r\n\
          content-type: application/json\r\ncontent-length: 1000\r\n\r\n",
    )
    .await
    .unwrap();
    let start = tokio::time::Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    loop {
        tokio::select! {
            n = s.read(&mut chunk) => match n {
                Ok(n) if n > 0 => {
                    buf.extend_from_slice(&chunk[..n]);
                    if buf.windows(4).any(|w| w == b"\r\n\r\n") { break; }
                }
                _ => break,
            },
            _ = tick.tick() => {
                assert!(start.elapsed() < DEADLINE, "no answer to a trickled body");
                let _ = s.write_all(b" ").await;
            }
        }
    }
    let took = start.elapsed();
    let text = String::from_utf8_lossy(&buf);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(
        took >= body_timeout - Duration::from_millis(50),
        "answered early: {took:?}"
    );
    assert!(took < body_timeout * 3, "answered only after {took:?}");
}

#[tokio::test]
async fn connections_are_capped_per_client_address_and_freed_when_closed() {
    let server = TestServer::start_with(|c| c.max_connections_per_ip = 3).await;
    let addr = addr(&server);
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut s = connect_from([127, 0, 0, 2], &addr).await;
        assert_eq!(get(&mut s, "/v1/services").await.unwrap().0, 200);
        held.push(s);
    }
    // The fourth from that address is closed without an answer ...
    let mut over = connect_from([127, 0, 0, 2], &addr).await;
    let _ = over
        .write_all(b"GET /healthz HTTP/1.1\r\nhost: m\r\n\r\n")
        .await;
    closed_by_server(&mut over).await;
    // ... while another address is served.
    let mut other = connect_from([127, 0, 0, 3], &addr).await;
    assert_eq!(get(&mut other, "/v1/services").await.unwrap().0, 200);

    // A held connection goes: its place is given back.
    drop(held.pop());
    eventually("a closed connection's place is given back", || async {
        let mut s = connect_from([127, 0, 0, 2], &addr).await;
        matches!(get(&mut s, "/healthz").await, Some((200, _, _)))
    })
    .await;
    let metrics = server.metrics().await;
    assert!(
        metrics.contains(r#"muster_http_limited_total{limit="connections_per_ip"}"#),
        "{metrics}"
    );
}

#[tokio::test]
async fn watches_are_capped_per_client_address_with_a_typed_429_and_freed_on_disconnect() {
    let server = TestServer::start_with(|c| c.max_watches_per_ip = 2).await;
    let addr = addr(&server);
    let watch = "/v1/watch?service=pay";
    let many = r#"{"queries":[{"id":"q","service":"pay"}]}"#;

    // One single watch and one multiplexed stream: two watches.
    let mut a = connect_from([127, 0, 0, 2], &addr).await;
    assert_eq!(open(&mut a, "GET", watch, "").await.0, 200);
    let mut b = connect_from([127, 0, 0, 2], &addr).await;
    assert_eq!(open(&mut b, "POST", "/v1/watch", many).await.0, 200);

    for (method, body) in [("GET", ""), ("POST", many)] {
        let mut c = connect_from([127, 0, 0, 2], &addr).await;
        let path = if method == "GET" { watch } else { "/v1/watch" };
        let req = format!(
            "{method} {path} HTTP/1.1\r\nhost: m\r\ncontent-type: application/json\r\n\
             content-length: {}\r\n\r\n{body}",
            body.len()
        );
        c.write_all(req.as_bytes()).await.unwrap();
        let (status, head, body) = read_response(&mut c).await.unwrap();
        assert_eq!(status, 429, "{head}{body}");
        assert!(head.contains("retry-after: 1"), "{head}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["error"]["code"], "too_many_watches", "{body}");
        assert!(
            v["error"]["message"]
                .as_str()
                .unwrap()
                .contains("max_watches_per_ip")
        );
    }
    // Another address has its own share.
    let mut other = connect_from([127, 0, 0, 3], &addr).await;
    assert_eq!(open(&mut other, "GET", watch, "").await.0, 200);

    // The client of a watch goes away: its place is given back, for a
    // single watch and for a multiplexed one alike.
    // Each new watch is held, so that only the closed one's place can
    // have made room for the next.
    let mut kept = Vec::new();
    for gone in [a, b] {
        drop(gone);
        let deadline = tokio::time::Instant::now() + DEADLINE;
        loop {
            let mut s = connect_from([127, 0, 0, 2], &addr).await;
            if open(&mut s, "GET", watch, "").await.0 == 200 {
                kept.push(s);
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "a closed watch's place was never given back"
            );
            tokio::task::yield_now().await;
        }
    }
    let metrics = server.metrics().await;
    assert!(
        metrics.contains(r#"muster_http_limited_total{limit="watches_per_ip"}"#),
        "{metrics}"
    );
    assert!(metrics.contains("muster_http_watches 3"), "{metrics}");
}

#[tokio::test]
async fn parked_blocking_queries_are_capped_per_address_and_freed_by_timeout_and_disconnect() {
    let server = TestServer::start_with(|c| c.max_blocking_queries_per_ip = 1).await;
    let addr = addr(&server);
    server.register("pay", "p1", serde_json::json!({})).await;
    let (_, _, index) = server.get("/v1/services/pay/instances").await;
    let parked = format!("/v1/services/pay/instances?index={index}&wait=10m");
    let key = muster_registry::ServiceKey::new("default", "pay");

    let mut first = connect_from([127, 0, 0, 2], &addr).await;
    let req = format!("GET {parked} HTTP/1.1\r\nhost: m\r\n\r\n");
    first.write_all(req.as_bytes()).await.unwrap();
    crate::harness::until("the first query parks", || {
        server.registry.service_waiters(&key) == 1
    })
    .await;

    // A second from the same address, to the list of services too, is refused.
    for path in [
        parked.clone(),
        format!("/v1/services?index={index}&wait=10m"),
    ] {
        let mut s = connect_from([127, 0, 0, 2], &addr).await;
        let (status, head, body) = get(&mut s, &path).await.unwrap();
        assert_eq!(status, 429, "{head}{body}");
        assert!(head.contains("retry-after: 1"), "{head}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["error"]["code"], "too_many_blocking_queries", "{body}");
    }
    // A read that does not block is not counted.
    let mut s = connect_from([127, 0, 0, 2], &addr).await;
    assert_eq!(
        get(&mut s, "/v1/services/pay/instances").await.unwrap().0,
        200
    );
    // Another address parks its own; its wait running out frees it.
    let mut other = connect_from([127, 0, 0, 3], &addr).await;
    let short = format!("/v1/services/pay/instances?index={index}&wait=200ms");
    assert_eq!(get(&mut other, &short).await.unwrap().0, 200);
    assert_eq!(
        get(&mut other, &short).await.unwrap().0,
        200,
        "freed by its timeout"
    );

    // The parked client goes away: its place is given back.
    drop(first);
    eventually("a gone client's blocking query is freed", || async {
        let mut s = connect_from([127, 0, 0, 2], &addr).await;
        get(&mut s, &short).await.unwrap().0 == 200
    })
    .await;
    let metrics = server.metrics().await;
    assert!(
        metrics.contains(r#"muster_http_limited_total{limit="blocking_queries_per_ip"}"#),
        "{metrics}"
    );
    assert!(
        metrics.contains("muster_http_blocking_queries 0"),
        "{metrics}"
    );
}

#[tokio::test]
async fn the_rate_limit_is_per_token_else_per_address_with_retry_after() {
    // A bucket of 3 that refills at 1/s: the fourth request in a row waits.
    let server = TestServer::start_with(|c| {
        c.rate_limit = 1;
        c.rate_limit_burst = 3;
    })
    .await;
    let url = server.url("/v1/services");
    let send = |client: reqwest::Client, token: Option<(&'static str, &'static str)>| {
        let url = url.clone();
        async move {
            let mut req = client.get(&url);
            if let Some((name, value)) = token {
                req = req.header(name, value);
            }
            req.send().await.unwrap()
        }
    };
    let assert_limited = |r: reqwest::Response| async move {
        assert_eq!(r.status(), 429);
        let wait: u64 = r.headers()["retry-after"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!((1..=3).contains(&wait), "Retry-After {wait}");
        let v: serde_json::Value = r.json().await.unwrap();
        assert_eq!(v["error"]["code"], "rate_limited", "{v}");
        v["error"]["message"].as_str().unwrap().to_string()
    };

    // Sends until refused: three at once, then one a second (a loaded
    // machine may take more than a second for the three), bounded.
    let exhaust = |client: reqwest::Client, token| async move {
        for _ in 0..20 {
            let r = send(client.clone(), token).await;
            if r.status() != 200 {
                return r;
            }
        }
        panic!("never rate-limited");
    };
    // Per token: both headers name the same token, whatever the address.
    let bearer = Some(("authorization", "Bearer secret-a"));
    let header = Some(("x-muster-token", "secret-a"));
    let (c2, c3) = (client_from([127, 0, 0, 2]), client_from([127, 0, 0, 3]));
    let message = assert_limited(exhaust(c2.clone(), bearer).await).await;
    assert!(message.contains("this token"), "{message}");
    assert_limited(send(c3.clone(), header).await).await;
    assert!(
        !message.contains("secret-a"),
        "no token in messages: {message}"
    );
    // Another token from the same address has its own bucket.
    let other = Some(("authorization", "Bearer secret-b"));
    assert_eq!(send(c2.clone(), other).await.status(), 200);

    // Per address, for requests without a token.
    let message = assert_limited(exhaust(c2.clone(), None).await).await;
    assert!(message.contains("address"), "{message}");
    assert_eq!(
        send(c3.clone(), None).await.status(),
        200,
        "another address"
    );
    // A supervisor's probe is never limited.
    let r = c2.get(server.url("/healthz")).send().await.unwrap();
    assert_eq!(r.status(), 200);

    let metrics = server.metrics().await;
    assert!(
        metrics.contains(r#"muster_http_limited_total{limit="rate"}"#),
        "{metrics}"
    );
    assert!(!metrics.contains("secret-a"), "no token in metrics");
}

/// Raises this process's open-file limit: the test holds both ends of
/// thousands of connections.
fn raise_open_files(needed: u64) {
    let got = rlimit::increase_nofile_limit(needed).unwrap();
    assert!(
        got >= needed,
        "the open-file limit is {got}; this test needs {needed}"
    );
}

#[tokio::test]
async fn idle_and_slowloris_floods_do_not_stop_a_normal_client() {
    const IDLE: usize = 2_000;
    const SLOW: usize = 200;
    raise_open_files(3 * (IDLE + SLOW) as u64);
    // The default limits: 30 s to send a head, so every flooding
    // connection is still held while the normal client works.
    let server = TestServer::start().await;
    let addr = addr(&server);

    // 2,000 connections that send nothing, from five addresses (400 each,
    // under the per-address cap: all are accepted and held) ...
    let mut idle = Vec::with_capacity(IDLE);
    for i in 0..IDLE {
        idle.push(connect_from([127, 0, 1, 10 + (i % 5) as u8], &addr).await);
    }
    // ... and 200 that trickle a request head that never ends, a byte
    // every 300 ms, from one more.
    let mut slow = Vec::with_capacity(SLOW);
    for _ in 0..SLOW {
        let mut s = connect_from([127, 0, 1, 20], &addr).await;
        s.write_all(b"GET /v1/services HTTP/1.1\r\n").await.unwrap();
        slow.push(s);
    }
    let trickle = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(300));
        loop {
            tick.tick().await;
            for s in &mut slow {
                let _ = s.write_all(b"x").await;
            }
        }
    });
    // The server holds them all.
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let m = server.metrics().await;
        let open = m
            .lines()
            .find_map(|l| l.strip_prefix("muster_http_connections "))
            .map_or(0.0, |v| v.trim().parse::<f64>().unwrap());
        if open as usize > IDLE + SLOW {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the flood is not held: {open}"
        );
        tokio::task::yield_now().await;
    }

    // A normal client registers and discovers, within a deadline.
    let client = client_from([127, 0, 0, 1]);
    let work = async {
        let r = client
            .put(server.url("/v1/services/pay/instances/p1"))
            .json(&serde_json::json!({"address": "10.0.0.1", "port": 8080, "ttl": "30s"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let r = client
            .get(server.url("/v1/services/pay/instances"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let v: serde_json::Value = r.json().await.unwrap();
        assert_eq!(v["instances"][0]["id"], "p1", "{v}");
    };
    timeout(Duration::from_secs(5), work)
        .await
        .expect("the normal client was not served within 5 s during the flood");
    trickle.abort();
    drop(idle);
}

/// A restore upload may take long, but one that stalls (no byte for the
/// body deadline) is given up with a typed answer, not held for ever.
#[tokio::test]
async fn a_stalled_restore_upload_is_given_up_at_the_body_deadline() {
    let body_timeout = Duration::from_millis(500);
    let server = TestServer::start_with(|c| c.http_body_timeout = body_timeout).await;
    let mut s = TcpStream::connect(addr(&server)).await.unwrap();
    s.write_all(
        b"POST /v1/snapshot/restore HTTP/1.1\r\nhost: muster\r\n\
          content-type: application/octet-stream\r\ncontent-length: 100000\r\n\r\nMBAK",
    )
    .await
    .unwrap();
    let start = tokio::time::Instant::now();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    while !String::from_utf8_lossy(&buf).contains("}}") {
        let n = tokio::time::timeout(DEADLINE, s.read(&mut chunk))
            .await
            .expect("no answer to a stalled restore upload")
            .unwrap();
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let took = start.elapsed();
    let text = String::from_utf8_lossy(&buf);
    assert!(text.starts_with("HTTP/1.1 400"), "{text}");
    assert!(
        text.contains("restore_upload_failed") && text.contains("stalled"),
        "{text}"
    );
    assert!(
        took >= body_timeout - Duration::from_millis(50),
        "answered early: {took:?}"
    );
    assert!(took < body_timeout * 6, "answered only after {took:?}");
}
