"""HTTP transports (Streamable HTTP at /mcp, SSE at /sse) with health and readiness endpoints."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

from server.app import Runtime, build_server
from server.errors import StackMemoryError
from server.storage.migrations import latest_version

if TYPE_CHECKING:
    from mcp.server.transport_security import TransportSecuritySettings
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response

log = logging.getLogger(__name__)
LOOPBACK = ("127.0.0.1", "localhost", "[::1]")


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


def build_http_app(runtime: Runtime, transport: str) -> Starlette:
    """A Starlette app serving MCP over `transport` ('http' or 'sse') plus /healthz and /readyz."""
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse
    from starlette.routing import Mount

    server = build_server(runtime)

    @server.custom_route("/healthz", methods=["GET"])  # type: ignore[untyped-decorator]
    async def healthz(_: Request) -> Response:
        return JSONResponse({"status": "ok"})

    @server.custom_route("/readyz", methods=["GET"])  # type: ignore[untyped-decorator]
    async def readyz(_: Request) -> Response:
        try:
            storage = runtime.service.storage
            version = await storage.ping()
        except (StackMemoryError, RuntimeError) as exc:
            return JSONResponse({"status": "unavailable", "error": str(exc)}, status_code=503)
        want = latest_version(storage.backend)
        if version != want:
            return JSONResponse({"status": "migrations pending", "schema_version": version, "expected": want,
                                 "fix": "run `stackmemory db upgrade`"}, status_code=503)
        return JSONResponse({"status": "ready", "backend": storage.backend, "schema_version": version})

    if transport == "sse":
        inner = server.sse_app(transport_security=security(runtime), host=runtime.settings.host)
    else:
        inner = server.streamable_http_app(transport_security=security(runtime), host=runtime.settings.host)

    @asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        # One storage (and pool) for the whole process; the MCP app's own lifespan runs inside it.
        async with runtime.session(), inner.router.lifespan_context(inner):
            yield

    return Starlette(routes=[Mount("/", app=inner)], lifespan=lifespan)


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

    anyio.run(main)
    return 0


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



