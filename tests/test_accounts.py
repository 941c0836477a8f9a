"""Users, workspaces, memberships and API tokens, through the Accounts service on SQLite and PostgreSQL."""

from __future__ import annotations

import hashlib
import json
import re
import sqlite3
import uuid
from collections.abc import AsyncIterator
from contextlib import closing
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from server.accounts import TOKEN_PREFIX, Accounts, Caller, hash_token
from server.errors import Conflict, InvalidInput, NotFound, PermissionDenied
from server.storage import open_accounts, open_storage
from server.storage.sqlite import ts
from tests.test_cli import ok, run

pytestmark = pytest.mark.anyio


@pytest.fixture
async def accounts(db_target: str, settings_for: Any) -> AsyncIterator[Accounts]:
    storage = open_storage(settings_for(db_target))
    await storage.open()
    try:
        yield Accounts(open_accounts(storage))
    finally:
        await storage.close()


def sql(target: str, query: str, *params: Any) -> list[tuple[Any, ...]]:
    """Raw SQL on the database behind the adapter (`?` placeholders), as its owner, outside any RLS."""
    if target.startswith("postgresql"):
        import psycopg

        with psycopg.connect(target, autocommit=True) as conn:
            cur = conn.execute(query.replace("?", "%s"), params)
            return cur.fetchall() if cur.description else []
    with closing(sqlite3.connect(target)) as db, db:
        return db.execute(query, params).fetchall()


async def test_a_new_user_owns_a_personal_workspace_named_after_them(accounts: Accounts) -> None:
    alice = await accounts.create_user("alice")
    assert alice.name == "alice" and alice.created_at.tzinfo is not None
    assert await accounts.user("alice") == alice == await accounts.user(alice.id)
    (personal,) = await accounts.store.memberships(alice.id)
    assert (personal.workspace, personal.personal, personal.role) == ("~alice", True, "owner")
    assert await accounts.workspace("~alice") == (personal.workspace_id, "~alice", alice.id)
    assert [u.name for u in await accounts.list_users()] == ["alice", "local"]


async def test_user_and_workspace_names_are_unique(accounts: Accounts) -> None:
    await accounts.create_user("alice")
    with pytest.raises(Conflict, match="a user named alice already exists"):
        await accounts.create_user("alice")
    await accounts.create_workspace("platform", "alice")
    with pytest.raises(Conflict, match="a workspace named platform already exists"):
        await accounts.create_workspace("platform", "alice")
    assert [u.name for u in await accounts.list_users()] == ["alice", "local"]


async def test_a_user_is_created_whole_or_not_at_all(accounts: Accounts) -> None:
    await accounts.create_user("alice")
    alice = await accounts.user("alice")
    # Only a direct store call can take "~carol" first; creating carol must then leave no half-made user.
    await accounts.store.create_workspace(str(uuid.uuid4()), "~carol", alice.id, datetime.now(UTC))
    with pytest.raises(Conflict, match="a workspace named ~carol already exists"):
        await accounts.create_user("carol")
    assert await accounts.store.find_user("carol") is None


@pytest.mark.parametrize("name", ["", "-alice", "has space", "a" * 65, "~alice", "ünï", "a/b"])
async def test_malformed_names_are_refused_and_nothing_is_written(accounts: Accounts, name: str) -> None:
    with pytest.raises(InvalidInput, match="not valid"):
        await accounts.create_user(name)
    await accounts.create_user("alice")
    with pytest.raises(InvalidInput, match="not valid"):
        await accounts.create_workspace(name, "alice")
    assert [u.name for u in await accounts.list_users()] == ["alice", "local"]
    assert [w.name for w in await accounts.all_workspaces()] == ["~alice", "~local"]


async def test_unknown_users_workspaces_and_roles_are_named_in_the_error(accounts: Accounts) -> None:
    await accounts.create_user("alice")
    with pytest.raises(NotFound, match="no user 'nobody'"):
        await accounts.create_workspace("platform", "nobody")
    await accounts.create_workspace("platform", "alice")
    with pytest.raises(NotFound, match="no workspace 'nowhere'"):
        await accounts.add_member("nowhere", "alice")
    with pytest.raises(InvalidInput, match="role 'boss' is not one of"):
        await accounts.set_role("platform", "alice", "boss")


async def test_members_are_added_given_roles_and_removed(accounts: Accounts) -> None:
    for name in ("alice", "bob", "carol"):
        await accounts.create_user(name)
    created = await accounts.create_workspace("platform", "alice")
    assert (created.workspace, created.personal, created.role) == ("platform", False, "owner")
    assert (await accounts.add_member("platform", "bob")).role == "member"
    await accounts.add_member(created.workspace_id, "carol", "reader")
    with pytest.raises(Conflict, match="bob is already a member of platform"):
        await accounts.add_member("platform", "bob", "owner")
    assert (await accounts.set_role("platform", "bob", "admin")).role == "admin"
    members = await accounts.store.members(created.workspace_id)
    assert [(m.user, m.role) for m in members] == [("alice", "owner"), ("bob", "admin"), ("carol", "reader")]

    bob = await accounts.user("bob")
    assert [(m.workspace, m.personal, m.role) for m in await accounts.store.memberships(bob.id)] == [
        ("~bob", True, "owner"), ("platform", False, "admin")]
    await accounts.remove_member("platform", "bob")
    assert [m.workspace for m in await accounts.store.memberships(bob.id)] == ["~bob"]
    with pytest.raises(NotFound, match="bob is not a member of platform"):
        await accounts.remove_member("platform", "bob")


async def test_the_last_owner_cannot_be_demoted_or_removed(accounts: Accounts) -> None:
    await accounts.create_user("alice")
    await accounts.create_user("bob")
    await accounts.create_workspace("platform", "alice")
    await accounts.add_member("platform", "bob")
    with pytest.raises(Conflict, match="alice is the last owner of platform"):
        await accounts.set_role("platform", "alice", "admin")
    with pytest.raises(Conflict, match="alice is the last owner of platform"):
        await accounts.remove_member("platform", "alice")
    await accounts.set_role("platform", "bob", "owner")
    await accounts.set_role("platform", "alice", "member")
    await accounts.remove_member("platform", "alice")
    workspace_id, _, _ = await accounts.workspace("platform")
    assert [(m.user, m.role) for m in await accounts.store.members(workspace_id)] == [("bob", "owner")]


async def test_a_personal_workspace_cannot_get_or_lose_members(accounts: Accounts) -> None:
    await accounts.create_user("alice")
    await accounts.create_user("bob")
    with pytest.raises(PermissionDenied, match="~alice is alice's personal workspace"):
        await accounts.add_member("~alice", "bob")
    with pytest.raises(PermissionDenied, match="personal workspace"):
        await accounts.set_role("~alice", "alice", "member")
    with pytest.raises(PermissionDenied, match="personal workspace"):
        await accounts.remove_member("~alice", "alice")
    alice = await accounts.user("alice")
    assert [(m.workspace, m.role) for m in await accounts.store.memberships(alice.id)] == [("~alice", "owner")]


async def test_workspace_listings_count_members(accounts: Accounts) -> None:
    await accounts.create_user("alice")
    await accounts.create_user("bob")
    await accounts.create_workspace("platform", "alice")
    await accounts.add_member("platform", "bob", "reader")
    listed = [(w.name, w.personal_of, w.members) for w in await accounts.all_workspaces()]
    assert listed == [("platform", None, 2), ("~alice", "alice", 1), ("~bob", "bob", 1), ("~local", "local", 1)]
    bobs = await accounts.user_workspaces("bob")
    assert [(w.workspace, w.personal, w.role, w.members, w.memories) for w in bobs] == [
        ("~bob", True, "owner", 1, 0), ("platform", False, "reader", 2, 0)]


async def test_memory_counts_are_what_each_user_can_see(accounts: Accounts, db_target: str) -> None:
    for name in ("alice", "bob", "carol"):
        await accounts.create_user(name)
    platform = (await accounts.create_workspace("platform", "alice")).workspace_id
    await accounts.add_member("platform", "bob")
    alice, bob, carol = [(await accounts.user(n)).id for n in ("alice", "bob", "carol")]
    now = datetime.now(UTC)
    past, future = ts(now - timedelta(days=1)), ts(now + timedelta(days=1))
    for content, visibility, author, expires, deleted in [
        ("team by alice", "team", alice, None, None), ("alice's own", "private", alice, future, None),
        ("team by bob", "team", bob, None, None), ("bob's own", "private", bob, None, None),
        ("expired team", "team", alice, past, None), ("deleted team", "team", bob, None, past),
    ]:
        sql(db_target, "INSERT INTO memories (id, content, content_hash, kind, project, importance, author, "
                       "created_at, updated_at, expires_at, deleted_at, workspace_id, visibility, created_by, "
                       "updated_by, dedup_owner) VALUES (?, ?, ?, 'note', 'demo', 5, 'x', ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            str(uuid.uuid4()), content, hashlib.sha256(content.encode()).hexdigest(), ts(now), ts(now), expires, deleted, platform, visibility, author, author, author)
    counts = accounts.store.workspace_counts
    assert await counts(alice, [platform], now) == {platform: (2, 3)}
    assert await counts(bob, [platform], now) == {platform: (2, 3)}
    assert await counts(carol, [platform], now) == {platform: (2, 0)}  # not a member: sees nothing
    assert await counts(alice, [], now) == {}
    assert [(w.workspace, w.memories) for w in await accounts.user_workspaces("bob")] == [
        ("~bob", 0), ("platform", 3)]


async def test_a_token_authenticates_its_user_until_revoked(accounts: Accounts) -> None:
    bob = await accounts.create_user("bob")
    new = await accounts.create_token("bob", "laptop")
    assert new.token.startswith(TOKEN_PREFIX) and (new.user, new.name, new.expires_at) == ("bob", "laptop", None)
    owner = await accounts.authenticate(new.token)
    assert owner is not None and owner.caller == Caller(bob.id, "bob") and owner.token_id == new.id
    await accounts.revoke_token(new.id)
    assert await accounts.authenticate(new.token) is None
    with pytest.raises(NotFound, match="no live token"):
        await accounts.revoke_token(new.id)
    with pytest.raises(NotFound, match="no live token"):
        await accounts.revoke_token("no-such-token")
    (listed,) = await accounts.list_tokens("bob")
    assert listed.revoked_at is not None


async def test_wrong_malformed_and_unknown_tokens_authenticate_no_one(accounts: Accounts) -> None:
    await accounts.create_user("bob")
    token = (await accounts.create_token("bob")).token
    flipped = token[:-1] + ("A" if token[-1] != "A" else "B")
    for attempt in ["", "garbage", token.upper(), flipped, token + " ", " " + token, token[len(TOKEN_PREFIX):],
                    TOKEN_PREFIX + "x" * 43, TOKEN_PREFIX + "x" * 200, TOKEN_PREFIX + "a b c d e f g h i j k"]:
        assert await accounts.authenticate(attempt) is None, attempt
    assert await accounts.authenticate(token) is not None


async def test_an_expired_token_authenticates_no_one(accounts: Accounts) -> None:
    bob = await accounts.create_user("bob")
    token, now = TOKEN_PREFIX + "e" * 43, datetime.now(UTC)
    await accounts.store.create_token(str(uuid.uuid4()), bob.id, "old", hash_token(token), now - timedelta(days=2),
                                      now - timedelta(seconds=1))
    assert await accounts.authenticate(token) is None
    soon = await accounts.create_token("bob", expires_in_days=0.5)
    assert soon.expires_at is not None and soon.expires_at - soon.created_at == timedelta(hours=12)
    assert await accounts.authenticate(soon.token) is not None
    for days in (0, -1, float("nan"), float("inf"), 1e9):
        with pytest.raises(InvalidInput, match="expiry must be more than 0"):
            await accounts.create_token("bob", expires_in_days=days)


async def test_a_disabled_users_tokens_authenticate_no_one(accounts: Accounts, db_target: str) -> None:
    await accounts.create_user("bob")
    token = (await accounts.create_token("bob")).token
    sql(db_target, "UPDATE users SET disabled_at = created_at WHERE name = 'bob'")
    assert await accounts.authenticate(token) is None


async def test_last_use_is_recorded_at_most_once_a_minute(accounts: Accounts) -> None:
    await accounts.create_user("bob")
    new = await accounts.create_token("bob")
    assert (await accounts.list_tokens("bob"))[0].last_used_at is None
    first = await accounts.authenticate(new.token)
    assert first is not None and first.last_used_at is None  # as it was before this use
    used = (await accounts.list_tokens("bob"))[0].last_used_at
    assert used is not None and abs(datetime.now(UTC) - used) < timedelta(seconds=30)
    again = await accounts.authenticate(new.token)
    assert again is not None and again.last_used_at == used
    assert (await accounts.list_tokens("bob"))[0].last_used_at == used  # not rewritten within the minute
    await accounts.store.touch_token(new.id, used - timedelta(minutes=2))
    await accounts.authenticate(new.token)
    latest = (await accounts.list_tokens("bob"))[0].last_used_at
    assert latest is not None and latest > used


async def test_token_listings_never_carry_the_secret_or_its_hash(accounts: Accounts) -> None:
    await accounts.create_user("alice")
    await accounts.create_user("bob")
    secrets = [(await accounts.create_token(user, f"{user}-{i}")).token for user in ("alice", "bob") for i in (1, 2)]
    everyone = await accounts.list_tokens()
    assert [t.name for t in everyone] == ["bob-2", "bob-1", "alice-2", "alice-1"]  # newest first
    assert [t.name for t in await accounts.list_tokens("alice")] == ["alice-2", "alice-1"]
    text = "".join(t.model_dump_json() for t in everyone)
    for secret in secrets:
        assert secret not in text and hash_token(secret) not in text
        assert secret[len(TOKEN_PREFIX):] not in text
    assert all(set(t.model_dump()) == {"id", "name", "user", "created_at", "expires_at", "revoked_at",
                                       "last_used_at"} for t in everyone)


async def test_only_a_hash_of_the_token_is_stored(accounts: Accounts, db_target: str) -> None:
    await accounts.create_user("bob")
    new = await accounts.create_token("bob")
    stored = repr(sql(db_target, "SELECT * FROM tokens"))
    assert new.token not in stored and new.token[len(TOKEN_PREFIX):] not in stored
    assert hashlib.sha256(new.token.encode()).hexdigest() in stored


async def test_token_names_are_checked(accounts: Accounts) -> None:
    await accounts.create_user("bob")
    for name in ("", "   ", "x" * 101):
        with pytest.raises(InvalidInput, match="token's name"):
            await accounts.create_token("bob", name)
    with pytest.raises(NotFound, match="no user 'nobody'"):
        await accounts.create_token("nobody")
    assert await accounts.list_tokens("bob") == []


# ---- the operator's CLI, through a real subprocess ---------------------------------------------------------


async def test_an_operator_sets_up_a_team_and_a_token_from_the_shell(tmp_path: Path, settings_for: Any) -> None:
    db = str(tmp_path / "cli.db")
    assert ok(db, "user", "create", "alice")["name"] == "alice"
    created = run(db, "user", "create", "bob")
    assert created.returncode == 0 and "personal workspace ~bob" in created.stdout
    assert ok(db, "workspace", "create", "platform", "--owner", "alice")["role"] == "owner"
    assert ok(db, "workspace", "add-member", "platform", "bob")["role"] == "member"
    assert [(w["workspace"], w["role"], w["members"]) for w in ok(db, "workspace", "list", "--user", "bob")] == [
        ("~bob", "owner", 1), ("platform", "member", 2)]
    table = run(db, "workspace", "list")
    assert table.returncode == 0 and re.search(r"platform\s+\S+\s+2", table.stdout)
    assert ok(db, "workspace", "set-role", "platform", "bob", "admin")["role"] == "admin"

    shown = run(db, "token", "create", "bob", "--name", "laptop", "--expires-days", "30")
    assert shown.returncode == 0 and "Store it now" in shown.stdout, shown.stderr
    (token,) = re.findall(r"smk_[A-Za-z0-9_-]+", shown.stdout)
    listed = run(db, "token", "list")
    assert "laptop" in listed.stdout and "live" in listed.stdout and token not in listed.stdout
    (info,) = ok(db, "token", "list", "--user", "bob")
    assert info["name"] == "laptop" and "token" not in info and token not in json.dumps(info)
    assert await authenticate(settings_for(db), token) == "bob"

    assert ok(db, "token", "revoke", info["id"]) == {"id": info["id"], "revoked": True}
    assert ok(db, "token", "list")[0]["revoked_at"] is not None
    assert await authenticate(settings_for(db), token) is None
    assert ok(db, "workspace", "remove-member", "platform", "bob")["removed"] is True


async def test_account_commands_fail_with_one_line_saying_why(tmp_path: Path) -> None:
    db = str(tmp_path / "cli.db")
    ok(db, "user", "create", "alice")
    for args, message in [(("user", "create", "alice"), "a user named alice already exists"),
                          (("user", "create", "bad name"), "user name 'bad name' is not valid"),
                          (("workspace", "create", "platform", "--owner", "nobody"), "no user 'nobody'"),
                          (("workspace", "add-member", "~alice", "alice"), "personal workspace"),
                          (("token", "revoke", "nope"), "no live token with id 'nope'"),
                          (("token", "create", "alice", "--expires-days", "0"), "expiry must be more than 0")]:
        result = run(db, *args)
        assert result.returncode == 1 and result.stdout == "", args
        assert result.stderr.startswith("stackmemory: ") and message in result.stderr, result.stderr
        assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert run(db, "workspace", "set-role", "~alice", "alice", "boss").returncode == 2  # argparse: not a role


async def test_the_account_commands_work_on_postgresql(pg_url: str, settings_for: Any) -> None:
    ok(pg_url, "user", "create", "alice")
    ok(pg_url, "user", "create", "bob")
    ok(pg_url, "workspace", "create", "platform", "--owner", "alice")
    ok(pg_url, "workspace", "add-member", "platform", "bob", "--role", "reader")
    assert {w["name"]: w["members"] for w in ok(pg_url, "workspace", "list")}["platform"] == 2
    new = ok(pg_url, "token", "create", "bob")
    assert new["token"].startswith("smk_") and new["user"] == "bob"
    assert [t["id"] for t in ok(pg_url, "token", "list")] == [new["id"]]
    assert await authenticate(settings_for(pg_url), new["token"]) == "bob"
    ok(pg_url, "token", "revoke", new["id"])
    assert await authenticate(settings_for(pg_url), new["token"]) is None


async def authenticate(settings: Any, token: str) -> str | None:
    storage = open_storage(settings)
    await storage.open()
    try:
        owner = await Accounts(open_accounts(storage)).authenticate(token)
    finally:
        await storage.close()
    return owner.caller.name if owner else None
