//! Cross-server credential updates: the seed's Test 1, durable delivery to
//! a node that was down, idempotency, versions, and every refusal of the
//! token verifier, through real HTTP.

use std::time::Duration;

use futures::future::join_all;
use serde_json::json;
use trekker_domain::BotId;
use trekker_tenancy::token::{Claims, ClusterKeys};
use trekker_tenancy::wire::CREDENTIALS_PATH;
use trekker_testkit::creds;

use crate::support::{Answer, CLUSTER_SECRET, TestNode, eventually, postgres_url, raw_sql_owned, settings, spawn_node};

/// Sends a signed call to `node` as `iss`, with a token built by `token`.
async fn signed_call(node: &TestNode, key: Option<&str>, body: &serde_json::Value, token: &str) -> Answer {
    let mut request = node
        .client
        .post(node.url(CREDENTIALS_PATH))
        .bearer_auth(token)
        .header("content-type", "application/json")
        .body(body.to_string());
    if let Some(key) = key {
        request = request.header("Idempotency-Key", key);
    }
    Answer::from(request.send().await.unwrap()).await
}

fn keys() -> ClusterKeys {
    ClusterKeys::new(CLUSTER_SECRET, None)
}

fn now_secs() -> i64 {
    trekker_domain::time::Clock::now_ms(&trekker_domain::time::SystemClock) / 1000
}

/// A correct token from SERVER1 to `node` for `body`.
fn token_for(node: &TestNode, body: &serde_json::Value) -> String {
    keys().mint(
        "SERVER1",
        node.state.config.server_name.as_str(),
        "POST",
        CREDENTIALS_PATH,
        body.to_string().as_bytes(),
        now_secs(),
    )
}

fn update_body(bot_id: &str, phone: &str, variant: u32, version: Option<i64>) -> serde_json::Value {
    let mut body = json!({"botId": bot_id, "phoneNumber": phone, "sessionId": creds::session_id(phone, variant)});
    if let Some(version) = version {
        body["credentialsVersion"] = json!(version);
    }
    body
}

/// Two nodes; a bot registered and approved on A. Returns (a, b, bot id, phone).
async fn hosted_bot(url: &str, series: u32) -> (TestNode, TestNode, String, String) {
    let a = spawn_node(settings(url, "SERVER0", 5)).await;
    let b = spawn_node(settings(url, "SERVER1", 5)).await;
    let phone = creds::phone(series, 1);
    let created = a.register("Hosted", &phone, 1, None).await;
    assert_eq!(created.status, 201, "{:?}", created.body);
    let id = created.body["bot"]["id"].as_str().unwrap().to_owned();
    assert_eq!(a.approve(&id).await.status, 200);
    (a, b, id, phone)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn seed_test_1_re_pair_on_another_node_updates_the_host() {
    let Some(url) = postgres_url().await else { return };
    let (a, b, id, phone) = hosted_bot(&url, 50).await;
    let bot_id = BotId::parse(&id).unwrap();
    crate::support::eventually(Duration::from_secs(10), "bot online on SERVER0", || async {
        a.state.store.get_bot(&bot_id).await.unwrap().unwrap().status.as_str() == "online"
    })
    .await;
    let answer = b.register("Hosted", &phone, 2, None).await;
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    assert_eq!(answer.body["type"], "cross_server_credential_update");
    assert_eq!(answer.body["hostingServer"], "SERVER0");
    assert_eq!(answer.body["currentServer"], "SERVER1");
    assert_eq!(answer.body["bot"]["id"], id);

    let (stored, version) = a.state.store.load_credentials(&bot_id).await.unwrap().unwrap();
    assert_eq!((stored, version), (creds::credentials(&phone, 2), 2));
    // The host's runtime restarts the bot with the new credentials.
    crate::support::eventually(Duration::from_secs(10), "bot restarted and online on SERVER0", || async {
        let bot = a.state.store.get_bot(&bot_id).await.unwrap().unwrap();
        bot.server.as_str() == "SERVER0" && bot.status.as_str() == "online" && bot.restarts == 1
    })
    .await;
    // An activity row on each side names the other.
    let activities = a.state.store.list_activities(Some(bot_id.clone()), None, 50).await.unwrap().activities;
    let on_host = activities.iter().find(|x| x.server == "SERVER0" && x.action == "credentials_updated").unwrap();
    assert_eq!(on_host.remote_tenancy.as_deref(), Some("SERVER1"));
    let on_asker =
        activities.iter().find(|x| x.server == "SERVER1" && x.action == "cross_server_update_delivered").unwrap();
    assert_eq!(on_asker.remote_tenancy.as_deref(), Some("SERVER0"));
    // The cross-server statistics count it, from any node.
    let stats = b.admin(reqwest::Method::GET, "/api/admin/stats/cross-server", None).await;
    assert_eq!(stats.status, 200, "{:?}", stats.body);
    let buckets = stats.body["buckets"].as_array().unwrap();
    assert_eq!(buckets.len(), 1, "{:?}", stats.body);
    assert_eq!((buckets[0]["server"].as_str(), buckets[0]["counts"]["delivered"].as_u64()), (Some("SERVER0"), Some(1)));
    assert!(buckets[0]["latencyMs"]["p95"].as_i64().is_some_and(|ms| ms >= 0), "{:?}", buckets[0]);
    assert_eq!((stats.body["hours"].as_u64(), stats.body["truncated"].as_bool()), (Some(24), Some(false)));
    for hours in ["0", "721", "x"] {
        let refused =
            b.admin(reqwest::Method::GET, &format!("/api/admin/stats/cross-server?hours={hours}"), None).await;
        assert_eq!((refused.status, refused.code()), (400, "INVALID_INPUT"), "hours={hours}: {:?}", refused.body);
    }
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn host_down_update_is_queued_then_applied_once_when_it_returns() {
    let Some(url) = postgres_url().await else { return };
    let (a, b, id, phone) = hosted_bot(&url, 51).await;
    let host_settings = a.state.config.clone();
    a.stop().await;
    // The host's row is still fresh: B tries within its budget, then queues.
    let answer = b.register("Hosted", &phone, 2, None).await;
    assert_eq!(answer.status, 202, "{:?}", answer.body);
    assert_eq!(answer.body["type"], "cross_server_update_queued");
    assert_eq!(answer.body["hostingServer"], "SERVER0");
    let update_id = answer.body["updateId"].as_str().unwrap().to_owned();
    let status = b.get(&format!("/api/guest/credential-updates/{update_id}")).await;
    assert_eq!(status.body["status"], "pending", "{:?}", status.body);
    assert_eq!(status.body["hostingServer"], "SERVER0");
    assert!(status.body["attempts"].as_i64().unwrap() >= 1);

    // The host comes back on the same database (same name, same key).
    let mut again = settings(&url, "SERVER0", 5);
    again.cross_server_timeout_ms = host_settings.cross_server_timeout.as_millis() as u64;
    let a = spawn_node(again).await;
    let path = format!("/api/guest/credential-updates/{update_id}");
    eventually(Duration::from_secs(30), "the queued update is delivered", || async {
        b.get(&path).await.body["status"] == "delivered"
    })
    .await;
    let bot_id = BotId::parse(&id).unwrap();
    assert_eq!(a.state.store.load_credentials(&bot_id).await.unwrap().unwrap(), (creds::credentials(&phone, 2), 2));
    // `delivered` is final: no worker claims the update again, so the count
    // below cannot grow later.
    let applied = a
        .state
        .store
        .list_activities(Some(bot_id), None, 100)
        .await
        .unwrap()
        .activities
        .into_iter()
        .filter(|x| x.server == "SERVER0" && x.action == "credentials_updated")
        .count();
    assert_eq!(applied, 1, "applied exactly once");
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn offline_host_is_queued_at_once_and_newer_update_supersedes() {
    let Some(url) = postgres_url().await else { return };
    let (a, b, _id, phone) = hosted_bot(&url, 52).await;
    a.stop().await;
    // A is offline (its last beat an hour old), and its address is a black
    // hole that accepts connections and never answers: had B called it, the
    // registration would hang past the test client's 30 s timeout (B's
    // cross-server budget below is longer still).
    let black_hole = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let sql = format!(
        "UPDATE server_registry SET last_heartbeat = last_heartbeat - 3600000, base_url = 'http://{}' \
         WHERE server_name = 'SERVER0'",
        black_hole.local_addr().unwrap()
    );
    raw_sql_owned(&url, sql).await;
    b.stop().await;
    let mut patient = settings(&url, "SERVER1", 5);
    patient.cross_server_timeout_ms = 120_000;
    let b = spawn_node(patient).await;
    let first = b.register("Hosted", &phone, 2, None).await;
    assert_eq!(first.status, 202, "an offline host is queued for at once: {first:?}");
    let second = b.register("Hosted", &phone, 3, None).await;
    assert_eq!(second.status, 202);
    let old = b.get(&format!("/api/guest/credential-updates/{}", first.body["updateId"].as_str().unwrap())).await;
    // API.md: a newer update replaced it before delivery; that is no error.
    assert_eq!(old.body["status"], "superseded");
    assert!(old.body["lastError"].is_null(), "{}", old.body);
    // The admin's view of the outbox, one status at a time, in pages.
    let listed = b.admin(reqwest::Method::GET, "/api/admin/credential-updates?status=superseded&limit=1", None).await;
    assert_eq!(listed.status, 200, "{:?}", listed.body);
    assert_eq!(listed.body["updates"][0]["updateId"], first.body["updateId"]);
    assert!(listed.body["next"].is_null(), "one superseded update: {:?}", listed.body);
    let all = b.admin(reqwest::Method::GET, "/api/admin/credential-updates?limit=1", None).await;
    let next = all.body["next"].as_str().expect("two updates in pages of one");
    let rest =
        b.admin(reqwest::Method::GET, &format!("/api/admin/credential-updates?limit=1&after={next}"), None).await;
    assert_ne!(rest.body["updates"][0]["updateId"], all.body["updates"][0]["updateId"]);
    assert!(rest.body["next"].is_null());
    let servers = b.get("/api/servers/available").await;
    let host = servers.body["servers"].as_array().unwrap().iter().find(|s| s["name"] == "SERVER0").unwrap().clone();
    assert_eq!(host["online"], false);
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn retries_and_duplicates_of_one_command_apply_once() {
    let Some(url) = postgres_url().await else { return };
    let (a, b, id, phone) = hosted_bot(&url, 53).await;
    // No credentialsVersion: every application would take the next version,
    // so only the Idempotency-Key record can keep twenty copies to one.
    let body = update_body(&id, &phone, 7, None);
    let answers = join_all((0..20).map(|_| {
        let token = token_for(&a, &body);
        let a = &a;
        let body = &body;
        async move { signed_call(a, Some("command-1"), body, &token).await }
    }))
    .await;
    let ok: Vec<&Answer> = answers.iter().filter(|x| x.status == 200).collect();
    assert!(!ok.is_empty());
    for answer in &answers {
        assert!(answer.status == 200 || (answer.status == 409 && answer.code() == "CONFLICT"), "{answer:?}");
    }
    for answer in &ok {
        assert_eq!(answer.body["credentialsVersion"], 2);
        assert_eq!(answer.body["restarted"], true);
        assert_eq!(answer.body["server"], "SERVER0");
    }
    // Sequential retries get the stored answer.
    let retry = signed_call(&a, Some("command-1"), &body, &token_for(&a, &body)).await;
    assert_eq!((retry.status, &retry.body), (200, &ok[0].body));
    let bot_id = BotId::parse(&id).unwrap();
    let applied = a
        .state
        .store
        .list_activities(Some(bot_id.clone()), None, 100)
        .await
        .unwrap()
        .activities
        .into_iter()
        .filter(|x| x.action == "credentials_updated")
        .count();
    assert_eq!(applied, 1);
    assert_eq!(a.state.store.load_credentials(&bot_id).await.unwrap().unwrap().1, 2, "applied more than once");
    // Same key, other body: 422.
    let other = update_body(&id, &phone, 8, Some(3));
    let mismatch = signed_call(&a, Some("command-1"), &other, &token_for(&a, &other)).await;
    assert_eq!((mismatch.status, mismatch.code()), (422, "IDEMPOTENCY_MISMATCH"));
    let no_key = signed_call(&a, None, &other, &token_for(&a, &other)).await;
    assert_eq!((no_key.status, no_key.code()), (400, "INVALID_INPUT"));
    // Finding 5 of the outside probe: a signed call with the largest
    // version used to block the bot for good. Refused; updates go on.
    let leap = update_body(&id, &phone, 8, Some(i64::MAX));
    let refused = signed_call(&a, Some("command-leap"), &leap, &token_for(&a, &leap)).await;
    assert_eq!((refused.status, refused.code()), (400, "INVALID_INPUT"), "{refused:?}");
    assert_eq!(a.state.store.load_credentials(&bot_id).await.unwrap().unwrap().1, 2);
    // An older version is refused and changes nothing.
    let older = update_body(&id, &phone, 9, Some(1));
    let stale = signed_call(&a, Some("command-2"), &older, &token_for(&a, &older)).await;
    assert_eq!((stale.status, stale.code()), (409, "CONFLICT"));
    assert_eq!(a.state.store.load_credentials(&bot_id).await.unwrap().unwrap(), (creds::credentials(&phone, 7), 2));
    // Another server's bot is never touched.
    let b_phone = creds::phone(53, 2);
    let on_b = b.register("Other", &b_phone, 1, Some("SERVER1")).await;
    let b_id = on_b.body["bot"]["id"].as_str().unwrap();
    let foreign = update_body(b_id, &b_phone, 2, Some(2));
    let refused = signed_call(&a, Some("command-3"), &foreign, &token_for(&a, &foreign)).await;
    assert_eq!((refused.status, refused.code()), (404, "NOT_FOUND"));
    let mismatch_phone = update_body(&id, &creds::phone(53, 3), 2, Some(9));
    let wrong_phone = signed_call(&a, Some("command-4"), &mismatch_phone, &token_for(&a, &mismatch_phone)).await;
    assert_eq!((wrong_phone.status, wrong_phone.code()), (400, "PHONE_MISMATCH"));
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_concurrent_updates_leave_the_highest_version() {
    let Some(url) = postgres_url().await else { return };
    let (a, b, id, phone) = hosted_bot(&url, 54).await;
    let mut versions: Vec<i64> = (2..52).collect();
    // Highest first, so a naive last-writer-wins would end low.
    versions.reverse();
    let answers = join_all(versions.iter().map(|&v| {
        let body = update_body(&id, &phone, v as u32, Some(v));
        let token = token_for(&a, &body);
        let a = &a;
        async move { signed_call(a, Some(&format!("cmd-{v}")), &body, &token).await }
    }))
    .await;
    for answer in &answers {
        assert!(answer.status == 200 || answer.code() == "CONFLICT", "{answer:?}");
    }
    let bot_id = BotId::parse(&id).unwrap();
    assert_eq!(a.state.store.load_credentials(&bot_id).await.unwrap().unwrap(), (creds::credentials(&phone, 51), 51));
    a.stop().await;
    b.stop().await;
}

/// Each refusal of the verifier, through real HTTP: 401 UNAUTHORIZED.
mod refusals {
    use super::*;

    async fn refused(build: impl FnOnce(&TestNode, &serde_json::Value) -> String) {
        let database = trekker_testkit::sqlite_database();
        let a = spawn_node(settings(&database.url, "SERVER0", 5)).await;
        let b = spawn_node(settings(&database.url, "SERVER1", 5)).await;
        let phone = creds::phone(55, 1);
        let id = a.register("R", &phone, 1, None).await.body["bot"]["id"].as_str().unwrap().to_owned();
        let body = update_body(&id, &phone, 2, Some(2));
        let token = build(&a, &body);
        let answer = signed_call(&a, Some("refusal"), &body, &token).await;
        assert_eq!((answer.status, answer.code()), (401, "UNAUTHORIZED"), "{:?}", answer.body);
        let bot = a.state.store.get_bot(&BotId::parse(&id).unwrap()).await.unwrap().unwrap();
        assert_eq!(bot.credentials_version, 1, "nothing applied");
        a.stop().await;
        b.stop().await;
    }

    fn claims(node: &TestNode, body: &serde_json::Value) -> Claims {
        let token = token_for(node, body);
        keys()
            .verify(
                &token,
                node.state.config.server_name.as_str(),
                "POST",
                CREDENTIALS_PATH,
                body.to_string().as_bytes(),
                now_secs(),
            )
            .unwrap()
    }

    fn b64(text: &str) -> String {
        use base64::Engine as _;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(text)
    }

    /// Finding 4 of the outside probe: times near i64's ends wrapped into
    /// a valid lifetime and a replay record that expired at once.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn times_that_would_wrap() {
        refused(|node, body| keys().sign(&Claims { iat: i64::MIN, exp: i64::MAX - 30, ..claims(node, body) }, None))
            .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn issuer_in_another_letter_case() {
        refused(|node, body| keys().sign(&Claims { iss: "server1".into(), ..claims(node, body) }, None)).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn issued_by_the_node_to_itself() {
        refused(|node, body| keys().sign(&Claims { iss: "SERVER0".into(), ..claims(node, body) }, None)).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn empty_token_id() {
        refused(|node, body| keys().sign(&Claims { jti: String::new(), ..claims(node, body) }, None)).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn bad_signature() {
        refused(|node, body| {
            let other = ClusterKeys::new("another-secret-of-at-least-32-bytes!!", None);
            other.sign(&claims(node, body), None)
        })
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn algorithm_none() {
        refused(|node, body| {
            let claims = serde_json::to_string(&claims(node, body)).unwrap();
            format!("{}.{}.", b64(r#"{"alg":"none","typ":"JWT"}"#), b64(&claims))
        })
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn algorithm_hs512() {
        refused(|node, body| {
            let header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS512);
            jsonwebtoken::encode(
                &header,
                &claims(node, body),
                &jsonwebtoken::EncodingKey::from_secret(CLUSTER_SECRET.as_bytes()),
            )
            .unwrap()
        })
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn algorithm_rs256() {
        refused(|node, body| {
            let claims = serde_json::to_string(&claims(node, body)).unwrap();
            format!("{}.{}.{}", b64(r#"{"alg":"RS256","typ":"JWT"}"#), b64(&claims), b64("sig"))
        })
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn wrong_audience() {
        refused(|node, body| keys().sign(&Claims { aud: "SERVER1".into(), ..claims(node, body) }, None)).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn unknown_issuer() {
        refused(|node, body| keys().sign(&Claims { iss: "INTRUDER".into(), ..claims(node, body) }, None)).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn expired() {
        refused(|node, body| {
            let c = claims(node, body);
            keys().sign(&Claims { iat: c.iat - 200, exp: c.iat - 150, ..c }, None)
        })
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn issued_in_the_future() {
        refused(|node, body| {
            let c = claims(node, body);
            keys().sign(&Claims { iat: c.iat + 120, exp: c.iat + 150, ..c }, None)
        })
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn lifetime_over_60_seconds() {
        refused(|node, body| {
            let c = claims(node, body);
            keys().sign(&Claims { exp: c.iat + 61, ..c }, None)
        })
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn method_mismatch() {
        refused(|node, body| keys().sign(&Claims { htm: "GET".into(), ..claims(node, body) }, None)).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn path_mismatch() {
        refused(|node, body| {
            keys().sign(&Claims { htu: "/internal/tenants/health".into(), ..claims(node, body) }, None)
        })
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn body_mismatch() {
        refused(|node, body| {
            keys().sign(&Claims { bh: trekker_tenancy::body_hash(b"{}"), ..claims(node, body) }, None)
        })
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn missing_token() {
        refused(|_, _| String::new()).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn replayed_jti() {
        let database = trekker_testkit::sqlite_database();
        let a = spawn_node(settings(&database.url, "SERVER0", 5)).await;
        let b = spawn_node(settings(&database.url, "SERVER1", 5)).await;
        let token = keys().mint("SERVER1", "SERVER0", "GET", "/internal/tenants/health", b"", now_secs());
        let call = |node: &TestNode| node.client.get(node.url("/internal/tenants/health")).bearer_auth(&token).send();
        let first = Answer::from(call(&a).await.unwrap()).await;
        assert_eq!((first.status, first.body["status"].as_str()), (200, Some("healthy")));
        let second = Answer::from(call(&a).await.unwrap()).await;
        assert_eq!((second.status, second.code()), (401, "UNAUTHORIZED"));
        assert!(second.body["message"].as_str().unwrap().contains("already used"));
        // The guard lives in the database: a node restart does not forget it.
        a.stop().await;
        let a = spawn_node(settings(&database.url, "SERVER0", 5)).await;
        assert_eq!(Answer::from(call(&a).await.unwrap()).await.status, 401);
        let unsigned = Answer::from(a.client.get(a.url("/internal/tenants/health")).send().await.unwrap()).await;
        assert_eq!(unsigned.status, 401);
        a.stop().await;
        b.stop().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn node_without_secret_refuses_and_cannot_forward() {
        let database = trekker_testkit::sqlite_database();
        let mut bare = settings(&database.url, "SERVER0", 5);
        bare.cluster_secret = None;
        let a = spawn_node(bare).await;
        let b = spawn_node(settings(&database.url, "SERVER1", 5)).await;
        let token = keys().mint("SERVER1", "SERVER0", "GET", "/internal/tenants/health", b"", now_secs());
        let answer =
            Answer::from(a.client.get(a.url("/internal/tenants/health")).bearer_auth(token).send().await.unwrap())
                .await;
        assert_eq!(answer.status, 401);
        assert!(answer.body["message"].as_str().unwrap().contains("CLUSTER_SECRET"));
        a.stop().await;
        b.stop().await;
    }
}
