"""The report every move ends with: per kind, what happened and checksums of both sides."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from server.transfer_format import show_sum

EXAMPLES = 5


@dataclass
class Tally:
    """One kind's rows: how many, what happened to them, and checksums of both sides."""

    source: int = 0
    target: int = 0
    added: int = 0
    updated: int = 0
    unchanged: int = 0
    kept: int = 0  # differ, and the target's were kept (the conflict policy, or a migration's strictness)
    merged: int = 0  # matched something the target already had under another id; left out of the checksums
    mismatched: int = 0
    source_sum: int = 0
    target_sum: int = 0
    examples: list[str] = field(default_factory=list)

    def problem(self, key: tuple[Any, ...], what: str) -> None:
        self.mismatched += 1
        if len(self.examples) < EXAMPLES:
            self.examples.append(f"{'/'.join(map(str, key))} {what}")

    def as_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {k: v for k, v in self.__dict__.items() if k not in ("source_sum", "target_sum")}
        return {**data, "source_checksum": show_sum(self.source_sum), "target_checksum": show_sum(self.target_sum)}


@dataclass
class Report:
    """What a move did, kind by kind, and whether the target holds what it should."""

    operation: str
    source: str
    target: str | None
    tallies: dict[str, Tally]
    notes: list[str] = field(default_factory=list)
    compared: bool = True
    dry_run: bool = False

    @property
    def mismatched(self) -> int:
        return sum(t.mismatched for t in self.tallies.values())

    @property
    def exit_code(self) -> int:
        return 1 if self.compared and not self.dry_run and self.mismatched else 0

    def as_json(self) -> dict[str, Any]:
        return {"operation": self.operation, "source": self.source, "target": self.target,
                "dry_run": self.dry_run, "verified": self.compared and not self.dry_run and not self.mismatched,
                "kinds": {k: t.as_json() for k, t in self.tallies.items()}, "notes": self.notes}

    def text(self) -> str:
        arrow = f" -> {self.target}" if self.target else ""
        lines = [f"{self.operation}: {self.source}{arrow}" + (" (dry run: nothing was written)" if self.dry_run else "")]
        if self.compared:
            add, upd = ("would add", "would update") if self.dry_run else ("added", "updated")
            head = ["kind", "source", "target", add, upd, "unchanged", "kept", "merged", "mismatched",
                    "source checksum", "target checksum"]
            rows = [[k, t.source, t.target, t.added, t.updated, t.unchanged, t.kept, t.merged, t.mismatched,
                     show_sum(t.source_sum), show_sum(t.target_sum)] for k, t in self._shown()]
        else:
            head, rows = ["kind", "records", "checksum"], [[k, t.source, show_sum(t.source_sum)]
                                                           for k, t in self._shown()]
        lines += ["", grid(head, rows), ""] + self.notes
        if self.compared and not self.dry_run:
            lines.append(self._verdict())
        return "\n".join(lines).rstrip()

    def _shown(self) -> list[tuple[str, Tally]]:
        """Kinds with anything in them (--json shows every kind)."""
        return [(k, t) for k, t in self.tallies.items() if t.source or t.target] or list(self.tallies.items())[:1]

    def _verdict(self) -> str:
        if not self.mismatched:
            kept = sum(t.kept for t in self.tallies.values())
            merged = sum(t.merged for t in self.tallies.values())
            return ("verified: the target holds every record of the source (counts and checksums above)"
                    + (f"; {kept} it already had, differently, were kept as --on-conflict says" if kept else "")
                    + (f"; {merged} matched what it already had under another id (merged)" if merged else ""))
        examples = [f"{k} {e}" for k, t in self.tallies.items() for e in t.examples][:8]
        return (f"MISMATCH: {self.mismatched} records are missing from the target or differ there, e.g.\n  "
                + "\n  ".join(examples))


def grid(head: list[str], rows: list[list[Any]]) -> str:
    table = [head, *[[str(c) for c in r] for r in rows]]
    widths = [max(len(r[i]) for r in table) for i in range(len(head))]
    return "\n".join("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths,
                     strict=True))).rstrip() for r in table)
