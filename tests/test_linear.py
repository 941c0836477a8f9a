"""Tasks and the Linear sync, against a local Linear that validates every operation against Linear's
published schema (tests/linear_standin.py): pulls, pushes, conflicts, rate limits, a crash mid-push, one
sync per workspace, webhooks over real HTTP, and the API key kept out of everything a person sees."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pytest

from server.accounts import LOCAL_USER_ID, LOCAL_WORKSPACE_ID, Caller
from server.errors import InvalidInput, PermissionDenied
from server.linear import LinearAuthError, LinearClient, signature_valid, timestamp_fresh
from server.linear_merge import state_for, status_of
from tests.conftest import PYTHON, issue_token, server_env, unavailable
from tests.linear_standin import SCHEMA, Fault, StandIn, sign

pytestmark = pytest.mark.anyio
WS = LOCAL_WORKSPACE_ID
SECRET = "whsec_standin_secret"


@pytest.fixture
def linear() -> Iterator[StandIn]:
    """The stand-in Linear; a test fails if anything sent to it does not validate against the schema."""
    if not SCHEMA.exists():
        unavailable(f"Linear's schema is not at {SCHEMA} (the shared folder beside the checkout)")
    try:
        import graphql  # noqa: F401
    except ImportError:
        unavailable("the Linear stand-in needs graphql-core (pip install -e '.[test]')")
    standin = StandIn().start()
    try:
        yield standin
    finally:
        standin.stop()
    assert standin.invalid == [], f"operations that do not validate against Linear's schema: {standin.invalid}"


class Sleeps(list[float]):
    """A client's sleep that records what it was asked to wait instead of waiting."""

    async def __call__(self, seconds: float) -> None:
        self.append(seconds)


@asynccontextmanager
async def opened(db: str, linear: StandIn, settings_for: Any, *, policy: str = "newest", worker: bool = False,
                 sleeps: Sleeps | None = None, connect: bool = True, embedder: Any = None,
                 **env: str) -> AsyncIterator[Any]:
    """A Runtime on `db` whose local workspace is connected to the stand-in (retries without real waits)."""
    from server.app import Runtime

    settings = settings_for(db, **{"STACKMEMORY_LINEAR_URL": linear.url, "STACKMEMORY_LINEAR_INTERVAL": "0", **env})
    rt = Runtime(settings, embedder, worker=worker)
    async with rt.session():
        rt.linear.client = lambda key: LinearClient(linear.url, key, backoff=0.01, timeout=1.0,
                                                    sleep=sleeps if sleeps is not None else Sleeps())
        if connect:
            await rt.linear.connect(WS, LOCAL_USER_ID, linear.api_key, "ENG", webhook_secret=SECRET, policy=policy)
        yield rt


async def all_tasks(rt: Any, caller: Caller | None = None) -> list[Any]:
    kwargs = {"caller": caller} if caller else {}
    tasks, cursor = [], None
    while True:
        page = await rt.tasks.list_tasks(limit=200, cursor=cursor, **kwargs)
        tasks += page.tasks
        if page.next_cursor is None:
            return tasks
        cursor = page.next_cursor


def ok(result: Any) -> Any:
    """A tool call's structured result, failing the test with its message if it was an error."""
    assert not result.is_error, result.content[0].text
    return result.structured_content


def issue_calls(linear: StandIn) -> list[dict[str, Any]]:
    return [c.variables for c in linear.calls if c.op == "StackMemoryIssues" and c.fault is None]


# ---- pulling ---------------------------------------------------------------------------------------------

async def test_the_first_sync_pulls_every_issue_of_the_team_page_by_page(db_target: str, linear: StandIn,
                                                                         settings_for: Any) -> None:
    for n in range(257):
        linear.add_issue(f"Issue number {n}")
    linear.add_issue("Wire up billing", state="In Progress", priority=2, labels=("bug", "backend"),
                     assignee="ada@example.com", description="Stripe first")
    linear.add_issue("Waiting on legal", state="Blocked")
    linear.add_issue("Old idea", state="Canceled", priority=4)
    async with opened(db_target, linear, settings_for) as rt:
        summary = await rt.linear.run(WS)
        assert (summary.state, summary.pulled, summary.created_locally) == ("done", 260, 260)
        tasks = {t.title: t for t in await all_tasks(rt)}
    assert len(tasks) == 260 and all(t.sync_state == "synced" and t.linear for t in tasks.values())
    billing = tasks["Wire up billing"]
    assert (billing.status, billing.priority, billing.labels, billing.assignee, billing.description) == (
        "in_progress", "high", ["backend", "bug"], "ada@example.com", "Stripe first")
    assert billing.linear.identifier == "ENG-258" and billing.linear.url.endswith("/ENG-258")
    assert tasks["Waiting on legal"].status == "blocked"
    assert (tasks["Old idea"].status, tasks["Old idea"].priority) == ("cancelled", "low")
    pages = issue_calls(linear)
    assert [p["after"] for p in pages] == [None, "100", "200"] and all(p["first"] == 100 for p in pages)


async def test_an_incremental_sync_asks_only_for_issues_changed_since_the_last_one(
        tmp_path: Any, linear: StandIn, settings_for: Any) -> None:
    issues = [linear.add_issue(f"Task {n}") for n in range(30)]
    async with opened(str(tmp_path / "t.db"), linear, settings_for) as rt:
        await rt.linear.run(WS)
        newest = max(i["updatedAt"] for i in issues)
        linear.edit(issues[3]["id"], title="Task 3, renamed in Linear")
        linear.edit(issues[7]["id"], state="Done")
        linear.calls.clear()
        summary = await rt.linear.run(WS)
        tasks = {t.linear.id: t for t in await all_tasks(rt)}
    assert [c["filter"]["updatedAt"] for c in issue_calls(linear)] == [{"gte": newest}]
    assert summary.pulled <= 3 and (summary.updated_locally, summary.created_locally) == (2, 0)
    assert tasks[issues[3]["id"]].title == "Task 3, renamed in Linear"
    assert tasks[issues[7]["id"]].status == "done" and len(tasks) == 30


# ---- pushing ---------------------------------------------------------------------------------------------

async def test_local_tasks_reach_linear_once_and_later_edits_follow(db_target: str, linear: StandIn,
                                                                    settings_for: Any) -> None:
    async with opened(db_target, linear, settings_for) as rt:
        a = await rt.tasks.create("Rotate the API keys", "Every 90 days", status="blocked", priority="urgent",
                                  assignee="ada@example.com", labels=["backend", "security"])
        b = await rt.tasks.create("Write the runbook", assignee="nobody@example.com")
        first = await rt.linear.run(WS)
        again = await rt.linear.run(WS)
        await rt.tasks.update(b.id, title="Write the on-call runbook", status="in_progress")
        third = await rt.linear.run(WS)
        tasks = {t.id: t for t in await all_tasks(rt)}
    assert (first.created_in_linear, again.created_in_linear, again.updated_in_linear) == (2, 0, 0)
    assert first.errors == ["assignee 'nobody@example.com' matches no Linear user; kept in StackMemory only"]
    assert tasks[b.id].assignee == "nobody@example.com" and linear.issues[tasks[b.id].linear.id]["assignee"] is None
    assert (third.created_in_linear, third.updated_in_linear) == (0, 1)
    assert len(linear.issues) == 2 and linear.creates == 2
    rotate = linear.issues[tasks[a.id].linear.id]
    assert (rotate["state"]["name"], rotate["priority"], rotate["assignee"]["email"]) == ("Blocked", 1.0,
                                                                                        "ada@example.com")
    assert {lb["name"] for lb in linear.labels if lb["id"] in rotate["labelIds"]} == {"backend", "security"}
    runbook = linear.issues[tasks[b.id].linear.id]
    assert (runbook["title"], runbook["state"]["name"]) == ("Write the on-call runbook", "In Progress")
    assert all(t.sync_state == "synced" and t.linear.identifier for t in tasks.values())


async def test_edits_to_different_fields_on_each_side_both_survive(tmp_path: Any, linear: StandIn,
                                                                    settings_for: Any) -> None:
    issue = linear.add_issue("Ship v2")
    async with opened(str(tmp_path / "t.db"), linear, settings_for) as rt:
        await rt.linear.run(WS)
        task = (await all_tasks(rt))[0]
        await rt.tasks.update(task.id, description="Cut the release branch first")
        linear.edit(issue["id"], title="Ship v2.0")
        summary = await rt.linear.run(WS)
        after = await rt.tasks.get(task.id)
    assert summary.conflicts == 0 and after.conflict is None
    assert (after.title, after.description) == ("Ship v2.0", "Cut the release branch first")
    assert (issue["title"], issue["description"]) == ("Ship v2.0", "Cut the release branch first")


@pytest.mark.parametrize(("policy", "newer", "winner"), [
    ("newest", "linear", "linear"), ("newest", "local", "local"), ("linear", "local", "linear"),
    ("local", "linear", "local")])
async def test_a_field_changed_on_both_sides_is_decided_by_the_policy_and_recorded(
        tmp_path: Any, linear: StandIn, settings_for: Any, policy: str, newer: str, winner: str) -> None:
    issue = linear.add_issue("Fix login")
    async with opened(str(tmp_path / "t.db"), linear, settings_for, policy=policy) as rt:
        await rt.linear.run(WS)
        task = (await all_tasks(rt))[0]
        edits = [lambda: rt.tasks.update(task.id, title="Fix login (local)"),
                 lambda: _async(linear.edit, issue["id"], title="Fix login (Linear)")]
        for edit in edits if newer == "linear" else edits[::-1]:
            await edit()
            await anyio.sleep(0.01)  # the two sides' timestamps differ
        summary = await rt.linear.run(WS)
        after = await rt.tasks.get(task.id)
    expected = "Fix login (Linear)" if winner == "linear" else "Fix login (local)"
    assert summary.conflicts == 1
    assert after.title == issue["title"] == expected, "both sides agree on the winner's value"
    assert after.conflict is not None and (after.conflict.policy, after.conflict.winner) == (policy, winner)
    assert after.conflict.fields == ["title"]
    assert after.conflict.local == {"title": "Fix login (local)"}
    assert after.conflict.linear == {"title": "Fix login (Linear)"}
    assert after.sync_state == "synced"


async def _async(fn: Any, *args: Any, **kwargs: Any) -> Any:
    return fn(*args, **kwargs)


# ---- rate limits and failures ------------------------------------------------------------------------------

async def test_rate_limits_server_errors_timeouts_and_complexity_are_waited_out(
        tmp_path: Any, linear: StandIn, settings_for: Any) -> None:
    for n in range(120):
        linear.add_issue(f"Task {n}")
    linear.max_page = 60  # Linear refuses a page of 100 as too complex: the client halves it
    linear.faults = [Fault("429", op="StackMemoryIssues", retry_after=3), Fault("500"),
                     Fault("ratelimited", op="StackMemoryIssues", retry_after=7),
                     Fault("timeout", op="StackMemoryIssues", seconds=1.5)]
    sleeps = Sleeps()
    async with opened(str(tmp_path / "t.db"), linear, settings_for, sleeps=sleeps) as rt:
        await rt.tasks.create("Local work")
        linear.faults.append(Fault("429", op="StackMemoryCreate", retry_after=2))
        summary = await rt.linear.run(WS)
        tasks = await all_tasks(rt)
    assert (summary.state, summary.pulled, summary.created_in_linear) == ("done", 120, 1)
    assert len(tasks) == 121 and linear.faults == []
    assert 3.0 in sleeps and 2.0 in sleeps, "Retry-After is honoured"
    assert any(6.0 <= s <= 7.0 for s in sleeps), "a RATELIMITED error waits until Linear's reset time"
    assert [c["first"] for c in issue_calls(linear)] == [100, 50, 50, 50], "too complex at 100: pages of 50"


async def test_linear_down_fails_the_sync_leaving_the_cursor_and_the_next_sync_continues(
        tmp_path: Any, linear: StandIn, settings_for: Any) -> None:
    linear.add_issue("Before the outage")
    async with opened(str(tmp_path / "t.db"), linear, settings_for) as rt:
        await rt.linear.run(WS)
        cursor = (await rt.linear.store.connection(WS)).cursor
        linear.add_issue("During the outage")
        linear.faults = [Fault("500") for _ in range(6)]
        failed = await rt.linear.run(WS)
        assert (await rt.linear.store.connection(WS)).cursor == cursor
        recovered = await rt.linear.run(WS)
        titles = {t.title for t in await all_tasks(rt)}
    assert failed.state == "failed" and "did not answer after 6 attempts" in (failed.error or "")
    assert linear.api_key not in (failed.error or "")
    assert recovered.state == "done" and titles == {"Before the outage", "During the outage"}


async def test_a_wrong_api_key_is_refused_at_connect_without_repeating_it(tmp_path: Any, linear: StandIn,
                                                                          settings_for: Any) -> None:
    async with opened(str(tmp_path / "t.db"), linear, settings_for, connect=False) as rt:
        with pytest.raises(LinearAuthError) as info:
            await rt.linear.connect(WS, LOCAL_USER_ID, "lin_api_wrong-key-123", "ENG")
        assert await rt.linear.store.connection(WS) is None
    assert "refused the API key" in str(info.value) and "wrong-key-123" not in str(info.value)


# ---- never a duplicate -------------------------------------------------------------------------------------

def cli(db: str, linear: StandIn, *args: str, **env: str) -> subprocess.Popen[str]:
    return subprocess.Popen([PYTHON, "-m", "server", "linear", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            env=server_env(db, STACKMEMORY_LINEAR_URL=linear.url, LIN_KEY=linear.api_key, **env))


def cli_ok(db: str, linear: StandIn, *args: str, **env: str) -> Any:
    proc = cli(db, linear, *args, "--json", **env)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    return json.loads(out)


async def test_a_sync_killed_mid_push_creates_nothing_twice_when_run_again(db_target: str, linear: StandIn,
                                                                           settings_for: Any) -> None:
    async with opened(db_target, linear, settings_for, connect=False) as rt:
        made = [await rt.tasks.create(f"Task {n}", priority="medium") for n in range(6)]
    cli_ok(db_target, linear, "connect", "--team", "ENG", "--api-key-env", "LIN_KEY")
    proc = cli(db_target, linear, "sync")
    # Linear creates the third issue and the sync dies before hearing back (so before it records anything).
    linear.on_create = lambda n: os.kill(proc.pid, signal.SIGKILL) if n == 3 else None
    proc.communicate(timeout=120)
    assert proc.returncode == -signal.SIGKILL and len(linear.issues) == 3
    linear.on_create = None
    rerun = cli_ok(db_target, linear, "sync")
    assert rerun[0]["state"] == "done" and rerun[0]["created_in_linear"] == 3
    assert cli_ok(db_target, linear, "sync")[0]["created_in_linear"] == 0
    async with opened(db_target, linear, settings_for, connect=False) as rt:
        tasks = await all_tasks(rt)
    assert sorted(t.title for t in tasks) == sorted(t.title for t in made), "no task was pulled back as a copy"
    assert sorted(i["title"] for i in linear.issues.values()) == sorted(t.title for t in made)
    assert {t.linear.id for t in tasks} == set(linear.issues), "each task maps to exactly one issue"


# ---- one sync per workspace ----------------------------------------------------------------------------------

async def test_disconnecting_forgets_the_key_and_keeps_the_tasks(db_target: str, linear: StandIn,
                                                                 settings_for: Any) -> None:
    linear.add_issue("Kept after disconnect")
    cli_ok(db_target, linear, "connect", "--team", "ENG", "--api-key-env", "LIN_KEY")
    cli_ok(db_target, linear, "sync")
    gone = cli_ok(db_target, linear, "disconnect")
    assert [g["team"] for g in gone] == ["ENG"] and gone[0]["tasks"]["total"] == 1
    assert cli_ok(db_target, linear, "status") == []
    again = cli(db_target, linear, "disconnect")
    _, err = again.communicate(timeout=120)
    assert again.returncode != 0 and "not connected to Linear" in err
    async with opened(db_target, linear, settings_for, connect=False) as rt:
        assert [t.title for t in await all_tasks(rt)] == ["Kept after disconnect"]
        with pytest.raises(InvalidInput, match="not connected to Linear"):
            await rt.tasks.sync()


async def test_one_workspace_is_synced_by_one_process_at_a_time(db_target: str, linear: StandIn,
                                                               settings_for: Any) -> None:
    import threading

    linear.add_issue("Shared work")
    linear.hold = threading.Event()
    results: dict[str, Any] = {}
    async with opened(db_target, linear, settings_for) as one, \
            opened(db_target, linear, settings_for, connect=False) as two:

        async def first() -> None:
            results["one"] = await one.linear.run(WS)

        async with anyio.create_task_group() as tg:
            tg.start_soon(first)
            await anyio.to_thread.run_sync(linear.held.wait, 30)  # the first is mid-pull
            results["two"] = await two.linear.run(WS)
            linear.hold.set()
    assert results["two"].state == "busy" and results["one"].state == "done"
    assert len(issue_calls(linear)) == 1


async def test_ten_assistants_asking_for_a_sync_at_once_do_not_each_sync(db_target: str, linear: StandIn,
                                                                         settings_for: Any) -> None:
    for n in range(5):
        linear.add_issue(f"Task {n}")
    async with opened(db_target, linear, settings_for, worker=True) as rt:
        summaries: list[Any] = []

        async def ask() -> None:
            summaries.append(await rt.tasks.sync())

        async with anyio.create_task_group() as tg:
            for _ in range(10):
                tg.start_soon(ask)
        tasks = await all_tasks(rt)
    assert [s.state for s in summaries] == ["done"] * 10
    assert len(tasks) == 5 and 1 <= len(issue_calls(linear)) <= 2


async def test_a_connected_workspace_is_synced_on_a_schedule_without_being_asked(
        tmp_path: Any, linear: StandIn, settings_for: Any) -> None:
    linear.add_issue("First")
    async with opened(str(tmp_path / "t.db"), linear, settings_for, worker=True,
                      STACKMEMORY_LINEAR_INTERVAL="1") as rt:
        linear.add_issue("Added later in Linear")
        titles: set[str] = set()
        with anyio.fail_after(30):
            while "Added later in Linear" not in titles:
                await anyio.sleep(0.2)
                titles = {t.title for t in await all_tasks(rt)}
    assert titles == {"First", "Added later in Linear"}


# ---- tools, roles and the change feed ------------------------------------------------------------------------

async def test_the_task_tools_create_update_list_and_sync(tmp_path: Any, linear: StandIn, settings_for: Any) -> None:
    from mcp import Client

    from server.app import build_server

    async with opened(str(tmp_path / "t.db"), linear, settings_for, worker=True, connect=False) as rt, \
            Client(build_server(rt)) as c:
        made = await c.call_tool("create_task", {"title": "Add rate limiting", "priority": "high",
                                                 "labels": ["backend"]})
        task = made.structured_content
        assert not made.is_error and task["status"] == "todo" and task["sync_state"] == "unlinked"
        refused = await c.call_tool("sync_linear", {})
        assert refused.is_error and "stackmemory linear connect" in refused.content[0].text
        await rt.linear.connect(WS, LOCAL_USER_ID, linear.api_key, "ENG")
        summary = (await c.call_tool("sync_linear", {})).structured_content
        assert (summary["state"], summary["created_in_linear"], summary["workspace"]) == ("done", 1, "~local")
        changed = await c.call_tool("update_task", {"id": task["id"], "status": "done", "expected_version": 1})
        assert changed.structured_content["version"] == 2 and changed.structured_content["sync_state"] == "pending"
        stale = await c.call_tool("update_task", {"id": task["id"], "title": "x", "expected_version": 1})
        assert stale.is_error and "version 2" in stale.content[0].text
        listed = (await c.call_tool("list_tasks", {"status": ["done"]})).structured_content
        assert [t["linear"]["identifier"] for t in listed["tasks"]] == ["ENG-1"]
        bad = await c.call_tool("create_task", {"title": "  "})
        assert bad.is_error and "title is empty" in bad.content[0].text
        assert linear.api_key not in json.dumps([summary, listed])


async def test_readers_see_tasks_but_cannot_create_or_change_them(db_target: str, linear: StandIn,
                                                                 settings_for: Any) -> None:
    from server.accounts import Accounts

    async with opened(db_target, linear, settings_for, connect=False) as rt:
        accounts = Accounts(rt.service.accounts)
        alice, rita = await accounts.create_user("alice"), await accounts.create_user("rita")
        await accounts.create_workspace("team", "alice")
        await accounts.add_member("team", "rita", "reader")
        as_alice, as_rita = Caller(alice.id, "alice"), Caller(rita.id, "rita")
        task = await rt.tasks.create("Team task", workspace="team", caller=as_alice)
        with pytest.raises(PermissionDenied, match="reader"):
            await rt.tasks.create("Sneaky", workspace="team", caller=as_rita)
        with pytest.raises(PermissionDenied, match="reader"):
            await rt.tasks.update(task.id, title="Sneaky", caller=as_rita)
        seen = await rt.tasks.list_tasks(workspace="team", caller=as_rita)
        mine = await rt.tasks.list_tasks(caller=as_rita)
        feed = await rt.service.changes("team", caller=as_rita)
    assert [t.title for t in seen.tasks] == ["Team task"] and mine.tasks == []
    assert [(c.entity, c.kind, c.id) for c in feed.changes] == [("task", "create", task.id)]  # readers hear of it


async def test_task_tools_and_syncs_write_the_change_feed_but_sync_bookkeeping_does_not(
        db_target: str, linear: StandIn, settings_for: Any) -> None:
    from mcp import Client

    from server.app import build_server

    issue = linear.add_issue("From Linear")
    async with opened(db_target, linear, settings_for) as rt, Client(build_server(rt)) as c:

        async def task_changes(since: int) -> list[tuple[str, str]]:
            page = ok(await c.call_tool("get_changes", {"since": since, "limit": 1000}))
            return [(ch["kind"], ch["id"]) for ch in page["changes"] if ch["entity"] == "task"]

        start = ok(await c.call_tool("get_changes", {}))["next_cursor"]
        mine = ok(await c.call_tool("create_task", {"title": "Mine"}))["id"]
        ok(await c.call_tool("update_task", {"id": mine, "status": "in_progress"}))
        await rt.linear.run(WS)  # pulls "From Linear" and pushes "Mine" (which gains its Linear link)
        pulled = next(t for t in await all_tasks(rt) if t.title == "From Linear")
        assert await task_changes(start) == [("create", mine), ("update", mine), ("create", pulled.id),
                                             ("update", mine)]

        settled = ok(await c.call_tool("get_changes", {}))["next_cursor"]
        linear.edit(issue["id"])  # touched in Linear (its updatedAt moves) without changing a field we keep
        linear.faults = [Fault("complexity", op="StackMemoryUpdate")]  # and the next push of "Mine" fails
        ok(await c.call_tool("update_task", {"id": mine, "priority": "high"}))
        summary = await rt.linear.run(WS)
        assert summary.state == "done" and len(summary.errors) == 1
        assert (await rt.tasks.get(mine)).sync_error is not None  # the sync wrote its bookkeeping...
        assert (await rt.tasks.get(pulled.id)).linear.updated_at > pulled.linear.updated_at
        assert await task_changes(settled) == [("update", mine)]  # ...and only the person's edit is news


async def test_a_listening_session_hears_of_a_task_a_webhook_changed(db_target: str, linear: StandIn,
                                                                     settings_for: Any) -> None:
    from mcp import Client

    from server.app import build_server

    issue = linear.add_issue("From Linear")
    async with opened(db_target, linear, settings_for) as rt, Client(build_server(rt)) as c:
        await rt.linear.run(WS)
        uri = ok(await c.call_tool("get_changes", {}))["uri"]
        async with c.listen(resource_subscriptions=[uri]) as sub:
            linear.edit(issue["id"], title="From Linear, renamed")
            body = linear.webhook(linear.issues[issue["id"]])
            status, answer = await rt.linear.webhook(body, {"linear-signature": sign(body, SECRET)})
            assert status == 200 and answer["changed"] is True
            with anyio.fail_after(10):
                assert (await sub.__anext__()).uri == uri
        newest = ok(await c.call_tool("get_changes", {}))["changes"][-1]
    assert (newest["entity"], newest["kind"], newest["id"]) == ("task", "update", answer["task"])


async def test_memory_status_and_the_still_embedding_note_count_embedding_jobs_not_linear_syncs(
        db_target: str, linear: StandIn, settings_for: Any) -> None:
    from mcp import Client

    from server.app import build_server
    from tests.test_semantic import FakeEmbedder

    async with opened(db_target, linear, settings_for, embedder=FakeEmbedder()) as rt, \
            Client(build_server(rt)) as c:
        assert (await rt.service.jobs.counts()).pending == 1  # connecting queued a first sync; no worker runs
        status = ok(await c.call_tool("memory_status", {}))
        assert (status["pending_jobs"], status["failed_jobs"]) == (0, 0)
        assert ok(await c.call_tool("search_memory", {"query": "deploys"}))["note"] is None
        ok(await c.call_tool("store_memory", {"content": "Deploys go through CI only"}))
        assert ok(await c.call_tool("memory_status", {}))["pending_jobs"] == 1
        note = ok(await c.call_tool("search_memory", {"query": "deploys"}))["note"]
    assert note.startswith("1 memories are still waiting to be embedded")


# ---- webhooks over HTTP ----------------------------------------------------------------------------------

def post(url: str, body: bytes, headers: dict[str, str]) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(url, data=body, method="POST",
                                     headers={"Content-Type": "application/json", **headers})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


async def test_webhooks_are_applied_only_when_signed_fresh_and_new(db_target: str, linear: StandIn,
                                                                   settings_for: Any) -> None:
    from tests.test_transports import Served

    issue = linear.add_issue("Deploy pipeline")
    issue_token(db_target)  # the user "tester", whose personal workspace is connected
    cli_ok(db_target, linear, "connect", "--workspace", "~tester", "--team", "ENG", "--api-key-env", "LIN_KEY",
           "--webhook-secret-env", "HOOK_SECRET", HOOK_SECRET=SECRET)
    cli_ok(db_target, linear, "sync")
    served = Served(db_target, "http", STACKMEMORY_LINEAR_URL=linear.url, STACKMEMORY_LINEAR_INTERVAL="0")
    try:
        hook = served.base + "/webhooks/linear"

        async def title() -> str:
            async with served.client() as c:
                return str((await c.call_tool("list_tasks", {})).structured_content["tasks"][0]["title"])

        async def task_changes(token: str | None = "") -> list[tuple[str, str]]:
            async with served.client(token) as c:
                page = (await c.call_tool("get_changes", {"workspace": "~tester"})).structured_content
            return [(ch["kind"], ch["id"]) for ch in page["changes"] if ch["entity"] == "task"]

        before = await task_changes()
        linear.edit(issue["id"], title="Deploy pipeline v2")
        valid = linear.webhook(issue)
        delivery = {"Linear-Delivery": str(uuid.uuid4()), "Linear-Event": "Issue"}
        assert post(hook, valid, {"Linear-Signature": sign(valid, SECRET), **delivery})[0] == 200
        assert await title() == "Deploy pipeline v2"
        async with served.client() as c:
            task_id = (await c.call_tool("list_tasks", {})).structured_content["tasks"][0]["id"]
        assert await task_changes() == [*before, ("update", task_id)]  # the webhook's change is in the feed
        async with served.client(issue_token(db_target, "outsider")) as c:
            hidden = await c.call_tool("get_changes", {"workspace": "~tester"})
        assert hidden.is_error and "Deploy" not in str(hidden.content)

        linear.edit(issue["id"], title="Forged title")
        forged = linear.webhook(issue)
        assert post(hook, forged, {"Linear-Signature": sign(forged, "not-the-secret")})[0] == 401
        assert post(hook, forged, {"Linear-Signature": sign(valid, SECRET)})[0] == 401  # a signature of another body
        assert post(hook, forged, {})[0] == 401
        stale = linear.webhook(issue, at=time.time() - 120)
        assert post(hook, stale, {"Linear-Signature": sign(stale, SECRET)})[0] == 401
        assert await title() == "Deploy pipeline v2"
        assert await task_changes() == [*before, ("update", task_id)]  # rejected webhooks left no entry

        async with served.client() as c:
            task = (await c.call_tool("list_tasks", {})).structured_content["tasks"][0]
            await c.call_tool("update_task", {"id": task["id"], "title": "Deploy pipeline (local)"})
        replay = post(hook, valid, {"Linear-Signature": sign(valid, SECRET), **delivery})
        assert replay == (200, {"status": "duplicate", "changed": False})
        assert await title() == "Deploy pipeline (local)"
    finally:
        served.stop()
    assert SECRET not in served.stderr() and linear.api_key not in served.stderr()


# ---- secrets stay secret -------------------------------------------------------------------------------------

async def test_the_api_key_is_never_printed_logged_or_shown(tmp_path: Any, linear: StandIn) -> None:
    db = str(tmp_path / "t.db")
    linear.add_issue("Anything")
    outputs = []
    for args in (("connect", "--team", "ENG", "--api-key-env", "LIN_KEY", "--webhook-secret", SECRET),
                 ("sync",), ("sync",), ("status",), ("status", "--json")):
        if args == ("sync",) and not outputs[1:]:
            linear.faults = [Fault("500") for _ in range(6)]  # the first sync fails
        proc = cli(db, linear, *args, STACKMEMORY_LOG_LEVEL="DEBUG")
        out, err = proc.communicate(timeout=120)
        outputs.append(out + err)
    text = "\n".join(outputs)
    assert "connected" in outputs[0] and "did not answer after 6 attempts" in outputs[1]
    assert "done" in outputs[2] and '"linked": 1' in outputs[4]
    assert linear.api_key not in text and SECRET not in text


def test_signatures_and_timestamps_are_checked_exactly() -> None:
    from datetime import UTC, datetime

    body = b'{"action":"update"}'
    good = sign(body, SECRET)
    assert signature_valid(body, good, SECRET) and signature_valid(body, good.upper(), SECRET)
    assert not signature_valid(body + b" ", good, SECRET) and not signature_valid(body, good, "other")
    assert not signature_valid(body, None, SECRET) and not signature_valid(body, "", SECRET)
    now = datetime.now(UTC)
    ms = now.timestamp() * 1000
    assert timestamp_fresh(ms - 59_000, now) and not timestamp_fresh(ms - 61_000, now)
    assert not timestamp_fresh(None, now) and not timestamp_fresh("123", now) and not timestamp_fresh(True, now)


def test_statuses_map_to_the_teams_workflow_states_and_back() -> None:
    from server.linear import WorkflowState

    states = [WorkflowState("b", "Backlog", "backlog", 0), WorkflowState("t", "Todo", "unstarted", 1),
              WorkflowState("p", "In Progress", "started", 2), WorkflowState("d", "Done", "completed", 3),
              WorkflowState("c", "Canceled", "canceled", 4)]
    assert [state_for(s, states, None) for s in ("todo", "in_progress", "done", "cancelled", "blocked")] == [
        "t", "p", "d", "c", "p"], "without a Blocked state, blocked work is started"
    assert state_for("todo", states, "b") == "b", "an issue in the backlog is already todo: it stays"
    assert [status_of(s) for s in states] == ["todo", "todo", "in_progress", "done", "cancelled"]
    assert status_of(WorkflowState("x", "Blocked by vendor", "started")) == "blocked"
