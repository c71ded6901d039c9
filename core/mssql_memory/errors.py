"""The library's exception hierarchy.

Bad arguments raise built-in exceptions (``ValueError`` / ``TypeError``); the
subclasses below that also derive from them can be caught either way. Failures
of a backend (database, model, long-term block) raise :class:`AgentMemoryError`
subclasses, chained to the original exception with ``raise ... from e``.
"""

from __future__ import annotations

__all__ = [
    "AgentMemoryError",
    "BlockError",
    "BudgetError",
    "ConcurrencyError",
    "InvalidMessageError",
    "MissingDependencyError",
    "ModelError",
    "StoreError",
    "StoreUnavailableError",
]


class AgentMemoryError(Exception):
    """Root of every error raised by this library (never the built-in ``MemoryError``)."""


class InvalidMessageError(AgentMemoryError, ValueError):
    """A message or serialized payload is malformed (unknown role, wrong type, bad JSON)."""


class BudgetError(AgentMemoryError, ValueError):
    """A token budget cannot be derived or is too small to hold the required context."""


class StoreError(AgentMemoryError):
    """A storage backend failed; the operation was rolled back and nothing was changed."""


class StoreUnavailableError(StoreError):
    """The database could not be reached (connection refused, server restarting)."""


class ConcurrencyError(StoreError):
    """A concurrent writer changed the session first; retrying the operation is safe."""


class ModelError(AgentMemoryError):
    """A model (summarizer, extractor or embedder) failed or timed out."""


class BlockError(AgentMemoryError):
    """A long-term memory block failed to take or return memory."""


class MissingDependencyError(AgentMemoryError, ImportError):
    """An optional dependency is not installed; the message names the extra to install."""


def missing_dependency(package: str, extra: str) -> MissingDependencyError:
    """Build the error for an optional import that failed."""
    return MissingDependencyError(
        f"{package} is not installed: pip install 'mssql-agent-memory[{extra}]'"
    )
