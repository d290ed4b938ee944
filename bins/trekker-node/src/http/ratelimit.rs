//! Per-client-address rate limit of the guest endpoints that cost the most
//! (`/api/pair`, `/api/guest/register-bot`): RATE_LIMIT_PER_MIN, 0 = off.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use governor::clock::{Clock, DefaultClock};
use governor::state::keyed::DefaultKeyedStateStore;
use governor::{Quota, RateLimiter};

use super::extract::client_ip;
use super::{ApiError, ErrorCode};
use crate::AppState;

/// Above this many tracked addresses, forget the ones at full allowance.
const MAX_TRACKED: usize = 10_000;

/// A keyed (per address) GCRA limiter.
pub struct GuestRateLimiter {
    limiter: RateLimiter<IpAddr, DefaultKeyedStateStore<IpAddr>, DefaultClock>,
}

impl std::fmt::Debug for GuestRateLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GuestRateLimiter").finish_non_exhaustive()
    }
}

impl GuestRateLimiter {
    /// `None` when `per_minute` is 0 (limit off).
    pub fn new(per_minute: u32) -> Option<Arc<Self>> {
        let per_minute = NonZeroU32::new(per_minute)?;
        Some(Arc::new(Self { limiter: RateLimiter::keyed(Quota::per_minute(per_minute)) }))
    }

    /// `Err(seconds to wait)` when `ip` is over its allowance.
    fn check(&self, ip: IpAddr) -> Result<(), u64> {
        if self.limiter.len() > MAX_TRACKED {
            self.limiter.retain_recent();
        }
        self.limiter.check_key(&ip).map_err(|not_until| {
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            wait.as_secs() + u64::from(wait.subsec_nanos() > 0)
        })
    }
}

pub(crate) async fn limit(State(state): State<AppState>, request: Request, next: Next) -> Response {
    if let Some(limiter) = &state.rate_limiter
        && let Err(wait) = limiter.check(client_ip(&request))
    {
        return ApiError::new(ErrorCode::RateLimited, "Too many requests. Please slow down.")
            .with_retry_after(wait.max(1))
            .into_response();
    }
    next.run(request).await
}
