-- The audit listing of one action (`GET /api/admin/audit?action=`), newest
-- first, without walking every audit row until a page is full.
CREATE INDEX activities_audit_action ON activities (action, id) WHERE actor_name IS NOT NULL;
