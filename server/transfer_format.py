"""The export file format (versioned JSON Lines), its checksums, and the MCP reference server's memory.jsonl.

A file is a header line, one record per line, and a closing `end` line with the count of each record type;
README.md ("Moving data") documents every field. Readers refuse a newer major version, and read a newer
minor version, skipping record types they do not know."""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import IO, Any

from server.accounts import ROLES, check_name
from server.errors import InvalidInput
from server.ids import check_id, new_id
from server.models import KINDS as MEMORY_KINDS
from server.storage.kinds import BY_NAME, MEMORY, Column, Kind, Row

FORMAT = "stackmemory"
VERSION = "1.0"
MAJOR = 1
SUM_BITS = 128


@dataclass(frozen=True)
class Header:
    version: str
    source_backend: str | None = None
    embedding_model: str | None = None
    embedding_dim: int | None = None
    workspace: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


# ---- values, records and checksums -------------------------------------------------------------------


# Built once: json.dumps with options builds a new encoder on every call, a measurable share of an export.
_RECORD = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))
_CANONICAL = json.JSONEncoder(ensure_ascii=False, sort_keys=True, separators=(",", ":"))


Layout = tuple[tuple[tuple[str, str], ...], tuple[str, ...], tuple[tuple[str, str], ...]]
_LAYOUTS: dict[str, Layout] = {}


def _layout(kind: Kind) -> Layout:
    """(name, type) of the columns written as JSON, the vector columns appended after them, and the
    (name, type) of the columns a checksum covers. Kept by the kind's name: hashing the Kind itself (a
    frozen dataclass of columns) on every row cost more than the work this saves."""
    layout = _LAYOUTS.get(kind.name)
    if layout is None:
        layout = _LAYOUTS[kind.name] = (
            tuple((c.name, c.type) for c in kind.columns if c.type != "vector"),
            tuple(c.name for c in kind.columns if c.type == "vector"),
            tuple((c.name, c.type) for c in kind.columns if c.name not in kind.unverified))
    return layout


def encode(kind: Kind, row: Row) -> str:
    fields, vectors, _ = _layout(kind)
    record: dict[str, Any] = {"type": kind.name}
    for name, type_ in fields:
        value = row[name]
        record[name] = value.astimezone(UTC).isoformat(timespec="microseconds") if (
            type_ == "ts" and value is not None) else value
    text = _RECORD.encode(record)
    for name in vectors:  # base64 needs no escaping: appended as it is, rather than scanned by the encoder
        value = row[name]
        text = text[:-1] + f',"{name}":' + (
            f'"{base64.b64encode(value).decode("ascii")}"}}' if value is not None else "null}")
    return text


def digest(kind: Kind, row: Row) -> int:
    """A row's fingerprint: the same on any backend for the same content. Checksums add them up, so a
    checksum does not depend on the order rows are read in."""
    values = [_fingerprint(type_, row[name]) for name, type_ in _layout(kind)[2]]
    text = _CANONICAL.encode(values)
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[: SUM_BITS // 8], "big")


def _fingerprint(type_: str, value: Any) -> Any:
    if value is None:
        return None
    if type_ == "vector":  # hashed as it is, which is much cheaper than as base64 text
        return hashlib.sha256(value).hexdigest()
    if type_ == "ts":
        return value.isoformat()
    return value


def show_sum(total: int) -> str:
    return f"{total % (1 << SUM_BITS):032x}"[:16]


def header(source_backend: str, schema_version: int, model: str | None, dim: int | None,
           workspace: tuple[str, str] | None, stackmemory: str) -> str:
    """workspace: (id, name) when the export holds one workspace only."""
    return json.dumps({"type": "header", "format": FORMAT, "version": VERSION, "source_backend": source_backend,
                       "schema_version": schema_version, "embedding_model": model, "embedding_dim": dim,
                       "workspace": workspace[1] if workspace else None,
                       "workspace_id": workspace[0] if workspace else None,
                       "exported_at": datetime.now(UTC).isoformat(timespec="seconds"), "stackmemory": stackmemory},
                      ensure_ascii=False, separators=(",", ":"))


def footer(counts: dict[str, int]) -> str:
    return json.dumps({"type": "end", "counts": counts}, separators=(",", ":"))


# ---- reading --------------------------------------------------------------------------------------------


class BadLine(InvalidInput):
    """A line of an import file is unusable; the message names the file and the line."""


def lines(stream: IO[bytes], where: str, start: int = 0) -> Iterator[tuple[int, int, dict[str, Any]]]:
    """(line number, bytes read so far, parsed object) for every non-blank line after line `start`."""
    try:
        done = stream.tell()
    except (OSError, ValueError):
        done = 0
    for number, raw in enumerate(iter(stream.readline, b""), start=start + 1):
        done += len(raw)
        if not raw.strip():
            continue
        try:
            obj = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            cut = "" if raw.endswith(b"\n") else " (it stops mid-record: the file looks truncated)"
            raise BadLine(f"line {number} of {where} is not valid JSON{cut}: {exc}") from exc
        if not isinstance(obj, dict):
            raise BadLine(f"line {number} of {where} is not a JSON object")
        yield number, done, obj


def read_header(obj: dict[str, Any], where: str) -> Header:
    if obj.get("type") != "header" or obj.get("format") != FORMAT:
        raise BadLine(f"line 1 of {where} is not a StackMemory export header (nor a record of the MCP memory "
                      "server's memory.jsonl); is this the right file?")
    version = obj.get("version")
    try:
        major, _minor = (int(p) for p in str(version).split("."))
    except ValueError:
        raise BadLine(f"line 1 of {where}: unknown format version {version!r}; this StackMemory reads "
                      f"versions 1.x") from None
    if major > MAJOR:
        raise BadLine(f"{where} is in format version {version}, from a newer StackMemory (this one reads "
                      f"{MAJOR}.x): upgrade StackMemory (pip install -U stackmemory) to import it")
    if major < 1:
        raise BadLine(f"line 1 of {where}: unknown format version {version!r}; this StackMemory reads 1.x")
    dim = obj.get("embedding_dim")
    return Header(version=str(version), source_backend=obj.get("source_backend"),
                  embedding_model=obj.get("embedding_model"), embedding_dim=dim if isinstance(dim, int) else None,
                  workspace=obj.get("workspace"), extra=obj)


def record(obj: dict[str, Any], number: int, where: str, header: Header) -> tuple[Kind, Row] | None:
    """A record in canonical form, or None for a type this version does not know (a newer minor's)."""
    kind = BY_NAME.get(str(obj.get("type")))
    if kind is None:
        return None
    at = f"line {number} of {where} ({kind.name} record)"
    row = {c.name: _value(c, obj.get(c.name), at) for c in kind.columns}
    try:
        _check(kind, row, header)
    except InvalidInput as exc:
        raise BadLine(f"{at}: {exc}") from None
    return kind, row


def _value(column: Column, value: Any, at: str) -> Any:
    if value is None:
        if column.nullable:
            return None
        raise BadLine(f"{at}: field {column.name!r} is missing")
    kind = column.type
    if kind == "text" and isinstance(value, str) or kind == "json":
        return value
    if kind == "int" and isinstance(value, int) and not isinstance(value, bool) or (
            kind == "bool" and isinstance(value, bool)):
        return value
    try:
        if kind == "ts":
            parsed = datetime.fromisoformat(value)
            return (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).astimezone(UTC)
        if kind == "vector":
            data = base64.b64decode(value, validate=True)
            if data and not len(data) % 4:
                return data
    except (TypeError, ValueError, binascii.Error):
        pass
    raise BadLine(f"{at}: field {column.name!r} should be {_TYPE_NAMES[kind]}, not {value!r:.60}")


_TYPE_NAMES = {"text": "a string", "int": "a whole number", "bool": "true or false", "json": "JSON",
               "ts": "an ISO 8601 time", "vector": "base64 of little-endian float32s"}


def _check(kind: Kind, row: Row, header: Header) -> None:
    for name in ("id", "memory_id"):
        if name in row and kind.name in ("memory", "memory_history", "vector") and check_id(row[name]) != row[name]:
            raise InvalidInput(f"{name} {row[name]!r} is not a lowercase UUID")
    if "kind" in row and row["kind"] not in MEMORY_KINDS:
        raise InvalidInput(f"kind {row['kind']!r} is not one of {', '.join(MEMORY_KINDS)}")
    if "importance" in row and not 0 <= row["importance"] <= 10:
        raise InvalidInput(f"importance {row['importance']} is not within 0-10")
    if "visibility" in row and row["visibility"] not in ("private", "team"):
        raise InvalidInput(f"visibility {row['visibility']!r} is not private or team")
    if "version" in row and row["version"] < 1:
        raise InvalidInput(f"version {row['version']} is not 1 or more")
    if "tags" in row and not (isinstance(row["tags"], list) and all(isinstance(t, str) for t in row["tags"])):
        raise InvalidInput("tags should be a list of strings")
    if "metadata" in row and not isinstance(row["metadata"], dict):
        raise InvalidInput("metadata should be a JSON object")
    if kind.name == "membership" and row["role"] not in ROLES:
        raise InvalidInput(f"role {row['role']!r} is not one of {', '.join(ROLES)}")
    if kind.name == "user":
        check_name(row["name"], "user")
    if kind.name == "vector":
        if header.embedding_model is not None and row["model"] != header.embedding_model:
            raise InvalidInput(f"the vector is of model {row['model']!r}, but the header says "
                               f"{header.embedding_model!r}")
        if header.embedding_dim is not None and len(row["vector"]) != 4 * header.embedding_dim:
            raise InvalidInput(f"the vector has {len(row['vector']) // 4} dimensions, but the header says "
                               f"{header.embedding_dim}")


# ---- the MCP reference memory server's knowledge graph ---------------------------------------------------


@dataclass(frozen=True)
class Owner:
    """Whose memories converted records become."""

    user_id: str
    user_name: str
    workspace_id: str
    project: str
    now: datetime


def is_mcp_graph(obj: dict[str, Any]) -> bool:
    return obj.get("type") in ("entity", "relation") and "format" not in obj


def mcp_memory(obj: dict[str, Any], number: int, where: str, owner: Owner) -> Row:
    """An entity ("Alice (person)" and its observations) or a relation ("Alice works_at Acme") as a memory;
    the original record is kept whole in metadata.mcp_memory."""
    from server.rules import content_hash

    at = f"line {number} of {where}"
    if obj.get("type") == "entity":
        name, etype, seen = obj.get("name"), obj.get("entityType", ""), obj.get("observations", [])
        if not isinstance(name, str) or not name.strip() or not isinstance(etype, str) or not (
                isinstance(seen, list) and all(isinstance(o, str) for o in seen)):
            raise BadLine(f"{at}: an entity needs a name, an entityType and a list of observation strings")
        content = f"{name} ({etype})" if etype else name
        content += "".join(f"\n- {o}" for o in seen)
        tags = ["mcp-memory", "entity", *([etype] if etype else [])]
    else:
        ends = [obj.get(k) for k in ("from", "relationType", "to")]
        if not all(isinstance(e, str) and e.strip() for e in ends):
            raise BadLine(f"{at}: a relation needs from, to and relationType strings")
        content = " ".join(str(e) for e in ends)
        tags = ["mcp-memory", "relation", str(ends[1])]
    row: Row = {
        "id": new_id(), "content": content, "content_hash": content_hash(content), "kind": "fact",
        "tags": list(dict.fromkeys(t[:64] for t in tags)), "project": owner.project, "importance": 5,
        "metadata": {"mcp_memory": obj}, "author": owner.user_name, "created_at": owner.now,
        "updated_at": owner.now, "expires_at": None, "version": 1, "deleted_at": None,
        "workspace_id": owner.workspace_id, "visibility": "private", "created_by": owner.user_id,
        "updated_by": owner.user_id, "dedup_owner": owner.user_id}
    assert set(row) == set(MEMORY.names)
    return row


def check_end(obj: dict[str, Any], seen: dict[str, int], where: str, number: int) -> None:
    counts = obj.get("counts")
    if not isinstance(counts, dict):
        raise BadLine(f"line {number} of {where}: the end record has no counts")
    for name, expected in counts.items():
        if name in BY_NAME and seen.get(name, 0) != expected:
            raise BadLine(f"{where} says it holds {expected} {name} records but {seen.get(name, 0)} were "
                          "read: lines are missing or were added; export it again")


def tail_is_end(stream: IO[bytes], where: str) -> None:
    """Refuse a file cut short before importing anything from it: its last line must be the end record."""
    try:
        here = stream.tell()
        size = stream.seek(0, 2)
        stream.seek(max(0, size - 65536))
        last = stream.read().rstrip(b"\n").rsplit(b"\n", 1)[-1]
        stream.seek(here)
    except (OSError, ValueError):
        return  # not seekable (a pipe): the end is checked when it is reached
    try:
        obj = json.loads(last)
    except (ValueError, UnicodeDecodeError):
        obj = None
    if not isinstance(obj, dict) or obj.get("type") != "end":
        raise BadLine(f"{where} does not end with its closing end record: the export was cut short (truncated) "
                      "or is incomplete. Nothing was imported; export it again")

