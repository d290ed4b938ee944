//! The human pages: the guest page at `/` (cluster status, pairing and
//! registration) and the operator console at `/admin` (over the admin API;
//! the admin token stays in the tab and travels only in the Authorization
//! header). Both are plain HTML with their script inline: no build step.

use axum::Router;
use axum::http::header;
use axum::response::{Html, IntoResponse};
use axum::routing::get;

use crate::AppState;

const GUEST_PAGE: &str = include_str!("dashboard.html");
const CONSOLE: &str = include_str!("console.html");

pub(crate) fn router() -> Router<AppState> {
    Router::new().route("/", get(|| async { Html(GUEST_PAGE) })).route("/admin", get(console))
}

async fn console() -> impl IntoResponse {
    (
        [
            // Never framed (clickjacking an admin's clicks), never leaking
            // its URL, never cached.
            (header::CONTENT_SECURITY_POLICY, "frame-ancestors 'none'"),
            (header::REFERRER_POLICY, "no-referrer"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        Html(CONSOLE),
    )
}
