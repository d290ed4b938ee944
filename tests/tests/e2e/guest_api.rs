//! Guest API edge cases: every bad input gets API.md's answer, never a 500;
//! validation branches; pairing; the rate limit; OpenAPI and metrics.

use std::time::Duration;

use serde_json::json;
use trekker_testkit::creds;

use crate::support::{Answer, eventually, postgres_url, settings, spawn_node};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_the_table_answer() {
    let database = trekker_testkit::sqlite_database();
    let node = spawn_node(settings(&database.url, "SERVER0", 5)).await;
    let register = node.url("/api/guest/register-bot");
    let phone = creds::phone(30, 1);

    let malformed = Answer::from(
        node.client.post(&register).header("content-type", "application/json").body("{bad").send().await.unwrap(),
    )
    .await;
    assert_eq!((malformed.status, malformed.code()), (400, "INVALID_INPUT"));
    let wrong_type =
        Answer::from(node.client.post(&register).header("content-type", "text/plain").body("hi").send().await.unwrap())
            .await;
    assert_eq!((wrong_type.status, wrong_type.code()), (400, "INVALID_INPUT"));
    let wrong_field = node.post_json("/api/guest/register-bot", &json!({"botName": 5})).await;
    assert_eq!((wrong_field.status, wrong_field.code()), (400, "INVALID_INPUT"));
    // Announced over the limit: answered 413 before the body is read. Sent
    // on its own connection: the server closes it without reading the body,
    // and a pooled client could otherwise reuse the dead connection.
    let too_large = oversized_post(&node, "/api/guest/register-bot", 6 * 1024 * 1024).await;
    assert_eq!((too_large.status, too_large.code()), (413, "PAYLOAD_TOO_LARGE"));

    let session = creds::session_id(&phone, 1);
    let base = json!({"botName": "Bot", "phoneNumber": phone, "credentialType": "session", "sessionId": session});
    let cases = [
        (json!({"botName": " "}), 400, "INVALID_INPUT"),
        (json!({"phoneNumber": ""}), 400, "INVALID_INPUT"),
        (json!({"phoneNumber": "12345"}), 400, "INVALID_INPUT"),
        (json!({"credentialType": "telepathy"}), 400, "INVALID_INPUT"),
        (json!({"sessionId": "TREKKER~not*base64"}), 400, "INVALID_SESSION"),
        (json!({"sessionId": trekker_domain::session::encode_session_id("{\"me\":{}}")}), 400, "INVALID_CREDENTIALS"),
        (json!({"phoneNumber": "254799999999"}), 400, "PHONE_MISMATCH"),
        (json!({"selectedServer": "NOPE"}), 404, "UNKNOWN_SERVER"),
        (json!({"credentialType": "file", "credentials": {"registrationId": 1}}), 400, "INVALID_CREDENTIALS"),
    ];
    for (patch, status, code) in cases {
        let mut body = base.clone();
        for (key, value) in patch.as_object().unwrap() {
            body[key] = value.clone();
        }
        let answer = node.post_json("/api/guest/register-bot", &body).await;
        assert_eq!((answer.status, answer.code()), (status, code), "{patch}: {:?}", answer.body);
        assert_eq!(answer.body["success"], false);
        assert!(!answer.body["message"].as_str().unwrap().is_empty());
    }
    // The file form, as JSON and as a multipart upload.
    let file = node
        .post_json(
            "/api/guest/register-bot",
            &json!({
                "botName": "File", "phoneNumber": phone, "credentialType": "file",
                "credentials": creds::creds_json(&phone, 1),
            }),
        )
        .await;
    assert_eq!(file.status, 201, "{:?}", file.body);
    let other = creds::phone(30, 2);
    let form = reqwest::multipart::Form::new()
        .text("botName", "Upload")
        .text("phoneNumber", other.clone())
        .text("credentialType", "file")
        .part(
            "credsFile",
            reqwest::multipart::Part::text(creds::creds_json(&other, 1).to_string()).file_name("creds.json"),
        );
    let upload = Answer::from(node.client.post(&register).multipart(form).send().await.unwrap()).await;
    assert_eq!(upload.status, 201, "{:?}", upload.body);
    assert_eq!(upload.body["bot"]["phoneNumber"], other);

    let unknown_bot = node.admin(reqwest::Method::GET, "/api/admin/bots/..%2F..%2Fetc", None).await;
    assert_eq!((unknown_bot.status, unknown_bot.code()), (404, "NOT_FOUND"));
    let unknown_pairing = node.get("/api/pair/status/does-not-exist").await;
    assert_eq!((unknown_pairing.status, unknown_pairing.code()), (404, "NOT_FOUND"));
    let wrong_method = Answer::from(node.client.delete(node.url("/api/servers/available")).send().await.unwrap()).await;
    assert_eq!((wrong_method.status, wrong_method.code()), (404, "NOT_FOUND"));
    let no_number = node.get("/api/pair").await;
    assert_eq!((no_number.status, no_number.code()), (400, "INVALID_INPUT"));
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_answer_carries_a_session_id() {
    let database = trekker_testkit::sqlite_database();
    let node = spawn_node(settings(&database.url, "SERVER0", 5)).await;
    let phone = creds::phone(31, 1);
    let session = creds::session_id(&phone, 1);
    let secret = session.trim_start_matches("TREKKER~");
    let answers = [
        node.register("Bot", &phone, 1, None).await,
        node.register("Bot", &phone, 1, Some("NOPE")).await,
        node.post_json("/api/validate-credentials", &json!({"sessionId": session})).await,
        node.admin(reqwest::Method::GET, "/api/admin/bots", None).await,
    ];
    for answer in answers {
        let text = answer.body.to_string();
        assert!(!text.contains(secret) && !text.contains("noise-priv"), "{text}");
    }
    let bots = node.admin(reqwest::Method::GET, "/api/admin/bots", None).await;
    let id = bots.body["bots"][0]["id"].as_str().unwrap().to_owned();
    let detail = node.admin(reqwest::Method::GET, &format!("/api/admin/bots/{id}"), None).await;
    assert!(detail.body.get("credentials").is_none() && !detail.body.to_string().contains(secret));
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validation_branches_through_http() {
    let database = trekker_testkit::sqlite_database();
    let a = spawn_node(settings(&database.url, "SERVER0", 5)).await;
    let b = spawn_node(settings(&database.url, "SERVER1", 5)).await;
    let phone = creds::phone(32, 1);
    let session = creds::session_id(&phone, 1);
    let validate = |node: &crate::support::TestNode, body: serde_json::Value| {
        let url = node.url("/api/validate-credentials");
        let client = node.client.clone();
        async move { Answer::from(client.post(url).json(&body).send().await.unwrap()).await }
    };
    let fresh = validate(&a, json!({"sessionId": session, "phoneNumber": phone})).await;
    assert_eq!(fresh.status, 200);
    assert_eq!((fresh.body["isValid"].as_bool(), fresh.body["alreadyRegistered"].as_bool()), (Some(true), Some(false)));
    let bot_id = a.register("V", &phone, 1, None).await.body["bot"]["id"].clone();
    let here = validate(&a, json!({"sessionId": session})).await;
    assert_eq!(
        (here.body["alreadyRegistered"].as_bool(), here.body["crossServerUpdate"].as_bool()),
        (Some(true), Some(false))
    );
    let there = validate(&b, json!({"sessionId": session})).await;
    assert_eq!(there.body["crossServerUpdate"], true);
    assert_eq!(there.body["targetServer"], "SERVER0");
    assert_eq!(there.body["botId"], bot_id);
    let bad = validate(&a, json!({"sessionId": "garbage!"})).await;
    assert_eq!((bad.status, bad.body["isValid"].as_bool()), (200, Some(false)));
    let mismatch = validate(&a, json!({"sessionId": session, "phoneNumber": "254700000000"})).await;
    assert_eq!(mismatch.body["isValid"], false);
    let missing = validate(&a, json!({})).await;
    assert_eq!((missing.status, missing.code()), (400, "INVALID_INPUT"));
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pairing_then_registering_with_the_session() {
    let Some(url) = postgres_url().await else { return };
    let a = spawn_node(settings(&url, "SERVER0", 5)).await;
    let b = spawn_node(settings(&url, "SERVER1", 5)).await;
    let phone = creds::phone(33, 1);
    let ticket = a.get(&format!("/api/pair?number=%2B{phone}")).await;
    assert_eq!(ticket.status, 200, "{:?}", ticket.body);
    assert_eq!(ticket.body["number"], phone);
    assert_eq!(ticket.body["expiresIn"], 60);
    assert!(ticket.body["code"].as_str().unwrap().len() == 9);
    let request_id = ticket.body["requestId"].as_str().unwrap().to_owned();
    // Any node answers the poll; the simulated provider pairs within 2 s.
    let session = std::sync::Mutex::new(None);
    eventually(Duration::from_secs(30), "the pairing completes", || async {
        let status = b.get(&format!("/api/pair/status/{request_id}")).await;
        match status.body["status"].as_str() {
            Some("paired") => {
                *session.lock().unwrap() = status.body["sessionId"].as_str().map(str::to_owned);
                true
            }
            Some("pending") => false,
            other => panic!("unexpected pairing status {other:?}"),
        }
    })
    .await;
    let session = session.into_inner().unwrap().expect("a paired request carries its session ID");
    // Handed out once: a second poll, on any node, finds nothing.
    for node in [&a, &b] {
        let again = node.get(&format!("/api/pair/status/{request_id}")).await;
        assert_eq!((again.status, again.code()), (404, "NOT_FOUND"), "{again:?}");
    }
    assert!(session.starts_with("TREKKER~"));
    let registered = a
        .post_json(
            "/api/guest/register-bot",
            &json!({"botName": "Paired", "phoneNumber": phone, "credentialType": "session", "sessionId": session}),
        )
        .await;
    assert_eq!(registered.status, 201, "{:?}", registered.body);
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_answers_429_with_retry_after() {
    let database = trekker_testkit::sqlite_database();
    let mut limited = settings(&database.url, "SERVER0", 5);
    limited.rate_limit_per_min = 3;
    let node = spawn_node(limited).await;
    let mut statuses = Vec::new();
    for _ in 0..5 {
        let answer = node.get("/api/pair?number=254734000001").await;
        statuses.push(answer.status);
        if answer.status == 429 {
            assert_eq!(answer.code(), "RATE_LIMITED");
            assert!(answer.retry_after.as_deref().and_then(|s| s.parse::<u64>().ok()).is_some_and(|s| s >= 1));
        }
    }
    assert_eq!(statuses, [200, 200, 200, 429, 429]);
    // Registering shares the same budget of this address.
    let register = node.register("Limited", &creds::phone(34, 1), 1, None).await;
    assert_eq!((register.status, register.code()), (429, "RATE_LIMITED"));
    // Other endpoints are not limited.
    assert_eq!(node.get("/api/servers/available").await.status, 200);

    // Another client address has a budget of its own (127.0.0.2 is loopback too).
    let other = reqwest::Client::builder().local_address(std::net::IpAddr::from([127, 0, 0, 2])).build().unwrap();
    let mut from_other = Vec::new();
    for n in 1..=4 {
        let body = json!({
            "botName": "Other", "phoneNumber": creds::phone(34, 10 + n), "credentialType": "session",
            "sessionId": creds::session_id(&creds::phone(34, 10 + n), 1),
        });
        let answer =
            Answer::from(other.post(node.url("/api/guest/register-bot")).json(&body).send().await.unwrap()).await;
        from_other.push(answer.status);
    }
    assert_eq!(from_other, [201, 201, 201, 429], "register-bot is limited per client address");
    // Validation shares the budget too (a registry look-up per call).
    let probe = json!({"sessionId": creds::session_id(&creds::phone(34, 11), 1)});
    let answer =
        Answer::from(other.post(node.url("/api/validate-credentials")).json(&probe).send().await.unwrap()).await;
    assert_eq!((answer.status, answer.code()), (429, "RATE_LIMITED"));
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_covers_every_endpoint_and_metrics_count_outcomes() {
    let database = trekker_testkit::sqlite_database();
    let node = spawn_node(settings(&database.url, "SERVER0", 1)).await;
    let doc = node.get("/api/openapi.json").await;
    // The served document is the generated one, whose coverage of the
    // router is checked in `http::docs` against the routes themselves.
    use utoipa::OpenApi as _;
    let generated = serde_json::to_value(trekker_node::http::docs::ApiDoc::openapi()).unwrap();
    assert_eq!(doc.body, generated);
    node.register("M", &creds::phone(35, 1), 1, None).await;
    node.register("M", &creds::phone(35, 2), 1, None).await;
    let metrics = node.client.get(node.url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains("trekker_registrations_total{type=\"registered\"}"), "{metrics}");
    assert!(metrics.contains("trekker_registrations_total{type=\"all_servers_full\"}"), "{metrics}");
    assert!(metrics.contains("trekker_server_capacity{server=\"SERVER0\"} 1"), "{metrics}");
    // Requests by route pattern, method and status, with latency buckets;
    // an unknown path is one `unmatched` series, not a series per URL.
    node.client.get(node.url("/no/such/path-123")).send().await.unwrap();
    node.client.get(node.url("/no/such/path-456")).send().await.unwrap();
    let metrics = node.client.get(node.url("/metrics")).send().await.unwrap().text().await.unwrap();
    let series = |needle: &str| metrics.lines().filter(|l| l.contains(needle)).count();
    assert!(
        series("trekker_http_requests_total{method=\"POST\",status=\"201\",endpoint=\"/api/guest/register-bot\"}") == 1,
        "{metrics}"
    );
    assert!(series("endpoint=\"unmatched\"") >= 1 && series("path-123") == 0, "{metrics}");
    assert!(series("trekker_http_requests_duration_seconds_bucket{") > 0, "a histogram: {metrics}");
    assert!(series("trekker_build_info{") == 1, "{metrics}");
    let page = node.client.get(node.url("/")).send().await.unwrap().text().await.unwrap();
    assert!(page.contains("<title>Trekker</title>"));
    node.stop().await;
}

/// POSTs `length` bytes on a fresh connection, reading the answer while
/// still writing: the server answers 413 once past the limit and closes
/// without reading the rest, so the write may fail; the answer is the test.
async fn oversized_post(node: &crate::support::TestNode, path: &str, length: usize) -> Answer {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let stream = tokio::net::TcpStream::connect(node.addr).await.unwrap();
    let (mut reader, mut writer) = stream.into_split();
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\n\
         Content-Length: {length}\r\nConnection: close\r\n\r\n",
        node.addr
    );
    let writing = tokio::spawn(async move {
        let _ = writer.write_all(head.as_bytes()).await;
        let chunk = vec![b'A'; 64 * 1024];
        for _ in 0..length.div_ceil(chunk.len()) {
            if writer.write_all(&chunk).await.is_err() {
                break;
            }
        }
    });
    let mut raw = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(20), reader.read_to_end(&mut raw)).await;
    writing.abort();
    let text = String::from_utf8_lossy(&raw);
    let status = text.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = text.split("\r\n\r\n").nth(1).unwrap_or_default();
    Answer { status, retry_after: None, body: serde_json::from_str(body).unwrap_or(serde_json::Value::Null) }
}

/// Every metric the Grafana dashboard (docs/grafana-dashboard.json) asks
/// for is one a node exports: a renamed metric fails here, not on a
/// dashboard nobody looks at until an incident.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_grafana_dashboard_asks_for_metrics_nodes_export() {
    let database = trekker_testkit::sqlite_database();
    let node = spawn_node(settings(&database.url, "SERVER0", 2)).await;
    node.register("M", &creds::phone(35, 9), 1, None).await;
    let dashboard: serde_json::Value =
        serde_json::from_str(include_str!("../../../docs/grafana-dashboard.json")).expect("valid JSON");
    let metrics = node.client.get(node.url("/metrics")).send().await.unwrap().text().await.unwrap();
    let exported: std::collections::HashSet<&str> =
        metrics.lines().filter(|l| l.starts_with("# TYPE ")).filter_map(|l| l.split_whitespace().nth(2)).collect();
    // Metrics appear once something happened; these are the ones a fresh
    // test node has not had reason to emit yet, and their names come from
    // the code's constants.
    let later = [
        trekker_app::telemetry::CROSS_SERVER_LATENCY,
        trekker_app::telemetry::AUTO_ASSIGNMENTS,
        trekker_app::capacity::CAPACITY_WARNINGS,
        trekker_runtime::BOT_CRASHES,
        trekker_runtime::BOTS_RUNNING,
    ];
    let panels = dashboard["panels"].as_array().unwrap();
    assert!(panels.len() >= 7, "registrations, placements, latency, outboxes, bots, capacity, requests");
    for panel in panels {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap();
            for name in
                expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).filter(|w| w.starts_with("trekker_"))
            {
                let base = ["_bucket", "_sum", "_count"].iter().fold(name, |n, s| n.strip_suffix(s).unwrap_or(n));
                assert!(exported.contains(base) || later.contains(&base), "{} asks for {name}", panel["title"]);
            }
        }
    }
    node.stop().await;
}
