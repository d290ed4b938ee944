-- Fleet scale: node leases instead of per-bot leases, and a change feed so a
-- quiet node reads nothing per bot (issue 11, DESIGN.md "Scale"). See the
-- PostgreSQL migration of the same name for the reasoning.
ALTER TABLE server_registry ADD COLUMN epoch BIGINT NOT NULL DEFAULT 0;
ALTER TABLE server_registry ADD COLUMN lease_until BIGINT;
ALTER TABLE bot_instances ADD COLUMN runner_epoch BIGINT;
ALTER TABLE bot_instances DROP COLUMN runner_until;
UPDATE bot_instances SET runner = NULL;

-- Change feed. SQLite runs one writer at a time, so a counter bumped inside
-- each writing transaction commits in order: a reader's cursor is the
-- counter + 1 as it reads, and rows with change_seq >= the previous cursor
-- are exactly the changes since.
CREATE TABLE bot_change_counter (
    id   INTEGER PRIMARY KEY CHECK (id = 1),
    seq  BIGINT NOT NULL
);
INSERT INTO bot_change_counter (id, seq) VALUES (1, 0);
ALTER TABLE bot_instances ADD COLUMN change_seq BIGINT NOT NULL DEFAULT 0;
CREATE INDEX bot_instances_changes ON bot_instances (server_name, change_seq);

CREATE TABLE bot_departures (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    bot_id       TEXT NOT NULL,
    server_name  TEXT NOT NULL,
    change_seq   BIGINT NOT NULL,
    departed_at  BIGINT NOT NULL
);
CREATE INDEX bot_departures_changes ON bot_departures (server_name, change_seq);
CREATE INDEX bot_departures_age ON bot_departures (departed_at);

-- Triggers do not fire themselves again (recursive_triggers is off), so the
-- inner UPDATE of change_seq does not loop.
CREATE TRIGGER bot_instances_inserted AFTER INSERT ON bot_instances BEGIN
    UPDATE bot_change_counter SET seq = seq + 1 WHERE id = 1;
    UPDATE bot_instances SET change_seq = (SELECT seq FROM bot_change_counter WHERE id = 1) WHERE id = NEW.id;
END;
CREATE TRIGGER bot_instances_updated AFTER UPDATE ON bot_instances BEGIN
    UPDATE bot_change_counter SET seq = seq + 1 WHERE id = 1;
    UPDATE bot_instances SET change_seq = (SELECT seq FROM bot_change_counter WHERE id = 1) WHERE id = NEW.id;
    INSERT INTO bot_departures (bot_id, server_name, change_seq, departed_at)
    SELECT OLD.id, OLD.server_name, seq, CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER)
    FROM bot_change_counter WHERE id = 1 AND OLD.server_name <> NEW.server_name;
END;
CREATE TRIGGER bot_instances_deleted AFTER DELETE ON bot_instances BEGIN
    UPDATE bot_change_counter SET seq = seq + 1 WHERE id = 1;
    INSERT INTO bot_departures (bot_id, server_name, change_seq, departed_at)
    SELECT OLD.id, OLD.server_name, seq, CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER)
    FROM bot_change_counter WHERE id = 1;
END;
