"""Optional dependencies: a missing one raises MissingDependencyError naming the extra."""

from __future__ import annotations

import importlib
from types import ModuleType

from mssql_memory import MissingDependencyError

__all__ = ["require"]


def require(module: str, package: str, extra: str) -> ModuleType:
    """Import ``module`` or raise :class:`MissingDependencyError` with the pip command."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise MissingDependencyError(
            f"{package} is not installed: pip install 'mssql-agent-memory[{extra}]'"
        ) from e
