"""`stackmemory import`: a StackMemory export file, or the MCP reference memory server's memory.jsonl
knowledge graph (entities and relations become memories), in transactional batches."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import IO, Any

from server.config import Settings
from server.errors import InvalidInput
from server.storage.kinds import MEMORY, Kind, Row
from server.storage.transfer import open_transfer
from server.transfer import (
    Options,
    Progress,
    _finish,
    _no_progress,
    require_schema,
    target_mapping,
    vector_plan,
)
from server.transfer_engine import Mover, Pipeline, Plan
from server.transfer_format import (
    BadLine,
    check_end,
    is_mcp_graph,
    lines,
    mcp_memory,
    read_header,
    record,
    tail_is_end,
)
from server.transfer_report import Report


async def import_file(settings: Settings, file: str | Path, opts: Options, progress: Progress = _no_progress, *,
                      strict: bool = False, operation: str = "import") -> Report:
    """Import into the database in `settings`. strict (restore): a record the target keeps different is
    a mismatch, as in a migration."""
    where = "standard input" if str(file) == "-" else str(file)
    with _opened(file) as stream:
        number, obj = _first(stream, where)
        graph = is_mcp_graph(obj)
        header = None if graph else read_header(obj, where)
        if header is not None:
            tail_is_end(stream, where)
        report = Report(operation, where, f"{settings.redacted_db} ({settings.backend})", {}, dry_run=opts.dry_run)
        async with open_transfer(settings, write=not opts.dry_run) as (reader, writer):
            has_schema = bool(await require_schema(reader, settings, "target", may_be_empty=opts.dry_run))
            source_ws = header.extra.get("workspace_id") if header is not None else None
            mapper, owner = await target_mapping(reader, has_schema, opts, source_ws, settings.redacted_db)
            if header is None:
                owner = owner if opts.user else replace(owner, user_name=settings.user)
                plan = Plan("skip", False, opts.dry_run, False)
                mover = Mover(reader, writer, plan, mapper, None, has_schema)
                await _graph(mover, stream, where, number, obj, owner, opts, progress, report)
                await _finish(writer, None, opts, mover, report)
                return report
            vectors, adopt = await vector_plan(reader, has_schema, header.embedding_model, header.embedding_dim,
                                               opts, settings.redacted_db, report.notes)
            plan = Plan(opts.policy, strict, opts.dry_run, vectors)
            mover = Mover(reader, writer, plan, mapper, header.embedding_model, has_schema)
            await _records(mover, stream, where, number, header, opts, progress, report)
            await _finish(writer, adopt, opts, mover, report)
    return report


@contextmanager
def _opened(file: str | Path) -> Iterator[IO[bytes]]:
    if str(file) == "-":
        yield sys.stdin.buffer
        return
    path = Path(file)
    if not path.is_file():
        raise InvalidInput(f"cannot read {file}: there is no such file")
    with path.open("rb") as stream:
        yield stream


def _first(stream: IO[bytes], where: str) -> tuple[int, dict[str, Any]]:
    for number, raw in enumerate(iter(stream.readline, b""), start=1):
        if raw.strip():
            try:
                obj = json.loads(raw)
            except (ValueError, UnicodeDecodeError) as exc:
                raise BadLine(f"line {number} of {where} is not valid JSON: {exc}; is this an export file?") from exc
            if not isinstance(obj, dict):
                raise BadLine(f"line {number} of {where} is not a JSON object; is this an export file?")
            return number, obj
    raise InvalidInput(f"{where} is empty: nothing to import")


def _size(stream: IO[bytes]) -> int:
    try:
        return os.fstat(stream.fileno()).st_size
    except (OSError, AttributeError, ValueError):
        return 0


async def _records(mover: Mover, stream: IO[bytes], where: str, start: int, header: Any, opts: Options,
                   progress: Progress, report: Report) -> None:
    size = _size(stream)
    batch: dict[Kind, list[Row]] = {}
    held, first, number, ended, imported = 0, start + 1, start, False, False
    seen: dict[str, int] = {}
    ignored: dict[str, int] = {}
    pipe = Pipeline(mover)
    try:
        for number, done, obj in lines(stream, where, start):
            if ended:
                raise BadLine(f"line {number} of {where} comes after the end record")
            if obj.get("type") == "end":
                check_end(obj, seen, where, number)
                ended = True
                continue
            parsed = record(obj, number, where, header)
            if parsed is None:
                ignored[str(obj.get("type"))] = ignored.get(str(obj.get("type")), 0) + 1
                continue
            kind, row = parsed
            seen[kind.name] = seen.get(kind.name, 0) + 1
            batch.setdefault(kind, []).append(row)
            held += 1
            if held >= opts.batch:
                await pipe.put(batch, f"lines {first}-{number} of {where}")
                batch, held, first, imported = {}, 0, number + 1, not opts.dry_run
                progress(done, size)
        if not ended:
            raise BadLine(f"{where} ends at line {number} without its closing end record: the export was cut "
                          "short (truncated)")
    except BadLine as exc:
        await pipe.drain()  # the batch before the bad line is written, as the message says
        done_before = f"; lines up to {first - 1} were, and importing again skips them" if imported else ""
        raise BadLine(f"{exc}. Nothing from line {first} on was imported{done_before}") from None
    if batch:
        await pipe.put(batch, f"lines {first}-{number} of {where}")
    await pipe.drain()
    if ignored:
        report.notes.append("skipped records of types this StackMemory does not know (from a newer version): "
                            + ", ".join(f"{n} {t}" for t, n in sorted(ignored.items())))
    progress(size, size)


async def _graph(mover: Mover, stream: IO[bytes], where: str, start: int, first: dict[str, Any], owner: Any,
                 opts: Options, progress: Progress, report: Report) -> None:
    """The MCP memory server's memory.jsonl: each entity and relation becomes a fact in the owner's workspace."""
    size = _size(stream)
    batch: list[Row] = [mcp_memory(first, start, where, owner)]
    counts = {"entity": 0, "relation": 0}
    counts[str(first["type"])] += 1
    number, pipe = start, Pipeline(mover)
    try:
        for number, done, obj in lines(stream, where, start):
            if obj.get("type") not in counts:
                raise BadLine(f"line {number} of {where} is neither an entity nor a relation")
            counts[str(obj["type"])] += 1
            batch.append(mcp_memory(obj, number, where, owner))
            if len(batch) >= opts.batch:
                await pipe.put({MEMORY: batch}, f"records up to line {number} of {where}")
                batch = []
                progress(done, size)
    except BadLine as exc:
        await pipe.drain()
        raise BadLine(f"{exc}; nothing from its batch of {opts.batch} records was imported (importing "
                      "again after fixing it skips what was)") from None
    if batch:
        await pipe.put({MEMORY: batch}, f"records up to line {number} of {where}")
    await pipe.drain()
    report.notes.append(f"converted {counts['entity']} entities and {counts['relation']} relations of the MCP memory "
                        f"server's knowledge graph into memories of {owner.user_name} in project {owner.project!r}; "
                        "importing the same file again adds nothing (identical content is merged)")

