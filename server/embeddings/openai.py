"""The remote embedder: OpenAI's embeddings API, or any server speaking the same protocol."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

from server.embeddings.base import batches, l2_normalise
from server.errors import EmbeddingUnavailable

if TYPE_CHECKING:
    from openai import AsyncOpenAI

log = logging.getLogger(__name__)

DEFAULT_OPENAI_MODEL = "text-embedding-3-small"
DEFAULT_BASE_URL = "https://api.openai.com/v1"
KNOWN_DIMENSIONS = {"text-embedding-3-small": 1536, "text-embedding-3-large": 3072, "text-embedding-ada-002": 1536}


class OpenAIEmbedder:
    """Embeds through `AsyncOpenAI`, `batch_size` inputs per request.

    The client retries 408/409/429/5xx and connection errors `max_retries` times with exponential
    backoff, honouring Retry-After; each attempt is cut off after `timeout` seconds.
    """

    def __init__(self, model: str | None = None, *, api_key: str | None = None, base_url: str | None = None,
                 timeout: float = 30.0, max_retries: int = 4, batch_size: int = 128) -> None:
        if not api_key and (base_url or DEFAULT_BASE_URL).rstrip("/") == DEFAULT_BASE_URL:
            raise EmbeddingUnavailable(
                "STACKMEMORY_EMBEDDINGS=openai needs an API key: set OPENAI_API_KEY, or OPENAI_BASE_URL for "
                "a local OpenAI-compatible server (Ollama, vLLM, ...), or choose STACKMEMORY_EMBEDDINGS=local"
            )
        self._model = model or DEFAULT_OPENAI_MODEL
        # Local servers usually ignore the key, but the client insists on one.
        self._api_key = api_key or "unused"
        self._base_url = base_url or DEFAULT_BASE_URL
        self._timeout = timeout
        self._max_retries = max_retries
        self._batch_size = batch_size
        self._dim: int | None = KNOWN_DIMENSIONS.get(self._model)
        self._client: AsyncOpenAI | None = None

    @property
    def name(self) -> str:
        return f"openai/{self._model}"

    async def dimension(self) -> int:
        if self._dim is None:
            self._dim = len(await self.embed_query("dimension probe"))
        return self._dim

    async def warm_up(self) -> None:
        self._connect()

    async def embed_documents(self, texts: Sequence[str]) -> list[list[float]]:
        vectors: list[list[float]] = []
        for chunk in batches(texts, self._batch_size):
            vectors.extend(await self._request(list(chunk)))
        return vectors

    async def embed_query(self, text: str) -> list[float]:
        (vector,) = await self.embed_documents([text])
        return vector

    async def close(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            await client.close()

    def _connect(self) -> AsyncOpenAI:
        if self._client is None:
            from openai import AsyncOpenAI

            self._client = AsyncOpenAI(api_key=self._api_key, base_url=self._base_url,
                                       timeout=self._timeout, max_retries=self._max_retries)
        return self._client

    async def _request(self, texts: list[str]) -> list[list[float]]:
        import openai

        # The API rejects empty strings; a blank embeds to the same neutral vector as a space.
        inputs = [t if t.strip() else " " for t in texts]
        try:
            response = await self._connect().embeddings.create(model=self._model, input=inputs)
        except openai.AuthenticationError as exc:
            raise self._unavailable("the API key was rejected; check OPENAI_API_KEY", exc) from exc
        except (openai.NotFoundError, openai.BadRequestError) as exc:
            raise self._unavailable(
                f"the request for model {self._model!r} was refused; check STACKMEMORY_EMBEDDING_MODEL", exc
            ) from exc
        except openai.OpenAIError as exc:
            raise self._unavailable(
                f"it kept failing after {self._max_retries} retries; check OPENAI_BASE_URL and the service's "
                "status, or set STACKMEMORY_EMBEDDINGS=local", exc
            ) from exc
        data = sorted(response.data, key=lambda d: d.index)
        if len(data) != len(texts):
            raise EmbeddingUnavailable(f"embeddings endpoint {self._base_url} answered {len(data)} vectors "
                                       f"for {len(texts)} inputs; check OPENAI_BASE_URL")
        vectors = [l2_normalise(d.embedding) for d in data]
        self._dim = self._dim or len(vectors[0])
        return vectors

    def _unavailable(self, advice: str, exc: Exception) -> EmbeddingUnavailable:
        status = getattr(exc, "status_code", None)
        what = f"HTTP {status}" if status is not None else type(exc).__name__
        return EmbeddingUnavailable(
            f"embedding {self._model!r} through {self._base_url} failed ({what}: {exc}): {advice}"
        )
