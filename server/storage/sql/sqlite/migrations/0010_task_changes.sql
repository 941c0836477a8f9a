-- Task changes in the change feed, written in the same transaction as the change (as for memories in
-- 0007): a task created, or changed in a way its readers notice. The sync's own bookkeeping (the dirty
-- flag, the merge base, errors, the pending create id, Linear's timestamp alone) is not news.
-- Tasks are the whole workspace's, so no entry is private.
CREATE TRIGGER tasks_change_insert AFTER INSERT ON tasks BEGIN
    INSERT INTO change_log (workspace_id, cursor, kind, entity, entity_id, actor, private_to, at)
    VALUES (new.workspace_id,
            coalesce((SELECT max(cursor) FROM change_log WHERE workspace_id = new.workspace_id), 0) + 1,
            'create', 'task', new.id, new.updated_by, NULL,
            strftime('%Y-%m-%dT%H:%M:%f000+00:00', 'now'));
END;

CREATE TRIGGER tasks_change_update AFTER UPDATE ON tasks
    WHEN old.title IS NOT new.title OR old.description IS NOT new.description OR old.status IS NOT new.status
      OR old.priority IS NOT new.priority OR old.assignee IS NOT new.assignee OR old.labels IS NOT new.labels
      OR old.memory_ids IS NOT new.memory_ids OR old.linear_id IS NOT new.linear_id
      OR old.linear_identifier IS NOT new.linear_identifier OR old.linear_url IS NOT new.linear_url
BEGIN
    INSERT INTO change_log (workspace_id, cursor, kind, entity, entity_id, actor, private_to, at)
    VALUES (new.workspace_id,
            coalesce((SELECT max(cursor) FROM change_log WHERE workspace_id = new.workspace_id), 0) + 1,
            'update', 'task', new.id, new.updated_by, NULL,
            strftime('%Y-%m-%dT%H:%M:%f000+00:00', 'now'));
END;
