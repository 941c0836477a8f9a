-- Tasks: a workspace's work items, kept in step with a Linear team. SQLite has no row-level security:
-- the adapter filters every task query by the caller's workspaces (see tasks.sql).
CREATE TABLE tasks (
    id                TEXT PRIMARY KEY,
    workspace_id      TEXT NOT NULL REFERENCES workspaces (id),
    title             TEXT NOT NULL,
    description       TEXT NOT NULL DEFAULT '',
    status            TEXT NOT NULL CHECK (status IN ('todo', 'in_progress', 'done', 'blocked', 'cancelled')),
    priority          TEXT NOT NULL DEFAULT 'none' CHECK (priority IN ('none', 'urgent', 'high', 'medium', 'low')),
    assignee          TEXT,
    labels            TEXT NOT NULL DEFAULT '[]',
    memory_ids        TEXT NOT NULL DEFAULT '[]',
    created_by        TEXT NOT NULL REFERENCES users (id),
    updated_by        TEXT NOT NULL REFERENCES users (id),
    created_at        TEXT NOT NULL,
    updated_at        TEXT NOT NULL,
    version           INTEGER NOT NULL DEFAULT 1,
    -- The Linear issue, once linked. linear_pending_id is the id sent with issueCreate before Linear
    -- answered: a sync that died before recording the answer finds the issue by it instead of creating
    -- a second one.
    linear_id         TEXT,
    linear_identifier TEXT,
    linear_url        TEXT,
    linear_updated_at TEXT,
    linear_pending_id TEXT UNIQUE,
    -- Both sides' field values at the last sync (JSON), the base of the three-way merge; dirty = 1 while a
    -- local change waits to be pushed.
    synced            TEXT,
    dirty             INTEGER NOT NULL DEFAULT 1,
    conflict          TEXT,
    sync_error        TEXT
);
CREATE UNIQUE INDEX tasks_linear_id ON tasks (workspace_id, linear_id) WHERE linear_id IS NOT NULL;
CREATE INDEX tasks_workspace ON tasks (workspace_id, id);
CREATE INDEX tasks_dirty ON tasks (workspace_id, id) WHERE dirty = 1;

-- One Linear connection per workspace. The API key and webhook secret never leave the database except
-- in requests to Linear: no query outside the sync reads them.
CREATE TABLE linear_connections (
    workspace_id     TEXT PRIMARY KEY REFERENCES workspaces (id) ON DELETE CASCADE,
    api_key          TEXT NOT NULL,
    team_id          TEXT NOT NULL,
    team_key         TEXT NOT NULL,
    team_name        TEXT NOT NULL,
    webhook_secret   TEXT,
    policy           TEXT NOT NULL DEFAULT 'newest' CHECK (policy IN ('newest', 'linear', 'local')),
    acting_user      TEXT NOT NULL REFERENCES users (id),
    cursor           TEXT,
    created_at       TEXT NOT NULL,
    updated_at       TEXT NOT NULL,
    sync_started_at  TEXT,
    sync_finished_at TEXT,
    last_summary     TEXT,
    last_error       TEXT,
    -- SQLite's stand-in for PostgreSQL's advisory lock: who runs this workspace's sync, until when.
    lock_owner       TEXT,
    lock_until       TEXT
);

-- Webhook deliveries already applied, so a replayed delivery changes nothing.
CREATE TABLE linear_webhook_events (
    delivery     TEXT PRIMARY KEY,
    workspace_id TEXT NOT NULL,
    received_at  TEXT NOT NULL
);
