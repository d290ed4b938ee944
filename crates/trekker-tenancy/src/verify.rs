//! Verifying an incoming node-to-node request: the token checks of
//! [`ClusterKeys::verify`], then the ones that need the database: the issuer
//! must be a registered server, and a token id is accepted once per issuer
//! (recorded until its expiry, so the refusal holds across nodes and restarts).

use std::sync::Arc;

use trekker_domain::ServerName;
use trekker_store::{ReplayGuard, ServerStore};

use crate::token::{CLOCK_SKEW_SECS, Claims, ClusterKeys, TokenRefusal};

/// Why a request was not verified.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// The token was refused (the caller's fault).
    #[error(transparent)]
    Refused(#[from] TokenRefusal),
    /// The database could not be asked; not the caller's fault.
    #[error("verification unavailable")]
    Store(#[source] trekker_store::StoreError),
}

/// Verifies an incoming node-to-node request: the token (see
/// [`crate::ClusterKeys::verify`]), then that its issuer is a registered
/// server and that its id was never used.
pub struct RequestVerifier {
    keys: Option<ClusterKeys>,
    me: ServerName,
    /// Where issuers must be registered.
    servers: Arc<dyn ServerStore>,
    /// Where token ids are remembered.
    replay: Arc<dyn ReplayGuard>,
}

impl std::fmt::Debug for RequestVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestVerifier").field("me", &self.me).field("keys", &self.keys).finish_non_exhaustive()
    }
}

impl RequestVerifier {
    /// A verifier for this node (`me`), checking issuers and token ids in `store`.
    pub fn new(
        keys: Option<ClusterKeys>,
        me: ServerName,
        servers: Arc<dyn ServerStore>,
        replay: Arc<dyn ReplayGuard>,
    ) -> Self {
        Self { keys, me, servers, replay }
    }

    /// Verifies the `Authorization` header value of a request to `path`
    /// with exactly `body`. `now_ms` is epoch milliseconds.
    pub async fn verify(
        &self,
        authorization: Option<&str>,
        method: &str,
        path: &str,
        body: &[u8],
        now_ms: i64,
    ) -> Result<Claims, VerifyError> {
        let keys = self.keys.as_ref().ok_or(TokenRefusal::NotConfigured)?;
        let token = authorization
            .and_then(|value| value.strip_prefix("Bearer "))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or(TokenRefusal::Missing)?;
        let claims = keys.verify(token, self.me.as_str(), method, path, body, now_ms.div_euclid(1000))?;
        // Exactly a registered name (not another spelling of it, which would
        // be a separate replay key), and never this node itself.
        let issuer = ServerName::parse(&claims.iss).map_err(|_| TokenRefusal::Issuer)?;
        if issuer.as_str() != claims.iss || issuer == self.me {
            return Err(TokenRefusal::Issuer.into());
        }
        match self.servers.get_server(&issuer).await {
            Ok(Some(_)) => {}
            Ok(None) => return Err(TokenRefusal::Issuer.into()),
            Err(err) => return Err(VerifyError::Store(err)),
        }
        // Kept past expiry plus skew: until then the token could still pass.
        let keep_until = claims.exp.saturating_add(CLOCK_SKEW_SECS + 1).saturating_mul(1000);
        match self.replay.remember_jti(&claims.iss, &claims.jti, keep_until).await {
            Ok(true) => Ok(claims),
            Ok(false) => Err(TokenRefusal::Replayed.into()),
            Err(err) => Err(VerifyError::Store(err)),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use mockall::predicate::{always, eq};
    use trekker_store::{MockReplayGuard, MockServerStore, ServerSnapshot, StoreError};

    use super::*;
    use crate::token::MINTED_LIFETIME_SECS;

    const SECRET: &str = "verify-test-secret-0123456789abcdef";
    const NOW_S: i64 = 1_700_000_000;
    const PATH: &str = "/internal/tenants/bots/credentials";

    fn keys() -> ClusterKeys {
        ClusterKeys::new(SECRET, None)
    }

    fn snapshot(name: &ServerName) -> ServerSnapshot {
        ServerSnapshot {
            name: name.clone(),
            max_bot_count: 1,
            current_bot_count: 0,
            status: trekker_domain::ServerStatus::Active,
            base_url: None,
            last_heartbeat: None,
            description: None,
            load: None,
            evacuation: None,
        }
    }

    fn verifier(servers: MockServerStore, replay: MockReplayGuard) -> RequestVerifier {
        RequestVerifier::new(Some(keys()), ServerName::parse("HOST").unwrap(), Arc::new(servers), Arc::new(replay))
    }

    fn bearer(iss: &str) -> String {
        format!("Bearer {}", keys().mint(iss, "HOST", "POST", PATH, b"{}", NOW_S))
    }

    async fn verify(v: &RequestVerifier, authorization: Option<&str>) -> Result<Claims, VerifyError> {
        v.verify(authorization, "POST", PATH, b"{}", NOW_S * 1000).await
    }

    #[tokio::test]
    async fn a_registered_issuer_s_fresh_token_passes_and_its_id_is_kept_past_expiry() {
        let mut servers = MockServerStore::new();
        servers.expect_get_server().returning(|name| Ok(Some(snapshot(name))));
        let mut replay = MockReplayGuard::new();
        let keep_until = (NOW_S + MINTED_LIFETIME_SECS + CLOCK_SKEW_SECS + 1) * 1000;
        replay
            .expect_remember_jti()
            .with(eq("PEER"), always(), eq(keep_until))
            .times(1)
            .returning(|_, jti, _| Ok(jti.len() == 32));
        let claims = verify(&verifier(servers, replay), Some(&bearer("PEER"))).await.unwrap();
        assert_eq!((claims.iss.as_str(), claims.aud.as_str()), ("PEER", "HOST"));
    }

    #[tokio::test]
    async fn a_second_use_of_a_token_id_is_a_replay() {
        let mut servers = MockServerStore::new();
        servers.expect_get_server().returning(|name| Ok(Some(snapshot(name))));
        let mut replay = MockReplayGuard::new();
        replay.expect_remember_jti().returning(|_, _, _| Ok(false));
        let refused = verify(&verifier(servers, replay), Some(&bearer("PEER"))).await;
        assert!(matches!(refused, Err(VerifyError::Refused(TokenRefusal::Replayed))), "{refused:?}");
    }

    #[tokio::test]
    async fn an_unknown_issuer_is_refused_before_its_token_id_is_recorded() {
        let mut servers = MockServerStore::new();
        servers.expect_get_server().returning(|_| Ok(None));
        let mut replay = MockReplayGuard::new();
        replay.expect_remember_jti().never();
        let refused = verify(&verifier(servers, replay), Some(&bearer("STRANGER"))).await;
        assert!(matches!(refused, Err(VerifyError::Refused(TokenRefusal::Issuer))), "{refused:?}");
    }

    #[tokio::test]
    async fn a_database_failure_is_not_the_caller_s_fault() {
        let mut servers = MockServerStore::new();
        servers.expect_get_server().returning(|_| Err(StoreError::Corrupt("down".into())));
        let refused = verify(&verifier(servers, MockReplayGuard::new()), Some(&bearer("PEER"))).await;
        assert!(matches!(refused, Err(VerifyError::Store(_))), "{refused:?}");
    }

    #[tokio::test]
    async fn another_spelling_of_a_name_or_this_node_itself_is_no_issuer() {
        for iss in ["peer", "Peer", " PEER", "HOST"] {
            let mut servers = MockServerStore::new();
            servers.expect_get_server().returning(|name| Ok(Some(snapshot(name))));
            let mut replay = MockReplayGuard::new();
            replay.expect_remember_jti().never();
            let refused = verify(&verifier(servers, replay), Some(&bearer(iss))).await;
            assert!(matches!(refused, Err(VerifyError::Refused(TokenRefusal::Issuer))), "{iss:?}: {refused:?}");
        }
    }

    #[test]
    fn debug_names_the_node_not_the_secret() {
        let shown = format!("{:?}", verifier(MockServerStore::new(), MockReplayGuard::new()));
        assert!(shown.contains("HOST") && !shown.contains(SECRET), "{shown}");
    }

    #[tokio::test]
    async fn no_header_another_scheme_or_no_secret_touches_nothing() {
        let v = verifier(MockServerStore::new(), MockReplayGuard::new());
        for header in [None, Some(""), Some("Bearer "), Some("Basic abc")] {
            let refused = verify(&v, header).await;
            assert!(matches!(refused, Err(VerifyError::Refused(TokenRefusal::Missing))), "{header:?}: {refused:?}");
        }
        let keyless = RequestVerifier::new(
            None,
            ServerName::parse("HOST").unwrap(),
            Arc::new(MockServerStore::new()),
            Arc::new(MockReplayGuard::new()),
        );
        let refused = verify(&keyless, Some(&bearer("PEER"))).await;
        assert!(matches!(refused, Err(VerifyError::Refused(TokenRefusal::NotConfigured))), "{refused:?}");
    }
}
