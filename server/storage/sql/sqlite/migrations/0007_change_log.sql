-- The change feed: every create, update, share and delete of a memory appends a row in the same
-- transaction, with a cursor that counts up per workspace (one writer at a time, so max + 1 is safe).
-- seq orders the whole log, so the process can find what is new since it last looked.
CREATE TABLE change_log (
    seq          INTEGER PRIMARY KEY AUTOINCREMENT,
    workspace_id TEXT NOT NULL REFERENCES workspaces (id) ON DELETE CASCADE,
    cursor       INTEGER NOT NULL,
    kind         TEXT NOT NULL CHECK (kind IN ('create', 'update', 'share', 'delete')),
    entity       TEXT NOT NULL,
    entity_id    TEXT NOT NULL,
    actor        TEXT NOT NULL,
    private_to   TEXT,  -- the author, when only they may see the change
    at           TEXT NOT NULL,
    UNIQUE (workspace_id, cursor)
);

CREATE TRIGGER memories_change_insert AFTER INSERT ON memories BEGIN
    INSERT INTO change_log (workspace_id, cursor, kind, entity, entity_id, actor, private_to, at)
    VALUES (new.workspace_id,
            coalesce((SELECT max(cursor) FROM change_log WHERE workspace_id = new.workspace_id), 0) + 1,
            CASE WHEN json_extract(new.metadata, '$.shared_from') IS NOT NULL THEN 'share' ELSE 'create' END,
            'memory', new.id, new.updated_by,
            CASE WHEN new.visibility = 'private' THEN new.created_by END,
            strftime('%Y-%m-%dT%H:%M:%f000+00:00', 'now'));
END;

CREATE TRIGGER memories_change_update AFTER UPDATE ON memories BEGIN
    INSERT INTO change_log (workspace_id, cursor, kind, entity, entity_id, actor, private_to, at)
    VALUES (new.workspace_id,
            coalesce((SELECT max(cursor) FROM change_log WHERE workspace_id = new.workspace_id), 0) + 1,
            CASE WHEN new.deleted_at IS NOT NULL AND old.deleted_at IS NULL THEN 'delete'
                 WHEN old.visibility = 'private' AND new.visibility = 'team' THEN 'share'
                 ELSE 'update' END,
            'memory', new.id, new.updated_by,
            CASE WHEN new.visibility = 'private' THEN new.created_by END,
            strftime('%Y-%m-%dT%H:%M:%f000+00:00', 'now'));
END;
