"""Exact cosine search over normalised float32 vectors kept in process memory (the SQLite vector index)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np


class VectorIndex:
    """Every vector of one model, one row per memory id; dot product equals cosine for unit vectors.

    Exact rather than approximate, so it returns what a brute-force scan in SQL (sqlite-vec) would.
    Rows are appended in batches and the matrix is rebuilt lazily, once per search that follows writes."""

    def __init__(self, dim: int, generation: str) -> None:
        self.dim = dim
        self.generation = generation
        self.high_water = 0  # largest memory_vectors.seq loaded
        self._ids: list[str] = []
        self._pos: dict[str, int] = {}
        self._rows: list[Any] = []  # float32 arrays, one per id, in _ids order
        self._matrix: np.ndarray[Any, Any] | None = None

    def __len__(self) -> int:
        return len(self._ids)

    def add(self, rows: Iterable[tuple[int, str, bytes]]) -> None:
        """Load (seq, memory id, float32 blob) rows; a later row for an id replaces the earlier one."""
        import numpy as np

        for seq, memory_id, blob in rows:
            vector = np.frombuffer(blob, dtype=np.float32)
            if vector.shape[0] != self.dim:
                continue  # written by another model between a reindex and this refresh; skipped
            pos = self._pos.get(memory_id)
            if pos is None:
                self._pos[memory_id] = len(self._ids)
                self._ids.append(memory_id)
                self._rows.append(vector)
            else:
                self._rows[pos] = vector
            self._matrix = None
            self.high_water = max(self.high_water, seq)

    def search(self, query: list[float], k: int, allowed: set[str] | None = None) -> list[tuple[str, float]]:
        """The k most similar ids (restricted to `allowed` when given), best first, with cosine scores."""
        import numpy as np

        if not self._ids or k <= 0:
            return []
        if self._matrix is None:
            self._matrix = np.vstack(self._rows)
        scores = self._matrix @ np.asarray(query, dtype=np.float32)
        if allowed is not None:
            mask = np.fromiter((i in allowed for i in self._ids), dtype=bool, count=len(self._ids))
            scores = np.where(mask, scores, -np.inf)
        k = min(k, len(self._ids))
        top = np.argpartition(-scores, k - 1)[:k]
        top = top[np.argsort(-scores[top], kind="stable")]
        return [(self._ids[i], float(scores[i])) for i in top if scores[i] != -np.inf]


def to_blob(vector: list[float]) -> bytes:
    import numpy as np

    return np.asarray(vector, dtype=np.float32).tobytes()
