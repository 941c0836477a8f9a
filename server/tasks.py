"""Tasks: a workspace's work items (kept in step with Linear by server/linear_sync.py), and their rules."""

from __future__ import annotations

import weakref
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal, Protocol

from pydantic import BaseModel, Field

from server.accounts import LOCAL, AccountStore, Caller
from server.errors import InvalidInput, NotFound, PermissionDenied
from server.ids import check_id, new_id
from server.models import Access
from server.rules import checked_choice
from server.service import ALL_WORKSPACES, Scope
from server.storage.base import Storage

Status = Literal["todo", "in_progress", "done", "blocked", "cancelled"]
STATUSES: tuple[str, ...] = ("todo", "in_progress", "done", "blocked", "cancelled")
Priority = Literal["none", "urgent", "high", "medium", "low"]
PRIORITIES: tuple[str, ...] = ("none", "urgent", "high", "medium", "low")  # index = Linear's priority number
Policy = Literal["newest", "linear", "local"]
POLICIES: tuple[str, ...] = ("newest", "linear", "local")
SYNCED_FIELDS = ("title", "description", "status", "priority", "assignee", "labels")
MAX_TITLE_CHARS = 500
MAX_LABELS = 32
MAX_LABEL_CHARS = 64
MAX_LINKS = 50
MAX_ASSIGNEE_CHARS = 200
TASK_ID = ("task id", "a create_task or list_tasks result")  # what check_id calls it, where it is found


class LinearLink(BaseModel):
    id: str = Field(description="The Linear issue's id.")
    identifier: str | None = Field(default=None, description="Its human key, e.g. ENG-42.")
    url: str | None = None
    updated_at: datetime | None = Field(default=None, description="Linear's updatedAt when last synced.")


class ConflictRecord(BaseModel):
    """How the last conflicting edit (both sides changed a field since the last sync) was decided."""

    at: datetime
    policy: Policy
    winner: Literal["linear", "local"]
    fields: list[str]
    local: dict[str, Any] = Field(description="The local values that were in conflict.")
    linear: dict[str, Any] = Field(description="Linear's values that were in conflict.")


class Task(BaseModel):
    id: str
    workspace_id: str
    workspace: str = ""
    title: str
    description: str = ""
    status: Status
    priority: Priority = "none"
    assignee: str | None = None
    labels: list[str] = Field(default_factory=list)
    memory_ids: list[str] = Field(default_factory=list, description="Memories this task links to.")
    created_by: str
    updated_by: str
    created_at: datetime
    updated_at: datetime
    version: int = 1
    linear: LinearLink | None = None
    sync_state: Literal["unlinked", "pending", "synced"] = Field(
        default="unlinked", description="unlinked: not in Linear yet; pending: local changes wait for the "
                                        "next sync; synced: matches Linear as of the last sync.")
    conflict: ConflictRecord | None = None
    sync_error: str | None = Field(default=None, description="Why the last push of this task failed.")

    def fields(self) -> dict[str, Any]:
        """The fields kept in step with Linear."""
        return {f: getattr(self, f) for f in SYNCED_FIELDS}


@dataclass
class TaskState:
    """A task with its sync bookkeeping, as the sync engine sees it."""

    task: Task
    synced: dict[str, Any] | None = None  # {"local": {...}, "remote": {...}} at the last sync
    dirty: bool = True
    pending_id: str | None = None


class TaskPage(BaseModel):
    tasks: list[Task]
    next_cursor: str | None = None


class SyncSummary(BaseModel):
    workspace: str
    state: Literal["done", "failed", "busy", "queued"] = Field(
        description="done; failed (see error); busy (another sync of this workspace is running); queued (the "
                    "sync had not finished when this call stopped waiting: see linear status or list_tasks).")
    started_at: datetime | None = None
    finished_at: datetime | None = None
    pulled: int = Field(default=0, description="Linear issues read.")
    created_locally: int = 0
    updated_locally: int = 0
    created_in_linear: int = 0
    updated_in_linear: int = 0
    conflicts: int = 0
    errors: list[str] = Field(default_factory=list)
    error: str | None = None


@dataclass(frozen=True)
class TaskFilter:
    workspaces: list[str]
    statuses: list[str] | None = None
    assignee: str | None = None
    label: str | None = None


@dataclass
class LinearConnection:
    workspace_id: str
    api_key: str = field(repr=False)
    team_id: str
    team_key: str
    team_name: str
    acting_user: str
    policy: Policy = "newest"
    webhook_secret: str | None = field(default=None, repr=False)
    cursor: str | None = None
    sync_started_at: datetime | None = None
    sync_finished_at: datetime | None = None
    last_summary: dict[str, Any] | None = None
    last_error: str | None = None


class SyncLock(Protocol):
    held: bool

    async def renew(self) -> None: ...


class TaskStore(Protocol):
    """Storage verbs for tasks and Linear connections; both adapters implement them (storage/*_tasks.py).
    `access` None means the system (the sync, webhooks), which sees every workspace."""

    async def add_task(self, state: TaskState, access: Access | None) -> Task: ...
    async def get_task(self, task_id: str, access: Access | None) -> TaskState | None: ...
    async def list_tasks(self, where: TaskFilter, limit: int, cursor: str | None, access: Access) -> list[Task]: ...
    async def update_task(self, task_id: str, changes: dict[str, Any], expected_version: int | None,
                          now: datetime, access: Access) -> Task: ...
    async def dirty_tasks(self, workspace_id: str, after: str, limit: int) -> list[TaskState]: ...
    async def task_by_linear(self, workspace_id: str, linear_id: str) -> TaskState | None: ...
    async def set_pending(self, task_id: str, pending_id: str) -> None: ...
    async def save_synced(self, state: TaskState, read_version: int, now: datetime | None, *,
                          merge: bool = True) -> bool:
        """Write a sync outcome. merge: fields, link, snapshot, dirty, conflict and error (bumping the
        version when `now` is given); False, changing nothing, when the task moved past read_version. Not
        merge (a push): link, snapshot and error only, whatever the version; dirty stays set if it moved."""
        ...
    async def count_tasks(self, workspace_id: str) -> dict[str, int]: ...
    async def save_connection(self, conn: LinearConnection, now: datetime) -> None: ...
    async def connection(self, workspace_id: str) -> LinearConnection | None: ...
    async def delete_connection(self, workspace_id: str) -> bool: ...
    async def connections(self) -> list[LinearConnection]: ...
    async def due_connections(self, finished_before: datetime) -> list[str]: ...
    async def start_sync(self, workspace_id: str, now: datetime) -> None: ...
    async def finish_sync(self, workspace_id: str, now: datetime, summary: dict[str, Any], error: str | None,
                          cursor: str | None) -> None: ...
    def sync_lock(self, workspace_id: str) -> AbstractAsyncContextManager[SyncLock]: ...
    async def first_delivery(self, delivery: str, workspace_id: str, now: datetime, keep_since: datetime) -> bool:
        """Record a webhook delivery; False when it was seen before (a replay). Prunes ones before keep_since."""
        ...


class Syncer(Protocol):
    async def request(self, workspace_id: str, workspace: str) -> SyncSummary: ...


class TaskService:
    """Create, change, read and list tasks; ask for a Linear sync. Readers read; members and above write
    any task of their workspace (tasks are the team's, as in Linear)."""

    def __init__(self, store: TaskStore, accounts: AccountStore, memories: Storage,
                 max_description_bytes: int = 65536) -> None:
        self.store = store
        self.accounts = accounts
        self.memories = memories
        self.max_description_bytes = max_description_bytes
        self.syncer: Syncer | None = None
        # Called after every task write, whoever made it (a tool, the sync, a webhook), to wake the change
        # feed (SQLite polls the log; see server/changes.py). The feed's entries themselves are written by
        # triggers in the writing transaction (migration 0010), which alone decide what is a change.
        self.on_change: Callable[[], None] = lambda: None

    async def create(self, title: str, description: str = "", status: str = "todo", priority: str = "none",
                     assignee: str | None = None, labels: list[str] | None = None,
                     memory_ids: list[str] | None = None, *, workspace: str | None = None,
                     caller: Caller = LOCAL) -> Task:
        scope = await self._scope(caller)
        target = scope.workspace(workspace, "member", "create tasks in")
        now = _now()
        task = Task(id=new_id(), workspace_id=target.workspace_id, title=_title(title),
                    description=self._description(description), status=_status(status),  # type: ignore[arg-type]
                    priority=_priority(priority), assignee=_assignee(assignee),  # type: ignore[arg-type]
                    labels=_labels(labels), memory_ids=await self._links(memory_ids, scope),
                    created_by=caller.user_id, updated_by=caller.user_id, created_at=now, updated_at=now)
        created = await self.store.add_task(TaskState(task), scope.access)
        self.on_change()
        return created.model_copy(update={"workspace": target.workspace})

    async def update(self, task_id: str, *, title: str | None = None, description: str | None = None,
                     status: str | None = None, priority: str | None = None, assignee: str | None = None,
                     labels: list[str] | None = None, memory_ids: list[str] | None = None,
                     expected_version: int | None = None, caller: Caller = LOCAL) -> Task:
        task_id = check_id(task_id, *TASK_ID)
        scope = await self._scope(caller)
        checks: dict[str, tuple[Any, Callable[[Any], Any]]] = {
            "title": (title, _title), "description": (description, self._description), "status": (status, _status),
            "priority": (priority, _priority), "labels": (labels, _labels)}
        changes = {name: check(value) for name, (value, check) in checks.items() if value is not None}
        if assignee is not None:
            changes["assignee"] = _assignee(assignee)  # "" clears it
        if memory_ids is not None:
            changes["memory_ids"] = await self._links(memory_ids, scope)
        if not changes:
            raise InvalidInput("nothing to update: pass at least one of title, description, status, priority, "
                               "assignee, labels or memory_ids")
        if expected_version is not None and expected_version < 1:
            raise InvalidInput(f"expected_version {expected_version} is invalid: versions start at 1")
        current = await self._visible(scope, task_id)
        role = scope.by_id[current.workspace_id]
        if role.role == "reader":
            raise PermissionDenied(f"your role in {role.workspace} is reader; to change tasks you need to be "
                                   "member or above")
        changes["updated_by"] = caller.user_id
        updated = await self.store.update_task(task_id, changes, expected_version, _now(), scope.access)
        self.on_change()
        return updated.model_copy(update={"workspace": role.workspace})

    async def get(self, task_id: str, *, caller: Caller = LOCAL) -> Task:
        scope = await self._scope(caller)
        task = await self._visible(scope, check_id(task_id, *TASK_ID))
        return task.model_copy(update={"workspace": scope.by_id[task.workspace_id].workspace})

    async def list_tasks(self, *, workspace: str | None = None, status: list[str] | None = None,
                   assignee: str | None = None, label: str | None = None, limit: int = 50,
                   cursor: str | None = None, caller: Caller = LOCAL) -> TaskPage:
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= 200:
            raise InvalidInput(f"limit {limit!r} is out of range: use a whole number from 1 to 200")
        scope = await self._scope(caller)
        where = TaskFilter(workspaces=scope.readable(workspace), statuses=[_status(s) for s in status or []] or None,
                           assignee=assignee or None, label=label or None)
        after = check_id(cursor, "cursor") if cursor else None
        rows = await self.store.list_tasks(where, limit + 1, after, scope.access)
        page = [t.model_copy(update={"workspace": scope.by_id[t.workspace_id].workspace}) for t in rows[:limit]]
        return TaskPage(tasks=page, next_cursor=page[-1].id if len(rows) > limit else None)

    async def sync(self, *, workspace: str | None = None, caller: Caller = LOCAL) -> SyncSummary:
        """Ask for a sync of the workspace with Linear now; see server/linear_sync.py for how it runs."""
        if isinstance(workspace, str) and workspace.strip().lower() in ALL_WORKSPACES:
            raise InvalidInput("name one workspace to sync (list_workspaces shows yours)")
        scope = await self._scope(caller)
        target = scope.workspace(workspace, "member", "sync the tasks of")
        if await self.store.connection(target.workspace_id) is None:
            raise InvalidInput(f"{target.workspace} is not connected to Linear; an operator connects it with "
                               f"`stackmemory linear connect --workspace {target.workspace} --team KEY`")
        if self.syncer is None:
            raise InvalidInput("Linear sync is not running in this process; run `stackmemory linear sync`")
        return await self.syncer.request(target.workspace_id, target.workspace)

    # ---- rules ----------------------------------------------------------------------------------------

    async def _scope(self, caller: Caller) -> Scope:
        memberships = await self.accounts.memberships(caller.user_id)
        if not memberships:
            raise PermissionDenied(f"user {caller.name} belongs to no workspace; ask an admin to add you")
        return Scope(caller, memberships)

    async def _visible(self, scope: Scope, task_id: str) -> Task:
        state = await self.store.get_task(task_id, scope.access)
        if state is None or state.task.workspace_id not in scope.by_id:
            raise NotFound(f"no task with id {task_id}; list_tasks shows existing ids")
        return state.task

    async def _links(self, memory_ids: list[str] | None, scope: Scope) -> list[str]:
        if not memory_ids:
            return []
        if isinstance(memory_ids, str) or len(memory_ids) > MAX_LINKS:
            raise InvalidInput(f"memory_ids must be a list of at most {MAX_LINKS} memory ids")
        ids = list(dict.fromkeys(check_id(m, "memory id") for m in memory_ids))
        for memory_id in ids:
            memory = await self.memories.get_memory(memory_id, scope.access)
            if memory is None or memory.deleted_at is not None:
                raise NotFound(f"no memory with id {memory_id}; link only memories you can see")
        return ids

    def _description(self, text: str) -> str:
        if not isinstance(text, str):
            raise InvalidInput("description must be text")
        size = len(text.encode("utf-8"))
        if size > self.max_description_bytes:
            raise InvalidInput(f"description is {size} bytes; the limit is {self.max_description_bytes} "
                               "(STACKMEMORY_MAX_CONTENT_BYTES)")
        return text.replace("\x00", "")


# A Runtime's MemoryService -> its TaskService, so tools reach tasks through the lifespan's service.
_BY_OWNER: weakref.WeakKeyDictionary[object, TaskService] = weakref.WeakKeyDictionary()


def attach(owner: object, tasks: TaskService) -> None:
    _BY_OWNER[owner] = tasks


def tasks_of(owner: object) -> TaskService | None:
    return _BY_OWNER.get(owner)


def _title(title: str) -> str:
    if not isinstance(title, str) or not " ".join(title.split()):
        raise InvalidInput("title is empty: give the task a short title")
    clean = " ".join(title.replace("\x00", "").split())
    if len(clean) > MAX_TITLE_CHARS:
        raise InvalidInput(f"title is {len(clean)} characters; the limit is {MAX_TITLE_CHARS}: put details in "
                           "description")
    return clean


def _status(status: str) -> str:
    return checked_choice("status", status, STATUSES)


def _priority(priority: str) -> str:
    return checked_choice("priority", priority, PRIORITIES)


def _assignee(assignee: str | None) -> str | None:
    if assignee is None:
        return None
    if not isinstance(assignee, str) or len(assignee) > MAX_ASSIGNEE_CHARS:
        raise InvalidInput(f"assignee must be a name or email of at most {MAX_ASSIGNEE_CHARS} characters")
    return assignee.strip() or None


def _labels(labels: list[str] | None) -> list[str]:
    if labels is None:
        return []
    if isinstance(labels, str) or not isinstance(labels, list):
        raise InvalidInput("labels must be a list of short strings, e.g. [\"bug\", \"backend\"]")
    out: dict[str, None] = {}
    for label in labels:
        if not isinstance(label, str):
            raise InvalidInput(f"label {label!r} is not a string")
        clean = " ".join(label.split())
        if len(clean) > MAX_LABEL_CHARS:
            raise InvalidInput(f"label {clean[:20]!r}… is {len(clean)} characters; the limit is {MAX_LABEL_CHARS}")
        if clean:
            out.setdefault(clean, None)
    if len(out) > MAX_LABELS:
        raise InvalidInput(f"{len(out)} labels given; the limit is {MAX_LABELS}")
    return sorted(out)


def _now() -> datetime:
    return datetime.now(UTC)
