"""Where memory lives when the caller does not say: the embedded SQLite file."""

from __future__ import annotations

import os
import sys
from pathlib import Path

__all__ = ["ENV_URL", "default_db_path", "default_url"]

#: Environment variable that overrides the default database URL (used by the CLI and demo too).
ENV_URL = "MSSQL_MEMORY_URL"


def default_db_path() -> Path:
    """The embedded SQLite file: ``$XDG_DATA_HOME/mssql-agent-memory/memory.db`` or equivalent."""
    if sys.platform == "win32":
        base = Path(os.environ.get("LOCALAPPDATA", Path.home() / "AppData" / "Local"))
    elif sys.platform == "darwin":
        base = Path.home() / "Library" / "Application Support"
    else:
        base = Path(os.environ.get("XDG_DATA_HOME", Path.home() / ".local" / "share"))
    return base / "mssql-agent-memory" / "memory.db"


def default_url() -> str:
    """``$MSSQL_MEMORY_URL`` if set, else the embedded SQLite file (its folder is created)."""
    url = os.environ.get(ENV_URL)
    if url:
        return url
    path = default_db_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path}"
