"""The figures bench/run reports, read out of results.json, and the performance targets of issue 10."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

TARGET_LOCAL = 100_000  # local targets are stated at this store size
TARGET_HOSTED = 1_000_000  # hosted ones at this one
FLOORS = {"noop_http": "no-op MCP tool round trip", "select1": "PostgreSQL `SELECT 1`",
          "embed": "one query embedding", "hnsw": "raw pgvector HNSW"}


@dataclass(frozen=True)
class Target:
    name: str
    measured: str
    ok: bool | None  # None: not measured in this run


def ms(seconds: float | None) -> str:
    return "—" if seconds is None else f"{seconds * 1000:.1f}"


def get(data: Any, *keys: str | int) -> Any:
    """data[k1][k2]..., or None where any step is missing (a failed or skipped part)."""
    for key in keys:
        if data is None:
            return None
        try:
            data = data[key]
        except (KeyError, IndexError, TypeError):
            return None
    return data


def ratio(value: float | None, floor: float | None) -> float | None:
    return value / floor if value is not None and floor else None


def times(x: float | None) -> str:
    return "—" if x is None else f"{x:.2f}x"


def done(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in entries if "failed" not in e]


def at_size(entries: list[dict[str, Any]], n: int) -> tuple[dict[str, Any] | None, str]:
    """The entry at size n, else the largest there is, with a note saying so."""
    ok = done(entries)
    exact = next((e for e in ok if e["n"] == n), None)
    if exact or not ok:
        return exact, ""
    largest = max(ok, key=lambda e: e["n"])
    return largest, f" (measured at {largest['n']:,}: this run has no {n:,})"


def floor(entry: dict[str, Any], name: str, q: str = "p50") -> float | None:
    """A hosted floor's percentile, by the start of its label."""
    row = next((f for f in entry.get("floors", []) if f["label"].startswith(FLOORS[name])), None)
    return None if row is None else row.get(q)


def phase(entry: dict[str, Any], mode: str, clients: int) -> dict[str, Any] | None:
    return next((p for p in entry.get("phases", []) if p.get("mode") == mode and p["clients"] == clients
                 and p["think"] > 0), None)


def unloaded(entry: dict[str, Any], mode: str, tool: str = "search_memory", q: str = "p50") -> float | None:
    """A hosted call's latency with one client calling back to back (every query new)."""
    p = next((p for p in entry.get("phases", []) if p.get("kind") == "sequential" and p.get("mode") == mode), None)
    return get(p, "tools", tool, q)  # type: ignore[no-any-return]


def hybrid(entry: dict[str, Any], cached: str = "uncached", q: str = "p50") -> float | None:
    return get(entry, "extra", "hybrid", "modes", "hybrid", cached, q)  # type: ignore[no-any-return]


def soak_growth(soak: dict[str, Any]) -> tuple[float, bool]:
    """MB gained from the first to the last reading of the long run; flat means within 5 MB or 5%."""
    growth = soak["end_mb"] - soak["start_mb"]
    return growth, growth <= max(5.0, 0.05 * soak["start_mb"])


def local_targets(r: dict[str, Any]) -> list[Target]:
    e, note = at_size(r.get("local", []), TARGET_LOCAL)
    size = f"{TARGET_LOCAL:,}"
    if e is None:
        return [Target(f"local targets at {size}", "—", None)]
    noop = get(e, "bench", "noop", "p50")
    keyword, store = ratio(get(e, "bench", "search", "p50"), noop), ratio(get(e, "bench", "store", "p50"), noop)
    hyb = ratio(hybrid(e), noop)
    seq, piped = get(e, "bench", "store", "per_s"), get(e, "bench", "store", "pipelined_per_s")
    batched = get(e, "bench", "store", "batched_per_s")
    best = max(x for x in (seq, piped, batched, 0.0) if x is not None)
    in_batches = (f"{batched:,.0f}/s in store_memories calls of {get(e, 'bench', 'store', 'batch_size')}, "
                  if batched else "")
    out = [
        Target(f"local keyword search p50 <= 3x the no-op MCP round trip (stdio) at {size}{note}",
               times(keyword), None if keyword is None else keyword <= 3),
        Target(f"local hybrid search p50 <= 8x the no-op round trip at {size}, new query (embedding included)"
               f"{note}", times(hyb), None if hyb is None else hyb <= 8),
        Target(f"local store p50 <= 2x the no-op round trip at {size}{note}", times(store),
               None if store is None else store <= 2),
        Target(f"1,000+ stores/s sustained locally (one stdio session; {size}{note})",
               f"{in_batches}{piped or 0:,.0f}/s with {get(e, 'bench', 'store', 'inflight')} calls in flight, "
               f"{seq or 0:,.0f}/s one at a time", best >= 1000 if best else None),
    ]
    soak = get(e, "extra", "soak")
    if soak is None:
        return [*out, Target(f"local server memory < 150 MB at {size}, flat over time", "—", None)]
    growth, flat = soak_growth(soak)
    peak = max(soak["peak_mb"], max(s[1] for s in soak["samples"]))
    return [*out,
            Target(f"local server memory < 150 MB at {size} without the embedding model{note}",
                   f"{peak:.0f} MB peak", peak < 150),
            Target(f"... and flat over time ({soak['seconds']:g} s of back-to-back calls; flat: within 5 MB or 5%)",
                   f"{soak['start_mb']:.0f} → {soak['middle_mb']:.0f} → {soak['end_mb']:.0f} MB ({growth:+.1f})",
                   flat)]


def hosted_targets(r: dict[str, Any]) -> list[Target]:
    """Per search mode the run measured (hybrid: the default with embeddings, as the issue's hosted scale is)."""
    e, note = at_size(r.get("hosted", []), TARGET_HOSTED)
    ran = {p.get("mode") for p in e["phases"]} if e else {"hybrid"}
    out: list[Target] = []
    for clients, q, limit in ((100, "p95", 0.050), (200, "p99", 0.100)):
        for mode in (m for m in ("hybrid", "keyword") if m in ran):
            value = get(phase(e, mode, clients) if e else None, "tools", "search_memory", q)
            out.append(Target(f"hosted {mode} search {q} <= {limit * 1000:.0f} ms at {clients} clients and "
                              f"{TARGET_HOSTED:,} memories{note}", "—" if value is None else f"{ms(value)} ms",
                              None if value is None else value <= limit))
    return out


def targets(r: dict[str, Any]) -> list[Target]:
    return [*local_targets(r), *hosted_targets(r)]
