"""Tasks and Linear connections on PostgreSQL: callers' transactions under row-level security, the sync as
the system, and one sync per workspace under an advisory lock."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any

from server.errors import Conflict, NotFound
from server.models import Access
from server.storage import migrations
from server.storage.postgres import PostgresStore
from server.tasks import (
    SYNCED_FIELDS,
    ConflictRecord,
    LinearConnection,
    LinearLink,
    Task,
    TaskFilter,
    TaskState,
)

T = migrations.named_queries("postgres", "tasks.sql")
LOCK_SPACE = 0x4C494E52  # "LINR": the advisory-lock namespace of Linear syncs (keyed by workspace)


class PostgresTasks:
    """A TaskStore. Connection rows (API keys, webhook secrets) are readable only as the system."""

    def __init__(self, store: PostgresStore) -> None:
        self.store = store

    async def add_task(self, state: TaskState, access: Access | None) -> Task:
        rows = await self._run(access, "insert_task", _row_params(state))
        return _state(rows[0]).task

    async def get_task(self, task_id: str, access: Access | None) -> TaskState | None:
        rows = await self._run(access, "get_task", {"id": task_id, **_access(access)})
        return _state(rows[0]) if rows else None

    async def list_tasks(self, where: TaskFilter, limit: int, cursor: str | None, access: Access) -> list[Task]:
        rows = await self._run(access, "list_tasks", {
            "workspaces": where.workspaces, "statuses": where.statuses, "assignee": where.assignee,
            "label": where.label, "cursor": cursor, "limit": limit})
        return [_state(r).task for r in rows]

    async def update_task(self, task_id: str, changes: dict[str, Any], expected_version: int | None,
                          now: datetime, access: Access) -> Task:
        async with self.store._as(access.user_id) as conn:
            cur = await conn.execute(T["get_task_for_update"], {"id": task_id, **_access(access)})
            row = await cur.fetchone()
            if row is None:
                raise NotFound(f"no task with id {task_id}; list_tasks shows existing ids")
            current = _state(row).task
            if expected_version is not None and current.version != expected_version:
                raise Conflict(f"task {task_id} is at version {current.version}, not {expected_version}: someone "
                               "changed it since you read it; get it again and reapply your change")
            merged = {**current.model_dump(), **changes}
            params = {**_fields(merged), "memory_ids": _json(merged["memory_ids"]), "updated_by": merged["updated_by"],
                      "now": now, "id": task_id, "version": current.version,
                      "touches_linear": any(merged[f] != getattr(current, f) for f in SYNCED_FIELDS)}
            cur = await conn.execute(T["update_task"], params)
            updated = await cur.fetchone()
        assert updated is not None  # the row is locked FOR UPDATE above
        return _state(updated).task

    async def dirty_tasks(self, workspace_id: str, after: str, limit: int) -> list[TaskState]:
        rows = await self._run(None, "dirty_tasks", {"workspace_id": workspace_id, "after": after, "limit": limit})
        return [_state(r) for r in rows]

    async def task_by_linear(self, workspace_id: str, linear_id: str) -> TaskState | None:
        rows = await self._run(None, "task_by_linear", {"workspace_id": workspace_id, "linear_id": linear_id})
        return _state(rows[0]) if rows else None

    async def set_pending(self, task_id: str, pending_id: str) -> None:
        await self._do("set_pending", {"id": task_id, "pending_id": pending_id})

    async def save_synced(self, state: TaskState, read_version: int, now: datetime | None, *,
                          merge: bool = True) -> bool:
        task, link = state.task, state.task.linear
        params = {**_fields(task.model_dump()), "id": task.id, "read_version": read_version, "bump": now is not None,
                  "now": now, "updated_by": task.updated_by,
                  "linear_id": link.id if link else None, "linear_identifier": link.identifier if link else None,
                  "linear_url": link.url if link else None, "linear_updated_at": link.updated_at if link else None,
                  "synced": _json(state.synced) if state.synced is not None else None, "dirty": state.dirty,
                  "conflict": task.conflict.model_dump_json() if task.conflict else None,
                  "sync_error": task.sync_error}
        return bool(await self._run(None, "save_merge" if merge else "save_push", params))

    async def count_tasks(self, workspace_id: str) -> dict[str, int]:
        rows = await self._run(None, "count_tasks", {"workspace_id": workspace_id})
        return {k: int(v) for k, v in rows[0].items()}

    async def save_connection(self, conn: LinearConnection, now: datetime) -> None:
        await self._do("save_connection", {
            "workspace_id": conn.workspace_id, "api_key": conn.api_key, "team_id": conn.team_id,
            "team_key": conn.team_key, "team_name": conn.team_name, "webhook_secret": conn.webhook_secret,
            "policy": conn.policy, "acting_user": conn.acting_user, "now": now})

    async def connection(self, workspace_id: str) -> LinearConnection | None:
        rows = await self._run(None, "connection", {"workspace_id": workspace_id})
        return _connection(rows[0]) if rows else None

    async def connections(self) -> list[LinearConnection]:
        return [_connection(r) for r in await self._run(None, "connections", {})]

    async def delete_connection(self, workspace_id: str) -> bool:
        return bool(await self._run(None, "delete_connection", {"workspace_id": workspace_id}))

    async def due_connections(self, finished_before: datetime) -> list[str]:
        return [r["workspace_id"] for r in await self._run(None, "due_connections", {"before": finished_before})]

    async def start_sync(self, workspace_id: str, now: datetime) -> None:
        await self._do("start_sync", {"workspace_id": workspace_id, "now": now})

    async def finish_sync(self, workspace_id: str, now: datetime, summary: dict[str, Any], error: str | None,
                          cursor: str | None) -> None:
        await self._do("finish_sync", {"workspace_id": workspace_id, "now": now, "summary": _json(summary),
                                              "error": error, "cursor": cursor})

    @asynccontextmanager
    async def sync_lock(self, workspace_id: str) -> AsyncIterator[_AdvisoryLock]:
        """Held on a pooled connection of its own for the whole sync: the sync's queries use others, and a
        lost connection (a dead process) releases the lock on the server at once."""
        key = {"space": LOCK_SPACE, "workspace_id": workspace_id}
        async with self.store._connection() as conn:
            cur = await conn.execute(T["try_lock"], key)
            row = await cur.fetchone()
            lock = _AdvisoryLock(bool(row and row["locked"]))
            try:
                yield lock
            finally:
                if lock.held:
                    await conn.execute(T["unlock"], key)

    async def first_delivery(self, delivery: str, workspace_id: str, now: datetime, keep_since: datetime) -> bool:
        async with self.store._as(None) as conn:
            await conn.execute(T["prune_deliveries"], {"keep_since": keep_since})
            cur = await conn.execute(T["record_delivery"], {"delivery": delivery, "workspace_id": workspace_id,
                                                            "now": now})
            return await cur.fetchone() is not None

    async def _run(self, access: Access | None, name: str, params: dict[str, Any]) -> list[dict[str, Any]]:
        """A statement returning rows, as the caller (or the system, for None)."""
        async with self.store._as(access.user_id if access else None) as conn:
            cur = await conn.execute(T[name], params)
            return list(await cur.fetchall())

    async def _do(self, name: str, params: dict[str, Any]) -> None:
        """A statement returning nothing, as the system."""
        async with self.store._as(None) as conn:
            await conn.execute(T[name], params)


class _AdvisoryLock:
    def __init__(self, held: bool) -> None:
        self.held = held

    async def renew(self) -> None:
        """Nothing to renew: the lock lasts as long as its connection."""


def _access(access: Access | None) -> dict[str, Any]:
    if access is None:
        return {"system": True, "workspaces": []}
    return {"system": False, "workspaces": list(access.workspaces)}


def _fields(values: dict[str, Any]) -> dict[str, Any]:
    return {"title": values["title"], "description": values["description"], "status": values["status"],
            "priority": values["priority"], "assignee": values["assignee"], "labels": _json(values["labels"])}


def _row_params(state: TaskState) -> dict[str, Any]:
    task, link = state.task, state.task.linear
    return {**_fields(task.model_dump()), "id": task.id, "workspace_id": task.workspace_id,
            "memory_ids": _json(task.memory_ids), "created_by": task.created_by, "updated_by": task.updated_by,
            "created_at": task.created_at, "updated_at": task.updated_at, "version": task.version,
            "linear_id": link.id if link else None, "linear_identifier": link.identifier if link else None,
            "linear_url": link.url if link else None, "linear_updated_at": link.updated_at if link else None,
            "synced": _json(state.synced) if state.synced is not None else None, "dirty": state.dirty,
            "conflict": task.conflict.model_dump_json() if task.conflict else None}


def _state(row: dict[str, Any]) -> TaskState:
    link = (LinearLink(id=row["linear_id"], identifier=row["linear_identifier"], url=row["linear_url"],
                       updated_at=row["linear_updated_at"]) if row["linear_id"] else None)
    dirty = bool(row["dirty"])
    task = Task(id=row["id"], workspace_id=row["workspace_id"], title=row["title"], description=row["description"],
                status=row["status"], priority=row["priority"], assignee=row["assignee"], labels=row["labels"],
                memory_ids=row["memory_ids"], created_by=row["created_by"], updated_by=row["updated_by"],
                created_at=row["created_at"], updated_at=row["updated_at"], version=row["version"], linear=link,
                sync_state="unlinked" if link is None else "pending" if dirty else "synced",
                conflict=ConflictRecord.model_validate(row["conflict"]) if row["conflict"] else None,
                sync_error=row["sync_error"])
    return TaskState(task=task, synced=row["synced"], dirty=dirty, pending_id=row["linear_pending_id"])


def _connection(row: dict[str, Any]) -> LinearConnection:
    return LinearConnection(
        workspace_id=row["workspace_id"], api_key=row["api_key"], team_id=row["team_id"], team_key=row["team_key"],
        team_name=row["team_name"], acting_user=row["acting_user"], policy=row["policy"],
        webhook_secret=row["webhook_secret"], cursor=row["cursor"], sync_started_at=row["sync_started_at"],
        sync_finished_at=row["sync_finished_at"], last_summary=row["last_summary"], last_error=row["last_error"])


def _json(value: object) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))
