"""The `stackmemory` command: `serve` for assistants, and human commands printing tables or JSON."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from server.config import ENV_VARS, MAX_TRANSFER_BATCH, TRANSFER_BATCH, Settings
from server.errors import ConfigError, StackMemoryError

ADMIN_NOTE = ("runs as the database's operator: whoever can open the database (--db) may do this, and no "
              "role or permission checks apply")
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
        # aiosqlite logs every statement's parameters at DEBUG: memories, token hashes, Linear API keys.
        logging.getLogger("aiosqlite").setLevel(max(logging.INFO, logging.getLogger().level))
        if args.command == "serve":
            return _serve(settings)
        if args.command in ADMIN_GROUPS:
            return asyncio.run(_administer(settings, args))
        if args.command == "linear":
            return asyncio.run(_linear(settings, args))
        if args.command in TRANSFER_COMMANDS:
            return asyncio.run(_transfer(settings, args))
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
    from server.service import EMBED

    runtime = Runtime(settings, worker=False, adopt_model=True)
    async with runtime.session() as svc:
        if svc.semantic is None or svc.jobs is None:
            print(f"stackmemory: cannot reindex: {svc.semantic_off}", file=sys.stderr)
            return 1
        await svc.queue_unembedded()
        total = await svc.storage.count_unembedded(svc.semantic.model)
        worker = Worker(svc.jobs, {EMBED: svc.embed_jobs}, batch=64)
        while True:
            handled = await worker.run_once()
            left = await svc.storage.count_unembedded(svc.semantic.model)
            _progress(total - left, total)
            if not handled:
                break
        failed = (await svc.jobs.counts(EMBED)).failed
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
    """Run only the background job workers (embeddings, Linear syncs) until interrupted; several may run at
    once."""
    import anyio

    from server.app import Runtime

    async with Runtime(settings).session() as svc:
        if svc.semantic is None:
            print(f"stackmemory: not embedding ({svc.semantic_off}); running Linear syncs only", file=sys.stderr)
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


# ---- users, workspaces and tokens (the operator's commands) --------------------------------------------

async def _remove_member(acc: Any, a: argparse.Namespace) -> dict[str, Any]:
    await acc.remove_member(a.workspace, a.user)
    return {"workspace": a.workspace, "user": a.user, "removed": True}


async def _revoke_token(acc: Any, a: argparse.Namespace) -> dict[str, Any]:
    await acc.revoke_token(a.token_id)
    return {"id": a.token_id, "revoked": True}


ADMIN_GROUPS = ("user", "workspace", "token")
AdminHandler = Callable[[Any, argparse.Namespace], Awaitable[Any]]
ADMIN: dict[str, AdminHandler] = {
    "user create": lambda acc, a: acc.create_user(a.name),
    "user list": lambda acc, a: acc.list_users(),
    "workspace create": lambda acc, a: acc.create_workspace(a.name, a.owner),
    "workspace list": lambda acc, a: acc.user_workspaces(a.user) if a.user else acc.all_workspaces(),
    "workspace add-member": lambda acc, a: acc.add_member(a.workspace, a.user, a.role),
    "workspace set-role": lambda acc, a: acc.set_role(a.workspace, a.user, a.role),
    "workspace remove-member": _remove_member,
    "token create": lambda acc, a: acc.create_token(a.user, a.name, a.expires_days),
    "token list": lambda acc, a: acc.list_tokens(a.user),
    "token revoke": _revoke_token,
}


async def _administer(settings: Settings, args: argparse.Namespace) -> int:
    """Open only the database (no embedder, no worker) and run one account command on it."""
    from server.accounts import Accounts
    from server.storage import open_accounts, open_storage

    storage = open_storage(settings)
    await storage.open()
    try:
        result = await ADMIN[f"{args.command} {args.action}"](Accounts(open_accounts(storage)), args)
    finally:
        await storage.close()
    if args.json:
        data = [r.model_dump(mode="json") for r in result] if isinstance(result, list) else (
            result if isinstance(result, dict) else result.model_dump(mode="json"))
        print(json.dumps(data, indent=2, ensure_ascii=False))
    else:
        print(_human_admin(f"{args.command} {args.action}", args, result))
    return 0


# ---- Linear (the operator's commands) -------------------------------------------------------------------

async def _linear(settings: Settings, args: argparse.Namespace) -> int:
    """connect, sync (now, in this process, under the same per-workspace lock as the servers) and status."""
    from server.app import Runtime

    runtime = Runtime(settings, worker=False)
    async with runtime.session() as svc:
        engine = runtime.linear
        assert engine is not None
        one = args.action in ("connect", "disconnect")
        named = [await _workspace(svc, args.workspace)] if args.workspace or one else [
            (c.workspace_id, (await _workspace(svc, c.workspace_id))[1]) for c in await engine.store.connections()]
        if args.action == "connect":
            (ws_id, name), acting = named[0], await _acting_user(svc, named[0][0])
            key = args.api_key or settings.secret(args.api_key_env or "LINEAR_API_KEY")
            if args.api_key_env and not key:
                raise ConfigError(f"{args.api_key_env} is empty or unset; export the Linear API key in it")
            secret = args.webhook_secret or (settings.secret(args.webhook_secret_env) if args.webhook_secret_env
                                             else None)
            await engine.connect(ws_id, acting, key, args.team, webhook_secret=secret, policy=args.policy)
            results: list[Any] = [await engine.status(ws_id, name)]
        elif args.action == "disconnect":
            results = [await engine.disconnect(ws_id, name) for ws_id, name in named[:1]]
        elif args.action == "sync":
            results = [(await engine.run(ws_id)).model_copy(update={"workspace": name}) for ws_id, name in named]
        else:
            results = [await engine.status(ws_id, name) for ws_id, name in named]
    if args.json:
        print(json.dumps([r.model_dump(mode="json") for r in results], indent=2, ensure_ascii=False))
    else:
        print(_human_linear(args, results, settings))
    return 1 if any(getattr(r, "state", "") == "failed" for r in results) else 0


async def _workspace(svc: Any, name_or_id: str | None) -> tuple[str, str]:
    from server.accounts import LOCAL_WORKSPACE_ID, Accounts

    found = await Accounts(svc.accounts).workspace(name_or_id or LOCAL_WORKSPACE_ID)
    return found[0], found[1]


async def _acting_user(svc: Any, workspace_id: str) -> str:
    """Who changes from Linear are recorded as made by: the personal workspace's user, else its first owner."""
    _, _, personal_of = await svc.accounts.find_workspace(workspace_id)
    if personal_of:
        return str(personal_of)
    return str(next(m.user_id for m in await svc.accounts.members(workspace_id) if m.role == "owner"))


def _human_linear(args: argparse.Namespace, results: list[Any], settings: Settings) -> str:
    if not results:
        return "no workspace is connected to Linear; `stackmemory linear connect --team KEY` connects one"
    if args.action == "sync":
        return _grid(["workspace", "state", "pulled", "new here", "updated here", "new in Linear",
                      "updated in Linear", "conflicts", "error"],
                     [[r.workspace, r.state, str(r.pulled), str(r.created_locally), str(r.updated_locally),
                       str(r.created_in_linear), str(r.updated_in_linear), str(r.conflicts),
                       r.error or "; ".join(r.errors)] for r in results])
    rows = [[r.workspace, f"{r.team} ({r.team_name})", r.policy, "yes" if r.webhook else "no", _when(r.last_sync),
             r.last_result.state if r.last_result else "-", str(r.tasks["total"]), str(r.tasks["linked"]),
             str(r.tasks["pending"]), str(r.tasks["conflicts"]), (r.last_result.error or "") if r.last_result else ""]
            for r in results]
    text = _grid(["workspace", "team", "policy", "webhook", "last sync", "result", "tasks", "linked", "to push",
                  "conflicts", "error"], rows)
    if args.action == "disconnect":
        text += ("\n\ndisconnected: the API key, webhook secret and sync cursor are gone; the tasks above stay, "
                 "as local tasks. `stackmemory linear connect` reconnects (to the same team, the links still hold).")
    if args.action == "connect":
        text += ("\n\nconnected. The servers' workers sync it every STACKMEMORY_LINEAR_INTERVAL seconds; "
                 "`stackmemory linear sync` syncs now. Linear webhooks: POST "
                 f"{settings.base_url}/webhooks/linear" + ("" if results[0].webhook else
                                                          " (needs --webhook-secret; refused without one)"))
    return text


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
        # Which ranking ran, and why not the one asked for (model unavailable, still loading...).
        heading = f"{result.mode} search" + (f": {result.note}" if result.note else "")
        return heading + "\n\n" + _grid(["score", "id", "kind", "project", "content", "why"], rows)
    if command == "list":
        text = _table(result.memories) if result.memories else "no memories"
        return text + (f"\n\nmore: --cursor {result.next_cursor}" if result.next_cursor else "")
    if isinstance(result, Memory):
        return "\n".join(f"{k:>11}: {v}" for k, v in result.model_dump(mode="json").items())
    if command == "delete":
        return f"{result.id}: {result.message}"
    data = result.model_dump(mode="json")
    return "\n".join(f"{k:>15}: {v}" for k, v in data.items())


def _human_admin(command: str, args: argparse.Namespace, result: Any) -> str:
    if command == "user create":
        return f"created user {result.name} (id {result.id}) with personal workspace ~{result.name}"
    if command == "user list":
        return _grid(["user", "id", "created"], [[u.name, u.id, _when(u.created_at)] for u in result])
    if command == "workspace create":
        return f"created workspace {result.workspace} (id {result.workspace_id}), owned by {args.owner}"
    if command == "workspace list" and args.user:
        return _grid(["workspace", "role", "members", "memories"],
                     [[w.workspace, w.role, str(w.members), str(w.memories)] for w in result])
    if command == "workspace list":
        return _grid(["workspace", "id", "personal of", "members"],
                     [[w.name, w.id, w.personal_of or "", str(w.members)] for w in result])
    if command in ("workspace add-member", "workspace set-role"):
        return f"{result.user} is now {result.role} of {args.workspace}"
    if command == "workspace remove-member":
        return f"removed {args.user} from {args.workspace}"
    if command == "token create":
        expiry = f"expires {_when(result.expires_at)}" if result.expires_at else "never expires"
        return (f"token {result.id} ({result.name!r}) for {result.user}, {expiry}:\n\n    {result.token}\n\n"
                "Store it now: it is shown only this once and cannot be recovered (only its hash is kept).\n"
                "Clients send it as the header  Authorization: Bearer <token>")
    if command == "token list":
        return _grid(["id", "user", "name", "created", "expires", "last used", "state"],
                     [[t.id, t.user, t.name, _when(t.created_at), _when(t.expires_at), _when(t.last_used_at),
                       _token_state(t)] for t in result]) if result else "no tokens"
    from server.accounts import TOKEN_FRESH

    return (f"revoked token {args.token_id}: requests using it are refused within {TOKEN_FRESH:g} seconds "
            "(a running server re-checks a token that often)")


def _token_state(token: Any) -> str:
    from datetime import UTC, datetime

    if token.revoked_at is not None:
        return "revoked"
    return "expired" if token.expires_at is not None and token.expires_at <= datetime.now(UTC) else "live"


def _when(value: Any) -> str:
    return value.strftime("%Y-%m-%d %H:%M") if value is not None else "-"


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
    sub.add_parser("worker", parents=[common], help="run only the background workers (embeddings, Linear syncs)")
    db = sub.add_parser("db", parents=[common, out], help="database maintenance")
    db.add_argument("action", choices=["upgrade"], help="upgrade: apply pending migrations")
    _account_parsers(sub, [common, out])
    _linear_parsers(sub, [common, out])
    _transfer_parsers(sub, common, out)
    return p


def _linear_parsers(sub: Any, parents: list[argparse.ArgumentParser]) -> None:
    actions = sub.add_parser("linear", help="keep a workspace's tasks in step with a Linear team").add_subparsers(
        dest="action", metavar="ACTION", required=True)
    where = "workspace name or id (default: your local personal workspace)"
    c = actions.add_parser("connect", parents=parents, help="connect a workspace to a Linear team",
                           description=f"connect a workspace to a Linear team; {ADMIN_NOTE}.")
    c.add_argument("--workspace", help=where)
    c.add_argument("--team", required=True, help="the Linear team's key (e.g. ENG) or id")
    c.add_argument("--api-key-env", metavar="VAR", help="name of the environment variable holding the Linear "
                   "API key or OAuth token [default env LINEAR_API_KEY]")
    c.add_argument("--api-key", help="the key itself (visible in your shell history: prefer --api-key-env)")
    c.add_argument("--webhook-secret", help="the Linear webhook's signing secret (enables /webhooks/linear)")
    c.add_argument("--webhook-secret-env", metavar="VAR", help="name of a variable holding the signing secret")
    c.add_argument("--policy", choices=["newest", "linear", "local"], default="newest",
                   help="who wins when both sides changed a field: newest (default), linear or local")
    actions.add_parser("disconnect", parents=parents, help="forget a workspace's Linear connection (its tasks "
                       "stay, as local tasks)", description=f"disconnect a workspace from Linear; {ADMIN_NOTE}."
                       ).add_argument("--workspace", help=where)
    actions.add_parser("sync", parents=parents, help="sync now (every connected workspace, or --workspace)"
                       ).add_argument("--workspace", help=where)
    actions.add_parser("status", parents=parents, help="connections, last sync and task counts (never keys)"
                       ).add_argument("--workspace", help=where)


def _account_parsers(sub: Any, parents: list[argparse.ArgumentParser]) -> None:
    """user, workspace and token: administration run by whoever operates the database."""
    roles = ["owner", "admin", "member", "reader"]

    def group(name: str, text: str) -> Any:
        g = sub.add_parser(name, help=f"{text} (as the database operator)", description=f"{text}; {ADMIN_NOTE}.")
        return g.add_subparsers(dest="action", metavar="ACTION", required=True)

    def leaf(actions: Any, name: str, text: str) -> argparse.ArgumentParser:
        parser: argparse.ArgumentParser = actions.add_parser(name, parents=parents, help=text,
                                                             description=f"{text}; {ADMIN_NOTE}.")
        return parser

    users = group("user", "manage users")
    leaf(users, "create", "create a user and their personal workspace ~NAME").add_argument(
        "name", help="1-64 letters, digits, '.', '_' or '-'")
    leaf(users, "list", "list users")

    spaces = group("workspace", "manage team workspaces and their members")
    c = leaf(spaces, "create", "create a team workspace")
    c.add_argument("name", help="1-64 letters, digits, '.', '_' or '-'")
    c.add_argument("--owner", required=True, help="the user who owns it")
    leaf(spaces, "list", "list every workspace with its member count, or one user's").add_argument(
        "--user", help="only this user's workspaces, with their role and the memories they can see")
    a = leaf(spaces, "add-member", "add a user to a team workspace")
    a.add_argument("workspace", help="workspace name or id")
    a.add_argument("user", help="user name or id")
    a.add_argument("--role", default="member", choices=roles, help="default member")
    r = leaf(spaces, "remove-member", "remove a user from a team workspace")
    r.add_argument("workspace", help="workspace name or id")
    r.add_argument("user", help="user name or id")
    s = leaf(spaces, "set-role", "change a member's role (adds them if they are not a member)")
    s.add_argument("workspace", help="workspace name or id")
    s.add_argument("user", help="user name or id")
    s.add_argument("role", choices=roles, help="owner, admin, member or reader")

    tokens = group("token", "manage API tokens for hosted mode")
    t = leaf(tokens, "create", "create an API token for a user; it is printed once and never again")
    t.add_argument("user", help="user name or id")
    t.add_argument("--name", default="default", help="a label, e.g. the machine or agent using it")
    t.add_argument("--expires-days", type=float, metavar="N",
                   help="expire after this many days (default: never)")
    leaf(tokens, "list", "list tokens (never their secrets)").add_argument("--user", help="only this user's")
    leaf(tokens, "revoke", "revoke a token now").add_argument("token_id", help="the id shown by token list")


# ---- moving data: migrate, export, import, backup, restore (server/transfer.py, server/backup.py) ---------

TRANSFER_COMMANDS = ("migrate", "export", "import", "backup", "restore")


async def _transfer(settings: Settings, args: argparse.Namespace) -> int:
    from server.transfer import command

    report = await command(settings, args, _progress, sys.stdout)
    if sys.stderr.isatty():
        print(file=sys.stderr)  # ends the progress bar's line
    to_stdout = not (args.command == "export" and args.out in (None, "-"))  # stdout then holds the export
    text = json.dumps(report.as_json(), indent=2, ensure_ascii=False) if args.json else report.text()
    print(text, file=sys.stdout if to_stdout else sys.stderr)
    return report.exit_code


def _batch_size(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if not 1 <= value <= MAX_TRANSFER_BATCH:
        raise argparse.ArgumentTypeError(
            f"{value} is out of range: give 1 to {MAX_TRANSFER_BATCH:,} (default {TRANSFER_BATCH:,})")
    return value


def _transfer_parsers(sub: Any, common: argparse.ArgumentParser, as_json: argparse.ArgumentParser) -> None:
    logs = argparse.ArgumentParser(add_help=False)
    logs.add_argument("--log-level", help="DEBUG, INFO, WARNING or ERROR [env STACKMEMORY_LOG_LEVEL]")
    batch = argparse.ArgumentParser(add_help=False)
    batch.add_argument("--batch", type=_batch_size, default=TRANSFER_BATCH,
                       help=f"records per transaction, 1-{MAX_TRANSFER_BATCH:,} (default {TRANSFER_BATCH:,})")
    mapping = argparse.ArgumentParser(add_help=False)
    mapping.add_argument("--user", help="the target user who becomes the owner of the local user's memories "
                         "(create them first with `stackmemory user create`); their personal workspace receives them")
    mapping.add_argument("--into", metavar="WORKSPACE", help="the target workspace the moved memories go into "
                         "(default: --user's personal workspace, else where they were)")
    mapping.add_argument("--dry-run", action="store_true", help="report what would be written; write nothing")
    mapping.add_argument("--reembed", action="store_true", help="when the target embeds with another model, "
                         "move everything but the vectors; the target's worker re-embeds the memories")
    m = sub.add_parser("migrate", parents=[logs, as_json, mapping, batch], help="copy one database into another "
                       f"(local SQLite into hosted PostgreSQL...), then verify; {ADMIN_NOTE}")
    m.set_defaults(db=None)
    m.add_argument("--from", dest="from_db", required=True, metavar="DB", help="source: SQLite file or postgresql:// URL")
    m.add_argument("--to", dest="to_db", required=True, metavar="DB", help="target: SQLite file or postgresql:// URL")
    m.add_argument("--workspace", help="move only this source workspace (name or id)")
    e = sub.add_parser("export", parents=[common, as_json, batch], help="write the database, or one workspace, "
                       "to a JSON Lines file (see README: Moving data)")
    e.add_argument("--workspace", help="only this workspace (name or id)")
    e.add_argument("--out", metavar="FILE", help="where to write (default: standard output)")
    i = sub.add_parser("import", parents=[common, as_json, mapping, batch], help="import an export file, or the MCP "
                       "memory server's memory.jsonl, then verify")
    i.add_argument("file", help="the file ('-' reads standard input)")
    i.add_argument("--on-conflict", choices=["skip", "overwrite", "newest"], default="skip", help="when a record "
                   "is already there and differs: keep the target's (skip, default), take the file's (overwrite), "
                   "or keep whichever changed last (newest)")
    i.add_argument("--project", help="project for memories made from memory.jsonl [env STACKMEMORY_PROJECT]")
    b = sub.add_parser("backup", parents=[common, as_json], help="a consistent copy of the database: SQLite's "
                       "backup API, or pg_dump (else the logical export) for PostgreSQL")
    b.add_argument("out", metavar="OUT", help="the backup file to write")
    b.add_argument("--method", choices=["auto", "pg_dump", "logical"], default="auto",
                   help="PostgreSQL: pg_dump if a new enough one is installed, else logical (default auto)")
    b.add_argument("--force", action="store_true", help="replace OUT if it exists")
    r = sub.add_parser("restore", parents=[common, as_json], help="restore a backup into the database, then verify")
    r.add_argument("file", metavar="IN", help="a backup made by `stackmemory backup` (or an export)")
    r.add_argument("--force", action="store_true", help="restore even though the database is not empty")
