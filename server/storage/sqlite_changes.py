"""The change feed on SQLite: the same log, read with the caller's conditions, plus a whole-log sequence
the process polls (SQLite has no NOTIFY)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

from server.changes import ChangeEvent
from server.storage import migrations
from server.storage.sqlite import SQLiteStore

C = migrations.named_queries("sqlite", "changes.sql")


class SQLiteChanges:
    def __init__(self, store: SQLiteStore) -> None:
        self.store = store
        self._seq: int | None = None

    async def changes(self, user_id: str, workspace_id: str, since: int, limit: int) -> list[ChangeEvent]:
        params = {"user_id": user_id, "workspace_id": workspace_id, "since": since, "limit": limit}
        return [_event(r) for r in await self._run("changes", params)]

    def notifications(self, channel: str) -> AsyncIterator[str | None]:
        raise NotImplementedError("SQLite has no NOTIFY; the server polls the log instead")

    async def latest(self) -> dict[str, int]:
        return {r["workspace_id"]: int(r["last"]) for r in await self._run("latest", {})}

    async def after(self, workspace_id: str, since: int, limit: int) -> list[ChangeEvent]:
        params = {"workspace_id": workspace_id, "since": since, "limit": limit}
        return [_event(r) for r in await self._run("after", params)]

    async def new_entries(self) -> list[ChangeEvent]:
        """Entries written (by any process) since the previous call; none on the first call."""
        if self._seq is None:
            self._seq = int((await self._run("max_seq", {}))[0]["seq"])
            return []
        rows = await self._run("since_seq", {"seq": self._seq, "limit": 1000})
        if rows:
            self._seq = int(rows[-1]["seq"])
        return [_event(r) for r in rows]

    async def _run(self, name: str, params: dict[str, Any]) -> list[Any]:
        async with self.store._statement() as db:
            return list(await db.execute_fetchall(C[name], params))


def _event(row: Any) -> ChangeEvent:
    return ChangeEvent(workspace_id=row["workspace_id"], cursor=int(row["cursor"]), kind=row["kind"],
                       entity=row["entity"], entity_id=row["entity_id"], actor=row["actor"],
                       private_to=row["private_to"], at=datetime.fromisoformat(row["at"]))
