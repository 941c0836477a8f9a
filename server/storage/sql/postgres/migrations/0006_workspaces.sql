-- Every memory belongs to a workspace and has a visibility; prior versions are kept. Row-level security
-- makes the database itself enforce who may read and change which memory: the application sets
-- stackmemory.user_id (SET LOCAL, per transaction) and runs as a role that does not bypass RLS
-- (PostgresStore switches to stackmemory_app when its login role could bypass it).
ALTER TABLE memories
    ADD COLUMN workspace_id text COLLATE "C" NOT NULL DEFAULT '00000000-0000-7000-8000-000000000002'
        REFERENCES workspaces (id),
    ADD COLUMN visibility   text NOT NULL DEFAULT 'private' CHECK (visibility IN ('private', 'team')),
    ADD COLUMN created_by   text COLLATE "C" NOT NULL DEFAULT '00000000-0000-7000-8000-000000000001'
        REFERENCES users (id),
    ADD COLUMN updated_by   text COLLATE "C" NOT NULL DEFAULT '00000000-0000-7000-8000-000000000001'
        REFERENCES users (id),
    -- Duplicate content is merged within what one reader sees together: a team memory with the team's,
    -- a private one only with its author's own (so a duplicate never reveals someone's private memory).
    ADD COLUMN dedup_owner  text COLLATE "C" NOT NULL DEFAULT '00000000-0000-7000-8000-000000000001';
ALTER TABLE memories ALTER COLUMN workspace_id DROP DEFAULT, ALTER COLUMN created_by DROP DEFAULT,
    ALTER COLUMN updated_by DROP DEFAULT, ALTER COLUMN dedup_owner DROP DEFAULT;

DROP INDEX memories_dedup;
CREATE UNIQUE INDEX memories_dedup ON memories (workspace_id, dedup_owner, project, content_hash)
    WHERE deleted_at IS NULL;
CREATE INDEX memories_workspace_id ON memories (workspace_id, id) WHERE deleted_at IS NULL;

-- Prior versions of every memory, written by the update that replaced them.
CREATE TABLE memory_history (
    memory_id  text COLLATE "C" NOT NULL REFERENCES memories (id) ON DELETE CASCADE,
    version    integer NOT NULL,
    content    text NOT NULL,
    kind       text NOT NULL,
    tags       jsonb NOT NULL,
    project    text NOT NULL,
    importance smallint NOT NULL,
    metadata   jsonb NOT NULL,
    visibility text NOT NULL,
    changed_by text COLLATE "C" NOT NULL,
    changed_at timestamptz NOT NULL,
    PRIMARY KEY (memory_id, version)
);

-- The caller, as set by the application for this transaction; NULL (matching nothing) when unset.
CREATE FUNCTION stackmemory_user() RETURNS text LANGUAGE sql STABLE AS $$
    SELECT nullif(current_setting('stackmemory.user_id', true), '')
$$;
-- Background work (embedding, maintenance) runs as the system, which sets stackmemory.system.
CREATE FUNCTION stackmemory_system() RETURNS boolean LANGUAGE sql STABLE AS $$
    SELECT coalesce(current_setting('stackmemory.system', true), '') = 'on'
$$;
-- The caller's workspaces at or above a role. SECURITY DEFINER: it reads memberships as the owner, so
-- the policies below need no policy on memberships themselves.
CREATE FUNCTION stackmemory_workspaces(min_role text) RETURNS SETOF text LANGUAGE sql STABLE
SECURITY DEFINER SET search_path = pg_catalog, public AS $$
    SELECT workspace_id FROM memberships
     WHERE user_id = stackmemory_user()
       AND CASE min_role WHEN 'reader' THEN true
                         WHEN 'member' THEN role IN ('owner', 'admin', 'member')
                         ELSE role IN ('owner', 'admin') END
$$;

ALTER TABLE memories ENABLE ROW LEVEL SECURITY;
ALTER TABLE memories FORCE ROW LEVEL SECURITY;
ALTER TABLE memory_history ENABLE ROW LEVEL SECURITY;
ALTER TABLE memory_history FORCE ROW LEVEL SECURITY;

-- Read: the caller's workspaces, team memories and the caller's own private ones.
CREATE POLICY memories_read ON memories FOR SELECT USING (
    stackmemory_system()
    OR (workspace_id IN (SELECT stackmemory_workspaces('reader'))
        AND (visibility = 'team' OR created_by = stackmemory_user())));
-- Write: members and above; a member changes own memories, admins and owners any team memory.
CREATE POLICY memories_insert ON memories FOR INSERT WITH CHECK (
    stackmemory_system()
    OR (workspace_id IN (SELECT stackmemory_workspaces('member')) AND updated_by = stackmemory_user()));
CREATE POLICY memories_update ON memories FOR UPDATE USING (
    stackmemory_system()
    OR (workspace_id IN (SELECT stackmemory_workspaces('member'))
        AND (created_by = stackmemory_user()
             OR (visibility = 'team' AND workspace_id IN (SELECT stackmemory_workspaces('admin'))))))
    WITH CHECK (stackmemory_system()
                OR (workspace_id IN (SELECT stackmemory_workspaces('member'))
                    AND updated_by = stackmemory_user()));
CREATE POLICY memories_delete ON memories FOR DELETE USING (stackmemory_system());

CREATE POLICY history_read ON memory_history FOR SELECT USING (
    stackmemory_system()
    OR EXISTS (SELECT 1 FROM memories AS m WHERE m.id = memory_id));  -- visible iff its memory is
CREATE POLICY history_insert ON memory_history FOR INSERT WITH CHECK (
    stackmemory_system() OR changed_by = stackmemory_user());

-- The role the application runs as when its login role could bypass RLS (a superuser, or the table
-- owner on a database without FORCE): it gets the table privileges and nothing else. Creating a role
-- needs CREATEROLE; without it the login role itself must not bypass RLS, which PostgresStore checks.
DO $$
BEGIN
    CREATE ROLE stackmemory_app NOLOGIN NOSUPERUSER NOBYPASSRLS;
EXCEPTION
    WHEN duplicate_object OR unique_violation THEN NULL;  -- another database of this cluster made it
    WHEN insufficient_privilege THEN
        RAISE NOTICE 'no stackmemory_app role (no CREATEROLE): the login role itself must not bypass RLS';
END $$;

DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'stackmemory_app') THEN
        EXECUTE format('GRANT stackmemory_app TO %I', current_user);
        GRANT USAGE ON SCHEMA public TO stackmemory_app;
        GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO stackmemory_app;
        GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO stackmemory_app;
        ALTER DEFAULT PRIVILEGES IN SCHEMA public
            GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO stackmemory_app;
        ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT USAGE, SELECT ON SEQUENCES TO stackmemory_app;
    END IF;
EXCEPTION WHEN insufficient_privilege THEN
    RAISE NOTICE 'could not grant stackmemory_app its privileges; the login role itself must not bypass RLS';
END $$;
