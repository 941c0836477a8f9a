-- Embeddings, one per live memory, for the model recorded in meta('embedding_model').
CREATE TABLE memory_vectors (
    seq       INTEGER PRIMARY KEY AUTOINCREMENT,
    memory_id TEXT NOT NULL UNIQUE REFERENCES memories (id) ON DELETE CASCADE,
    model     TEXT NOT NULL,
    vector    BLOB NOT NULL  -- little-endian float32, L2-normalised
);

-- A changed or deleted memory loses its vector at once, so semantic search never returns stale text.
CREATE TRIGGER memories_vector_stale AFTER UPDATE OF content, deleted_at ON memories
WHEN new.content IS NOT old.content OR new.deleted_at IS NOT NULL BEGIN
    DELETE FROM memory_vectors WHERE memory_id = new.id;
END;
