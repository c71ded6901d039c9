"""Bad input gets a clear error and changes nothing: ids, table names, payloads, dead databases."""

from __future__ import annotations

import inspect as pyinspect
import math
from datetime import datetime
from typing import Any

import pytest
from mssql_memory import (
    AgentMemoryError,
    InMemoryStore,
    InvalidMessageError,
    Message,
    OverflowCommit,
    SQLStore,
    StoreError,
    StoreUnavailableError,
    ToolCall,
    message_from_dict,
    message_from_json,
)
from sqlalchemy import Table, func, select
from sqlalchemy import exc as sa_exc
from sqlalchemy import inspect as sa_inspect

GOOD = "good-session"

BAD_IDS: list[tuple[Any, type[Exception]]] = [
    ("", ValueError),
    (None, TypeError),
    ("x" * 10_000, ValueError),
    ("x" * 256, ValueError),
    (" padded", ValueError),
    ("padded ", ValueError),
    ("\tpadded\n", ValueError),
    ("nul\x00byte", ValueError),
    ("new\nline", ValueError),
    ("bell\x07", ValueError),
    ("lone\ud800surrogate", ValueError),
    (42, TypeError),
    (b"bytes", TypeError),
]


def user(text: str = "hello", **fields: Any) -> Message:
    return Message("user", text, **fields)


async def rejects(error: type[Exception], store: Any, method: str, *args: Any, **kw: Any) -> None:
    """Assert that ``store.method(*args, **kw)`` (sync or async) raises ``error``."""
    try:
        result = getattr(store, method)(*args, **kw)
        if pyinspect.isawaitable(result):
            await result
    except error:
        return
    shown = ", ".join([*(repr(a)[:40] for a in args), *(f"{k}={v!r:.40}" for k, v in kw.items())])
    pytest.fail(f"{method}({shown}) did not raise {error.__name__}")


def row_counts(store: Any) -> tuple[int, int]:
    """(sessions, messages) as stored; read from the tables themselves for SQL stores."""
    if isinstance(store, InMemoryStore):
        infos = store.list_sessions(limit=1000)
        return len(infos), sum(i.message_count for i in infos)
    return count_rows(store, store.tables.sessions), count_rows(store, store.tables.messages)


def count_rows(store: SQLStore, table: Table) -> int:
    with store.engines.sync.connect() as conn:
        return conn.execute(select(func.count()).select_from(table)).scalar_one()


@pytest.fixture
async def seeded(store: Any) -> Any:
    """A store holding one session (two messages, one user) that bad calls must not touch."""
    store.append(GOOD, [user("one"), user("two")], user_id="owner")
    yield store
    if isinstance(store, SQLStore):
        await store.aclose()  # async pools close in the loop that opened them


def snapshot(store: Any) -> tuple[Any, ...]:
    return (store.get_session(GOOD), store.get_history(GOOD), row_counts(store))


# -- ids ---------------------------------------------------------------------------------


async def test_bad_session_ids_are_rejected_everywhere(seeded: Any) -> None:
    """Every operation rejects bad session ids with ValueError/TypeError; nothing changes."""
    store = seeded
    before = snapshot(store)
    for bad, error in BAD_IDS:
        await check_session_id_rejected(store, bad, error)
    assert snapshot(store) == before


async def check_session_id_rejected(store: Any, bad: Any, error: type[Exception]) -> None:
    ops: list[tuple[str, tuple[Any, ...]]] = [
        ("append", (bad, [user()])),
        ("get_window", (bad,)),
        ("get_history", (bad,)),
        ("get_session", (bad,)),
        ("read_session", (bad,)),
        ("archive", (bad, [1])),
        ("replace", (bad, [user()])),
        ("commit_overflow", (bad, OverflowCommit([]))),
        ("set_block_mark", (bad, "facts", 1)),
        ("set_system_message", (bad, Message("system", "rules"))),
        ("set_system_message", (bad, None)),
        ("delete_session", (bad,)),
    ]
    for name, args in ops:
        for method in (name, f"a{name}"):
            await rejects(error, store, method, *args)


async def test_bad_user_ids_are_rejected_everywhere(seeded: Any) -> None:
    """A bad user id (or paging cursor) is rejected before anything is read or written."""
    store = seeded
    before = snapshot(store)
    for bad, error in BAD_IDS:
        if bad is not None:  # None means "no user" / "first page"
            await check_user_id_rejected(store, bad, error)
    assert snapshot(store) == before


async def check_user_id_rejected(store: Any, bad: Any, error: type[Exception]) -> None:
    for method in ("append", "aappend", "replace", "areplace"):
        await rejects(error, store, method, GOOD, [user("x")], user_id=bad)
        await rejects(error, store, method, "fresh", [user("x")], user_id=bad)
    for method in ("delete_user", "adelete_user"):
        await rejects(error, store, method, bad)
    for method in ("list_sessions", "alist_sessions"):
        await rejects(error, store, method, user_id=bad)
        await rejects(error, store, method, after=bad)


async def test_bad_limits_and_seqs_are_rejected(seeded: Any) -> None:
    """Negative, boolean or non-int limits and seqs raise ValueError/TypeError."""
    store = seeded
    for limit in (-1, True, "3", 2.0):
        with pytest.raises(ValueError):
            store.get_window(GOOD, limit=limit)
        with pytest.raises(ValueError):
            await store.aget_window(GOOD, limit=limit)
        with pytest.raises(ValueError):
            store.list_sessions(limit=limit)
    for seqs in ("12", [1.0], [True], [None], b"\x01"):
        with pytest.raises(TypeError):
            store.archive(GOOD, seqs)
    assert len(store.get_window(GOOD)) == 2


# -- messages ------------------------------------------------------------------------------


class _Opaque:
    pass


NON_JSON = [
    {"tags": {"a", "b"}},
    {"obj": _Opaque()},
    {"score": math.nan},
    {"score": math.inf},
    {"blob": b"\x00\x01"},
    {"when": datetime(2024, 1, 1)},
]


@pytest.mark.parametrize("metadata", [{(1, 2): "tuple key"}, {1: "a"}, {"nested": {2: "b"}}])
def test_non_string_metadata_keys_are_rejected_at_construction(metadata: Any) -> None:
    """Metadata keys JSON would coerce to strings are refused, so round trips stay exact."""
    with pytest.raises(InvalidMessageError):
        Message("user", "x", metadata=metadata)


async def test_non_json_metadata_rejects_the_whole_batch(seeded: Any) -> None:
    """A batch with one non-JSON metadata (set, object, NaN ...) stores none of the batch."""
    store = seeded
    before = snapshot(store)
    for metadata in NON_JSON:
        batch = [user("fine"), user("bad", metadata=metadata), user("also fine")]
        for target in (GOOD, "fresh"):
            for method in ("append", "aappend", "replace", "areplace"):
                await rejects(InvalidMessageError, store, method, target, batch)
        system = Message("system", "x", metadata=metadata)
        await rejects(InvalidMessageError, store, "set_system_message", GOOD, system)
    assert snapshot(store) == before
    assert not store.get_session("fresh").exists


async def test_non_json_raw_is_rejected(seeded: Any) -> None:
    """A framework payload (raw) that is not JSON is rejected and nothing is stored."""
    before = snapshot(seeded)
    with pytest.raises(InvalidMessageError):
        seeded.append(GOOD, [user("ok"), user("x", raw={"s": {1}})])
    assert snapshot(seeded) == before


LONE_SURROGATES = [
    {"content": "bad \ud800 text"},
    {"content": "x", "name": "\udfff"},
    {"content": "x", "metadata": {"k": "\ud83d"}},
    {"content": "x", "tool_call_id": "\udc80"},
]


async def test_lone_surrogate_is_a_clear_error(seeded: Any) -> None:
    """Text with a lone surrogate (not valid Unicode) raises InvalidMessageError; nothing stored."""
    store = seeded
    before = snapshot(store)
    for fields in LONE_SURROGATES:
        message = Message("user" if "tool_call_id" not in fields else "tool", **fields)
        for target in (GOOD, "fresh"):
            with pytest.raises(InvalidMessageError, match="surrogate"):
                store.append(target, [user("fine"), message])
            for method in ("aappend", "replace", "areplace"):
                await rejects(InvalidMessageError, store, method, target, [message])
    for method in ("set_system_message", "aset_system_message"):
        await rejects(InvalidMessageError, store, method, GOOD, Message("system", "\ud800"))
    assert snapshot(store) == before


async def test_non_messages_are_rejected(seeded: Any) -> None:
    """Appending a non-Message (a dict, a str, None) raises InvalidMessageError."""
    before = snapshot(seeded)
    for junk in ({"role": "user", "content": "x"}, "text", None, [user(), "text"], 5):
        with pytest.raises(InvalidMessageError):
            seeded.append(GOOD, junk)
        with pytest.raises(InvalidMessageError):
            await seeded.areplace(GOOD, junk)
    assert snapshot(seeded) == before


@pytest.mark.parametrize(
    "kwargs",
    [
        pytest.param({"role": "robot"}, id="unknown-role"),
        pytest.param({"role": "USER"}, id="role-case"),
        pytest.param({"role": "user", "content": 123}, id="content-int"),
        pytest.param({"role": "user", "content": None}, id="content-none"),
        pytest.param({"role": "user", "content": b"bytes"}, id="content-bytes"),
        pytest.param({"role": "assistant", "tool_calls": "x"}, id="tool-calls-str"),
        pytest.param({"role": "assistant", "tool_calls": [{"id": "1"}]}, id="tool-calls-dict"),
        pytest.param({"role": "user", "tool_calls": [ToolCall("1", "f")]}, id="tool-calls-user"),
        pytest.param({"role": "user", "name": 5}, id="name-int"),
        pytest.param({"role": "tool", "tool_call_id": 7}, id="tool-call-id-int"),
        pytest.param({"role": "user", "id": ""}, id="empty-id"),
        pytest.param({"role": "user", "metadata": [("a", 1)]}, id="metadata-list"),
        pytest.param({"role": "user", "created_at": "2024-01-01"}, id="created-at-str"),
        pytest.param({"role": "user", "token_count": -1}, id="negative-tokens"),
        pytest.param({"role": "user", "status": "deleted"}, id="unknown-status"),
    ],
)
def test_malformed_message_is_a_clear_error(kwargs: dict[str, Any]) -> None:
    """A message with an unknown role or a wrongly typed field cannot be built."""
    with pytest.raises(InvalidMessageError):
        Message(**kwargs)


@pytest.mark.parametrize(
    ("args", "error"),
    [
        pytest.param((5, "f"), InvalidMessageError, id="id-int"),
        pytest.param(("1", None), InvalidMessageError, id="name-none"),
        pytest.param(("1", "f", 3), InvalidMessageError, id="arguments-int"),
        pytest.param(("1", "f", ["a"]), InvalidMessageError, id="arguments-list"),
    ],
)
def test_malformed_tool_call_is_a_clear_error(args: tuple[Any, ...], error: type) -> None:
    """A tool call needs string id and name and mapping-or-string arguments."""
    with pytest.raises(error):
        ToolCall(*args)


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param("not json", id="not-json"),
        pytest.param("", id="empty"),
        pytest.param("[]", id="array"),
        pytest.param('"user"', id="string"),
        pytest.param("{}", id="no-role"),
        pytest.param('{"role": "robot"}', id="unknown-role"),
        pytest.param('{"role": "user", "content": 123}', id="content-int"),
        pytest.param('{"role": "user", "content": null}', id="content-null"),
        pytest.param('{"role": "assistant", "tool_calls": "x"}', id="tool-calls-str"),
        pytest.param('{"role": "assistant", "tool_calls": [{"id": "1"}]}', id="tool-call-no-name"),
        pytest.param('{"role": "assistant", "tool_calls": [7]}', id="tool-call-int"),
        pytest.param('{"role": "user", "created_at": "yesterday"}', id="bad-date"),
        pytest.param('{"role": "user", "created_at": 17}', id="date-int"),
        pytest.param('{"role": "user", "metadata": [1, 2]}', id="metadata-list"),
        pytest.param('{"role": "user", "name": {"a": 1}}', id="name-object"),
        pytest.param(b"\xff\xfe\x00garbage", id="bad-bytes"),
        pytest.param(None, id="none"),
        pytest.param(42, id="int"),
    ],
)
def test_malformed_payload_is_a_clear_error(payload: Any) -> None:
    """message_from_json raises InvalidMessageError (never KeyError/TypeError) on bad input."""
    with pytest.raises(InvalidMessageError):
        message_from_json(payload)


def test_message_from_dict_rejects_non_objects() -> None:
    """message_from_dict needs a mapping with a role."""
    for data in (None, [], "user", {"content": "no role"}):
        with pytest.raises(InvalidMessageError):
            message_from_dict(data)


# -- table names and constructors ---------------------------------------------------------

BAD_TABLE_NAMES = [
    pytest.param("", id="empty"),
    pytest.param("1abc", id="leading-digit"),
    pytest.param("a b", id="space"),
    pytest.param("a-b", id="dash"),
    pytest.param('a"b', id="quote"),
    pytest.param("a]b", id="bracket"),
    pytest.param("a`b", id="backtick"),
    pytest.param("a.b", id="dot"),
    pytest.param("tablé", id="non-ascii"),
    pytest.param("x--", id="comment"),
    pytest.param("x;y", id="semicolon"),
    pytest.param("x" * 129, id="129-chars"),
]


def test_sql_injection_in_table_name_is_refused_before_any_sql(
    sql_backend: str, make_store: Any, backend_urls: Any
) -> None:
    """A table name like "x; DROP TABLE y" raises ValueError at construction; y survives."""
    canary = make_store(sql_backend)
    canary.append(GOOD, [user("still here")])
    url = backend_urls[sql_backend]
    for name in (f"x; DROP TABLE {canary.table_name}", f"{canary.table_name}; --"):
        with pytest.raises(ValueError, match="invalid table_name"):
            SQLStore(url, name)
        with pytest.raises(ValueError, match="invalid schema"):
            SQLStore(url, "fine", schema=name)
    tables = set(sa_inspect(canary.engines.sync).get_table_names())
    assert canary.table_name in tables
    assert [m.content for m in canary.get_window(GOOD)] == ["still here"]


@pytest.mark.parametrize("name", BAD_TABLE_NAMES)
def test_bad_table_names_are_value_errors(name: str, tmp_path: Any) -> None:
    """Table and schema names must be safe identifiers (letters, digits, _; <= 128 chars)."""
    url = f"sqlite:///{tmp_path / 'never.db'}"
    with pytest.raises(ValueError):
        SQLStore(url, name)
    with pytest.raises(ValueError):
        SQLStore(url, "fine", schema=name)
    assert not (tmp_path / "never.db").exists()


def test_table_name_leaving_no_room_for_suffixes_is_refused(tmp_path: Any) -> None:
    """A 119-character table name is refused: its "_summaries" table would exceed 128 characters."""
    url = f"sqlite:///{tmp_path / 'never.db'}"
    with pytest.raises(ValueError, match="too long"):
        SQLStore(url, "x" * 119)
    SQLStore(url, "x" * 118, auto_create=False).close()


def test_non_string_names_and_bad_options_are_type_or_value_errors(tmp_path: Any) -> None:
    """Wrongly typed constructor arguments raise TypeError; out-of-range ones ValueError."""
    url = f"sqlite:///{tmp_path / 'never.db'}"
    for name in (None, 5, b"ChatMessages", ["t"]):
        with pytest.raises(TypeError):
            SQLStore(url, name)
    with pytest.raises(TypeError):
        SQLStore(url, "t", schema=7)
    with pytest.raises(TypeError):
        SQLStore(42)
    with pytest.raises(ValueError):
        SQLStore("this is not a url")
    with pytest.raises(TypeError):
        SQLStore(url, "t", cache="yes")
    for limit in (0, -3):
        with pytest.raises(ValueError):
            SQLStore(url, "t", max_messages_per_session=limit)
        with pytest.raises(ValueError):
            InMemoryStore(max_messages_per_session=limit)
    assert not (tmp_path / "never.db").exists()


def test_an_autocommit_engine_is_refused(tmp_path: Any) -> None:
    """An engine in AUTOCOMMIT (set when built or as an execution option, sync or async) would
    make multi-statement writes non-atomic: refused with a ValueError; plain engines work."""
    from sqlalchemy import create_engine
    from sqlalchemy.ext.asyncio import create_async_engine

    url = f"sqlite:///{tmp_path / 'auto.db'}"
    refused = [
        create_engine(url, isolation_level="AUTOCOMMIT"),
        create_engine(url).execution_options(isolation_level="AUTOCOMMIT"),
        create_async_engine(
            f"sqlite+aiosqlite:///{tmp_path / 'auto.db'}", isolation_level="AUTOCOMMIT"
        ),
    ]
    for engine in refused:
        with pytest.raises(ValueError, match="AUTOCOMMIT"):
            SQLStore(engine, "t")
    plain = create_engine(url, isolation_level="SERIALIZABLE")
    store = SQLStore(plain, "t")
    store.append("s", [Message("user", "kept")])
    assert [m.content for m in store.get_window("s")] == ["kept"]
    store.close()
    plain.dispose()


# -- errors --------------------------------------------------------------------------------

DEAD_URLS = [
    pytest.param("postgresql+psycopg://postgres@127.0.0.1:1/test", id="postgresql"),
    pytest.param("mysql+pymysql://root@127.0.0.1:1/test", id="mariadb"),
    pytest.param("sqlite:////nonexistent-dir/for/sure/memory.db", id="sqlite"),
]


@pytest.mark.parametrize("url", DEAD_URLS)
async def test_dead_database_raises_store_unavailable(url: str) -> None:
    """An unreachable database raises StoreUnavailableError (a StoreError) chained to the cause."""
    store = SQLStore(url, "t_dead", auto_create=False)
    try:
        for attempt in (
            lambda: store.append(GOOD, [user()]),
            lambda: store.get_window(GOOD),
            store.create_schema,
        ):
            with pytest.raises(StoreUnavailableError, match="unavailable") as info:
                attempt()
            assert isinstance(info.value, StoreError)
            assert not isinstance(info.value, sa_exc.SQLAlchemyError)
            assert isinstance(info.value.__cause__, sa_exc.SQLAlchemyError)
        with pytest.raises(StoreUnavailableError):
            await store.aappend(GOOD, [user()])
        with pytest.raises(StoreUnavailableError):
            await store.aget_session(GOOD)
    finally:
        await store.aclose()


def test_library_errors_do_not_shadow_builtin_memory_error() -> None:
    """AgentMemoryError is the library's root error, unrelated to the built-in MemoryError."""
    assert AgentMemoryError is not MemoryError
    assert not issubclass(AgentMemoryError, MemoryError)
    assert not issubclass(StoreUnavailableError, MemoryError)
    assert issubclass(StoreUnavailableError, StoreError)
    assert issubclass(StoreError, AgentMemoryError)
    assert issubclass(InvalidMessageError, AgentMemoryError)
    assert issubclass(InvalidMessageError, ValueError)


def test_message_tables_never_hold_rows_for_rejected_input(
    sql_backend: str, make_store: Any
) -> None:
    """After a burst of rejected calls a fresh SQL store's tables are still empty."""
    store = make_store(sql_backend)
    store.create_schema()
    for bad in ("", " x", "x" * 300, "a\x00"):
        with pytest.raises(ValueError):
            store.append(bad, [user()])
        with pytest.raises(ValueError):
            store.set_system_message(bad, None)
    with pytest.raises(InvalidMessageError):
        store.append("ok", [user(), user("x", metadata={"s": {1}})])
    with pytest.raises(InvalidMessageError):
        store.append("ok", [user("\ud800")])
    assert row_counts(store) == (0, 0)
    assert count_rows(store, store.tables.summaries) == 0
