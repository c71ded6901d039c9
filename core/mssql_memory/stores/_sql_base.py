"""What every SQL-backed store shares: engines, transactions with retries, schema creation.

Operations are functions of a sync ``Connection``. :meth:`SQLBase._run` runs one
in ``engine.begin()``; :meth:`SQLBase._arun` runs it through
``AsyncConnection.run_sync`` (the async driver does the I/O; the event loop is
never blocked) or, with only a sync engine, in a worker thread. Deadlocks,
serialization failures and SQLite's busy lock are retried with backoff;
database errors surface as :class:`~mssql_memory.StoreError` subclasses.
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from contextlib import nullcontext
from datetime import datetime, timezone
from typing import Any, TypeVar

from sqlalchemy import Connection, Engine, MetaData, inspect
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.schema import CreateSchema

from ..errors import ConcurrencyError, StoreError, StoreUnavailableError
from .engines import Engines

__all__ = ["CHUNK", "RetryOperation", "SQLBase", "chunks", "storable_text", "utcnow"]

T = TypeVar("T")


class RetryOperation(Exception):
    """Raised inside an operation to roll it back and run it again (e.g. a creation race)."""


CHUNK = 500  # ids per IN (...) list: SQL Server accepts at most 2100 parameters
_ATTEMPTS = 6


def utcnow() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


def storable_text(text: str) -> str:
    """``text`` for a plain text column: PostgreSQL rejects NUL, so it becomes U+FFFD on every
    database (message payloads are JSON and keep it)."""
    return text.replace("\x00", "\ufffd") if "\x00" in text else text


def chunks(items: Sequence[int]) -> Iterable[Sequence[int]]:
    for i in range(0, len(items), CHUNK):
        yield items[i : i + CHUNK]


_TRANSIENT_CODES = {1205, 1213, 40001, 40197, 40501, 40613, 49918, 49919, 49920}
_TRANSIENT_STATES = {"40001", "40P01", "55P03", "HYT00"}


def _retryable(error: sa_exc.DBAPIError, committing: bool) -> bool:
    """Safe to run the whole operation again?

    Deadlocks, serialization failures and SQLite's busy lock always are (the
    database rolled the transaction back). A lost connection is only before the
    COMMIT was sent: after it, the commit may have happened, and an append run
    twice would store its messages twice — that error is raised instead.
    """
    if _is_transient(error):
        return True
    return not committing and (error.connection_invalidated or _is_unavailable(error))


def _is_transient(error: sa_exc.DBAPIError) -> bool:
    """Deadlocks, serialization failures and SQLite's busy lock: safe to retry."""
    orig = error.orig
    if getattr(orig, "sqlstate", None) in _TRANSIENT_STATES:
        return True
    args = getattr(orig, "args", ())
    if args and isinstance(args[0], int) and args[0] in _TRANSIENT_CODES:
        return True
    if args and isinstance(args[0], str) and args[0][:5] in _TRANSIENT_STATES:
        return True
    text = str(orig).lower()
    return "database is locked" in text or "deadlock" in text


# PostgreSQL: admin / crash shutdown, "the database system is starting up / shutting down"
_UNAVAILABLE_STATES = {"57P01", "57P02", "57P03"}


def _is_unavailable(error: sa_exc.DBAPIError) -> bool:
    if error.connection_invalidated:
        return True
    if getattr(error.orig, "sqlstate", None) in _UNAVAILABLE_STATES:
        return True
    text = str(error.orig).lower()
    return any(
        s in text
        for s in (
            "connection refused",
            "could not connect",
            "can't connect",
            "server closed the connection",
            "connection is closed",
            "lost connection",
            "terminating connection",
            "the database system is",  # PostgreSQL restarting: shutting down, starting up
            "server shutdown in progress",  # MySQL / MariaDB
            "server has gone away",
            "unable to open database",
            "login timeout",
        )
    )


def _backoff(attempt: int) -> float:
    return 0.01 * (2**attempt) * (0.5 + random.random())


def _wrap(error: Exception) -> StoreError:
    if isinstance(error, sa_exc.DBAPIError) and _is_unavailable(error):
        return StoreUnavailableError(f"database unavailable: {error.orig}")
    if isinstance(error, sa_exc.DBAPIError):
        return StoreError(f"database error: {error.orig}")
    return StoreError(f"database error: {error}")


class SQLBase:
    """Engines, transactions and schema management for a set of tables in ``metadata``."""

    def __init__(
        self,
        url_or_engine: str | URL | Engine | AsyncEngine | Engines,
        metadata: MetaData,
        *,
        schema: str | None = None,
        auto_create: bool = True,
    ) -> None:
        self.engines = (
            url_or_engine if isinstance(url_or_engine, Engines) else Engines(url_or_engine)
        )
        self._metadata = metadata
        self.schema = schema
        self.auto_create = auto_create
        self._schema_ready = False
        self._check_names()
        self._memory_lock = threading.RLock() if self.engines.memory else None
        # PostgreSQL reads at READ COMMITTED see a new snapshot per statement; a read of the
        # session row then its window could straddle a commit. REPEATABLE READ gives the whole
        # read one snapshot (read-only transactions never fail there). InnoDB's default already
        # does; SQLite reads in one transaction are consistent. Operations whose statements
        # stand alone run in autocommit there (see _run).
        self._postgresql = self.engines.dialect.name == "postgresql"

    def _check_names(self) -> None:
        """Reject names this database cannot hold, before any SQL runs."""
        dialect = self.engines.dialect
        if self.schema is not None and dialect.name == "sqlite":
            raise ValueError("SQLite has no schemas: leave schema=None (or attach a database)")
        limit = dialect.max_identifier_length or 128
        for table in self._metadata.tables.values():
            names = [table.name] + [i.name for i in table.indexes if i.name]
            names += [c.name for c in table.constraints if isinstance(c.name, str)]
            for name in names:
                if len(name) > limit:
                    raise ValueError(
                        f"{name!r} is {len(name)} characters long; {dialect.name} allows "
                        f"{limit}: choose a shorter table name"
                    )
                if dialect.name == "sqlite" and name.lower().startswith("sqlite_"):
                    raise ValueError(
                        f"{name!r}: SQLite reserves names starting with 'sqlite_'; "
                        "choose another table name"
                    )

    @property
    def metadata(self) -> MetaData:
        """The tables' metadata, for Alembic (``target_metadata``) or ``create_all``."""
        return self._metadata

    # -- running operations ---------------------------------------------------

    def _dialect_returns(self, conn: Connection) -> bool:
        return bool(conn.dialect.update_returning)

    def _options(self, write: bool, autocommit: bool) -> dict[str, Any] | None:
        """How to run an operation on this database: ``None`` in a transaction begun and
        committed here; else on a plain connection with these execution options."""
        if self._postgresql and autocommit:
            return {"isolation_level": "AUTOCOMMIT"}
        if write:
            return None
        return {"isolation_level": "REPEATABLE READ"} if self._postgresql else {}

    def _run(
        self, op: Callable[[Connection], T], *, write: bool = True, autocommit: bool = False
    ) -> T:
        """Run ``op`` in one transaction; retry deadlocks, races and stale connections.

        ``autocommit``: each of the op's statements stands alone (one statement, or reads that
        check each other's session version); on PostgreSQL the op then runs outside a
        transaction, saving the BEGIN and COMMIT/ROLLBACK round trips; a write so run commits
        with its statement. Elsewhere the flag changes nothing.

        Connections are not pinged before use: a connection found dead runs the
        operation again on a fresh one (before COMMIT only, see :func:`_retryable`).
        """
        self._ensure_schema()
        options = self._options(write, autocommit)
        for attempt in range(_ATTEMPTS):
            committing = False
            try:
                if self._memory_lock is not None:
                    with self._memory_lock, self.engines.sync.begin() as conn:
                        result = op(conn)
                        committing = True
                    return result
                if options is not None:
                    with self.engines.sync.connect() as conn:
                        if options:
                            conn.execution_options(**options)
                        # a write in autocommit commits with its statement: a connection lost
                        # from here on leaves it unknown whether it did (as during a COMMIT)
                        committing = write
                        return op(conn)
                with self.engines.sync.begin() as conn:
                    result = op(conn)
                    committing = True
                return result
            except RetryOperation:
                continue
            except sa_exc.DBAPIError as e:
                if attempt + 1 < _ATTEMPTS and _retryable(e, committing):
                    time.sleep(_backoff(attempt))
                    continue
                raise _wrap(e) from e
            except sa_exc.SQLAlchemyError as e:
                raise _wrap(e) from e
        raise ConcurrencyError("could not complete the operation after repeated conflicts")

    async def _arun(
        self, op: Callable[[Connection], T], *, write: bool = True, autocommit: bool = False
    ) -> T:
        """The async twin of :meth:`_run` (native async when an async engine exists)."""
        engine = self.engines.async_engine
        if engine is None:
            return await asyncio.to_thread(self._run, op, write=write, autocommit=autocommit)
        await self._aensure_schema(engine)
        options = self._options(write, autocommit)
        for attempt in range(_ATTEMPTS):
            committing = False
            try:
                if options is not None:
                    async with engine.connect() as aconn:
                        if options:
                            await aconn.execution_options(**options)
                        committing = write  # as in _run
                        return await aconn.run_sync(op)
                async with engine.begin() as aconn:
                    result = await aconn.run_sync(op)
                    committing = True
                return result
            except RetryOperation:
                continue
            except sa_exc.DBAPIError as e:
                if attempt + 1 < _ATTEMPTS and _retryable(e, committing):
                    await asyncio.sleep(_backoff(attempt))
                    continue
                raise _wrap(e) from e
            except sa_exc.SQLAlchemyError as e:
                raise _wrap(e) from e
        raise ConcurrencyError("could not complete the operation after repeated conflicts")

    # -- schema -----------------------------------------------------------------

    def _create_schema_op(self, conn: Connection) -> None:
        sqlite = conn.dialect.name == "sqlite"
        if self.schema and not sqlite and not inspect(conn).has_schema(self.schema):
            conn.execute(CreateSchema(self.schema))
        self.metadata.create_all(conn, checkfirst=True)

    def _create_with_retry(self, run: Callable[[], None]) -> None:
        for attempt in range(5):
            try:
                run()
                self._schema_ready = True
                return
            except sa_exc.SQLAlchemyError as e:
                # another process created the same objects between our check and create
                if attempt == 4:
                    raise _wrap(e) from e
                time.sleep(0.05 * (attempt + 1) * (0.5 + random.random()))

    def create_schema(self) -> None:
        """Create the tables (and the schema, if named) unless they exist. Idempotent, race-safe."""

        def run() -> None:
            # in-memory SQLite: one connection shared by every thread, behind the lock
            with self._memory_lock or nullcontext(), self.engines.sync.begin() as conn:
                self._create_schema_op(conn)

        self._create_with_retry(run)

    async def acreate_schema(self) -> None:
        engine = self.engines.async_engine
        if engine is None:
            await asyncio.to_thread(self.create_schema)
            return
        for attempt in range(5):
            try:
                async with engine.begin() as conn:
                    await conn.run_sync(self._create_schema_op)
                self._schema_ready = True
                return
            except sa_exc.SQLAlchemyError as e:
                if attempt == 4:
                    raise _wrap(e) from e
                await asyncio.sleep(0.05 * (attempt + 1) * (0.5 + random.random()))

    def _ensure_schema(self) -> None:
        if not self._schema_ready and self.auto_create:
            self.create_schema()

    async def _aensure_schema(self, engine: AsyncEngine) -> None:
        if not self._schema_ready and self.auto_create:
            await self.acreate_schema()

    def drop_schema(self) -> None:
        """Drop this store's tables (not the schema), destroying every message. For tests/tools."""
        with self.engines.sync.begin() as conn:
            self.metadata.drop_all(conn, checkfirst=True)
        self._schema_ready = False

    async def adrop_schema(self) -> None:
        engine = self.engines.async_engine
        if engine is None:
            await asyncio.to_thread(self.drop_schema)
            return
        async with engine.begin() as conn:
            await conn.run_sync(lambda c: self.metadata.drop_all(c, checkfirst=True))
        self._schema_ready = False

    def close(self) -> None:
        """Dispose of the engines this store created (a caller's engine is left alone)."""
        self.engines.dispose()

    async def aclose(self) -> None:
        await self.engines.adispose()
