-- Fleet scale: node leases instead of per-bot leases, and a change feed so a
-- quiet node reads nothing per bot (issue 11, DESIGN.md "Scale").
--
-- Node lease: every start of a node takes a new epoch; its registry row's
-- lease_until is the lease. A bot's runner is (runner, runner_epoch); another
-- node may take the bot only once that node's lease has run out or its epoch
-- changed. Renewing one row renews every bot the node runs.
ALTER TABLE server_registry ADD COLUMN epoch BIGINT NOT NULL DEFAULT 0;
ALTER TABLE server_registry ADD COLUMN lease_until BIGINT;
ALTER TABLE bot_instances ADD COLUMN runner_epoch BIGINT;
ALTER TABLE bot_instances DROP COLUMN runner_until;
-- Per-bot leases taken before this migration mean nothing under node leases.
UPDATE bot_instances SET runner = NULL;

-- Change feed. change_seq is the id of the transaction that last wrote the
-- row (set by the trigger below, so no write can forget it). A reader first
-- takes the oldest transaction still running (pg_snapshot_xmin) as its next
-- cursor, then reads rows with change_seq >= its previous cursor: a
-- transaction that commits late has an id at or above that cursor, so no
-- change is missed, whatever the commit order.
ALTER TABLE bot_instances ADD COLUMN change_seq BIGINT NOT NULL DEFAULT 0;
CREATE INDEX bot_instances_changes ON bot_instances (server_name, change_seq);

-- A bot that left a server (moved or deleted) is not in that server's rows
-- any more; its departure is recorded here so the server's node learns it.
-- Rows are purged after a day (a node that slept longer resyncs in full).
CREATE TABLE bot_departures (
    id           BIGSERIAL PRIMARY KEY,
    bot_id       TEXT NOT NULL,
    server_name  TEXT NOT NULL,
    change_seq   BIGINT NOT NULL,
    departed_at  BIGINT NOT NULL
);
CREATE INDEX bot_departures_changes ON bot_departures (server_name, change_seq);
CREATE INDEX bot_departures_age ON bot_departures (departed_at);

CREATE FUNCTION trekker_bot_changed() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    tx BIGINT := pg_current_xact_id()::text::bigint;
    now_ms BIGINT := (extract(epoch FROM clock_timestamp()) * 1000)::bigint;
BEGIN
    IF TG_OP = 'DELETE' THEN
        INSERT INTO bot_departures (bot_id, server_name, change_seq, departed_at)
        VALUES (OLD.id, OLD.server_name, tx, now_ms);
        RETURN OLD;
    END IF;
    IF TG_OP = 'UPDATE' AND OLD.server_name <> NEW.server_name THEN
        INSERT INTO bot_departures (bot_id, server_name, change_seq, departed_at)
        VALUES (OLD.id, OLD.server_name, tx, now_ms);
    END IF;
    NEW.change_seq := tx;
    RETURN NEW;
END $$;
CREATE TRIGGER bot_instances_changed BEFORE INSERT OR UPDATE OR DELETE ON bot_instances
    FOR EACH ROW EXECUTE FUNCTION trekker_bot_changed();
