-- Proof of ownership (invariant 8): the WhatsApp account that signed a
-- bot's session, and when. Public values, not secrets. NULL for bots
-- registered before this migration: their first valid update pins them.
ALTER TABLE bot_instances ADD COLUMN account_key BYTEA;
ALTER TABLE bot_instances ADD COLUMN adv_timestamp BIGINT;

-- Credentials for a registered phone signed by ANOTHER account wait here,
-- sealed, until an admin approves (new account pinned) or rejects them.
CREATE TABLE credential_reviews (
    id                      TEXT PRIMARY KEY,
    bot_id                  TEXT NOT NULL,
    phone_number            TEXT NOT NULL,
    account_key             BYTEA NOT NULL,
    adv_timestamp           BIGINT NOT NULL,
    -- AES-256-GCM; the review id is the associated data.
    credentials_ciphertext  BYTEA NOT NULL,
    credentials_nonce       BYTEA NOT NULL,
    credentials_key_id      TEXT NOT NULL,
    status                  TEXT NOT NULL DEFAULT 'open',
    created_at              BIGINT NOT NULL,
    decided_at              BIGINT,
    CONSTRAINT credential_reviews_status_known CHECK (status IN ('open', 'approved', 'rejected', 'superseded'))
);
-- One open review per bot: a newer one replaces it.
CREATE UNIQUE INDEX credential_reviews_one_open ON credential_reviews (bot_id) WHERE status = 'open';
CREATE INDEX credential_reviews_page ON credential_reviews (created_at DESC, id);
