//! Exactly-once node-to-node commands (invariant 5): the `Idempotency-Key`
//! protocol of DESIGN.md, independent of HTTP.
//!
//! The first attempt under a key runs the command and records its answer;
//! a retry with the same body gets the recorded answer; a retry while the
//! first still runs is a conflict; the same key with another body is
//! refused. A command that fails in a way a retry may fix (our fault, not
//! the caller's) forgets the key so the retry runs it again.

use std::future::Future;

use trekker_store::IdempotencyBegin;

use crate::{AppError, Trekker};

/// A command id is remembered this long (a day, like the outbox, plus an hour).
pub const IDEMPOTENCY_TTL_MS: i64 = 25 * 60 * 60 * 1000;
/// An in-progress command older than this is presumed dead and run again.
pub const IDEMPOTENCY_STALE_MS: i64 = 60_000;
/// The longest key accepted.
pub const MAX_KEY_LEN: usize = 128;

/// The answer of a command, as sent and as recorded for replays.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub status: u16,
    /// The JSON body, exactly as first answered.
    pub body: String,
}

/// What one attempt of a command gave.
#[derive(Debug)]
pub enum Attempt<E> {
    /// The answer, final for this key (success or the caller's error).
    Answer(Reply),
    /// A failure a retry may not meet (e.g. the database was busy): the key
    /// is forgotten and the error returned as is.
    Retryable(E),
}

impl Trekker {
    /// Runs `command` at most once per `key` and `request_body`. Returns the
    /// command's own failure as `Ok(Err(_))`; protocol refusals (`Conflict`
    /// while in progress, `IdempotencyMismatch`, a bad key) as `Err`.
    pub async fn run_idempotent<E, Fut>(
        &self,
        key: Option<&str>,
        request_body: &[u8],
        command: impl FnOnce() -> Fut,
    ) -> Result<Result<Reply, E>, AppError>
    where
        Fut: Future<Output = Attempt<E>>,
    {
        let key = key.map(str::trim).filter(|k| !k.is_empty() && k.len() <= MAX_KEY_LEN).ok_or_else(|| {
            AppError::InvalidInput("An Idempotency-Key header (1 to 128 characters) is required.".into())
        })?;
        let fingerprint = trekker_tenancy::body_hash(request_body);
        let idempotency = &self.store.idempotency;
        match idempotency
            .begin_idempotent(key, &fingerprint, self.now(), IDEMPOTENCY_STALE_MS, IDEMPOTENCY_TTL_MS)
            .await?
        {
            IdempotencyBegin::Started => {}
            IdempotencyBegin::Done { status, body } => return Ok(Ok(Reply { status, body })),
            IdempotencyBegin::InProgress => {
                return Err(AppError::Conflict("This command is still being applied.".into()));
            }
            IdempotencyBegin::Mismatch => return Err(AppError::IdempotencyMismatch),
        }
        match command().await {
            Attempt::Answer(reply) => {
                // The caller has its answer either way; a lost record only
                // means a retry runs again and meets the version check.
                if let Err(err) = idempotency.finish_idempotent(key, reply.status, &reply.body).await {
                    tracing::warn!(error = ?err, "could not store the answer of a command");
                }
                Ok(Ok(reply))
            }
            Attempt::Retryable(err) => {
                if let Err(store_err) = idempotency.abandon_idempotent(key).await {
                    tracing::warn!(error = ?store_err, "could not release an idempotency key");
                }
                Ok(Err(err))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use mockall::predicate::eq;

    use super::*;
    use crate::test_support::{Mocks, NOW, trekker};

    const BODY: &[u8] = br#"{"botId":"bot-1"}"#;

    fn answer(status: u16) -> Attempt<&'static str> {
        Attempt::Answer(Reply { status, body: format!("{{\"status\":{status}}}") })
    }

    #[tokio::test]
    async fn first_attempt_runs_the_command_and_records_its_answer() {
        let mut store = Mocks::default();
        let fingerprint = trekker_tenancy::body_hash(BODY);
        store
            .idempotency
            .expect_begin_idempotent()
            .with(eq("cmd-1"), eq(fingerprint), eq(NOW), eq(IDEMPOTENCY_STALE_MS), eq(IDEMPOTENCY_TTL_MS))
            .times(1)
            .returning(|_, _, _, _, _| Ok(IdempotencyBegin::Started));
        store
            .idempotency
            .expect_finish_idempotent()
            .with(eq("cmd-1"), eq(404), eq("{\"status\":404}"))
            .times(1)
            .returning(|_, _, _| Ok(()));
        let ran = std::sync::atomic::AtomicUsize::new(0);
        let out = trekker(store)
            .run_idempotent(Some(" cmd-1 "), BODY, || async {
                ran.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                answer(404)
            })
            .await
            .unwrap()
            .unwrap();
        assert_eq!(out, Reply { status: 404, body: "{\"status\":404}".into() });
        assert_eq!(ran.into_inner(), 1);
    }

    #[tokio::test]
    async fn a_finished_key_replays_the_recorded_answer_without_running() {
        let mut store = Mocks::default();
        store
            .idempotency
            .expect_begin_idempotent()
            .returning(|_, _, _, _, _| Ok(IdempotencyBegin::Done { status: 200, body: "{\"first\":true}".into() }));
        let out = trekker(store)
            .run_idempotent(Some("cmd-1"), BODY, || async {
                panic!("a replay must not run the command") as Attempt<()>
            })
            .await
            .unwrap()
            .unwrap();
        assert_eq!(out, Reply { status: 200, body: "{\"first\":true}".into() });
    }

    #[tokio::test]
    async fn in_progress_is_a_conflict_and_another_body_a_mismatch() {
        for (begun, expected) in [(IdempotencyBegin::InProgress, "conflict"), (IdempotencyBegin::Mismatch, "mismatch")]
        {
            let mut store = Mocks::default();
            store.idempotency.expect_begin_idempotent().returning(move |_, _, _, _, _| Ok(begun.clone()));
            let err = trekker(store)
                .run_idempotent(Some("cmd-1"), BODY, || async { panic!("must not run") as Attempt<()> })
                .await
                .unwrap_err();
            match expected {
                "conflict" => assert!(matches!(err, AppError::Conflict(_)), "{err:?}"),
                _ => assert!(matches!(err, AppError::IdempotencyMismatch), "{err:?}"),
            }
        }
    }

    #[tokio::test]
    async fn a_retryable_failure_forgets_the_key_and_records_nothing() {
        let mut store = Mocks::default();
        store.idempotency.expect_begin_idempotent().returning(|_, _, _, _, _| Ok(IdempotencyBegin::Started));
        store.idempotency.expect_abandon_idempotent().with(eq("cmd-1")).times(1).returning(|_| Ok(()));
        store.idempotency.expect_finish_idempotent().never();
        let out = trekker(store)
            .run_idempotent(Some("cmd-1"), BODY, || async { Attempt::Retryable("database busy") })
            .await
            .unwrap();
        assert_eq!(out, Err("database busy"));
    }

    #[tokio::test]
    async fn a_missing_blank_or_oversized_key_is_refused_before_the_store() {
        let long = "k".repeat(MAX_KEY_LEN + 1);
        for key in [None, Some(""), Some("   "), Some(long.as_str())] {
            let err = trekker(Mocks::default())
                .run_idempotent(key, BODY, || async { panic!("must not run") as Attempt<()> })
                .await
                .unwrap_err();
            assert!(matches!(err, AppError::InvalidInput(_)), "{key:?}: {err:?}");
        }
    }

    /// A command id outlives every retry of it: the outbox retries an
    /// update for a day, so a retry on its last attempt still finds the
    /// first answer (and applies nothing twice); it is not kept much longer.
    #[test]
    fn a_command_id_outlives_its_last_retry() {
        let outbox_retries_for = crate::crossserver::OUTBOX_MAX_AGE_MS;
        assert!(IDEMPOTENCY_TTL_MS > outbox_retries_for, "{IDEMPOTENCY_TTL_MS}");
        assert!(IDEMPOTENCY_TTL_MS <= outbox_retries_for + 2 * 3_600_000, "{IDEMPOTENCY_TTL_MS}");
    }
}
