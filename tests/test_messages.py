"""The message record and its JSON codec: a message comes back exactly as it went in."""

from __future__ import annotations

import json
import uuid
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mssql_memory import (
    InvalidMessageError,
    Message,
    SQLStore,
    ToolCall,
    message_from_dict,
    message_from_json,
    message_to_dict,
    message_to_json,
)
from mssql_memory.messages import FrozenMessage, coerce_messages, freeze

# -- strategies -----------------------------------------------------------------------------

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
json_objects = st.dictionaries(st.text(max_size=8), json_values, max_size=4)
ids = st.text(min_size=1, max_size=40)
zones = st.sampled_from(
    [timezone.utc, timezone(timedelta(hours=-7)), timezone(timedelta(hours=5, minutes=30))]
)
tool_calls = st.builds(
    ToolCall, id=ids, name=st.text(max_size=20), arguments=json_objects | st.text()
)


@st.composite
def messages(draw: st.DrawFn) -> Message:
    role = draw(st.sampled_from(["system", "user", "assistant", "tool"]))
    return Message(
        role,
        draw(st.text(max_size=200)),
        name=draw(st.none() | st.text(max_size=20)),
        tool_calls=tuple(draw(st.lists(tool_calls, max_size=3))) if role == "assistant" else (),
        tool_call_id=draw(st.none() | ids) if role == "tool" else None,
        id=draw(ids),
        metadata=draw(json_objects),
        created_at=draw(st.datetimes(timezones=zones)),
        source=draw(st.none() | st.sampled_from(["langchain", "llamaindex", "custom"])),
        raw=draw(json_values),
    )


# -- codec ------------------------------------------------------------------------------------


def sample() -> Message:
    return Message(
        "assistant",
        "Let me look that up — 😀",
        name="helper",
        tool_calls=[ToolCall("call_1", "search", {"q": "x", "n": 2}), ToolCall("c2", "f", "{}")],
        id="m-1",
        metadata={"lang": "en", "scores": [1, 2.5]},
        created_at=datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=timezone.utc),
        source="langchain",
        raw={"type": "ai", "data": {"content": "x"}},
    )


def test_codec_round_trip_keeps_every_field() -> None:
    """to_json then from_json gives an equal message (all fields, tool calls, raw form)."""
    message = sample()
    assert message_from_json(message_to_json(message)) == message
    assert message_from_dict(message_to_dict(message)) == message
    assert message_from_json(message_to_json(message).encode("utf-8")) == message


def test_codec_leaves_out_store_assigned_fields() -> None:
    """seq, status and token_count are the store's; the payload does not carry them."""
    stored = sample().with_fields(seq=7, status="archived", token_count=42)
    data = message_to_dict(stored)
    assert not {"seq", "status", "token_count"} & data.keys()
    back = message_from_json(message_to_json(stored), seq=7, status="archived", token_count=42)
    assert back == stored


def test_json_is_compact_versioned_and_readable() -> None:
    """The payload is compact JSON with a codec version, keeping non-ASCII text as is."""
    text = message_to_json(sample())
    assert json.loads(text)["v"] == 1
    assert "😀" in text and ", " not in text and ": " not in text


def test_decoding_fills_in_defaults() -> None:
    """A minimal payload gets a fresh id, an aware created_at and empty collections."""
    before = datetime.now(timezone.utc)
    message = message_from_json('{"role": "user"}')
    assert message.content == "" and message.tool_calls == () and dict(message.metadata) == {}
    assert len(message.id) == 32
    assert message.created_at.tzinfo is not None and message.created_at >= before


def test_naive_timestamps_are_taken_as_utc() -> None:
    """A naive created_at is interpreted as UTC, so stored times are comparable."""
    message = Message("user", "x", created_at=datetime(2024, 1, 1, 12, 0))
    assert message.created_at == datetime(2024, 1, 1, 12, 0, tzinfo=timezone.utc)


def test_messages_are_immutable_and_copied_with_changes() -> None:
    """A Message cannot be mutated; with_fields returns a validated copy."""
    message = Message("user", "x")
    with pytest.raises(AttributeError):
        message.content = "y"  # type: ignore[misc]
    changed = message.with_fields(content="y")
    assert (changed.content, changed.id, message.content) == ("y", message.id, "x")
    with pytest.raises(InvalidMessageError):
        message.with_fields(role="robot")


def test_tool_calls_accept_any_sequence() -> None:
    """tool_calls given as a list is kept as a tuple; arguments_text is the JSON a model sees."""
    call = ToolCall("c", "weather", {"city": "Zürich"})
    message = Message("assistant", "", tool_calls=[call])
    assert message.tool_calls == (call,)
    assert call.arguments_text() == '{"city":"Zürich"}'
    assert ToolCall("c", "f", '{"raw": 1}').arguments_text() == '{"raw": 1}'
    assert Message("tool", "ok", tool_call_id="c").is_tool_result


def test_message_to_json_rejects_non_json_content() -> None:
    """Encoding a message whose metadata or raw form is not JSON raises InvalidMessageError."""
    for bad in ({"s": {1}}, {"n": float("nan")}, {"o": object()}):
        with pytest.raises(InvalidMessageError):
            message_to_json(Message("user", "x", metadata=bad))
    with pytest.raises(InvalidMessageError):
        message_to_json(Message("user", "x", raw={1, 2}))
    with pytest.raises(InvalidMessageError):
        message_to_dict({"role": "user"})  # type: ignore[arg-type]


def test_coerce_messages_accepts_one_or_many() -> None:
    """A single message or any iterable of messages is a batch; strings and dicts are not."""
    a, b = Message("user", "a"), Message("user", "b")
    assert coerce_messages(a) == [a]
    assert coerce_messages(m for m in (a, b)) == [a, b]
    for junk in ("ab", {"role": "user"}, 3, [a, "b"]):
        with pytest.raises(InvalidMessageError):
            coerce_messages(junk)


# -- properties ---------------------------------------------------------------------------------


@given(messages())
@settings(max_examples=150, deadline=None, database=None)
def test_codec_round_trip_property(message: Message) -> None:
    """For any valid message, decode(encode(m)) == m, through JSON text and through dicts."""
    text = message_to_json(message)
    assert message_from_json(text) == message
    assert message_from_dict(json.loads(text)) == message
    assert message_from_json(text).created_at.utcoffset() == message.created_at.utcoffset()


@given(st.lists(messages(), min_size=1, max_size=5))
@settings(
    max_examples=25, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)
def test_sqlite_store_round_trip_property(batch: list[Message]) -> None:
    """For any batch of valid messages, a SQL store returns them unchanged, in order."""
    store = _memory_sqlite_store()
    session = uuid.uuid4().hex
    stored = store.append(session, batch)
    got = store.get_window(session)
    assert got == list(stored)
    assert [m.with_fields(seq=None, token_count=None) for m in got] == batch


_STORE: list[SQLStore] = []


def _memory_sqlite_store() -> SQLStore:
    """One in-memory SQLite store shared by the property examples (no file, no teardown needed)."""
    if not _STORE:
        _STORE.append(SQLStore("sqlite://", "t_property"))
    return _STORE[0]


@pytest.fixture(autouse=True, scope="module")
def _close_property_store() -> Any:
    yield
    for store in _STORE:
        store.close()
    _STORE.clear()


def test_freeze_and_thaw_give_what_the_payload_decodes_to() -> None:
    """Every field survives freeze/thaw; thawed parts are new objects each time, equal to a
    decode of the stored payload; a text message is shared as is; non-JSON parts refuse."""
    message = Message(
        "assistant",
        "calling",
        name="bot",
        tool_calls=(ToolCall("c1", "search", {"q": ["x"]}), ToolCall("c2", "f", "{}")),
        tool_call_id=None,
        metadata={"k": {"n": 1}},
        token_count=7,
        source="fw",
        raw={"type": "ai", "t": (1, 2)},
        seq=4,
        status="archived",
    )
    frozen = freeze(message)
    assert isinstance(frozen, FrozenMessage) and frozen.seq == 4
    decoded = message_from_json(message_to_json(message), seq=4, status="archived", token_count=7)
    first, second = frozen.thaw(), frozen.thaw()
    assert first == second == decoded
    assert first.raw is not second.raw and first.metadata is not second.metadata
    assert first.tool_calls[0].arguments is not second.tool_calls[0].arguments
    text = message_from_json(message_to_json(Message("user", "hi")))
    assert freeze(text) is text
    assert freeze(Message("user", "x", raw={"f": float("nan")})) is None
    assert freeze(Message("user", "x", metadata={"o": object()})) is None


@pytest.mark.parametrize("big", [-(2**63) - 1, 2**64, 10**30, -(10**40)])
def test_integers_beyond_64_bits_survive_exactly(big: int) -> None:
    """JSON decoding keeps integers exact at any size (a fast decoder would make them floats),
    through the payload and through the cache's frozen form; 19-digit strings stay strings."""
    message = Message(
        "assistant",
        "",
        tool_calls=(ToolCall("c", "f", {"n": big}),),
        metadata={"m": [big], "s": "1234567890123456789012"},
        raw={"v": big},
    )
    for encoded in (message_to_json(message), message_to_json(message).encode()):
        decoded = message_from_json(encoded)
        assert decoded.tool_calls[0].arguments == {"n": big}
        assert type(decoded.tool_calls[0].arguments["n"]) is int  # type: ignore[index]
        assert decoded.metadata == {"m": [big], "s": "1234567890123456789012"}
        assert decoded.raw == {"v": big}
    frozen = freeze(message)
    assert isinstance(frozen, FrozenMessage)
    thawed = frozen.thaw()
    assert thawed.tool_calls[0].arguments == {"n": big} and thawed.raw == {"v": big}
