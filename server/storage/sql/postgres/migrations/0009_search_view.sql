-- Keyword search through a view that applies the read policy's rules as ordinary conditions.
--
-- Row-level security evaluates a policy before any condition that is not LEAKPROOF, and the full-text
-- match (@@) is not: on `memories` itself the GIN index could not be used and every search read the
-- whole table (31 ms at 20k memories, growing linearly). A view runs with its owner's rights, so where
-- the owner bypasses RLS (a superuser, as on most hosted PostgreSQL services) the planner is free to
-- take the GIN index and check the same rules afterwards; where the owner is itself subject to RLS
-- (FORCE), the policy still applies on top, which is correct, only slower. Not a security barrier view:
-- only our own queries read it, and the rules below are the read policy's, word for word.
CREATE VIEW visible_memories AS
SELECT * FROM memories
 WHERE stackmemory_system()
    OR (workspace_id IN (SELECT stackmemory_workspaces('reader'))
        AND (visibility = 'team' OR created_by = stackmemory_user()));

DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'stackmemory_app') THEN
        GRANT SELECT ON visible_memories TO stackmemory_app;
    END IF;
EXCEPTION WHEN insufficient_privilege THEN
    RAISE NOTICE 'could not grant stackmemory_app the search view; the login role itself must not bypass RLS';
END $$;
