"""Moving data on PostgreSQL: snapshot reads and batch writes through the store's pool, as the system
(row-level security would otherwise hide every memory), vectors in pgvector's binary form."""

from __future__ import annotations

import json
import struct
import sys
from array import array
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC
from typing import TYPE_CHECKING, Any

from server.accounts import LOCAL_USER_ID, LOCAL_WORKSPACE_ID
from server.storage import migrations
from server.storage.kinds import VECTOR, Action, Kind, Row
from server.storage.postgres import PostgresStore, Q

if TYPE_CHECKING:
    from server.storage.postgres import Conn

T = migrations.named_queries("postgres", "transfer.sql")
LOCAL = {"local_user": LOCAL_USER_ID, "local_workspace": LOCAL_WORKSPACE_ID}


class PostgresTransfer:
    """A TransferReader and TransferWriter over an open PostgresStore. Inside snapshot() every read
    shares one REPEATABLE READ transaction."""

    def __init__(self, store: PostgresStore, conn: Conn | None = None) -> None:
        self.store = store
        self._conn = conn

    async def close(self) -> None:
        return None

    @asynccontextmanager
    async def _system(self) -> AsyncIterator[Conn]:
        """A transaction acting as the system, without a pipeline (COPY needs that)."""
        async with self.store._connection() as conn, conn.transaction():
            await conn.execute(Q["act_as_system"])
            yield conn

    async def _rows(self, name: str, params: dict[str, Any], *, binary: bool = False) -> list[dict[str, Any]]:
        """binary: results in PostgreSQL's binary format (vectors: raw bytes, not twice as many hex digits)."""
        if self._conn is not None:
            async with self.store._translated():
                cur = await self._conn.execute(T[name], params, binary=binary)
                return list(await cur.fetchall())
        async with self.store._as(None) as conn:
            cur = await conn.execute(T[name], params, binary=binary)
            return list(await cur.fetchall())

    async def schema_version(self) -> int:
        return await self.store.ping()

    async def meta(self, key: str) -> str | None:
        return await self.store.get_meta(key) if await self.schema_version() else None

    @asynccontextmanager
    async def snapshot(self) -> AsyncIterator[PostgresTransfer]:
        async with self.store._connection() as conn, conn.transaction():
            await conn.execute(T["snapshot"])
            await conn.execute(Q["act_as_system"])
            yield PostgresTransfer(self.store, conn)

    async def export_snapshot(self) -> str:
        """Inside snapshot(): its id, for pg_dump --snapshot to read exactly what this transaction reads."""
        return str((await self._rows("export_snapshot", {}))[0]["id"])

    async def server_version(self) -> int:
        """The server's major version (18 for 18.1)."""
        return int((await self._rows("server_version", {}))[0]["num"]) // 10000

    async def accounts(self, kind: Kind) -> list[Row]:
        return [_load(kind, r) for r in await self._rows(f"read_{kind.name}", {})]

    async def workspace_users(self, workspace: str) -> set[str]:
        return {r["id"] for r in await self._rows("workspace_users", {"workspace": workspace})}

    async def page(self, kind: Kind, after: str, limit: int, workspace: str | None) -> list[Row]:
        rows = await self._rows(f"read_{kind.name}", {"after": after, "limit": limit, "workspace": workspace})
        return [_load(kind, r) for r in rows]

    async def by_id(self, kind: Kind, ids: list[str]) -> list[Row]:
        return [_load(kind, r) for r in await self._rows(f"{kind.name}_by_id", {"ids": ids})]

    async def children(self, kind: Kind, memory_ids: list[str], model: str | None) -> list[Row]:
        rows = await self._rows(f"read_{kind.name}", {"ids": memory_ids, "model": model}, binary=kind is VECTOR)
        return [_load(kind, r) for r in rows]

    async def count(self, kind: Kind, workspace: str | None) -> int:
        return int((await self._rows(f"count_{kind.name}", {"workspace": workspace}))[0]["n"])

    async def live_duplicate(self, row: Row) -> str | None:
        rows = await self._rows("live_duplicate", {k: row[k] for k in
                                                   ("workspace_id", "dedup_owner", "project", "content_hash")})
        return str(rows[0]["id"]) if rows else None

    async def is_empty(self) -> bool:
        if await self.schema_version() == 0:
            return True
        return bool((await self._rows("is_empty", LOCAL))[0]["empty"])

    # ---- writing --------------------------------------------------------------------------------------

    async def write(self, steps: list[tuple[Kind, Action, list[Row]]], carried_vectors: list[str]) -> None:
        async with self._system() as conn:
            for kind, action, rows in steps:
                if not rows:
                    continue
                if kind.account:
                    async with conn.cursor() as cur:
                        await cur.executemany(T[f"{action}_{kind.name}"], [_dump(kind, r) for r in rows])
                else:
                    await _staged(conn, kind, action, rows)
            if carried_vectors:
                await conn.execute(T["drop_embed_jobs"], {"ids": carried_vectors})

    async def adopt_model(self, model: str, dim: int, vectors: int) -> bool:
        await self.store.prepare_vectors(model, dim, build_memory_mb=index_build_memory(vectors, dim))
        await self.store.set_meta("embedding_dim", str(dim))
        await self.store.set_meta("embedding_model", model)
        return True  # an HNSW index was built


async def _staged(conn: Conn, kind: Kind, action: Action, rows: list[Row]) -> None:
    """COPY the rows into the transaction's own table, then move them with one statement."""
    await conn.execute(T[f"stage_{kind.name}"])
    async with conn.cursor() as cur:
        async with cur.copy(T[f"copy_{kind.name}"]) as copy:
            if kind is VECTOR:
                # A binary COPY field is read by the column type's receive function, so these bytes are
                # taken as pgvector's wire format as they are.
                copy.set_types(["text", "text", "bytea"])
                for r in rows:
                    await copy.write_row((r["memory_id"], r["model"], to_wire(r["vector"])))
            else:
                names = kind.names
                for r in rows:
                    values = _dump(kind, r)
                    await copy.write_row([values[n] for n in names])
        await cur.execute(T[f"{action}_{kind.name}"])
        await cur.execute(T[f"unstage_{kind.name}"])


def index_build_memory(vectors: int, dim: int) -> int:
    """MB of maintenance_work_mem that holds a whole HNSW graph (the vectors and their links) while it is
    built, within sane bounds: a graph that does not fit builds several times slower."""
    return int(min(1024, max(64, vectors * (4 * dim + 512) * 6 // 5 // 2**20 + 32)))


def to_wire(vector: bytes) -> bytes:
    """Little-endian float32s -> pgvector's binary form: int16 dimension, int16 0, big-endian float4s."""
    values = array("f", vector)
    if sys.byteorder == "little":
        values.byteswap()
    return struct.pack(">hh", len(values), 0) + values.tobytes()


def from_wire(data: bytes) -> bytes:
    dim = int.from_bytes(data[:2], "big")
    values = array("f", data[4:4 + 4 * dim])
    if sys.byteorder == "little":
        values.byteswap()
    return values.tobytes()


def _load(kind: Kind, row: dict[str, Any]) -> Row:
    out: Row = {}
    for c in kind.columns:
        value = row[c.name]
        if value is not None and c.type == "ts":
            value = value.astimezone(UTC)
        elif value is not None and c.type == "vector":
            value = from_wire(bytes(value))
        elif value is not None and c.type == "json" and isinstance(value, str):
            value = json.loads(value)
        out[c.name] = value
    return out


def _dump(kind: Kind, row: Row) -> dict[str, Any]:
    return {c.name: json.dumps(row[c.name], ensure_ascii=False, separators=(",", ":"))
            if c.type == "json" and row[c.name] is not None else row[c.name] for c in kind.columns}
