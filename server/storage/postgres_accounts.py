"""Users, workspaces, memberships and API tokens on PostgreSQL, through the store's pool."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from server.accounts import Caller, Member, Membership, TokenInfo, TokenOwner, User, Workspace
from server.errors import Conflict
from server.storage import migrations
from server.storage.postgres import PostgresStore

A = migrations.named_queries("postgres", "accounts.sql")


class PostgresAccounts:
    """An AccountStore. Only workspace_counts reads memories, so only it sets the user for row-level security."""

    def __init__(self, store: PostgresStore) -> None:
        self.store = store

    async def create_user(self, user_id: str, name: str, workspace_id: str, now: datetime) -> User:
        async with self.store._transaction() as conn:
            cur = await conn.execute(A["insert_user"], {"id": user_id, "name": name, "now": now})
            row = await cur.fetchone()
            if row is None:
                raise Conflict(f"a user named {name} already exists; pick another name")
            await _add_workspace(conn, workspace_id, f"~{name}", user_id, user_id, now)
        return User(id=row["id"], name=row["name"], created_at=row["created_at"])

    async def find_user(self, name_or_id: str) -> User | None:
        rows = await self._run("find_user", {"key": name_or_id})
        return User(**rows[0]) if rows else None

    async def list_users(self) -> list[User]:
        return [User(**r) for r in await self._run("list_users", {})]

    async def create_workspace(self, workspace_id: str, name: str, owner_id: str, now: datetime) -> None:
        async with self.store._transaction() as conn:
            await _add_workspace(conn, workspace_id, name, None, owner_id, now)

    async def find_workspace(self, name_or_id: str) -> tuple[str, str, str | None] | None:
        rows = await self._run("find_workspace", {"key": name_or_id})
        return (rows[0]["id"], rows[0]["name"], rows[0]["personal_of"]) if rows else None

    async def list_workspaces(self) -> list[Workspace]:
        return [Workspace(**r) for r in await self._run("list_workspaces", {})]

    async def memberships(self, user_id: str) -> list[Membership]:
        return [Membership(**r) for r in await self._run("memberships", {"user_id": user_id})]

    async def members(self, workspace_id: str) -> list[Member]:
        rows = await self._run("members", {"workspace_id": workspace_id})
        return [Member(user=r["user_name"], user_id=r["user_id"], role=r["role"]) for r in rows]

    async def set_role(self, workspace_id: str, user_id: str, role: str, now: datetime) -> None:
        await self._run("set_role", {"workspace_id": workspace_id, "user_id": user_id, "role": role, "now": now})

    async def remove_member(self, workspace_id: str, user_id: str) -> bool:
        return bool(await self._run("remove_member", {"workspace_id": workspace_id, "user_id": user_id}))

    async def workspace_counts(self, user_id: str, workspace_ids: list[str], now: datetime
                               ) -> dict[str, tuple[int, int]]:
        if not workspace_ids:
            return {}
        async with self.store._transaction() as conn:
            await conn.execute(A["set_user"], {"user_id": user_id})
            cur = await conn.execute(A["workspace_counts"], {"user_id": user_id, "ids": workspace_ids, "now": now})
            rows = await cur.fetchall()
        return {r["id"]: (r["members"], r["memories"]) for r in rows}

    async def create_token(self, token_id: str, user_id: str, name: str, token_hash: str, now: datetime,
                           expires_at: datetime | None) -> None:
        await self._run("insert_token", {"id": token_id, "user_id": user_id, "name": name, "token_hash": token_hash,
                                         "now": now, "expires_at": expires_at})

    async def list_tokens(self, user_id: str | None) -> list[TokenInfo]:
        rows = await self._run("list_tokens", {"user_id": user_id})
        return [TokenInfo(id=r["id"], name=r["name"], user=r["user_name"], created_at=r["created_at"],
                          expires_at=r["expires_at"], revoked_at=r["revoked_at"], last_used_at=r["last_used_at"])
                for r in rows]

    async def revoke_token(self, token_id: str, now: datetime) -> bool:
        return bool(await self._run("revoke_token", {"id": token_id, "now": now}))

    async def token_owner(self, token_hash: str, now: datetime) -> TokenOwner | None:
        rows = await self._run("token_owner", {"token_hash": token_hash, "now": now})
        if not rows:
            return None
        r = rows[0]
        return TokenOwner(token_id=r["id"], caller=Caller(r["user_id"], r["user_name"]),
                          expires_at=r["expires_at"], last_used_at=r["last_used_at"])

    async def touch_token(self, token_id: str, now: datetime) -> None:
        await self._run("touch_token", {"id": token_id, "now": now})

    async def _run(self, name: str, params: dict[str, Any]) -> list[dict[str, Any]]:
        async with self.store._connection() as conn:
            cur = await conn.execute(A[name], params)
            return list(await cur.fetchall()) if cur.description else []


async def _add_workspace(conn: Any, workspace_id: str, name: str, personal_of: str | None, owner_id: str,
                         now: datetime) -> None:
    """The workspace and its owner's membership, inside the caller's transaction."""
    cur = await conn.execute(A["insert_workspace"], {"id": workspace_id, "name": name, "personal_of": personal_of,
                                                     "now": now})
    if await cur.fetchone() is None:
        raise Conflict(f"a workspace named {name} already exists; pick another name")
    await conn.execute(A["set_role"], {"workspace_id": workspace_id, "user_id": owner_id, "role": "owner", "now": now})
