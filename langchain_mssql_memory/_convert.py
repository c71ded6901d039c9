"""LangChain messages <-> the core's neutral :class:`~mssql_memory.Message`.

Writing keeps LangChain's own form in ``raw`` (``message_to_dict``, so every
field survives: ids, ``additional_kwargs``, metadata, tool calls, artifacts,
content blocks) and fills the neutral fields other frameworks read. Reading
rebuilds a LangChain-written message from ``raw`` exactly, and anything else
(another framework's messages, the summary, rendered long-term memory) from the
neutral fields.
"""

from __future__ import annotations

import json
import logging
import math
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import Any

from langchain_core.messages import (
    AIMessage,
    BaseMessage,
    ChatMessage,
    FunctionMessage,
    HumanMessage,
    RemoveMessage,
    SystemMessage,
    ToolMessage,
    message_to_dict,
    messages_from_dict,
)
from mssql_memory import InvalidMessageError, Message, TokenCounter, ToolCall

__all__ = [
    "BLOCK_TOKENS",
    "SOURCE",
    "NotAMessageError",
    "explain_rejection",
    "from_langchain",
    "from_langchain_messages",
    "text_of",
    "to_langchain",
    "to_langchain_messages",
]

logger = logging.getLogger("langchain_mssql_memory")

#: ``Message.source`` of messages written by this adapter.
SOURCE = "langchain"

# ChatMessage roles -> the closest neutral role (anything else is another participant: user).
_CHAT_ROLES = {
    "user": "user",
    "human": "user",
    "assistant": "assistant",
    "ai": "assistant",
    "model": "assistant",
    "system": "system",
    "developer": "system",
    "tool": "tool",
    "function": "tool",
}


#: Token estimates for non-text content blocks (the LlamaIndex adapter uses the same).
BLOCK_TOKENS: dict[str, int] = {
    "image": 256,
    "image_url": 256,
    "audio": 256,
    "input_audio": 256,
    "video": 256,
    "file": 2048,
    "document": 2048,
}


class NotAMessageError(InvalidMessageError, TypeError):
    """Something that is not a LangChain message was handed over (catch as TypeError too)."""


def _now() -> datetime:
    return datetime.now(timezone.utc)


def text_of(content: str | list[Any]) -> str:
    """The text of a message's content: the string, or its text blocks joined as LangChain does."""
    if isinstance(content, str):
        return content
    parts = []
    for block in content:
        if isinstance(block, str):
            parts.append(block)
        elif isinstance(block, Mapping) and block.get("type") == "text":
            text = block.get("text")
            if isinstance(text, str):
                parts.append(text)
    return "".join(parts)


def _extra_tokens(content: str | list[Any], counter: TokenCounter) -> int:
    """Tokens of the blocks the neutral text leaves out: media estimates, reasoning text."""
    if isinstance(content, str):
        return 0
    extra = 0
    for block in content:
        kind = block.get("type") if isinstance(block, Mapping) else None
        if kind in BLOCK_TOKENS:
            extra += BLOCK_TOKENS[kind]
        elif kind in ("reasoning", "thinking") and isinstance(block.get(kind), str):
            extra += counter.count_text(block[kind])
    return extra


def _function_call_id(name: str | None) -> str:
    # Legacy function calling has no call ids; a FunctionMessage answers the call of its name.
    return f"function:{name or ''}"


def _tool_calls(message: AIMessage) -> tuple[ToolCall, ...]:
    calls = [
        ToolCall(tc.get("id") or "", tc["name"], tc.get("args") or {}) for tc in message.tool_calls
    ]
    # An invalid call (unparsable arguments) is still sent to the provider and answered.
    for invalid in message.invalid_tool_calls:
        call_id = invalid.get("id")
        if call_id:
            calls.append(ToolCall(call_id, invalid.get("name") or "", invalid.get("args") or ""))
    legacy = message.additional_kwargs.get("function_call")
    if isinstance(legacy, Mapping) and isinstance(legacy.get("name"), str):
        arguments = legacy.get("arguments")
        calls.append(
            ToolCall(
                _function_call_id(legacy["name"]),
                legacy["name"],
                arguments if isinstance(arguments, (str, Mapping)) else "",
            )
        )
    return tuple(calls)


def _neutral_role(message: BaseMessage) -> str:
    if isinstance(message, HumanMessage):
        return "user"
    if isinstance(message, AIMessage):
        return "assistant"
    if isinstance(message, SystemMessage):
        return "system"
    if isinstance(message, (ToolMessage, FunctionMessage)):
        return "tool"
    if isinstance(message, ChatMessage):
        return _CHAT_ROLES.get(message.role.strip().lower(), "user")
    raise InvalidMessageError(f"cannot store a {type(message).__name__} (type {message.type!r})")


def from_langchain(message: BaseMessage, counter: TokenCounter | None = None) -> Message:
    """The neutral record of a LangChain message, with LangChain's own form in ``raw``.

    With ``counter``, ``token_count`` is filled in, images and other blocks included.
    """
    if not isinstance(message, BaseMessage):
        raise NotAMessageError(
            f"expected a LangChain BaseMessage, got {type(message).__name__}: {message!r:.80}"
        )
    if isinstance(message, RemoveMessage):
        raise InvalidMessageError(
            "RemoveMessage is an instruction for LangGraph state, not a chat message; "
            "use clear() to delete a session"
        )
    role = _neutral_role(message)
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_id = None
    if isinstance(message, AIMessage):
        tool_calls = _tool_calls(message)
    elif isinstance(message, ToolMessage):
        tool_call_id = message.tool_call_id
    elif isinstance(message, FunctionMessage):
        tool_call_id = _function_call_id(message.name)
    stored = Message(
        role,  # type: ignore[arg-type]
        text_of(message.content),
        name=message.name,
        tool_calls=tool_calls,
        tool_call_id=tool_call_id,
        id=message.id or uuid.uuid4().hex,
        created_at=_now(),
        source=SOURCE,
        raw=message_to_dict(message),
    )
    if counter is None:
        return stored
    tokens = counter.count_message(stored) + _extra_tokens(message.content, counter)
    return stored.with_fields(token_count=tokens)


def from_langchain_messages(
    messages: Iterable[BaseMessage], counter: TokenCounter | None = None
) -> list[Message]:
    """Convert a batch; one bad item rejects it all (NotAMessageError is also a TypeError)."""
    if isinstance(messages, (str, bytes, Mapping, BaseMessage)):
        raise NotAMessageError(
            f"expected a sequence of LangChain messages, not a {type(messages).__name__}"
            + (
                "; use add_message() for a single message"
                if isinstance(messages, BaseMessage)
                else ""
            )
        )
    try:
        items = list(messages)
    except TypeError as e:
        raise NotAMessageError(
            f"expected a sequence of LangChain messages, not a {type(messages).__name__}"
        ) from e
    out = []
    for index, item in enumerate(items):
        try:
            out.append(from_langchain(item, counter))
        except InvalidMessageError as e:
            raise type(e)(f"message {index}: {e}") from e
    return out


# -- reading -----------------------------------------------------------------------------


def _with_text(message: BaseMessage, text: str) -> BaseMessage:
    """``message`` whose text the core changed (memory prefixed, cut to the budget)."""
    content = message.content
    if isinstance(content, str):
        return message.model_copy(update={"content": text})
    old = text_of(content)
    if old and text.endswith(old):
        blocks = [{"type": "text", "text": text[: len(text) - len(old)]}, *content]
    else:
        blocks = []
        placed = False
        for block in content:
            is_text = isinstance(block, str) or (
                isinstance(block, Mapping) and block.get("type") == "text"
            )
            if not is_text:
                blocks.append(block)
            elif not placed:
                blocks.append({"type": "text", "text": text})
                placed = True
        if not placed:
            blocks.insert(0, {"type": "text", "text": text})
    return message.model_copy(update={"content": blocks})


def _arguments(call: ToolCall) -> dict[str, Any] | None:
    if isinstance(call.arguments, Mapping):
        return dict(call.arguments)
    try:
        value = json.loads(call.arguments) if call.arguments else {}
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _from_neutral(message: Message) -> BaseMessage:
    # The rendered long-term memory gets a fresh id on every read: leave it out, so the same
    # read twice gives equal lists.
    generated = message.metadata.get("mssql_memory") == "long_term_memory"
    common: dict[str, Any] = {"content": message.content, "id": None if generated else message.id}
    if message.name is not None:
        common["name"] = message.name
    if message.role == "user":
        return HumanMessage(**common)
    if message.role == "system":
        return SystemMessage(**common)
    if message.role == "tool":
        return ToolMessage(tool_call_id=message.tool_call_id or "", **common)
    valid, invalid = [], []
    for call in message.tool_calls:
        args = _arguments(call)
        if args is None:
            invalid.append(
                {
                    "type": "invalid_tool_call",
                    "id": call.id,
                    "name": call.name,
                    "args": call.arguments_text(),
                    "error": None,
                }
            )
        else:
            valid.append({"type": "tool_call", "id": call.id, "name": call.name, "args": args})
    return AIMessage(tool_calls=valid, invalid_tool_calls=invalid, **common)


def to_langchain(message: Message) -> BaseMessage:
    """The LangChain message for a stored one: exact from ``raw`` when LangChain wrote it."""
    if message.source == SOURCE and isinstance(message.raw, Mapping):
        try:
            (restored,) = messages_from_dict([message.raw])  # type: ignore[list-item]
        except Exception as e:  # written by an incompatible langchain-core: use the neutral form
            logger.warning(
                "message %s: cannot rebuild from raw (%r); using neutral fields", message.id, e
            )
        else:
            if text_of(restored.content) != message.content:
                restored = _with_text(restored, message.content)
            return restored
    return _from_neutral(message)


def to_langchain_messages(messages: Iterable[Message]) -> list[BaseMessage]:
    return [to_langchain(m) for m in messages]


# -- diagnostics -------------------------------------------------------------------------


def json_problem(value: Any, path: str = "") -> str | None:
    """Where ``value`` stops being JSON (``None`` if it is JSON), for error messages."""
    if value is None or isinstance(value, (str, bool, int)):
        return None
    if isinstance(value, float):
        return None if math.isfinite(value) else f"{path or 'value'} is {value!r}"
    if isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, (str, int, float, bool)) and key is not None:
                return f"{path or 'value'} has a {type(key).__name__} key {key!r}"
            problem = json_problem(item, f"{path}.{key}" if path else str(key))
            if problem:
                return problem
        return None
    if isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            problem = json_problem(item, f"{path}[{index}]")
            if problem:
                return problem
        return None
    return f"{path or 'value'} is a {type(value).__name__}, which is not JSON-serializable"


@contextmanager
def explain_rejection(batch: Sequence[Message]) -> Iterator[None]:
    """Re-raise the core's "not JSON-serializable" refusal with the offending field's path."""
    try:
        yield
    except InvalidMessageError as e:
        for index, message in enumerate(batch):
            raw = message.raw if isinstance(message.raw, Mapping) else {}
            problem = json_problem(raw.get("data", {}))
            if problem:
                raise InvalidMessageError(
                    f"message {index} ({raw.get('type')}): {problem}; nothing was stored "
                    "(LangChain messages are kept as JSON)"
                ) from e
        raise
