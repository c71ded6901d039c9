"""MSSQLMemory: LlamaIndex's BaseMemory contract on AgentMemory, over SQLite and PostgreSQL,
and its serialized form: reconnectable, never carrying credentials."""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Sequence

import pytest
from llama_index.core.base.llms.types import ChatMessage, ImageBlock, TextBlock, ToolCallBlock
from llama_index.core.llms import MockLLM
from llama_index.core.memory.memory_blocks import StaticMemoryBlock
from mssql_memory import (
    AgentMemory,
    BaseMemoryBlock,
    InMemoryStore,
    InvalidMessageError,
    Message,
    SQLStore,
    Summarize,
)
from mssql_memory.groups import group_messages

import llamaindex_mssql_memory._connections as connections
import llamaindex_mssql_memory._memory as memory_module
from llamaindex_mssql_memory import (
    MSSQLMemory,
    as_chat_model,
    clear_connections,
    redact_url,
    register_connection,
    to_messages,
    unregister_connection,
)

SECRET = "s3cret-pw"


@pytest.fixture(autouse=True)
def _forget_connections():
    """Each test starts with an empty connection registry (as a fresh process would)."""
    yield
    clear_connections()
    memory_module._agents.clear()


def simulate_new_process() -> None:
    clear_connections()
    memory_module._agents.clear()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.integration)])
def li_backend(request: pytest.FixtureRequest, backend_urls) -> str:
    backend_urls[request.param]
    return request.param


@pytest.fixture
def new_memory(li_backend: str, amake_store):
    """``new_memory(session_id, **from_defaults kwargs)`` on a fresh table of the backend
    (a sync-URL store: sync calls use its engine, async calls its async twin)."""

    def make(session_id: str = "s", **kwargs) -> MSSQLMemory:
        store = kwargs.pop("store", None) or amake_store(li_backend, flavor="url")
        return MSSQLMemory.from_defaults(session_id=session_id, connection=store, **kwargs)

    return make


def user(text: str) -> ChatMessage:
    return ChatMessage(role="user", content=text)


def assistant(text: str) -> ChatMessage:
    return ChatMessage(role="assistant", content=text)


def tool_turn(i: int) -> list[ChatMessage]:
    call = ToolCallBlock(tool_call_id=f"c{i}", tool_name="add", tool_kwargs={"a": i, "b": 1})
    return [
        user(f"question {i} " + "word " * 10),
        ChatMessage(role="assistant", blocks=[call]),
        ChatMessage(role="tool", content=str(i + 1), additional_kwargs={"tool_call_id": f"c{i}"}),
        assistant(f"answer {i} " + "word " * 10),
    ]


def dumps(messages: Sequence[ChatMessage]) -> list[dict]:
    return [m.model_dump(mode="json") for m in messages]


def check_context(memory: MSSQLMemory, context: list[ChatMessage]) -> None:
    """Within budget, no orphaned or unanswered tool calls, first turn a user turn."""
    neutral = to_messages(context, memory.agent.token_counter)
    assert sum(m.token_count or 0 for m in neutral) <= memory.token_limit
    body = [m for m in neutral if m.role != "system"]
    groups = group_messages(body)
    assert all(g.complete and not g.is_orphan for g in groups)
    if body:
        assert body[0].role == "user"


# -- the BaseMemory contract ---------------------------------------------------------------


def test_put_then_get_returns_the_same_messages(new_memory) -> None:
    """What is put comes back from get() and get_all() exactly, in order."""
    memory = new_memory()
    sent = [user("hi"), *tool_turn(1)]
    memory.put(sent[0])
    memory.put_messages(sent[1:])
    assert dumps(memory.get()) == dumps(sent)
    assert dumps(memory.get_all()) == dumps(sent)


async def test_async_put_then_get(new_memory) -> None:
    """aput / aput_messages / aget / aget_all mirror the sync methods."""
    memory = new_memory()
    sent = [user("hi"), *tool_turn(1)]
    await memory.aput(sent[0])
    await memory.aput_messages(sent[1:])
    assert dumps(await memory.aget()) == dumps(sent)
    assert dumps(await memory.aget_all()) == dumps(sent)


async def test_context_stays_within_budget(new_memory) -> None:
    """get() fits token_limit with whole tool-call groups; get_all() keeps every message."""
    memory = new_memory(token_limit=300)
    sent: list[ChatMessage] = []
    for i in range(12):
        turn = tool_turn(i)
        sent.extend(turn)
        await memory.aput_messages(turn)
        check_context(memory, await memory.aget())
    context = memory.get()
    check_context(memory, context)
    assert len(context) < len(sent)
    assert dumps(context) == dumps(sent[-len(context) :])
    assert dumps(await memory.aget_all()) == dumps(sent)


def test_put_messages_is_all_or_nothing(new_memory) -> None:
    """A batch with an unserializable message stores nothing."""
    memory = new_memory()
    bad = ChatMessage(role="user", content="x", additional_kwargs={"o": object()})
    with pytest.raises(InvalidMessageError):
        memory.put_messages([user("fine"), bad])
    assert memory.get_all() == []


def test_set_replaces_the_window_atomically(new_memory) -> None:
    """set() makes the given messages the window; the old turns stay in get_all()."""
    memory = new_memory()
    memory.put_messages([user("old"), assistant("old answer")])
    memory.set([user("new"), assistant("new answer")])
    assert [m.content for m in memory.get()] == ["new", "new answer"]
    assert [m.content for m in memory.get_all()] == ["old", "old answer", "new", "new answer"]


async def test_aset_and_areset(new_memory) -> None:
    """aset replaces the window; areset deletes the session entirely."""
    memory = new_memory()
    await memory.aput(user("old"))
    await memory.aset([user("new")])
    assert [m.content for m in await memory.aget()] == ["new"]
    await memory.areset()
    assert await memory.aget_all() == [] and await memory.aget() == []


def test_reset_deletes_everything(new_memory) -> None:
    """reset() removes messages, summary and system message of the session only."""
    memory = new_memory()
    other = MSSQLMemory.from_defaults(session_id="other", memory=memory.agent)
    memory.set_system_message("be brief")
    memory.put(user("mine"))
    other.put(user("theirs"))
    memory.reset()
    assert memory.get() == [] and memory.get_all() == []
    assert [m.content for m in other.get()] == ["theirs"]


def test_system_message_and_summary_lead_the_context(new_memory) -> None:
    """The session's system message, then the summary, then the newest turns."""
    summarizer = Summarize(as_chat_model(MockLLM(max_tokens=8)), keep_recent=2)
    memory = new_memory(token_limit=400, overflow=summarizer)
    memory.set_system_message(ChatMessage(role="developer", content="You are terse."))
    for i in range(10):
        memory.put_messages([user(f"q{i} " + "word " * 20), assistant(f"a{i} " + "word " * 20)])
    context = memory.get()
    check_context(memory, context)
    assert context[0].role.value == "developer" and context[0].content == "You are terse."
    assert context[1].role.value == "system"
    assert context[1].content.startswith("CONVERSATION SUMMARY:")
    assert "text" in context[1].content
    assert context[-1].content.startswith("a9")


class Facts(BaseMemoryBlock):
    """A read-only long-term block for tests."""

    name = "facts"
    max_tokens = 100

    def get(self, *, query, user_id, session_id, max_tokens) -> list[str]:
        return [f"{user_id} likes tea", f"query was {query}"]

    def update(self, messages, *, user_id, session_id) -> None:
        pass


async def test_long_term_memory_rendered_with_query(new_memory) -> None:
    """Long-term blocks are rendered into the context, scoped by user_id and the input."""
    memory = new_memory(blocks=[Facts()], user_id="ada")
    await memory.aput(user("hello"))
    context = await memory.aget(input="tea?")
    rendered = context[0].content
    assert context[0].role.value == "system" and "<memory>" in rendered
    assert "ada likes tea" in rendered and "query was tea?" in rendered
    context = memory.get(input=ChatMessage(role="user", content="coffee?"))
    assert "query was coffee?" in context[0].content
    assert memory.store.get_session("s").user_id == "ada"


def test_images_count_toward_the_budget(new_memory) -> None:
    """Non-text blocks carry a token estimate, so an image-heavy turn is evicted first."""
    memory = new_memory(token_limit=600)
    image = ImageBlock(url="https://example.org/cat.png")
    memory.put(ChatMessage(role="user", blocks=[TextBlock(text="look")] + [image] * 2))
    memory.put(assistant("a cat"))
    memory.put_messages([user("and now?"), assistant("still a cat")])
    memory.put(ChatMessage(role="user", blocks=[TextBlock(text="again")] + [image] * 2))
    context = memory.get()
    check_context(memory, context)
    assert context[0].content == "and now?"


# -- construction -----------------------------------------------------------------------------


def test_from_defaults_rejects_bad_arguments(make_store) -> None:
    """Missing session ids, bad names and contradictory settings are clear errors."""
    store = make_store("sqlite")
    with pytest.raises(ValueError, match="session_id"):
        MSSQLMemory.from_defaults(connection=store)
    with pytest.raises(ValueError):
        MSSQLMemory.from_defaults(session_id=" padded ", connection=store)
    with pytest.raises(ValueError):
        MSSQLMemory.from_defaults(session_id="s", connection=store, table_name="bad name;")
    agent = AgentMemory(store, token_limit=100)
    with pytest.raises(ValueError, match="not both"):
        MSSQLMemory.from_defaults(session_id="s", memory=agent, token_limit=5)
    with pytest.raises(TypeError):
        MSSQLMemory.from_defaults(session_id="s", connection=42)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="not registered"):
        MSSQLMemory.from_defaults(session_id="s", connection="nowhere")
    with pytest.raises(TypeError, match="MSSQLChatStore"):
        MSSQLMemory.from_defaults(
            session_id="s", connection=store, blocks=[StaticMemoryBlock(static_content="x")]
        )


def test_memory_argument_is_used_as_is(make_store) -> None:
    """memory= gives a ready AgentMemory; token_limit and strategy come from it."""
    agent = AgentMemory(make_store("sqlite"), token_limit=1234)
    memory = MSSQLMemory.from_defaults(session_id="s", memory=agent)
    assert memory.agent is agent and memory.token_limit == 1234
    assert memory.table_name == agent.store.table_name


def test_default_connection_is_the_configured_url(monkeypatch, make_store) -> None:
    """connection=None uses $MSSQL_MEMORY_URL and serializes as None."""
    store = make_store("sqlite")
    monkeypatch.setenv("MSSQL_MEMORY_URL", store.engines.url.render_as_string(False))
    memory = MSSQLMemory.from_defaults(session_id="s", table_name=store.table_name)
    memory.put(user("hi"))
    assert memory.to_dict()["connection"] is None
    simulate_new_process()
    assert [m.content for m in MSSQLMemory.from_dict(memory.to_dict()).get()] == ["hi"]


# -- serialization and credentials ---------------------------------------------------------


def test_to_dict_from_dict_round_trip(new_memory) -> None:
    """to_dict() is JSON; from_dict() in the same process reuses the same AgentMemory."""
    memory = new_memory(user_id="u1", token_limit=777)
    memory.put(user("hi"))
    data = json.loads(json.dumps(memory.to_dict()))
    assert data["session_id"] == "s" and data["user_id"] == "u1"
    assert data["token_limit"] == 777 and data["class_name"] == "MSSQLMemory"
    restored = MSSQLMemory.from_dict(data)
    assert restored.agent is memory.agent
    assert dumps(restored.get()) == dumps(memory.get())


def test_round_trip_in_a_new_process_reconnects_by_url(new_memory) -> None:
    """With no registry, the URL reference reconnects to the same table and session."""
    memory = new_memory(token_limit=500)
    memory.put(user("remember me"))
    data = memory.to_dict()
    simulate_new_process()
    restored = MSSQLMemory.from_dict(data)
    assert restored.agent is not memory.agent
    assert [m.content for m in restored.get_all()] == ["remember me"]
    assert restored.agent.token_limit == 500


def test_unrestorable_strategy_is_reported(new_memory, caplog) -> None:
    """A Summarize memory restored without its model falls back to Trim with a warning."""
    memory = new_memory(overflow=Summarize(as_chat_model(MockLLM())))
    data = memory.to_dict()
    assert data["overflow"].startswith("Summarize(")
    simulate_new_process()
    with caplog.at_level(logging.WARNING, logger="llamaindex_mssql_memory"):
        restored = MSSQLMemory.from_dict(data)
        restored.get()
    assert "restored with Trim" in caplog.text


def test_named_connection_restores_the_strategy(make_store) -> None:
    """A registered AgentMemory is what a serialized name resolves to, strategy included."""
    agent = AgentMemory(
        make_store("sqlite"), token_limit=900, overflow=Summarize(as_chat_model(MockLLM()))
    )
    register_connection("main", agent)
    memory = MSSQLMemory.from_defaults(session_id="s", connection="main")
    memory.put(user("hi"))
    data = memory.to_dict()
    assert data["connection"] == "main"
    memory_module._agents.clear()
    connections._by_ref.clear()
    restored = MSSQLMemory.from_dict(data)
    assert restored.agent is agent and isinstance(restored.agent.overflow, Summarize)
    unregister_connection("main")
    with pytest.raises(ValueError, match="not registered"):
        MSSQLMemory.from_dict(data).get()


def test_in_memory_store_is_process_local(make_store) -> None:
    """An InMemoryStore gets a process-local name; another process cannot resolve it."""
    store = InMemoryStore()
    memory = MSSQLMemory.from_defaults(session_id="s", connection=store)
    memory.put(user("volatile"))
    data = memory.to_dict()
    again = MSSQLMemory.from_defaults(session_id="t", connection=store)
    assert again.connection == memory.connection  # one name per store, not per memory
    assert [m.content for m in MSSQLMemory.from_dict(data).get()] == ["volatile"]
    simulate_new_process()
    with pytest.raises(ValueError, match="not registered"):
        MSSQLMemory.from_dict(data).get()


@pytest.mark.integration
def test_credentials_never_serialized(postgresql_url: str, monkeypatch, caplog) -> None:
    """A password in the URL is used but never appears in to_dict, JSON, repr or logs."""
    from sqlalchemy.engine import make_url

    url = make_url(postgresql_url).set(password=SECRET).render_as_string(hide_password=False)
    table = f"t_{uuid.uuid4().hex[:10]}"
    caplog.set_level(logging.DEBUG)
    memory = MSSQLMemory.from_defaults(
        session_id="s", connection=url, table_name=table, password_env="LI_TEST_PW"
    )
    try:
        memory.put(user("hi"))
        data = memory.to_dict()
        for text in (json.dumps(data), repr(memory), str(memory), caplog.text):
            assert SECRET not in text
        assert data["connection"] == redact_url(url) and data["password_env"] == "LI_TEST_PW"
        simulate_new_process()
        with pytest.raises(ValueError, match="LI_TEST_PW") as error:
            MSSQLMemory.from_dict(data).get()
        assert SECRET not in str(error.value)
        monkeypatch.setenv("LI_TEST_PW", SECRET)
        restored = MSSQLMemory.from_dict(data)
        assert [m.content for m in restored.get()] == ["hi"]
        assert restored.store.engines.url.password == SECRET
        direct = MSSQLMemory(session_id="s", connection=url, table_name=table)
        assert SECRET not in json.dumps(direct.to_dict())
        assert [m.content for m in direct.get()] == ["hi"]
    finally:
        memory.store.drop_schema()
        memory.store.close()


def test_redact_url_removes_every_secret() -> None:
    """Passwords, password-like query parameters and ODBC PWD= are stripped."""
    assert redact_url("postgresql+psycopg://u:pw@h:5432/db") == "postgresql+psycopg://u@h:5432/db"
    assert "tok" not in redact_url("mysql+pymysql://u@h/db?password=tok&charset=utf8mb4")
    assert "charset=utf8mb4" in redact_url("mysql+pymysql://u@h/db?password=tok&charset=utf8mb4")
    odbc = "mssql+pyodbc:///?odbc_connect=DRIVER%3D%7BX%7D%3BSERVER%3Dh%3BUID%3Du%3BPWD%3Dtopsecret"
    assert "topsecret" not in redact_url(odbc) and "SERVER" in redact_url(odbc)


# -- native async ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "backend", ["sqlite", pytest.param("postgresql", marks=pytest.mark.integration)]
)
async def test_async_methods_never_touch_a_sync_engine(backend: str, amake_store) -> None:
    """On an AsyncEngine every a-method runs on the async driver: no sync engine is made."""
    store: SQLStore = amake_store(backend, flavor="async-engine")
    memory = MSSQLMemory.from_defaults(session_id="s", connection=store, token_limit=200)
    for i in range(6):
        await memory.aput_messages(tool_turn(i))
    await memory.aget()
    await memory.aget_all()
    await memory.aset([user("reset")])
    await memory.aset_system_message("sys")
    assert [m.content for m in await memory.aget()] == ["sys", "reset"]
    await memory.areset()
    assert store.engines._sync is None


def test_unknown_session_reads_empty(new_memory) -> None:
    """A session that was never written reads as empty, not as an error."""
    memory = new_memory("never-written")
    assert memory.get() == [] and memory.get_all() == []


def test_foreign_messages_are_readable(new_memory) -> None:
    """Messages another framework wrote to the session come back as ChatMessages."""
    memory = new_memory()
    memory.store.append("s", [Message("user", "from langchain", source="langchain")])
    (back,) = memory.get()
    assert back.role.value == "user" and back.content == "from langchain"
