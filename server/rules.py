"""Rules for what a memory may hold: each check returns the clean value or raises InvalidInput saying
what was wrong and what is allowed."""

from __future__ import annotations

import hashlib
import json
import unicodedata
from datetime import UTC, datetime
from typing import Any

from server.accounts import Membership
from server.errors import InvalidInput
from server.models import KINDS, Visibility

MAX_TAGS = 32
MAX_TAG_CHARS = 64
MAX_PROJECT_CHARS = 200
MAX_METADATA_BYTES = 16384


def visibility_for(value: str | None, target: Membership) -> Visibility:
    """Private in a personal workspace, team in a team workspace, unless asked otherwise."""
    if value is None:
        return "private" if target.personal else "team"
    if value not in ("private", "team"):
        raise InvalidInput(f"visibility {value!r} is not one of: private (only you), team (every member)")
    return "team" if value == "team" else "private"


def noted_redactions(metadata: dict[str, Any], secrets: list[str]) -> dict[str, Any]:
    """Metadata recording which kinds of credential were redacted (added to any earlier note)."""
    earlier = metadata.get("redacted")
    kinds = set(earlier) if isinstance(earlier, list) and all(isinstance(k, str) for k in earlier) else set()
    return {**metadata, "redacted": sorted(kinds | set(secrets))}


def content_hash(text: str) -> str:
    """Hash of the normalised content: case, Unicode form and runs of whitespace do not matter."""
    normal = " ".join(unicodedata.normalize("NFKC", text).casefold().split())
    return hashlib.sha256(normal.encode("utf-8")).hexdigest()


def clean_text(text: str) -> str:
    """Drop NUL characters and unpaired surrogates, which neither backend can store as text."""
    if "\x00" in text:
        text = text.replace("\x00", "")
    return text.encode("utf-8", "replace").decode("utf-8") if _has_surrogates(text) else text


def _has_surrogates(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def checked_choice(what: str, value: str, choices: tuple[str, ...]) -> str:
    """value, if it is one of choices (a kind, a task status...); else an error listing them."""
    if value not in choices:
        raise InvalidInput(f"{what} {value!r} is not one of: {', '.join(choices)}")
    return value


def checked_kind(kind: str) -> str:
    return checked_choice("kind", kind, KINDS)


def checked_importance(value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 10:
        raise InvalidInput(f"importance {value!r} is out of range: use a whole number from 0 to 10")
    return value


def checked_limit(value: int, maximum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= maximum:
        raise InvalidInput(f"limit {value!r} is out of range: use a whole number from 1 to {maximum}")
    return value


def checked_tags(tags: list[str] | None) -> list[str]:
    if tags is None:
        return []
    if isinstance(tags, str) or not isinstance(tags, list):
        raise InvalidInput("tags must be a list of short strings, e.g. [\"db\", \"deploy\"]")
    out: dict[str, None] = {}
    for tag in tags:
        if not isinstance(tag, str):
            raise InvalidInput(f"tag {tag!r} is not a string; tags are short strings")
        clean = " ".join(clean_text(tag).split())
        if len(clean) > MAX_TAG_CHARS:
            raise InvalidInput(f"tag {clean[:20]!r}… is {len(clean)} characters; the limit is {MAX_TAG_CHARS}")
        if clean:
            out.setdefault(clean, None)
    if len(out) > MAX_TAGS:
        raise InvalidInput(f"{len(out)} tags given; the limit is {MAX_TAGS}")
    return list(out)


def checked_metadata(metadata: dict[str, Any] | None) -> dict[str, Any]:
    if metadata is None:
        return {}
    if not isinstance(metadata, dict):
        raise InvalidInput(f"metadata must be a JSON object such as {{\"source\": \"pr-42\"}}, "
                           f"not {type(metadata).__name__}")
    try:
        encoded = json.dumps(metadata, ensure_ascii=False)
    except (TypeError, ValueError) as exc:
        raise InvalidInput(f"metadata cannot be stored as JSON: {exc}") from None
    if "\\u0000" in encoded:
        raise InvalidInput("metadata contains NUL characters (\\u0000); remove them")
    if (size := len(encoded.encode("utf-8"))) > MAX_METADATA_BYTES:
        shown, limit = over_limit(size, MAX_METADATA_BYTES)
        raise InvalidInput(f"metadata is {shown} as JSON; the limit is {limit}: keep large text in content")
    parsed: dict[str, Any] = json.loads(encoded)
    return parsed


def checked_expiry(expires_at: datetime | None, now: datetime) -> datetime | None:
    when = as_utc(expires_at)
    if when is not None and when <= now:
        raise InvalidInput(f"expires_at {when.isoformat()} is in the past; give a future time "
                           "(ISO 8601, e.g. 2030-01-31T00:00:00Z) or leave it out")
    return when


def as_utc(value: datetime | None) -> datetime | None:
    """Naive datetimes are taken as UTC."""
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def utc_now() -> datetime:
    return datetime.now(UTC)


def kib(size: int) -> str:
    return f"{size / 1024:.0f} KiB" if size >= 1024 else f"{size} bytes"


def over_limit(size: int, limit: int) -> tuple[str, str]:
    """A size and the limit it is over, in KiB, or in bytes where KiB would print them alike ("64 KiB; the
    limit is 64 KiB" for one byte over)."""
    if kib(size) == kib(limit):
        return f"{size:,} bytes", f"{limit:,} bytes"
    return kib(size), kib(limit)
