"""Session stores: in-memory and SQL (SQL Server, SQLite, PostgreSQL, MySQL/MariaDB)."""

from .base import (
    AppendResult,
    HistoryStore,
    OverflowCommit,
    SessionInfo,
    SessionSnapshot,
    SessionState,
    SessionStore,
    Summary,
)
from .cache import WindowCache
from .memory import InMemoryStore
from .sql import SQLStore
from .sql_schema import StoreTables, build_tables

__all__ = [
    "AppendResult",
    "HistoryStore",
    "InMemoryStore",
    "OverflowCommit",
    "SQLStore",
    "SessionInfo",
    "SessionSnapshot",
    "SessionState",
    "SessionStore",
    "StoreTables",
    "Summary",
    "WindowCache",
    "build_tables",
]
