"""Tools for tasks, kept in step with Linear: create, update, list, and ask for a sync."""

from __future__ import annotations

from typing import Annotated

from mcp.server.mcpserver import Context, Resolve
from mcp.server.mcpserver.exceptions import ToolError
from pydantic import Field

from server.accounts import Caller
from server.tasks import Priority, Status, SyncSummary, Task, TaskPage, TaskService, tasks_of
from tools import caller, service, spec


async def task_service(ctx: Context) -> TaskService:
    """Resolver: the TaskService opened beside the lifespan's MemoryService."""
    tasks = tasks_of(await service(ctx))
    if tasks is None:
        raise ToolError("StackMemory is still starting; retry in a moment")
    return tasks


Tasks = Annotated[TaskService, Resolve(task_service)]
Who = Annotated[Caller, Resolve(caller)]
TaskId = Annotated[str, Field(description="The task's id (from create_task or list_tasks).")]
Workspace = Annotated[str | None, Field(
    description="Workspace name or id; default your personal workspace. list_workspaces shows yours.")]
Labels = Annotated[list[str] | None, Field(description="Label names, e.g. [\"bug\", \"backend\"]; at most 32.")]
MemoryIds = Annotated[list[str] | None, Field(description="Ids of memories this task relates to (at most 50).")]
Assignee = Annotated[str | None, Field(
    description="Who does it: a Linear user's email, name or display name (Linear-linked workspaces).")]


@spec("Create task", read_only=False)
async def create_task(
    title: Annotated[str, Field(description="Short title, as in an issue tracker (max 500 characters).")],
    tasks: Tasks,
    who: Who,
    description: Annotated[str, Field(description="Details, Markdown.")] = "",
    status: Annotated[Status, Field(description="Where the work stands; default todo.")] = "todo",
    priority: Annotated[Priority, Field(description="none (default), urgent, high, medium or low.")] = "none",
    assignee: Assignee = None,
    labels: Labels = None,
    memory_ids: MemoryIds = None,
    workspace: Workspace = None,
) -> Task:
    """Create a task in a workspace. If the workspace is connected to Linear, the next sync creates the
    matching Linear issue (exactly once) and the task shows its identifier and URL."""
    return await tasks.create(title, description, status, priority, assignee, labels, memory_ids,
                              workspace=workspace, caller=who)


@spec("Update task", read_only=False)
async def update_task(
    id: TaskId,
    tasks: Tasks,
    who: Who,
    title: Annotated[str | None, Field(description="New title; omit to keep.")] = None,
    description: Annotated[str | None, Field(description="New description; omit to keep.")] = None,
    status: Annotated[Status | None, Field(description="New status; omit to keep.")] = None,
    priority: Annotated[Priority | None, Field(description="New priority; omit to keep.")] = None,
    assignee: Annotated[str | None, Field(description="New assignee; \"\" unassigns; omit to keep.")] = None,
    labels: Annotated[list[str] | None, Field(description="Replaces all labels; omit to keep.")] = None,
    memory_ids: Annotated[list[str] | None, Field(description="Replaces the linked memories; omit to keep.")] = None,
    expected_version: Annotated[int | None, Field(
        description="The version you last read; fails with a conflict, changing nothing, if it changed since.")] = None,
) -> Task:
    """Change a task. Changes reach Linear on the next sync; if Linear changed the same field meanwhile, the
    workspace's conflict policy decides and the task's `conflict` says how."""
    return await tasks.update(id, title=title, description=description, status=status, priority=priority,
                              assignee=assignee, labels=labels, memory_ids=memory_ids,
                              expected_version=expected_version, caller=who)


@spec("List tasks", read_only=True, idempotent=True)
async def list_tasks(
    tasks: Tasks,
    who: Who,
    status: Annotated[list[Status] | None, Field(description="Only tasks in these statuses.")] = None,
    assignee: Annotated[str | None, Field(description="Only tasks assigned to this person.")] = None,
    label: Annotated[str | None, Field(description="Only tasks having this label.")] = None,
    limit: Annotated[int, Field(ge=1, le=200, description="Page size, 1-200; default 50.")] = 50,
    cursor: Annotated[str | None, Field(description="next_cursor from the previous page.")] = None,
    workspace: Annotated[str | None, Field(
        description="Workspace name or id, or \"all\" for every workspace you belong to; default your "
                    "personal one.")] = None,
) -> TaskPage:
    """List tasks newest first, with their Linear identifiers and sync state, a page at a time."""
    return await tasks.list_tasks(workspace=workspace, status=list(status) if status else None, assignee=assignee,
                            label=label, limit=limit, cursor=cursor, caller=who)


@spec("Sync with Linear", read_only=False, idempotent=True, open_world=True)
async def sync_linear(tasks: Tasks, who: Who, workspace: Workspace = None) -> SyncSummary:
    """Ask for a sync of the workspace's tasks with Linear now and wait (up to 30 s) for its summary: issues
    pulled, tasks created and updated on each side, conflicts and errors. Syncs of one workspace never run
    twice at once, however many assistants ask; state "queued" means it is still running."""
    return await tasks.sync(workspace=workspace, caller=who)


TOOLS = [create_task, update_task, list_tasks, sync_linear]
