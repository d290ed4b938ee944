-- Bots waiting for approval on each server, kept in the same transactions
-- as the bots themselves, so registration can cap them exactly (a share of
-- the server's slots stays free for bots an admin approves).
ALTER TABLE server_registry ADD COLUMN pending_count BIGINT NOT NULL DEFAULT 0;
UPDATE server_registry SET pending_count =
    (SELECT COUNT(*) FROM bot_instances b WHERE b.server_name = server_registry.server_name
     AND b.approval_status = 'pending');
CREATE INDEX bot_instances_pending_age ON bot_instances (created_at) WHERE approval_status = 'pending';
