//! Metric names, in one place so dashboards and code agree.
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
