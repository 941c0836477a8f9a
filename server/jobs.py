"""The durable job queue's protocol, its value types, and the Worker that runs handlers over it."""

from __future__ import annotations

import logging
import random
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import anyio

from server.errors import StorageUnavailable

log = logging.getLogger(__name__)

MAX_ERROR_BYTES = 2048
MAX_BACKOFF_SECONDS = 300.0
# 'done' rows are kept this long (for inspection) and pruned as later batches complete.
DONE_RETENTION_SECONDS = 86400.0
# The longest a Worker waits after storage errors before it tries to claim again.
MAX_ERROR_PAUSE_SECONDS = 60.0


@dataclass(frozen=True)
class Job:
    """One claimed unit of work; attempts counts this one."""

    id: int
    kind: str
    key: str | None
    payload: dict[str, Any] = field(default_factory=dict)
    attempts: int = 1
    max_attempts: int = 5


@dataclass(frozen=True)
class JobCounts:
    pending: int
    running: int
    failed: int

    @classmethod
    def from_rows(cls, rows: Iterable[Mapping[str, Any]]) -> JobCounts:
        """From (status, n) rows of the adapters' `counts` query; dead jobs count as failed."""
        by_status = {r["status"]: int(r["n"]) for r in rows}
        return cls(pending=by_status.get("queued", 0), running=by_status.get("running", 0),
                   failed=by_status.get("dead", 0))


class JobError(Exception):
    """Raised by a handler when only some jobs of a batch failed; the rest are completed."""

    def __init__(self, per_job: Mapping[int, str]) -> None:
        super().__init__(f"{len(per_job)} job(s) failed")
        self.per_job = dict(per_job)


class Postpone(Exception):
    """Raised by a handler when a batch cannot be done now for a reason that is not the jobs' own (an
    embedding model that cannot load): each job is tried again after `delay` seconds, with one warning for
    the batch, instead of retrying within seconds and dead-lettering every job in a few."""

    def __init__(self, reason: str, delay: float) -> None:
        super().__init__(reason)
        self.reason = reason
        self.delay = delay


class JobQueue(Protocol):
    """A queue in the database: at-least-once delivery, leases, retries with backoff, a dead letter."""

    async def enqueue(self, kind: str, payload: Mapping[str, Any] | None = None, *, key: str | None = None,
                      delay: float = 0.0, max_attempts: int = 5) -> int | None:
        """Queue a job; None when a pending job of this kind and key already exists."""
        ...

    async def claim(self, kinds: Sequence[str], limit: int, lease_seconds: float) -> list[Job]:
        """Take up to limit due jobs (or jobs whose lease expired), leased for lease_seconds."""
        ...

    async def complete(self, ids: Sequence[int]) -> None: ...

    async def fail(self, job: Job, error: str, *, delay: float | None = None) -> None:
        """Retry after delay (default: exponential backoff), or dead-letter when out of attempts."""
        ...

    async def counts(self, kind: str | None = None) -> JobCounts:
        """Pending, running and failed jobs, of one kind or (None) of all."""
        ...

    async def retry_dead(self, kind: str | None = None) -> int:
        """Queue dead jobs again with fresh attempts; return how many."""
        ...


Handler = Callable[[list[Job]], Awaitable[None]]


def backoff(attempts: int) -> float:
    """Seconds before retry number `attempts`: exponential, capped, with jitter so retries spread out."""
    ceiling = min(2.0 ** attempts, MAX_BACKOFF_SECONDS)
    return random.uniform(ceiling / 2, ceiling)


def clip_error(error: str) -> str:
    """At most MAX_ERROR_BYTES of UTF-8, without NUL (which PostgreSQL text cannot hold)."""
    data = error.replace("\x00", "").encode("utf-8")
    if len(data) <= MAX_ERROR_BYTES:
        return error.replace("\x00", "")
    return data[:MAX_ERROR_BYTES - 3].decode("utf-8", errors="ignore") + "..."


def describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class Worker:
    """Claims batches of each registered kind and hands them to their handler, until stopped."""

    def __init__(self, queue: JobQueue, handlers: Mapping[str, Handler], *, batch: int = 32,
                 lease: float = 60.0, poll: float = 1.0, linger: float = 0.0) -> None:
        """`linger`: seconds to wait, once woken by new work, for more to arrive, so a stream of single
        writes is handled in batches (each batch costs a claim and a completion, whatever its size)."""
        self.queue = queue
        self.handlers = dict(handlers)
        self.batch = batch
        self.lease = lease
        self.poll = poll
        self.linger = linger
        self._notified = False
        self._wake: anyio.Event | None = None

    def notify(self) -> None:
        """Wake the loop now: this process just enqueued work."""
        self._notified = True
        if self._wake is not None:
            self._wake.set()

    async def run_once(self) -> int:
        """Handle every job claimable now, batch by batch; return how many were handled."""
        handled = 0
        while True:
            self._notified = False
            round_total, more = 0, False
            for kind, handler in self.handlers.items():
                jobs = await self.queue.claim([kind], self.batch, self.lease)
                if jobs:
                    await self._handle(handler, jobs)
                    round_total += len(jobs)
                    more = more or len(jobs) == self.batch  # a short batch emptied what was claimable
            handled += round_total
            if not more:
                return handled

    async def run(self, stop: anyio.Event | None = None) -> None:
        """Loop until stop is set; a batch in progress is finished first."""
        errors = 0
        while stop is None or not stop.is_set():
            try:
                await self.run_once()
                errors = 0
                pause = self.poll
            except StorageUnavailable as exc:
                errors += 1
                pause = min(self.poll * 2 ** errors, MAX_ERROR_PAUSE_SECONDS)
                log.warning("job queue unavailable (%s); retrying in %.0fs", exc, pause)
            await self._sleep(pause, stop, wake_on_notify=errors == 0)
            if self.linger > 0 and self._notified and errors == 0:
                await self._sleep(self.linger, stop, wake_on_notify=False)

    async def _handle(self, handler: Handler, jobs: list[Job]) -> None:
        try:
            await handler(jobs)
        except Postpone as exc:
            log.warning("%d %s job(s) postponed for %.0f s: %s", len(jobs), jobs[0].kind, exc.delay, exc.reason)
            for job in jobs:
                await self.queue.fail(job, exc.reason, delay=exc.delay)
        except JobError as exc:
            failed = [j for j in jobs if j.id in exc.per_job]
            await self.queue.complete([j.id for j in jobs if j.id not in exc.per_job])
            for job in failed:
                await self._fail(job, exc.per_job[job.id])
        except Exception as exc:  # noqa: BLE001 - any handler failure is retried, never fatal to the loop
            error = describe(exc)
            for job in jobs:
                await self._fail(job, error)
        else:
            await self.queue.complete([j.id for j in jobs])

    async def _fail(self, job: Job, error: str) -> None:
        final = job.attempts >= job.max_attempts
        log.log(logging.ERROR if final else logging.WARNING, "%s job %d (key %s) failed on attempt %d/%d: %s",
                job.kind, job.id, job.key, job.attempts, job.max_attempts, error)
        await self.queue.fail(job, error)

    async def _sleep(self, seconds: float, stop: anyio.Event | None, *, wake_on_notify: bool) -> None:
        if wake_on_notify and self._notified:
            return
        self._wake = anyio.Event()
        events = [e for e in (self._wake if wake_on_notify else None, stop) if e is not None]
        with anyio.move_on_after(seconds):
            async with anyio.create_task_group() as tg:
                for event in events:
                    tg.start_soon(_cancel_when_set, event, tg.cancel_scope)
                await anyio.sleep(seconds)
        self._wake = None


async def _cancel_when_set(event: anyio.Event, scope: anyio.CancelScope) -> None:
    await event.wait()
    scope.cancel()
