"""Sortable identifiers (UUIDv7, RFC 9562) and their validation."""

import os
import re
import threading
import time
import uuid

from server.errors import InvalidInput

_UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


_last = 0
_lock = threading.Lock()


def new_id() -> str:
    """A UUIDv7: 48 bits of Unix milliseconds, then randomness, so ids sort by creation time.

    Within one process ids are strictly increasing (RFC 9562 method 3: a same-millisecond id is the
    previous one plus one), so a list ordered by id is ordered by creation."""
    global _last
    ms = time.time_ns() // 1_000_000
    rand = int.from_bytes(os.urandom(10), "big")
    value = (ms & ((1 << 48) - 1)) << 80 | rand & ((1 << 80) - 1)
    value = (value & ~(0xF << 76)) | (0x7 << 76)  # version 7
    value = (value & ~(0x3 << 62)) | (0x2 << 62)  # RFC 4122 variant
    with _lock:
        if value <= _last:
            value = _last + 1
        _last = value
    return str(uuid.UUID(int=value))


def check_id(value: str, what: str = "memory id", source: str = "a store, search or list result") -> str:
    """Return a normalised id or raise InvalidInput naming the expected shape."""
    text = value.strip().lower() if isinstance(value, str) else ""
    if not _UUID_RE.match(text):
        shown = repr(value)[:60]
        raise InvalidInput(
            f"{what} {shown} is not valid: expected a UUID such as "
            f"'01936f2e-7c3a-7d4e-9b1a-2f3c4d5e6f70' (copy it from {source})"
        )
    return text
