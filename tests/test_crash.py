"""Crash safety: `stackmemory serve` is killed with SIGKILL at random (seeded) moments during a stream of
stores, updates and deletes (over stdio on SQLite, over Streamable HTTP on PostgreSQL), restarted, and
killed again; two lanes, each with its own server process on the same database, run at once, so a kill
also lands while the other process is writing. Afterwards every write the client saw acknowledged must
be there, intact, and the database must pass its integrity checks: SQLite's integrity_check, foreign
keys, the FTS5 index against the live rows; PostgreSQL's amcheck on every B-tree and GIN index; on both,
no orphaned rows and a gapless change feed.

Servers are driven with raw JSON-RPC (newline-delimited over stdio, POSTs to /mcp over HTTP) so a kill
is seen exactly where it lands: a reply read is an acknowledgement, anything else is not."""

from __future__ import annotations

import asyncio
import gc
import json
import os
import random
import signal
import sqlite3
import string
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests import figures
from tests.conftest import PYTHON, issue_token, server_env
from tests.test_transports import free_port

pytestmark = pytest.mark.anyio

SEED = int(os.environ.get("STACKMEMORY_CRASH_SEED", "9091"))
KILLS = int(os.environ.get("STACKMEMORY_CRASH_KILLS", "50"))  # per backend, over all lanes
LANES = 2
SPAWN_KILLS = 0.2  # share of kills timed from the process start (so some land during start-up)
PROTOCOL = "2025-06-18"


class Died(Exception):
    """The server went away before answering."""


# ---- drivers: one server process, raw JSON-RPC ----------------------------------------------------------

class StdioServer:
    def __init__(self, db: str, log: Path) -> None:
        self.db, self.log = db, log
        self.proc: asyncio.subprocess.Process | None = None
        self._ids = 0

    async def spawn(self) -> int:
        with self.log.open("ab") as err:
            self.proc = await asyncio.create_subprocess_exec(
                PYTHON, "-m", "server", "serve", env=server_env(self.db), stdin=subprocess.PIPE,
                stdout=subprocess.PIPE, stderr=err, limit=1 << 24)
        return self.proc.pid

    async def handshake(self) -> None:
        await self.request("initialize", {"protocolVersion": PROTOCOL, "capabilities": {},
                                          "clientInfo": {"name": "crash", "version": "0"}})
        await self._send({"jsonrpc": "2.0", "method": "notifications/initialized"})

    async def request(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        self._ids += 1
        await self._send({"jsonrpc": "2.0", "id": self._ids, "method": method, "params": params})
        assert self.proc is not None and self.proc.stdout is not None
        while True:
            line = await self.proc.stdout.readline()
            if not line:
                raise Died
            message = json.loads(line)
            if message.get("id") == self._ids:
                return message  # type: ignore[no-any-return]

    async def _send(self, message: dict[str, Any]) -> None:
        assert self.proc is not None and self.proc.stdin is not None
        try:
            self.proc.stdin.write(json.dumps(message).encode() + b"\n")
            await self.proc.stdin.drain()
        except (BrokenPipeError, ConnectionResetError) as exc:
            raise Died from exc

    async def reap(self) -> int:
        assert self.proc is not None
        return await self.proc.wait()


class HttpServer:
    def __init__(self, db: str, log: Path, token: str) -> None:
        import httpx2

        self.db, self.log, self.token = db, log, token
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/mcp"
        self.proc: asyncio.subprocess.Process | None = None
        self.http = httpx2.AsyncClient(timeout=30)
        self.session: str | None = None
        self._ids = 0

    async def spawn(self) -> int:
        with self.log.open("ab") as err:
            self.proc = await asyncio.create_subprocess_exec(
                PYTHON, "-m", "server", "serve", "--transport", "http", "--port", str(self.port),
                env=server_env(self.db, STACKMEMORY_RATE_LIMIT="0"), stdout=subprocess.DEVNULL, stderr=err)
        return self.proc.pid

    async def handshake(self) -> None:
        import httpx2

        deadline = time.monotonic() + 30
        while True:  # wait for the port to open
            if self.proc is None or self.proc.returncode is not None:
                raise Died
            try:
                if (await self.http.get(self.url.replace("/mcp", "/healthz"))).status_code == 200:
                    break
            except httpx2.TransportError:
                if time.monotonic() > deadline:
                    raise AssertionError("server did not start within 30 s") from None
                await asyncio.sleep(0.02)
        await self.request("initialize", {"protocolVersion": PROTOCOL, "capabilities": {},
                                          "clientInfo": {"name": "crash", "version": "0"}})
        await self._post({"jsonrpc": "2.0", "method": "notifications/initialized"})

    async def request(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        self._ids += 1
        return await self._post({"jsonrpc": "2.0", "id": self._ids, "method": method, "params": params})

    async def _post(self, message: dict[str, Any]) -> dict[str, Any]:
        import httpx2

        headers = {"Authorization": f"Bearer {self.token}", "Accept": "application/json, text/event-stream",
                   "Content-Type": "application/json", "MCP-Protocol-Version": PROTOCOL}
        if self.session:
            headers["Mcp-Session-Id"] = self.session
        try:
            response = await self.http.post(self.url, json=message, headers=headers)
            body = response.text  # reading it all: an answer cut off by the kill is no answer
        except httpx2.TransportError as exc:
            raise Died from exc
        if response.status_code >= 300 or "id" not in message:
            if response.status_code >= 300:
                raise AssertionError(f"HTTP {response.status_code}: {body[:300]}")
            return {}
        self.session = response.headers.get("mcp-session-id", self.session)
        for line in body.splitlines():
            if line.startswith("data:") and line[5:].strip():
                reply = json.loads(line[5:])
                if reply.get("id") == message["id"]:
                    return reply  # type: ignore[no-any-return]
        if body.lstrip().startswith("{"):
            return json.loads(body)  # type: ignore[no-any-return]
        raise Died  # the stream ended without the answer

    async def reap(self) -> int:
        assert self.proc is not None
        code = await self.proc.wait()
        await self.http.aclose()
        return code


# ---- the workload and what the client knows ---------------------------------------------------------------

@dataclass
class Ledger:
    """What one lane's client saw acknowledged, and what was in flight when the server died."""

    live: dict[str, str] = field(default_factory=dict)  # id -> acknowledged content
    deleted: set[str] = field(default_factory=set)
    maybe_stored: list[str] = field(default_factory=list)  # contents of stores cut off by a kill
    maybe: dict[str, set[str | None]] = field(default_factory=dict)  # id -> possible contents (None: deleted)
    acked: int = 0
    kills: int = 0
    spawn_kills: int = 0


WORDS = ["deploy", "schema", "rollback", "café", "naïve", "データ", "🚀", "index", "token", "retry", "queue",
         "latency", "Ünïcode", "quote\"d", "back\\slash", "tab\there", "line\nbreak", "<tag>", "'; DROP TABLE x;--"]


def content(rnd: random.Random) -> str:
    marker = "m" + "".join(rnd.choices(string.ascii_lowercase + string.digits, k=12))
    size = rnd.choice([3, 10, 40, 400, 1500])  # words: up to ~10 KB, so some writes span several pages
    return marker + " " + " ".join(rnd.choices(WORDS, k=size))


def marker_of(text: str) -> str:
    return text.split(" ", 1)[0]


async def one_write(server: Any, rnd: random.Random, ledger: Ledger, errors: list[str]) -> None:
    roll = rnd.random()
    target = rnd.choice(sorted(ledger.live)) if ledger.live and roll >= 0.75 else None
    if target is None:
        text = content(rnd)
        ledger.maybe_stored.append(text)
        reply = await server.request("tools/call", {"name": "store_memory", "arguments": {
            "content": text, "tags": rnd.sample(["a", "b", "crash", "x y"], k=rnd.randint(0, 3))}})
        ledger.maybe_stored.pop()
        if ok(reply, errors):
            ledger.live[reply["result"]["structuredContent"]["id"]] = text
            ledger.acked += 1
        return
    old = ledger.live.pop(target)
    if roll < 0.93:
        text = content(rnd)
        ledger.maybe[target] = {old, text}
        reply = await server.request("tools/call", {"name": "update_memory", "arguments": {"id": target,
                                                                                           "content": text}})
        del ledger.maybe[target]
        ledger.live[target] = text if ok(reply, errors) else old
    else:
        ledger.maybe[target] = {old, None}
        reply = await server.request("tools/call", {"name": "delete_memory", "arguments": {"id": target}})
        del ledger.maybe[target]
        if ok(reply, errors):
            ledger.deleted.add(target)
        else:
            ledger.live[target] = old
    ledger.acked += 1


def ok(reply: dict[str, Any], errors: list[str]) -> bool:
    result = reply.get("result")
    if result is None or result.get("isError"):
        errors.append(json.dumps(reply)[:400])
        return False
    return True


async def lane(make: Any, lives: int, rnd: random.Random, ledger: Ledger, errors: list[str]) -> None:
    """Start a server, write until it is killed, check it died of the kill (not of anything else), repeat."""
    for _ in range(lives):
        server = make()
        from_spawn = rnd.random() < SPAWN_KILLS
        delay = rnd.uniform(0, 1.0) if from_spawn else rnd.uniform(0, 0.3)
        killer: asyncio.Task[None] | None = None

        async def kill(pid: int, after: float) -> None:
            await asyncio.sleep(after)
            os.kill(pid, signal.SIGKILL)

        pid = await server.spawn()
        if from_spawn:
            killer = asyncio.create_task(kill(pid, delay))
        try:
            await server.handshake()
            if killer is None:
                killer = asyncio.create_task(kill(pid, delay))
            while True:
                await one_write(server, rnd, ledger, errors)
        except Died:
            pass
        assert killer is not None
        await killer
        code = await server.reap()
        assert code == -signal.SIGKILL, f"the server exited with {code}, not by the kill:\n" + \
            server.log.read_text(errors="replace")[-2000:]
        ledger.kills += 1
        ledger.spawn_kills += from_spawn  # a write cut off stays in `maybe` and is never touched again


@contextmanager
def broken_pipes_expected() -> Iterator[None]:
    """Pipes to a killed server break while asyncio is still flushing them: that is the point here, so the
    loop's exception handler drops those errors, from the first kill until every future that could still
    hold one has been collected (a future's "exception was never retrieved" is reported when it is freed,
    which may be after the last kill; anyio's test runner would fail the test on it)."""
    loop = asyncio.get_running_loop()
    previous = loop.get_exception_handler()

    def handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        if isinstance(context.get("exception"), (BrokenPipeError, ConnectionResetError)):
            return
        (previous or asyncio.AbstractEventLoop.default_exception_handler)(loop, context)

    loop.set_exception_handler(handler)
    try:
        yield
    finally:
        gc.collect()
        loop.set_exception_handler(previous)


async def hammer(make: Any, seed: int) -> tuple[list[Ledger], list[str]]:
    ledgers = [Ledger() for _ in range(LANES)]
    errors: list[str] = []
    per_lane = -(-KILLS // LANES)
    await asyncio.gather(*(lane(make, per_lane, random.Random(seed + i), ledgers[i], errors)
                           for i in range(LANES)))
    return ledgers, errors


def merged(ledgers: list[Ledger]) -> Ledger:
    total = Ledger()
    for ledger in ledgers:
        total.live.update(ledger.live)
        total.deleted |= ledger.deleted
        total.maybe_stored += ledger.maybe_stored
        total.maybe.update(ledger.maybe)
        total.acked += ledger.acked
        total.kills += ledger.kills
        total.spawn_kills += ledger.spawn_kills
    return total


# ---- what must hold afterwards --------------------------------------------------------------------------

def compare(rows: dict[str, tuple[str, bool]], expect: Ledger) -> list[str]:
    """Every acknowledged write is there and intact; writes cut off by a kill are all-or-nothing."""
    problems = []
    for mid, text in expect.live.items():
        got = rows.get(mid)
        if got is None or got[1]:
            problems.append(f"acknowledged memory {mid} is {'missing' if got is None else 'deleted'}")
        elif got[0] != text:
            problems.append(f"acknowledged memory {mid} changed: {got[0][:60]!r} != {text[:60]!r}")
    problems += [f"acknowledged delete of {mid} was undone" for mid in expect.deleted
                 if mid not in rows or not rows[mid][1]]
    for mid, options in expect.maybe.items():
        got = rows.get(mid)
        state = None if got is None or got[1] else got[0]
        if got is None or state not in options:
            problems.append(f"memory {mid}, cut off mid-write, is neither its old nor its new state")
    by_marker: dict[str, list[str]] = {}
    for text, _ in rows.values():
        by_marker.setdefault(marker_of(text), []).append(text)
    for text in expect.maybe_stored:
        if by_marker.get(marker_of(text), []) not in ([], [text]):
            problems.append(f"a store cut off by a kill left a partial or duplicate row: {marker_of(text)}")
    known = set(expect.live) | expect.deleted | set(expect.maybe)
    extra = [mid for mid, (text, _) in rows.items() if mid not in known
             and text not in expect.maybe_stored]
    problems += [f"row {mid} was never written by the client" for mid in extra]
    return problems


def check_sqlite(db: str, expect: Ledger) -> list[str]:
    conn = sqlite3.connect(db)
    try:
        problems = []
        if (check := conn.execute("PRAGMA integrity_check").fetchall()) != [("ok",)]:
            problems.append(f"integrity_check: {check[:5]}")
        if fk := conn.execute("PRAGMA foreign_key_check").fetchall():
            problems.append(f"foreign_key_check: {fk[:5]}")
        conn.execute("INSERT INTO memories_fts (memories_fts) VALUES ('integrity-check')")  # raises if corrupt
        found = conn.execute("SELECT id, rowid, content, deleted_at IS NOT NULL FROM memories").fetchall()
        rows = {mid: (text, bool(gone)) for mid, _, text, gone in found}
        problems += compare(rows, expect)
        # The keyword index holds exactly the live rows (tombstones are left out by design), and each
        # memory is found by its own marker word.
        conn.execute("CREATE VIRTUAL TABLE temp.fts_terms USING fts5vocab(main, memories_fts, 'instance')")
        indexed = {doc for (doc,) in conn.execute("SELECT DISTINCT doc FROM temp.fts_terms")}
        live = {rowid: text for _, rowid, text, gone in found if not gone}
        if indexed != set(live):
            problems.append(f"FTS index and live rows differ: {len(indexed ^ set(live))} rows")
        for rowid, text in live.items():
            hits = conn.execute("SELECT rowid FROM memories_fts WHERE memories_fts MATCH ?",
                                (f'"{marker_of(text)}"',)).fetchall()
            if hits != [(rowid,)]:
                problems.append(f"FTS search for {marker_of(text)} found {hits}, not row {rowid}")
        problems += orphans(lambda sql: conn.execute(sql).fetchall(), expect)
        return problems
    finally:
        conn.close()


ORPHANS = {
    "vectors": "SELECT count(*) FROM memory_vectors WHERE memory_id NOT IN (SELECT id FROM memories)",
    "history": "SELECT count(*) FROM memory_history WHERE memory_id NOT IN (SELECT id FROM memories)",
    "changes": "SELECT count(*) FROM change_log WHERE entity = 'memory' AND entity_id NOT IN (SELECT id FROM memories)",
    "jobs": "SELECT count(*) FROM jobs WHERE kind = 'embed' AND key NOT IN (SELECT id FROM memories)",
}


def orphans(query: Any, expect: Ledger) -> list[str]:
    """No row points at a memory that does not exist; the change feed has no gaps and has every write."""
    problems = [f"{n} orphaned {what} rows" for what, sql in ORPHANS.items() if (n := query(sql)[0][0])]
    for ws, count, low, high in query("SELECT workspace_id, count(*), min(cursor), max(cursor) FROM change_log "
                                      "GROUP BY workspace_id"):
        if (count, low) != (high, 1):
            problems.append(f"change feed of {ws} has gaps: {count} changes, cursors {low}..{high}")
    created = {mid for (mid,) in query("SELECT entity_id FROM change_log WHERE kind = 'create'")}
    gone = {mid for (mid,) in query("SELECT entity_id FROM change_log WHERE kind = 'delete'")}
    if missing := (set(expect.live) | expect.deleted) - created:
        problems.append(f"{len(missing)} acknowledged stores have no 'create' change")
    if missing := expect.deleted - gone:
        problems.append(f"{len(missing)} acknowledged deletes have no 'delete' change")
    return problems


def check_postgres(url: str, expect: Ledger) -> tuple[list[str], int]:
    import psycopg

    problems: list[str] = []
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS amcheck")
        indexes = conn.execute(
            "SELECT c.oid, c.relname, am.amname FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
            "JOIN pg_am am ON am.oid = c.relam JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = 'public' AND am.amname IN ('btree', 'gin')").fetchall()
        for oid, name, kind in indexes:
            try:
                if kind == "btree":  # heapallindexed: every row of the table is in the index
                    conn.execute("SELECT bt_index_check(%s, true)", (oid,))
                else:
                    conn.execute("SELECT gin_index_check(%s)", (oid,))
            except psycopg.Error as exc:
                problems.append(f"amcheck {name}: {exc}")
        found = conn.execute("SELECT id, content, deleted_at IS NOT NULL FROM memories").fetchall()
        problems += compare({mid: (text, gone) for mid, text, gone in found}, expect)
        conn.execute("SET enable_seqscan = off")  # the searches below must go through the GIN index
        for mid, text, gone in found:
            hits = conn.execute("SELECT id FROM memories WHERE search @@ plainto_tsquery('english', %s)",
                                (marker_of(text),)).fetchall()
            if hits != [(mid,)]:
                problems.append(f"full-text index: {marker_of(text)} found {hits}, not {mid}")
        problems += orphans(lambda sql: conn.execute(sql).fetchall(), expect)
        for ws, last, high in conn.execute("SELECT c.workspace_id, c.last, max(l.cursor) FROM change_cursors c "
                                           "JOIN change_log l USING (workspace_id) GROUP BY 1, 2"):
            if last != high:
                problems.append(f"change cursor of {ws} is {last} but the log ends at {high}")
    return problems, len(indexes)


async def served_after(server: Any, expect: Ledger, live: int) -> None:
    """A server started on the database afterwards serves it: it counts every live memory and finds one."""
    await server.spawn()
    try:
        await server.handshake()
        status = await server.request("tools/call", {"name": "memory_status", "arguments": {}})
        assert status["result"]["structuredContent"]["memories"] == live, status
        text = next(iter(expect.live.values()))
        found = await server.request("tools/call", {"name": "search_memory", "arguments": {
            "query": marker_of(text), "mode": "keyword"}})
        assert [r["content"] for r in found["result"]["structuredContent"]["results"]] == [text]
    finally:
        assert server.proc is not None
        server.proc.terminate()
        await server.reap()


def report(name: str, total: Ledger, started: float, **extra: Any) -> None:
    figures.record(name, {"kills": total.kills, "kills_during_start": total.spawn_kills,
                          "acknowledged_writes": total.acked, "cut_off_writes": len(total.maybe) + len(
                              total.maybe_stored), "memories_checked": len(total.live) + len(total.deleted),
                          "seconds": round(time.monotonic() - started, 1), **extra})
    print(f"\n[{name}] {total.kills} kills ({total.spawn_kills} during start-up), {total.acked} acknowledged "
          f"writes, {len(total.maybe) + len(total.maybe_stored)} cut off, {time.monotonic() - started:.0f}s")


async def test_sqlite_over_stdio_keeps_every_acknowledged_write_through_random_kills(tmp_path: Path) -> None:
    started = time.monotonic()
    db = str(tmp_path / "crash.db")
    log = tmp_path / "serve.log"
    with broken_pipes_expected():
        ledgers, errors = await hammer(lambda: StdioServer(db, log), SEED)
        total = merged(ledgers)
        assert errors == [], errors[:5]
        assert total.kills >= KILLS and total.acked > KILLS
        problems = check_sqlite(db, total)
        assert problems == [], problems[:20]
        conn = sqlite3.connect(db)
        live = conn.execute("SELECT count(*) FROM memories WHERE deleted_at IS NULL").fetchone()[0]
        conn.close()
        await served_after(StdioServer(db, log), total, live)
    report("crash_sqlite", total, started)


async def test_postgres_over_http_keeps_every_acknowledged_write_through_random_kills(
        pg_url: str, tmp_path: Path) -> None:
    import psycopg

    started = time.monotonic()
    token = issue_token(pg_url)
    log = tmp_path / "serve.log"
    with broken_pipes_expected():
        ledgers, errors = await hammer(lambda: HttpServer(pg_url, log, token), SEED + 100)
        total = merged(ledgers)
        assert errors == [], errors[:5]
        assert total.kills >= KILLS and total.acked > KILLS
        problems, checked = check_postgres(pg_url, total)
        assert problems == [], problems[:20]
        with psycopg.connect(pg_url) as conn:
            live = conn.execute("SELECT count(*) FROM memories WHERE deleted_at IS NULL").fetchone()[0]  # type: ignore[index]
        await served_after(HttpServer(pg_url, log, token), total, live)
    report("crash_postgres", total, started, indexes_checked=checked)


async def test_the_checks_notice_lost_writes_a_stale_index_and_orphans(tmp_path: Path) -> None:
    """The harness's own checks must be able to fail: break a database on purpose and read the verdict."""
    db = str(tmp_path / "broken.db")
    server = StdioServer(db, tmp_path / "serve.log")
    await server.spawn()
    await server.handshake()
    ledger = Ledger()
    for i in range(3):
        text = content(random.Random(i))
        reply = await server.request("tools/call", {"name": "store_memory", "arguments": {"content": text}})
        ledger.live[reply["result"]["structuredContent"]["id"]] = text
    assert server.proc is not None
    server.proc.terminate()
    await server.reap()
    assert check_sqlite(db, ledger) == []
    lost, stale, _ = sorted(ledger.live)
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA foreign_keys = OFF")
    conn.execute("DELETE FROM memories WHERE id = ?", (lost,))  # bypasses the FTS trigger's bookkeeping
    conn.execute("INSERT INTO memories_fts (memories_fts, rowid, content, tags) SELECT 'delete', rowid, content, "
                 "tags FROM memories WHERE id = ?", (stale,))
    conn.execute("INSERT INTO memory_history (memory_id, version, content, kind, tags, project, importance, "
                 "metadata, visibility, changed_by, changed_at) VALUES ('gone', 1, 'x', 'note', '[]', 'p', 5, "
                 "'{}', 'private', 'u', 'now')")
    conn.commit()
    conn.close()
    found = " | ".join(check_sqlite(db, ledger))
    assert f"acknowledged memory {lost} is missing" in found
    assert "FTS index and live rows differ" in found
    assert "orphaned history" in found
