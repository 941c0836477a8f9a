"""Blocking model runners for the local embedder: onnxruntime on a folder, or fastembed by name."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt


class Runner(Protocol):
    """A loaded model; `embed` blocks and must run off the event loop."""

    def embed(self, texts: list[str]) -> list[list[float]]: ...


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object from disk, or {} when the file is absent or unreadable."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


class OnnxRunner:
    """Mean pooling over `last_hidden_state` with the attention mask, then L2 normalisation."""

    def __init__(self, folder: Path, *, threads: int, max_tokens: int) -> None:
        import onnxruntime as ort  # type: ignore[import-untyped]
        from tokenizers import Tokenizer

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3  # onnxruntime's warnings would flood stderr on every load
        self._session = ort.InferenceSession(
            str(folder / "model.onnx"), sess_options=options, providers=["CPUExecutionProvider"]
        )
        self._inputs = {i.name for i in self._session.get_inputs()}
        outputs = [o.name for o in self._session.get_outputs()]
        self._output = "last_hidden_state" if "last_hidden_state" in outputs else outputs[0]
        self._tokenizer = _tokenizer(Tokenizer.from_file(str(folder / "tokenizer.json")), folder, max_tokens)

    def embed(self, texts: list[str]) -> list[list[float]]:
        import numpy as np

        encodings = self._tokenizer.encode_batch(texts)
        ids = np.array([e.ids for e in encodings], dtype=np.int64)
        mask = np.array([e.attention_mask for e in encodings], dtype=np.int64)
        feeds = {"input_ids": ids, "attention_mask": mask}
        if "token_type_ids" in self._inputs:
            feeds["token_type_ids"] = np.array([e.type_ids for e in encodings], dtype=np.int64)
        (hidden,) = self._session.run([self._output], feeds)
        vectors: list[list[float]] = _mean_pool_normalise(np.asarray(hidden, dtype=np.float32), mask).tolist()
        return vectors


def _tokenizer(tokenizer: Any, folder: Path, max_tokens: int) -> Any:
    """Truncate to the model's usable context and pad each batch to its longest text."""
    config = read_json(folder / "tokenizer_config.json")
    limit = config.get("model_max_length")
    tokenizer.enable_truncation(max_length=min(max_tokens, limit) if isinstance(limit, int) else max_tokens)
    padding = tokenizer.padding or {}
    pad_token = padding.get("pad_token") or config.get("pad_token") or "[PAD]"
    pad_id = padding.get("pad_id")
    if pad_id is None:
        pad_id = read_json(folder / "config.json").get("pad_token_id")
    if pad_id is None:
        pad_id = tokenizer.token_to_id(pad_token) or 0
    tokenizer.enable_padding(pad_id=pad_id, pad_token=pad_token, pad_type_id=padding.get("pad_type_id", 0))
    return tokenizer


def _mean_pool_normalise(hidden: npt.NDArray[np.float32], mask: npt.NDArray[np.int64]) -> Any:
    import numpy as np

    weights = mask[:, :, None].astype(np.float32)
    pooled = (hidden * weights).sum(axis=1) / np.clip(weights.sum(axis=1), 1e-9, None)
    norms = np.linalg.norm(pooled, axis=1, keepdims=True)
    return pooled / np.clip(norms, 1e-12, None)


class FastembedRunner:
    """fastembed's TextEmbedding, which downloads the model into `cache_dir` on first use."""

    def __init__(self, model: str, *, cache_dir: str, threads: int, max_tokens: int,
                 specific_model_path: str | None = None) -> None:
        from fastembed import TextEmbedding

        extra: dict[str, Any] = {"specific_model_path": specific_model_path} if specific_model_path else {}
        self._model = TextEmbedding(model_name=model, cache_dir=cache_dir, threads=threads, **extra)
        _cap_truncation(self._model, max_tokens)

    def embed(self, texts: list[str]) -> list[list[float]]:
        import numpy as np

        vectors = np.stack(list(self._model.embed(texts, batch_size=max(1, len(texts)))))
        # fastembed normalises pooled-normalised models already; doing it again is harmless and covers the rest.
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        return (vectors / np.clip(norms, 1e-12, None)).tolist()  # type: ignore[no-any-return]


def _cap_truncation(model: Any, max_tokens: int) -> None:
    """Truncate like sentence-transformers (256 tokens), so a downloaded and a folder model agree."""
    tokenizer = getattr(getattr(model, "model", None), "tokenizer", None)
    current = getattr(tokenizer, "truncation", None)
    if tokenizer is None or not current or current.get("max_length", 0) <= max_tokens:
        return
    tokenizer.enable_truncation(max_length=max_tokens, direction=current.get("direction", "right"))


def fastembed_dimension(model: str) -> int | None:
    """The dimension fastembed lists for a model name, without loading the model."""
    from fastembed import TextEmbedding

    for description in TextEmbedding.list_supported_models():
        if str(description.get("model", "")).lower() == model.lower():
            return int(description["dim"])
    return None
