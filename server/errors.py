"""The one exception tree: every failure a user can act on is one of these."""


class StackMemoryError(Exception):
    """Root of every error StackMemory raises on purpose; the message says what to do."""


class InvalidInput(StackMemoryError):
    """An argument was out of range or malformed; nothing was written."""


class NotFound(StackMemoryError):
    """No live memory (or other object) with that id is visible to the caller."""


class Conflict(StackMemoryError):
    """An optimistic-concurrency check failed; nothing was changed."""


class StorageUnavailable(StackMemoryError):
    """The database could not be reached or is busy; retrying later may succeed."""


class ConfigError(StackMemoryError):
    """The configuration cannot work; the message names the setting to change."""


class MigrationError(StackMemoryError):
    """The database schema is not in a state this version can use."""


class EmbeddingUnavailable(StackMemoryError):
    """No embedding model could be loaded or reached; the message names the setting to change."""


class PermissionDenied(StackMemoryError):
    """The caller's role does not allow this; the message names the role needed, never other users' data."""
