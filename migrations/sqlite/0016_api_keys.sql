-- The admin API's keys (issue 24): each with a role, shown once and stored
-- only as the SHA-256 of its secret; found by its id (the token names it),
-- never by scanning. Revoked keys stay listed (revoked_at set); a node
-- checks the row, through a cache of at most KEY_CACHE_MS, at every call.
CREATE TABLE api_keys (
    id            TEXT PRIMARY KEY,
    name          TEXT NOT NULL,
    role          TEXT NOT NULL,
    secret_hash   BLOB NOT NULL,
    created_by    TEXT NOT NULL,
    created_at    BIGINT NOT NULL,
    expires_at    BIGINT,
    revoked_at    BIGINT,
    last_used_at  BIGINT,
    CONSTRAINT api_keys_role_known CHECK (role IN ('viewer', 'operator', 'admin'))
);
-- The listing, newest first.
CREATE INDEX api_keys_created ON api_keys (created_at, id);
