//! No code: this crate holds the tests of a WhatsApp device with no cached
//! server certificate, which logs in to the fake server by XX (pairing by
//! code, `tests/pairing.rs`; the notifier's short-lived connection,
//! `tests/notifier.rs`), run with `--features fake-pairing` (see its
//! manifest for why the crate is separate).
