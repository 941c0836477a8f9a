"""SQLite vector search: which index to use, and the in-process one (sign bits, then an exact re-score)."""

from __future__ import annotations

import sqlite3
import sys
from array import array
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


def choose_index(requested: str) -> IndexKind:
    """`auto` means the in-process index, on every Python: it is fast at any size this store is meant for
    (a few ms at 100,000 memories, where sqlite-vec's exact scan takes 150 ms) and small (48 bytes per
    384-d vector). `sqlite-vec` asks for the exact scan in SQL, and refuses where it cannot load."""
    if requested not in CHOICES:
        raise ConfigError(f"STACKMEMORY_VECTOR_INDEX={requested!r} is not one of {', '.join(CHOICES)}")
    if requested in ("auto", "memory"):
        return "memory"
    problem = sqlite_vec_problem()
    if problem is None:
        return "sqlite-vec"
    raise ConfigError(
        f"STACKMEMORY_VECTOR_INDEX=sqlite-vec, but {problem}: run StackMemory with a Python whose "
        "sqlite3 can load extensions, or set STACKMEMORY_VECTOR_INDEX=auto to search with the in-process "
        "index (the same results up to 400 vectors, nearly the same beyond; see the README)"
    )


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


RERANK = 400  # candidates re-scored exactly per search, at the least; see VectorIndex


class VectorIndex:
    """Every vector of one model, kept in memory as one bit per dimension (its sign), one row per memory.

    A search compares the query's bits with every row (Hamming distance, about 1.5 ms at 100,000 rows on
    one core), keeps the closest `candidates(k)` and leaves the exact ranking to `rank_exact`, which
    re-scores them by cosine from the stored float32 vectors. Where the searched rows are no more than
    that, every row is a candidate, so the result is exactly what a brute-force scan (sqlite-vec) returns;
    beyond, the true neighbours are nearly always among the candidates (docs: recall against the exact
    scan). Memory: dim/8 bytes per row (48 for 384 dimensions) plus the id and its place: 22 MB of Python
    objects at 100,000 rows, 50 MB more resident in all, where the float32 vectors alone would take 150 MB.

    Rows are appended in batches; the column-major bit matrix is rebuilt lazily, once per search that
    follows writes (a copy of a few MB at 100,000)."""

    def __init__(self, dim: int, generation: str) -> None:
        self.dim = dim
        self.generation = generation
        self.high_water = 0  # largest memory_vectors.seq loaded
        self.words = (dim + 63) // 64  # 64-bit words per row
        self.width = self.words * 8  # bytes per row
        self._ids: list[str] = []
        self._seqs = array("q")  # memory_vectors.seq of each row: where its float32 vector is
        self._pos: dict[str, int] = {}
        self._codes = bytearray()  # sign bits, packed, `width` bytes per row, rows in _ids order
        self._matrix: np.ndarray[Any, Any] | None = None  # uint64, words x rows

    def __len__(self) -> int:
        return len(self._ids)

    def add(self, rows: Iterable[tuple[int, str, bytes]]) -> None:
        """Load (seq, memory id, float32 blob) rows; a later row for an id replaces the earlier one."""
        import numpy as np

        every = list(rows)
        if every:
            self.high_water = max(self.high_water, max(seq for seq, _, _ in every))
        # A vector of another length was written by another model between a reindex and this refresh.
        batch = [(seq, memory_id, blob) for seq, memory_id, blob in every if len(blob) == 4 * self.dim]
        if not batch:
            return
        vectors = np.frombuffer(b"".join(blob for _, _, blob in batch), dtype=np.float32)
        codes = sign_bits(vectors.reshape(len(batch), self.dim), self.words)
        for (seq, memory_id, _), code in zip(batch, codes, strict=True):
            pos = self._pos.get(memory_id)
            if pos is None:
                self._pos[memory_id] = len(self._ids)
                self._ids.append(memory_id)
                self._seqs.append(seq)
                self._codes += code.tobytes()
            else:
                self._seqs[pos] = seq
                self._codes[pos * self.width:(pos + 1) * self.width] = code.tobytes()
        self._matrix = None

    def discard(self, seqs: Iterable[int]) -> None:
        """Forget rows whose vector is gone from the database (its memory deleted or changed: a seq is
        never reused). The last row takes each one's place."""
        gone = set(seqs)
        for pos in sorted((p for p, seq in enumerate(self._seqs) if seq in gone), reverse=True):
            last = len(self._ids) - 1
            del self._pos[self._ids[pos]]
            if pos != last:
                self._ids[pos], self._seqs[pos] = self._ids[last], self._seqs[last]
                self._codes[pos * self.width:(pos + 1) * self.width] = self._codes[last * self.width:]
                self._pos[self._ids[pos]] = pos
            self._ids.pop()
            self._seqs.pop()
            del self._codes[last * self.width:]
            self._matrix = None

    def candidates(self, query: list[float], k: int, allowed: set[str] | None = None) -> list[int]:
        """The memory_vectors.seq of the rows whose bits are closest to the query's: all of them (restricted
        to `allowed` ids when given) where they are no more than max(RERANK, 4k), else that many."""
        import numpy as np

        if allowed is None:
            positions = None
            count = len(self._ids)
        else:
            positions = np.fromiter((p for i in allowed if (p := self._pos.get(i)) is not None), dtype=np.intp)
            count = len(positions)
        want = max(RERANK, 4 * k)
        if count == 0 or k <= 0:
            return []
        if count <= want:
            chosen = range(count) if positions is None else positions.tolist()
            return [self._seqs[p] for p in chosen]
        if self._matrix is None:
            rows = np.frombuffer(bytes(self._codes), dtype=np.uint64).reshape(len(self._ids), self.words)
            self._matrix = np.ascontiguousarray(rows.T)
        q = sign_bits(np.asarray(query, dtype=np.float32).reshape(1, self.dim), self.words).view(np.uint64)[0]
        matrix = self._matrix if positions is None else self._matrix[:, positions]
        best = nearest_rows(hamming(matrix, q), want)
        if positions is not None:
            best = positions[best]
        return [self._seqs[p] for p in best.tolist()]


HAMMING_CHUNK = 65536  # rows per step: the step's temporaries (576 KB) stay in the CPU's cache


def hamming(matrix: np.ndarray[Any, Any], query: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    """Bits differing between `query` (words uint64) and each column of `matrix` (words x rows uint64).
    Counted in 16 bits: numpy's bitwise_count gives 8, and a sum in 8 bits wraps past 255, which dimensions
    over 255 reach (two unrelated 1536-dimension vectors differ in about 768). Word by word over the matrix's
    rows (3x faster than a row-major sum), a chunk of rows at a time into buffers used again for each."""
    import numpy as np

    words, rows = matrix.shape
    distance = np.zeros(rows, dtype=np.uint16)
    xor = np.empty(min(rows, HAMMING_CHUNK), dtype=np.uint64)
    bits = np.empty(len(xor), dtype=np.uint8)
    for start in range(0, rows, HAMMING_CHUNK):
        end = min(rows, start + HAMMING_CHUNK)
        n = end - start
        total = distance[start:end]
        for w in range(words):
            np.bitwise_xor(matrix[w, start:end], query[w], out=xor[:n])
            np.bitwise_count(xor[:n], out=bits[:n])
            total += bits[:n]
    return distance


def nearest_rows(distance: np.ndarray[Any, Any], want: int) -> np.ndarray[Any, Any]:
    """Positions of the `want` smallest distances (there are more rows than that: `candidates` takes every
    row otherwise), ties taken in row order. Distances are small integers (at most the dimension), so
    counting them finds the cut-off distance in one pass: 4x faster than argpartition at 1,000,000 rows."""
    import numpy as np

    cut = int(np.searchsorted(np.cumsum(np.bincount(distance)), want))  # want or more rows are <= cut
    closer = np.flatnonzero(distance < cut)
    return np.concatenate([closer, np.flatnonzero(distance == cut)[: want - len(closer)]])


def sign_bits(vectors: np.ndarray[Any, Any], words: int) -> np.ndarray[Any, Any]:
    """One bit per dimension (set where the value is positive), packed into `words` 64-bit words per row."""
    import numpy as np

    bits = np.packbits(vectors > 0, axis=1, bitorder="little")
    padded = np.zeros((len(vectors), words * 8), dtype=np.uint8)
    padded[:, : bits.shape[1]] = bits
    return padded


def rank_exact(query: list[float], rows: Iterable[tuple[str, bytes]], k: int) -> list[tuple[str, float]]:
    """The k rows most similar to the query by cosine (dot product of unit vectors), best first; equal
    scores newest id first, as the sqlite-vec query orders them. Rows of another length are skipped."""
    import numpy as np

    q = np.asarray(query, dtype=np.float32)
    kept = [(memory_id, blob) for memory_id, blob in rows if len(blob) == 4 * len(q)]
    if not kept or k <= 0:
        return []
    norm = float(np.linalg.norm(q))
    matrix = np.frombuffer(b"".join(blob for _, blob in kept), dtype=np.float32).reshape(len(kept), len(q))
    scores = (matrix @ (q / norm if norm else q)).tolist()
    ranked = sorted(zip(scores, (memory_id for memory_id, _ in kept), strict=True),
                    key=lambda pair: pair[1], reverse=True)
    ranked.sort(key=lambda pair: -pair[0])  # stable: equal scores keep newest id first
    return [(memory_id, score) for score, memory_id in ranked[:k]]


def to_blob(vector: list[float]) -> bytes:
    import numpy as np

    return np.asarray(vector, dtype=np.float32).tobytes()
