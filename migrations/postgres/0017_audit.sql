-- The audit trail (issue 24): an activity that an admin's key, the
-- bootstrap token or the cluster itself ('system') did carries its actor,
-- its target and its result ('ok', or the code that refused it), written
-- in the same transaction as the change. A guest's steps carry none.
ALTER TABLE activities ADD COLUMN actor_key_id TEXT;
ALTER TABLE activities ADD COLUMN actor_name TEXT;
ALTER TABLE activities ADD COLUMN target TEXT;
ALTER TABLE activities ADD COLUMN result TEXT;
-- The audit listing, newest first, and the same for one actor; partial:
-- the guests' activities (most of them) are not in these indexes at all.
CREATE INDEX activities_audit ON activities (id) WHERE actor_name IS NOT NULL;
CREATE INDEX activities_audit_actor ON activities (actor_name, id) WHERE actor_name IS NOT NULL;
