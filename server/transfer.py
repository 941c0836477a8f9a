"""Moving data: `migrate` between databases, `export` to and `import` from JSON Lines files, with a
verification report (counts and checksums per kind, source against target) at the end of each."""

from __future__ import annotations

import errno
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, TYPE_CHECKING

from server.accounts import LOCAL_USER_ID, LOCAL_WORKSPACE_ID
from server.config import TRANSFER_BATCH, Settings
from server.errors import InvalidInput, MigrationError, NotFound, StorageUnavailable
from server.storage import migrations
from server.storage.kinds import (
    ACCOUNTS,
    CHILDREN,
    KINDS,
    MEMBERSHIP,
    MEMORY,
    PAGED,
    USER,
    VECTOR,
    WORKSPACE,
    Kind,
    Row,
)
from server.storage.transfer import open_transfer
from server.transfer_engine import Mapper, Mover, Pipeline, Plan, Policy
from server.transfer_format import SUM_BITS, Owner, encode, footer, header
from server.transfer_report import Report, Tally

if TYPE_CHECKING:
    import argparse

    from server.storage.kinds import TransferReader, TransferWriter

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class Options:
    policy: Policy = "skip"
    dry_run: bool = False
    workspace: str | None = None  # the source workspace to move (name or id); None: all
    user: str | None = None  # the target user the source's local user becomes
    into: str | None = None  # the target workspace the moved workspace (or ~local) becomes
    reembed: bool = False
    project: str | None = None  # for converted MCP memory records
    batch: int = TRANSFER_BATCH


# ---- checks shared by every operation ----------------------------------------------------------------


async def require_schema(reader: TransferReader, settings: Settings, role: str, *, may_be_empty: bool = False) -> int:
    """The database's schema version, which must be this StackMemory's (or none, where allowed)."""
    version = await reader.schema_version()
    latest = migrations.latest_version(settings.backend)
    where = settings.redacted_db
    if version == 0 and may_be_empty:
        return 0
    if version == 0:
        hint = f"create it with `stackmemory db upgrade --db {where}`" if role == "target" else "check the path or URL"
        raise InvalidInput(f"there is no StackMemory database at {where} (the {role}): {hint}")
    if version < latest:
        raise MigrationError(
            f"the {role} database {where} is at schema version {version}, but this StackMemory moves version "
            f"{latest}: upgrade it first with `stackmemory db upgrade --db {where}` (to keep the original, "
            f"`stackmemory backup FILE --db {where}` first)")
    if version > latest:
        raise MigrationError(f"the {role} database {where} is at schema version {version}, newer than this "
                             f"StackMemory knows ({latest}): upgrade StackMemory (pip install -U stackmemory)")
    return version


def _find(rows: list[Row], name_or_id: str) -> Row | None:
    return next((r for r in rows if r["id"] == name_or_id), None) or next(
        (r for r in rows if r["name"] == name_or_id), None)


async def source_workspace(reader: TransferReader, name: str | None, where: str) -> tuple[str, str] | None:
    """(id, name) of the one workspace to move, or None for all of them."""
    if name is None:
        return None
    found = _find(await reader.accounts(WORKSPACE), name)
    if found is None:
        raise NotFound(f"no workspace {name!r} in {where}")
    return str(found["id"]), str(found["name"])


async def target_mapping(reader: TransferReader, has_schema: bool, opts: Options, source_ws: str | None,
                         where: str) -> tuple[Mapper, Owner]:
    """Accounts matching, with --user (the source's local user becomes this target user) and --into (the
    moved workspace becomes this target workspace) applied."""
    users = await reader.accounts(USER) if has_schema else []
    spaces = await reader.accounts(WORKSPACE) if has_schema else []
    user_map: dict[str, str] = {}
    workspace_map: dict[str, str] = {}
    owner_id, owner_name, home = LOCAL_USER_ID, "local", LOCAL_WORKSPACE_ID
    if opts.user:
        user = _find(users, opts.user)
        if user is None:
            raise NotFound(f"no user {opts.user!r} in {where}: create it there first with "
                           f"`stackmemory user create {opts.user} --db {where}`")
        owner_id, owner_name = user["id"], user["name"]
        user_map[LOCAL_USER_ID] = owner_id
        home = next(w["id"] for w in spaces if w["personal_of"] == owner_id)
        workspace_map[LOCAL_WORKSPACE_ID] = home
    if opts.into:
        space = _find(spaces, opts.into)
        if space is None:
            raise NotFound(f"no workspace {opts.into!r} in {where}: create it there first with "
                           f"`stackmemory workspace create {opts.into} --owner USER --db {where}`")
        members = await reader.accounts(MEMBERSHIP)
        if not any(m["workspace_id"] == space["id"] and m["user_id"] == owner_id for m in members):
            raise InvalidInput(f"{owner_name} is not a member of {space['name']} in {where}, so they could not see "
                               f"memories moved there: `stackmemory workspace add-member {space['name']} "
                               f"{owner_name} --db {where}` first")
        home = space["id"]
        workspace_map.pop(LOCAL_WORKSPACE_ID, None)
        workspace_map[source_ws or LOCAL_WORKSPACE_ID] = home
    owner = Owner(owner_id, owner_name, home, opts.project or "default", datetime.now(UTC))
    return Mapper(users, spaces, user_map, workspace_map), owner


async def vector_plan(reader: TransferReader, has_schema: bool, model: str | None, dim: int | None,
                      opts: Options, where: str, notes: list[str]) -> tuple[bool, tuple[str, int] | None]:
    """Whether vectors travel, and the model the target should adopt (when it has none yet)."""
    if model is None:
        return False, None
    target = await reader.meta("embedding_model") if has_schema else None
    target_dim = await reader.meta("embedding_dim") if has_schema else None
    if target is None:
        if dim is None:
            return False, None
        notes.append(f"the target had no embedding model; it now records {model} ({dim} dimensions), "
                     "the model of the vectors moved")
        return True, (model, dim)
    if target == model and (dim is None or target_dim in (None, str(dim))):
        return True, None
    if not opts.reembed:
        raise InvalidInput(
            f"the target {where} embeds with {target} (its recorded embedding_model), but the vectors being "
            f"moved are from {model}: they cannot be searched together. Run again with --reembed to move "
            f"everything but the vectors (the target's worker then embeds the memories with {target}), or "
            f"move into a database that records {model}")
    notes.append(f"vectors not moved: the target embeds with {target}, the source with {model}; the "
                 "target's worker re-embeds the moved memories (they are queued)")
    return False, None


async def db_batches(snap: TransferReader, workspace: str | None, size: int, model: str | None
                     ) -> AsyncIterator[tuple[str, dict[Kind, list[Row]]]]:
    """Accounts first, then memories in id order, each batch with its memories' history and vectors (of
    `model`; none when None), then tasks."""
    accounts = {k: await snap.accounts(k) for k in ACCOUNTS}
    if workspace is not None:
        accounts = _scoped(accounts, workspace, await snap.workspace_users(workspace))
    yield "users, workspaces and memberships", accounts
    for kind in PAGED:
        after = ""
        while rows := await snap.page(kind, after, size, workspace):
            ids = [r["id"] for r in rows]
            batch: dict[Kind, list[Row]] = {kind: rows}
            for child in CHILDREN if kind is MEMORY else ():
                if child is not VECTOR or model is not None:
                    batch[child] = await snap.children(child, ids, model)
            yield f"{kind.table} {ids[0]} to {ids[-1]}", batch
            after = ids[-1]


async def total(snap: TransferReader, workspace: str | None) -> int:
    """Rows of the paged kinds: what progress counts."""
    return sum([await snap.count(k, workspace) for k in PAGED])


def paged(batch: dict[Kind, list[Row]]) -> int:
    return sum(len(batch.get(k, [])) for k in PAGED)


def _scoped(accounts: dict[Kind, list[Row]], workspace: str, users: set[str]) -> dict[Kind, list[Row]]:
    """What one workspace needs: its users, it, their personal workspaces, and the memberships among them."""
    spaces = {workspace} | {w["id"] for w in accounts[WORKSPACE] if w["personal_of"] in users}
    return {USER: [u for u in accounts[USER] if u["id"] in users],
            WORKSPACE: [w for w in accounts[WORKSPACE] if w["id"] in spaces],
            MEMBERSHIP: [m for m in accounts[MEMBERSHIP] if m["workspace_id"] in spaces and m["user_id"] in users]}


def _no_progress(done: int, total: int) -> None:
    return None


# ---- migrate ---------------------------------------------------------------------------------------------


async def migrate(source: Settings, target: Settings, opts: Options, progress: Progress = _no_progress) -> Report:
    """Copy one database into another, batch by batch, then report source against target."""
    if (source.backend, source.db) == (target.backend, target.db):
        raise InvalidInput("--from and --to name the same database")
    report = Report("migrate", f"{source.redacted_db} ({source.backend})",
                    f"{target.redacted_db} ({target.backend})", {}, dry_run=opts.dry_run)
    async with open_transfer(source, write=False) as (src, _), \
            open_transfer(target, write=not opts.dry_run) as (dst, writer):
        await require_schema(src, source, "source")
        has_schema = bool(await require_schema(dst, target, "target", may_be_empty=opts.dry_run))
        scope = await source_workspace(src, opts.workspace, source.redacted_db)
        workspace = scope[0] if scope else None
        model, dim = await embedding_of(src)
        vectors, adopt = await vector_plan(dst, has_schema, model, dim, opts, target.redacted_db, report.notes)
        mapper, _ = await target_mapping(dst, has_schema, opts, workspace, target.redacted_db)
        mover = Mover(dst, writer, Plan(opts.policy, True, opts.dry_run, vectors), mapper, model, has_schema)
        async with src.snapshot() as snap:
            rows, done, pipe = await total(snap, workspace), 0, Pipeline(mover)
            async for label, batch in db_batches(snap, workspace, opts.batch, model if vectors else None):
                await pipe.put(batch, label)
                done += paged(batch)
                progress(done, rows)
            await pipe.drain()
        await _finish(writer, adopt, opts, mover, report)
    return report


async def survey(snap: TransferReader, model: str | None, batch: int = TRANSFER_BATCH) -> dict[str, Tally]:
    """Counts and checksums of everything in a database, read inside one of its snapshots."""
    from server.transfer_format import digest

    tallies = {k.name: Tally() for k in KINDS}
    async for _, rows in db_batches(snap, None, batch, model):
        for kind, found in rows.items():
            tallies[kind.name].source += len(found)
            tallies[kind.name].source_sum += sum(digest(kind, r) for r in found)
    return tallies


def compared(source: dict[str, Tally], target: dict[str, Tally], sums: bool = True) -> dict[str, Tally]:
    """Two surveys side by side: a kind whose count (or checksum) differs is a mismatch."""
    out = {}
    for name, theirs in source.items():
        ours = target.get(name, Tally())
        t = Tally(source=theirs.source, target=ours.source, source_sum=theirs.source_sum,
                  target_sum=ours.source_sum if sums else theirs.source_sum, added=min(theirs.source, ours.source))
        if t.source != t.target or (t.source_sum - t.target_sum) % (1 << SUM_BITS):
            t.problem((name,), f"records: {t.source} in the backup, {t.target} restored"
                      + ("" if t.source != t.target else " (the same count, different content)"))
        out[name] = t
    return out


async def embedding_of(reader: TransferReader) -> tuple[str | None, int | None]:
    """The embedding model and dimension the database records."""
    model = await reader.meta("embedding_model")
    dim = await reader.meta("embedding_dim")
    return model, int(dim) if dim and dim.isdigit() else None


async def _finish(writer: TransferWriter | None, adopt: tuple[str, int] | None, opts: Options, mover: Mover,
                  report: Report) -> None:
    if adopt is not None and writer is not None and not opts.dry_run:
        began = time.perf_counter()
        vectors = mover.tallies[VECTOR.name].target
        if await writer.adopt_model(*adopt, vectors):
            report.notes.append(f"built the vector index (HNSW) over {vectors} vectors in "
                                f"{time.perf_counter() - began:.1f} s")
    report.tallies = mover.tallies
    if mover.skipped_vectors:
        report.notes.append(f"{mover.skipped_vectors} vectors were left behind (see above)")
    if not mover.plan.vectors:
        del report.tallies[VECTOR.name]


# ---- export ----------------------------------------------------------------------------------------------


async def export(settings: Settings, out: Path | IO[str], workspace: str | None = None,
                 progress: Progress = _no_progress, batch: int = TRANSFER_BATCH) -> Report:
    """Write the database (or one workspace) to a JSON Lines file, streaming: memory use does not grow."""
    from server import __version__
    from server.transfer_format import digest

    name = str(out) if isinstance(out, Path) else "standard output"
    report = Report("export", f"{settings.redacted_db} ({settings.backend})", name,
                    {k.name: Tally() for k in KINDS}, compared=False)
    async with open_transfer(settings, write=False) as (reader, _):
        version = await require_schema(reader, settings, "source")
        scope = await source_workspace(reader, workspace, settings.redacted_db)
        workspace_id = scope[0] if scope else None
        model, dim = await embedding_of(reader)
        with _output(out) as stream:
            stream.write(header(settings.backend, version, model, dim, scope, __version__) + "\n")
            async with reader.snapshot() as snap:
                count, done = await total(snap, workspace_id), 0
                async for _, rows in db_batches(snap, workspace_id, batch, model):
                    lines = []
                    for kind, row in _grouped(rows):
                        lines.append(encode(kind, row))
                        tally = report.tallies[kind.name]
                        tally.source += 1
                        tally.source_sum += digest(kind, row)
                    lines.append("")
                    stream.write("\n".join(lines))  # one write per batch: a write per line cost a tenth
                    done += paged(rows)
                    progress(done, count)
            stream.write(footer({k: t.source for k, t in report.tallies.items()}) + "\n")
    return report


def _grouped(batch: dict[Kind, list[Row]]) -> Iterator[tuple[Kind, Row]]:
    """Accounts as they come, then each memory followed by its history and its vector, then the rest."""
    for kind in ACCOUNTS:
        for row in batch.get(kind, []):
            yield kind, row
    children: dict[str, list[tuple[Kind, Row]]] = {}
    for kind in CHILDREN:
        for row in batch.get(kind, []):
            children.setdefault(row["memory_id"], []).append((kind, row))
    for row in batch.get(MEMORY, []):
        yield MEMORY, row
        yield from children.get(row["id"], [])
    for kind in PAGED:
        if kind is not MEMORY:
            for row in batch.get(kind, []):
                yield kind, row


@contextmanager
def _output(out: Path | IO[str]) -> Iterator[IO[str]]:
    """A file written beside its destination and renamed into place when complete, so an interrupted or
    failed export never leaves a file that looks whole; or a stream given by the caller."""
    if not isinstance(out, Path):
        yield out
        return
    regular = not out.exists() or out.is_file()
    path = out.with_name(out.name + ".partial") if regular else out
    try:
        with path.open("w", encoding="utf-8", newline="\n") as stream:
            yield stream
        if regular:
            path.replace(out)
    except OSError as exc:
        if regular:
            path.unlink(missing_ok=True)
        full = exc.errno == errno.ENOSPC
        raise StorageUnavailable(f"cannot write {out}: " + ("the disk is full; free space and run the export "
                                 "again" if full else f"{exc.strerror or exc}")) from exc
    finally:
        if regular and path != out:
            path.unlink(missing_ok=True)


# ---- the command line ------------------------------------------------------------------------------------


async def command(settings: Settings, args: argparse.Namespace, progress: Progress, stdout: IO[str]) -> Report:
    """migrate, export, import, backup and restore, from parsed arguments (stdout: for `export` without
    --out)."""
    from server import backup
    from server.project import detect_project
    from server.transfer_import import import_file

    project = getattr(args, "project", None) or settings.project
    opts = Options(policy=getattr(args, "on_conflict", "skip"), dry_run=getattr(args, "dry_run", False),
                   workspace=getattr(args, "workspace", None), user=getattr(args, "user", None),
                   into=getattr(args, "into", None), reembed=getattr(args, "reembed", False),
                   project=project or detect_project(Path.cwd()), batch=getattr(args, "batch", TRANSFER_BATCH))
    if args.command == "migrate":
        other = replace(Settings.load(env=settings.env, db=args.to_db), log_level=settings.log_level)
        return await migrate(Settings.load(env=settings.env, db=args.from_db), other, opts, progress)
    if args.command == "export":
        return await export(settings, Path(args.out) if args.out not in (None, "-") else stdout,
                            opts.workspace, progress, opts.batch)
    if args.command == "import":
        return await import_file(settings, args.file, opts, progress)
    if args.command == "backup":
        return await backup.backup(settings, Path(args.out), args.method, args.force, progress)
    return await backup.restore(settings, Path(args.file), args.force, progress)

