//! `CrossTenancyClient` against a scripted fake host on loopback: retries
//! what a retry may fix (5xx, no answer) within the budget, never a 4xx;
//! every attempt carries a fresh token for the same body and the same
//! command id.

#![allow(clippy::unwrap_used)] // Tests fail loudly by design.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use trekker_domain::ServerName;
use trekker_tenancy::wire::{CREDENTIALS_PATH, CredentialsUpdateBody};
use trekker_tenancy::{ClientError, ClusterKeys, CrossTenancyClient};

const SECRET: &str = "client-test-secret-0123456789abcdef";

/// One request as the fake host saw it.
#[derive(Debug, Clone)]
struct Seen {
    authorization: String,
    idempotency_key: Option<String>,
    body: Vec<u8>,
}

/// A host that answers each request with the next scripted status (the
/// last one repeats); `None` accepts and never answers.
async fn fake_host(script: Vec<Option<u16>>) -> (String, Arc<Mutex<Vec<Seen>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = seen.clone();
    tokio::spawn(async move {
        let mut n = 0;
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let status = script[n.min(script.len() - 1)];
            n += 1;
            tokio::spawn(answer(stream, status, record.clone()));
        }
    });
    (url, seen)
}

async fn answer(mut stream: tokio::net::TcpStream, status: Option<u16>, record: Arc<Mutex<Vec<Seen>>>) {
    let mut raw = Vec::new();
    let mut buf = [0u8; 4096];
    let head_end = loop {
        let read = stream.read(&mut buf).await.unwrap();
        if read == 0 {
            return;
        }
        raw.extend_from_slice(&buf[..read]);
        if let Some(at) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
    };
    let head = String::from_utf8_lossy(&raw[..head_end]).to_string();
    let header = |name: &str| {
        head.lines().find_map(|line| {
            let (key, value) = line.split_once(':')?;
            key.eq_ignore_ascii_case(name).then(|| value.trim().to_owned())
        })
    };
    let length: usize = header("content-length").and_then(|v| v.parse().ok()).unwrap_or(0);
    while raw.len() < head_end + length {
        let read = stream.read(&mut buf).await.unwrap();
        raw.extend_from_slice(&buf[..read]);
    }
    record.lock().unwrap().push(Seen {
        authorization: header("authorization").unwrap_or_default(),
        idempotency_key: header("idempotency-key"),
        body: raw[head_end..head_end + length].to_vec(),
    });
    let Some(status) = status else {
        // Hold the connection open, answering nothing.
        tokio::time::sleep(Duration::from_secs(60)).await;
        return;
    };
    let body = match status {
        200 => r#"{"success":true,"botId":"bot-1","server":"HOST","credentialsVersion":3,"restarted":true}"#,
        _ => r#"{"success":false,"code":"NOT_FOUND","message":"Bot bot-1 is not hosted on HOST."}"#,
    };
    let answer = format!(
        "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
         connection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(answer.as_bytes()).await;
}

fn client(budget: Duration) -> CrossTenancyClient {
    let keys = ClusterKeys::new(SECRET, None);
    CrossTenancyClient::new(Some(keys), ServerName::parse("ASKER").unwrap(), budget).unwrap()
}

fn body() -> CredentialsUpdateBody {
    serde_json::from_value(serde_json::json!({
        "botId": "bot-1", "phoneNumber": "254712345678", "sessionId": "TREKKER~e30", "credentialsVersion": 3
    }))
    .unwrap()
}

fn host() -> ServerName {
    ServerName::parse("HOST").unwrap()
}

/// A guard against a hang, not a timing assertion.
async fn within_a_minute<T>(future: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(60), future).await.expect("the call ended")
}

#[tokio::test]
async fn server_errors_are_retried_with_a_fresh_token_and_the_same_command_id() {
    let (url, seen) = fake_host(vec![Some(503), Some(500), Some(200)]).await;
    let call = client(Duration::from_secs(20));
    let answer = within_a_minute(call.update_bot_credentials(&host(), &url, "cmd-7", &body())).await.unwrap();
    assert_eq!(answer.credentials_version, 3);
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 3, "two retries, then the answer");
    let keys = ClusterKeys::new(SECRET, None);
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
    let mut jtis = HashSet::new();
    for request in &seen {
        assert_eq!(request.idempotency_key.as_deref(), Some("cmd-7"));
        assert_eq!(request.body, seen[0].body, "every attempt sends the same bytes");
        let token = request.authorization.strip_prefix("Bearer ").unwrap();
        let claims = keys.verify(token, "HOST", "POST", CREDENTIALS_PATH, &request.body, now).unwrap();
        assert_eq!(claims.iss, "ASKER");
        jtis.insert(claims.jti);
    }
    assert_eq!(jtis.len(), 3, "a fresh jti per attempt (the host refuses replays)");
}

#[tokio::test]
async fn a_refusal_is_the_hosts_answer_and_is_not_retried() {
    let (url, seen) = fake_host(vec![Some(404), Some(200)]).await;
    let call = client(Duration::from_secs(20));
    let err = within_a_minute(call.update_bot_credentials(&host(), &url, "c", &body())).await.unwrap_err();
    match err {
        ClientError::Refused { status, code, message, .. } => {
            assert_eq!((status, code.as_str()), (404, "NOT_FOUND"));
            assert_eq!(message, "Bot bot-1 is not hosted on HOST.");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert_eq!(seen.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn a_host_that_never_answers_ends_as_unreachable() {
    let (url, seen) = fake_host(vec![None]).await;
    let call = client(Duration::from_millis(400));
    let err = within_a_minute(call.update_bot_credentials(&host(), &url, "c", &body())).await.unwrap_err();
    assert!(matches!(err, ClientError::Unreachable(_)), "{err:?}");
    assert!(!seen.lock().unwrap().is_empty(), "it did try");
}

#[tokio::test]
async fn persistent_server_errors_are_retried_until_the_budget_runs_out() {
    let (url, seen) = fake_host(vec![Some(503)]).await;
    let call = client(Duration::from_millis(600));
    let err = within_a_minute(call.update_bot_credentials(&host(), &url, "c", &body())).await.unwrap_err();
    assert!(matches!(err, ClientError::Unreachable(_)), "{err:?}");
    assert!(seen.lock().unwrap().len() >= 2, "retried while the budget lasted");
}

#[test]
fn the_budget_is_kept_and_debug_shows_no_secret() {
    let client = client(Duration::from_millis(750));
    assert_eq!(client.budget(), Duration::from_millis(750));
    let shown = format!("{client:?}");
    assert!(shown.contains("ASKER") && !shown.contains(SECRET), "{shown}");
    let shown = format!("{:?}", body());
    assert!(shown.contains("bot-1") && !shown.contains("TREKKER~"), "{shown}");
}

#[tokio::test]
async fn without_a_secret_or_an_address_nothing_is_sent() {
    let (url, seen) = fake_host(vec![Some(200)]).await;
    let unkeyed = CrossTenancyClient::new(None, ServerName::parse("ASKER").unwrap(), Duration::from_secs(1)).unwrap();
    let err = unkeyed.update_bot_credentials(&host(), &url, "c", &body()).await.unwrap_err();
    assert!(matches!(err, ClientError::Misconfigured(_)), "{err:?}");
    let err = client(Duration::from_secs(1)).update_bot_credentials(&host(), "ftp://host", "c", &body()).await;
    assert!(matches!(err, Err(ClientError::Misconfigured(_))), "{err:?}");
    assert!(seen.lock().unwrap().is_empty());
}
