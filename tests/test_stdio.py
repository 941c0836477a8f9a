"""`stackmemory serve` as a real subprocess over stdio, the way Claude Desktop and Claude Code run it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import Client
from mcp.client.stdio import StdioServerParameters

from tests.conftest import PYTHON, server_env

pytestmark = pytest.mark.anyio


def stdio(db: str, **env: str) -> StdioServerParameters:
    return StdioServerParameters(command=PYTHON, args=["-m", "server", "serve"], env=server_env(db, **env))


async def test_memories_persist_across_server_restarts(db_target: str) -> None:
    async with Client(stdio(db_target)) as c:
        stored = await c.call_tool("store_memory", {"content": "The API is versioned by URL prefix /v2",
                                                    "kind": "interface"})
        assert not stored.is_error
    async with Client(stdio(db_target)) as c:
        found = await c.call_tool("search_memory", {"query": "api versioned"})
        assert [r["content"] for r in found.structured_content["results"]] == [
            "The API is versioned by URL prefix /v2"]
        status = (await c.call_tool("memory_status", {})).structured_content
        assert status["memories"] == 1 and status["reason"] == "STACKMEMORY_DB is set"


async def test_the_database_folder_is_created_on_first_use(tmp_path: Path) -> None:
    db = tmp_path / "deep" / "er" / "stackmemory.db"
    async with Client(stdio(str(db))) as c:
        assert not (await c.call_tool("store_memory", {"content": "first"})).is_error
    assert db.exists()


async def test_two_servers_on_one_sqlite_file_lose_no_writes(tmp_path: Path) -> None:
    """Two assistants open at once, each with its own `stackmemory serve`, writing as fast as they can."""
    db = str(tmp_path / "shared.db")
    per_client = 300
    errors: list[str] = []

    async def writer(name: str) -> None:
        async with Client(stdio(db)) as c:
            async def one(i: int) -> None:
                r = await c.call_tool("store_memory", {"content": f"{name} wrote memory {i}", "tags": [name]})
                if r.is_error:
                    errors.append(r.content[0].text)

            for batch in range(0, per_client, 10):
                async with anyio.create_task_group() as tg:
                    for i in range(batch, batch + 10):
                        tg.start_soon(one, i)

    async with anyio.create_task_group() as tg:
        tg.start_soon(writer, "alpha")
        tg.start_soon(writer, "beta")
    assert errors == []
    async with Client(stdio(db)) as c:
        status: dict[str, Any] = (await c.call_tool("memory_status", {})).structured_content
        assert status["memories"] == 2 * per_client
        for name in ("alpha", "beta"):
            seen, cursor = 0, None
            while True:
                args: dict[str, Any] = {"tags": [name], "limit": 100}
                if cursor:
                    args["cursor"] = cursor
                page = (await c.call_tool("list_memories", args)).structured_content
                seen += len(page["memories"])
                cursor = page["next_cursor"]
                if not cursor:
                    break
            assert seen == per_client


async def test_a_bad_configuration_exits_with_one_clear_line(tmp_path: Path) -> None:
    result = await anyio.run_process([PYTHON, "-m", "server", "serve"], check=False,
                                     env=server_env("mysql://nope/db"))
    assert result.returncode == 2
    lines = result.stderr.decode().strip().splitlines()
    assert len(lines) == 1 and "neither a file path nor a postgresql:// URL" in lines[0]
