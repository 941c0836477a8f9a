"""Figures the reliability tests measure (kills survived, recovery time, fuzz cases), collected for
docs/reliability.md: with STACKMEMORY_FIGURES=<file> set, each test merges its figures into that JSON file."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def record(name: str, value: Any) -> None:
    """Store `value` under `name` in the figures file, if one was asked for (a no-op otherwise)."""
    target = os.environ.get("STACKMEMORY_FIGURES")
    if not target:
        return
    path = Path(target)
    current = json.loads(path.read_text()) if path.exists() and path.stat().st_size else {}
    current[name] = value
    path.write_text(json.dumps(current, indent=2, sort_keys=True))


def add(name: str, key: str, amount: int) -> None:
    """Add `amount` to a counter `name.key` (fuzz tests count the cases each of them ran)."""
    target = os.environ.get("STACKMEMORY_FIGURES")
    if not target:
        return
    path = Path(target)
    current = json.loads(path.read_text()) if path.exists() and path.stat().st_size else {}
    bucket = current.setdefault(name, {})
    bucket[key] = bucket.get(key, 0) + amount
    path.write_text(json.dumps(current, indent=2, sort_keys=True))
