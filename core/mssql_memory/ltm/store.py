"""SQL persistence of long-term memory: facts (static and extracted) and vectors."""

from __future__ import annotations

import hashlib
import logging
import re
import threading
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import (
    Connection,
    Engine,
    MetaData,
    and_,
    delete,
    func,
    insert,
    inspect,
    select,
    update,
)
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncEngine

from ..defaults import default_url
from ..errors import StoreError
from ..stores._sql_base import CHUNK, RetryOperation, SQLBase, storable_text, utcnow
from ..stores.engines import Engines
from ..validation import validate_id
from .native import MAX_DIMENSIONS, NativeVectors, SearchHit, native_kind
from .schema import LongTermTables, build_ltm_tables

__all__ = ["Fact", "LongTermStore", "NewFact", "SearchHit", "StoredVector", "content_hash"]

GLOBAL_SCOPE = ""
log = logging.getLogger("mssql_memory.ltm")
_UNPROBED = object()


def content_hash(text: str) -> str:
    """A stable key for a fact's text: case, Unicode form and spacing do not matter."""
    normal = " ".join(unicodedata.normalize("NFKC", text).casefold().split())
    return hashlib.sha256(normal.encode("utf-8")).hexdigest()


@dataclass(frozen=True, slots=True)
class Fact:
    """A stored fact. ``valid_to`` is set once a newer fact superseded it."""

    id: int
    block: str
    scope: str
    key: str
    subject: str | None
    content: str
    token_count: int
    created_at: datetime
    valid_to: datetime | None = None
    source_session_id: str | None = None


@dataclass(frozen=True, slots=True)
class NewFact:
    """A fact to reconcile into a user's facts (see :meth:`LongTermStore.add_facts`)."""

    content: str
    token_count: int
    subject: str | None = None
    source_session_id: str | None = None
    source_seq: int | None = None


@dataclass(frozen=True, slots=True)
class StoredVector:
    """A stored turn. ``embedding`` holds one or more float32 vectors of ``dimension`` floats
    (the whole turn's first, then its sentence keys)."""

    id: int
    session_id: str
    first_seq: int
    last_seq: int
    content: str
    token_count: int
    embedding: bytes
    created_at: datetime
    dimension: int = 0


class LongTermStore(SQLBase):
    """Facts and vectors tables (``<prefix>_facts``, ``<prefix>_vectors``) on any SQL database.

    Pass a URL, an engine, or a :class:`~mssql_memory.SQLStore` to share its
    connection pool. Every write is one transaction; uniqueness constraints
    make retried or concurrent writes of the same fact or message group no-ops.

    ``native_vectors``: ``"auto"`` (default) searches vectors inside the database
    when it has a vector type — SQL Server 2025 / Azure SQL ``VECTOR(n)``, or
    PostgreSQL with the pgvector extension installed — and in the process
    otherwise; ``True`` requires it (creating the pgvector extension if allowed,
    else :class:`~mssql_memory.StoreError`); ``False`` never uses it.
    """

    def __init__(
        self,
        url_or_engine: str | URL | Engine | AsyncEngine | Any = None,
        *,
        table_prefix: str = "AgentMemory",
        schema: str | None = None,
        auto_create: bool = True,
        metadata: MetaData | None = None,
        native_vectors: bool | str = "auto",
    ) -> None:
        if native_vectors not in (True, False, "auto"):
            raise ValueError('native_vectors must be True, False or "auto"')
        self.tables: LongTermTables = build_ltm_tables(table_prefix, schema, metadata)
        source = url_or_engine
        if source is None:
            source = default_url()
        elif isinstance(getattr(source, "engines", None), Engines):
            source = source.engines  # a SQLStore: share its engines
        super().__init__(source, self.tables.metadata, schema=schema, auto_create=auto_create)
        self.table_prefix = table_prefix
        self.native_vectors = native_vectors
        self._native = NativeVectors(self.tables.vectors, self.tables.metadata, table_prefix)
        self._native_kind: Any = _UNPROBED
        self._native_ready: dict[int, str | None] = {}
        self._native_lock = threading.Lock()

    def _define_key_tables(self, conn: Connection) -> None:
        """Define the native key tables this database holds for our prefix (made by any
        instance), so dropping the vectors table drops them first."""
        if conn.dialect.name not in MAX_DIMENSIONS:
            return
        pattern = re.compile(re.escape(self.table_prefix) + r"_vec(\d{1,5})")
        for name in inspect(conn).get_table_names(schema=self.schema):
            found = pattern.fullmatch(name)
            if found:
                self._native.table(int(found.group(1)))

    def drop_schema(self) -> None:
        """Drop the facts, vectors and native key tables, destroying every fact and vector."""
        with self.engines.sync.connect() as conn:
            self._define_key_tables(conn)
        super().drop_schema()

    async def adrop_schema(self) -> None:
        engine = self.engines.async_engine
        if engine is not None:
            async with engine.connect() as conn:
                await conn.run_sync(self._define_key_tables)
        else:
            with self.engines.sync.connect() as conn:
                self._define_key_tables(conn)
        await super().adrop_schema()

    def __repr__(self) -> str:
        url = self.engines.url.render_as_string(hide_password=True)
        return f"LongTermStore({url!r}, table_prefix={self.table_prefix!r})"

    # -- facts ------------------------------------------------------------------------

    @staticmethod
    def _fact(row: Any) -> Fact:
        return Fact(
            row.id,
            row.block,
            row.scope,
            row.fact_key,
            row.subject,
            row.content,
            row.token_count,
            row.created_at,
            row.valid_to,
            row.source_session_id,
        )

    def _upsert_static_op(
        self, conn: Connection, block: str, facts: Sequence[tuple[str, str, int]]
    ) -> int:
        f = self.tables.facts
        existing = {
            row.fact_key: row
            for row in conn.execute(
                select(f.c.id, f.c.fact_key, f.c.content).where(
                    f.c.block == block, f.c.scope == GLOBAL_SCOPE
                )
            )
        }
        now, changed = utcnow(), 0
        for key, content, tokens in facts:
            key, content = storable_text(key), storable_text(content)
            row = existing.get(key)
            if row is None:
                try:
                    conn.execute(
                        insert(f).values(
                            block=block,
                            scope=GLOBAL_SCOPE,
                            fact_key=key,
                            content=content,
                            token_count=tokens,
                            created_at=now,
                            updated_at=now,
                        )
                    )
                except sa_exc.IntegrityError as e:  # loaded concurrently by another process
                    raise RetryOperation() from e
                changed += 1
            elif row.content != content:
                conn.execute(
                    update(f)
                    .where(f.c.id == row.id)
                    .values(content=content, token_count=tokens, updated_at=now)
                )
                changed += 1
        return changed

    def upsert_static(self, block: str, facts: Sequence[tuple[str, str, int]]) -> int:
        """Load global facts ``(key, content, tokens)``; idempotent by key. Returns rows changed."""
        return self._run(lambda c: self._upsert_static_op(c, block, facts))

    async def aupsert_static(self, block: str, facts: Sequence[tuple[str, str, int]]) -> int:
        return await self._arun(lambda c: self._upsert_static_op(c, block, facts))

    def _facts_op(self, conn: Connection, block: str, scope: str, valid_only: bool) -> list[Fact]:
        f = self.tables.facts
        q = select(f).where(f.c.block == block, f.c.scope == scope)
        if valid_only:
            q = q.where(f.c.valid_to.is_(None))
        return [self._fact(row) for row in conn.execute(q.order_by(f.c.id))]

    def facts(
        self, block: str, scope: str = GLOBAL_SCOPE, *, valid_only: bool = True
    ) -> list[Fact]:
        """A block's facts for ``scope`` (a user id, or ``""`` for global), oldest first."""
        return self._run(lambda c: self._facts_op(c, block, scope, valid_only), write=False)

    async def afacts(
        self, block: str, scope: str = GLOBAL_SCOPE, *, valid_only: bool = True
    ) -> list[Fact]:
        return await self._arun(lambda c: self._facts_op(c, block, scope, valid_only), write=False)

    def _add_facts_op(
        self, conn: Connection, block: str, user_id: str, facts: Sequence[NewFact], max_facts: int
    ) -> dict[str, int]:
        f = self.tables.facts
        now = utcnow()
        counts = {"added": 0, "superseded": 0, "unchanged": 0, "expired": 0}
        for fact in facts:
            key = content_hash(fact.content)
            subject = storable_text(fact.subject) if fact.subject else fact.subject
            row = conn.execute(
                select(f.c.id, f.c.valid_to).where(
                    f.c.block == block, f.c.scope == user_id, f.c.fact_key == key
                )
            ).first()
            if row is not None and row.valid_to is None:
                counts["unchanged"] += 1
                continue
            if row is None:
                try:
                    new_id = conn.execute(
                        insert(f).values(
                            block=block,
                            scope=user_id,
                            fact_key=key,
                            subject=subject,
                            content=storable_text(fact.content),
                            token_count=fact.token_count,
                            source_session_id=fact.source_session_id,
                            source_seq=fact.source_seq,
                            created_at=now,
                            updated_at=now,
                        )
                    ).inserted_primary_key[0]
                except sa_exc.IntegrityError as e:  # the same fact inserted concurrently
                    raise RetryOperation() from e
            else:  # a superseded fact stated again becomes current again
                new_id = row.id
                conn.execute(
                    update(f)
                    .where(f.c.id == row.id)
                    .values(valid_to=None, superseded_by=None, subject=subject, updated_at=now)
                )
            counts["added"] += 1
            if subject:
                counts["superseded"] += conn.execute(
                    update(f)
                    .where(
                        f.c.block == block,
                        f.c.scope == user_id,
                        f.c.subject == subject,
                        f.c.valid_to.is_(None),
                        f.c.id != new_id,
                    )
                    .values(valid_to=now, superseded_by=new_id, updated_at=now)
                ).rowcount
        counts["expired"] = self._expire_beyond(conn, block, user_id, max_facts, now)
        return counts

    def _expire_beyond(
        self, conn: Connection, block: str, user_id: str, max_facts: int, now: datetime
    ) -> int:
        f = self.tables.facts
        where = and_(f.c.block == block, f.c.scope == user_id, f.c.valid_to.is_(None))
        count = conn.execute(select(func.count()).select_from(f).where(where)).scalar_one()
        if count <= max_facts:
            return 0
        oldest = list(
            conn.execute(
                select(f.c.id).where(where).order_by(f.c.id).limit(count - max_facts)
            ).scalars()
        )
        conn.execute(update(f).where(f.c.id.in_(oldest)).values(valid_to=now, updated_at=now))
        return len(oldest)

    def add_facts(
        self, block: str, user_id: str, facts: Sequence[NewFact], *, max_facts: int = 100
    ) -> dict[str, int]:
        """Reconcile ``facts`` into the user's facts in one transaction.

        An identical fact (same normalized text) is a no-op; a fact with the
        ``subject`` of a current one supersedes it (the old one is kept, with
        ``valid_to`` set); beyond ``max_facts`` the oldest current facts expire.
        """
        validate_id(user_id, "user_id")
        return self._run(lambda c: self._add_facts_op(c, block, user_id, facts, max_facts))

    async def aadd_facts(
        self, block: str, user_id: str, facts: Sequence[NewFact], *, max_facts: int = 100
    ) -> dict[str, int]:
        validate_id(user_id, "user_id")
        return await self._arun(lambda c: self._add_facts_op(c, block, user_id, facts, max_facts))

    # -- vectors ------------------------------------------------------------------------

    def _add_vectors_op(
        self, conn: Connection, block: str, rows: Sequence[dict[str, Any]], native: bool
    ) -> int:
        v = self.tables.vectors
        added = 0
        now = utcnow()
        for row in rows:
            exists = conn.execute(
                select(v.c.id).where(
                    v.c.block == block,
                    v.c.session_id == row["session_id"],
                    v.c.first_seq == row["first_seq"],
                )
            ).first()
            if exists is not None:
                continue
            try:
                text = storable_text(row["content"])
                result = conn.execute(
                    insert(v).values(block=block, created_at=now, **{**row, "content": text})
                )
                if native:
                    keys = self._native.key_rows(result.inserted_primary_key[0], row, block)
                    self._native.insert(conn, int(row["dimension"]), keys)
            except sa_exc.IntegrityError as e:
                raise RetryOperation() from e
            added += 1
        return added

    @staticmethod
    def _dimension(rows: Sequence[dict[str, Any]]) -> int:
        dimensions = {int(r["dimension"]) for r in rows}
        if len(dimensions) != 1:
            raise ValueError("one add_vectors call stores vectors of one dimension")
        return dimensions.pop()

    def add_vectors(self, block: str, rows: Sequence[dict[str, Any]]) -> int:
        """Insert vector rows (user_id, session_id, first_seq, last_seq, content, token_count,
        dimension, embedding); a group already stored is skipped. Returns rows added.
        With native search on, the turn's keys are written in the same transaction."""
        if not rows:
            return 0
        native = self.native_search(self._dimension(rows)) is not None
        return self._run(lambda c: self._add_vectors_op(c, block, rows, native))

    async def aadd_vectors(self, block: str, rows: Sequence[dict[str, Any]]) -> int:
        if not rows:
            return 0
        native = await self.anative_search(self._dimension(rows)) is not None
        return await self._arun(lambda c: self._add_vectors_op(c, block, rows, native))

    # -- native vector search ---------------------------------------------------------

    def _kind_or_none(self, found: tuple[str | None, str], dimension: int) -> str | None:
        """Record the probe's answer; raise if native search was required and is missing."""
        kind, why = found
        if kind is not None and dimension > MAX_DIMENSIONS[kind]:
            kind, why = None, f"{dimension} dimensions exceed {kind}'s {MAX_DIMENSIONS[kind]}"
        if kind is None and self.native_vectors is True:
            raise StoreError(f"native vector search was required (native_vectors=True): {why}")
        if kind is None:
            log.debug("vectors of %d dimensions are searched in the process: %s", dimension, why)
        return kind

    def _native_op(self, conn: Connection, dimension: int) -> tuple[str | None, str]:
        if self._native_kind is _UNPROBED:
            self._native_kind = native_kind(conn, create=self.native_vectors is True)
        kind, why = self._native_kind
        if kind is None or dimension > MAX_DIMENSIONS[kind]:
            return kind, why
        keys = self._native.table(dimension)
        try:
            with conn.begin_nested():
                keys.create(conn, checkfirst=True)
        except sa_exc.DBAPIError:
            if not inspect(conn).has_table(keys.name, schema=keys.schema):
                raise
            # another process created it between our check and create
        indexed = self._native.backfill(conn, dimension)
        if indexed:
            log.info("indexed %d stored turns for native vector search", indexed)
        return kind, why

    def native_search(self, dimension: int) -> str | None:
        """``"mssql"`` or ``"postgresql"`` when vectors of ``dimension`` floats are searched in
        the database, else None. The first call per dimension creates the key table and
        indexes turns stored without keys."""
        if self.native_vectors is False:
            return None
        if dimension in self._native_ready:
            return self._native_ready[dimension]
        with self._native_lock:
            if dimension not in self._native_ready:
                found = self._run(lambda c: self._native_op(c, dimension))
                self._native_ready[dimension] = self._kind_or_none(found, dimension)
        return self._native_ready[dimension]

    async def anative_search(self, dimension: int) -> str | None:
        if self.native_vectors is False:
            return None
        if dimension not in self._native_ready:
            found = await self._arun(lambda c: self._native_op(c, dimension))
            self._native_ready[dimension] = self._kind_or_none(found, dimension)
        return self._native_ready[dimension]

    def search_vectors(
        self, block: str, user_id: str | None, session_id: str, query: Sequence[float], limit: int
    ) -> list[SearchHit] | None:
        """The ``limit`` turns of the scope nearest ``query`` (best key, cosine), searched in the
        database; None when this database has no native vector search."""
        kind = self.native_search(len(query))
        if kind is None:
            return None
        n = self._native
        op = lambda c: n.search(c, kind, block, user_id, session_id, query, limit)  # noqa: E731
        return self._run(op, write=False)

    async def asearch_vectors(
        self, block: str, user_id: str | None, session_id: str, query: Sequence[float], limit: int
    ) -> list[SearchHit] | None:
        kind = await self.anative_search(len(query))
        if kind is None:
            return None
        n = self._native
        op = lambda c: n.search(c, kind, block, user_id, session_id, query, limit)  # noqa: E731
        return await self._arun(op, write=False)

    def _neighbors_op(
        self, conn: Connection, where: Any, hits: Sequence[SearchHit], n: int
    ) -> list[SearchHit]:
        v = self.tables.vectors
        sessions = sorted({h.session_id for h in hits})
        order: dict[str, list[int]] = {}
        for chunk in (sessions[i : i + CHUNK] for i in range(0, len(sessions), CHUNK)):
            q = select(v.c.id, v.c.session_id).where(where, v.c.session_id.in_(chunk))
            for row_id, session in conn.execute(q.order_by(v.c.id)):
                order.setdefault(session, []).append(row_id)
        wanted: list[int] = []
        seen = {h.id for h in hits}
        for h in hits:
            ids = order.get(h.session_id, [])
            if h.id not in ids:
                continue
            at = ids.index(h.id)
            for d in range(1, n + 1):
                for j in (at - d, at + d):
                    if 0 <= j < len(ids) and ids[j] not in seen:
                        seen.add(ids[j])
                        wanted.append(ids[j])
        found: dict[int, SearchHit] = {}
        cols = (v.c.id, v.c.session_id, v.c.first_seq, v.c.content, v.c.token_count)
        for chunk in (wanted[i : i + CHUNK] for i in range(0, len(wanted), CHUNK)):
            for r in conn.execute(select(*cols).where(where, v.c.id.in_(chunk))):
                found[r.id] = SearchHit(*r, similarity=0.0)
        return [found[i] for i in wanted if i in found]

    def neighbor_vectors(
        self, block: str, user_id: str | None, session_id: str, hits: Sequence[SearchHit], n: int
    ) -> list[SearchHit]:
        """The turns stored just before and after each hit in its session (up to ``n`` each
        side), in the order the hits give, without the hits themselves."""
        where = self._vector_scope(block, user_id, session_id)
        return self._run(lambda c: self._neighbors_op(c, where, hits, n), write=False)

    async def aneighbor_vectors(
        self, block: str, user_id: str | None, session_id: str, hits: Sequence[SearchHit], n: int
    ) -> list[SearchHit]:
        where = self._vector_scope(block, user_id, session_id)
        return await self._arun(lambda c: self._neighbors_op(c, where, hits, n), write=False)

    def _vector_scope(self, block: str, user_id: str | None, session_id: str):
        v = self.tables.vectors
        if user_id is None:
            return and_(v.c.block == block, v.c.user_id.is_(None), v.c.session_id == session_id)
        return and_(v.c.block == block, v.c.user_id == user_id)

    def _vector_stamp_op(self, conn: Connection, where: Any) -> tuple[int, int]:
        v = self.tables.vectors
        count, last = conn.execute(select(func.count(), func.max(v.c.id)).where(where)).one()
        return int(count), int(last or 0)

    def _load_vectors_op(self, conn: Connection, where: Any, after_id: int) -> list[StoredVector]:
        v = self.tables.vectors
        q = (
            select(
                v.c.id,
                v.c.session_id,
                v.c.first_seq,
                v.c.last_seq,
                v.c.content,
                v.c.token_count,
                v.c.embedding,
                v.c.created_at,
                v.c.dimension,
            )
            .where(where, v.c.id > after_id)
            .order_by(v.c.id)
        )
        return [StoredVector(*row) for row in conn.execute(q)]

    def vector_stamp(self, block: str, user_id: str | None, session_id: str) -> tuple[int, int]:
        """``(count, max id)`` of a scope's vectors: a cache of them is current iff this matches."""
        where = self._vector_scope(block, user_id, session_id)
        return self._run(lambda c: self._vector_stamp_op(c, where), write=False)

    async def avector_stamp(
        self, block: str, user_id: str | None, session_id: str
    ) -> tuple[int, int]:
        where = self._vector_scope(block, user_id, session_id)
        return await self._arun(lambda c: self._vector_stamp_op(c, where), write=False)

    def load_vectors(
        self, block: str, user_id: str | None, session_id: str, *, after_id: int = 0
    ) -> list[StoredVector]:
        """A scope's vectors with ``id > after_id``, oldest first (never another user's)."""
        where = self._vector_scope(block, user_id, session_id)
        return self._run(lambda c: self._load_vectors_op(c, where, after_id), write=False)

    async def aload_vectors(
        self, block: str, user_id: str | None, session_id: str, *, after_id: int = 0
    ) -> list[StoredVector]:
        where = self._vector_scope(block, user_id, session_id)
        return await self._arun(lambda c: self._load_vectors_op(c, where, after_id), write=False)

    # -- deletion -------------------------------------------------------------------------

    def _delete_user_op(self, conn: Connection, user_id: str, block: str | None) -> int:
        f, v = self.tables.facts, self.tables.vectors
        fw = f.c.scope == user_id
        vw = v.c.user_id == user_id
        if block is not None:
            fw, vw = and_(fw, f.c.block == block), and_(vw, v.c.block == block)
        return (
            conn.execute(delete(f).where(fw)).rowcount + conn.execute(delete(v).where(vw)).rowcount
        )

    def delete_user(self, user_id: str, *, block: str | None = None) -> int:
        """Delete a user's facts and vectors (of one block, or all). Returns rows deleted."""
        validate_id(user_id, "user_id")
        return self._run(lambda c: self._delete_user_op(c, user_id, block))

    async def adelete_user(self, user_id: str, *, block: str | None = None) -> int:
        validate_id(user_id, "user_id")
        return await self._arun(lambda c: self._delete_user_op(c, user_id, block))

    def _delete_sessions_op(
        self, conn: Connection, session_ids: Sequence[str], block: str | None
    ) -> int:
        v = self.tables.vectors
        deleted = 0
        for i in range(0, len(session_ids), CHUNK):
            where = v.c.session_id.in_(session_ids[i : i + CHUNK])
            if block is not None:
                where = and_(where, v.c.block == block)
            deleted += conn.execute(delete(v).where(where)).rowcount
        return deleted

    def delete_session_vectors(
        self, session_ids: Sequence[str], *, block: str | None = None
    ) -> int:
        """Delete the vectors made from these sessions' messages (of one block, or all)."""
        return self._run(lambda c: self._delete_sessions_op(c, list(session_ids), block))

    async def adelete_session_vectors(
        self, session_ids: Sequence[str], *, block: str | None = None
    ) -> int:
        return await self._arun(lambda c: self._delete_sessions_op(c, list(session_ids), block))
