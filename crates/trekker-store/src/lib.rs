//! Trekker's storage: the narrow store traits (one per aggregate), their
//! union [`Store`], and the SQL implementation for two backends.
//!
//! - PostgreSQL ([`SqlStore<Postgres>`](SqlStore)) is the cluster backend:
//!   every node of a fleet points at one database.
//! - SQLite ([`SqlStore<Sqlite>`](SqlStore)) is the embedded default, in WAL
//!   mode so several node processes on one machine can share one file.
//!
//! Both run the same SQL (written once in `sql/queries/`); the few places
//! where the dialects differ are named in `sql/postgres.rs` and
//! `sql/sqlite.rs`. Every operation that changes more than one row does so
//! in one transaction, and state changes write their audit activity and
//! guest notification in that same transaction. Credentials are sealed with
//! [`CredentialCipher`] before they reach a row.

mod cipher;
mod error;
mod model;
mod sql;
mod traits;

pub use cipher::{CredentialCipher, KEY_LEN, Sealed};
pub use error::{StoreError, sqlstate};
pub use model::*;
pub use sql::{Backend, CheckReport, DbSettings, Pooler, SqlStore, check, connect, connect_with, migrate_postgres};
pub use sqlx::{Postgres, Sqlite};
pub use traits::*;
