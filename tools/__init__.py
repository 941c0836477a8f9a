"""The MCP tool surface: typed async functions that call the service and format its results."""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, ParamSpec

from mcp.server.auth.middleware.auth_context import get_access_token
from mcp.server.elicitation import AcceptedElicitation
from mcp.server.mcpserver import Context
from mcp.server.mcpserver.exceptions import ToolError
from mcp_types import CallToolResult, TextContent, ToolAnnotations
from pydantic import BaseModel

from server.accounts import LOCAL, Caller
from server.errors import StackMemoryError
from server.service import MemoryService

P = ParamSpec("P")

# The SDK wraps every resolver's value (service, caller below) in AcceptedElicitation[Any] on each tool call.
# Pydantic keeps parametrised generic classes only weakly, so after each garbage collection that class was
# built again (about 2.5% of the event loop's time at 100 clients, py-spy). Holding it keeps it cached.
RESOLVED_VALUE = AcceptedElicitation[Any]


async def service(ctx: Context) -> MemoryService:
    """Resolver: the MemoryService the server's lifespan opened (kept out of the model-facing schema)."""
    svc = ctx.request_context.lifespan_context
    if not isinstance(svc, MemoryService):
        raise ToolError("StackMemory is still starting; retry in a moment")
    return svc


async def caller(ctx: Context) -> Caller:
    """Resolver: who is calling. Over HTTP with tokens, the token's user (the SDK's bearer middleware put it
    in the request context); over stdio, the implicit local user. A server that requires tokens never
    falls back to the local user."""
    token = get_access_token()
    if token is not None and token.subject:
        return Caller(user_id=token.subject, name=str((token.claims or {}).get("name", token.subject)))
    svc = await service(ctx)
    if svc.require_caller:
        raise ToolError("this server requires an API token (Authorization: Bearer <token>)")
    return LOCAL


def translated(fn: Callable[P, Awaitable[BaseModel]]) -> Callable[P, Awaitable[CallToolResult]]:
    """Run a tool: StackMemory's own errors become ToolError (the model reads what was wrong and what to
    do), and the result is sent as structured content plus the same JSON, compact, as text (no
    indentation: every token of a search result the model reads is content, not whitespace)."""

    @functools.wraps(fn)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> CallToolResult:
        try:
            result = await fn(*args, **kwargs)
        except StackMemoryError as exc:
            raise ToolError(str(exc)) from exc
        text = result.model_dump_json(exclude_none=False)
        return CallToolResult(content=[TextContent(type="text", text=text)],
                              structured_content=result.model_dump(mode="json"))

    return wrapper


@dataclass(frozen=True)
class ToolSpec:
    fn: Callable[..., Awaitable[Any]]
    title: str
    annotations: ToolAnnotations


def spec(title: str, *, read_only: bool, destructive: bool = False, idempotent: bool = False,
         open_world: bool = False) -> Callable[[Callable[P, Awaitable[BaseModel]]], ToolSpec]:
    """Describe a tool for registration by the composition root (server/app.py)."""

    def wrap(fn: Callable[P, Awaitable[BaseModel]]) -> ToolSpec:
        hints = ToolAnnotations(title=title, read_only_hint=read_only, destructive_hint=destructive,
                                idempotent_hint=idempotent, open_world_hint=open_world)
        return ToolSpec(fn=translated(fn), title=title, annotations=hints)

    return wrap


def all_tools() -> list[ToolSpec]:
    """Every tool, in the order clients list them."""
    from tools import admin, changes, memories, search, tasks

    return [*memories.TOOLS, *search.TOOLS, *changes.TOOLS, *tasks.TOOLS, *admin.TOOLS]


def register_resources(server: Any) -> None:
    """Resources beside the tools: each workspace's change feed."""
    from tools import changes

    changes.register(server)
