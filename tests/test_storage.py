"""The storage contract, written once and run against SQLite and a real PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from server.accounts import LOCAL, LOCAL_ACCESS
from server.errors import Conflict, InvalidInput, NotFound, StorageUnavailable
from server.models import Memory, MemoryInput
from server.service import MemoryService

pytestmark = pytest.mark.anyio


async def count(svc: MemoryService) -> int:
    return (await svc.status()).memories


async def test_a_stored_memory_comes_back_with_every_field(svc: MemoryService) -> None:
    result = await svc.store("We deploy with Railway", "decision", ["deploy", "infra"], None, 8,
                             {"pr": 42, "nested": {"ok": True}})
    m = result
    assert result.created is True
    assert (m.content, m.kind, m.tags, m.project, m.importance) == ("We deploy with Railway", "decision",
                                                                     ["deploy", "infra"], "demo", 8)
    assert m.metadata == {"pr": 42, "nested": {"ok": True}}
    assert m.author == "tester" and m.version == 1 and m.deleted_at is None
    assert m.created_at.tzinfo is not None and m.created_at == m.updated_at
    assert (await svc.get(m.id)).model_dump(include=set(Memory.model_fields)) == m.model_dump(exclude={"created", "message"})


async def test_ids_sort_in_creation_order(svc: MemoryService) -> None:
    ids = [(await svc.store(f"memory number {i}")).id for i in range(5)]
    assert ids == sorted(ids)


async def test_storing_the_same_content_again_returns_the_existing_memory(svc: MemoryService) -> None:
    first = await svc.store("Use  ruff for   linting", "preference")
    again = await svc.store("use ruff for linting\n", "note")
    assert again.created is False and again.id == first.id
    assert "already stored" in again.message
    other_project = await svc.store("Use ruff for linting", project="elsewhere")
    assert other_project.created is True
    assert await count(svc) == 2


async def test_unicode_and_emoji_survive_a_round_trip(svc: MemoryService) -> None:
    text = "Zürich café naïve 日本語 🚀 — “quotes” and 'apostrophes' \\ backslash"
    m = (await svc.store(text, tags=["ünï", "🚀"]))
    assert (await svc.get(m.id)).content == text
    assert (await svc.get(m.id)).tags == ["ünï", "🚀"]
    hits = await svc.search("café")
    assert [h.id for h in hits.results] == [m.id]


async def test_update_changes_fields_and_bumps_the_version(svc: MemoryService) -> None:
    m = (await svc.store("Cache TTL is 5 minutes", "fact", ["cache"]))
    updated = await svc.update(m.id, content="Cache TTL is 10 minutes", importance=9, tags=["cache", "perf"],
                               expected_version=1)
    assert (updated.content, updated.importance, updated.tags, updated.version) == (
        "Cache TTL is 10 minutes", 9, ["cache", "perf"], 2)
    assert updated.kind == "fact" and updated.updated_at > m.updated_at and updated.created_at == m.created_at
    assert [h.id for h in (await svc.search("10 minutes")).results][:1] == [m.id]


async def test_a_stale_expected_version_is_a_conflict_and_changes_nothing(svc: MemoryService) -> None:
    m = (await svc.store("Original text"))
    await svc.update(m.id, content="Second text", expected_version=1)
    with pytest.raises(Conflict, match="version 2, not 1"):
        await svc.update(m.id, content="Lost update", expected_version=1)
    current = await svc.get(m.id)
    assert (current.content, current.version) == ("Second text", 2)


async def test_updating_into_a_duplicate_of_another_memory_is_a_conflict(svc: MemoryService) -> None:
    a = (await svc.store("alpha fact"))
    await svc.store("beta fact")
    with pytest.raises(Conflict, match="already has this content"):
        await svc.update(a.id, content="Beta  FACT")
    assert (await svc.get(a.id)).content == "alpha fact"


async def test_delete_leaves_a_tombstone_and_hides_the_memory(svc: MemoryService, store: Any) -> None:
    m = (await svc.store("Temporary workaround for bug 12", "todo"))
    deleted = await svc.delete(m.id)
    assert deleted.deleted is True
    with pytest.raises(NotFound):
        await svc.get(m.id)
    tomb = await store.get_memory(m.id, LOCAL_ACCESS)
    assert tomb is not None and tomb.deleted_at is not None and tomb.version == 2
    assert (await svc.search("workaround")).results == []
    assert (await svc.list_memories()).memories == []
    with pytest.raises(NotFound):
        await svc.delete(m.id)
    with pytest.raises(NotFound):
        await svc.update(m.id, content="revive")
    again = await svc.store("Temporary workaround for bug 12", "todo")
    assert again.created is True and again.id != m.id
    stats = await svc.status()
    assert (stats.memories, stats.deleted) == (1, 1)


async def test_unknown_and_malformed_ids_are_clear_errors(svc: MemoryService) -> None:
    with pytest.raises(NotFound, match="no memory with id"):
        await svc.get("01936f2e-7c3a-7d4e-9b1a-2f3c4d5e6f70")
    for bad in ["", "42", "../etc/passwd", "01936f2e-7c3a-7d4e-9b1a", "'; DROP TABLE memories; --"]:
        with pytest.raises(InvalidInput, match="is not valid: expected a UUID"):
            await svc.get(bad)


async def test_list_pages_are_stable_and_complete(svc: MemoryService) -> None:
    ids = [(await svc.store(f"page item {i}")).id for i in range(25)]
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        page = await svc.list_memories(limit=10, cursor=cursor)
        seen += [m.id for m in page.memories]
        pages += 1
        if pages == 1:
            await svc.store("written while paging")  # newer than the cursor: must not shift later pages
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    assert pages == 3
    assert seen == sorted(ids, reverse=True)


async def test_list_filters_by_project_kind_and_tags(svc: MemoryService) -> None:
    await svc.store("a decision", "decision", ["x", "y"], "p1")
    await svc.store("a todo", "todo", ["x"], "p1")
    await svc.store("another decision", "decision", ["y"], "p2")
    assert [m.content for m in (await svc.list_memories(project="p1")).memories] == ["a todo", "a decision"]
    assert [m.content for m in (await svc.list_memories(kind="decision")).memories] == [
        "another decision", "a decision"]
    assert [m.content for m in (await svc.list_memories(tags=["x", "y"])).memories] == ["a decision"]


async def test_search_ranks_the_best_match_first_and_says_why(svc: MemoryService) -> None:
    best = (await svc.store("PostgreSQL connection pool size is 20 for the PostgreSQL primary"))
    await svc.store("The pool table in the office is broken")
    await svc.store("Unrelated note about lunch")
    result = await svc.search("postgresql pool size")
    assert result.mode == "keyword"
    assert result.results[0].id == best.id
    assert "postgresql" in result.results[0].reason and "pool" in result.results[0].reason
    assert result.results[0].score > result.results[1].score
    assert len(result.results) == 2


async def test_search_honours_every_filter(svc: MemoryService) -> None:
    old = (await svc.store("redis cache decision", "decision", ["cache"], "api"))
    await svc.store("redis cache note", "note", ["cache", "ops"], "api")
    await svc.store("redis cache elsewhere", "decision", ["cache"], "web")
    await svc.store("redis cache expiring", "fact", ["cache"], "api",
                    expires_at=datetime.now(UTC) + timedelta(milliseconds=300))
    ids = lambda r: {h.content for h in r.results}
    assert ids(await svc.search("redis", project="api", kinds=["decision"])) == {"redis cache decision"}
    assert ids(await svc.search("redis", tags=["cache", "ops"])) == {"redis cache note"}
    assert ids(await svc.search("redis", until=old.created_at + timedelta(microseconds=1))) == {
        "redis cache decision"}
    assert "redis cache decision" not in ids(await svc.search("redis", since=old.created_at
                                                              + timedelta(microseconds=1)))
    assert "redis cache expiring" in ids(await svc.search("redis"))
    import anyio

    await anyio.sleep(0.35)
    assert "redis cache expiring" not in ids(await svc.search("redis"))
    assert (await svc.status()).expired == 1


async def test_a_filtered_search_finds_matches_ranked_below_many_others(svc: MemoryService) -> None:
    for i in range(80):
        await svc.store(f"alpha alpha alpha release note {i}", project="busy")
    quiet = (await svc.store("one alpha mention among many other words in a long sentence", project="quiet"))
    result = await svc.search("alpha", project="quiet")
    assert [h.id for h in result.results] == [quiet.id]
    assert len((await svc.search("alpha", limit=100)).results) == 81


async def analyze(svc: MemoryService) -> None:
    """ANALYZE memories now, as autovacuum would, and have the store read the word counts again."""
    import psycopg

    from server.storage.postgres import COMMON_WORDS_TTL, PostgresStore

    store = svc.storage
    assert isinstance(store, PostgresStore)
    async with await psycopg.AsyncConnection.connect(store.url, autocommit=True) as conn:
        await conn.execute("ANALYZE memories")
    store._common_words = (-COMMON_WORDS_TTL, "{}")


async def test_an_old_memory_with_a_rare_word_is_found_behind_many_newer_matches_of_a_common_one(
        svc: MemoryService) -> None:
    """Keyword search ranks the newest 100 matches of a query, and every match of its rare words. Before,
    an OR with a common word filled that window with newer memories, and the only memory that had the
    rare word (and the common one) was never even ranked."""
    both = await svc.store("The zanzibar cluster tests run nightly")
    rare_only = await svc.store("Zanzibar is the codename of the staging cluster")
    # 1,000 newer memories with the common word: ten times the window. (Before the first ANALYZE every word
    # counts as rare on PostgreSQL, and a "rare" word's older matches are ranked up to RARE_WORD_MATCHES.)
    for batch in range(10):
        await svc.store_many([MemoryInput(content=f"flaky tests in module {batch}-{i} need retries")
                              for i in range(100)])
    result = await svc.search("zanzibar tests", limit=5, mode="keyword")
    assert result.results[0].id == both.id, [h.content for h in result.results]
    # How rare a word is lifts a memory with only the rare word above those with only the common one:
    # BM25's IDF on SQLite; on PostgreSQL, the word counts of ANALYZE (which autovacuum runs).
    if svc.storage.backend == "postgres":
        await analyze(svc)
    result = await svc.search("zanzibar tests", limit=5, mode="keyword")
    assert [h.id for h in result.results[:2]] == [both.id, rare_only.id], [h.content for h in result.results]
    assert {h.id for h in (await svc.search("zanzibar", mode="keyword")).results} == {both.id, rare_only.id}


HOSTILE_QUERIES = [
    '"unbalanced quote', "(parens (nested", "wild*card*", "-negated -terms", "NEAR(a b, 3)", "a AND OR NOT b",
    "col:umn", "^caret", "'; DROP TABLE memories; --", "{curly} [square]", "emoji 🚀🔥 only", "🚀",
    "日本語の検索", "x" * 10_000, "word " * 2000, "\\", "%_%", "\x00null\x00bytes", "a:b:c OR\t\n",
    "!!! ??? ...", "& | ! <-> :*",
]


@pytest.mark.parametrize("query", HOSTILE_QUERIES, ids=range(len(HOSTILE_QUERIES)))
async def test_search_treats_query_syntax_as_plain_text(svc: MemoryService, query: str) -> None:
    await svc.store("Plain memory about word wild card parens and emoji")
    result = await svc.search(query)
    assert result.mode == "keyword"
    assert isinstance(result.results, list)


async def test_search_finds_words_that_look_like_operators(svc: MemoryService) -> None:
    m = (await svc.store("Use NEAR-zero downtime deploys AND blue green"))
    assert [h.id for h in (await svc.search("NEAR AND")).results] == [m.id]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"content": ""}, "content is empty"),
        ({"content": "   \n\t "}, "content is empty"),
        ({"content": "x" * 70_000}, "the limit is 64 KiB"),
        ({"content": "ok", "kind": "opinion"}, "kind 'opinion' is not one of"),
        ({"content": "ok", "importance": 11}, "from 0 to 10"),
        ({"content": "ok", "importance": -1}, "from 0 to 10"),
        ({"content": "ok", "metadata": ["not", "an", "object"]}, "metadata must be a JSON object"),
        ({"content": "ok", "tags": "notalist"}, "tags must be a list"),
        ({"content": "ok", "expires_at": datetime(2001, 1, 1, tzinfo=UTC)}, "is in the past"),
    ],
)
async def test_bad_input_is_refused_with_a_clear_message_and_nothing_written(
    svc: MemoryService, kwargs: dict[str, Any], message: str
) -> None:
    with pytest.raises(InvalidInput, match=message):
        await svc.store(**kwargs)
    assert await count(svc) == 0


async def test_out_of_range_limits_are_refused(svc: MemoryService) -> None:
    for limit in (0, 101, -5):
        with pytest.raises(InvalidInput, match="from 1 to 100"):
            await svc.search("x", limit=limit)
        with pytest.raises(InvalidInput, match="from 1 to 100"):
            await svc.list_memories(limit=limit)


async def test_context_groups_the_projects_key_memories(svc: MemoryService) -> None:
    await svc.store("Minor decision", "decision", importance=2)
    await svc.store("Major decision", "decision", importance=9)
    await svc.store("Never call the billing API from the UI", "constraint", importance=8)
    await svc.store("Write the migration guide", "todo")
    await svc.store("Other project decision", "decision", project="other")
    ctx = await svc.context()
    assert ctx.project == "demo"
    titles = [s.title for s in ctx.sections]
    assert titles == ["Decisions", "Constraints", "Open todos"]
    assert [m.content for m in ctx.sections[0].memories] == ["Major decision", "Minor decision"]
    assert "Never call the billing API" in ctx.summary and "Other project" not in ctx.summary


async def test_status_counts_memories_by_kind(svc: MemoryService) -> None:
    await svc.store("one", "fact")
    await svc.store("two", "fact")
    await svc.store("three", "risk", project="other")
    status = await svc.status()
    assert (status.memories, status.projects, status.by_kind) == (3, 2, {"fact": 2, "risk": 1})
    assert status.schema_version >= 1 and status.default_project == "demo"


async def test_reopening_a_database_keeps_everything(db_target: str, settings_for: Any) -> None:
    from server.app import Runtime

    rt = Runtime(settings_for(db_target))
    async with rt.session() as svc:
        m = (await svc.store("survives restarts"))
    async with Runtime(settings_for(db_target)).session() as svc:
        assert (await svc.get(m.id)).content == "survives restarts"
        assert (await svc.status()).schema_version >= 1


async def test_a_batch_is_written_in_one_transaction(svc: MemoryService) -> None:
    """A batch that fails in the database part-way (here: an id that is already taken) leaves nothing."""
    done = await svc.store_many([MemoryInput(content="first of a batch"), MemoryInput(content="second")])
    assert done.created == 2 and await count(svc) == 2
    scope = await svc._scope(LOCAL)
    now = datetime.now(UTC)
    fresh, _, _ = svc._new_memory(scope, now, "a third memory", "note", None, None, 5, None, None, None, None)
    clash, _, _ = svc._new_memory(scope, now, "a fourth memory", "note", None, None, 5, None, None, None, None)
    clash = clash.model_copy(update={"id": done.results[0].id})
    with pytest.raises((StorageUnavailable, Conflict), match="memories.id|memories_pkey"):  # each backend's words
        await svc.storage.add_memories([fresh, clash])
    assert await count(svc) == 2
    assert await svc.storage.get_memory(fresh.id, LOCAL_ACCESS) is None
