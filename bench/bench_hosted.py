"""Hosted load benchmark: StackMemory on PostgreSQL over Streamable HTTP and SSE, many concurrent MCP clients."""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import platform
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_local import VOCAB, make_memory, pct
from suite_data import rss_mb
from suite_pg import copy_vectors, embedded_server, record_model, vector_floors

ROOT = Path(__file__).resolve().parent.parent
NOOP = str(Path(__file__).resolve().parent / "noop_http_server.py")
COLUMNS = ("id", "content", "content_hash", "kind", "tags", "project", "importance", "metadata", "author",
           "created_at", "updated_at", "workspace_id", "visibility", "created_by", "updated_by", "dedup_owner")
WORKSPACE = "bench"  # the team workspace every client user belongs to; memories are team-visible there
Calls = list[tuple[str, float, bool, float]]  # (tool, seconds, ok, epoch seconds at the end)


def make_query(rng: random.Random) -> str:
    return " ".join(rng.sample(VOCAB, rng.randint(2, 4)))


def query_source(cfg: dict[str, Any]) -> Any:
    """Every query new (distinct 0), or drawn from `distinct` fixed queries with Zipf (s=1) popularity, as a
    team's assistants repeat questions: then the shared query-embedding cache answers most of them."""
    if not cfg.get("distinct"):
        return make_query
    fixed = random.Random(cfg["query_seed"])  # the same queries in every worker
    pool = [make_query(fixed) for _ in range(cfg["distinct"])]
    weights = [1 / (rank + 1) for rank in range(len(pool))]
    return lambda rng: rng.choices(pool, weights)[0]


# ---- worker mode: one process driving half the clients ------------------------------------------------


async def client_loop(cfg: dict[str, Any], idx: int, ready: asyncio.Event, go: asyncio.Event,
                      calls: Calls, errors: list[str]) -> None:
    from mcp import Client
    from mcp.client.sse import sse_client

    rng = random.Random(cfg["seed"] * 100_003 + idx)
    next_query = query_source(cfg)
    url = cfg["url"]
    tokens = cfg.get("tokens") or []
    headers = {"Authorization": f"Bearer {tokens[idx % len(tokens)]}"} if tokens else {}
    if cfg["transport"] == "sse":
        target: Any = Client(sse_client(url + "/sse", headers=headers))
    else:
        import httpx2
        from mcp.client.streamable_http import streamable_http_client

        http = httpx2.AsyncClient(headers=headers, timeout=httpx2.Timeout(30, read=300))
        target = Client(streamable_http_client(url + "/mcp", http_client=http))
    try:
        async with target as c:
            await c.list_tools()
            ready.set()
            await go.wait()
            deadline = cfg["deadline"]
            if cfg["think"] > 0:
                await asyncio.sleep(rng.uniform(0, cfg["think"]))  # stagger the first calls
            n = 0
            while time.time() < deadline:
                if cfg["noop"]:
                    name, args = "noop", {"text": make_memory(rng)["content"]}
                elif rng.random() < cfg["search_share"]:
                    name, args = "search_memory", {"query": next_query(rng), "limit": 10, "workspace": WORKSPACE}
                    if cfg.get("mode"):
                        args["mode"] = cfg["mode"]
                else:
                    n += 1
                    args = make_memory(rng)
                    args["content"] += f" (client {cfg['worker']}.{idx} call {n})"
                    args["workspace"] = WORKSPACE
                    name = "store_memory"
                t0 = time.perf_counter()
                try:
                    res = await asyncio.wait_for(c.call_tool(name, args), cfg["call_timeout"])
                    ok = not res.is_error
                    if not ok:
                        errors.append(f"{name}: {res.content[0].text[:200]}")
                except Exception as exc:  # noqa: BLE001 - every failure is a data point
                    ok = False
                    errors.append(f"{name}: {type(exc).__name__}: {str(exc)[:200]}")
                calls.append((name, time.perf_counter() - t0, ok, time.time()))
                if cfg["think"] > 0:
                    await asyncio.sleep(min(rng.expovariate(1 / cfg["think"]), max(0.0, deadline - time.time())))
    except Exception as exc:  # noqa: BLE001 - a session that cannot connect is an error, not a crash
        when = "before the run" if "deadline" not in cfg else ("during" if time.time() < cfg["deadline"] else "after")
        errors.append(f"session died {when} the run: {type(exc).__name__}: {str(exc)[:200]}")
        ready.set()


def validate_once() -> None:
    """Each session checks the first result of each tool against its output schema, not every one: jsonschema
    is a third of this load generator's CPU, and it runs on the two cores the server under test has."""
    from mcp.client.session import ClientSession

    check = ClientSession.validate_tool_result

    async def first_only(self: ClientSession, name: str, result: Any) -> None:
        checked: set[str] = self.__dict__.setdefault("_bench_checked", set())
        if name not in checked:
            await check(self, name, result)
            checked.add(name)

    ClientSession.validate_tool_result = first_only  # type: ignore[method-assign]


async def worker(cfg: dict[str, Any]) -> None:
    """Connect every session, say 'ready', wait for 'go' on stdin, run until the deadline, print JSON."""
    validate_once()
    calls: Calls = []
    errors: list[str] = []
    go = asyncio.Event()
    readies = [asyncio.Event() for _ in range(cfg["clients"])]
    tasks = []
    for i in range(cfg["clients"]):
        tasks.append(asyncio.create_task(client_loop(cfg, i, readies[i], go, calls, errors)))
        await asyncio.sleep(0.01)  # do not open 50 sessions in the same millisecond
    await asyncio.wait_for(asyncio.gather(*(r.wait() for r in readies)), 60)
    # Everything the sessions hold so far lives for the whole run: the collector need not scan it again.
    # The load generator shares the server's two cores, so its own pauses would count as server latency.
    gc.collect()
    gc.freeze()
    print("ready", flush=True)
    line = await asyncio.to_thread(sys.stdin.readline)
    cfg["deadline"] = float(line)
    go.set()
    _, pending = await asyncio.wait(tasks, timeout=cfg["deadline"] - time.time() + cfg["call_timeout"] + 5)
    for t in pending:
        t.cancel()
    print(json.dumps({"calls": calls, "errors": errors, "unfinished": len(pending)}), flush=True)


# ---- parent: processes and phases -------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_ready(proc: subprocess.Popen[bytes], url: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}; see its log")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} not ready within {timeout:.0f} s")


def stop(proc: subprocess.Popen[Any] | None) -> None:
    if proc is not None and proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def start_server(a: argparse.Namespace, transport: str, db: str, log: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    exe = shutil.which("stackmemory", path=str(Path(sys.executable).parent))
    cmd = [exe] if exe else [sys.executable, "-m", "server"]
    env = {**os.environ, "STACKMEMORY_DB": db, "STACKMEMORY_POOL_MAX": str(a.pool_max),
           "STACKMEMORY_PROJECT": "bench", "STACKMEMORY_LOG_LEVEL": "WARNING", "STACKMEMORY_EMBEDDINGS": "none",
           # The per-token rate limit (50 calls/s by default) would answer the back-to-back phase's one client
           # with 429s once the server serves it faster than that; the loaded phases run ~1 call/s per token.
           "STACKMEMORY_RATE_LIMIT": "0"}
    if a.model_path:  # hybrid search with the real model; vectors must already be in the database
        env.update(STACKMEMORY_EMBEDDINGS="local", STACKMEMORY_EMBEDDING_MODEL_PATH=a.model_path)
    proc = subprocess.Popen([*cmd, "serve", "--transport", transport, "--port", str(port)], env=env, cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=log.open("ab"))
    base = f"http://127.0.0.1:{port}"
    wait_ready(proc, base + "/readyz")
    return proc, base


def run_load(a: argparse.Namespace, url: str, transport: str, clients: int, think: float, duration: float,
             noop: bool = False, mode: str | None = None, distinct: int | None = None,
             warmup: float = 0.0) -> dict[str, Any]:
    """Two worker processes, each with half the sessions; returns merged calls, errors and wall seconds of
    the `duration` measured after `warmup` seconds of the same load."""
    procs: list[subprocess.Popen[str]] = []
    workers = max(1, min(a.workers, clients))  # a worker without sessions would have nothing to wait for
    try:
        for w in range(workers):
            share = clients // workers + (1 if w < clients % workers else 0)
            first = sum(clients // workers + (1 if v < clients % workers else 0) for v in range(w))
            cfg = {"tokens": [] if noop else a.tokens[first:first + share],"url": url, "transport": transport, "clients": share, "think": think, "worker": w,
                   "seed": a.seed * 1000 + w + int(time.time()), "search_share": a.search_share,
                   "call_timeout": a.call_timeout, "noop": noop,
                   "distinct": a.distinct_queries if distinct is None else distinct,
                   "query_seed": a.seed, "mode": mode}
            procs.append(subprocess.Popen([sys.executable, __file__, "--worker", json.dumps(cfg)], cwd=ROOT,
                                          stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True))
        for p in procs:
            assert p.stdout is not None
            if p.stdout.readline().strip() != "ready":
                raise RuntimeError("a load worker failed to connect its sessions")
        # Calls that start in the first `warmup` seconds are not counted: the pool grows to its working size
        # and every new PostgreSQL backend fills its catalog caches then, as any server does once after a start.
        start = time.time() + 0.2 + warmup
        deadline = start + duration
        for p in procs:
            assert p.stdin is not None
            p.stdin.write(f"{deadline}\n")
            p.stdin.flush()
        calls: Calls = []
        errors: list[str] = []
        unfinished = 0
        for p in procs:
            out, _ = p.communicate(timeout=warmup + duration + a.call_timeout + 30)
            data = json.loads(out.strip().splitlines()[-1])
            calls += [tuple(c) for c in data["calls"] if c[3] - c[1] >= start]  # type: ignore[misc]
            errors += data["errors"]
            unfinished += data["unfinished"]
        wall = max([duration, *(c[3] - start for c in calls)])  # until the last call ended, not session teardown
        return {"calls": calls, "errors": errors, "unfinished": unfinished, "wall": wall, "clients": clients,
                "think": think, "duration": duration, "mode": mode}
    finally:
        for p in procs:
            stop(p)


def ms(v: float) -> str:
    return f"{v * 1000:.1f}"


def load_table(title: str, r: dict[str, Any]) -> str:
    think = f"think {r['think']:g} s (open loop)" if r["think"] else "think 0 (closed loop, saturation)"
    if r.get("kind") == "sequential":
        think = "back to back, every query new (unloaded)"
    out = [f"\n**{title}** — {r['clients']} clients, {think}, {r['duration']:g} s, wall {r['wall']:.1f} s\n",
           "| tool | calls | errors | throughput/s | p50 ms | p95 ms | p99 ms |", "|---|---|---|---|---|---|---|"]
    for tool in sorted({c[0] for c in r["calls"]}) + ["all"]:
        rows = [c for c in r["calls"] if tool in ("all", c[0])]
        ok = [c[1] for c in rows if c[2]] or [float("nan")]
        errs = sum(1 for c in rows if not c[2])
        out.append(f"| {tool} | {len(rows):,} | {errs} | {sum(1 for c in rows if c[2]) / r['wall']:.1f} | "
                   f"{ms(pct(ok, 50))} | {ms(pct(ok, 95))} | {ms(pct(ok, 99))} |")
    if r["errors"] or r["unfinished"]:
        out.append(f"\nerrors: {len(r['errors'])}, unfinished sessions: {r['unfinished']}; first distinct:")
        out += [f"- `{e}`" for e in list(dict.fromkeys(r["errors"]))[:5]]
    return "\n".join(out)


def summary(label: str, r: dict[str, Any]) -> dict[str, Any]:
    """One load phase as numbers (seconds), per tool and for all calls: what bench/run charts."""
    tools: dict[str, Any] = {}
    for tool in sorted({c[0] for c in r["calls"]}) + ["all"]:
        rows = [c for c in r["calls"] if tool in ("all", c[0])]
        ok = [c[1] for c in rows if c[2]]
        tools[tool] = {"calls": len(rows), "errors": len(rows) - len(ok), "throughput": len(ok) / r["wall"],
                       **{f"p{q}": pct(ok, q) if ok else None for q in (50, 95, 99)}}
    return {"label": label, "clients": r["clients"], "think": r["think"], "duration": r["duration"],
            "mode": r.get("mode"), "kind": r.get("kind"), "wall": r["wall"], "unfinished": r["unfinished"], "tools": tools}


def search_p95(r: dict[str, Any]) -> float:
    lat = [c[1] for c in r["calls"] if c[0] == "search_memory" and c[2]]
    return pct(lat, 95) if lat else float("inf")


# ---- database: embedded server, schema, COPY prefill, floors ----------------------------------------------


def with_db(url: str, name: str) -> str:
    return urlunsplit(urlsplit(url)._replace(path="/" + name))


async def prefill(url: str, n: int, seed: int, vectors: bool = False) -> dict[str, float]:
    import psycopg

    from server.accounts import Accounts
    from server.ids import new_id
    from server.rules import content_hash
    from server.storage import open_accounts
    from server.storage.postgres import PostgresStore

    store = PostgresStore(url)
    await store.open()  # applies the migrations
    try:
        owner = await Accounts(open_accounts(store)).create_user("bench-owner")
        workspace_id = (await Accounts(open_accounts(store)).create_workspace(WORKSPACE, "bench-owner")).workspace_id
    finally:
        await store.close()
    rng = random.Random(seed)
    t0 = time.perf_counter()
    seen: set[tuple[str, str]] = set()
    now = datetime.now(UTC)
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        # The prefill is not news: the change feed's trigger is off while it is copied in.
        await conn.execute("ALTER TABLE memories DISABLE TRIGGER memories_change_insert")
        async with conn.cursor() as cur, cur.copy(f"COPY memories ({', '.join(COLUMNS)}) FROM STDIN") as copy:
            while len(seen) < n:
                m = make_memory(rng)
                h = content_hash(m["content"])
                if (m["project"], h) in seen:
                    continue
                seen.add((m["project"], h))
                at = now - timedelta(seconds=rng.uniform(0, 365 * 86400))
                await copy.write_row((new_id(), m["content"], h, m["kind"], json.dumps(m["tags"]),
                                      m["project"], m["importance"], "{}", rng.choice(["alice", "bob", "ci"]),
                                      at, at, workspace_id, "team", owner.id, owner.id, ""))
        await conn.execute("ALTER TABLE memories ENABLE TRIGGER memories_change_insert")
        await conn.execute("ANALYZE memories")
        out = {"memories_s": time.perf_counter() - t0}
        if vectors:
            t0 = time.perf_counter()
            count = await copy_vectors(conn)
            out["vectors_s"] = time.perf_counter() - t0
    if vectors:
        out["index_s"] = await record_model(url, count)
    return out


async def client_tokens(url: str, n: int) -> list[str]:
    """One user per client session, each a member of the bench workspace with a token of their own."""
    from server.accounts import Accounts
    from server.storage import open_accounts
    from server.storage.postgres import PostgresStore

    store = PostgresStore(url)
    await store.open()
    try:
        acc = Accounts(open_accounts(store))
        tokens = []
        for i in range(n):
            await acc.create_user(f"client{i:03d}")
            await acc.set_role(WORKSPACE, f"client{i:03d}", "member")
            tokens.append((await acc.create_token(f"client{i:03d}", "bench")).token)
        return tokens
    finally:
        await store.close()


async def db_floors(url: str, seconds: float, conns: int, seed: int) -> list[tuple[str, list[float], float | None]]:
    """SELECT 1 and the search SQL itself over a psycopg_pool, sequentially, then search at `conns` concurrency."""
    from psycopg.rows import dict_row
    from psycopg_pool import AsyncConnectionPool

    from server.search_text import search_terms
    from server.storage import migrations
    from server.storage.base import RARE_WORD_MATCHES
    from server.storage.postgres import KEYWORD_POOL

    queries = migrations.queries("postgres")
    sql = queries["search_keyword"]
    rng = random.Random(seed)
    import psycopg

    with psycopg.connect(url) as conn:  # the bench workspace and its owner: whose search this is
        (workspace_id,) = conn.execute("SELECT id FROM workspaces WHERE name = %s", (WORKSPACE,)).fetchone()  # type: ignore[misc]
        (user_id,) = conn.execute("SELECT id FROM users WHERE name = 'bench-owner'").fetchone()  # type: ignore[misc]
        common = [w for (w,) in conn.execute(queries["common_words"], {"min_rows": RARE_WORD_MATCHES})]

    def search_params() -> dict[str, Any]:
        return {"workspaces": [workspace_id], "user_id": user_id,
                "project": None, "kinds": None, "tags": None, "since": None, "until": None,
                "now": datetime.now(UTC), "limit": 10, "q": " or ".join(search_terms(make_query(rng))),
                "pool": KEYWORD_POOL, "common": common, "rare": RARE_WORD_MATCHES}

    async def as_caller(conn: Any) -> None:
        """The search as the server runs it: one pipelined transaction, as the app role, for this caller."""
        async with conn.pipeline(), conn.transaction():
            await conn.execute("SET LOCAL ROLE stackmemory_app")
            await conn.execute(queries["act_as_user"], {"user_id": user_id})
            cur = await conn.execute(sql, search_params())
        await cur.fetchall()

    out: list[tuple[str, list[float], float | None]] = []
    kwargs = {"autocommit": True, "row_factory": dict_row, "prepare_threshold": None}
    async with AsyncConnectionPool(url, min_size=conns, max_size=conns, kwargs=kwargs) as pool:
        await pool.wait()
        for label, query, make in (("PostgreSQL `SELECT 1` (psycopg_pool, sequential)", "SELECT 1", dict),
                                   ("search SQL via psycopg, as the app role for one caller (sequential)", sql, search_params)):
            lat: list[float] = []
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                t0 = time.perf_counter()
                async with pool.connection() as conn:
                    if query is sql:
                        await as_caller(conn)
                    else:
                        await (await conn.execute(query, make())).fetchall()
                lat.append(time.perf_counter() - t0)
            out.append((label, lat, len(lat) / seconds))
        lat = []
        end = time.monotonic() + seconds

        async def loop() -> None:
            while time.monotonic() < end:
                t0 = time.perf_counter()
                async with pool.connection() as conn:
                    await as_caller(conn)
                lat.append(time.perf_counter() - t0)

        t0 = time.perf_counter()
        await asyncio.gather(*(loop() for _ in range(conns)))
        out.append((f"search SQL via psycopg, as the app role ({conns} concurrent connections)", lat, len(lat) / (time.perf_counter() - t0)))
    return out


async def noop_floor(url: str, seconds: float) -> list[float]:
    from mcp import Client

    lat: list[float] = []
    rng = random.Random(7)
    async with Client(url + "/mcp") as c:
        await c.list_tools()
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            t0 = time.perf_counter()
            res = await c.call_tool("noop", {"text": make_memory(rng)["content"]})
            lat.append(time.perf_counter() - t0)
            assert not res.is_error
    return lat


# ---- the run ----------------------------------------------------------------------------------------------


def run(a: argparse.Namespace) -> None:
    import psycopg

    tmp = Path(tempfile.mkdtemp(prefix="smhosted-"))
    log = tmp / "server.log"
    pg: Any = None
    procs: list[subprocess.Popen[bytes]] = []
    try:
        admin = a.database_url
        if not admin:
            pg = embedded_server(tmp / "pgdata", a.shared_buffers)
            admin = pg.get_uri()
        name = f"smbench_{os.getpid()}"
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
            pg_version = conn.execute("SHOW server_version").fetchone()[0]  # type: ignore[index]
            buffers = conn.execute("SHOW shared_buffers").fetchone()[0]  # type: ignore[index]
        db = with_db(admin, name)
        built = asyncio.run(prefill(db, a.n, a.seed, vectors=bool(a.model_path)))
        a.tokens = asyncio.run(client_tokens(db, max([*a.clients, a.sat_clients])))
        with psycopg.connect(db) as conn:
            pgvector = conn.execute("SELECT extversion FROM pg_extension WHERE extname = 'vector'").fetchone()
        print(f"machine: nproc={os.cpu_count()}, {platform.machine()} {platform.system()}, python "
              f"{platform.python_version()}, PostgreSQL {pg_version} (shared_buffers {buffers}), pgvector "
              f"{pgvector[0] if pgvector else '—'}; N = {a.n:,} memories ({describe_prefill(built)}); pool max "
              f"{a.pool_max}; load from {a.workers} worker processes; mix "
              f"{a.search_share:.0%} search_memory (2-4 words, limit 10; "
              f"{f'{a.distinct_queries:,} distinct queries, Zipf' if a.distinct_queries else 'every query new'}) / "
              f"{1 - a.search_share:.0%} store_memory; search modes {', '.join(m or 'default' for m in a.modes)} "
              f"({'embeddings: ' + Path(a.model_path).name if a.model_path else 'embeddings off'})",
              flush=True)

        floors = asyncio.run(db_floors(db, a.floor_seconds, a.pool_max, a.seed))
        if a.model_path:
            rng = random.Random(a.seed + 5)
            queries = list(dict.fromkeys(make_query(rng) for _ in range(a.embed_queries)))
            floors += asyncio.run(vector_floors(db, a.model_path, queries, a.floor_seconds))
        port = free_port()
        noop = subprocess.Popen([sys.executable, NOOP, str(port)], cwd=ROOT, stderr=log.open("ab"))
        procs.append(noop)
        noop_url = f"http://127.0.0.1:{port}"
        wait_ready(noop, noop_url + "/readyz")
        floors.append(("no-op MCP tool round trip, Streamable HTTP (1 client, sequential)",
                       asyncio.run(noop_floor(noop_url, a.floor_seconds)), None))
        if a.sat_clients > 0:
            sat = run_load(a, noop_url, "http", a.sat_clients, 0, a.floor_seconds, noop=True, warmup=a.warmup)
            floors.append((f"no-op MCP tool, Streamable HTTP ({a.sat_clients} clients, closed loop)",
                           [c[1] for c in sat["calls"] if c[2]], sum(c[2] for c in sat["calls"]) / sat["wall"]))
        stop(noop)

        results, memory = load_phases(a, db, log, procs)
        print(f"\nclients {', '.join(map(str, a.clients))} (open loop, exponential think time mean {a.think:g} s, "
              f"so about clients/{a.think:g} calls/s offered), saturation {a.sat_clients} clients "
              f"with think 0, each after a {a.warmup:g} s warm-up; durations: http {a.duration:g} s / {a.sat_duration:g} s, sse {a.sse_duration:g} s / "
              f"{a.sse_sat_duration:g} s")
        for label, r in results:
            print(load_table(f"{label}, search mode {r['mode'] or 'default'}", r))

        print("\n**targets**\n\n| target | measured | result |\n|---|---|---|")
        for label, r in results:
            if r["think"]:
                p95 = search_p95(r)
                print(f"| search p95 <= 50 ms at {r['clients']} clients ({label}, {r['mode'] or 'default'}) | "
                      f"{ms(p95)} ms | {'PASS' if p95 <= 0.050 else 'FAIL'} |")
        errs = sum(len(r["errors"]) + r["unfinished"] for _, r in results)
        print(f"| zero errors (failed calls + dead sessions, all phases) | {errs} | {'PASS' if errs == 0 else 'FAIL'} |")

        print("\n**floors**\n\n| floor | n | p50 ms | p95 ms | p99 ms | max throughput/s |\n|---|---|---|---|---|---|")
        for label, lat, tput in floors:
            print(f"| {label} | {len(lat):,} | {ms(pct(lat, 50))} | {ms(pct(lat, 95))} | {ms(pct(lat, 99))} | "
                  f"{'—' if tput is None else f'{tput:,.0f}'} |")
        if a.json:
            Path(a.json).write_text(json.dumps({
                "n": a.n, "mode": "hybrid" if a.model_path else "keyword", "postgres": pg_version,
                "pgvector": pgvector[0] if pgvector else None, "shared_buffers": buffers, "prefill": built,
                "pool_max": a.pool_max, "distinct_queries": a.distinct_queries, "server_memory_mb": memory,
                "phases": [{**summary(label, r), "transport": label} for label, r in results],
                "floors": [{"label": label, "p50": pct(lat, 50), "p95": pct(lat, 95), "p99": pct(lat, 99),
                            "throughput": tput, "calls": len(lat)} for label, lat, tput in floors]}, indent=1))
        tail = [ln for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
        print(f"\nserver stderr: {len(tail)} lines" + ("; last 5:\n" + "\n".join(f"    {ln}" for ln in tail[-5:])
                                                      if tail else ""))
    finally:
        for p in procs:
            stop(p)
        if pg is not None:
            pg.cleanup()
        shutil.rmtree(tmp, ignore_errors=True)


def describe_prefill(built: dict[str, float]) -> str:
    text = f"COPY + ANALYZE {built['memories_s']:.1f} s"
    if "vectors_s" in built:
        text += f", vectors COPY {built['vectors_s']:.1f} s, HNSW build {built['index_s']:.1f} s"
    return text


def load_phases(a: argparse.Namespace, db: str, log: Path, procs: list[subprocess.Popen[bytes]]
                ) -> tuple[list[tuple[str, dict[str, Any]]], dict[str, float]]:
    """Every open-loop phase (each search mode x each client count) on one server per transport, then the
    saturation phase; SSE runs the largest client count in the first mode only. Returns the phases and the
    Streamable HTTP server's memory at the end."""
    results: list[tuple[str, dict[str, Any]]] = []
    memory: dict[str, float] = {}
    for transport, duration, sat_duration in (("http", a.duration, a.sat_duration),
                                              ("sse", a.sse_duration, a.sse_sat_duration)):
        if duration <= 0:
            continue
        proc, base = start_server(a, transport, db, log)
        procs.append(proc)
        label = "Streamable HTTP (/mcp)" if transport == "http" else "SSE (/sse)"
        print(f"{label}: server pid {proc.pid} ready at {base}; running…", file=sys.stderr, flush=True)
        if transport == "http" and a.sequential_seconds > 0:  # unloaded latency; every query new (not cached)
            for mode in a.modes:
                print(f"  1 client, back to back, search mode {mode or 'default'}", file=sys.stderr, flush=True)
                r = run_load(a, base, transport, 1, 0, a.sequential_seconds, mode=mode, distinct=0)
                results.append((label, {**r, "kind": "sequential"}))
        runs = [(m, c) for m in a.modes for c in a.clients] if transport == "http" else [(a.modes[0], max(a.clients))]
        for mode, clients in runs:
            print(f"  {clients} clients, search mode {mode or 'default'}", file=sys.stderr, flush=True)
            r = run_load(a, base, transport, clients, a.think, duration, mode=mode, warmup=a.warmup)
            results.append((label, {**r, "kind": "open"}))
        if sat_duration > 0 and a.sat_clients > 0:
            r = run_load(a, base, transport, a.sat_clients, 0, sat_duration, mode=a.modes[0], warmup=a.warmup)
            results.append((label, {**r, "kind": "saturation"}))
        if transport == "http":
            memory = rss_mb(proc.pid)
        stop(proc)
    return results, memory


def numbers(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def modes(text: str) -> list[str | None]:
    chosen = [x.strip() for x in text.split(",") if x.strip()]
    if unknown := set(chosen) - {"keyword", "hybrid", "semantic"}:
        raise argparse.ArgumentTypeError(f"unknown search mode(s): {', '.join(sorted(unknown))}")
    out: list[str | None] = [*chosen]
    return out or [None]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--n", type=int, default=100_000, help="memories prefilled with COPY (default 100000)")
    p.add_argument("--clients", type=numbers, default=[100], help="concurrent MCP sessions, open loop; a comma "
                   "list runs one phase per count on the same database (default 100)")
    p.add_argument("--modes", type=modes, default=[None], help="search modes the clients ask for, comma separated "
                   "(keyword, hybrid, semantic), one phase each; default: the server's default")
    p.add_argument("--think", type=float, default=1.0, help="mean exponential think time, s (default 1.0)")
    p.add_argument("--duration", type=float, default=60, help="Streamable HTTP open-loop seconds (default 60)")
    p.add_argument("--warmup", type=float, default=5, help="seconds of each loaded phase run before its calls "
                   "count (default 5): the pool grows and new PostgreSQL backends warm their caches then")
    p.add_argument("--sequential-seconds", type=float, default=0, help="first, per mode: one client calling back "
                   "to back for this long, every query new (unloaded latency; default 0: skipped)")
    p.add_argument("--sat-clients", type=int, default=20, help="clients in the think-0 saturation runs (default 20)")
    p.add_argument("--sat-duration", type=float, default=20, help="Streamable HTTP saturation seconds (default 20)")
    p.add_argument("--sse-duration", type=float, default=30, help="SSE open-loop seconds, 0 skips SSE (default 30)")
    p.add_argument("--sse-sat-duration", type=float, default=15, help="SSE saturation seconds (default 15)")
    p.add_argument("--floor-seconds", type=float, default=5, help="seconds per floor measurement (default 5)")
    p.add_argument("--search-share", type=float, default=0.8, help="fraction of calls that search (default 0.8)")
    p.add_argument("--pool-max", type=int, default=20, help="STACKMEMORY_POOL_MAX for the server (default 20)")
    p.add_argument("--workers", type=int, default=2, help="load generator processes (default 2)")
    p.add_argument("--call-timeout", type=float, default=30, help="seconds before a call counts as failed")
    p.add_argument("--database-url", help="use this PostgreSQL (a database is created in it) instead of embedded")
    p.add_argument("--model-path", default="", help="serve with this local embedding model (hybrid search; "
                   "the prefilled memories get random unit vectors); default: embeddings off (keyword)")
    p.add_argument("--distinct-queries", type=int, default=0, help="draw searches from this many fixed queries "
                   "(Zipf popularity) instead of a new one each time (default 0: every query new)")
    p.add_argument("--embed-queries", type=int, default=200,
                   help="queries for the embedding and raw HNSW floors, with --model-path (default 200)")
    p.add_argument("--shared-buffers", default="1GB", help="the embedded PostgreSQL's shared_buffers, set "
                   "before the run ('' keeps its default, 128MB; default 1GB)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--json", metavar="PATH", help="also write the figures as JSON here (for bench/run)")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    a = p.parse_args()
    if not a.model_path and {"hybrid", "semantic"} & set(a.modes):
        p.error("--modes hybrid and semantic need --model-path (the server runs without embeddings otherwise)")
    if a.worker:
        try:  # the load generator's own event loop in C where uvloop is installed, as the server's is
            import uvloop

            factory: Any = uvloop.new_event_loop
        except ImportError:
            factory = None
        with asyncio.Runner(loop_factory=factory) as runner:
            runner.run(worker(json.loads(a.worker)))
    else:
        # Killed (bench/run interrupted, a timeout): unwind like Ctrl-C, so the server and the embedded
        # PostgreSQL it started are stopped and its data folder removed, not left running.
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
        run(a)


if __name__ == "__main__":
    main()
