"""The change feed: what changed in a workspace, in order, and who is told.

Every create, update, share and delete of a memory (migration 0007), and every task created or changed
in a way its readers notice (0010), appends to the change log in its own transaction, through triggers,
with a cursor counting up per workspace. Clients catch up with `get_changes(since=...)`
and, on the 2026-07-28 protocol, hear about changes as `notifications/resources/updated` for
`stackmemory://workspace/<id>/changes` on a `subscriptions/listen` stream.

How a change reaches the listening sessions of every server process:
- PostgreSQL: the writing transaction NOTIFYs; each process holds one LISTEN connection outside the pool
  (`PgListener`), which reconnects after losing it and then replays what it missed from the log.
- SQLite: the process looks at the log after each of its own writes, and every second for other
  processes' writes (`SqlitePoller`).
A session hears only of changes its caller may see: their workspaces (tasks are every member's), and
private changes only of their own memories.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, Protocol

import anyio
from pydantic import BaseModel, Field

from server.accounts import LOCAL, Caller
from server.errors import StackMemoryError

log = logging.getLogger(__name__)
ChangeKind = Literal["create", "update", "share", "delete"]
URI_PREFIX = "stackmemory://workspace/"
MEMBERSHIP_TTL = 2.0  # seconds a session's workspace list is reused when filtering notifications
RECONNECT_MAX = 2.0  # seconds between LISTEN reconnect attempts, at most
POLL_SECONDS = 1.0  # SQLite: how often other processes' writes are looked for


def changes_uri(workspace_id: str) -> str:
    return f"{URI_PREFIX}{workspace_id}/changes"


class Change(BaseModel):
    cursor: int = Field(description="Position in the workspace's feed; pass the last one seen as since.")
    kind: ChangeKind
    entity: str = Field(description="What changed: memory or task.")
    id: str = Field(description="The changed memory's or task's id.")
    actor: str = Field(description="Who made the change.")
    at: datetime


class ChangesPage(BaseModel):
    workspace: str
    workspace_id: str
    uri: str = Field(description="The resource to listen to (subscriptions/listen) for updates.")
    changes: list[Change]
    next_cursor: int = Field(description="Pass as since to get what comes after.")
    more: bool = Field(description="True when more changes wait beyond this page.")


@dataclass(frozen=True)
class ChangeEvent:
    """One row of the log, as storage and NOTIFY payloads carry it."""

    workspace_id: str
    cursor: int
    kind: str
    entity: str
    entity_id: str
    actor: str
    private_to: str | None
    at: datetime | None = None

    @classmethod
    def from_payload(cls, payload: str) -> ChangeEvent:
        data = json.loads(payload)
        return cls(workspace_id=data["w"], cursor=int(data["c"]), kind=data["k"], entity=data["e"],
                   entity_id=data["id"], actor="", private_to=data.get("p"))


class ChangeStore(Protocol):
    """Storage verbs of the feed (storage/*_changes.py)."""

    def notifications(self, channel: str) -> AsyncIterator[str | None]:
        """PostgreSQL only: None once listening, then each NOTIFY payload (see PostgresStore)."""
        ...

    async def changes(self, user_id: str, workspace_id: str, since: int, limit: int) -> list[ChangeEvent]:
        """Entries after `since` the user may see, oldest first."""
        ...

    async def latest(self) -> dict[str, int]:
        """The newest cursor of every workspace that has any."""
        ...

    async def after(self, workspace_id: str, since: int, limit: int) -> list[ChangeEvent]:
        """Every entry after `since` (for the server's own fan-out, which filters per session)."""
        ...


Listener = Callable[[Any], None]


class ChangeBus:
    """The MCP SDK's subscription bus, with a caller per listen stream.

    The SDK registers a stream's listener from inside its `subscriptions/listen` request, so the caller
    (from the bearer token, or the local user) is known then; changes are delivered only to the streams
    whose caller may see them. Events the SDK publishes itself (list changes) reach every stream."""

    def __init__(self, memberships: Callable[[str], Awaitable[set[str]]] | None = None) -> None:
        self.memberships = memberships
        self._listeners: dict[object, tuple[Listener, Caller]] = {}
        self._workspaces: dict[str, tuple[float, set[str]]] = {}
        self.seen: dict[str, int] = {}  # newest cursor delivered, per workspace

    @property
    def listening(self) -> bool:
        return bool(self._listeners)

    async def publish(self, event: Any) -> None:
        for listener, _ in list(self._listeners.values()):
            _call(listener, event)
        await anyio.lowlevel.checkpoint()

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        token = object()
        self._listeners[token] = (listener, current_caller())

        def unsubscribe() -> None:
            self._listeners.pop(token, None)

        return unsubscribe

    async def deliver(self, events: list[ChangeEvent]) -> None:
        """Tell every stream whose caller may see one of these changes that its workspace's feed moved."""
        from mcp.shared.subscriptions import ResourceUpdated

        fresh = [e for e in events if e.cursor > self.seen.get(e.workspace_id, 0)]
        for e in fresh:
            self.seen[e.workspace_id] = max(self.seen.get(e.workspace_id, 0), e.cursor)
        if not fresh:
            return
        for listener, caller in list(self._listeners.values()):
            readable = await self._readable(caller)
            for e in fresh:
                if e.workspace_id in readable and e.private_to in (None, caller.user_id):
                    _call(listener, ResourceUpdated(uri=changes_uri(e.workspace_id)))
        await anyio.lowlevel.checkpoint()

    async def _readable(self, caller: Caller) -> set[str]:
        if self.memberships is None:
            return set()
        now = time.monotonic()
        cached = self._workspaces.get(caller.user_id)
        if cached is None or now - cached[0] > MEMBERSHIP_TTL:
            try:
                cached = (now, await self.memberships(caller.user_id))
            except StackMemoryError as exc:
                log.info("could not read %s's workspaces to deliver changes: %s", caller.name, exc)
                return cached[1] if cached else set()
            self._workspaces[caller.user_id] = cached
        return cached[1]


def current_caller() -> Caller:
    from mcp.server.auth.middleware.auth_context import get_access_token

    token = get_access_token()
    if token is not None and token.subject:
        return Caller(user_id=token.subject, name=str((token.claims or {}).get("name", token.subject)))
    return LOCAL


def _call(listener: Listener, event: Any) -> None:
    try:
        listener(event)
    except Exception:
        log.exception("a change listener failed; continuing")


class PgListener:
    """One LISTEN connection per process, outside the pool. After losing it (a restart of PostgreSQL,
    pg_terminate_backend), it reconnects with backoff and replays from the log everything after the
    newest cursor it had seen, so nothing is lost; sessions fetch by cursor, so nothing doubles."""

    CHANNEL = "stackmemory_changes"

    def __init__(self, bus: ChangeBus, store: ChangeStore) -> None:
        self.bus = bus
        self.store = store
        self.connected = anyio.Event()
        self.reconnects = 0

    async def run(self) -> None:
        delay = 0.05
        first = True
        while True:
            try:
                async for payload in self.store.notifications(self.CHANNEL):
                    if payload is not None:
                        await self.bus.deliver([ChangeEvent.from_payload(payload)])
                        continue
                    # LISTEN is in effect; only now read where the log stands, so nothing falls between.
                    if first:
                        for workspace_id, newest in (await self.store.latest()).items():
                            self.bus.seen.setdefault(workspace_id, newest)
                    else:
                        self.reconnects += 1
                        await self._catch_up()
                    first = False
                    delay = 0.05
                    self.connected.set()
            except StackMemoryError as exc:
                log.warning("change feed: LISTEN connection lost or unavailable (%s); retrying in %.2f s",
                            exc, delay)
            self.connected = anyio.Event()
            await anyio.sleep(delay)
            delay = min(delay * 2, RECONNECT_MAX)

    async def _catch_up(self) -> None:
        for workspace_id, newest in (await self.store.latest()).items():
            since = self.bus.seen.get(workspace_id, 0)
            while since < newest:
                missed = await self.store.after(workspace_id, since, 1000)
                if not missed:
                    break
                await self.bus.deliver(missed)
                since = missed[-1].cursor


class SqlitePoller:
    """SQLite has no NOTIFY: look at the log after this process's writes (poke) and every second."""

    def __init__(self, bus: ChangeBus, read_new: Callable[[], Awaitable[list[ChangeEvent]]]) -> None:
        self.bus = bus
        self.read_new = read_new
        self._wake = anyio.Event()

    def poke(self) -> None:
        self._wake.set()

    async def prime(self) -> None:
        """Note where the log stands now: only what comes after is news."""
        try:
            await self.read_new()
        except StackMemoryError as exc:
            log.info("change feed: could not read the log: %s", exc)

    async def run(self) -> None:
        while True:
            with anyio.move_on_after(POLL_SECONDS):
                await self._wake.wait()
            self._wake = anyio.Event()
            try:
                events = await self.read_new()
            except StackMemoryError as exc:
                log.info("change feed: could not read the log: %s", exc)
                continue
            if events and self.bus.listening:
                await self.bus.deliver(events)


