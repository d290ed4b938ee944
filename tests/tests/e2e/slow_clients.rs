//! Finding 2 of the outside probe: slow clients held connections forever
//! and exhausted the node. Now a few hundred of them, each sending half a
//! request and nothing more, are closed after the header timeout, and the
//! node answers `/healthz` the whole time, even past its connection cap.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::{settings, spawn_node};

/// One `/healthz` on a fresh connection: the status line, if any.
async fn healthz(addr: std::net::SocketAddr) -> Option<String> {
    let mut stream = TcpStream::connect(addr).await.ok()?;
    stream.write_all(b"GET /healthz HTTP/1.1\r\nHost: node\r\nConnection: close\r\n\r\n").await.ok()?;
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer)).await.ok()?.ok()?;
    String::from_utf8_lossy(&answer).lines().next().map(str::to_owned)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn slow_clients_are_cut_off_and_health_answers_throughout() {
    let database = trekker_testkit::sqlite_database();
    let mut limited = settings(&database.url, "SERVER0", 5);
    limited.http_max_connections = 100;
    limited.http_header_timeout_secs = 1;
    let node = spawn_node(limited).await;

    // 300 clients, three times the cap, each stopping mid-headers.
    let mut slow = Vec::new();
    for _ in 0..300 {
        let mut stream = TcpStream::connect(node.addr).await.unwrap();
        let _ = stream.write_all(b"POST /api/guest/register-bot HTTP/1.1\r\nHost: node\r\nContent-Le").await;
        slow.push(stream);
    }
    // The node stays observable while they hang on.
    for _ in 0..5 {
        let status = healthz(node.addr).await;
        assert!(status.as_deref().is_some_and(|s| s.starts_with("HTTP/1.1 200")), "healthz: {status:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Past the cap, other requests are told to come back (API.md's 429).
    let mut busy = TcpStream::connect(node.addr).await.unwrap();
    busy.write_all(b"GET /api/servers/available HTTP/1.1\r\nHost: node\r\nConnection: close\r\n\r\n").await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), busy.read_to_end(&mut answer)).await.unwrap().unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 429"), "{answer}");
    assert!(answer.contains(r#""code":"RATE_LIMITED""#) && answer.to_ascii_lowercase().contains("retry-after: 1"));
    // Every slow connection is closed by the node (end of stream, or a
    // reset), none kept open waiting for the rest of its request.
    let deadline = Instant::now() + Duration::from_secs(60);
    for mut stream in slow {
        let mut buf = [0u8; 512];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, stream.read(&mut buf)).await {
                Ok(Ok(0) | Err(_)) => break,
                // A refusal answer (503 or 408) may come first; then the close.
                Ok(Ok(_)) => continue,
                Err(_) => panic!("a slow connection was still open a minute later"),
            }
        }
    }
    // Afterwards the node serves as before.
    assert!(healthz(node.addr).await.unwrap().starts_with("HTTP/1.1 200"));
    assert_eq!(node.get("/api/servers/available").await.status, 200);
    node.stop().await;
}

/// One request from `from` (a loopback address of the test's choosing).
async fn get_from(from: &str, addr: std::net::SocketAddr, path: &str) -> String {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(format!("{from}:0").parse().unwrap()).unwrap();
    let mut stream = socket.connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: node\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer)).await.unwrap().unwrap();
    String::from_utf8_lossy(&answer).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_address_cannot_take_every_connection() {
    let database = trekker_testkit::sqlite_database();
    let mut limited = settings(&database.url, "SERVER0", 5);
    limited.http_max_connections = 100;
    limited.http_max_connections_per_address = 10;
    let node = spawn_node(limited).await;
    // One address holds its ten connections, idle...
    let mut held = Vec::new();
    for _ in 0..10 {
        let stream = TcpStream::connect(node.addr).await.unwrap();
        held.push(stream);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    // ...its eleventh is told to come back, though /healthz still answers it...
    let refused = get_from("127.0.0.1", node.addr, "/api/servers/available").await;
    assert!(refused.starts_with("HTTP/1.1 429"), "{refused}");
    assert!(get_from("127.0.0.1", node.addr, "/healthz").await.starts_with("HTTP/1.1 200"));
    // ...while another address is served as usual.
    let other = get_from("127.0.0.2", node.addr, "/api/servers/available").await;
    assert!(other.starts_with("HTTP/1.1 200"), "{other}");
    drop(held);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(get_from("127.0.0.1", node.addr, "/api/servers/available").await.starts_with("HTTP/1.1 200"));
    node.stop().await;
}
