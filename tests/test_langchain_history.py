"""MSSQLChatMessageHistory: construction, the managed context, writes, native async, restarts."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import langchain_core
import pytest
from conftest import async_url, backend_params, unique_table
from langchain_core.chat_history import BaseChatMessageHistory
from langchain_core.messages import (
    AIMessage,
    BaseMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
    messages_from_dict,
)
from mssql_memory import (
    SUMMARY_PREFIX,
    AgentMemory,
    BaseMemoryBlock,
    BudgetError,
    InvalidMessageError,
    Message,
    Summarize,
    Trim,
)
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.ext.asyncio import create_async_engine

from langchain_mssql_memory import (
    DEFAULT_TOKEN_LIMIT,
    MSSQLChatMessageHistory,
    as_chat_model,
    history_factory,
)

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(params=backend_params(("sqlite", "postgresql")))
def lc_backend(request: pytest.FixtureRequest, backend_urls: Any) -> str:
    backend_urls[request.param]  # skips (or fails in CI) when the server is missing
    return request.param


@pytest.fixture
def history_on(backend_urls: Any) -> Iterator[Any]:
    """``history_on(backend, session_id, **options)``: a history on a table of its own."""
    made: list[MSSQLChatMessageHistory] = []

    def make(backend: str, session_id: str = "s-1", **options: Any) -> MSSQLChatMessageHistory:
        options.setdefault("table_name", unique_table())
        history = MSSQLChatMessageHistory(session_id, connection=backend_urls[backend], **options)
        made.append(history)
        return history

    yield make
    for history in made:
        history.memory.store.drop_schema()
        history.close()


def turn(i: int) -> list[BaseMessage]:
    return [HumanMessage(f"question {i} " + "word " * 20), AIMessage(f"answer {i} " + "word " * 20)]


def assert_tool_integrity(context: list[BaseMessage], *, pending_ok: bool = False) -> None:
    """No tool result without its call before it; no call without all its results after it."""
    open_calls: set[str] = set()
    for index, message in enumerate(context):
        if isinstance(message, ToolMessage):
            assert message.tool_call_id in open_calls, f"orphan tool result at {index}"
            open_calls.discard(message.tool_call_id)
            continue
        assert not open_calls, f"tool calls {open_calls} not answered before message {index}"
        if isinstance(message, AIMessage):
            open_calls = {c["id"] for c in message.tool_calls}
    assert pending_ok or not open_calls, f"tool calls {open_calls} left without results"
    if context and not isinstance(context[0], SystemMessage):
        assert not isinstance(context[0], ToolMessage)


# -- construction ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("session_id", "error"),
    [("", ValueError), (" padded ", ValueError), ("a\nb", ValueError), ("x" * 256, ValueError)],
)
def test_bad_session_ids_fail_at_construction(session_id: Any, error: type) -> None:
    """A bad session id is refused by the constructor, before any database work."""
    with pytest.raises(error, match="session_id"):
        MSSQLChatMessageHistory(session_id, connection="sqlite://")


def test_non_string_session_id_is_a_type_error() -> None:
    """A session id must be a string (no silent str() of ints or None)."""
    with pytest.raises(TypeError, match="session_id"):
        MSSQLChatMessageHistory(None, connection="sqlite://")  # type: ignore[arg-type]


def test_bad_user_id_fails_at_construction() -> None:
    """The user id is validated like a session id."""
    with pytest.raises(ValueError, match="user_id"):
        MSSQLChatMessageHistory("s", connection="sqlite://", user_id="")


def test_memory_and_store_options_are_exclusive() -> None:
    """Giving memory= with connection (or budget/table options) is a clear error."""
    memory = AgentMemory(token_limit=1000)
    with pytest.raises(ValueError, match="either memory= or connection="):
        MSSQLChatMessageHistory("s", memory=memory, connection="sqlite://")
    with pytest.raises(ValueError, match="table_name=, token_limit="):
        MSSQLChatMessageHistory("s", memory=memory, table_name="x", token_limit=5)
    with pytest.raises(TypeError, match="AgentMemory"):
        MSSQLChatMessageHistory("s", memory="sqlite://")  # type: ignore[arg-type]


@pytest.mark.filterwarnings("ignore:tiktoken encoding")
def test_budget_from_token_limit_model_or_default() -> None:
    """token_limit wins; else the model's context window; else DEFAULT_TOKEN_LIMIT."""
    assert MSSQLChatMessageHistory("s", connection="sqlite://").memory.token_limit == (
        DEFAULT_TOKEN_LIMIT
    )
    limited = MSSQLChatMessageHistory("s", connection="sqlite://", token_limit=777)
    assert limited.memory.token_limit == 777
    by_name = MSSQLChatMessageHistory("s", connection="sqlite://", model="gpt-4o")
    assert 100_000 < by_name.memory.token_limit < 128_000

    class NamedModel:
        model_name = "gpt-4o-mini"

    by_object = MSSQLChatMessageHistory("s", connection="sqlite://", model=NamedModel())
    assert by_object.memory.token_limit == by_name.memory.token_limit
    with pytest.raises(BudgetError, match="unknown model"):
        MSSQLChatMessageHistory("s", connection="sqlite://", model="my-local-model")
    with pytest.raises(ValueError, match="model name"):
        MSSQLChatMessageHistory("s", connection="sqlite://", model=object())


def test_bad_table_name_is_refused() -> None:
    """The table name is validated (no SQL pasted from user input)."""
    with pytest.raises(ValueError, match="table_name"):
        MSSQLChatMessageHistory("s", connection="sqlite://", table_name="x; DROP TABLE y")


def test_repr_hides_the_password() -> None:
    """The password in a connection URL never appears in repr (no connection is made)."""
    history = MSSQLChatMessageHistory(
        "s", connection="postgresql+psycopg://app:s3cret-pw@db.invalid:5432/chat", user_id="u"
    )
    text = repr(history)
    assert "s3cret-pw" not in text
    assert "db.invalid" in text and "session_id='s'" in text and "user_id='u'" in text
    assert not any("s3cret-pw" in repr(v) for v in vars(history).values())


def test_default_connection_comes_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without connection=, the history uses MSSQL_MEMORY_URL (else the embedded SQLite file)."""
    db = tmp_path / "env.db"
    monkeypatch.setenv("MSSQL_MEMORY_URL", f"sqlite:///{db}")
    history = MSSQLChatMessageHistory("s")
    history.add_messages([HumanMessage("hi")])
    history.close()
    assert db.exists()


def test_no_deprecation_warning_on_import_or_use() -> None:
    """A fresh interpreter with -W error imports and uses the class (base class deprecated)."""
    code = (
        "import langchain_mssql_memory as m\n"
        "from langchain_core.messages import HumanMessage\n"
        "h = m.MSSQLChatMessageHistory('s', connection='sqlite://')\n"
        "h.add_messages([HumanMessage('hi')])\n"
        "assert [x.content for x in h.messages] == ['hi']\n"
        "h.clear()\n"
    )
    proc = subprocess.run(
        [sys.executable, "-W", "error", "-c", code],
        cwd=ROOT,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""


def test_no_deprecation_warning_in_process() -> None:
    """Constructing and subclass checks raise no warning under ``simplefilter('error')``."""
    if tuple(int(p) for p in langchain_core.__version__.split(".")[:3]) >= (1, 6, 4):
        assert hasattr(BaseChatMessageHistory, "__deprecated__")  # the test means something
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        history = MSSQLChatMessageHistory("s", connection="sqlite://")
        assert isinstance(history, BaseChatMessageHistory)
        history.close()


# -- the managed context --------------------------------------------------------------------------


def test_messages_in_order_and_stable(lc_backend: str, history_on: Any) -> None:
    """messages returns what was added, in order; two reads with no write are equal."""
    history = history_on(lc_backend, token_limit=10_000)
    history.add_message(HumanMessage("first"))
    history.add_messages([AIMessage("second"), HumanMessage("third")])
    assert [m.content for m in history.messages] == ["first", "second", "third"]
    assert history.messages == history.messages
    assert str(history) == "Human: first\nAI: second\nHuman: third"


def test_trim_keeps_the_context_within_budget(lc_backend: str, history_on: Any) -> None:
    """With a small budget the context is trimmed to whole turns; the full history keeps all."""
    history = history_on(lc_backend, token_limit=300)
    sent: list[BaseMessage] = []
    for i in range(12):
        history.add_messages(turn(i))
        sent += turn(i)
    context = history.messages
    counter = history.memory.token_counter
    tokens = sum(counter.count_message(Message("user", m.text)) for m in context)
    assert tokens <= 300
    assert 2 <= len(context) < len(sent)
    assert isinstance(context[0], HumanMessage)
    assert context == sent[-len(context) :]
    assert history.get_full_history() == sent


def test_clear_deletes_the_session(lc_backend: str, history_on: Any) -> None:
    """clear() removes messages, summary and system message; other sessions stay."""
    history = history_on(lc_backend)
    other = MSSQLChatMessageHistory("s-2", memory=history.memory)
    history.set_system_message("be nice")
    history.add_messages(turn(1))
    other.add_messages(turn(2))
    history.clear()
    assert history.messages == [] and history.get_full_history() == []
    assert other.messages == turn(2)


def test_system_message_comes_first_exactly(lc_backend: str, history_on: Any) -> None:
    """A SystemMessage set for the session is first in the context and round-trips exactly."""
    history = history_on(lc_backend, token_limit=200)
    system = SystemMessage("You are terse.", id="sys-1", additional_kwargs={"x": 1})
    history.set_system_message(system)
    for i in range(6):
        history.add_messages(turn(i))
    context = history.messages
    assert context[0] == system
    assert isinstance(context[1], HumanMessage)
    history.set_system_message(None)
    assert not isinstance(history.messages[0], SystemMessage)
    with pytest.raises(TypeError, match="SystemMessage"):
        history.set_system_message(HumanMessage("not a system message"))  # type: ignore[arg-type]


def test_user_id_is_attached(lc_backend: str, history_on: Any) -> None:
    """The history's user_id is recorded on the session (long-term blocks scope by it)."""
    history = history_on(lc_backend, user_id="user-7")
    history.add_messages(turn(1))
    assert history.memory.store.get_session(history.session_id).user_id == "user-7"


class _Facts(BaseMemoryBlock):
    name = "facts"
    max_tokens = 100

    def get(self, **kwargs: Any) -> list[str]:
        return ["The user's name is Ann."]


def test_summary_and_long_term_memory_are_system_messages(lc_backend: str, make_store: Any) -> None:
    """The rolling summary and rendered long-term memory arrive as SystemMessages, stably."""
    summarizer = as_chat_model(_fake_summarizer("Ann asked about leave."))
    memory = AgentMemory(
        make_store(lc_backend),
        token_limit=400,
        overflow=Summarize(summarizer, keep_recent=2, max_summary_tokens=60),
        blocks=[_Facts()],
    )
    history = MSSQLChatMessageHistory("s", memory=memory)
    for i in range(8):
        history.add_messages(turn(i))
    context = history.messages
    assert [type(m) for m in context[:2]] == [SystemMessage, SystemMessage]
    assert "The user's name is Ann." in context[0].content
    assert context[1].content == SUMMARY_PREFIX + "Ann asked about leave."
    assert isinstance(context[2], HumanMessage)
    assert history.messages == context


def test_memory_placed_in_the_user_message(lc_backend: str, make_store: Any) -> None:
    """With memory_placement='user' the latest HumanMessage carries the memory, fields kept."""
    memory = AgentMemory(
        make_store(lc_backend), token_limit=2000, blocks=[_Facts()], memory_placement="user"
    )
    history = MSSQLChatMessageHistory("s", memory=memory)
    question = HumanMessage("What is my name?", id="q-1", additional_kwargs={"k": "v"})
    history.add_messages([HumanMessage("hello", id="q-0"), AIMessage("hi"), question])
    context = history.messages
    assert context[0] == HumanMessage("hello", id="q-0")
    latest = context[-1]
    assert latest.content.endswith("\n\nWhat is my name?")
    assert "The user's name is Ann." in latest.content
    assert (latest.id, latest.additional_kwargs) == ("q-1", {"k": "v"})
    assert history.get_full_history()[-1] == question


def test_oversized_newest_message_is_cut_but_whole(lc_backend: str, history_on: Any) -> None:
    """A newest message over the budget comes back cut, with its id and image kept."""
    history = history_on(lc_backend, token_limit=120)
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}
    big = HumanMessage([{"type": "text", "text": "describe " * 400}, image], id="big")
    history.add_messages([big])
    (cut,) = history.messages
    assert (type(cut), cut.id, cut.content[-1]) == (HumanMessage, "big", image)
    assert cut.text.endswith(" [truncated]") and len(cut.text) < len(big.text) // 2
    assert history.get_full_history() == [big]


def _fake_summarizer(text: str) -> Any:
    from langchain_core.language_models.fake_chat_models import FakeListChatModel

    return FakeListChatModel(responses=[text])


# -- bad input ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad",
    [
        [HumanMessage("ok"), "not a message"],
        [HumanMessage("ok"), {"role": "user", "content": "dict"}],
        [HumanMessage("ok"), None],
    ],
)
def test_malformed_batches_store_nothing(lc_backend: str, history_on: Any, bad: list) -> None:
    """A batch with a non-message is refused whole (TypeError and InvalidMessageError)."""
    history = history_on(lc_backend)
    with pytest.raises(TypeError) as info:
        history.add_messages(bad)
    assert isinstance(info.value, InvalidMessageError)
    with pytest.raises(TypeError):
        history.add_message("hello")  # type: ignore[arg-type]
    assert history.get_full_history() == []


def test_unserializable_payload_stores_nothing(lc_backend: str, history_on: Any) -> None:
    """A tool artifact that is not JSON is refused with its path; the batch stores nothing."""
    history = history_on(lc_backend)
    bad = ToolMessage("r", tool_call_id="c", artifact={"rows": [object()]})
    with pytest.raises(InvalidMessageError, match=r"artifact\.rows\[0\] is a object"):
        history.add_messages([HumanMessage("ok"), bad])
    assert history.get_full_history() == []


async def test_async_bad_input_stores_nothing(lc_backend: str, history_on: Any) -> None:
    """The async API refuses bad batches the same way."""
    history = history_on(lc_backend)
    with pytest.raises(TypeError):
        await history.aadd_messages([HumanMessage("ok"), 42])  # type: ignore[list-item]
    with pytest.raises(InvalidMessageError, match="nan"):
        await history.aadd_messages([AIMessage("x", response_metadata={"score": float("nan")})])
    assert await history.aget_full_history() == []
    await history.aclose()


# -- tool calls still waiting for their results ---------------------------------------------------


def _call(i: int) -> dict[str, Any]:
    return {"id": f"call_{i}", "name": "f", "args": {"i": i}, "type": "tool_call"}


def test_pending_tool_call_stays_visible(lc_backend: str, history_on: Any) -> None:
    """The newest tool call shows while its results arrive; complete groups show whole."""
    history = history_on(lc_backend)
    question = HumanMessage("go")
    call = AIMessage("", tool_calls=[_call(1), _call(2)])
    results = [ToolMessage(str(i), tool_call_id=f"call_{i}") for i in (1, 2)]
    history.add_messages([question, call])
    assert history.messages == [question, call]
    history.add_messages(results[:1])
    assert history.messages == [question, call, results[0]]
    history.add_messages(results[1:])
    assert history.messages == [question, call, *results]
    assert_tool_integrity(history.messages)


def test_pending_parallel_calls_longer_than_the_probe(lc_backend: str, history_on: Any) -> None:
    """A pending call with more results than the tail probe reads is still found whole."""
    history = history_on(lc_backend)
    call = AIMessage("", tool_calls=[_call(i) for i in range(12)])
    results = [ToolMessage(str(i), tool_call_id=f"call_{i}") for i in range(11)]
    history.add_messages([HumanMessage("go"), call, *results])
    assert history.messages == [HumanMessage("go"), call, *results]


def test_leading_system_message_in_the_window_is_kept(history_on: Any) -> None:
    """A SystemMessage added as the first message stays in the context when the budget allows."""
    history = history_on("sqlite")
    sent = [SystemMessage("You are terse."), HumanMessage("hi"), AIMessage("yo")]
    history.add_messages(sent)
    assert history.messages == sent


def test_abandoned_tool_call_is_left_out(lc_backend: str, history_on: Any) -> None:
    """A call that never got results and is no longer the newest is not sent to the model."""
    history = history_on(lc_backend)
    history.add_messages([HumanMessage("go"), AIMessage("", tool_calls=[_call(1)])])
    history.add_messages([HumanMessage("never mind")])
    context = history.messages
    assert context == [HumanMessage("go"), HumanMessage("never mind")]
    assert_tool_integrity(context)


# -- native async ---------------------------------------------------------------------------------


@pytest.fixture
def connects() -> Iterator[list[tuple[bool, int]]]:
    """Every new engine connection while the test runs: (async dialect?, thread id)."""
    seen: list[tuple[bool, int]] = []

    def record(conn: Any) -> None:
        seen.append((bool(conn.dialect.is_async), threading.get_ident()))

    event.listen(Engine, "engine_connect", record)
    yield seen
    event.remove(Engine, "engine_connect", record)


@pytest.mark.parametrize("given", ["async-engine", "sync-url"])
async def test_async_methods_run_no_sync_database_call(
    lc_backend: str, given: str, backend_urls: Any, connects: list[tuple[bool, int]]
) -> None:
    """Every a-method talks to the database through the async driver, on the loop's thread."""
    url = backend_urls[lc_backend]
    engine = create_async_engine(async_url(url)) if given == "async-engine" else None
    history = MSSQLChatMessageHistory(
        "s", connection=engine or url, table_name=unique_table(), token_limit=300
    )
    try:
        for i in range(10):
            await history.aadd_messages(turn(i))
            context = await history.aget_messages()
        await history.aset_system_message("sys")
        assert len(await history.aget_full_history()) == 20
        assert context == (await history.aget_full_history())[-len(context) :]
        await history.aclear()
        assert await history.aget_messages() == []
        loop_thread = threading.get_ident()
        assert connects, "no connection was recorded"
        assert all(is_async and thread == loop_thread for is_async, thread in connects)
        if engine is not None:
            assert history.memory.store.engines.async_engine is engine
    finally:
        await history.memory.store.adrop_schema()
        await history.aclose()
        if engine is not None:
            await engine.dispose()


def test_async_engine_sync_methods_work_in_sync_code(backend_urls: Any) -> None:
    """Given only an AsyncEngine, the sync methods still work from plain sync code."""
    engine = create_async_engine(async_url(backend_urls["sqlite"]))
    history = MSSQLChatMessageHistory("s", connection=engine, table_name=unique_table())

    async def read_then_dispose() -> list[BaseMessage]:
        try:
            return await history.aget_messages()
        finally:
            await engine.dispose()  # in the loop its connections belong to

    try:
        history.add_messages(turn(1))
        assert history.messages == turn(1)
        assert asyncio.run(read_then_dispose()) == turn(1)
    finally:
        history.memory.store.drop_schema()
        history.close()


def test_sync_engine_is_accepted(backend_urls: Any) -> None:
    """A caller's Engine is used as is and left open by close()."""
    engine = create_engine(backend_urls["sqlite"])
    history = MSSQLChatMessageHistory("s", connection=engine, table_name=unique_table())
    history.add_messages(turn(1))
    history.close()
    with engine.connect():
        pass  # still usable
    assert history.messages == turn(1)
    history.memory.store.drop_schema()
    engine.dispose()


# -- process restart ------------------------------------------------------------------------------


USAGE = {"input_tokens": 1, "output_tokens": 2, "total_tokens": 3}
_CHILD = """
import json, sys
from langchain_core.messages import AIMessage, messages_to_dict
from langchain_mssql_memory import MSSQLChatMessageHistory
url, table = sys.argv[1], sys.argv[2]
history = MSSQLChatMessageHistory("restart-session", connection=url, table_name=table)
seen = messages_to_dict(history.messages)
history.add_messages([AIMessage("written by the second process", id="child-1")])
history.close()
print(json.dumps(seen))
"""


def test_new_process_sees_the_history(tmp_path: Path) -> None:
    """A new process on the same SQLite file and session sees the history, and vice versa."""
    url = f"sqlite:///{tmp_path / 'restart.db'}"
    table = unique_table()
    first = MSSQLChatMessageHistory("restart-session", connection=url, table_name=table)
    system = SystemMessage("sys", id="s")
    sent = [
        HumanMessage("remember 42", id="h"),
        AIMessage("", id="a", tool_calls=[_call(1)]),
        ToolMessage("ok", tool_call_id="call_1", id="t", artifact={"n": 42}),
        AIMessage("remembered", id="a2", usage_metadata=USAGE),
    ]
    first.set_system_message(system)
    first.add_messages(sent)
    first.close()
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD, url, table],
        cwd=ROOT,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert messages_from_dict(json.loads(proc.stdout)) == [system, *sent]
    child = AIMessage("written by the second process", id="child-1")
    assert first.messages == [system, *sent, child]
    first.close()


# -- the factory ----------------------------------------------------------------------------------


def test_history_factory_shares_one_memory(lc_backend: str, make_store: Any) -> None:
    """history_factory returns histories over one AgentMemory, with optional user ids."""
    memory = AgentMemory(make_store(lc_backend), token_limit=1000, overflow=Trim())
    factory = history_factory(memory=memory)
    a, b = factory("a"), factory("b", user_id="u")
    assert a.memory is b.memory is memory
    a.add_messages(turn(1))
    assert factory("a").messages == turn(1) and b.messages == []
    with pytest.raises(ValueError, match="either memory="):
        history_factory("sqlite://", memory=memory)
    own = history_factory("sqlite://", token_limit=50)
    assert own.memory.token_limit == 50
