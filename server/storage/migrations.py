"""SQL files on disk: numbered forward-only migrations with checksums, and named queries."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from functools import cache
from importlib import resources

from server.errors import MigrationError

_MIGRATION_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
_QUERY_HEADER = re.compile(r"^-- name: (\w+)\s*$", re.MULTILINE)


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


@cache
def migrations(dialect: str) -> tuple[Migration, ...]:
    """All migrations of a dialect ('sqlite' or 'postgres'), in order; numbers must be 1..N with no gaps."""
    folder = resources.files("server.storage") / "sql" / dialect / "migrations"
    found = []
    for entry in folder.iterdir():
        match = _MIGRATION_NAME.match(entry.name)
        if match:
            found.append(Migration(int(match[1]), match[2], entry.read_text(encoding="utf-8")))
    found.sort(key=lambda m: m.version)
    if [m.version for m in found] != list(range(1, len(found) + 1)):
        raise MigrationError(f"{dialect} migrations are not numbered 1..N without gaps: {[m.version for m in found]}")
    return tuple(found)


def pending(dialect: str, applied: dict[int, str]) -> list[Migration]:
    """Migrations still to apply, after checking the applied ones match the files byte for byte."""
    known = {m.version: m for m in migrations(dialect)}
    newest = max(known, default=0)
    for version, checksum in sorted(applied.items()):
        if version > newest:
            raise MigrationError(
                f"the database is at schema version {max(applied)}, newer than this StackMemory knows "
                f"({newest}); upgrade StackMemory (pip install -U stackmemory) or point it at another database"
            )
        if known[version].checksum != checksum:
            raise MigrationError(
                f"migration {version:04d}_{known[version].name} was changed after it was applied "
                "(checksum differs); migrations are forward-only: add a new numbered migration instead"
            )
    return [m for v, m in sorted(known.items()) if v not in applied]


def latest_version(dialect: str) -> int:
    return len(migrations(dialect))


def queries(dialect: str) -> dict[str, str]:
    """Named queries from sql/<dialect>/queries.sql, keyed by their '-- name:' header."""
    return named_queries(dialect, "queries.sql")


@cache
def named_queries(dialect: str, filename: str) -> dict[str, str]:
    """Named queries from sql/<dialect>/<filename>, keyed by their '-- name:' header."""
    text = (resources.files("server.storage") / "sql" / dialect / filename).read_text(encoding="utf-8")
    parts = _QUERY_HEADER.split(text)
    return {name: body.strip() for name, body in zip(parts[1::2], parts[2::2], strict=True)}
