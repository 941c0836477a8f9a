"""Benchmark the local stdio StackMemory server against a bare MCPServer floor; prints a markdown table."""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import platform
import random
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any

from mcp import Client
from mcp.client.stdio import StdioServerParameters

sys.path.insert(0, str(Path(__file__).resolve().parent))
from suite_data import rss_mb, server_pid, sqlite_bulk_memories

ROOT = Path(__file__).resolve().parent.parent
NOOP = str(Path(__file__).resolve().parent / "noop_server.py")

# ---- realistic memory texts -------------------------------------------------------------------------------

SERVICES = ["billing", "auth", "gateway", "search", "ingest", "notifications", "reporting", "scheduler",
            "checkout", "inventory", "profile", "webhooks", "analytics", "exporter", "mailer", "ledger"]
COMPONENTS = ["cache", "queue consumer", "retry policy", "rate limiter", "connection pool", "migration",
              "config loader", "session store", "token refresh", "batch job", "cron trigger", "index",
              "serializer", "health check", "feature flag", "circuit breaker", "upload handler", "api client"]
TECH = ["PostgreSQL", "SQLite", "Redis", "Kafka", "RabbitMQ", "S3", "DynamoDB", "Elasticsearch", "gRPC",
        "GraphQL", "FastAPI", "Django", "Celery", "Terraform", "Kubernetes", "Docker", "nginx", "pydantic",
        "SQLAlchemy", "asyncpg", "httpx", "OpenTelemetry", "Prometheus", "Sentry", "Vault", "Stripe"]
REASONS = ["latency spikes under load", "the old client leaked connections", "it simplifies deployment",
           "the team already knows it", "licensing costs", "we need exactly-once delivery",
           "the vendor deprecated the v1 API", "cold starts were too slow", "it halves memory usage",
           "auditors asked for encryption at rest", "tests were flaky with the mock", "it supports streaming"]
FAILURES = ["time out", "drop messages", "deadlock", "return stale data", "exhaust file descriptors",
            "double charge customers", "lose the lock", "retry forever", "overflow the buffer", "skip events"]
CONDITIONS = ["a network partition", "daylight saving changes", "a deploy during peak traffic",
              "more than 500 concurrent users", "a slow replica", "clock skew", "a full disk", "large uploads"]
PEOPLE = ["alice", "bob", "carol", "dmitri", "eve", "farah", "gus", "hiro", "ines", "jamal"]
STYLES = ["small pure functions", "explicit type hints", "dataclasses over dicts", "early returns",
          "table-driven tests", "structured logging", "no global state", "async all the way down"]
LANGS = ["Python", "TypeScript", "Go", "Rust", "SQL", "Bash"]
TAGS = ["db", "deploy", "perf", "security", "api", "infra", "testing", "ux", "billing", "oncall", "ci", "docs"]
PROJECTS = ["bench", "bench", "bench", "api-platform", "mobile-app", "data-pipeline"]
VERBS = ["fetch", "sync", "parse", "render", "validate", "refresh", "compact", "export", "resolve", "merge"]
NOUNS = ["invoice", "user", "token", "order", "event", "report", "webhook", "ledger", "session", "batch"]

TEMPLATES: list[tuple[str, str]] = [
    ("decision", "Decided to use {tech} for the {comp} in {svc} because {reason}; see {ticket}."),
    ("constraint", "The {comp} in {svc} must stay under {num} ms p99 and never call {tech} synchronously ({ticket})."),
    ("todo", "TODO: migrate the {svc} {comp} from {tech} to {tech2} before the {month} release ({ticket})."),
    ("risk", "Risk: the {comp} in {svc} may {failure} under {cond}; mitigation tracked in {ticket}."),
    ("preference", "{person} prefers {style} in {lang} code for {svc}; reviewers flag violations."),
    ("interface", "Interface: {svc}.{func}(id: str) returns a {noun} dict and raises NotFound when missing."),
    ("fact", "The {svc} service talks to {tech} through the {comp}; config lives in {svc}/{noun}.yaml."),
    ("note", "Debugging note: {func} in {svc} was slow because of {reason}; fixed in commit {sha}."),
]
MONTHS = ["January", "March", "May", "July", "September", "November"]


def make_memory(rng: random.Random) -> dict[str, Any]:
    """One store_memory argument set: a unique, plausible sentence with kind, tags, project and importance."""
    kind, template = rng.choice(TEMPLATES)
    text = template.format(
        tech=rng.choice(TECH), tech2=rng.choice(TECH), comp=rng.choice(COMPONENTS), svc=rng.choice(SERVICES),
        reason=rng.choice(REASONS), failure=rng.choice(FAILURES), cond=rng.choice(CONDITIONS),
        person=rng.choice(PEOPLE), style=rng.choice(STYLES), lang=rng.choice(LANGS), noun=rng.choice(NOUNS),
        func=f"{rng.choice(VERBS)}_{rng.choice(NOUNS)}_{rng.getrandbits(16):04x}", month=rng.choice(MONTHS),
        ticket=f"{rng.choice(['OPS', 'ENG', 'BUG', 'SEC'])}-{rng.randint(100, 99999)}",
        sha=f"{rng.getrandbits(40):010x}", num=rng.choice([50, 100, 200, 250, 500, 800]),
    )
    return {"content": f"{text} [ref {rng.getrandbits(32):08x}]", "kind": kind,
            "tags": rng.sample(TAGS, rng.randint(0, 3)), "project": rng.choice(PROJECTS),
            "importance": rng.randint(1, 9)}


VOCAB = sorted({w.strip(".,;:()").lower() for part in (SERVICES, COMPONENTS, TECH, REASONS, FAILURES, CONDITIONS,
                                                       STYLES, NOUNS) for phrase in part for w in phrase.split()
                if len(w) > 3})


def make_query(rng: random.Random) -> str:
    return " ".join(rng.sample(VOCAB, rng.randint(2, 5)))


# ---- measurement helpers ----------------------------------------------------------------------------------


def pct(samples: list[float], p: float) -> float:
    """Nearest-rank percentile, in the samples' unit."""
    ordered = sorted(samples)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


def count_rows(db: Path) -> int:
    con = sqlite3.connect(db)
    try:
        return int(con.execute("SELECT count(*) FROM memories").fetchone()[0])
    finally:
        con.close()


def quantiles(samples: list[float]) -> dict[str, float]:
    return {f"p{q}": pct(samples, q) for q in (50, 95, 99)}


def params(args: list[str], env: dict[str, str] | None = None) -> StdioServerParameters:
    return StdioServerParameters(command=sys.executable, args=args, env=env, cwd=str(ROOT))


def sm_env(db: Path) -> dict[str, str]:
    # Keyword search, as issue 2's targets are stated; bench_semantic.py measures hybrid with the model.
    return {**os.environ, "STACKMEMORY_DB": str(db), "STACKMEMORY_PROJECT": "bench",
            "STACKMEMORY_LOG_LEVEL": "WARNING", "STACKMEMORY_EMBEDDINGS": os.environ.get(
                "STACKMEMORY_EMBEDDINGS", "none")}


async def cold_start(make: Callable[[], StdioServerParameters], runs: int) -> float:
    """Median seconds from spawn to the first tools/list answer; one unmeasured warm-up spawn first."""
    times: list[float] = []
    for i in range(runs + 1):
        p = make()
        t0 = time.perf_counter()
        async with Client(p) as c:
            tools = await c.list_tools()
            elapsed = time.perf_counter() - t0
        assert tools.tools, "server listed no tools"
        if i:
            times.append(elapsed)
    return statistics.median(times)


VALIDATION: dict[str, list[float]] = {}  # client-side outputSchema validation seconds, per tool


def watch_validation(c: Client) -> None:
    """Time the client's jsonschema check of structuredContent (it runs inside every call_tool)."""
    session = c.session
    orig = session.validate_tool_result

    async def timed(name: str, result: Any) -> None:
        t0 = time.perf_counter()
        try:
            await orig(name, result)
        finally:
            VALIDATION.setdefault(name, []).append(time.perf_counter() - t0)

    session.validate_tool_result = timed  # type: ignore[method-assign]


async def timed_calls(c: Client, name: str, calls: list[dict[str, Any]]) -> tuple[list[float], float]:
    """Per-call seconds and total wall seconds; any tool error aborts the run."""
    VALIDATION.pop(name, None)
    lat: list[float] = []
    start = time.perf_counter()
    for args in calls:
        t0 = time.perf_counter()
        res = await c.call_tool(name, args)
        lat.append(time.perf_counter() - t0)
        if res.is_error:
            raise RuntimeError(f"{name} failed: {res.content}")
    return lat, time.perf_counter() - start


async def pipelined_calls(c: Client, name: str, calls: list[dict[str, Any]], inflight: int) -> float:
    """Wall seconds for all calls with `inflight` requests outstanding at once on the one session."""
    pending = iter(calls)

    async def lane() -> None:
        for args in pending:  # the lanes share one iterator: each call is made once
            res = await c.call_tool(name, args)
            if res.is_error:
                raise RuntimeError(f"{name} failed: {res.content}")

    start = time.perf_counter()
    await asyncio.gather(*(lane() for _ in range(inflight)))
    return time.perf_counter() - start


async def in_process(db: Path, memories: list[dict[str, Any]]) -> tuple[list[float], list[float]]:
    """Latency of MemoryService.store and of SQLiteStore.add_memory alone, without MCP, on a fresh DB."""
    from server.app import Runtime
    from server.config import Settings

    svc_lat: list[float] = []
    add_lat: list[float] = []
    async with Runtime(Settings.load(env=sm_env(db))).session() as svc:
        storage = svc.storage
        orig: Callable[..., Awaitable[Any]] = storage.add_memory

        async def timed_add(new: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return await orig(new)
            finally:
                add_lat.append(time.perf_counter() - t0)

        storage.add_memory = timed_add  # type: ignore[method-assign]
        for m in memories:
            t0 = time.perf_counter()
            await svc.store(**m)
            svc_lat.append(time.perf_counter() - t0)
    return svc_lat, add_lat


async def in_process_search(db: Path, queries: list[dict[str, Any]]) -> list[float]:
    """Latency of MemoryService.search alone, without MCP, on the benchmark DB."""
    from server.app import Runtime
    from server.config import Settings

    lat: list[float] = []
    async with Runtime(Settings.load(env=sm_env(db))).session() as svc:
        for q in queries:
            t0 = time.perf_counter()
            await svc.search(q["query"], q["limit"])
            lat.append(time.perf_counter() - t0)
    return lat


async def prefill(db: Path, memories: list[dict[str, Any]]) -> float:
    """Insert rows through the service layer (no MCP); returns seconds taken."""
    from server.app import Runtime
    from server.config import Settings

    t0 = time.perf_counter()
    async with Runtime(Settings.load(env=sm_env(db))).session() as svc:
        for m in memories:
            await svc.store(**m)
    return time.perf_counter() - t0


# ---- the run ----------------------------------------------------------------------------------------------


@dataclass
class Row:
    metric: str
    floor: float | None
    value: float
    unit: str
    limit: float | None = None  # target: the largest acceptable value/floor ratio


def fmt(v: float | None, unit: str) -> str:
    if v is None:
        return "—"
    return f"{v * 1000:.2f} ms" if unit == "s" else f"{v:,.0f} {unit}"


def table(rows: list[Row]) -> str:
    out = ["| metric | floor | stackmemory | ratio | target | pass? |", "|---|---|---|---|---|---|"]
    for r in rows:
        ratio = r.value / r.floor if r.floor else None
        target = f"<= {r.limit:g}x" if r.limit else "—"
        ok = "—" if r.limit is None or ratio is None else ("PASS" if ratio <= r.limit else "FAIL")
        out.append(f"| {r.metric} | {fmt(r.floor, r.unit)} | {fmt(r.value, r.unit)} | "
                   f"{'—' if ratio is None else f'{ratio:.2f}x'} | {target} | {ok} |")
    return "\n".join(out)


async def run(a: argparse.Namespace) -> None:
    rng = random.Random(a.seed)
    tmp = Path(tempfile.mkdtemp(prefix="smbench-"))
    print(f"machine: nproc={os.cpu_count()}, {platform.machine()} {platform.system()}, "
          f"python {platform.python_version()}, sqlite {sqlite3.sqlite_version}, mcp {version('mcp')}", flush=True)

    # 1. floor: bare MCPServer, one no-op tool (request carries a memory-sized text, so payloads match)
    floor_cold = await cold_start(lambda: params([NOOP]), a.cold_runs)
    noop_args = [{"text": make_memory(rng)["content"]} for _ in range(a.noop_calls)]
    async with Client(params([NOOP])) as c:
        await c.list_tools()
        watch_validation(c)
        await timed_calls(c, "noop", noop_args[:50])  # warm-up
        noop_lat, noop_wall = await timed_calls(c, "noop", noop_args)
        noop_piped = len(noop_args) / await pipelined_calls(c, "noop", noop_args, a.inflight)
    print(f"floor: cold {floor_cold * 1000:.0f} ms, rtt p50 {pct(noop_lat, 50) * 1e3:.3f} ms", flush=True)

    # 2. StackMemory: cold start on a fresh empty DB each time
    counter = iter(range(10**6))
    sm_cold = await cold_start(lambda: params(["-m", "server", "serve"], sm_env(tmp / f"cold{next(counter)}.db")),
                               a.cold_runs)
    print(f"stackmemory: cold {sm_cold * 1000:.0f} ms", flush=True)

    db = Path(a.db) if a.db else tmp / "bench.db"
    timed = min(a.timed_stores, a.n) if a.prefill or a.bulk else a.n
    how = f"all {a.n:,} stored through MCP store_memory"
    prefill_secs = 0.0
    if a.bulk:
        added, prefill_secs = sqlite_bulk_memories(db, (make_memory(rng) for _ in range(a.n - timed)))
        how = (f"{added:,} bulk-inserted with sqlite3 (no MCP, no service) in {prefill_secs:.1f} s, "
               f"then {timed:,} stored through MCP store_memory")
    elif a.prefill:
        prefill_secs = await prefill(db, [make_memory(rng) for _ in range(a.n - timed)])
        how = (f"{a.n - timed:,} prefilled via MemoryService.store in {prefill_secs:.1f} s, "
               f"then {timed:,} stored through MCP store_memory")
    mcp_stores = [make_memory(rng) for _ in range(timed)]
    piped_stores = [make_memory(rng) for _ in range(a.pipelined_stores)]
    batches = [{"memories": [make_memory(rng) for _ in range(a.batch_size)]}
               for _ in range(a.batched_stores // a.batch_size if a.batch_size else 0)]
    queries = [{"query": make_query(rng), "limit": 10} for _ in range(a.searches)]
    async with Client(params(["-m", "server", "serve"], sm_env(db))) as c:
        await c.list_tools()
        watch_validation(c)
        store_lat, store_wall = await timed_calls(c, "store_memory", mcp_stores)
        print(f"stored {len(store_lat):,} in {store_wall:.1f} s", flush=True)
        await timed_calls(c, "search_memory", queries[:20])  # warm-up (page cache, statement cache)
        search_lat, _ = await timed_calls(c, "search_memory", queries)
        rows_in_db = count_rows(db)
        piped_wall = await pipelined_calls(c, "store_memory", piped_stores, a.inflight) if piped_stores else 0.0
        # store_memories: one call at a time, each a transaction of batch_size memories
        batch_wall = (await timed_calls(c, "store_memories", batches))[1] if batches else 0.0
        batched = sum(len(b["memories"]) for b in batches)
        pid = server_pid()
        memory = rss_mb(pid) if pid else {}

    # 3. where the time goes: the same work without MCP
    svc_search = await in_process_search(db, queries)
    sample = [make_memory(rng) for _ in range(min(a.n, 2000))]
    svc_lat, add_lat = await in_process(tmp / "inproc.db", sample)

    search_limit = 3.0 if a.n <= 10_000 else 8.0
    rows = [
        Row(f"cold start (spawn → first tools/list, median of {a.cold_runs})", floor_cold, sm_cold, "s", 1.3),
        Row("store p50 (vs no-op round trip p50)", pct(noop_lat, 50), pct(store_lat, 50), "s", 2.0),
        Row("store p99 (vs no-op p99)", pct(noop_lat, 99), pct(store_lat, 99), "s"),
        Row(f"search p50 at {rows_in_db:,} rows (vs no-op p50)", pct(noop_lat, 50), pct(search_lat, 50), "s",
            search_limit),
        Row("search p99 (vs no-op p99)", pct(noop_lat, 99), pct(search_lat, 99), "s"),
        Row("stores/s sustained (floor: no-op calls/s)", len(noop_lat) / noop_wall, len(store_lat) / store_wall,
            "/s"),
    ]
    if piped_stores:
        rows.append(Row(f"stores/s with {a.inflight} calls in flight (floor: no-op calls/s, same)", noop_piped,
                        len(piped_stores) / piped_wall, "/s"))
    if batches:
        rows.append(Row(f"stores/s with store_memories, {a.batch_size} per call (floor: no-op calls/s)",
                        len(noop_lat) / noop_wall, batched / batch_wall, "/s"))
    print(f"\nN = {a.n:,} ({how}); rows in DB at search time: {rows_in_db:,}; "
          f"no-op calls: {len(noop_lat):,}; searches: {len(search_lat):,} (2-5 vocabulary words, limit 10)\n")
    print(table(rows))
    print(f"\nbreakdown (in-process = same call without MCP; stores on a fresh DB of {len(sample):,} rows, "
          f"searches on the benchmark DB):")
    print("| part | p50 | p99 |\n|---|---|---|")
    noop50, svc50, st50 = pct(noop_lat, 50), pct(svc_lat, 50), pct(store_lat, 50)
    parts = [("MCP stdio round trip (no-op floor)", noop_lat), ("MemoryService.store (in-process)", svc_lat),
             ("  of which SQLiteStore.add_memory", add_lat), ("MCP search_memory", search_lat),
             ("MemoryService.search (in-process)", svc_search)]
    parts += [(f"client-side outputSchema check in {t}", VALIDATION[t]) for t in ("noop", "store_memory",
                                                                                  "search_memory")]
    for name, lat in parts:
        print(f"| {name} | {pct(lat, 50) * 1e3:.3f} ms | {pct(lat, 99) * 1e3:.3f} ms |")
    rest = st50 - noop50 - svc50
    srest = pct(search_lat, 50) - noop50 - pct(svc_search, 50)
    print(f"| store remainder: MCP tool layer ≈ store p50 − floor − service | {rest * 1e3:.3f} ms | — |")
    print(f"| search remainder: MCP tool layer ≈ search p50 − floor − service | {srest * 1e3:.3f} ms | — |")
    if memory:
        print(f"| server memory (VmRSS / peak VmHWM) after the run | {memory['rss']:.0f} MB | "
              f"{memory['peak']:.0f} MB |")
    if a.json:
        Path(a.json).write_text(json.dumps({
            "n": a.n, "rows": rows_in_db, "sqlite": sqlite3.sqlite_version, "how": how,
            "prefill_seconds": prefill_secs,
            "noop": {**quantiles(noop_lat), "per_s": len(noop_lat) / noop_wall, "pipelined_per_s": noop_piped},
            "store": {**quantiles(store_lat), "per_s": len(store_lat) / store_wall, "calls": len(store_lat),
                      "pipelined_per_s": len(piped_stores) / piped_wall if piped_stores else None,
                      "pipelined_calls": len(piped_stores), "inflight": a.inflight,
                      "batched_per_s": batched / batch_wall if batches else None, "batched_calls": len(batches),
                      "batch_size": a.batch_size},
            "search": {**quantiles(search_lat), "calls": len(search_lat)},
            "in_process": {"store_p50": svc50, "search_p50": pct(svc_search, 50)},
            "server_memory_mb": memory,
            "cold_start": {"noop": floor_cold, "stackmemory": sm_cold}}, indent=1))
    print(f"\n(MemoryService.store minus add_memory, i.e. validation/model building: "
          f"{statistics.median(s - d for s, d in zip(svc_lat, add_lat, strict=True)) * 1e3:.3f} ms p50)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--n", type=int, default=10_000, help="memories in the DB (default 10000)")
    p.add_argument("--prefill", action="store_true",
                   help="insert all but --timed-stores rows via the service layer before the MCP-timed part")
    p.add_argument("--bulk", action="store_true", help="like --prefill, but insert with sqlite3 executemany "
                   "(no service, no MCP): minutes for 1M memories instead of an hour")
    p.add_argument("--timed-stores", type=int, default=5000, help="MCP stores after --prefill (default 5000)")
    p.add_argument("--pipelined-stores", type=int, default=2000,
                   help="then this many stores with --inflight calls outstanding, for throughput (default 2000)")
    p.add_argument("--batched-stores", type=int, default=5000,
                   help="then this many stores through store_memories, --batch-size per call (default 5000)")
    p.add_argument("--batch-size", type=int, default=100, help="memories per store_memories call (default 100)")
    p.add_argument("--inflight", type=int, default=8, help="concurrent calls on the one session (default 8)")
    p.add_argument("--db", help="build the database at this path and keep it (default: a temporary file)")
    p.add_argument("--searches", type=int, default=500)
    p.add_argument("--noop-calls", type=int, default=1000)
    p.add_argument("--cold-runs", type=int, default=5)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--json", metavar="PATH", help="also write the figures as JSON here (for bench/run)")
    asyncio.run(run(p.parse_args()))


if __name__ == "__main__":
    main()
