//! A one-request HTTP receiver: tests of outgoing webhooks read what was
//! posted (head and body) without a web framework.

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Reads one HTTP request from `listener` (its head up to the blank line,
/// and a body of its `content-length`), answers 200, and returns both.
pub async fn receive_request(listener: &tokio::net::TcpListener) -> (String, Vec<u8>) {
    let (mut socket, _) = listener.accept().await.expect("a client connects");
    let mut request = Vec::new();
    let mut buffer = [0u8; 4096];
    loop {
        let read = socket.read(&mut buffer).await.expect("the request is readable");
        assert!(read > 0, "the client hung up mid-request");
        request.extend_from_slice(&buffer[..read]);
        let text = String::from_utf8_lossy(&request).to_string();
        if let Some(end) = text.find("\r\n\r\n") {
            let length: usize = text
                .lines()
                .find_map(|line| line.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse()))
                .transpose()
                .expect("a numeric content-length")
                .unwrap_or(0);
            if request.len() >= end + 4 + length {
                socket.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n").await.expect("the answer is sent");
                return (text[..end].to_owned(), request[end + 4..end + 4 + length].to_vec());
            }
        }
    }
}

/// The value of header `name` (any case) in a request head.
pub fn header(head: &str, name: &str) -> Option<String> {
    head.lines().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        key.eq_ignore_ascii_case(name).then(|| value.trim().to_owned())
    })
}
