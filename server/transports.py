"""HTTP transports (Streamable HTTP at /mcp, SSE at /sse) with health and readiness endpoints."""

from __future__ import annotations

import gc
import logging
import time
from collections import OrderedDict
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from server.accounts import TOKEN_FRESH, Accounts, TokenOwner, hash_token
from server.app import Runtime, build_server
from server.errors import StackMemoryError
from server.http_guard import AuthUnavailable
from server.storage.migrations import latest_version

if TYPE_CHECKING:
    from mcp.server.auth.provider import AccessToken
    from mcp.server.auth.settings import AuthSettings
    from mcp.server.transport_security import TransportSecuritySettings
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response

log = logging.getLogger(__name__)
LOOPBACK = ("127.0.0.1", "localhost", "[::1]")
READY_TIMEOUT = 2.0  # seconds /readyz waits for the database
TOKEN_STALE = 600.0  # seconds a checked token still passes while the database is unreachable
TOKEN_CACHE_SIZE = 10_000


def security(runtime: Runtime) -> TransportSecuritySettings:
    """DNS-rebinding protection stays on: only loopback names and explicitly allowed hosts/origins pass."""
    from mcp.server.transport_security import TransportSecuritySettings

    s = runtime.settings
    hosts = [*LOOPBACK, *(f"{h}:*" for h in LOOPBACK), *s.allowed_hosts]
    origins = [*(f"http://{h}" for h in LOOPBACK), *(f"http://{h}:*" for h in LOOPBACK), *s.allowed_origins]
    if s.host not in ("127.0.0.1", "localhost", "::1") and not s.allowed_hosts:
        log.warning("binding %s but only loopback Host headers are accepted: set STACKMEMORY_ALLOWED_HOSTS "
                    "to the public host name clients use", s.host)
    return TransportSecuritySettings(enable_dns_rebinding_protection=True, allowed_hosts=hosts,
                                     allowed_origins=origins)


class TokenVerifier:
    """The MCP SDK's bearer-token hook: a StackMemory API token becomes its user, anything else None (the
    SDK then answers 401 with WWW-Authenticate, the same for every kind of bad token). Tokens are never
    logged; only their SHA-256 is looked up.

    A token checked in the last TOKEN_FRESH seconds is not looked up again (so a revocation takes effect
    within that time), and while the database is unreachable a token seen in the last TOKEN_STALE seconds
    still passes: the call then fails with "database unavailable", not with a misleading 401. A token not
    seen lately cannot be checked then: AuthUnavailable, which the Guard answers with 503 (retry), since a
    401 would tell the client its valid token is bad."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self._seen: OrderedDict[str, tuple[float, TokenOwner]] = OrderedDict()

    async def verify_token(self, token: str) -> AccessToken | None:
        from mcp.server.auth.provider import AccessToken

        key = hash_token(token)
        now = time.monotonic()
        cached = self._seen.get(key)
        owner: TokenOwner | None
        if cached is not None and now - cached[0] < TOKEN_FRESH:
            owner = cached[1]
        else:
            try:
                owner = await Accounts(self.runtime.service.accounts).authenticate(token)
            except StackMemoryError as exc:
                log.warning("token check failed: %s", exc)
                if cached is None or now - cached[0] >= TOKEN_STALE:
                    raise AuthUnavailable("the server cannot check tokens now (its database is unavailable); "
                                          "retry shortly") from exc
                owner = cached[1]
            else:
                self._remember(key, now, owner)
        if owner is None or (owner.expires_at is not None and owner.expires_at <= datetime.now(UTC)):
            return None
        expires = int(owner.expires_at.timestamp()) if owner.expires_at else None
        return AccessToken(token=token, client_id=owner.caller.user_id, scopes=[], expires_at=expires,
                           subject=owner.caller.user_id, claims={"name": owner.caller.name})

    def known(self, token: str) -> bool:
        """Whether the token passed a check in the last TOKEN_FRESH seconds (so it costs no lookup now)."""
        cached = self._seen.get(hash_token(token))
        return cached is not None and time.monotonic() - cached[0] < TOKEN_FRESH

    def _remember(self, key: str, now: float, owner: TokenOwner | None) -> None:
        if owner is None:
            self._seen.pop(key, None)
            return
        self._seen[key] = (now, owner)
        self._seen.move_to_end(key)
        while len(self._seen) > TOKEN_CACHE_SIZE:
            self._seen.popitem(last=False)


def auth_settings(runtime: Runtime, transport: str) -> AuthSettings:
    """Protected-resource metadata (RFC 9728) at /.well-known/oauth-protected-resource, so spec-following
    clients learn this server takes bearer tokens. StackMemory issues its own tokens (`stackmemory token
    create`); there is no OAuth authorization server, so the issuer named is the server itself."""
    from mcp.server.auth.settings import AuthSettings
    from pydantic import AnyHttpUrl

    base = runtime.settings.base_url
    return AuthSettings(issuer_url=AnyHttpUrl(base),
                        resource_server_url=AnyHttpUrl(base + ("/sse" if transport == "sse" else "/mcp")),
                        validate_token_resource=False)


def build_http_app(runtime: Runtime, transport: str) -> Starlette:
    """A Starlette app serving MCP over `transport` ('http' or 'sse') plus /healthz and /readyz."""
    from starlette.applications import Starlette
    from starlette.middleware import Middleware
    from starlette.responses import JSONResponse
    from starlette.routing import Mount

    from server.http_guard import Guard

    tokens = runtime.settings.auth == "tokens"
    verifier = TokenVerifier(runtime) if tokens else None
    server = build_server(runtime, auth=auth_settings(runtime, transport) if tokens else None, verifier=verifier)

    @server.custom_route("/healthz", methods=["GET"])  # type: ignore[untyped-decorator]
    async def healthz(_: Request) -> Response:
        return JSONResponse({"status": "ok"})

    @server.custom_route("/readyz", methods=["GET"])  # type: ignore[untyped-decorator]
    async def readyz(_: Request) -> Response:
        import anyio

        try:
            storage = runtime.service.storage
            # Sooner than the pool's own timeout (10 s by default): health probes give up after 1-5 s, and an
            # unanswered probe says less than a 503 with its reason.
            with anyio.fail_after(READY_TIMEOUT):
                version = await storage.ping()
        except TimeoutError:
            return JSONResponse({"status": "unavailable", "error": f"the database did not answer within "
                                 f"{READY_TIMEOUT:g} s"}, status_code=503)
        except (StackMemoryError, RuntimeError) as exc:
            return JSONResponse({"status": "unavailable", "error": str(exc)}, status_code=503)
        want = latest_version(storage.backend)
        if version != want:
            return JSONResponse({"status": "migrations pending", "schema_version": version, "expected": want,
                                 "fix": "run `stackmemory db upgrade`"}, status_code=503)
        return JSONResponse({"status": "ready", "backend": storage.backend, "schema_version": version})

    @server.custom_route("/webhooks/linear", methods=["POST"])  # type: ignore[untyped-decorator]
    async def linear_webhook(request: Request) -> Response:
        """Not behind the bearer tokens: Linear signs its deliveries (HMAC-SHA256 of the raw body)."""
        if runtime.linear is None:
            return JSONResponse({"error": "starting; retry"}, status_code=503)
        try:
            status, answer = await runtime.linear.webhook(await request.body(), request.headers)
        except StackMemoryError as exc:
            log.warning("Linear webhook not applied: %s", exc)
            return JSONResponse({"error": "could not apply the event now; Linear retries"}, status_code=503)
        return JSONResponse(answer, status_code=status)

    limit = runtime.settings.max_request_bytes
    if transport == "sse":
        inner = server.sse_app(transport_security=security(runtime), host=runtime.settings.host,
                               max_request_body_size=limit)
    else:
        inner = server.streamable_http_app(transport_security=security(runtime), host=runtime.settings.host,
                                           max_request_body_size=limit)

    @asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        # One storage (and pool) for the whole process; the MCP app's own lifespan runs inside it.
        async with runtime.session() as svc, inner.router.lifespan_context(inner):
            svc.require_caller = tokens
            settle_heap()
            yield

    guard = Middleware(Guard, max_body=limit, rate=runtime.settings.rate_limit, tokens=verifier)
    return Starlette(routes=[Mount("/", app=inner)], lifespan=lifespan, middleware=[guard])


def settle_heap() -> None:
    """Once started, move everything alive (modules, schemas, the pool) out of the garbage collector's view:
    its full collections then scan only what requests create, instead of stalling every request in flight
    for ~100 ms each time (measured under 100 clients; see docs/benchmarks.md)."""
    gc.collect()
    gc.freeze()


def serve_http(runtime: Runtime) -> int:
    """Run uvicorn until interrupted; the database is opened first so a bad one fails in one line."""
    import anyio
    import uvicorn

    s = runtime.settings

    async def main() -> None:
        async with runtime.session():
            app = build_http_app(runtime, s.transport)
            config = uvicorn.Config(app, host=s.host, port=s.port, log_level=s.log_level.lower(),
                                    lifespan="on", server_header=False, timeout_graceful_shutdown=5,
                                    # Longer than clients' own keep-alive (httpx: 5 s), so the server never
                                    # closes a connection at the moment a client reuses it.
                                    timeout_keep_alive=75)
            await uvicorn.Server(config).serve()

    anyio.run(main, backend_options=fast_loop())
    return 0


def fast_loop() -> dict[str, bool]:
    """uvloop where it is installed (the default install on Linux and macOS): its event loop and transports
    are C, and a hosted server under load spends a large share of its time in them (docs/benchmarks.md)."""
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return {}
    return {"use_uvloop": True}


def serve_stdio(runtime: Runtime) -> int:
    """Open the database before speaking MCP, so a bad configuration is one clear line, not a traceback."""
    import anyio

    server = build_server(runtime)

    async def main() -> None:
        async with runtime.session():
            await server.run_stdio_async()

    anyio.run(main)
    return 0


def serve(runtime: Runtime) -> int:
    return serve_stdio(runtime) if runtime.settings.transport == "stdio" else serve_http(runtime)



