-- Kept in step with PostgreSQL's migration numbers. The SQLite server caches query embeddings in
-- process memory (one server per user), so this migration changes nothing.
SELECT 1;
