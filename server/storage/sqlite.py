"""SQLite adapter: WAL, one writer behind a lock with BEGIN IMMEDIATE, FTS5 and vector search."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import sqlite3
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from server.errors import Conflict, NotFound, StackMemoryError, StorageUnavailable
from server.models import (
    Access,
    Memory,
    MemoryFilter,
    MemoryPatch,
    MemoryVersion,
    NewMemory,
    ScoredMemory,
    StoreStats,
)
from server.storage import migrations
from server.storage.base import RARE_WORD_MATCHES
from server.storage.vectors import IndexKind, VectorIndex, choose_index, rank_exact, sqlite_vec_path, to_blob

if TYPE_CHECKING:
    import aiosqlite

log = logging.getLogger(__name__)
Q = migrations.queries("sqlite")
BUSY_TIMEOUT_MS = 5000
# BEGIN IMMEDIATE waits busy_timeout for the file lock; beyond that we retry with jitter a few times,
# so two servers on one file never surface "database is locked" under ordinary contention.
BEGIN_ATTEMPTS = 8
OPEN_ATTEMPTS = 5
KEYWORD_RECENT = 100  # keyword search ranks this many of the newest matches (as PostgreSQL); see queries.sql


def ts(value: datetime | None) -> str | None:
    """Timestamps are stored as fixed-width UTC ISO text so that text order equals time order."""
    if value is None:
        return None
    return value.astimezone(UTC).isoformat(timespec="microseconds")


VECTOR_PAGE = 1000  # float32 vectors read per query while the in-process index loads (1.5 MB at 384-d)


class SQLiteStore:
    backend: Literal["sqlite"] = "sqlite"

    def __init__(self, path: str, vector_index: str = "auto") -> None:
        self.path = Path(path)
        self._requested_index = vector_index  # auto, sqlite-vec or memory; resolved on open
        self.vector_index: IndexKind | None = None
        self._writer: aiosqlite.Connection | None = None
        self._reader: aiosqlite.Connection | None = None
        self._vector_reader: aiosqlite.Connection | None = None  # its own thread: runs beside keyword search
        self._lock = asyncio.Lock()
        self._index: VectorIndex | None = None

    @property
    def location(self) -> str:
        return str(self.path)

    async def open(self) -> None:
        if self.path.is_dir():  # sqlite3 fails on it too, but aiosqlite's thread then outlives the event loop
            raise StorageUnavailable(f"cannot open the database {self.path}: it is a folder; give a file path, "
                                     f"e.g. --db {self.path / 'stackmemory.db'}")
        with _translated(self.path):
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self.vector_index = choose_index(self._requested_index)
        # Several servers may start on a new file at once: switching it to WAL and migrating it need
        # the file to themselves, so a start that finds it busy waits and tries again.
        for attempt in range(OPEN_ATTEMPTS):
            try:
                self._writer = await self._connect()
                await self.migrate()
                self._reader = await self._connect()
                self._vector_reader = await self._connect()
                return
            except StorageUnavailable as exc:
                await self.close()
                if "busy" not in str(exc) or attempt == OPEN_ATTEMPTS - 1:
                    raise
                await asyncio.sleep(random.uniform(0.05, 0.25) * (attempt + 1))

    async def _connect(self) -> aiosqlite.Connection:
        import aiosqlite

        with _translated(self.path):
            db = await aiosqlite.connect(self.path, isolation_level=None)
        try:
            db.row_factory = sqlite3.Row
            with _translated(self.path):
                await db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
                await db.execute("PRAGMA journal_mode = WAL")
                await db.execute("PRAGMA synchronous = NORMAL")
                await db.execute("PRAGMA foreign_keys = ON")
                if self.vector_index == "sqlite-vec":
                    await db.enable_load_extension(True)
                    await db.load_extension(sqlite_vec_path())
                    await db.enable_load_extension(False)  # SQL must never load anything else
        except BaseException:
            await db.close()
            raise
        return db

    async def close(self) -> None:
        for db in (self._vector_reader, self._reader, self._writer):
            if db is not None:
                await db.close()
        self._vector_reader = self._reader = self._writer = None

    # ---- transactions ---------------------------------------------------------------------------------

    @asynccontextmanager
    async def _write(self) -> AsyncIterator[aiosqlite.Connection]:
        db = self._writer
        if db is None:
            raise StorageUnavailable("the SQLite store is not open")
        async with self._lock:
            with _translated(self.path):
                await _begin_immediate(db)
            try:
                yield db
                with _translated(self.path):
                    await db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    await db.execute("ROLLBACK")
                raise

    @asynccontextmanager
    async def _statement(self) -> AsyncIterator[aiosqlite.Connection]:
        """The writer connection for a single autocommit statement (atomic on its own)."""
        db = self._writer
        if db is None:
            raise StorageUnavailable("the SQLite store is not open")
        async with self._lock:
            with _translated(self.path):
                yield db

    async def _fetch(self, name: str, params: dict[str, Any], *, vectors: bool = False) -> list[sqlite3.Row]:
        db = (self._vector_reader if vectors else None) or self._reader or self._writer
        if db is None:
            raise StorageUnavailable("the SQLite store is not open")
        with _translated(self.path):
            # execute_fetchall is one trip to the driver's thread; execute + fetchall + close are three.
            return list(await db.execute_fetchall(Q[name], params))

    async def migrate(self) -> int:
        db = self._writer
        if db is None:
            raise StorageUnavailable("the SQLite store is not open")
        async with self._lock, _translated_async(self.path):
            await db.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, "
                "name TEXT NOT NULL, checksum TEXT NOT NULL, applied_at TEXT NOT NULL)"
            )
            async with db.execute("SELECT version, checksum FROM schema_migrations") as cur:
                applied = {row[0]: row[1] for row in await cur.fetchall()}
            for m in migrations.pending("sqlite", applied):
                log.info("applying SQLite migration %04d_%s", m.version, m.name)
                # The claim row goes first: a second process migrating the same file at once fails
                # on its primary key inside its own transaction, rolls back and finds the work done.
                claim = (f"INSERT INTO schema_migrations VALUES ({m.version}, '{m.name}', "
                         f"'{m.checksum}', '{ts(datetime.now(UTC))}');")
                try:
                    await db.executescript(f"BEGIN IMMEDIATE;\n{claim}\n{m.sql}\nCOMMIT;")
                except sqlite3.IntegrityError:
                    if db.in_transaction:
                        await db.execute("ROLLBACK")
                except BaseException:
                    if db.in_transaction:
                        await db.execute("ROLLBACK")
                    raise
        return migrations.latest_version("sqlite")

    async def ping(self) -> int:
        db = self._reader or self._writer
        if db is None:
            raise StorageUnavailable("the SQLite store is not open")
        with _translated(self.path):
            async with db.execute("SELECT coalesce(max(version), 0) FROM schema_migrations") as cur:
                row = await cur.fetchone()
        return int(row[0]) if row else 0

    # ---- memories -------------------------------------------------------------------------------------

    async def add_memory(self, new: NewMemory) -> tuple[Memory, bool]:
        # Autocommit: the insert is atomic on its own, with no BEGIN and COMMIT to send.
        async with self._statement() as db:
            found = await _insert_or_find(db, _new_params(new), replace_expired=False)
        # None: another process deleted the duplicate between the two statements; store it after all.
        if found is None:
            return await self.add_memory(new)
        memory, created = found
        if not created and _expired(ts(memory.expires_at), ts(new.created_at)):
            # An expired duplicate is replaced (tombstoned, then the memory inserted) in one transaction.
            return (await self.add_memories([new]))[0]
        return found

    async def add_memories(self, news: list[NewMemory]) -> list[tuple[Memory, bool]]:
        added: list[tuple[Memory, bool]] = []
        # One transaction: nothing can delete a duplicate found here before the batch commits.
        async with self._write() as db:
            for new in news:
                with _translated(self.path):
                    found = await _insert_or_find(db, _new_params(new), replace_expired=True)
                if found is None:  # cannot happen inside the write transaction; refuse rather than guess
                    raise StorageUnavailable("a memory of the batch was neither stored nor found as a "
                                             "duplicate; nothing was stored, retry")
                added.append(found)
        return added

    async def get_memory(self, memory_id: str, access: Access) -> Memory | None:
        rows = await self._fetch("get_memory", {"id": memory_id, **_access(access)})
        return _memory(rows[0]) if rows else None

    async def history(self, memory_id: str, access: Access, limit: int) -> list[MemoryVersion]:
        if await self.get_memory(memory_id, access) is None:  # history is visible iff its memory is
            return []
        return [_version(r) for r in await self._fetch("history", {"id": memory_id, "limit": limit})]

    async def update_memory(self, memory_id: str, patch: MemoryPatch, expected_version: int | None,
                            now: datetime, access: Access) -> Memory:
        async with self._write() as db:
            async with db.execute(Q["get_memory"], {"id": memory_id, **_access(access)}) as cur:
                row = await cur.fetchone()
            if row is None or row["deleted_at"] is not None:
                raise NotFound(f"no memory with id {memory_id}; it may have been deleted")
            current = _memory(row)
            if expected_version is not None and current.version != expected_version:
                raise Conflict(
                    f"memory {memory_id} is at version {current.version}, not {expected_version}: someone "
                    "changed it since you read it; get_memory it again and reapply your change"
                )
            merged = _merge(current, patch, row["content_hash"])
            if (merged["content_hash"], merged["project"], merged["dedup_owner"]) != (
                    row["content_hash"], current.project, row["dedup_owner"]):
                async with db.execute(Q["find_duplicate"], merged) as cur:
                    clash = await cur.fetchone()
                if clash is not None and clash["id"] != memory_id:
                    raise Conflict(f"memory {clash['id']} in project {merged['project']!r} already has "
                                   "this content; update or delete that one instead")
            merged.update(id=memory_id, now=ts(now), version=current.version, updated_by=access.user_id)
            await (await db.execute(Q["save_history"], {"id": memory_id, "changed_by": access.user_id,
                                                         "now": ts(now)})).close()
            async with db.execute(Q["update_memory"], merged) as cur:
                updated = await cur.fetchone()
        assert updated is not None
        return _memory(updated)

    async def delete_memory(self, memory_id: str, now: datetime, access: Access) -> Memory:
        async with self._write() as db:
            async with db.execute(Q["get_memory"], {"id": memory_id, **_access(access)}) as cur:
                visible = await cur.fetchone()
            row = None
            if visible is not None:
                params = {"id": memory_id, "now": ts(now), "updated_by": access.user_id}
                row = next(iter(await db.execute_fetchall(Q["tombstone_memory"], params)), None)
        if row is None:
            raise NotFound(f"no memory with id {memory_id}; it may already be deleted")
        return _memory(row)

    async def list_memories(self, where: MemoryFilter, limit: int, cursor: str | None) -> list[Memory]:
        rows = await self._fetch("list_memories", {**_filter(where), "limit": limit, "cursor": cursor})
        return [_memory(r) for r in rows]

    async def top_memories(self, where: MemoryFilter, limit: int) -> list[Memory]:
        rows = await self._fetch("top_memories", {**_filter(where), "limit": limit})
        return [_memory(r) for r in rows]

    async def search_keyword(self, terms: list[str], where: MemoryFilter, limit: int) -> list[ScoredMemory]:
        if not terms:
            return []
        # Each term is quoted as an FTS5 string, so no user text is ever parsed as query syntax.
        phrases = ['"' + t.replace('"', '""') + '"' for t in terms]
        pool = limit + 40  # FTS-ranked candidates joined and filtered; the rest only if filters need them
        params = {**_filter(where), "limit": limit, "match": " OR ".join(phrases), "pool": pool,
                  "recent": max(KEYWORD_RECENT, limit), "phrases": _json(phrases), "rare": RARE_WORD_MATCHES}
        rows = await self._fetch("search_keyword", params)
        if len(rows) < limit and (not rows or rows[0]["pooled"] == pool):
            rows = await self._fetch("search_keyword_all", params)
        return [ScoredMemory(r["id"], float(r["score"]), partial(_memory, r)) for r in rows]

    # ---- vectors and settings -------------------------------------------------------------------------

    async def get_meta(self, key: str) -> str | None:
        rows = await self._fetch("get_meta", {"key": key})
        return str(rows[0]["value"]) if rows else None

    async def set_meta(self, key: str, value: str) -> None:
        async with self._statement() as db:
            await db.execute_fetchall(Q["set_meta"], {"key": key, "value": value})

    async def prepare_vectors(self, model: str, dim: int) -> None:
        """Keep only this model's vectors (a reindex starts over) and reset the in-memory index."""
        async with self._write() as db:
            await db.execute(Q["delete_other_vectors"], {"model": model})
        self._index = None

    async def warm_vectors(self, model: str, dim: int) -> None:
        if self.vector_index == "memory":
            await self._vector_index(model, dim)  # 0.8 s at 100,000 vectors, at start-up, not in a search

    async def put_vectors(self, model: str, items: list[tuple[str, list[float]]]) -> None:
        async with self._write() as db:
            await db.executemany(Q["put_vector"], [{"memory_id": i, "model": model, "vector": to_blob(v)}
                                                   for i, v in items])

    async def live_contents(self, ids: list[str]) -> list[tuple[str, str]]:
        rows = await self._fetch("live_contents", {"ids": _json(ids)})
        return [(r["id"], r["content"]) for r in rows]

    async def written_in_a_row(self, ids: list[str], within: timedelta) -> list[tuple[str, str]]:
        rows = await self._fetch("written_in_a_row", {"ids": _json(ids), "days": within / timedelta(days=1)})
        return [(r["earlier"], r["later"]) for r in rows]

    async def unembedded(self, model: str, after: str, limit: int) -> list[str]:
        rows = await self._fetch("unembedded_ids", {"model": model, "after": after, "limit": limit})
        return [r["id"] for r in rows]

    async def count_unembedded(self, model: str) -> int:
        return int((await self._fetch("count_unembedded", {"model": model}))[0]["n"])

    async def search_vector(self, vector: list[float], model: str, where: MemoryFilter,
                            limit: int) -> list[ScoredMemory]:
        if self.vector_index == "sqlite-vec":
            rows = await self._fetch("search_vector", {**_filter(where), "model": model, "limit": limit,
                                                       "vector": to_blob(vector), "bytes": 4 * len(vector)},
                                   vectors=True)
            return [ScoredMemory(r["id"], float(r["score"]), partial(_memory, r)) for r in rows]
        index = await self._vector_index(model, len(vector))
        pool = limit + 20  # a little extra for deleted, changed or filtered-out neighbours
        found = await self._filtered_hits(await self._nearest(index, vector, model, pool), where, model)
        if len(found) < limit and len(index) > pool:
            # Filters (or deletions) removed too many: rank only the memories the filters allow, leaving
            # out any whose vector turns out to be stale (changed content), until the page is full.
            allowed = {r["id"] for r in await self._fetch("filtered_ids", _filter(where), vectors=True)}
            while True:
                hits = await self._nearest(index, vector, model, limit, allowed)
                found = await self._filtered_hits(hits, where, model)
                if len(found) == len(hits):
                    break
                allowed -= {i for i, _ in hits} - {f.id for f in found}
        return found[:limit]

    async def _nearest(self, index: VectorIndex, vector: list[float], model: str, k: int,
                       allowed: set[str] | None = None) -> list[tuple[str, float]]:
        """The index's candidates, re-scored exactly from their stored vectors. A vector deleted since the
        index loaded it (its memory deleted or changed) is not found by its seq: the index forgets it."""
        seqs = index.candidates(vector, k, allowed)
        if not seqs:
            return []
        rows = await self._fetch("vectors_at", {"seqs": _json(seqs), "model": model}, vectors=True)
        if len(rows) < len(seqs):
            index.discard(set(seqs) - {r["seq"] for r in rows})
        return rank_exact(vector, ((r["memory_id"], r["vector"]) for r in rows), k)

    async def _filtered_hits(self, hits: list[tuple[str, float]], where: MemoryFilter,
                             model: str) -> list[ScoredMemory]:
        if not hits:
            return []
        rows = await self._fetch("memories_in", {**_filter(where), "ids": _json([i for i, _ in hits]),
                                                 "model": model}, vectors=True)
        by_id = {r["id"]: r for r in rows}
        return [ScoredMemory(i, score, partial(_memory, by_id[i]))
                for i, score in hits if i in by_id]

    async def _vector_index(self, model: str, dim: int) -> VectorIndex:
        """The in-memory index, brought up to date with vectors any process wrote since the last search."""
        index = self._index
        if index is None or index.dim != dim:
            index = self._index = VectorIndex(dim, model)
        while True:  # in pages, so loading 100,000 vectors at the first search never holds them all at once
            rows = await self._fetch("vectors_since", {"model": model, "seq": index.high_water,
                                                       "limit": VECTOR_PAGE}, vectors=True)
            index.add((r["seq"], r["memory_id"], r["vector"]) for r in rows)
            if len(rows) < VECTOR_PAGE:
                return index

    async def stats(self, now: datetime, access: Access) -> StoreStats:
        (row,) = await self._fetch("stats", {"now": ts(now), **_access(access)})
        kinds = await self._fetch("count_by_kind", {"now": ts(now), **_access(access)})
        return StoreStats(backend="sqlite", location=self.location, schema_version=await self.ping(),
                          memories=row["live"], deleted=row["deleted"], expired=row["expired"],
                          by_kind={k["kind"]: k["n"] for k in kinds}, projects=row["projects"],
                          vector_index=self.vector_index)


async def _begin_immediate(db: aiosqlite.Connection) -> None:
    for attempt in range(BEGIN_ATTEMPTS):
        try:
            await db.execute("BEGIN IMMEDIATE")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) and "busy" not in str(exc) or attempt == BEGIN_ATTEMPTS - 1:
                raise
            await asyncio.sleep(random.uniform(0.01, 0.05) * (attempt + 1))


@asynccontextmanager
async def _translated_async(path: Path) -> AsyncIterator[None]:
    with _translated(path):
        yield


@contextmanager
def _translated(path: Path) -> Iterator[None]:
    """The one place sqlite3 errors become StackMemory errors."""
    try:
        yield
    except StackMemoryError:
        raise
    except sqlite3.Error as exc:
        text = str(exc)
        if "locked" in text or "busy" in text:
            raise StorageUnavailable(f"the database {path} stayed busy (another process is writing); retry") from exc
        if "readonly" in text or "read-only" in text:
            raise StorageUnavailable(f"the database {path} is read-only; check its file permissions") from exc
        if "full" in text:
            raise StorageUnavailable(f"the disk holding {path} is full; free space and retry (nothing was "
                                     "written)") from exc
        if "unable to open" in text and _read_only_disk(path):
            raise StorageUnavailable(f"the database {path} is on a read-only file system; make it writable "
                                     "(remount it, free the device) or set STACKMEMORY_DB to another path") from exc
        if "unable to open" in text:
            raise StorageUnavailable(f"cannot open the database {path}: check the folder exists and is "
                                     "writable, or set STACKMEMORY_DB to another path") from exc
        raise StorageUnavailable(f"SQLite error on {path}: {text}") from exc
    except OSError as exc:
        raise StorageUnavailable(f"cannot use the database at {path}: {exc.strerror or exc}; "
                                 "set STACKMEMORY_DB or --db to a writable path") from exc


def _read_only_disk(path: Path) -> bool:
    """Whether the database's folder is on a file system mounted read-only (so no permission helps)."""
    try:
        return bool(os.statvfs(path.parent).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def _json(value: object) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _access(access: Access) -> dict[str, Any]:
    return {"user_id": access.user_id, "workspaces": _json(list(access.workspaces))}


def _filter(where: MemoryFilter) -> dict[str, Any]:
    return {
        "user_id": where.user_id,
        "workspaces": _json(list(where.workspaces)),
        "project": where.project,
        "kinds": _json(where.kinds) if where.kinds else None,
        "tags": _json(where.tags) if where.tags else None,
        "since": ts(where.since),
        "until": ts(where.until),
        "now": ts(where.now),
    }


def _merge(current: Memory, patch: MemoryPatch, content_hash: str) -> dict[str, Any]:
    expires = None if patch.clear_expiry else (patch.expires_at or current.expires_at)
    visibility = patch.visibility or current.visibility
    return {
        "visibility": visibility,
        "dedup_owner": "" if visibility == "team" else current.created_by,
        "workspace_id": current.workspace_id,
        "content": patch.content if patch.content is not None else current.content,
        "content_hash": patch.content_hash or content_hash,
        "kind": patch.kind or current.kind,
        "tags": _json(patch.tags if patch.tags is not None else current.tags),
        "project": patch.project or current.project,
        "importance": patch.importance if patch.importance is not None else current.importance,
        "metadata": _json(patch.metadata if patch.metadata is not None else current.metadata),
        "expires_at": ts(expires),
    }


async def _insert_or_find(db: aiosqlite.Connection, params: dict[str, Any], *,
                          replace_expired: bool) -> tuple[Memory, bool] | None:
    """Insert the memory, or find the live one with the same content (created=False); None if neither.
    An expired memory holds its content no more than a deleted one: with replace_expired (only inside a
    write transaction), an expired duplicate is tombstoned as delete_memory does (the change feed records
    a delete) and the memory inserted after all. Without it, the expired duplicate is returned as found,
    and the caller replaces it in a transaction."""
    row = next(iter(await db.execute_fetchall(Q["insert_memory"], params)), None)
    if row is not None:
        return _memory(row), True
    existing = next(iter(await db.execute_fetchall(Q["find_duplicate"], params)), None)
    if existing is None:
        return None
    if replace_expired and _expired(existing["expires_at"], params["created_at"]):
        tombstone = {"id": existing["id"], "now": params["created_at"], "updated_by": params["updated_by"]}
        if await db.execute_fetchall(Q["tombstone_expired"], tombstone):
            row = next(iter(await db.execute_fetchall(Q["insert_memory"], params)), None)
            return None if row is None else (_memory(row), True)
    return _memory(existing), False


def _expired(expires_at: str | None, now: str | None) -> bool:
    """Whether a memory expiring at expires_at has expired at now: stored timestamps (ts), compared as the
    queries compare them."""
    return expires_at is not None and now is not None and expires_at <= now


def _new_params(new: NewMemory) -> dict[str, Any]:
    params = new.model_dump()
    params.update(tags=_json(new.tags), metadata=_json(new.metadata), dedup_owner=new.dedup_owner,
                  created_at=ts(new.created_at), expires_at=ts(new.expires_at))
    return params


def _memory(row: sqlite3.Row) -> Memory:
    # Rows were validated on the way in; model_construct skips re-validating them on the hot read path.
    return Memory.model_construct(
        id=row["id"], content=row["content"], kind=row["kind"], tags=json.loads(row["tags"]),
        project=row["project"], importance=row["importance"], metadata=json.loads(row["metadata"]),
        author=row["author"], created_at=_dt(row["created_at"]), updated_at=_dt(row["updated_at"]),
        expires_at=_dt(row["expires_at"]), version=row["version"], deleted_at=_dt(row["deleted_at"]),
        workspace_id=row["workspace_id"], visibility=row["visibility"], created_by=row["created_by"],
        updated_by=row["updated_by"],
    )


def _version(row: sqlite3.Row) -> MemoryVersion:
    return MemoryVersion.model_construct(
        version=row["version"], content=row["content"], kind=row["kind"], tags=json.loads(row["tags"]),
        project=row["project"], importance=row["importance"], metadata=json.loads(row["metadata"]),
        visibility=row["visibility"], changed_by=row["changed_by"], changed_at=_dt(row["changed_at"]))


def _dt(value: str | None) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value)
