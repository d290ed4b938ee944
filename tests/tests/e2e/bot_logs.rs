//! `GET /api/admin/bots/{id}/logs` through real nodes with `process` bots
//! (on SQLite and on PostgreSQL):
//! what a bot printed (escaped, oldest first, the last `limit` lines) and
//! the node's own lines about it come from its host, through any node
//! (the other one asks the host over the signed node-to-node protocol);
//! bad limits and unknown bots are refused with their codes; the live
//! stream follows what the bot prints, through any node.

use std::path::Path;
use std::time::Duration;

use serde_json::json;
use trekker_node::config::{BotDriverKind, SandboxMode};
use trekker_testkit::creds;

use crate::support::{
    ADMIN_TOKEN, SseReader, TestNode, databases, eventually, fast_runtime, settings, spawn_node_with,
};

/// Two nodes whose `process` bots run `script` (sh, unsandboxed, in
/// `work`), and one bot registered and approved on the first (phone series
/// `series`): (host, other node, bot id).
async fn two_nodes_running(url: &str, work: &Path, script: &str, series: u32) -> (TestNode, TestNode, String) {
    let path = work.join("bot.sh");
    std::fs::write(&path, script).unwrap();
    let node_settings = |name: &str| {
        let mut s = settings(url, name, 5);
        s.bot_driver = BotDriverKind::Process;
        s.bot_command = Some(format!("sh {}", path.display()));
        s.bot_sandbox = SandboxMode::Off;
        s.bot_auth_dir = work.join(format!("auth-{name}"));
        s
    };
    let host = spawn_node_with(node_settings("SERVER0"), fast_runtime(None)).await;
    let other = spawn_node_with(node_settings("SERVER1"), fast_runtime(None)).await;
    let created = host.register("Talker", &creds::phone(series, 1), 1, None).await;
    assert_eq!(created.status, 201, "{:?}", created.body);
    let id = created.body["bot"]["id"].as_str().unwrap().to_owned();
    assert_eq!(host.approve(&id).await.status, 200);
    (host, other, id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_bots_output_is_read_from_its_host() {
    for (url, _keep) in databases().await {
        output_is_read_from_its_host(&url).await;
    }
}

async fn output_is_read_from_its_host(url: &str) {
    let work = tempfile::tempdir().unwrap();
    let script = "for n in 1 2 3 4 5; do echo \"line $n\"; done\nprintf 'bell \\007 done\\n' >&2\nexec sleep 60\n";
    let (host, other, id) = two_nodes_running(url, work.path(), script, 71).await;

    let logs = |limit: &str| {
        let (node, id) = (&host, id.clone());
        let query = if limit.is_empty() { String::new() } else { format!("?limit={limit}") };
        async move { node.admin(reqwest::Method::GET, &format!("/api/admin/bots/{id}/logs{query}"), None).await }
    };
    // stdout and stderr are read apart: which of their last lines comes last
    // is not fixed, so wait for all of them.
    eventually(Duration::from_secs(20), "every line the bot printed", || async {
        logs("").await.body["lines"].as_array().is_some_and(|lines| {
            let count = |stream: &str| lines.iter().filter(|l| l["stream"] == stream).count();
            count("stderr") == 1 && count("stdout") == 5
        })
    })
    .await;
    let all = logs("").await;
    assert_eq!(all.status, 200, "{:?}", all.body);
    assert_eq!((all.body["botId"].as_str(), all.body["server"].as_str()), (Some(id.as_str()), Some("SERVER0")));
    let lines = all.body["lines"].as_array().unwrap();
    assert_eq!(lines[0]["stream"], "node", "the node says when it started the bot");
    let stdout: Vec<&str> =
        lines.iter().filter(|l| l["stream"] == "stdout").map(|l| l["text"].as_str().unwrap()).collect();
    assert_eq!(stdout, ["line 1", "line 2", "line 3", "line 4", "line 5"], "oldest first");
    let stderr = lines.iter().find(|l| l["stream"] == "stderr").unwrap()["text"].as_str().unwrap();
    assert!(!stderr.contains('\u{7}') && stderr.starts_with("bell ") && stderr.ends_with(" done"), "{stderr:?}");
    assert!(lines.iter().all(|l| l["at"].as_i64().is_some_and(|at| at > 0)));

    let last_two = logs("2").await;
    let texts: Vec<&str> =
        last_two.body["lines"].as_array().unwrap().iter().map(|l| l["text"].as_str().unwrap()).collect();
    let last: Vec<&str> = lines[lines.len() - 2..].iter().map(|l| l["text"].as_str().unwrap()).collect();
    assert_eq!(texts, last, "the last lines");
    for bad in ["0", "2001", "-1", "many"] {
        let refused = logs(bad).await;
        assert_eq!((refused.status, refused.code()), (400, "INVALID_INPUT"), "limit {bad}: {:?}", refused.body);
    }
    // Any node answers: the other one asks the host and passes its lines on.
    let elsewhere = other.admin(reqwest::Method::GET, &format!("/api/admin/bots/{id}/logs"), None).await;
    assert_eq!(elsewhere.status, 200, "{:?}", elsewhere.body);
    assert_eq!(elsewhere.body["server"], "SERVER0");
    assert_eq!(elsewhere.body["lines"], all.body["lines"], "the host's own lines");
    let two = other.admin(reqwest::Method::GET, &format!("/api/admin/bots/{id}/logs?limit=2"), None).await;
    assert_eq!(two.body["lines"].as_array().map(Vec::len), Some(2), "the limit travels with the question");
    assert_eq!(
        other.admin(reqwest::Method::GET, &format!("/api/admin/bots/{id}/logs?limit=0"), None).await.status,
        400
    );
    // The host answers only a signed question.
    let unsigned = other
        .client
        .post(host.url("/internal/tenants/bots/logs"))
        .json(&serde_json::json!({"botId": id, "limit": 5}))
        .send()
        .await
        .unwrap();
    assert_eq!(unsigned.status().as_u16(), 401);
    let unknown = host.admin(reqwest::Method::GET, "/api/admin/bots/no-such-bot/logs", None).await;
    assert_eq!(unknown.status, 404);
    other.stop().await;
    host.stop().await;
}

/// `GET .../logs/stream` through the host and through the other node: the
/// last lines first, then a line the bot prints while the streams are open
/// arrives on both, on the same connection, numbered after what was sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_bots_log_streams_live_through_any_node() {
    for (url, _keep) in databases().await {
        log_streams_live_through_any_node(&url).await;
    }
}

async fn log_streams_live_through_any_node(url: &str) {
    let work = tempfile::tempdir().unwrap();
    let poke = work.path().join("poke");
    // Prints what it is handed in `poke`, when it is handed it.
    let body = format!(
        "echo ready\nwhile true; do if [ -f {poke} ]; then echo \"poked $(cat {poke})\"; rm -f {poke}; fi; sleep 0.1; \
         done\n",
        poke = poke.display()
    );
    let (host, other, id) = two_nodes_running(url, work.path(), &body, 72).await;
    let path = format!("/api/admin/bots/{id}/logs/stream");
    eventually(Duration::from_secs(20), "the bot says it is ready", || async {
        let lines = host.admin(reqwest::Method::GET, &format!("/api/admin/bots/{id}/logs"), None).await;
        lines.body["lines"].as_array().is_some_and(|lines| lines.iter().any(|l| l["text"] == "ready"))
    })
    .await;

    let mut streams = Vec::new();
    for node in [&host, &other] {
        let mut stream = SseReader::new(SseReader::open(node, &path, Some(ADMIN_TOKEN)).await);
        let opening = stream.until("the opening lines", |event, data| event == "log" && data["text"] == "ready").await;
        assert!(opening.iter().all(|(event, _)| event == "log"), "{opening:?}");
        streams.push((stream, opening.last().unwrap().1["seq"].as_u64().unwrap()));
    }
    for n in 1..=2 {
        std::fs::write(&poke, n.to_string()).unwrap();
        let wanted = format!("poked {n}");
        for (stream, last) in &mut streams {
            let read = stream.until(&wanted, |event, data| event == "log" && data["text"] == wanted.as_str()).await;
            for (_, line) in &read {
                let seq = line["seq"].as_u64().unwrap();
                assert!(seq > *last, "each line once, in order: {read:?}");
                *last = seq;
            }
        }
    }
    let refused = SseReader::open(&other, &path, None).await;
    assert_eq!(refused.status(), 401, "the stream wants a key");
    let refused = SseReader::open(&other, &format!("{path}?limit=0"), Some(ADMIN_TOKEN)).await;
    assert_eq!(refused.status(), 400);
    assert_eq!(SseReader::open(&other, "/api/admin/bots/nope/logs/stream", Some(ADMIN_TOKEN)).await.status(), 404);
    // Moved to the other node: each stream says so and follows it there,
    // where the bot starts again.
    let move_to = json!({"server": "SERVER1"});
    let moved = host.admin(reqwest::Method::POST, &format!("/api/admin/bots/{id}/move"), Some(move_to)).await;
    assert_eq!(moved.status, 202, "{:?}", moved.body);
    for (stream, _) in &mut streams {
        let read = stream.until("the move", |event, _| event == "moved").await;
        assert_eq!(read.last().unwrap().1["server"], "SERVER1");
        stream.until("the new host's lines", |event, data| event == "log" && data["text"] == "ready").await;
    }
    // The bot deleted: each stream says so and ends.
    assert_eq!(host.admin(reqwest::Method::DELETE, &format!("/api/admin/bots/{id}"), None).await.status, 200);
    for (stream, _) in &mut streams {
        stream.until("the end", |event, _| event == "end").await;
    }
    other.stop().await;
    host.stop().await;
}
