-- Named queries for moving data (export, import, migrate, backup) on SQLite; see server/storage/kinds.py.
-- :ids is a JSON array. Reads list every column of a kind in its declared order. Writes of what belongs
-- to a memory check the memory is there, so a memory merged into an existing one takes nothing with it.

-- name: schema_version
SELECT coalesce(max(version), 0) AS version FROM schema_migrations;

-- name: has_schema
SELECT count(*) AS n FROM sqlite_master WHERE type = 'table' AND name = 'schema_migrations';

-- name: get_meta
SELECT value FROM meta WHERE key = :key;

-- name: is_empty
SELECT NOT EXISTS (SELECT 1 FROM memories)
       AND NOT EXISTS (SELECT 1 FROM users WHERE id <> :local_user)
       AND NOT EXISTS (SELECT 1 FROM workspaces WHERE id <> :local_workspace) AS empty;

-- name: workspace_users
-- Everyone one workspace's records mention: members, its owner, authors, editors.
SELECT user_id AS id FROM memberships WHERE workspace_id = :workspace
UNION SELECT personal_of FROM workspaces WHERE id = :workspace AND personal_of IS NOT NULL
UNION SELECT created_by FROM memories WHERE workspace_id = :workspace
UNION SELECT updated_by FROM memories WHERE workspace_id = :workspace
UNION SELECT h.changed_by FROM memory_history AS h JOIN memories AS m ON m.id = h.memory_id
       WHERE m.workspace_id = :workspace;

-- name: read_user
SELECT id, name, created_at, disabled_at FROM users ORDER BY id;

-- name: read_workspace
SELECT id, name, personal_of, created_at FROM workspaces ORDER BY id;

-- name: read_membership
SELECT workspace_id, user_id, role, created_at FROM memberships ORDER BY workspace_id, user_id;

-- name: read_memory
SELECT id, content, content_hash, kind, tags, project, importance, metadata, author, created_at, updated_at,
       expires_at, version, deleted_at, workspace_id, visibility, created_by, updated_by, dedup_owner
  FROM memories
 WHERE id > :after AND (:workspace IS NULL OR workspace_id = :workspace)
 ORDER BY id LIMIT :limit;

-- name: memory_by_id
SELECT id, content, content_hash, kind, tags, project, importance, metadata, author, created_at, updated_at,
       expires_at, version, deleted_at, workspace_id, visibility, created_by, updated_by, dedup_owner
  FROM memories WHERE id IN (SELECT value FROM json_each(:ids));

-- name: count_memory
SELECT count(*) AS n FROM memories WHERE :workspace IS NULL OR workspace_id = :workspace;

-- name: read_memory_history
SELECT memory_id, version, content, kind, tags, project, importance, metadata, visibility, changed_by, changed_at
  FROM memory_history WHERE memory_id IN (SELECT value FROM json_each(:ids))
 ORDER BY memory_id, version;

-- name: read_vector
SELECT memory_id, model, vector FROM memory_vectors
 WHERE memory_id IN (SELECT value FROM json_each(:ids)) AND model = :model
 ORDER BY memory_id;

-- name: live_duplicate
SELECT id FROM memories
 WHERE workspace_id = :workspace_id AND dedup_owner = :dedup_owner AND project = :project
   AND content_hash = :content_hash AND deleted_at IS NULL;

-- name: merge_user
-- An account on both sides keeps the earlier creation time; a clash on the name alone is left alone.
INSERT INTO users (id, name, created_at, disabled_at) VALUES (:id, :name, :created_at, :disabled_at)
ON CONFLICT (id) DO UPDATE SET created_at = min(created_at, excluded.created_at)
ON CONFLICT DO NOTHING;

-- name: merge_workspace
INSERT INTO workspaces (id, name, personal_of, created_at) VALUES (:id, :name, :personal_of, :created_at)
ON CONFLICT (id) DO UPDATE SET created_at = min(created_at, excluded.created_at)
ON CONFLICT DO NOTHING;

-- name: merge_membership
INSERT INTO memberships (workspace_id, user_id, role, created_at) VALUES (:workspace_id, :user_id, :role, :created_at)
ON CONFLICT (workspace_id, user_id) DO UPDATE SET created_at = min(created_at, excluded.created_at);

-- name: insert_memory
-- DO NOTHING without a target also skips a live duplicate (memories_dedup): the engine reports it merged.
INSERT INTO memories (id, content, content_hash, kind, tags, project, importance, metadata, author,
                      created_at, updated_at, expires_at, version, deleted_at, workspace_id, visibility,
                      created_by, updated_by, dedup_owner)
VALUES (:id, :content, :content_hash, :kind, :tags, :project, :importance, :metadata, :author,
        :created_at, :updated_at, :expires_at, :version, :deleted_at, :workspace_id, :visibility,
        :created_by, :updated_by, :dedup_owner)
ON CONFLICT DO NOTHING;

-- name: replace_memory
INSERT INTO memories (id, content, content_hash, kind, tags, project, importance, metadata, author,
                      created_at, updated_at, expires_at, version, deleted_at, workspace_id, visibility,
                      created_by, updated_by, dedup_owner)
VALUES (:id, :content, :content_hash, :kind, :tags, :project, :importance, :metadata, :author,
        :created_at, :updated_at, :expires_at, :version, :deleted_at, :workspace_id, :visibility,
        :created_by, :updated_by, :dedup_owner)
ON CONFLICT (id) DO UPDATE SET
    content = excluded.content, content_hash = excluded.content_hash, kind = excluded.kind,
    tags = excluded.tags, project = excluded.project, importance = excluded.importance,
    metadata = excluded.metadata, author = excluded.author, created_at = excluded.created_at,
    updated_at = excluded.updated_at, expires_at = excluded.expires_at, version = excluded.version,
    deleted_at = excluded.deleted_at, workspace_id = excluded.workspace_id, visibility = excluded.visibility,
    created_by = excluded.created_by, updated_by = excluded.updated_by, dedup_owner = excluded.dedup_owner;

-- name: insert_memory_history
INSERT INTO memory_history (memory_id, version, content, kind, tags, project, importance, metadata,
                            visibility, changed_by, changed_at)
SELECT :memory_id, :version, :content, :kind, :tags, :project, :importance, :metadata, :visibility,
       :changed_by, :changed_at
 WHERE EXISTS (SELECT 1 FROM memories WHERE id = :memory_id)
ON CONFLICT DO NOTHING;

-- name: replace_memory_history
INSERT OR REPLACE INTO memory_history (memory_id, version, content, kind, tags, project, importance, metadata,
                                       visibility, changed_by, changed_at)
SELECT :memory_id, :version, :content, :kind, :tags, :project, :importance, :metadata, :visibility,
       :changed_by, :changed_at
 WHERE EXISTS (SELECT 1 FROM memories WHERE id = :memory_id);

-- name: insert_vector
INSERT INTO memory_vectors (memory_id, model, vector)
SELECT :memory_id, :model, :vector WHERE EXISTS (SELECT 1 FROM memories WHERE id = :memory_id AND deleted_at IS NULL)
ON CONFLICT DO NOTHING;

-- name: replace_vector
-- REPLACE gives the row a new seq, so every server's in-process vector index picks the new vector up.
INSERT OR REPLACE INTO memory_vectors (memory_id, model, vector)
SELECT :memory_id, :model, :vector WHERE EXISTS (SELECT 1 FROM memories WHERE id = :memory_id AND deleted_at IS NULL);

-- name: read_task
SELECT id, workspace_id, title, description, status, priority, assignee, labels, memory_ids, created_by,
       updated_by, created_at, updated_at, version, linear_id, linear_identifier, linear_url,
       linear_updated_at, linear_pending_id, synced, dirty, conflict, sync_error
  FROM tasks
 WHERE id > :after AND (:workspace IS NULL OR workspace_id = :workspace)
 ORDER BY id LIMIT :limit;

-- name: task_by_id
SELECT id, workspace_id, title, description, status, priority, assignee, labels, memory_ids, created_by,
       updated_by, created_at, updated_at, version, linear_id, linear_identifier, linear_url,
       linear_updated_at, linear_pending_id, synced, dirty, conflict, sync_error
  FROM tasks WHERE id IN (SELECT value FROM json_each(:ids));

-- name: count_task
SELECT count(*) AS n FROM tasks WHERE :workspace IS NULL OR workspace_id = :workspace;

-- name: insert_task
INSERT INTO tasks (id, workspace_id, title, description, status, priority, assignee, labels, memory_ids,
                   created_by, updated_by, created_at, updated_at, version, linear_id, linear_identifier,
                   linear_url, linear_updated_at, linear_pending_id, synced, dirty, conflict, sync_error)
VALUES (:id, :workspace_id, :title, :description, :status, :priority, :assignee, :labels, :memory_ids,
        :created_by, :updated_by, :created_at, :updated_at, :version, :linear_id, :linear_identifier,
        :linear_url, :linear_updated_at, :linear_pending_id, :synced, :dirty, :conflict, :sync_error)
ON CONFLICT DO NOTHING;

-- name: replace_task
INSERT INTO tasks (id, workspace_id, title, description, status, priority, assignee, labels, memory_ids,
                   created_by, updated_by, created_at, updated_at, version, linear_id, linear_identifier,
                   linear_url, linear_updated_at, linear_pending_id, synced, dirty, conflict, sync_error)
VALUES (:id, :workspace_id, :title, :description, :status, :priority, :assignee, :labels, :memory_ids,
        :created_by, :updated_by, :created_at, :updated_at, :version, :linear_id, :linear_identifier,
        :linear_url, :linear_updated_at, :linear_pending_id, :synced, :dirty, :conflict, :sync_error)
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

-- name: drop_embed_jobs
-- These memories arrived with their vectors: the jobs their insert triggers queued are not needed.
DELETE FROM jobs WHERE kind = 'embed' AND status = 'queued' AND key IN (SELECT value FROM json_each(:ids));

-- name: tables
-- Every ordinary table, for checking a restored copy whatever its schema version.
SELECT name FROM sqlite_master
 WHERE type = 'table' AND name NOT LIKE 'sqlite_%' AND name NOT LIKE 'memories_fts%' ORDER BY name;
