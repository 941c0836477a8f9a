"""Bulk loads for the benchmarks (no MCP, no service: fast enough for 1M memories) and server memory readings."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

DIM = 384
MODEL_NAME = "local/sentence-transformers/all-MiniLM-L6-v2"  # LocalEmbedder's name for the shared model
BATCH = 20_000  # rows per transaction: keeps SQLite's WAL (and memory) bounded on a 1M load

# ---- SQLite -------------------------------------------------------------------------------------------------


def sqlite_schema(db: Path) -> None:
    """Create (or upgrade) the database with StackMemory's own migrations."""
    from server.storage.sqlite import SQLiteStore

    async def create() -> None:
        store = SQLiteStore(str(db), vector_index="memory")
        await store.open()
        await store.close()

    # In a thread of its own, so callers inside an event loop (bench_local.py) can use it too.
    with ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, create()).result()


def sqlite_bulk_memories(db: Path, memories: Iterable[dict[str, Any]]) -> tuple[int, float]:
    """Insert make_memory()-shaped dicts as the local user's memories, as store_memory would file them
    (id, content hash, personal workspace, private); the schema's triggers keep the keyword index and the
    change log as they would. Returns (rows added, seconds)."""
    from server.ids import new_id
    from server.rules import content_hash
    from server.storage.sqlite import ts

    sqlite_schema(db)
    t0 = time.perf_counter()
    con = sqlite3.connect(db)
    added = 0
    sql = ("INSERT OR IGNORE INTO memories (id, content, content_hash, kind, tags, project, importance, metadata,"
           " author, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, '{}', 'bench', ?, ?)")
    try:
        for chunk in _chunks(memories, BATCH):
            now = ts(datetime.now(UTC))
            rows = [(new_id(), m["content"], content_hash(m["content"]), m["kind"], _tags(m["tags"]),
                     m["project"], m["importance"], now, now) for m in chunk]
            with con:
                added += con.executemany(sql, rows).rowcount
    finally:
        con.close()
    return added, time.perf_counter() - t0


def sqlite_bulk_vectors(db: Path, seed: int = 7) -> tuple[int, float]:
    """Give every live memory without one a clustered vector and record the model, as if the worker had
    embedded them all with all-MiniLM-L6-v2. Returns (vectors added, seconds)."""
    t0 = time.perf_counter()
    con = sqlite3.connect(db)
    added = 0
    try:
        ids = [r[0] for r in con.execute(
            "SELECT id FROM memories m WHERE deleted_at IS NULL"
            " AND NOT EXISTS (SELECT 1 FROM memory_vectors v WHERE v.memory_id = m.id)")]
        vectors = clustered_vectors(len(ids), seed)
        for offset in range(0, len(ids), BATCH):
            with con:
                con.executemany("INSERT INTO memory_vectors (memory_id, model, vector) VALUES (?, ?, ?)",
                                ((ids[i], MODEL_NAME, vectors(i).tobytes())
                                 for i in range(offset, min(offset + BATCH, len(ids)))))
            added = min(offset + BATCH, len(ids))
        with con:
            con.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('embedding_model', ?),"
                        " ('embedding_dim', ?)", (MODEL_NAME, str(DIM)))
            con.execute("DELETE FROM jobs WHERE kind = 'embed'")  # nothing left to embed
    finally:
        con.close()
    return added, time.perf_counter() - t0


def _tags(tags: list[str]) -> str:
    import json

    return json.dumps(tags)


def _chunks(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    chunk: list[Any] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


# ---- vectors --------------------------------------------------------------------------------------------------


def clustered_vectors(n: int, seed: int, topics: int = 2000) -> Any:
    """A function i -> unit float32 vector (i < n): each memory's topic centre plus noise, so same-topic
    cosine is about 0.7 and across topics about 0, which is how sentence embeddings sit (bench_transfer.py
    uses the same shape); uniformly random vectors would be a worst case no model produces. Made 10,000
    at a time, so 1M vectors never sit in memory at once."""
    import numpy as np

    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((topics, DIM)).astype(np.float32)
    cache: dict[int, Any] = {}

    def vector(i: int) -> Any:
        block = i // 10_000
        if block not in cache:
            cache.clear()
            r = np.random.default_rng((seed, block))
            count = min(10_000, n - block * 10_000)
            v = centres[r.integers(0, topics, count)] + 0.6 * r.standard_normal((count, DIM)).astype(np.float32)
            cache[block] = v / np.linalg.norm(v, axis=1, keepdims=True)
        return cache[block][i % 10_000]

    return vector


# ---- server memory ------------------------------------------------------------------------------------------


def children(pid: int | None = None) -> list[int]:
    """Process ids whose parent is `pid` (default: this process), from /proc; [] where there is none."""
    parent = os.getpid() if pid is None else pid
    found = []
    for entry in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = entry.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == parent:
            found.append(int(entry.parent.name))
    return found


def server_pid(marker: str = "serve") -> int | None:
    """The child process running a StackMemory server (its command line holds `marker`)."""
    for pid in children():
        try:
            if marker in Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode():
                return pid
        except OSError:
            continue
    return None


def rss_mb(pid: int) -> dict[str, float]:
    """Resident memory now (VmRSS) and at its peak (VmHWM), in MB; {} once the process is gone."""
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return {}
    values = {k: int(v.split()[0]) / 1024 for k, v in (line.split(":", 1) for line in lines if ":" in line)
              if k in ("VmRSS", "VmHWM")}
    return {"rss": values.get("VmRSS", 0.0), "peak": values.get("VmHWM", 0.0)}
