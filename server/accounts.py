"""Users, workspaces, memberships and API tokens: who a caller is and which memories they may reach.

Every memory belongs to one workspace. Each user has a personal workspace (named "~<user>"); team
workspaces have members with a role. A memory is `private` (only its author sees it) or `team` (every
member of its workspace sees it). Local stdio mode is one implicit user, `local`, so nothing changes there.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal, Protocol

from pydantic import BaseModel, Field

from server.errors import Conflict, InvalidInput, NotFound, PermissionDenied
from server.ids import new_id
from server.models import Access

Role = Literal["owner", "admin", "member", "reader"]
ROLES: tuple[str, ...] = ("owner", "admin", "member", "reader")
RANK = {"reader": 0, "member": 1, "admin": 2, "owner": 3}
Visibility = Literal["private", "team"]

LOCAL_USER_ID = "00000000-0000-7000-8000-000000000001"
LOCAL_WORKSPACE_ID = "00000000-0000-7000-8000-000000000002"
LOCAL_USER_NAME = "local"
TOKEN_PREFIX = "smk_"
TOKEN_FRESH = 10.0  # seconds a server trusts a checked token without asking the database again
RESERVED_WORKSPACE_NAMES = {"all": "every workspace of the caller", "personal": "the caller's personal workspace"}
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
# A token's last-used time is written at most this often, so authentication is not a write per request.
TOUCH_EVERY = timedelta(seconds=60)
MAX_TOKEN_DAYS = 36500  # a hundred years; beyond that "never" says it better (and dates overflow)


@dataclass(frozen=True)
class Caller:
    """Who is calling: the user a token belongs to, or the implicit local user."""

    user_id: str
    name: str


LOCAL = Caller(LOCAL_USER_ID, LOCAL_USER_NAME)
LOCAL_ACCESS = Access(user_id=LOCAL_USER_ID, workspaces=(LOCAL_WORKSPACE_ID,))
# The access and ownership fields of the local user's memories, for code that writes or filters directly.
LOCAL_SCOPE = {"user_id": LOCAL_USER_ID, "workspaces": [LOCAL_WORKSPACE_ID]}
LOCAL_NEW = {"workspace_id": LOCAL_WORKSPACE_ID, "visibility": "private", "created_by": LOCAL_USER_ID,
             "updated_by": LOCAL_USER_ID}


class User(BaseModel):
    id: str
    name: str
    created_at: datetime


class Membership(BaseModel):
    """One of the caller's workspaces and the caller's role in it."""

    workspace_id: str
    workspace: str = Field(description="The workspace's name.")
    personal: bool = Field(description="True for the caller's own personal workspace.")
    role: Role


class WorkspaceInfo(Membership):
    members: int
    memories: int = Field(description="Live memories in it that the caller can see.")


class Workspace(BaseModel):
    """A workspace as the operator sees it (`stackmemory workspace list`)."""

    id: str
    name: str
    personal_of: str | None = Field(default=None, description="The user whose personal workspace it is.")
    members: int
    created_at: datetime


class Member(BaseModel):
    user: str
    user_id: str
    role: Role


class TokenInfo(BaseModel):
    id: str
    name: str
    user: str
    created_at: datetime
    expires_at: datetime | None = None
    revoked_at: datetime | None = None
    last_used_at: datetime | None = None


class NewToken(TokenInfo):
    token: str = Field(description="The secret itself; shown only now, never stored.")


@dataclass(frozen=True)
class TokenOwner:
    """What a valid token resolves to."""

    token_id: str
    caller: Caller
    expires_at: datetime | None
    last_used_at: datetime | None


class AccountStore(Protocol):
    """The storage verbs behind accounts; both adapters implement them (see storage/*_accounts.py)."""

    async def create_user(self, user_id: str, name: str, workspace_id: str, now: datetime) -> User:
        """The user, their personal workspace "~name" and its owner membership, in one transaction;
        Conflict when the name is taken."""
        ...

    async def find_user(self, name_or_id: str) -> User | None: ...

    async def list_users(self) -> list[User]: ...

    async def create_workspace(self, workspace_id: str, name: str, owner_id: str, now: datetime) -> None:
        """A team workspace with its creator as owner; Conflict when the name is taken."""
        ...

    async def find_workspace(self, name_or_id: str) -> tuple[str, str, str | None] | None:
        """(id, name, personal_of user id or None)."""
        ...

    async def list_workspaces(self) -> list[Workspace]:
        """Every workspace with its member count: team workspaces first, then personal ones, by name."""
        ...

    async def memberships(self, user_id: str) -> list[Membership]:
        """Every workspace the user belongs to, personal first, then by name."""
        ...

    async def members(self, workspace_id: str) -> list[Member]: ...

    async def set_role(self, workspace_id: str, user_id: str, role: str, now: datetime) -> None:
        """Add the member, or change their role."""
        ...

    async def remove_member(self, workspace_id: str, user_id: str) -> bool: ...

    async def workspace_counts(self, user_id: str, workspace_ids: list[str], now: datetime
                               ) -> dict[str, tuple[int, int]]:
        """{workspace id: (members, live memories the user can see)}."""
        ...

    async def create_token(self, token_id: str, user_id: str, name: str, token_hash: str, now: datetime,
                           expires_at: datetime | None) -> None: ...

    async def list_tokens(self, user_id: str | None) -> list[TokenInfo]:
        """Tokens of one user, or of everyone (None), newest first, revoked ones included."""
        ...

    async def revoke_token(self, token_id: str, now: datetime) -> bool:
        """False when there is no such live token."""
        ...

    async def token_owner(self, token_hash: str, now: datetime) -> TokenOwner | None:
        """The live (not revoked, not expired, user not disabled) token with this hash."""
        ...

    async def touch_token(self, token_id: str, now: datetime) -> None: ...


def hash_token(token: str) -> str:
    """Tokens are 256 random bits, so a plain SHA-256 is enough: there is nothing to brute-force."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def well_formed(token: str) -> bool:
    return token.startswith(TOKEN_PREFIX) and 20 <= len(token) <= 100 and token[len(TOKEN_PREFIX):].replace(
        "-", "").replace("_", "").isalnum()


def check_name(name: str, what: str) -> str:
    if not isinstance(name, str) or not _NAME.match(name):
        raise InvalidInput(f"{what} name {name!r} is not valid: use 1-64 letters, digits, '.', '_' or '-', "
                           "starting with a letter or digit")
    return name


def check_role(role: str) -> Role:
    if role not in ROLES:
        raise InvalidInput(f"role {role!r} is not one of: {', '.join(ROLES)}")
    return role  # type: ignore[return-value]


class Accounts:
    """Account administration (the CLI, run by whoever operates the database) and token checks."""

    def __init__(self, store: AccountStore) -> None:
        self.store = store

    async def create_user(self, name: str) -> User:
        check_name(name, "user")
        return await self.store.create_user(new_id(), name, new_id(), _now())

    async def user(self, name_or_id: str) -> User:
        user = await self.store.find_user(name_or_id)
        if user is None:
            raise NotFound(f"no user {name_or_id!r}; `stackmemory user list` shows them")
        return user

    async def list_users(self) -> list[User]:
        return await self.store.list_users()

    async def create_workspace(self, name: str, owner: str) -> Membership:
        check_name(name, "workspace")
        if name.lower() in RESERVED_WORKSPACE_NAMES:
            raise InvalidInput(f"{name!r} is reserved (tools take it to mean {RESERVED_WORKSPACE_NAMES[name.lower()]}); "
                               "pick another name")
        user = await self.user(owner)
        workspace_id = new_id()
        await self.store.create_workspace(workspace_id, name, user.id, _now())
        return Membership(workspace_id=workspace_id, workspace=name, personal=False, role="owner")

    async def workspace(self, name_or_id: str) -> tuple[str, str, str | None]:
        found = await self.store.find_workspace(name_or_id)
        if found is None:
            raise NotFound(f"no workspace {name_or_id!r}; `stackmemory workspace list` shows them")
        return found

    async def all_workspaces(self) -> list[Workspace]:
        return await self.store.list_workspaces()

    async def user_workspaces(self, user: str) -> list[WorkspaceInfo]:
        """The user's workspaces with their role, member counts and the memories they can see there."""
        member = await self.user(user)
        mine = await self.store.memberships(member.id)
        counts = await self.store.workspace_counts(member.id, [m.workspace_id for m in mine], _now())
        return [WorkspaceInfo(**m.model_dump(), members=counts.get(m.workspace_id, (0, 0))[0],
                              memories=counts.get(m.workspace_id, (0, 0))[1]) for m in mine]

    async def add_member(self, workspace: str, user: str, role: str = "member") -> Member:
        """Like set_role, but refuses to touch someone who is already a member (so a typo cannot demote)."""
        check_role(role)
        workspace_id, name, personal_of = await self.workspace(workspace)
        member = await self.user(user)
        current = {m.user_id: m.role for m in await self.store.members(workspace_id)}
        if member.id in current and personal_of is None:  # set_role says why a personal one is refused
            raise Conflict(f"{member.name} is already a member of {name} (role {current[member.id]}); "
                           "use `stackmemory workspace set-role` to change it")
        return await self.set_role(workspace_id, member.id, role)

    async def set_role(self, workspace: str, user: str, role: str) -> Member:
        check_role(role)
        workspace_id, name, personal_of = await self.workspace(workspace)
        member = await self.user(user)
        if personal_of is not None:
            raise PermissionDenied(f"{name} is {await self._owner_name(personal_of)}'s personal workspace; "
                                   "create a team workspace to share memories")
        current = {m.user_id: m.role for m in await self.store.members(workspace_id)}
        if current.get(member.id) == "owner" and role != "owner" and self._owners(current) == 1:
            raise Conflict(f"{member.name} is the last owner of {name}; make someone else owner first")
        await self.store.set_role(workspace_id, member.id, role, _now())
        return Member(user=member.name, user_id=member.id, role=role)  # type: ignore[arg-type]

    async def remove_member(self, workspace: str, user: str) -> None:
        workspace_id, name, personal_of = await self.workspace(workspace)
        member = await self.user(user)
        if personal_of is not None:
            raise PermissionDenied(f"{name} is a personal workspace; it has no members to remove")
        current = {m.user_id: m.role for m in await self.store.members(workspace_id)}
        if current.get(member.id) == "owner" and self._owners(current) == 1:
            raise Conflict(f"{member.name} is the last owner of {name}; make someone else owner first")
        if not await self.store.remove_member(workspace_id, member.id):
            raise NotFound(f"{member.name} is not a member of {name}")

    async def create_token(self, user: str, name: str = "default", expires_in_days: float | None = None
                           ) -> NewToken:
        owner = await self.user(user)
        if not isinstance(name, str) or not 1 <= len(name.strip()) <= 100:
            raise InvalidInput("a token's name must be 1-100 characters, e.g. the machine or agent using it")
        name = name.strip()
        if expires_in_days is not None and not 0 < expires_in_days <= MAX_TOKEN_DAYS:
            raise InvalidInput(f"a token's expiry must be more than 0 and at most {MAX_TOKEN_DAYS} days; "
                               "leave it out for a token that never expires")
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        now = _now()
        expires = now + timedelta(days=expires_in_days) if expires_in_days is not None else None
        token_id = new_id()
        await self.store.create_token(token_id, owner.id, name, hash_token(token), now, expires)
        return NewToken(id=token_id, name=name, user=owner.name, created_at=now, expires_at=expires, token=token)

    async def list_tokens(self, user: str | None = None) -> list[TokenInfo]:
        user_id = (await self.user(user)).id if user else None
        return await self.store.list_tokens(user_id)

    async def revoke_token(self, token_id: str) -> None:
        if well_formed(token_id):  # the secret itself: never echo it back (it would land in logs and scrollback)
            raise InvalidInput("that is a token, not a token id: pass the id (`stackmemory token list` shows each "
                               "token's id; the token itself is never stored)")
        if not await self.store.revoke_token(token_id, _now()):
            raise NotFound(f"no live token with id {token_id!r}; `stackmemory token list` shows them")

    async def authenticate(self, token: str) -> TokenOwner | None:
        """The token's owner, or None for anything malformed, unknown, expired or revoked (callers answer
        all of these alike, so a response never tells which tokens exist)."""
        if not well_formed(token):
            return None
        now = _now()
        owner = await self.store.token_owner(hash_token(token), now)
        if owner is None:
            return None
        if owner.last_used_at is None or now - owner.last_used_at >= TOUCH_EVERY:
            await self.store.touch_token(owner.token_id, now)
        return owner

    async def _owner_name(self, user_id: str) -> str:
        user = await self.store.find_user(user_id)
        return user.name if user else user_id

    @staticmethod
    def _owners(roles: Mapping[str, str]) -> int:
        return sum(1 for r in roles.values() if r == "owner")


def _now() -> datetime:
    return datetime.now(UTC)
