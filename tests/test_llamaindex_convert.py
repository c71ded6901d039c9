"""ChatMessage <-> neutral Message: lossless for LlamaIndex, neutral for everyone else.

The golden file holds the exact payloads the SQL store writes for a catalogue of
LlamaIndex messages, and the ChatMessages rebuilt from other frameworks' records.
Regenerate it with ``UPDATE_GOLDEN=1 pytest tests/test_llamaindex_convert.py``.
"""

from __future__ import annotations

import base64
import json
import logging
import os
from datetime import datetime, timezone
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from llama_index.core.base.llms.types import (
    AudioBlock,
    CacheControl,
    CachePoint,
    ChatMessage,
    DocumentBlock,
    ImageBlock,
    MessageRole,
    TextBlock,
    ThinkingBlock,
    ToolCallBlock,
)
from llama_index.core.llms.llm import ToolSelection
from mssql_memory import InvalidMessageError, Message, ToolCall, message_from_json
from mssql_memory.messages import message_to_dict
from mssql_memory.tokens import ApproximateTokenCounter
from sqlalchemy import select

from llamaindex_mssql_memory import SOURCE, to_chat_message, to_message, to_messages

GOLDEN = Path(__file__).parent / "golden" / "llamaindex" / "messages.json"
PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
)
FIXED = datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
OPENAI_CALLS = [
    {"id": "call_a", "type": "function", "function": {"name": "add", "arguments": '{"a":1}'}},
    {"id": "call_b", "type": "function", "function": {"name": "mul", "arguments": '{"b":2}'}},
]


def catalogue() -> dict[str, ChatMessage]:
    """One LlamaIndex message per role and content shape worth protecting."""
    return {
        "system": ChatMessage(role="system", content="You are terse."),
        "developer": ChatMessage(role="developer", content="Follow the policy."),
        "user_named": ChatMessage(role="user", content="hi", additional_kwargs={"name": "ada"}),
        "user_unicode": ChatMessage(role="user", content='héllo 世界 🎉 "quoted" \\ tab\t'),
        "user_multimodal": ChatMessage(
            role="user",
            blocks=[
                TextBlock(text="what is in these?"),
                ImageBlock(url="https://example.org/cat.png", detail="low"),
                ImageBlock(image=PNG, image_mimetype="image/png"),
                AudioBlock(url="https://example.org/a.mp3", format="mp3"),
                DocumentBlock(url="https://example.org/doc.pdf", title="doc"),
                CachePoint(cache_control=CacheControl(type="ephemeral")),
            ],
        ),
        "assistant": ChatMessage(role="assistant", content="Hello."),
        "assistant_openai_tool_calls": ChatMessage(
            role="assistant", blocks=[], additional_kwargs={"tool_calls": OPENAI_CALLS}
        ),
        "assistant_tool_call_blocks": ChatMessage(
            role="assistant",
            blocks=[
                TextBlock(text="Let me check."),
                ToolCallBlock(
                    tool_call_id="call_x", tool_name="weather", tool_kwargs={"c": "Oslo"}
                ),
                ToolCallBlock(tool_call_id="call_y", tool_name="time", tool_kwargs='{"tz":"UTC"}'),
            ],
        ),
        "assistant_thinking": ChatMessage(
            role="assistant",
            blocks=[ThinkingBlock(content="step by step", num_tokens=4), TextBlock(text="42")],
        ),
        "assistant_legacy_function_call": ChatMessage(
            role="assistant",
            content=None,
            additional_kwargs={"function_call": {"name": "lookup", "arguments": '{"q":"x"}'}},
        ),
        "tool_result": ChatMessage(
            role="tool", content="3", additional_kwargs={"tool_call_id": "call_a", "name": "add"}
        ),
        "function_result": ChatMessage(
            role="function", content="found", additional_kwargs={"name": "lookup"}
        ),
        "chatbot": ChatMessage(role="chatbot", content="Cohere says hi."),
        "model": ChatMessage(role="model", content="Gemini says hi."),
        "empty_user": ChatMessage(role="user", content=""),
    }


def foreign() -> dict[str, Message]:
    """Records another framework wrote (no LlamaIndex raw form)."""
    return {
        "langchain_ai_tool_calls": Message(
            "assistant",
            "",
            tool_calls=(ToolCall("lc1", "search", {"q": "sql"}), ToolCall("lc2", "f", "{}")),
            source="langchain",
            raw={"type": "ai", "data": {"content": ""}},
        ),
        "langchain_tool": Message(
            "tool", "result", tool_call_id="lc1", name="search", source="langchain"
        ),
        "neutral_user": Message("user", "plain"),
        "neutral_system": Message("system", "be brief"),
        "assistant_text_and_call": Message(
            "assistant", "checking", tool_calls=(ToolCall("n1", "g", {"x": [1, 2]}),)
        ),
    }


def payload(chat: ChatMessage) -> dict:
    """The stored payload for ``chat`` with a fixed id and timestamp."""
    message = to_message(chat).with_fields(id="fixed-id", created_at=FIXED)
    return message_to_dict(message)


def current_golden() -> dict:
    return {
        "stored": {name: payload(chat) for name, chat in catalogue().items()},
        "rebuilt": {
            name: to_chat_message(m).model_dump(mode="json") for name, m in foreign().items()
        },
    }


def test_golden_file_matches() -> None:
    """Stored payloads and rebuilt messages equal the golden file exactly."""
    data = current_golden()
    if os.environ.get("UPDATE_GOLDEN"):
        GOLDEN.parent.mkdir(parents=True, exist_ok=True)
        text = json.dumps(data, indent=2, ensure_ascii=False, sort_keys=True) + "\n"
        GOLDEN.write_text(text, encoding="utf-8")
    golden = json.loads(GOLDEN.read_text(encoding="utf-8"))
    assert golden == json.loads(json.dumps(data))


@pytest.mark.parametrize("name", sorted(catalogue()))
def test_round_trip_is_exact(name: str) -> None:
    """Every role and block type comes back from the stored JSON exactly as it went in."""
    chat = catalogue()[name]
    message = to_message(chat)
    assert message.source == SOURCE
    assert message.raw == chat.model_dump(mode="json")
    encoded = json.dumps(message_to_dict(message))
    back = to_chat_message(message_from_json(encoded))
    assert back.model_dump(mode="json") == chat.model_dump(mode="json")
    assert back == chat


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_stored_payload_column_equals_golden(backend: str, make_store) -> None:
    """What lands in the payload column of a real database is exactly the golden payload."""
    store = make_store(backend)
    golden = json.loads(GOLDEN.read_text(encoding="utf-8"))["stored"]
    names = sorted(catalogue())
    batch = [to_message(catalogue()[n]).with_fields(id="fixed-id", created_at=FIXED) for n in names]
    store.append("s", batch)
    m = store.tables.messages
    with store.engines.sync.connect() as conn:
        rows = conn.execute(
            select(m.c.payload).where(m.c.session_id == "s").order_by(m.c.seq)
        ).all()
    assert [json.loads(r.payload) for r in rows] == [golden[n] for n in names]
    back = [to_chat_message(x) for x in store.get_history("s")]
    assert [b.model_dump(mode="json") for b in back] == [
        catalogue()[n].model_dump(mode="json") for n in names
    ]


def test_neutral_roles() -> None:
    """Non-neutral roles map to the nearest neutral one; the exact role survives in raw."""
    roles = {n: to_message(c).role for n, c in catalogue().items()}
    assert roles["developer"] == "system"
    assert roles["chatbot"] == roles["model"] == "assistant"
    assert roles["function_result"] == "tool"
    assert to_chat_message(to_message(catalogue()["developer"])).role.value == "developer"


def test_tool_calls_reach_the_neutral_fields() -> None:
    """OpenAI-format kwargs, ToolCallBlocks and legacy function calls become ToolCalls."""
    cat = catalogue()
    openai = to_message(cat["assistant_openai_tool_calls"])
    assert [(c.id, c.name, c.arguments) for c in openai.tool_calls] == [
        ("call_a", "add", '{"a":1}'),
        ("call_b", "mul", '{"b":2}'),
    ]
    blocks = to_message(cat["assistant_tool_call_blocks"])
    assert [(c.id, c.name) for c in blocks.tool_calls] == [
        ("call_x", "weather"),
        ("call_y", "time"),
    ]
    assert blocks.content == "Let me check."
    legacy = to_message(cat["assistant_legacy_function_call"])
    result = to_message(cat["function_result"])
    assert legacy.tool_calls[0].id == result.tool_call_id == "function:lookup"
    tool = to_message(cat["tool_result"])
    assert (tool.role, tool.tool_call_id, tool.name) == ("tool", "call_a", "add")


def test_other_tool_call_shapes() -> None:
    """ToolSelection objects and Anthropic-style dicts are understood; junk is skipped."""
    chat = ChatMessage(
        role="assistant",
        content="",
        additional_kwargs={
            "tool_calls": [
                ToolSelection(tool_id="t1", tool_name="a", tool_kwargs={"x": 1}),
                {"id": "t2", "name": "b", "input": {"y": 2}},
                {"id": "t1", "name": "duplicate"},
                "junk",
            ]
        },
    )
    calls = to_message(chat).tool_calls
    assert [(c.id, c.name, dict(c.arguments)) for c in calls] == [
        ("t1", "a", {"x": 1}),
        ("t2", "b", {"y": 2}),
    ]


def test_foreign_messages_rebuilt_in_openai_format() -> None:
    """A record from another framework becomes a ChatMessage with OpenAI-format tool calls."""
    rebuilt = to_chat_message(foreign()["langchain_ai_tool_calls"])
    assert rebuilt.role.value == "assistant" and rebuilt.blocks == []
    assert rebuilt.additional_kwargs["tool_calls"][0] == {
        "id": "lc1",
        "type": "function",
        "function": {"name": "search", "arguments": '{"q":"sql"}'},
    }
    tool = to_chat_message(foreign()["langchain_tool"])
    assert tool.additional_kwargs == {"tool_call_id": "lc1", "name": "search"}
    assert tool.content == "result"


def test_changed_text_replaces_text_blocks_only() -> None:
    """When the core cut or extended a message's text, non-text blocks are kept."""
    chat = catalogue()["user_multimodal"]
    message = to_message(chat).with_fields(content="MEMORY\n\nwhat is in these?")
    back = to_chat_message(message)
    assert back.content == "MEMORY\n\nwhat is in these?"
    assert [b.block_type for b in back.blocks] == [b.block_type for b in chat.blocks]


def test_missing_image_path_falls_back(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A stored message whose image file is gone is rebuilt from its neutral fields."""
    image = tmp_path / "x.png"
    image.write_bytes(PNG)
    message = to_message(
        ChatMessage(role="user", blocks=[TextBlock(text="see"), ImageBlock(path=image)])
    )
    image.unlink()
    with caplog.at_level(logging.WARNING, logger="llamaindex_mssql_memory"):
        back = to_chat_message(message)
    assert back.content == "see" and back.role.value == "user"
    assert "no longer validates" in caplog.text


def test_token_count_includes_non_text_blocks() -> None:
    """With a counter, images and documents add their estimates to the token count."""
    counter = ApproximateTokenCounter()
    plain = to_message(ChatMessage(role="user", content="what is in these?"), counter)
    rich = to_message(catalogue()["user_multimodal"], counter)
    assert rich.token_count == plain.token_count + 256 * 3 + 2048


def test_bad_input_is_a_clear_error() -> None:
    """Non-messages and unserializable kwargs raise InvalidMessageError, nothing half-stored."""
    with pytest.raises(InvalidMessageError):
        to_message("hello")  # type: ignore[arg-type]
    with pytest.raises(InvalidMessageError):
        to_messages(ChatMessage(role="user", content="x"))  # type: ignore[arg-type]
    with pytest.raises(InvalidMessageError, match="JSON"):
        to_message(ChatMessage(role="user", content="x", additional_kwargs={"o": object()}))


JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**53), 2**53)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)
BLOCKS = st.one_of(
    st.builds(TextBlock, text=st.text(max_size=40)),
    st.builds(
        ImageBlock,
        url=st.sampled_from(["https://example.org/a.png", "https://example.org/b.jpg"]),
        detail=st.sampled_from([None, "low", "high"]),
    ),
    st.builds(
        ToolCallBlock,
        tool_call_id=st.text(min_size=1, max_size=8),
        tool_name=st.from_regex(r"[a-z_]{1,10}", fullmatch=True),
        tool_kwargs=st.dictionaries(st.text(max_size=5), JSON_VALUES, max_size=3),
    ),
    st.builds(ThinkingBlock, content=st.text(max_size=20)),
)


@settings(max_examples=150, deadline=None)
@given(
    role=st.sampled_from([r.value for r in MessageRole]),
    blocks=st.lists(BLOCKS, max_size=4),
    kwargs=st.dictionaries(st.text(max_size=10), JSON_VALUES, max_size=4),
)
def test_any_chat_message_round_trips(role: str, blocks: list, kwargs: dict) -> None:
    """Any ChatMessage with JSON kwargs survives the stored codec exactly."""
    chat = ChatMessage(role=role, blocks=blocks, additional_kwargs=kwargs)
    message = to_message(chat, ApproximateTokenCounter())
    back = to_chat_message(message_from_json(json.dumps(message_to_dict(message))))
    assert back.model_dump(mode="json") == chat.model_dump(mode="json")
    if message.role != "assistant":
        assert message.tool_calls == ()
