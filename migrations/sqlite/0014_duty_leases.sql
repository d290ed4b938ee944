-- Work one node does for the whole fleet (issue 22): who holds each duty,
-- until when. A node takes a free or lapsed duty, or renews its own, with
-- one conditional upsert; the capacity watch reads the whole fleet only on
-- the node that holds `fleet_capacity`, so a quiet fleet reads N rows per
-- interval, not N squared.
CREATE TABLE duty_leases (
    duty    TEXT PRIMARY KEY,
    holder  TEXT NOT NULL,
    until   BIGINT NOT NULL
);
