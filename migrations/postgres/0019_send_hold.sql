-- The hold WhatsApp's limit codes (429, 463, 475) put a bot's sends under,
-- on the bot rather than in its device state: the limit is on the account,
-- so neither a restart, a move nor a re-pair lifts it. Written only by the
-- bot's runner; it only ever grows.
ALTER TABLE bot_instances ADD COLUMN send_hold_until BIGINT;
ALTER TABLE bot_instances ADD COLUMN send_hold_reason TEXT;
