-- Task changes in the change feed, written in the same transaction as the change (as for memories in
-- 0007): a task created, or changed in a way its readers notice. The sync's own bookkeeping (the dirty
-- flag, the merge base, errors, the pending create id, Linear's timestamp alone) is not news.
-- Tasks are the whole workspace's, so no entry is private.
CREATE FUNCTION tasks_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM stackmemory_record_change(NEW.workspace_id, CASE WHEN TG_OP = 'INSERT' THEN 'create' ELSE 'update' END,
                                      'task', NEW.id, NEW.updated_by, NULL);
    RETURN NULL;
END $$;

CREATE TRIGGER tasks_change_insert AFTER INSERT ON tasks
    FOR EACH ROW EXECUTE FUNCTION tasks_change();

CREATE TRIGGER tasks_change_update AFTER UPDATE ON tasks
    FOR EACH ROW
    WHEN ((OLD.title, OLD.description, OLD.status, OLD.priority, OLD.assignee, OLD.labels, OLD.memory_ids,
           OLD.linear_id, OLD.linear_identifier, OLD.linear_url)
          IS DISTINCT FROM
          (NEW.title, NEW.description, NEW.status, NEW.priority, NEW.assignee, NEW.labels, NEW.memory_ids,
           NEW.linear_id, NEW.linear_identifier, NEW.linear_url))
    EXECUTE FUNCTION tasks_change();
