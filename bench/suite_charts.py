"""PNG charts for docs/benchmarks.md, with matplotlib (the `bench` extra); without it, no charts."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from suite_targets import done, floor, get, hybrid, unloaded

INSTALL = ("matplotlib is not installed, so docs/benchmarks.md gets tables but no charts. Install it with\n"
           "    python -m pip install -e '.[bench]'      (or: python -m pip install 'matplotlib>=3.8')\n"
           "and redraw with bench/run --report-only.")
Series = list[tuple[str, Callable[[dict[str, Any]], float | None]]]


def have_matplotlib() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def charts(r: dict[str, Any], folder: Path) -> list[str]:
    """Draw every chart the results allow; returns the file names written."""
    if not have_matplotlib():
        return []
    import matplotlib

    matplotlib.use("Agg")
    folder.mkdir(parents=True, exist_ok=True)
    made: list[str] = []
    local, hosted = done(r.get("local", [])), done(r.get("hosted", []))
    if local:
        series: Series = [
            ("no-op MCP round trip (floor)", lambda e: get(e, "bench", "noop", "p50")),
            ("store_memory", lambda e: get(e, "bench", "store", "p50")),
            ("search_memory, keyword", lambda e: get(e, "bench", "search", "p50")),
            ("search_memory, hybrid, new query", hybrid),
            ("search_memory, hybrid, repeated query", lambda e: hybrid(e, "cached")),
        ]
        made += size_chart(local, series, "Local (stdio, SQLite): p50 latency vs store size",
                           folder / "local_latency_vs_size.png")
    if hosted:
        series = [
            ("no-op MCP round trip, HTTP (floor)", lambda e: floor(e, "noop_http")),
            ("raw pgvector HNSW query (floor)", lambda e: floor(e, "hnsw")),
            *[(f"{tool}, {mode}", lambda e, m=mode, t=tool: unloaded(e, m, t))
              for mode, tool in (("keyword", "store_memory"), ("keyword", "search_memory"),
                                 ("hybrid", "search_memory"))],
        ]
        made += size_chart(hosted, series, "Hosted (HTTP, PostgreSQL), unloaded: p50 latency vs store size",
                           folder / "hosted_latency_vs_size.png")
        made += clients_chart(hosted, folder / "hosted_latency_vs_clients.png")
    if any(get(e, "extra", "soak") for e in local):
        made += memory_chart(local, folder / "local_memory_over_time.png")
    return made


def size_chart(entries: list[dict[str, Any]], series: Series, title: str, path: Path) -> list[str]:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label, value in series:
        points = [(e["n"], v * 1000) for e in entries if (v := value(e)) is not None]
        if points:
            ax.plot(*zip(*points, strict=True), marker="o", label=label)
    ax.set(xscale="log", yscale="log", xlabel="memories in the store", ylabel="p50, ms", title=title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    return save(fig, path)


def clients_chart(entries: list[dict[str, Any]], path: Path) -> list[str]:
    """Search p50/p95/p99 against concurrent clients, one panel per store size, a line per mode and percentile."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(entries), figsize=(6 * len(entries), 4.5), squeeze=False, sharey=True)
    for ax, e in zip(axes[0], entries, strict=True):
        for mode, colour in (("keyword", "tab:blue"), ("hybrid", "tab:orange")):
            runs = sorted((p for p in e["phases"] if p.get("mode") == mode and p["think"] > 0),
                          key=lambda p: p["clients"])
            for q, style in (("p50", ":"), ("p95", "-"), ("p99", "--")):
                points = [(p["clients"], v * 1000) for p in runs
                          if (v := get(p, "tools", "search_memory", q)) is not None]
                if points:
                    ax.plot(*zip(*points, strict=True), style, marker="o", color=colour, label=f"{mode} {q}")
        ax.axhline(50, color="grey", linewidth=0.8, linestyle="-.", label="target p95 at 100 clients: 50 ms")
        ax.axhline(100, color="black", linewidth=0.8, linestyle="-.", label="target p99 at 200 clients: 100 ms")
        ax.set(xscale="log", yscale="log", xlabel="concurrent clients (think time 1 s)", ylabel="search_memory, ms",
               title=f"Hosted, {e['n']:,} memories")
        ax.grid(True, which="both", alpha=0.3)
    axes[0][0].legend(fontsize=7)
    return save(fig, path)


def memory_chart(entries: list[dict[str, Any]], path: Path) -> list[str]:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for e in entries:
        samples = get(e, "extra", "soak", "samples")
        if samples:
            ax.plot([s[0] for s in samples], [s[1] for s in samples], label=f"{e['n']:,} memories")
    ax.axhline(150, color="grey", linestyle="--", label="target: 150 MB")
    ax.set(xlabel="seconds of back-to-back calls (80% search, 20% store)", ylabel="server RSS, MB", ylim=(0, None),
           title="Local server memory over time (no embedding model)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    return save(fig, path)


def save(fig: Any, path: Path) -> list[str]:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return [path.name]
