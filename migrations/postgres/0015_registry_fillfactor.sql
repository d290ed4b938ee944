-- Every node rewrites its registry row every few seconds (heartbeat, lease,
-- counts). Room left in each page keeps those updates HOT (the new version
-- on the same page, no index entry): measured per quiet node with
-- pg_stat_statements in bench-fleet (docs/benchmarks.md, issue 22).
ALTER TABLE server_registry SET (fillfactor = 50);
ALTER TABLE duty_leases SET (fillfactor = 50);
ALTER TABLE capacity_levels SET (fillfactor = 50);
-- A guest message is inserted, claimed (claimed_by, claimed_until, attempts:
-- no indexed column) and marked sent: with room on its page the claim is
-- HOT too.
ALTER TABLE notification_outbox SET (fillfactor = 70);
