"""Semantic search support: cached query embeddings and fusion of keyword and vector rankings."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

from server.embeddings.base import Embedder
from server.models import Memory, ScoredMemory

RRF_K = 60  # the usual reciprocal-rank-fusion constant: damps the difference between ranks 1 and 2


@dataclass
class Semantic:
    """The embedder in use, its model name (recorded in the database) and a query-embedding cache."""

    embedder: Embedder
    model: str
    cache_size: int = 2048
    _cache: OrderedDict[str, list[float]] = field(default_factory=OrderedDict)

    async def query_vector(self, text: str) -> list[float]:
        """The query's embedding; repeated queries are answered from memory, not the embedder."""
        key = " ".join(text.split())
        vector = self._cache.get(key)
        if vector is not None:
            self._cache.move_to_end(key)
            return vector
        vector = await self.embedder.embed_query(key)
        self._cache[key] = vector
        if len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return vector


@dataclass(frozen=True)
class Fused:
    memory: Memory
    score: float
    keyword_rank: int | None
    similarity: float | None


def fuse(keyword: list[ScoredMemory], vector: list[ScoredMemory], limit: int,
         keyword_weight: float = 1.0, vector_weight: float = 1.0) -> list[Fused]:
    """Reciprocal rank fusion: each list contributes weight / (RRF_K + rank) for every memory it holds."""
    scores: dict[str, float] = {}
    memories: dict[str, Memory] = {}
    keyword_rank: dict[str, int] = {}
    similarity: dict[str, float] = {}
    for rank, hit in enumerate(keyword, start=1):
        scores[hit.memory.id] = scores.get(hit.memory.id, 0.0) + keyword_weight / (RRF_K + rank)
        memories[hit.memory.id] = hit.memory
        keyword_rank[hit.memory.id] = rank
    for rank, hit in enumerate(vector, start=1):
        scores[hit.memory.id] = scores.get(hit.memory.id, 0.0) + vector_weight / (RRF_K + rank)
        memories[hit.memory.id] = hit.memory
        similarity[hit.memory.id] = hit.score
    best = sorted(scores, key=lambda i: (-scores[i], i))[:limit]
    return [Fused(memories[i], scores[i], keyword_rank.get(i), similarity.get(i)) for i in best]
