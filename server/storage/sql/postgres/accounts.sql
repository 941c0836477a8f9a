-- Named queries for users, workspaces, memberships and API tokens on PostgreSQL. %(now)s comes from
-- the application, so both backends decide expiry against the same clock; %(ids)s is an array.
-- An insert that loses to an existing name returns no row, and the adapter says which name is taken.
-- Names sort with COLLATE "C", as SQLite sorts them.

-- name: insert_user
INSERT INTO users (id, name, created_at) VALUES (%(id)s, %(name)s, %(now)s)
ON CONFLICT (name) DO NOTHING
RETURNING id, name, created_at;

-- name: insert_workspace
INSERT INTO workspaces (id, name, personal_of, created_at) VALUES (%(id)s, %(name)s, %(personal_of)s, %(now)s)
ON CONFLICT (name) DO NOTHING
RETURNING id;

-- name: set_role
INSERT INTO memberships (workspace_id, user_id, role, created_at)
VALUES (%(workspace_id)s, %(user_id)s, %(role)s, %(now)s)
ON CONFLICT (workspace_id, user_id) DO UPDATE SET role = excluded.role;

-- name: find_user
-- An id wins over a name that happens to look like one.
SELECT id, name, created_at FROM users
 WHERE id = %(key)s::text OR name = %(key)s::text ORDER BY id = %(key)s::text DESC LIMIT 1;

-- name: list_users
SELECT id, name, created_at FROM users ORDER BY name COLLATE "C";

-- name: find_workspace
SELECT id, name, personal_of FROM workspaces
 WHERE id = %(key)s::text OR name = %(key)s::text ORDER BY id = %(key)s::text DESC LIMIT 1;

-- name: list_workspaces
SELECT w.id, w.name, u.name AS personal_of, w.created_at,
       (SELECT count(*) FROM memberships AS m WHERE m.workspace_id = w.id) AS members
  FROM workspaces AS w LEFT JOIN users AS u ON u.id = w.personal_of
 ORDER BY w.personal_of IS NOT NULL, w.name COLLATE "C";

-- name: memberships
SELECT w.id AS workspace_id, w.name AS workspace, coalesce(w.personal_of = m.user_id, false) AS personal, m.role
  FROM memberships AS m JOIN workspaces AS w ON w.id = m.workspace_id
 WHERE m.user_id = %(user_id)s
 ORDER BY personal DESC, w.name COLLATE "C";

-- name: members
SELECT u.name AS user_name, u.id AS user_id, m.role
  FROM memberships AS m JOIN users AS u ON u.id = m.user_id
 WHERE m.workspace_id = %(workspace_id)s
 ORDER BY CASE m.role WHEN 'owner' THEN 0 WHEN 'admin' THEN 1 WHEN 'member' THEN 2 ELSE 3 END,
          u.name COLLATE "C";

-- name: remove_member
DELETE FROM memberships WHERE workspace_id = %(workspace_id)s AND user_id = %(user_id)s RETURNING user_id;

-- name: set_user
-- Row-level security on memories shows only what this user may see, for this transaction only.
SELECT set_config('stackmemory.user_id', %(user_id)s, true);

-- name: workspace_counts
-- Row-level security already limits memories to what the user may see; the conditions repeat it, so
-- the counts are the same when the login role bypasses RLS (and on SQLite, which has none).
SELECT w.id,
       (SELECT count(*) FROM memberships AS ms WHERE ms.workspace_id = w.id) AS members,
       (SELECT count(*) FROM memories AS m
         WHERE m.workspace_id = w.id AND m.deleted_at IS NULL
           AND (m.expires_at IS NULL OR m.expires_at > %(now)s::timestamptz)
           AND (m.visibility = 'team' OR m.created_by = %(user_id)s::text)
           AND EXISTS (SELECT 1 FROM memberships AS me
                        WHERE me.workspace_id = w.id AND me.user_id = %(user_id)s::text)) AS memories
  FROM workspaces AS w
 WHERE w.id = ANY (%(ids)s::text[]);

-- name: insert_token
INSERT INTO tokens (id, user_id, name, token_hash, created_at, expires_at)
VALUES (%(id)s, %(user_id)s, %(name)s, %(token_hash)s, %(now)s, %(expires_at)s);

-- name: list_tokens
SELECT t.id, t.name, u.name AS user_name, t.created_at, t.expires_at, t.revoked_at, t.last_used_at
  FROM tokens AS t JOIN users AS u ON u.id = t.user_id
 WHERE %(user_id)s::text IS NULL OR t.user_id = %(user_id)s::text
 ORDER BY t.created_at DESC, t.id DESC;

-- name: revoke_token
UPDATE tokens SET revoked_at = %(now)s
 WHERE id = %(id)s AND revoked_at IS NULL AND (expires_at IS NULL OR expires_at > %(now)s::timestamptz)
RETURNING id;

-- name: token_owner
SELECT t.id, t.user_id, u.name AS user_name, t.expires_at, t.last_used_at
  FROM tokens AS t JOIN users AS u ON u.id = t.user_id
 WHERE t.token_hash = %(token_hash)s AND t.revoked_at IS NULL
   AND (t.expires_at IS NULL OR t.expires_at > %(now)s::timestamptz) AND u.disabled_at IS NULL;

-- name: touch_token
UPDATE tokens SET last_used_at = %(now)s WHERE id = %(id)s;
