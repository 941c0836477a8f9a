"""Opening a database to move data out of or into (export, import, migrate, backup); see kinds.py."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from server.config import Settings
    from server.storage.kinds import TransferReader, TransferWriter


@asynccontextmanager
async def open_transfer(settings: Settings, *, write: bool
                        ) -> AsyncIterator[tuple[TransferReader, TransferWriter | None]]:
    """A database to move data out of or into: a reader, and a writer when `write` (the store opens and
    migrates as usual). Without `write` nothing is written, not even a schema: a source is never upgraded
    behind its owner's back, and a dry run changes nothing."""
    if settings.backend == "postgres":
        from server.storage.postgres import PostgresStore
        from server.storage.postgres_transfer import PostgresTransfer

        store = PostgresStore(settings.db, min_size=1, max_size=4, timeout=settings.pool_timeout,
                              auto_migrate=settings.auto_migrate and write)
        await store.open()
        try:
            both = PostgresTransfer(store)
            yield both, both if write else None
        finally:
            await store.close()
        return
    from server.storage.sqlite import SQLiteStore
    from server.storage.sqlite_transfer import SQLiteReader, SQLiteWriter

    writer = SQLiteStore(settings.db, vector_index="memory") if write else None
    reader = SQLiteReader(settings.db)
    try:
        if writer is not None:
            await writer.open()
        yield reader, SQLiteWriter(writer) if writer is not None else None
    finally:
        await reader.close()
        if writer is not None:
            await writer.close()
