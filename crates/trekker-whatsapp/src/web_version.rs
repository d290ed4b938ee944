//! The WhatsApp Web version every client of this node announces.
//!
//! Left to itself, whatsapp-rust fetches `https://web.whatsapp.com/sw.js`
//! on a connect whenever the device's stored version is unset or a day old,
//! and a failed fetch fails the connect. With an in-memory device (pairing,
//! the notifier's short-lived connection) that is every connect, so a node
//! whose egress cannot reach that page, or reaches it slowly, could connect
//! nothing. Here every client is built with a version instead: the pinned
//! one (`WHATSAPP_WEB_VERSION`), which a background task refreshes from
//! sw.js with an HTTP client of its own (short timeouts, a bounded body).
//! A connect never waits for the refresh; a failed refresh keeps the
//! version in use and says why in the log.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// The version whatsapp-rust 0.7.0 ships as its default device's; checked
/// against sw.js at each whatsapp-rust upgrade (docs/whatsapp.md).
pub const PINNED: Version = Version { primary: 2, secondary: 3000, revision: 1_042_742_319 };
/// Where WhatsApp Web publishes its current version.
pub const SW_JS_URL: &str = "https://web.whatsapp.com/sw.js";
/// Budget of one refresh, and of its connection.
const FETCH_WITHIN: Duration = Duration::from_secs(10);
const CONNECT_WITHIN: Duration = Duration::from_secs(5);
/// sw.js is a few hundred KiB; anything past this is not it.
const MAX_BODY_BYTES: usize = 4 << 20;
/// After a failed refresh, the next try comes sooner than the interval.
const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(15 * 60);

/// A WhatsApp Web version, `2.3000.<revision>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Version {
    pub primary: u32,
    pub secondary: u32,
    pub revision: u32,
}

impl Version {
    /// What whatsapp-rust's builder takes.
    pub fn as_tuple(self) -> (u32, u32, u32) {
        (self.primary, self.secondary, self.revision)
    }

    /// WhatsApp Web's versions are 2.x with a revision; sw.js's fallback
    /// (no revision found: `2.3000.0`) is not one a client may announce.
    fn check(self) -> Result<Self, VersionError> {
        if self.primary != 2 || self.revision == 0 {
            return Err(VersionError(format!("{self} is not a WhatsApp Web version (2.<n>.<revision>)")));
        }
        Ok(self)
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.primary, self.secondary, self.revision)
    }
}

/// Why a version was not taken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct VersionError(String);

impl FromStr for Version {
    type Err = VersionError;

    /// `2.3000.1042742319`.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bad = || VersionError(format!("{text:?} is not a version like 2.3000.1042742319"));
        let mut parts = text.trim().split('.').map(|part| part.parse::<u32>().map_err(|_| bad()));
        let (Some(primary), Some(secondary), Some(revision), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(bad());
        };
        Self { primary: primary?, secondary: secondary?, revision: revision? }.check()
    }
}

/// Why a refresh did not change the version.
#[derive(Debug, thiserror::Error)]
pub enum RefreshError {
    #[error("sw.js could not be fetched: {0}")]
    Unreachable(String),
    #[error("sw.js answered HTTP {0}")]
    Status(u16),
    #[error("sw.js is larger than {} MiB", MAX_BODY_BYTES >> 20)]
    TooLarge,
    #[error("sw.js names no version: {0}")]
    NoVersion(String),
}

/// The version in use, shared by every client this node builds (cheap to
/// clone).
#[derive(Debug, Clone)]
pub struct WebVersion {
    current: Arc<watch::Sender<Version>>,
}

impl Default for WebVersion {
    fn default() -> Self {
        Self::pinned(PINNED)
    }
}

impl WebVersion {
    /// Starts from `version` (until a refresh finds another).
    pub fn pinned(version: Version) -> Self {
        Self { current: Arc::new(watch::Sender::new(version)) }
    }

    /// The version a client built now announces.
    pub fn current(&self) -> Version {
        *self.current.borrow()
    }

    /// Reads the version from sw.js at `url` and uses it from now on.
    pub async fn refresh(&self, http: &reqwest::Client, url: &str) -> Result<Version, RefreshError> {
        let unreachable = |e: reqwest::Error| RefreshError::Unreachable(e.without_url().to_string());
        let mut response = http.get(url).send().await.map_err(unreachable)?;
        if !response.status().is_success() {
            return Err(RefreshError::Status(response.status().as_u16()));
        }
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(unreachable)? {
            if body.len() + chunk.len() > MAX_BODY_BYTES {
                return Err(RefreshError::TooLarge);
            }
            body.extend_from_slice(&chunk);
        }
        let text = String::from_utf8_lossy(&body);
        let (primary, secondary, revision) = whatsapp_rust::version::parse_sw_js(&text)
            .ok_or_else(|| RefreshError::NoVersion("no client_revision in it".into()))?;
        let found = Version { primary, secondary, revision }.check().map_err(|e| RefreshError::NoVersion(e.0))?;
        let previous = self.current.send_replace(found);
        if previous != found {
            tracing::info!(%previous, version = %found, "WhatsApp Web version refreshed");
        }
        Ok(found)
    }

    /// Refreshes from `url` now and then every `every` (sooner after a
    /// failure) until `shutdown`.
    pub fn spawn_refresh(
        &self,
        url: String,
        every: Duration,
        shutdown: CancellationToken,
    ) -> Result<tokio::task::JoinHandle<()>, RefreshError> {
        let http = refresh_client().map_err(|e| RefreshError::Unreachable(e.to_string()))?;
        let this = self.clone();
        Ok(tokio::spawn(async move {
            loop {
                let wait = match this.refresh(&http, &url).await {
                    Ok(_) => every,
                    Err(error) => {
                        let version = this.current();
                        tracing::warn!(%error, %version, "WhatsApp Web version not refreshed; keeping the one in use");
                        every.min(RETRY_AFTER_FAILURE)
                    }
                };
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(wait) => {}
                }
            }
        }))
    }
}

/// The refresh's own client: short timeouts, no redirects off the page.
pub fn refresh_client() -> reqwest::Result<reqwest::Client> {
    // The node installs it at start; tests and tools may not have.
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .connect_timeout(CONNECT_WITHIN)
        .timeout(FETCH_WITHIN)
        .redirect(reqwest::redirect::Policy::limited(3))
        .user_agent(concat!("trekker-node/", env!("CARGO_PKG_VERSION")))
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_three_numbers_of_whatsapp_web() {
        assert_eq!("2.3000.1042742319".parse::<Version>(), Ok(PINNED));
        assert_eq!(PINNED.to_string(), "2.3000.1042742319");
        assert_eq!(PINNED.as_tuple(), (2, 3000, 1_042_742_319));
        for bad in ["", "2.3000", "2.3000.1.4", "2.3000.x", "3.3000.5", "2.3000.0", "2.-1.5", "2.3000.99999999999"] {
            assert!(bad.parse::<Version>().is_err(), "{bad:?}");
        }
        assert_eq!(" 2.2412.50 ".parse::<Version>().map(|v| v.revision), Ok(50));
    }

    /// Answers every request with `response` (a whole HTTP response); the URL.
    async fn serve(response: Vec<u8>) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/sw.js", listener.local_addr().unwrap());
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let response = response.clone();
                tokio::spawn(async move {
                    let mut request = [0u8; 4096];
                    let _ = socket.read(&mut request).await;
                    let _ = socket.write_all(&response).await;
                    let _ = socket.shutdown().await;
                });
            }
        });
        url
    }

    fn http(status: &str, body: &str) -> Vec<u8> {
        format!("HTTP/1.1 {status}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}", body.len()).into_bytes()
    }

    const SW_JS: &str = r#"self.__swData=JSON.parse("{\"dynamic_data\":{\"client_revision\":1099999999}}");"#;

    #[tokio::test]
    async fn a_refresh_takes_the_version_sw_js_names() {
        let version = WebVersion::default();
        let url = serve(http("200 OK", SW_JS)).await;
        let found = version.refresh(&refresh_client().unwrap(), &url).await.unwrap();
        assert_eq!(found.to_string(), "2.3000.1099999999");
        assert_eq!(version.current(), found, "clients built from now on announce it");
        let shared = version.clone();
        assert_eq!(shared.current(), found, "every holder sees the same version");
    }

    /// Whatever goes wrong, clients keep announcing the version in use.
    #[tokio::test]
    async fn a_failed_refresh_keeps_the_version_in_use() {
        let version = WebVersion::default();
        let http_client = refresh_client().unwrap();
        let closed = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            format!("http://{}/sw.js", listener.local_addr().unwrap())
        };
        let huge = format!("{}{SW_JS}", " ".repeat(MAX_BODY_BYTES));
        let cases = [
            (serve(http("503 Service Unavailable", SW_JS)).await, "HTTP 503"),
            (serve(http("200 OK", "<html>no version here</html>")).await, "names no version"),
            (serve(http("200 OK", "assets-manifest-12345 ")).await, "names no version"),
            (serve(http("200 OK", &huge)).await, "larger than 4 MiB"),
            (closed, "could not be fetched"),
        ];
        for (url, expected) in cases {
            let error = version.refresh(&http_client, &url).await.unwrap_err().to_string();
            assert!(error.contains(expected), "{error}");
            assert!(!error.contains("127.0.0.1"), "no address in the error: {error}");
            assert_eq!(version.current(), PINNED);
        }
    }

    /// The background task refreshes at once, then stops with the node.
    #[tokio::test]
    async fn the_background_refresh_runs_until_shutdown() {
        let version = WebVersion::default();
        let shutdown = CancellationToken::new();
        let url = serve(http("200 OK", SW_JS)).await;
        let task = version.spawn_refresh(url, Duration::from_secs(3600), shutdown.clone()).unwrap();
        tokio::time::timeout(Duration::from_secs(10), async {
            while version.current() == PINNED {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .expect("refreshed");
        assert_eq!(version.current().revision, 1_099_999_999);
        shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(5), task).await.expect("the task ends with the node").unwrap();
    }
}
