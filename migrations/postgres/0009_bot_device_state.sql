-- A bot's WhatsApp device state, key by key, for the in-process
-- `whatsapp` driver (invariant 9): identities, Signal sessions, pre-keys,
-- sender keys, app-state keys and versions, the device itself... One row per
-- (bot, space, key). The key is stored only as a keyed hash (contacts' JIDs
-- are not readable from the table); the value, with its key, is sealed
-- (AES-256-GCM, bound to the bot, its credentials version, the space and the
-- hashed key). Written only by the bot's current runner under a live lease;
-- rows of older credentials are invisible to reads and replaced at the next
-- import. Deleted with the bot.
CREATE TABLE bot_device_state (
    bot_id               TEXT NOT NULL REFERENCES bot_instances (id) ON DELETE CASCADE,
    space                TEXT NOT NULL,
    key_hash             TEXT NOT NULL,
    credentials_version  BIGINT NOT NULL,
    sealed_value         BYTEA NOT NULL,
    value_nonce          BYTEA NOT NULL,
    value_key_id         TEXT NOT NULL,
    PRIMARY KEY (bot_id, space, key_hash)
);
