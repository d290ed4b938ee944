//! What the binary's test files share: the binary, a minimal HTTP client,
//! registering and approving a bot, and starting a node that says where it
//! listens.

#![allow(dead_code)] // Each test file uses its own share of it.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const BINARY: &str = env!("CARGO_BIN_EXE_trekker-node");

/// A minimal HTTP/1.1 GET (no client dependency for a few requests).
pub fn http_get(addr: &str, path: &str) -> String {
    http(addr, "GET", path, "", "")
}

pub fn http(addr: &str, method: &str, path: &str, headers: &str, body: &str) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n{headers}\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    answer
}

/// The JSON body of an HTTP answer.
pub fn json_body(answer: &str) -> serde_json::Value {
    serde_json::from_str(answer.split("\r\n\r\n").nth(1).unwrap_or_default()).unwrap_or_default()
}

/// Registers a bot for `phone` and approves it (admin token `admin-token`);
/// returns its id.
pub fn register_approved(addr: &str, phone: &str) -> String {
    let body = format!(
        r#"{{"botName":"Bot","phoneNumber":"{phone}","credentialType":"session","sessionId":"{}"}}"#,
        trekker_testkit::creds::session_id(phone, 1)
    );
    let created = http(addr, "POST", "/api/guest/register-bot", "", &body);
    assert!(created.starts_with("HTTP/1.1 201"), "{created}");
    let id = created.split(r#""id":""#).nth(1).unwrap().split('"').next().unwrap().to_owned();
    let approved =
        http(addr, "POST", &format!("/api/admin/bots/{id}/approve"), "Authorization: Bearer admin-token\r\n", "");
    assert!(approved.starts_with("HTTP/1.1 200"), "{approved}");
    id
}

/// Starts the binary with `envs` in `dir`; returns it and its address.
pub fn start_node(dir: &std::path::Path, envs: &[(&str, String)]) -> (Child, String) {
    let mut command = Command::new(BINARY);
    command.current_dir(dir).env_clear().env("PATH", std::env::var("PATH").unwrap_or_default());
    for (key, value) in envs {
        command.env(key, value);
    }
    let (child, addr, _) = spawn_listening(command);
    (child, addr)
}

/// Spawns `command` (a node, however wrapped) on port 0 and waits for its
/// `listening on` line; returns the child, its address and every line it
/// printed on stdout (kept as it goes on).
pub fn spawn_listening(mut command: Command) -> (Child, String, Arc<Mutex<Vec<String>>>) {
    command.env("BIND_ADDR", "127.0.0.1:0").env("NO_COLOR", "1").stdout(Stdio::piped()).stderr(Stdio::null());
    let mut child = command.spawn().unwrap();
    let stdout = BufReader::new(child.stdout.take().unwrap());
    let lines = Arc::new(Mutex::new(Vec::new()));
    let (tx, rx) = std::sync::mpsc::channel();
    let kept = lines.clone();
    std::thread::spawn(move || {
        for line in stdout.lines().map_while(Result::ok) {
            kept.lock().unwrap().push(line.clone());
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if let Ok(line) = rx.recv_timeout(Duration::from_millis(200))
            && let Some(rest) = line.split("listening on ").nth(1)
        {
            return (child, rest.split_whitespace().next().unwrap().to_owned(), lines);
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("no `listening on` line: {:?}", lines.lock().unwrap());
}
