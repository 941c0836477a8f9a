"""Tools that write and read single memories: store, get, update, delete, list."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from mcp.server.mcpserver import Resolve
from pydantic import BaseModel, Field

from server.accounts import Caller, WorkspaceInfo
from server.models import (
    DeleteResult,
    Kind,
    Memory,
    MemoryDetail,
    MemoryInput,
    MemoryPage,
    ShareResult,
    StoreManyResult,
    StoreResult,
    Visibility,
)
from server.service import MAX_BATCH, MemoryService
from tools import caller, service, spec

Svc = Annotated[MemoryService, Resolve(service)]
Who = Annotated[Caller, Resolve(caller)]
Workspace = Annotated[str | None, Field(
    description="Workspace name or id; default your personal workspace. list_workspaces shows yours.")]
ReadWorkspace = Annotated[str | None, Field(
    description="Workspace name or id, or \"all\" for every workspace you belong to; default your personal one.")]
MemoryId = Annotated[str, Field(description="The memory's id (a UUID from store, search or list results).")]
Tags = Annotated[list[str] | None, Field(description="Short labels, e.g. [\"db\", \"deploy\"]; at most 32.")]
Project = Annotated[str | None, Field(
    description="Project the memory belongs to; defaults to the current project (from the git remote).")]
Importance = Annotated[int, Field(ge=0, le=10, description="0 (trivia) to 10 (critical); default 5.")]
Metadata = Annotated[dict[str, Any] | None, Field(description="Any JSON object of extra fields (max 16 KiB).")]
Expires = Annotated[datetime | None, Field(
    description="When the memory stops being returned (ISO 8601, e.g. 2030-01-31T00:00:00Z); default never.")]


@spec("Store memory", read_only=False)
async def store_memory(
    content: Annotated[str, Field(description="The text to remember, self-contained (max 64 KiB by default).")],
    svc: Svc,
    who: Who,
    kind: Annotated[Kind, Field(description="What sort of memory this is.")] = "note",
    tags: Tags = None,
    project: Project = None,
    importance: Importance = 5,
    metadata: Metadata = None,
    expires_at: Expires = None,
    workspace: Workspace = None,
    visibility: Annotated[Visibility | None, Field(
        description="private (only you) or team (every member of the workspace); default private in your "
                    "personal workspace, team in a team workspace.")] = None,
) -> StoreResult:
    """Save a memory (a fact, decision, constraint, interface, todo, risk, preference or note) so it can be
    found in later sessions. Storing the same content again in the same project returns the existing
    memory instead of a duplicate (created=false)."""
    return await svc.store(content, kind, tags, project, importance, metadata, expires_at,
                           workspace=workspace, visibility=visibility, caller=who)


@spec("Store several memories", read_only=False)
async def store_memories(
    memories: Annotated[list[MemoryInput], Field(
        min_length=1, max_length=MAX_BATCH,
        description=f"1-{MAX_BATCH} memories, each with the fields of store_memory.")],
    svc: Svc,
    who: Who,
) -> StoreManyResult:
    """Save several memories in one call, all or none: if any one is invalid nothing is stored and the error
    names it (memories[i]). Each memory is deduplicated as with store_memory. Use it to record several
    decisions or facts at once, e.g. at the end of a session."""
    return await svc.store_many(memories, caller=who)


@spec("Get memory", read_only=True, idempotent=True)
async def get_memory(
    id: MemoryId,
    svc: Svc,
    who: Who,
    history: Annotated[bool, Field(description="Also return prior versions, newest first.")] = False,
) -> MemoryDetail:
    """Fetch one memory by id, with its full content, version, workspace, who created and last changed
    it, and optionally its prior versions."""
    return await svc.get(id, history=history, caller=who)


@spec("Update memory", read_only=False, idempotent=False)
async def update_memory(
    id: MemoryId,
    svc: Svc,
    who: Who,
    content: Annotated[str | None, Field(description="New text; omit to keep.")] = None,
    kind: Annotated[Kind | None, Field(description="New kind; omit to keep.")] = None,
    tags: Annotated[list[str] | None, Field(description="Replaces all tags; omit to keep.")] = None,
    project: Annotated[str | None, Field(description="Move to this project; omit to keep.")] = None,
    importance: Annotated[int | None, Field(ge=0, le=10, description="New importance 0-10; omit to keep.")] = None,
    metadata: Annotated[dict[str, Any] | None, Field(description="Replaces the metadata object; omit to keep.")] = None,
    expires_at: Expires = None,
    clear_expiry: Annotated[bool, Field(description="True removes any expiry.")] = False,
    expected_version: Annotated[int | None, Field(
        description="The version you last read; the update fails with a conflict if it changed since.")] = None,
) -> Memory:
    """Change fields of a memory. Pass expected_version (from get_memory) to avoid overwriting someone
    else's change; on a conflict nothing is changed. Returns the memory with its new version."""
    return await svc.update(id, content=content, kind=kind, tags=tags, project=project, importance=importance,
                            metadata=metadata, expires_at=expires_at, clear_expiry=clear_expiry,
                            expected_version=expected_version, caller=who)


@spec("Delete memory", read_only=False, destructive=True, idempotent=False)
async def delete_memory(id: MemoryId, svc: Svc, who: Who) -> DeleteResult:
    """Delete a memory. It disappears from search, lists and context; a tombstone records the deletion."""
    return await svc.delete(id, caller=who)


@spec("List memories", read_only=True, idempotent=True)
async def list_memories(
    svc: Svc,
    who: Who,
    project: Annotated[str | None, Field(description="Only this project; omit for all projects.")] = None,
    kind: Annotated[Kind | None, Field(description="Only this kind.")] = None,
    tags: Annotated[list[str] | None, Field(description="Only memories having all of these tags.")] = None,
    limit: Annotated[int, Field(ge=1, le=100, description="Page size, 1-100; default 20.")] = 20,
    cursor: Annotated[str | None, Field(description="next_cursor from the previous page.")] = None,
    workspace: ReadWorkspace = None,
) -> MemoryPage:
    """List memories newest first, a page at a time; pass next_cursor back to continue."""
    return await svc.list_memories(project, kind, tags, limit, cursor, workspace=workspace, caller=who)


@spec("Share memory", read_only=False, idempotent=True)
async def share_memory(
    id: MemoryId,
    workspace: Annotated[str, Field(description="The team workspace to share with (name or id).")],
    svc: Svc,
    who: Who,
) -> ShareResult:
    """Share a memory with a team workspace so every member's assistant finds it. A private memory already
    in that workspace becomes team-visible; a memory from elsewhere (e.g. your personal workspace) is
    copied there as a team memory, keeping its original author, and the original stays where it was."""
    return await svc.share(id, workspace, caller=who)


class Workspaces(BaseModel):
    workspaces: list[WorkspaceInfo]


@spec("List workspaces", read_only=True, idempotent=True)
async def list_workspaces(svc: Svc, who: Who) -> Workspaces:
    """Your workspaces: your personal one and the teams you belong to, with your role, the number of
    members and how many memories you can see in each."""
    return Workspaces(workspaces=await svc.workspaces(caller=who))


TOOLS = [store_memory, store_memories, get_memory, update_memory, delete_memory, list_memories, share_memory, list_workspaces]
