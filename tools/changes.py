"""The change feed as a tool (for clients without subscriptions) and as a readable resource."""

from __future__ import annotations

from typing import Annotated, Any

from mcp.server.mcpserver import Context, Resolve
from pydantic import Field

from server.accounts import Caller
from server.changes import ChangesPage
from server.errors import StackMemoryError
from server.service import MemoryService
from tools import caller, service, spec

Svc = Annotated[MemoryService, Resolve(service)]
Who = Annotated[Caller, Resolve(caller)]


@spec("Get changes", read_only=True, idempotent=True)
async def get_changes(
    svc: Svc,
    who: Who,
    workspace: Annotated[str | None, Field(
        description="Workspace name or id; default your personal workspace.")] = None,
    since: Annotated[int | None, Field(
        description="The next_cursor of your previous call; omit to start from the beginning.")] = None,
    limit: Annotated[int, Field(ge=1, le=1000, description="At most this many changes; default 100.")] = 100,
) -> ChangesPage:
    """What changed in a workspace (memories created, updated, shared, deleted; tasks created and changed,
    also by the Linear sync and its webhooks), oldest first, after a
    cursor. Call again with next_cursor to continue; nothing is skipped or repeated. Clients that support
    subscriptions can listen to the returned `uri` instead of polling."""
    return await svc.changes(workspace, since, limit, caller=who)


TOOLS = [get_changes]


def register(server: Any) -> None:
    """The change resource `stackmemory://workspace/{workspace_id}/changes`: reading it returns the
    newest changes; listening to it (subscriptions/listen) brings notifications/resources/updated."""
    from mcp.server.mcpserver.exceptions import ResourceError

    @server.resource("stackmemory://workspace/{workspace_id}/changes", name="workspace-changes",
                     title="Workspace changes", mime_type="application/json",
                     description="The newest changes of a workspace you belong to; listen to it for updates.")  # type: ignore[untyped-decorator]
    async def workspace_changes(workspace_id: str, ctx: Context) -> str:
        svc = await service(ctx)
        try:
            page = await svc.recent_changes(workspace_id, caller=await caller(ctx))
        except StackMemoryError as exc:
            raise ResourceError(str(exc)) from exc
        return page.model_dump_json()
