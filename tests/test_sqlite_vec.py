"""SQLite vector search: the in-process index (sign bits, then an exact re-score) by default, sqlite-vec's
exact scan on request; the same answers from both while the searched vectors fit the re-score, and nearly
the same beyond."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, get_args

import pytest

from server.accounts import LOCAL_ACCESS, LOCAL_NEW, LOCAL_SCOPE
from server.app import Runtime
from server.config import Settings
from server.errors import ConfigError
from server.ids import new_id
from server.models import Kind, MemoryFilter, MemoryPatch, NewMemory, ScoredMemory
from server.storage import vectors
from server.storage.sqlite import SQLiteStore
from tests.conftest import unavailable

pytestmark = pytest.mark.anyio

MODEL = "test/model"
NOW = datetime(2025, 6, 1, 12, tzinfo=UTC)
PROJECTS = ("alpha", "beta", "gamma")
TAGS = ("red", "green", "blue")
KINDS = get_args(Kind)
LIMITS = (1, 3, 10, 25, 60)
Vectorizer = Callable[[random.Random], list[float]]


def gaussian(dim: int) -> Vectorizer:
    """Random unit vectors: realistic scores, where only float rounding differs between the indexes."""

    def make(rng: random.Random) -> list[float]:
        v = [rng.gauss(0, 1) for _ in range(dim)]
        norm = sum(x * x for x in v) ** 0.5
        return [x / norm for x in v]

    return make


def exact(rng: random.Random) -> list[float]:
    """Unit vectors of 16 values in {0, ±0.25, ±0.5, ±1}: every dot product is exact in float32, so both
    indexes compute identical scores, and scores take few values, so most results are ties."""
    layout = rng.choice([(16, 0, 0), (0, 4, 0), (0, 0, 1), (4, 3, 0), (8, 2, 0)])  # count of .25s, .5s, 1s
    v = [0.0] * 16
    slots = rng.sample(range(16), sum(layout))
    values = [0.25] * layout[0] + [0.5] * layout[1] + [1.0] * layout[2]
    for slot, value in zip(slots, values, strict=True):
        v[slot] = value * rng.choice((1, -1))
    return v


def can_load_sqlite_vec() -> None:
    problem = vectors.sqlite_vec_problem()
    if problem is not None:
        unavailable(f"comparing sqlite-vec with the in-process index needs sqlite-vec: {problem}")


async def opened(path: Path, index: str) -> SQLiteStore:
    store = SQLiteStore(str(path), vector_index=index)
    await store.open()
    return store


async def populate(store: SQLiteStore, other: SQLiteStore, rng: random.Random, vector: Vectorizer) -> set[str]:
    """A few hundred memories across projects, kinds, tags and times, some expired, some sharing a vector
    (exact ties), some without one; then deletions, content changes and re-embeddings after `other` has
    already loaded its in-process index, so it must follow them. Returns the ids that may match: live,
    unexpired, with a current vector of MODEL."""
    ids: list[str] = []
    for i in range(300):
        created = NOW - timedelta(hours=rng.randrange(2000))
        expires = rng.choice([None] * 8 + [NOW - timedelta(hours=1), NOW + timedelta(days=3)])
        new = NewMemory(id=new_id(), content=f"memory {i}", content_hash=f"h{i}", kind=rng.choice(KINDS),
                        tags=rng.sample(TAGS, rng.randrange(len(TAGS) + 1)), project=rng.choice(PROJECTS),
                        importance=5, metadata={}, author="tester", created_at=created, expires_at=expires, **LOCAL_NEW)
        ids.append((await store.add_memory(new))[0].id)
    made: list[list[float]] = []
    items = []
    for memory_id in ids[:280]:  # the last 20 are never embedded
        v = rng.choice(made) if made and rng.random() < 0.1 else vector(rng)
        made.append(v)
        items.append((memory_id, v))
    items.append((ids[280], [0.0] * len(made[0])))  # a vector with no direction
    await store.put_vectors(MODEL, items)
    await store.put_vectors("other/model", [(i, [1.0, 0.0]) for i in ids[281:285]])
    await other.search_vector(vector(rng), MODEL, MemoryFilter(now=NOW, **LOCAL_SCOPE), 10)
    deleted = rng.sample(ids[:280], 25)
    for memory_id in deleted:
        await store.delete_memory(memory_id, NOW, LOCAL_ACCESS)
    changed = rng.sample(sorted(set(ids[:280]) - set(deleted)), 20)
    for n, memory_id in enumerate(changed):
        await store.update_memory(memory_id, MemoryPatch(content=f"changed {n}", content_hash=f"c{n}"), None, NOW, LOCAL_ACCESS)
    await store.put_vectors(MODEL, [(i, vector(rng)) for i in changed[:10]])  # half embedded again
    await store.put_vectors(MODEL, [(deleted[0], vector(rng))])  # a late write for a deleted one is dropped
    expired = {i for i in ids if (m := await store.get_memory(i, LOCAL_ACCESS)) and m.expires_at and m.expires_at <= NOW}
    return set(ids[:281]) - set(deleted) - set(changed[10:]) - expired


def random_filter(rng: random.Random) -> MemoryFilter:
    since = NOW - timedelta(hours=rng.randrange(2000))
    return MemoryFilter(
        project=rng.choice([None, None, *PROJECTS]),
        kinds=rng.choice([None, None, rng.sample(KINDS, 1), rng.sample(KINDS, 3)]),
        tags=rng.choice([None, None, rng.sample(TAGS, 1), rng.sample(TAGS, 2)]),
        since=rng.choice([None, since]),
        until=rng.choice([None, since + timedelta(hours=rng.randrange(1, 1500))]),
        now=NOW, **LOCAL_SCOPE,
    )


@pytest.fixture
async def both(tmp_path: Path) -> AsyncIterator[tuple[SQLiteStore, SQLiteStore]]:
    """One database file, searched through sqlite-vec and through the in-process index."""
    can_load_sqlite_vec()
    with_vec = await opened(tmp_path / "memories.db", "sqlite-vec")
    in_memory = await opened(tmp_path / "memories.db", "memory")
    try:
        yield with_vec, in_memory
    finally:
        await with_vec.close()
        await in_memory.close()


def assert_same_ranking(a: Sequence[ScoredMemory], b: Sequence[ScoredMemory], limit: int, tol: float) -> None:
    """Same ids in the same order and scores within tol; only scores within tol of each other may trade
    places (float rounding differs between the two computations), and only at the cut-off may such a
    group hold different members."""
    assert len(a) == len(b)
    assert all(abs(x.score - y.score) <= tol for x, y in zip(a, b, strict=True))
    start = 0
    while start < len(a):
        end = start + 1
        while end < len(a) and a[end - 1].score - a[end].score <= tol:
            end += 1
        if end < len(a) or len(a) < limit:
            assert {h.id for h in a[start:end]} == {h.id for h in b[start:end]}
        start = end
    assert all(x.memory == y.memory for x, y in zip(a, b, strict=True) if x.id == y.id)


async def compare(both: tuple[SQLiteStore, SQLiteStore], vector: Vectorizer, seed: int, tol: float) -> int:
    """Many random queries, filters and limits through both indexes; returns how many had results."""
    with_vec, in_memory = both
    rng = random.Random(seed)
    await populate(with_vec, in_memory, rng, vector)
    answered = 0
    for _ in range(300):
        query, where, limit = vector(rng), random_filter(rng), rng.choice(LIMITS)
        a = await with_vec.search_vector(query, MODEL, where, limit)
        b = await in_memory.search_vector(query, MODEL, where, limit)
        if tol:
            assert_same_ranking(a, b, limit, tol)
        else:
            assert [(h.id, h.score) for h in a] == [(h.id, h.score) for h in b]
        answered += bool(a)
    return answered


async def test_sqlite_vec_and_the_in_process_index_rank_random_vectors_alike(
        both: tuple[SQLiteStore, SQLiteStore]) -> None:
    assert await compare(both, gaussian(32), seed=7, tol=1e-5) > 150


async def test_sqlite_vec_and_the_in_process_index_break_ties_alike(both: tuple[SQLiteStore, SQLiteStore]) -> None:
    assert await compare(both, exact, seed=11, tol=0.0) > 150


async def test_both_indexes_skip_what_must_not_match_and_order_ties_newest_first(
        both: tuple[SQLiteStore, SQLiteStore]) -> None:
    with_vec, in_memory = both
    rng = random.Random(3)
    may_match = await populate(with_vec, in_memory, rng, exact)
    for store in both:
        found = await store.search_vector([0.0] * 16, MODEL, MemoryFilter(now=NOW, **LOCAL_SCOPE), 500)
        assert [h.id for h in found] == sorted(may_match, reverse=True)  # no direction: every score is 0
        assert {h.score for h in found} == {0.0}


async def test_sqlite_vec_searches_in_sql_without_an_in_process_index(both: tuple[SQLiteStore, SQLiteStore]) -> None:
    with_vec, in_memory = both
    await populate(with_vec, in_memory, random.Random(5), gaussian(8))
    assert await with_vec.search_vector(gaussian(8)(random.Random(1)), MODEL, MemoryFilter(now=NOW, **LOCAL_SCOPE), 5)
    assert with_vec._index is None
    assert (await with_vec.stats(NOW, LOCAL_ACCESS)).vector_index == "sqlite-vec"
    assert (await in_memory.stats(NOW, LOCAL_ACCESS)).vector_index == "memory"


# ---- choosing the index ---------------------------------------------------------------------------------


async def test_auto_uses_the_in_process_index_on_every_python(tmp_path: Path) -> None:
    store = await opened(tmp_path / "m.db", "auto")
    try:
        assert store.vector_index == "memory"
        assert (await store.stats(NOW, LOCAL_ACCESS)).vector_index == "memory"
    finally:
        await store.close()


async def test_forcing_sqlite_vec_where_sqlite3_cannot_load_extensions_says_what_to_do(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(vectors, "CAN_LOAD_EXTENSIONS", False)  # what such a Python reports
    with pytest.raises(ConfigError) as err:
        await opened(tmp_path / "m.db", "sqlite-vec")
    message = str(err.value)
    assert "cannot load extensions" in message and "Python whose sqlite3 can load extensions" in message
    assert "STACKMEMORY_VECTOR_INDEX=auto" in message
    store = await opened(tmp_path / "m.db", "auto")
    try:
        assert store.vector_index == "memory"
    finally:
        await store.close()


async def test_an_extension_that_fails_to_load_is_refused_by_name(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if not vectors.CAN_LOAD_EXTENSIONS:
        unavailable("loading a broken extension needs a Python whose sqlite3 can load extensions")
    missing = tmp_path / "missing" / "vec0"
    monkeypatch.setattr(vectors, "sqlite_vec_path", lambda: str(missing))
    with pytest.raises(ConfigError, match="STACKMEMORY_VECTOR_INDEX=sqlite-vec, but SQLite could not load") as err:
        await opened(tmp_path / "m.db", "sqlite-vec")
    assert str(missing) in str(err.value)


# ---- the in-process index beyond its exact range ----------------------------------------------------------


def clustered(dim: int, centres: int, spread: float, rng: random.Random) -> Vectorizer:
    """Unit vectors around a few topic centres, as text embeddings lie, rather than uniform noise."""
    tops = [gaussian(dim)(rng) for _ in range(centres)]

    def make(r: random.Random) -> list[float]:
        c = r.choice(tops)
        v = [x + spread * r.gauss(0, 1) / dim ** 0.5 for x in c]
        norm = sum(x * x for x in v) ** 0.5
        return [x / norm for x in v]

    return make


def exact_top(query: list[float], vectors_by_id: dict[str, list[float]], k: int) -> list[tuple[str, float]]:
    scored = [(sum(a * b for a, b in zip(query, v, strict=True)), i) for i, v in vectors_by_id.items()]
    scored.sort(key=lambda pair: (-pair[0], [-ord(ch) for ch in pair[1]]))
    return [(i, s) for s, i in scored[:k]]


def test_the_in_process_index_counts_distances_past_255_bits_at_1536_dimensions() -> None:
    """OpenAI's text-embedding-3-small has 1536 dimensions: two unrelated vectors differ in about 768 sign
    bits. The index's distances must not wrap at 255 (as an 8-bit count would: 768 would rank as 0, above
    every true neighbour): the exact top 10 are among its candidates, with and without a filter."""
    rng = random.Random(31)
    make = clustered(1536, 8, 0.6, rng)
    index = vectors.VectorIndex(1536, "g")
    vecs = {f"m{i}": make(rng) for i in range(1000)}
    seq_of = {memory_id: seq for seq, memory_id in enumerate(vecs, start=1)}
    index.add((seq_of[memory_id], memory_id, vectors.to_blob(v)) for memory_id, v in vecs.items())
    half = set(list(vecs)[::2])
    for _ in range(10):
        query = make(rng)
        for allowed in (None, half):
            pool = vecs if allowed is None else {i: vecs[i] for i in allowed}
            truth = {seq_of[i] for i, _ in exact_top(query, pool, 10)}
            got = index.candidates(query, 10, allowed)
            assert len(got) == vectors.RERANK < len(pool)
            assert truth <= set(got)


async def test_beyond_the_re_score_the_in_process_index_finds_nearly_every_exact_neighbour(tmp_path: Path) -> None:
    """1,500 vectors, more than the 400 candidates re-scored for a page of 10: the index really does cut,
    every score it returns is the exact cosine, and against a brute-force oracle it finds >= 90% of the
    true top 10, with and without a filter; deleted memories never come back and leave the index."""
    rng = random.Random(23)
    store = await opened(tmp_path / "m.db", "memory")
    try:
        make = clustered(64, 40, 0.6, rng)
        ids, vecs, project = [], {}, {}
        for i in range(1500):
            new = NewMemory(id=new_id(), content=f"memory {i}", content_hash=f"h{i}", kind="fact", tags=[],
                            project=PROJECTS[i % 3], importance=5, metadata={}, author="tester", created_at=NOW,
                            expires_at=None, **LOCAL_NEW)
            ids.append((await store.add_memory(new))[0].id)
            vecs[ids[-1]] = make(rng)
            project[ids[-1]] = PROJECTS[i % 3]
        await store.put_vectors(MODEL, list(vecs.items()))
        everything = MemoryFilter(now=NOW, **LOCAL_SCOPE)
        alpha = MemoryFilter(project="alpha", now=NOW, **LOCAL_SCOPE)
        found = wanted = 0
        for n in range(40):
            query = make(rng)
            where, pool = (alpha, {i: v for i, v in vecs.items() if project[i] == "alpha"}) if n % 2 else (everything, vecs)
            got = await store.search_vector(query, MODEL, where, 10)
            assert len(got) == 10
            truth = dict(exact_top(query, pool, 10))
            for hit in got:
                exact_score = sum(a * b for a, b in zip(query, vecs[hit.id], strict=True))
                assert abs(hit.score - exact_score) < 1e-5
                assert n % 2 == 0 or project[hit.id] == "alpha"
            assert [h.score for h in got] == sorted((h.score for h in got), reverse=True)
            found += len(truth.keys() & {h.id for h in got})
            wanted += 10
        assert store._index is not None and len(store._index) == 1500
        assert len(store._index.candidates(make(rng), 10)) == vectors.RERANK < len(store._index)
        assert found / wanted >= 0.9, f"recall@10 against the exact scan: {found / wanted:.3f}"

        query = make(rng)
        nearest = [i for i, _ in exact_top(query, vecs, 5)]
        for memory_id in nearest:
            await store.delete_memory(memory_id, NOW, LOCAL_ACCESS)
        got = await store.search_vector(query, MODEL, everything, 10)
        assert len(got) == 10 and not {h.id for h in got} & set(nearest)
        assert len(store._index) == 1500 - 5  # their rows were found gone and dropped
    finally:
        await store.close()


def test_the_vector_index_setting_defaults_to_auto_and_refuses_unknown_values() -> None:
    assert Settings.load(env={}, db="x.db").vector_index == "auto"
    assert Settings.load(env={"STACKMEMORY_VECTOR_INDEX": "memory"}, db="x.db").vector_index == "memory"
    with pytest.raises(ConfigError, match="STACKMEMORY_VECTOR_INDEX='faiss' is not one of auto, sqlite-vec"):
        Settings.load(env={"STACKMEMORY_VECTOR_INDEX": "faiss"}, db="x.db")


async def test_the_setting_reaches_the_store(tmp_path: Path, settings_for: Any) -> None:
    runtime = Runtime(settings_for(str(tmp_path / "m.db"), STACKMEMORY_VECTOR_INDEX="memory"))
    async with runtime.session() as svc:
        assert (await svc.storage.stats(NOW, LOCAL_ACCESS)).vector_index == "memory"


async def test_candidates_are_looked_up_by_id_not_by_walking_the_workspace(tmp_path: Path) -> None:
    """memories_in must loop over the candidate ids: the planner's own choice, walking every memory of
    the workspace and scanning the id list for each, took 1.5 s per search at 100,000 memories."""
    import sqlite3

    from server.storage.sqlite import Q

    store = await opened(tmp_path / "m.db", "memory")
    await store.close()
    db = sqlite3.connect(tmp_path / "m.db")
    try:
        db.execute("ANALYZE")
        params = {"ids": '["a"]', "model": MODEL, "user_id": "u", "workspaces": '["w"]', "project": None,
                  "kinds": None, "tags": None, "since": None, "until": None, "now": "2025-01-01"}
        for name in ("memories_in", "live_contents"):
            sql = Q[name]
            plan = [row[3] for row in db.execute("EXPLAIN QUERY PLAN " + sql,
                                                  {k: v for k, v in params.items() if f":{k}" in sql})]
            assert plan[0].startswith("SCAN j"), (name, plan)
            assert not any("memories_workspace_id" in step for step in plan), (name, plan)
        sql = Q["written_in_a_row"]  # one step back along the candidate's project, for each candidate
        plan = [row[3] for row in db.execute("EXPLAIN QUERY PLAN " + sql, {"ids": '["a"]', "days": 0.02})]
        assert plan[0].startswith("SCAN j"), plan
        assert any("memories_project_id (project=? AND id<?)" in step for step in plan), plan
        assert not any("TEMP B-TREE" in step for step in plan), plan
    finally:
        db.close()
