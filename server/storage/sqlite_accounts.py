"""Users, workspaces, memberships and API tokens on SQLite, sharing the store's writer connection and lock."""

from __future__ import annotations

import json
import sqlite3
from datetime import datetime
from typing import Any

from server.accounts import Caller, Member, Membership, TokenInfo, TokenOwner, User, Workspace
from server.errors import Conflict, StorageUnavailable
from server.storage import migrations
from server.storage.sqlite import SQLiteStore, _translated_async, ts

A = migrations.named_queries("sqlite", "accounts.sql")


class SQLiteAccounts:
    """An AccountStore: writes go through the store's single writer, reads through its reader."""

    def __init__(self, store: SQLiteStore) -> None:
        self.store = store

    async def create_user(self, user_id: str, name: str, workspace_id: str, now: datetime) -> User:
        async with self.store._write() as db, _translated_async(self.store.path):
            rows = list(await db.execute_fetchall(A["insert_user"], {"id": user_id, "name": name, "now": ts(now)}))
            if not rows:
                raise Conflict(f"a user named {name} already exists; pick another name")
            await _add_workspace(db, workspace_id, f"~{name}", user_id, user_id, now)
        return _user(rows[0])

    async def find_user(self, name_or_id: str) -> User | None:
        rows = await self._read("find_user", {"key": name_or_id})
        return _user(rows[0]) if rows else None

    async def list_users(self) -> list[User]:
        return [_user(r) for r in await self._read("list_users", {})]

    async def create_workspace(self, workspace_id: str, name: str, owner_id: str, now: datetime) -> None:
        async with self.store._write() as db, _translated_async(self.store.path):
            await _add_workspace(db, workspace_id, name, None, owner_id, now)

    async def find_workspace(self, name_or_id: str) -> tuple[str, str, str | None] | None:
        rows = await self._read("find_workspace", {"key": name_or_id})
        return (rows[0]["id"], rows[0]["name"], rows[0]["personal_of"]) if rows else None

    async def list_workspaces(self) -> list[Workspace]:
        return [Workspace(id=r["id"], name=r["name"], personal_of=r["personal_of"], members=r["members"],
                          created_at=datetime.fromisoformat(r["created_at"])) for r in await self._read("list_workspaces", {})]

    async def memberships(self, user_id: str) -> list[Membership]:
        rows = await self._read("memberships", {"user_id": user_id})
        return [Membership(workspace_id=r["workspace_id"], workspace=r["workspace"], personal=bool(r["personal"]),
                           role=r["role"]) for r in rows]

    async def members(self, workspace_id: str) -> list[Member]:
        rows = await self._read("members", {"workspace_id": workspace_id})
        return [Member(user=r["user_name"], user_id=r["user_id"], role=r["role"]) for r in rows]

    async def set_role(self, workspace_id: str, user_id: str, role: str, now: datetime) -> None:
        await self._write_one("set_role", {"workspace_id": workspace_id, "user_id": user_id, "role": role,
                                           "now": ts(now)})

    async def remove_member(self, workspace_id: str, user_id: str) -> bool:
        return bool(await self._write_one("remove_member", {"workspace_id": workspace_id, "user_id": user_id}))

    async def workspace_counts(self, user_id: str, workspace_ids: list[str], now: datetime
                               ) -> dict[str, tuple[int, int]]:
        if not workspace_ids:
            return {}
        rows = await self._read("workspace_counts", {"user_id": user_id, "ids": json.dumps(workspace_ids),
                                                     "now": ts(now)})
        return {r["id"]: (r["members"], r["memories"]) for r in rows}

    async def create_token(self, token_id: str, user_id: str, name: str, token_hash: str, now: datetime,
                           expires_at: datetime | None) -> None:
        await self._write_one("insert_token", {"id": token_id, "user_id": user_id, "name": name,
                                               "token_hash": token_hash, "now": ts(now), "expires_at": ts(expires_at)})

    async def list_tokens(self, user_id: str | None) -> list[TokenInfo]:
        rows = await self._read("list_tokens", {"user_id": user_id})
        return [TokenInfo(id=r["id"], name=r["name"], user=r["user_name"], created_at=datetime.fromisoformat(r["created_at"]),
                          expires_at=_dt(r["expires_at"]), revoked_at=_dt(r["revoked_at"]),
                          last_used_at=_dt(r["last_used_at"])) for r in rows]

    async def revoke_token(self, token_id: str, now: datetime) -> bool:
        return bool(await self._write_one("revoke_token", {"id": token_id, "now": ts(now)}))

    async def token_owner(self, token_hash: str, now: datetime) -> TokenOwner | None:
        rows = await self._read("token_owner", {"token_hash": token_hash, "now": ts(now)})
        if not rows:
            return None
        r = rows[0]
        return TokenOwner(token_id=r["id"], caller=Caller(r["user_id"], r["user_name"]),
                          expires_at=_dt(r["expires_at"]), last_used_at=_dt(r["last_used_at"]))

    async def touch_token(self, token_id: str, now: datetime) -> None:
        await self._write_one("touch_token", {"id": token_id, "now": ts(now)})

    async def _read(self, name: str, params: dict[str, Any]) -> list[sqlite3.Row]:
        db = self.store._reader or self.store._writer
        if db is None:
            raise StorageUnavailable("the SQLite store is not open")
        async with _translated_async(self.store.path):
            return list(await db.execute_fetchall(A[name], params))

    async def _write_one(self, name: str, params: dict[str, Any]) -> list[sqlite3.Row]:
        """One statement on the writer connection: atomic on its own."""
        async with self.store._statement() as db:
            return list(await db.execute_fetchall(A[name], params))


async def _add_workspace(db: Any, workspace_id: str, name: str, personal_of: str | None, owner_id: str,
                         now: datetime) -> None:
    """The workspace and its owner's membership, inside the caller's transaction."""
    params = {"id": workspace_id, "name": name, "personal_of": personal_of, "now": ts(now)}
    if not list(await db.execute_fetchall(A["insert_workspace"], params)):
        raise Conflict(f"a workspace named {name} already exists; pick another name")
    await db.execute_fetchall(A["set_role"], {"workspace_id": workspace_id, "user_id": owner_id, "role": "owner",
                                              "now": ts(now)})


def _user(row: sqlite3.Row) -> User:
    return User(id=row["id"], name=row["name"], created_at=datetime.fromisoformat(row["created_at"]))


def _dt(value: str | None) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value)
