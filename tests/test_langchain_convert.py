"""LangChain <-> neutral message conversion: golden payloads, exact round trips, neutral fields."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
from conftest import backend_params, unique_table
from langchain_core.messages import (
    AIMessage,
    AIMessageChunk,
    BaseMessage,
    ChatMessage,
    FunctionMessage,
    HumanMessage,
    RemoveMessage,
    SystemMessage,
    ToolMessage,
)
from mssql_memory import AgentMemory, InvalidMessageError, Message, ToolCall
from mssql_memory.tokens import default_token_counter
from sqlalchemy import select

import langchain_mssql_memory._convert as convert
from langchain_mssql_memory import (
    SOURCE,
    MSSQLChatMessageHistory,
    from_langchain,
    from_langchain_messages,
    to_langchain,
)

GOLDEN = Path(__file__).parent / "golden" / "langchain" / "messages.json"
FROZEN = datetime(2025, 1, 2, 3, 4, 5, tzinfo=timezone.utc)

# One conversation that uses every message type and field; valid as model context as it is.
SAMPLES: dict[str, BaseMessage] = {
    "human": HumanMessage("What is 2+3 and 4*5? héllo 👋 \x00 end", id="h-1", name="ann"),
    "human_multimodal": HumanMessage(
        [
            {"type": "text", "text": "And what is in "},
            "this picture?",
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
        ],
        id="h-2",
    ),
    "ai_tool_calls": AIMessage(
        [{"type": "text", "text": "Let me compute."}],
        id="a-1",
        tool_calls=[
            {"id": "call_1", "name": "add", "args": {"a": 2, "b": 3}, "type": "tool_call"},
            {"id": "call_2", "name": "multiply", "args": {"a": 4, "b": 5}, "type": "tool_call"},
        ],
        invalid_tool_calls=[
            {
                "id": "call_3",
                "name": "divide",
                "args": "{'a': 1",
                "error": "bad JSON",
                "type": "invalid_tool_call",
            }
        ],
        usage_metadata={"input_tokens": 21, "output_tokens": 9, "total_tokens": 30},
        response_metadata={"model_name": "fake-1", "finish_reason": "tool_calls"},
        additional_kwargs={"refusal": None, "nested": {"list": [1, 2.5, True, None]}},
    ),
    "tool": ToolMessage(
        "5", tool_call_id="call_1", name="add", id="t-1", artifact={"raw": [2, 3]}, status="success"
    ),
    "tool_error": ToolMessage(
        "multiply is down", tool_call_id="call_2", name="multiply", id="t-2", status="error"
    ),
    "tool_invalid": ToolMessage(
        "could not parse arguments", tool_call_id="call_3", id="t-3", status="error"
    ),
    "ai": AIMessage("2+3=5; multiply failed.", id="a-2", name="calc-bot"),
    "ai_function_call": AIMessage(
        "",
        id="a-3",
        additional_kwargs={"function_call": {"name": "lookup", "arguments": '{"q": "x"}'}},
    ),
    "function": FunctionMessage("found x", name="lookup", id="f-1"),
    "chat_custom_role": ChatMessage("Looks right to me.", role="critic", id="c-1"),
    "chat_assistant_role": ChatMessage("Noted.", role="assistant", id="c-2"),
    "system": SystemMessage("Be brief.", id="s-1", additional_kwargs={"cache": "ephemeral"}),
    "ai_chunk": AIMessageChunk(
        "streamed answer", id="a-4", chunk_position="last", response_metadata={"n": 1}
    ),
}

NEUTRAL: dict[str, tuple[str, str, str | None, list[tuple[str, str, Any]], str | None]] = {
    # name: (role, content, name, tool calls (id, name, arguments), tool_call_id)
    "human": ("user", "What is 2+3 and 4*5? héllo 👋 \x00 end", "ann", [], None),
    "human_multimodal": ("user", "And what is in this picture?", None, [], None),
    "ai_tool_calls": (
        "assistant",
        "Let me compute.",
        None,
        [
            ("call_1", "add", {"a": 2, "b": 3}),
            ("call_2", "multiply", {"a": 4, "b": 5}),
            ("call_3", "divide", "{'a': 1"),
        ],
        None,
    ),
    "tool": ("tool", "5", "add", [], "call_1"),
    "tool_error": ("tool", "multiply is down", "multiply", [], "call_2"),
    "tool_invalid": ("tool", "could not parse arguments", None, [], "call_3"),
    "ai": ("assistant", "2+3=5; multiply failed.", "calc-bot", [], None),
    "ai_function_call": (
        "assistant",
        "",
        None,
        [("function:lookup", "lookup", '{"q": "x"}')],
        None,
    ),
    "function": ("tool", "found x", "lookup", [], "function:lookup"),
    "chat_custom_role": ("user", "Looks right to me.", None, [], None),
    "chat_assistant_role": ("assistant", "Noted.", None, [], None),
    "system": ("system", "Be brief.", None, [], None),
    "ai_chunk": ("assistant", "streamed answer", None, [], None),
}


def conversation() -> list[BaseMessage]:
    """Fresh copies of the samples, in conversation order."""
    return [m.model_copy(deep=True) for m in SAMPLES.values()]


@pytest.fixture
def frozen_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(convert, "_now", lambda: FROZEN)


@pytest.fixture(params=backend_params(("sqlite", "postgresql", "mariadb")))
def lc_backend(request: pytest.FixtureRequest, backend_urls: Any) -> str:
    backend_urls[request.param]  # skips (or fails in CI) when the server is missing
    return request.param


@pytest.fixture
def history_on(backend_urls: Any) -> Iterator[Any]:
    """``history_on(backend, session_id, **options)``: a history on a table of its own."""
    made: list[MSSQLChatMessageHistory] = []

    def make(backend: str, session_id: str = "s-1", **options: Any) -> MSSQLChatMessageHistory:
        options.setdefault("table_name", unique_table())
        options.setdefault("token_limit", 100_000)
        history = MSSQLChatMessageHistory(session_id, connection=backend_urls[backend], **options)
        made.append(history)
        return history

    yield make
    for history in made:
        history.memory.store.drop_schema()
        history.close()


def stored_payloads(history: MSSQLChatMessageHistory) -> list[dict[str, Any]]:
    store = history.memory.store
    table = store.tables.messages
    query = (
        select(table.c.payload)
        .where(table.c.session_id == history.session_id)
        .order_by(table.c.seq)
    )
    with store.engines.sync.connect() as conn:
        return [json.loads(payload) for payload in conn.execute(query).scalars()]


# -- golden payloads ------------------------------------------------------------------------------


def test_golden_payloads(history_on: Any, frozen_clock: None) -> None:
    """Each message type's stored JSON payload equals the golden one (UPDATE_GOLDEN=1 rewrites)."""
    history = history_on("sqlite")
    history.add_messages(conversation())
    payloads = dict(zip(SAMPLES, stored_payloads(history), strict=True))
    if os.environ.get("UPDATE_GOLDEN"):
        GOLDEN.parent.mkdir(parents=True, exist_ok=True)
        text = json.dumps(payloads, indent=2, ensure_ascii=False, sort_keys=True)
        GOLDEN.write_text(text + "\n", encoding="utf-8")
    golden = json.loads(GOLDEN.read_text(encoding="utf-8"))
    assert payloads.keys() == golden.keys()
    for name, payload in payloads.items():
        assert payload == golden[name], name


def test_golden_payloads_rebuild_the_messages() -> None:
    """The golden payloads (as written by an earlier run) still decode to the samples exactly."""
    golden = json.loads(GOLDEN.read_text(encoding="utf-8"))
    for name, sample in SAMPLES.items():
        stored = Message(
            golden[name]["role"],
            golden[name]["content"],
            source=golden[name]["source"],
            raw=golden[name]["raw"],
        )
        assert to_langchain(stored) == sample, name


# -- neutral fields -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(SAMPLES))
def test_neutral_fields(name: str) -> None:
    """Role, text, name, tool calls and tool_call_id are filled for readers of other frameworks."""
    message = from_langchain(SAMPLES[name])
    role, content, who, calls, call_id = NEUTRAL[name]
    assert (message.role, message.content, message.name, message.tool_call_id) == (
        role,
        content,
        who,
        call_id,
    )
    assert [(c.id, c.name, c.arguments) for c in message.tool_calls] == calls
    assert message.source == SOURCE
    assert message.id == SAMPLES[name].id
    assert to_langchain(message) == SAMPLES[name]


def test_token_count_includes_non_text_blocks() -> None:
    """With a counter, images get an estimate and reasoning text is counted, not ignored."""
    counter = default_token_counter()
    plain = from_langchain(SAMPLES["human_multimodal"])
    counted = from_langchain(SAMPLES["human_multimodal"], counter)
    assert counted.token_count == counter.count_message(plain) + convert.BLOCK_TOKENS["image_url"]
    thinking = AIMessage([{"type": "reasoning", "reasoning": "step by step"}, "done"])
    assert from_langchain(thinking, counter).token_count == (
        counter.count_message(from_langchain(thinking)) + counter.count_text("step by step")
    )
    assert from_langchain(HumanMessage("hi")).token_count is None


def test_missing_id_stays_missing() -> None:
    """A LangChain message without an id gets a neutral id, and comes back with id None."""
    message = from_langchain(HumanMessage("hi"))
    assert message.id
    assert to_langchain(message).id is None


def test_text_of_content_blocks() -> None:
    """Text blocks and bare strings are joined as LangChain's ``.text`` does; others are skipped."""
    blocks = ["a", {"type": "text", "text": "b"}, {"type": "image", "url": "x"}, {"type": "text"}]
    assert convert.text_of(blocks) == "ab"
    assert convert.text_of(blocks) == HumanMessage(blocks).text


@pytest.mark.parametrize(
    ("role", "neutral"),
    [("Human", "user"), ("model", "assistant"), ("developer", "system"), ("narrator", "user")],
)
def test_chat_message_roles(role: str, neutral: str) -> None:
    """A ChatMessage's custom role maps to the closest neutral role; raw keeps the exact one."""
    message = ChatMessage("x", role=role)
    stored = from_langchain(message)
    assert stored.role == neutral
    assert to_langchain(stored) == message


# -- messages written by others -------------------------------------------------------------------


def test_neutral_messages_rebuild_as_langchain() -> None:
    """Messages without LangChain raw come back from the neutral fields, tool calls included."""
    stored = [
        Message("system", "sys", id="n-0"),
        Message("user", "hi", id="n-1", name="ann", source="llamaindex", raw={"role": "user"}),
        Message(
            "assistant",
            "calling",
            id="n-2",
            tool_calls=(ToolCall("c1", "f", {"x": 1}), ToolCall("c2", "g", '{"y": 2}')),
        ),
        Message("tool", "ok", id="n-3", tool_call_id="c1", name="f"),
        Message("assistant", "", id="n-4", tool_calls=(ToolCall("c3", "h", "not json"),)),
    ]
    assert [to_langchain(m) for m in stored] == [
        SystemMessage("sys", id="n-0"),
        HumanMessage("hi", id="n-1", name="ann"),
        AIMessage(
            "calling",
            id="n-2",
            tool_calls=[
                {"id": "c1", "name": "f", "args": {"x": 1}, "type": "tool_call"},
                {"id": "c2", "name": "g", "args": {"y": 2}, "type": "tool_call"},
            ],
        ),
        ToolMessage("ok", tool_call_id="c1", name="f", id="n-3"),
        AIMessage(
            "",
            id="n-4",
            invalid_tool_calls=[
                {
                    "id": "c3",
                    "name": "h",
                    "args": "not json",
                    "error": None,
                    "type": "invalid_tool_call",
                }
            ],
        ),
    ]


def test_core_edited_text_is_kept() -> None:
    """When the core changes a message's text (memory prefix, truncation) the change shows."""
    plain = from_langchain(HumanMessage("question", id="q"))
    edited = to_langchain(plain.with_fields(content="MEMORY\n\nquestion"))
    assert edited == HumanMessage("MEMORY\n\nquestion", id="q")
    blocks = from_langchain(SAMPLES["human_multimodal"])
    prefixed = to_langchain(blocks.with_fields(content="MEMORY\n\n" + blocks.content))
    assert prefixed.content[0] == {"type": "text", "text": "MEMORY\n\n"}
    assert prefixed.content[1:] == SAMPLES["human_multimodal"].content
    cut = to_langchain(blocks.with_fields(content="And what [truncated]"))
    assert convert.text_of(cut.content) == "And what [truncated]"
    assert cut.content[-1] == SAMPLES["human_multimodal"].content[-1]  # the image stays


# -- bad input ------------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", ["hello", {"role": "user", "content": "x"}, ("user", "x"), None, 3])
def test_non_messages_are_rejected(bad: Any) -> None:
    """Anything that is not a BaseMessage is a TypeError that is also an InvalidMessageError."""
    with pytest.raises(TypeError, match="LangChain") as info:
        from_langchain_messages([HumanMessage("ok"), bad])
    assert isinstance(info.value, InvalidMessageError)
    assert "message 1" in str(info.value)


@pytest.mark.parametrize("bad", ["hello", HumanMessage("one"), {"type": "human"}, 42])
def test_batches_must_be_sequences_of_messages(bad: Any) -> None:
    """A string, a single message or a mapping is not a batch: a clear TypeError."""
    with pytest.raises(TypeError, match="sequence of LangChain messages"):
        from_langchain_messages(bad)


def test_remove_message_is_not_storable() -> None:
    """RemoveMessage (a LangGraph instruction) is refused with an explanation."""
    with pytest.raises(InvalidMessageError, match="RemoveMessage"):
        from_langchain(RemoveMessage(id="x"))


def test_json_problem_names_the_path() -> None:
    """The diagnostic for an unserializable payload points at the offending value."""
    data = {"artifact": {"rows": [1, {"when": datetime(2025, 1, 1)}]}, "ok": [1.5, None]}
    assert convert.json_problem(data) == (
        "artifact.rows[1].when is a datetime, which is not JSON-serializable"
    )
    assert convert.json_problem({"x": float("nan")}) == "x is nan"
    assert convert.json_problem({"fine": [1, "a", {"b": False}]}) is None


# -- round trips through real databases -----------------------------------------------------------


def test_round_trip_is_exact(lc_backend: str, history_on: Any) -> None:
    """Every message type comes back equal (==, same class) from full history and context."""
    history = history_on(lc_backend)
    sent = conversation()
    history.add_messages(sent)
    full = history.get_full_history()
    assert full == sent
    assert [type(m) for m in full] == [type(m) for m in sent]
    assert history.messages == sent


async def test_async_round_trip_is_exact(lc_backend: str, history_on: Any) -> None:
    """The async API stores and returns the same exact messages."""
    history = history_on(lc_backend)
    sent = conversation()
    await history.aadd_messages(sent[:5])
    await history.aadd_messages(sent[5:])
    assert await history.aget_full_history() == sent
    assert await history.aget_messages() == sent
    await history.aclose()


def test_other_frameworks_read_the_neutral_fields(lc_backend: str, history_on: Any) -> None:
    """A reader that ignores raw sees role, text and tool calls of what LangChain wrote."""
    history = history_on(lc_backend)
    history.add_messages(conversation())
    stored = history.memory.history(history.session_id)
    assert [(m.role, m.content, m.tool_call_id) for m in stored] == [
        (role, content, call_id) for role, content, _, _, call_id in NEUTRAL.values()
    ]


def test_session_written_by_llamaindex_reads_as_langchain(history_on: Any) -> None:
    """A LlamaIndex-written session (tool call included) reads back as LangChain messages."""
    li = pytest.importorskip("llamaindex_mssql_memory")
    from llama_index.core.llms import ChatMessage as LIChatMessage

    history = history_on("sqlite")
    call = {"id": "c1", "type": "function", "function": {"name": "add", "arguments": '{"a": 1}'}}
    written = [
        LIChatMessage(role="user", content="add 1"),
        LIChatMessage(role="assistant", content="", additional_kwargs={"tool_calls": [call]}),
        LIChatMessage(role="tool", content="1", additional_kwargs={"tool_call_id": "c1"}),
        LIChatMessage(role="assistant", content="It is 1."),
    ]
    history.memory.add(history.session_id, li.to_messages(written))
    context = history.messages
    assert [type(m) for m in context] == [HumanMessage, AIMessage, ToolMessage, AIMessage]
    assert context[1].tool_calls == [
        {"id": "c1", "name": "add", "args": {"a": 1}, "type": "tool_call"}
    ]
    assert (context[2].tool_call_id, context[3].content) == ("c1", "It is 1.")
    history.add_messages([HumanMessage("thanks")])
    back = li.to_chat_messages(history.memory.get(history.session_id))
    assert [(str(m.role.value), m.content) for m in back][-1] == ("user", "thanks")


def test_same_memory_as_core_user(lc_backend: str, history_on: Any) -> None:
    """Messages added through the core (another framework) and LangChain share a session."""
    history = history_on(lc_backend)
    memory: AgentMemory = history.memory
    history.add_messages([HumanMessage("from langchain", id="lc-1")])
    memory.add(history.session_id, [Message("assistant", "from elsewhere", id="core-1")])
    assert history.messages == [
        HumanMessage("from langchain", id="lc-1"),
        AIMessage("from elsewhere", id="core-1"),
    ]
