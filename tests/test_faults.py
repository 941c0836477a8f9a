"""Database faults under a running server: PostgreSQL stopped and started again under a 100-client load,
and a SQLite file on a full or a read-only disk. The server must keep running, say clearly what is
wrong, lose nothing it acknowledged and recover by itself."""

from __future__ import annotations

import sqlite3
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import anyio
import psycopg
import pytest

from server.accounts import Accounts
from tests import figures
from tests.conftest import unavailable
from tests.test_hosted import stop
from tests.test_isolation import operator
from tests.test_transports import Served

pytestmark = pytest.mark.anyio

CLIENTS = 100
OUTAGE = 2.5  # seconds the load goes on while PostgreSQL is down
RECOVERY_LIMIT = 5.0  # the bound: service is back within this long after PostgreSQL is
PASSWORD = "pw-" + uuid.uuid4().hex  # in the server's database URL; must never reach its log


def with_password(url: str, user: str) -> str:
    parts = urlsplit(url)
    host = parts.netloc.split("@")[-1]
    return urlunsplit(parts._replace(netloc=f"{user}:{PASSWORD}@{host}"))


async def make_users(acc: Accounts) -> list[tuple[str, str]]:
    users = []
    for i in range(CLIENTS):
        name = f"load{i:03d}"
        await acc.create_user(name)
        users.append((name, (await acc.create_token(name, "load")).token))
    return users


class Load:
    """What the clients saw: acknowledged stores, errors, and when calls succeeded."""

    def __init__(self) -> None:
        self.acked: dict[str, str] = {}
        self.errors: list[str] = []
        self.error_times: list[float] = []
        self.failures: list[str] = []
        self.successes: list[tuple[str, float]] = []  # (client, monotonic end time) of successful calls
        self.calls = 0
        self.warm = 0
        self.stop = anyio.Event()


async def client_loop(served: Served, name: str, token: str, load: Load, warmed: anyio.Event) -> None:
    counted = False
    try:
        async with served.client(token) as c:
            i = 0
            while not load.stop.is_set():
                i += 1
                text = f"{name} note {i} {uuid.uuid4().hex}"
                if i % 2:
                    r = await c.call_tool("store_memory", {"content": text})
                else:
                    r = await c.call_tool("search_memory", {"query": "note", "limit": 5})
                load.calls += 1
                if r.is_error:
                    load.errors.append(r.content[0].text)
                    load.error_times.append(time.monotonic())
                    await anyio.sleep(0.05)
                    continue
                load.successes.append((name, time.monotonic()))
                if i % 2:
                    load.acked[r.structured_content["id"]] = text
                if not counted and i >= 2:
                    counted = True
                    load.warm += 1
                    if load.warm == CLIENTS:
                        warmed.set()
    except Exception as exc:  # noqa: BLE001 - a transport failure is a failure of the test, reported once
        load.failures.append(f"{name}: {type(exc).__name__}: {exc}")
        if not counted:
            load.warm += 1
            if load.warm == CLIENTS:
                warmed.set()


def first_after(load: Load, moment: float) -> dict[str, float]:
    """Each client's first success after `moment`, in seconds after it."""
    first: dict[str, float] = {}
    for name, t in load.successes:
        if t > moment and name not in first:
            first[name] = t - moment
    return first


async def test_postgres_restarted_under_load_recovers_within_seconds_and_loses_nothing(private_pg: Any) -> None:
    admin = private_pg.get_uri()
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f"CREATE ROLE app LOGIN SUPERUSER PASSWORD '{PASSWORD}'")
    url = with_password(admin, "app")
    users = await operator(url, make_users)
    # A short pool wait, so calls during the outage fail (clearly) instead of waiting it out.
    served = Served(url, "http", STACKMEMORY_LOG_LEVEL="DEBUG", STACKMEMORY_POOL_TIMEOUT="1")
    load = Load()
    warmed = anyio.Event()
    try:
        async with anyio.create_task_group() as tg:
            for name, token in users:
                tg.start_soon(client_loop, served, name, token, load, warmed)
            with anyio.fail_after(60):
                await warmed.wait()
            await anyio.to_thread.run_sync(stop, private_pg)
            down_at = time.monotonic()
            await anyio.sleep(OUTAGE)
            restart_at = time.monotonic()  # from here PostgreSQL may accept connections again
            await anyio.to_thread.run_sync(private_pg.ensure_postgres_running)
            up_at = time.monotonic()
            with anyio.fail_after(60):
                while len(recovered := first_after(load, up_at)) < CLIENTS and not load.failures:
                    await anyio.sleep(0.05)
            load.stop.set()
        assert served.proc.poll() is None, "the server must keep running through the outage"
        after = sorted(recovered.values())
        during = [t for _, t in load.successes if down_at < t < up_at]
        assert not load.failures, load.failures[:5]
        assert load.errors, "the outage should have been noticed by some call"
        # While PostgreSQL is down every error says so. Around it (a call that waited for a connection while
        # PostgreSQL was stopping, or starting again while the pool refilled, 100 clients sharing 20 connections with a 1 s wait)
        # an error may instead say the pool was busy; that one says to retry too.
        odd = [e for t, e in zip(load.error_times, load.errors, strict=True) if "database unavailable" not in e
               and (down_at <= t <= restart_at or "busy" not in e or "retry" not in e)]
        assert not odd, f"errors during the outage must say the database is unavailable: {odd[:3]}"
        assert after[0] <= RECOVERY_LIMIT, f"first success {after[0]:.1f}s after PostgreSQL came back"
        with psycopg.connect(admin) as conn:
            stored = dict(conn.execute("SELECT id, content FROM memories WHERE id = ANY(%s)",
                                       (list(load.acked),)).fetchall())
        assert stored == load.acked, f"{len(set(load.acked) - set(stored))} acknowledged stores are missing"
        served.stop()
        log = served.stderr()
        assert log and PASSWORD not in log, "the database password reached the log"
        leaked = [name for name, token in users if token in log or token[4:20] in log]
        assert not leaked, f"tokens of {leaked[:3]} reached the log"
        figures.record("postgres_outage", {
            "clients": CLIENTS, "outage_seconds": OUTAGE, "calls": load.calls, "acknowledged_stores": len(load.acked),
            "tool_errors": len(load.errors), "successes_while_down": len(during),
            "unavailable_errors": sum("database unavailable" in e for e in load.errors),
            "first_success_after_restart_s": round(after[0], 2),
            "all_clients_recovered_s": round(after[-1], 2),
            "log_bytes_checked": len(log)})
        print(f"\n[outage] {load.calls} calls, {len(load.errors)} tool errors, first success {after[0]:.2f}s "
              f"after PostgreSQL was back")
    finally:
        served.stop()


# ---- SQLite on a full or read-only disk -------------------------------------------------------------------

@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 4 MiB tmpfs of the test's own, which it may fill up or remount read-only (needs root: CI runs as root)."""
    where = tmp_path / "disk"
    where.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(where)], capture_output=True,
                             text=True, check=False)
    if mounted.returncode != 0:
        unavailable(f"full and read-only disk tests mount a small tmpfs, which failed here: {mounted.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def fill(path: Path) -> int:
    """Write to `path` until the disk is full; the bytes written."""
    written = 0
    with path.open("wb", buffering=0) as f:
        try:
            while True:
                written += f.write(b"\0" * 65536)
        except OSError:
            pass
        try:
            while True:
                written += f.write(b"\0" * 512)
        except OSError:
            pass
    return written


def sqlite_checks(db: Path, read_only: bool = False) -> tuple[str, dict[str, str]]:
    # A WAL database on a read-only disk opens only as immutable (its shared-memory file cannot be made).
    conn = sqlite3.connect(f"file:{db}?immutable=1", uri=True) if read_only else sqlite3.connect(db)
    try:
        (check,) = conn.execute("PRAGMA integrity_check").fetchone()
        if not read_only:  # the FTS5 check needs a writable connection, though it writes nothing
            conn.execute("INSERT INTO memories_fts (memories_fts) VALUES ('integrity-check')")
        rows = dict(conn.execute("SELECT id, content FROM memories WHERE deleted_at IS NULL").fetchall())
        return check, rows
    finally:
        conn.close()


async def test_a_full_disk_gives_a_clear_error_keeps_serving_and_corrupts_nothing(small_disk: Path) -> None:
    from mcp import Client

    from tests.test_stdio import stdio

    db = small_disk / "memories.db"
    acked: dict[str, str] = {}
    refused: list[str] = []
    async with Client(stdio(str(db))) as c:
        for i in range(20):
            text = f"before the disk filled {i}" + " padding" * 200
            acked[(await c.call_tool("store_memory", {"content": text})).structured_content["id"]] = text
        filler = small_disk / "filler"
        await anyio.to_thread.run_sync(fill, filler)
        errors = []
        for i in range(40):  # big writes until the disk refuses them
            text = f"while the disk is full {i} {uuid.uuid4().hex} " + "x" * 30_000
            r = await c.call_tool("store_memory", {"content": text})
            if r.is_error:
                errors.append(r.content[0].text)
                refused.append(text)
            else:
                acked[r.structured_content["id"]] = text
        assert errors, "the disk never filled up"
        assert all("is full" in e and "free space" in e for e in errors), errors[:3]
        assert not (await c.call_tool("search_memory", {"query": "disk filled"})).is_error, "reads still work"
        filler.unlink()
        text = "after space was freed"
        again = await c.call_tool("store_memory", {"content": text})
        assert not again.is_error, again.content[0].text
        acked[again.structured_content["id"]] = text
    check, rows = sqlite_checks(db)
    assert check == "ok"
    assert {k: rows.get(k) for k in acked} == acked
    assert not [t for t in refused if t in rows.values()], "a refused write was stored"
    figures.record("sqlite_full_disk", {"disk_bytes": 4 * 1024 * 1024, "refused_writes": len(errors),
                                        "acknowledged_writes": len(acked), "integrity_check": check,
                                        "error": errors[0][:400]})


async def test_a_read_only_disk_stops_the_server_at_start_with_one_clear_line(small_disk: Path) -> None:
    from mcp import Client

    from tests.conftest import PYTHON, server_env
    from tests.test_stdio import stdio

    db = small_disk / "memories.db"
    async with Client(stdio(str(db))) as c:
        stored = (await c.call_tool("store_memory", {"content": "written before the disk went read-only"}))
    remount = await anyio.run_process(["mount", "-o", "remount,ro", str(small_disk)], check=False)
    assert remount.returncode == 0, remount.stderr
    result = await anyio.run_process([PYTHON, "-m", "server", "serve"], check=False, env=server_env(str(db)))
    lines = result.stderr.decode().strip().splitlines()
    assert result.returncode == 1 and len(lines) == 1, lines
    assert "read-only" in lines[0] and str(small_disk) in lines[0], lines[0]
    cli = await anyio.run_process([PYTHON, "-m", "server", "search", "read-only"], check=False,
                                  env=server_env(str(db)))
    assert cli.returncode == 1 and "read-only" in cli.stderr.decode()
    check, rows = sqlite_checks(db, read_only=True)  # readable, intact, nothing lost
    assert check == "ok" and rows == {stored.structured_content["id"]: "written before the disk went read-only"}
    figures.record("sqlite_read_only", {"exit_code": result.returncode, "message": lines[0][:400]})
