"""Credential redaction: text that looks like a secret is replaced by `[REDACTED:<kind>]` before it is stored."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

# Values that name a secret instead of holding one (`${DB_PASSWORD}`, `<password>`, an environment lookup) are
# left alone: they are what documentation and configuration files are made of.
_PLACEHOLDER = re.compile(r"^(?:\$|<|\{\{|%|\*{3}|\[REDACTED|os\.|process\.env|env\.|get_?env|settings\.|config\.|"
                          r"self\.|environ)", re.IGNORECASE)

# (kind, pattern, group holding the secret: 0 = the whole match). More specific patterns come first, so
# an Anthropic key is called one rather than an OpenAI key, and a key inside a URL is named by its kind.
_PATTERNS: list[tuple[str, re.Pattern[str], int]] = [
    ("private_key", re.compile(r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----.*?"
                               r"(?:-----END (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----|\Z)", re.DOTALL), 0),
    ("anthropic_key", re.compile(r"\bsk-ant-[A-Za-z0-9_-]{20,}"), 0),
    ("openai_key", re.compile(r"\bsk-(?:proj-|svcacct-|admin-)?[A-Za-z0-9_-]{20,}"), 0),
    ("github_token", re.compile(r"\b(?:gh[pousr]_[A-Za-z0-9]{30,}|github_pat_[A-Za-z0-9_]{22,})"), 0),
    ("gitlab_token", re.compile(r"\bglpat-[A-Za-z0-9_-]{20,}"), 0),
    ("aws_access_key", re.compile(r"\b(?:AKIA|ASIA|ABIA|ACCA)[0-9A-Z]{16}\b"), 0),
    ("aws_secret_key", re.compile(r"(?i)\baws_?secret(?:_access)?_?key\b[\"']?\s*[:=]\s*[\"']?"
                                  r"([A-Za-z0-9/+=]{40})(?![A-Za-z0-9/+=])"), 1),
    ("slack_token", re.compile(r"\bxox[abposr]-[A-Za-z0-9-]{10,}"), 0),
    ("slack_webhook", re.compile(r"https://hooks\.slack\.com/services/[A-Za-z0-9/_-]{20,}"), 0),
    ("stripe_key", re.compile(r"\b(?:sk|rk)_(?:live|test)_[A-Za-z0-9]{16,}"), 0),
    ("google_api_key", re.compile(r"\bAIza[0-9A-Za-z_-]{35}"), 0),
    ("npm_token", re.compile(r"\bnpm_[A-Za-z0-9]{36}\b"), 0),
    ("huggingface_token", re.compile(r"\bhf_[A-Za-z]{34}\b"), 0),
    ("sendgrid_key", re.compile(r"\bSG\.[A-Za-z0-9_-]{22}\.[A-Za-z0-9_-]{43}\b"), 0),
    ("stackmemory_token", re.compile(r"\bsmk_[A-Za-z0-9_-]{20,}"), 0),
    ("jwt", re.compile(r"\beyJ[A-Za-z0-9_-]{5,}\.eyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{10,}"), 0),
    # A bearer or basic credential: long, and with a digit, so "Bearer authentication" stays prose.
    ("bearer_token", re.compile(r"(?i)(?:\bbearer|\bauthorization:\s*basic)\s+"
                                r"((?=[A-Za-z0-9._~+/=-]*\d)[A-Za-z0-9._~+/=-]{16,})"), 1),
    ("url_password", re.compile(r"\b[a-zA-Z][a-zA-Z0-9+.-]*://[^\s:/@]+:([^\s@/]+)@"), 1),
    # `password = "..."`, `"api_key": "..."`, `secret: s3cr3t!`: a quoted value, or a bare one with a digit
    # or symbol in it (so `password: required` and `api_key: str` stay as they are).
    ("password", re.compile(r"(?i)\b(?:(?:[a-z0-9]+[_-])*(?:password|passwd|passphrase|secret|secret[_-]?key|"
                            r"api[_-]?key|private[_-]?key)|(?:[a-z0-9]+[_-])+token)[\"']?\s*[:=]\s*"
                            r"(\"[^\"\n]{4,}\"|'[^'\n]{4,}'|(?=[^\s'\",;()\[\]{}]*[\d!@#%^&*+=/?~-])"
                            r"[^\s'\",;()\[\]{}]{6,})"), 1),
]


def redact(text: str) -> tuple[str, list[str]]:
    """The text with every secret replaced by `[REDACTED:<kind>]`, and the kinds found (sorted, distinct)."""
    found: set[str] = set()
    for kind, pattern, group in _PATTERNS:
        if _could_match(kind, text):
            text = pattern.sub(_replacer(kind, group, found), text)
    return text, sorted(found)


def redact_value(value: Any, found: set[str]) -> Any:
    """Redact every string inside a JSON value (metadata), collecting the kinds found."""
    if isinstance(value, str):
        clean, kinds = redact(value)
        found.update(kinds)
        return clean
    if isinstance(value, list):
        return [redact_value(v, found) for v in value]
    if isinstance(value, dict):
        return {k: redact_value(v, found) for k, v in value.items()}
    return value


def _replacer(kind: str, group: int, found: set[str]) -> Callable[[re.Match[str]], str]:
    def replace(match: re.Match[str]) -> str:
        secret = match.group(group)
        inner = secret.strip("\"'")
        if group and _PLACEHOLDER.match(inner):
            return match.group(0)
        found.add(kind)
        mark = f"[REDACTED:{kind}]"
        if not group:
            return mark
        start, end = match.start(group) - match.start(0), match.end(group) - match.start(0)
        whole = match.group(0)
        return whole[:start] + mark + whole[end:]

    return replace


# Cheap substring tests that rule most patterns out before their regular expression runs (most memories
# hold no secret; a 64 KiB memory should not pay for 20 scans).
_HINTS: dict[str, tuple[str, ...]] = {
    "private_key": ("PRIVATE KEY",), "anthropic_key": ("sk-ant-",), "openai_key": ("sk-",),
    "github_token": ("gh", "github_pat_"), "gitlab_token": ("glpat-",), "aws_access_key": ("A",),
    "aws_secret_key": ("secret", "SECRET", "Secret"), "slack_token": ("xox",), "slack_webhook": ("hooks.slack",),
    "stripe_key": ("_live_", "_test_"), "google_api_key": ("AIza",), "npm_token": ("npm_",),
    "huggingface_token": ("hf_",), "sendgrid_key": ("SG.",), "stackmemory_token": ("smk_",), "jwt": ("eyJ",),
    "bearer_token": ("earer", "EARER", "asic", "ASIC"), "url_password": ("://",), "password": (":", "="),
}


def _could_match(kind: str, text: str) -> bool:
    return any(hint in text for hint in _HINTS[kind])
