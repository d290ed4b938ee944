//! The human page at `/`: cluster status, pairing and registration.

use axum::Router;
use axum::response::Html;
use axum::routing::get;

use crate::AppState;

const PAGE: &str = include_str!("dashboard.html");

pub(crate) fn router() -> Router<AppState> {
    Router::new().route("/", get(|| async { Html(PAGE) }))
}
