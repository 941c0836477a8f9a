"""bench/run's sections: each benchmark script run as its own process with --json, at the sizes of a scale."""

from __future__ import annotations

import json
import os
import platform
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SECTIONS = ("local", "hosted")
MODEL = Path(os.environ.get("STACKMEMORY_TEST_MODEL_PATH", ROOT.parent / "shared/models/all-MiniLM-L6-v2-onnx"))

# small: minutes on 2 cores, to see that everything works and how it trends; full: the sizes.
SCALES: dict[str, dict[str, Any]] = {
    "small": {"local": [10_000, 100_000], "timed_stores": 2000, "pipelined_stores": 2000, "searches": 300,
              "cold_runs": 3, "soak": 30, "queries": 100, "queries_1m": 30,
              "hosted": [10_000, 100_000], "clients": [1, 10, 100], "duration": 15, "floor_seconds": 3, "sequential": 5},
    "full": {"local": [10_000, 100_000, 1_000_000], "timed_stores": 5000, "pipelined_stores": 5000,
             "searches": 500, "cold_runs": 5, "soak": 300, "queries": 100, "queries_1m": 30,
             "hosted": [100_000, 1_000_000], "clients": [1, 10, 100, 200], "duration": 60, "floor_seconds": 5,
             "sequential": 10},
}
INFLIGHT = 8  # calls outstanding at once on one stdio session, for the throughput figure


def log(message: str) -> None:
    print(f"[{datetime.now():%H:%M:%S}] {message}", file=sys.stderr, flush=True)


class BenchFailed(Exception):
    pass


def bench(script: str, *args: str) -> dict[str, Any]:
    """Run one benchmark script to completion and return the figures it wrote with --json; its own
    output goes to bench/run's stderr as it runs, so a long run shows progress."""
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        out = Path(f.name)
    cmd = [sys.executable, str(HERE / script), *args, "--json", str(out)]
    log(" ".join(cmd[1:-2]))
    began = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=ROOT, stdout=sys.stderr, stderr=sys.stderr, check=False)
        if proc.returncode or not out.stat().st_size:
            raise BenchFailed(f"{script} {' '.join(args)} exited with {proc.returncode} (its output is above)")
        data: dict[str, Any] = json.loads(out.read_text())
    finally:
        out.unlink(missing_ok=True)
    data["seconds"] = time.perf_counter() - began
    return data


def local_section(scale: dict[str, Any], model: Path | None, keep: Callable[[dict[str, Any]], None]) -> None:
    """Per size: bench_local.py on a bulk-loaded database it keeps, then suite_local.py on that database
    (memory over a long run; hybrid search with the real model)."""
    for n in scale["local"]:
        tmp = Path(tempfile.mkdtemp(prefix="smsuite-"))
        entry: dict[str, Any] = {"n": n}
        try:
            entry["bench"] = bench("bench_local.py", "--n", str(n), "--bulk", "--db", str(tmp / "local.db"),
                                   "--timed-stores", str(scale["timed_stores"]), "--searches", str(scale["searches"]),
                                   "--pipelined-stores", str(scale["pipelined_stores"]),
                                   "--inflight", str(INFLIGHT), "--cold-runs", str(scale["cold_runs"]))
            queries = scale["queries"] if n < 1_000_000 else scale["queries_1m"]
            entry["extra"] = bench("suite_local.py", "--db", str(tmp / "local.db"),
                                   "--soak-seconds", str(scale["soak"]), "--queries", str(queries),
                                   *(["--model-path", str(model)] if model else []))
        except BenchFailed as exc:
            log(str(exc))
            entry["failed"] = str(exc)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        keep(entry)


def hosted_section(scale: dict[str, Any], model: Path | None, keep: Callable[[dict[str, Any]], None]) -> None:
    """Per size: one bench_hosted.py run (COPY prefill, vectors and HNSW index with the model), every client
    count in each search mode over Streamable HTTP, and the floors, on one database."""
    modes = "keyword,hybrid" if model else "keyword"
    for n in scale["hosted"]:
        args = ["--n", str(n), "--clients", ",".join(map(str, scale["clients"])), "--modes", modes,
                "--duration", str(scale["duration"]), "--sat-duration", "0", "--sse-duration", "0",
                "--floor-seconds", str(scale["floor_seconds"]), "--distinct-queries", "1000",
                "--sequential-seconds", str(scale["sequential"])]
        try:
            keep({"n": n, **bench("bench_hosted.py", *args, *(["--model-path", str(model)] if model else []))})
        except BenchFailed as exc:
            log(str(exc))
            keep({"n": n, "failed": str(exc)})


def machine() -> dict[str, Any]:
    """What the figures were measured on, and how busy it was when the run began."""
    def first(path: str, key: str) -> str:
        try:
            return next(line.split(":", 1)[1].strip() for line in Path(path).read_text().splitlines()
                        if line.startswith(key))
        except (OSError, StopIteration):
            return ""

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=False).stdout.strip()

    memory = first("/proc/meminfo", "MemTotal")
    return {"cores": os.cpu_count(), "cpu": first("/proc/cpuinfo", "model name") or platform.processor(),
            "memory_mb": int(memory.split()[0]) // 1024 if memory else None,
            "system": f"{platform.system()} {platform.release()} {platform.machine()}",
            "python": platform.python_version(), "sqlite": sqlite3.sqlite_version, "mcp": version("mcp"),
            "commit": git("rev-parse", "--short", "HEAD"), "dirty": bool(git("status", "--porcelain", "--", "server",
                                                                             "tools", "bench")),
            "load": os.getloadavg() if hasattr(os, "getloadavg") else None,
            "date": datetime.now(UTC).isoformat(timespec="minutes")}


def run(scale_name: str, only: list[str], data: Path, model: Path | None,
        overrides: dict[str, Any]) -> dict[str, Any]:
    """The chosen sections at one scale. results.json is rewritten after every size, so a failure (or ^C)
    keeps what ran; sections not chosen keep their figures from the previous results.json."""
    scale = {**SCALES[scale_name], **{k: v for k, v in overrides.items() if v}}
    results: dict[str, Any] = {}
    previous = json.loads(data.read_text()) if data.exists() else {}
    if "runs" in previous:  # a results.json from an older bench/run has no "runs" and is not reused
        results = {k: previous[k] for k in SECTIONS if k in previous and k not in only}
        results["runs"] = {k: v for k, v in previous.get("runs", {}).items() if k not in only}
    results.update(scale=scale_name, machine=machine(), model=str(model) if model else None)
    results.setdefault("runs", {})
    for section in only:
        started = time.perf_counter()
        results[section] = []
        results["runs"][section] = {"date": results["machine"]["date"], "commit": results["machine"]["commit"],
                                    "scale": scale_name, "config": scale}

        def keep(entry: dict[str, Any], section: str = section, started: float = started) -> None:
            results[section].append(entry)
            results["runs"][section]["seconds"] = time.perf_counter() - started
            data.parent.mkdir(parents=True, exist_ok=True)
            data.write_text(json.dumps(results, indent=1))

        (local_section if section == "local" else hosted_section)(scale, model, keep)
    return results
