-- How each bot's last run ended (GET /api/admin/bots/{id}, `lastExit`) and
-- how often its runs were killed for memory (`resources.oomKills`).
-- Written by the hosting node under the lease that ran the bot.
ALTER TABLE bot_instances ADD COLUMN last_exit_at BIGINT;
ALTER TABLE bot_instances ADD COLUMN last_exit_code INTEGER;
ALTER TABLE bot_instances ADD COLUMN last_exit_signal INTEGER;
ALTER TABLE bot_instances ADD COLUMN last_exit_reason TEXT;
ALTER TABLE bot_instances ADD COLUMN oom_kills BIGINT NOT NULL DEFAULT 0;
