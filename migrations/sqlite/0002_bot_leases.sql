-- The node currently running a bot, and until when its lease holds.
-- A node starts a bot only after taking this lease in the same statement
-- that checks ownership (server_name) and the credentials version, and
-- renews it while the bot runs; another node can take it only once it is
-- released or expired. This is what keeps a bot from running on two nodes.
ALTER TABLE bot_instances ADD COLUMN runner TEXT;
ALTER TABLE bot_instances ADD COLUMN runner_until BIGINT;
