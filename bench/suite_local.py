"""Local server memory over a long run and hybrid search with the real model, on a database that
bench_local.py built and kept (--db); writes JSON for bench/run.

    python bench/suite_local.py --db /tmp/bench.db --soak-seconds 60 --model-path MODEL --json out.json

1. Soak (STACKMEMORY_EMBEDDINGS=none, as bench_local.py): one stdio client calls without pause for
   --soak-seconds, 80% search_memory and 20% store_memory, while the server's resident memory (VmRSS) is
   read once a second.
2. With --model-path: every memory gets a clustered 384-dimension vector (bulk, as if the worker had
   embedded it), then bench_semantic.py's MCP search measures keyword, semantic and hybrid search with the
   real model, each over distinct queries (query embedding not cached) and again over the same queries
   (cached); and one query embedding alone, in-process, as the floor."""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_semantic
from bench_local import count_rows, make_memory, make_query, params, quantiles, sm_env
from suite_data import rss_mb, server_pid, sqlite_bulk_vectors


async def soak(db: Path, seconds: float, rng: random.Random) -> dict[str, Any]:
    """Back-to-back calls for `seconds`, with the server's RSS read once a second (and at the end)."""
    from mcp import Client

    lat: dict[str, list[float]] = {"store_memory": [], "search_memory": []}
    samples: list[tuple[float, float]] = []
    async with Client(params(["-m", "server", "serve"], sm_env(db))) as c:
        await c.list_tools()
        pid = server_pid()
        if pid is None:
            raise RuntimeError("could not find the server process among this process's children")
        start_mb = rss_mb(pid)["rss"]
        for _ in range(50):  # warm-up: first imports of each code path, page cache
            await c.call_tool("search_memory", {"query": make_query(rng), "limit": 10})
        t0 = time.monotonic()
        next_sample = 0.0
        while (elapsed := time.monotonic() - t0) < seconds:
            if elapsed >= next_sample:
                samples.append((elapsed, rss_mb(pid)["rss"]))
                next_sample += 1.0
            if rng.random() < 0.2:
                name, args = "store_memory", make_memory(rng)
            else:
                name, args = "search_memory", {"query": make_query(rng), "limit": 10}
            began = time.perf_counter()
            res = await c.call_tool(name, args)
            lat[name].append(time.perf_counter() - began)
            if res.is_error:
                raise RuntimeError(f"{name} failed: {res.content}")
        samples.append((time.monotonic() - t0, rss_mb(pid)["rss"]))
        peak = rss_mb(pid)["peak"]
    middle = samples[len(samples) // 2][1]
    return {"seconds": seconds, "idle_mb": start_mb, "start_mb": samples[0][1], "middle_mb": middle,
            "end_mb": samples[-1][1], "peak_mb": peak, "samples": samples,
            "calls": {k: len(v) for k, v in lat.items()},
            "store": quantiles(lat["store_memory"]), "search": quantiles(lat["search_memory"])}


async def largest_server_rss(stop: asyncio.Event, found: list[float]) -> None:
    """Keep the largest RSS of any StackMemory server this process runs, until `stop`."""
    while not stop.is_set():
        pid = server_pid()
        if pid is not None:
            found.append(rss_mb(pid).get("rss", 0.0))
        try:
            await asyncio.wait_for(stop.wait(), 0.5)
        except TimeoutError:
            pass


async def hybrid(db: Path, queries: int, rng: random.Random) -> dict[str, Any]:
    """bench_semantic.py's MCP search (keyword, semantic, hybrid; uncached then cached) on this database."""
    added, secs = sqlite_bulk_vectors(db)
    taken: set[str] = set()
    warm = bench_semantic.distinct_queries(rng, 20, taken)
    qsets = {m: bench_semantic.distinct_queries(rng, queries, taken) for m in bench_semantic.MODES}
    stop = asyncio.Event()
    rss: list[float] = []
    watcher = asyncio.create_task(largest_server_rss(stop, rss))
    try:
        found, problems = await bench_semantic.mcp_search(db, qsets, warm)
    finally:
        stop.set()
        await watcher
    res: dict[Any, list[float]] = found  # keyed by (mode, "uncached" | "cached")
    floor = await bench_semantic.embed_floor(bench_semantic.distinct_queries(rng, queries, set(taken)))
    return {"vectors_added": added, "vectors_seconds": secs, "queries": queries, "problems": problems,
            "modes": {mode: {label: quantiles(res[(mode, label)]) for label in ("uncached", "cached")}
                      for mode in bench_semantic.MODES},
            "server_memory_mb": max(rss, default=None), "embed_floor": quantiles(floor)}


async def run(a: argparse.Namespace) -> dict[str, Any]:
    rng = random.Random(a.seed)
    db = Path(a.db)
    out: dict[str, Any] = {"rows": count_rows(db)}
    if a.soak_seconds > 0:
        out["soak"] = await soak(db, a.soak_seconds, rng)
        print(f"soak: RSS {out['soak']['start_mb']:.0f} -> {out['soak']['middle_mb']:.0f} -> "
              f"{out['soak']['end_mb']:.0f} MB over {a.soak_seconds:g} s", flush=True)
    if a.model_path:
        bench_semantic.MODEL = a.model_path
        out["hybrid"] = await hybrid(db, a.queries, rng)
        h = out["hybrid"]["modes"]["hybrid"]
        print(f"hybrid search p50 {h['uncached']['p50'] * 1000:.1f} ms uncached, "
              f"{h['cached']['p50'] * 1000:.1f} ms cached", flush=True)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--db", required=True, help="a StackMemory SQLite file (bench_local.py --db)")
    p.add_argument("--soak-seconds", type=float, default=60, help="length of the memory run (0 skips it)")
    p.add_argument("--model-path", default="", help="the embedding model folder; without it, no hybrid part")
    p.add_argument("--queries", type=int, default=100, help="distinct queries per search mode (default 100)")
    p.add_argument("--seed", type=int, default=2)
    p.add_argument("--json", metavar="PATH", help="write the figures as JSON here")
    a = p.parse_args()
    out = asyncio.run(run(a))
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
