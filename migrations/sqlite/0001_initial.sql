-- Trekker schema, SQLite (the embedded default).
-- Timestamps are epoch milliseconds (BIGINT) in both backends, so the same
-- SQL runs on PostgreSQL and SQLite and compares times exactly.
-- Read one as a date with: datetime(last_heartbeat / 1000, 'unixepoch').

CREATE TABLE server_registry (
    server_name        TEXT PRIMARY KEY,
    max_bot_count      BIGINT NOT NULL,
    -- Slot-occupying bots (every approval status but rejected), maintained
    -- in the same transaction as every insert, reject and delete.
    current_bot_count  BIGINT NOT NULL DEFAULT 0,
    server_status      TEXT NOT NULL DEFAULT 'active',
    base_url           TEXT,
    last_heartbeat     BIGINT,
    description        TEXT,
    created_at         BIGINT NOT NULL,
    updated_at         BIGINT NOT NULL,
    CONSTRAINT server_registry_name_upper CHECK (server_name = upper(server_name)),
    CONSTRAINT server_registry_max_nonnegative CHECK (max_bot_count >= 0),
    CONSTRAINT server_registry_count_nonnegative CHECK (current_bot_count >= 0),
    CONSTRAINT server_registry_status_known CHECK (server_status IN ('active', 'draining', 'inactive'))
);

CREATE TABLE bot_instances (
    id                      TEXT PRIMARY KEY,
    name                    TEXT NOT NULL,
    phone_number            TEXT NOT NULL,
    server_name             TEXT NOT NULL,
    approval_status         TEXT NOT NULL DEFAULT 'pending',
    status                  TEXT NOT NULL DEFAULT 'offline',
    -- AES-256-GCM; the bot id is the associated data.
    credentials_ciphertext  BLOB NOT NULL,
    credentials_nonce       BLOB NOT NULL,
    credentials_key_id      TEXT NOT NULL,
    credentials_version     BIGINT NOT NULL DEFAULT 1,
    credentials_updated_at  BIGINT NOT NULL,
    approval_date           BIGINT,
    expires_at              BIGINT,
    invalid_reason          TEXT,
    restarts                BIGINT NOT NULL DEFAULT 0,
    last_error              TEXT,
    created_at              BIGINT NOT NULL,
    updated_at              BIGINT NOT NULL,
    CONSTRAINT bot_instances_server_fk FOREIGN KEY (server_name) REFERENCES server_registry (server_name),
    CONSTRAINT bot_instances_approval_known CHECK (approval_status IN ('pending', 'approved', 'rejected', 'expired')),
    CONSTRAINT bot_instances_status_known CHECK (status IN ('offline', 'loading', 'online', 'error', 'failed')),
    CONSTRAINT bot_instances_version_positive CHECK (credentials_version >= 1)
);
-- A phone is held by at most one bot that occupies a slot; rejected bots
-- stay listed for admins but no longer hold the phone.
CREATE UNIQUE INDEX bot_instances_phone_unique ON bot_instances (phone_number) WHERE approval_status <> 'rejected';
CREATE INDEX bot_instances_server ON bot_instances (server_name, approval_status);
CREATE INDEX bot_instances_expiry ON bot_instances (expires_at) WHERE approval_status = 'approved';

CREATE TABLE god_register (
    phone_number   TEXT NOT NULL,
    tenancy_name   TEXT NOT NULL,
    bot_id         TEXT NOT NULL,
    registered_at  BIGINT NOT NULL,
    CONSTRAINT god_register_phone_unique UNIQUE (phone_number),
    CONSTRAINT god_register_server_fk FOREIGN KEY (tenancy_name) REFERENCES server_registry (server_name)
);
CREATE INDEX god_register_bot ON god_register (bot_id);

CREATE TABLE activities (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    occurred_at     BIGINT NOT NULL,
    server_name     TEXT NOT NULL,
    bot_id          TEXT,
    phone_number    TEXT,
    action          TEXT NOT NULL,
    details         TEXT NOT NULL DEFAULT '',
    remote_tenancy  TEXT,
    remote_bot_id   TEXT
);
CREATE INDEX activities_bot ON activities (bot_id, id);

-- Node-to-node replay guard: a (issuer, jti) pair is accepted once.
CREATE TABLE replay_guard (
    issuer      TEXT NOT NULL,
    jti         TEXT NOT NULL,
    expires_at  BIGINT NOT NULL,
    CONSTRAINT replay_guard_pk PRIMARY KEY (issuer, jti)
);
CREATE INDEX replay_guard_expiry ON replay_guard (expires_at);

-- Node-to-node idempotency: a command id is applied once.
CREATE TABLE idempotency_keys (
    idempotency_key  TEXT PRIMARY KEY,
    fingerprint      TEXT NOT NULL,
    state            TEXT NOT NULL,
    response_status  INTEGER,
    response_body    TEXT,
    created_at       BIGINT NOT NULL,
    expires_at       BIGINT NOT NULL,
    CONSTRAINT idempotency_keys_state_known CHECK (state IN ('in_progress', 'done'))
);

-- Cross-server credential updates waiting for (or done with) delivery.
CREATE TABLE credential_update_outbox (
    id                      TEXT PRIMARY KEY,
    bot_id                  TEXT NOT NULL,
    phone_number            TEXT NOT NULL,
    source_server           TEXT NOT NULL,
    target_server           TEXT NOT NULL,
    credentials_ciphertext  BLOB NOT NULL,
    credentials_nonce       BLOB NOT NULL,
    credentials_key_id      TEXT NOT NULL,
    credentials_version     BIGINT,
    status                  TEXT NOT NULL DEFAULT 'pending',
    attempts                BIGINT NOT NULL DEFAULT 0,
    last_error              TEXT,
    next_attempt_at         BIGINT NOT NULL,
    claimed_by              TEXT,
    claimed_until           BIGINT,
    created_at              BIGINT NOT NULL,
    delivered_at            BIGINT,
    CONSTRAINT credential_update_outbox_status_known CHECK (status IN ('pending', 'delivered', 'failed', 'expired', 'superseded'))
);
CREATE INDEX credential_update_outbox_due ON credential_update_outbox (next_attempt_at) WHERE status = 'pending';

-- Messages to guests, written in the same transaction as the change.
CREATE TABLE notification_outbox (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    phone_number     TEXT NOT NULL,
    message          TEXT NOT NULL,
    status           TEXT NOT NULL DEFAULT 'pending',
    attempts         BIGINT NOT NULL DEFAULT 0,
    last_error       TEXT,
    next_attempt_at  BIGINT NOT NULL,
    claimed_by       TEXT,
    claimed_until    BIGINT,
    created_at       BIGINT NOT NULL,
    sent_at          BIGINT,
    CONSTRAINT notification_outbox_status_known CHECK (status IN ('pending', 'sent', 'failed'))
);
CREATE INDEX notification_outbox_due ON notification_outbox (next_attempt_at) WHERE status = 'pending';

-- Pairing requests, so any node can answer a status poll.
CREATE TABLE pairing_requests (
    id                  TEXT PRIMARY KEY,
    phone_number        TEXT NOT NULL,
    pairing_code        TEXT NOT NULL,
    status              TEXT NOT NULL DEFAULT 'pending',
    -- The session ID once paired, encrypted like bot credentials.
    session_ciphertext  BLOB,
    session_nonce       BLOB,
    session_key_id      TEXT,
    message             TEXT,
    created_at          BIGINT NOT NULL,
    expires_at          BIGINT NOT NULL,
    updated_at          BIGINT NOT NULL,
    CONSTRAINT pairing_requests_status_known CHECK (status IN ('pending', 'paired', 'expired', 'failed'))
);
