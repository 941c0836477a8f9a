"""An expired memory holds its content no more than a deleted one: storing that content again stores a new
memory and tombstones the expired one (as delete does), on SQLite and on a real PostgreSQL, through store,
store_many (one transaction) and the storage layer's add_memory and add_memories."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import anyio
import pytest

from server.accounts import LOCAL, LOCAL_ACCESS, Accounts, Caller
from server.models import MemoryInput, NewMemory
from server.service import MemoryService

pytestmark = pytest.mark.anyio

SOON = timedelta(milliseconds=300)  # long enough to store it; the tests then sleep past it


async def _new(svc: MemoryService, content: str, expires_at: datetime | None = None,
               caller: Caller = LOCAL, **kw: Any) -> NewMemory:
    """A memory as the service builds it, with any expiry (the service refuses one in the past)."""
    scope = await svc._scope(caller)
    new, _, _ = svc._new_memory(scope, datetime.now(UTC), content, kw.get("kind", "note"), None, None, 5, None,
                                None, kw.get("workspace"), kw.get("visibility"))
    return new.model_copy(update={"expires_at": expires_at})


async def _expired_memory(svc: MemoryService, content: str) -> str:
    """Store content with an expiry in the near future and wait until it has passed; its id."""
    old = await svc.store(content, "fact", expires_at=datetime.now(UTC) + SOON)
    assert old.created is True
    await anyio.sleep(SOON.total_seconds() + 0.05)
    assert old.id not in {m.id for m in (await svc.list_memories()).memories}
    return old.id


async def _assert_tombstoned(svc: MemoryService, old_id: str, by: str = LOCAL_ACCESS.user_id) -> None:
    tomb = await svc.storage.get_memory(old_id, LOCAL_ACCESS)
    assert tomb is not None and tomb.deleted_at is not None and tomb.version == 2
    assert tomb.updated_by == by


async def test_storing_the_content_of_an_expired_memory_stores_it_again(svc: MemoryService) -> None:
    old_id = await _expired_memory(svc, "The staging database is reset every Sunday")
    again = await svc.store("the staging database is reset  every sunday", "fact")
    assert again.created is True and again.id != old_id
    assert "already stored" not in again.message
    await _assert_tombstoned(svc, old_id)
    assert [m.id for m in (await svc.list_memories()).memories] == [again.id]
    assert [h.id for h in (await svc.search("staging database")).results] == [again.id]
    assert (await svc.get(again.id)).content == "the staging database is reset  every sunday"
    stats = await svc.status()
    assert (stats.memories, stats.deleted, stats.expired) == (1, 1, 0)
    # The feed tells sync the expired memory went exactly as a deleted one does, then the new one came.
    feed = [(c.kind, c.id) for c in (await svc.changes()).changes]
    assert feed == [("create", old_id), ("delete", old_id), ("create", again.id)]
    # Stored again, the new (live) memory is the duplicate, as always.
    third = await svc.store("The staging database is reset every Sunday")
    assert third.created is False and third.id == again.id


async def test_a_memory_not_yet_expired_is_still_the_duplicate(svc: MemoryService) -> None:
    first = await svc.store("Feature flags live in LaunchDarkly", expires_at=datetime.now(UTC) + timedelta(hours=1))
    again = await svc.store("Feature flags live in LaunchDarkly")
    assert again.created is False and again.id == first.id and "already stored" in again.message
    assert (await svc.storage.get_memory(first.id, LOCAL_ACCESS)).deleted_at is None  # type: ignore[union-attr]


async def test_a_batch_replaces_an_expired_duplicate_in_its_transaction(svc: MemoryService) -> None:
    old_id = await _expired_memory(svc, "Releases are cut on Tuesdays")
    done = await svc.store_many([MemoryInput(content="Releases are cut on Tuesdays"),
                                 MemoryInput(content="releases are cut on tuesdays"),  # a duplicate of the first
                                 MemoryInput(content="Hotfixes skip the release train")])
    assert (done.created, done.existing) == (2, 1)
    first, dup, other = done.results
    assert first.created and first.id != old_id and not dup.created and dup.id == first.id and other.created
    await _assert_tombstoned(svc, old_id)
    assert {m.id for m in (await svc.list_memories()).memories} == {first.id, other.id}
    assert [h.id for h in (await svc.search("Tuesdays")).results] == [first.id]


async def test_a_failed_batch_leaves_the_expired_memory_as_it_was(svc: MemoryService) -> None:
    old = await _new(svc, "Backups run at 03:00 UTC", datetime.now(UTC) - timedelta(minutes=1))
    assert (await svc.storage.add_memory(old))[1] is True
    taken = await svc.store("an unrelated memory")
    replacement = await _new(svc, "Backups run at 03:00 UTC")
    clash = (await _new(svc, "another memory")).model_copy(update={"id": taken.id})
    with pytest.raises(Exception, match="memories.id|memories_pkey"):
        await svc.storage.add_memories([replacement, clash])
    kept = await svc.storage.get_memory(old.id, LOCAL_ACCESS)
    assert kept is not None and kept.deleted_at is None and kept.version == 1
    assert await svc.storage.get_memory(replacement.id, LOCAL_ACCESS) is None


@pytest.mark.parametrize("batch", [False, True], ids=["add_memory", "add_memories"])
async def test_the_storage_layer_replaces_an_already_expired_duplicate(svc: MemoryService, batch: bool) -> None:
    store = svc.storage
    old = await _new(svc, "Logs are kept for 30 days", datetime.now(UTC) - timedelta(seconds=1))
    assert (await store.add_memory(old))[1] is True
    new = await _new(svc, "Logs are kept for 30 days")
    memory, created = (await store.add_memories([new]))[0] if batch else await store.add_memory(new)
    assert created is True and memory.id == new.id != old.id and memory.deleted_at is None
    await _assert_tombstoned(svc, old.id)
    assert [m.id for m in (await svc.list_memories()).memories] == [new.id]
    assert [h.id for h in (await svc.search("logs kept")).results] == [new.id]


async def test_a_member_replaces_a_teammates_expired_team_memory(svc: MemoryService) -> None:
    """Row-level security lets a member change only their own memories; an expired team memory of a
    teammate blocks its content no more than their deleted one would."""
    accounts = Accounts(svc.accounts)
    alice, bob = await accounts.create_user("alice"), await accounts.create_user("bob")
    await accounts.create_workspace("platform", "alice")
    await accounts.set_role("platform", "bob", "member")
    as_alice, as_bob = Caller(alice.id, alice.name), Caller(bob.id, bob.name)
    old = await svc.store("The API is versioned by date", workspace="platform", expires_at=datetime.now(UTC) + SOON,
                          caller=as_alice)
    assert old.created and old.visibility == "team"
    await anyio.sleep(SOON.total_seconds() + 0.05)
    again = await svc.store("The API is versioned by date", workspace="platform", caller=as_bob)
    assert again.created is True and again.id != old.id and again.created_by == bob.id
    scope = await svc._scope(as_alice)
    tomb = await svc.storage.get_memory(old.id, scope.access)
    assert tomb is not None and tomb.deleted_at is not None and tomb.updated_by == bob.id
    seen_by_alice = [(c.kind, c.id, c.actor) for c in (await svc.changes("platform", caller=as_alice)).changes]
    assert seen_by_alice == [("create", old.id, "alice"), ("delete", old.id, "bob"), ("create", again.id, "bob")]
    assert [h.id for h in (await svc.search("versioned", workspace="platform", caller=as_alice)).results] == [again.id]
