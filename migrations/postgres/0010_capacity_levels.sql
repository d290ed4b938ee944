-- The capacity level each scope (a server's name, or `*` for the whole
-- cluster) was last seen at: 0 normal, 1 past CAPACITY_WARN_PERCENT,
-- 2 full. Nodes move a level with a compare-and-set; the one whose update
-- changes the row writes the warning (activity, admin notification) in the
-- same transaction, so each crossing warns exactly once however many nodes
-- see it.
CREATE TABLE capacity_levels (
    scope       TEXT PRIMARY KEY,
    level       BIGINT NOT NULL,
    changed_at  BIGINT NOT NULL
);
