-- A fleet that heals itself (issue 20, DESIGN.md invariant 11).
--
-- Power: what an admin wants of a bot (`running` or `stopped`, kept across
-- node restarts and moves), and a counter each restart bumps so the host
-- restarts the bot (and lifts a `failed` hold) exactly once per request.
ALTER TABLE bot_instances ADD COLUMN desired_state TEXT NOT NULL DEFAULT 'running'
    CHECK (desired_state IN ('running', 'stopped'));
ALTER TABLE bot_instances ADD COLUMN power_seq BIGINT NOT NULL DEFAULT 0;
-- When the bot last arrived on its host by a move: the new host paces the
-- start of such bots (MOVES_PER_MIN) so a failover is no login storm.
ALTER TABLE bot_instances ADD COLUMN moved_at BIGINT;

-- Load, reported with each heartbeat (placement and the balancer read it).
ALTER TABLE server_registry ADD COLUMN load_cpu_percent BIGINT;
ALTER TABLE server_registry ADD COLUMN load_memory_available BIGINT;
ALTER TABLE server_registry ADD COLUMN load_bots_running BIGINT;
-- An evacuation under way (null when none) and the bots it could not place.
ALTER TABLE server_registry ADD COLUMN evacuation_started_at BIGINT;
ALTER TABLE server_registry ADD COLUMN evacuation_stuck BIGINT NOT NULL DEFAULT 0;

-- Every move, newest last: the per-target pace of moves (MOVES_PER_MIN) is
-- counted here under the target's row lock, so it holds however many nodes
-- move bots at once. Rows are purged after a day with the departures.
CREATE TABLE bot_moves (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    bot_id       TEXT NOT NULL,
    from_server  TEXT NOT NULL,
    to_server    TEXT NOT NULL,
    reason       TEXT NOT NULL CHECK (reason IN ('admin', 'evacuation', 'failover', 'rebalance')),
    moved_at     BIGINT NOT NULL
);
CREATE INDEX bot_moves_pace ON bot_moves (to_server, moved_at);
CREATE INDEX bot_moves_age ON bot_moves (moved_at);
