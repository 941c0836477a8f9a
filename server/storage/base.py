"""The Storage protocol: the domain verbs every adapter implements, and nothing else."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Literal, Protocol

from server.models import (
    Access,
    Memory,
    MemoryFilter,
    MemoryPatch,
    MemoryVersion,
    NewMemory,
    ScoredMemory,
    StoreStats,
)

# Keyword search ranks every match of a word fewer memories than this contain (a rare word), besides the
# newest matches of the query; both backends draw the line here (see their search_keyword queries).
RARE_WORD_MATCHES = 1000

class Storage(Protocol):
    """A place memories live. Adapters raise only server.errors exceptions.

    Every read is limited to what the caller may see (an Access, or the user_id and workspaces of a
    MemoryFilter): their workspaces, team memories and their own private ones. PostgreSQL also enforces
    this with row-level security; role rules for writes are the service's, with RLS behind them."""

    @property
    def backend(self) -> Literal["sqlite", "postgres"]:
        """Also the name of the SQL dialect folder."""
        ...

    @property
    def location(self) -> str:
        """Where the data is, safe to show (no passwords)."""
        ...

    async def open(self) -> None:
        """Connect and, unless told not to, apply pending migrations."""

    async def close(self) -> None: ...

    async def migrate(self) -> int:
        """Apply pending migrations (once, even with several processes starting); return the version."""
        ...

    async def ping(self) -> int:
        """Check the database answers; return its schema version."""
        ...

    async def add_memory(self, new: NewMemory) -> tuple[Memory, bool]:
        """Insert, or return the live memory with the same workspace, dedup owner, project and content
        hash (created=False)."""
        ...

    async def add_memories(self, news: list[NewMemory]) -> list[tuple[Memory, bool]]:
        """add_memory for each, in one transaction: all are written or none (one caller's batch)."""
        ...

    async def get_memory(self, memory_id: str, access: Access) -> Memory | None:
        """The memory with this id, including a tombstoned one (deleted_at set), or None (also when the
        caller may not see it)."""
        ...

    async def history(self, memory_id: str, access: Access, limit: int) -> list[MemoryVersion]:
        """Prior versions, newest first; empty when the caller may not see the memory."""
        ...

    async def update_memory(self, memory_id: str, patch: MemoryPatch, expected_version: int | None,
                            now: datetime, access: Access) -> Memory:
        """Apply a patch atomically as access.user_id, keeping the replaced version in the history;
        NotFound for unknown, invisible or deleted ids, Conflict on a version mismatch or when the new
        content duplicates another live memory."""
        ...

    async def delete_memory(self, memory_id: str, now: datetime, access: Access) -> Memory:
        """Tombstone a live memory as access.user_id; NotFound if there is none the caller sees."""
        ...

    async def list_memories(self, where: MemoryFilter, limit: int, cursor: str | None) -> list[Memory]:
        """Live memories, newest first, strictly older than the cursor id."""
        ...

    async def top_memories(self, where: MemoryFilter, limit: int) -> list[Memory]:
        """Live memories by importance, then most recently updated."""
        ...

    async def search_keyword(self, terms: list[str], where: MemoryFilter, limit: int) -> list[ScoredMemory]:
        """Full-text search for any of the plain-text terms, best first."""
        ...

    async def stats(self, now: datetime, access: Access) -> StoreStats:
        """Counts of what the caller can see."""
        ...

    # ---- settings and vectors ---------------------------------------------------------------------------

    async def get_meta(self, key: str) -> str | None: ...

    async def set_meta(self, key: str, value: str) -> None: ...

    async def prepare_vectors(self, model: str, dim: int) -> None:
        """Drop vectors of any other model and prepare the index for this model's dimension."""

    async def warm_vectors(self, model: str, dim: int) -> None:
        """Load what vector search keeps in memory (if anything), so the first search does not wait for it."""

    async def put_vectors(self, model: str, items: list[tuple[str, list[float]]]) -> None:
        """Store (memory id, vector) pairs; ids of memories deleted meanwhile are skipped."""

    async def live_contents(self, ids: list[str]) -> list[tuple[str, str]]:
        """(id, content) of the live memories among ids."""
        ...

    async def unembedded(self, model: str, after: str, limit: int) -> list[str]:
        """Ids of live memories with no vector for this model, in id order after `after`."""
        ...

    async def count_unembedded(self, model: str) -> int: ...

    async def search_vector(self, vector: list[float], model: str, where: MemoryFilter,
                            limit: int) -> list[ScoredMemory]:
        """Nearest live memories by cosine similarity (score = similarity), honouring the filter."""
        ...

    async def written_in_a_row(self, ids: list[str], within: timedelta) -> list[tuple[str, str]]:
        """(earlier, later) pairs among ids where `earlier` is the live memory written just before `later`
        in the same project (by id, which is creation order), by the same author in the same workspace, at
        most `within` before it. Both of a pair are among ids, so the answer shows nothing of other memories."""
        ...
