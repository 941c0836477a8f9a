"""PostgreSQL adapter: a psycopg 3 async pool, advisory-locked migrations, tsvector keyword search."""

from __future__ import annotations

import json
import logging
import time
import weakref
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime, timedelta
from functools import partial
from typing import TYPE_CHECKING, Any, Literal

import psycopg
from psycopg import pq
from psycopg.conninfo import conninfo_to_dict
from psycopg.rows import DictRow, dict_row
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool, PoolClosed, PoolTimeout
from psycopg_pool.base import AttemptWithBackoff

from server.config import redact_url
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

if TYPE_CHECKING:
    Conn = psycopg.AsyncConnection[DictRow]

log = logging.getLogger(__name__)
Q = migrations.queries("postgres")
# psycopg_pool retries a lost connection after 1, 2, 4, 8 ... s, so after a long outage the pool could stay
# empty for that long once PostgreSQL is back. Retrying every second (with jitter) instead bounds recovery
# to about a second, for one failed connection attempt a second per missing connection while it is down.
AttemptWithBackoff.DELAY_BACKOFF = 1.0
# Any constant works, as long as every StackMemory process uses the same one ("STACKMEM" in ASCII).
MIGRATION_LOCK_KEY = 0x535441434B4D454D
# The newest matches ranked per keyword search (with all matches of rare words; see queries.sql). 100, not
# 300: LoCoMo recall is the same to the third decimal, and a search of common words costs PostgreSQL 40% less.
KEYWORD_POOL = 100
COMMON_WORDS_TTL = 300.0  # seconds between reads of the common words (they change when ANALYZE runs)
CACHE_MAX_ROWS = 50_000  # bound on the shared cache; trimmed every CACHE_TRIM_EVERY writes per process
CACHE_TRIM_EVERY = 200
# A live duplicate can be tombstoned between our INSERT ... DO NOTHING and the SELECT that follows.
ADD_ATTEMPTS = 3
# A pooled connection idle for longer than this is checked (one empty round trip) before it is handed out;
# one back from work more recently is known good. Checking every checkout cost a tenth of the server's
# event-loop time under load (docs/benchmarks.md). After PostgreSQL restarts, a connection used within this
# window fails its next call with "database unavailable" and is replaced; the rest are caught by the check.
CHECK_IDLE_AFTER = 1.0


class PostgresStore:
    backend: Literal["postgres"] = "postgres"

    def __init__(self, url: str, *, min_size: int = 2, max_size: int = 20, timeout: float = 10.0,
                 auto_migrate: bool = True) -> None:
        self.url = url
        self.max_size = max_size
        self.timeout = timeout
        self.auto_migrate = auto_migrate
        self.min_size = min(min_size, max_size)
        self._pool: AsyncConnectionPool[Conn] | None = None
        self._cache_puts = 0
        self._common_words: tuple[float, str] = (-COMMON_WORDS_TTL, "{}")
        # When each idle connection came back to the pool (weak: a connection the pool drops goes with it).
        self._last_returned: weakref.WeakKeyDictionary[Conn, float] = weakref.WeakKeyDictionary()

    @property
    def location(self) -> str:
        return redact_url(self.url)

    async def open(self) -> None:
        # A fresh pool per open: a closed pool cannot be reopened, and a failed open closes it.
        pool: AsyncConnectionPool[Conn] = AsyncConnectionPool(
            self.url, min_size=self.min_size, max_size=self.max_size, timeout=self.timeout, open=False,
            connection_class=psycopg.AsyncConnection[DictRow], check=self._check, reset=self._returned,
            name="stackmemory",
            # No server-side prepared statements: they break behind PgBouncer in transaction mode, and
            # the optional-filter queries plan better with their actual parameters.
            kwargs={"autocommit": True, "row_factory": dict_row, "prepare_threshold": None},
            configure=self._configure,
        )
        try:
            async with self._translated():
                await self._probe()  # fails fast with the driver's reason, instead of a pool timeout
                if self.auto_migrate:  # before the pool: its connections must find the app role made
                    await self.migrate()
                await pool.open(wait=True, timeout=self.timeout)
        except BaseException:
            await pool.close()
            raise
        self._pool = pool

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()

    # ---- connections and errors -----------------------------------------------------------------------

    async def _returned(self, conn: Conn) -> None:
        self._last_returned[conn] = time.monotonic()

    async def _check(self, conn: Conn) -> None:
        if time.monotonic() - self._last_returned.pop(conn, -CHECK_IDLE_AFTER) >= CHECK_IDLE_AFTER:
            await AsyncConnectionPool.check_connection(conn)

    async def _configure(self, conn: Conn) -> None:
        """Each pooled connection runs as a role row-level security applies to: when the login role could
        bypass it (a superuser, or BYPASSRLS), it switches to stackmemory_app, which migration 0006 made."""
        cur = await conn.execute(Q["role_bypasses_rls"])
        row = await cur.fetchone()
        if row and row["bypass"]:
            if not row["app_role"]:
                raise StorageUnavailable(
                    f"the PostgreSQL role {row['login']!r} bypasses row-level security and the "
                    "stackmemory_app role is missing; run `stackmemory db upgrade` as a role that can "
                    "create roles, or connect as a role without SUPERUSER or BYPASSRLS")
            await conn.execute("SET ROLE stackmemory_app")

    async def _probe(self) -> None:
        """Connect once outside the pool, so a failure carries the server's own reason."""
        conn = await psycopg.AsyncConnection.connect(self.url, connect_timeout=max(2, int(self.timeout)))
        await conn.close()

    def _where(self) -> str:
        info = conninfo_to_dict(self.url)
        host = str(info.get("host") or info.get("hostaddr") or "localhost")
        port = str(info.get("port") or 5432)
        return f"PostgreSQL at {host}:{port}, database {info.get('dbname') or info.get('user') or '(default)'}"

    def _unreachable(self, exc: BaseException) -> str:
        reason = " ".join(str(exc).split()) or type(exc).__name__
        return (f"database unavailable: cannot reach {self._where()} ({reason}); check the server is running "
                "and reachable and the user, password and database in its URL (STACKMEMORY_DB or DATABASE_URL) "
                "are right, then retry")

    @asynccontextmanager
    async def _translated(self) -> AsyncIterator[None]:
        """The one place psycopg and pool errors become StackMemory errors."""
        try:
            yield
        except StackMemoryError:
            raise
        except PoolClosed as exc:
            raise StorageUnavailable("the PostgreSQL store is not open") from exc
        except PoolTimeout as exc:
            # A full pool and a dead server look the same from the queue; one direct connection tells.
            try:
                await self._probe()
            except psycopg.Error as down:
                raise StorageUnavailable(self._unreachable(down)) from exc
            raise StorageUnavailable(
                f"all {self.max_size} PostgreSQL connections stayed busy for {self.timeout:g}s; "
                "retry, or raise STACKMEMORY_POOL_MAX"
            ) from exc
        except psycopg.errors.UniqueViolation as exc:
            constraint = exc.diag.constraint_name or "a unique key"
            if constraint == "memories_dedup":
                raise Conflict("another live memory in that project already has this content; "
                               "update or delete that one instead") from exc
            raise Conflict(f"that would duplicate a record the database already holds ({constraint}); "
                           "nothing was written") from exc
        except psycopg.OperationalError as exc:
            raise StorageUnavailable(self._unreachable(exc)) from exc
        except psycopg.Error as exc:
            reason = " ".join(str(exc).split())
            raise StorageUnavailable(f"PostgreSQL error on {self.location}: {reason}") from exc

    @asynccontextmanager
    async def _connection(self) -> AsyncIterator[Conn]:
        pool = self._pool
        if pool is None:
            raise StorageUnavailable("the PostgreSQL store is not open")
        async with self._translated(), pool.connection() as conn:
            yield conn

    @asynccontextmanager
    async def _transaction(self) -> AsyncIterator[Conn]:
        async with self._connection() as conn, conn.transaction():
            yield conn

    @asynccontextmanager
    async def _as(self, user_id: str | None) -> AsyncIterator[Conn]:
        """A transaction in which row-level security knows the caller (user_id), or in which background
        work acts as the system (None). Pipelined: BEGIN, the setting and the first query share a round trip.
        Outside such a transaction, memories are invisible: no caller is set."""
        async with self._connection() as conn, conn.pipeline(), conn.transaction():
            if user_id is None:
                await conn.execute(Q["act_as_system"])
            else:
                await conn.execute(Q["act_as_user"], {"user_id": user_id})
            yield conn

    async def _fetch_as(self, user_id: str | None, name: str, params: dict[str, Any]) -> list[DictRow]:
        async with self._as(user_id) as conn:
            cur = await conn.execute(Q[name], params)
            return await cur.fetchall()

    async def _fetch(self, name: str, params: dict[str, Any]) -> list[DictRow]:
        async with self._connection() as conn:
            cur = await conn.execute(Q[name], params)
            return await cur.fetchall()

    async def migrate(self) -> int:
        """On a connection of its own, as the login role (which owns the tables), not the pooled app role."""
        async with self._translated():
            conn = await psycopg.AsyncConnection.connect(self.url, autocommit=True, row_factory=dict_row,
                                                         connect_timeout=max(2, int(self.timeout)))
            async with conn:
                # A session lock, so each migration can still commit in its own transaction; a second
                # process waits here and then finds the work done. A dropped connection releases it.
                await conn.execute(Q["lock_migrations"], {"key": MIGRATION_LOCK_KEY})
                try:
                    await conn.execute(Q["create_schema_migrations"])
                    cur = await conn.execute(Q["applied_migrations"])
                    applied = {row["version"]: row["checksum"] for row in await cur.fetchall()}
                    for m in migrations.pending("postgres", applied):
                        log.info("applying PostgreSQL migration %04d_%s", m.version, m.name)
                        async with conn.transaction():
                            await conn.execute(m.sql)
                            await conn.execute(Q["record_migration"],
                                               {"version": m.version, "name": m.name, "checksum": m.checksum})
                finally:
                    if conn.info.transaction_status == pq.TransactionStatus.IDLE:
                        await conn.execute(Q["unlock_migrations"], {"key": MIGRATION_LOCK_KEY})
        return migrations.latest_version("postgres")

    async def notifications(self, channel: str) -> AsyncIterator[str | None]:
        """What is NOTIFYed on `channel`, over a connection of its own outside the pool: first None, once
        LISTEN is in effect, then each payload. Losing the connection raises StorageUnavailable."""
        async with self._translated():
            conn = await psycopg.AsyncConnection.connect(self.url, autocommit=True,
                                                         connect_timeout=max(2, int(self.timeout)))
            async with conn:
                await conn.execute(sql_identifier_listen(channel))
                yield None
                async for note in conn.notifies():
                    yield note.payload
        raise StorageUnavailable(f"the LISTEN connection to {self._where()} ended")

    async def ping(self) -> int:
        async with self._connection() as conn:
            cur = await conn.execute(Q["has_schema_migrations"])
            present = await cur.fetchone()
            if not present or not present["present"]:
                return 0
            cur = await conn.execute(Q["schema_version"])
            row = await cur.fetchone()
        return int(row["version"]) if row else 0

    # ---- memories -------------------------------------------------------------------------------------

    async def add_memory(self, new: NewMemory) -> tuple[Memory, bool]:
        return (await self.add_memories([new]))[0]

    async def add_memories(self, news: list[NewMemory]) -> list[tuple[Memory, bool]]:
        if not news:
            return []
        editors = {new.updated_by for new in news}
        if len(editors) > 1:
            raise ValueError("add_memories takes one caller's memories")
        async with self._as(editors.pop()) as conn:
            return [await _insert_or_find(conn, new) for new in news]

    async def get_memory(self, memory_id: str, access: Access) -> Memory | None:
        rows = await self._fetch_as(access.user_id, "get_memory", {"id": memory_id, **_access(access)})
        return _memory(rows[0]) if rows else None

    async def history(self, memory_id: str, access: Access, limit: int) -> list[MemoryVersion]:
        rows = await self._fetch_as(access.user_id, "history", {"id": memory_id, "limit": limit})
        return [_version(r) for r in rows]

    async def update_memory(self, memory_id: str, patch: MemoryPatch, expected_version: int | None,
                            now: datetime, access: Access) -> Memory:
        editor = access.user_id
        async with self._as(editor) as conn:
            cur = await conn.execute(Q["lock_memory"], {"id": memory_id})
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
                    row["content_hash"], current.project, _dedup_owner(current.visibility, current.created_by)):
                cur = await conn.execute(Q["find_duplicate"], merged)
                clash = await cur.fetchone()
                if clash is not None and clash["id"] != memory_id:
                    raise Conflict(f"memory {clash['id']} in project {merged['project']!r} already has "
                                   "this content; update or delete that one instead")
            merged.update(id=memory_id, now=now, version=current.version, updated_by=editor)
            await conn.execute(Q["save_history"], {"id": memory_id, "changed_by": editor, "now": now})
            cur = await conn.execute(Q["update_memory"], merged)
            updated = await cur.fetchone()
        assert updated is not None  # the row is locked, so nothing changed it since we read it
        return _memory(updated)

    async def delete_memory(self, memory_id: str, now: datetime, access: Access) -> Memory:
        rows = await self._fetch_as(access.user_id, "tombstone_memory",
                                    {"id": memory_id, "now": now, "updated_by": access.user_id})
        if not rows:
            raise NotFound(f"no memory with id {memory_id}; it may already be deleted")
        return _memory(rows[0])

    async def list_memories(self, where: MemoryFilter, limit: int, cursor: str | None) -> list[Memory]:
        rows = await self._fetch_as(where.user_id, "list_memories",
                                    {**_filter(where), "limit": limit, "cursor": cursor})
        return [_memory(r) for r in rows]

    async def top_memories(self, where: MemoryFilter, limit: int) -> list[Memory]:
        rows = await self._fetch_as(where.user_id, "top_memories", {**_filter(where), "limit": limit})
        return [_memory(r) for r in rows]

    async def search_keyword(self, terms: list[str], where: MemoryFilter, limit: int) -> list[ScoredMemory]:
        if not terms:
            return []
        # The terms are plain words, so "a or b" in web-search syntax is exactly "any of them".
        query = " or ".join(terms)
        rows = await self._fetch_as(where.user_id, "search_keyword",
                                    {**_filter(where), "limit": limit, "q": query, "pool": max(KEYWORD_POOL, limit),
                                     "common": await self._common(), "rare": RARE_WORD_MATCHES})
        return [ScoredMemory(r["id"], float(r["score"]), partial(_memory, r)) for r in rows]

    async def _common(self) -> str:
        """The lexemes ANALYZE found in RARE_WORD_MATCHES memories or more, read at most every few minutes.
        Before the first ANALYZE there are none, and every word of a query counts as rare. Kept as one array
        literal: dumping the list (hundreds of words) on every search cost more than the rest of its
        parameters together."""
        read_at, words = self._common_words
        if time.monotonic() - read_at >= COMMON_WORDS_TTL:
            rows = await self._fetch("common_words", {"min_rows": RARE_WORD_MATCHES})
            words = array_literal([r["word"] for r in rows])
            self._common_words = (time.monotonic(), words)
        return words

    # ---- vectors and settings -------------------------------------------------------------------------

    async def get_meta(self, key: str) -> str | None:
        rows = await self._fetch("get_meta", {"key": key})
        return str(rows[0]["value"]) if rows else None

    async def set_meta(self, key: str, value: str) -> None:
        async with self._connection() as conn:
            await conn.execute(Q["set_meta"], {"key": key, "value": value})

    async def prepare_vectors(self, model: str, dim: int, *, build_memory_mb: int = 0) -> None:
        """Keep only this model's vectors and make sure the HNSW index for its dimension exists.

        build_memory_mb: room to build the index in (maintenance_work_mem), when many vectors are already
        there (a bulk load): with the whole graph in memory the build is several times faster."""
        from psycopg import sql

        create = sql.SQL(Q["create_vector_index"]).format(
            name=sql.Identifier(f"memory_vectors_hnsw_{int(dim)}"), dim=sql.Literal(int(dim)))
        async with self._transaction() as conn:
            await conn.execute(Q["act_as_owner"])  # an index is the tables' owner's to build
            await conn.execute(Q["lock_migrations_xact"], {"key": MIGRATION_LOCK_KEY})
            await conn.execute(Q["delete_other_vectors"], {"model": model})
            if build_memory_mb > 0:
                # After a bulk load the planner has no statistics yet, and guesses badly without them.
                await conn.execute(Q["analyze_bulk_loaded"])
                await conn.execute(Q["index_build_memory"], {"memory": f"{int(build_memory_mb)}MB"})
            await conn.execute(create)

    async def warm_vectors(self, model: str, dim: int) -> None:
        return None  # the HNSW index lives in PostgreSQL

    async def put_vectors(self, model: str, items: list[tuple[str, list[float]]]) -> None:
        async with self._as(None) as conn, conn.cursor() as cur:
            await cur.executemany(Q["put_vector"], [{"memory_id": i, "model": model, "embedding": _vector(v)}
                                                    for i, v in items])

    async def live_contents(self, ids: list[str]) -> list[tuple[str, str]]:
        rows = await self._fetch_as(None, "live_contents", {"ids": ids})
        return [(r["id"], r["content"]) for r in rows]

    async def written_in_a_row(self, ids: list[str], within: timedelta) -> list[tuple[str, str]]:
        # One text literal, not a list: psycopg's list dumper checks every element (a hybrid search passes
        # up to 200 ids), which cost more than the query's own parsing.
        rows = await self._fetch_as(None, "written_in_a_row", {"ids": array_literal(ids), "within": within})
        return [(r["earlier"], r["later"]) for r in rows]

    async def unembedded(self, model: str, after: str, limit: int) -> list[str]:
        rows = await self._fetch_as(None, "unembedded_ids", {"model": model, "after": after, "limit": limit})
        return [r["id"] for r in rows]

    async def count_unembedded(self, model: str) -> int:
        return int((await self._fetch_as(None, "count_unembedded", {"model": model}))[0]["n"])

    async def search_vector(self, vector: list[float], model: str, where: MemoryFilter,
                            limit: int) -> list[ScoredMemory]:
        from psycopg import sql

        query = sql.SQL(Q["search_vector"]).format(dim=sql.Literal(len(vector)))
        params = {**_filter(where), "embedding": _vector(vector), "model": model, "limit": limit}
        async with self._as(where.user_id) as conn:
            await conn.execute(Q["vector_scan_settings"], {"ef": str(max(40, limit))})
            cur = await conn.execute(query, params)
            rows = await cur.fetchall()
        hits = [ScoredMemory(r["id"], float(r["score"]), partial(_memory, r))
                for r in rows]
        return sorted(hits, key=lambda h: -h.score)  # relaxed_order may return neighbours slightly out of order

    # ---- shared cache (UNLOGGED) ---------------------------------------------------------------------

    async def cache_get(self, key: str) -> bytes | None:
        rows = await self._fetch("cache_get", {"key": key})
        return bytes(rows[0]["value"]) if rows else None

    async def cache_put(self, key: str, value: bytes, ttl: float) -> None:
        async with self._connection() as conn:
            await conn.execute(Q["cache_put"], {"key": key, "value": value, "ttl": ttl})
            self._cache_puts += 1
            if self._cache_puts % CACHE_TRIM_EVERY == 0:
                await conn.execute(Q["cache_trim"], {"max_rows": CACHE_MAX_ROWS})

    async def stats(self, now: datetime, access: Access) -> StoreStats:
        params = {"now": now, **_access(access)}
        async with self._as(access.user_id) as conn:
            row = await (await conn.execute(Q["stats"], params)).fetchone()
            kinds = await (await conn.execute(Q["count_by_kind"], params)).fetchall()
        assert row is not None
        return StoreStats(backend="postgres", location=self.location, schema_version=await self.ping(),
                          memories=row["live"], deleted=row["deleted"], expired=row["expired"],
                          by_kind={k["kind"]: k["n"] for k in kinds}, projects=row["projects"])


def sql_identifier_listen(channel: str) -> Any:
    from psycopg import sql

    return sql.SQL("LISTEN {}").format(sql.Identifier(channel))


def _vector(values: list[float]) -> str:
    """pgvector's text form; bound as a parameter and cast in SQL, so no adapter registration is needed."""
    return "[" + ",".join(f"{x:.7g}" for x in values) + "]"


def _access(access: Access) -> dict[str, Any]:
    return {"user_id": access.user_id, "workspaces": list(access.workspaces)}


def _dedup_owner(visibility: str, created_by: str) -> str:
    return "" if visibility == "team" else created_by


def _filter(where: MemoryFilter) -> dict[str, Any]:
    return {
        "user_id": where.user_id,
        "workspaces": list(where.workspaces),
        "project": where.project,
        "kinds": list(where.kinds) if where.kinds else None,
        "tags": Jsonb(where.tags) if where.tags else None,
        "since": where.since,
        "until": where.until,
        "now": where.now,
    }


def _merge(current: Memory, patch: MemoryPatch, content_hash: str) -> dict[str, Any]:
    expires = None if patch.clear_expiry else (patch.expires_at or current.expires_at)
    visibility = patch.visibility or current.visibility
    return {
        "visibility": visibility,
        "dedup_owner": _dedup_owner(visibility, current.created_by),
        "workspace_id": current.workspace_id,
        "content": patch.content if patch.content is not None else current.content,
        "content_hash": patch.content_hash or content_hash,
        "kind": patch.kind or current.kind,
        "tags": Jsonb(patch.tags if patch.tags is not None else current.tags),
        "project": patch.project or current.project,
        "importance": patch.importance if patch.importance is not None else current.importance,
        "metadata": Jsonb(patch.metadata if patch.metadata is not None else current.metadata),
        "expires_at": expires,
    }


def _json_value(value: Any) -> Any:
    """jsonb arrives parsed, or as text from the search queries (parsed here, only for shown hits)."""
    return json.loads(value) if isinstance(value, str) else value


async def _insert_or_find(conn: Conn, new: NewMemory) -> tuple[Memory, bool]:
    """Insert the memory, or find the live one with the same content (created=False). ON CONFLICT makes two
    concurrent adds of one text insert once; the loser reads the winner, and if that was deleted meanwhile,
    tries again. An expired memory holds its content no more than a deleted one: an expired duplicate is
    tombstoned as delete_memory does (the change feed records a delete), in this transaction, and the
    insert tried again; if a concurrent add replaced it first, the next attempt finds that one instead."""
    params = new.model_dump()
    params.update(tags=Jsonb(new.tags), metadata=Jsonb(new.metadata), dedup_owner=new.dedup_owner)
    for _ in range(ADD_ATTEMPTS):
        cur = await conn.execute(Q["insert_memory"], params)
        row = await cur.fetchone()
        if row is not None:
            return _memory(row), True
        cur = await conn.execute(Q["find_duplicate"], params)
        existing = await cur.fetchone()
        if existing is None:
            continue
        if existing["expires_at"] is None or existing["expires_at"] > new.created_at:
            return _memory(existing), False
        # As the system for this one statement: row-level security lets a member change only their own
        # memories, and the expired duplicate of a team memory may be a teammate's (the query checks the
        # caller's membership itself). Then back to the caller, as _as set it.
        await conn.execute(Q["act_as_system"])
        await conn.execute(Q["tombstone_expired"], {"id": existing["id"], "now": new.created_at,
                                                    "updated_by": new.updated_by})
        await conn.execute(Q["act_as_user"], {"user_id": new.updated_by})
    raise StorageUnavailable("the memory kept colliding with concurrent changes to the same content; nothing "
                             "was stored, retry")


def array_literal(words: list[str]) -> str:
    """A PostgreSQL text[] literal: every element double-quoted, with backslashes and quotes escaped."""
    return "{" + ",".join('"' + w.replace("\\", "\\\\").replace('"', '\\"') + '"' for w in words) + "}"


def _memory(row: DictRow) -> Memory:
    # Rows were validated on the way in and arrive typed; model_construct skips re-validating them.
    return Memory.model_construct(
        id=row["id"], content=row["content"], kind=row["kind"], tags=_json_value(row["tags"]),
        project=row["project"], importance=row["importance"], metadata=_json_value(row["metadata"]),
        author=row["author"],
        created_at=row["created_at"], updated_at=row["updated_at"], expires_at=row["expires_at"],
        version=row["version"], deleted_at=row["deleted_at"], workspace_id=row["workspace_id"],
        visibility=row["visibility"], created_by=row["created_by"], updated_by=row["updated_by"],
    )


def _version(row: DictRow) -> MemoryVersion:
    return MemoryVersion.model_construct(
        version=row["version"], content=row["content"], kind=row["kind"], tags=_json_value(row["tags"]),
        project=row["project"], importance=row["importance"], metadata=_json_value(row["metadata"]),
        visibility=row["visibility"], changed_by=row["changed_by"], changed_at=row["changed_at"])
