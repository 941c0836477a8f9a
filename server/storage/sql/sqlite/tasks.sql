-- Named queries for tasks and Linear connections on SQLite. Times are bound as UTC ISO text; :workspaces,
-- :statuses and JSON columns are JSON text. :system = 1 is the sync acting for every workspace; otherwise
-- a query sees only the caller's workspaces (:workspaces), as PostgreSQL's row-level security does.

-- name: insert_task
INSERT INTO tasks (id, workspace_id, title, description, status, priority, assignee, labels, memory_ids,
                   created_by, updated_by, created_at, updated_at, version, linear_id, linear_identifier,
                   linear_url, linear_updated_at, synced, dirty, conflict)
VALUES (:id, :workspace_id, :title, :description, :status, :priority, :assignee, :labels, :memory_ids,
        :created_by, :updated_by, :created_at, :updated_at, :version, :linear_id, :linear_identifier,
        :linear_url, :linear_updated_at, :synced, :dirty, :conflict)
RETURNING *;

-- name: get_task
SELECT * FROM tasks
 WHERE id = :id AND (:system OR workspace_id IN (SELECT value FROM json_each(:workspaces)));

-- name: list_tasks
-- Newest first (ids are UUIDv7); :cursor is the last id of the previous page.
SELECT * FROM tasks
 WHERE workspace_id IN (SELECT value FROM json_each(:workspaces))
   AND (:statuses IS NULL OR status IN (SELECT value FROM json_each(:statuses)))
   AND (:assignee IS NULL OR assignee = :assignee COLLATE NOCASE)
   AND (:label IS NULL OR EXISTS (SELECT 1 FROM json_each(tasks.labels) WHERE value = :label))
   AND (:cursor IS NULL OR id < :cursor)
 ORDER BY id DESC
 LIMIT :limit;

-- name: update_task
-- A caller's change: it waits to be pushed (dirty) when it touches a field Linear has.
UPDATE tasks
   SET title = :title, description = :description, status = :status, priority = :priority,
       assignee = :assignee, labels = :labels, memory_ids = :memory_ids, updated_by = :updated_by,
       updated_at = :now, version = version + 1, dirty = dirty OR :touches_linear
 WHERE id = :id AND version = :version
RETURNING *;

-- name: dirty_tasks
SELECT * FROM tasks WHERE workspace_id = :workspace_id AND dirty = 1 AND id > :after ORDER BY id LIMIT :limit;

-- name: task_by_linear
-- The issue's task, also when the issue was created by a sync that died before recording Linear's answer.
SELECT * FROM tasks
 WHERE workspace_id = :workspace_id AND (linear_id = :linear_id OR linear_pending_id = :linear_id)
 ORDER BY linear_id IS NULL
 LIMIT 1;

-- name: set_pending
UPDATE tasks SET linear_pending_id = :pending_id
 WHERE id = :id AND linear_id IS NULL AND linear_pending_id IS NULL;

-- name: save_merge
-- A pull or webhook outcome, computed from version :read_version: applies only if nothing changed since.
UPDATE tasks
   SET title = :title, description = :description, status = :status, priority = :priority,
       assignee = :assignee, labels = :labels,
       version = CASE WHEN :bump THEN version + 1 ELSE version END,
       updated_at = CASE WHEN :bump THEN :now ELSE updated_at END,
       updated_by = CASE WHEN :bump THEN :updated_by ELSE updated_by END,
       linear_id = :linear_id, linear_identifier = :linear_identifier, linear_url = :linear_url,
       linear_updated_at = :linear_updated_at, linear_pending_id = NULL,
       synced = :synced, dirty = :dirty, conflict = coalesce(:conflict, conflict), sync_error = :sync_error
 WHERE id = :id AND version = :read_version
RETURNING id;

-- name: save_push
-- A push outcome: the link and snapshot are recorded even if the task changed meanwhile (then it stays
-- dirty, to push that change next time).
UPDATE tasks
   SET linear_id = coalesce(:linear_id, linear_id), linear_identifier = coalesce(:linear_identifier, linear_identifier),
       linear_url = coalesce(:linear_url, linear_url),
       linear_updated_at = coalesce(:linear_updated_at, linear_updated_at),
       linear_pending_id = CASE WHEN :linear_id IS NULL THEN linear_pending_id END,
       synced = coalesce(:synced, synced),
       dirty = CASE WHEN version = :read_version THEN :dirty ELSE 1 END,
       conflict = coalesce(:conflict, conflict), sync_error = :sync_error
 WHERE id = :id
RETURNING id;

-- name: count_tasks
SELECT count(*) AS total, coalesce(sum(linear_id IS NOT NULL), 0) AS linked, coalesce(sum(dirty), 0) AS pending,
       coalesce(sum(conflict IS NOT NULL), 0) AS conflicts, coalesce(sum(sync_error IS NOT NULL), 0) AS errors
  FROM tasks WHERE workspace_id = :workspace_id;

-- name: save_connection
-- Reconnecting to another team starts the pull from scratch; to the same team it continues.
INSERT INTO linear_connections (workspace_id, api_key, team_id, team_key, team_name, webhook_secret, policy,
                                acting_user, created_at, updated_at)
VALUES (:workspace_id, :api_key, :team_id, :team_key, :team_name, :webhook_secret, :policy, :acting_user,
        :now, :now)
ON CONFLICT (workspace_id) DO UPDATE
   SET api_key = excluded.api_key, team_key = excluded.team_key, team_name = excluded.team_name,
       webhook_secret = excluded.webhook_secret, policy = excluded.policy, acting_user = excluded.acting_user,
       updated_at = excluded.updated_at,
       cursor = CASE WHEN linear_connections.team_id = excluded.team_id THEN linear_connections.cursor END,
       team_id = excluded.team_id;

-- name: connection
SELECT * FROM linear_connections WHERE workspace_id = :workspace_id;

-- name: delete_connection
-- The tasks stay, as local tasks that keep their Linear links.
DELETE FROM linear_connections WHERE workspace_id = :workspace_id RETURNING workspace_id;

-- name: connections
SELECT * FROM linear_connections ORDER BY workspace_id;

-- name: due_connections
-- Last synced (or last started: a running or crashed sync) before :before.
SELECT workspace_id FROM linear_connections
 WHERE (sync_finished_at IS NULL OR sync_finished_at <= :before)
   AND (sync_started_at IS NULL OR sync_started_at <= :before);

-- name: start_sync
UPDATE linear_connections SET sync_started_at = :now WHERE workspace_id = :workspace_id;

-- name: finish_sync
UPDATE linear_connections
   SET sync_finished_at = :now, last_summary = :summary, last_error = :error, cursor = coalesce(:cursor, cursor)
 WHERE workspace_id = :workspace_id;

-- name: take_lock
-- SQLite's stand-in for an advisory lock: a lease on the connection row, taken in one statement.
UPDATE linear_connections SET lock_owner = :owner, lock_until = :until
 WHERE workspace_id = :workspace_id
   AND (lock_owner IS NULL OR lock_owner = :owner OR lock_until <= :now OR lock_owner = :dead)
RETURNING workspace_id;

-- name: lock_owner
SELECT lock_owner FROM linear_connections WHERE workspace_id = :workspace_id;

-- name: release_lock
UPDATE linear_connections SET lock_owner = NULL, lock_until = NULL
 WHERE workspace_id = :workspace_id AND lock_owner = :owner;

-- name: record_delivery
INSERT INTO linear_webhook_events (delivery, workspace_id, received_at) VALUES (:delivery, :workspace_id, :now)
ON CONFLICT (delivery) DO NOTHING
RETURNING delivery;

-- name: prune_deliveries
DELETE FROM linear_webhook_events WHERE received_at < :keep_since;
