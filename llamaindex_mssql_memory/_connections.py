"""Credential-free connection references, and the process-wide registry that resolves them.

Serialized memory (a workflow ``Context.to_dict()``) carries a *reference*, never a
secret: either a name given to :func:`register_connection`, or the database URL with
its password (and password-like query parameters) removed. Resolving a URL reference
takes the password from ``password_env`` or from ``$MSSQL_MEMORY_URL`` when that URL
points at the same place. Stores are shared per (reference, table) within a process,
so a context restored in the same process reuses the same engine and pool.
"""

from __future__ import annotations

import os
import re
import threading
import uuid
from dataclasses import dataclass, replace
from typing import Any

from mssql_memory import AgentMemory, SessionStore, SQLStore
from mssql_memory.defaults import ENV_URL, default_url
from sqlalchemy import Engine
from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import AsyncEngine

__all__ = [
    "Connected",
    "Target",
    "clear_connections",
    "connect",
    "redact_url",
    "register_connection",
    "resolve",
    "unregister_connection",
]

#: What a connection reference can resolve to.
Target = str | URL | Engine | AsyncEngine | SessionStore | AgentMemory

_SECRET_KEYS = re.compile(r"(?i)^(password|passwd|pwd|secret|token|access_token|api_?key)$")
_ODBC_SECRET = re.compile(r"(?i)(^|;)\s*(pwd|password)\s*=\s*(\{[^}]*\}|[^;]*)")


@dataclass(frozen=True)
class Connected:
    """An opened connection: its reference (None: the default URL), store, table, agent."""

    reference: str | None
    store: SessionStore
    table: str
    agent: AgentMemory | None = None


_lock = threading.RLock()
_named: dict[str, Target] = {}
_stores: dict[tuple[Any, str], SessionStore] = {}  # (secret-bearing key, table) -> store
_by_ref: dict[tuple[str, str], SessionStore] = {}  # (reference, table) -> latest store


def redact_url(url: str | URL) -> str:
    """``url`` without its password and password-like query parameters."""
    parsed = make_url(url)
    parsed = parsed._replace(password=None)  # URL.set() treats None as "unchanged"
    parsed = parsed.difference_update_query([k for k in parsed.query if _SECRET_KEYS.match(k)])
    for key, value in parsed.query.items():
        if key.lower() == "odbc_connect":
            values = value if isinstance(value, tuple) else (value,)
            cleaned = [_ODBC_SECRET.sub(r"\1", v) for v in values]
            parsed = parsed.update_query_dict({key: cleaned if len(cleaned) > 1 else cleaned[0]})
    return parsed.render_as_string(hide_password=False)


def is_url(reference: str) -> bool:
    return "://" in reference


def register_connection(name: str, target: Target) -> None:
    """Name a connection so serialized memory can refer to it (``connection=name``).

    ``target`` is a URL (credentials allowed: they stay in this process), an
    ``Engine``/``AsyncEngine``, a store, or an :class:`~mssql_memory.AgentMemory`
    (which also carries the overflow strategy and long-term blocks to restore).
    """
    if not isinstance(name, str) or not name or is_url(name):
        raise ValueError("a connection name is a non-empty str that is not a URL")
    if not isinstance(target, (str, URL, Engine, AsyncEngine, AgentMemory)) and not isinstance(
        target, SessionStore
    ):
        raise TypeError(f"cannot register a {type(target).__name__} as a connection")
    with _lock:
        _named[name] = target
        for key in [k for k in _by_ref if k[0] == name]:
            del _by_ref[key]


def unregister_connection(name: str) -> None:
    """Forget a named connection (stores already built from it stay usable)."""
    with _lock:
        _named.pop(name, None)
        for key in [k for k in _by_ref if k[0] == name]:
            del _by_ref[key]


def clear_connections() -> None:
    """Forget every name and shared store (the stores are not closed). For tests."""
    with _lock:
        _named.clear()
        _stores.clear()
        _by_ref.clear()


def _store_for(key: Any, reference: str, table: str, make: Any) -> SessionStore:
    with _lock:
        store = _stores.get((key, table))
        if store is None:
            store = make()
            _stores[(key, table)] = store
        _by_ref[(reference, table)] = store
        return store


def _store_reference(store: SessionStore) -> str:
    if isinstance(store, SQLStore):
        return redact_url(store.engines.url)
    with _lock:  # process-local: an in-memory store has no URL
        for name, target in _named.items():
            if target is store:
                return name
        name = f"store-{uuid.uuid4().hex[:12]}"
        _named[name] = store
        return name


def _from_target(target: Target, reference: str, table: str) -> Connected:
    if isinstance(target, AgentMemory):
        return Connected(reference, target.store, table, target)
    if isinstance(target, (str, URL)):
        url = make_url(target)
        full = url.render_as_string(hide_password=False)
        store = _store_for(full, reference, table, lambda: SQLStore(url, table_name=table))
        return Connected(reference, store, table)
    if isinstance(target, (Engine, AsyncEngine)):
        store = _store_for(target, reference, table, lambda: SQLStore(target, table_name=table))
        return Connected(reference, store, table)
    return Connected(reference, target, table)


def _fix_table(connected: Connected) -> Connected:
    """A store brings its own table."""
    if isinstance(connected.store, SQLStore):
        connected = replace(connected, table=connected.store.table_name)
    with _lock:
        _by_ref[(connected.reference, connected.table)] = connected.store
    return connected


def connect(connection: Target | None, table: str) -> Connected:
    """Open what a caller passed as ``connection``: its credential-free reference (None for
    the default URL), its store, its table and, if it is one, the AgentMemory."""
    if connection is None:
        url = default_url()
        return replace(_from_target(url, redact_url(url), table), reference=None)
    if isinstance(connection, str) and not is_url(connection):
        return resolve(connection, table)
    if isinstance(connection, (str, URL)):
        reference = redact_url(connection)
    elif isinstance(connection, (Engine, AsyncEngine)):
        reference = redact_url(connection.url)
    elif isinstance(connection, AgentMemory):
        reference = _store_reference(connection.store)
    elif isinstance(connection, SessionStore):
        reference = _store_reference(connection)
    else:
        raise TypeError(
            "connection must be a URL, an Engine, an AsyncEngine, a store, an AgentMemory, "
            f"a registered name or None, not {type(connection).__name__}"
        )
    return _fix_table(_from_target(connection, reference, table))


def resolve(reference: str | None, table: str, *, password_env: str | None = None) -> Connected:
    """Reopen a serialized reference: a registered name, a store this process already
    opened for it, or the URL with its password from ``password_env`` / ``$MSSQL_MEMORY_URL``.
    """
    if reference is None:
        return connect(None, table)
    with _lock:
        cached = _by_ref.get((reference, table))
        target = _named.get(reference)
    if isinstance(target, AgentMemory):
        return _fix_table(Connected(reference, target.store, table, target))
    if cached is not None:
        return Connected(reference, cached, table)
    if target is not None:
        return _fix_table(_from_target(target, reference, table))
    if not is_url(reference):
        raise ValueError(
            f"connection {reference!r} is not registered in this process: call "
            f"llamaindex_mssql_memory.register_connection({reference!r}, ...) at startup"
        )
    url = make_url(reference)
    if password_env is not None:
        password = os.environ.get(password_env)
        if password is None:
            raise ValueError(f"environment variable {password_env} (the password) is not set")
        url = url.set(password=password)
    else:
        configured = os.environ.get(ENV_URL)
        if configured and redact_url(configured) == reference:
            url = make_url(configured)
    return _fix_table(_from_target(url, reference, table))
