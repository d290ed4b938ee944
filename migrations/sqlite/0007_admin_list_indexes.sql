-- Admin lists page newest first (created_at DESC, id), optionally filtered
-- by one or more columns; each filter has an index that serves the order,
-- so a page costs the same at 1,000 bots and at 1,000,000 (issue 11).
CREATE INDEX bot_instances_page ON bot_instances (created_at DESC, id);
CREATE INDEX bot_instances_page_server ON bot_instances (server_name, created_at DESC, id);
CREATE INDEX bot_instances_page_approval ON bot_instances (approval_status, created_at DESC, id);
CREATE INDEX bot_instances_page_status ON bot_instances (status, created_at DESC, id);
CREATE INDEX credential_update_outbox_page_status ON credential_update_outbox (status, created_at DESC, id);
-- Server and approval together (the admin's "pending on SERVER3", and the
-- supervisor's full read of its approved bots, on the same index).
CREATE INDEX bot_instances_page_server_approval ON bot_instances (server_name, approval_status, created_at DESC, id);
DROP INDEX bot_instances_server;
