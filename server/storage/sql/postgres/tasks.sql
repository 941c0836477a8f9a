-- Named queries for tasks and Linear connections on PostgreSQL. Row-level security decides which tasks a
-- transaction sees (PostgresTasks runs each as the caller, or as the system for the sync); the workspace
-- conditions here repeat it so both backends answer alike. %(workspaces)s and %(statuses)s are arrays;
-- JSON values arrive as text and are cast.

-- name: insert_task
INSERT INTO tasks (id, workspace_id, title, description, status, priority, assignee, labels, memory_ids,
                   created_by, updated_by, created_at, updated_at, version, linear_id, linear_identifier,
                   linear_url, linear_updated_at, synced, dirty, conflict)
VALUES (%(id)s, %(workspace_id)s, %(title)s, %(description)s, %(status)s, %(priority)s, %(assignee)s,
        %(labels)s::jsonb, %(memory_ids)s::jsonb, %(created_by)s, %(updated_by)s, %(created_at)s, %(updated_at)s,
        %(version)s, %(linear_id)s, %(linear_identifier)s, %(linear_url)s, %(linear_updated_at)s,
        %(synced)s::jsonb, %(dirty)s, %(conflict)s::jsonb)
RETURNING *;

-- name: get_task
SELECT * FROM tasks WHERE id = %(id)s AND (%(system)s OR workspace_id = ANY (%(workspaces)s::text[]));

-- name: get_task_for_update
SELECT * FROM tasks WHERE id = %(id)s AND workspace_id = ANY (%(workspaces)s::text[]) FOR UPDATE;

-- name: list_tasks
-- Newest first (ids are UUIDv7); %(cursor)s is the last id of the previous page.
SELECT * FROM tasks
 WHERE workspace_id = ANY (%(workspaces)s::text[])
   AND (%(statuses)s::text[] IS NULL OR status = ANY (%(statuses)s::text[]))
   AND (%(assignee)s::text IS NULL OR lower(assignee) = lower(%(assignee)s::text))
   AND (%(label)s::text IS NULL OR labels ? %(label)s::text)
   AND (%(cursor)s::text IS NULL OR id < %(cursor)s::text)
 ORDER BY id DESC
 LIMIT %(limit)s;

-- name: update_task
-- A caller's change: it waits to be pushed (dirty) when it touches a field Linear has.
UPDATE tasks
   SET title = %(title)s, description = %(description)s, status = %(status)s, priority = %(priority)s,
       assignee = %(assignee)s, labels = %(labels)s::jsonb, memory_ids = %(memory_ids)s::jsonb,
       updated_by = %(updated_by)s, updated_at = %(now)s, version = version + 1,
       dirty = dirty OR %(touches_linear)s
 WHERE id = %(id)s AND version = %(version)s
RETURNING *;

-- name: dirty_tasks
SELECT * FROM tasks WHERE workspace_id = %(workspace_id)s AND dirty AND id > %(after)s ORDER BY id LIMIT %(limit)s;

-- name: task_by_linear
-- The issue's task, also when the issue was created by a sync that died before recording Linear's answer.
SELECT * FROM tasks
 WHERE workspace_id = %(workspace_id)s AND (linear_id = %(linear_id)s OR linear_pending_id = %(linear_id)s)
 ORDER BY linear_id IS NULL
 LIMIT 1;

-- name: set_pending
UPDATE tasks SET linear_pending_id = %(pending_id)s
 WHERE id = %(id)s AND linear_id IS NULL AND linear_pending_id IS NULL;

-- name: save_merge
-- A pull or webhook outcome, computed from version %(read_version)s: applies only if nothing changed since.
UPDATE tasks
   SET title = %(title)s, description = %(description)s, status = %(status)s, priority = %(priority)s,
       assignee = %(assignee)s, labels = %(labels)s::jsonb,
       version = CASE WHEN %(bump)s THEN version + 1 ELSE version END,
       updated_at = CASE WHEN %(bump)s THEN %(now)s::timestamptz ELSE updated_at END,
       updated_by = CASE WHEN %(bump)s THEN %(updated_by)s ELSE updated_by END,
       linear_id = %(linear_id)s, linear_identifier = %(linear_identifier)s, linear_url = %(linear_url)s,
       linear_updated_at = %(linear_updated_at)s, linear_pending_id = NULL,
       synced = %(synced)s::jsonb, dirty = %(dirty)s, conflict = coalesce(%(conflict)s::jsonb, conflict),
       sync_error = %(sync_error)s
 WHERE id = %(id)s AND version = %(read_version)s
RETURNING id;

-- name: save_push
-- A push outcome: the link and snapshot are recorded even if the task changed meanwhile (then it stays
-- dirty, to push that change next time).
UPDATE tasks
   SET linear_id = coalesce(%(linear_id)s, linear_id),
       linear_identifier = coalesce(%(linear_identifier)s, linear_identifier),
       linear_url = coalesce(%(linear_url)s, linear_url),
       linear_updated_at = coalesce(%(linear_updated_at)s, linear_updated_at),
       linear_pending_id = CASE WHEN %(linear_id)s::text IS NULL THEN linear_pending_id END,
       synced = coalesce(%(synced)s::jsonb, synced),
       dirty = CASE WHEN version = %(read_version)s THEN %(dirty)s ELSE true END,
       conflict = coalesce(%(conflict)s::jsonb, conflict), sync_error = %(sync_error)s
 WHERE id = %(id)s
RETURNING id;

-- name: count_tasks
SELECT count(*) AS total, count(linear_id) AS linked, count(*) FILTER (WHERE dirty) AS pending,
       count(conflict) AS conflicts, count(sync_error) AS errors
  FROM tasks WHERE workspace_id = %(workspace_id)s;

-- name: save_connection
-- Reconnecting to another team starts the pull from scratch; to the same team it continues.
INSERT INTO linear_connections (workspace_id, api_key, team_id, team_key, team_name, webhook_secret, policy,
                                acting_user, created_at, updated_at)
VALUES (%(workspace_id)s, %(api_key)s, %(team_id)s, %(team_key)s, %(team_name)s, %(webhook_secret)s, %(policy)s,
        %(acting_user)s, %(now)s, %(now)s)
ON CONFLICT (workspace_id) DO UPDATE
   SET api_key = excluded.api_key, team_key = excluded.team_key, team_name = excluded.team_name,
       webhook_secret = excluded.webhook_secret, policy = excluded.policy, acting_user = excluded.acting_user,
       updated_at = excluded.updated_at,
       cursor = CASE WHEN linear_connections.team_id = excluded.team_id THEN linear_connections.cursor END,
       team_id = excluded.team_id;

-- name: connection
SELECT * FROM linear_connections WHERE workspace_id = %(workspace_id)s;

-- name: delete_connection
-- The tasks stay, as local tasks that keep their Linear links.
DELETE FROM linear_connections WHERE workspace_id = %(workspace_id)s RETURNING workspace_id;

-- name: connections
SELECT * FROM linear_connections ORDER BY workspace_id;

-- name: due_connections
-- Last synced (or last started: a running or crashed sync) before %(before)s.
SELECT workspace_id FROM linear_connections
 WHERE (sync_finished_at IS NULL OR sync_finished_at <= %(before)s)
   AND (sync_started_at IS NULL OR sync_started_at <= %(before)s);

-- name: start_sync
UPDATE linear_connections SET sync_started_at = %(now)s WHERE workspace_id = %(workspace_id)s;

-- name: finish_sync
UPDATE linear_connections
   SET sync_finished_at = %(now)s, last_summary = %(summary)s::jsonb, last_error = %(error)s,
       cursor = coalesce(%(cursor)s, cursor)
 WHERE workspace_id = %(workspace_id)s;

-- name: try_lock
-- One sync per workspace across every server process: a session-level advisory lock, held on a
-- connection of its own for the sync's length and released with it (also if the process dies).
SELECT pg_try_advisory_lock(%(space)s::int4, hashtext(%(workspace_id)s)) AS locked;

-- name: unlock
SELECT pg_advisory_unlock(%(space)s::int4, hashtext(%(workspace_id)s)) AS unlocked;

-- name: record_delivery
INSERT INTO linear_webhook_events (delivery, workspace_id, received_at)
VALUES (%(delivery)s, %(workspace_id)s, %(now)s)
ON CONFLICT (delivery) DO NOTHING
RETURNING delivery;

-- name: prune_deliveries
DELETE FROM linear_webhook_events WHERE received_at < %(keep_since)s;
