"""Tools about the server itself."""

from __future__ import annotations

from typing import Annotated

from mcp.server.mcpserver import Resolve

from server.accounts import Caller
from server.models import Status
from server.service import MemoryService
from tools import caller, service, spec


@spec("Memory status", read_only=True, idempotent=True)
async def memory_status(svc: Annotated[MemoryService, Resolve(service)],
                        who: Annotated[Caller, Resolve(caller)]) -> Status:
    """Which backend and database are in use, the schema version, and how many memories you can see."""
    return await svc.status(caller=who)


TOOLS = [memory_status]
