"""Semantic search support: cached query embeddings and fusion of keyword and vector rankings."""

from __future__ import annotations

import hashlib
import logging
from array import array
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from server.embeddings.base import Embedder
from server.errors import StackMemoryError
from server.models import Memory, ScoredMemory

if TYPE_CHECKING:
    from collections.abc import Iterable

# Weight of the keyword ranking in hybrid search (the vector ranking gets the rest). Chosen on LoCoMo
# (bench/locomo.py) across whole conversations, not per question: 0.5-0.6 all scored within 0.005.
KEYWORD_WEIGHT = 0.55
# Share of the best score of a memory written just before or after it (same project and author, within
# NEIGHBOUR_WITHIN) that hybrid search adds to a memory's own: a conversation or a working session spreads
# one fact over several memories, and the one that answers often shares no words with the question
# ("How did it go?" after "I ran the migration on staging"). Chosen on LoCoMo across whole conversations:
# 0.2-0.5 all gain 0.024-0.04 recall@10 over none, in each of its 5 conversations.
NEIGHBOUR_WEIGHT = 0.3
NEIGHBOUR_WITHIN = timedelta(minutes=30)


log = logging.getLogger(__name__)
CACHE_TTL_SECONDS = 7 * 86400.0


@runtime_checkable
class SharedCache(Protocol):
    """A cache every server process sees (PostgreSQL's UNLOGGED table); losing it only costs time."""

    async def cache_get(self, key: str) -> bytes | None: ...

    async def cache_put(self, key: str, value: bytes, ttl: float) -> None: ...


@dataclass
class Semantic:
    """The embedder in use, its model name (recorded in the database) and the query-embedding caches:
    this process's memory first, then the shared cache when there is one, then the embedder."""

    embedder: Embedder
    model: str
    shared: SharedCache | None = None
    cache_size: int = 2048
    warming: bool = False  # the server is loading the model in the background right now
    _cache: OrderedDict[str, list[float]] = field(default_factory=OrderedDict)

    async def query_vector(self, text: str) -> list[float]:
        """The query's embedding; repeated queries do not reach the embedder."""
        query = " ".join(text.split())
        vector = self._cache.get(query)
        if vector is not None:
            self._cache.move_to_end(query)
            return vector
        key = "qvec:" + hashlib.sha256(f"{self.model}\0{query}".encode()).hexdigest()
        vector = await self._shared_get(key)
        if vector is None:
            vector = await self.embedder.embed_query(query)
            await self._shared_put(key, vector)
        self._cache[query] = vector
        if len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return vector

    async def _shared_get(self, key: str) -> list[float] | None:
        if self.shared is None:
            return None
        try:
            blob = await self.shared.cache_get(key)
        except StackMemoryError as exc:  # a cache must never fail a search
            log.info("shared cache read failed: %s", exc)
            return None
        return list(array("f", blob)) if blob else None

    async def _shared_put(self, key: str, vector: list[float]) -> None:
        if self.shared is None:
            return
        try:
            await self.shared.cache_put(key, array("f", vector).tobytes(), CACHE_TTL_SECONDS)
        except StackMemoryError as exc:
            log.info("shared cache write failed: %s", exc)


@dataclass(frozen=True)
class Fused:
    memory: Memory
    score: float
    keyword_rank: int | None
    similarity: float | None
    neighbour: float = 0.0  # what the memory written next to it added to its score


def fuse(keyword: list[ScoredMemory], vector: list[ScoredMemory], limit: int,
         neighbours: Iterable[tuple[str, str]] = (), keyword_weight: float = KEYWORD_WEIGHT,
         neighbour_weight: float = NEIGHBOUR_WEIGHT) -> list[Fused]:
    """Convex combination of min-max normalised scores: each list's best hit scores 1 and its worst 0,
    and a memory missing from a list gets that list's 0. On LoCoMo this beat reciprocal rank fusion
    (R@5 0.60 vs 0.55 with k=60), because it keeps how far apart the scores are, not only their order.

    `neighbours` are (earlier, later) pairs of candidates written one right after the other: each gets
    neighbour_weight times the better of its neighbours' fused scores added (from those scores, not from
    each other's raised ones, so a run of memories cannot lift itself)."""
    kw = _normalised(keyword)
    vec = _normalised(vector)
    candidates = {h.id: h for h in [*keyword, *vector]}
    own = {i: keyword_weight * kw.get(i, 0.0) + (1 - keyword_weight) * vec.get(i, 0.0) for i in candidates}
    added: dict[str, float] = {}
    for earlier, later in neighbours:
        if earlier in own and later in own:
            added[later] = max(added.get(later, 0.0), neighbour_weight * own[earlier])
            added[earlier] = max(added.get(earlier, 0.0), neighbour_weight * own[later])
    scores = {i: s + added.get(i, 0.0) for i, s in own.items()}
    keyword_rank = {h.id: rank for rank, h in enumerate(keyword, start=1)}
    similarity = {h.id: h.score for h in vector}
    best = sorted(scores, key=lambda i: (-scores[i], i))[:limit]
    return [Fused(candidates[i].memory, scores[i], keyword_rank.get(i), similarity.get(i), added.get(i, 0.0))
            for i in best]


def _normalised(hits: list[ScoredMemory]) -> dict[str, float]:
    if not hits:
        return {}
    low = min(h.score for h in hits)
    span = max(h.score for h in hits) - low
    return {h.id: (h.score - low) / span if span > 0 else 1.0 for h in hits}
