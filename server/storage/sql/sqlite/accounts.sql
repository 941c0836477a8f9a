-- Named queries for users, workspaces, memberships and API tokens on SQLite. Times are bound from
-- Python as UTC ISO text (:now), so text order is time order; :ids is a JSON array.
-- An insert that loses to an existing name returns no row, and the adapter says which name is taken.

-- name: insert_user
INSERT INTO users (id, name, created_at) VALUES (:id, :name, :now)
ON CONFLICT (name) DO NOTHING
RETURNING id, name, created_at;

-- name: insert_workspace
INSERT INTO workspaces (id, name, personal_of, created_at) VALUES (:id, :name, :personal_of, :now)
ON CONFLICT (name) DO NOTHING
RETURNING id;

-- name: set_role
INSERT INTO memberships (workspace_id, user_id, role, created_at) VALUES (:workspace_id, :user_id, :role, :now)
ON CONFLICT (workspace_id, user_id) DO UPDATE SET role = excluded.role;

-- name: find_user
-- An id wins over a name that happens to look like one.
SELECT id, name, created_at FROM users WHERE id = :key OR name = :key ORDER BY id = :key DESC LIMIT 1;

-- name: list_users
SELECT id, name, created_at FROM users ORDER BY name;

-- name: find_workspace
SELECT id, name, personal_of FROM workspaces WHERE id = :key OR name = :key ORDER BY id = :key DESC LIMIT 1;

-- name: list_workspaces
SELECT w.id, w.name, u.name AS personal_of, w.created_at,
       (SELECT count(*) FROM memberships AS m WHERE m.workspace_id = w.id) AS members
  FROM workspaces AS w LEFT JOIN users AS u ON u.id = w.personal_of
 ORDER BY w.personal_of IS NOT NULL, w.name;

-- name: memberships
SELECT w.id AS workspace_id, w.name AS workspace, coalesce(w.personal_of = m.user_id, 0) AS personal, m.role
  FROM memberships AS m JOIN workspaces AS w ON w.id = m.workspace_id
 WHERE m.user_id = :user_id
 ORDER BY personal DESC, w.name;

-- name: members
SELECT u.name AS user_name, u.id AS user_id, m.role
  FROM memberships AS m JOIN users AS u ON u.id = m.user_id
 WHERE m.workspace_id = :workspace_id
 ORDER BY CASE m.role WHEN 'owner' THEN 0 WHEN 'admin' THEN 1 WHEN 'member' THEN 2 ELSE 3 END, u.name;

-- name: remove_member
DELETE FROM memberships WHERE workspace_id = :workspace_id AND user_id = :user_id RETURNING user_id;

-- name: workspace_counts
-- The memories counted are the ones PostgreSQL's row-level security would show the user: live ones in
-- a workspace they belong to, shared with the team or written by them.
SELECT w.id,
       (SELECT count(*) FROM memberships AS ms WHERE ms.workspace_id = w.id) AS members,
       (SELECT count(*) FROM memories AS m
         WHERE m.workspace_id = w.id AND m.deleted_at IS NULL
           AND (m.expires_at IS NULL OR m.expires_at > :now)
           AND (m.visibility = 'team' OR m.created_by = :user_id)
           AND EXISTS (SELECT 1 FROM memberships AS me
                        WHERE me.workspace_id = w.id AND me.user_id = :user_id)) AS memories
  FROM workspaces AS w
 WHERE w.id IN (SELECT value FROM json_each(:ids));

-- name: insert_token
INSERT INTO tokens (id, user_id, name, token_hash, created_at, expires_at)
VALUES (:id, :user_id, :name, :token_hash, :now, :expires_at);

-- name: list_tokens
SELECT t.id, t.name, u.name AS user_name, t.created_at, t.expires_at, t.revoked_at, t.last_used_at
  FROM tokens AS t JOIN users AS u ON u.id = t.user_id
 WHERE :user_id IS NULL OR t.user_id = :user_id
 ORDER BY t.created_at DESC, t.id DESC;

-- name: revoke_token
UPDATE tokens SET revoked_at = :now
 WHERE id = :id AND revoked_at IS NULL AND (expires_at IS NULL OR expires_at > :now)
RETURNING id;

-- name: token_owner
SELECT t.id, t.user_id, u.name AS user_name, t.expires_at, t.last_used_at
  FROM tokens AS t JOIN users AS u ON u.id = t.user_id
 WHERE t.token_hash = :token_hash AND t.revoked_at IS NULL
   AND (t.expires_at IS NULL OR t.expires_at > :now) AND u.disabled_at IS NULL;

-- name: touch_token
UPDATE tokens SET last_used_at = :now WHERE id = :id;
