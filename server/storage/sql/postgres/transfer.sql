-- Named queries for moving data (export, import, migrate, backup) on PostgreSQL; see server/storage/kinds.py.
-- Run as the system (row-level security lets it see every workspace). JSON and vectors are bound as text
-- and cast here; vectors are read in pgvector's binary form (vector_send: dimension, 0, big-endian float4s),
-- which is exact and cheap. Writes of what belongs to a memory check the memory is there, so a memory
-- merged into an existing one takes nothing with it.

-- name: snapshot
-- The first statement of a read-only transaction that every read of an export or migration shares.
SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY;

-- name: export_snapshot
SELECT pg_export_snapshot() AS id;

-- name: server_version
SELECT current_setting('server_version_num')::int AS num;

-- name: is_empty
SELECT NOT EXISTS (SELECT 1 FROM memories)
       AND NOT EXISTS (SELECT 1 FROM users WHERE id <> %(local_user)s)
       AND NOT EXISTS (SELECT 1 FROM workspaces WHERE id <> %(local_workspace)s) AS empty;

-- name: workspace_users
-- Everyone one workspace's records mention: members, its owner, authors, editors.
SELECT user_id AS id FROM memberships WHERE workspace_id = %(workspace)s
UNION SELECT personal_of FROM workspaces WHERE id = %(workspace)s AND personal_of IS NOT NULL
UNION SELECT created_by FROM memories WHERE workspace_id = %(workspace)s
UNION SELECT updated_by FROM memories WHERE workspace_id = %(workspace)s
UNION SELECT h.changed_by FROM memory_history AS h JOIN memories AS m ON m.id = h.memory_id
       WHERE m.workspace_id = %(workspace)s;

-- name: read_user
SELECT id, name, created_at, disabled_at FROM users ORDER BY id COLLATE "C";

-- name: read_workspace
SELECT id, name, personal_of, created_at FROM workspaces ORDER BY id COLLATE "C";

-- name: read_membership
SELECT workspace_id, user_id, role, created_at FROM memberships ORDER BY workspace_id, user_id;

-- name: read_memory
SELECT id, content, content_hash, kind, tags, project, importance, metadata, author, created_at, updated_at,
       expires_at, version, deleted_at, workspace_id, visibility, created_by, updated_by, dedup_owner
  FROM memories
 WHERE id > %(after)s AND (%(workspace)s::text IS NULL OR workspace_id = %(workspace)s::text)
 ORDER BY id LIMIT %(limit)s;

-- name: memory_by_id
SELECT id, content, content_hash, kind, tags, project, importance, metadata, author, created_at, updated_at,
       expires_at, version, deleted_at, workspace_id, visibility, created_by, updated_by, dedup_owner
  FROM memories WHERE id = ANY (%(ids)s::text[]);

-- name: count_memory
SELECT count(*) AS n FROM memories WHERE %(workspace)s::text IS NULL OR workspace_id = %(workspace)s::text;

-- name: read_memory_history
SELECT memory_id, version, content, kind, tags, project, importance, metadata, visibility, changed_by, changed_at
  FROM memory_history WHERE memory_id = ANY (%(ids)s::text[])
 ORDER BY memory_id, version;

-- name: read_vector
SELECT memory_id, model, vector_send(embedding) AS vector FROM memory_vectors
 WHERE memory_id = ANY (%(ids)s::text[]) AND model = %(model)s
 ORDER BY memory_id;

-- name: live_duplicate
SELECT id FROM memories
 WHERE workspace_id = %(workspace_id)s AND dedup_owner = %(dedup_owner)s AND project = %(project)s
   AND content_hash = %(content_hash)s AND deleted_at IS NULL;

-- name: merge_user
-- An account on both sides keeps the earlier creation time.
INSERT INTO users (id, name, created_at, disabled_at) VALUES (%(id)s, %(name)s, %(created_at)s, %(disabled_at)s)
ON CONFLICT (id) DO UPDATE SET created_at = least(users.created_at, excluded.created_at);

-- name: merge_workspace
INSERT INTO workspaces (id, name, personal_of, created_at)
VALUES (%(id)s, %(name)s, %(personal_of)s, %(created_at)s)
ON CONFLICT (id) DO UPDATE SET created_at = least(workspaces.created_at, excluded.created_at);

-- name: merge_membership
INSERT INTO memberships (workspace_id, user_id, role, created_at)
VALUES (%(workspace_id)s, %(user_id)s, %(role)s, %(created_at)s)
ON CONFLICT (workspace_id, user_id) DO UPDATE SET created_at = least(memberships.created_at, excluded.created_at);

-- name: read_task
SELECT id, workspace_id, title, description, status, priority, assignee, labels, memory_ids, created_by,
       updated_by, created_at, updated_at, version, linear_id, linear_identifier, linear_url,
       linear_updated_at, linear_pending_id, synced, dirty, conflict, sync_error
  FROM tasks
 WHERE id > %(after)s AND (%(workspace)s::text IS NULL OR workspace_id = %(workspace)s::text)
 ORDER BY id LIMIT %(limit)s;

-- name: task_by_id
SELECT id, workspace_id, title, description, status, priority, assignee, labels, memory_ids, created_by,
       updated_by, created_at, updated_at, version, linear_id, linear_identifier, linear_url,
       linear_updated_at, linear_pending_id, synced, dirty, conflict, sync_error
  FROM tasks WHERE id = ANY (%(ids)s::text[]);

-- name: count_task
SELECT count(*) AS n FROM tasks WHERE %(workspace)s::text IS NULL OR workspace_id = %(workspace)s::text;

-- Memories, their history, vectors and tasks arrive by COPY into a table of the transaction's own, then
-- move in one statement each: far cheaper than a statement per row. Vectors are copied in pgvector's binary
-- form (exact, and no text to format or parse). ORDER BY keeps what the triggers record in a stable order.
-- DO NOTHING without a conflict target also skips a memory whose content is already there live
-- (memories_dedup): the engine reports it merged. What belongs to a memory moves only if the memory is there.

-- name: stage_memory
CREATE TEMP TABLE IF NOT EXISTS transfer_memory (LIKE memories) ON COMMIT DROP;

-- name: copy_memory
COPY transfer_memory (id, content, content_hash, kind, tags, project, importance, metadata, author, created_at, updated_at,
    expires_at, version, deleted_at, workspace_id, visibility, created_by, updated_by, dedup_owner) FROM STDIN;

-- name: insert_memory
INSERT INTO memories (id, content, content_hash, kind, tags, project, importance, metadata, author, created_at, updated_at,
    expires_at, version, deleted_at, workspace_id, visibility, created_by, updated_by, dedup_owner)
SELECT s.id, s.content, s.content_hash, s.kind, s.tags, s.project, s.importance, s.metadata, s.author,
       s.created_at, s.updated_at, s.expires_at, s.version, s.deleted_at, s.workspace_id, s.visibility,
       s.created_by, s.updated_by, s.dedup_owner
  FROM transfer_memory AS s
 ORDER BY s.id
ON CONFLICT DO NOTHING;

-- name: replace_memory
INSERT INTO memories (id, content, content_hash, kind, tags, project, importance, metadata, author, created_at, updated_at,
    expires_at, version, deleted_at, workspace_id, visibility, created_by, updated_by, dedup_owner)
SELECT s.id, s.content, s.content_hash, s.kind, s.tags, s.project, s.importance, s.metadata, s.author,
       s.created_at, s.updated_at, s.expires_at, s.version, s.deleted_at, s.workspace_id, s.visibility,
       s.created_by, s.updated_by, s.dedup_owner
  FROM transfer_memory AS s
 ORDER BY s.id
ON CONFLICT (id) DO UPDATE SET
    content = excluded.content, content_hash = excluded.content_hash, kind = excluded.kind,
    tags = excluded.tags, project = excluded.project, importance = excluded.importance,
    metadata = excluded.metadata, author = excluded.author, created_at = excluded.created_at,
    updated_at = excluded.updated_at, expires_at = excluded.expires_at, version = excluded.version,
    deleted_at = excluded.deleted_at, workspace_id = excluded.workspace_id,
    visibility = excluded.visibility, created_by = excluded.created_by, updated_by = excluded.updated_by,
    dedup_owner = excluded.dedup_owner;

-- name: unstage_memory
TRUNCATE transfer_memory;

-- name: stage_memory_history
CREATE TEMP TABLE IF NOT EXISTS transfer_memory_history (LIKE memory_history) ON COMMIT DROP;

-- name: copy_memory_history
COPY transfer_memory_history (memory_id, version, content, kind, tags, project, importance, metadata, visibility, changed_by,
    changed_at) FROM STDIN;

-- name: insert_memory_history
INSERT INTO memory_history (memory_id, version, content, kind, tags, project, importance, metadata, visibility, changed_by,
    changed_at)
SELECT s.memory_id, s.version, s.content, s.kind, s.tags, s.project, s.importance, s.metadata,
       s.visibility, s.changed_by, s.changed_at
  FROM transfer_memory_history AS s
 WHERE EXISTS (SELECT 1 FROM memories AS m WHERE m.id = s.memory_id)
 ORDER BY s.memory_id, s.version
ON CONFLICT DO NOTHING;

-- name: replace_memory_history
INSERT INTO memory_history (memory_id, version, content, kind, tags, project, importance, metadata, visibility, changed_by,
    changed_at)
SELECT s.memory_id, s.version, s.content, s.kind, s.tags, s.project, s.importance, s.metadata,
       s.visibility, s.changed_by, s.changed_at
  FROM transfer_memory_history AS s
 WHERE EXISTS (SELECT 1 FROM memories AS m WHERE m.id = s.memory_id)
 ORDER BY s.memory_id, s.version
ON CONFLICT (memory_id, version) DO UPDATE SET
    content = excluded.content, kind = excluded.kind, tags = excluded.tags, project = excluded.project,
    importance = excluded.importance, metadata = excluded.metadata, visibility = excluded.visibility,
    changed_by = excluded.changed_by, changed_at = excluded.changed_at;

-- name: unstage_memory_history
TRUNCATE transfer_memory_history;

-- name: stage_vector
CREATE TEMP TABLE IF NOT EXISTS transfer_vector (LIKE memory_vectors) ON COMMIT DROP;

-- name: copy_vector
COPY transfer_vector (memory_id, model, embedding) FROM STDIN (FORMAT BINARY);

-- name: insert_vector
INSERT INTO memory_vectors (memory_id, model, embedding)
SELECT s.memory_id, s.model, s.embedding
  FROM transfer_vector AS s
 WHERE EXISTS (SELECT 1 FROM memories AS m WHERE m.id = s.memory_id AND m.deleted_at IS NULL)
 ORDER BY s.memory_id
ON CONFLICT DO NOTHING;

-- name: replace_vector
INSERT INTO memory_vectors (memory_id, model, embedding)
SELECT s.memory_id, s.model, s.embedding
  FROM transfer_vector AS s
 WHERE EXISTS (SELECT 1 FROM memories AS m WHERE m.id = s.memory_id AND m.deleted_at IS NULL)
 ORDER BY s.memory_id
ON CONFLICT (memory_id) DO UPDATE SET
    model = excluded.model, embedding = excluded.embedding;

-- name: unstage_vector
TRUNCATE transfer_vector;

-- name: stage_task
CREATE TEMP TABLE IF NOT EXISTS transfer_task (LIKE tasks) ON COMMIT DROP;

-- name: copy_task
COPY transfer_task (id, workspace_id, title, description, status, priority, assignee, labels, memory_ids, created_by,
    updated_by, created_at, updated_at, version, linear_id, linear_identifier, linear_url,
    linear_updated_at, linear_pending_id, synced, dirty, conflict, sync_error) FROM STDIN;

-- name: insert_task
INSERT INTO tasks (id, workspace_id, title, description, status, priority, assignee, labels, memory_ids, created_by,
    updated_by, created_at, updated_at, version, linear_id, linear_identifier, linear_url,
    linear_updated_at, linear_pending_id, synced, dirty, conflict, sync_error)
SELECT s.id, s.workspace_id, s.title, s.description, s.status, s.priority, s.assignee, s.labels,
       s.memory_ids, s.created_by, s.updated_by, s.created_at, s.updated_at, s.version, s.linear_id,
       s.linear_identifier, s.linear_url, s.linear_updated_at, s.linear_pending_id, s.synced, s.dirty,
       s.conflict, s.sync_error
  FROM transfer_task AS s
 ORDER BY s.id
ON CONFLICT DO NOTHING;

-- name: replace_task
INSERT INTO tasks (id, workspace_id, title, description, status, priority, assignee, labels, memory_ids, created_by,
    updated_by, created_at, updated_at, version, linear_id, linear_identifier, linear_url,
    linear_updated_at, linear_pending_id, synced, dirty, conflict, sync_error)
SELECT s.id, s.workspace_id, s.title, s.description, s.status, s.priority, s.assignee, s.labels,
       s.memory_ids, s.created_by, s.updated_by, s.created_at, s.updated_at, s.version, s.linear_id,
       s.linear_identifier, s.linear_url, s.linear_updated_at, s.linear_pending_id, s.synced, s.dirty,
       s.conflict, s.sync_error
  FROM transfer_task AS s
 ORDER BY s.id
ON CONFLICT (id) DO UPDATE SET
    workspace_id = excluded.workspace_id, title = excluded.title, description = excluded.description,
    status = excluded.status, priority = excluded.priority, assignee = excluded.assignee,
    labels = excluded.labels, memory_ids = excluded.memory_ids, created_by = excluded.created_by,
    updated_by = excluded.updated_by, created_at = excluded.created_at, updated_at = excluded.updated_at,
    version = excluded.version, linear_id = excluded.linear_id,
    linear_identifier = excluded.linear_identifier, linear_url = excluded.linear_url,
    linear_updated_at = excluded.linear_updated_at, linear_pending_id = excluded.linear_pending_id,
    synced = excluded.synced, dirty = excluded.dirty, conflict = excluded.conflict,
    sync_error = excluded.sync_error;

-- name: unstage_task
TRUNCATE transfer_task;

-- name: drop_embed_jobs
-- These memories arrived with their vectors: the jobs their insert triggers queued are not needed.
DELETE FROM jobs WHERE kind = 'embed' AND status = 'queued' AND key = ANY (%(ids)s::text[]);
