//! Operations endpoints: liveness, readiness, Prometheus metrics.

use std::sync::OnceLock;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use axum_prometheus::utils::SECONDS_DURATION_BUCKETS;
use axum_prometheus::{EndpointLabel, GenericMetricLayer, Handle, PrometheusMetricLayerBuilder};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use serde_json::{Value, json};
use trekker_app::telemetry;

use crate::AppState;

pub(crate) fn router() -> Router<AppState> {
    Router::new().route("/healthz", get(healthz)).route("/readyz", get(readyz)).route("/metrics", get(metrics))
}

/// Suffix of the request latency histogram
/// (`trekker_http_requests_duration_seconds{endpoint,method,status}`).
const HTTP_DURATION: &str = "http_requests_duration_seconds";

/// Per-route request counts and latency histograms, labelled by the
/// route's pattern (never the raw path: an attacker's random URLs would
/// make a series each), method and status.
/// Built once per process (the layer's metric names are process-wide; a
/// second build would panic), cloned into every router (several nodes run
/// in one test process).
pub fn http_metrics_layer() -> GenericMetricLayer<'static, PrometheusHandle, Handle> {
    static LAYER: OnceLock<GenericMetricLayer<'static, PrometheusHandle, Handle>> = OnceLock::new();
    LAYER
        .get_or_init(|| {
            PrometheusMetricLayerBuilder::new()
                .with_prefix("trekker")
                .with_endpoint_label_type(EndpointLabel::MatchedPathWithFallbackFn(|_| "unmatched".to_owned()))
                .with_metrics_from_fn(metrics_handle)
                .build_pair()
                .0
        })
        .clone()
}

/// What this binary is: `trekker_build_info{version,whatsapp} 1`.
pub fn record_build_info() {
    let whatsapp = if cfg!(feature = "whatsapp") { "yes" } else { "no" };
    metrics::gauge!("trekker_build_info", "version" => env!("CARGO_PKG_VERSION"), "whatsapp" => whatsapp).set(1.0);
}

/// The process-wide Prometheus recorder (installed once; several nodes in
/// one test process share it, their series told apart by labels).
/// Gauge: memory of this node's running bots, summed, by `server`.
pub const BOTS_MEMORY: &str = "trekker_bots_memory_bytes";
/// Gauge: CPU seconds of this node's running bots' current runs, summed.
pub const BOTS_CPU: &str = "trekker_bots_cpu_seconds";
/// Gauge: processes and threads of this node's running bots, summed.
pub const BOTS_PIDS: &str = "trekker_bots_pids";
/// Gauge: disk of this node's running bots' AUTH_DIRs, summed.
pub const BOTS_DISK: &str = "trekker_bots_disk_bytes";

pub fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            // Request latency as a histogram (Grafana's quantiles over
            // nodes), not the exporter's default summary.
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix(HTTP_DURATION.to_owned()), SECONDS_DURATION_BUCKETS)
                .unwrap_or_else(|_| PrometheusBuilder::new());
            let recorder = builder.build_recorder();
            let handle = recorder.handle();
            if metrics::set_global_recorder(recorder).is_err() {
                tracing::warn!("a metrics recorder was already installed; /metrics may be empty");
            }
            handle
        })
        .clone()
}

/// The process is up.
#[utoipa::path(get, path = "/healthz", tag = "operations", responses((status = 200, description = "up")))]
pub(crate) async fn healthz() -> axum::response::Response {
    healthz_response()
}

/// The `/healthz` answer, also given by the accept loop's overflow lane.
pub fn healthz_response() -> axum::response::Response {
    use axum::response::IntoResponse as _;
    Json(json!({"status": "ok"})).into_response()
}

/// The database answers; a load balancer stops sending traffic otherwise.
#[utoipa::path(get, path = "/readyz", tag = "operations",
    responses((status = 200, description = "ready"), (status = 503, description = "database unreachable")))]
pub(crate) async fn readyz(State(state): State<AppState>) -> (StatusCode, Json<Value>) {
    if state.readiness.is_ready(state.store.as_ref()).await {
        (StatusCode::OK, Json(json!({"status": "ready", "serverName": state.config.server_name.as_str()})))
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, Json(json!({"status": "unavailable", "message": "database unreachable"})))
    }
}

/// Prometheus text. Server capacity gauges are refreshed at each scrape.
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "Prometheus text format")))]
pub(crate) async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    // What this node's bots use, summed (no per-bot label: a fleet has a
    // million bots).
    if let Some(driver) = &state.process_bots {
        let totals = driver.totals();
        let server = state.config.server_name.to_string();
        metrics::gauge!(BOTS_MEMORY, "server" => server.clone()).set(totals.memory_bytes as f64);
        metrics::gauge!(BOTS_CPU, "server" => server.clone()).set(totals.cpu_seconds);
        metrics::gauge!(BOTS_PIDS, "server" => server.clone()).set(totals.pids as f64);
        metrics::gauge!(BOTS_DISK, "server" => server).set(totals.disk_bytes as f64);
    }
    match state.trekker.servers().await {
        Ok(servers) => {
            for view in servers {
                let name = view.server.name.to_string();
                metrics::gauge!(telemetry::SERVER_BOTS_USED, "server" => name.clone())
                    .set(view.server.current_bot_count as f64);
                metrics::gauge!(telemetry::SERVER_CAPACITY, "server" => name).set(view.server.max_bot_count as f64);
            }
        }
        Err(err) => tracing::warn!(error = ?err, "metrics: server gauges not refreshed"),
    }
    match state.store.credential_outbox_depth().await {
        Ok(depth) => metrics::gauge!(telemetry::CREDENTIAL_OUTBOX_DEPTH).set(depth as f64),
        Err(err) => tracing::warn!(error = ?err, "metrics: credential outbox depth not refreshed"),
    }
    match state.store.pending_notifications().await {
        Ok(pending) => metrics::gauge!(telemetry::NOTIFICATION_OUTBOX_DEPTH).set(pending as f64),
        Err(err) => tracing::warn!(error = ?err, "metrics: outbox depth not refreshed"),
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], state.metrics.render())
}
