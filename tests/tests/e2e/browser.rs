//! What people see, in a real headless Chromium driven over WebDriver
//! (Debian's `chromium` and `chromium-driver`, installed by `.ci/run`):
//! the operator console against real nodes (log in, capacity, approve and
//! watch the bot turn online without a reload, reject, page through 250
//! bots, one capacity warning with two nodes watching, stop and restart a
//! bot, evacuate a server and watch its bots change host) and the guest page
//! (pair, register, the server list changing live). No JavaScript error may
//! reach the browser's console; screenshots go to
//! `target/browser-artifacts/` (kept, never compared pixel by pixel).
//!
//! Without Chromium these tests say so loudly and pass, unless
//! `TREKKER_REQUIRE_BROWSER` is set (CI sets it): then they fail.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fantoccini::wd::WebDriverCompatibleCommand;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};
use trekker_app::events::LiveEvent;
use trekker_testkit::creds;

use crate::support::{ADMIN_TOKEN, TestNode, fast_runtime, postgres_url, raw_count, settings, spawn_node};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// A headless Chromium session, and the chromedriver that runs it.
struct Browser {
    client: Client,
    driver: Child,
    test: &'static str,
}

/// The browser's console log (chromedriver's `se/log` endpoint).
#[derive(Debug)]
struct BrowserLog;

impl WebDriverCompatibleCommand for BrowserLog {
    fn endpoint(&self, base: &url::Url, session: Option<&str>) -> Result<url::Url, url::ParseError> {
        base.join(&format!("session/{}/se/log", session.unwrap_or_default()))
    }

    fn method_and_body(&self, _: &url::Url) -> (http::Method, Option<String>) {
        (http::Method::POST, Some(json!({"type": "browser"}).to_string()))
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("a free port")
}

impl Browser {
    /// A browser, or `None` (after saying so loudly) when Chromium is not
    /// installed and `TREKKER_REQUIRE_BROWSER` is not set.
    async fn open(test: &'static str) -> Option<Self> {
        if !Path::new(CHROMIUM).exists() || !Path::new(CHROMEDRIVER).exists() {
            assert!(
                std::env::var_os("TREKKER_REQUIRE_BROWSER").is_none(),
                "TREKKER_REQUIRE_BROWSER is set but {CHROMIUM} or {CHROMEDRIVER} is missing \
                 (apt-get install chromium chromium-driver)"
            );
            trekker_testkit::announce_skip(
                &format!("no {CHROMIUM} / {CHROMEDRIVER} here"),
                &format!(
                    "({test}) did not run in a browser: install Debian's chromium and chromium-driver, \
                     or set TREKKER_REQUIRE_BROWSER to make this fail"
                ),
            );
            return None;
        }
        let port = free_port();
        let driver = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver starts");
        let mut capabilities = serde_json::Map::new();
        capabilities.insert(
            "goog:chromeOptions".into(),
            json!({"binary": CHROMIUM, "args": ["--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                "--disable-gpu", "--window-size=1280,1000"]}),
        );
        capabilities.insert("goog:loggingPrefs".into(), json!({"browser": "ALL"}));
        let url = format!("http://127.0.0.1:{port}");
        // chromedriver takes a moment to listen.
        let mut last = None;
        for _ in 0..100 {
            match ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
                .capabilities(capabilities.clone())
                .connect(&url)
                .await
            {
                Ok(client) => return Some(Self { client, driver, test }),
                Err(err) => last = Some(err),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("cannot start a Chromium session: {last:?}");
    }

    /// Runs `script` (a function body returning a value) until it returns
    /// true, or fails after `within`.
    async fn until(&self, what: &str, script: &str) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let value = self.client.execute(script, vec![]).await.unwrap_or(Value::Null);
            if value == Value::Bool(true) {
                return;
            }
            if tokio::time::Instant::now() > deadline {
                self.shot(&format!("timeout-{}", what.replace(' ', "-"))).await;
                panic!("in the browser, never: {what} ({script})");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn js(&self, script: &str) -> Value {
        self.client.execute(script, vec![]).await.expect("script runs")
    }

    /// Clicks the element `css` finds. A live page redraws its rows as
    /// events arrive, so an element found can be gone before the click:
    /// found again and clicked again, for up to five seconds.
    async fn click(&self, css: &str) {
        let mut last = None;
        for _ in 0..50 {
            match self.client.find(Locator::Css(css)).await {
                Ok(element) => match element.click().await {
                    Ok(()) => return,
                    Err(error) => last = Some(error),
                },
                Err(error) => last = Some(error),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("cannot click {css}: {last:?}");
    }

    async fn type_into(&self, css: &str, text: &str) {
        let field = self.client.find(Locator::Css(css)).await.unwrap_or_else(|e| panic!("{css}: {e}"));
        field.clear().await.unwrap();
        field.send_keys(text).await.unwrap();
    }

    /// Saves a screenshot as a test artefact.
    async fn shot(&self, name: &str) {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/browser-artifacts");
        let _ = std::fs::create_dir_all(&dir);
        if let Ok(png) = self.client.screenshot().await {
            let _ = std::fs::write(dir.join(format!("{}-{name}.png", self.test)), png);
        }
    }

    /// Errors the pages logged (script errors, failed loads).
    async fn errors(&self) -> Vec<String> {
        let log = self.client.issue_cmd(BrowserLog).await.expect("chromedriver returns the browser log");
        log.as_array()
            .into_iter()
            .flatten()
            .filter(|entry| entry["level"] == "SEVERE")
            .map(|entry| entry["message"].as_str().unwrap_or_default().to_owned())
            .collect()
    }

    async fn close(self) {
        self.close_expecting(&[]).await;
    }

    /// Closes the browser; the page may have logged only errors that
    /// contain one of `expected` (a refusal the test caused on purpose).
    async fn close_expecting(mut self, expected: &[&str]) {
        let mut errors = self.errors().await;
        errors.retain(|error| !expected.iter().any(|e| error.contains(e)));
        let _ = self.client.clone().close().await;
        let _ = self.driver.kill();
        let _ = self.driver.wait();
        assert!(errors.is_empty(), "the page logged errors: {errors:#?}");
    }
}

async fn log_in(browser: &Browser, node: &TestNode) {
    log_in_with(browser, node, ADMIN_TOKEN).await;
}

async fn log_in_with(browser: &Browser, node: &TestNode, token: &str) {
    browser.client.goto(&node.url("/admin")).await.unwrap();
    browser.type_into("#token", token).await;
    browser.click("#login-form button[type=submit]").await;
    browser.until("logged in, live", "return document.getElementById('live').textContent.includes('live')").await;
}

/// The bootstrap admin makes a key in the console (its token shown once)
/// and revokes it; the key's holder is refused from then on.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_admin_makes_and_revokes_keys_in_the_console() {
    let Some(browser) = Browser::open("console-keys").await else { return };
    let database = trekker_testkit::sqlite_database();
    let node = spawn_node(settings(&database.url, "SERVER0", 5)).await;
    log_in(&browser, &node).await;
    assert_eq!(browser.js("return document.getElementById('whoami').textContent").await, "bootstrap (admin)");
    browser.click("nav button[data-view=keys]").await;
    browser.type_into("#key-name", "Night shift").await;
    browser.js("document.getElementById('key-role').value = 'operator'; return true").await;
    browser.click("#key-form button[type=submit]").await;
    browser.until("the new token shown", "return !document.getElementById('new-key').hidden").await;
    let token = browser.js("return document.getElementById('new-key-token').textContent").await;
    let token = token.as_str().unwrap().to_owned();
    assert!(token.starts_with("trk_"), "{token}");
    browser
        .until("the key listed", "return document.querySelector('#keys tbody').textContent.includes('Night shift')")
        .await;
    let table = browser.js("return document.getElementById('keys').textContent").await;
    assert!(!table.as_str().unwrap().contains(&token[21..]), "the list never shows a secret");
    let me = node.call_as(&token, reqwest::Method::GET, "/api/admin/me", None).await;
    assert_eq!((me.body["name"].as_str(), me.body["role"].as_str()), (Some("Night shift"), Some("operator")));
    browser.js("window.confirm = () => true; return true").await;
    browser.click("#keys tbody button").await;
    browser.until("no Revoke left", "return document.querySelectorAll('#keys tbody button').length === 0").await;
    let refused = node.call_as(&token, reqwest::Method::GET, "/api/admin/me", None).await;
    assert_eq!(refused.status, 401, "revoked from the console");
    browser.shot("keys").await;
    browser.close().await;
    node.stop().await;
}

/// A viewer's key logs in and sees no action it may not take; an
/// operator's approves a bot but deletes nothing; a key revoked while its
/// console is open is logged out at its next call.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_console_shows_each_key_only_what_its_role_may_do() {
    let Some(browser) = Browser::open("console-roles").await else { return };
    let database = trekker_testkit::sqlite_database();
    let node = spawn_node(settings(&database.url, "SERVER0", 5)).await;
    let created = node.register("Waiting", &creds::phone(74, 1), 1, None).await;
    let bot = created.body["bot"]["id"].as_str().unwrap().to_owned();
    let (_, viewer) = node.make_key("Vera", "viewer").await;
    let (operator_id, operator) = node.make_key("Otto", "operator").await;
    let row_buttons = format!(
        "return [...document.querySelectorAll('#bots tr[data-bot=\"{bot}\"] button')].map((b) => b.textContent)"
    );

    log_in_with(&browser, &node, &viewer).await;
    assert_eq!(browser.js("return document.getElementById('whoami').textContent").await, "Vera (viewer)");
    browser.until("servers drawn", "return !!document.querySelector('#servers tr[data-server=\"SERVER0\"]')").await;
    assert_eq!(browser.js("return document.querySelectorAll('#servers tbody button').length").await, 0);
    browser.click("nav button[data-view=bots]").await;
    browser.until("the bot listed", &format!("return !!document.querySelector('#bots tr[data-bot=\"{bot}\"]')")).await;
    assert_eq!(browser.js(&row_buttons).await, serde_json::json!([]), "a viewer gets no action");
    assert_eq!(browser.js("return document.getElementById('repair').hidden").await, true);
    browser.shot("viewer").await;
    browser.click("#logout").await;

    log_in_with(&browser, &node, &operator).await;
    assert_eq!(browser.js("return document.getElementById('whoami').textContent").await, "Otto (operator)");
    let keys_hidden = browser.js("return document.querySelector('nav button[data-view=keys]').hidden").await;
    assert_eq!(keys_hidden, true, "an operator sees no key management");
    browser.click("nav button[data-view=bots]").await;
    browser.until("the bot listed", &format!("return !!document.querySelector('#bots tr[data-bot=\"{bot}\"]')")).await;
    assert_eq!(browser.js(&row_buttons).await, serde_json::json!(["Approve", "Reject"]), "no Delete for an operator");
    browser.click(&format!("#bots tr[data-bot=\"{bot}\"] button")).await;
    browser
        .until(
            "approved by the operator",
            &format!(
                "return document.querySelector('#bots tr[data-bot=\"{bot}\"] .approval').textContent === 'approved'"
            ),
        )
        .await;
    let stored = node.admin(reqwest::Method::GET, &format!("/api/admin/bots/{bot}"), None).await;
    assert_eq!(stored.body["approvalStatus"], "approved", "{:?}", stored.body);

    // Revoked while the console is open: its next call logs it out.
    let revoked = node.admin(reqwest::Method::DELETE, &format!("/api/admin/keys/{operator_id}"), None).await;
    assert_eq!(revoked.status, 200);
    browser.click("nav button[data-view=servers]").await;
    browser.until("logged out", "return !document.getElementById('login').hidden").await;
    let said = browser.js("return document.getElementById('error').textContent").await;
    assert_eq!(said, "The token was refused.");
    assert_eq!(browser.js("return sessionStorage.length").await, 0, "the key is gone from the tab");
    browser
        .close_expecting(&["/api/admin/servers - Failed to load resource: the server responded with a status of 401"])
        .await;
    node.stop().await;
}

/// An operator's key logs in, sees no key management, approves a bot (the
/// audit view shows the approval under the key's name, and its filter
/// keeps to it), opens the bot's live log and sees a line the bot prints
/// while it is open, on the same connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_operator_approves_sees_it_audited_and_watches_the_bots_live_log() {
    let Some(browser) = Browser::open("console-audit-log").await else { return };
    let database = trekker_testkit::sqlite_database();
    let work = tempfile::tempdir().unwrap();
    let (script, poke) = (work.path().join("bot.sh"), work.path().join("poke"));
    let body = format!(
        "echo ready\nwhile true; do if [ -f {poke} ]; then echo \"said: $(cat {poke})\"; rm -f {poke}; fi; \
         sleep 0.1; done\n",
        poke = poke.display()
    );
    std::fs::write(&script, body).unwrap();
    let mut node_settings = settings(&database.url, "SERVER0", 5);
    node_settings.bot_driver = trekker_node::config::BotDriverKind::Process;
    node_settings.bot_command = Some(format!("sh {}", script.display()));
    node_settings.bot_sandbox = trekker_node::config::SandboxMode::Off;
    node_settings.bot_auth_dir = work.path().join("auth");
    let node = crate::support::spawn_node_with(node_settings, fast_runtime(None)).await;
    let created = node.register("Chatty", &creds::phone(75, 1), 1, None).await;
    let bot = created.body["bot"]["id"].as_str().unwrap().to_owned();
    let (otto_id, operator) = node.make_key("Otto", "operator").await;
    let rejected = node.register("Other", &creds::phone(75, 2), 1, None).await;
    let other = rejected.body["bot"]["id"].as_str().unwrap().to_owned();
    assert_eq!(node.admin(reqwest::Method::POST, &format!("/api/admin/bots/{other}/reject"), None).await.status, 200);

    log_in_with(&browser, &node, &operator).await;
    let keys_hidden = browser.js("return document.querySelector('nav button[data-view=keys]').hidden").await;
    assert_eq!(keys_hidden, true, "an operator sees no key management");
    browser.click("nav button[data-view=bots]").await;
    let row = format!("#bots tr[data-bot=\"{bot}\"]");
    browser.until("the bot listed", &format!("return !!document.querySelector('{row}')")).await;
    browser.click(&format!("{row} button")).await;
    browser
        .until("approved", &format!("return document.querySelector('{row} .approval').textContent === 'approved'"))
        .await;

    // The audit view: the approval under Otto's name, the bootstrap's
    // rejection beside it; filtered to Otto, only his.
    browser.click("nav button[data-view=audit]").await;
    let first_row = "const r = document.querySelector('#audit tbody tr'); \
        return !!r && r.querySelector('.actor').textContent === 'Otto' && \
        r.querySelector('.action').textContent === 'approved' && r.querySelector('.result').textContent === 'ok'";
    browser.until("the approval audited under Otto", first_row).await;
    let target = browser.js("return document.querySelector('#audit tbody tr').children[3].textContent").await;
    assert_eq!(target, format!("bot/{bot}").as_str());
    let actors = "return [...document.querySelectorAll('#audit tbody .actor')].map((c) => c.textContent)";
    browser.until("the rejection by bootstrap listed", &format!("{actors}.includes('bootstrap')")).await;
    browser.type_into("#audit-actor", "Otto").await;
    browser.click("#audit-form button[type=submit]").await;
    browser
        .until(
            "only Otto's",
            &format!("const a = ({{ f() {{ {actors}; }} }}).f(); return a.length === 1 && a[0] === 'Otto'"),
        )
        .await;
    browser.shot("audit").await;
    let trail = node.admin(reqwest::Method::GET, "/api/admin/audit?actor=Otto", None).await;
    assert_eq!(trail.body["entries"][0]["actor"]["keyId"], otto_id.as_str());

    // The bot's live log: what it printed, then what it prints now.
    browser
        .js("window.logStreams = 0; const f = window.fetch; window.fetch = (...a) => { \
             if (String(a[0]).includes('/logs/stream')) window.logStreams += 1; return f(...a); }; return true")
        .await;
    browser.click("nav button[data-view=bots]").await;
    browser.until("the bot listed again", &format!("return !!document.querySelector('{row} a')")).await;
    browser.click(&format!("{row} a")).await;
    let log_has = |text: &str| format!("return document.getElementById('detail-log').textContent.includes('{text}')");
    browser.until("the bot's first line", &log_has("ready")).await;
    assert_eq!(browser.js("return document.getElementById('log-status').textContent").await, "(live)");
    std::fs::write(&poke, "hello from the bot").unwrap();
    browser.until("the line it just printed", &log_has("said: hello from the bot")).await;
    assert_eq!(browser.js("return window.logStreams").await, 1, "one stream, no reconnect");
    browser.shot("live-log").await;
    browser.close().await;
    node.stop().await;
}

/// The stats page draws the cross-server updates of the last hours: a bar
/// per hour by status and a row per hour and hosting server with its
/// latency, from real re-pairs across two nodes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_stats_page_charts_cross_server_updates() {
    let Some(browser) = Browser::open("console-stats").await else { return };
    let database = trekker_testkit::sqlite_database();
    let host = spawn_node(settings(&database.url, "SERVER0", 5)).await;
    let asker = spawn_node(settings(&database.url, "SERVER1", 5)).await;
    let phone = creds::phone(76, 1);
    let created = host.register("Hosted", &phone, 1, None).await;
    let id = created.body["bot"]["id"].as_str().unwrap().to_owned();
    assert_eq!(host.approve(&id).await.status, 200);
    for version in [2, 3] {
        let answer = asker.register("Hosted", &phone, version, None).await;
        assert_eq!(answer.body["type"], "cross_server_credential_update", "{:?}", answer.body);
    }
    let (_, viewer) = asker.make_key("Vera", "viewer").await;
    log_in_with(&browser, &asker, &viewer).await;
    browser.click("nav button[data-view=stats]").await;
    let bar = "const r = document.querySelector('#stats-chart rect[data-status=delivered]'); \
        return !!r && r.dataset.count === '2' && Number(r.getAttribute('height')) > 0";
    browser.until("a bar of two delivered updates", bar).await;
    let row = browser.js("return document.querySelector('#stats tbody tr').textContent").await;
    let row = row.as_str().unwrap();
    assert!(row.contains("SERVER0") && row.contains("delivered 2") && row.contains(" ms / "), "{row}");
    let summary = browser.js("return document.getElementById('stats-summary').textContent").await;
    assert!(summary.as_str().unwrap().starts_with("2 updates since"), "{summary}");
    browser.js("const s = document.getElementById('stats-hours'); s.value = '168'; s.onchange(); return true").await;
    browser
        .until(
            "a week drawn",
            "return document.querySelector('#stats-chart rect[data-status=delivered]') !== null && \
               document.getElementById('stats-summary').textContent.startsWith('2 updates')",
        )
        .await;
    browser.shot("stats").await;
    browser.close().await;
    asker.stop().await;
    host.stop().await;
}

/// The bootstrap admin drains and reactivates a server, edits its
/// capacity, filters the bots, deletes one, approves a credential review
/// and repairs a drifted count, each from the console's own controls; the
/// audit view lists every one of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_admin_drains_edits_filters_deletes_reviews_and_repairs_in_the_console() {
    let Some(browser) = Browser::open("console-admin-actions").await else { return };
    let database = trekker_testkit::sqlite_database();
    let node = spawn_node(settings(&database.url, "SERVER0", 5)).await;
    let mut ids = Vec::new();
    for (n, name) in [(1, "Alpha"), (2, "Beta"), (3, "Gamma")] {
        let created = node.register(name, &creds::phone(77, n), 1, None).await;
        ids.push(created.body["bot"]["id"].as_str().unwrap().to_owned());
    }
    for id in [&ids[0], &ids[2]] {
        assert_eq!(node.approve(id).await.status, 200);
    }
    let forged = creds::session_id_of_account(&creds::phone(77, 3), 2, "someone-else");
    let body = json!({"botName": "Gamma", "phoneNumber": creds::phone(77, 3), "credentialType": "session",
        "sessionId": forged});
    let mismatch = node.post_json("/api/guest/register-bot", &body).await;
    assert_eq!(mismatch.code(), "ACCOUNT_MISMATCH", "{mismatch:?}");
    log_in(&browser, &node).await;
    browser.js("window.confirm = () => true; return true").await;
    let server_row = "#servers tr[data-server=\"SERVER0\"]";
    let status_is = |status: &str| {
        format!("return document.querySelector('{server_row} .server-status').textContent.startsWith('{status}')")
    };

    // Drain, then activate again, then a new capacity.
    browser.until("the server drawn", &status_is("active")).await;
    browser.click(&format!("{server_row} button")).await;
    browser.until("draining", &status_is("draining")).await;
    let stored =
        || async { node.admin(reqwest::Method::GET, "/api/admin/servers", None).await.body["servers"][0].clone() };
    assert_eq!(stored().await["status"], "draining");
    browser.click(&format!("{server_row} button")).await;
    browser.until("active again", &status_is("active")).await;
    browser.type_into(&format!("{server_row} input"), "7").await;
    browser.click(&format!("{server_row} button:nth-of-type(2)")).await;
    browser
        .until(
            "capacity 7",
            &format!("return document.querySelector('{server_row} .capacity').textContent.includes('/ 7')"),
        )
        .await;
    assert_eq!(stored().await["maxBots"], 7);

    // Filters, then a delete.
    browser.click("nav button[data-view=bots]").await;
    let names = "return [...document.querySelectorAll('#bots tbody tr a')].map((a) => a.textContent).sort().join()";
    browser
        .until(
            "every bot listed",
            &format!("const n = ({{ f() {{ {names}; }} }}).f(); return n === 'Alpha,Beta,Gamma'"),
        )
        .await;
    browser
        .js("const s = document.getElementById('filter-approval'); s.value = 'pending'; s.onchange(); return true")
        .await;
    browser
        .until("only the pending one", &format!("const n = ({{ f() {{ {names}; }} }}).f(); return n === 'Beta'"))
        .await;
    browser.js("const s = document.getElementById('filter-approval'); s.value = ''; s.onchange(); return true").await;
    browser
        .until("all again", &format!("const n = ({{ f() {{ {names}; }} }}).f(); return n === 'Alpha,Beta,Gamma'"))
        .await;
    let beta = format!("#bots tr[data-bot=\"{}\"]", ids[1]);
    browser.click(&format!("{beta} button.danger")).await;
    browser.until("Beta gone", &format!("return !document.querySelector('{beta}')")).await;
    let gone = node.admin(reqwest::Method::GET, &format!("/api/admin/bots/{}", ids[1]), None).await;
    assert_eq!(gone.status, 404);

    // The review of Gamma's other-account session, approved.
    browser.click("nav button[data-view=reviews]").await;
    browser.until("the review listed", "return document.querySelectorAll('#reviews tbody button').length === 2").await;
    browser.click("#reviews tbody button").await;
    browser
        .until("decided, no buttons left", "return document.querySelectorAll('#reviews tbody button').length === 0")
        .await;
    let gamma = node.admin(reqwest::Method::GET, &format!("/api/admin/bots/{}", ids[2]), None).await;
    assert_eq!(gamma.body["credentialsVersion"], 2, "{:?}", gamma.body);

    // A drifted count: checked, then repaired.
    crate::support::raw_sql(
        &database.url,
        "UPDATE server_registry SET current_bot_count = current_bot_count + 3 WHERE server_name = 'SERVER0'",
    )
    .await;
    browser.click("nav button[data-view=registry]").await;
    browser.click("#dry-run").await;
    let summary = |text: &str| format!("return document.getElementById('registry-summary').textContent === '{text}'");
    browser.until("one found", &summary("1 inconsistencies.")).await;
    browser.click("#repair").await;
    browser.until("repaired", &summary("Repaired 1 of 1.")).await;
    let left = node.admin(reqwest::Method::GET, "/api/admin/registry/inconsistencies", None).await;
    assert_eq!(left.body["total"], 0, "{:?}", left.body);

    browser.click("nav button[data-view=audit]").await;
    let actions = "return [...document.querySelectorAll('#audit tbody .action')].map((c) => c.textContent).join()";
    let wanted = "registry_repaired,credential_review_approved,deleted,server_updated,server_updated,server_updated";
    browser
        .until("every act audited", &format!("return ({{ f() {{ {actions}; }} }}).f().startsWith('{wanted}')"))
        .await;
    browser.shot("admin-actions").await;
    browser.close().await;
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_console_approves_rejects_and_pages_live() {
    let Some(browser) = Browser::open("console").await else { return };
    let database = trekker_testkit::sqlite_database();
    let node = spawn_node(settings(&database.url, "SERVER0", 300)).await;
    let mut ids = Vec::new();
    for n in 0..250 {
        let created = node.register(&format!("Bot {n}"), &creds::phone(70, n), 1, None).await;
        assert_eq!(created.status, 201, "{:?}", created.body);
        ids.push(created.body["bot"]["id"].as_str().unwrap().to_owned());
    }
    log_in(&browser, &node).await;
    browser
        .until(
            "SERVER0 at 250 of 300",
            "const row = document.querySelector('#servers tr[data-server=\"SERVER0\"]'); \
             return !!row && row.querySelector('.capacity').textContent.includes('250 / 300') \
             && row.querySelector('[role=meter]').getAttribute('aria-valuenow') === '83';",
        )
        .await;
    browser.shot("servers").await;
    // The token is in session storage, never in the URL.
    assert_eq!(browser.js("return location.search + location.hash").await, "");

    browser.click("nav button[data-view=bots]").await;
    browser.until("a page of 100", "return document.querySelectorAll('#bots tbody tr').length === 100").await;
    browser.click("#next").await;
    browser
        .until(
            "page 2",
            "return document.getElementById('page-label').textContent === 'Page 2' \
             && document.querySelectorAll('#bots tbody tr').length === 100",
        )
        .await;
    browser.click("#next").await;
    browser
        .until(
            "the last 50",
            "return document.querySelectorAll('#bots tbody tr').length === 50 \
             && document.getElementById('next').disabled",
        )
        .await;
    browser.click("#prev").await;
    browser.click("#prev").await;
    browser.until("back on page 1", "return document.getElementById('page-label').textContent === 'Page 1'").await;

    // No reload from here on: a mark on the window survives. And no
    // reconnect: a stream that ended after its snapshot would reconnect and
    // refetch the lists, and the rows would change all the same.
    browser.js("window.trekkerMark = 'same page'; return true").await;
    let streams = browser.js(&format!("return {}", finished_requests("/api/admin/events"))).await;
    let lists = browser.js(&format!("return {}", finished_requests("/api/admin/bots"))).await;
    let (approve, reject) = (ids[249].clone(), ids[248].clone());
    browser.click(&format!("#bots tr[data-bot=\"{approve}\"] button")).await;
    browser
        .until(
            "the approved bot online",
            &format!(
                "const row = document.querySelector('#bots tr[data-bot=\"{approve}\"]'); \
                 return !!row && row.querySelector('.approval').textContent === 'approved' \
                 && row.querySelector('.status').textContent === 'online';"
            ),
        )
        .await;
    let reject_button = format!("#bots tr[data-bot=\"{reject}\"] button.plain");
    browser.click(&reject_button).await;
    browser
        .until(
            "the other rejected",
            &format!(
                "const row = document.querySelector('#bots tr[data-bot=\"{reject}\"]'); \
                 return !!row && row.querySelector('.approval').textContent === 'rejected';"
            ),
        )
        .await;
    assert_eq!(browser.js("return window.trekkerMark").await, "same page", "the page never reloaded");
    assert_eq!(
        browser.js(&format!("return {}", finished_requests("/api/admin/events"))).await,
        streams,
        "the live stream stayed open"
    );
    assert_eq!(
        browser.js(&format!("return {}", finished_requests("/api/admin/bots"))).await,
        lists,
        "the rows changed by live events, not by fetching the list again"
    );
    browser.shot("bots").await;
    let detail = node.admin(reqwest::Method::GET, &format!("/api/admin/bots/{approve}"), None).await;
    assert_eq!(detail.body["status"], "online", "what the page showed is what is stored");
    browser.close().await;
    node.stop().await;
}

/// The power buttons and an evacuation, live: no reload, the bots' host
/// cells change as the fleet moves them.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_console_stops_restarts_and_evacuates_live() {
    let Some(url) = postgres_url().await else { return };
    let Some(browser) = Browser::open("fleet").await else { return };
    let a = crate::support::spawn_node_with(settings(&url, "SERVER0", 5), fast_runtime(None)).await;
    let b = crate::support::spawn_node_with(settings(&url, "SERVER1", 5), fast_runtime(None)).await;
    let mut ids = Vec::new();
    for n in 1..=3 {
        ids.push(crate::runtime::register_approved(&a, &creds::phone(96, n)).await);
    }
    log_in(&browser, &a).await;
    browser.js("window.trekkerMark = 'same page'; window.confirm = () => true; return true").await;
    browser.click("nav button[data-view=bots]").await;
    let row = |id: &str| format!("document.querySelector('#bots tr[data-bot=\"{id}\"]')");
    browser
        .until(
            "three bots online",
            "return [...document.querySelectorAll('#bots tbody .status')] \
             .filter((c) => c.textContent === 'online').length === 3",
        )
        .await;
    // Clicked in the page (rows are redrawn by live events: a WebDriver
    // click could land on a row just replaced).
    let press = |css: String| format!("document.querySelector('{css}').click(); return true");
    browser.js(&press(format!("#bots tr[data-bot=\"{}\"] button[data-action=stop]", ids[0]))).await;
    browser
        .until(
            "the stopped bot offline, marked",
            &format!(
                "const r = {}; \
                 return !!r && r.querySelector('.status').textContent === 'offline (stopped by an admin)';",
                row(&ids[0])
            ),
        )
        .await;
    browser.shot("stopped").await;
    browser.js(&press(format!("#bots tr[data-bot=\"{}\"] button[data-action=restart]", ids[0]))).await;
    browser
        .until(
            "the restarted bot online",
            &format!("return {}.querySelector('.status').textContent === 'online';", row(&ids[0])),
        )
        .await;

    browser.click("nav button[data-view=servers]").await;
    browser
        .until(
            "the evacuate button",
            "return !!document.querySelector('#servers tr[data-server=\"SERVER0\"] button[data-action=evacuate]')",
        )
        .await;
    browser.js(&press("#servers tr[data-server=\"SERVER0\"] button[data-action=evacuate]".to_owned())).await;
    browser
        .until(
            "SERVER0 emptied",
            "const r = document.querySelector('#servers tr[data-server=\"SERVER0\"]'); \
             return !!r && r.querySelector('.capacity').textContent.includes('0 / 5') \
             && r.querySelector('.server-status').textContent.startsWith('draining');",
        )
        .await;
    browser.shot("evacuated").await;
    browser.click("nav button[data-view=bots]").await;
    for id in &ids {
        browser
            .until(
                "the bot on SERVER1",
                &format!("return {}.querySelector('.server').textContent === 'SERVER1';", row(id)),
            )
            .await;
    }
    assert_eq!(browser.js("return window.trekkerMark").await, "same page", "the page never reloaded");
    browser.close().await;
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_capacity_warning_with_two_nodes_watching() {
    let Some(browser) = Browser::open("warning").await else { return };
    let database = trekker_testkit::sqlite_database();
    let mut first = settings(&database.url, "SERVER0", 5);
    first.admin_phone = Some("254799000002".into());
    // Room on SERVER1 keeps the cluster (4 of 25) below the line: one crossing.
    let mut second = settings(&database.url, "SERVER1", 20);
    second.admin_phone = Some("254799000002".into());
    let (node, other) = (spawn_node(first).await, spawn_node(second).await);
    log_in(&browser, &node).await;
    assert_eq!(browser.js("return document.getElementById('banner').hidden").await, true);
    for n in 0..4 {
        let by = if n % 2 == 0 { &node } else { &other };
        assert_eq!(by.register("Filler", &creds::phone(71, n), 1, Some("SERVER0")).await.status, 201);
    }
    browser
        .until(
            "the warning banner",
            "const b = document.getElementById('banner'); return !b.hidden && b.textContent.includes('Server SERVER0')",
        )
        .await;
    browser.shot("banner").await;
    // Both nodes keep checking; the crossing stays one warning.
    for _ in 0..3 {
        node.state.trekker.check_capacity().await.unwrap();
        other.state.trekker.check_capacity().await.unwrap();
    }
    let url = &database.url;
    assert_eq!(raw_count(url, "SELECT COUNT(*) FROM activities WHERE action = 'capacity_warning'").await, 1);
    let sent = "SELECT COUNT(*) FROM notification_outbox WHERE phone_number = '254799000002'";
    assert_eq!(raw_count(url, sent).await, 1, "one message to the admin");
    let banner = browser.js("return document.getElementById('banner').textContent").await;
    assert_eq!(banner.as_str().unwrap().matches("SERVER0").count(), 1, "{banner}");
    browser.close().await;
    node.stop().await;
    other.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_guest_pairs_registers_and_sees_servers_change_live() {
    let Some(browser) = Browser::open("guest").await else { return };
    let database = trekker_testkit::sqlite_database();
    let node = spawn_node(settings(&database.url, "SERVER0", 5)).await;
    browser.client.goto(&node.url("/")).await.unwrap();
    browser.until("the live server list", "return document.getElementById('servers').dataset.live === 'yes'").await;
    let phone = creds::phone(72, 1);
    browser.type_into("#pair-number", &phone).await;
    browser.click("#pair-button").await;
    browser
        .until("paired (simulated)", "return document.getElementById('bot-session').value.startsWith('TREKKER~')")
        .await;
    browser.type_into("#bot-name", "My browser bot").await;
    browser.click("#register-button").await;
    browser
        .until(
            "registered",
            "const r = document.getElementById('register-result'); return !r.hidden && r.textContent.length > 0",
        )
        .await;
    let row = "const row = document.querySelector('#servers tr[data-server=\"SERVER0\"]');";
    browser.until("one bot on SERVER0", &format!("{row} return !!row && row.cells[1].textContent === '1 / 5'")).await;
    // A registration elsewhere shows up without a reload.
    browser.js("window.trekkerMark = 'same page'; return true").await;
    assert_eq!(node.register("Another", &creds::phone(72, 2), 1, None).await.status, 201);
    browser.until("two bots on SERVER0", &format!("{row} return !!row && row.cells[1].textContent === '2 / 5'")).await;
    assert_eq!(browser.js("return window.trekkerMark").await, "same page");
    browser.shot("guest").await;
    browser.close().await;
    node.stop().await;
}

/// Publishes more than a stream's backlog without yielding: on this test's
/// single thread no stream reads meanwhile, so every open stream falls
/// behind and is told to resync (as when a node boots thousands of bots).
async fn flood_past_the_backlog(node: &TestNode) {
    let real = node.state.trekker.servers().await.expect("servers");
    for _ in 0..3_000 {
        node.state.trekker.events.publish(LiveEvent::Server(real[0].clone()));
    }
}

/// How many requests to `path` the page has finished (Resource Timing).
fn finished_requests(path: &str) -> String {
    format!("performance.getEntriesByType('resource').filter((e) => new URL(e.name).pathname === '{path}').length")
}

/// A page whose stream fell behind the node's backlog reloads what it
/// shows, on the same page and the same stream. One thread: the node, its
/// streams and this test take turns, so the flood is never read meanwhile.
#[tokio::test(flavor = "current_thread")]
async fn pages_that_fall_behind_reload_what_they_show() {
    let Some(browser) = Browser::open("resync").await else { return };
    let database = trekker_testkit::sqlite_database();
    let node = spawn_node(settings(&database.url, "SERVER0", 5)).await;
    let listed = "return !!document.querySelector('#servers tr[data-server=\"SERVER0\"]')";

    log_in(&browser, &node).await;
    browser.until("SERVER0 listed", listed).await;
    browser.js("window.trekkerMark = 'same page'; return true").await;
    let loads = browser.js(&format!("return {}", finished_requests("/api/admin/servers"))).await;
    let streams = browser.js(&format!("return {}", finished_requests("/api/admin/events"))).await;
    flood_past_the_backlog(&node).await;
    browser
        .until(
            "the console reloads its servers",
            &format!("return {} > {loads}", finished_requests("/api/admin/servers")),
        )
        .await;
    assert_eq!(browser.js("return window.trekkerMark").await, "same page", "the console did not reload");
    assert_eq!(
        browser.js(&format!("return {}", finished_requests("/api/admin/events"))).await,
        streams,
        "the stream stayed open: the resync, not a reconnect, reloaded the servers"
    );

    browser.client.goto(&node.url("/")).await.unwrap();
    browser.until("the live server list", "return document.getElementById('servers').dataset.live === 'yes'").await;
    browser.until("SERVER0 listed", listed).await;
    browser.js("window.trekkerMark = 'same page'; return true").await;
    let loads = browser.js(&format!("return {}", finished_requests("/api/servers/available"))).await;
    flood_past_the_backlog(&node).await;
    browser
        .until(
            "the guest page reloads its servers",
            &format!("return {} > {loads}", finished_requests("/api/servers/available")),
        )
        .await;
    assert_eq!(browser.js("return window.trekkerMark").await, "same page", "the guest page did not reload");
    browser.close().await;
    node.stop().await;
}
