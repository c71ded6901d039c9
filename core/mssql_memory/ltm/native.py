"""Native vector search in the database: SQL Server's ``VECTOR(n)`` and pgvector.

The vectors table keeps every embedding as portable float32 bytes (the source
of truth, readable on any database). Where the database has a vector type, a
key table per dimension, ``<prefix>_vec<n>``, holds the same vectors one per
row in that type, and recall ranks a user's turns there (``VECTOR_DISTANCE``
on SQL Server 2025 / Azure SQL, ``<=>`` with pgvector), instead of loading
them into the process. Key rows reference their turn with ``ON DELETE
CASCADE``: deleting a turn (a session, a user) deletes its keys.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    Connection,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    UniqueConstraint,
    bindparam,
    cast,
    exists,
    func,
    literal_column,
    select,
    text,
)
from sqlalchemy.types import UserDefinedType

from ..stores.sql_schema import ID, KEY, short_name
from .embedders import _numpy, from_bytes

__all__ = [
    "MAX_DIMENSIONS",
    "NativeVector",
    "NativeVectors",
    "SearchHit",
    "native_kind",
    "vector_literal",
]

log = logging.getLogger("mssql_memory.ltm")

#: Keys read per turn wanted: a turn has 1 to 9 keys, so some of the nearest keys share a turn.
KEYS_PER_CANDIDATE = 4
#: Largest vector each native type stores (SQL Server float32 VECTOR: 1998; pgvector: 16000).
MAX_DIMENSIONS = {"mssql": 1998, "postgresql": 16000}


class NativeVector(UserDefinedType):
    """``VECTOR(n)``: SQL Server 2025 / Azure SQL, and pgvector's ``vector(n)``.

    Values are written as JSON-style text (``[0.1,0.2]``) cast to the type, which
    both databases accept; the column is never read back.
    """

    cache_ok = True

    def __init__(self, dimension: int) -> None:
        self.dimension = dimension

    def get_col_spec(self, **kw: Any) -> str:
        return f"VECTOR({self.dimension})"


def vector_literal(vector: Any) -> str:
    """A vector as the text both SQL Server and pgvector cast to their vector type."""
    return "[" + ",".join(f"{float(x):.7g}" for x in vector) + "]"


@dataclass(frozen=True, slots=True)
class SearchHit:
    """A stored turn found by native search, with its best key's cosine similarity."""

    id: int
    session_id: str
    first_seq: int
    content: str
    token_count: int
    similarity: float


def native_kind(conn: Connection, *, create: bool) -> tuple[str | None, str]:
    """``("mssql" | "postgresql", "")`` when this database can store and compare vectors
    natively, else ``(None, why not)``. ``create`` lets PostgreSQL install pgvector
    (``CREATE EXTENSION``), which needs the privilege to do so."""
    name = conn.dialect.name
    if name == "postgresql":
        installed = "SELECT 1 FROM pg_extension WHERE extname = 'vector'"
        if conn.execute(text(installed)).first() is not None:
            return "postgresql", ""
        if not create:
            return None, "the pgvector extension is not installed in this database"
        try:
            with conn.begin_nested():
                conn.execute(text("CREATE EXTENSION IF NOT EXISTS vector"))
        except Exception as e:
            return None, f"could not create the pgvector extension: {str(e).splitlines()[0]}"
        return "postgresql", ""
    if name == "mssql":
        probe = (
            "SELECT VECTOR_DISTANCE('cosine', CAST('[1,0]' AS VECTOR(2)), "
            "CAST('[0,1]' AS VECTOR(2)))"
        )
        try:
            with conn.begin_nested():
                conn.execute(text(probe)).first()
        except Exception as e:
            return None, f"this SQL Server has no VECTOR type ({str(e).splitlines()[0]})"
        return "mssql", ""
    return None, f"{name} has no native vector type here (SQL Server 2025 and pgvector do)"


class NativeVectors:
    """Key tables and native search over the vectors table ``vectors``."""

    def __init__(self, vectors: Table, metadata: MetaData, prefix: str) -> None:
        self.vectors = vectors
        self.metadata = metadata
        self.prefix = prefix
        self._tables: dict[int, Table] = {}

    def table(self, dimension: int) -> Table:
        """The key table for ``dimension``-float vectors (defined on first use)."""
        keys = self._tables.get(dimension)
        if keys is not None:
            return keys
        name = f"{self.prefix}_vec{dimension}"
        schema = self.vectors.schema
        full = f"{schema}.{name}" if schema else name
        keys = self.metadata.tables.get(full)
        if keys is None:
            keys = Table(
                name,
                self.metadata,
                Column("id", ID, primary_key=True, autoincrement=True),
                Column(
                    "vector_id",
                    BigInteger,
                    ForeignKey(self.vectors.c.id, ondelete="CASCADE"),
                    nullable=False,
                ),
                Column("key_no", Integer, nullable=False),  # 0: the whole turn; then sentences
                Column("block", String(64), nullable=False),
                Column("user_id", KEY, nullable=True),
                Column("session_id", KEY, nullable=False),
                Column("embedding", NativeVector(dimension), nullable=False),
                UniqueConstraint("vector_id", "key_no", name=short_name("uq_key", name)),
                Index(short_name("ix_scope", name), "block", "user_id", "session_id"),
                schema=schema,
            )
        self._tables[dimension] = keys
        return keys

    # -- writing ------------------------------------------------------------------------

    def key_rows(self, vector_id: int, row: dict[str, Any], block: str) -> list[dict[str, Any]]:
        """One key row per vector in a turn's float32 bytes."""
        flat = from_bytes(row["embedding"])
        dimension = int(row["dimension"])
        return [
            {
                "vector_id": vector_id,
                "key_no": i,
                "block": block,
                "user_id": row["user_id"],
                "session_id": row["session_id"],
                "embedding": vector_literal(vector),
            }
            for i, vector in enumerate(flat.reshape(-1, dimension))
        ]

    def insert(self, conn: Connection, dimension: int, keys: list[dict[str, Any]]) -> None:
        if not keys:
            return
        stmt = (
            self.table(dimension)
            .insert()
            .values(embedding=cast(bindparam("embedding", type_=String()), NativeVector(dimension)))
        )
        conn.execute(stmt, keys)

    def backfill(self, conn: Connection, dimension: int, batch: int = 200) -> int:
        """Add the keys of stored turns that have none (stored before native search was on,
        or by an instance with it off). Returns the turns indexed."""
        v, keys = self.vectors, self.table(dimension)
        missing = (
            select(v.c.id, v.c.block, v.c.user_id, v.c.session_id, v.c.dimension, v.c.embedding)
            .where(
                v.c.dimension == dimension,
                ~exists().where(keys.c.vector_id == v.c.id),
            )
            .order_by(v.c.id)
            .limit(batch)
        )
        done = 0
        while True:
            rows = conn.execute(missing).all()
            for r in rows:
                self.insert(conn, dimension, self.key_rows(r.id, r._asdict(), r.block))
            done += len(rows)
            if len(rows) < batch:
                return done

    # -- searching ----------------------------------------------------------------------

    def distance(self, kind: str, keys: Table, query: Any) -> Any:
        """Cosine distance (0 = same direction, 2 = opposite) of each key to ``query``."""
        dimension = keys.c.embedding.type.dimension
        literal = bindparam("query", vector_literal(query), type_=String())
        q = cast(literal, NativeVector(dimension))
        if kind == "mssql":
            return func.VECTOR_DISTANCE(
                literal_column("'cosine'"), keys.c.embedding, q, type_=Float
            )
        return keys.c.embedding.op("<=>", return_type=Float)(q)

    def search_statement(
        self,
        kind: str,
        dimension: int,
        block: str,
        user_id: str | None,
        session_id: str,
        query: Any,
        limit: int,
    ) -> Any:
        """The ``limit`` turns of a scope whose best key is nearest ``query``."""
        v, keys = self.vectors, self.table(dimension)
        if user_id is None:
            scope = (
                keys.c.block == block,
                keys.c.user_id.is_(None),
                keys.c.session_id == session_id,
            )
        else:
            scope = (keys.c.block == block, keys.c.user_id == user_id)
        # the nearest keys first (a top-n sort, cheap), then each turn's best among them: far
        # cheaper than grouping every key of the user by turn
        distance = self.distance(kind, keys, query).label("distance")
        top = (
            select(keys.c.vector_id, distance)
            .where(*scope)
            .order_by(distance)
            .limit(limit * KEYS_PER_CANDIDATE)
            .subquery("top_keys")
        )
        best = func.min(top.c.distance).label("best_distance")  # unambiguous in ORDER BY
        nearest = (
            select(top.c.vector_id, best)
            .group_by(top.c.vector_id)
            .order_by(best)
            .limit(limit)
            .subquery("nearest")
        )
        return (
            select(
                v.c.id,
                v.c.session_id,
                v.c.first_seq,
                v.c.content,
                v.c.token_count,
                nearest.c.best_distance,
            )
            .join(nearest, nearest.c.vector_id == v.c.id)
            .order_by(nearest.c.best_distance, v.c.id)
        )

    def search(
        self,
        conn: Connection,
        kind: str,
        block: str,
        user_id: str | None,
        session_id: str,
        query: Any,
        limit: int,
    ) -> list[SearchHit]:
        np = _numpy()
        q = np.asarray(query, dtype="<f4")
        stmt = self.search_statement(kind, len(q), block, user_id, session_id, q, limit)
        return [
            SearchHit(
                r.id, r.session_id, r.first_seq, r.content, r.token_count, 1.0 - r.best_distance
            )
            for r in conn.execute(stmt)
        ]
