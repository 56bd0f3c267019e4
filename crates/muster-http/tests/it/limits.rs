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
