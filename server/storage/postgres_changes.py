"""The change feed on PostgreSQL: reads of change_log as the caller (row-level security) or the system."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from server.changes import ChangeEvent
from server.storage import migrations
from server.storage.postgres import PostgresStore

C = migrations.named_queries("postgres", "changes.sql")


class PostgresChanges:
    def __init__(self, store: PostgresStore) -> None:
        self.store = store

    async def changes(self, user_id: str, workspace_id: str, since: int, limit: int) -> list[ChangeEvent]:
        params = {"user_id": user_id, "workspace_id": workspace_id, "since": since, "limit": limit}
        return [_event(r) for r in await self._run(user_id, "changes", params)]

    def notifications(self, channel: str) -> AsyncIterator[str | None]:
        return self.store.notifications(channel)

    async def latest(self) -> dict[str, int]:
        return {r["workspace_id"]: int(r["last"]) for r in await self._run(None, "latest", {})}

    async def after(self, workspace_id: str, since: int, limit: int) -> list[ChangeEvent]:
        params = {"workspace_id": workspace_id, "since": since, "limit": limit}
        return [_event(r) for r in await self._run(None, "after", params)]

    async def _run(self, user_id: str | None, name: str, params: dict[str, Any]) -> list[Any]:
        async with self.store._as(user_id) as conn:
            cur = await conn.execute(C[name], params)
            return list(await cur.fetchall())


def _event(row: Any) -> ChangeEvent:
    return ChangeEvent(workspace_id=row["workspace_id"], cursor=int(row["cursor"]), kind=row["kind"],
                       entity=row["entity"], entity_id=row["entity_id"], actor=row["actor"],
                       private_to=row["private_to"], at=row["at"])
