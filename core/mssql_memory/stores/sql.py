"""A session store on any SQLAlchemy database: SQL Server, SQLite, PostgreSQL, MySQL/MariaDB.

Each operation is written once, as a function of a sync ``Connection``; the
sync API runs it in ``engine.begin()``, the async API in
``AsyncConnection.run_sync`` (the async driver does the I/O, nothing blocks
the event loop), or in a worker thread when only a sync engine exists.

Ordering: every write first updates the session's row (``next_seq``,
``version``), which takes that row's lock; sequence numbers are allocated
from it inside the same transaction, so concurrent writers of one session
serialize on one row and never lose, duplicate or reorder messages. On
PostgreSQL an append to an existing session is that update and the insert in
one statement, run in autocommit (its own transaction: one round trip).
"""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Iterable, Sequence
from datetime import datetime, timezone
from functools import partial
from typing import Any, TypeVar

from sqlalchemy import (
    BigInteger,
    Connection,
    Engine,
    Integer,
    MetaData,
    String,
    UnicodeText,
    and_,
    bindparam,
    delete,
    func,
    insert,
    literal,
    or_,
    select,
    true,
    update,
)
from sqlalchemy import exc as sa_exc
from sqlalchemy.dialects import mysql, postgresql
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.sql.expression import Executable

from ..errors import ConcurrencyError
from ..messages import Message, message_from_json
from ..tokens import TokenCounter, default_token_counter
from ..validation import validate_id, validate_optional_id
from ._prepare import check_limit, check_seqs, prepare_batch
from ._sql_base import CHUNK, RetryOperation, SQLBase, chunks, storable_text, utcnow
from .base import AppendResult, OverflowCommit, SessionInfo, SessionSnapshot, SessionState, Summary
from .cache import WindowCache
from .sql_schema import StoreTables, build_tables

__all__ = ["SQLStore"]

logger = logging.getLogger(__name__)
T = TypeVar("T")

_READ_ATTEMPTS = 5
_NO_LIMIT = 2**62  # max_messages_per_session=None, as a bound the guarded append can compare


class _Conflict(Exception):
    """An optimistic check failed."""


_SessionRace = RetryOperation


def _first_version() -> int:
    """A new session's first version: random, so a session deleted and created again never
    repeats a version a cache may hold for the old one."""
    return random.randrange(1, 2**52)


def _aware(value: datetime | None) -> datetime | None:
    """Stored timestamps are naive UTC; hand them out timezone-aware."""
    return (
        value.replace(tzinfo=timezone.utc) if value is not None and value.tzinfo is None else value
    )


def _display_text(text: str) -> str:
    """The human-readable ``content`` column (PostgreSQL rejects NUL; the payload keeps it)."""
    return text.replace("\x00", "\ufffd") if "\x00" in text else text


class SQLStore(SQLBase):
    """Session store on a SQL database through SQLAlchemy Core.

    ``url_or_engine`` is a URL (``mssql+pyodbc://...``, ``sqlite:///memory.db``,
    ``postgresql+psycopg://...``, ``mysql+pymysql://...`` or their async
    drivers), an ``Engine`` or an ``AsyncEngine``. Tables are created by
    :meth:`create_schema` or, with ``auto_create`` (default), on first use.
    ``max_messages_per_session`` bounds the active window by count (the oldest
    leave it: archived, or deleted when ``keep_history`` is False). ``cache``
    (default True; a capacity, a :class:`WindowCache`, or False/None for none)
    keeps active windows of text messages in memory, validated against the
    session's version on every read: a read still asks the database for the
    session's record, never serves a window another instance has changed.
    """

    def __init__(
        self,
        url_or_engine: str | URL | Engine | AsyncEngine,
        table_name: str = "ChatMessages",
        schema: str | None = None,
        max_messages_per_session: int | None = None,
        keep_history: bool = True,
        cache: WindowCache | bool | int | None = True,
        *,
        token_counter: TokenCounter | None = None,
        auto_create: bool = True,
        metadata: MetaData | None = None,
    ) -> None:
        self.tables: StoreTables = build_tables(table_name, schema, metadata)
        super().__init__(
            url_or_engine, self.tables.metadata, schema=schema, auto_create=auto_create
        )
        self.table_name = table_name
        limit = check_limit(max_messages_per_session, "max_messages_per_session")
        if limit == 0:
            raise ValueError("max_messages_per_session must be positive or None")
        self.max_messages_per_session = limit
        self.keep_history = bool(keep_history)
        self.token_counter = token_counter or default_token_counter()
        if cache is True:
            cache = WindowCache()
        elif isinstance(cache, int) and not isinstance(cache, bool):
            cache = WindowCache(capacity=cache)
        elif cache is False:
            cache = None
        if cache is not None and not isinstance(cache, WindowCache):
            raise TypeError("cache must be a WindowCache, True, a capacity or None")
        self.cache: WindowCache | None = cache
        self._build_statements()

    def __repr__(self) -> str:
        url = self.engines.url.render_as_string(hide_password=True)
        return f"SQLStore({url!r}, table_name={self.table_name!r})"

    # -- statements, built once ---------------------------------------------

    def _build_statements(self) -> None:
        m, s, su = self.tables.messages, self.tables.sessions, self.tables.summaries
        sid: Any = bindparam("p_sid")
        self._q_state = (
            select(
                s.c.user_id,
                s.c.version,
                s.c.message_count,
                s.c.active_count,
                s.c.active_tokens,
                s.c.system_message,
                s.c.system_tokens,
                s.c.block_marks,
                s.c.updated_at,
                su.c.id,
                su.c.content,
                su.c.token_count,
                su.c.through_seq,
                su.c.created_at,
            )
            .select_from(s.outerjoin(su, su.c.id == s.c.summary_id))
            .where(s.c.session_id == sid)
        )
        self._q_window = (
            select(m.c.seq, m.c.payload, m.c.token_count, m.c.status)
            .where(m.c.session_id == sid, m.c.status == "active")
            .order_by(m.c.seq)
        )
        self._q_window_tail = (
            select(m.c.seq, m.c.payload, m.c.token_count, m.c.status)
            .where(m.c.session_id == sid, m.c.status == "active")
            .order_by(m.c.seq.desc())
            .limit(bindparam("p_limit", type_=Integer, literal_execute=True))
        )
        # the window with the session's version read by the same statement (one snapshot)
        self._q_window_versioned = (
            select(m.c.seq, m.c.payload, m.c.token_count, m.c.status, s.c.version)
            .select_from(m.join(s, s.c.session_id == m.c.session_id))
            .where(m.c.session_id == sid, m.c.status == "active")
            .order_by(m.c.seq)
        )
        self._q_tail_versioned = (
            select(m.c.seq, m.c.payload, m.c.token_count, m.c.status, s.c.version)
            .select_from(m.join(s, s.c.session_id == m.c.session_id))
            .where(m.c.session_id == sid, m.c.status == "active")
            .order_by(m.c.seq.desc())
            .limit(bindparam("p_limit", type_=Integer, literal_execute=True))
        )
        self._q_version = select(s.c.version).where(s.c.session_id == sid)
        self._q_history = (
            select(m.c.seq, m.c.payload, m.c.token_count, m.c.status)
            .where(m.c.session_id == sid)
            .order_by(m.c.seq)
        )
        self._counters = (
            s.c.next_seq,
            s.c.version,
            s.c.active_count,
            s.c.active_tokens,
            s.c.user_id,
            s.c.system_tokens,
            s.c.summary_tokens,
        )
        self._q_counters = select(*self._counters).where(s.c.session_id == sid)
        self._u_append = (
            update(s)
            .where(s.c.session_id == sid)
            .values(
                next_seq=s.c.next_seq + bindparam("p_n"),
                message_count=s.c.message_count + bindparam("p_n"),
                active_count=s.c.active_count + bindparam("p_n"),
                active_tokens=s.c.active_tokens + bindparam("p_tokens"),
                version=s.c.version + 1,
                updated_at=bindparam("p_now"),
            )
        )
        self._u_append_returning = self._u_append.returning(*self._counters)
        # PostgreSQL: the counters' update and the insert in one statement. Run alone
        # (autocommit, one round trip) it changes nothing unless the session exists, belongs to
        # the caller (or no user is given) and stays within max_messages_per_session, and the
        # transactional path runs instead, with the guard open (no user, no limit).
        uid = bindparam("p_uid", type_=String())
        guarded = self._u_append.where(
            or_(uid.is_(None), s.c.user_id == uid),
            s.c.active_count + bindparam("p_n") <= bindparam("p_max", type_=BigInteger()),
        ).returning(*self._counters)
        self._pg_append = self._fused_append(m, sid, guarded)
        self._pg_append_one = self._fused_append(m, sid, guarded, one=True)
        self._maria_append = self._upsert_append(s, sid)
        self._u_lock = (
            update(s)
            .where(s.c.session_id == sid)
            .values(version=s.c.version + 1, updated_at=bindparam("p_now"))
        )
        locked = (s.c.version, s.c.active_count, s.c.active_tokens, s.c.user_id, s.c.block_marks)
        self._q_lock = select(*locked).where(s.c.session_id == sid)
        self._u_lock_returning = self._u_lock.returning(*locked)
        # an overflow's lock and counters' update in one statement
        self._u_evict = (
            update(s)
            .where(s.c.session_id == sid)
            .values(
                version=s.c.version + 1,
                updated_at=bindparam("p_now"),
                active_count=s.c.active_count - bindparam("p_n"),
                active_tokens=s.c.active_tokens - bindparam("p_tokens"),
                message_count=s.c.message_count - bindparam("p_gone"),
            )
        )
        self._u_evict_returning = self._u_evict.returning(s.c.version, s.c.block_marks)
        self._i_messages = insert(m)

    def _upsert_append(self, s: Any, sid: Any) -> Any:
        """MariaDB (no ``UPDATE ... RETURNING``): the session's counters moved, or the session
        created, and their new values returned by one ``INSERT ... ON DUPLICATE KEY UPDATE ...
        RETURNING`` instead of an UPDATE and a SELECT. The owner is not changed here."""
        n, tokens = bindparam("p_n", type_=BigInteger()), bindparam("p_tokens", type_=BigInteger())
        now = bindparam("p_now", type_=s.c.updated_at.type)
        created = mysql.insert(s).values(
            session_id=sid,
            user_id=bindparam("p_uid", type_=String()),
            next_seq=n,
            message_count=n,
            active_count=n,
            active_tokens=tokens,
            version=bindparam("p_first_version", type_=BigInteger()),
            created_at=now,
            updated_at=now,
        )
        bumped = created.on_duplicate_key_update(
            next_seq=s.c.next_seq + n,
            message_count=s.c.message_count + n,
            active_count=s.c.active_count + n,
            active_tokens=s.c.active_tokens + tokens,
            version=s.c.version + 1,
            updated_at=now,
        )
        return bumped.returning(*self._counters)

    def _fused_append(self, m: Any, sid: Any, bump: Any, *, one: bool = False) -> Any:
        """PostgreSQL: the session row's update ``bump`` (RETURNING the counters) and the
        messages' insert in one statement (one round trip instead of two): ``WITH bumped AS
        (UPDATE ... RETURNING ...), added AS (INSERT ... SELECT FROM bumped, unnest(the batch's
        columns))``. Nothing is inserted when the update matches no row (no row returned: the
        session does not exist yet, or the guard of the one-statement append failed).
        ``one``: a single message, bound as plain values (no arrays to encode)."""
        bumped = bump.cte("bumped")
        columns = ["session_id", "seq", "role", "status", "token_count", "content", "payload"]
        if one:
            row = select(
                sid,
                bumped.c.next_seq,
                bindparam("p_role", type_=String()),
                literal("active"),
                bindparam("p_count", type_=Integer()),
                bindparam("p_content", type_=UnicodeText()),
                bindparam("p_payload", type_=UnicodeText()),
                bindparam("p_now"),
            ).select_from(bumped)
            added = insert(m).from_select([*columns, "created_at"], row).cte("added")
            return select(bumped).add_cte(added)
        batch = (
            func.unnest(
                bindparam("p_roles", type_=postgresql.ARRAY(String())),
                bindparam("p_counts", type_=postgresql.ARRAY(Integer())),
                bindparam("p_contents", type_=postgresql.ARRAY(UnicodeText())),
                bindparam("p_payloads", type_=postgresql.ARRAY(UnicodeText())),
            )
            .table_valued("role", "token_count", "content", "payload", with_ordinality="ord")
            .render_derived()
        )
        rows = select(
            sid,
            bumped.c.next_seq - bindparam("p_n") + batch.c.ord,
            batch.c.role,
            literal("active"),
            batch.c.token_count,
            batch.c.content,
            batch.c.payload,
            bindparam("p_now"),
        ).select_from(bumped.join(batch, true()))
        added = insert(m).from_select([*columns, "created_at"], rows).cte("added")
        return select(bumped).add_cte(added)

    @staticmethod
    def _upsert_returns(conn: Connection) -> bool:
        """MariaDB 10.5+: ``INSERT ... ON DUPLICATE KEY UPDATE ... RETURNING``."""
        dialect = conn.dialect
        mariadb = getattr(dialect, "is_mariadb", False)
        return dialect.name == "mysql" and bool(mariadb and dialect.insert_returning)

    def drop_schema(self) -> None:
        """Drop this store's tables (not the schema), destroying every message. For tests/tools."""
        super().drop_schema()
        if self.cache is not None:
            self.cache.clear()

    # -- row helpers --------------------------------------------------------------

    @staticmethod
    def _rows_to_messages(rows: Iterable[Any]) -> list[Message]:
        return [
            message_from_json(payload, seq=seq, token_count=tokens, status=status)
            for seq, payload, tokens, status in rows
        ]

    def _state_from_row(self, session_id: str, row: Any) -> SessionState:
        if row is None:
            return SessionState(session_id)
        system = None
        if row.system_message:
            system = message_from_json(row.system_message, token_count=row.system_tokens)
        summary = None
        if row.id is not None:
            summary = Summary(
                row.id, row.content, row.token_count, row.through_seq, _aware(row.created_at)
            )
        return SessionState(
            session_id,
            exists=True,
            user_id=row.user_id,
            version=row.version,
            message_count=row.message_count,
            active_count=row.active_count,
            active_tokens=row.active_tokens,
            system_message=system,
            summary=summary,
            block_marks=json.loads(row.block_marks) if row.block_marks else {},
            updated_at=_aware(row.updated_at),
        )

    def _lock_session(self, conn: Connection, session_id: str, now: datetime) -> Any:
        """Bump the session's version (taking its row lock); return its row, or None."""
        params = {"p_sid": session_id, "p_now": now}
        if self._dialect_returns(conn):
            return conn.execute(self._u_lock_returning, params).first()
        if conn.execute(self._u_lock, params).rowcount == 0:
            return None
        return conn.execute(self._q_lock, {"p_sid": session_id}).first()

    def _create_session(
        self, conn: Connection, session_id: str, user_id: str | None, now: datetime, **values: Any
    ) -> int:
        """Insert the session's row; returns its first version (see :func:`_first_version`)."""
        row: dict[str, Any] = {
            "session_id": session_id,
            "user_id": user_id,
            "next_seq": 0,
            "message_count": 0,
            "active_count": 0,
            "active_tokens": 0,
            "version": _first_version(),
            "created_at": now,
            "updated_at": now,
        }
        row.update(values)
        try:
            conn.execute(insert(self.tables.sessions).values(row))
        except sa_exc.IntegrityError as e:  # a concurrent writer created it: retry the operation
            raise _SessionRace() from e
        return int(row["version"])

    def _lock_or_create(
        self, conn: Connection, session_id: str, user_id: str | None, now: datetime
    ) -> Any:
        row = self._lock_session(conn, session_id, now)
        if row is None:
            self._create_session(conn, session_id, user_id, now)
            row = conn.execute(self._q_lock, {"p_sid": session_id}).first()
        self._check_user(conn, session_id, row.user_id, user_id)
        return row

    def _check_user(
        self, conn: Connection, session_id: str, owner: str | None, user_id: str | None
    ) -> None:
        if user_id is None or owner == user_id:
            return
        if owner is not None:
            raise ValueError(f"session {session_id!r} belongs to another user")
        s = self.tables.sessions
        conn.execute(update(s).where(s.c.session_id == session_id).values(user_id=user_id))

    # -- append -------------------------------------------------------------------

    def _append_params(
        self, session_id: str, batch: list[tuple[Message, str]], now: datetime
    ) -> dict[str, Any]:
        params: dict[str, Any] = {
            "p_sid": session_id,
            "p_n": len(batch),
            "p_tokens": sum(m.token_count or 0 for m, _ in batch),
            "p_now": now,
        }
        if self._postgresql and len(batch) == 1:  # plain values for the one-message statement
            ((message, payload),) = batch
            params.update(p_role=message.role, p_count=message.token_count, p_payload=payload)
            params["p_content"] = _display_text(message.content)
        elif self._postgresql:  # the batch's columns, for the fused statement's unnest
            params["p_roles"] = [m.role for m, _ in batch]
            params["p_counts"] = [m.token_count for m, _ in batch]
            params["p_contents"] = [_display_text(m.content) for m, _ in batch]
            params["p_payloads"] = [payload for _, payload in batch]
        return params

    def _pg_append_row(
        self,
        conn: Connection,
        params: dict[str, Any],
        user_id: str | None,
        max_messages: int | None,
    ) -> Any:
        """Run the fused append with its guard (see ``_build_statements``); the session's new
        counters, or None when nothing changed."""
        params["p_uid"] = user_id
        params["p_max"] = _NO_LIMIT if max_messages is None else max_messages
        fused = self._pg_append_one if params["p_n"] == 1 else self._pg_append
        return conn.execute(fused, params).first()

    @staticmethod
    def _numbered(batch: list[tuple[Message, str]], next_seq: int) -> list[Message]:
        """The batch as stored: numbered up to ``next_seq`` (the session's counter after it)."""
        first = next_seq - len(batch) + 1
        return [m.with_fields(seq=first + i, status="active") for i, (m, _) in enumerate(batch)]

    def _appended(self, batch: list[tuple[Message, str]], row: Any) -> AppendResult:
        """The result of an append into an existing session, from its counters' new values."""
        return AppendResult(
            self._numbered(batch, row.next_seq),
            version=row.version,
            active_count=row.active_count,
            active_tokens=row.active_tokens,
            system_tokens=row.system_tokens,
            summary_tokens=row.summary_tokens,
        )

    def _append_alone_op(
        self,
        conn: Connection,
        session_id: str,
        user_id: str | None,
        batch: list[tuple[Message, str]],
    ) -> AppendResult | None:
        """PostgreSQL: the append as one guarded statement (run in autocommit); None when the
        guard failed and nothing changed."""
        params = self._append_params(session_id, batch, utcnow())
        row = self._pg_append_row(conn, params, user_id, self.max_messages_per_session)
        return None if row is None else self._appended(batch, row)

    def _append_op(
        self,
        conn: Connection,
        session_id: str,
        user_id: str | None,
        batch: list[tuple[Message, str]],
    ) -> tuple[AppendResult, bool]:
        now = utcnow()
        params = self._append_params(session_id, batch, now)
        n, tokens = params["p_n"], params["p_tokens"]
        if self._postgresql:  # the owner is checked below, the limit applied after
            row = self._pg_append_row(conn, params, None, None)
        elif self._upsert_returns(conn):
            params["p_uid"], params["p_first_version"] = user_id, _first_version()
            row = conn.execute(self._maria_append, params).one()
        elif self._dialect_returns(conn):
            row = conn.execute(self._u_append_returning, params).first()
        else:
            row = None
            if conn.execute(self._u_append, params).rowcount:
                row = conn.execute(self._q_counters, {"p_sid": session_id}).first()
        if row is None:
            version = self._create_session(
                conn,
                session_id,
                user_id,
                now,
                next_seq=n,
                message_count=n,
                active_count=n,
                active_tokens=tokens,
            )
            result = AppendResult(
                self._numbered(batch, n), version=version, active_count=n, active_tokens=tokens
            )
        else:
            self._check_user(conn, session_id, row.user_id, user_id)
            result = self._appended(batch, row)
        if row is None or not self._postgresql:  # else the fused statement inserted them
            self._insert_batch(conn, session_id, result, batch, now)
        limit = self.max_messages_per_session
        if limit is None or result.active_count <= limit:
            return result, False
        result.active_tokens -= self._evict_oldest(conn, session_id, result.active_count - limit)
        result.active_count = limit
        return result, True

    def _insert_batch(
        self,
        conn: Connection,
        session_id: str,
        stored: Sequence[Message],
        batch: list[tuple[Message, str]],
        now: datetime,
    ) -> None:
        conn.execute(
            self._i_messages,
            [
                {
                    "session_id": session_id,
                    "seq": m.seq,
                    "role": m.role,
                    "status": "active",
                    "token_count": m.token_count,
                    "content": _display_text(m.content),
                    "payload": payload,
                    "created_at": now,
                }
                for m, (_, payload) in zip(stored, batch, strict=True)
            ],
        )

    def _evict_oldest(self, conn: Connection, session_id: str, count: int) -> int:
        """Move the ``count`` oldest active messages out of the window (count limit)."""
        m, s = self.tables.messages, self.tables.sessions
        rows = conn.execute(
            select(m.c.seq, m.c.token_count)
            .where(m.c.session_id == session_id, m.c.status == "active")
            .order_by(m.c.seq)
            .limit(count)
        ).all()
        if not rows:
            return 0
        last = rows[-1].seq
        where = and_(m.c.session_id == session_id, m.c.status == "active", m.c.seq <= last)
        if self.keep_history:
            conn.execute(update(m).where(where).values(status="archived"))
        else:
            conn.execute(delete(m).where(where))
        conn.execute(
            update(s)
            .where(s.c.session_id == session_id)
            .values(
                active_count=s.c.active_count - len(rows),
                active_tokens=s.c.active_tokens - sum(r.token_count for r in rows),
                message_count=s.c.message_count - (0 if self.keep_history else len(rows)),
            )
        )
        return sum(r.token_count for r in rows)

    def append(
        self, session_id: str, messages: Message | Iterable[Message], *, user_id: str | None = None
    ) -> AppendResult:
        """Append a batch in one transaction; returns it with ``seq`` and ``token_count`` set."""
        batch = prepare_batch(session_id, messages, self.token_counter)
        validate_optional_id(user_id)
        if not batch:
            return AppendResult()
        if self._postgresql:
            alone = partial(
                self._append_alone_op, session_id=session_id, user_id=user_id, batch=batch
            )
            done = self._run(alone, autocommit=True)
            if done is not None:
                self._after_append(session_id, done, False)
                return done
        op = partial(self._append_op, session_id=session_id, user_id=user_id, batch=batch)
        stored, trimmed = self._run(op)
        self._after_append(session_id, stored, trimmed)
        return stored

    async def aappend(
        self, session_id: str, messages: Message | Iterable[Message], *, user_id: str | None = None
    ) -> AppendResult:
        batch = prepare_batch(session_id, messages, self.token_counter)
        validate_optional_id(user_id)
        if not batch:
            return AppendResult()
        if self._postgresql:
            alone = partial(
                self._append_alone_op, session_id=session_id, user_id=user_id, batch=batch
            )
            done = await self._arun(alone, autocommit=True)
            if done is not None:
                self._after_append(session_id, done, False)
                return done
        op = partial(self._append_op, session_id=session_id, user_id=user_id, batch=batch)
        stored, trimmed = await self._arun(op)
        self._after_append(session_id, stored, trimmed)
        return stored

    def _after_append(self, session_id: str, stored: AppendResult, trimmed: bool) -> None:
        if self.cache is not None:
            if trimmed:
                self.cache.invalidate(session_id)
            else:
                self.cache.extend(session_id, stored.version, stored)

    # -- reads ----------------------------------------------------------------------

    def _window_op(self, conn: Connection, session_id: str, limit: int | None) -> list[Message]:
        if limit is None:
            return self._rows_to_messages(conn.execute(self._q_window, {"p_sid": session_id}))
        if limit == 0:
            return []
        rows = conn.execute(self._q_window_tail, {"p_sid": session_id, "p_limit": limit}).all()
        return self._rows_to_messages(reversed(rows))

    def _cached_tail_op(self, conn: Connection, session_id: str, limit: int) -> list[Message]:
        """The newest ``limit`` messages, from the cache when it holds them at the session's
        current version (the tail query carries the version it saw, as in :meth:`_read_op`).
        Needs no snapshot: each statement stands alone and the versions are compared."""
        assert self.cache is not None
        for _ in range(_READ_ATTEMPTS):
            version = conn.execute(self._q_version, {"p_sid": session_id}).scalar()
            if version is None:
                return []
            cached = self.cache.get_tail(session_id, version, limit)
            if cached is not None:
                return cached
            params = {"p_sid": session_id, "p_limit": limit}
            rows = conn.execute(self._q_tail_versioned, params).all()
            if rows and rows[0].version != version:
                continue  # torn read: another instance committed in between
            tail = self._rows_to_messages(r[:4] for r in reversed(rows))
            if len(rows) < limit:
                self.cache.put(session_id, version, tail)  # the whole window
            else:
                self.cache.put_tail(session_id, version, tail)
            return tail
        raise ConcurrencyError("the session kept changing while it was being read")

    def _state_and_cached(
        self, conn: Connection, session_id: str
    ) -> tuple[SessionState, list[Message] | None]:
        """One statement: the session's record, and its window when that needs no other read
        (no session: empty; cached at the record's version: from the cache); else None."""
        row = conn.execute(self._q_state, {"p_sid": session_id}).first()
        state = self._state_from_row(session_id, row)
        if not state.exists:
            return state, []
        return state, self.cache.get(session_id, state.version) if self.cache else None

    def _read_op(self, conn: Connection, session_id: str) -> SessionSnapshot:
        """Record and window of one version: the window query carries the version it saw,
        and a write committed between the two statements makes us read both again."""
        for _ in range(_READ_ATTEMPTS):
            state, window = self._state_and_cached(conn, session_id)
            if window is not None:
                return SessionSnapshot(state, window)
            rows = conn.execute(self._q_window_versioned, {"p_sid": session_id}).all()
            if rows and rows[0].version != state.version:
                continue  # torn read: another instance committed in between
            window = self._rows_to_messages(r[:4] for r in rows)
            if self.cache is not None:
                self.cache.put(session_id, state.version, window)
            return SessionSnapshot(state, window)
        raise ConcurrencyError("the session kept changing while it was being read")

    def _cached_read_op(self, conn: Connection, session_id: str) -> SessionSnapshot | None:
        """The session in one statement, or None if its window must be read too."""
        state, window = self._state_and_cached(conn, session_id)
        return None if window is None else SessionSnapshot(state, window)

    def _try_cached(self, session_id: str) -> bool:
        """Read a cached session with one statement first (where that saves round trips)?"""
        return self._postgresql and self.cache is not None and self.cache.holds(session_id)

    def read_session(self, session_id: str) -> SessionSnapshot:
        """The session's state and active window (cached windows are version-checked)."""
        validate_id(session_id)
        if self._try_cached(session_id):
            op = partial(self._cached_read_op, session_id=session_id)
            hit = self._run(op, write=False, autocommit=True)
            if hit is not None:
                return hit
        return self._run(lambda c: self._read_op(c, session_id), write=False)

    async def aread_session(self, session_id: str) -> SessionSnapshot:
        validate_id(session_id)
        if self._try_cached(session_id):
            op = partial(self._cached_read_op, session_id=session_id)
            hit = await self._arun(op, write=False, autocommit=True)
            if hit is not None:
                return hit
        return await self._arun(lambda c: self._read_op(c, session_id), write=False)

    def get_window(self, session_id: str, *, limit: int | None = None) -> list[Message]:
        """The active window in order; with ``limit``, only its newest ``limit`` messages."""
        validate_id(session_id)
        limit = check_limit(limit)
        if self.cache is not None and limit is None:
            return self.read_session(session_id).window
        if self.cache is not None and limit:
            op = partial(self._cached_tail_op, session_id=session_id, limit=limit)
            return self._run(op, write=False, autocommit=True)
        return self._run(
            lambda c: self._window_op(c, session_id, limit), write=False, autocommit=True
        )

    async def aget_window(self, session_id: str, *, limit: int | None = None) -> list[Message]:
        validate_id(session_id)
        limit = check_limit(limit)
        if self.cache is not None and limit is None:
            return (await self.aread_session(session_id)).window
        if self.cache is not None and limit:
            op = partial(self._cached_tail_op, session_id=session_id, limit=limit)
            return await self._arun(op, write=False, autocommit=True)
        return await self._arun(
            lambda c: self._window_op(c, session_id, limit), write=False, autocommit=True
        )

    def _history_op(self, conn: Connection, session_id: str) -> list[Message]:
        return self._rows_to_messages(conn.execute(self._q_history, {"p_sid": session_id}))

    def get_history(self, session_id: str) -> list[Message]:
        """Every stored message of the session, archived ones included, with their status."""
        validate_id(session_id)
        return self._run(lambda c: self._history_op(c, session_id), write=False, autocommit=True)

    async def aget_history(self, session_id: str) -> list[Message]:
        validate_id(session_id)
        return await self._arun(
            lambda c: self._history_op(c, session_id), write=False, autocommit=True
        )

    def _state_op(self, conn: Connection, session_id: str) -> SessionState:
        row = conn.execute(self._q_state, {"p_sid": session_id}).first()
        return self._state_from_row(session_id, row)

    def get_session(self, session_id: str) -> SessionState:
        """The session's record: counts, active tokens, version, system message, summary."""
        validate_id(session_id)
        return self._run(lambda c: self._state_op(c, session_id), write=False, autocommit=True)

    async def aget_session(self, session_id: str) -> SessionState:
        validate_id(session_id)
        return await self._arun(
            lambda c: self._state_op(c, session_id), write=False, autocommit=True
        )

    stats = get_session
    astats = aget_session

    def _list_op(
        self, conn: Connection, user_id: str | None, limit: int, after: str | None
    ) -> list[SessionInfo]:
        s = self.tables.sessions
        q = select(
            s.c.session_id,
            s.c.user_id,
            s.c.message_count,
            s.c.active_count,
            s.c.active_tokens,
            s.c.updated_at,
        )
        if user_id is not None:
            q = q.where(s.c.user_id == user_id)
        if after is not None:
            q = q.where(s.c.session_id > after)
        rows = conn.execute(q.order_by(s.c.session_id).limit(limit)).all()
        return [SessionInfo(*row[:5], _aware(row[5])) for row in rows]

    def list_sessions(
        self, *, user_id: str | None = None, limit: int = 100, after: str | None = None
    ) -> list[SessionInfo]:
        """Sessions ordered by id, ``limit`` per page; pass the last id as ``after``."""
        validate_optional_id(user_id)
        limit = check_limit(limit) or 0
        if after is not None:
            validate_id(after, "after")
        if limit == 0:
            return []
        return self._run(lambda c: self._list_op(c, user_id, limit, after), write=False)

    async def alist_sessions(
        self, *, user_id: str | None = None, limit: int = 100, after: str | None = None
    ) -> list[SessionInfo]:
        validate_optional_id(user_id)
        limit = check_limit(limit) or 0
        if after is not None:
            validate_id(after, "after")
        if limit == 0:
            return []
        return await self._arun(lambda c: self._list_op(c, user_id, limit, after), write=False)

    # -- archive, overflow, replace -----------------------------------------------------

    def _leave_window(
        self,
        conn: Connection,
        session_id: str,
        seqs: Sequence[int],
        status: str,
        summary_id: int | None = None,
    ) -> int:
        """Move active messages ``seqs`` (distinct) out of the window; returns how many were
        active. Seqs that are one run of consecutive numbers (the usual overflow) are matched as
        a range, which the window index answers directly instead of filtering every active row."""
        m = self.tables.messages
        moved = 0
        lo, hi = (min(seqs), max(seqs)) if seqs else (0, -1)
        if len(set(seqs)) == len(seqs) == hi - lo + 1 > 0:
            runs: Iterable[Any] = [m.c.seq.between(lo, hi)]
        else:
            runs = (m.c.seq.in_(chunk) for chunk in chunks(seqs))
        for wanted in runs:
            where = and_(m.c.session_id == session_id, m.c.status == "active", wanted)
            stmt: Executable = (
                update(m).where(where).values(status=status, summary_id=summary_id)
                if self.keep_history
                else delete(m).where(where)
            )
            moved += conn.execute(stmt).rowcount
        return moved

    def _archive_op(self, conn: Connection, session_id: str, seqs: list[int]) -> int:
        if self._lock_session(conn, session_id, utcnow()) is None:
            return 0
        m, s = self.tables.messages, self.tables.sessions
        tokens = 0
        active: list[int] = []
        for chunk in chunks(seqs):
            for seq, count in conn.execute(
                select(m.c.seq, m.c.token_count).where(
                    m.c.session_id == session_id, m.c.status == "active", m.c.seq.in_(chunk)
                )
            ):
                active.append(seq)
                tokens += count
        if not active:
            return 0
        self._leave_window(conn, session_id, active, "archived")
        conn.execute(
            update(s)
            .where(s.c.session_id == session_id)
            .values(
                active_count=s.c.active_count - len(active),
                active_tokens=s.c.active_tokens - tokens,
                message_count=s.c.message_count - (0 if self.keep_history else len(active)),
            )
        )
        return len(active)

    def archive(self, session_id: str, seqs: Sequence[int]) -> int:
        """Take messages ``seqs`` out of the active window (kept as history); returns how many."""
        validate_id(session_id)
        wanted = check_seqs(seqs)
        if not wanted:
            return 0
        try:
            return self._run(lambda c: self._archive_op(c, session_id, wanted))
        finally:
            self._invalidate(session_id)

    async def aarchive(self, session_id: str, seqs: Sequence[int]) -> int:
        validate_id(session_id)
        wanted = check_seqs(seqs)
        if not wanted:
            return 0
        try:
            return await self._arun(lambda c: self._archive_op(c, session_id, wanted))
        finally:
            self._invalidate(session_id)

    def _overflow_op(self, conn: Connection, session_id: str, commit: OverflowCommit) -> int:
        """Apply ``commit``; the session's new version, or 0 if the session does not exist.

        One UPDATE locks the session's row and moves its counters; then the summary, the
        evicted messages and the block marks. An evicted message no longer active rolls the
        whole back."""
        seqs = sorted({m.seq for m in commit.evict if m.seq is not None})
        if len(seqs) != len(commit.evict):
            raise ValueError("evicted messages must be stored messages with distinct seq")
        params = {
            "p_sid": session_id,
            "p_now": utcnow(),
            "p_n": len(seqs),
            "p_tokens": sum(m.token_count or 0 for m in commit.evict),
            "p_gone": 0 if self.keep_history else len(seqs),
        }
        if self._dialect_returns(conn):
            row = conn.execute(self._u_evict_returning, params).first()
        elif conn.execute(self._u_evict, params).rowcount:
            row = conn.execute(self._q_lock, {"p_sid": session_id}).first()
        else:
            row = None
        if row is None:
            return 0
        s, su = self.tables.sessions, self.tables.summaries
        summary_id = None
        values: dict[str, Any] = {}
        if commit.summary is not None:
            result = conn.execute(
                insert(su).values(
                    session_id=session_id,
                    content=storable_text(commit.summary),
                    token_count=commit.summary_tokens,
                    through_seq=seqs[-1] if seqs else 0,
                    created_at=utcnow(),
                )
            )
            summary_id = result.inserted_primary_key[0]  # type: ignore[index]
            values["summary_id"] = summary_id
            values["summary_tokens"] = commit.summary_tokens
        if seqs and self._leave_window(conn, session_id, seqs, commit.status, summary_id) != len(
            seqs
        ):
            raise _Conflict()
        if commit.block_marks:
            marks = json.loads(row.block_marks) if row.block_marks else {}
            for block, seq in commit.block_marks.items():
                marks[block] = max(seq, marks.get(block, 0))
            values["block_marks"] = json.dumps(marks, sort_keys=True)
        if values:
            conn.execute(update(s).where(s.c.session_id == session_id).values(**values))
        return int(row.version)

    def _after_overflow(self, session_id: str, commit: OverflowCommit, version: int) -> bool:
        if self.cache is not None:
            if version:
                self.cache.remove(session_id, version, {m.seq for m in commit.evict})
            else:
                self.cache.invalidate(session_id)
        return bool(version)

    def commit_overflow(self, session_id: str, commit: OverflowCommit) -> bool:
        """Apply one overflow atomically; False (nothing changed) if its messages already left."""
        validate_id(session_id)
        try:
            version = self._run(lambda c: self._overflow_op(c, session_id, commit))
        except _Conflict:
            version = 0
        except BaseException:
            self._invalidate(session_id)
            raise
        return self._after_overflow(session_id, commit, version)

    async def acommit_overflow(self, session_id: str, commit: OverflowCommit) -> bool:
        validate_id(session_id)
        try:
            version = await self._arun(lambda c: self._overflow_op(c, session_id, commit))
        except _Conflict:
            version = 0
        except BaseException:
            self._invalidate(session_id)
            raise
        return self._after_overflow(session_id, commit, version)

    def _replace_op(
        self,
        conn: Connection,
        session_id: str,
        user_id: str | None,
        batch: list[tuple[Message, str]],
    ) -> list[Message]:
        now = utcnow()
        self._lock_or_create(conn, session_id, user_id, now)
        m, s = self.tables.messages, self.tables.sessions
        where = and_(m.c.session_id == session_id, m.c.status == "active")
        if self.keep_history:
            conn.execute(update(m).where(where).values(status="archived"))
        else:
            conn.execute(delete(m).where(where))
        conn.execute(
            update(s)
            .where(s.c.session_id == session_id)
            .values(active_count=0, active_tokens=0, summary_id=None, summary_tokens=0)
        )
        if not self.keep_history:
            count = conn.execute(
                select(func.count()).select_from(m).where(m.c.session_id == session_id)
            ).scalar_one()
            conn.execute(update(s).where(s.c.session_id == session_id).values(message_count=count))
        if not batch:
            return []
        return list(self._append_op(conn, session_id, user_id, batch)[0])

    def replace(
        self, session_id: str, messages: Message | Iterable[Message], *, user_id: str | None = None
    ) -> list[Message]:
        """Make ``messages`` the whole active window in one transaction (old window archived)."""
        batch = prepare_batch(session_id, messages, self.token_counter)
        validate_optional_id(user_id)
        try:
            return self._run(lambda c: self._replace_op(c, session_id, user_id, batch))
        finally:
            self._invalidate(session_id)

    async def areplace(
        self, session_id: str, messages: Message | Iterable[Message], *, user_id: str | None = None
    ) -> list[Message]:
        batch = prepare_batch(session_id, messages, self.token_counter)
        validate_optional_id(user_id)
        try:
            return await self._arun(lambda c: self._replace_op(c, session_id, user_id, batch))
        finally:
            self._invalidate(session_id)

    # -- per-session record ------------------------------------------------------------

    def _set_values_op(self, conn: Connection, session_id: str, values: dict[str, Any]) -> None:
        self._lock_or_create(conn, session_id, None, utcnow())
        s = self.tables.sessions
        conn.execute(update(s).where(s.c.session_id == session_id).values(**values))

    def _system_values(self, session_id: str, message: Message | None) -> dict[str, Any]:
        validate_id(session_id)
        if message is None:
            return {"system_message": None, "system_tokens": 0}
        ((prepared, payload),) = prepare_batch(session_id, message, self.token_counter)
        if prepared.role != "system":
            raise ValueError("the session's system message must have role 'system'")
        return {"system_message": payload, "system_tokens": prepared.token_count}

    def set_system_message(self, session_id: str, message: Message | None) -> None:
        """Set (or with None, clear) the session's system message. It is never evicted."""
        values = self._system_values(session_id, message)
        self._run(lambda c: self._set_values_op(c, session_id, values))

    async def aset_system_message(self, session_id: str, message: Message | None) -> None:
        values = self._system_values(session_id, message)
        await self._arun(lambda c: self._set_values_op(c, session_id, values))

    def _block_mark_op(self, conn: Connection, session_id: str, block: str, seq: int) -> None:
        row = self._lock_or_create(conn, session_id, None, utcnow())
        marks = json.loads(row.block_marks) if row.block_marks else {}
        if seq > marks.get(block, 0):
            marks[block] = seq
            s = self.tables.sessions
            conn.execute(
                update(s)
                .where(s.c.session_id == session_id)
                .values(block_marks=json.dumps(marks, sort_keys=True))
            )

    def set_block_mark(self, session_id: str, block: str, seq: int) -> None:
        """Record that long-term block ``block`` has taken the messages up to ``seq``."""
        validate_id(session_id)
        self._run(lambda c: self._block_mark_op(c, session_id, block, seq))

    async def aset_block_mark(self, session_id: str, block: str, seq: int) -> None:
        validate_id(session_id)
        await self._arun(lambda c: self._block_mark_op(c, session_id, block, seq))

    # -- deletion -------------------------------------------------------------------------

    def _delete_sessions(self, conn: Connection, session_ids: Sequence[str]) -> int:
        m, s, su = self.tables.messages, self.tables.sessions, self.tables.summaries
        deleted = 0
        for i in range(0, len(session_ids), CHUNK):
            chunk = session_ids[i : i + CHUNK]
            deleted += conn.execute(delete(s).where(s.c.session_id.in_(chunk))).rowcount
            conn.execute(delete(m).where(m.c.session_id.in_(chunk)))
            conn.execute(delete(su).where(su.c.session_id.in_(chunk)))
        return deleted

    def delete_session(self, session_id: str) -> bool:
        """Delete the session: its messages, summaries and record. True if it existed."""
        validate_id(session_id)
        try:
            return self._run(lambda c: self._delete_sessions(c, [session_id])) > 0
        finally:
            self._invalidate(session_id)

    async def adelete_session(self, session_id: str) -> bool:
        validate_id(session_id)
        try:
            return await self._arun(lambda c: self._delete_sessions(c, [session_id])) > 0
        finally:
            self._invalidate(session_id)

    def _delete_user_op(self, conn: Connection, user_id: str) -> list[str]:
        s = self.tables.sessions
        ids = list(conn.execute(select(s.c.session_id).where(s.c.user_id == user_id)).scalars())
        self._delete_sessions(conn, ids)
        return ids

    def delete_user(self, user_id: str) -> int:
        """Delete every session of ``user_id``; returns how many."""
        validate_id(user_id, "user_id")
        ids = self._run(lambda c: self._delete_user_op(c, user_id))
        for sid in ids:
            self._invalidate(sid)
        return len(ids)

    async def adelete_user(self, user_id: str) -> int:
        validate_id(user_id, "user_id")
        ids = await self._arun(lambda c: self._delete_user_op(c, user_id))
        for sid in ids:
            self._invalidate(sid)
        return len(ids)

    def _invalidate(self, session_id: str) -> None:
        if self.cache is not None:
            self.cache.invalidate(session_id)

    # -- history edits (chat-store primitives: LlamaIndex's AsyncDBChatStore) ---------------

    def _status_where(self, session_id: str, active: bool | None) -> Any:
        m = self.tables.messages
        if active is None:
            return m.c.session_id == session_id
        status = m.c.status == "active" if active else m.c.status != "active"
        return and_(m.c.session_id == session_id, status)

    def _read_messages_op(
        self, conn: Connection, session_id: str, active: bool | None, limit: int | None, offset: int
    ) -> list[Message]:
        m = self.tables.messages
        q = (
            select(m.c.seq, m.c.payload, m.c.token_count, m.c.status)
            .where(self._status_where(session_id, active))
            .order_by(m.c.seq)
        )
        if limit is not None:
            q = q.limit(limit)
        if offset:
            q = q.offset(offset)
        return self._rows_to_messages(conn.execute(q))

    def read_messages(
        self,
        session_id: str,
        *,
        active: bool | None = None,
        limit: int | None = None,
        offset: int = 0,
    ) -> list[Message]:
        """A page of the session's messages in order: all (``active=None``), the active
        window (True) or the archived and summarized rest (False)."""
        validate_id(session_id)
        limit, offset = check_limit(limit), check_limit(offset, "offset") or 0
        if limit == 0:
            return []
        return self._run(
            lambda c: self._read_messages_op(c, session_id, active, limit, offset), write=False
        )

    async def aread_messages(
        self,
        session_id: str,
        *,
        active: bool | None = None,
        limit: int | None = None,
        offset: int = 0,
    ) -> list[Message]:
        validate_id(session_id)
        limit, offset = check_limit(limit), check_limit(offset, "offset") or 0
        if limit == 0:
            return []
        return await self._arun(
            lambda c: self._read_messages_op(c, session_id, active, limit, offset), write=False
        )

    def _append_archived_op(
        self,
        conn: Connection,
        session_id: str,
        user_id: str | None,
        batch: list[tuple[Message, str]],
    ) -> list[Message]:
        now = utcnow()
        self._lock_or_create(conn, session_id, user_id, now)
        s, n = self.tables.sessions, len(batch)
        conn.execute(
            update(s)
            .where(s.c.session_id == session_id)
            .values(next_seq=s.c.next_seq + n, message_count=s.c.message_count + n)
        )
        next_seq = conn.execute(
            select(s.c.next_seq).where(s.c.session_id == session_id)
        ).scalar_one()
        first = next_seq - n + 1
        stored = [m.with_fields(seq=first + i, status="archived") for i, (m, _) in enumerate(batch)]
        conn.execute(
            self._i_messages,
            [
                {
                    "session_id": session_id,
                    "seq": m.seq,
                    "role": m.role,
                    "status": "archived",
                    "token_count": m.token_count,
                    "content": _display_text(m.content),
                    "payload": payload,
                    "created_at": now,
                }
                for m, (_, payload) in zip(stored, batch, strict=True)
            ],
        )
        return stored

    def append_archived(
        self, session_id: str, messages: Message | Iterable[Message], *, user_id: str | None = None
    ) -> list[Message]:
        """Append messages straight to the archived history (never to the active window)."""
        batch = prepare_batch(session_id, messages, self.token_counter)
        validate_optional_id(user_id)
        if not batch:
            return []
        try:
            return self._run(lambda c: self._append_archived_op(c, session_id, user_id, batch))
        finally:
            self._invalidate(session_id)

    async def aappend_archived(
        self, session_id: str, messages: Message | Iterable[Message], *, user_id: str | None = None
    ) -> list[Message]:
        batch = prepare_batch(session_id, messages, self.token_counter)
        validate_optional_id(user_id)
        if not batch:
            return []
        try:
            return await self._arun(
                lambda c: self._append_archived_op(c, session_id, user_id, batch)
            )
        finally:
            self._invalidate(session_id)

    def _delete_messages_op(
        self, conn: Connection, session_id: str, seqs: list[int] | None, active: bool | None
    ) -> int:
        if self._lock_session(conn, session_id, utcnow()) is None:
            return 0
        m, s = self.tables.messages, self.tables.sessions
        where = self._status_where(session_id, active)
        parts = [where] if seqs is None else [and_(where, m.c.seq.in_(c)) for c in chunks(seqs)]
        deleted = active_deleted = active_tokens = 0
        for part in parts:
            for status, count, tokens in conn.execute(
                select(m.c.status, func.count(), func.sum(m.c.token_count))
                .where(part)
                .group_by(m.c.status)
            ):
                deleted += count
                if status == "active":
                    active_deleted += count
                    active_tokens += int(tokens)
            conn.execute(delete(m).where(part))
        if deleted:
            conn.execute(
                update(s)
                .where(s.c.session_id == session_id)
                .values(
                    message_count=s.c.message_count - deleted,
                    active_count=s.c.active_count - active_deleted,
                    active_tokens=s.c.active_tokens - active_tokens,
                )
            )
        return deleted

    def delete_messages(
        self, session_id: str, seqs: Sequence[int] | None = None, *, active: bool | None = None
    ) -> int:
        """Delete messages ``seqs`` (default: all) that match ``active`` (None: any status);
        the session, its system message and summary stay. Returns how many were deleted."""
        validate_id(session_id)
        wanted = None if seqs is None else check_seqs(seqs)
        if wanted == []:
            return 0
        try:
            return self._run(lambda c: self._delete_messages_op(c, session_id, wanted, active))
        finally:
            self._invalidate(session_id)

    async def adelete_messages(
        self, session_id: str, seqs: Sequence[int] | None = None, *, active: bool | None = None
    ) -> int:
        validate_id(session_id)
        wanted = None if seqs is None else check_seqs(seqs)
        if wanted == []:
            return 0
        try:
            return await self._arun(
                lambda c: self._delete_messages_op(c, session_id, wanted, active)
            )
        finally:
            self._invalidate(session_id)

    def _take_oldest_op(
        self, conn: Connection, session_id: str, n: int, delete_them: bool
    ) -> list[Message]:
        if self._lock_session(conn, session_id, utcnow()) is None:
            return []
        m, s = self.tables.messages, self.tables.sessions
        rows = conn.execute(
            select(m.c.seq, m.c.payload, m.c.token_count, m.c.status)
            .where(m.c.session_id == session_id, m.c.status == "active")
            .order_by(m.c.seq)
            .limit(n)
        ).all()
        if not rows:
            return []
        where = and_(m.c.session_id == session_id, m.c.status == "active", m.c.seq <= rows[-1].seq)
        removed = delete_them or not self.keep_history
        if removed:
            conn.execute(delete(m).where(where))
        else:
            conn.execute(update(m).where(where).values(status="archived"))
        conn.execute(
            update(s)
            .where(s.c.session_id == session_id)
            .values(
                active_count=s.c.active_count - len(rows),
                active_tokens=s.c.active_tokens - sum(r.token_count for r in rows),
                message_count=s.c.message_count - (len(rows) if removed else 0),
            )
        )
        return [msg.with_fields(status="archived") for msg in self._rows_to_messages(rows)]

    def take_oldest(self, session_id: str, n: int, *, delete: bool = False) -> list[Message]:
        """Atomically move the ``n`` oldest active messages out of the window (archived, or
        deleted with ``delete=True``) and return them."""
        validate_id(session_id)
        n = check_limit(n, "n") or 0
        if n == 0:
            return []
        try:
            return self._run(lambda c: self._take_oldest_op(c, session_id, n, delete))
        finally:
            self._invalidate(session_id)

    async def atake_oldest(self, session_id: str, n: int, *, delete: bool = False) -> list[Message]:
        validate_id(session_id)
        n = check_limit(n, "n") or 0
        if n == 0:
            return []
        try:
            return await self._arun(lambda c: self._take_oldest_op(c, session_id, n, delete))
        finally:
            self._invalidate(session_id)

    def _rewrite_op(
        self,
        conn: Connection,
        session_id: str,
        user_id: str | None,
        batch: list[tuple[Message, str]],
        status: str,
    ) -> list[Message]:
        self._lock_or_create(conn, session_id, user_id, utcnow())
        m, s, su = self.tables.messages, self.tables.sessions, self.tables.summaries
        conn.execute(delete(m).where(m.c.session_id == session_id))
        conn.execute(delete(su).where(su.c.session_id == session_id))
        conn.execute(
            update(s)
            .where(s.c.session_id == session_id)
            .values(
                message_count=0, active_count=0, active_tokens=0, summary_id=None, summary_tokens=0
            )
        )
        if not batch:
            return []
        if status == "archived":
            return self._append_archived_op(conn, session_id, user_id, batch)
        return list(self._append_op(conn, session_id, user_id, batch)[0])

    def rewrite(
        self,
        session_id: str,
        messages: Message | Iterable[Message],
        *,
        status: str = "active",
        user_id: str | None = None,
    ) -> list[Message]:
        """Replace the session's whole history (every status, summaries too) with ``messages``
        stored as ``status`` ("active" or "archived"), in one transaction."""
        batch = prepare_batch(session_id, messages, self.token_counter)
        validate_optional_id(user_id)
        if status not in ("active", "archived"):
            raise ValueError("status must be 'active' or 'archived'")
        try:
            return self._run(lambda c: self._rewrite_op(c, session_id, user_id, batch, status))
        finally:
            self._invalidate(session_id)

    async def arewrite(
        self,
        session_id: str,
        messages: Message | Iterable[Message],
        *,
        status: str = "active",
        user_id: str | None = None,
    ) -> list[Message]:
        batch = prepare_batch(session_id, messages, self.token_counter)
        validate_optional_id(user_id)
        if status not in ("active", "archived"):
            raise ValueError("status must be 'active' or 'archived'")
        try:
            return await self._arun(
                lambda c: self._rewrite_op(c, session_id, user_id, batch, status)
            )
        finally:
            self._invalidate(session_id)
