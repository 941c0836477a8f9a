-- Memories, their keyword index, and tombstones for deletions.
CREATE TABLE memories (
    rowid        INTEGER PRIMARY KEY,
    id           TEXT NOT NULL UNIQUE,
    content      TEXT NOT NULL,
    content_hash TEXT NOT NULL,
    kind         TEXT NOT NULL,
    tags         TEXT NOT NULL DEFAULT '[]',
    project      TEXT NOT NULL,
    importance   INTEGER NOT NULL CHECK (importance BETWEEN 0 AND 10),
    metadata     TEXT NOT NULL DEFAULT '{}',
    author       TEXT NOT NULL,
    created_at   TEXT NOT NULL,
    updated_at   TEXT NOT NULL,
    expires_at   TEXT,
    version      INTEGER NOT NULL DEFAULT 1,
    deleted_at   TEXT
);

CREATE UNIQUE INDEX memories_dedup ON memories (project, content_hash) WHERE deleted_at IS NULL;
CREATE INDEX memories_project_id ON memories (project, id) WHERE deleted_at IS NULL;
CREATE INDEX memories_live_id ON memories (id) WHERE deleted_at IS NULL;
CREATE INDEX memories_importance ON memories (project, importance DESC, updated_at DESC) WHERE deleted_at IS NULL;

CREATE VIRTUAL TABLE memories_fts USING fts5 (
    content, tags,
    content = 'memories', content_rowid = 'rowid',
    tokenize = 'porter unicode61 remove_diacritics 2'
);

CREATE TRIGGER memories_fts_insert AFTER INSERT ON memories WHEN new.deleted_at IS NULL BEGIN
    INSERT INTO memories_fts (rowid, content, tags) VALUES (new.rowid, new.content, new.tags);
END;

CREATE TRIGGER memories_fts_update AFTER UPDATE OF content, tags, deleted_at ON memories BEGIN
    INSERT INTO memories_fts (memories_fts, rowid, content, tags)
        SELECT 'delete', old.rowid, old.content, old.tags WHERE old.deleted_at IS NULL;
    INSERT INTO memories_fts (rowid, content, tags)
        SELECT new.rowid, new.content, new.tags WHERE new.deleted_at IS NULL;
END;

CREATE TRIGGER memories_fts_delete AFTER DELETE ON memories WHEN old.deleted_at IS NULL BEGIN
    INSERT INTO memories_fts (memories_fts, rowid, content, tags) VALUES ('delete', old.rowid, old.content, old.tags);
END;
