-- Named queries for the PostgreSQL adapter. Every "filter" block reads the same named parameters:
-- %(project)s, %(kinds)s (text[] or NULL), %(tags)s (jsonb array or NULL, all must match),
-- %(since)s, %(until)s, %(now)s. Casts on parameters give NULLs a type the server can plan with.

-- name: lock_migrations
SELECT pg_advisory_lock(%(key)s);

-- name: role_bypasses_rls
SELECT current_user AS login, (rolsuper OR rolbypassrls) AS bypass,
       EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'stackmemory_app') AS app_role
  FROM pg_roles WHERE rolname = current_user;

-- name: act_as_user
-- Row-level security reads the caller from here, for this transaction only.
SELECT set_config('stackmemory.user_id', %(user_id)s, true), set_config('stackmemory.system', '', true);

-- name: act_as_system
-- Background work (embedding) reads and writes every workspace's memories.
SELECT set_config('stackmemory.system', 'on', true);

-- name: act_as_owner
SET LOCAL ROLE NONE;

-- name: lock_migrations_xact
SELECT pg_advisory_xact_lock(%(key)s);

-- name: vector_scan_settings
-- One statement, so it can share a pipeline with the search: iterative scans keep filtered searches full,
-- and the candidate list is as long as the page asked for (at least 40, pgvector's default).
SELECT set_config('hnsw.iterative_scan', 'relaxed_order', true), set_config('hnsw.ef_search', %(ef)s, true);

-- name: unlock_migrations
SELECT pg_advisory_unlock(%(key)s);

-- name: create_schema_migrations
CREATE TABLE IF NOT EXISTS schema_migrations (
    version    integer PRIMARY KEY,
    name       text NOT NULL,
    checksum   text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
);

-- name: applied_migrations
SELECT version, checksum FROM schema_migrations;

-- name: record_migration
INSERT INTO schema_migrations (version, name, checksum) VALUES (%(version)s, %(name)s, %(checksum)s);

-- name: has_schema_migrations
SELECT to_regclass('schema_migrations') IS NOT NULL AS present;

-- name: schema_version
SELECT coalesce(max(version), 0) AS version FROM schema_migrations;

-- name: insert_memory
INSERT INTO memories (id, content, content_hash, kind, tags, project, importance, metadata, author,
                      created_at, updated_at, expires_at, version, workspace_id, visibility, created_by,
                      updated_by, dedup_owner)
VALUES (%(id)s, %(content)s, %(content_hash)s, %(kind)s, %(tags)s, %(project)s, %(importance)s,
        %(metadata)s, %(author)s, %(created_at)s, %(created_at)s, %(expires_at)s, 1, %(workspace_id)s,
        %(visibility)s, %(created_by)s, %(updated_by)s, %(dedup_owner)s)
ON CONFLICT (workspace_id, dedup_owner, project, content_hash) WHERE deleted_at IS NULL DO NOTHING
RETURNING id, content, content_hash, kind, tags, project, importance, metadata, author,
          created_at, updated_at, expires_at, version, deleted_at, workspace_id, visibility, created_by,
          updated_by;

-- name: find_duplicate
SELECT id, content, content_hash, kind, tags, project, importance, metadata, author,
       created_at, updated_at, expires_at, version, deleted_at, workspace_id, visibility, created_by, updated_by
  FROM memories
 WHERE workspace_id = %(workspace_id)s AND dedup_owner = %(dedup_owner)s AND project = %(project)s
   AND content_hash = %(content_hash)s AND deleted_at IS NULL;

-- name: get_memory
SELECT id, content, content_hash, kind, tags, project, importance, metadata, author,
       created_at, updated_at, expires_at, version, deleted_at, workspace_id, visibility, created_by, updated_by
  FROM memories
 WHERE id = %(id)s
   AND workspace_id = ANY (%(workspaces)s::text[])
   AND (visibility = 'team' OR created_by = %(user_id)s::text);

-- name: save_history
INSERT INTO memory_history (memory_id, version, content, kind, tags, project, importance, metadata,
                            visibility, changed_by, changed_at)
SELECT id, version, content, kind, tags, project, importance, metadata, visibility, %(changed_by)s, %(now)s
  FROM memories WHERE id = %(id)s;

-- name: history
SELECT * FROM memory_history WHERE memory_id = %(id)s ORDER BY version DESC LIMIT %(limit)s;

-- name: lock_memory
SELECT id, content, content_hash, kind, tags, project, importance, metadata, author,
       created_at, updated_at, expires_at, version, deleted_at, workspace_id, visibility, created_by, updated_by
  FROM memories
 WHERE id = %(id)s
   FOR UPDATE;

-- name: update_memory
UPDATE memories
   SET content = %(content)s, content_hash = %(content_hash)s, kind = %(kind)s, tags = %(tags)s,
       project = %(project)s, importance = %(importance)s, metadata = %(metadata)s,
       expires_at = %(expires_at)s, visibility = %(visibility)s, dedup_owner = %(dedup_owner)s,
       updated_by = %(updated_by)s, updated_at = %(now)s, version = version + 1
 WHERE id = %(id)s AND deleted_at IS NULL AND version = %(version)s
RETURNING id, content, content_hash, kind, tags, project, importance, metadata, author,
          created_at, updated_at, expires_at, version, deleted_at, workspace_id, visibility, created_by,
          updated_by;

-- name: tombstone_memory
UPDATE memories SET deleted_at = %(now)s, updated_at = %(now)s, updated_by = %(updated_by)s,
       version = version + 1
 WHERE id = %(id)s AND deleted_at IS NULL
RETURNING id, content, content_hash, kind, tags, project, importance, metadata, author,
          created_at, updated_at, expires_at, version, deleted_at, workspace_id, visibility, created_by,
          updated_by;

-- name: tombstone_expired
-- A duplicate that has expired, tombstoned exactly as tombstone_memory does (delete_memory) so that its
-- content can be stored again: an expired memory blocks its content no more than a deleted one. Run as the
-- system (a member may not otherwise change a teammate's team memory), so it checks here what row-level
-- security would: the caller is a member of the workspace, and the memory is a team one or the caller's.
UPDATE memories SET deleted_at = %(now)s, updated_at = %(now)s, updated_by = %(updated_by)s,
       version = version + 1
 WHERE id = %(id)s AND deleted_at IS NULL AND expires_at <= %(now)s
   AND workspace_id IN (SELECT stackmemory_workspaces('member'))
   AND (visibility = 'team' OR created_by = stackmemory_user())
RETURNING id;

-- name: list_memories
SELECT id, content, content_hash, kind, tags, project, importance, metadata, author,
       created_at, updated_at, expires_at, version, deleted_at, workspace_id, visibility, created_by, updated_by
  FROM memories
 WHERE deleted_at IS NULL
   AND (%(cursor)s::text IS NULL OR id < %(cursor)s::text)
   AND (%(project)s::text IS NULL OR project = %(project)s::text)
   AND (%(kinds)s::text[] IS NULL OR kind = ANY (%(kinds)s::text[]))
   AND (%(tags)s::jsonb IS NULL OR tags @> %(tags)s::jsonb)
   AND (%(since)s::timestamptz IS NULL OR created_at >= %(since)s::timestamptz)
   AND (%(until)s::timestamptz IS NULL OR created_at < %(until)s::timestamptz)
   AND (expires_at IS NULL OR expires_at > %(now)s::timestamptz)
   AND workspace_id = ANY (%(workspaces)s::text[])
   AND (visibility = 'team' OR created_by = %(user_id)s::text)
 ORDER BY id DESC
 LIMIT %(limit)s;

-- name: top_memories
SELECT id, content, content_hash, kind, tags, project, importance, metadata, author,
       created_at, updated_at, expires_at, version, deleted_at, workspace_id, visibility, created_by, updated_by
  FROM memories
 WHERE deleted_at IS NULL
   AND (%(project)s::text IS NULL OR project = %(project)s::text)
   AND (%(kinds)s::text[] IS NULL OR kind = ANY (%(kinds)s::text[]))
   AND (%(tags)s::jsonb IS NULL OR tags @> %(tags)s::jsonb)
   AND (%(since)s::timestamptz IS NULL OR created_at >= %(since)s::timestamptz)
   AND (%(until)s::timestamptz IS NULL OR created_at < %(until)s::timestamptz)
   AND (expires_at IS NULL OR expires_at > %(now)s::timestamptz)
   AND workspace_id = ANY (%(workspaces)s::text[])
   AND (visibility = 'team' OR created_by = %(user_id)s::text)
 ORDER BY importance DESC, updated_at DESC
 LIMIT %(limit)s;

-- name: search_keyword
-- websearch_to_tsquery never raises on odd input; a query of only stop words is empty and matches nothing.
-- Only the %(pool)s most recent matches are ranked: an OR of common words can match a large share of the
-- table, and reading and ranking every match is what made this query slow (31 ms vs 3 ms at 100k rows).
-- The planner walks the id index newest-first for common words and uses the GIN index for rare ones.
-- Matches of the query's rare words (those not in %(common)s, see stackmemory_common_words) older than
-- that are ranked too (up to %(rare)s, what a rare word has at most), through the GIN index, so a rare
-- word is never drowned out by newer matches of a common one. When the recent part holds fewer than %(pool)s rows it holds every match, and the rare
-- part adds nothing. ts_rank knows nothing of how rare a word is (BM25, on SQLite, does), so the rare
-- words' share is counted twice: a memory that has the rare word outranks one with only the common word.
-- Only ids and the tsvector are carried through the ranking; the page's rows are read at the end.
-- visible_memories, not memories: under row-level security the GIN index cannot serve @@ (migration 0009).
-- tags and metadata come back as text: most candidates are never shown, so they are parsed only when needed.
WITH mine AS NOT MATERIALIZED (  -- inlined into each use below, so each is planned with its own limit
    SELECT id, search FROM visible_memories
     WHERE deleted_at IS NULL
       AND (%(project)s::text IS NULL OR project = %(project)s::text)
       AND (%(kinds)s::text[] IS NULL OR kind = ANY (%(kinds)s::text[]))
       AND (%(tags)s::jsonb IS NULL OR tags @> %(tags)s::jsonb)
       AND (%(since)s::timestamptz IS NULL OR created_at >= %(since)s::timestamptz)
       AND (%(until)s::timestamptz IS NULL OR created_at < %(until)s::timestamptz)
       AND (expires_at IS NULL OR expires_at > %(now)s::timestamptz)
       AND workspace_id = ANY (%(workspaces)s::text[])
       AND (visibility = 'team' OR created_by = %(user_id)s::text)
), recent AS (
    SELECT id, search FROM mine
     WHERE search @@ websearch_to_tsquery('english', %(q)s)
     ORDER BY id DESC
     LIMIT %(pool)s
), rare AS (
    SELECT string_agg('''' || replace(replace(w.lexeme, '\', '\\'), '''', '''''') || '''', ' | ')::tsquery
           AS query
      FROM unnest(tsvector_to_array(to_tsvector('english', %(q)s))) AS w (lexeme)
     WHERE w.lexeme <> ALL (%(common)s::text[])
), older AS (
    SELECT id, search FROM mine
     WHERE search @@ (SELECT query FROM rare)
       AND (SELECT count(*) FROM recent) = %(pool)s
       AND id < (SELECT min(id) FROM recent)
     ORDER BY id DESC
     LIMIT %(rare)s
), ranked AS (
    SELECT c.id, ts_rank(c.search, websearch_to_tsquery('english', %(q)s))
                 + coalesce(ts_rank(c.search, (SELECT query FROM rare)), 0) AS score
      FROM (SELECT * FROM recent UNION ALL SELECT * FROM older) AS c
     ORDER BY score DESC, c.id DESC
     LIMIT %(limit)s
)
SELECT m.id, m.content, m.content_hash, m.kind, m.tags::text AS tags, m.project, m.importance,
       m.metadata::text AS metadata, m.author,
       m.created_at, m.updated_at, m.expires_at, m.version, m.deleted_at, m.workspace_id, m.visibility,
       m.created_by, m.updated_by, r.score
  FROM ranked AS r JOIN visible_memories AS m ON m.id = r.id
 ORDER BY r.score DESC, m.id DESC;

-- name: common_words
SELECT stackmemory_common_words(%(min_rows)s) AS word;

-- name: stats
-- Counts of what the caller can see (row-level security would hide the rest anyway).
WITH mine AS (
    SELECT deleted_at, expires_at, project FROM memories
     WHERE workspace_id = ANY (%(workspaces)s::text[])
       AND (visibility = 'team' OR created_by = %(user_id)s::text)
)
SELECT
    (SELECT count(*) FROM mine
      WHERE deleted_at IS NULL AND (expires_at IS NULL OR expires_at > %(now)s::timestamptz)) AS live,
    (SELECT count(*) FROM mine WHERE deleted_at IS NOT NULL) AS deleted,
    (SELECT count(*) FROM mine WHERE deleted_at IS NULL AND expires_at <= %(now)s::timestamptz) AS expired,
    (SELECT count(DISTINCT project) FROM mine WHERE deleted_at IS NULL) AS projects;

-- name: count_by_kind
SELECT kind, count(*) AS n FROM memories
 WHERE deleted_at IS NULL AND (expires_at IS NULL OR expires_at > %(now)s::timestamptz)
   AND workspace_id = ANY (%(workspaces)s::text[])
   AND (visibility = 'team' OR created_by = %(user_id)s::text)
 GROUP BY kind;

-- name: get_meta
SELECT value FROM meta WHERE key = %(key)s;

-- name: set_meta
INSERT INTO meta (key, value) VALUES (%(key)s, %(value)s) ON CONFLICT (key) DO UPDATE SET value = excluded.value;

-- name: delete_other_vectors
DELETE FROM memory_vectors WHERE model <> %(model)s;

-- name: create_vector_index
-- {dim} and {name} are composed with psycopg.sql (a literal and an identifier), never from user input.
CREATE INDEX IF NOT EXISTS {name} ON memory_vectors USING hnsw ((embedding::vector({dim})) vector_cosine_ops);

-- name: analyze_bulk_loaded
ANALYZE memories, memory_vectors;

-- name: index_build_memory
SELECT set_config('maintenance_work_mem', %(memory)s, true);

-- name: put_vector
INSERT INTO memory_vectors (memory_id, model, embedding)
SELECT id, %(model)s, %(embedding)s::vector FROM memories WHERE id = %(memory_id)s AND deleted_at IS NULL
ON CONFLICT (memory_id) DO UPDATE SET model = excluded.model, embedding = excluded.embedding;

-- name: live_contents
SELECT id, content FROM memories WHERE id = ANY (%(ids)s::text[]) AND deleted_at IS NULL;

-- name: written_in_a_row
-- For each candidate, the live memory written just before it in its project: one step back along
-- memories_project_id, which is the only index that yields (project, id) descending below a row. The
-- project is compared after the step, not in it: with `q.project = m.project` inside, the ordering needs
-- only id, and on a table of few projects the planner walked memories_live_id back from the newest row
-- instead (2.5 s for 150 candidates at 100k memories, 16 ms each). A step that lands in another project
-- means the candidate is its project's first memory. A pair counts when that memory is a candidate too,
-- of the same author and workspace.
SELECT p.id AS earlier, m.id AS later
  FROM memories AS m
  CROSS JOIN LATERAL (SELECT q.id, q.project, q.workspace_id, q.created_by, q.created_at FROM memories AS q
                       WHERE q.deleted_at IS NULL AND (q.project, q.id) < (m.project, m.id)
                       ORDER BY q.project DESC, q.id DESC LIMIT 1) AS p
 WHERE m.id = ANY (%(ids)s::text[]) AND m.deleted_at IS NULL
   AND p.project = m.project AND p.id = ANY (%(ids)s::text[])
   AND p.workspace_id = m.workspace_id AND p.created_by = m.created_by
   AND m.created_at - p.created_at <= %(within)s;

-- name: count_unembedded
-- The vector is looked up per memory through memory_vectors' primary key, a plan that cannot go wrong:
-- written as NOT EXISTS, a freshly bulk-loaded memory_vectors with no statistics yet made the planner pick a
-- nested loop over a scan of the whole table (23 s at 20k memories, quadratic beyond).
SELECT count(*) AS n FROM memories AS m
 WHERE m.deleted_at IS NULL
   AND (SELECT v.model FROM memory_vectors AS v WHERE v.memory_id = m.id) IS DISTINCT FROM %(model)s;

-- name: unembedded_ids
-- Walks the id index and probes memory_vectors' primary key per memory (see count_unembedded).
SELECT m.id FROM memories AS m
 WHERE m.deleted_at IS NULL AND m.id > %(after)s
   AND (SELECT v.model FROM memory_vectors AS v WHERE v.memory_id = m.id) IS DISTINCT FROM %(model)s
 ORDER BY m.id LIMIT %(limit)s;

-- name: search_vector
-- {dim} is the model's dimension as a literal: the HNSW index is on this exact cast. Run with
-- hnsw.iterative_scan on, so filters that reject many neighbours still fill the page (pgvector 0.8).
-- tags and metadata come back as text: most candidates are never shown, so they are parsed only when needed.
SELECT m.id, m.content, m.content_hash, m.kind, m.tags::text AS tags, m.project, m.importance,
       m.metadata::text AS metadata, m.author,
       m.created_at, m.updated_at, m.expires_at, m.version, m.deleted_at, m.workspace_id, m.visibility,
       m.created_by, m.updated_by,
       1 - (v.embedding::vector({dim}) <=> %(embedding)s::vector({dim})) AS score
  FROM memory_vectors AS v JOIN memories AS m ON m.id = v.memory_id
 WHERE v.model = %(model)s
   AND m.deleted_at IS NULL
   AND (%(project)s::text IS NULL OR m.project = %(project)s::text)
   AND (%(kinds)s::text[] IS NULL OR m.kind = ANY (%(kinds)s::text[]))
   AND (%(tags)s::jsonb IS NULL OR m.tags @> %(tags)s::jsonb)
   AND (%(since)s::timestamptz IS NULL OR m.created_at >= %(since)s::timestamptz)
   AND (%(until)s::timestamptz IS NULL OR m.created_at < %(until)s::timestamptz)
   AND (m.expires_at IS NULL OR m.expires_at > %(now)s::timestamptz)
   AND m.workspace_id = ANY (%(workspaces)s::text[])
   AND (m.visibility = 'team' OR m.created_by = %(user_id)s::text)
 ORDER BY v.embedding::vector({dim}) <=> %(embedding)s::vector({dim})
 LIMIT %(limit)s;

-- name: cache_get
SELECT value FROM cache WHERE key = %(key)s AND expires_at > now();

-- name: cache_put
INSERT INTO cache (key, value, expires_at) VALUES (%(key)s, %(value)s, now() + make_interval(secs => %(ttl)s))
ON CONFLICT (key) DO UPDATE SET value = excluded.value, expires_at = excluded.expires_at;

-- name: cache_trim
-- Expired entries go first; beyond %(max_rows)s entries, those closest to expiry go too.
DELETE FROM cache WHERE expires_at <= now()
   OR key IN (SELECT key FROM cache ORDER BY expires_at DESC OFFSET %(max_rows)s);
