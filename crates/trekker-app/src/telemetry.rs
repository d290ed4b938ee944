//! Metric names, in one place so dashboards and code agree (the bot
//! runtime, which sits beside this crate rather than above it, names its two
//! in `trekker_runtime::supervisor`).
//!
//! Recording goes through the `metrics` facade; the node installs the
//! Prometheus recorder and serves `/metrics`.

/// Counter: registrations by outcome `type` (registered, auto_assigned,
/// credentials_updated) and refusals by `code`.
pub const REGISTRATIONS: &str = "trekker_registrations_total";
/// Counter: auto-assignments by `from` and `to` server.
pub const AUTO_ASSIGNMENTS: &str = "trekker_auto_assignments_total";
/// Gauge: slot-occupying bots per `server`.
pub const SERVER_BOTS_USED: &str = "trekker_server_bots_used";
/// Gauge: capacity per `server`.
pub const SERVER_CAPACITY: &str = "trekker_server_capacity";
/// Gauge: registry inconsistencies found by the last check, by `kind`.
pub const INCONSISTENCIES: &str = "trekker_registry_inconsistencies";
/// Counter: notifications by `result` (sent, retried, failed).
pub const NOTIFICATIONS: &str = "trekker_notifications_total";
/// Counter: bots moved to expired by the sweeper.
pub const EXPIRED_BOTS: &str = "trekker_expired_bots_total";
/// Counter: cross-server credential updates by `target` and `result`
/// (delivered, queued, retried, failed, expired).
pub const CROSS_SERVER_UPDATES: &str = "trekker_cross_server_updates_total";
/// Histogram: seconds from sending a cross-server update to its answer.
pub const CROSS_SERVER_LATENCY: &str = "trekker_cross_server_delivery_seconds";
/// Gauge: guest notifications waiting in the outbox.
pub const NOTIFICATION_OUTBOX_DEPTH: &str = "trekker_notification_outbox_depth";
/// Gauge: cross-server updates waiting in the outbox.
pub const CREDENTIAL_OUTBOX_DEPTH: &str = "trekker_credential_outbox_depth";
/// Counter: client connections past HTTP_MAX_CONNECTIONS (answered only
/// `/healthz`, 429 otherwise).
pub const HTTP_CONNECTIONS_REFUSED: &str = "trekker_http_connections_refused_total";
/// Counter: refused node-to-node calls by `reason`.
pub const NODE_CALLS_REFUSED: &str = "trekker_node_calls_refused_total";
