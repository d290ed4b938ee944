//! The HTTP surface: one router, merged from per-area routers, with the
//! body limit, the guest rate limit and request tracing as layers.

mod admin;
mod audit;
mod dashboard;
pub mod docs;
mod error;
pub mod events;
mod extract;
mod guest;
mod internal;
mod keys;
mod log_stream;
mod logs;
mod messages;
mod ops;
mod pairing;
mod peers;
pub mod ratelimit;
mod views;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::middleware;
use tower_http::timeout::RequestBodyTimeoutLayer;
use tower_http::trace::TraceLayer;

pub use error::{ApiError, ErrorBody, ErrorCode};
pub use ops::{healthz_response, metrics_handle, record_build_info};

use crate::AppState;

/// The largest request body accepted (API.md: PAYLOAD_TOO_LARGE).
pub const MAX_BODY_BYTES: usize = 5 * 1024 * 1024;

pub fn router(state: AppState) -> Router {
    let limited = Router::new()
        .merge(guest::limited_router())
        .merge(pairing::limited_router())
        .route_layer(middleware::from_fn_with_state(state.clone(), ratelimit::limit));
    Router::new()
        .merge(limited)
        .merge(guest::router())
        .merge(pairing::router())
        .merge(admin::router())
        .merge(keys::router())
        .merge(audit::router())
        .merge(logs::router())
        .merge(log_stream::router())
        .merge(messages::router())
        .merge(events::router())
        .merge(internal::router())
        .merge(ops::router())
        .merge(docs::router())
        .merge(dashboard::router())
        .fallback(error::not_found)
        .method_not_allowed_fallback(error::method_not_allowed)
        .layer(ops::http_metrics_layer())
        // Bodies are read up to the limit plus slack for multipart framing;
        // what is over answers 413.
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES + 64 * 1024))
        // A body that stops arriving is abandoned (slow-client defence).
        .layer(RequestBodyTimeoutLayer::new(state.config.http_header_timeout))
        .layer(TraceLayer::new_for_http())
        .with_state(state)
}
