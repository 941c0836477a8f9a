"""Tasks and Linear connections on SQLite, sharing the store's single writer; a lease row stands in for a lock."""

from __future__ import annotations

import json
import os
import secrets
import socket
import sqlite3
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

from server.errors import Conflict, NotFound
from server.models import Access
from server.storage import migrations
from server.storage.sqlite import SQLiteStore, _translated_async, ts
from server.tasks import (
    SYNCED_FIELDS,
    ConflictRecord,
    LinearConnection,
    LinearLink,
    Task,
    TaskFilter,
    TaskState,
)

T = migrations.named_queries("sqlite", "tasks.sql")
LEASE_SECONDS = 600.0  # a sync renews its lease as it goes; a crashed one's lease runs out after this


class SQLiteTasks:
    """A TaskStore: every statement goes through the store's single writer, so each is atomic."""

    def __init__(self, store: SQLiteStore) -> None:
        self.store = store
        self._me = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"

    async def add_task(self, state: TaskState, access: Access | None) -> Task:
        rows = await self._run("insert_task", _row_params(state))
        return _state(rows[0]).task

    async def get_task(self, task_id: str, access: Access | None) -> TaskState | None:
        rows = await self._run("get_task", {"id": task_id, **_access(access)})
        return _state(rows[0]) if rows else None

    async def list_tasks(self, where: TaskFilter, limit: int, cursor: str | None, access: Access) -> list[Task]:
        rows = await self._run("list_tasks", {
            "workspaces": _json(where.workspaces), "statuses": _json(where.statuses) if where.statuses else None,
            "assignee": where.assignee, "label": where.label, "cursor": cursor, "limit": limit})
        return [_state(r).task for r in rows]

    async def update_task(self, task_id: str, changes: dict[str, Any], expected_version: int | None,
                          now: datetime, access: Access) -> Task:
        async with self.store._write() as db, _translated_async(self.store.path):
            rows = list(await db.execute_fetchall(T["get_task"], {"id": task_id, **_access(access)}))
            if not rows:
                raise NotFound(f"no task with id {task_id}; list_tasks shows existing ids")
            current = _state(rows[0]).task
            if expected_version is not None and current.version != expected_version:
                raise Conflict(f"task {task_id} is at version {current.version}, not {expected_version}: someone "
                               "changed it since you read it; get it again and reapply your change")
            merged = {**current.model_dump(), **changes}
            params = {**_fields(merged), "memory_ids": _json(merged["memory_ids"]), "updated_by": merged["updated_by"],
                      "now": ts(now), "id": task_id, "version": current.version,
                      "touches_linear": any(merged[f] != getattr(current, f) for f in SYNCED_FIELDS)}
            rows = list(await db.execute_fetchall(T["update_task"], params))
        return _state(rows[0]).task

    async def dirty_tasks(self, workspace_id: str, after: str, limit: int) -> list[TaskState]:
        rows = await self._run("dirty_tasks", {"workspace_id": workspace_id, "after": after, "limit": limit})
        return [_state(r) for r in rows]

    async def task_by_linear(self, workspace_id: str, linear_id: str) -> TaskState | None:
        rows = await self._run("task_by_linear", {"workspace_id": workspace_id, "linear_id": linear_id})
        return _state(rows[0]) if rows else None

    async def set_pending(self, task_id: str, pending_id: str) -> None:
        await self._run("set_pending", {"id": task_id, "pending_id": pending_id})

    async def save_synced(self, state: TaskState, read_version: int, now: datetime | None, *,
                          merge: bool = True) -> bool:
        task, link = state.task, state.task.linear
        params = {**_fields(task.model_dump()), "id": task.id, "read_version": read_version, "bump": now is not None,
                  "now": ts(now), "updated_by": task.updated_by,
                  "linear_id": link.id if link else None, "linear_identifier": link.identifier if link else None,
                  "linear_url": link.url if link else None,
                  "linear_updated_at": ts(link.updated_at) if link else None,
                  "synced": _json(state.synced) if state.synced is not None else None, "dirty": state.dirty,
                  "conflict": task.conflict.model_dump_json() if task.conflict else None,
                  "sync_error": task.sync_error}
        return bool(await self._run("save_merge" if merge else "save_push", params))

    async def count_tasks(self, workspace_id: str) -> dict[str, int]:
        rows = await self._run("count_tasks", {"workspace_id": workspace_id})
        return {k: int(v) for k, v in dict(rows[0]).items()}

    async def save_connection(self, conn: LinearConnection, now: datetime) -> None:
        await self._run("save_connection", {
            "workspace_id": conn.workspace_id, "api_key": conn.api_key, "team_id": conn.team_id,
            "team_key": conn.team_key, "team_name": conn.team_name, "webhook_secret": conn.webhook_secret,
            "policy": conn.policy, "acting_user": conn.acting_user, "now": ts(now)})

    async def connection(self, workspace_id: str) -> LinearConnection | None:
        rows = await self._run("connection", {"workspace_id": workspace_id})
        return _connection(rows[0]) if rows else None

    async def connections(self) -> list[LinearConnection]:
        return [_connection(r) for r in await self._run("connections", {})]

    async def delete_connection(self, workspace_id: str) -> bool:
        return bool(await self._run("delete_connection", {"workspace_id": workspace_id}))

    async def due_connections(self, finished_before: datetime) -> list[str]:
        return [r["workspace_id"] for r in await self._run("due_connections", {"before": ts(finished_before)})]

    async def start_sync(self, workspace_id: str, now: datetime) -> None:
        await self._run("start_sync", {"workspace_id": workspace_id, "now": ts(now)})

    async def finish_sync(self, workspace_id: str, now: datetime, summary: dict[str, Any], error: str | None,
                          cursor: str | None) -> None:
        await self._run("finish_sync", {"workspace_id": workspace_id, "now": ts(now), "summary": _json(summary),
                                        "error": error, "cursor": cursor})

    @asynccontextmanager
    async def sync_lock(self, workspace_id: str) -> AsyncIterator[_Lease]:
        lease = _Lease(self, workspace_id)
        await lease.take()
        try:
            yield lease
        finally:
            if lease.held:
                await self._run("release_lock", {"workspace_id": workspace_id, "owner": self._me})

    async def first_delivery(self, delivery: str, workspace_id: str, now: datetime, keep_since: datetime) -> bool:
        async with self.store._write() as db, _translated_async(self.store.path):
            await (await db.execute(T["prune_deliveries"], {"keep_since": ts(keep_since)})).close()
            rows = list(await db.execute_fetchall(T["record_delivery"], {
                "delivery": delivery, "workspace_id": workspace_id, "now": ts(now)}))
        return bool(rows)

    async def _run(self, name: str, params: dict[str, Any]) -> list[sqlite3.Row]:
        async with self.store._statement() as db:
            return list(await db.execute_fetchall(T[name], params))


class _Lease:
    """The sync lock on SQLite: a lease on the connection row. A holder that died on this machine (its
    process is gone) loses it at once; one elsewhere when the lease runs out."""

    def __init__(self, tasks: SQLiteTasks, workspace_id: str) -> None:
        self.tasks = tasks
        self.workspace_id = workspace_id
        self.held = False

    async def take(self) -> None:
        now = datetime.now(UTC)
        rows = await self.tasks._run("lock_owner", {"workspace_id": self.workspace_id})
        owner = rows[0]["lock_owner"] if rows else None
        dead = owner if owner and _gone(owner) else None
        self.held = bool(await self.tasks._run("take_lock", {
            "workspace_id": self.workspace_id, "owner": self.tasks._me, "dead": dead, "now": ts(now),
            "until": ts(now + timedelta(seconds=LEASE_SECONDS))}))

    async def renew(self) -> None:
        if self.held:
            await self.take()


def _gone(owner: str) -> bool:
    """Whether a lease holder was a process on this machine that no longer runs."""
    host, _, rest = owner.partition(":")
    pid = rest.partition(":")[0]
    if host != socket.gethostname() or not pid.isdigit() or sys.platform == "win32":
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def _access(access: Access | None) -> dict[str, Any]:
    if access is None:
        return {"system": True, "workspaces": "[]"}
    return {"system": False, "workspaces": _json(list(access.workspaces))}


def _fields(values: dict[str, Any]) -> dict[str, Any]:
    return {"title": values["title"], "description": values["description"], "status": values["status"],
            "priority": values["priority"], "assignee": values["assignee"], "labels": _json(values["labels"])}


def _row_params(state: TaskState) -> dict[str, Any]:
    task, link = state.task, state.task.linear
    return {**_fields(task.model_dump()), "id": task.id, "workspace_id": task.workspace_id,
            "memory_ids": _json(task.memory_ids), "created_by": task.created_by, "updated_by": task.updated_by,
            "created_at": ts(task.created_at), "updated_at": ts(task.updated_at), "version": task.version,
            "linear_id": link.id if link else None, "linear_identifier": link.identifier if link else None,
            "linear_url": link.url if link else None, "linear_updated_at": ts(link.updated_at) if link else None,
            "synced": _json(state.synced) if state.synced is not None else None, "dirty": state.dirty,
            "conflict": task.conflict.model_dump_json() if task.conflict else None}


def _state(row: sqlite3.Row) -> TaskState:
    link = (LinearLink(id=row["linear_id"], identifier=row["linear_identifier"], url=row["linear_url"],
                       updated_at=_dt(row["linear_updated_at"])) if row["linear_id"] else None)
    dirty = bool(row["dirty"])
    task = Task(id=row["id"], workspace_id=row["workspace_id"], title=row["title"], description=row["description"],
                status=row["status"], priority=row["priority"], assignee=row["assignee"],
                labels=json.loads(row["labels"]), memory_ids=json.loads(row["memory_ids"]),
                created_by=row["created_by"], updated_by=row["updated_by"],
                created_at=_dt(row["created_at"]), updated_at=_dt(row["updated_at"]), version=row["version"],
                linear=link, sync_state="unlinked" if link is None else "pending" if dirty else "synced",
                conflict=ConflictRecord.model_validate_json(row["conflict"]) if row["conflict"] else None,
                sync_error=row["sync_error"])
    return TaskState(task=task, synced=json.loads(row["synced"]) if row["synced"] else None, dirty=dirty,
                     pending_id=row["linear_pending_id"])


def _connection(row: sqlite3.Row) -> LinearConnection:
    return LinearConnection(
        workspace_id=row["workspace_id"], api_key=row["api_key"], team_id=row["team_id"], team_key=row["team_key"],
        team_name=row["team_name"], acting_user=row["acting_user"], policy=row["policy"],
        webhook_secret=row["webhook_secret"], cursor=row["cursor"], sync_started_at=_dt(row["sync_started_at"]),
        sync_finished_at=_dt(row["sync_finished_at"]),
        last_summary=json.loads(row["last_summary"]) if row["last_summary"] else None, last_error=row["last_error"])


def _dt(value: str | None) -> Any:
    return datetime.fromisoformat(value) if value else None


def _json(value: object) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))
