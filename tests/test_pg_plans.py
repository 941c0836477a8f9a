"""PostgreSQL query plans that keep hosted search fast: checked on the plan, never on a stopwatch."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest

from server.accounts import LOCAL_USER_ID, LOCAL_WORKSPACE_ID
from server.models import MemoryFilter
from server.storage.postgres import PostgresStore, Q

pytestmark = pytest.mark.anyio

MODEL = "test/model"
ROWS = 3000


@pytest.fixture
async def store(pg_url: str) -> AsyncIterator[PostgresStore]:
    s = PostgresStore(pg_url, min_size=1, max_size=2, timeout=5)
    await s.open()
    try:
        yield s
    finally:
        await s.close()


def bulk_load(url: str, *, vectors: bool, analyze: bool) -> None:
    """ROWS memories of the local user (one in a hundred mentions 'zeppelin'), as a COPY-style bulk load would."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO memories (id, content, content_hash, kind, project, importance, author, created_at,"
            " updated_at, workspace_id, visibility, created_by, updated_by, dedup_owner)"
            " SELECT format('01900000-0000-7000-8000-%%s', lpad(i::text, 12, '0')),"
            "        CASE WHEN i %% 100 = 0 THEN 'the zeppelin hangar ' ELSE 'deploy cache queue ' END || i,"
            "        md5(i::text), 'note', 'plans', 5, 'bench', now(), now(), %(w)s, 'private', %(u)s, %(u)s, %(u)s"
            "   FROM generate_series(1, %(n)s) AS i",
            {"w": LOCAL_WORKSPACE_ID, "u": LOCAL_USER_ID, "n": ROWS})
        if vectors:
            conn.execute("INSERT INTO memory_vectors (memory_id, model, embedding)"
                         " SELECT id, %(m)s, '[1,0,0]'::vector FROM memories", {"m": MODEL})
        if analyze:
            conn.execute("ANALYZE memories")


def plan(url: str, name: str, params: dict[str, Any], *, as_app: bool) -> str:
    """EXPLAIN of one named query, run as the application would: the app role, the local user as caller."""
    with psycopg.connect(url) as conn:
        if as_app:
            conn.execute("SET LOCAL ROLE stackmemory_app")
            conn.execute(Q["act_as_user"], {"user_id": LOCAL_USER_ID})
        else:
            conn.execute(Q["act_as_system"])
        rows = conn.execute("EXPLAIN " + Q[name], params).fetchall()
        conn.rollback()
    return "\n".join(r[0] for r in rows)


async def test_keyword_search_uses_the_full_text_index_under_row_level_security(
        store: PostgresStore, pg_url: str) -> None:
    bulk_load(pg_url, vectors=False, analyze=True)
    params = {"q": "zeppelin", "pool": 100, "limit": 10, "project": None, "kinds": None, "tags": None,
              "since": None, "until": None, "now": "2026-01-01T00:00:00Z", "workspaces": [LOCAL_WORKSPACE_ID],
              "user_id": LOCAL_USER_ID, "common": ["deploy", "cach", "queue"], "rare": 1000}
    shown = plan(pg_url, "search_keyword", params, as_app=True)
    # On `memories` itself the policy runs before the non-leakproof @@, so the GIN index went unused and
    # every search read the whole table; the view lets the planner take the index (migration 0009).
    assert "memories_search" in shown, shown
    assert "Seq Scan on memories" not in shown, shown


async def test_words_in_many_memories_are_common_and_an_old_rare_match_is_still_ranked_first(
        store: PostgresStore, pg_url: str) -> None:
    """ANALYZE's statistics say which words are common (here 'deploy', in 2,970 of 3,000 memories) and
    which are rare ('zeppelin', in 30). The oldest zeppelin memory lies behind the newest 100 'deploy'
    matches, yet it is ranked, and a memory with the rare word outranks those with only the common one."""
    bulk_load(pg_url, vectors=False, analyze=True)
    with psycopg.connect(pg_url) as conn:  # the store keeps the words as one text[] literal
        common = conn.execute("SELECT %s::text[]", [await store._common()]).fetchone()[0]  # type: ignore[index]
    assert {"deploy", "cach", "queue"} <= set(common) and "zeppelin" not in common, common
    where = MemoryFilter(workspaces=[LOCAL_WORKSPACE_ID], user_id=LOCAL_USER_ID, now=datetime.now(UTC))
    hits = await store.search_keyword(["zeppelin", "deploy"], where, 40)
    contents = [h.memory.content for h in hits]
    assert all("zeppelin" in c for c in contents[:30]) and len({*contents[:30]}) == 30, contents
    assert "the zeppelin hangar 100" in contents  # the oldest: id 100 of 3,000, behind 2,900 newer matches
    assert "zeppelin" not in contents[30]


async def test_finding_unembedded_memories_after_a_bulk_load_probes_each_vector_by_key(
        store: PostgresStore, pg_url: str) -> None:
    bulk_load(pg_url, vectors=True, analyze=False)  # no statistics on memory_vectors yet
    shown = plan(pg_url, "unembedded_ids", {"after": "", "model": MODEL, "limit": 500}, as_app=False)
    assert "memory_vectors_pkey" in shown, shown
    assert "Seq Scan on memory_vectors" not in shown, shown
    assert await store.unembedded(MODEL, "", 500) == []
    assert await store.count_unembedded(MODEL) == 0
    assert await store.count_unembedded("another/model") == ROWS


@pytest.mark.parametrize("projects", [20, 4])
async def test_finding_memories_written_in_a_row_steps_back_one_index_entry_per_candidate(
        store: PostgresStore, pg_url: str, projects: int) -> None:
    """Projects take turns, so the memory written just before another in its project is found by the
    project's own index, not by walking back over the other projects' memories. With few projects the
    planner once judged that walk cheap (a quarter of all rows match the project) and walked from the
    newest row each time: 2.5 s per search at 100k memories."""
    bulk_load(pg_url, vectors=False, analyze=False)
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("UPDATE memories SET project = 'plans-' || (right(id, 12)::int %% %s)", [projects])
        conn.execute("ANALYZE memories")
    ids = [f"01900000-0000-7000-8000-{i:012d}" for i in (20, 20 + projects, 20 + 2 * projects, 501, 2001)]
    shown = plan(pg_url, "written_in_a_row", {"ids": ids, "within": timedelta(minutes=30)}, as_app=False)
    assert "Index Scan Backward using memories_project_id" in shown, shown
    assert "Backward using memories_live_id" not in shown, shown
    assert "Seq Scan on memories" not in shown, shown
    assert await store.written_in_a_row(ids, timedelta(minutes=30)) == [(ids[0], ids[1]), (ids[1], ids[2])]
