"""HTTP hardening around the MCP app: body size limit, per-token rate limit, security headers, no tracebacks."""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from collections import OrderedDict
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger(__name__)
BUCKETS = 10_000  # rate-limit buckets kept (least recently used dropped first)
# Every response: no MIME sniffing, no framing, no referrer, no content of its own (these are API
# responses, never pages), and nothing kept by caches or proxies.
HEADERS: tuple[tuple[bytes, bytes], ...] = (
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"content-security-policy", b"default-src 'none'; frame-ancestors 'none'"),
    (b"cross-origin-resource-policy", b"same-origin"),
)
UNLIMITED = ("/healthz", "/readyz")  # health checks are never throttled
SDK_LIMITED = ("/mcp", "/messages/")  # the MCP SDK caps bodies of undeclared length here itself
PROTECTED = ("/mcp", "/sse", "/messages/")  # what the MCP SDK serves only with a valid bearer token
RETRY_AUTH_S = 5  # Retry-After when tokens cannot be checked


class AuthUnavailable(Exception):
    """A token could not be checked (the database is unreachable) and was not seen lately."""


class TokenCheck(Protocol):
    def known(self, token: str) -> bool: ...

    async def verify_token(self, token: str) -> Any: ...


class RateLimiter:
    """Token buckets: `rate` requests a second with bursts of `burst`, per key (a token's hash, or the
    client's address when there is none)."""

    def __init__(self, rate: float, burst: float) -> None:
        self.rate = rate
        self.burst = burst
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def take(self, key: str, now: float | None = None) -> float:
        """0 if the request may go ahead, else the seconds until it may."""
        now = time.monotonic() if now is None else now
        tokens, last = self._buckets.get(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        wait = 0.0 if tokens >= 1 else (1 - tokens) / self.rate
        self._buckets[key] = (tokens - 1 if wait == 0 else tokens, now)
        self._buckets.move_to_end(key)
        while len(self._buckets) > BUCKETS:
            self._buckets.popitem(last=False)
        return wait


class Guard:
    """ASGI middleware, outermost: refuses oversized bodies (413, before reading them when Content-Length
    says so), throttles each token (429 with Retry-After), adds security headers to every response and
    turns an unexpected exception into a bare 500 (the traceback goes to the log, never to the client).

    With `tokens` (the server's verifier), a token it has not checked lately counts against the client's
    address, not a bucket of its own: checking it costs a database lookup, so a stream of made-up tokens
    is throttled like a client without any. And a request whose token cannot be checked because the
    database is down is answered 503 with Retry-After, not the 401 the MCP SDK would send."""

    def __init__(self, app: ASGIApp, max_body: int, rate: float, tokens: TokenCheck | None = None) -> None:
        self.app = app
        self.max_body = max_body
        self.limiter = RateLimiter(rate, max(1.0, 2 * rate)) if rate > 0 else None
        self.tokens = tokens

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = replied = False

        async def send_secured(message: Message) -> None:
            nonlocal started
            if replied:
                return  # the guard has answered (413); what the app says after that is dropped
            if message["type"] == "http.response.start":
                started = True
                headers = list(message.get("headers", []))
                names = {name.lower() for name, _ in headers}
                headers.extend(h for h in HEADERS if h[0] not in names)
                if b"cache-control" not in names:
                    headers.append((b"cache-control", b"no-store"))
                message = {**message, "headers": headers}
            await send(message)

        declared = _header(scope, b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_body):
            await _reply(send_secured, 413, self._too_large())
            return
        token = _bearer(scope)
        path = scope.get("path", "")
        if self.limiter is not None and path not in UNLIMITED:
            unchecked = token is not None and self.tokens is not None and not self.tokens.known(token)
            wait = self.limiter.take(_address_key(scope) if token is None or unchecked else _token_key(token))
            if wait > 0:
                retry = max(1, math.ceil(wait))
                await _reply(send_secured, 429, {"error": f"rate limit reached; retry in {retry} s"},
                             [(b"retry-after", str(retry).encode())])
                return
        if token is not None and self.tokens is not None and path.startswith(PROTECTED):
            try:  # the SDK's own check, next, finds the answer cached
                await self.tokens.verify_token(token)
            except AuthUnavailable as exc:
                await _reply(send_secured, 503, {"error": str(exc)}, [(b"retry-after", str(RETRY_AUTH_S).encode())])
                return
        received = 0

        async def receive_capped() -> Message:
            """The body as it arrives; past the limit the guard answers 413 itself and the app is told the
            client went away (an exception would be turned into a 500 by the app's own error handler)."""
            nonlocal received, replied
            if replied:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                # MCP's own endpoints stop a streamed body at max_body themselves, once the token is checked;
                # this backstop covers every other route.
                if received > self.max_body and scope.get("path") not in SDK_LIMITED:
                    if not started:
                        await _reply(send_secured, 413, self._too_large())
                    replied = True
                    return {"type": "http.disconnect"}
            return message

        try:
            await self.app(scope, receive_capped, send_secured)
        except Exception:
            if replied:
                return
            log.exception("unexpected error serving %s %s", scope.get("method"), scope.get("path"))
            if not started:
                await _reply(send_secured, 500, {"error": "internal error; the server log has the details"})

    def _too_large(self) -> dict[str, str]:
        return {"error": f"request body over {self.max_body} bytes (STACKMEMORY_MAX_REQUEST_BYTES)"}


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key.lower() == name:
            return str(value.decode("latin-1").strip())
    return None


def _bearer(scope: Scope) -> str | None:
    auth = _header(scope, b"authorization") or ""
    return (auth[7:].strip() or None) if auth[:7].lower() == "bearer " else None


def _token_key(token: str) -> str:
    """A token's rate-limit bucket (hashed: the token is never kept in the clear)."""
    return "t:" + hashlib.sha256(token.encode()).hexdigest()


def _address_key(scope: Scope) -> str:
    client = scope.get("client") or ("unknown", 0)
    return f"a:{client[0]}"


async def _reply(send: Any, status: int, body: dict[str, str],
                 extra: list[tuple[bytes, bytes]] | None = None) -> None:
    payload = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode()),
                            *(extra or [])]})
    await send({"type": "http.response.body", "body": payload})
