"""The MCP tool surface through the SDK's in-memory client, on both backends."""

from __future__ import annotations

from typing import Any

import pytest

pytestmark = pytest.mark.anyio

TOOLS = {"store_memory", "store_memories", "get_memory", "update_memory", "delete_memory", "list_memories", "share_memory",
         "list_workspaces", "search_memory",
         "get_context", "get_changes", "create_task", "update_task", "list_tasks", "sync_linear",
         "memory_status"}


def data(result: Any) -> Any:
    assert not result.is_error, result.content[0].text
    return result.structured_content


def error(result: Any) -> str:
    assert result.is_error, result.structured_content
    text: str = result.content[0].text
    assert "Error executing tool" not in text or ":" in text.split("Error executing tool", 1)[1]
    return text


async def test_every_tool_is_listed_with_described_parameters_and_hints(client: Any) -> None:
    tools = {t.name: t for t in (await client.list_tools()).tools}
    assert set(tools) == TOOLS
    for tool in tools.values():
        assert tool.description and tool.output_schema
        for name, prop in tool.input_schema.get("properties", {}).items():
            assert prop.get("description"), f"{tool.name}.{name} has no description"
        assert "svc" not in tool.input_schema.get("properties", {})
    assert tools["search_memory"].annotations.read_only_hint is True
    assert tools["delete_memory"].annotations.destructive_hint is True
    assert tools["store_memory"].annotations.read_only_hint is False
    assert tools["store_memory"].input_schema["required"] == ["content"]


async def test_an_assistant_can_store_find_update_and_delete_a_memory(client: Any) -> None:
    stored = data(await client.call_tool("store_memory", {
        "content": "Hosted deployments run on PostgreSQL 16", "kind": "decision", "tags": ["db"],
        "importance": 8, "metadata": {"source": "adr-7"}}))
    mid = stored["id"]
    assert stored["created"] is True and stored["project"] == "demo"

    found = data(await client.call_tool("search_memory", {"query": "which PostgreSQL version?"}))
    assert found["mode"] == "keyword"
    assert [r["id"] for r in found["results"]] == [mid]
    assert found["results"][0]["content"] == "Hosted deployments run on PostgreSQL 16"
    assert "postgresql" in found["results"][0]["reason"]

    updated = data(await client.call_tool("update_memory", {"id": mid, "content": "Hosted runs PostgreSQL 17",
                                                            "expected_version": 1}))
    assert updated["version"] == 2
    assert data(await client.call_tool("get_memory", {"id": mid}))["content"] == "Hosted runs PostgreSQL 17"

    listed = data(await client.call_tool("list_memories", {"kind": "decision"}))
    assert [m["id"] for m in listed["memories"]] == [mid] and listed["next_cursor"] is None

    context = data(await client.call_tool("get_context", {}))
    assert "Hosted runs PostgreSQL 17" in context["summary"]

    assert data(await client.call_tool("delete_memory", {"id": mid}))["deleted"] is True
    assert "no memory with id" in error(await client.call_tool("get_memory", {"id": mid}))
    status = data(await client.call_tool("memory_status", {}))
    assert (status["memories"], status["deleted"]) == (0, 1)


async def test_storing_a_duplicate_says_so(client: Any) -> None:
    first = data(await client.call_tool("store_memory", {"content": "Tabs, not spaces"}))
    again = data(await client.call_tool("store_memory", {"content": "tabs,  NOT spaces"}))
    assert again["created"] is False and again["id"] == first["id"]
    assert "already stored" in again["message"]


async def test_store_memories_stores_a_batch_in_order_and_flags_duplicates(client: Any) -> None:
    before = data(await client.call_tool("store_memory", {"content": "Releases are cut on Tuesdays"}))
    key = "ghp_" + "R4nd0mT0k3nV4lu3sAreL0ngEnough0123456"
    batch = data(await client.call_tool("store_memories", {"memories": [
        {"content": "The billing service retries webhooks 5 times", "kind": "fact", "tags": ["billing"]},
        {"content": "releases are cut on  TUESDAYS"},  # a duplicate of a stored memory
        {"content": "Use structured logging everywhere", "kind": "preference", "importance": 9,
         "project": "platform"},
        {"content": "The billing service retries webhooks 5 times"},  # a duplicate of item 0
        {"content": f"CI pushes with {key}", "kind": "constraint"},
    ]}))
    results = batch["results"]
    assert (batch["created"], batch["existing"]) == (3, 2)
    assert [r["created"] for r in results] == [True, False, True, False, True]
    assert results[1]["id"] == before["id"] and "already stored" in results[1]["message"]
    assert results[3]["id"] == results[0]["id"]
    assert [r["kind"] for r in results] == ["fact", "note", "preference", "fact", "constraint"]  # an existing one's
    assert results[2]["project"] == "platform" and results[0]["project"] == "demo"
    assert "redacted" in results[4]["message"] and "redacted" not in results[0]["message"]
    stored = data(await client.call_tool("get_memory", {"id": results[4]["id"]}))
    assert key not in stored["content"] and stored["kind"] == "constraint"
    assert data(await client.call_tool("get_memory", {"id": results[2]["id"]}))["importance"] == 9
    found = data(await client.call_tool("search_memory", {"query": "webhooks retries"}))
    assert [r["id"] for r in found["results"]] == [results[0]["id"]]
    assert data(await client.call_tool("memory_status", {}))["memories"] == 4


@pytest.mark.parametrize(("memories", "expected"), [
    ([{"content": "fine"}, {"content": "   "}, {"content": "also fine"}], "memories[1]: content is empty"),
    ([{"content": "fine"}, {"content": "x", "tags": [f"t{i}" for i in range(40)]}], "memories[1]: "),
    ([{"content": "fine"}, {"content": "x", "importance": 11}], "less than or equal to 10"),
    ([{"content": "fine"}, {"content": "x", "kind": "opinion"}], "'fact'"),
    ([{"content": "fine"}, {"content": "x", "workspace": "no-such-team"}], "memories[1]: "),
    ([], "at least 1 item"),
    ([{"content": f"memory {i}"} for i in range(101)], "at most 100 items"),
])
async def test_a_bad_memory_in_a_batch_stores_none_of_them(client: Any, memories: list[dict[str, Any]],
                                                           expected: str) -> None:
    message = error(await client.call_tool("store_memories", {"memories": memories}))
    assert expected in message, message
    if "memories[" in expected:
        assert "nothing was stored" in message
    assert data(await client.call_tool("memory_status", {}))["memories"] == 0


@pytest.mark.parametrize(
    ("tool", "args", "expected"),
    [
        ("store_memory", {"content": "  "}, "content is empty"),
        ("store_memory", {"content": "x" * 70_000}, "the limit is 64 KiB"),
        ("store_memory", {"content": "ok", "kind": "opinion"}, "'fact'"),
        ("store_memory", {"content": "ok", "importance": 11}, "less than or equal to 10"),
        ("store_memory", {"content": "ok", "metadata": "text"}, "metadata"),
        ("store_memory", {"content": "ok", "metadata": [1, 2]}, "metadata"),
        ("store_memory", {}, "content"),
        ("search_memory", {"query": "x", "limit": 0}, "greater than or equal to 1"),
        ("search_memory", {"query": "x", "limit": 500}, "less than or equal to 100"),
        ("search_memory", {"query": ""}, "query is empty"),
        ("get_memory", {"id": "not-an-id"}, "expected a UUID"),
        ("get_memory", {"id": "01936f2e-7c3a-7d4e-9b1a-2f3c4d5e6f70"}, "no memory with id"),
        ("delete_memory", {"id": "01936f2e-7c3a-7d4e-9b1a-2f3c4d5e6f70"}, "no memory with id"),
        ("update_memory", {"id": "01936f2e-7c3a-7d4e-9b1a-2f3c4d5e6f70", "content": "x"}, "no memory with id"),
        ("list_memories", {"cursor": "garbage"}, "cursor 'garbage' is not valid"),
        ("store_memory", {"content": "ok", "visiblity": "private"},
         "store_memory has no argument 'visiblity' (did you mean 'visibility'?)"),
        ("search_memory", {"query": "x", "limt": 1}, "search_memory has no argument 'limt' (did you mean 'limit'?)"),
        ("update_memory", {"id": "01936f2e-7c3a-7d4e-9b1a-2f3c4d5e6f70", "expires_at": "2031-01-01T00:00:00Z",
                           "clear_expiry": True}, "expires_at and clear_expiry contradict each other"),
    ],
)
async def test_bad_arguments_are_tool_errors_that_say_what_to_fix(client: Any, tool: str, args: dict[str, Any],
                                                                   expected: str) -> None:
    assert expected in error(await client.call_tool(tool, args))
    assert data(await client.call_tool("memory_status", {}))["memories"] == 0


async def test_an_argument_a_tool_does_not_have_is_refused_not_dropped(client: Any) -> None:
    """A misspelt visibility stored a team-visible memory, and update_memory(visibility=...) reported success
    while changing nothing: both are now errors naming the argument, and the schemas say so."""
    tools = {t.name: t for t in (await client.list_tools()).tools}
    assert all(t.input_schema.get("additionalProperties") is False for t in tools.values())
    mid = data(await client.call_tool("store_memory", {"content": "private plans"}))["id"]
    message = error(await client.call_tool("update_memory", {"id": mid, "content": "v2", "visibility": "team"}))
    assert "update_memory has no argument 'visibility'" in message and "Its arguments are: " in message
    memory = data(await client.call_tool("get_memory", {"id": mid}))
    assert memory["content"] == "private plans" and memory["version"] == 1


async def test_a_stale_version_is_reported_as_a_conflict(client: Any) -> None:
    mid = data(await client.call_tool("store_memory", {"content": "v1"}))["id"]
    data(await client.call_tool("update_memory", {"id": mid, "content": "v2"}))
    message = error(await client.call_tool("update_memory", {"id": mid, "content": "v3", "expected_version": 1}))
    assert "is at version 2, not 1" in message
    assert data(await client.call_tool("get_memory", {"id": mid}))["content"] == "v2"


async def test_list_memories_pages_with_a_cursor(client: Any) -> None:
    for i in range(7):
        data(await client.call_tool("store_memory", {"content": f"note {i}"}))
    first = data(await client.call_tool("list_memories", {"limit": 5}))
    second = data(await client.call_tool("list_memories", {"limit": 5, "cursor": first["next_cursor"]}))
    contents = [m["content"] for m in first["memories"] + second["memories"]]
    assert contents == [f"note {i}" for i in range(6, -1, -1)] and second["next_cursor"] is None


def test_the_sdks_wrapper_for_resolved_values_is_built_once_not_after_every_garbage_collection() -> None:
    import gc

    from mcp.server.elicitation import AcceptedElicitation
    from mcp.server.mcpserver.resolve import _accepted

    import tools

    gc.collect()
    assert type(_accepted("a caller")) is tools.RESOLVED_VALUE is AcceptedElicitation[Any]
