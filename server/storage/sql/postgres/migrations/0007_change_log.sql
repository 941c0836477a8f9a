-- The change feed: every create, update, share and delete of a memory appends a row, in the same
-- transaction, with a cursor that counts up per workspace (a counter row locked until commit, so cursors
-- become visible in order, without gaps), and a NOTIFY that every server process's LISTEN connection
-- receives at commit. The payload stays far below NOTIFY's 8000-byte limit: ids and a kind, no content.
CREATE TABLE change_cursors (
    workspace_id text COLLATE "C" PRIMARY KEY REFERENCES workspaces (id) ON DELETE CASCADE,
    last         bigint NOT NULL
);

CREATE TABLE change_log (
    workspace_id text COLLATE "C" NOT NULL REFERENCES workspaces (id) ON DELETE CASCADE,
    cursor       bigint NOT NULL,
    kind         text NOT NULL CHECK (kind IN ('create', 'update', 'share', 'delete')),
    entity       text NOT NULL,
    entity_id    text COLLATE "C" NOT NULL,
    actor        text COLLATE "C" NOT NULL,
    private_to   text COLLATE "C",  -- the author, when only they may see the change
    at           timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (workspace_id, cursor)
);

CREATE FUNCTION stackmemory_record_change(ws text, change_kind text, what text, what_id text, who text,
                                          only_for text) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
DECLARE
    next_cursor bigint;
BEGIN
    INSERT INTO change_cursors AS c (workspace_id, last) VALUES (ws, 1)
    ON CONFLICT (workspace_id) DO UPDATE SET last = c.last + 1
    RETURNING last INTO next_cursor;
    INSERT INTO change_log (workspace_id, cursor, kind, entity, entity_id, actor, private_to)
    VALUES (ws, next_cursor, change_kind, what, what_id, who, only_for);
    PERFORM pg_notify('stackmemory_changes', json_build_object(
        'w', ws, 'c', next_cursor, 'k', change_kind, 'e', what, 'id', what_id, 'p', only_for)::text);
END $$;

CREATE FUNCTION memories_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM stackmemory_record_change(
        NEW.workspace_id,
        CASE WHEN TG_OP = 'INSERT' AND NEW.metadata ? 'shared_from' THEN 'share'
             WHEN TG_OP = 'INSERT' THEN 'create'
             WHEN NEW.deleted_at IS NOT NULL AND OLD.deleted_at IS NULL THEN 'delete'
             WHEN OLD.visibility = 'private' AND NEW.visibility = 'team' THEN 'share'
             ELSE 'update' END,
        'memory', NEW.id, NEW.updated_by,
        CASE WHEN NEW.visibility = 'private' THEN NEW.created_by END);
    RETURN NULL;
END $$;

CREATE TRIGGER memories_change AFTER INSERT OR UPDATE ON memories
    FOR EACH ROW EXECUTE FUNCTION memories_change();

-- Reading the feed: members of the workspace, and private entries only for their author.
ALTER TABLE change_log ENABLE ROW LEVEL SECURITY;
CREATE POLICY change_log_read ON change_log FOR SELECT USING (
    stackmemory_system()
    OR (workspace_id IN (SELECT stackmemory_workspaces('reader'))
        AND (private_to IS NULL OR private_to = stackmemory_user())));
