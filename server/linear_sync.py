"""The Linear sync: pull by updatedAt cursor, three-way merge with a conflict policy, idempotent pushes,
one run per workspace at a time (as a job on the queue), a schedule, and signed webhooks."""

from __future__ import annotations

import hashlib
import json
import logging
import uuid
from collections.abc import Callable, Mapping
from contextlib import AbstractAsyncContextManager
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import anyio
from pydantic import BaseModel, Field

from server.errors import InvalidInput, NotFound
from server.ids import new_id
from server.linear import (
    LinearAuthError,
    LinearClient,
    LinearError,
    LinearUnavailable,
    RemoteIssue,
    WorkflowState,
    signature_valid,
    timestamp_fresh,
)
from server.linear_merge import link, mapped, merge, state_for
from server.tasks import (
    POLICIES,
    PRIORITIES,
    SYNCED_FIELDS,
    LinearConnection,
    SyncLock,
    SyncSummary,
    Task,
    TaskService,
    TaskState,
    TaskStore,
)

if TYPE_CHECKING:
    from server.jobs import Job, JobQueue

log = logging.getLogger(__name__)
JOB = "linear_sync"
BUSY_RETRY = 5.0  # seconds before a sync that found its workspace's sync running tries again
REQUEST_WAIT = 30.0  # seconds sync_linear waits for the requested sync's summary
POLL = 0.25
TICK = 30.0  # seconds between looks for workspaces due a scheduled sync
MAX_WEBHOOK_BYTES = 1 << 20
DELIVERY_MEMORY = timedelta(minutes=10)  # replays are refused as stale after 60 s; ids kept well beyond
MERGE_ATTEMPTS = 3
MAX_ERRORS = 20  # per-task errors kept in a summary

ClientFactory = Callable[[str], AbstractAsyncContextManager[LinearClient]]


class LinearStatus(BaseModel):
    """A workspace's connection as `stackmemory linear status` shows it: never the API key or webhook secret."""

    workspace: str
    team: str
    team_name: str
    policy: str
    webhook: bool = Field(description="Whether a webhook secret is set (signed webhooks are accepted).")
    cursor: str | None = Field(default=None, description="Linear's updatedAt the next pull starts from.")
    last_sync: datetime | None = None
    last_result: SyncSummary | None = None
    tasks: dict[str, int] = Field(description="total, linked, pending (to push), conflicts, errors.")


class LinearSync:
    """Runs syncs (one per workspace at a time, under the store's lock), as jobs of kind "linear_sync"."""

    def __init__(self, store: TaskStore, tasks: TaskService, queue: JobQueue | None, *, url: str,
                 interval: float = 300.0, client: ClientFactory | None = None) -> None:
        self.store = store
        self.tasks = tasks
        self.queue = queue
        self.interval = interval
        self.client: ClientFactory = client or (lambda key: LinearClient(url, key))
        self.on_enqueue: Callable[[], None] = lambda: None  # wakes this process's worker

    # ---- requests, jobs and the schedule ---------------------------------------------------------------

    async def request(self, workspace_id: str, workspace: str) -> SyncSummary:
        """Queue a sync (one waiting sync per workspace) and wait up to REQUEST_WAIT for its summary."""
        if self.queue is None:
            return (await self.run(workspace_id)).model_copy(update={"workspace": workspace})
        asked = _now()
        await self.queue.enqueue(JOB, {"workspace_id": workspace_id}, key=workspace_id)
        self.on_enqueue()
        with anyio.move_on_after(REQUEST_WAIT):
            while True:
                conn = await self.store.connection(workspace_id)
                if conn and conn.sync_started_at and conn.sync_started_at >= asked and conn.last_summary \
                        and conn.sync_finished_at and conn.sync_finished_at >= conn.sync_started_at:
                    return SyncSummary(**{**conn.last_summary, "workspace": workspace})
                await anyio.sleep(POLL)
        return SyncSummary(workspace=workspace, state="queued")

    async def handle(self, jobs: list[Job]) -> None:
        """Worker handler: a busy workspace is tried again shortly, so a requested sync is never lost."""
        for job in jobs:
            if job.key is None:
                continue
            summary = await self.run(job.key)
            if summary.state == "busy" and self.queue is not None:
                await self.queue.enqueue(JOB, {"workspace_id": job.key}, key=job.key, delay=BUSY_RETRY)

    async def schedule(self) -> None:
        """Queue a sync for every workspace whose last one finished `interval` ago; every process may run
        this, as queued syncs of a workspace are merged and its runs are locked."""
        if self.interval <= 0 or self.queue is None:
            return
        while True:
            try:
                due = await self.store.due_connections(_now() - timedelta(seconds=self.interval))
                for workspace_id in due:
                    await self.queue.enqueue(JOB, {"workspace_id": workspace_id}, key=workspace_id)
                if due:
                    self.on_enqueue()
            except Exception as exc:  # noqa: BLE001 - the schedule outlives a database hiccup
                log.warning("could not schedule Linear syncs: %s", exc)
            await anyio.sleep(min(self.interval, TICK))

    # ---- connections ----------------------------------------------------------------------------------

    async def connect(self, workspace_id: str, acting_user: str, api_key: str | None, team: str, *,
                      webhook_secret: str | None = None, policy: str = "newest") -> LinearConnection:
        """Check the key and team with Linear, store the connection, and queue a first sync."""
        if policy not in POLICIES:
            raise InvalidInput(f"policy {policy!r} is not one of: {', '.join(POLICIES)}")
        if not api_key:
            raise InvalidInput("no Linear API key: pass --api-key-env VAR (the name of a variable holding it), "
                               "--api-key, or set LINEAR_API_KEY")
        async with self.client(api_key) as client:
            team_id, key, name = await client.team(team)
        conn = LinearConnection(workspace_id=workspace_id, api_key=api_key, team_id=team_id, team_key=key,
                                team_name=name, acting_user=acting_user, policy=policy,  # type: ignore[arg-type]
                                webhook_secret=webhook_secret or None)
        await self.store.save_connection(conn, _now())
        if self.queue is not None:
            await self.queue.enqueue(JOB, {"workspace_id": workspace_id}, key=workspace_id)
        return conn

    async def disconnect(self, workspace_id: str, workspace: str) -> LinearStatus:
        """Forget the workspace's Linear connection (its key, secret and cursor); the tasks stay."""
        status = await self.status(workspace_id, workspace)
        await self.store.delete_connection(workspace_id)
        return status

    async def status(self, workspace_id: str, workspace: str) -> LinearStatus:
        conn = await self.store.connection(workspace_id)
        if conn is None:
            raise NotFound(f"{workspace} is not connected to Linear; `stackmemory linear connect` connects it")
        last = SyncSummary(**{**conn.last_summary, "workspace": workspace}) if conn.last_summary else None
        return LinearStatus(workspace=workspace, team=conn.team_key, team_name=conn.team_name, policy=conn.policy,
                            webhook=bool(conn.webhook_secret), cursor=conn.cursor,
                            last_sync=conn.sync_finished_at, last_result=last,
                            tasks=await self.store.count_tasks(workspace_id))

    # ---- one sync -------------------------------------------------------------------------------------

    async def run(self, workspace_id: str) -> SyncSummary:
        """Sync one workspace now, unless another process is already syncing it ("busy")."""
        conn = await self.store.connection(workspace_id)
        if conn is None:
            return SyncSummary(workspace=workspace_id, state="failed", error="this workspace is not connected "
                               "to Linear; run `stackmemory linear connect`")
        async with self.store.sync_lock(workspace_id) as lock:
            if not lock.held:
                return SyncSummary(workspace=workspace_id, state="busy")
            summary = SyncSummary(workspace=workspace_id, state="done", started_at=_now())
            await self.store.start_sync(workspace_id, summary.started_at)  # type: ignore[arg-type]
            run = _Run(self, conn, lock, summary)
            try:
                async with self.client(conn.api_key) as client:
                    run.client = client
                    await run.pull()
                    await run.push()
            except LinearError as exc:
                summary.state, summary.error = "failed", str(exc)
                log.warning("Linear sync of workspace %s failed: %s", workspace_id, exc)
            if len(summary.errors) > MAX_ERRORS:
                summary.errors = [*summary.errors[:MAX_ERRORS], f"... and {len(summary.errors) - MAX_ERRORS} more"]
            summary.finished_at = _now()
            await self.store.finish_sync(workspace_id, summary.finished_at, summary.model_dump(mode="json"),
                                         summary.error, run.cursor)
        return summary

    async def apply(self, conn: LinearConnection, issue: RemoteIssue, summary: SyncSummary) -> TaskState | None:
        """Bring one Linear issue into its task (creating the task if it is new); the task after, or None
        when nothing changed."""
        for _ in range(MERGE_ATTEMPTS):
            state = await self.store.task_by_linear(conn.workspace_id, issue.id)
            if state is None:
                return await self._adopt(conn, issue, summary)
            seen = state.task.linear.updated_at if state.task.linear else None
            if seen is not None and issue.updated_at < seen:
                return None  # an older event than what we have (webhooks may arrive out of order)
            now = _now()
            outcome = merge(state, issue, conn.policy, now)
            if not outcome.fields_changed and outcome.state.synced == state.synced and \
                    state.task.linear == outcome.state.task.linear and outcome.state.dirty == state.dirty:
                return None
            new = outcome.state
            new.task = new.task.model_copy(update={"updated_by": conn.acting_user})
            if await self.store.save_synced(new, state.task.version, now if outcome.fields_changed else None):
                self.tasks.on_change()
                summary.conflicts += outcome.conflict is not None
                summary.updated_locally += outcome.fields_changed
                return new
        log.warning("task for Linear issue %s kept changing during the sync; the next sync merges it", issue.id)
        return None

    async def _adopt(self, conn: LinearConnection, issue: RemoteIssue, summary: SyncSummary) -> TaskState:
        now = _now()
        fields = mapped(issue)
        task = Task(id=new_id(), workspace_id=conn.workspace_id, **fields, created_by=conn.acting_user,
                    updated_by=conn.acting_user, created_at=now, updated_at=now, linear=link(issue))
        state = TaskState(task, {"local": fields, "remote": issue.raw()}, dirty=False)
        await self.store.add_task(state, None)
        self.tasks.on_change()
        summary.created_locally += 1
        return state

    # ---- webhooks -------------------------------------------------------------------------------------

    async def webhook(self, body: bytes, headers: Mapping[str, str]) -> tuple[int, dict[str, Any]]:
        """(HTTP status, JSON answer) for a POST to /webhooks/linear. Nothing changes unless the body is
        signed with a connected workspace's webhook secret, recently, and was not delivered before."""
        signature = headers.get("linear-signature")
        if not signature:
            return 401, {"error": "missing Linear-Signature header"}
        if len(body) > MAX_WEBHOOK_BYTES:
            return 413, {"error": "payload too large"}
        conns = [c for c in await self.store.connections() if c.webhook_secret]
        conn = next((c for c in conns if signature_valid(body, signature, c.webhook_secret or "")), None)
        if conn is None:
            return 401, {"error": "invalid signature"}
        try:
            event = json.loads(body)
        except ValueError:
            return 400, {"error": "the body is not JSON"}
        now = _now()
        if not isinstance(event, dict) or not timestamp_fresh(event.get("webhookTimestamp"), now):
            return 401, {"error": "stale or missing webhookTimestamp (more than 60 s from now)"}
        delivery = headers.get("linear-delivery") or hashlib.sha256(body).hexdigest()
        if not await self.store.first_delivery(delivery, conn.workspace_id, now, now - DELIVERY_MEMORY):
            return 200, {"status": "duplicate", "changed": False}
        data = event.get("data")
        if event.get("type") != "Issue" or event.get("action") not in ("create", "update") or not isinstance(data, dict):
            return 200, {"status": "ignored", "changed": False}
        try:
            issue = RemoteIssue.of(data)
        except (KeyError, TypeError, ValueError):
            return 400, {"error": "the Issue payload lacks id, updatedAt or title"}
        if issue.team_id not in (None, conn.team_id):
            return 200, {"status": "ignored", "changed": False}
        summary = SyncSummary(workspace=conn.workspace_id, state="done")
        state = await self.apply(conn, issue, summary)
        if state is not None and state.dirty and self.queue is not None:  # our side won a conflict: push it
            await self.queue.enqueue(JOB, {"workspace_id": conn.workspace_id}, key=conn.workspace_id)
            self.on_enqueue()
        return 200, {"status": "applied", "changed": state is not None, "task": state.task.id if state else None}


class _Run:
    """One sync of one workspace: the pull, then the push."""

    def __init__(self, sync: LinearSync, conn: LinearConnection, lock: SyncLock, summary: SyncSummary) -> None:
        self.sync, self.conn, self.lock, self.summary = sync, conn, lock, summary
        self.store = sync.store
        self.client: LinearClient | None = None
        self.cursor: str | None = None
        self.states: list[WorkflowState] = []
        self._users: dict[str, str] | None = None
        self._labels: dict[str, str] | None = None

    @property
    def linear(self) -> LinearClient:
        assert self.client is not None
        return self.client

    async def pull(self) -> None:
        self.states = await self.linear.states(self.conn.team_id)
        newest: RemoteIssue | None = None
        async for page in self.linear.issues(self.conn.team_id, self.conn.cursor):
            for issue in page:
                self.summary.pulled += 1
                await self.sync.apply(self.conn, issue, self.summary)
                if newest is None or issue.updated_at > newest.updated_at:
                    newest = issue
            await self.lock.renew()
        if newest is not None:
            self.cursor = newest.updated_raw  # only once every page is in

    async def push(self) -> None:
        after = ""
        while batch := await self.store.dirty_tasks(self.conn.workspace_id, after, 50):
            for state in batch:
                try:
                    await self._push(state)
                except (LinearAuthError, LinearUnavailable):
                    raise
                except LinearError as exc:
                    self.summary.errors.append(f"task {state.task.id}: {exc}")
                    failed = TaskState(state.task.model_copy(update={"sync_error": str(exc)}), None, True)
                    await self.store.save_synced(failed, state.task.version, None, merge=False)
            after = batch[-1].task.id
            await self.lock.renew()

    async def _push(self, state: TaskState) -> None:
        task = state.task
        if task.linear is None:
            issue, adopted = await self._create(state)
            # An issue a dead sync created may predate later edits: those are pushed next time.
            base = mapped(issue) if adopted else task.fields()
        else:
            base = dict(state.synced["local"]) if state.synced else dict.fromkeys(SYNCED_FIELDS)
            changed = {f: v for f, v in task.fields().items() if v != base.get(f)}
            remote = state.synced["remote"] if state.synced else {}
            if changed:
                fields = await self._input(changed, remote.get("status"))
                issue = await self.linear.update_issue(task.linear.id, fields)
                self.summary.updated_in_linear += 1
                base.update(changed)
            else:
                issue = None
        synced = {"local": base, "remote": issue.raw()} if issue else state.synced
        dirty = any(task.fields()[f] != base.get(f) for f in SYNCED_FIELDS)
        done = TaskState(task.model_copy(update={"linear": link(issue) if issue else task.linear, "sync_error": None}),
                         synced, dirty)
        await self.store.save_synced(done, task.version, None, merge=False)
        self.sync.tasks.on_change()  # the task may have gained its Linear link

    async def _create(self, state: TaskState) -> tuple[RemoteIssue, bool]:
        """Create the task's issue exactly once: its id is chosen and recorded before Linear is asked, so a
        sync that died before recording Linear's answer finds the issue (adopted: True) instead of creating
        another."""
        pending = state.pending_id
        if pending is not None:
            found = await self.linear.issue(pending)
            if found is not None:
                return found, True
        else:
            pending = str(uuid.uuid4())  # Linear takes a client-chosen id in UUID v4 form
            await self.store.set_pending(state.task.id, pending)
        fields = await self._input(state.task.fields(), None)
        try:
            created = await self.linear.create_issue({"id": pending, "teamId": self.conn.team_id, **fields})
        except (LinearAuthError, LinearUnavailable):
            raise
        except LinearError:
            found = await self.linear.issue(pending)  # refused as a duplicate id: it exists already
            if found is None:
                raise
            return found, True
        self.summary.created_in_linear += 1
        return created, False

    async def _input(self, fields: dict[str, Any], current_state: str | None) -> dict[str, Any]:
        """Task fields as an IssueCreateInput / IssueUpdateInput."""
        out: dict[str, Any] = {}
        for name, value in fields.items():
            if name in ("title", "description"):
                out[name] = value
            elif name == "priority":
                out["priority"] = PRIORITIES.index(value)
            elif name == "status":
                state = state_for(value, self.states, current_state)
                if state is not None:
                    out["stateId"] = state
            elif name == "assignee":
                user = await self._user(value)
                if value is None or user is not None:
                    out["assigneeId"] = user
            elif name == "labels":
                out["labelIds"] = [await self._label(n) for n in value]
        return out

    async def _user(self, who: str | None) -> str | None:
        if who is None:
            return None
        if self._users is None:
            self._users = {}
            for u in await self.linear.users():
                for key in (u.name, u.display_name, u.email):
                    self._users.setdefault(key.lower(), u.id)
        found = self._users.get(who.lower())
        note = f"assignee {who!r} matches no Linear user; kept in StackMemory only"
        if found is None and note not in self.summary.errors:
            self.summary.errors.append(note)
        return found

    async def _label(self, name: str) -> str:
        if self._labels is None:
            self._labels = await self.linear.labels(self.conn.team_id)
        if name not in self._labels:
            self._labels[name] = await self.linear.create_label(self.conn.team_id, name)
        return self._labels[name]


def _now() -> datetime:
    return datetime.now(UTC)
