"""The job queue and settings on PostgreSQL, with FOR UPDATE SKIP LOCKED claims from the store's pool."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from server.errors import Conflict
from server.jobs import DONE_RETENTION_SECONDS, Job, JobCounts, backoff, clip_error
from server.storage import migrations
from server.storage.postgres import PostgresStore

J = migrations.named_queries("postgres", "jobs.sql")
FAIL_ATTEMPTS = 3


class PostgresJobs:
    """A JobQueue that workers in many processes share without ever handing one job to two of them."""

    def __init__(self, store: PostgresStore) -> None:
        self.store = store

    async def enqueue(self, kind: str, payload: Mapping[str, Any] | None = None, *, key: str | None = None,
                      delay: float = 0.0, max_attempts: int = 5) -> int | None:
        rows = await self._run("enqueue", {"kind": kind, "key": key, "payload": json.dumps(payload or {}),
                                           "max_attempts": max_attempts, "delay": max(delay, 0.0)})
        return int(rows[0]["id"]) if rows else None

    async def claim(self, kinds: Sequence[str], limit: int, lease_seconds: float) -> list[Job]:
        if not kinds or limit <= 0:
            return []
        params = {"kinds": list(kinds), "limit": limit, "lease": max(lease_seconds, 0.0)}
        async with self.store._transaction() as conn:
            await conn.execute(J["dead_letter_expired"], params)
            cur = await conn.execute(J["claim"], params)
            rows = await cur.fetchall()
        jobs = [Job(id=r["id"], kind=r["kind"], key=r["key"], payload=r["payload"], attempts=r["attempts"],
                    max_attempts=r["max_attempts"]) for r in rows]
        return sorted(jobs, key=lambda j: j.id)

    async def complete(self, ids: Sequence[int]) -> None:
        if not ids:
            return
        async with self.store._transaction() as conn:
            await conn.execute(J["complete"], {"ids": list(ids)})
            await conn.execute(J["prune_done"], {"retention": DONE_RETENTION_SECONDS})

    async def fail(self, job: Job, error: str, *, delay: float | None = None) -> None:
        wait = backoff(job.attempts) if delay is None else max(delay, 0.0)
        params = {"id": job.id, "error": clip_error(error), "delay": wait}
        for attempt in range(FAIL_ATTEMPTS):
            try:
                await self._run("fail", params)
                return
            except Conflict:
                # A job for the same key was queued after this statement's snapshot; the retry sees it.
                if attempt == FAIL_ATTEMPTS - 1:
                    raise

    async def counts(self, kind: str | None = None) -> JobCounts:
        return JobCounts.from_rows(await self._run("counts", {"kind": kind}))

    async def retry_dead(self, kind: str | None = None) -> int:
        async with self.store._transaction() as conn:
            cur = await conn.execute(J["retry_dead"], {"kind": kind})
            requeued = cur.rowcount
            await conn.execute(J["drop_covered_dead"], {"kind": kind})
        return max(requeued, 0)

    async def _run(self, name: str, params: dict[str, Any]) -> list[dict[str, Any]]:
        async with self.store._connection() as conn:
            cur = await conn.execute(J[name], params)
            return list(await cur.fetchall()) if cur.description else []
