-- Every memory belongs to a workspace and has a visibility; prior versions are kept. SQLite has no
-- row-level security: the adapter applies PostgreSQL's policies as conditions on every memory query.
ALTER TABLE memories ADD COLUMN workspace_id TEXT NOT NULL DEFAULT '00000000-0000-7000-8000-000000000002'
    REFERENCES workspaces (id);
ALTER TABLE memories ADD COLUMN visibility TEXT NOT NULL DEFAULT 'private'
    CHECK (visibility IN ('private', 'team'));
ALTER TABLE memories ADD COLUMN created_by TEXT NOT NULL DEFAULT '00000000-0000-7000-8000-000000000001';
ALTER TABLE memories ADD COLUMN updated_by TEXT NOT NULL DEFAULT '00000000-0000-7000-8000-000000000001';
-- Duplicate content is merged within what one reader sees together: a team memory with the team's,
-- a private one only with its author's own (so a duplicate never reveals someone's private memory).
ALTER TABLE memories ADD COLUMN dedup_owner TEXT NOT NULL DEFAULT '00000000-0000-7000-8000-000000000001';

DROP INDEX memories_dedup;
CREATE UNIQUE INDEX memories_dedup ON memories (workspace_id, dedup_owner, project, content_hash)
    WHERE deleted_at IS NULL;
CREATE INDEX memories_workspace_id ON memories (workspace_id, id) WHERE deleted_at IS NULL;

-- Prior versions of every memory, written by the update that replaced them.
CREATE TABLE memory_history (
    memory_id  TEXT NOT NULL REFERENCES memories (id) ON DELETE CASCADE,
    version    INTEGER NOT NULL,
    content    TEXT NOT NULL,
    kind       TEXT NOT NULL,
    tags       TEXT NOT NULL,
    project    TEXT NOT NULL,
    importance INTEGER NOT NULL,
    metadata   TEXT NOT NULL,
    visibility TEXT NOT NULL,
    changed_by TEXT NOT NULL,
    changed_at TEXT NOT NULL,
    PRIMARY KEY (memory_id, version)
);
