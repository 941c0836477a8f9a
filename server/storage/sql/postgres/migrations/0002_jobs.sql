-- Settings, a durable job queue, and triggers that queue an embedding for every new or changed memory.
CREATE TABLE meta (
    key   text PRIMARY KEY,
    value text NOT NULL
);

CREATE TABLE jobs (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    kind         text NOT NULL,
    key          text,
    payload      jsonb NOT NULL DEFAULT '{}',
    status       text NOT NULL DEFAULT 'queued' CHECK (status IN ('queued', 'running', 'done', 'dead')),
    attempts     integer NOT NULL DEFAULT 0,
    max_attempts integer NOT NULL DEFAULT 5 CHECK (max_attempts >= 1),
    run_after    timestamptz NOT NULL DEFAULT now(),
    locked_until timestamptz,
    last_error   text,
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now()
);

-- At most one pending job per (kind, key): re-queuing work that is already waiting is a no-op.
CREATE UNIQUE INDEX jobs_pending_key ON jobs (kind, key) WHERE status = 'queued';
CREATE INDEX jobs_claim ON jobs (status, run_after, id);

-- Runs in the writing transaction, so a memory is never committed without its job. No embedder
-- configured (no meta row) means no jobs pile up.
CREATE FUNCTION memories_enqueue_embedding() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM meta WHERE key = 'embedding_model') THEN
        INSERT INTO jobs (kind, key) VALUES ('embed', NEW.id)
        ON CONFLICT (kind, key) WHERE status = 'queued' DO NOTHING;
    END IF;
    RETURN NULL;
END;
$$;

CREATE TRIGGER memories_embed_insert AFTER INSERT ON memories
    FOR EACH ROW WHEN (NEW.deleted_at IS NULL)
    EXECUTE FUNCTION memories_enqueue_embedding();

CREATE TRIGGER memories_embed_update AFTER UPDATE OF content ON memories
    FOR EACH ROW WHEN (NEW.deleted_at IS NULL AND NEW.content IS DISTINCT FROM OLD.content)
    EXECUTE FUNCTION memories_enqueue_embedding();
