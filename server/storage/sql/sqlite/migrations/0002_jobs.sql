-- Settings, a durable job queue, and triggers that queue an embedding for every new or changed memory.
-- Times are UTC ISO text like the rest of the schema: strftime gives milliseconds, Python microseconds,
-- and both order correctly as text.
CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

CREATE TABLE jobs (
    id           INTEGER PRIMARY KEY,
    kind         TEXT NOT NULL,
    key          TEXT,
    payload      TEXT NOT NULL DEFAULT '{}',
    status       TEXT NOT NULL DEFAULT 'queued' CHECK (status IN ('queued', 'running', 'done', 'dead')),
    attempts     INTEGER NOT NULL DEFAULT 0,
    max_attempts INTEGER NOT NULL DEFAULT 5 CHECK (max_attempts >= 1),
    run_after    TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%f+00:00', 'now')),
    locked_until TEXT,
    last_error   TEXT,
    created_at   TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%f+00:00', 'now')),
    updated_at   TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%f+00:00', 'now'))
);

-- At most one pending job per (kind, key): re-queuing work that is already waiting is a no-op.
CREATE UNIQUE INDEX jobs_pending_key ON jobs (kind, key) WHERE status = 'queued';
CREATE INDEX jobs_claim ON jobs (status, run_after, id);

-- No embedder configured (no meta row) means no jobs pile up. The NOT EXISTS makes the dedupe explicit;
-- OR IGNORE covers it too, but the firing statement's own conflict policy can override a trigger's.
CREATE TRIGGER memories_embed_insert AFTER INSERT ON memories
WHEN new.deleted_at IS NULL AND EXISTS (SELECT 1 FROM meta WHERE key = 'embedding_model')
BEGIN
    INSERT OR IGNORE INTO jobs (kind, key)
        SELECT 'embed', new.id
         WHERE NOT EXISTS (SELECT 1 FROM jobs WHERE kind = 'embed' AND key = new.id AND status = 'queued');
END;

CREATE TRIGGER memories_embed_update AFTER UPDATE OF content ON memories
WHEN new.deleted_at IS NULL AND new.content IS NOT old.content
     AND EXISTS (SELECT 1 FROM meta WHERE key = 'embedding_model')
BEGIN
    INSERT OR IGNORE INTO jobs (kind, key)
        SELECT 'embed', new.id
         WHERE NOT EXISTS (SELECT 1 FROM jobs WHERE kind = 'embed' AND key = new.id AND status = 'queued');
END;
