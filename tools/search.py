"""Tools that find memories: ranked search and the start-of-session context."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from mcp.server.mcpserver import Resolve
from pydantic import Field

from server.accounts import Caller
from server.models import Kind, ProjectContext, SearchResult
from server.service import MemoryService
from tools import caller, service, spec

Svc = Annotated[MemoryService, Resolve(service)]
Who = Annotated[Caller, Resolve(caller)]
ReadWorkspace = Annotated[str | None, Field(
    description="Workspace name or id, or \"all\" for every workspace you belong to; default your personal one.")]


@spec("Search memory", read_only=True, idempotent=True)
async def search_memory(
    query: Annotated[str, Field(description="Words or a question; treated as plain text, no query syntax.")],
    svc: Svc,
    who: Who,
    limit: Annotated[int, Field(ge=1, le=100, description="How many results, 1-100; default 10.")] = 10,
    project: Annotated[str | None, Field(description="Only this project; omit to search all projects.")] = None,
    kinds: Annotated[list[Kind] | None, Field(description="Only these kinds.")] = None,
    tags: Annotated[list[str] | None, Field(description="Only memories having all of these tags.")] = None,
    since: Annotated[datetime | None, Field(description="Only memories created at or after (ISO 8601).")] = None,
    until: Annotated[datetime | None, Field(description="Only memories created before (ISO 8601).")] = None,
    mode: Annotated[Literal["hybrid", "keyword", "semantic"] | None, Field(
        description="hybrid (meaning + words; the default when embeddings are on), keyword (exact words) "
                    "or semantic (meaning only).")] = None,
    workspace: ReadWorkspace = None,
) -> SearchResult:
    """Find stored memories relevant to a query, best first, each with its full content, a score, why it
    matched and the workspace it came from. The result says which mode ran; without embeddings it falls
    back to keyword and says so."""
    return await svc.search(query, limit, project, list(kinds) if kinds else None, tags, since, until, mode,
                            workspace=workspace, caller=who)


@spec("Get project context", read_only=True, idempotent=True)
async def get_context(
    svc: Svc,
    who: Who,
    project: Annotated[str | None, Field(description="Project; defaults to the current project.")] = None,
    limit: Annotated[int, Field(ge=1, le=100, description="At most this many per section; default 20.")] = 20,
    workspace: ReadWorkspace = None,
) -> ProjectContext:
    """What to read at the start of a session: the project's most important and most recent decisions,
    constraints, open todos, risks and notes, grouped and compact."""
    return await svc.context(project, limit, workspace=workspace, caller=who)


TOOLS = [search_memory, get_context]
