"""Moving data: migrate, export/import and backup/restore, on real SQLite files and a real PostgreSQL, checked
against the databases' own tables read with plain SQL (not with the code under test)."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import time
import uuid
from array import array
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from server.accounts import Accounts, Caller
from server.app import Runtime
from server.config import Settings
from server.jobs import Worker
from tests.conftest import PYTHON, fresh_database, server_env, unavailable
from tests.test_semantic import FakeEmbedder

ENV = {"STACKMEMORY_EMBEDDINGS": "none", "STACKMEMORY_PROJECT": "demo", "STACKMEMORY_USER": "tester"}
LOCAL_USER = "00000000-0000-7000-8000-000000000001"
LOCAL_WORKSPACE = "00000000-0000-7000-8000-000000000002"
# Every table moving data carries, keyed as it is ordered. Not compared: jobs, caches and the change feed,
# which each database keeps for itself.
TABLES = {"users": "id", "workspaces": "id", "memberships": "workspace_id, user_id", "memories": "id",
          "memory_history": "memory_id, version", "memory_vectors": "memory_id", "tasks": "id"}
TIMES = {"created_at", "updated_at", "expires_at", "deleted_at", "changed_at", "disabled_at", "linear_updated_at"}
JSONS = {"tags", "metadata", "labels", "memory_ids", "synced", "conflict"}
GRAPH = [
    {"type": "entity", "name": "Alice", "entityType": "person", "observations": ["works at Acme", "prefers tea"]},
    {"type": "entity", "name": "Acme", "entityType": "organization", "observations": ["makes anvils"]},
    {"type": "relation", "from": "Alice", "to": "Acme", "relationType": "works_at"},
]


def settings(db: str) -> Settings:
    return Settings.load(env=ENV, db=db)


def cli(*args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PYTHON, "-m", "server", *args], capture_output=True, text=True, timeout=timeout,
                          env=server_env("unused.db"), check=False)


def ok(*args: str) -> dict[str, Any]:
    result = cli(*args, "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    data: dict[str, Any] = json.loads(result.stdout)
    return data


def database(kind: str, tmp_path: Path, pg_admin_url: str | None, stack: Any) -> str:
    if kind == "sqlite":
        return str(tmp_path / f"{uuid.uuid4().hex[:8]}.db")
    assert pg_admin_url is not None
    return str(stack.enter_context(fresh_database(pg_admin_url)))


# ---- reading the databases with plain SQL ------------------------------------------------------------------


def dump(db: str) -> dict[str, list[dict[str, Any]]]:
    """Every carried table, every column, normalised only where the backends' types differ."""
    out: dict[str, list[dict[str, Any]]] = {}
    if db.startswith("postgresql"):
        import psycopg
        from psycopg.rows import dict_row

        with psycopg.connect(db, row_factory=dict_row) as conn:  # a superuser: row-level security does not apply
            for table, order in TABLES.items():
                cols = [r["column_name"] for r in conn.execute(
                    "SELECT column_name FROM information_schema.columns WHERE table_name = %s AND column_name"
                    " <> 'search' ORDER BY ordinal_position", (table,)).fetchall()]
                select = ", ".join("embedding::real[] AS vector" if c == "embedding" else c for c in cols)
                out[table] = [_normal(r) for r in conn.execute(f"SELECT {select} FROM {table} ORDER BY {order}")]
        return out
    conn = sqlite3.connect(db)
    conn.row_factory = sqlite3.Row
    try:
        for table, order in TABLES.items():
            rows = conn.execute(f"SELECT * FROM {table} ORDER BY {order}").fetchall()
            out[table] = [_normal({k: r[k] for k in r.keys() if k not in ("rowid", "seq")}) for r in rows]  # noqa: SIM118
    finally:
        conn.close()
    return out


def _normal(row: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for key, value in row.items():
        if value is not None and key in TIMES:
            value = (value if isinstance(value, datetime) else datetime.fromisoformat(value)).astimezone(UTC)
        elif value is not None and key in JSONS and isinstance(value, str):
            value = json.loads(value)
        elif key == "vector" and isinstance(value, list):
            value = array("f", value).tobytes()
        elif key == "dirty":
            value = bool(value)
        out[key] = value
    return out


def count(db: str, table: str = "memories") -> int:
    """Rows in a table; 0 for a SQLite file that was never created."""
    if not db.startswith("postgresql") and not Path(db).exists():
        return 0
    return len(dump(db)[table])


# ---- sources -------------------------------------------------------------------------------------------------


async def fill(db: str) -> dict[str, str]:
    """A database with everything moving data must carry: three users, a team, private and team memories,
    versions, a tombstone, an expiry, odd text, vectors and tasks."""
    runtime = Runtime(settings(db), FakeEmbedder(), worker=False)
    async with runtime.session() as svc:
        accounts = Accounts(svc.accounts)
        alice = await accounts.create_user("alice")
        await accounts.create_user("bob")
        await accounts.create_workspace("platform", "alice")
        await accounts.add_member("platform", "bob")
        as_alice = Caller(alice.id, "alice")
        first = await svc.store("Releases are cut on Thursdays", "decision", ["release"], importance=8)
        await svc.update(first.id, content="Releases are cut on Wednesdays")
        await svc.update(first.id, tags=["release", "process"], metadata={"ticket": "REL-1", "n": [1, 2.5]})
        gone = await svc.store("The staging database is PostgreSQL 15", "fact")
        await svc.delete(gone.id)
        await svc.store("Rotate the signing key", "todo", expires_at=datetime.now(UTC) + timedelta(days=30))
        await svc.store('Odd text: ünïcode, "quotes", tabs\tand a line\u2028separator', "note", ["odd"])
        team = await svc.store("The API gateway times out after 30 s", "constraint", workspace="platform",
                               caller=as_alice)
        mine = await svc.store("alice's own note about the gateway", caller=as_alice)
        await svc.share(mine.id, "platform", caller=as_alice)
        assert runtime.tasks is not None
        task = await runtime.tasks.create("Ship the exporter", "in batches", labels=["io"], memory_ids=[first.id])
        await runtime.tasks.update(task.id, status="in_progress")
        assert svc.jobs is not None
        worker = Worker(svc.jobs, {"embed": svc.embed_jobs})
        while await worker.run_once():
            pass
    return {"first": first.id, "gone": gone.id, "team": team.id, "task": task.id, "alice": alice.id}


def prefill(path: Path, n: int, dim: int = 64) -> None:
    """n local memories with vectors, written straight into a real StackMemory SQLite file."""
    import asyncio
    from concurrent.futures import ThreadPoolExecutor

    import numpy as np

    from server.storage.sqlite import SQLiteStore

    async def create() -> None:
        store = SQLiteStore(str(path), vector_index="memory")
        await store.open()
        await store.close()

    with ThreadPoolExecutor(1) as pool:  # a thread of its own, so async tests can call it too
        pool.submit(asyncio.run, create()).result()
    vectors = np.random.default_rng(3).standard_normal((n, dim)).astype(np.float32)
    start = datetime(2025, 1, 1, tzinfo=UTC)
    db = sqlite3.connect(path)
    with db:
        db.executemany(
            "INSERT INTO memories (id, content, content_hash, kind, tags, project, importance, metadata, author,"
            " created_at, updated_at, workspace_id, visibility, created_by, updated_by, dedup_owner) VALUES"
            " (?, ?, ?, 'note', '[]', 'bulk', 5, '{}', 'tester', ?, ?, ?, 'private', ?, ?, ?)",
            [(_bulk_id(i), f"bulk memory {i}", f"{i:064x}", (start + timedelta(seconds=i)).isoformat(),
              (start + timedelta(seconds=i)).isoformat(), LOCAL_WORKSPACE, LOCAL_USER, LOCAL_USER, LOCAL_USER)
             for i in range(n)])
        db.executemany("INSERT INTO memory_vectors (memory_id, model, vector) VALUES (?, 'fake/bulk', ?)",
                       [(_bulk_id(i), vectors[i].tobytes()) for i in range(n)])
        db.execute("INSERT INTO meta VALUES ('embedding_model', 'fake/bulk'), ('embedding_dim', ?)", (str(dim),))
    db.close()


def _bulk_id(i: int) -> str:
    return f"01900000-0000-7000-8000-{i:012x}"


def older_schema(path: Path, version: int) -> None:
    """A SQLite database left at an older schema version, as an old StackMemory would have left it."""
    from server.storage import migrations

    db = sqlite3.connect(path)
    db.execute("CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL, "
               "checksum TEXT NOT NULL, applied_at TEXT NOT NULL)")
    for m in migrations.migrations("sqlite")[:version]:
        db.executescript(m.sql)
        db.execute("INSERT INTO schema_migrations VALUES (?, ?, ?, '2025-01-01T00:00:00+00:00')",
                   (m.version, m.name, m.checksum))
    db.commit()
    db.close()


# ---- round trips ---------------------------------------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize("direction", ["sqlite->postgres", "postgres->sqlite"])
async def test_export_then_import_on_the_other_backend_keeps_every_field(direction: str, tmp_path: Path,
                                                                         pg_admin_url: str) -> None:
    from contextlib import ExitStack

    with ExitStack() as stack:
        source_kind, target_kind = direction.split("->")
        source = database(source_kind, tmp_path, pg_admin_url, stack)
        ids = await fill(source)
        target = database(target_kind, tmp_path, pg_admin_url, stack)
        exported = ok("export", "--db", source, "--out", str(tmp_path / "all.jsonl"))
        assert exported["kinds"]["memory"]["source"] == 7 and exported["kinds"]["task"]["source"] == 1
        report = ok("import", str(tmp_path / "all.jsonl"), "--db", target)
        assert report["verified"] and report["kinds"]["vector"]["added"] == 6

        before, after = dump(source), dump(target)
        for table in TABLES:
            assert after[table] == before[table], f"{table} differs after the round trip"
        assert any(m["deleted_at"] for m in after["memories"])  # the tombstone travelled
        assert {m["visibility"] for m in after["memories"]} == {"private", "team"}

        runtime = Runtime(settings(target), FakeEmbedder(), worker=False)
        async with runtime.session() as svc:  # the target works: same model, history, search
            detail = await svc.get(ids["first"], history=True)
            assert detail.content == "Releases are cut on Wednesdays" and len(detail.history or []) == 2
            found = await svc.search("gateway timeout", workspace="platform", caller=Caller(ids["alice"], "alice"))
            assert ids["team"] in [r.id for r in found.results]


def test_a_migration_run_twice_adds_nothing_the_second_time(tmp_path: Path, pg_url: str) -> None:
    import asyncio

    source = str(tmp_path / "local.db")
    asyncio.run(fill(source))
    first = ok("migrate", "--from", source, "--to", pg_url)
    assert first["verified"] and first["kinds"]["memory"]["added"] == 7
    after_first = dump(pg_url)
    second = ok("migrate", "--from", source, "--to", pg_url)
    assert second["verified"]
    assert all(k["added"] == 0 and k["updated"] == 0 for k in second["kinds"].values())
    assert second["kinds"]["memory"]["unchanged"] == 7
    assert dump(pg_url) == after_first == dump(source)


def test_an_interrupted_migration_resumes_to_what_one_clean_run_gives(tmp_path: Path, pg_admin_url: str) -> None:
    import psycopg

    source = tmp_path / "local.db"
    prefill(source, 4000)
    with fresh_database(pg_admin_url) as resumed, fresh_database(pg_admin_url) as clean:
        args = [PYTHON, "-m", "server", "migrate", "--from", str(source), "--to", resumed, "--batch", "20"]
        proc = subprocess.Popen(args, env=server_env("unused.db"), stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        try:
            moved = 0
            deadline = time.monotonic() + 60
            while moved == 0 and time.monotonic() < deadline and proc.poll() is None:
                time.sleep(0.01)
                try:
                    with psycopg.connect(resumed) as conn:
                        moved = conn.execute("SELECT count(*) FROM memories").fetchone()[0]  # type: ignore[index]
                except psycopg.Error:
                    moved = 0  # the schema is still being made
            proc.send_signal(signal.SIGKILL)
        finally:
            proc.wait()
        partial = count(resumed)
        assert 0 < partial < 4000, "the migration was not caught mid-way"
        assert ok("migrate", "--from", str(source), "--to", resumed)["kinds"]["memory"]["added"] == 4000 - partial
        assert ok("migrate", "--from", str(source), "--to", clean)["verified"]
        assert dump(resumed) == dump(clean)


def test_a_target_changed_behind_the_migrations_back_fails_verification(tmp_path: Path, pg_url: str) -> None:
    import asyncio

    import psycopg

    source = str(tmp_path / "local.db")
    ids = asyncio.run(fill(source))
    ok("migrate", "--from", source, "--to", pg_url)
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("UPDATE memories SET importance = 1 WHERE id = %s", (ids["first"],))
    result = cli("migrate", "--from", source, "--to", pg_url, "--json")
    assert result.returncode == 1
    memory = json.loads(result.stdout)["kinds"]["memory"]
    assert memory["mismatched"] == 1 and ids["first"] in memory["examples"][0]
    assert memory["source_checksum"] != memory["target_checksum"]
    human = cli("migrate", "--from", source, "--to", pg_url)
    assert human.returncode == 1 and "MISMATCH" in human.stdout and ids["first"] in human.stdout


def test_a_dry_run_writes_nothing(tmp_path: Path, pg_url: str) -> None:
    import asyncio

    import psycopg

    source = str(tmp_path / "local.db")
    asyncio.run(fill(source))
    report = ok("migrate", "--from", source, "--to", pg_url, "--dry-run")
    assert report["dry_run"] and report["kinds"]["memory"]["added"] == 7
    with psycopg.connect(pg_url) as conn:
        assert conn.execute("SELECT to_regclass('memories') IS NULL").fetchone() == (True,)  # not even a schema
    target = tmp_path / "never.db"
    assert ok("migrate", "--from", source, "--to", str(target), "--dry-run")["kinds"]["memory"]["added"] == 7
    assert not target.exists()


# ---- mapping a local store onto a team server ----------------------------------------------------------------


def test_migrated_memories_are_in_the_change_feed_numbered_per_workspace_and_notified(tmp_path: Path,
                                                                                    pg_url: str) -> None:
    """A migrate inserts a batch of memories with one statement; the feed still gets one entry per memory,
    numbered without gaps within each workspace in id order, each announced by a NOTIFY."""
    import asyncio

    import psycopg
    from psycopg.rows import dict_row

    source = str(tmp_path / "local.db")
    asyncio.run(fill(source))
    with psycopg.connect(pg_url, autocommit=True) as listener:
        listener.execute("LISTEN stackmemory_changes")
        assert ok("migrate", "--from", source, "--to", pg_url)["verified"]
        heard = [json.loads(n.payload) for n in listener.notifies(timeout=2.0)]
    with psycopg.connect(pg_url, row_factory=dict_row) as conn:  # a superuser: row-level security does not apply
        memories = {m["id"]: m for m in conn.execute("SELECT * FROM memories")}
        entries = conn.execute("SELECT * FROM change_log WHERE entity = 'memory' ORDER BY workspace_id, cursor"
                               ).fetchall()
    assert len(memories) == 7 and sorted(e["entity_id"] for e in entries) == sorted(memories)
    for workspace in {m["workspace_id"] for m in memories.values()}:
        mine = [e for e in entries if e["workspace_id"] == workspace]
        assert [e["cursor"] for e in mine] == list(range(1, len(mine) + 1))
        assert [e["entity_id"] for e in mine] == sorted(e["entity_id"] for e in mine)
    for e in entries:
        m = memories[e["entity_id"]]
        assert e["kind"] == ("share" if "shared_from" in m["metadata"] else "create")
        assert e["private_to"] == (m["created_by"] if m["visibility"] == "private" else None)
        assert e["actor"] == m["updated_by"]
    assert any(e["kind"] == "share" for e in entries) and any(e["private_to"] for e in entries)
    told = [(n["w"], n["c"], n["k"], n["id"], n["p"]) for n in heard if n["e"] == "memory"]
    assert sorted(told) == [(e["workspace_id"], e["cursor"], e["kind"], e["entity_id"], e["private_to"])
                            for e in entries]
    for workspace in {w for w, *_ in told}:  # each workspace's announced in cursor order
        cursors = [c for w, c, *_ in told if w == workspace]
        assert cursors == sorted(cursors)


def test_local_memories_land_in_the_named_users_personal_workspace(tmp_path: Path, pg_url: str) -> None:
    import asyncio

    source = tmp_path / "local.db"
    prefill(source, 30)
    ok("user", "create", "alice", "--db", pg_url)
    ok("workspace", "create", "platform", "--owner", "alice", "--db", pg_url)
    report = ok("migrate", "--from", str(source), "--to", pg_url, "--user", "alice")
    assert report["verified"] and report["kinds"]["memory"]["added"] == 30
    tables = dump(pg_url)
    alice = next(u for u in tables["users"] if u["name"] == "alice")
    home = next(w for w in tables["workspaces"] if w["personal_of"] == alice["id"])
    assert {(m["workspace_id"], m["created_by"], m["dedup_owner"]) for m in tables["memories"]} == {
        (home["id"], alice["id"], alice["id"])}

    async def alice_sees() -> list[str]:
        async with Runtime(settings(pg_url), worker=False).session() as svc:
            page = await svc.list_memories(limit=100, caller=Caller(alice["id"], "alice"))
            return [m.id for m in page.memories]

    assert len(asyncio.run(alice_sees())) == 30
    again = ok("migrate", "--from", str(source), "--to", pg_url, "--user", "alice")
    assert again["kinds"]["memory"]["added"] == 0 and again["verified"]
    ok("user", "create", "bob", "--db", pg_url)
    refused = cli("migrate", "--from", str(source), "--to", pg_url, "--user", "bob", "--into", "platform")
    assert refused.returncode == 1 and "bob is not a member of platform" in refused.stderr
    assert "workspace add-member platform bob" in refused.stderr
    missing = cli("migrate", "--from", str(source), "--to", pg_url, "--user", "carol")
    assert missing.returncode == 1 and "stackmemory user create carol" in missing.stderr


@pytest.mark.anyio
async def test_an_export_of_one_workspace_holds_that_workspace_and_the_people_in_it(tmp_path: Path) -> None:
    source = str(tmp_path / "local.db")
    await fill(source)
    out = tmp_path / "platform.jsonl"
    ok("export", "--db", source, "--workspace", "platform", "--out", str(out))
    records = [json.loads(line) for line in out.read_text().splitlines()]
    header = records[0]
    platform = header["workspace_id"]
    assert header["workspace"] == "platform" and records[-1]["type"] == "end"
    assert {r["workspace_id"] for r in records if r["type"] == "memory"} == {platform}
    assert len([r for r in records if r["type"] == "memory"]) == 2
    assert sorted(r["name"] for r in records if r["type"] == "user") == ["alice", "bob"]
    assert sorted(r["name"] for r in records if r["type"] == "workspace") == ["platform", "~alice", "~bob"]
    target = str(tmp_path / "team.db")
    assert ok("import", str(out), "--db", target)["verified"]


# ---- the MCP reference memory server's memory.jsonl ----------------------------------------------------------


@pytest.mark.anyio
async def test_the_mcp_memory_servers_knowledge_graph_becomes_memories(db_target: str, tmp_path: Path) -> None:
    graph = tmp_path / "memory.jsonl"
    graph.write_text("\n".join(json.dumps(r) for r in GRAPH) + "\n")
    report = ok("import", str(graph), "--db", db_target, "--project", "kg")
    assert report["verified"] and report["kinds"]["memory"]["added"] == 3
    again = ok("import", str(graph), "--db", db_target, "--project", "kg")
    assert again["kinds"]["memory"]["added"] == 0 and again["kinds"]["memory"]["merged"] == 3
    async with Runtime(settings(db_target), worker=False).session() as svc:
        memories = {m.content: m for m in (await svc.list_memories(project="kg", limit=10)).memories}
        alice = memories["Alice (person)\n- works at Acme\n- prefers tea"]
        assert alice.kind == "fact" and alice.tags == ["mcp-memory", "entity", "person"]
        assert alice.metadata["mcp_memory"] == GRAPH[0]
        assert "Alice works_at Acme" in memories
        found = await svc.search("who makes anvils", project="kg", mode="keyword")
        assert found.results[0].content.startswith("Acme (organization)")


# ---- bad input and faults --------------------------------------------------------------------------------------


def _export(tmp_path: Path, n: int = 40) -> tuple[Path, list[str]]:
    source = tmp_path / "local.db"
    prefill(source, n)
    out = tmp_path / "all.jsonl"
    ok("export", "--db", str(source), "--out", str(out))
    return out, out.read_text().splitlines(keepends=True)


def test_a_corrupt_line_is_named_and_nothing_from_its_batch_is_imported(tmp_path: Path) -> None:
    out, lines = _export(tmp_path)
    bad = next(i for i, line in enumerate(lines) if '"type":"memory"' in line and "bulk memory 25\"" in line)
    corrupt = tmp_path / "corrupt.jsonl"
    corrupt.write_text("".join(lines[:bad]) + lines[bad][:40] + "\n" + "".join(lines[bad + 1:]))
    target = str(tmp_path / "target.db")
    result = cli("import", str(corrupt), "--db", target, "--batch", "10")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert f"line {bad + 1} of {corrupt} is not valid JSON" in result.stderr
    # Batches of ten records: the one holding the bad line, and everything after it, stayed out.
    batch_start = 2 + ((bad + 1) - 2) // 10 * 10
    assert f"Nothing from line {batch_start} on was imported" in result.stderr
    before_batch = [json.loads(line) for line in lines[1:batch_start - 1]]
    assert count(target) == len([r for r in before_batch if r["type"] == "memory"]) < 40
    fixed = ok("import", str(out), "--db", target)  # re-running with a good file finishes the job
    assert fixed["verified"] and count(target) == 40


def test_a_truncated_file_is_refused_before_anything_is_imported(tmp_path: Path) -> None:
    _, lines = _export(tmp_path)
    cut = tmp_path / "cut.jsonl"
    text = "".join(lines)
    cut.write_text(text[: len(text) * 2 // 3])
    target = str(tmp_path / "target.db")
    result = cli("import", str(cut), "--db", target)
    assert result.returncode == 1 and "truncated" in result.stderr and "Nothing was imported" in result.stderr
    assert count(target) == 0


@pytest.mark.parametrize(("version", "message"), [
    ("2.0", "from a newer StackMemory (this one reads 1.x): upgrade StackMemory"),
    ("one", "unknown format version 'one'"),
])
def test_unknown_and_future_format_versions_are_refused(tmp_path: Path, version: str, message: str) -> None:
    _, lines = _export(tmp_path, 5)
    header = json.loads(lines[0]) | {"version": version}
    changed = tmp_path / "other.jsonl"
    changed.write_text(json.dumps(header) + "\n" + "".join(lines[1:]))
    target = str(tmp_path / "target.db")
    result = cli("import", str(changed), "--db", target)
    assert result.returncode == 1 and message in result.stderr
    assert count(target) == 0


@pytest.mark.anyio
async def test_a_target_embedding_with_another_model_is_refused_unless_asked_to_reembed(
        db_target: str, tmp_path: Path) -> None:
    out, _ = _export(tmp_path, 12)
    async with Runtime(settings(db_target), FakeEmbedder("other/model"), worker=False).session():
        pass  # the target now records other/model
    refused = cli("import", str(out), "--db", db_target)
    assert refused.returncode == 1
    assert "embeds with other/model" in refused.stderr and "fake/bulk" in refused.stderr
    assert "--reembed" in refused.stderr and count(db_target) == 0
    report = ok("import", str(out), "--db", db_target, "--reembed")
    assert report["verified"] and "vector" not in report["kinds"] and count(db_target) == 12
    assert count(db_target, "memory_vectors") == 0
    runtime = Runtime(settings(db_target), FakeEmbedder("other/model"), worker=False)
    async with runtime.session() as svc:
        assert svc.jobs is not None and (await svc.jobs.counts()).pending == 12  # queued for re-embedding


def test_a_source_with_an_older_schema_is_refused_with_the_upgrade_command(tmp_path: Path, pg_url: str) -> None:
    old = tmp_path / "old.db"
    older_schema(old, 6)
    for args in (["migrate", "--from", str(old), "--to", pg_url], ["export", "--db", str(old), "--out",
                                                                  str(tmp_path / "x.jsonl")]):
        result = cli(*args)
        assert result.returncode == 1
        assert "schema version 6" in result.stderr and f"stackmemory db upgrade --db {old}" in result.stderr
    with sqlite3.connect(old) as db:  # and the source was left as it was
        assert db.execute("SELECT max(version) FROM schema_migrations").fetchone() == (6,)
    assert not (tmp_path / "x.jsonl").exists()


def test_a_full_disk_is_a_clear_error_and_leaves_no_partial_file(tmp_path: Path) -> None:
    source = tmp_path / "local.db"
    prefill(source, 10)
    full = cli("export", "--db", str(source), "--out", "/dev/full")
    assert full.returncode == 1 and "cannot write /dev/full: the disk is full" in full.stderr
    nowhere = tmp_path / "missing" / "x.jsonl"
    failed = cli("export", "--db", str(source), "--out", str(nowhere))
    assert failed.returncode == 1 and f"cannot write {nowhere}" in failed.stderr
    assert not list(tmp_path.rglob("*.partial"))


@pytest.mark.anyio
async def test_import_conflict_policies_decide_which_version_stays(tmp_path: Path) -> None:
    source = str(tmp_path / "local.db")
    ids = await fill(source)
    old = tmp_path / "old.jsonl"
    ok("export", "--db", source, "--out", str(old))
    async with Runtime(settings(source), worker=False).session() as svc:
        await svc.update(ids["first"], content="Releases are cut on Mondays")
    new = tmp_path / "new.jsonl"
    ok("export", "--db", source, "--out", str(new))
    target = str(tmp_path / "target.db")
    ok("import", str(old), "--db", target)

    def first() -> str:
        return str(next(m for m in dump(target)["memories"] if m["id"] == ids["first"])["content"])

    skipped = ok("import", str(new), "--db", target)
    assert skipped["kinds"]["memory"]["kept"] == 1 and first() == "Releases are cut on Wednesdays"
    newest = ok("import", str(new), "--db", target, "--on-conflict", "newest")
    assert newest["kinds"]["memory"]["updated"] == 1 and first() == "Releases are cut on Mondays"
    older = ok("import", str(old), "--db", target, "--on-conflict", "newest")
    assert older["kinds"]["memory"]["kept"] == 1 and first() == "Releases are cut on Mondays"
    forced = ok("import", str(old), "--db", target, "--on-conflict", "overwrite")
    assert forced["kinds"]["memory"]["updated"] == 1 and first() == "Releases are cut on Wednesdays"


# ---- backup and restore ----------------------------------------------------------------------------------------

WRITER = """
import os, sqlite3, sys
db = sqlite3.connect(sys.argv[1], isolation_level=None)
db.execute("PRAGMA busy_timeout = 10000")
i = 0
while not os.path.exists(sys.argv[2]):
    db.execute("BEGIN IMMEDIATE")
    for half in (0, 1):  # two memories per transaction: a consistent copy holds an even number
        n = 1_000_000 + 2 * i + half
        db.execute("INSERT INTO memories (id, content, content_hash, kind, tags, project, importance, metadata, "
                   "author, created_at, updated_at) VALUES (?, ?, ?, 'note', '[]', 'w', 5, '{}', 'w', "
                   "'2025-01-01T00:00:00+00:00', '2025-01-01T00:00:00+00:00')",
                   (f"01900000-0000-7000-8000-{n:012x}", f"written {n}", f"{n:064x}"))
    db.execute("COMMIT")
    i += 1
"""


def test_a_sqlite_backup_taken_while_a_writer_keeps_writing_is_consistent(tmp_path: Path) -> None:
    source = tmp_path / "live.db"
    prefill(source, 20)
    stop = tmp_path / "stop"
    writer = subprocess.Popen([PYTHON, "-c", WRITER, str(source), str(stop)])
    try:
        while count(str(source)) < 200:
            time.sleep(0.02)
        backup = tmp_path / "live.bak"
        report = ok("backup", str(backup), "--db", str(source))
        written_during = count(str(source))
    finally:
        stop.touch()
        writer.wait(timeout=30)
    assert "online backup API" in " ".join(report["notes"])
    copied = count(str(backup))
    assert copied % 2 == 0 and 220 <= copied <= written_during + 2
    with sqlite3.connect(backup) as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    restored = tmp_path / "restored.db"
    assert ok("restore", str(backup), "--db", str(restored))["verified"]
    assert dump(str(restored)) == dump(str(backup))


def test_restore_refuses_a_target_that_is_not_empty_unless_forced(tmp_path: Path) -> None:
    source = tmp_path / "local.db"
    prefill(source, 15)
    backup = tmp_path / "local.bak"
    ok("backup", str(backup), "--db", str(source))
    target = tmp_path / "busy.db"
    prefill(target, 3)
    refused = cli("restore", str(backup), "--db", str(target))
    assert refused.returncode == 1 and "--force" in refused.stderr and count(str(target)) == 3
    again = cli("backup", str(backup), "--db", str(source))
    assert again.returncode == 1 and "already exists" in again.stderr
    assert ok("restore", str(backup), "--db", str(target), "--force")["verified"]
    assert dump(str(target)) == dump(str(source))


@pytest.mark.anyio
@pytest.mark.parametrize("method", ["auto", "logical"])
async def test_a_postgres_backup_restores_into_an_empty_database(method: str, tmp_path: Path, pg_admin_url: str
                                                                 ) -> None:
    from server.backup import find_pg_tools

    with fresh_database(pg_admin_url) as source, fresh_database(pg_admin_url) as target:
        await fill(source)
        if method == "auto" and isinstance(find_pg_tools(18), str):
            unavailable(f"the pg_dump path needs pg_dump 18 or newer: {find_pg_tools(18)}")
        backup = tmp_path / "hosted.backup"
        report = ok("backup", str(backup), "--db", source, "--method", method)
        notes = " ".join(report["notes"])
        if method == "auto":
            assert "method: pg_dump" in notes and backup.read_bytes().startswith(b"PGDMP")
        else:
            assert "method: the logical export" in notes and backup.read_text().startswith('{"type":"header"')
        restored = ok("restore", str(backup), "--db", target)
        assert restored["verified"]
        assert restored["kinds"]["memory"]["source"] == restored["kinds"]["memory"]["target"] == 7
        assert dump(target) == dump(source)
        refused = cli("restore", str(backup), "--db", target)
        assert refused.returncode == 1 and "--force" in refused.stderr
        assert ok("restore", str(backup), "--db", target, "--force")["verified"]
        assert dump(target) == dump(source)

