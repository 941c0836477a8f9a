"""The `stackmemory` command: `serve` for assistants, and human commands printing tables or JSON."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from server.config import ENV_VARS, Settings
from server.errors import ConfigError, StackMemoryError

EPILOG = "environment variables:\n" + "\n".join(f"  {k:<31} {v}" for k, v in ENV_VARS.items())


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    try:
        settings = Settings.load(db=args.db, **{k: getattr(args, k, None) for k in
                                                ("transport", "host", "port", "project", "log_level")})
        logging.basicConfig(stream=sys.stderr, level=settings.log_level,
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        if args.command == "serve":
            return _serve(settings)
        if args.command in ("reindex", "worker"):
            return asyncio.run(_reindex(settings) if args.command == "reindex" else _worker(settings))
        return asyncio.run(_run(settings, args))
    except ConfigError as exc:
        print(f"stackmemory: configuration error: {exc}", file=sys.stderr)
        return 2
    except StackMemoryError as exc:
        print(f"stackmemory: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def _serve(settings: Settings) -> int:
    import os

    from server.app import Runtime
    from server.transports import serve

    code = serve(Runtime(settings))
    # Everything is closed by now. A model download abandoned at shutdown may still hold a worker
    # thread (fastembed retries for about 40 s); exiting here keeps the client from waiting on it.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


async def _run(settings: Settings, args: argparse.Namespace) -> int:
    from server.app import Runtime

    runtime = Runtime(settings, worker=False)  # one-shot commands leave embedding to the server's worker
    async with runtime.session() as svc:
        handler: Callable[[Any, argparse.Namespace], Awaitable[Any]] = COMMANDS[args.command]
        result = await handler(svc, args)
    if args.json:
        print(json.dumps(result.model_dump(mode="json"), indent=2, ensure_ascii=False))
    else:
        print(_human(args.command, result))
    return 0


async def _reindex(settings: Settings) -> int:
    """Embed every memory with the configured model, replacing vectors of any other model. Progress is
    durable (a job per memory), so an interrupted reindex continues where it stopped when run again."""
    from server.app import Runtime
    from server.jobs import Worker

    runtime = Runtime(settings, worker=False, adopt_model=True)
    async with runtime.session() as svc:
        if svc.semantic is None or svc.jobs is None:
            print(f"stackmemory: cannot reindex: {svc.semantic_off}", file=sys.stderr)
            return 1
        await svc.queue_unembedded()
        total = await svc.storage.count_unembedded(svc.semantic.model)
        worker = Worker(svc.jobs, {"embed": svc.embed_jobs}, batch=64)
        while True:
            handled = await worker.run_once()
            left = await svc.storage.count_unembedded(svc.semantic.model)
            _progress(total - left, total)
            if not handled:
                break
        failed = (await svc.jobs.counts()).failed
    print(f"\nreindexed with {svc.semantic.model}: {total - left} of {total} memories embedded"
          + (f"; {failed} failed (see the log, then run reindex again)" if failed else ""), file=sys.stderr)
    return 1 if left else 0


def _progress(done: int, total: int) -> None:
    if not sys.stderr.isatty():
        return
    width = 30
    filled = width * done // total if total else width
    print(f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total}", end="", file=sys.stderr, flush=True)


async def _worker(settings: Settings) -> int:
    """Run only the background job worker (embeddings) until interrupted; several may run at once."""
    import anyio

    from server.app import Runtime

    async with Runtime(settings).session() as svc:
        if svc.semantic is None:
            print(f"stackmemory: nothing to work on: {svc.semantic_off}", file=sys.stderr)
            return 1
        await anyio.sleep_forever()
    return 0


async def _store(svc: Any, a: argparse.Namespace) -> Any:
    return await svc.store(a.content, a.kind, _split(a.tags), a.project, a.importance)


async def _search(svc: Any, a: argparse.Namespace) -> Any:
    return await svc.search(a.query, a.limit, a.project, [a.kind] if a.kind else None, _split(a.tags),
                            mode=a.mode)


async def _list(svc: Any, a: argparse.Namespace) -> Any:
    return await svc.list_memories(a.project, a.kind, _split(a.tags), a.limit, a.cursor)


async def _get(svc: Any, a: argparse.Namespace) -> Any:
    return await svc.get(a.id)


async def _delete(svc: Any, a: argparse.Namespace) -> Any:
    return await svc.delete(a.id)


async def _status(svc: Any, a: argparse.Namespace) -> Any:
    return await svc.status()


async def _upgrade(svc: Any, a: argparse.Namespace) -> Any:
    return await svc.status()  # opening the store applied any pending migration


COMMANDS: dict[str, Callable[[Any, argparse.Namespace], Awaitable[Any]]] = {
    "store": _store, "search": _search, "list": _list, "get": _get, "delete": _delete, "status": _status,
    "db": _upgrade,
}


def _split(tags: str | None) -> list[str] | None:
    return [t for t in (tags or "").split(",") if t.strip()] or None


# ---- human output ---------------------------------------------------------------------------------------


def _human(command: str, result: Any) -> str:
    from server.models import Memory

    if command == "store":
        return f"{result.message}\n\n{_table([result])}"
    if command == "search":
        if not result.results:
            return result.note or "no memories matched"
        rows = [[f"{h.score:.3f}", h.id, h.kind, h.project, _short(h.content), h.reason]
                for h in result.results]
        return _grid(["score", "id", "kind", "project", "content", "why"], rows)
    if command == "list":
        text = _table(result.memories) if result.memories else "no memories"
        return text + (f"\n\nmore: --cursor {result.next_cursor}" if result.next_cursor else "")
    if isinstance(result, Memory):
        return "\n".join(f"{k:>11}: {v}" for k, v in result.model_dump(mode="json").items())
    if command == "delete":
        return f"{result.id}: {result.message}"
    data = result.model_dump(mode="json")
    return "\n".join(f"{k:>15}: {v}" for k, v in data.items())


def _table(memories: list[Any]) -> str:
    rows = [[m.id, m.kind, str(m.importance), m.project, ",".join(m.tags), _short(m.content)] for m in memories]
    return _grid(["id", "kind", "imp", "project", "tags", "content"], rows)


def _grid(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]

    def line(row: list[str]) -> str:
        return "  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()

    return "\n".join([line(header), line(["-" * w for w in widths]), *map(line, rows)])


def _short(text: str, width: int = 60) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"


# ---- arguments ------------------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    from server import __version__

    kinds = ["fact", "decision", "constraint", "interface", "todo", "risk", "preference", "note"]
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--db", help="SQLite file or postgresql:// URL [env STACKMEMORY_DB, DATABASE_URL]")
    common.add_argument("--log-level", help="DEBUG, INFO, WARNING or ERROR [env STACKMEMORY_LOG_LEVEL]")
    out = argparse.ArgumentParser(add_help=False)
    out.add_argument("--json", action="store_true", help="print JSON instead of a table")

    p = argparse.ArgumentParser(prog="stackmemory", description="Persistent memory for AI coding assistants.",
                                epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=f"stackmemory {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    s = sub.add_parser("serve", parents=[common], help="run the MCP server (stdio by default)",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    s.add_argument("--transport", choices=["stdio", "sse", "http"],
                   help="stdio, sse or http (Streamable HTTP at /mcp) [env STACKMEMORY_TRANSPORT]")
    s.add_argument("--host", help="address to bind for sse/http, default 127.0.0.1 [env STACKMEMORY_HOST]")
    s.add_argument("--port", type=int, help="port for sse/http, default 8765 [env STACKMEMORY_PORT, PORT]")
    s.add_argument("--project", help="default project for new memories [env STACKMEMORY_PROJECT]")

    st = sub.add_parser("store", parents=[common, out], help="store a memory")
    st.add_argument("content", help="the text to remember")
    st.add_argument("--kind", default="note", choices=kinds, help="what sort of memory (default note)")
    st.add_argument("--tags", help="comma-separated tags, e.g. db,deploy")
    st.add_argument("--project", help="project (default: git remote or folder name) [env STACKMEMORY_PROJECT]")
    st.add_argument("--importance", type=int, default=5, help="0-10, default 5")

    se = sub.add_parser("search", parents=[common, out], help="search memories")
    se.add_argument("query", help="words or a question, as plain text")
    se.add_argument("--limit", type=int, default=10, help="1-100, default 10")
    se.add_argument("--project", help="only this project")
    se.add_argument("--kind", choices=kinds, help="only this kind")
    se.add_argument("--tags", help="only memories with all these comma-separated tags")
    se.add_argument("--mode", choices=["hybrid", "keyword", "semantic"], help="ranking (default hybrid if "
                    "embeddings are on) [env STACKMEMORY_EMBEDDINGS]")

    ls = sub.add_parser("list", parents=[common, out], help="list memories, newest first")
    ls.add_argument("--project", help="only this project")
    ls.add_argument("--kind", choices=kinds, help="only this kind")
    ls.add_argument("--tags", help="only memories with all these comma-separated tags")
    ls.add_argument("--limit", type=int, default=20, help="1-100, default 20")
    ls.add_argument("--cursor", help="continue after this id (printed under the previous page)")

    for name, text in (("get", "show one memory"), ("delete", "delete one memory (keeps a tombstone)")):
        c = sub.add_parser(name, parents=[common, out], help=text)
        c.add_argument("id", help="memory id")

    sub.add_parser("status", parents=[common, out], help="backend, database, schema version and counts")
    sub.add_parser("reindex", parents=[common],
                   help="embed every memory with the configured model (after changing models); resumable")
    sub.add_parser("worker", parents=[common], help="run only the background embedding worker")
    db = sub.add_parser("db", parents=[common, out], help="database maintenance")
    db.add_argument("action", choices=["upgrade"], help="upgrade: apply pending migrations")
    return p
