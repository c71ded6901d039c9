"""Shared fixtures: database backends and store factories.

A server backend that cannot be reached is skipped with the reason, unless the
environment declares it present (``EXPECT_POSTGRES=1``, ``EXPECT_MARIADB=1``,
``EXPECT_MSSQL=1``, as CI does): then the test fails instead. SQL Server comes
from ``MSSQL_URL`` or, when a Docker engine answers, from a testcontainers
``SqlServerContainer`` started once per session. ``pgvector`` (PostgreSQL with
the vector extension) comes from ``PGVECTOR_URL`` or a private server started
from the ``pgserver`` package (``EXPECT_PGVECTOR=1`` makes its absence fail).

Every store gets its own table (``t_<10 hex digits>``), dropped at teardown;
SQLite files live under pytest's temporary directories.
"""

from __future__ import annotations

import os
import tempfile
import uuid
import warnings
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from mssql_memory import InMemoryStore, SQLStore
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine

SQL_BACKENDS = ("sqlite", "postgresql", "mariadb", "mssql")
ALL_BACKENDS = ("memory", *SQL_BACKENDS)
SERVER_BACKENDS = ("postgresql", "mariadb", "mssql")
#: Looked up by name only (not part of the "every backend" parameter lists).
EXTRA_BACKENDS = ("pgvector",)

_DEFAULT_URLS = {
    "postgresql": ("POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"),
    "mariadb": ("MARIADB_URL", "mysql+pymysql://root@127.0.0.1:3306/test"),
}
_EXPECT = {
    "postgresql": "EXPECT_POSTGRES",
    "mariadb": "EXPECT_MARIADB",
    "mssql": "EXPECT_MSSQL",
    "pgvector": "EXPECT_PGVECTOR",
}
_CONNECT_ARGS = {
    "postgresql": {"connect_timeout": 5},
    "mysql": {"connect_timeout": 5},
    "mariadb": {"connect_timeout": 5},
}
# the async driver SQLStore pairs with each backend's sync driver
_ASYNC_DRIVERS = {
    "sqlite": "sqlite+aiosqlite",
    "postgresql": "postgresql+psycopg_async",
    "mysql": "mysql+aiomysql",
    "mariadb": "mysql+aiomysql",
}
_DEFAULT_MEMORY_STORE = {"max_messages_per_session": None, "keep_history": True}


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() not in ("", "0", "false", "no")


def backend_params(backends: tuple[str, ...] = ALL_BACKENDS) -> list[Any]:
    """``pytest.param`` for each backend, marked ``integration`` (servers) and ``mssql``."""
    params = []
    for name in backends:
        marks = []
        if name in SERVER_BACKENDS:
            marks.append(pytest.mark.integration)
        if name == "mssql":
            marks.append(pytest.mark.mssql)
        params.append(pytest.param(name, marks=marks, id=name))
    return params


def unique_table() -> str:
    """A table name no other test uses."""
    return f"t_{uuid.uuid4().hex[:10]}"


def async_url(url: str) -> str | None:
    """``url`` with the async driver SQLStore pairs with its backend, or None if there is none."""
    parsed = make_url(url)
    backend = parsed.get_backend_name()
    if backend == "mssql":
        if parsed.get_driver_name() != "pyodbc":
            return None
        driver = "mssql+aioodbc"
    else:
        driver = _ASYNC_DRIVERS[backend]
    return parsed.set(drivername=driver).render_as_string(hide_password=False)


def _probe(url: str) -> str | None:
    """None if ``url`` answers ``SELECT 1``, else why not."""
    backend = make_url(url).get_backend_name()
    engine = create_engine(url, connect_args=_CONNECT_ARGS.get(backend, {}))
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        return None
    except Exception as e:
        return f"{type(e).__name__}: {str(e).splitlines()[0]}"
    finally:
        engine.dispose()


def _docker_answers() -> bool:
    try:
        import docker

        client = docker.from_env(timeout=3)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except Exception:
        return False


class BackendURLs(Mapping[str, str]):
    """Backend name -> database URL, resolved on first use.

    Looking up a backend that is not available skips the calling test, or
    fails it when the environment declares the backend present.
    """

    def __init__(self, tmp_dir: Path) -> None:
        self._tmp_dir = tmp_dir
        self._resolved: dict[str, str] = {}
        self._missing: dict[str, str] = {}
        self._containers: list[Any] = []

    def __getitem__(self, backend: str) -> str:
        if backend not in SQL_BACKENDS and backend not in EXTRA_BACKENDS:
            raise KeyError(backend)
        if backend in self._resolved:
            return self._resolved[backend]
        if backend not in self._missing:
            try:
                self._resolved[backend] = self._resolve(backend)
                return self._resolved[backend]
            except _Unavailable as e:
                self._missing[backend] = str(e)
        reason = self._missing[backend]
        if backend in _EXPECT and _env_flag(_EXPECT[backend]):
            pytest.fail(
                f"{backend} is declared present ({_EXPECT[backend]}=1) but unavailable: {reason}",
                pytrace=False,
            )
        pytest.skip(f"{backend} unavailable: {reason}")

    def __iter__(self) -> Iterator[str]:
        return iter(SQL_BACKENDS)

    def __len__(self) -> int:
        return len(SQL_BACKENDS)

    def _resolve(self, backend: str) -> str:
        if backend == "sqlite":
            return f"sqlite:///{self._tmp_dir / 'stores.db'}"
        if backend == "mssql":
            return self._mssql()
        if backend == "pgvector":
            return self._pgvector()
        env, default = _DEFAULT_URLS[backend]
        url = os.environ.get(env, default)
        error = _probe(url)
        if error is not None:
            shown = make_url(url).render_as_string(hide_password=True)
            raise _Unavailable(f"{shown} does not answer ({error}); set {env} to point elsewhere")
        return url

    def _mssql(self) -> str:
        url = os.environ.get("MSSQL_URL")
        if url:
            error = _probe(url)
            if error is not None:
                raise _Unavailable(f"MSSQL_URL does not answer ({error})")
            return url
        if not _docker_answers():
            raise _Unavailable("no SQL Server: set MSSQL_URL or run a Docker engine")
        try:
            from testcontainers.community.mssql import SqlServerContainer
        except ImportError:  # testcontainers < 4.9
            from testcontainers.mssql import SqlServerContainer
        container = SqlServerContainer("mcr.microsoft.com/mssql/server:2022-latest")
        try:
            container.start()
        except Exception as e:
            raise _Unavailable(f"could not start a SQL Server container: {e}") from e
        self._containers.append(container)
        return container.get_connection_url()

    def _pgvector(self) -> str:
        url = os.environ.get("PGVECTOR_URL")
        if not url:
            try:
                with warnings.catch_warnings():  # platformdirs: XDG_RUNTIME_DIR is not set
                    warnings.simplefilter("ignore")
                    import pgserver
            except ImportError:
                raise _Unavailable("set PGVECTOR_URL or install pgserver (dev extra)") from None
            # not under pytest's directories: pgserver runs PostgreSQL as another user when
            # we are root, and pytest's directories are private to us
            data = tempfile.mkdtemp(prefix="mssql-memory-pgvector-")
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    server = pgserver.get_server(data, cleanup_mode="delete")
            except Exception as e:
                raise _Unavailable(f"pgserver could not start PostgreSQL: {e}") from e
            self._containers.append(server)
            url = f"postgresql+psycopg://postgres@/postgres?host={data}"
        error = _probe(url)
        if error is not None:
            raise _Unavailable(f"the pgvector database does not answer ({error})")
        engine = create_engine(url)
        try:
            with engine.begin() as conn:
                conn.execute(text("CREATE EXTENSION IF NOT EXISTS vector"))
        except Exception as e:
            raise _Unavailable(f"no pgvector extension: {str(e).splitlines()[0]}") from e
        finally:
            engine.dispose()
        return url

    def close(self) -> None:
        for container in self._containers:
            if hasattr(container, "cleanup"):
                container.cleanup()  # a pgserver PostgreSQL
            else:
                container.stop()
        self._containers.clear()


class _Unavailable(Exception):
    pass


@pytest.fixture(scope="session")
def backend_urls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BackendURLs]:
    """Backend name -> URL (``sqlite``, ``postgresql``, ``mariadb``, ``mssql``), probed lazily."""
    urls = BackendURLs(tmp_path_factory.mktemp("sqlite"))
    yield urls
    urls.close()


@pytest.fixture
def sqlite_url(backend_urls: BackendURLs) -> str:
    return backend_urls["sqlite"]


@pytest.fixture
def postgresql_url(backend_urls: BackendURLs) -> str:
    return backend_urls["postgresql"]


@pytest.fixture
def mariadb_url(backend_urls: BackendURLs) -> str:
    return backend_urls["mariadb"]


@pytest.fixture
def mssql_url(backend_urls: BackendURLs) -> str:
    return backend_urls["mssql"]


StoreFactory = Callable[..., Any]


@pytest.fixture
async def make_store(backend_urls: BackendURLs) -> Any:
    """``make_store(backend, **kwargs)``: an InMemoryStore (``"memory"``) or a SQLStore on a
    table of its own, dropped at teardown. ``table_name`` may be given to share a table, ``url``
    to use another database. The factory is sync; teardown runs in the test's event loop, so
    async pools a test opened (aappend, ...) are closed where they were opened."""
    stores: list[SQLStore] = []

    def make(backend: str, **kwargs: Any) -> InMemoryStore | SQLStore:
        if backend == "memory":
            return InMemoryStore(**{**_DEFAULT_MEMORY_STORE, **kwargs})
        url = kwargs.pop("url", None) or backend_urls[backend]
        kwargs.setdefault("table_name", unique_table())
        store = SQLStore(url, **kwargs)
        stores.append(store)
        return store

    yield make
    for store in reversed(stores):
        try:
            store.drop_schema()
        finally:
            await store.aclose()


@pytest.fixture
async def amake_store(backend_urls: BackendURLs) -> Any:
    """Like ``make_store`` for async-driven SQL stores, closed inside the test's event loop.

    ``flavor="async-url"`` builds the store from the backend's async-driver URL,
    ``flavor="async-engine"`` from an ``AsyncEngine`` the fixture owns, and
    ``flavor="url"`` from the sync URL (async calls then use the store's async twin).
    """
    created: list[tuple[SQLStore, Any]] = []

    def make(backend: str, *, flavor: str = "async-url", **kwargs: Any) -> SQLStore:
        url = backend_urls[backend]
        kwargs.setdefault("table_name", unique_table())
        engine = None
        if flavor == "url":
            target: Any = url
        else:
            target = async_url(url)
            if target is None:
                pytest.skip(f"no async driver pairs with {make_url(url).drivername}")
            if flavor == "async-engine":
                engine = target = create_async_engine(target)
            elif flavor != "async-url":
                raise ValueError(f"unknown flavor {flavor!r}")
        store = SQLStore(target, **kwargs)
        created.append((store, engine))
        return store

    yield make
    for store, engine in reversed(created):
        try:
            await store.adrop_schema()
        finally:
            await store.aclose()
            if engine is not None:
                await engine.dispose()


@pytest.fixture(params=backend_params())
def backend(request: pytest.FixtureRequest, backend_urls: BackendURLs) -> str:
    """Each store backend in turn: memory, sqlite, postgresql, mariadb, mssql."""
    if request.param != "memory":
        backend_urls[request.param]  # skip (or fail) here when it is unavailable
    return request.param


@pytest.fixture
def store(backend: str, make_store: StoreFactory) -> InMemoryStore | SQLStore:
    """A fresh, empty store on each backend (SQL stores: default settings, own table)."""
    return make_store(backend)


@pytest.fixture(params=backend_params(SQL_BACKENDS))
def sql_backend(request: pytest.FixtureRequest, backend_urls: BackendURLs) -> str:
    """Each SQL backend in turn: sqlite, postgresql, mariadb, mssql."""
    backend_urls[request.param]
    return request.param
