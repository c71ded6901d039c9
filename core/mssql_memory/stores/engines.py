"""Engine handling: one store usable from sync and async code.

Given a URL, :class:`Engines` creates the engine for the URL's driver and, on
demand, its twin (``sqlite`` <-> ``sqlite+aiosqlite``, ``postgresql+psycopg``
sync <-> async, ``mysql+pymysql`` <-> ``mysql+aiomysql``, ``mssql+pyodbc`` <->
``mssql+aioodbc``). Given an ``Engine``, async calls run it in a worker thread;
given an ``AsyncEngine``, sync calls use a sync twin built from its URL.
"""

from __future__ import annotations

import asyncio
import importlib.util
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import StaticPool

from ..errors import MissingDependencyError

__all__ = ["Engines", "is_memory_sqlite"]

# backend -> (sync driver, async driver, module the async driver needs)
_TWINS: dict[str, tuple[str, str, str]] = {
    "sqlite": ("pysqlite", "aiosqlite", "aiosqlite"),
    "postgresql": ("psycopg", "psycopg", "psycopg"),
    "mysql": ("pymysql", "aiomysql", "aiomysql"),
    "mariadb": ("pymysql", "aiomysql", "aiomysql"),
    "mssql": ("pyodbc", "aioodbc", "aioodbc"),
}
_ASYNC_DRIVERS = {"aiosqlite", "asyncpg", "psycopg_async", "aiomysql", "asyncmy", "aioodbc"}


def is_memory_sqlite(url: URL) -> bool:
    return url.get_backend_name() == "sqlite" and url.database in (None, "", ":memory:")


def _is_async(url: URL) -> bool:
    try:
        return bool(getattr(url.get_dialect(), "is_async", False))
    except Exception:
        return url.get_driver_name() in _ASYNC_DRIVERS


def _twin_url(url: URL, want_async: bool) -> URL | None:
    twin = _TWINS.get(url.get_backend_name())
    if twin is None:
        return None
    sync_driver, async_driver, module = twin
    if want_async and importlib.util.find_spec(module) is None:
        return None
    if want_async and url.get_backend_name() == "mssql" and url.get_driver_name() != "pyodbc":
        return None  # a pymssql URL names no ODBC driver: aioodbc could not connect with it
    driver = async_driver if want_async else sync_driver
    return url.set(drivername=f"{url.get_backend_name()}+{driver}")


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA busy_timeout = 30000")
    cursor.execute("PRAGMA journal_mode = WAL")
    cursor.close()


_IN_TRANSACTION = 1  # MySQL's SERVER_STATUS_IN_TRANS flag


def _rollback_if_open(dbapi_connection: Any, _record: Any, state: Any) -> None:
    """Pool reset for PyMySQL: ROLLBACK only if a transaction may still be open.

    PyMySQL sends ROLLBACK to the server even when nothing is open, and the pool's
    default reset costs that round trip after every committed transaction. The
    server reports whether a transaction is open in every reply, so a connection
    whose last reply says "none" is already clean; an unknown status still rolls back.
    """
    if state.transaction_was_reset:
        return
    status = getattr(dbapi_connection, "server_status", None)
    if isinstance(status, int) and not status & _IN_TRANSACTION:
        return
    dbapi_connection.rollback()


def _engine_kwargs(url: URL) -> dict[str, Any]:
    backend = url.get_backend_name()
    if backend == "sqlite":
        kwargs: dict[str, Any] = {"connect_args": {"timeout": 30, "check_same_thread": False}}
        if is_memory_sqlite(url):
            kwargs["poolclass"] = StaticPool  # one shared in-memory database
        return kwargs
    # No pre-ping (it costs a round trip per checkout): a dead pooled connection
    # is detected by the statement that uses it, and the operation is retried.
    if _is_pymysql(url):
        return {"pool_reset_on_return": None}  # _rollback_if_open resets instead
    return {}


def _is_pymysql(url: URL) -> bool:
    return url.get_backend_name() in ("mysql", "mariadb") and url.get_driver_name() == "pymysql"


def _with_defaults(url: URL) -> URL:
    if url.get_backend_name() in ("mysql", "mariadb") and "charset" not in url.query:
        url = url.update_query_dict({"charset": "utf8mb4"})
    return url


_EXTRAS = {"mssql": "mssql", "postgresql": "postgres", "mysql": "mysql", "mariadb": "mysql"}


def _create(url: URL, use_async: bool) -> Engine | AsyncEngine:
    url = _with_defaults(url)
    kwargs = _engine_kwargs(url)
    try:
        engine = create_async_engine(url, **kwargs) if use_async else create_engine(url, **kwargs)
    except ImportError as e:
        extra = _EXTRAS.get(url.get_backend_name(), "sqlite")
        hint = (
            " (install the system ODBC library: apt-get install unixodbc)"
            if "odbc" in str(e)
            else ""
        )
        raise MissingDependencyError(
            f"the driver for {url.drivername} cannot be loaded: {e}{hint}; "
            f"pip install 'mssql-agent-memory[{extra}]'"
        ) from e
    sync = engine.sync_engine if isinstance(engine, AsyncEngine) else engine
    if url.get_backend_name() == "sqlite" and not is_memory_sqlite(url):
        event.listen(sync, "connect", _sqlite_pragmas)
    if _is_pymysql(url):
        event.listen(sync.pool, "reset", _rollback_if_open)
    return engine


def _autocommits(engine: Engine | AsyncEngine) -> bool:
    """Whether ``engine`` was built or configured with ``isolation_level="AUTOCOMMIT"``."""
    sync = engine.sync_engine if isinstance(engine, AsyncEngine) else engine
    levels = (
        sync.get_execution_options().get("isolation_level"),
        getattr(sync.dialect, "_on_connect_isolation_level", None),  # create_engine(...)
    )
    return any(str(level).upper() == "AUTOCOMMIT" for level in levels if level)


class Engines:
    """The sync and async engines behind one store (created lazily, disposed together)."""

    def __init__(self, url_or_engine: str | URL | Engine | AsyncEngine) -> None:
        self._sync: Engine | None = None
        self._async: AsyncEngine | None = None
        self._created: list[Engine | AsyncEngine] = []
        self.owned = False
        if isinstance(url_or_engine, (Engine, AsyncEngine)) and _autocommits(url_or_engine):
            raise ValueError(
                "this engine runs in AUTOCOMMIT, so the store's writes could not be atomic: "
                "pass an engine without isolation_level='AUTOCOMMIT' (the store itself skips "
                "the transaction where one statement suffices)"
            )
        if isinstance(url_or_engine, AsyncEngine):
            self._async = url_or_engine
            self.url = url_or_engine.url
        elif isinstance(url_or_engine, Engine):
            self._sync = url_or_engine
            self.url = url_or_engine.url
        elif isinstance(url_or_engine, (str, URL)):
            try:
                self.url = make_url(url_or_engine)
            except Exception as e:
                raise ValueError(f"not a database URL: {e}") from None
            self.owned = True
            if _is_async(self.url):
                self._async = self._make(self.url, use_async=True)  # type: ignore[assignment]
            else:
                self._sync = self._make(self.url, use_async=False)  # type: ignore[assignment]
        else:
            raise TypeError(
                "expected a database URL, an Engine or an AsyncEngine, "
                f"not {type(url_or_engine).__name__}"
            )
        self._async_checked = self._async is not None
        self.memory = is_memory_sqlite(self.url)

    @property
    def dialect(self) -> Any:
        """The SQLAlchemy dialect of the engines (no connection is made)."""
        engine = self._sync or self._async
        assert engine is not None
        return engine.dialect

    @property
    def dialect_name(self) -> str:
        return self.dialect.name

    @property
    def sync(self) -> Engine:
        """The sync engine (a twin built from the async engine's URL if needed)."""
        if self._sync is None:
            twin = None if self.memory else _twin_url(self.url, want_async=False)
            if twin is None:
                raise TypeError(
                    "this store was given an async engine without a sync twin "
                    f"({self.url.drivername}); use the async methods (aappend, aget_window, ...)"
                )
            self._sync = self._make(twin, use_async=False)  # type: ignore[assignment]
        return self._sync  # type: ignore[return-value]

    @property
    def async_engine(self) -> AsyncEngine | None:
        """The async engine, or None when async calls must use a worker thread."""
        if not self._async_checked:
            self._async_checked = True
            if self.owned and not self.memory:
                twin = _twin_url(self.url, want_async=True)
                if twin is not None:
                    self._async = self._make(twin, use_async=True)  # type: ignore[assignment]
        return self._async

    def _make(self, url: URL, *, use_async: bool) -> Engine | AsyncEngine:
        engine = _create(url, use_async)
        self._created.append(engine)
        return engine

    def dispose(self) -> None:
        """Close the pools of the engines this object created (never a caller's engine).

        An async engine needs its event loop to close its connections: from sync
        code with no running loop one is started for it; inside a running loop,
        call :meth:`adispose` instead (here its pool is only dropped).
        """
        for engine in self._created:
            if not isinstance(engine, AsyncEngine):
                engine.dispose()
                continue
            try:
                asyncio.get_running_loop()
            except RuntimeError:
                asyncio.run(engine.dispose())
            else:
                engine.sync_engine.dispose(close=False)

    async def adispose(self) -> None:
        for engine in self._created:
            if isinstance(engine, AsyncEngine):
                await engine.dispose()
            else:
                engine.dispose()
