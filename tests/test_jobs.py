"""The durable job queue and its Worker, run against SQLite and a real PostgreSQL."""

from __future__ import annotations

from collections import Counter
from typing import Any

import anyio
import pytest

from server.jobs import MAX_ERROR_BYTES, Job, JobCounts, JobError, JobQueue, Worker, backoff, clip_error
from server.service import MemoryService

pytestmark = pytest.mark.anyio


def queue_for(store: Any) -> JobQueue:
    if store.backend == "postgres":
        from server.storage.postgres_jobs import PostgresJobs

        return PostgresJobs(store)
    from server.storage.sqlite_jobs import SQLiteJobs

    return SQLiteJobs(store)


async def test_an_enqueued_job_is_claimed_once_and_gone_when_completed(store: Any) -> None:
    queue = queue_for(store)
    first = await queue.enqueue("sync", {"team": "eng", "n": 1})
    second = await queue.enqueue("sync", key="b")
    await queue.enqueue("other")
    assert first is not None and second is not None and second > first
    assert await queue.counts() == JobCounts(pending=3, running=0, failed=0)

    claimed = await queue.claim(["sync"], 10, 60)
    assert [(j.id, j.kind, j.key, j.payload, j.attempts, j.max_attempts) for j in claimed] == [
        (first, "sync", None, {"team": "eng", "n": 1}, 1, 5), (second, "sync", "b", {}, 1, 5)]
    assert await queue.claim(["sync"], 10, 60) == []
    assert await queue.counts() == JobCounts(pending=1, running=2, failed=0)

    await queue.complete([j.id for j in claimed])
    assert await queue.counts() == JobCounts(pending=1, running=0, failed=0)
    assert await queue.claim(["sync"], 10, 60) == []


async def test_claim_respects_the_limit_and_the_delay(store: Any) -> None:
    queue = queue_for(store)
    for i in range(5):
        await queue.enqueue("embed", {"i": i})
    await queue.enqueue("embed", {"later": True}, delay=3600)
    batch = await queue.claim(["embed"], 3, 60)
    assert [j.payload["i"] for j in batch] == [0, 1, 2]
    rest = await queue.claim(["embed"], 10, 60)
    assert [j.payload["i"] for j in rest] == [3, 4]
    assert await queue.counts() == JobCounts(pending=1, running=5, failed=0)


async def test_a_key_has_at_most_one_pending_job(store: Any) -> None:
    queue = queue_for(store)
    first = await queue.enqueue("embed", key="m1")
    assert first is not None
    assert await queue.enqueue("embed", key="m1") is None
    assert await queue.enqueue("sync", key="m1") is not None  # another kind is other work
    (job,) = await queue.claim(["embed"], 10, 60)
    # Once the job runs, new work for the key (say the memory changed again) queues behind it.
    assert await queue.enqueue("embed", key="m1") is not None
    assert await queue.enqueue("embed", key="m1") is None
    assert job.id == first


async def test_a_failing_job_backs_off_then_is_dead_lettered_after_max_attempts(store: Any) -> None:
    queue = queue_for(store)
    await queue.enqueue("sync", key="team")
    (waiting,) = await queue.claim(["sync"], 10, 60)
    await queue.fail(waiting, "Linear said 503")
    assert await queue.claim(["sync"], 10, 60) == []  # backing off for a second or two
    assert await queue.counts() == JobCounts(pending=1, running=0, failed=0)

    await queue.enqueue("embed", {"x": 1}, key="m1", max_attempts=3)
    (job,) = await queue.claim(["embed"], 10, 60)
    for attempt in (2, 3):
        await queue.fail(job, "again", delay=0)
        (job,) = await queue.claim(["embed"], 10, 60)
        assert job.attempts == attempt
    await queue.fail(job, "boom " + "é" * 5000)
    assert await queue.counts() == JobCounts(pending=1, running=0, failed=1)
    assert await queue.claim(["embed"], 10, 60) == []

    assert await queue.retry_dead("other-kind") == 0
    assert await queue.retry_dead() == 1
    (job,) = await queue.claim(["embed"], 10, 60)
    assert (job.attempts, job.payload) == (1, {"x": 1})


async def test_retrying_dead_jobs_keeps_one_pending_job_per_key(store: Any) -> None:
    queue = queue_for(store)
    for _ in range(2):
        await queue.enqueue("embed", key="m1", max_attempts=1)
        (job,) = await queue.claim(["embed"], 10, 60)
        await queue.fail(job, "broken")
    assert await queue.counts() == JobCounts(pending=0, running=0, failed=2)
    assert await queue.retry_dead("embed") == 1
    assert await queue.counts() == JobCounts(pending=1, running=0, failed=0)


async def test_a_failed_job_is_superseded_by_newer_pending_work_for_its_key(store: Any) -> None:
    queue = queue_for(store)
    await queue.enqueue("embed", key="m1")
    (job,) = await queue.claim(["embed"], 10, 60)
    newer = await queue.enqueue("embed", key="m1")
    await queue.fail(job, "timeout", delay=0)
    assert [j.id for j in await queue.claim(["embed"], 10, 60)] == [newer]


async def test_a_crashed_workers_job_comes_back_when_its_lease_expires(store: Any) -> None:
    queue = queue_for(store)
    await queue.enqueue("embed", key="m1", max_attempts=2)
    (first,) = await queue.claim(["embed"], 10, 0)  # the worker "crashes": no complete, no fail
    with anyio.fail_after(10):
        while not (again := await queue.claim(["embed"], 10, 0)):
            await anyio.sleep(0.01)
    assert [(j.id, j.attempts) for j in again] == [(first.id, 2)]
    with anyio.fail_after(10):
        while (await queue.counts()).failed == 0:  # a job that kills every worker ends dead, not looping
            assert await queue.claim(["embed"], 10, 0) == []
            await anyio.sleep(0.01)
    assert await queue.counts() == JobCounts(pending=0, running=0, failed=1)


async def test_the_worker_runs_batches_and_retries_a_failing_handler(store: Any) -> None:
    queue = queue_for(store)
    seen: list[list[int]] = []
    for i in range(5):
        await queue.enqueue("embed", {"i": i})
    await queue.enqueue("flaky", {"n": 1}, max_attempts=2)

    async def embed(jobs: list[Job]) -> None:
        seen.append([j.payload["i"] for j in jobs])

    async def flaky(jobs: list[Job]) -> None:
        raise RuntimeError("upstream said 503")

    worker = Worker(queue, {"embed": embed, "flaky": flaky}, batch=2)
    assert await worker.run_once() == 6
    assert seen == [[0, 1], [2, 3], [4]]
    assert await queue.counts() == JobCounts(pending=1, running=0, failed=0)  # flaky waits for its retry
    assert await worker.run_once() == 0


async def test_a_handler_can_fail_single_jobs_of_a_batch(store: Any) -> None:
    queue = queue_for(store)
    ids = [await queue.enqueue("embed", {"i": i}, max_attempts=1) for i in range(3)]

    async def embed(jobs: list[Job]) -> None:
        raise JobError({jobs[1].id: "text too long"})

    assert await Worker(queue, {"embed": embed}).run_once() == 3
    assert await queue.counts() == JobCounts(pending=0, running=0, failed=1)
    assert ids[1] is not None


async def test_the_running_worker_wakes_on_notify_and_stops_on_request(store: Any) -> None:
    queue = queue_for(store)
    done = anyio.Event()
    handled: list[int] = []

    async def embed(jobs: list[Job]) -> None:
        handled.extend(j.id for j in jobs)
        done.set()

    worker = Worker(queue, {"embed": embed}, poll=3600)  # only notify can wake it in time
    stop = anyio.Event()
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(worker.run, stop)
            await anyio.sleep(0.05)
            job_id = await queue.enqueue("embed")
            worker.notify()
            await done.wait()
            stop.set()
    assert handled == [job_id]
    assert await queue.counts() == JobCounts(pending=0, running=0, failed=0)


@pytest.mark.parametrize("linger", [0.0, 0.4])
async def test_with_a_linger_writes_in_quick_succession_are_handled_in_one_batch(store: Any, linger: float) -> None:
    queue = queue_for(store)
    batches: list[list[int]] = []
    done = anyio.Event()

    async def embed(jobs: list[Job]) -> None:
        batches.append([j.id for j in jobs])
        if sum(map(len, batches)) == 3:
            done.set()

    worker = Worker(queue, {"embed": embed}, poll=3600, linger=linger)
    stop = anyio.Event()
    ids = []
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(worker.run, stop)
            await anyio.sleep(0.05)
            for _ in range(3):  # three stores, 50 ms apart, each waking the worker
                ids.append(await queue.enqueue("embed"))
                worker.notify()
                await anyio.sleep(0.05)
            await done.wait()
            stop.set()
    if linger:
        assert batches == [ids]
    else:  # without one, the first write is handled as soon as it wakes the worker, alone
        assert batches[0] == ids[:1] and len(batches) >= 2


async def test_the_worker_survives_an_unavailable_database_and_resumes(store: Any, db_target: str,
                                                                        settings_for: Any) -> None:
    from server.storage import open_storage

    other = open_storage(settings_for(db_target))  # not open yet: every claim raises StorageUnavailable
    done = anyio.Event()

    async def embed(jobs: list[Job]) -> None:
        done.set()

    worker = Worker(queue_for(other), {"embed": embed}, poll=0.01)
    stop = anyio.Event()
    try:
        with anyio.fail_after(20):
            async with anyio.create_task_group() as tg:
                tg.start_soon(worker.run, stop)
                await queue_for(store).enqueue("embed")
                await anyio.sleep(0.1)
                assert not done.is_set()
                await other.open()
                await done.wait()
                stop.set()
    finally:
        await other.close()
    assert await queue_for(store).counts() == JobCounts(pending=0, running=0, failed=0)


async def test_storing_a_memory_queues_no_embedding_without_an_embedder(svc: MemoryService, store: Any) -> None:
    queue = queue_for(store)
    await svc.store("nobody will embed this")
    assert await store.get_meta("embedding_model") is None
    assert await queue.counts() == JobCounts(pending=0, running=0, failed=0)


async def test_storing_and_changing_a_memory_queues_one_embedding(svc: MemoryService, store: Any) -> None:
    queue = queue_for(store)
    await store.set_meta("embedding_model", "x")
    assert await store.get_meta("embedding_model") == "x"
    memory = await svc.store("we use ruff for linting")
    assert await queue.counts() == JobCounts(pending=1, running=0, failed=0)
    again = await svc.store("We use ruff  for linting")
    assert again.created is False
    await svc.update(memory.id, content="we use ruff and mypy")
    await svc.update(memory.id, importance=9)
    assert await queue.counts() == JobCounts(pending=1, running=0, failed=0)
    (job,) = await queue.claim(["embed"], 10, 60)
    assert (job.kind, job.key) == ("embed", memory.id)

    await svc.update(memory.id, content="we use ruff, mypy and pytest")  # changed while being embedded
    await svc.update(memory.id, tags=["lint"])
    await svc.delete(memory.id)
    assert await queue.counts() == JobCounts(pending=1, running=1, failed=0)


async def test_workers_in_two_processes_never_claim_the_same_job(store: Any, db_target: str,
                                                                  settings_for: Any) -> None:
    """Two more stores on the same database (two pools, or two SQLite connections) act as two processes."""
    from server.storage import open_storage

    for i in range(200):
        assert await queue_for(store).enqueue("embed", {"i": i}) is not None
    others = [open_storage(settings_for(db_target)) for _ in range(2)]
    claimed: Counter[int] = Counter()

    async def drain(queue: JobQueue) -> None:
        while batch := await queue.claim(["embed"], 7, 60):
            claimed.update(j.id for j in batch)
            await queue.complete([j.id for j in batch])

    for other in others:
        await other.open()
    try:
        with anyio.fail_after(60):
            async with anyio.create_task_group() as tg:
                for other in others:
                    for _ in range(3):
                        tg.start_soon(drain, queue_for(other))
    finally:
        for other in others:
            await other.close()
    assert len(claimed) == 200 and set(claimed.values()) == {1}
    assert await queue_for(store).counts() == JobCounts(pending=0, running=0, failed=0)


def test_backoff_grows_with_jitter_and_is_capped() -> None:
    assert all(0.5 <= backoff(1) <= 2 for _ in range(100))
    assert all(8 <= backoff(4) <= 16 for _ in range(100))
    assert all(150 <= backoff(30) <= 300 for _ in range(100))
    assert len({backoff(5) for _ in range(20)}) > 1


def test_error_text_is_clipped_to_two_kilobytes_of_utf8() -> None:
    clipped = clip_error("é" * 5000 + "\x00")
    assert len(clipped.encode()) <= MAX_ERROR_BYTES and clipped.endswith("...")
    assert clip_error("short\x00") == "short"
