"""Embedders: the real local model, the OpenAI provider against a protocol-faithful stand-in, and the factory."""

from __future__ import annotations

import base64
import hashlib
import json
import math
import os
import struct
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import anyio
import pytest

from server.config import Settings
from server.embeddings import make_embedder
from server.embeddings.local import LocalEmbedder, model_identity
from server.embeddings.openai import OpenAIEmbedder
from server.errors import EmbeddingUnavailable
from tests.conftest import ROOT, unavailable

pytestmark = pytest.mark.anyio

MINILM = "local/sentence-transformers/all-MiniLM-L6-v2"


def shared_model_path() -> Path:
    """The offline all-MiniLM-L6-v2 ONNX folder: STACKMEMORY_TEST_MODEL_PATH, else ../shared/models."""
    return Path(os.environ.get("STACKMEMORY_TEST_MODEL_PATH")
                or ROOT.parent / "shared" / "models" / "all-MiniLM-L6-v2-onnx")


def require_shared_model() -> Path:
    path = shared_model_path()
    if not (path / "model.onnx").is_file():
        unavailable(f"the real embedding model is not at {path} (set STACKMEMORY_TEST_MODEL_PATH)")
    return path


def cosine(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True))


def norm(v: list[float]) -> float:
    return math.sqrt(sum(x * x for x in v))


# --- the real local model ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
async def minilm() -> AsyncIterator[LocalEmbedder]:
    embedder = LocalEmbedder(path=require_shared_model())
    await embedder.warm_up()
    yield embedder
    await embedder.close()


async def test_a_model_folder_is_named_after_the_model_and_knows_its_dimension_without_loading() -> None:
    embedder = LocalEmbedder(path=require_shared_model())
    assert embedder.name == MINILM
    assert await embedder.dimension() == 384
    assert not embedder.loaded


async def test_local_vectors_have_384_unit_length_components(minilm: LocalEmbedder) -> None:
    vector = await minilm.embed_query("Where do we keep the deployment runbook?")
    assert len(vector) == 384
    assert norm(vector) == pytest.approx(1.0, abs=1e-5)


async def test_a_paraphrase_scores_higher_than_an_unrelated_sentence(minilm: LocalEmbedder) -> None:
    query = await minilm.embed_query("What database do we use in production?")
    related, unrelated = await minilm.embed_documents(
        ["Hosted deployments run on PostgreSQL", "The cafeteria serves pancakes on Fridays"])
    assert cosine(query, related) > cosine(query, unrelated) + 0.1


async def test_a_batch_of_40_equals_embedding_each_document_alone(minilm: LocalEmbedder) -> None:
    texts = [f"Note {i}: " + "the cache is invalidated on write " * (i % 7 + 1) for i in range(40)]
    together = await minilm.embed_documents(texts)
    alone = [await minilm.embed_query(t) for t in texts]
    assert len(together) == 40
    for a, b in zip(together, alone, strict=True):
        assert max(abs(x - y) for x, y in zip(a, b, strict=True)) < 1e-5


async def test_queries_asked_at_once_are_embedded_together_and_equal_each_asked_alone(
        minilm: LocalEmbedder) -> None:
    queries = [f"where is note {i} about the {'cache ' * (i % 4)}kept?" for i in range(12)]
    alone = [await minilm.embed_query(q) for q in queries]
    together: dict[int, list[float]] = {}

    async def ask(i: int) -> None:
        together[i] = await minilm.embed_query(queries[i])

    async with anyio.create_task_group() as tg:
        for i in range(len(queries)):
            tg.start_soon(ask, i)
    for i, vector in enumerate(alone):
        assert max(abs(x - y) for x, y in zip(vector, together[i], strict=True)) < 1e-5


async def test_no_documents_give_no_vectors(minilm: LocalEmbedder) -> None:
    assert await minilm.embed_documents([]) == []


def test_the_onnx_runner_agrees_with_fastembed_on_the_same_folder(tmp_path: Path) -> None:
    from server.embeddings.runners import FastembedRunner, OnnxRunner

    folder = require_shared_model()
    long_text = "The migration adds a column and backfills it in batches. " * 60  # well past 256 tokens
    texts = ["What database do we use in production?", "short", long_text]
    direct = OnnxRunner(folder, threads=1, max_tokens=256).embed(texts)
    reference = FastembedRunner("sentence-transformers/all-MiniLM-L6-v2", cache_dir=str(tmp_path), threads=1,
                                max_tokens=256, specific_model_path=str(folder)).embed(texts)
    for a, b in zip(direct, reference, strict=True):
        assert max(abs(x - y) for x, y in zip(a, b, strict=True)) < 1e-4


async def test_a_model_that_cannot_be_downloaded_says_how_to_work_offline(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    embedder = LocalEmbedder("sentence-transformers/all-MiniLM-L6-v2", cache_dir=str(tmp_path / "empty-cache"))
    with anyio.fail_after(60), pytest.raises(EmbeddingUnavailable) as caught:
        await embedder.embed_query("anything")
    message = str(caught.value)
    assert "could not be downloaded" in message
    assert "STACKMEMORY_EMBEDDING_MODEL_PATH" in message and "STACKMEMORY_EMBEDDINGS=none" in message


def test_a_folder_without_a_model_is_refused_when_configured(tmp_path: Path) -> None:
    with pytest.raises(EmbeddingUnavailable, match="model.onnx"):
        LocalEmbedder(path=tmp_path)


@pytest.mark.parametrize(("folder", "config", "expected"), [
    ("bge-small-en-v1.5-onnx", {"_name_or_path": "/home/me/bge"}, "BAAI/bge-small-en-v1.5"),
    ("export", {"_name_or_path": "acme/support-embedder"}, "acme/support-embedder"),
    ("my-model", {}, "my-model"),
])
def test_a_folder_model_is_identified_by_well_known_name_then_config_then_folder(
        tmp_path: Path, folder: str, config: dict[str, str], expected: str) -> None:
    path = tmp_path / folder
    path.mkdir()
    (path / "config.json").write_text(json.dumps(config))
    assert model_identity(path) == expected


# --- the OpenAI provider against a local stand-in ---------------------------------------------------


def fake_vector(text: str, dim: int) -> list[float]:
    """A deterministic, deliberately unnormalised vector for a text."""
    digest = hashlib.sha256(text.encode()).digest()
    return [(digest[i % 32] - 127.5) / 64 for i in range(dim)]


@dataclass
class StandIn:
    """A local server speaking OpenAI's POST /v1/embeddings, with injectable failures."""

    url: str = ""
    dim: int = 8
    rate_limits: int = 0  # answer this many 429s before succeeding
    always_500: bool = False
    floats_only: bool = False  # like OpenAI-compatible servers that ignore encoding_format
    delay: float = 0.0
    requests: list[dict[str, Any]] = field(default_factory=list)

    def answer(self, body: dict[str, Any]) -> tuple[int, dict[str, str], dict[str, Any]]:
        self.requests.append(body)
        if self.rate_limits > 0:
            self.rate_limits -= 1
            return 429, {"Retry-After": "0"}, {"error": {"message": "Rate limit reached", "type": "requests"}}
        if self.always_500:
            return 500, {}, {"error": {"message": "The server had an error", "type": "server_error"}}
        inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
        as_base64 = body.get("encoding_format") == "base64" and not self.floats_only
        data = []
        for i, text in enumerate(inputs):
            vector = fake_vector(text, self.dim)
            encoded: Any = (base64.b64encode(struct.pack(f"<{self.dim}f", *vector)).decode()
                            if as_base64 else vector)
            data.append({"object": "embedding", "index": i, "embedding": encoded})
        usage = {"prompt_tokens": len(inputs), "total_tokens": len(inputs)}
        return 200, {}, {"object": "list", "data": data, "model": body["model"], "usage": usage}


@pytest.fixture
def stand_in() -> Iterator[StandIn]:
    state = StandIn()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            headers: dict[str, str] = {}
            if self.path != "/v1/embeddings" or not self.headers.get("Authorization", "").startswith("Bearer "):
                status, payload = 404, {"error": {"message": f"no route {self.path}"}}
            else:
                time.sleep(state.delay)
                status, headers, payload = state.answer(body)
            raw = json.dumps(payload).encode()
            self.send_response(status)
            for key, value in {"Content-Type": "application/json", **headers}.items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(raw)))
            self.end_headers()
            self.wfile.write(raw)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()


def remote(stand_in: StandIn, **kwargs: Any) -> OpenAIEmbedder:
    return OpenAIEmbedder("text-embedding-3-small", api_key="sk-test", base_url=stand_in.url, **kwargs)


async def test_300_inputs_go_out_in_batches_and_come_back_in_order(stand_in: StandIn) -> None:
    texts = [f"memory number {i}" for i in range(300)]
    embedder = remote(stand_in, batch_size=128)
    vectors = await embedder.embed_documents(texts)
    await embedder.close()
    assert [len(r["input"]) for r in stand_in.requests] == [128, 128, 44]
    assert {r["model"] for r in stand_in.requests} == {"text-embedding-3-small"}
    assert {r.get("encoding_format") for r in stand_in.requests} == {"base64"}  # the client's default
    for text, vector in zip(texts, vectors, strict=True):
        expected = fake_vector(text, 8)
        assert vector == pytest.approx([x / norm(expected) for x in expected], abs=1e-6)


async def test_two_rate_limits_then_success_still_returns_vectors(stand_in: StandIn) -> None:
    stand_in.rate_limits = 2
    embedder = remote(stand_in, max_retries=3)
    vector = await embedder.embed_query("retry me")
    await embedder.close()
    assert len(stand_in.requests) == 3
    assert norm(vector) == pytest.approx(1.0)


async def test_a_persistent_server_error_becomes_embedding_unavailable(stand_in: StandIn) -> None:
    stand_in.always_500 = True
    embedder = remote(stand_in, max_retries=1, timeout=5)
    with anyio.fail_after(30), pytest.raises(EmbeddingUnavailable) as caught:
        await embedder.embed_documents(["a", "b"])
    await embedder.close()
    assert len(stand_in.requests) == 2
    assert "HTTP 500" in str(caught.value) and "OPENAI_BASE_URL" in str(caught.value)


async def test_a_server_that_does_not_answer_in_time_becomes_embedding_unavailable(stand_in: StandIn) -> None:
    stand_in.delay = 2.0
    embedder = remote(stand_in, max_retries=0, timeout=0.3)
    with anyio.fail_after(30), pytest.raises(EmbeddingUnavailable, match="Timeout"):
        await embedder.embed_query("slow")
    await embedder.close()


async def test_a_compatible_server_answering_plain_floats_works(stand_in: StandIn) -> None:
    stand_in.floats_only = True
    embedder = remote(stand_in)
    vector = await embedder.embed_query("plain floats")
    await embedder.close()
    assert norm(vector) == pytest.approx(1.0)


async def test_openai_dimension_is_known_for_published_models_and_learned_for_others(stand_in: StandIn) -> None:
    assert await remote(stand_in).dimension() == 1536
    assert stand_in.requests == []
    other = OpenAIEmbedder("nomic-embed-text", base_url=stand_in.url)
    assert await other.dimension() == 8
    await other.close()


def test_openai_without_a_key_or_base_url_says_what_to_set() -> None:
    with pytest.raises(EmbeddingUnavailable, match="OPENAI_API_KEY.*OPENAI_BASE_URL"):
        OpenAIEmbedder()


# --- choosing an embedder from Settings ------------------------------------------------------------


def settings(tmp_path: Path, **env: str) -> Settings:
    return Settings.load(env=env, db=str(tmp_path / "memories.db"))


def test_embeddings_none_gives_no_embedder(tmp_path: Path) -> None:
    assert make_embedder(settings(tmp_path, STACKMEMORY_EMBEDDINGS="none")) is None


def test_local_with_a_model_path_gives_a_local_embedder_not_yet_loaded(tmp_path: Path) -> None:
    path = require_shared_model()
    embedder = make_embedder(settings(tmp_path, STACKMEMORY_EMBEDDINGS="local",
                                      STACKMEMORY_EMBEDDING_MODEL_PATH=str(path)))
    assert isinstance(embedder, LocalEmbedder)
    assert embedder.name == MINILM
    assert not embedder.loaded


def test_openai_with_a_base_url_gives_an_openai_embedder(tmp_path: Path) -> None:
    embedder = make_embedder(settings(tmp_path, STACKMEMORY_EMBEDDINGS="openai",
                                      OPENAI_BASE_URL="http://127.0.0.1:11434/v1"))
    assert isinstance(embedder, OpenAIEmbedder)
    assert embedder.name == "openai/text-embedding-3-small"


def test_importing_the_embeddings_package_loads_no_heavy_library() -> None:
    code = ("import sys, server.embeddings, server.embeddings.local, server.embeddings.openai; "
            "print(sorted(m for m in ('numpy', 'onnxruntime', 'openai', 'fastembed', 'tokenizers') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


class CountingRunner:
    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    def embed(self, texts: list[str]) -> list[list[float]]:
        self.calls.append(texts)
        return [[float(len(t)), 1.0] for t in texts]


async def test_concurrent_first_calls_load_the_model_once_and_keep_order(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    runner, loads = CountingRunner(), []
    embedder = LocalEmbedder("any/model", cache_dir=str(tmp_path), batch_size=2)

    def load() -> CountingRunner:
        loads.append(1)
        return runner

    monkeypatch.setattr(embedder, "_load", load)
    results: dict[int, list[list[float]]] = {}

    async def embed(i: int) -> None:
        results[i] = await embedder.embed_documents(["a" * (i + 1), "bb", "c" * 9])

    async with anyio.create_task_group() as tg:
        for i in range(4):
            tg.start_soon(embed, i)
    assert loads == [1]
    assert all(len(batch) <= 2 for batch in runner.calls)
    assert results[3] == [[4.0, 1.0], [2.0, 1.0], [9.0, 1.0]]


async def test_a_failed_load_is_not_retried_on_every_call(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    attempts: list[int] = []
    embedder = LocalEmbedder("any/model", cache_dir=str(tmp_path))

    def load() -> CountingRunner:
        attempts.append(1)
        raise EmbeddingUnavailable("the model could not be downloaded")

    monkeypatch.setattr(embedder, "_load", load)
    for _ in range(3):
        with pytest.raises(EmbeddingUnavailable, match="could not be downloaded"):
            await embedder.embed_query("x")
    assert attempts == [1]


class SlowRunner(CountingRunner):
    """Takes a while per run, so queries asked meanwhile pile up behind the one running."""

    def __init__(self, fail_on: str | None = None) -> None:
        super().__init__()
        self.fail_on = fail_on

    def embed(self, texts: list[str]) -> list[list[float]]:
        time.sleep(0.05)
        if self.fail_on in texts:
            raise RuntimeError("the model ran out of memory")
        return super().embed(texts)


def slow_embedder(tmp_path: Path, runner: CountingRunner, monkeypatch: pytest.MonkeyPatch,
                  batch_size: int = 32) -> LocalEmbedder:
    embedder = LocalEmbedder("any/model", cache_dir=str(tmp_path), batch_size=batch_size)
    monkeypatch.setattr(embedder, "_load", lambda: runner)
    return embedder


async def test_queries_that_arrive_while_one_is_embedded_share_the_next_run(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    runner = SlowRunner()
    embedder = slow_embedder(tmp_path, runner, monkeypatch, batch_size=8)
    await embedder.warm_up()
    got: dict[int, list[float]] = {}

    async def ask(i: int) -> None:
        got[i] = await embedder.embed_query("q" * (i + 1))

    async with anyio.create_task_group() as tg:
        for i in range(20):
            tg.start_soon(ask, i)
    assert got == {i: [float(i + 1), 1.0] for i in range(20)}  # each query gets its own vector
    sizes = [len(call) for call in runner.calls]
    assert sorted(t for call in runner.calls for t in call) == sorted("q" * (i + 1) for i in range(20))
    assert len(sizes) <= 4 and max(sizes) == 8, sizes  # 1, then batches of up to 8, not 20 runs


async def test_a_failed_run_fails_each_query_in_it_and_the_next_queries_still_run(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    embedder = slow_embedder(tmp_path, SlowRunner(fail_on="bad"), monkeypatch)
    await embedder.warm_up()
    outcome: dict[str, object] = {}

    async def ask(text: str) -> None:
        try:
            outcome[text] = await embedder.embed_query(text)
        except EmbeddingUnavailable as exc:
            outcome[text] = str(exc)

    async with anyio.create_task_group() as tg:
        for text in ("first", "bad", "other"):
            tg.start_soon(ask, text)
            await anyio.sleep(0.01)  # "bad" and "other" wait behind "first" and run together
    assert outcome["first"] == [5.0, 1.0]
    assert "ran out of memory" in str(outcome["bad"]) and "ran out of memory" in str(outcome["other"])
    assert await embedder.embed_query("after") == [5.0, 1.0]


async def test_a_search_cancelled_while_its_run_waits_for_the_model_leaves_the_queries_behind_it_answered(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    runner = SlowRunner()
    embedder = LocalEmbedder("any/model", cache_dir=str(tmp_path))

    def slow_load() -> CountingRunner:
        time.sleep(0.1)
        return runner

    monkeypatch.setattr(embedder, "_load", slow_load)
    got: dict[str, list[float]] = {}

    async def ask(text: str, scope: anyio.CancelScope | None = None) -> None:
        with scope or anyio.CancelScope():
            got[text] = await embedder.embed_query(text)

    cancelled = anyio.CancelScope()
    async with anyio.create_task_group() as tg:
        tg.start_soon(ask, "x", cancelled)  # takes the lane and waits for the model to load
        await anyio.sleep(0.01)
        tg.start_soon(ask, "yy")  # queued behind it, so in its batch
        tg.start_soon(ask, "zzz")
        await anyio.sleep(0.02)
        cancelled.cancel()  # the search that held the lane goes away mid-load, with the others' queries
    assert got == {"yy": [2.0, 1.0], "zzz": [3.0, 1.0]}
    assert [sorted(call) for call in runner.calls] == [["yy", "zzz"]]  # not "x": its search is gone
