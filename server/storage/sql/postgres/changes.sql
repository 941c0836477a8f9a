-- Named queries of the change feed on PostgreSQL (see migration 0007_change_log).

-- name: changes
-- Run as the caller: row-level security applies as well as these conditions.
SELECT workspace_id, cursor, kind, entity, entity_id, actor, private_to, at FROM change_log
 WHERE workspace_id = %(workspace_id)s AND cursor > %(since)s
   AND (private_to IS NULL OR private_to = %(user_id)s::text)
 ORDER BY cursor
 LIMIT %(limit)s;

-- name: latest
SELECT workspace_id, last FROM change_cursors;

-- name: after
SELECT workspace_id, cursor, kind, entity, entity_id, actor, private_to, at FROM change_log
 WHERE workspace_id = %(workspace_id)s AND cursor > %(since)s
 ORDER BY cursor
 LIMIT %(limit)s;
