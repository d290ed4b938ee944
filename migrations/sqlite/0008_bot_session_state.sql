-- A bot's WhatsApp session state (invariant 9): the whole folder its
-- session writes (Baileys' creds.json, pre-keys, sessions, sender keys,
-- app-state keys...), as one sealed snapshot (AES-256-GCM, bound to the bot
-- and its credentials version). Written only by the bot's current runner
-- under a live lease, never over a newer generation; new credentials (a new
-- pairing) start a new state. Deleted with the bot.
CREATE TABLE bot_session_state (
    bot_id               TEXT PRIMARY KEY REFERENCES bot_instances (id) ON DELETE CASCADE,
    credentials_version  BIGINT NOT NULL,
    generation           BIGINT NOT NULL,
    state_ciphertext     BLOB NOT NULL,
    state_nonce          BLOB NOT NULL,
    state_key_id         TEXT NOT NULL,
    -- Of the folder as it was (before sealing): for admins and metrics.
    size_bytes           BIGINT NOT NULL,
    file_count           BIGINT NOT NULL,
    synced_at            BIGINT NOT NULL
);
