-- Embeddings (pgvector), one per live memory, for the model recorded in meta('embedding_model').
-- The column has no fixed dimension; the HNSW index is built per dimension on a cast expression
-- when a model is recorded (see PostgresStore.prepare_vectors).
CREATE EXTENSION IF NOT EXISTS vector;

CREATE TABLE memory_vectors (
    memory_id text COLLATE "C" PRIMARY KEY REFERENCES memories (id) ON DELETE CASCADE,
    model     text NOT NULL,
    embedding vector NOT NULL
);

-- A changed or deleted memory loses its vector at once, so semantic search never returns stale text.
CREATE FUNCTION memories_vector_stale() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.content IS DISTINCT FROM OLD.content OR NEW.deleted_at IS NOT NULL THEN
        DELETE FROM memory_vectors WHERE memory_id = NEW.id;
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER memories_vector_stale AFTER UPDATE OF content, deleted_at ON memories
    FOR EACH ROW EXECUTE FUNCTION memories_vector_stale();
