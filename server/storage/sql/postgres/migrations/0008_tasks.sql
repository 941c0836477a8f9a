-- Tasks: a workspace's work items, kept in step with a Linear team. Row-level security as for memories
-- (migration 0006): every member of a workspace reads its tasks, members and above write them, and the
-- Linear sync acts as the system.
CREATE TABLE tasks (
    id                text COLLATE "C" PRIMARY KEY,
    workspace_id      text COLLATE "C" NOT NULL REFERENCES workspaces (id),
    title             text NOT NULL,
    description       text NOT NULL DEFAULT '',
    status            text NOT NULL CHECK (status IN ('todo', 'in_progress', 'done', 'blocked', 'cancelled')),
    priority          text NOT NULL DEFAULT 'none' CHECK (priority IN ('none', 'urgent', 'high', 'medium', 'low')),
    assignee          text,
    labels            jsonb NOT NULL DEFAULT '[]',
    memory_ids        jsonb NOT NULL DEFAULT '[]',
    created_by        text COLLATE "C" NOT NULL REFERENCES users (id),
    updated_by        text COLLATE "C" NOT NULL REFERENCES users (id),
    created_at        timestamptz NOT NULL,
    updated_at        timestamptz NOT NULL,
    version           integer NOT NULL DEFAULT 1,
    -- The Linear issue, once linked. linear_pending_id is the id sent with issueCreate before Linear
    -- answered: a sync that died before recording the answer finds the issue by it instead of creating
    -- a second one.
    linear_id         text COLLATE "C",
    linear_identifier text,
    linear_url        text,
    linear_updated_at timestamptz,
    linear_pending_id text COLLATE "C" UNIQUE,
    -- Both sides' field values at the last sync, the base of the three-way merge; dirty while a local
    -- change waits to be pushed.
    synced            jsonb,
    dirty             boolean NOT NULL DEFAULT true,
    conflict          jsonb,
    sync_error        text
);
CREATE UNIQUE INDEX tasks_linear_id ON tasks (workspace_id, linear_id) WHERE linear_id IS NOT NULL;
CREATE INDEX tasks_workspace ON tasks (workspace_id, id);
CREATE INDEX tasks_dirty ON tasks (workspace_id, id) WHERE dirty;

-- One Linear connection per workspace. The API key and webhook secret are readable only by the system
-- (the sync and the webhook check), never by a caller's transaction.
CREATE TABLE linear_connections (
    workspace_id     text COLLATE "C" PRIMARY KEY REFERENCES workspaces (id) ON DELETE CASCADE,
    api_key          text NOT NULL,
    team_id          text NOT NULL,
    team_key         text NOT NULL,
    team_name        text NOT NULL,
    webhook_secret   text,
    policy           text NOT NULL DEFAULT 'newest' CHECK (policy IN ('newest', 'linear', 'local')),
    acting_user      text COLLATE "C" NOT NULL REFERENCES users (id),
    cursor           text,
    created_at       timestamptz NOT NULL,
    updated_at       timestamptz NOT NULL,
    sync_started_at  timestamptz,
    sync_finished_at timestamptz,
    last_summary     jsonb,
    last_error       text,
    lock_owner       text,  -- unused on PostgreSQL, which uses an advisory lock; kept so both schemas match
    lock_until       timestamptz
);

-- Webhook deliveries already applied, so a replayed delivery changes nothing.
CREATE TABLE linear_webhook_events (
    delivery     text PRIMARY KEY,
    workspace_id text COLLATE "C" NOT NULL,
    received_at  timestamptz NOT NULL
);

ALTER TABLE tasks ENABLE ROW LEVEL SECURITY;
ALTER TABLE tasks FORCE ROW LEVEL SECURITY;
ALTER TABLE linear_connections ENABLE ROW LEVEL SECURITY;
ALTER TABLE linear_connections FORCE ROW LEVEL SECURITY;
ALTER TABLE linear_webhook_events ENABLE ROW LEVEL SECURITY;
ALTER TABLE linear_webhook_events FORCE ROW LEVEL SECURITY;

-- Tasks are the team's: every member reads them, members and above change any of them (as in Linear).
CREATE POLICY tasks_read ON tasks FOR SELECT USING (
    stackmemory_system() OR workspace_id IN (SELECT stackmemory_workspaces('reader')));
CREATE POLICY tasks_insert ON tasks FOR INSERT WITH CHECK (
    stackmemory_system()
    OR (workspace_id IN (SELECT stackmemory_workspaces('member')) AND updated_by = stackmemory_user()));
CREATE POLICY tasks_update ON tasks FOR UPDATE USING (
    stackmemory_system() OR workspace_id IN (SELECT stackmemory_workspaces('member')))
    WITH CHECK (stackmemory_system()
                OR (workspace_id IN (SELECT stackmemory_workspaces('member')) AND updated_by = stackmemory_user()));
CREATE POLICY tasks_delete ON tasks FOR DELETE USING (stackmemory_system());

CREATE POLICY linear_connections_system ON linear_connections USING (stackmemory_system())
    WITH CHECK (stackmemory_system());
CREATE POLICY linear_webhook_events_system ON linear_webhook_events USING (stackmemory_system())
    WITH CHECK (stackmemory_system());

-- Default privileges cover tables made by the role that ran migration 0006; say it again in case another
-- role runs this one.
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'stackmemory_app') THEN
        GRANT SELECT, INSERT, UPDATE, DELETE ON tasks, linear_connections, linear_webhook_events
            TO stackmemory_app;
    END IF;
EXCEPTION WHEN insufficient_privilege THEN
    RAISE NOTICE 'could not grant stackmemory_app the task tables; the login role itself must not bypass RLS';
END $$;
