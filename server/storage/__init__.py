"""Storage adapters behind one protocol; open_storage picks one from the settings."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from server.accounts import AccountStore
    from server.changes import ChangeStore
    from server.config import Settings
    from server.jobs import JobQueue
    from server.storage.base import Storage
    from server.tasks import TaskStore


def open_storage(settings: Settings) -> Storage:
    """Build (not yet open) the adapter the settings chose; drivers are imported only here, lazily."""
    if settings.backend == "postgres":
        from server.storage.postgres import PostgresStore

        return PostgresStore(
            settings.db,
            min_size=settings.pool_min,
            max_size=settings.pool_max,
            timeout=settings.pool_timeout,
            auto_migrate=settings.auto_migrate,
        )
    from server.storage.sqlite import SQLiteStore

    return SQLiteStore(settings.db, vector_index=settings.vector_index)


def open_queue(storage: Storage) -> JobQueue:
    """The job queue living in the same database as `storage` (which must be open)."""
    if storage.backend == "postgres":
        from server.storage.postgres import PostgresStore
        from server.storage.postgres_jobs import PostgresJobs

        assert isinstance(storage, PostgresStore)
        return PostgresJobs(storage)
    from server.storage.sqlite import SQLiteStore
    from server.storage.sqlite_jobs import SQLiteJobs

    assert isinstance(storage, SQLiteStore)
    return SQLiteJobs(storage)


def open_accounts(storage: Storage) -> AccountStore:
    """Users, workspaces and tokens, living in the same database as `storage` (which must be open)."""
    if storage.backend == "postgres":
        from server.storage.postgres import PostgresStore
        from server.storage.postgres_accounts import PostgresAccounts

        assert isinstance(storage, PostgresStore)
        return PostgresAccounts(storage)
    from server.storage.sqlite import SQLiteStore
    from server.storage.sqlite_accounts import SQLiteAccounts

    assert isinstance(storage, SQLiteStore)
    return SQLiteAccounts(storage)


def open_changes(storage: Storage) -> ChangeStore:
    """The change feed, living in the same database as `storage` (which must be open)."""
    if storage.backend == "postgres":
        from server.storage.postgres import PostgresStore
        from server.storage.postgres_changes import PostgresChanges

        assert isinstance(storage, PostgresStore)
        return PostgresChanges(storage)
    from server.storage.sqlite import SQLiteStore
    from server.storage.sqlite_changes import SQLiteChanges

    assert isinstance(storage, SQLiteStore)
    return SQLiteChanges(storage)


def open_tasks(storage: Storage) -> TaskStore:
    """Tasks and Linear connections, living in the same database as `storage` (which must be open)."""
    if storage.backend == "postgres":
        from server.storage.postgres import PostgresStore
        from server.storage.postgres_tasks import PostgresTasks

        assert isinstance(storage, PostgresStore)
        return PostgresTasks(storage)
    from server.storage.sqlite import SQLiteStore
    from server.storage.sqlite_tasks import SQLiteTasks

    assert isinstance(storage, SQLiteStore)
    return SQLiteTasks(storage)
