"""HTTP hardening: request size limits, per-token rate limits, security headers, DNS-rebinding checks and
no tracebacks to clients, against a real `stackmemory serve` (and the middleware on its own)."""

from __future__ import annotations

import http.client
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from server.config import Settings
from server.errors import ConfigError
from server.http_guard import Guard, RateLimiter
from tests import figures
from tests.test_auth import INIT, fetch, post
from tests.test_transports import Served

pytestmark = pytest.mark.anyio
LIMIT = 200_000  # bytes, set on the served process below (above the 64 KiB content limit)


@pytest.fixture(params=["http", "sse"])
def served(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Served]:
    s = Served(str(tmp_path / "guard.db"), request.param, STACKMEMORY_MAX_REQUEST_BYTES=str(LIMIT),
               STACKMEMORY_RATE_LIMIT="5")
    try:
        yield s
    finally:
        s.stop()


def path(s: Served) -> str:
    return "/sse" if s.transport == "sse" else "/mcp"


def lower(headers: dict[str, str]) -> dict[str, str]:
    return {k.lower(): v for k, v in headers.items()}


def send(port: int, method: str, target: str, headers: dict[str, str], body: bytes | None = None,
         chunks: list[bytes] | None = None) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.putrequest(method, target, skip_host="Host" in headers, skip_accept_encoding=True)
        for k, v in headers.items():
            conn.putheader(k, v)
        if chunks is not None:
            conn.putheader("Transfer-Encoding", "chunked")
            conn.endheaders()
            try:
                for chunk in chunks:
                    conn.send(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                conn.send(b"0\r\n\r\n")
            except (BrokenPipeError, ConnectionResetError):
                pass  # the server may answer and close before the whole body is sent
        else:
            conn.putheader("Content-Length", str(len(body or b"")))
            conn.endheaders(body)
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()


async def test_every_response_carries_security_headers(served: Served) -> None:
    answers = {
        "health": fetch(served.base + "/healthz", {}),
        "refused": fetch(served.base + path(served), {"Accept": "text/event-stream"}),
        "metadata": fetch(served.base + "/.well-known/oauth-protected-resource" + path(served), {}),
    }
    for label, (status, headers, _) in answers.items():
        h = lower(headers)
        assert h.get("x-content-type-options") == "nosniff", (label, h)
        assert h.get("x-frame-options") == "DENY" and h.get("referrer-policy") == "no-referrer", (label, h)
        assert "default-src 'none'" in h.get("content-security-policy", ""), (label, h)
        assert h.get("cache-control"), (label, h)
    assert answers["refused"][0] == 401 and lower(answers["health"][1])["cache-control"] == "no-store"


async def test_oversized_bodies_are_refused_before_authentication_or_reading(served: Served) -> None:
    target = "/messages/?session_id=00000000000000000000000000000000" if served.transport == "sse" else "/mcp"
    big = b'{"jsonrpc": "2.0", "id": 1, "method": "ping", "params": {"pad": "' + b"x" * LIMIT + b'"}}'
    # No token at all: the size check comes first, so the answer is 413, not 401.
    status, headers, body = send(served.port, "POST", target, {"Content-Type": "application/json"}, big)
    assert status == 413, (status, body[:200])
    assert "STACKMEMORY_MAX_REQUEST_BYTES" in json.loads(body)["error"]
    assert lower(headers)["x-content-type-options"] == "nosniff"
    # A streamed body that never says its length is cut off once it passes the limit.
    auth = {"Authorization": f"Bearer {served.token}", "Content-Type": "application/json",
            "Accept": "application/json, text/event-stream"}
    status, _, body = send(served.port, "POST", target, auth, chunks=[b"x" * 65536] * 8)
    assert status == 413, (status, body[:200])
    status, _, _ = send(served.port, "POST", target, auth, b"{" + b" " * 100 + b"}")
    assert status != 413  # a small body passes the guard (and is then judged by MCP)
    figures.record("http_limits", {"max_request_bytes_default": Settings.max_request_bytes,
                                   "rate_limit_default_per_s": Settings.rate_limit})


async def test_each_token_is_rate_limited_with_429_and_retry_after(served: Served) -> None:
    other = served.token
    from tests.conftest import issue_token

    second = issue_token(served.db, "second")
    statuses = []
    for _ in range(20):  # the served rate is 5/s with bursts of 10
        if served.transport == "sse":
            statuses.append(send(served.port, "POST", "/messages/?session_id=0", {
                "Authorization": f"Bearer {other}", "Content-Type": "application/json"}, b"{}"))
        else:
            statuses.append(post(served.base + "/mcp", {"Authorization": f"Bearer {other}"}))
    codes = [s[0] for s in statuses]
    assert 429 in codes and codes.index(429) >= 5, codes
    limited = next(s for s in statuses if s[0] == 429)
    retry = lower(limited[1])["retry-after"]
    assert retry.isdigit() and int(retry) >= 1
    assert "rate limit" in json.loads(limited[2])["error"]
    # Another token has a bucket of its own, and health checks are never throttled.
    assert post(served.base + "/mcp", {"Authorization": f"Bearer {second}"})[0] != 429
    assert fetch(served.base + "/healthz", {})[0] == 200
    figures.record("rate_limit", {"rate": 5, "burst": 10, "first_429_after": codes.index(429),
                                  "retry_after_s": int(retry)})


async def test_made_up_tokens_count_against_the_address_not_a_bucket_each(served: Served) -> None:
    """Each made-up token used to get a bucket of its own, and a database lookup: a client sending a new one
    every time was never throttled. A token the server has not checked lately now counts against the
    client's address; once checked, a real token has its own bucket again."""
    import secrets

    import anyio

    def attempt(token: str) -> int:
        headers = {"Authorization": f"Bearer {token}"}
        if served.transport == "sse":
            return send(served.port, "POST", "/messages/?session_id=0",
                        {**headers, "Content-Type": "application/json"}, b"{}")[0]
        return post(served.base + "/mcp", headers)[0]

    codes = [attempt("smk_" + secrets.token_urlsafe(32)) for _ in range(25)]  # the served rate: 5/s, bursts of 10
    assert 429 in codes and codes.count(401) <= 12, codes
    await anyio.sleep(1)  # the address's bucket refills; the real token's first request is charged to it
    assert attempt(served.token) != 429
    assert all(attempt(served.token) != 429 for _ in range(5))  # now in a bucket of its own


async def test_foreign_hosts_and_origins_are_refused_for_posts_too(served: Served) -> None:
    token = {"Authorization": f"Bearer {served.token}", "Content-Type": "application/json",
             "Accept": "application/json, text/event-stream"}
    target = "/messages/?session_id=00000000000000000000000000000000" if served.transport == "sse" else "/mcp"
    body = json.dumps(INIT).encode()
    status, _, _ = send(served.port, "POST", target, {**token, "Host": "attacker.example"}, body)
    assert status in (403, 421), status
    status, _, _ = send(served.port, "POST", target, {**token, "Origin": "http://attacker.example"}, body)
    assert status == 403, status
    status, _, _ = send(served.port, "POST", target, {**token, "Origin": f"http://127.0.0.1:{served.port}"}, body)
    assert status not in (403, 421)


async def test_an_unexpected_error_is_a_bare_500_and_the_traceback_stays_in_the_log(
        caplog: pytest.LogCaptureFixture) -> None:
    async def broken(scope: Any, receive: Any, send: Any) -> None:
        raise RuntimeError("secret internal detail at /srv/app.py line 42")

    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def collect(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "GET", "path": "/mcp", "headers": [], "client": ("127.0.0.1", 1)}
    with caplog.at_level(logging.ERROR):
        await Guard(broken, max_body=1000, rate=0)(scope, receive, collect)
    assert sent[0]["status"] == 500
    body = sent[1]["body"].decode()
    assert "secret internal detail" not in body and "Traceback" not in body and "RuntimeError" not in body
    assert (b"x-content-type-options", b"nosniff") in sent[0]["headers"]
    assert "secret internal detail" in caplog.text  # the operator still sees what happened


def test_the_rate_limiter_refills_at_its_rate() -> None:
    bucket = RateLimiter(rate=2, burst=4)
    assert [bucket.take("k", now=0.0) for _ in range(4)] == [0, 0, 0, 0]
    assert bucket.take("k", now=0.0) == pytest.approx(0.5)
    assert bucket.take("k", now=0.5) == 0  # one token back after half a second
    assert bucket.take("other", now=0.5) == 0


def test_a_request_limit_below_the_content_limit_is_refused_at_start() -> None:
    with pytest.raises(ConfigError, match="STACKMEMORY_MAX_REQUEST_BYTES"):
        Settings.load(env={"STACKMEMORY_MAX_REQUEST_BYTES": "50000", "STACKMEMORY_TRANSPORT": "http"}, db="x.db")
    assert Settings.load(env={}, db="x.db").max_request_bytes > Settings.load(env={}, db="x.db").max_content_bytes


@pytest.mark.parametrize(("name", "value"), [("STACKMEMORY_PUBLIC_URL", "not-a-url"),
                                             ("STACKMEMORY_PUBLIC_URL", "ftp://memory.example.com"),
                                             ("STACKMEMORY_LOG_LEVEL", "LOUD")])
def test_a_malformed_setting_is_a_configuration_error_naming_it(name: str, value: str) -> None:
    """Both used to get past the settings and fail later with a traceback (the URL after the pool opened)."""
    with pytest.raises(ConfigError, match=name):
        Settings.load(env={name: value, "STACKMEMORY_TRANSPORT": "http"}, db="x.db")
    assert Settings.load(env={"STACKMEMORY_PUBLIC_URL": "https://memory.example.com/"}, db="x.db").public_url


async def test_a_streamed_body_past_the_limit_on_other_routes_is_cut_off_by_the_guard() -> None:
    read: list[int] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        while (message := await receive())["type"] == "http.request":
            read.append(len(message["body"]))
            if not message.get("more_body"):
                break
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    chunks = iter([{"type": "http.request", "body": b"x" * 600, "more_body": True}] * 5)
    sent: list[dict[str, Any]] = []

    async def receive() -> Any:
        return next(chunks)

    async def collect(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/upload", "headers": [], "client": ("127.0.0.1", 1)}
    await Guard(app, max_body=1000, rate=0)(scope, receive, collect)
    assert [m.get("status") for m in sent if m["type"] == "http.response.start"] == [413]
    assert sum(read) <= 1000 + 600  # the app never saw more than one chunk past the limit
