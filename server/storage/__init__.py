"""Storage adapters behind one protocol; open_storage picks one from the settings."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from server.config import Settings
    from server.storage.base import Storage


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

    return SQLiteStore(settings.db)
