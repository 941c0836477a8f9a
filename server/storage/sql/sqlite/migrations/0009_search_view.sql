-- Nothing to change on SQLite: it has no row-level security, so keyword search reads memories directly.
-- PostgreSQL's 0009 adds the visible_memories view its keyword search reads through; this file keeps the
-- two backends' schema versions in step.
SELECT 1;
