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
//!
//! The traits are narrow on purpose: a use case asks for the one it needs
//! ([`ServerStore`], [`BotStore`], [`RuntimeStore`], ...), so its unit tests
//! mock only that. With the `mock` feature every trait has a mockall mock
//! (`MockServerStore`, `MockBotStore`, ...).
//!
//! # A store on the embedded backend
//!
//! ```
//! use trekker_domain::ServerName;
//! use trekker_store::{CredentialCipher, ServerRegistration, StoreError, KEY_LEN};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let folder = tempfile::tempdir()?;
//! let url = format!("sqlite://{}", folder.path().join("trekker.db").display());
//! // A key of your own in production (CREDENTIALS_KEY_FILE); never this one.
//! let cipher = CredentialCipher::new(&[7; KEY_LEN]);
//! let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
//! runtime.block_on(async {
//!     let store = trekker_store::connect(&url, cipher).await?;
//!     let name = ServerName::parse("SERVER0").expect("a valid name");
//!     let registration =
//!         ServerRegistration { name: name.clone(), max_bot_count: 50, base_url: None, description: None };
//!     store.upsert_server(&registration, 1_700_000_000_000).await?;
//!     let server = store.get_server(&name).await?.expect("just written");
//!     assert_eq!((server.max_bot_count, server.current_bot_count), (50, 0));
//!     Ok::<(), StoreError>(())
//! })?;
//! # Ok(())
//! # }
//! ```
//!
//! # Mocking one trait
//!
//! ```
//! # #[cfg(feature = "mock")]
//! # {
//! use trekker_domain::ServerName;
//! use trekker_store::{MockServerStore, ServerStore, StoreError};
//!
//! let mut servers = MockServerStore::new();
//! servers.expect_get_server().returning(|_| Ok(None));
//! let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
//! let found = runtime.block_on(servers.get_server(&ServerName::parse("NOWHERE").unwrap()));
//! assert!(matches!(found, Ok(None)));
//! # let _: Option<StoreError> = None;
//! # }
//! ```

#![warn(missing_docs)]

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
