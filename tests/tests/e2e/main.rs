//! Multi-node end-to-end tests: several in-process nodes on real ports,
//! one shared database (PostgreSQL, started by the test harness, or SQLite).
//! All cases compile into this one binary (faster linking).

#![allow(clippy::unwrap_used)] // Tests fail loudly by design.

mod admin_api;
mod attacks;
mod audit;
mod baileys_worker;
mod bot_logs;
mod bot_messages;
mod browser;
mod capacity_warnings;
mod cross_server;
mod fleet;
mod guest_api;
mod keys;
mod live_events;
mod node;
mod pooler;
mod registration;
mod runtime;
mod secrecy;
mod session_state;
mod slow_clients;
mod support;
mod tidy;
