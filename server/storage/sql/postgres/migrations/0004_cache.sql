-- Recomputable results shared by every server process (query embeddings first). UNLOGGED: no WAL, so
-- writes are cheap; a crash empties the table, which only costs recomputation.
CREATE UNLOGGED TABLE cache (
    key        text PRIMARY KEY,
    value      bytea NOT NULL,
    expires_at timestamptz NOT NULL
);
CREATE INDEX cache_expires ON cache (expires_at);
