"""Table definitions for :class:`~mssql_memory.SQLStore`, valid on every dialect.

SQL Server rules: indexed keys are ``NVARCHAR(255)`` with a binary collation
(ids compare case-sensitively), payloads ``NVARCHAR(MAX)`` and never indexed,
keys ``BIGINT IDENTITY``, timestamps ``DATETIME2``; never ``TEXT``. MySQL and
MariaDB get ``utf8mb4`` with a binary collation and ``LONGTEXT`` payloads.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Unicode,
    UnicodeText,
    UniqueConstraint,
)
from sqlalchemy.dialects import mssql, mysql

from ..validation import MAX_IDENTIFIER_LENGTH, validate_identifier

__all__ = ["ID", "KEY", "TEXT", "TIMESTAMP", "StoreTables", "build_tables", "short_name"]

#: Auto-incrementing key: BIGINT IDENTITY on SQL Server (INTEGER on SQLite, for its rowid).
ID = BigInteger().with_variant(Integer(), "sqlite")
#: Indexed, case-sensitive id column.
KEY = (
    Unicode(255)
    .with_variant(mssql.NVARCHAR(255, collation="Latin1_General_100_BIN2"), "mssql")
    .with_variant(
        mysql.VARCHAR(255, charset="utf8mb4", collation="utf8mb4_bin"), "mysql", "mariadb"
    )
)
#: Unbounded text (JSON payloads, content): NVARCHAR(MAX) / LONGTEXT / TEXT. Never indexed.
TEXT = (
    UnicodeText()
    .with_variant(mssql.NVARCHAR(None), "mssql")
    .with_variant(mysql.LONGTEXT(charset="utf8mb4", collation="utf8mb4_bin"), "mysql", "mariadb")
)
#: UTC timestamp without time zone: DATETIME2 on SQL Server, DATETIME(6) on MySQL.
TIMESTAMP = (
    DateTime()
    .with_variant(mssql.DATETIME2(), "mssql")
    .with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")
)
STATUS = String(12)
_SUFFIXES = ("_sessions", "_summaries")
_MYSQL_TABLE = {"mysql_charset": "utf8mb4", "mysql_engine": "InnoDB"}


def short_name(prefix: str, table: str) -> str:
    """A constraint or index name that fits every dialect (MySQL: 64 characters)."""
    if len(table) > 40:
        table = f"{table[:31]}_{hashlib.sha1(table.encode()).hexdigest()[:8]}"
    return f"{prefix}_{table}"


@dataclass(frozen=True)
class StoreTables:
    """The three tables of one store, in one :class:`MetaData` (usable by Alembic)."""

    metadata: MetaData
    messages: Table
    sessions: Table
    summaries: Table


def build_tables(
    table_name: str = "ChatMessages", schema: str | None = None, metadata: MetaData | None = None
) -> StoreTables:
    """Define the messages, sessions and summaries tables (validated, quoted names)."""
    validate_identifier(table_name, "table_name")
    if schema is not None:
        validate_identifier(schema, "schema")
    if len(table_name) + max(map(len, _SUFFIXES)) > MAX_IDENTIFIER_LENGTH:
        raise ValueError(
            f"table_name is too long: {table_name}_summaries would exceed "
            f"{MAX_IDENTIFIER_LENGTH} characters"
        )
    md = metadata if metadata is not None else MetaData()
    sessions_name, summaries_name = (table_name + s for s in _SUFFIXES)

    sessions = Table(
        sessions_name,
        md,
        Column("session_id", KEY, primary_key=True),
        Column("user_id", KEY, nullable=True),
        Column("next_seq", BigInteger, nullable=False, default=0),
        Column("message_count", BigInteger, nullable=False, default=0),
        Column("active_count", BigInteger, nullable=False, default=0),
        Column("active_tokens", BigInteger, nullable=False, default=0),
        Column("version", BigInteger, nullable=False, default=0),
        Column("summary_id", BigInteger, nullable=True),
        Column("summary_tokens", Integer, nullable=False, default=0),
        Column("system_message", TEXT, nullable=True),
        Column("system_tokens", Integer, nullable=False, default=0),
        Column("block_marks", TEXT, nullable=True),
        Column("created_at", TIMESTAMP, nullable=False),
        Column("updated_at", TIMESTAMP, nullable=False),
        Index(short_name("ix_user", sessions_name), "user_id"),
        schema=schema,
        **_MYSQL_TABLE,
    )
    summaries = Table(
        summaries_name,
        md,
        Column("id", ID, primary_key=True, autoincrement=True),
        Column("session_id", KEY, nullable=False),
        Column("content", TEXT, nullable=False),
        Column("token_count", Integer, nullable=False),
        Column("through_seq", BigInteger, nullable=False),
        Column("created_at", TIMESTAMP, nullable=False),
        Index(short_name("ix_sess", summaries_name), "session_id", "id"),
        schema=schema,
        **_MYSQL_TABLE,
    )
    messages = Table(
        table_name,
        md,
        Column("id", ID, primary_key=True, autoincrement=True),
        Column("session_id", KEY, nullable=False),
        Column("seq", BigInteger, nullable=False),
        Column("role", String(20), nullable=False),
        Column("status", STATUS, nullable=False),
        Column("token_count", Integer, nullable=False),
        Column("summary_id", BigInteger, nullable=True),  # the summary covering it
        Column("content", TEXT, nullable=False),
        Column("payload", TEXT, nullable=False),
        Column("created_at", TIMESTAMP, nullable=False),
        UniqueConstraint("session_id", "seq", name=short_name("uq_seq", table_name)),
        Index(short_name("ix_window", table_name), "session_id", "status", "seq"),
        schema=schema,
        **_MYSQL_TABLE,
    )
    return StoreTables(md, messages, sessions, summaries)
