"""The job queue and settings on SQLite, sharing the store's single writer connection and lock."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from server.jobs import DONE_RETENTION_SECONDS, Job, JobCounts, backoff, clip_error
from server.storage import migrations
from server.storage.sqlite import SQLiteStore, _translated_async, ts

J = migrations.named_queries("sqlite", "jobs.sql")


class SQLiteJobs:
    """A JobQueue whose claims run inside BEGIN IMMEDIATE, so one writer at a time, across processes."""

    def __init__(self, store: SQLiteStore) -> None:
        self.store = store

    async def enqueue(self, kind: str, payload: Mapping[str, Any] | None = None, *, key: str | None = None,
                      delay: float = 0.0, max_attempts: int = 5) -> int | None:
        now = datetime.now(UTC)
        params = {"kind": kind, "key": key, "payload": _json(payload or {}), "max_attempts": max_attempts,
                  "now": ts(now), "run_after": ts(now + timedelta(seconds=max(delay, 0.0)))}
        rows = await self._run("enqueue", params)
        return int(rows[0]["id"]) if rows else None

    async def claim(self, kinds: Sequence[str], limit: int, lease_seconds: float) -> list[Job]:
        if not kinds or limit <= 0:
            return []
        now = datetime.now(UTC)
        params = {"kinds": _json(list(kinds)), "limit": limit, "now": ts(now),
                  "locked_until": ts(now + timedelta(seconds=max(lease_seconds, 0.0)))}
        async with self.store._write() as db, _translated_async(self.store.path):
            await (await db.execute(J["dead_letter_expired"], params)).close()
            rows = list(await db.execute_fetchall(J["claim"], params))
        jobs = [Job(id=r["id"], kind=r["kind"], key=r["key"], payload=json.loads(r["payload"]),
                    attempts=r["attempts"], max_attempts=r["max_attempts"]) for r in rows]
        return sorted(jobs, key=lambda j: j.id)

    async def complete(self, ids: Sequence[int]) -> None:
        if not ids:
            return
        now = datetime.now(UTC)
        cutoff = ts(now - timedelta(seconds=DONE_RETENTION_SECONDS))
        async with self.store._write() as db, _translated_async(self.store.path):
            await (await db.execute(J["complete"], {"ids": _json(list(ids)), "now": ts(now)})).close()
            await (await db.execute(J["prune_done"], {"cutoff": cutoff})).close()

    async def fail(self, job: Job, error: str, *, delay: float | None = None) -> None:
        now = datetime.now(UTC)
        wait = backoff(job.attempts) if delay is None else max(delay, 0.0)
        await self._run("fail", {"id": job.id, "error": clip_error(error), "now": ts(now),
                                 "run_after": ts(now + timedelta(seconds=wait))})

    async def counts(self, kind: str | None = None) -> JobCounts:
        return JobCounts.from_rows(await self._run("counts", {"kind": kind}))

    async def retry_dead(self, kind: str | None = None) -> int:
        params = {"kind": kind, "now": ts(datetime.now(UTC))}
        async with self.store._write() as db, _translated_async(self.store.path):
            cur = await db.execute(J["retry_dead"], params)
            requeued = cur.rowcount
            await cur.close()
            await (await db.execute(J["drop_covered_dead"], params)).close()
        return max(requeued, 0)

    async def _run(self, name: str, params: dict[str, Any]) -> list[Any]:
        """One statement on the writer connection: atomic on its own, and it sees every committed job."""
        async with self.store._statement() as db:
            return list(await db.execute_fetchall(J[name], params))


def _json(value: object) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))
