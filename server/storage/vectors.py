"""SQLite vector search: which index to use (sqlite-vec where it loads), and the in-process one."""

from __future__ import annotations

import logging
import sqlite3
import sys
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Literal

from server.errors import ConfigError

if TYPE_CHECKING:
    import numpy as np

IndexKind = Literal["sqlite-vec", "memory"]
CHOICES = ("auto", "sqlite-vec", "memory")
# Python leaves extension loading out unless built with --enable-loadable-sqlite-extensions (pyenv's
# default builds are not); such a sqlite3.Connection has no enable_load_extension.
CAN_LOAD_EXTENSIONS = hasattr(sqlite3.Connection, "enable_load_extension")
log = logging.getLogger(__name__)


def choose_index(requested: str) -> IndexKind:
    """`auto` means sqlite-vec when this Python can load it, else the in-process index."""
    if requested not in CHOICES:
        raise ConfigError(f"STACKMEMORY_VECTOR_INDEX={requested!r} is not one of {', '.join(CHOICES)}")
    if requested == "memory":
        return "memory"
    problem = sqlite_vec_problem()
    if problem is None:
        return "sqlite-vec"
    if requested == "sqlite-vec":
        raise ConfigError(
            f"STACKMEMORY_VECTOR_INDEX=sqlite-vec, but {problem}: run StackMemory with a Python whose "
            "sqlite3 can load extensions, or set STACKMEMORY_VECTOR_INDEX=auto (or memory) to search "
            "with the in-process index, which returns the same results"
        )
    log.info("vector search uses the in-process index: %s", problem)
    return "memory"


def sqlite_vec_problem() -> str | None:
    """Why sqlite-vec cannot be loaded here, or None when it can."""
    if not CAN_LOAD_EXTENSIONS:
        return f"the sqlite3 module of this Python ({sys.executable}) cannot load extensions"
    try:
        path = sqlite_vec_path()
    except ImportError:
        return "the sqlite-vec package is not installed (pip install sqlite-vec)"
    db = sqlite3.connect(":memory:")
    try:
        db.enable_load_extension(True)
        db.load_extension(path)
        db.execute("SELECT vec_version()")
    except sqlite3.Error as exc:
        return f"SQLite could not load sqlite-vec from {path} ({exc})"
    finally:
        db.close()
    return None


def sqlite_vec_path() -> str:
    import sqlite_vec  # type: ignore[import-untyped]

    return str(sqlite_vec.loadable_path())


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
        """The k most similar ids (restricted to `allowed` when given), best first, with cosine scores.

        Equal scores are ordered newest id first, as the sqlite-vec query orders them."""
        import numpy as np

        if not self._ids or k <= 0:
            return []
        if self._matrix is None:
            self._matrix = np.vstack(self._rows)
        q = np.asarray(query, dtype=np.float32)
        norm = float(np.linalg.norm(q))
        scores = self._matrix @ (q / norm if norm else q)
        if allowed is None:
            positions = np.arange(len(self._ids))
        else:
            positions = np.fromiter((p for i in allowed if (p := self._pos.get(i)) is not None), dtype=np.intp)
        if k < len(positions):
            cut = np.partition(scores[positions], len(positions) - k)[len(positions) - k]
            positions = positions[scores[positions] >= cut]  # ties at the cut stay, for the id order to pick
        ranked = sorted(zip((-scores[positions]).tolist(), (self._ids[p] for p in positions), strict=True),
                        key=lambda pair: pair[1], reverse=True)
        ranked.sort(key=lambda pair: pair[0])  # stable: equal scores keep newest id first
        return [(memory_id, -negated) for negated, memory_id in ranked[:k]]


def to_blob(vector: list[float]) -> bytes:
    import numpy as np

    return np.asarray(vector, dtype=np.float32).tobytes()
