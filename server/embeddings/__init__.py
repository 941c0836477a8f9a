"""Embedders that turn text into vectors for semantic search, chosen from Settings by `make_embedder`."""

from __future__ import annotations

from typing import TYPE_CHECKING

from server.embeddings.base import Embedder

if TYPE_CHECKING:
    from server.config import Settings

__all__ = ["Embedder", "make_embedder"]


def make_embedder(settings: Settings) -> Embedder | None:
    """The embedder STACKMEMORY_EMBEDDINGS asks for, not yet loaded or connected; None when it is "none"."""
    if settings.embeddings == "none":
        return None
    if settings.embeddings == "openai":
        from server.embeddings.openai import OpenAIEmbedder

        return OpenAIEmbedder(settings.embedding_model, api_key=settings.openai_api_key,
                              base_url=settings.openai_base_url)
    from server.embeddings.local import LocalEmbedder

    return LocalEmbedder(settings.embedding_model, path=settings.embedding_model_path,
                         cache_dir=settings.model_cache)
