"""This library against its peers and the raw driver: append, context read, turns, concurrency.

    python -m benchmarks.bench_peers [--backends sqlite,postgresql,mariadb] [--quick]
        [--out benchmarks/results/peers.md] [--plot benchmarks/results/w3.png]

Eight systems, on each backend, each in its own tables (SQLite: its own file):

- ``raw``: the raw DBAPI driver (sqlite3 / psycopg / pymysql; aiosqlite / psycopg
  async / aiomysql for the async run) on a copy of the store's messages table,
  one kept-open connection, one statement and a commit per operation;
- ours: ``store`` (``SQLStore``), ``agent`` (``AgentMemory``, Trim overflow),
  ``lc-adapter`` (``MSSQLChatMessageHistory``), ``li-adapter`` (``MSSQLMemory``);
- peers: ``lc-sql`` (langchain-community ``SQLChatMessageHistory`` with
  ``trim_messages``, counted with the same tiktoken counter), ``li-store``
  (LlamaIndex ``SQLAlchemyChatStore``), ``li-memory`` (LlamaIndex ``Memory`` on it).

Workloads, every one with the systems alternating (rounds, never blocks):

- W1: append one message to a session holding 100 / 1,000 / 10,000 messages;
- W2: read the context for a turn (4,000-token budget) from the same sessions;
- W3: a turn (context read + user append + assistant append) as one session grows
  from 0 to 2,000 messages, timed at 100 / 500 / 1,000 / 2,000;
- W4: turns from 8 threads (sync API) and 64 asyncio tasks (async API) over 16
  sessions, then a check that no message was lost, duplicated or reordered.

See benchmarks/README.md ("Peers") for what each system does in each workload.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import re
import sys
import threading
import time
import warnings
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable, Iterable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from mssql_memory import AgentMemory, Message, SQLStore
from mssql_memory.stores import build_tables
from mssql_memory.tokens import default_token_counter
from sqlalchemy import Engine, create_engine, event, inspect, text
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from .common import (
    BACKENDS,
    Backend,
    RawDB,
    Stats,
    command_line,
    environment_line,
    fmt_ms,
    interleave_capped,
    log,
    markdown_table,
    parse_list,
    probe,
    resolve_backends,
    summarize,
    unique_name,
    utcnow,
    words,
    workdir,
    write_report,
)

TOKEN_LIMIT = 4000
WINDOW_LIMIT = 200  # rows a tail query fetches before the token cut (>= 4,000 / 25 tokens)
BATCH = 500  # messages per untimed fill call
RESULTS = Path(__file__).parent / "results"
DEFAULT_OUT = RESULTS / "peers.md"

RAW = "raw"
OURS = ("store", "agent", "lc-adapter", "li-adapter")
PEERS = ("lc-sql", "li-store", "li-memory")
SYSTEMS = (RAW, *OURS, *PEERS)
DESCRIPTION = {
    RAW: "raw DBAPI driver, one connection (W4: 8), store's table",
    "store": "ours: SQLStore",
    "agent": "ours: AgentMemory (Trim)",
    "lc-adapter": "ours: MSSQLChatMessageHistory",
    "li-adapter": "ours: MSSQLMemory",
    "lc-sql": "LangChain SQLChatMessageHistory + trim_messages",
    "li-store": "LlamaIndex SQLAlchemyChatStore",
    "li-memory": "LlamaIndex Memory on SQLAlchemyChatStore",
}
W1, W2, W3 = "W1 append", "W2 context read", "W3 turn"
SYNC, ASYNC = "8 threads (sync)", "64 tasks (async)"
_TAG = re.compile(r"^\[w(\d+) t(\d+) ([ua])\]")
#: errors that mean the server restarted or went away: the backend's figures are discarded
_SERVER_GONE = re.compile(
    r"AdminShutdown|terminating connection|connection refused|connection is closed|"
    r"server closed the connection|lost connection|shutting down|starting up|"
    r"database unavailable|can't connect",
    re.IGNORECASE,
)


def _short(error: BaseException) -> str:
    line = f"{type(error).__name__}: {error}".splitlines()[0]
    return line if len(line) <= 160 else line[:157] + "..."


def fit(tokens_newest_first: Iterable[int], budget: int = TOKEN_LIMIT) -> int:
    """How many of the newest messages fit ``budget`` tokens (the client-side window cut)."""
    total = count = 0
    for tokens in tokens_newest_first:
        if total + tokens > budget:
            break
        total += tokens
        count += 1
    return count


@dataclass
class Settings:
    sizes: Sequence[int] = (100, 1000, 10000)
    repeat: int = 60  # timed calls per system and W1/W2 cell
    cell_seconds: float = 4.0  # a slow system leaves a cell's rotation after this much
    w3_points: Sequence[int] = (100, 500, 1000, 2000)
    w3_turns: int = 30  # timed turns ending at each W3 point
    w4_sessions: int = 16
    w4_turns: int = 200  # per session
    w4_rounds: int = 3
    w4_seconds: float = 8.0  # per system and mode, over all rounds
    warmup: int = 2
    round_size: int = 3


QUICK = Settings(
    sizes=(20, 100),
    repeat=5,
    cell_seconds=1.0,
    w3_points=(20, 60),
    w3_turns=4,
    w4_sessions=16,
    w4_turns=4,
    w4_rounds=2,
    w4_seconds=4.0,
    warmup=1,
)


# -- environment shared by the systems of one backend ---------------------------------


class Env:
    """One backend's event loop, token counter and cleanup stack."""

    def __init__(self, backend: Backend, stack: ExitStack) -> None:
        self.backend = backend
        self.name = backend.name
        self.stack = stack
        self.loop = asyncio.new_event_loop()
        stack.callback(self.loop.close)
        self.counter = default_token_counter()

    def run(self, awaitable: Awaitable[Any]) -> Any:
        return self.loop.run_until_complete(awaitable)

    def url(self, tag: str) -> URL:
        return self.backend.url_for(tag)

    def async_url(self, tag: str) -> URL:
        url = self.url(tag)
        driver = {"sqlite": "aiosqlite", "postgresql": "psycopg", "mysql": "aiomysql"}
        backend = url.get_backend_name()
        backend = "mysql" if backend == "mariadb" else backend
        return url.set(drivername=f"{backend}+{driver[backend]}")

    def tokens(self, role: str, content: str) -> int:
        """Tokens of a plain chat message, as the library counts them (3 + role + content)."""
        return 3 + self.counter.count_text(role) + self.counter.count_text(content)

    def drop_table(self, url: URL, table: str) -> None:
        """Drop a peer's table, never waiting long for a lock (a hung writer may hold one)."""
        if url.get_backend_name() == "sqlite" and not self.backend.shared_file:
            return  # the file goes with the temporary directory
        args: dict[str, Any] = {}
        if url.get_backend_name() == "postgresql":
            args = {"options": "-c lock_timeout=5000"}
        engine = create_engine(url, poolclass=NullPool, connect_args=args)
        try:
            with engine.begin() as conn:
                if url.get_backend_name() in ("mysql", "mariadb"):
                    conn.execute(text("SET SESSION lock_wait_timeout = 5"))
                if inspect(conn).has_table(table):
                    conn.execute(text(f"DROP TABLE {table}"))
        except Exception as e:
            log(f"{self.name}: could not drop {table}: {_short(e)}")
        finally:
            engine.dispose()


class Unavailable(Exception):
    """A system cannot run on this backend (the reason is reported)."""


# -- the systems ----------------------------------------------------------------------


class System:
    """One system's operations. ``worker`` is the W4 writer's index (raw uses it to pick a
    connection); every other system ignores it."""

    name = ""
    no_sync: str | None = None  # why W4's thread run is impossible
    no_async: str | None = None  # why W4's asyncio run is impossible

    def __init__(self, env: Env) -> None:
        self.env = env
        self.stack = ExitStack()
        self.length: Counter[str] = Counter()  # messages per session (what this run added)

    def setup(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        self.stack.close()

    def engines(self) -> list[Engine]:
        """Sync engines whose statements are counted (empty: not counted)."""
        return []

    # sync operations (W1-W3 and W4 threads)
    def fill(self, sid: str, batch: list[tuple[str, str]]) -> None:
        raise NotImplementedError

    def append(self, sid: str, role: str, content: str, worker: int = 0) -> None:
        raise NotImplementedError

    def context(self, sid: str, worker: int = 0) -> int:
        """Read the context for a turn; returns how many messages it holds."""
        raise NotImplementedError

    def history(self, sid: str) -> list[str]:
        """Every stored message's content, in the system's own order."""
        raise NotImplementedError

    # async operations (W4 tasks)
    async def aappend(self, sid: str, role: str, content: str, worker: int = 0) -> None:
        raise NotImplementedError

    async def acontext(self, sid: str, worker: int = 0) -> int:
        raise NotImplementedError

    # W4 hooks
    def prepare_threads(self, writers: int) -> None:
        """Called before a thread round."""

    def thread_append(self, sid: str, role: str, content: str, worker: int) -> None:
        self.append(sid, role, content, worker)

    def thread_context(self, sid: str, worker: int) -> int:
        return self.context(sid, worker)

    async def prepare_tasks(self, writers: int) -> None:
        """Called (in the loop) before an asyncio round."""


class Raw(System):
    """The physical limit: plain DBAPI, the store's messages table, seqs allocated in memory.

    Append: count the message's tokens (same counter), serialize its payload, one
    INSERT and a commit. Context: one ``SELECT seq, payload, token_count ... WHERE
    session_id = ? AND status = 'active' ORDER BY seq DESC LIMIT 200``, then the
    newest rows that fit the budget. Sequence numbers come from a per-process
    counter (no session row): the raw driver is not safe across app instances.
    """

    name = RAW
    POOL = 8

    def setup(self) -> None:
        url = self.env.url("raw")
        self.table_name = unique_name("peers_raw")
        table = build_tables(self.table_name).messages
        engine = create_engine(url, poolclass=NullPool)
        try:
            table.create(engine)
        finally:
            engine.dispose()
        self.stack.callback(self.env.drop_table, url, self.table_name)
        self.url = url
        self.db = RawDB(url)
        self.stack.callback(self.db.close)
        sql, t = self.db.sql, self.table_name
        self.sql_insert = sql(
            f"INSERT INTO {t} (session_id, seq, role, status, token_count, content, payload, "
            "created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
        )
        self.sql_window = sql(
            f"SELECT seq, payload, token_count FROM {t} WHERE session_id = ? AND status = "
            f"'active' ORDER BY seq DESC LIMIT {WINDOW_LIMIT}"
        )
        self.sql_history = sql(f"SELECT content FROM {t} WHERE session_id = ? ORDER BY seq")
        self.next_seq: Counter[str] = Counter()
        self.lock = threading.Lock()
        self.thread_dbs: list[RawDB] = []
        self.pool: asyncio.Queue[Any] | None = None

    def row(self, sid: str, role: str, content: str) -> tuple[Any, ...]:
        tokens = self.env.tokens(role, content)
        payload = json.dumps({"role": role, "content": content})
        with self.lock:
            self.next_seq[sid] += 1
            seq = self.next_seq[sid]
        return (sid, seq, role, "active", tokens, content, payload, utcnow())

    def _db(self, worker: int) -> RawDB:
        return self.thread_dbs[worker % self.POOL] if self.thread_dbs else self.db

    def fill(self, sid: str, batch: list[tuple[str, str]]) -> None:
        cur = self.db.conn.cursor()
        cur.executemany(self.sql_insert, [self.row(sid, r, c) for r, c in batch])
        cur.close()
        self.db.conn.commit()

    def append(self, sid: str, role: str, content: str, worker: int = 0) -> None:
        db = self.db
        cur = db.conn.cursor()
        cur.execute(self.sql_insert, self.row(sid, role, content))
        cur.close()
        db.conn.commit()

    def context(self, sid: str, worker: int = 0) -> int:
        db = self.db
        cur = db.conn.cursor()
        cur.execute(self.sql_window, (sid,))
        rows = cur.fetchall()
        cur.close()
        db.conn.commit()
        return fit(r[2] for r in rows)

    def history(self, sid: str) -> list[str]:
        cur = self.db.conn.cursor()
        cur.execute(self.sql_history, (sid,))
        rows = [r[0] for r in cur.fetchall()]
        cur.close()
        self.db.conn.commit()
        return rows

    # W4, threads: one connection per writer (8 writers, 8 connections)
    def prepare_threads(self, writers: int) -> None:
        while len(self.thread_dbs) < min(writers, self.POOL):
            db = RawDB(self.url)
            self.stack.callback(db.close)
            self.thread_dbs.append(db)

    def thread_append(self, sid: str, role: str, content: str, worker: int) -> None:
        db = self._db(worker)
        cur = db.conn.cursor()
        cur.execute(self.sql_insert, self.row(sid, role, content))
        cur.close()
        db.conn.commit()

    def thread_context(self, sid: str, worker: int) -> int:
        db = self._db(worker)
        cur = db.conn.cursor()
        cur.execute(self.sql_window, (sid,))
        rows = cur.fetchall()
        cur.close()
        db.conn.commit()
        return fit(r[2] for r in rows)

    # W4, asyncio: a pool of 8 async driver connections shared by the 64 tasks
    async def prepare_tasks(self, writers: int) -> None:
        if self.pool is not None:
            return
        self.pool = asyncio.Queue()
        for _ in range(self.POOL):
            conn = await _async_connect(self.url)
            self.stack.callback(lambda c=conn: self.env.run(c.close()))
            self.pool.put_nowait(conn)

    async def _aexec(self, sql: str, params: tuple[Any, ...], fetch: bool) -> list[Any]:
        assert self.pool is not None
        conn = await self.pool.get()
        try:
            return await conn.execute(sql, params, fetch)
        finally:
            self.pool.put_nowait(conn)

    async def aappend(self, sid: str, role: str, content: str, worker: int = 0) -> None:
        await self._aexec(self.sql_insert, self.row(sid, role, content), False)

    async def acontext(self, sid: str, worker: int = 0) -> int:
        rows = await self._aexec(self.sql_window, (sid,), True)
        return fit(r[2] for r in rows)


class _AsyncRawConn:
    """One native async driver connection: execute a statement and commit."""

    def __init__(self, conn: Any, kind: str) -> None:
        self.conn, self.kind = conn, kind

    async def execute(self, sql: str, params: tuple[Any, ...], fetch: bool) -> list[Any]:
        if self.kind == "sqlite":
            cur = await self.conn.execute(sql, params)
            rows = list(await cur.fetchall()) if fetch else []
            await cur.close()
        else:
            async with self.conn.cursor() as cur:
                await cur.execute(sql, params)
                rows = list(await cur.fetchall()) if fetch else []
        await self.conn.commit()
        return rows

    async def close(self) -> None:
        result = self.conn.close()
        if asyncio.iscoroutine(result):
            await result


async def _async_connect(url: URL) -> _AsyncRawConn:
    backend = url.get_backend_name()
    if backend == "sqlite":
        import aiosqlite

        conn = await aiosqlite.connect(url.database or "", timeout=30)
        await conn.execute("PRAGMA busy_timeout = 30000")
        await conn.execute("PRAGMA journal_mode = WAL")
        return _AsyncRawConn(conn, "sqlite")
    if backend == "postgresql":
        import psycopg

        conn = await psycopg.AsyncConnection.connect(
            host=url.host,
            port=url.port or 5432,
            user=url.username,
            password=url.password,
            dbname=url.database,
        )
        return _AsyncRawConn(conn, "postgresql")
    import aiomysql

    conn = await aiomysql.connect(
        host=url.host or "127.0.0.1",
        port=url.port or 3306,
        user=url.username or "root",
        password=url.password or "",
        db=url.database,
        charset="utf8mb4",
        autocommit=False,
    )
    return _AsyncRawConn(conn, "mysql")


class Store(System):
    """``SQLStore``: ``append``; context = ``get_window(limit=200)`` cut to the budget by the
    stored token counts (the store has no budget of its own)."""

    name = "store"

    def setup(self) -> None:
        self.store = _our_store(self, "store")

    def engines(self) -> list[Engine]:
        return [self.store.engines.sync]

    def fill(self, sid: str, batch: list[tuple[str, str]]) -> None:
        self.store.append(sid, [Message(r, c) for r, c in batch])  # type: ignore[arg-type]

    def append(self, sid: str, role: str, content: str, worker: int = 0) -> None:
        self.store.append(sid, Message(role, content))  # type: ignore[arg-type]

    def context(self, sid: str, worker: int = 0) -> int:
        window = self.store.get_window(sid, limit=WINDOW_LIMIT)
        return fit(m.token_count or 0 for m in reversed(window))

    def history(self, sid: str) -> list[str]:
        return [m.content for m in self.store.get_history(sid)]

    async def aappend(self, sid: str, role: str, content: str, worker: int = 0) -> None:
        await self.store.aappend(sid, Message(role, content))  # type: ignore[arg-type]

    async def acontext(self, sid: str, worker: int = 0) -> int:
        window = await self.store.aget_window(sid, limit=WINDOW_LIMIT)
        return fit(m.token_count or 0 for m in reversed(window))


def _our_store(system: System, tag: str) -> SQLStore:
    store = SQLStore(system.env.url(tag), table_name=unique_name(f"peers_{tag.replace('-', '')}"))
    system.stack.callback(lambda: system.env.run(store.aclose()))
    store.create_schema()
    system.stack.callback(store.drop_schema)
    return store


class Agent(System):
    """``AgentMemory(token_limit=4000)``, default Trim overflow: ``add`` / ``get``."""

    name = "agent"

    def setup(self) -> None:
        self.store = _our_store(self, self.name)
        self.memory = AgentMemory(self.store, token_limit=TOKEN_LIMIT)

    def engines(self) -> list[Engine]:
        return [self.store.engines.sync]

    def fill(self, sid: str, batch: list[tuple[str, str]]) -> None:
        self.memory.add(sid, [Message(r, c) for r, c in batch])  # type: ignore[arg-type]

    def append(self, sid: str, role: str, content: str, worker: int = 0) -> None:
        self.memory.add(sid, Message(role, content))  # type: ignore[arg-type]

    def context(self, sid: str, worker: int = 0) -> int:
        return len(self.memory.get(sid))

    def history(self, sid: str) -> list[str]:
        return [m.content for m in self.memory.history(sid)]

    async def aappend(self, sid: str, role: str, content: str, worker: int = 0) -> None:
        await self.memory.aadd(sid, Message(role, content))  # type: ignore[arg-type]

    async def acontext(self, sid: str, worker: int = 0) -> int:
        return len(await self.memory.aget(sid))


def _lc_message(role: str, content: str) -> Any:
    from langchain_core.messages import AIMessage, HumanMessage

    return HumanMessage(content) if role == "user" else AIMessage(content)


class LangChainAdapter(Agent):
    """``MSSQLChatMessageHistory`` (one per session, sharing one AgentMemory):
    ``add_messages([message])`` / ``messages``."""

    name = "lc-adapter"

    def setup(self) -> None:
        super().setup()
        from langchain_mssql_memory import MSSQLChatMessageHistory

        self._cls = MSSQLChatMessageHistory
        self.histories: dict[str, Any] = {}

    def h(self, sid: str) -> Any:
        history = self.histories.get(sid)
        if history is None:
            history = self.histories.setdefault(sid, self._cls(sid, memory=self.memory))
        return history

    def fill(self, sid: str, batch: list[tuple[str, str]]) -> None:
        self.h(sid).add_messages([_lc_message(r, c) for r, c in batch])

    def append(self, sid: str, role: str, content: str, worker: int = 0) -> None:
        self.h(sid).add_messages([_lc_message(role, content)])

    def context(self, sid: str, worker: int = 0) -> int:
        return len(self.h(sid).messages)

    def history(self, sid: str) -> list[str]:
        return [m.content for m in self.h(sid).get_full_history()]

    async def aappend(self, sid: str, role: str, content: str, worker: int = 0) -> None:
        await self.h(sid).aadd_messages([_lc_message(role, content)])

    async def acontext(self, sid: str, worker: int = 0) -> int:
        return len(await self.h(sid).aget_messages())


def _chat(role: str, content: str) -> Any:
    from llama_index.core.base.llms.types import ChatMessage

    return ChatMessage(role=role, content=content)


class LlamaIndexAdapter(Agent):
    """``MSSQLMemory`` (one per session, sharing one AgentMemory): ``put`` / ``get``."""

    name = "li-adapter"

    def setup(self) -> None:
        super().setup()
        from llamaindex_mssql_memory import MSSQLMemory

        self._cls = MSSQLMemory
        self.memories: dict[str, Any] = {}

    def m(self, sid: str) -> Any:
        memory = self.memories.get(sid)
        if memory is None:
            made = self._cls.from_defaults(session_id=sid, memory=self.memory)
            memory = self.memories.setdefault(sid, made)
        return memory

    def fill(self, sid: str, batch: list[tuple[str, str]]) -> None:
        self.m(sid).put_messages([_chat(r, c) for r, c in batch])

    def append(self, sid: str, role: str, content: str, worker: int = 0) -> None:
        self.m(sid).put(_chat(role, content))

    def context(self, sid: str, worker: int = 0) -> int:
        return len(self.m(sid).get())

    def history(self, sid: str) -> list[str]:
        return [str(m.content) for m in self.m(sid).get_all()]

    async def aappend(self, sid: str, role: str, content: str, worker: int = 0) -> None:
        await self.m(sid).aput(_chat(role, content))

    async def acontext(self, sid: str, worker: int = 0) -> int:
        return len(await self.m(sid).aget())


class LangChainSQL(System):
    """langchain-community ``SQLChatMessageHistory`` (one per session, engine from the same
    URL, default settings): ``add_messages([message])``; context = ``messages`` (the whole
    session) + ``trim_messages(max_tokens=4000, strategy="last", start_on="human")``."""

    name = "lc-sql"

    def setup(self) -> None:
        with warnings.catch_warnings():  # langchain-community announces its own sunset
            warnings.simplefilter("ignore", DeprecationWarning)
            from langchain_community.chat_message_histories import SQLChatMessageHistory
        from langchain_core.messages import trim_messages

        self._cls, self._trim = SQLChatMessageHistory, trim_messages
        self.table = unique_name("peers_lc")
        url = self.env.url("lc")
        self.engine = create_engine(url)
        self.stack.callback(self.engine.dispose)
        self.stack.callback(self.env.drop_table, url, self.table)
        self.async_engine = create_async_engine(self.env.async_url("lc"))
        self.stack.callback(lambda: self.env.run(self.async_engine.dispose()))
        self.histories: dict[str, Any] = {}
        self.ahistories: dict[str, Any] = {}
        self.h("probe")  # creates the table

    def engines(self) -> list[Engine]:
        return [self.engine]

    def h(self, sid: str) -> Any:
        history = self.histories.get(sid)
        if history is None:
            made = self._cls(sid, connection=self.engine, table_name=self.table)
            history = self.histories.setdefault(sid, made)
        return history

    def ah(self, sid: str) -> Any:
        history = self.ahistories.get(sid)
        if history is None:
            made = self._cls(sid, connection=self.async_engine, table_name=self.table)
            history = self.ahistories.setdefault(sid, made)
        return history

    def count_tokens(self, messages: Sequence[Any]) -> int:
        count = self.env.counter.count_text
        return sum(3 + count(m.type) + count(m.text) for m in messages)

    def trim(self, messages: list[Any]) -> int:
        kept = self._trim(
            messages,
            max_tokens=TOKEN_LIMIT,
            token_counter=self.count_tokens,
            strategy="last",
            start_on="human",
        )
        return len(kept)

    def fill(self, sid: str, batch: list[tuple[str, str]]) -> None:
        self.h(sid).add_messages([_lc_message(r, c) for r, c in batch])

    def append(self, sid: str, role: str, content: str, worker: int = 0) -> None:
        self.h(sid).add_messages([_lc_message(role, content)])

    def context(self, sid: str, worker: int = 0) -> int:
        return self.trim(self.h(sid).messages)

    def history(self, sid: str) -> list[str]:
        return [str(m.content) for m in self.h(sid).messages]

    async def aappend(self, sid: str, role: str, content: str, worker: int = 0) -> None:
        await self.ah(sid).aadd_messages([_lc_message(role, content)])

    async def acontext(self, sid: str, worker: int = 0) -> int:
        return self.trim(await self.ah(sid).aget_messages())


class LlamaIndexStore(System):
    """LlamaIndex ``SQLAlchemyChatStore`` (async-only API, driven from one event loop in
    W1-W3): ``add_message``; context = ``count_messages`` + ``get_messages(offset=count-200)``
    cut to the budget with the same counter (it stores no token counts)."""

    name = "li-store"
    no_sync = "async-only API (AsyncDBChatStore has no sync methods)"

    def setup(self) -> None:
        self.chat_store = self.make_store("li")

    def make_store(self, tag: str) -> Any:
        from llama_index.core.storage.chat_store.sql import SQLAlchemyChatStore

        table = unique_name(f"peers_{tag}")
        chat_store = SQLAlchemyChatStore(
            table_name=table,
            async_database_uri=self.env.async_url(tag).render_as_string(hide_password=False),
        )
        url = self.env.url(tag)
        self.stack.callback(self.env.drop_table, url, table)
        self.stack.callback(lambda: self.env.run(self._dispose(chat_store)))
        try:
            self.env.run(chat_store.get_messages("probe"))  # creates the table
        except Exception as e:
            why = re.sub(
                r"^\w+: \(in table '[^']*', column '([^']*)'\): ", r"column \1: ", _short(e)
            )
            raise Unavailable(f"cannot create its table ({why})") from e
        self.sync_engine = chat_store._async_engine.sync_engine
        return chat_store

    @staticmethod
    async def _dispose(chat_store: Any) -> None:
        if chat_store._async_engine is not None:
            await chat_store._async_engine.dispose()

    def engines(self) -> list[Engine]:
        return [self.sync_engine]

    def fill(self, sid: str, batch: list[tuple[str, str]]) -> None:
        self.env.run(self.chat_store.add_messages(sid, [_chat(r, c) for r, c in batch]))

    def append(self, sid: str, role: str, content: str, worker: int = 0) -> None:
        self.env.run(self.aappend(sid, role, content))

    def context(self, sid: str, worker: int = 0) -> int:
        return self.env.run(self.acontext(sid))

    def history(self, sid: str) -> list[str]:
        return [str(m.content) for m in self.env.run(self.chat_store.get_messages(sid, None))]

    async def aappend(self, sid: str, role: str, content: str, worker: int = 0) -> None:
        await self.chat_store.add_message(sid, _chat(role, content))

    async def acontext(self, sid: str, worker: int = 0) -> int:
        count = await self.chat_store.count_messages(sid)
        page = await self.chat_store.get_messages(
            sid, limit=WINDOW_LIMIT, offset=max(count - WINDOW_LIMIT, 0)
        )
        return fit(self.env.tokens(str(m.role.value), str(m.content or "")) for m in page[::-1])


class LlamaIndexMemory(LlamaIndexStore):
    """LlamaIndex ``Memory`` (token_limit 4,000 all for chat history, flushes of 400
    tokens, the same tiktoken encoding) on its ``SQLAlchemyChatStore``: ``aput`` /
    ``aget`` (W4 threads: its sync ``put`` / ``get``)."""

    name = "li-memory"
    no_sync = None
    KEEP = 120  # newest messages of a fill batch that go through Memory (> its window)

    def setup(self) -> None:
        from llama_index.core.memory import Memory

        self._cls = Memory
        self.chat_store = self.make_store("limem")
        self.memories: dict[str, Any] = {}
        count = self.env.counter.count_text
        self.tokenizer = lambda s: range(count(s))  # Memory only takes len() of it

    def m(self, sid: str) -> Any:
        memory = self.memories.get(sid)
        if memory is None:
            made = self._cls.from_defaults(
                session_id=sid,
                chat_store=self.chat_store,
                token_limit=TOKEN_LIMIT,
                token_flush_size=TOKEN_LIMIT // 10,
                chat_history_token_ratio=1.0,
                tokenizer_fn=self.tokenizer,
            )
            memory = self.memories.setdefault(sid, made)
        return memory

    def fill(self, sid: str, batch: list[tuple[str, str]]) -> None:
        """Untimed growth. Memory archives a long batch 400 tokens at a time (a SELECT and
        an UPDATE each: half a minute for 10,000 messages), so all but the newest
        ``KEEP`` messages go straight to the archived status Memory would give them."""
        from llama_index.core.storage.chat_store.base_db import MessageStatus

        older, newest = batch[: -self.KEEP], batch[-self.KEEP :]
        if older:
            archived = MessageStatus.ARCHIVED
            chats = [_chat(r, c) for r, c in older]
            self.env.run(self.chat_store.add_messages(sid, chats, status=archived))
        self.env.run(self.m(sid).aput_messages([_chat(r, c) for r, c in newest]))

    def history(self, sid: str) -> list[str]:
        return [str(m.content) for m in self.env.run(self.m(sid).aget_all())]

    async def aappend(self, sid: str, role: str, content: str, worker: int = 0) -> None:
        await self.m(sid).aput(_chat(role, content))

    async def acontext(self, sid: str, worker: int = 0) -> int:
        return len(await self.m(sid).aget())

    def thread_append(self, sid: str, role: str, content: str, worker: int) -> None:
        self.m(sid).put(_chat(role, content))

    def thread_context(self, sid: str, worker: int) -> int:
        return len(self.m(sid).get())


CLASSES: dict[str, type[System]] = {
    RAW: Raw,
    "store": Store,
    "agent": Agent,
    "lc-adapter": LangChainAdapter,
    "li-adapter": LlamaIndexAdapter,
    "lc-sql": LangChainSQL,
    "li-store": LlamaIndexStore,
    "li-memory": LlamaIndexMemory,
}


# -- results ---------------------------------------------------------------------------


@dataclass
class Cell:
    """One system in one W1/W2/W3 cell: timings, or why there are none."""

    backend: str
    workload: str
    size: int
    system: str
    stats: Stats | None = None
    context: int | None = None  # messages in the context (W2, W3)
    note: str = ""


@dataclass
class W4Result:
    backend: str
    mode: str
    system: str
    writers: int = 0
    planned: int = 0
    done: int = 0
    elapsed: float = 0.0
    errors: int = 0
    lost: int = 0
    duplicated: int = 0
    reordered: int = 0
    stored: int = 0
    expected: int = 0
    first_error: str = ""
    error_texts: list[str] = field(default_factory=list)
    note: str = ""

    @property
    def rate(self) -> float:
        return self.done / self.elapsed if self.elapsed > 0 else 0.0


@dataclass
class Report:
    cells: list[Cell] = field(default_factory=list)
    w4: list[W4Result] = field(default_factory=list)
    statements: dict[tuple[str, str], tuple[float, float]] = field(default_factory=dict)
    versions: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    unavailable: dict[tuple[str, str], str] = field(default_factory=dict)
    backends: list[str] = field(default_factory=list)
    notes: list[tuple[str, str, str, str]] = field(default_factory=list)  # why a cell is n/a

    def note(self, backend: str, system: str, what: str, why: str) -> None:
        if (backend, system, what, why) not in self.notes:
            self.notes.append((backend, system, what, why))

    def discard(self, backend: str) -> None:
        """Forget a backend's partial results (a run that died half way)."""
        self.cells = [c for c in self.cells if c.backend != backend]
        self.w4 = [r for r in self.w4 if r.backend != backend]
        self.statements = {k: v for k, v in self.statements.items() if k[0] != backend}
        self.unavailable = {k: v for k, v in self.unavailable.items() if k[0] != backend}
        self.notes = [n for n in self.notes if n[0] != backend]

    def cell(self, backend: str, workload: str, size: int, system: str) -> Cell | None:
        for c in self.cells:
            if (c.backend, c.workload, c.size, c.system) == (backend, workload, size, system):
                return c
        return None


# -- timing helpers ----------------------------------------------------------------------


class Guarded:
    """A timed callable that records the first exception and then does nothing."""

    def __init__(self, fn: Callable[[], Any]) -> None:
        self.fn, self.error, self.last = fn, "", None

    def __call__(self) -> None:
        if self.error:
            return
        try:
            self.last = self.fn()
        except Exception as e:
            self.error = _short(e)


def timed_cells(
    report: Report,
    backend: str,
    workload: str,
    size: int,
    calls: dict[str, Callable[[], Any]],
    settings: Settings,
    samples: int,
) -> list[Cell]:
    guarded = {name: Guarded(fn) for name, fn in calls.items()}
    timings = interleave_capped(
        guarded,
        samples,
        round_size=settings.round_size,
        warmup=settings.warmup,
        max_seconds=settings.cell_seconds,
        min_samples=min(3, samples),
    )
    for name, g in guarded.items():
        if g.error:
            report.cells.append(Cell(backend, workload, size, name, note="failed"))
            report.note(backend, name, workload, g.error)
            continue
        context = g.last if isinstance(g.last, int) else None
        report.cells.append(Cell(backend, workload, size, name, summarize(timings[name]), context))
    cells = report.cells[-len(guarded) :]
    line = ", ".join(
        f"{c.system} {fmt_ms(c.stats.median_ms)}" if c.stats else f"{c.system} {c.note}"
        for c in cells
    )
    log(f"{backend} {workload}{f' N={size:,}' if size else ''}: {line} ms")
    return cells


def fill_to(system: System, sid: str, target: int, rng: random.Random) -> None:
    """Grow ``sid`` to ``target`` messages with the system's own batch append (untimed)."""
    while system.length[sid] < target:
        n = min(BATCH, target - system.length[sid])
        start = system.length[sid]
        batch = [("user" if (start + i) % 2 == 0 else "assistant", words(rng)) for i in range(n)]
        system.fill(sid, batch)
        system.length[sid] += n


# -- W1, W2 ------------------------------------------------------------------------------


def run_w1_w2(
    report: Report, env: Env, systems: dict[str, System], settings: Settings, rngs: dict
) -> None:
    for size in settings.sizes:
        w1_w2_size(report, env, systems, settings, rngs, size)


def w1_w2_size(
    report: Report,
    env: Env,
    systems: dict[str, System],
    settings: Settings,
    rngs: dict,
    size: int,
) -> None:
    """Grow one session per system to ``size``; time W2 reads, then W1 appends, on it."""
    sid = f"w12-{size}"
    started = time.perf_counter()
    took = {}
    for name, system in systems.items():
        t0 = time.perf_counter()
        fill_to(system, sid, size, rngs[name])
        took[name] = time.perf_counter() - t0
    spent = ", ".join(f"{name} {t:.1f}" for name, t in took.items())
    log(f"{env.name}: filled {sid} in {time.perf_counter() - started:.1f} s ({spent})")
    reads = {name: (lambda s=s: s.context(sid)) for name, s in systems.items()}
    timed_cells(report, env.name, W2, size, reads, settings, settings.repeat)
    count_statements(report, env, systems, sid, size, settings, rngs)

    def appender(name: str, system: System) -> Callable[[], None]:
        rng = rngs[name]

        def append() -> None:
            role = "user" if system.length[sid] % 2 == 0 else "assistant"
            system.append(sid, role, words(rng))
            system.length[sid] += 1

        return append

    appends = {name: appender(name, s) for name, s in systems.items()}
    timed_cells(report, env.name, W1, size, appends, settings, settings.repeat)


class _StatementCounter:
    """Counts statements sent and commits on some engines while attached."""

    def __init__(self, engines: list[Engine]) -> None:
        self.engines, self.n = engines, 0

    def _hit(self, *_args: Any, **_kw: Any) -> None:
        self.n += 1

    def __enter__(self) -> _StatementCounter:
        for engine in self.engines:
            event.listen(engine, "before_cursor_execute", self._hit)
            event.listen(engine, "commit", self._hit)
        return self

    def __exit__(self, *_exc: Any) -> None:
        for engine in self.engines:
            event.remove(engine, "before_cursor_execute", self._hit)
            event.remove(engine, "commit", self._hit)


def count_statements(
    report: Report,
    env: Env,
    systems: dict[str, System],
    sid: str,
    size: int,
    settings: Settings,
    rngs: dict,
) -> None:
    """SQL statements and commits per append (averaged over 30: AgentMemory's overflow runs
    every few appends) and per context read, at the middle size."""
    if size != settings.sizes[len(settings.sizes) // 2]:
        return
    report.statements[(env.name, RAW)] = (1.0 + 1.0, 1.0 + 1.0)  # statement + commit each
    appends, reads = 30, 6
    for name, system in systems.items():
        engines = system.engines()
        if not engines:
            continue
        per: list[float] = []
        try:
            with _StatementCounter(engines) as counter:
                for _ in range(appends):
                    role = "user" if system.length[sid] % 2 == 0 else "assistant"
                    system.append(sid, role, words(rngs[name]))
                    system.length[sid] += 1
                per.append(counter.n / appends)
                counter.n = 0
                for _ in range(reads):
                    system.context(sid)
                per.append(counter.n / reads)
        except Exception as e:
            log(f"{env.name} {name}: statement count failed: {_short(e)}")
            continue
        report.statements[(env.name, name)] = (per[0], per[1])


# -- W3 ----------------------------------------------------------------------------------


def run_w3(
    report: Report, env: Env, systems: dict[str, System], settings: Settings, rngs: dict
) -> None:
    """One session per system and sample size, grown (untimed, batches through the system's
    own API) so that the timed turns are centred on the size (100: from 70 to 130
    messages); then the timed turns of every system and every size alternate, so a
    change of machine load hits all sizes alike."""
    started = time.perf_counter()
    for point in settings.w3_points:
        start = max(point - settings.w3_turns - 2 * settings.warmup, 0)
        for name, system in systems.items():
            fill_to(system, f"w3-{point}", start, rngs[name])
    log(f"{env.name}: W3 sessions grown in {time.perf_counter() - started:.1f} s")

    def turner(system: System, sid: str, rng: random.Random) -> Callable[[], int]:
        def turn() -> int:
            n = system.context(sid)
            system.append(sid, "user", words(rng))
            system.append(sid, "assistant", words(rng))
            system.length[sid] += 2
            return n

        return turn

    turns = {
        f"{name}@{point}": turner(system, f"w3-{point}", rngs[name])
        for point in settings.w3_points
        for name, system in systems.items()
    }
    cells = timed_cells(report, env.name, W3, 0, turns, settings, settings.w3_turns)
    for cell in cells:
        name, point = cell.system.split("@")
        cell.system, cell.size = name, int(point)


# -- W4 ----------------------------------------------------------------------------------


def w4_plan(writers: int, sessions: Sequence[str], turns: int) -> list[list[tuple[str, int]]]:
    """Each writer's turns in order: writer ``w``'s ``i``-th turn goes to session
    ``(start_w + i) % 16``, so every session is written by several writers at once."""
    per_writer = len(sessions) * turns // writers
    plan = []
    for w in range(writers):
        start = w * len(sessions) // writers
        plan.append([(sessions[(start + i) % len(sessions)], i) for i in range(per_writer)])
    return plan


def turn_texts(w: int, i: int) -> tuple[str, str]:
    rng = random.Random(w * 1_000_003 + i)
    return f"[w{w} t{i} u] {words(rng)}", f"[w{w} t{i} a] {words(rng)}"


@dataclass
class W4State:
    """One system's W4 run in one mode, across rounds."""

    result: W4Result
    plan: list[list[tuple[str, int]]]
    sessions: list[str]
    cursor: list[int]
    attempted: list[list[tuple[str, str, bool]]]  # (session, content, append returned)
    errors: Counter[str] = field(default_factory=Counter)
    done: int = 0
    elapsed: float = 0.0
    hung: bool = False


def _record_error(state: W4State, error: BaseException) -> None:
    state.errors[_short(error)] += 1


def _thread_writer(system: System, state: W4State, w: int, end: int, deadline: float) -> None:
    plan, attempted = state.plan[w], state.attempted[w]
    for k in range(state.cursor[w], end):
        if time.perf_counter() > deadline:
            return
        state.cursor[w] = k + 1
        sid, i = plan[k]
        try:
            system.thread_context(sid, w)
        except Exception as e:
            _record_error(state, e)
            continue
        for role, content in zip(("user", "assistant"), turn_texts(w, i), strict=True):
            try:
                system.thread_append(sid, role, content, w)
            except Exception as e:
                attempted.append((sid, content, False))
                _record_error(state, e)
                break
            attempted.append((sid, content, True))
        else:
            with _done_lock:
                state.done += 1


_done_lock = threading.Lock()


async def _task_writer(system: System, state: W4State, w: int, end: int, deadline: float) -> None:
    plan, attempted = state.plan[w], state.attempted[w]
    for k in range(state.cursor[w], end):
        if time.perf_counter() > deadline:
            return
        state.cursor[w] = k + 1
        sid, i = plan[k]
        try:
            await system.acontext(sid, w)
        except Exception as e:
            _record_error(state, e)
            continue
        for role, content in zip(("user", "assistant"), turn_texts(w, i), strict=True):
            try:
                await system.aappend(sid, role, content, w)
            except Exception as e:
                attempted.append((sid, content, False))
                _record_error(state, e)
                break
            attempted.append((sid, content, True))
        else:
            state.done += 1


def w4_round(env: Env, system: System, state: W4State, mode: str, r: int, s: Settings) -> None:
    writers = len(state.plan)
    per_round = math.ceil(len(state.plan[0]) / s.w4_rounds) if state.plan[0] else 0
    end = min(len(state.plan[0]), (r + 1) * per_round)
    budget = s.w4_seconds / s.w4_rounds
    grace = 60.0 + budget
    started = time.perf_counter()
    deadline = started + budget
    if mode == SYNC:
        system.prepare_threads(writers)
        threads = [
            threading.Thread(
                target=_thread_writer, args=(system, state, w, end, deadline), daemon=True
            )
            for w in range(writers)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=max(grace - (time.perf_counter() - started), 0.1))
        state.hung = any(t.is_alive() for t in threads)
    else:

        async def main() -> bool:
            await system.prepare_tasks(writers)
            tasks = [
                asyncio.ensure_future(_task_writer(system, state, w, end, deadline))
                for w in range(writers)
            ]
            _, pending = await asyncio.wait(tasks, timeout=grace)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=5)
            return bool(pending)

        state.hung = env.run(main())
    state.elapsed += time.perf_counter() - started


def w4_check(system: System, env: Env, state: W4State) -> None:
    """Read every session back: lost (an append returned but the message is not stored),
    duplicated (stored twice) and reordered (a writer's message stored before one it
    wrote earlier) messages. An append that raised told its caller: its message is not
    expected (if it was stored anyway, it shows as stored > acknowledged)."""
    result = state.result
    acked: dict[str, set[str]] = defaultdict(set)
    for writer in state.attempted:
        for sid, content, ok in writer:
            match = _TAG.match(content)
            assert match is not None
            if ok:
                acked[sid].add(match.group(0))
    lost = duplicated = reordered = stored = 0
    for sid in state.sessions:
        tags = []
        for content in system.history(sid):
            match = _TAG.match(content)
            if match is not None:
                tags.append(match)
        stored += len(tags)
        seen: set[str] = set()
        last: dict[int, tuple[int, int]] = {}
        for match in tags:
            tag = match.group(0)
            if tag in seen:
                duplicated += 1
                continue
            seen.add(tag)
            w, key = int(match.group(1)), (int(match.group(2)), match.group(3) == "a")
            if w in last and key < last[w]:
                reordered += 1
            else:
                last[w] = key
        lost += len(acked[sid] - seen)
    result.lost, result.duplicated, result.reordered = lost, duplicated, reordered
    result.stored = stored
    result.expected = sum(len(v) for v in acked.values())


def run_w4(
    report: Report, env: Env, systems: dict[str, System], settings: Settings, mode: str
) -> None:
    writers = 8 if mode == SYNC else 64
    tag = "t" if mode == SYNC else "a"
    sessions = [f"w4{tag}-{k:02d}" for k in range(settings.w4_sessions)]
    states: dict[str, W4State] = {}
    for name, system in systems.items():
        reason = system.no_sync if mode == SYNC else system.no_async
        result = W4Result(env.name, mode, name, writers=writers)
        if reason:
            result.note = "n/a"
            report.note(env.name, name, f"W4 {mode}", reason)
            report.w4.append(result)
            continue
        plan = w4_plan(writers, sessions, settings.w4_turns)
        result.planned = sum(len(p) for p in plan)
        states[name] = W4State(result, plan, sessions, [0] * writers, [[] for _ in range(writers)])
    names = list(states)
    for r in range(settings.w4_rounds):
        k = r % max(len(names), 1)
        for name in names[k:] + names[:k]:
            state = states[name]
            if state.hung:
                continue
            w4_round(env, systems[name], state, mode, r, settings)
    for name, state in states.items():
        result = state.result
        result.done, result.elapsed = state.done, state.elapsed
        result.errors = sum(state.errors.values())
        if state.errors:
            result.first_error = state.errors.most_common(1)[0][0]
            result.error_texts = list(state.errors)
        if state.hung:
            result.note = "hung"
            report.note(
                env.name,
                name,
                f"W4 {mode}",
                "writers still blocked 60 s after the deadline (abandoned, not checked)",
            )
        else:
            try:
                w4_check(systems[name], env, state)
            except Exception as e:
                result.note = "check failed"
                report.note(env.name, name, f"W4 {mode}", f"check failed: {_short(e)}")
        report.w4.append(result)
        log(
            f"{env.name} W4 {mode} {name}: {result.done}/{result.planned} turns in "
            f"{result.elapsed:.1f} s = {result.rate:.0f}/s, errors {result.errors}, lost "
            f"{result.lost}, dup {result.duplicated}, reordered {result.reordered} {result.note}"
        )


# -- one backend -------------------------------------------------------------------------


def _wait_for(backend: Backend, seconds: float) -> bool:
    """Wait until the backend answers again (True), at most ``seconds``."""
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        if probe(backend) is None:
            return True
        time.sleep(5)
    return False


def sweep(backend: Backend) -> None:
    """Drop any table this process created on a server (names carry our pid) that a failed
    cleanup left behind, e.g. when the server restarted during the run."""
    url = backend.url
    if url.get_backend_name() == "sqlite":
        return
    marker = f"_{os.getpid()}_"
    engine = create_engine(url, poolclass=NullPool)
    try:
        with engine.begin() as conn:
            for table in inspect(conn).get_table_names():
                if table.startswith("peers_") and marker in table:
                    conn.execute(text(f"DROP TABLE {table}"))
    except Exception as e:
        log(f"{backend.name}: sweep of leftover tables failed: {_short(e)}")
    finally:
        engine.dispose()


def run_backend(backend: Backend, settings: Settings, report: Report) -> None:
    with ExitStack() as stack:
        env = Env(backend, stack)
        raw_version = RawDB(backend.url_for("probe"))
        report.versions.append(raw_version.server_version())
        raw_version.close()
        systems: dict[str, System] = {}
        for name in SYSTEMS:
            system = CLASSES[name](env)
            stack.callback(_quiet_close, env, system)
            try:
                system.setup()
            except Exception as e:
                reason = str(e) if isinstance(e, Unavailable) else _short(e)
                report.unavailable[(backend.name, name)] = reason
                log(f"{backend.name}: {name} unavailable: {reason}")
                continue
            systems[name] = system
        rngs = {name: random.Random(20240801) for name in systems}
        started = time.perf_counter()
        run_w1_w2(report, env, systems, settings, rngs)
        log(f"{backend.name}: W1/W2 done in {time.perf_counter() - started:.0f} s")
        started = time.perf_counter()
        run_w3(report, env, systems, settings, rngs)
        log(f"{backend.name}: W3 done in {time.perf_counter() - started:.0f} s")
        for mode in (SYNC, ASYNC):
            started = time.perf_counter()
            run_w4(report, env, systems, settings, mode)
            log(f"{backend.name}: W4 {mode} done in {time.perf_counter() - started:.0f} s")
        errors = [n[3] for n in report.notes if n[0] == backend.name]
        errors += [t for r in report.w4 if r.backend == backend.name for t in r.error_texts]
        gone = next((e for e in errors if _SERVER_GONE.search(e)), None)
        if gone is not None:
            raise RuntimeError(f"the server went away during the run ({gone})")
        for name in SYSTEMS:
            if name not in systems:
                reason = report.unavailable[(backend.name, name)]
                report.note(backend.name, name, "all workloads", reason)
                for workload, sizes in ((W1, settings.sizes), (W2, settings.sizes)):
                    for size in sizes:
                        report.cells.append(Cell(backend.name, workload, size, name, note="n/a"))
                for point in settings.w3_points:
                    report.cells.append(Cell(backend.name, W3, point, name, note="n/a"))
                for mode in (SYNC, ASYNC):
                    report.w4.append(W4Result(backend.name, mode, name, note="n/a"))
    report.backends.append(backend.name)


def _quiet_close(env: Env, system: System) -> None:
    try:
        system.close()
    except Exception as e:
        log(f"{env.name}: closing {system.name}: {_short(e)}")


# -- report ------------------------------------------------------------------------------


def _ratio(value: float | None, base: float | None) -> str:
    if value is None or base is None or base <= 0:
        return "n/a"
    ratio = value / base
    return f"{ratio:.2f}x" if ratio >= 0.1 else f"{ratio:.3f}x"


def _best_peer(report: Report, backend: str, workload: str, size: int) -> Cell | None:
    cells = [report.cell(backend, workload, size, p) for p in PEERS]
    timed = [c for c in cells if c is not None and c.stats is not None]
    return min(timed, key=lambda c: c.stats.median_ms) if timed else None  # type: ignore[union-attr]


def _median(cell: Cell | None) -> float | None:
    return cell.stats.median_ms if cell is not None and cell.stats is not None else None


def render_latency(report: Report, workload: str, sizes: Sequence[int]) -> str:
    headers = [
        "backend",
        "N",
        "system",
        "median / p95 ms",
        "calls",
        "vs raw",
        "vs best peer",
        "context msgs",
    ]
    rows = []
    for backend in report.backends:
        for size in sizes:
            raw = _median(report.cell(backend, workload, size, RAW))
            best = _best_peer(report, backend, workload, size)
            for name in SYSTEMS:
                cell = report.cell(backend, workload, size, name)
                if cell is None:
                    continue
                if cell.stats is None:
                    rows.append([backend, f"{size:,}", name, cell.note, "", "", "", ""])
                    continue
                median = cell.stats.median_ms
                rows.append(
                    [
                        backend,
                        f"{size:,}",
                        name,
                        f"{fmt_ms(median)} / {fmt_ms(cell.stats.p95_ms)}",
                        str(cell.stats.n),
                        _ratio(median, raw),
                        _ratio(median, _median(best)) + (" (best)" if cell is best else ""),
                        "" if cell.context is None else str(cell.context),
                    ]
                )
    return markdown_table(headers, rows)


def render_w3(report: Report, points: Sequence[int]) -> str:
    headers = ["backend", "system"]
    headers += [f"{p:,} msgs: median / p95 ms" for p in points]
    headers += [f"{points[-1]:,} vs {points[0]:,}", "max vs raw", f"vs best peer at {points[-1]:,}"]
    rows = []
    for backend in report.backends:
        best = _median(_best_peer(report, backend, W3, points[-1]))
        for name in SYSTEMS:
            cells = [report.cell(backend, W3, p, name) for p in points]
            if all(c is None for c in cells):
                continue
            row = [backend, name]
            for c in cells:
                if c is None or c.stats is None:
                    row.append(c.note if c is not None else "")
                else:
                    row.append(f"{fmt_ms(c.stats.median_ms)} / {fmt_ms(c.stats.p95_ms)}")
            first, last = _median(cells[0]), _median(cells[-1])
            ratios = [
                m / r
                for p, c in zip(points, cells, strict=True)
                if (m := _median(c)) is not None
                and (r := _median(report.cell(backend, W3, p, RAW))) is not None
            ]
            row += [
                _ratio(last, first),
                f"{max(ratios):.2f}x" if ratios else "n/a",
                _ratio(last, best),
            ]
            rows.append(row)
    return markdown_table(headers, rows)


def render_w4(report: Report) -> str:
    headers = [
        "backend",
        "mode",
        "system",
        "turns done / planned",
        "s",
        "turns/s",
        "vs raw",
        "vs best peer",
        "errors",
        "lost",
        "duplicated",
        "reordered",
        "stored / acknowledged",
    ]
    rows = []
    for backend in report.backends:
        for mode in (SYNC, ASYNC):
            results = {r.system: r for r in report.w4 if (r.backend, r.mode) == (backend, mode)}
            raw = results.get(RAW)
            raw_rate = raw.rate if raw is not None and not raw.note else None
            peers = [results[p] for p in PEERS if p in results and results[p].done]
            best = max(peers, key=lambda r: r.rate) if peers else None
            for name in SYSTEMS:
                r = results.get(name)
                if r is None:
                    continue
                if r.note == "n/a":
                    rows.append([backend, mode, name, "n/a", *[""] * 9])
                    continue
                checked = not r.note
                rows.append(
                    [
                        backend,
                        mode,
                        name,
                        f"{r.done:,} / {r.planned:,}",
                        f"{r.elapsed:.1f}",
                        f"{r.rate:,.0f}",
                        _ratio(r.rate, raw_rate),
                        _ratio(r.rate, best.rate if best else None)
                        + (" (best)" if r is best else ""),
                        str(r.errors),
                        str(r.lost) if checked else r.note,
                        str(r.duplicated) if checked else "",
                        str(r.reordered) if checked else "",
                        f"{r.stored:,} / {r.expected:,}" if checked else "",
                    ]
                )
    return markdown_table(headers, rows)


def render_statements(report: Report) -> str:
    headers = ["system", *[f"{b}: append / read" for b in report.backends]]
    rows = []
    for name in SYSTEMS:
        row = [name]
        for backend in report.backends:
            value = report.statements.get((backend, name))
            row.append("" if value is None else f"{value[0]:.1f} / {value[1]:.1f}")
        if any(row[1:]):
            rows.append(row)
    return markdown_table(headers, rows)


def verdicts(report: Report, settings: Settings) -> tuple[str, list[str], int]:
    """The issue's targets, for each of our systems, with the figure behind each verdict."""
    first, last = settings.w3_points[0], settings.w3_points[-1]
    big = settings.sizes[-1]
    rows: list[list[str]] = []
    failed: list[str] = []

    def verdict(ok: bool | None, figure: str) -> str:
        if ok is None:
            return "n/a"
        return f"met ({figure})" if ok else f"**not met** ({figure})"

    def add(target: str, backend: str, per_system: Callable[[str], tuple[bool | None, str]]):
        row = [target, backend]
        for name in OURS:
            ok, figure = per_system(name)
            row.append(verdict(ok, figure))
            if ok is False:
                failed.append(f"{target} / {backend} / {name}")
        rows.append(row)

    for backend in report.backends:

        def flat(name: str, backend: str = backend) -> tuple[bool | None, str]:
            a = _median(report.cell(backend, W3, first, name))
            b = _median(report.cell(backend, W3, last, name))
            if a is None or b is None:
                return None, ""
            return b / a <= 1.3, f"{b / a:.2f}x"

        def turn_raw(name: str, backend: str = backend) -> tuple[bool | None, str]:
            ratios = []
            for p in settings.w3_points:
                m = _median(report.cell(backend, W3, p, name))
                r = _median(report.cell(backend, W3, p, RAW))
                if m is not None and r is not None:
                    ratios.append(m / r)
            if not ratios:
                return None, ""
            return max(ratios) <= 4.0, f"max {max(ratios):.2f}x"

        def append_raw(name: str, backend: str = backend) -> tuple[bool | None, str]:
            ratios = []
            for size in settings.sizes:
                m = _median(report.cell(backend, W1, size, name))
                r = _median(report.cell(backend, W1, size, RAW))
                if m is not None and r is not None:
                    ratios.append(m / r)
            if not ratios:
                return None, ""
            return max(ratios) <= 2.0, f"max {max(ratios):.2f}x"

        def read_raw(name: str, backend: str = backend) -> tuple[bool | None, str]:
            m = _median(report.cell(backend, W2, big, name))
            r = _median(report.cell(backend, W2, big, RAW))
            if m is None or r is None:
                return None, ""
            return m / r <= 3.0, f"{m / r:.2f}x"

        add(f"W3 flat: {last:,} vs {first:,} msgs <= 1.3x", backend, flat)
        add("W3 turn <= 4x raw (every size)", backend, turn_raw)
        add("W1 append <= 2x raw (every size)", backend, append_raw)
        add(f"W2 context read at {big:,} <= 3x raw", backend, read_raw)
        if backend == "postgresql":

            def throughput(name: str, backend: str = backend) -> tuple[bool | None, str]:
                got = {r.system: r for r in report.w4 if (r.backend, r.mode) == (backend, SYNC)}
                ours, raw = got.get(name), got.get(RAW)
                if ours is None or raw is None or not raw.rate or ours.note:
                    return None, ""
                share = ours.rate / raw.rate
                return share >= 0.4, f"{share:.0%} of raw"

            add("W4 8 threads >= 40% of raw", backend, throughput)

        def integrity(name: str, backend: str = backend) -> tuple[bool | None, str]:
            got = [r for r in report.w4 if (r.backend, r.system) == (backend, name)]
            if not got or any(r.note for r in got):
                return (False, "not checked") if got else (None, "")
            bad = sum(r.lost + r.duplicated + r.reordered for r in got)
            errors = sum(r.errors for r in got)
            return bad == 0, f"{bad} lost/dup/reordered, {errors} errors"

        add("W4 0 lost/duplicated/reordered", backend, integrity)
    table = markdown_table(["target", "backend", *OURS], rows)
    total = sum(1 for row in rows for cell in row[2:] if cell != "n/a")
    return table, failed, total


def plot_w3(report: Report, settings: Settings, path: Path) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log("matplotlib is not installed: no W3 plot")
        return None
    backends = report.backends
    fig, axes = plt.subplots(1, len(backends), figsize=(8, 5), dpi=100, sharey=True, squeeze=False)
    styles = {RAW: ("black", ":")}
    colors = ["tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown"]
    colors.append("tab:olive")
    for name, color in zip([*OURS, *PEERS], colors, strict=True):
        styles[name] = (color, "-" if name in OURS else "--")
    for ax, backend in zip(axes[0], backends, strict=True):
        for name in SYSTEMS:
            xs, ys = [], []
            for p in settings.w3_points:
                m = _median(report.cell(backend, W3, p, name))
                if m is not None:
                    xs.append(p)
                    ys.append(m)
            if xs:
                color, style = styles[name]
                ax.plot(xs, ys, linestyle=style, color=color, marker="o", markersize=3, label=name)
        ax.set_yscale("log")
        ax.set_title(backend, fontsize=10)
        ax.set_xlabel("messages in session", fontsize=9)
        ax.tick_params(labelsize=8)
        ax.grid(True, which="both", alpha=0.3)
    axes[0][0].set_ylabel("ms per turn (median, log)", fontsize=9)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=4, fontsize=8, frameon=False)
    fig.suptitle(
        f"W3: per-turn cost, {TOKEN_LIMIT:,}-token budget (solid: ours, dashed: peers)",
        fontsize=11,
    )
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def render(report: Report, settings: Settings, plot: Path | None) -> str:
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    systems = "\n".join(f"- `{name}`: {DESCRIPTION[name]}" for name in SYSTEMS)
    verdict_table, failed, total = verdicts(report, settings)
    sizes = settings.sizes
    lines = [
        "# This library against its peers and the raw driver",
        "",
        f"`{command_line()}` ({when}). Budget {TOKEN_LIMIT:,} tokens. Systems alternate in "
        f"rounds of {settings.round_size} calls (rotating order); a system leaves a cell's "
        f"rotation after {settings.cell_seconds:g} s of timed calls (at least 3 calls), so "
        "slow peers have fewer calls.",
        "",
        environment_line(report.versions),
        "",
        systems,
        "",
        "## Summary: issue 8's targets",
        "",
        verdict_table,
        "",
        (
            "Every target is met by every one of our systems."
            if not failed
            else f"{len(failed)} of {total} verdicts not met; the hot spots are in the tables "
            "below (statements per call) and in benchmarks/README.md."
        ),
        "",
        f"## W1: append one message into a session of N messages ({settings.repeat} calls)",
        "",
        render_latency(report, W1, sizes),
        "",
        f"## W2: read the context for a turn from a session of N messages ({settings.repeat} "
        "calls)",
        "",
        render_latency(report, W2, sizes),
        "",
        "context msgs: messages in the context the system returned at its last call: "
        f"the newest messages within {TOKEN_LIMIT:,} tokens (whole turns for the memories; "
        "no system message, summary or long-term blocks are configured).",
        "",
        f"## W3: per-turn cost as a session grows ({settings.w3_turns} timed turns centred "
        "on each size)",
        "",
        render_w3(report, settings.w3_points),
        "",
        "A turn: context read + user append + assistant append (three calls, each its own "
        "transaction). Each system has one session per size, grown from empty by untimed "
        "batch appends through the system's own API so that the timed turns are centred on "
        f"the size (from size - {settings.w3_turns} to size + {settings.w3_turns} messages); "
        "the timed turns of all systems and all sizes then alternate, so a change in machine "
        "load hits every size alike. `vs best peer` compares with the fastest peer at the "
        "largest size.",
    ]
    if plot is not None:
        lines += ["", f"![W3 per-turn cost]({plot.name})"]
    lines += [
        "",
        f"## W4: concurrent turns over {settings.w4_sessions} sessions x {settings.w4_turns} turns",
        "",
        render_w4(report),
        "",
        f"Writers: 8 threads on the sync API, or 64 asyncio tasks on the async API (one "
        f"event loop). Writer w's i-th turn goes to session (start_w + i) mod "
        f"{settings.w4_sessions}, so several writers share each session; contents carry "
        "`[w<writer> t<turn> u|a]`. Each system gets at most "
        f"{settings.w4_seconds:g} s per mode, in {settings.w4_rounds} rounds alternating "
        "with the other systems; turns/s = turns completed without error / time. lost: "
        "messages whose append returned but that are not stored; duplicated: stored twice; "
        "reordered: a writer's message stored before one it wrote earlier; errors: calls "
        "that raised (a turn stops at its first error; a message whose append raised is not "
        "expected). A run during which the server restarted is discarded and repeated.",
    ]
    errors = [r for r in report.w4 if r.first_error]
    if errors:
        lines += ["", "Most frequent error per run:", ""]
        lines += [f"- {r.backend}, {r.mode}, {r.system}: `{r.first_error}`" for r in errors]
    if report.notes:
        lines += ["", "## Not measured", ""]
        lines += [f"- {b}, `{name}`, {what}: {why}" for b, name, what, why in report.notes]
    lines += [
        "",
        f"## SQL statements (and commits) per call, N={sizes[len(sizes) // 2]:,}",
        "",
        render_statements(report),
        "",
        "Counted with SQLAlchemy engine events (statements sent plus commits; pool "
        "pre-ping is not counted) over 30 appends and 6 reads. The raw driver: one statement "
        "and one commit per call. AgentMemory's append is 3 statements, plus about 7 more "
        "(re-read of the window, then the overflow transaction) when Trim runs, which it "
        "does every few appends once the window is at the budget.",
    ]
    if report.skipped:
        lines += ["", *[f"Skipped {s}." for s in report.skipped]]
    return "\n".join(lines) + "\n"


# -- command line ----------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.bench_peers", description=__doc__.split("\n")[0]
    )
    p.add_argument("--backends", type=parse_list, default=list(BACKENDS))
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help="markdown report (default benchmarks/results/peers.md; none with --quick)",
    )
    p.add_argument(
        "--plot",
        type=Path,
        default=None,
        help="W3 plot (default: w3.png next to the report)",
    )
    p.add_argument("--quick", action="store_true", help="tiny sizes, a smoke run")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    settings = QUICK if args.quick else Settings()
    out = args.out or (None if args.quick else DEFAULT_OUT)
    plot_path = args.plot or (out.parent / "w3.png" if out is not None else None)
    report = Report()
    started = time.perf_counter()
    with workdir() as directory:
        for backend in resolve_backends(args.backends, directory):
            reason = probe(backend)
            if reason is not None:
                report.skipped.append(f"{backend.name} ({backend.display_url()}): {reason}")
                log(f"skipping {backend.name}: {reason}")
                continue
            for attempt in (1, 2):
                versions = len(report.versions)
                try:
                    run_backend(backend, settings, report)
                    break
                except Exception as e:  # e.g. the server restarted under us
                    report.discard(backend.name)
                    del report.versions[versions:]
                    log(f"{backend.name}: run failed (attempt {attempt}): {_short(e)}")
                    if attempt == 2 or not _wait_for(backend, 90):
                        report.skipped.append(f"{backend.name}: the run failed: {_short(e)}")
                        break
                finally:
                    sweep(backend)
            log(f"{backend.name} done, {time.perf_counter() - started:.0f} s so far")
    if not report.backends:
        log("no backend available")
        return 1
    plot = plot_w3(report, settings, plot_path) if plot_path is not None else None
    text_ = render(report, settings, plot)
    print(text_)
    if out is not None:
        log(f"wrote {write_report(out, text_)}")
    if plot is not None:
        log(f"wrote {plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
