"""Task fields and Linear issues: how one maps to the other, and the three-way merge of a sync."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from server.linear import RemoteIssue, WorkflowState
from server.tasks import PRIORITIES, SYNCED_FIELDS, ConflictRecord, LinearLink, TaskState

STATUS_TYPE = {"todo": "unstarted", "in_progress": "started", "done": "completed", "cancelled": "canceled",
               "blocked": "started"}


def status_of(state: WorkflowState | None) -> str:
    """A Linear workflow state as a task status; a state named like "Blocked" is blocked."""
    if state is None:
        return "todo"
    if "block" in state.name.lower() and state.type not in ("completed", "canceled"):
        return "blocked"
    return {"started": "in_progress", "completed": "done", "canceled": "cancelled"}.get(state.type, "todo")


def state_for(status: str, states: list[WorkflowState], current: str | None) -> str | None:
    """The workflow state to move an issue to; its current one if that already means this status."""
    if current is not None and any(s.id == current and status_of(s) == status for s in states):
        return current
    wanted = [s for s in states if status_of(s) == status]
    if not wanted:  # no "Blocked" state: started; no unstarted state: the backlog
        fallback = {"blocked": ("started",), "todo": ("backlog", "triage")}.get(status, ())
        wanted = [s for s in states if s.type in fallback]
    preferred = [s for s in wanted if s.type == STATUS_TYPE.get(status)]
    chosen = preferred or wanted
    return chosen[0].id if chosen else None


def mapped(issue: RemoteIssue) -> dict[str, Any]:
    """Linear's values as task fields."""
    return {"title": issue.title, "description": issue.description, "status": status_of(issue.state),
            "priority": PRIORITIES[issue.priority] if 0 <= issue.priority < len(PRIORITIES) else "none",
            "assignee": issue.assignee.email or issue.assignee.name if issue.assignee else None,
            "labels": sorted(issue.labels)}


def link(issue: RemoteIssue) -> LinearLink:
    return LinearLink(id=issue.id, identifier=issue.identifier, url=issue.url, updated_at=issue.updated_at)


@dataclass
class Merge:
    state: TaskState
    fields_changed: bool
    conflict: ConflictRecord | None


def merge(state: TaskState, issue: RemoteIssue, policy: str, now: datetime) -> Merge:
    """Three-way merge against the last sync: a field changed on one side takes that side's value; changed
    on both (to different values) is a conflict the policy decides, recorded on the task."""
    task, theirs, raw = state.task, mapped(issue), issue.raw()
    base = state.synced or {"local": theirs, "remote": raw}  # first link (e.g. adopting a crashed create)
    ours, local_base = task.fields(), dict(base["local"])
    new = dict(ours)
    clashes = []
    for f in SYNCED_FIELDS:
        if raw[f] == base["remote"].get(f):
            continue  # unchanged in Linear: keep ours (pushed later if we changed it)
        if ours[f] == local_base.get(f) or ours[f] == theirs[f]:
            new[f] = local_base[f] = theirs[f]
        else:
            clashes.append(f)
    record = None
    if clashes:
        newest_is_linear = issue.updated_at >= task.updated_at
        winner = "linear" if policy == "linear" or (policy == "newest" and newest_is_linear) else "local"
        record = ConflictRecord(at=now, policy=policy, winner=winner, fields=clashes,  # type: ignore[arg-type]
                                local={f: ours[f] for f in clashes}, linear={f: theirs[f] for f in clashes})
        if winner == "linear":
            for f in clashes:
                new[f] = local_base[f] = theirs[f]
    changed = new != ours
    updated = task.model_copy(update={**new, "linear": link(issue), "conflict": record or task.conflict,
                                      "sync_error": None})
    dirty = any(new[f] != local_base[f] for f in SYNCED_FIELDS)
    return Merge(TaskState(updated, {"local": local_base, "remote": raw}, dirty, None), changed, record)
