//! Real WhatsApp for Trekker, through whatsapp-rust, compiled only with the
//! cargo feature `whatsapp` (docs/whatsapp.md). Without it this crate is
//! empty, and the default build holds none of whatsapp-rust.

#[cfg(feature = "whatsapp")]
pub mod driver;
#[cfg(feature = "whatsapp")]
pub mod events;
#[cfg(feature = "whatsapp")]
mod governed;
#[cfg(feature = "whatsapp")]
mod hex;
#[cfg(feature = "whatsapp")]
pub mod notifier;
#[cfg(feature = "whatsapp")]
pub mod pairing;
#[cfg(feature = "whatsapp")]
pub mod session;
#[cfg(feature = "whatsapp")]
pub mod storage;
#[cfg(feature = "whatsapp")]
mod transport;
#[cfg(feature = "whatsapp")]
pub mod web_version;
#[cfg(feature = "whatsapp")]
pub mod webhook;
