-- Named queries for the SQLite adapter. Every "filter" block reads the same named parameters:
-- :project, :kinds (JSON array or NULL), :tags (JSON array or NULL, all must match), :since, :until, :now,
-- and the caller's access, which PostgreSQL also enforces with row-level security: :workspaces (JSON
-- array of workspace ids) and :user_id (private memories of anyone else never match).

-- name: insert_memory
INSERT INTO memories (id, content, content_hash, kind, tags, project, importance, metadata, author,
                      created_at, updated_at, expires_at, version, workspace_id, visibility, created_by,
                      updated_by, dedup_owner)
VALUES (:id, :content, :content_hash, :kind, :tags, :project, :importance, :metadata, :author,
        :created_at, :created_at, :expires_at, 1, :workspace_id, :visibility, :created_by, :updated_by,
        :dedup_owner)
ON CONFLICT (workspace_id, dedup_owner, project, content_hash) WHERE deleted_at IS NULL DO NOTHING
RETURNING *;

-- name: find_duplicate
SELECT * FROM memories
 WHERE workspace_id = :workspace_id AND dedup_owner = :dedup_owner AND project = :project
   AND content_hash = :content_hash AND deleted_at IS NULL;

-- name: get_memory
-- A memory the caller may not see is exactly as absent as one that does not exist.
SELECT * FROM memories
 WHERE id = :id
   AND workspace_id IN (SELECT value FROM json_each(:workspaces))
   AND (visibility = 'team' OR created_by = :user_id);

-- name: save_history
INSERT INTO memory_history (memory_id, version, content, kind, tags, project, importance, metadata,
                            visibility, changed_by, changed_at)
SELECT id, version, content, kind, tags, project, importance, metadata, visibility, :changed_by, :now
  FROM memories WHERE id = :id;

-- name: history
SELECT * FROM memory_history WHERE memory_id = :id ORDER BY version DESC LIMIT :limit;

-- name: update_memory
UPDATE memories
   SET content = :content, content_hash = :content_hash, kind = :kind, tags = :tags, project = :project,
       importance = :importance, metadata = :metadata, expires_at = :expires_at, visibility = :visibility,
       dedup_owner = :dedup_owner, updated_by = :updated_by, updated_at = :now, version = version + 1
 WHERE id = :id AND deleted_at IS NULL AND version = :version
RETURNING *;

-- name: tombstone_memory
UPDATE memories SET deleted_at = :now, updated_at = :now, updated_by = :updated_by, version = version + 1
 WHERE id = :id AND deleted_at IS NULL
RETURNING *;

-- name: tombstone_expired
-- A duplicate that has expired, tombstoned exactly as tombstone_memory does (delete_memory) so that its
-- content can be stored again: an expired memory blocks its content no more than a deleted one.
UPDATE memories SET deleted_at = :now, updated_at = :now, updated_by = :updated_by, version = version + 1
 WHERE id = :id AND deleted_at IS NULL AND expires_at <= :now
RETURNING *;

-- name: list_memories
SELECT * FROM memories
 WHERE deleted_at IS NULL
   AND (:cursor IS NULL OR id < :cursor)
   AND (:project IS NULL OR project = :project)
   AND (:kinds IS NULL OR kind IN (SELECT value FROM json_each(:kinds)))
   AND (:tags IS NULL OR NOT EXISTS (SELECT 1 FROM json_each(:tags) AS want
                                      WHERE want.value NOT IN (SELECT value FROM json_each(memories.tags))))
   AND (:since IS NULL OR created_at >= :since)
   AND (:until IS NULL OR created_at < :until)
   AND (expires_at IS NULL OR expires_at > :now)
   AND workspace_id IN (SELECT value FROM json_each(:workspaces))
   AND (visibility = 'team' OR created_by = :user_id)
 ORDER BY id DESC
 LIMIT :limit;

-- name: top_memories
SELECT * FROM memories
 WHERE deleted_at IS NULL
   AND (:project IS NULL OR project = :project)
   AND (:kinds IS NULL OR kind IN (SELECT value FROM json_each(:kinds)))
   AND (:tags IS NULL OR NOT EXISTS (SELECT 1 FROM json_each(:tags) AS want
                                      WHERE want.value NOT IN (SELECT value FROM json_each(memories.tags))))
   AND (:since IS NULL OR created_at >= :since)
   AND (:until IS NULL OR created_at < :until)
   AND (expires_at IS NULL OR expires_at > :now)
   AND workspace_id IN (SELECT value FROM json_each(:workspaces))
   AND (visibility = 'team' OR created_by = :user_id)
 ORDER BY importance DESC, updated_at DESC
 LIMIT :limit;

-- name: search_keyword
-- Only the :recent newest matches are ranked (as on PostgreSQL): the FTS index finds the rowid of the
-- :recent-th newest match cheaply, and BM25 then scores rows from there on; scoring every match of
-- common words was what made a 100k-row search take 10 ms instead of 2. Matches of the query's rare
-- words (:phrases, a JSON list, that fewer than :rare memories contain; counting stops there) older than
-- that are ranked too, so a rare word is never drowned out by newer matches of a common one. BM25 is a
-- sum over the query's words, so their score is the part their rare words earn: the same scale, without
-- the common words' share. The best :pool are joined and filtered; when filters reject too many, the
-- adapter re-runs search_keyword_all.
WITH rare AS MATERIALIZED (
    SELECT group_concat(j.value, ' OR ') AS match FROM json_each(:phrases) AS j
     WHERE (SELECT count(*) FROM (SELECT 1 FROM memories_fts WHERE memories_fts MATCH j.value LIMIT :rare)) < :rare
),
floor AS (
    SELECT coalesce(min(rowid), 0) AS lo FROM (
        SELECT rowid FROM memories_fts WHERE memories_fts MATCH :match ORDER BY rowid DESC LIMIT :recent)
),
top AS (
    SELECT rowid, bm25(memories_fts, 1.0, 0.5) AS rank FROM memories_fts
     WHERE memories_fts MATCH :match AND rowid >= (SELECT lo FROM floor)
    UNION ALL
    SELECT rowid, bm25(memories_fts, 1.0, 0.5) AS rank FROM memories_fts
     WHERE memories_fts MATCH coalesce((SELECT match FROM rare), :match)  -- no rare word: an empty range
       AND rowid < (SELECT CASE WHEN match IS NULL THEN 0 ELSE (SELECT lo FROM floor) END FROM rare)
     ORDER BY rank LIMIT :pool
)
SELECT m.*, -top.rank AS score, (SELECT count(*) FROM top) AS pooled
  FROM top JOIN memories AS m ON m.rowid = top.rowid
 WHERE m.deleted_at IS NULL
   AND (:project IS NULL OR m.project = :project)
   AND (:kinds IS NULL OR m.kind IN (SELECT value FROM json_each(:kinds)))
   AND (:tags IS NULL OR NOT EXISTS (SELECT 1 FROM json_each(:tags) AS want
                                      WHERE want.value NOT IN (SELECT value FROM json_each(m.tags))))
   AND (:since IS NULL OR m.created_at >= :since)
   AND (:until IS NULL OR m.created_at < :until)
   AND (m.expires_at IS NULL OR m.expires_at > :now)
   AND m.workspace_id IN (SELECT value FROM json_each(:workspaces))
   AND (m.visibility = 'team' OR m.created_by = :user_id)
 ORDER BY top.rank
 LIMIT :limit;

-- name: search_keyword_all
SELECT m.*, -bm25(memories_fts, 1.0, 0.5) AS score, 0 AS pooled
  FROM memories_fts
  JOIN memories AS m ON m.rowid = memories_fts.rowid
 WHERE memories_fts MATCH :match
   AND m.deleted_at IS NULL
   AND (:project IS NULL OR m.project = :project)
   AND (:kinds IS NULL OR m.kind IN (SELECT value FROM json_each(:kinds)))
   AND (:tags IS NULL OR NOT EXISTS (SELECT 1 FROM json_each(:tags) AS want
                                      WHERE want.value NOT IN (SELECT value FROM json_each(m.tags))))
   AND (:since IS NULL OR m.created_at >= :since)
   AND (:until IS NULL OR m.created_at < :until)
   AND (m.expires_at IS NULL OR m.expires_at > :now)
   AND m.workspace_id IN (SELECT value FROM json_each(:workspaces))
   AND (m.visibility = 'team' OR m.created_by = :user_id)
 ORDER BY bm25(memories_fts, 1.0, 0.5)
 LIMIT :limit;

-- name: stats
-- Counts of what the caller can see.
WITH mine AS (
    SELECT * FROM memories
     WHERE workspace_id IN (SELECT value FROM json_each(:workspaces))
       AND (visibility = 'team' OR created_by = :user_id)
)
SELECT
    (SELECT count(*) FROM mine WHERE deleted_at IS NULL AND (expires_at IS NULL OR expires_at > :now)) AS live,
    (SELECT count(*) FROM mine WHERE deleted_at IS NOT NULL) AS deleted,
    (SELECT count(*) FROM mine WHERE deleted_at IS NULL AND expires_at <= :now) AS expired,
    (SELECT count(DISTINCT project) FROM mine WHERE deleted_at IS NULL) AS projects;

-- name: count_by_kind
SELECT kind, count(*) AS n FROM memories
 WHERE deleted_at IS NULL AND (expires_at IS NULL OR expires_at > :now)
   AND workspace_id IN (SELECT value FROM json_each(:workspaces))
   AND (visibility = 'team' OR created_by = :user_id)
 GROUP BY kind;

-- name: get_meta
SELECT value FROM meta WHERE key = :key;

-- name: set_meta
INSERT INTO meta (key, value) VALUES (:key, :value) ON CONFLICT (key) DO UPDATE SET value = excluded.value;

-- name: put_vector
-- REPLACE gives the row a new seq, so every process's in-memory index picks the new vector up.
INSERT OR REPLACE INTO memory_vectors (memory_id, model, vector)
SELECT id, :model, :vector FROM memories WHERE id = :memory_id AND deleted_at IS NULL;

-- name: vectors_since
SELECT seq, memory_id, vector FROM memory_vectors WHERE model = :model AND seq > :seq ORDER BY seq LIMIT :limit;

-- name: vectors_at
-- The in-process index's candidates, by rowid; one that was replaced or deleted since is not found.
SELECT v.seq, v.memory_id, v.vector FROM memory_vectors AS v
 WHERE v.seq IN (SELECT value FROM json_each(:seqs)) AND v.model = :model;

-- name: delete_other_vectors
DELETE FROM memory_vectors WHERE model <> :model;

-- name: live_contents
SELECT m.id, m.content FROM json_each(:ids) AS j CROSS JOIN memories AS m ON m.id = j.value
 WHERE m.deleted_at IS NULL;

-- name: written_in_a_row
-- For each candidate, the live memory written just before it in its project: one step back along
-- memories_project_id, ordered as that index is. A pair counts when that memory is a candidate too, of
-- the same author and workspace.
SELECT p.id AS earlier, m.id AS later
  FROM json_each(:ids) AS j CROSS JOIN memories AS m ON m.id = j.value
  CROSS JOIN memories AS p ON p.id = (SELECT q.id FROM memories AS q
                                       WHERE q.project = m.project AND q.deleted_at IS NULL AND q.id < m.id
                                       ORDER BY q.project DESC, q.id DESC LIMIT 1)
 WHERE m.deleted_at IS NULL
   AND p.id IN (SELECT value FROM json_each(:ids))
   AND p.workspace_id = m.workspace_id AND p.created_by = m.created_by
   AND julianday(m.created_at) - julianday(p.created_at) <= :days;

-- name: count_unembedded
SELECT count(*) AS n FROM memories AS m
 WHERE m.deleted_at IS NULL
   AND NOT EXISTS (SELECT 1 FROM memory_vectors AS v WHERE v.memory_id = m.id AND v.model = :model);

-- name: unembedded_ids
SELECT m.id FROM memories AS m
 WHERE m.deleted_at IS NULL AND m.id > :after
   AND NOT EXISTS (SELECT 1 FROM memory_vectors AS v WHERE v.memory_id = m.id AND v.model = :model)
 ORDER BY m.id LIMIT :limit;

-- name: memories_in
-- Candidates from the vector index, kept only if they pass the same filters as every other search and
-- their vector is still current (a content change deletes it until the memory is embedded again).
-- CROSS JOIN keeps the ids the outer loop: left to itself, the planner walked the workspace index over
-- every memory and scanned the id list for each (1.5 s per search at 100,000 memories, not 1 ms).
SELECT m.* FROM json_each(:ids) AS j CROSS JOIN memories AS m ON m.id = j.value
  JOIN memory_vectors AS v ON v.memory_id = m.id AND v.model = :model
 WHERE m.deleted_at IS NULL
   AND (:project IS NULL OR m.project = :project)
   AND (:kinds IS NULL OR m.kind IN (SELECT value FROM json_each(:kinds)))
   AND (:tags IS NULL OR NOT EXISTS (SELECT 1 FROM json_each(:tags) AS want
                                      WHERE want.value NOT IN (SELECT value FROM json_each(m.tags))))
   AND (:since IS NULL OR m.created_at >= :since)
   AND (:until IS NULL OR m.created_at < :until)
   AND (m.expires_at IS NULL OR m.expires_at > :now)
   AND m.workspace_id IN (SELECT value FROM json_each(:workspaces))
   AND (m.visibility = 'team' OR m.created_by = :user_id);

-- name: filtered_ids
SELECT m.id FROM memories AS m
 WHERE m.deleted_at IS NULL
   AND (:project IS NULL OR m.project = :project)
   AND (:kinds IS NULL OR m.kind IN (SELECT value FROM json_each(:kinds)))
   AND (:tags IS NULL OR NOT EXISTS (SELECT 1 FROM json_each(:tags) AS want
                                      WHERE want.value NOT IN (SELECT value FROM json_each(m.tags))))
   AND (:since IS NULL OR m.created_at >= :since)
   AND (:until IS NULL OR m.created_at < :until)
   AND (m.expires_at IS NULL OR m.expires_at > :now)
   AND m.workspace_id IN (SELECT value FROM json_each(:workspaces))
   AND (m.visibility = 'team' OR m.created_by = :user_id);

-- name: search_vector
-- With sqlite-vec loaded: an exact scan of this model's vectors under the same filters as memories_in,
-- ranked as the in-process index ranks them (cosine; equal scores newest id first). A zero vector has
-- no direction: its distance is NULL, counted as 1 (score 0) as the in-process dot product gives.
-- Vectors of another length (:bytes) are skipped as the in-process index skips them. CROSS JOIN keeps
-- memories the outer loop, so only vectors of memories that pass the filters are read (a project
-- filter over 100k memories: 37 ms instead of 88); only the best :limit are joined back for content.
WITH top AS (
    SELECT m.id, coalesce(vec_distance_cosine(v.vector, :vector), 1.0) AS distance
      FROM memories AS m CROSS JOIN memory_vectors AS v ON v.memory_id = m.id
     WHERE v.model = :model AND length(v.vector) = :bytes
       AND m.deleted_at IS NULL
       AND (:project IS NULL OR m.project = :project)
       AND (:kinds IS NULL OR m.kind IN (SELECT value FROM json_each(:kinds)))
       AND (:tags IS NULL OR NOT EXISTS (SELECT 1 FROM json_each(:tags) AS want
                                          WHERE want.value NOT IN (SELECT value FROM json_each(m.tags))))
       AND (:since IS NULL OR m.created_at >= :since)
       AND (:until IS NULL OR m.created_at < :until)
       AND (m.expires_at IS NULL OR m.expires_at > :now)
       AND m.workspace_id IN (SELECT value FROM json_each(:workspaces))
       AND (m.visibility = 'team' OR m.created_by = :user_id)
     ORDER BY distance, m.id DESC
     LIMIT :limit
)
SELECT m.*, 1.0 - top.distance AS score
  FROM top JOIN memories AS m ON m.id = top.id
 ORDER BY top.distance, m.id DESC;
