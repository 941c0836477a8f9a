"""Bearer-token authentication on the HTTP transports: who gets in, what a refusal says, what is logged."""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from server.accounts import Accounts, hash_token
from server.ids import new_id
from tests.conftest import as_operator
from tests.test_transports import Served

pytestmark = pytest.mark.anyio

INIT = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
        "params": {"protocolVersion": "2025-06-18", "capabilities": {},
                   "clientInfo": {"name": "probe", "version": "0"}}}


def post(url: str, headers: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, data=json.dumps(INIT).encode(), method="POST", headers={
        "Content-Type": "application/json", "Accept": "application/json, text/event-stream", **headers})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def fetch(url: str, headers: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, dict(response.headers), response.read() if "json" in (
                response.headers.get("content-type") or "") else b""
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


@pytest.fixture(params=["http", "sse"])
def served(request: pytest.FixtureRequest, tmp_path: Any) -> Any:
    s = Served(str(tmp_path / "auth.db"), request.param, STACKMEMORY_LOG_LEVEL="DEBUG")
    try:
        yield s
    finally:
        s.stop()


def bad_tokens(s: Served) -> dict[str, str | None]:
    """Every way a token can be wrong: each must be refused exactly alike."""

    async def make(accounts: Accounts) -> dict[str, str]:
        revoked = await accounts.create_token("tester", "to revoke")
        await accounts.revoke_token(revoked.id)
        expired = "smk_" + new_id().replace("-", "") + "expiredexpired"
        user = await accounts.user("tester")
        await accounts.store.create_token(new_id(), user.id, "old", hash_token(expired),
                                          datetime.now(UTC) - timedelta(days=2),
                                          datetime.now(UTC) - timedelta(days=1))
        return {"revoked": revoked.token, "expired": expired}

    made = as_operator(s.db, make)
    return {"missing": None, "empty": "", "malformed": "not a token at all", "unknown": "smk_" + "A" * 43,
            "basic scheme": None, **made}


async def test_bad_or_missing_tokens_get_the_same_401_with_a_way_to_discover_auth(served: Served) -> None:
    path = "/sse" if served.transport == "sse" else "/mcp"
    answers = {}
    for label, token in bad_tokens(served).items():
        headers = {} if token is None else {"Authorization": f"Bearer {token}"}
        if label == "basic scheme":
            headers = {"Authorization": "Basic dGVzdGVyOnNlY3JldA=="}
        if served.transport == "sse":
            status, hdrs, body = fetch(served.base + path, {"Accept": "text/event-stream", **headers})
        else:
            status, hdrs, body = post(served.base + path, headers)
        assert status == 401, (label, status)
        challenge = {k.lower(): v for k, v in hdrs.items()}["www-authenticate"]
        assert challenge.startswith("Bearer ") and "resource_metadata=" in challenge, challenge
        answers[label] = (challenge, body)
    assert len(set(answers.values())) == 1, "a refusal must not tell which kind of token was wrong"
    metadata_url = answers["missing"][0].split('resource_metadata="')[1].split('"')[0]
    status, _, body = fetch(metadata_url, {})
    assert status == 200
    metadata = json.loads(body)
    assert metadata["resource"] == served.base + path
    assert metadata["bearer_methods_supported"] == ["header"]


async def test_a_valid_token_gets_in_and_a_revoked_one_stops_working(served: Served) -> None:
    async with served.client() as c:
        stored = await c.call_tool("store_memory", {"content": "token holders may write"})
        assert not stored.is_error
        assert stored.structured_content["author"] == "tester"
        listed = await c.call_tool("list_workspaces", {})
        assert [(w["workspace"], w["role"]) for w in listed.structured_content["workspaces"]] == [("~tester", "owner")]

    async def revoke_all(accounts: Accounts) -> None:
        for token in await accounts.list_tokens("tester"):
            if token.revoked_at is None:
                await accounts.revoke_token(token.id)

    as_operator(served.db, revoke_all)
    await asyncio.sleep(11)  # a checked token is trusted for 10 s (TOKEN_FRESH) before it is looked up again
    path = "/sse" if served.transport == "sse" else "/mcp"
    if served.transport == "http":
        assert post(served.base + path, {"Authorization": f"Bearer {served.token}"})[0] == 401


async def test_tokens_never_reach_the_logs(served: Served) -> None:
    async with served.client() as c:
        assert not (await c.call_tool("search_memory", {"query": "anything"})).is_error
    wrong = "smk_" + "B" * 43
    post(served.base + "/mcp", {"Authorization": f"Bearer {wrong}"})
    served.stop()
    log = served.stderr()
    assert log, "DEBUG logging was on: the server should have logged something"
    assert served.token is not None and served.token not in log and wrong not in log
    assert served.token[4:20] not in log


async def test_without_tokens_anyone_who_can_connect_acts_as_the_local_user(tmp_path: Any) -> None:
    s = Served(str(tmp_path / "open.db"), "http", auth="none")
    try:
        async with s.client(None) as c:
            stored = await c.call_tool("store_memory", {"content": "open server"})
            assert not stored.is_error and stored.structured_content["workspace_id"]
            assert (await c.call_tool("list_workspaces", {})).structured_content["workspaces"][0]["workspace"] == "~local"
    finally:
        s.stop()


async def test_postgres_serves_tokens_too(pg_url: str) -> None:
    s = Served(pg_url, "http")
    try:
        assert post(s.base + "/mcp", {})[0] == 401
        async with s.client() as c:
            assert not (await c.call_tool("store_memory", {"content": "hosted and authenticated"})).is_error
            found = await c.call_tool("search_memory", {"query": "authenticated"})
            assert [h["workspace"] for h in found.structured_content["results"]] == ["~tester"]
    finally:
        s.stop()
