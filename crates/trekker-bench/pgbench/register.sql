-- One registration's writes, as the store issues them for a new phone
-- (crates/trekker-store/src/sql/queries/bots.rs, try_register): the phone,
-- the bot row with sealed credentials, the activity, the conditional
-- reservation, the notification, in one transaction. The credentials are
-- real sealed documents (`pgbench_sealed`, written by bench-register):
-- ciphertext does not compress, so it is stored out of line as the node's
-- is; a repeated byte pattern would compress inline and flatter this figure.
\set n random(1, 899999999999)
\set s random(1, 1000)
BEGIN;
INSERT INTO god_register (phone_number, tenancy_name, bot_id, registered_at) VALUES ('1' || :n, 'PGBENCH', 'pgb-' || :n, 1) ON CONFLICT (phone_number) DO NOTHING;
INSERT INTO bot_instances (id, name, phone_number, server_name, approval_status, status, credentials_ciphertext, credentials_nonce, credentials_key_id, credentials_version, credentials_updated_at, created_at, updated_at, account_key, adv_timestamp) VALUES ('pgb-' || :n, 'Bench', '1' || :n, 'PGBENCH', 'pending', 'offline', (SELECT bytes FROM pgbench_sealed WHERE id = :s), decode('000000000000000000000000', 'hex'), 'k1', 1, 1, 1, 1, decode(repeat('cd', 32), 'hex'), 1700000060) RETURNING id, name, phone_number, server_name, approval_status, status, credentials_version;
INSERT INTO activities (occurred_at, server_name, bot_id, phone_number, action, details) VALUES (1, 'PGBENCH', 'pgb-' || :n, '1' || :n, 'registered', 'bot placed on PGBENCH');
UPDATE server_registry SET current_bot_count = current_bot_count + 1, pending_count = pending_count + 1, updated_at = 1 WHERE server_name = 'PGBENCH' AND server_status = 'active' AND current_bot_count < max_bot_count AND pending_count * 100 < max_bot_count * 100 RETURNING max_bot_count - current_bot_count;
INSERT INTO notification_outbox (phone_number, message, next_attempt_at, created_at) VALUES ('1' || :n, 'Your bot is registered and waits for approval.', 1, 1);
COMMIT;
