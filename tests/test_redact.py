"""Credential redaction: realistic secrets are replaced before storing, ordinary text and code are not."""

from __future__ import annotations

from typing import Any

import pytest

from server.redact import redact
from tests import figures

pytestmark = pytest.mark.anyio

# Fakes in the real formats (the AWS pair is AWS's own documentation example).
AWS_ID = "AKIAIOSFODNN7EXAMPLE"
AWS_SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
GH = "ghp_" + "R4nd0mT0k3nV4lu3sAreL0ngEnough0123456"
JWT = ("eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4ifQ."
       "SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c")
PEM = ("-----BEGIN RSA PRIVATE KEY-----\nMIIEpAIBAAKCAQEA75TLmY0vKzC0wX3p2rVtZ8kq\nq0lVb1JwXq9yR3Zt\n"
       "-----END RSA PRIVATE KEY-----")

# (text, kind expected, the secret that must disappear)
POSITIVE: list[tuple[str, str, str]] = [
    (f"AWS key id {AWS_ID} for the deploy user", "aws_access_key", AWS_ID),
    ("temporary creds ASIAY34FZKBOKMUTVV7A expire hourly", "aws_access_key", "ASIAY34FZKBOKMUTVV7A"),
    (f"aws_secret_access_key = {AWS_SECRET}", "aws_secret_key", AWS_SECRET),
    (f'AWS_SECRET_ACCESS_KEY="{AWS_SECRET}"', "aws_secret_key", AWS_SECRET),
    (f"the CI token is {GH}", "github_token", GH),
    ("gho_16C7e42F292c6912E7710c838347Ae178B4a for the OAuth app", "github_token",
     "gho_16C7e42F292c6912E7710c838347Ae178B4a"),
    ("fine-grained: github_pat_11ABCDEFG0123456789_abcdefghijklmnopqrstuvwxyzABCDEF0123456789", "github_token",
     "github_pat_11ABCDEFG0123456789_abcdefghijklmnopqrstuvwxyzABCDEF0123456789"),
    ("OPENAI_API_KEY=sk-proj-Abc123Def456Ghi789Jkl012Mno345Pqr678Stu901", "openai_key",
     "sk-proj-Abc123Def456Ghi789Jkl012Mno345Pqr678Stu901"),
    ("legacy key sk-3fA9kLmN0pQrS7tUvWxYz1B2c3D4e5F6g7H8i9J0kLmN", "openai_key",
     "sk-3fA9kLmN0pQrS7tUvWxYz1B2c3D4e5F6g7H8i9J0kLmN"),
    ("use sk-ant-api03-AbCdEfGhIjKlMnOpQrStUvWxYz0123456789-_AbCdEfGh for claude", "anthropic_key",
     "sk-ant-api03-AbCdEfGhIjKlMnOpQrStUvWxYz0123456789-_AbCdEfGh"),
    ("slack bot: xoxb-2400000000-1234567890123-AbCdEfGhIjKlMnOpQrStUvWx", "slack_token",
     "xoxb-2400000000-1234567890123-AbCdEfGhIjKlMnOpQrStUvWx"),
    ("user token xoxp-1111111111-2222222222-3333333333-abcdef0123456789", "slack_token",
     "xoxp-1111111111-2222222222-3333333333-abcdef0123456789"),
    ("alerts go to https://hooks.slack.com/services/T00000000/B00000000/XXXXXXXXXXXXXXXXXXXXXXXX", "slack_webhook",
     "T00000000/B00000000/XXXXXXXXXXXXXXXXXXXXXXXX"),
    ("stripe live: sk_live_51HqLyjWDarjtT1zdp7dcXYZabcdef", "stripe_key", "sk_live_51HqLyjWDarjtT1zdp7dcXYZabcdef"),
    ("restricted rk_live_51HqLyjWDarjtT1zdABCDEFGHIJ0123", "stripe_key", "rk_live_51HqLyjWDarjtT1zdABCDEFGHIJ0123"),
    ("maps key AIzaSyD-9tSrke72PouQMnMX-a7eZSW0jkFMBWY in the web app", "google_api_key",
     "AIzaSyD-9tSrke72PouQMnMX-a7eZSW0jkFMBWY"),
    (f"session cookie {JWT}", "jwt", JWT),
    (f"curl -H 'Authorization: Bearer {JWT}' https://api", "jwt", JWT),
    ("Authorization: Bearer 9f8e7d6c5b4a39281706f5e4d3c2b1a0", "bearer_token", "9f8e7d6c5b4a39281706f5e4d3c2b1a0"),
    ("Authorization: Basic YWxhZGRpbjpvcGVuc2VzYW1l2024", "bearer_token", "YWxhZGRpbjpvcGVuc2VzYW1l2024"),
    (f"deploy key:\n{PEM}\nkeep it safe", "private_key", "MIIEpAIBAAKCAQEA75TLmY0vKzC0wX3p2rVtZ8kq"),
    (("-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQ\n"
     "-----END OPENSSH PRIVATE KEY-----"), "private_key", "b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQ"),
    ("-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC (truncated paste", "private_key",
     "MIIEvQIBADANBgkqhkiG9w0BAQEFAASC"),
    ("DATABASE_URL=postgresql://app:Sup3rS3cret!@db.internal:5432/prod", "url_password", "Sup3rS3cret!"),
    ("redis at redis://default:hunter2hunter2@cache:6379/0", "url_password", "hunter2hunter2"),
    ("mongodb+srv://admin:p%40ssw0rd@cluster0.example.net/app", "url_password", "p%40ssw0rd"),
    ("db password=hunter22 on staging", "password", "hunter22"),
    ('config: {"password": "correct horse battery staple"}', "password", "correct horse battery staple"),
    ("POSTGRES_PASSWORD: 'S3cure-Passw0rd'", "password", "S3cure-Passw0rd"),
    ("client_secret = 'q8Xr~f2Lm9Zt'", "password", "q8Xr~f2Lm9Zt"),
    ("MY_SERVICE_API_KEY=abcd-1234-efgh-5678", "password", "abcd-1234-efgh-5678"),
    ("the old token smk_Qz7xA9bC3dE5fG7hJ9kL1mN3pQ5rS7tU9vW1xY3zA5b", "stackmemory_token",
     "smk_Qz7xA9bC3dE5fG7hJ9kL1mN3pQ5rS7tU9vW1xY3zA5b"),
    ("npm publish token npm_abcdefghijklmnopqrstuvwxyz0123456789", "npm_token",
     "npm_abcdefghijklmnopqrstuvwxyz0123456789"),
    ("HF token hf_abcdefghijklmnopqrstuvwxyzABCDEFGH", "huggingface_token", "hf_abcdefghijklmnopqrstuvwxyzABCDEFGH"),
    ("gitlab glpat-xYz12AbC34dEf56GhI78jK", "gitlab_token", "glpat-xYz12AbC34dEf56GhI78jK"),
]

# Ordinary text and code: nothing here may change.
NEGATIVE: list[str] = [
    "Memory ids are UUIDv7, e.g. 01936f2e-7c3a-7d4e-9b1a-2f3c4d5e6f70",
    "Fixed in commit 94f428d1c0e5b3a2f6d7e8c9b0a1f2e3d4c5b6a7 on main",
    "sha256 e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855 of the empty file",
    "Passwords must be at least 12 characters and are hashed with argon2",
    "password: required",
    "api_key: str | None = None",
    "password = os.environ['DB_PASSWORD']",
    "DATABASE_URL=postgresql://app:${DB_PASSWORD}@db:5432/prod",
    "Connect to postgresql://app@db.internal:5432/prod (password from the vault)",
    "The dev server runs at http://localhost:8080/api/v2 and https://example.com:8443/x",
    "Bearer tokens are checked by the auth middleware before any tool runs",
    "GitHub tokens start with ghp_ and AWS key ids with AKIA; never store them",
    "We use scikit-learn (sk-learn) for the risk-scoring model, task-1234",
    "-----BEGIN CERTIFICATE-----\nMIIDdzCCAl+gAwIBAgIEAgAAuTANBgkqhkiG9w0BAQUFADBa\n-----END CERTIFICATE-----",
    "The logo is data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA",
    "Trace id 4bf92f3577b34da6a3ce929d0e0e4736, span 00f067aa0ba902b7",
    "max_tokens=4096 and temperature=0.2 for summaries",
    "The secret: keep functions short",
    "Rotate keys with `stackmemory token create alice --expires-days 90`",
    "def authenticate(token: str) -> Caller: return lookup(hash_token(token))",
    "ULID 01ARZ3NDEKTSV4RRFFQ69G5FAV and IPv6 2001:db8::ff00:42:8329",
]


@pytest.mark.parametrize(("text", "kind", "secret"), POSITIVE, ids=[f"{k}-{i}" for i, (_, k, _) in
                                                                     enumerate(POSITIVE)])
def test_credentials_are_replaced_by_a_mark_naming_their_kind(text: str, kind: str, secret: str) -> None:
    clean, kinds = redact(text)
    assert secret not in clean, clean
    assert kind in kinds and f"[REDACTED:{kind}]" in clean, (kinds, clean)


@pytest.mark.parametrize("text", NEGATIVE)
def test_ordinary_text_and_code_are_left_alone(text: str) -> None:
    assert redact(text) == (text, [])


def test_the_words_around_a_secret_survive() -> None:
    clean, _ = redact("DATABASE_URL=postgresql://app:Sup3rS3cret!@db.internal:5432/prod")
    assert clean == "DATABASE_URL=postgresql://app:[REDACTED:url_password]@db.internal:5432/prod"
    clean, _ = redact(f"export AWS_ACCESS_KEY_ID={AWS_ID} # deploy")
    assert clean == "export AWS_ACCESS_KEY_ID=[REDACTED:aws_access_key] # deploy"


def test_the_redaction_table_is_large_enough() -> None:
    figures.record("redaction", {"positive": len(POSITIVE), "negative": len(NEGATIVE),
                                 "kinds": len({k for _, k, _ in POSITIVE})})
    assert len(POSITIVE) >= 30 and len(NEGATIVE) >= 15


async def test_stored_memories_are_redacted_and_say_so(client: Any) -> None:
    stored = await client.call_tool("store_memory", {"content": f"deploy with {AWS_ID} and {GH}",
                                                     "metadata": {"source": "postgresql://a:pw123456@h/db"}})
    data = stored.structured_content
    assert not stored.is_error
    assert data["content"] == "deploy with [REDACTED:aws_access_key] and [REDACTED:github_token]"
    assert data["metadata"] == {"source": "postgresql://a:[REDACTED:url_password]@h/db",
                                "redacted": ["aws_access_key", "github_token", "url_password"]}
    assert "redacted" in data["message"] and "STACKMEMORY_REDACT=off" in data["message"]
    got = (await client.call_tool("get_memory", {"id": data["id"]})).structured_content
    assert AWS_ID not in str(got) and GH not in str(got)
    found = (await client.call_tool("search_memory", {"query": "deploy"})).content[0].text
    assert AWS_ID not in found


async def test_an_update_that_adds_a_secret_is_redacted_and_noted(client: Any) -> None:
    mid = (await client.call_tool("store_memory", {"content": "staging database",
                                                   "metadata": {"owner": "ops"}})).structured_content["id"]
    updated = await client.call_tool("update_memory", {"id": mid, "content": "staging db password=hunter22"})
    assert not updated.is_error, updated.content[0].text
    data = updated.structured_content
    assert data["content"] == "staging db password=[REDACTED:password]"
    assert data["metadata"] == {"owner": "ops", "redacted": ["password"]}
    history = (await client.call_tool("get_memory", {"id": mid, "history": True})).structured_content
    assert "hunter22" not in str(history)


async def test_redaction_can_be_turned_off(tmp_path: Any, settings_for: Any) -> None:
    from mcp import Client

    from server.app import Runtime, build_server

    rt = Runtime(settings_for(str(tmp_path / "verbatim.db"), STACKMEMORY_REDACT="off"))
    async with rt.session(), Client(build_server(rt)) as c:
        data = (await c.call_tool("store_memory", {"content": f"key {AWS_ID}"})).structured_content
    assert data["content"] == f"key {AWS_ID}" and "redacted" not in data["metadata"]
    assert data["message"] == "stored"
