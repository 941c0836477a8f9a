"""Semantic and hybrid search, background embedding and model bookkeeping, on both backends."""

from __future__ import annotations

import hashlib
import math
import os
import re
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import pytest

from server.app import Runtime
from server.errors import ConfigError
from server.jobs import Worker
from server.service import MemoryService
from tests.conftest import ROOT, unavailable

pytestmark = pytest.mark.anyio

# A tiny "meaning" table, so the fake embedder places a few different words close together.
SYNONYMS = {"postgresql": "database", "postgres": "database", "db": "database", "sqlite": "database",
            "deploy": "release", "ship": "release", "shipping": "release", "cat": "pet", "dog": "pet"}


class FakeEmbedder:
    """Deterministic: hashed bag of (synonym-mapped) words, L2-normalised, 64 dimensions."""

    def __init__(self, name: str = "fake/bag-of-words") -> None:
        self._name = name
        self.calls = 0

    @property
    def name(self) -> str:
        return self._name

    async def dimension(self) -> int:
        return 64

    async def warm_up(self) -> None:
        return None

    async def embed_documents(self, texts: Sequence[str]) -> list[list[float]]:
        self.calls += 1
        return [self._one(t) for t in texts]

    async def embed_query(self, text: str) -> list[float]:
        self.calls += 1
        return self._one(text)

    async def close(self) -> None:
        return None

    @staticmethod
    def _one(text: str) -> list[float]:
        vector = [0.0] * 64
        for word in re.findall(r"\w+", text.lower()):
            word = SYNONYMS.get(word, word)
            vector[int(hashlib.md5(word.encode()).hexdigest(), 16) % 64] += 1.0
        norm = math.sqrt(sum(x * x for x in vector)) or 1.0
        return [x / norm for x in vector]


@pytest.fixture
async def semantic(db_target: str, settings_for: Any) -> AsyncIterator[tuple[MemoryService, Worker, FakeEmbedder]]:
    embedder = FakeEmbedder()
    runtime = Runtime(settings_for(db_target), embedder, worker=False)
    async with runtime.session() as svc:
        assert svc.jobs is not None
        yield svc, Worker(svc.jobs, {"embed": svc.embed_jobs}), embedder


async def test_semantic_search_finds_meaning_once_memories_are_embedded(semantic: Any) -> None:
    svc, worker, _ = semantic
    target = await svc.store("Hosted deployments run on PostgreSQL")
    await svc.store("The office cat is called Miso")
    before = await svc.search("which db", mode="semantic")
    assert before.results == [] and "waiting to be embedded" in (before.note or "")
    assert (await svc.status()).pending_jobs == 2
    assert await worker.run_once() == 2
    after = await svc.search("which db", mode="semantic")
    assert after.mode == "semantic" and after.note is None
    assert after.results[0].id == target.id and "similar in meaning" in after.results[0].reason
    status = await svc.status()
    assert (status.pending_jobs, status.embedding_model, status.semantic_search) == (0, "fake/bag-of-words", "on")


async def test_hybrid_is_the_default_and_fuses_words_and_meaning(semantic: Any) -> None:
    svc, worker, _ = semantic
    words = await svc.store("Release checklist: run the smoke tests")
    meaning = await svc.store("We ship on Thursdays")
    await svc.store("Lunch is at noon")
    await worker.run_once()
    result = await svc.search("release day")
    assert result.mode == "hybrid"
    ids = [h.id for h in result.results]
    assert set(ids[:2]) == {words.id, meaning.id}
    keyword_only = await svc.search("release day", mode="keyword")
    assert [h.id for h in keyword_only.results] == [words.id]


async def test_a_storage_failure_in_either_half_of_hybrid_search_is_reported_as_itself(
        semantic: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """The two halves run side by side in a task group; its failure must reach the tool as the storage
    error (a clear message), not as an ExceptionGroup."""
    from server.errors import StorageUnavailable

    svc, worker, _ = semantic
    await svc.store("Release checklist: run the smoke tests")
    await worker.run_once()

    async def broken(*args: Any, **kwargs: Any) -> Any:
        raise StorageUnavailable("the database is away; retry")

    for half in ("search_vector", "search_keyword"):
        with monkeypatch.context() as patch:
            patch.setattr(svc.storage, half, broken)
            with pytest.raises(StorageUnavailable, match="the database is away"):
                await svc.search("release checklist")
    assert (await svc.search("release checklist")).results


async def test_semantic_search_honours_filters(semantic: Any) -> None:
    svc, worker, _ = semantic
    for i in range(60):
        await svc.store(f"database note number {i}", project="noisy")
    quiet = await svc.store("postgres setting for the quiet project", project="quiet", kind="decision")
    await worker.run_once()
    result = await svc.search("database", mode="semantic", project="quiet")
    assert [h.id for h in result.results] == [quiet.id]
    assert (await svc.search("database", mode="semantic", kinds=["decision"])).results[0].id == quiet.id


async def test_hybrid_search_lifts_the_memory_written_right_after_a_match(semantic: Any) -> None:
    """The answer to a question often shares no word with it; written right after the memory that does,
    it is lifted. Its twin, written later and apart, has the same words and so the same own score."""
    svc, worker, _ = semantic
    match = await svc.store("We ran the database migration on staging")
    answer = await svc.store("It went fine, no downtime")
    for filler in ("Lunch is at noon", "The office cat is called Miso", "Parking is behind the building"):
        await svc.store(filler)
    twin = await svc.store("It went fine, no downtime!")
    await worker.run_once()
    result = await svc.search("database migration on staging")
    assert result.mode == "hybrid"
    ids = [h.id for h in result.results]
    assert ids[:2] == [match.id, answer.id] and ids.index(twin.id) > 1
    assert "written next to a match (+0.30)" in result.results[1].reason
    assert "written next to" not in result.results[ids.index(twin.id)].reason
    semantic_only = await svc.search("database migration on staging", mode="semantic")
    assert all("written next to" not in h.reason for h in semantic_only.results)


async def test_memories_count_as_written_in_a_row_only_in_one_project_author_and_half_hour(
        semantic: Any) -> None:
    from server.accounts import Accounts
    from server.ids import new_id
    from server.models import NewMemory
    from server.rules import content_hash
    from server.semantic import NEIGHBOUR_WITHIN

    svc, _, _ = semantic
    a = await svc.store("first")
    b = await svc.store("second")
    await svc.store("elsewhere", project="other")  # another project does not come between
    gone = await svc.store("deleted later")
    c = await svc.store("third")
    await svc.delete(gone.id)  # a deleted memory does not come between either
    pairs = svc.storage.written_in_a_row
    assert set(await pairs([a.id, b.id, c.id], NEIGHBOUR_WITHIN)) == {(a.id, b.id), (b.id, c.id)}
    assert await pairs([a.id, c.id], NEIGHBOUR_WITHIN) == []  # b, between them, is not a candidate
    template = await svc.get(c.id)
    accounts = Accounts(svc.accounts)
    bob = await accounts.create_user("bob")
    crew = await accounts.create_workspace("crew", template.created_by)  # bob may write into it
    await accounts.add_member("crew", bob.id)

    def written(content: str, by: str, minutes_after_c: float) -> NewMemory:
        return NewMemory(id=new_id(), content=content, content_hash=content_hash(content), kind="note", tags=[],
                         project=template.project, importance=template.importance, metadata={}, author=by,
                         created_at=template.created_at + timedelta(minutes=minutes_after_c), expires_at=None,
                         workspace_id=crew.workspace_id, visibility="team", created_by=by, updated_by=by)

    later = [written("bob's", bob.id, 1), written("mine, after bob's", template.created_by, 2),
             written("mine, 31 minutes on", template.created_by, 33), written("mine, 29 more", template.created_by, 62)]
    for memory in later:
        await svc.storage.add_memories([memory])
    ids = [c.id, *(m.id for m in later)]
    # c and bob's: other workspaces; bob's and mine: other authors; then 31 minutes apart; then 29
    assert await pairs(ids, NEIGHBOUR_WITHIN) == [(later[2].id, later[3].id)]


def test_a_run_of_neighbours_cannot_lift_itself() -> None:
    """Each memory gets a share of its neighbours' own scores, not of what they were lifted by."""
    from server.ids import new_id
    from server.models import Memory, ScoredMemory
    from server.semantic import NEIGHBOUR_WEIGHT, fuse

    def scored(score: float) -> ScoredMemory:
        now = datetime.now(UTC)
        memory = Memory(id=new_id(), content=f"scored {score}", kind="note", project="p", importance=5,
                        author="me", created_at=now, updated_at=now, version=1)
        return ScoredMemory(memory.id, score, lambda: memory)

    top, middle, end, other = scored(1.0), scored(0.0), scored(0.0), scored(0.5)
    ranked = [top, other, middle, end]  # the same in both rankings: fused own scores are 1, 0.5, 0, 0
    fused = fuse(ranked, ranked, 4, [(top.id, middle.id), (middle.id, end.id)])
    by_id = {f.memory.id: f for f in fused}
    assert by_id[middle.id].score == pytest.approx(NEIGHBOUR_WEIGHT) and by_id[middle.id].neighbour > 0
    assert by_id[end.id].score == 0.0 and by_id[end.id].neighbour == 0.0
    assert by_id[top.id].score == 1.0 and by_id[other.id].score == pytest.approx(0.5)


async def test_changed_or_deleted_memories_never_match_by_stale_meaning(semantic: Any) -> None:
    svc, worker, _ = semantic
    m = await svc.store("the cat sleeps all day")
    gone = await svc.store("the dog barks at night")
    await worker.run_once()
    await svc.update(m.id, content="quarterly revenue report")
    await svc.delete(gone.id)
    assert (await svc.search("pet", mode="semantic")).results == []
    await worker.run_once()
    assert [h.id for h in (await svc.search("revenue", mode="semantic")).results] == [m.id]


async def test_repeated_queries_are_embedded_once(semantic: Any) -> None:
    svc, worker, embedder = semantic
    await svc.store("something to find")
    await worker.run_once()
    calls = embedder.calls
    for _ in range(5):
        await svc.search("find something", mode="semantic")
    assert embedder.calls == calls + 1


async def test_without_an_embedder_search_falls_back_to_keyword_and_says_so(svc: MemoryService) -> None:
    await svc.store("keyword only memory")
    result = await svc.search("keyword", mode="semantic")
    assert result.mode == "keyword" and "STACKMEMORY_EMBEDDINGS=none" in (result.note or "")
    assert [h.content for h in result.results] == ["keyword only memory"]
    assert (await svc.status()).semantic_search.startswith("semantic search is off")


async def test_a_different_model_is_refused_until_reindexed(db_target: str, settings_for: Any) -> None:
    async with Runtime(settings_for(db_target), FakeEmbedder("fake/one"), worker=False).session() as svc:
        await svc.store("recorded with model one")
    with pytest.raises(ConfigError, match="embedded with fake/one.*stackmemory reindex"):
        async with Runtime(settings_for(db_target), FakeEmbedder("fake/two"), worker=False).session():
            pass


async def test_the_background_worker_embeds_new_memories_by_itself(db_target: str, settings_for: Any) -> None:

    async with Runtime(settings_for(db_target), FakeEmbedder()).session() as svc:
        m = await svc.store("the release train leaves on friday")
        with anyio.fail_after(10):
            while not (await svc.search("ship", mode="semantic")).results:
                await anyio.sleep(0.05)
        assert (await svc.search("ship", mode="semantic")).results[0].id == m.id


def shared_model() -> Path:
    path = Path(os.environ.get("STACKMEMORY_TEST_MODEL_PATH", ROOT.parent / "shared/models/all-MiniLM-L6-v2-onnx"))
    if not (path / "model.onnx").exists():
        unavailable(f"the real embedding model is not at {path} (set STACKMEMORY_TEST_MODEL_PATH)")
    return path


async def test_the_real_model_finds_a_paraphrase_with_no_shared_words(db_target: str, settings_for: Any) -> None:
    settings = settings_for(db_target, STACKMEMORY_EMBEDDINGS="local",
                            STACKMEMORY_EMBEDDING_MODEL_PATH=str(shared_model()))
    runtime = Runtime(settings, worker=False)
    async with runtime.session() as svc:
        target = await svc.store("Hosted deployments run on PostgreSQL")
        for text in ("The office cat is called Miso", "Lunch is served at noon on Fridays",
                     "Our logo is dark blue", "Bob prefers tabs over spaces"):
            await svc.store(text)
        assert svc.jobs is not None
        await Worker(svc.jobs, {"embed": svc.embed_jobs}).run_once()
        result = await svc.search("what database do we use in production?", mode="semantic")
        assert result.results[0].id == target.id
        assert (await svc.status()).embedding_model == "local/sentence-transformers/all-MiniLM-L6-v2"


async def test_reindex_switches_the_database_to_a_new_model(db_target: str, settings_for: Any) -> None:
    async with Runtime(settings_for(db_target), FakeEmbedder("fake/one"), worker=False).session() as svc:
        m = await svc.store("the cat naps")
        await Worker(svc.jobs, {"embed": svc.embed_jobs}).run_once()
    async with Runtime(settings_for(db_target), FakeEmbedder("fake/two"), worker=False,
                       adopt_model=True).session() as svc:
        assert svc.semantic is not None and await svc.storage.count_unembedded("fake/two") == 1
        assert await svc.queue_unembedded() == 1
        await Worker(svc.jobs, {"embed": svc.embed_jobs}).run_once()
        assert [h.id for h in (await svc.search("pet", mode="semantic")).results] == [m.id]
        assert (await svc.status()).embedding_model == "fake/two"


def test_the_reindex_command_embeds_every_memory_with_the_real_model(tmp_path: Path) -> None:
    import json
    import subprocess

    from tests.conftest import PYTHON, server_env

    db = str(tmp_path / "reindex.db")
    for text in ("Hosted deployments run on PostgreSQL", "The office cat is called Miso"):
        subprocess.run([PYTHON, "-m", "server", "store", text], env=server_env(db), check=True,
                       capture_output=True, timeout=60)
    env = server_env(db, STACKMEMORY_EMBEDDINGS="local", STACKMEMORY_EMBEDDING_MODEL_PATH=str(shared_model()))
    done = subprocess.run([PYTHON, "-m", "server", "reindex"], check=False, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "2 of 2 memories embedded" in done.stderr
    found = subprocess.run([PYTHON, "-m", "server", "search", "which database runs in production", "--mode",
                            "semantic", "--json"], check=False, env=env, capture_output=True, text=True, timeout=120)
    result = json.loads(found.stdout)
    assert result["mode"] == "semantic"
    assert result["results"][0]["content"] == "Hosted deployments run on PostgreSQL"


async def test_postgres_servers_share_cached_query_embeddings(pg_url: str, settings_for: Any) -> None:
    first, second = FakeEmbedder(), FakeEmbedder()
    async with Runtime(settings_for(pg_url), first, worker=False).session() as svc:
        await svc.search("where is the staging database", mode="semantic")
        assert first.calls == 1
    async with Runtime(settings_for(pg_url), second, worker=False).session() as svc:
        await svc.search("where  is the staging database", mode="semantic")
        assert second.calls == 0  # answered by the UNLOGGED cache the first server filled


async def test_default_searches_do_not_wait_while_the_model_loads(db_target: str, settings_for: Any) -> None:

    class SlowToLoad(FakeEmbedder):
        def __init__(self) -> None:
            super().__init__()
            self.release = anyio.Event()

        async def warm_up(self) -> None:
            await self.release.wait()

    embedder = SlowToLoad()
    async with Runtime(settings_for(db_target), embedder).session() as svc:
        await svc.store("deploy notes for friday")
        with anyio.fail_after(5):
            while svc.semantic is None or not svc.semantic.warming:
                await anyio.sleep(0.01)
            result = await svc.search("deploy")
        assert result.mode == "keyword" and "still loading" in (result.note or "")
        embedder.release.set()
        with anyio.fail_after(5):
            while (await svc.search("deploy")).mode != "hybrid":
                await anyio.sleep(0.02)


async def test_default_searches_do_not_retry_a_model_that_failed_to_load(db_target: str, settings_for: Any) -> None:
    class Broken(FakeEmbedder):
        last_failure = "the model could not be downloaded (no network)"

        async def embed_query(self, text: str) -> list[float]:
            raise AssertionError("a default search must not wait for a reload")

    async with Runtime(settings_for(db_target), Broken(), worker=False).session() as svc:
        await svc.store("deploy notes")
        result = await svc.search("deploy")
        assert result.mode == "keyword" and "could not be downloaded" in (result.note or "")
        assert [h.content for h in result.results] == ["deploy notes"]
        # memory_status says so too, not "on" (it did, while every search ran keyword)
        assert (await svc.status()).semantic_search == "unavailable: the model could not be downloaded (no network)"


async def test_embedding_jobs_wait_for_a_model_that_cannot_load_instead_of_using_up_their_retries(
        db_target: str, settings_for: Any) -> None:
    """Offline, or with no writable model cache, every embedding job was retried within seconds and dead-lettered
    in about 20 s, with a warning per job per attempt. Now the batch is postponed until the model may be
    tried again (one warning), and nothing is marked failed."""
    from server.errors import EmbeddingUnavailable
    from server.service import EMBED

    class CannotLoad(FakeEmbedder):
        last_failure = None

        def retry_in(self) -> float:
            return 300.0 if self.last_failure else 0.0

        async def embed_documents(self, texts: Sequence[str]) -> list[list[float]]:
            self.calls += 1
            self.last_failure = "the model could not be downloaded (no network)"  # type: ignore[assignment]
            raise EmbeddingUnavailable(self.last_failure)

    embedder = CannotLoad()
    async with Runtime(settings_for(db_target), embedder).session() as svc:
        assert svc.jobs is not None
        for text in ("deploy notes", "the database is postgres", "lunch at noon"):
            await svc.store(text)
        with anyio.fail_after(10):
            while embedder.calls == 0:
                await anyio.sleep(0.05)
        await anyio.sleep(4)  # the old backoff retried after 1-2 s, then 2-4 s
        counts = await svc.jobs.counts(EMBED)
        assert embedder.calls == 1 and counts.failed == 0 and counts.pending + counts.running == 3, (
            embedder.calls, counts)
        assert (await svc.search("deploy")).mode == "keyword"


async def test_the_in_process_vector_index_is_loaded_at_start_up_not_by_the_first_search(
        tmp_path: Path, settings_for: Any) -> None:
    """On SQLite the in-process index reads every vector once (0.8 s at 100,000): the server does it while
    the model warms up, so the first search does not pay for it."""
    from server.storage.sqlite import SQLiteStore

    db = str(tmp_path / "warm.db")
    async with Runtime(settings_for(db), FakeEmbedder(), worker=False).session() as svc:
        assert svc.jobs is not None
        for text in ("deploy on fridays", "the database is postgres", "lunch at noon"):
            await svc.store(text)
        await Worker(svc.jobs, {"embed": svc.embed_jobs}).run_once()
    async with Runtime(settings_for(db), FakeEmbedder()).session() as svc:
        store = svc.storage
        assert isinstance(store, SQLiteStore) and store.vector_index == "memory"
        with anyio.fail_after(10):
            while store._index is None or len(store._index) < 3:
                await anyio.sleep(0.02)
        assert len(store._index) == 3
        assert (await svc.search("database", mode="semantic")).results
