-- Named queries for the SQLite job queue. Times are bound from Python as UTC ISO text
-- (:now, :run_after, :locked_until, :cutoff); :kinds and :ids are JSON arrays.

-- name: enqueue
INSERT INTO jobs (kind, key, payload, max_attempts, run_after, created_at, updated_at)
VALUES (:kind, :key, :payload, :max_attempts, :run_after, :now, :now)
ON CONFLICT (kind, key) WHERE status = 'queued' DO NOTHING
RETURNING id;

-- name: dead_letter_expired
-- A job whose worker died on every attempt would otherwise be reclaimed forever.
UPDATE jobs
   SET status = 'dead', locked_until = NULL, updated_at = :now,
       last_error = 'its lease expired on the last of ' || attempts || ' attempts (the worker stopped or hung)'
 WHERE status = 'running' AND locked_until <= :now AND attempts >= max_attempts
   AND kind IN (SELECT value FROM json_each(:kinds));

-- name: claim
-- Queued jobs that are due, and running jobs whose lease expired (their worker crashed). Two branches,
-- each an index range on (status, ...), so finished jobs kept for inspection are never walked.
UPDATE jobs
   SET status = 'running', attempts = attempts + 1, locked_until = :locked_until, updated_at = :now
 WHERE id IN (SELECT id FROM (SELECT id FROM jobs
                              WHERE status = 'queued' AND run_after <= :now
                                AND kind IN (SELECT value FROM json_each(:kinds))
                             UNION ALL
                             SELECT id FROM jobs
                              WHERE status = 'running' AND locked_until <= :now
                                AND kind IN (SELECT value FROM json_each(:kinds)))
               ORDER BY id
               LIMIT :limit)
RETURNING id, kind, key, payload, attempts, max_attempts;

-- name: complete
UPDATE jobs SET status = 'done', locked_until = NULL, updated_at = :now
 WHERE id IN (SELECT value FROM json_each(:ids)) AND status = 'running';

-- name: prune_done
DELETE FROM jobs WHERE status = 'done' AND updated_at < :cutoff;

-- name: fail
-- Out of attempts: dead-letter. A newer pending job for the same key already covers the work: done.
UPDATE jobs
   SET status = CASE
                    WHEN attempts >= max_attempts THEN 'dead'
                    WHEN key IS NOT NULL AND EXISTS (SELECT 1 FROM jobs AS q
                                                      WHERE q.kind = jobs.kind AND q.key = jobs.key
                                                        AND q.status = 'queued') THEN 'done'
                    ELSE 'queued'
                END,
       run_after = :run_after, locked_until = NULL, last_error = :error, updated_at = :now
 WHERE id = :id AND status = 'running'
RETURNING status;

-- name: counts
SELECT status, count(*) AS n FROM jobs
 WHERE status IN ('queued', 'running', 'dead') AND (:kind IS NULL OR kind = :kind)
 GROUP BY status;

-- name: retry_dead
-- One job per key comes back (the newest), and none where a pending one already waits.
UPDATE jobs
   SET status = 'queued', attempts = 0, run_after = :now, locked_until = NULL, updated_at = :now
 WHERE status = 'dead' AND (:kind IS NULL OR kind = :kind)
   AND (key IS NULL
        OR (id = (SELECT max(d.id) FROM jobs AS d
                   WHERE d.kind = jobs.kind AND d.key = jobs.key AND d.status = 'dead')
            AND NOT EXISTS (SELECT 1 FROM jobs AS q
                             WHERE q.kind = jobs.kind AND q.key = jobs.key AND q.status = 'queued')));

-- name: drop_covered_dead
DELETE FROM jobs
 WHERE status = 'dead' AND key IS NOT NULL AND (:kind IS NULL OR kind = :kind)
   AND EXISTS (SELECT 1 FROM jobs AS q WHERE q.kind = jobs.kind AND q.key = jobs.key AND q.status = 'queued');
