"""What moving data carries: each kind of record, its table, its key and its typed columns.

Transfer (export, import, migrate, backup) is driven by this table. To carry another table, add a Kind
here and, in both sql/<dialect>/transfer.sql files, the queries named after it: read_<name>, insert_<name>
and replace_<name> (merge_<name> for an account kind), plus <name>_by_id and count_<name> for a kind read
page by page; the engine, the file format and the verification report pick it up from there.

Not carried, on purpose: API tokens and Linear connections (their secrets stay where they are; create
new ones on the new server), the job queue and caches (derived; the target queues what it needs), and
the change feed (change_log: each database's own, with cursors its clients hold; the target records the
moved memories and tasks in its feed as they arrive). Backups that copy the database whole keep all of
them."""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

ColumnType = Literal["text", "int", "bool", "json", "ts", "vector"]
Row = dict[str, Any]
Ref = Literal["user", "workspace"]


@dataclass(frozen=True)
class Column:
    name: str
    type: ColumnType = "text"
    nullable: bool = False
    ref: Ref | None = None  # holds a user or workspace id, which moving may map to the target's


@dataclass(frozen=True)
class Kind:
    name: str  # the record's "type" in an export file
    table: str
    key: tuple[str, ...]
    columns: tuple[Column, ...]
    account: bool = False  # users, workspaces, memberships: matched by id or name, never overwritten
    parent: bool = False  # belongs to a memory (memory_id): read, written and verified with it
    unverified: tuple[str, ...] = field(default=())  # left out of checksums (account creation times)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns)

    def key_of(self, row: Mapping[str, Any]) -> tuple[Any, ...]:
        return tuple(row[k] for k in self.key)


def _c(name: str, type: ColumnType = "text", nullable: bool = False, ref: Ref | None = None) -> Column:
    return Column(name, type, nullable, ref)


USER = Kind("user", "users", ("id",), (_c("id", ref="user"), _c("name"), _c("created_at", "ts"),
                                        _c("disabled_at", "ts", True)), account=True, unverified=("created_at",))
WORKSPACE = Kind("workspace", "workspaces", ("id",),
                 (_c("id", ref="workspace"), _c("name"), _c("personal_of", nullable=True, ref="user"),
                  _c("created_at", "ts")), account=True, unverified=("created_at",))
MEMBERSHIP = Kind("membership", "memberships", ("workspace_id", "user_id"),
                  (_c("workspace_id", ref="workspace"), _c("user_id", ref="user"), _c("role"),
                   _c("created_at", "ts")), account=True, unverified=("created_at",))
MEMORY = Kind("memory", "memories", ("id",), (
    _c("id"), _c("content"), _c("content_hash"), _c("kind"), _c("tags", "json"), _c("project"),
    _c("importance", "int"), _c("metadata", "json"), _c("author"), _c("created_at", "ts"),
    _c("updated_at", "ts"), _c("expires_at", "ts", True), _c("version", "int"), _c("deleted_at", "ts", True),
    _c("workspace_id", ref="workspace"), _c("visibility"), _c("created_by", ref="user"),
    _c("updated_by", ref="user"), _c("dedup_owner", ref="user")))
HISTORY = Kind("memory_history", "memory_history", ("memory_id", "version"), (
    _c("memory_id"), _c("version", "int"), _c("content"), _c("kind"), _c("tags", "json"), _c("project"),
    _c("importance", "int"), _c("metadata", "json"), _c("visibility"), _c("changed_by", ref="user"),
    _c("changed_at", "ts")), parent=True)
VECTOR = Kind("vector", "memory_vectors", ("memory_id",),
              (_c("memory_id"), _c("model"), _c("vector", "vector")), parent=True)
TASK = Kind("task", "tasks", ("id",), (
    _c("id"), _c("workspace_id", ref="workspace"), _c("title"), _c("description"), _c("status"), _c("priority"),
    _c("assignee", nullable=True), _c("labels", "json"), _c("memory_ids", "json"), _c("created_by", ref="user"),
    _c("updated_by", ref="user"), _c("created_at", "ts"), _c("updated_at", "ts"), _c("version", "int"),
    _c("linear_id", nullable=True), _c("linear_identifier", nullable=True), _c("linear_url", nullable=True),
    _c("linear_updated_at", "ts", True), _c("linear_pending_id", nullable=True), _c("synced", "json", True),
    _c("dirty", "bool"), _c("conflict", "json", True), _c("sync_error", nullable=True)))

# In dependency order: accounts, then memories and what belongs to each, then tasks.
KINDS: tuple[Kind, ...] = (USER, WORKSPACE, MEMBERSHIP, MEMORY, HISTORY, VECTOR, TASK)
ACCOUNTS: tuple[Kind, ...] = tuple(k for k in KINDS if k.account)
CHILDREN: tuple[Kind, ...] = tuple(k for k in KINDS if k.parent)
PAGED: tuple[Kind, ...] = tuple(k for k in KINDS if not k.account and not k.parent)  # read page by page
BY_NAME: dict[str, Kind] = {k.name: k for k in KINDS}

Action = Literal["insert", "replace", "merge"]


class TransferReader(Protocol):
    """Rows of one database in the canonical form: text as str, ints, JSON parsed, timestamps as aware UTC
    datetimes, vectors as little-endian float32 bytes. Reads without a snapshot see the latest commits."""

    async def schema_version(self) -> int:
        """0 when the database has no StackMemory schema at all."""
        ...

    async def meta(self, key: str) -> str | None: ...

    def snapshot(self) -> AbstractAsyncContextManager[TransferReader]:
        """The same reads, all from one consistent point in time (writers carry on meanwhile)."""
        ...

    async def close(self) -> None: ...

    async def accounts(self, kind: Kind) -> list[Row]:
        """Every row of an account kind, in key order."""
        ...

    async def workspace_users(self, workspace: str) -> set[str]:
        """Ids of the users one workspace's records mention (members, authors, editors)."""
        ...

    async def page(self, kind: Kind, after: str, limit: int, workspace: str | None) -> list[Row]:
        """Rows of a paged kind (memories: tombstones included) with ids after `after`, in id order."""
        ...

    async def by_id(self, kind: Kind, ids: list[str]) -> list[Row]: ...

    async def children(self, kind: Kind, memory_ids: list[str], model: str | None) -> list[Row]:
        """Rows of a memory's kind for these memories (vectors: only `model`'s), in key order."""
        ...

    async def count(self, kind: Kind, workspace: str | None) -> int: ...

    async def live_duplicate(self, row: Row) -> str | None:
        """The id of a live memory with the same workspace, dedup owner, project and content hash."""
        ...

    async def is_empty(self) -> bool:
        """No memories and no users or workspaces beyond the built-in local ones."""
        ...


class TransferWriter(Protocol):
    async def write(self, steps: list[tuple[Kind, Action, list[Row]]], carried_vectors: list[str]) -> None:
        """Apply the steps in one transaction; memories that were given vectors lose their queued embedding
        job. insert skips rows whose key (or, for memories, live content) exists; replace upserts; merge
        upserts an account keeping the earlier creation time."""
        ...

    async def adopt_model(self, model: str, dim: int, vectors: int) -> bool:
        """Record `model` as the database's embedding model and prepare its vector search over the
        `vectors` vectors just moved in; True when that built an index."""
        ...
