-- Named queries of the change feed on SQLite (see migration 0007_change_log).

-- name: changes
SELECT workspace_id, cursor, kind, entity, entity_id, actor, private_to, at FROM change_log
 WHERE workspace_id = :workspace_id AND cursor > :since
   AND (private_to IS NULL OR private_to = :user_id)
 ORDER BY cursor
 LIMIT :limit;

-- name: latest
SELECT workspace_id, max(cursor) AS last FROM change_log GROUP BY workspace_id;

-- name: after
SELECT workspace_id, cursor, kind, entity, entity_id, actor, private_to, at FROM change_log
 WHERE workspace_id = :workspace_id AND cursor > :since
 ORDER BY cursor
 LIMIT :limit;

-- name: since_seq
SELECT seq, workspace_id, cursor, kind, entity, entity_id, actor, private_to, at FROM change_log
 WHERE seq > :seq
 ORDER BY seq
 LIMIT :limit;

-- name: max_seq
SELECT coalesce(max(seq), 0) AS seq FROM change_log;
