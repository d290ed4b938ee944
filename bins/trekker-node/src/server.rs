//! The node's HTTP accept loop: what `axum::serve` does, plus the limits a
//! public server needs against slow and numerous clients.
//!
//! - Request headers must arrive within `header_timeout`; hyper's timer also
//!   runs while a keep-alive connection waits for its next request, so an
//!   idle connection closes after the same time.
//! - Request bodies must keep arriving (`body_timeout` between chunks; see
//!   the router's layer).
//! - At most `max_connections` connections are served, at most
//!   `max_connections_per_address` of them from one client address. Past that, new
//!   connections go to a small overflow lane that answers `/healthz` (so
//!   monitoring still sees the node alive) and 429 to anything else, then
//!   closes. The lane holds at most 64 connections, each for half a second
//!   at most; when it is full the oldest is dropped for the newest, so slow
//!   clients cannot keep a health probe out.
//! - Shutdown stops accepting, lets in-flight requests finish, and closes
//!   idle connections.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{HeaderValue, Request, Response, header};
use axum::response::IntoResponse;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt as _;

use crate::http::{ApiError, ErrorCode};

/// Connections accepted past the cap, to answer `/healthz` and turn the
/// rest away with a status instead of silence.
const OVERFLOW_CONNECTIONS: usize = 64;
/// An overflow connection has this long (at most) to send its request: a
/// monitoring probe sends at once, a slow client only blocks a lane slot
/// briefly.
const OVERFLOW_HEADER_TIMEOUT: Duration = Duration::from_millis(500);
/// How long shutdown waits for in-flight requests.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(15);

/// The limits of one node's HTTP server.
#[derive(Debug, Clone, Copy)]
pub struct ServerLimits {
    pub max_connections: usize,
    /// Per client address (0: none); past it, the overflow lane.
    pub max_connections_per_address: usize,
    pub header_timeout: Duration,
}

/// Connections the kernel may queue before the accept loop takes them
/// (tokio's default is 1024; a burst of clients fills that and a health
/// probe waits behind them). The kernel caps it at `net.core.somaxconn`.
const LISTEN_BACKLOG: u32 = 8192;

/// Binds the node's listener with a deep accept queue.
pub fn listen(addr: std::net::SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
    // A restarted node can bind again while old connections linger in TIME_WAIT.
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Serves `router` on `listener` until `shutdown`, then drains.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: ServerLimits,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let permits = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let per_address = crate::per_address::PerAddress::new(limits.max_connections_per_address);
    let mut overflow: VecDeque<CancellationToken> = VecDeque::with_capacity(OVERFLOW_CONNECTIONS);
    let graceful = GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new()).header_read_timeout(limits.header_timeout);
    loop {
        let (stream, peer) = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                // Out of file descriptors, say: wait a little rather than spin.
                Err(err) => {
                    tracing::warn!(error = %err, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let io = TokioIo::new(stream);
        let admitted =
            per_address.try_take(peer.ip()).and_then(|slot| Some((slot, permits.clone().try_acquire_owned().ok()?)));
        if let Some((slot, permit)) = admitted {
            let service = router.clone().map_request(move |mut request: Request<Incoming>| {
                request.extensions_mut().insert(ConnectInfo(peer));
                request
            });
            let connection = graceful.watch(http.serve_connection(io, TowerToHyperService::new(service)));
            tokio::spawn(async move {
                let _ = connection.await;
                drop((permit, slot));
            });
        } else {
            metrics::counter!(trekker_app::telemetry::HTTP_CONNECTIONS_REFUSED).increment(1);
            if overflow.len() == OVERFLOW_CONNECTIONS
                && let Some(oldest) = overflow.pop_front()
            {
                oldest.cancel();
            }
            let evicted = CancellationToken::new();
            overflow.push_back(evicted.clone());
            let service = hyper::service::service_fn(at_capacity);
            let brief = limits.header_timeout.min(OVERFLOW_HEADER_TIMEOUT);
            let connection = http.serve_connection(io, service);
            tokio::spawn(async move {
                tokio::select! {
                    _ = tokio::time::timeout(brief, connection) => {}
                    () = evicted.cancelled() => {}
                }
            });
        }
    }
    drop(listener);
    if tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown()).await.is_err() {
        tracing::warn!("some connections were still busy after the drain timeout");
    }
    Ok(())
}

/// The overflow lane: alive for monitoring, "too many requests" (API.md's
/// RATE_LIMITED, with Retry-After) for everyone else.
async fn at_capacity(request: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let mut response = if request.uri().path() == "/healthz" {
        crate::http::healthz_response()
    } else {
        ApiError::new(ErrorCode::RateLimited, "The node is at its connection limit. Please retry shortly.")
            .with_retry_after(1)
            .into_response()
    };
    response.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
    Ok(response)
}
