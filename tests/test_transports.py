"""`stackmemory serve --transport http|sse` as a real process on a loopback port, driven by the SDK client."""

from __future__ import annotations

import json
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from mcp import Client

from server.app import tool_names
from server.service import HIDDEN_LOCATION
from tests.conftest import PYTHON, issue_token, mcp_client, server_env

pytestmark = pytest.mark.anyio


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def get(url: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as exc:
        body = exc.read()
        try:
            return exc.code, json.loads(body or b"{}")
        except json.JSONDecodeError:
            return exc.code, {"text": body.decode(errors="replace")}


class Served:
    """A `stackmemory serve` process; with tokens on (the default), `token` is a real API token of user
    "tester" and `client()` sends it."""

    def __init__(self, db: str, transport: str, auth: str = "tokens", **env: str) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.transport = transport
        self.db = db
        self.token = issue_token(db) if auth == "tokens" else None
        # stderr goes to a file: a pipe nobody reads would fill up and stall a server that logs a lot.
        self.log = tempfile.NamedTemporaryFile(prefix="served-", suffix=".log", delete=False)  # noqa: SIM115
        self.proc = subprocess.Popen(
            [PYTHON, "-m", "server", "serve", "--transport", transport, "--port", str(self.port)],
            env=server_env(db, STACKMEMORY_AUTH=auth, **env), stdout=subprocess.DEVNULL, stderr=self.log)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited: {self.stderr()}")
            try:
                if get(self.base + "/healthz")[0] == 200:
                    return
            except OSError:
                time.sleep(0.05)
        raise AssertionError("server did not answer /healthz within 30 s")

    def client(self, token: str | None = "") -> Any:
        """An SDK client with this server's token (or the given one; None sends no header)."""
        return mcp_client(self.base, self.transport, self.token if token == "" else token)

    def stderr(self) -> str:
        path = Path(self.log.name)
        return path.read_text(errors="replace") if path.exists() else self._final_log

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self._final_log = self.stderr()
        self.log.close()
        Path(self.log.name).unlink(missing_ok=True)


@pytest.fixture(params=["http", "sse"])
def served(request: pytest.FixtureRequest, db_target: str) -> Iterator[Served]:
    s = Served(db_target, request.param)
    try:
        yield s
    finally:
        s.stop()


def connect(s: Served) -> Client:
    return s.client()  # type: ignore[no-any-return]


def data(result: Any) -> Any:
    assert not result.is_error, result.content[0].text
    return result.structured_content


async def test_every_tool_works_over_the_network(served: Served) -> None:
    async with connect(served) as c:
        names = {t.name for t in (await c.list_tools()).tools}
        assert names == set(tool_names())
        batch = data(await c.call_tool("store_memories", {"memories": [{"content": "Prod lives at example.com"},
                                                                       {"content": "Deploys need two approvals"}]}))
        assert batch["created"] == 2
        for stored in batch["results"]:
            assert data(await c.call_tool("delete_memory", {"id": stored["id"]}))["deleted"] is True
        mid = data(await c.call_tool("store_memory", {"content": "Staging lives at staging.example.com",
                                                      "kind": "fact", "tags": ["env"]}))["id"]
        assert [r["id"] for r in data(await c.call_tool("search_memory", {"query": "staging"}))["results"]
                ] == [mid]
        assert data(await c.call_tool("update_memory", {"id": mid, "importance": 9}))["version"] == 2
        assert data(await c.call_tool("get_memory", {"id": mid}))["importance"] == 9
        assert len(data(await c.call_tool("list_memories", {}))["memories"]) == 1
        assert "staging.example.com" in data(await c.call_tool("get_context", {}))["summary"]
        status = data(await c.call_tool("memory_status", {}))
        assert status["memories"] == 1
        assert status["location"] == HIDDEN_LOCATION  # where the database lives is the operator's business
        assert data(await c.call_tool("delete_memory", {"id": mid}))["deleted"] is True
        bad = await c.call_tool("get_memory", {"id": "nope"})
        assert bad.is_error and "expected a UUID" in bad.content[0].text


async def test_health_and_readiness_endpoints_answer(served: Served) -> None:
    assert get(served.base + "/healthz") == (200, {"status": "ok"})
    status, body = get(served.base + "/readyz")
    assert status == 200 and body["status"] == "ready" and body["schema_version"] >= 1


async def test_requests_with_a_foreign_host_or_origin_are_refused(served: Served) -> None:
    path = "/sse" if served.transport == "sse" else "/mcp"
    token = {"Authorization": f"Bearer {served.token}"}  # a valid token does not get a foreign host in
    status, _ = get(served.base + path, {"Host": "evil.example:80", "Accept": "text/event-stream", **token})
    assert status in (403, 421)
    status, _ = get(served.base + path, {"Origin": "http://evil.example", "Accept": "text/event-stream", **token})
    assert status == 403
