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
    #[error(transparent)]
    Refused(#[from] TokenRefusal),
    /// The database could not be asked; not the caller's fault.
    #[error("verification unavailable")]
    Store(#[source] trekker_store::StoreError),
}

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
        let issuer = ServerName::parse(&claims.iss).map_err(|_| TokenRefusal::Issuer)?;
        match self.servers.get_server(&issuer).await {
            Ok(Some(_)) => {}
            Ok(None) => return Err(TokenRefusal::Issuer.into()),
            Err(err) => return Err(VerifyError::Store(err)),
        }
        // Kept past expiry plus skew: until then the token could still pass.
        let keep_until = (claims.exp + CLOCK_SKEW_SECS + 1) * 1000;
        match self.replay.remember_jti(&claims.iss, &claims.jti, keep_until).await {
            Ok(true) => Ok(claims),
            Ok(false) => Err(TokenRefusal::Replayed.into()),
            Err(err) => Err(VerifyError::Store(err)),
        }
    }
}
