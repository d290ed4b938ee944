//! The HTTP surface: one router, merged from per-area routers.

mod error;
mod ops;

use axum::Router;

pub use error::ApiError;

use crate::AppState;

pub fn router(state: AppState) -> Router {
    Router::new().merge(ops::router()).fallback(error::not_found).with_state(state)
}
