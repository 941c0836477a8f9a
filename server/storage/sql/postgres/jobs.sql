-- Named queries for the PostgreSQL job queue. %(kinds)s and %(ids)s are arrays; times come
-- from the server's clock (now()), so several hosts agree on when a lease expires.

-- name: enqueue
INSERT INTO jobs (kind, key, payload, max_attempts, run_after)
VALUES (%(kind)s, %(key)s, %(payload)s::jsonb, %(max_attempts)s,
        now() + make_interval(secs => %(delay)s::float8))
ON CONFLICT (kind, key) WHERE status = 'queued' DO NOTHING
RETURNING id;

-- name: dead_letter_expired
-- A job whose worker died on every attempt would otherwise be reclaimed forever.
UPDATE jobs
   SET status = 'dead', locked_until = NULL, updated_at = now(),
       last_error = 'its lease expired on the last of ' || attempts || ' attempts (the worker stopped or hung)'
 WHERE status = 'running' AND locked_until <= now() AND attempts >= max_attempts
   AND kind = ANY (%(kinds)s::text[]);

-- name: claim
-- Queued jobs that are due, and running jobs whose lease expired (their worker crashed). SKIP LOCKED
-- lets workers in other processes take the next rows instead of waiting; the row lock and the
-- re-check of the WHERE on the newest row version mean no job is handed out twice.
UPDATE jobs
   SET status = 'running', attempts = attempts + 1, updated_at = now(),
       locked_until = now() + make_interval(secs => %(lease)s::float8)
 WHERE id IN (SELECT id FROM jobs
               WHERE kind = ANY (%(kinds)s::text[])
                 AND ((status = 'queued' AND run_after <= now())
                      OR (status = 'running' AND locked_until <= now()))
               ORDER BY id
               LIMIT %(limit)s
               FOR UPDATE SKIP LOCKED)
RETURNING id, kind, key, payload, attempts, max_attempts;

-- name: complete
UPDATE jobs SET status = 'done', locked_until = NULL, updated_at = now()
 WHERE id = ANY (%(ids)s::bigint[]) AND status = 'running';

-- name: prune_done
DELETE FROM jobs WHERE status = 'done' AND updated_at < now() - make_interval(secs => %(retention)s::float8);

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
       run_after = now() + make_interval(secs => %(delay)s::float8), locked_until = NULL,
       last_error = %(error)s, updated_at = now()
 WHERE id = %(id)s AND status = 'running'
RETURNING status;

-- name: counts
SELECT status, count(*) AS n FROM jobs
 WHERE status IN ('queued', 'running', 'dead') AND (%(kind)s::text IS NULL OR kind = %(kind)s::text)
 GROUP BY status;

-- name: retry_dead
-- One job per key comes back (the newest), and none where a pending one already waits.
UPDATE jobs
   SET status = 'queued', attempts = 0, run_after = now(), locked_until = NULL, updated_at = now()
 WHERE status = 'dead' AND (%(kind)s::text IS NULL OR kind = %(kind)s::text)
   AND (key IS NULL
        OR (id = (SELECT max(d.id) FROM jobs AS d
                   WHERE d.kind = jobs.kind AND d.key = jobs.key AND d.status = 'dead')
            AND NOT EXISTS (SELECT 1 FROM jobs AS q
                             WHERE q.kind = jobs.kind AND q.key = jobs.key AND q.status = 'queued')));

-- name: drop_covered_dead
DELETE FROM jobs
 WHERE status = 'dead' AND key IS NOT NULL AND (%(kind)s::text IS NULL OR kind = %(kind)s::text)
   AND EXISTS (SELECT 1 FROM jobs AS q WHERE q.kind = jobs.kind AND q.key = jobs.key AND q.status = 'queued');
