//! The human pages: the guest page at `/` (cluster status, pairing and
//! registration) and the operator console at `/admin` (over the admin API;
//! the admin token stays in the tab and travels only in the Authorization
//! header). Both are plain HTML with their script inline: no build step.
//!
//! Both are served under a strict Content-Security-Policy: nothing loads
//! but the page's own inline script and style, allowed by their SHA-256
//! (computed from the pages themselves at first use, so an edit cannot
//! leave a stale hash), fetches go to this node only, and neither page may
//! be framed (the guest page shows a session ID).

use std::sync::OnceLock;

use axum::Router;
use axum::http::header;
use axum::response::{Html, IntoResponse};
use axum::routing::get;
use base64::Engine as _;

use crate::AppState;

const GUEST_PAGE: &str = include_str!("dashboard.html");
const CONSOLE: &str = include_str!("console.html");

pub(crate) fn router() -> Router<AppState> {
    Router::new().route("/", get(guest_page)).route("/admin", get(console))
}

async fn guest_page() -> impl IntoResponse {
    static POLICY: OnceLock<String> = OnceLock::new();
    (secure_headers(POLICY.get_or_init(|| content_security_policy(GUEST_PAGE))), Html(GUEST_PAGE))
}

async fn console() -> impl IntoResponse {
    static POLICY: OnceLock<String> = OnceLock::new();
    (secure_headers(POLICY.get_or_init(|| content_security_policy(CONSOLE))), Html(CONSOLE))
}

/// Never framed (clickjacking), never sniffed, never leaking the page's
/// URL, never cached.
fn secure_headers(policy: &str) -> [(header::HeaderName, String); 4] {
    [
        (header::CONTENT_SECURITY_POLICY, policy.to_owned()),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff".to_owned()),
        (header::REFERRER_POLICY, "no-referrer".to_owned()),
        (header::CACHE_CONTROL, "no-store".to_owned()),
    ]
}

/// `default-src 'none'`, with the page's inline `<script>` and `<style>`
/// allowed by hash; the favicon is an empty `data:` image.
pub(crate) fn content_security_policy(page: &str) -> String {
    let hashes = |tag: &str| {
        inline_blocks(page, tag)
            .into_iter()
            .map(|body| format!(" 'sha256-{}'", sha256_base64(body)))
            .collect::<String>()
    };
    format!(
        "default-src 'none'; script-src{}; style-src{}; img-src data:; connect-src 'self'; base-uri 'none'; \
         form-action 'none'; frame-ancestors 'none'",
        hashes("script"),
        hashes("style")
    )
}

/// The text inside every `<tag>...</tag>` of `page`.
fn inline_blocks<'a>(page: &'a str, tag: &str) -> Vec<&'a str> {
    let (open, close) = (format!("<{tag}>"), format!("</{tag}>"));
    page.split(open.as_str()).skip(1).filter_map(|rest| rest.split_once(close.as_str()).map(|(body, _)| body)).collect()
}

fn sha256_base64(text: &str) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, text.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(digest.as_ref())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_policy_allows_each_inline_block_by_its_hash_and_nothing_else() {
        let page = "<html><style>a{}</style><script>go()</script><script>more()</script></html>";
        let policy = content_security_policy(page);
        // Computed apart: printf 'go()' | openssl dgst -sha256 -binary | base64
        assert!(policy.contains("'sha256-5KYv+PUboo5h+0+YAtGRPbwv5d/QxzHslP4YGnUaxRw='"), "{policy}");
        assert_eq!(policy.matches("'sha256-").count(), 3);
        assert!(policy.starts_with("default-src 'none';"));
        for real in [GUEST_PAGE, CONSOLE] {
            let policy = content_security_policy(real);
            assert_eq!(policy.matches("'sha256-").count(), 2, "one script and one style per page");
            assert!(!policy.contains("unsafe"), "{policy}");
            assert!(!real.contains(" style=\""), "an inline style attribute would be blocked");
        }
    }
}
