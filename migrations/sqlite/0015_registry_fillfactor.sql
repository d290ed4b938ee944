-- PostgreSQL's 0015 leaves room in the registry's pages for in-place
-- updates; SQLite has no such setting. Kept so both folders number alike.
SELECT 1;
