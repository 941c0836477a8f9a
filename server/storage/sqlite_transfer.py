"""Moving data on SQLite: reads through a read-only connection of their own (a source is never written,
nor upgraded), writes through the store's single writer, and copies through the online backup API."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from server.accounts import LOCAL_USER_ID, LOCAL_WORKSPACE_ID
from server.errors import StorageUnavailable
from server.storage import migrations
from server.storage.kinds import Action, Kind, Row
from server.storage.sqlite import BUSY_TIMEOUT_MS, SQLiteStore, _translated, _translated_async, ts

T = migrations.named_queries("sqlite", "transfer.sql")
LOCAL = {"local_user": LOCAL_USER_ID, "local_workspace": LOCAL_WORKSPACE_ID}
R = TypeVar("R")


class SQLiteReader:
    """A TransferReader over one SQLite file, which may not exist yet (then it reads as empty)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._db: sqlite3.Connection | None = None
        self._lock = asyncio.Lock()

    async def close(self) -> None:
        if self._db is not None:
            await self._call(self._db.close)
            self._db = None

    async def _call(self, fn: Callable[..., R], *args: Any) -> R:
        def guarded() -> R:
            with _translated(self.path):
                return fn(*args)

        async with self._lock:
            return await asyncio.to_thread(guarded)

    def _connect(self) -> sqlite3.Connection | None:
        if self._db is None and self.path.exists():
            uri = self.path.resolve().as_uri() + "?mode=ro"
            db = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
            db.row_factory = sqlite3.Row
            db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            self._db = db
        return self._db

    async def _rows(self, name: str, params: dict[str, Any]) -> list[sqlite3.Row]:
        def run() -> list[sqlite3.Row]:
            db = self._connect()
            return [] if db is None else db.execute(T[name], params).fetchall()

        return await self._call(run)

    async def schema_version(self) -> int:
        def run() -> int:
            db = self._connect()
            if db is None or not db.execute(T["has_schema"]).fetchone()["n"]:
                return 0
            return int(db.execute(T["schema_version"]).fetchone()["version"])

        return await self._call(run)

    async def meta(self, key: str) -> str | None:
        rows = await self._rows("get_meta", {"key": key})
        return str(rows[0]["value"]) if rows else None

    @asynccontextmanager
    async def snapshot(self) -> AsyncIterator[SQLiteReader]:
        """One read transaction (in WAL mode, writers carry on) for every read inside."""
        def begin() -> None:
            db = self._connect()
            if db is not None:
                db.execute("BEGIN")
                db.execute("SELECT count(*) FROM sqlite_master").fetchone()  # takes the snapshot now

        await self._call(begin)
        try:
            yield self
        finally:
            if self._db is not None and self._db.in_transaction:
                await self._call(self._db.execute, "COMMIT")

    async def accounts(self, kind: Kind) -> list[Row]:
        return [_load(kind, r) for r in await self._rows(f"read_{kind.name}", {})]

    async def workspace_users(self, workspace: str) -> set[str]:
        return {r["id"] for r in await self._rows("workspace_users", {"workspace": workspace})}

    async def page(self, kind: Kind, after: str, limit: int, workspace: str | None) -> list[Row]:
        rows = await self._rows(f"read_{kind.name}", {"after": after, "limit": limit, "workspace": workspace})
        return [_load(kind, r) for r in rows]

    async def by_id(self, kind: Kind, ids: list[str]) -> list[Row]:
        return [_load(kind, r) for r in await self._rows(f"{kind.name}_by_id", {"ids": json.dumps(ids)})]

    async def children(self, kind: Kind, memory_ids: list[str], model: str | None) -> list[Row]:
        rows = await self._rows(f"read_{kind.name}", {"ids": json.dumps(memory_ids), "model": model})
        return [_load(kind, r) for r in rows]

    async def count(self, kind: Kind, workspace: str | None) -> int:
        rows = await self._rows(f"count_{kind.name}", {"workspace": workspace})
        return int(rows[0]["n"]) if rows else 0

    async def live_duplicate(self, row: Row) -> str | None:
        rows = await self._rows("live_duplicate", {k: row[k] for k in
                                                   ("workspace_id", "dedup_owner", "project", "content_hash")})
        return str(rows[0]["id"]) if rows else None

    async def is_empty(self) -> bool:
        if await self.schema_version() == 0:
            return True
        return bool((await self._rows("is_empty", LOCAL))[0]["empty"])

    async def integrity(self) -> str:
        """SQLite's own structural check of the file: 'ok', or what is wrong."""
        def run() -> str:
            db = self._connect()
            if db is None:
                return f"{self.path} does not exist"
            return "; ".join(str(r[0]) for r in db.execute("PRAGMA quick_check").fetchall())

        return await self._call(run)

    async def table_counts(self) -> dict[str, int]:
        """Rows in every ordinary table: a check of a copy that works whatever its schema version."""
        def run() -> dict[str, int]:
            db = self._connect()
            if db is None:
                return {}
            names = [r["name"] for r in db.execute(T["tables"]).fetchall()]
            # Names come from sqlite_master itself, quoted as identifiers.
            return {n: db.execute(f'SELECT count(*) FROM "{n}"').fetchone()[0] for n in names}

        return await self._call(run)


class SQLiteWriter:
    """A TransferWriter: every batch is one BEGIN IMMEDIATE transaction on the store's writer."""

    def __init__(self, store: SQLiteStore) -> None:
        self.store = store

    async def write(self, steps: list[tuple[Kind, Action, list[Row]]], carried_vectors: list[str]) -> None:
        async with self.store._write() as db, _translated_async(self.store.path):
            for kind, action, rows in steps:
                if rows:
                    await db.executemany(T[f"{action}_{kind.name}"], [_dump(kind, r) for r in rows])
            if carried_vectors:
                await (await db.execute(T["drop_embed_jobs"], {"ids": json.dumps(carried_vectors)})).close()

    async def adopt_model(self, model: str, dim: int, vectors: int) -> bool:
        await self.store.prepare_vectors(model, dim)
        await self.store.set_meta("embedding_dim", str(dim))
        await self.store.set_meta("embedding_model", model)
        return False  # SQLite searches vectors without an index to build


def copy_database(source: Path, target: Path) -> None:
    """A consistent copy of a live database with SQLite's online backup API (in one step, so it is one
    snapshot; writers in WAL mode carry on meanwhile). Blocking: run it in a thread."""
    with _translated(source):
        src = sqlite3.connect(source.resolve().as_uri() + "?mode=ro", uri=True)
    try:
        with _translated(target):
            dst = sqlite3.connect(target)
        try:
            with _translated(target):
                dst.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
                src.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
                src.backup(dst)
        finally:
            dst.close()
    finally:
        src.close()


def is_sqlite_file(path: Path) -> bool:
    try:
        with path.open("rb") as f:
            return f.read(16) == b"SQLite format 3\x00"
    except OSError as exc:
        raise StorageUnavailable(f"cannot read {path}: {exc.strerror or exc}") from exc


def _load(kind: Kind, row: sqlite3.Row) -> Row:
    out: Row = {}
    for c in kind.columns:
        value = row[c.name]
        if value is None:
            out[c.name] = None
        elif c.type == "ts":
            out[c.name] = datetime.fromisoformat(value).astimezone(UTC)
        elif c.type == "json":
            out[c.name] = json.loads(value)
        elif c.type == "vector":
            out[c.name] = bytes(value)
        elif c.type == "bool":
            out[c.name] = bool(value)
        else:
            out[c.name] = value
    return out


def _dump(kind: Kind, row: Row) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for c in kind.columns:
        value = row[c.name]
        if value is not None and c.type == "ts":
            value = ts(value)
        elif value is not None and c.type == "json":
            value = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
        elif value is not None and c.type == "bool":
            value = int(value)
        out[c.name] = value
    return out
