//! No code: this crate holds the pair-code tests (`tests/pairing.rs`),
//! run with `--features fake-pairing` (see its manifest for why the crate
//! is separate).
