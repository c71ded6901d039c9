"""MSSQLChatStore: LlamaIndex's AsyncDBChatStore contract on our SQL store, checked against
LlamaIndex's own SQLAlchemyChatStore as an oracle, driving LlamaIndex's Memory and its
memory blocks, and with DDL that SQL Server accepts (unlike SQLAlchemyChatStore's)."""

from __future__ import annotations

import asyncio
import json
import re
from contextlib import asynccontextmanager
from typing import Any

import pytest
from llama_index.core.base.llms.types import ChatMessage, ImageBlock, TextBlock, ToolCallBlock
from llama_index.core.llms import MockLLM
from llama_index.core.memory import Memory
from llama_index.core.memory.memory_blocks import FactExtractionMemoryBlock, StaticMemoryBlock
from llama_index.core.storage.chat_store.base_db import MessageStatus
from llama_index.core.storage.chat_store.sql import SQLAlchemyChatStore
from mssql_memory import build_tables
from sqlalchemy import create_mock_engine
from sqlalchemy.dialects import mssql
from sqlalchemy.schema import CreateSchema

import llamaindex_mssql_memory._memory as memory_module
from llamaindex_mssql_memory import MSSQLChatStore, MSSQLMemory, clear_connections

ACTIVE, ARCHIVED = MessageStatus.ACTIVE, MessageStatus.ARCHIVED


@pytest.fixture(autouse=True)
def _forget_connections():
    yield
    clear_connections()
    memory_module._agents.clear()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.integration)])
def chat_store(request: pytest.FixtureRequest, amake_store) -> MSSQLChatStore:
    """An MSSQLChatStore on an async-driver store of each backend (own table)."""
    return MSSQLChatStore(amake_store(request.param))


def msg(text: str, role: str = "user") -> ChatMessage:
    return ChatMessage(role=role, content=text)


def texts(messages: list[ChatMessage]) -> list[str | None]:
    return [m.content for m in messages]


# -- the AsyncDBChatStore contract -----------------------------------------------------------


async def test_add_get_and_count_by_status(chat_store: MSSQLChatStore) -> None:
    """Messages are returned by status in insertion order; counts come per status."""
    await chat_store.add_message("k", msg("a"))
    await chat_store.add_messages("k", [msg("b", "assistant"), msg("c")])
    await chat_store.add_messages("k", [msg("old")], status=ARCHIVED)
    await chat_store.add_messages("k", [])
    assert texts(await chat_store.get_messages("k")) == ["a", "b", "c"]
    assert texts(await chat_store.get_messages("k", status=ARCHIVED)) == ["old"]
    assert texts(await chat_store.get_messages("k", status=None)) == ["a", "b", "c", "old"]
    assert texts(await chat_store.get_messages("k", status=None, limit=2, offset=1)) == ["b", "c"]
    assert [await chat_store.count_messages("k", s) for s in (ACTIVE, ARCHIVED, None)] == [3, 1, 4]
    assert await chat_store.get_messages("missing") == []
    assert await chat_store.count_messages("missing") == 0


async def test_messages_round_trip_exactly(chat_store: MSSQLChatStore) -> None:
    """Tool calls, tool results and images come back exactly as added."""
    sent = [
        ChatMessage(
            role="user", blocks=[TextBlock(text="see"), ImageBlock(url="https://x.org/a.png")]
        ),
        ChatMessage(
            role="assistant",
            blocks=[ToolCallBlock(tool_call_id="c1", tool_name="f", tool_kwargs={"a": 1})],
        ),
        ChatMessage(role="tool", content="1", additional_kwargs={"tool_call_id": "c1"}),
    ]
    await chat_store.add_messages("k", sent)
    back = await chat_store.get_messages("k")
    assert [m.model_dump(mode="json") for m in back] == [m.model_dump(mode="json") for m in sent]


async def test_set_messages_replaces_every_status(chat_store: MSSQLChatStore) -> None:
    """set_messages leaves exactly the new messages, with the given status."""
    await chat_store.add_messages("k", [msg("a"), msg("b")])
    await chat_store.add_messages("k", [msg("z")], status=ARCHIVED)
    await chat_store.set_messages("k", [msg("new")])
    assert texts(await chat_store.get_messages("k", status=None)) == ["new"]
    await chat_store.set_messages("k", [msg("x"), msg("y")], status=ARCHIVED)
    assert texts(await chat_store.get_messages("k", status=ARCHIVED)) == ["x", "y"]
    assert await chat_store.count_messages("k") == 0


async def test_delete_message_by_position(chat_store: MSSQLChatStore) -> None:
    """delete_message(idx) removes and returns the idx-th message; a bad idx returns None."""
    await chat_store.add_messages("k", [msg("a"), msg("b"), msg("c")])
    deleted = await chat_store.delete_message("k", 1)
    assert deleted is not None and deleted.content == "b"
    assert texts(await chat_store.get_messages("k")) == ["a", "c"]
    assert await chat_store.delete_message("k", 5) is None
    assert await chat_store.delete_message("k", -1) is None
    assert await chat_store.count_messages("k") == 2


async def test_delete_messages_by_status(chat_store: MSSQLChatStore) -> None:
    """delete_messages removes one status, or with None the whole key."""
    await chat_store.add_messages("k", [msg("a"), msg("b")])
    await chat_store.add_messages("k", [msg("z")], status=ARCHIVED)
    await chat_store.add_message("other", msg("keep"))
    await chat_store.delete_messages("k", status=ARCHIVED)
    assert texts(await chat_store.get_messages("k", status=None)) == ["a", "b"]
    await chat_store.delete_messages("k", status=ACTIVE)
    assert await chat_store.count_messages("k", None) == 0
    await chat_store.add_message("k", msg("again"))
    await chat_store.delete_messages("k")
    assert await chat_store.get_messages("k", status=None) == []
    assert await chat_store.get_keys() == ["other"]


async def test_oldest_messages_archived_or_deleted(chat_store: MSSQLChatStore) -> None:
    """archive/delete_oldest_messages take the n oldest active messages and return them."""
    await chat_store.add_messages("k", [msg(str(i)) for i in range(5)])
    assert texts(await chat_store.archive_oldest_messages("k", 2)) == ["0", "1"]
    assert texts(await chat_store.get_messages("k", status=ARCHIVED)) == ["0", "1"]
    assert texts(await chat_store.delete_oldest_messages("k", 1)) == ["2"]
    assert texts(await chat_store.get_messages("k", status=None)) == ["0", "1", "3", "4"]
    assert await chat_store.archive_oldest_messages("k", 0) == []
    assert await chat_store.archive_oldest_messages("missing", 3) == []


async def test_concurrent_archivers_never_share_messages(chat_store: MSSQLChatStore) -> None:
    """Two concurrent archive_oldest calls archive disjoint messages (one transaction each)."""
    await chat_store.add_messages("k", [msg(str(i)) for i in range(10)])
    first, second = await asyncio.gather(
        chat_store.archive_oldest_messages("k", 3), chat_store.archive_oldest_messages("k", 3)
    )
    assert sorted(texts(first) + texts(second)) == [str(i) for i in range(6)]
    assert await chat_store.count_messages("k", ARCHIVED) == 6


async def test_get_keys_lists_keys_with_messages(chat_store: MSSQLChatStore) -> None:
    """get_keys returns each key holding messages, once."""
    for key in ("b", "a", "c"):
        await chat_store.add_message(key, msg(key))
    await chat_store.delete_messages("c", status=ACTIVE)
    assert await chat_store.get_keys() == ["a", "b"]


@pytest.mark.integration
def test_dump_is_credential_free(postgresql_url: str, make_store) -> None:
    """The store's dump names the table and a password-free reference only."""
    from sqlalchemy.engine import make_url

    store = make_store("postgresql")
    url = make_url(postgresql_url).set(password="dump-secret").render_as_string(False)
    chat_store = MSSQLChatStore(url, table_name=store.table_name)
    dumped = json.dumps(chat_store.model_dump())
    assert "dump-secret" not in dumped and store.table_name in dumped


# -- LlamaIndex's SQLAlchemyChatStore as the oracle -----------------------------------------


async def run_script(store: Any) -> list[Any]:
    """The same sequence of AsyncDBChatStore calls; returns every observable result."""
    seen: list[Any] = []

    async def snapshot() -> None:
        for status in (ACTIVE, ARCHIVED, None):
            seen.append(texts(await store.get_messages("k", status=status)))
            seen.append(await store.count_messages("k", status=status))

    await store.add_message("k", msg("u1"))
    await store.add_messages("k", [msg("a1", "assistant"), msg("u2"), msg("a2", "assistant")])
    await snapshot()
    seen.append(texts(await store.archive_oldest_messages("k", 2)))
    await snapshot()
    await store.add_messages("k", [msg("x1"), msg("x2")], status=ARCHIVED)
    seen.append(texts(await store.get_messages("k", status=None, limit=3, offset=2)))
    seen.append(texts(await store.delete_oldest_messages("k", 1)))
    await snapshot()
    await store.set_messages("k", [msg("s1"), msg("s2"), msg("s3")])
    await snapshot()
    await store.delete_messages("k", status=ARCHIVED)
    await store.add_message("j", msg("other"))
    await snapshot()
    seen.append(sorted(await store.get_keys()))
    await store.delete_messages("k")
    await snapshot()
    return seen


async def test_behaves_like_sqlalchemy_chat_store(chat_store: MSSQLChatStore) -> None:
    """Every observable result equals LlamaIndex's own store for the same call sequence."""
    oracle = SQLAlchemyChatStore(table_name="oracle", async_database_uri="sqlite+aiosqlite://")
    expected = await run_script(oracle)
    assert await run_script(chat_store) == expected
    await oracle._async_engine.dispose()


# -- LlamaIndex's Memory on our store ----------------------------------------------------------


async def test_llamaindex_memory_waterfall_with_blocks(chat_store: MSSQLChatStore) -> None:
    """Memory's FIFO queue archives into our store and feeds its memory blocks."""
    facts = FactExtractionMemoryBlock(llm=MockLLM())
    memory = Memory.from_defaults(
        session_id="li-session",
        chat_store=chat_store,
        token_limit=200,
        token_flush_size=40,
        memory_blocks=[StaticMemoryBlock(static_content="The user is Ada."), facts],
    )
    sent = []
    for i in range(12):
        turn = [msg(f"question {i} " + "word " * 8), msg(f"answer {i} " + "word " * 8, "assistant")]
        sent.extend(turn)
        await memory.aput_messages(turn)
    active = await chat_store.count_messages("li-session", ACTIVE)
    archived = await chat_store.count_messages("li-session", ARCHIVED)
    assert active + archived == len(sent) and archived > 0
    assert texts(await memory.aget_all()) == texts(sent)
    context = await memory.aget()
    assert context[0].role.value == "system" and "The user is Ada." in context[0].content
    assert facts.facts, "the fact block never received the archived messages"
    assert texts(context[1:]) == texts(sent)[-active:]
    assert context[1].content.startswith("question")


def test_llamaindex_memory_sync_api(make_store) -> None:
    """Memory's sync wrappers work on our store too."""
    memory = Memory.from_defaults(
        session_id="sync", chat_store=MSSQLChatStore(make_store("sqlite")), token_limit=1000
    )
    memory.put(msg("hi"))
    memory.set([msg("replaced")])
    assert texts(memory.get()) == ["replaced"]
    memory.reset()
    assert memory.get_all() == []


async def test_shares_sessions_with_mssql_memory(amake_store) -> None:
    """A key of the chat store is a session of MSSQLMemory on the same table."""
    store = amake_store("sqlite")
    await MSSQLChatStore(store).add_messages("shared", [msg("from the chat store")])
    memory = MSSQLMemory.from_defaults(session_id="shared", connection=store)
    await memory.aput(msg("from MSSQLMemory", "assistant"))
    assert texts(await memory.aget()) == ["from the chat store", "from MSSQLMemory"]


# -- DDL on SQL Server -------------------------------------------------------------------------


def mssql_ddl(create: Any) -> list[str]:
    """Run ``create(mock_engine)`` and return the DDL it emits, compiled for SQL Server."""
    out: list[str] = []
    engine = create_mock_engine(
        "mssql+pyodbc://", lambda sql, *a, **k: out.append(str(sql.compile(dialect=engine.dialect)))
    )
    create(engine)
    return [" ".join(s.split()) for s in out]


_COLUMN = re.compile(r"(\[?\w+\]?) (N?VARCHAR\((?:max|\d+)\))")
_KEY = re.compile(r"(?:INDEX \w+ ON [\w.\[\]]+|UNIQUE|PRIMARY KEY) \(([^)]*)\)")


def indexed_max_columns(ddl: list[str]) -> list[str]:
    """Columns declared (N)VARCHAR(max) that an index or key covers."""
    types: dict[str, str] = {}
    for statement in ddl:
        for name, kind in re.findall(
            r"(\[?\w+\]?) ((?:N?VARCHAR|NVARCHAR)\((?:max|\d+)\))", statement
        ):
            types[name.strip("[]")] = kind
    covered: set[str] = set()
    for statement in ddl:
        for cols in re.findall(
            r"(?:INDEX \w+ ON [\w.\[\]]+|UNIQUE|PRIMARY KEY) \(([^)]*)\)", statement
        ):
            covered.update(c.strip().strip("[]") for c in cols.split(","))
    return sorted(c for c in covered if types.get(c, "").lower().endswith("(max)"))


def test_our_ddl_is_valid_tsql() -> None:
    """Our keys are NVARCHAR(255), payloads NVARCHAR(MAX) unindexed, no IF NOT EXISTS."""
    tables = build_tables("ChatMessages", schema="agents")
    ddl = mssql_ddl(lambda e: tables.metadata.create_all(e, checkfirst=False))
    ddl.append(str(CreateSchema("agents").compile(dialect=mssql.dialect())))
    text = "\n".join(ddl)
    assert indexed_max_columns(ddl) == []
    assert "IF NOT EXISTS" not in text
    assert "session_id NVARCHAR(255) COLLATE Latin1_General_100_BIN2" in text
    assert "payload NVARCHAR(max)" in text and "BIGINT NOT NULL IDENTITY" in text


class _FakeConnection:
    def __init__(self, ddl: list[str], engine: Any) -> None:
        self.ddl, self.engine = ddl, engine

    async def execute(self, statement: Any) -> None:
        self.ddl.append(" ".join(str(statement).split()))

    async def run_sync(self, fn: Any) -> None:
        fn(self.engine)


async def test_sqlalchemy_chat_store_ddl_defect_on_sql_server() -> None:
    """Documents LlamaIndex's defect: indexed VARCHAR(max) keys and CREATE SCHEMA IF NOT
    EXISTS, both of which SQL Server rejects (our store emits neither)."""
    ddl: list[str] = []
    engine = create_mock_engine(
        "mssql+pyodbc://",
        lambda sql, *a, **k: ddl.append(" ".join(str(sql.compile(dialect=engine.dialect)).split())),
    )

    class FakeAsyncEngine:
        url = "mssql+aioodbc://user@host/db"

        @asynccontextmanager
        async def begin(self):
            yield _FakeConnection(ddl, engine)

    store = SQLAlchemyChatStore(
        table_name="li_memory", async_database_uri=FakeAsyncEngine.url, db_schema="agents"
    )
    await store._setup_tables(FakeAsyncEngine())  # type: ignore[arg-type]
    assert 'CREATE SCHEMA IF NOT EXISTS "agents"' in ddl  # not T-SQL
    assert indexed_max_columns(ddl) == ["key", "status"]  # SQL Server: cannot index (max)
