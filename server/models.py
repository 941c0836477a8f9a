"""Domain and result models shared by the service, the storage adapters and the tools."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

Kind = Literal["fact", "decision", "constraint", "interface", "todo", "risk", "preference", "note"]
KINDS: tuple[str, ...] = Kind.__args__  # type: ignore[attr-defined]
SearchMode = Literal["hybrid", "keyword", "semantic"]
Visibility = Literal["private", "team"]


class Memory(BaseModel):
    """One stored memory, as the assistant sees it."""

    model_config = ConfigDict(frozen=True)

    id: str = Field(description="Sortable UUIDv7; pass it to get_memory, update_memory, delete_memory.")
    content: str
    kind: Kind
    tags: list[str] = Field(default_factory=list)
    project: str
    importance: int = Field(ge=0, le=10)
    metadata: dict[str, Any] = Field(default_factory=dict)
    author: str
    created_at: datetime
    updated_at: datetime
    expires_at: datetime | None = None
    version: int = Field(description="Increments on every update; pass as expected_version to update safely.")
    deleted_at: datetime | None = Field(default=None, description="Set when deleted (a tombstone).")
    workspace_id: str = Field(default="", description="The workspace it belongs to.")
    visibility: Visibility = Field(default="private",
                                   description="private: only its author sees it; team: every workspace member.")
    created_by: str = Field(default="", description="User id of its author.")
    updated_by: str = Field(default="", description="User id of whoever changed it last.")


class NewMemory(BaseModel):
    """A validated memory about to be written (the service fills every field)."""

    id: str
    content: str
    content_hash: str
    kind: Kind
    tags: list[str]
    project: str
    importance: int
    metadata: dict[str, Any]
    author: str
    created_at: datetime
    expires_at: datetime | None
    workspace_id: str
    visibility: Visibility
    created_by: str
    updated_by: str

    @property
    def dedup_owner(self) -> str:
        """Duplicates merge within what one reader sees together: the team's, or the author's own."""
        return "" if self.visibility == "team" else self.created_by


class MemoryPatch(BaseModel):
    """Validated changes to a memory; None means unchanged."""

    content: str | None = None
    content_hash: str | None = None
    kind: Kind | None = None
    tags: list[str] | None = None
    project: str | None = None
    importance: int | None = None
    metadata: dict[str, Any] | None = None
    expires_at: datetime | None = None
    clear_expiry: bool = False
    visibility: Visibility | None = None


class MemoryFilter(BaseModel):
    """Which memories a list, search or context query may return."""

    project: str | None = None
    kinds: list[str] | None = None
    tags: list[str] | None = None
    since: datetime | None = None
    until: datetime | None = None
    now: datetime = Field(description="Memories that expired before this instant are left out.")
    user_id: str = Field(description="The caller: private memories of anyone else are never returned.")
    workspaces: list[str] = Field(description="Workspace ids to look in (all of them must be the caller's).")


class Access(BaseModel):
    """Who asks, and which workspaces they read: what every by-id read is limited to."""

    model_config = ConfigDict(frozen=True)

    user_id: str
    workspaces: tuple[str, ...]


class ScoredMemory:
    """A storage-level search candidate: its id, raw score, and the memory, built from the database row
    only when asked for. Hybrid search ranks a few hundred candidates per query and shows ten, and
    building every Memory was a measurable share of its latency."""

    __slots__ = ("_load", "_memory", "id", "score")

    def __init__(self, memory_id: str, score: float, load: Callable[[], Memory]) -> None:
        self.id = memory_id
        self.score = score
        self._load = load
        self._memory: Memory | None = None

    @property
    def memory(self) -> Memory:
        if self._memory is None:
            self._memory = self._load()
        return self._memory


class StoreStats(BaseModel):
    """Counts and schema facts a storage adapter reports about itself."""

    backend: Literal["sqlite", "postgres"]
    location: str
    schema_version: int
    memories: int
    deleted: int
    expired: int
    by_kind: dict[str, int]
    projects: int
    vector_index: Literal["sqlite-vec", "memory"] | None = None  # SQLite: which index answers vector search


# ---- tool results -----------------------------------------------------------------------------------


class StoreResult(Memory):
    """The stored memory itself, plus whether it was new."""

    created: bool = Field(description="False when identical content was already stored in this project.")
    message: str


class MemoryInput(BaseModel):
    """One memory of a store_memories call: the same fields, defaults and limits as store_memory."""

    content: str = Field(description="The text to remember, self-contained (max 64 KiB by default).")
    kind: Kind = Field(default="note", description="What sort of memory this is.")
    tags: list[str] | None = Field(default=None, description="Short labels, e.g. [\"db\", \"deploy\"]; at most 32.")
    project: str | None = Field(default=None, description="Project; defaults to the current project.")
    importance: int = Field(default=5, ge=0, le=10, description="0 (trivia) to 10 (critical); default 5.")
    metadata: dict[str, Any] | None = Field(default=None, description="Any JSON object (max 16 KiB).")
    expires_at: datetime | None = Field(default=None, description="When it stops being returned (ISO 8601).")
    workspace: str | None = Field(default=None, description="Workspace name or id; default your personal one.")
    visibility: Visibility | None = Field(default=None, description="private or team; default as store_memory.")


class StoredItem(BaseModel):
    """What store_memories says about one of its memories (get_memory has the rest)."""

    id: str
    created: bool = Field(description="False when identical content was already stored (or given earlier "
                                      "in the same call); id is then the existing memory's.")
    kind: Kind
    project: str
    workspace: str
    message: str


class StoreManyResult(BaseModel):
    created: int = Field(description="How many memories were new.")
    existing: int = Field(description="How many were duplicates of memories already stored.")
    results: list[StoredItem] = Field(description="One per memory given, in the same order.")


class SearchHit(BaseModel):
    """A memory as search returns it: flat and compact (get_memory has every field)."""

    id: str
    content: str
    kind: Kind
    project: str
    tags: list[str]
    importance: int
    created_at: datetime
    score: float = Field(description="Higher is better; comparable only within one search.")
    reason: str = Field(description="Why this memory matched, e.g. the query terms it contains.")
    workspace: str = Field(default="", description="The workspace it came from.")
    visibility: Visibility = "private"

    @classmethod
    def of(cls, memory: Memory, score: float, reason: str, workspace: str = "") -> SearchHit:
        return cls.model_construct(id=memory.id, content=memory.content, kind=memory.kind,
                                   project=memory.project, tags=memory.tags, importance=memory.importance,
                                   created_at=memory.created_at, score=score, reason=reason,
                                   workspace=workspace, visibility=memory.visibility)


class SearchResult(BaseModel):
    query: str
    mode: SearchMode = Field(description="Which ranking ran.")
    results: list[SearchHit]
    note: str | None = None


class MemoryVersion(BaseModel):
    """A prior version of a memory, as it was before an update replaced it."""

    version: int
    content: str
    kind: Kind
    tags: list[str]
    project: str
    importance: int
    metadata: dict[str, Any]
    visibility: Visibility
    changed_by: str = Field(description="Who made the change that replaced this version.")
    changed_at: datetime


class MemoryDetail(Memory):
    """get_memory's answer: the memory, where it lives, who wrote it, and optionally its history."""

    workspace: str = Field(description="The workspace's name.")
    created_by_name: str = Field(description="Who created it.")
    updated_by_name: str = Field(description="Who changed it last.")
    history: list[MemoryVersion] | None = Field(default=None, description="Prior versions, newest first "
                                                "(only when asked for with history=true).")


class ShareResult(BaseModel):
    id: str = Field(description="The memory in the target workspace (the same id when shared in place).")
    workspace: str
    copied: bool = Field(description="True when a team copy was made in another workspace (the original stays); "
                                     "false when shared in place or already there.")
    message: str


class MemoryPage(BaseModel):
    memories: list[Memory]
    next_cursor: str | None = Field(description="Pass as cursor to get the next page; null on the last page.")


class DeleteResult(BaseModel):
    id: str
    deleted: bool
    message: str


class ContextSection(BaseModel):
    title: str
    memories: list[Memory]


class ProjectContext(BaseModel):
    project: str
    sections: list[ContextSection]
    summary: str = Field(description="The same memories as compact text, ready to read.")


class Status(BaseModel):
    backend: Literal["sqlite", "postgres"]
    location: str = Field(description="Database path, or the PostgreSQL URL without its password (over HTTP with "
                                      "tokens, not shown to API clients).")
    reason: str = Field(description="Why this backend was chosen.")
    schema_version: int
    version: str
    memories: int
    deleted: int
    expired: int
    by_kind: dict[str, int]
    projects: int
    default_project: str
    embedding_model: str | None = Field(description="Model whose vectors semantic search uses, if any.")
    semantic_search: str = Field(description="'on', or why it is off or unavailable.")
    vector_index: str | None = Field(default=None, description="SQLite: 'sqlite-vec' or 'memory' (in-process).")
    pending_jobs: int = Field(description="Memories waiting to be embedded (embedding jobs queued or running); "
                                          "until then semantic search cannot find them.")
    failed_jobs: int = Field(description="Embedding jobs that failed every attempt (see the server log).")
