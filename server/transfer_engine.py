"""Carrying batches of rows into a target database and checking, row by row, what the target then holds.

Each batch is one transaction: compare with what the target already has, write what is missing (or,
by policy, what differs), read back what was written, and add every row's fingerprint to per-kind
checksums for the source and the target. A batch that fails leaves nothing behind, and as rows the
target already holds identically are left alone, running the same move again adds nothing."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, Literal

from server.errors import StackMemoryError
from server.storage.kinds import (
    KINDS,
    MEMBERSHIP,
    MEMORY,
    USER,
    VECTOR,
    WORKSPACE,
    Action,
    Kind,
    Row,
    TransferReader,
    TransferWriter,
)
from server.transfer_format import digest
from server.transfer_report import Tally

Policy = Literal["skip", "overwrite", "newest"]
Decision = Literal["insert", "replace", "same", "keep"]


@dataclass(frozen=True)
class Plan:
    policy: Policy = "skip"
    strict: bool = True  # a row the target keeps different from the source is a mismatch (migrate, restore)
    dry_run: bool = False
    vectors: bool = True  # carry vectors (the target uses the source's model)


class Mapper:
    """Source user and workspace ids -> the target's. An account is matched by id, then by name (and a
    personal workspace by its owner); a match under another id is not written, and the target's
    members of a matched workspace stay as they are."""

    def __init__(self, users: list[Row], workspaces: list[Row], user_map: dict[str, str] | None = None,
                 workspace_map: dict[str, str] | None = None) -> None:
        self.users = dict(user_map or {})
        self.workspaces = dict(workspace_map or {})
        self._user_ids = {u["id"] for u in users}
        self._user_names = {u["name"]: u["id"] for u in users}
        self._ws_ids = {w["id"] for w in workspaces}
        self._ws_names = {w["name"]: w["id"] for w in workspaces}
        self._personal = {w["personal_of"]: w["id"] for w in workspaces if w["personal_of"]}

    def apply(self, kind: Kind, row: Row) -> Row:
        out = dict(row)
        for c in kind.columns:
            if c.ref and out[c.name]:
                table = self.users if c.ref == "user" else self.workspaces
                out[c.name] = table.get(out[c.name], out[c.name])
        return out

    def account(self, kind: Kind, row: Row) -> Row | None:
        """The row to write, or None when it resolved to a different account the target already has."""
        if kind is USER:
            src = row["id"]
            if src in self.users:
                return None
            if src not in self._user_ids and (match := self._user_names.get(row["name"])):
                self.users[src] = match
                return None
            self._user_ids.add(src)
            self._user_names.setdefault(row["name"], src)
            return row
        if kind is WORKSPACE:
            src, mapped = row["id"], self.apply(kind, row)
            if src in self.workspaces:
                return None
            if src not in self._ws_ids and (match := self._ws_names.get(row["name"]) or
                                            self._personal.get(mapped["personal_of"] or "")):
                self.workspaces[src] = match
                return None
            self._ws_ids.add(src)
            self._ws_names.setdefault(row["name"], src)
            if mapped["personal_of"]:
                self._personal.setdefault(mapped["personal_of"], src)
            return mapped
        if kind is MEMBERSHIP and row["workspace_id"] in self.workspaces:
            return None
        return self.apply(kind, row)


@dataclass
class Entry:
    row: Row
    key: tuple[Any, ...]
    digest: int
    old: Row | None
    old_digest: int | None
    decision: Decision = "insert"

    @property
    def writes(self) -> bool:
        return self.decision in ("insert", "replace")


class Mover:
    """Moves batches into one target and keeps the tallies."""

    def __init__(self, reader: TransferReader, writer: TransferWriter | None, plan: Plan, mapper: Mapper,
                 model: str | None, target_has_schema: bool = True) -> None:
        self.reader = reader
        self.writer = writer
        self.plan = plan
        self.mapper = mapper
        self.model = model
        self.has_schema = target_has_schema
        self.tallies: dict[str, Tally] = {k.name: Tally() for k in KINDS}
        self.merged_memories: set[str] = set()
        self.replaced_memories: set[str] = set()
        self.skipped_vectors = 0

    async def carry(self, batch: dict[Kind, list[Row]], label: str) -> None:
        await self.commit(await self.prepare(batch), label)

    async def prepare(self, batch: dict[Kind, list[Row]]) -> list[tuple[Kind, list[Entry]]]:
        """Map the rows, compare them with the target's, and decide what to write."""
        planned: list[tuple[Kind, list[Entry]]] = []
        for kind in KINDS:
            rows = batch.get(kind) or []
            if kind is VECTOR and not self.plan.vectors:
                self.skipped_vectors += len(rows)
                continue
            rows = self._mapped(kind, rows)
            if rows:
                planned.append((kind, await self._entries(kind, rows)))
        return planned

    async def commit(self, planned: list[tuple[Kind, list[Entry]]], label: str) -> None:
        """Write the batch in one transaction, then check what the target holds."""
        steps: list[tuple[Kind, Action, list[Row]]] = []
        for kind, entries in planned:
            if kind.account:  # always merged, so an account on both sides keeps the earlier creation time
                steps.append((kind, "merge", [e.row for e in entries]))
            else:
                steps.append((kind, "insert", [e.row for e in entries if e.decision == "insert"]))
                steps.append((kind, "replace", [e.row for e in entries if e.decision == "replace"]))
        if not self.plan.dry_run and self.writer is not None and any(rows for _, _, rows in steps):
            carried = [r["memory_id"] for k, _, rows in steps if k is VECTOR for r in rows]
            try:
                await self.writer.write(steps, carried)
            except StackMemoryError as exc:
                raise type(exc)(f"{exc} (while writing {label}, which was rolled back; the batches before it "
                                "stay, and running the same command again continues)") from exc
        for kind, entries in planned:
            await self._check(kind, entries)

    def _mapped(self, kind: Kind, rows: list[Row]) -> list[Row]:
        if not kind.account:
            return [self.mapper.apply(kind, r) for r in rows]
        out = []
        for r in rows:
            mapped = self.mapper.account(kind, r)
            if mapped is None:
                self.tallies[kind.name].source += 1
                self.tallies[kind.name].merged += 1
            else:
                out.append(mapped)
        return out

    async def _entries(self, kind: Kind, rows: list[Row]) -> list[Entry]:
        before = await self._current(kind, rows)
        entries = []
        for row in rows:
            key = kind.key_of(row)
            old = before.get(key)
            entry = Entry(row, key, digest(kind, row), old, None if old is None else digest(kind, old))
            entry.decision = self._decide(kind, entry)
            entries.append(entry)
        return entries

    async def _current(self, kind: Kind, rows: list[Row]) -> dict[tuple[Any, ...], Row]:
        """The target's rows with these rows' keys."""
        if not self.has_schema:
            return {}
        if kind.account:
            found = await self.reader.accounts(kind)
        elif kind.parent:
            found = await self.reader.children(kind, sorted({r["memory_id"] for r in rows}), self.model)
        else:
            found = await self.reader.by_id(kind, [r["id"] for r in rows])
        return {kind.key_of(r): r for r in found}

    def _decide(self, kind: Kind, e: Entry) -> Decision:
        if e.old is None:
            return "insert"
        if e.old_digest == e.digest:
            return "same"
        if kind.account:
            return "keep"
        if not kind.parent:  # memories and tasks: newest by last change, then version
            newer = (e.row["updated_at"], e.row["version"]) > (e.old["updated_at"], e.old["version"])
            if self.plan.policy == "overwrite" or (self.plan.policy == "newest" and newer):
                if kind is MEMORY:
                    self.replaced_memories.add(e.row["id"])
                return "replace"
            return "keep"
        if e.row["memory_id"] in self.replaced_memories or self.plan.policy == "overwrite":
            return "replace"
        return "keep"

    async def _check(self, kind: Kind, entries: list[Entry]) -> None:
        """Compare each source row with what the target holds now, and add both to the checksums."""
        tally = self.tallies[kind.name]
        reread = not self.plan.dry_run and any(e.writes or kind.account for e in entries)
        after = await self._current(kind, [e.row for e in entries]) if reread else {}
        for e in entries:
            final, final_digest = e.old, e.old_digest
            if reread and (e.writes or kind.account):
                final = after.get(e.key)
                final_digest = None if final is None else digest(kind, final)
            tally.source += 1
            if final is None and not self.plan.dry_run and await self._merged(kind, e.row):
                tally.merged += 1
                continue
            tally.source_sum += e.digest
            if final_digest is not None:
                tally.target += 1
                tally.target_sum += final_digest
            self._count(tally, e, final_digest)

    async def _merged(self, kind: Kind, row: Row) -> bool:
        """A memory that is missing because the target already has it live under another id, or a row of
        such a memory."""
        if kind is MEMORY and row["deleted_at"] is None and await self.reader.live_duplicate(row):
            self.merged_memories.add(row["id"])
            return True
        return kind.parent and row["memory_id"] in self.merged_memories

    def _count(self, tally: Tally, e: Entry, final_digest: int | None) -> None:
        names = {"insert": "added", "replace": "updated", "same": "unchanged", "keep": "kept"}
        if self.plan.dry_run:
            setattr(tally, names[e.decision], getattr(tally, names[e.decision]) + 1)
        elif final_digest == e.digest:
            name = "unchanged" if e.decision == "keep" else names[e.decision]
            setattr(tally, name, getattr(tally, name) + 1)
        elif e.decision == "keep":
            tally.kept += 1
            if self.plan.strict:
                tally.problem(e.key, "differs in the target (the target's was kept)")
        else:
            tally.problem(e.key, "is missing from the target" if final_digest is None else "differs in the target")


class Pipeline:
    """Prepares the next batch while the previous one is written: the database and Python work at once.
    Batches still commit one after another, in order."""

    def __init__(self, mover: Mover) -> None:
        self.mover = mover
        self._pending: asyncio.Future[None] | None = None

    async def put(self, batch: dict[Kind, list[Row]], label: str) -> None:
        try:
            planned = await self.mover.prepare(batch)
        finally:
            await self.drain()  # the batch in flight lands (or fails) before anything else happens
        self._pending = asyncio.ensure_future(self.mover.commit(planned, label))

    async def drain(self) -> None:
        pending, self._pending = self._pending, None
        if pending is not None:
            await pending
