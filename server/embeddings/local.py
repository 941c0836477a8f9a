"""The offline embedder: an ONNX model from a folder, or one fastembed downloads once by name."""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Sequence
from pathlib import Path

import anyio
import anyio.to_thread

from server.embeddings.base import batches
from server.embeddings.runners import FastembedRunner, OnnxRunner, Runner, fastembed_dimension, read_json
from server.errors import EmbeddingUnavailable

log = logging.getLogger(__name__)

DEFAULT_LOCAL_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
# Folders are usually named after the model's last path segment; these restore the organisation.
KNOWN_MODELS = (
    DEFAULT_LOCAL_MODEL,
    "sentence-transformers/all-MiniLM-L12-v2",
    "sentence-transformers/all-mpnet-base-v2",
    "sentence-transformers/paraphrase-multilingual-MiniLM-L12-v2",
    "BAAI/bge-small-en-v1.5",
    "BAAI/bge-base-en-v1.5",
)
_FORMAT_SUFFIX = re.compile(r"[-_.](onnx|fp32|fp16|int8|quantized|optimized)$", re.IGNORECASE)
RELOAD_AFTER = 300.0  # seconds before a failed load is tried again, so each search doesn't wait on it
_FIX = "set STACKMEMORY_EMBEDDING_MODEL_PATH to a folder with model.onnx and tokenizer.json, " \
       "or STACKMEMORY_EMBEDDINGS=none to turn semantic search off"


def default_threads() -> int:
    """One onnxruntime thread on a small machine, two on a larger one: inference must not starve the server."""
    return max(1, min(2, (os.cpu_count() or 2) // 2))


def model_identity(folder: Path) -> str:
    """The model a folder holds, by name, so a folder copy and a downloaded copy share one identity.

    A sentence-transformers model's config.json `_name_or_path` names the base model it was tuned
    from (all-MiniLM-L6-v2 says "nreimers/MiniLM-L6-H384-uncased"), so a folder named after a
    well-known model wins over it; then `_name_or_path`; then the folder's name.
    """
    stem = folder.name
    while _FORMAT_SUFFIX.search(stem):
        stem = _FORMAT_SUFFIX.sub("", stem)
    for known in KNOWN_MODELS:
        if known.rsplit("/", 1)[-1].lower() == stem.lower():
            return known
    declared = read_json(folder / "config.json").get("_name_or_path")
    if isinstance(declared, str) and declared and not os.path.isabs(declared) and not declared.startswith("."):
        return declared
    return stem


KNOWN_DIMENSIONS = {"sentence-transformers/all-MiniLM-L6-v2": 384, "BAAI/bge-small-en-v1.5": 384,
                    "BAAI/bge-base-en-v1.5": 768, "sentence-transformers/paraphrase-MiniLM-L6-v2": 384}


class _Query:
    """One query waiting for its embedding, and what it got."""

    __slots__ = ("error", "text", "vector")

    def __init__(self, text: str) -> None:
        self.text = text
        self.vector: list[float] | None = None
        self.error: BaseException | None = None

    @property
    def done(self) -> bool:
        return self.vector is not None or self.error is not None


class LocalEmbedder:
    """Runs a sentence-embedding model on this machine's CPU, in a worker thread, one batch at a time.

    `model` names the model; with `path` the model is read from that folder and `model` (when given)
    only sets its identity. Nothing is loaded until `warm_up()` or the first embedding.
    """

    def __init__(self, model: str | None = None, *, path: str | os.PathLike[str] | None = None,
                 cache_dir: str = "~/.stackmemory/models", threads: int | None = None,
                 batch_size: int = 32, max_tokens: int = 256) -> None:
        self._path = Path(path).expanduser() if path is not None else None
        if self._path is not None:
            _check_folder(self._path)
        model_name = model or (model_identity(self._path) if self._path is not None else DEFAULT_LOCAL_MODEL)
        self._model = model_name
        self._cache_dir = str(Path(cache_dir).expanduser())
        self._threads = threads or default_threads()
        self._batch_size = batch_size
        self._max_tokens = max_tokens
        self._runner: Runner | None = None
        self._failure: tuple[float, EmbeddingUnavailable] | None = None
        self._dim: int | None = None
        self._limiter: anyio.CapacityLimiter | None = None
        self._query_lane: anyio.Lock | None = None
        self._queries: list[_Query] = []

    @property
    def name(self) -> str:
        return f"local/{self._model}"

    @property
    def loaded(self) -> bool:
        return self._runner is not None

    @property
    def last_failure(self) -> str | None:
        """Why the last attempt to load the model failed, while it is still not loaded."""
        return str(self._failure[1]) if self._failure is not None and self._runner is None else None

    def retry_in(self) -> float:
        """Seconds until a model that failed to load is tried again (0 when loaded, or when it never failed)."""
        if self._runner is not None or self._failure is None:
            return 0.0
        return max(0.0, RELOAD_AFTER - (time.monotonic() - self._failure[0]))

    async def dimension(self) -> int:
        if self._dim is None:
            self._dim = await anyio.to_thread.run_sync(self._known_dimension)
        if self._dim is None:
            self._dim = len(await self.embed_query("dimension probe"))
        return self._dim

    async def warm_up(self) -> None:
        await self._runner_ready()

    async def embed_documents(self, texts: Sequence[str]) -> list[list[float]]:
        return await self._embed(texts, self._capacity())

    async def _embed(self, texts: Sequence[str], limiter: anyio.CapacityLimiter | None) -> list[list[float]]:
        if not texts:
            return []
        runner = await self._runner_ready()
        # Grouping similar lengths keeps padding (and wasted compute) small; order is restored below.
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]), reverse=True)
        vectors: list[list[float]] = [[] for _ in texts]
        for chunk in batches(order, self._batch_size):
            # The limiter is taken per batch, so a query can slip in between the batches of a long re-index.
            out = await anyio.to_thread.run_sync(self._run, runner, [texts[i] for i in chunk],
                                                 limiter=limiter)
            for i, vector in zip(chunk, out, strict=True):
                vectors[i] = vector
        return vectors

    async def embed_query(self, text: str) -> list[float]:
        """Queries have a lane of their own (ONNX Runtime sessions take concurrent runs), so a search never
        waits behind a batch of documents the background worker is embedding. Queries that arrive while the
        lane is busy are embedded together in its next run: under load one run of 8 short queries costs
        about half of 8 runs of one, and a lone query goes straight through."""
        if self._query_lane is None:
            self._query_lane = anyio.Lock()
        query = _Query(text)
        self._queries.append(query)
        async with self._query_lane:
            if not query.done:
                await self._embed_waiting(query)
        if query.error is not None:
            raise query.error
        assert query.vector is not None
        return query.vector

    async def _embed_waiting(self, own: _Query) -> None:
        batch, self._queries = self._queries[:self._batch_size], self._queries[self._batch_size:]
        try:  # no limiter: the lane's lock already admits one run at a time
            for q, vector in zip(batch, await self._embed([q.text for q in batch], None), strict=True):
                q.vector = vector
        except EmbeddingUnavailable as exc:  # anything else is the lane holder's alone; the rest are re-queued
            for q in batch:
                q.error = exc
        finally:  # cancelled mid-run: the others' queries go back to the front for the next lane holder
            self._queries[:0] = [q for q in batch if not q.done and q is not own]

    async def close(self) -> None:
        self._runner = None

    def _capacity(self) -> anyio.CapacityLimiter:
        if self._limiter is None:
            self._limiter = anyio.CapacityLimiter(1)
        return self._limiter

    async def _runner_ready(self) -> Runner:
        if self._runner is None:
            runner = await anyio.to_thread.run_sync(self._load_once, limiter=self._capacity(),
                                                    abandon_on_cancel=True)
            self._runner = runner
        return self._runner

    def _load_once(self) -> Runner:
        if self._runner is not None:  # another caller loaded it while this one waited for the limiter
            return self._runner
        if self._failure is not None and time.monotonic() - self._failure[0] < RELOAD_AFTER:
            raise EmbeddingUnavailable(str(self._failure[1]))
        try:
            return self._load()
        except EmbeddingUnavailable as exc:
            log.warning("%s", exc)
            self._failure = (time.monotonic(), exc)
            raise

    def _load(self) -> Runner:
        if self._path is not None:
            try:
                return OnnxRunner(self._path, threads=self._threads, max_tokens=self._max_tokens)
            except Exception as exc:
                raise EmbeddingUnavailable(
                    f"could not load the embedding model in {self._path} ({exc}); {_FIX}"
                ) from exc
        try:
            return FastembedRunner(self._model, cache_dir=self._cache_dir, threads=self._threads,
                                   max_tokens=self._max_tokens)
        except ImportError as exc:
            raise EmbeddingUnavailable(
                f"local embeddings by model name need fastembed ({exc}); install it (pip install fastembed), "
                f"or {_FIX}"
            ) from exc
        except Exception as exc:
            raise EmbeddingUnavailable(
                f"the local embedding model {self._model!r} could not be downloaded or loaded into "
                f"{self._cache_dir} ({type(exc).__name__}: {exc}); without network access, {_FIX}"
            ) from exc

    def _known_dimension(self) -> int | None:
        if self._path is not None:
            config = read_json(self._path / "config.json")
            pooling = read_json(self._path / "pooling_config.json")
            found = pooling.get("word_embedding_dimension") or config.get("hidden_size")
            return found if isinstance(found, int) else None
        if self._model in KNOWN_DIMENSIONS:  # answers without importing fastembed (about 1.4 s) at start-up
            return KNOWN_DIMENSIONS[self._model]
        try:
            return fastembed_dimension(self._model)
        except ImportError:
            return None

    @staticmethod
    def _run(runner: Runner, texts: list[str]) -> list[list[float]]:
        try:
            return runner.embed(texts)
        except Exception as exc:
            raise EmbeddingUnavailable(f"the local embedding model failed on a batch of {len(texts)} texts: "
                                       f"{type(exc).__name__}: {exc}") from exc


def _check_folder(folder: Path) -> None:
    """Fail at start, not at the first search, when the configured folder cannot hold a model."""
    missing = [f for f in ("model.onnx", "tokenizer.json") if not (folder / f).is_file()]
    if missing:
        raise EmbeddingUnavailable(
            f"STACKMEMORY_EMBEDDING_MODEL_PATH={folder} has no {' or '.join(missing)}; point it at a folder "
            "with model.onnx and tokenizer.json (an ONNX export of a sentence-transformers model), "
            "or set STACKMEMORY_EMBEDDINGS=none"
        )
