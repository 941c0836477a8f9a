"""The Embedder protocol every provider satisfies, and the small helpers they share."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Protocol, TypeVar, runtime_checkable

T = TypeVar("T")


@runtime_checkable
class Embedder(Protocol):
    """Turns text into L2-normalised vectors; one instance per model, shared by the whole server.

    Failures (model missing, download impossible, remote API down) raise
    `server.errors.EmbeddingUnavailable` with a message naming the setting to change.
    """

    @property
    def name(self) -> str:
        """Provider and model, e.g. "local/sentence-transformers/all-MiniLM-L6-v2"; stored with each vector."""
        ...

    async def dimension(self) -> int:
        """Length of every vector; answered from metadata when known, else by one probe embedding."""
        ...

    async def warm_up(self) -> None:
        """Do any slow one-off preparation now (load a model) instead of on the first request."""
        ...

    async def embed_documents(self, texts: Sequence[str]) -> list[list[float]]:
        """One vector per text, in the same order; batching happens inside."""
        ...

    async def embed_query(self, text: str) -> list[float]:
        """The vector for a search query."""
        ...

    async def close(self) -> None:
        """Release the model or HTTP client; the embedder may not be used afterwards."""
        ...


def l2_normalise(vector: Sequence[float]) -> list[float]:
    """The vector scaled to unit length (a zero vector stays zero)."""
    norm = math.sqrt(math.fsum(x * x for x in vector))
    if norm == 0.0:
        return [float(x) for x in vector]
    return [float(x) / norm for x in vector]


def batches(items: Sequence[T], size: int) -> Iterator[Sequence[T]]:
    """Consecutive slices of at most `size` items."""
    for start in range(0, len(items), size):
        yield items[start:start + size]
