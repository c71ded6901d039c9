"""Tables of the long-term memory blocks: facts and vectors, scoped by user.

``scope`` is a user id, or ``""`` for global (static) facts — ids are never
empty, and an empty string keeps uniqueness portable (SQL Server treats NULLs
in a unique index as equal, PostgreSQL does not). Uniqueness constraints make
re-inserting a fact or re-embedding a message group a no-op.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import (
    BigInteger,
    Column,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    UniqueConstraint,
)
from sqlalchemy.dialects import mssql, mysql

from ..stores.sql_schema import ID, KEY, TEXT, TIMESTAMP, short_name
from ..validation import MAX_IDENTIFIER_LENGTH, validate_identifier

__all__ = ["LongTermTables", "build_ltm_tables"]

#: float32 vectors: VARBINARY(MAX) on SQL Server, BYTEA on PostgreSQL, LONGBLOB on MySQL.
VECTOR_BYTES = (
    LargeBinary()
    .with_variant(mssql.VARBINARY("max"), "mssql")
    .with_variant(mysql.LONGBLOB(), "mysql", "mariadb")
)
HASH = String(64)
_MYSQL_TABLE = {"mysql_charset": "utf8mb4", "mysql_engine": "InnoDB"}


@dataclass(frozen=True)
class LongTermTables:
    metadata: MetaData
    facts: Table
    vectors: Table


def build_ltm_tables(
    prefix: str = "AgentMemory", schema: str | None = None, metadata: MetaData | None = None
) -> LongTermTables:
    """Define the facts and vectors tables named ``<prefix>_facts`` and ``<prefix>_vectors``."""
    validate_identifier(prefix, "table_prefix")
    if schema is not None:
        validate_identifier(schema, "schema")
    if len(prefix) + len("_vectors") > MAX_IDENTIFIER_LENGTH:
        raise ValueError("table_prefix is too long")
    md = metadata if metadata is not None else MetaData()
    facts_name, vectors_name = f"{prefix}_facts", f"{prefix}_vectors"
    facts = Table(
        facts_name,
        md,
        Column("id", ID, primary_key=True, autoincrement=True),
        Column("block", String(64), nullable=False),
        Column("scope", KEY, nullable=False),  # user id, or "" for global facts
        Column("fact_key", KEY, nullable=False),  # static: the fact's id; else content hash
        Column("subject", KEY, nullable=True),  # what the fact is about, for superseding
        Column("content", TEXT, nullable=False),
        Column("token_count", Integer, nullable=False),
        Column("valid_to", TIMESTAMP, nullable=True),  # set when superseded
        Column("superseded_by", BigInteger, nullable=True),
        Column("source_session_id", KEY, nullable=True),
        Column("source_seq", BigInteger, nullable=True),
        Column("created_at", TIMESTAMP, nullable=False),
        Column("updated_at", TIMESTAMP, nullable=False),
        UniqueConstraint("block", "scope", "fact_key", name=short_name("uq_fact", facts_name)),
        Index(short_name("ix_scope", facts_name), "scope", "block", "valid_to"),
        schema=schema,
        **_MYSQL_TABLE,
    )
    vectors = Table(
        vectors_name,
        md,
        Column("id", ID, primary_key=True, autoincrement=True),
        Column("block", String(64), nullable=False),
        Column("user_id", KEY, nullable=True),
        Column("session_id", KEY, nullable=False),
        Column("first_seq", BigInteger, nullable=False),
        Column("last_seq", BigInteger, nullable=False),
        Column("content", TEXT, nullable=False),
        Column("token_count", Integer, nullable=False),
        Column("dimension", Integer, nullable=False),
        Column("embedding", VECTOR_BYTES, nullable=False),
        Column("created_at", TIMESTAMP, nullable=False),
        UniqueConstraint(
            "block", "session_id", "first_seq", name=short_name("uq_group", vectors_name)
        ),
        Index(short_name("ix_user", vectors_name), "block", "user_id", "id"),
        schema=schema,
        **_MYSQL_TABLE,
    )
    return LongTermTables(md, facts, vectors)
