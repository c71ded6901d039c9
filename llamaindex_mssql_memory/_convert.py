"""LlamaIndex ``ChatMessage`` <-> neutral :class:`mssql_memory.Message`, losslessly.

A LlamaIndex message is stored with ``raw = message.model_dump(mode="json")`` and
``source = "llamaindex"`` and read back from ``raw`` exactly. The neutral fields
(role, text, name, tool calls, tool-call id) are derived as well, so a session
written here can be read by another framework — and a message another framework
wrote is rebuilt from those fields, tool calls in OpenAI format.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping
from typing import Any

from llama_index.core.base.llms.types import ChatMessage, TextBlock, ToolCallBlock
from mssql_memory import InvalidMessageError, Message, ToolCall
from mssql_memory.tokens import TokenCounter
from pydantic import BaseModel, ValidationError
from pydantic_core import PydanticSerializationError

__all__ = ["SOURCE", "to_chat_message", "to_chat_messages", "to_message", "to_messages"]

logger = logging.getLogger("llamaindex_mssql_memory")

#: The ``source`` tag of messages this adapter writes.
SOURCE = "llamaindex"

#: LlamaIndex roles -> the nearest neutral role (the exact role stays in ``raw``).
NEUTRAL_ROLES: dict[str, str] = {
    "system": "system",
    "developer": "system",
    "user": "user",
    "assistant": "assistant",
    "chatbot": "assistant",
    "model": "assistant",
    "tool": "tool",
    "function": "tool",
}

#: Token estimates for non-text blocks (LlamaIndex ``Memory``'s defaults).
BLOCK_TOKENS: dict[str, int] = {"image": 256, "audio": 256, "video": 256, "document": 2048}


def _plain(value: Any) -> Any:
    return value.model_dump(mode="json") if isinstance(value, BaseModel) else value


def _tool_call(item: Any, index: int) -> ToolCall | None:
    """One tool call in any shape LlamaIndex LLMs produce (OpenAI, ToolSelection, Anthropic)."""
    item = _plain(item)
    if not isinstance(item, Mapping):
        return None
    function = _plain(item.get("function"))
    if isinstance(function, Mapping):  # OpenAI: {"id", "type", "function": {name, arguments}}
        name, args = function.get("name"), function.get("arguments", {})
    elif "tool_name" in item:  # llama_index ToolSelection
        name, args = item.get("tool_name"), item.get("tool_kwargs", {})
    else:  # Anthropic {"id", "name", "input"} and other flat forms
        name = item.get("name")
        args = item.get("input", item.get("arguments", item.get("args", {})))
    call_id = item.get("id", item.get("tool_id", item.get("tool_call_id")))
    if not isinstance(name, str):
        return None
    if not isinstance(args, (Mapping, str)):
        args = json.dumps(args, default=str)
    return ToolCall(str(call_id) if call_id is not None else f"call_{index}", name, args)


def _tool_calls(chat: ChatMessage) -> tuple[ToolCall, ...]:
    kwargs = chat.additional_kwargs
    found: list[ToolCall] = []
    raw_calls = kwargs.get("tool_calls")
    if isinstance(raw_calls, Iterable) and not isinstance(raw_calls, (str, bytes, Mapping)):
        for index, item in enumerate(raw_calls):
            call = _tool_call(item, index)
            if call is not None:
                found.append(call)
    for block in chat.blocks:
        if isinstance(block, ToolCallBlock):
            call_id = block.tool_call_id or f"call_{len(found)}"
            found.append(ToolCall(call_id, block.tool_name, block.tool_kwargs))
    legacy = _plain(kwargs.get("function_call"))
    if isinstance(legacy, Mapping) and isinstance(legacy.get("name"), str):
        # legacy OpenAI function calling: paired with its result by the function's name
        found.append(
            ToolCall(f"function:{legacy['name']}", legacy["name"], legacy.get("arguments", {}))
        )
    unique: dict[str, ToolCall] = {}
    for call in found:
        unique.setdefault(call.id, call)
    return tuple(unique.values())


def _extra_tokens(chat: ChatMessage, counter: TokenCounter) -> int:
    extra = 0
    for block in chat.blocks:
        kind = getattr(block, "block_type", None)
        if kind in BLOCK_TOKENS:
            extra += BLOCK_TOKENS[kind]
        elif kind == "thinking":
            extra += counter.count_text(block.content or "")
    return extra


def dump_chat_message(chat: ChatMessage) -> dict[str, Any]:
    """``chat.model_dump(mode="json")``; an unserializable ``additional_kwargs`` is an error."""
    try:
        return chat.model_dump(mode="json")
    except (PydanticSerializationError, TypeError, ValueError) as e:
        raise InvalidMessageError(f"ChatMessage is not JSON-serializable: {e}") from e


def to_message(chat: ChatMessage, counter: TokenCounter | None = None) -> Message:
    """The neutral record of ``chat``, with its exact JSON form in ``raw``.

    With ``counter``, ``token_count`` is filled in, non-text blocks included.
    """
    if not isinstance(chat, ChatMessage):
        raise InvalidMessageError(f"expected a ChatMessage, got {type(chat).__name__}")
    raw = dump_chat_message(chat)
    role = NEUTRAL_ROLES.get(str(raw["role"]), "user")
    kwargs = chat.additional_kwargs
    name = kwargs.get("name") if isinstance(kwargs.get("name"), str) else None
    tool_calls = _tool_calls(chat) if role == "assistant" else ()
    tool_call_id = None
    if role == "tool":
        value = kwargs.get("tool_call_id")
        if value is not None:
            tool_call_id = str(value)
        elif raw["role"] == "function" and name is not None:
            tool_call_id = f"function:{name}"
    message = Message(
        role,  # type: ignore[arg-type]
        chat.content or "",
        name=name,
        tool_calls=tool_calls,
        tool_call_id=tool_call_id,
        source=SOURCE,
        raw=raw,
    )
    if counter is not None:
        tokens = counter.count_message(message) + _extra_tokens(chat, counter)
        message = message.with_fields(token_count=tokens)
    return message


def to_messages(chats: Iterable[ChatMessage], counter: TokenCounter | None = None) -> list[Message]:
    if isinstance(chats, ChatMessage):
        raise InvalidMessageError("expected a list of ChatMessage, got one ChatMessage")
    return [to_message(chat, counter) for chat in chats]


def _with_text(chat: ChatMessage, text: str) -> ChatMessage:
    """``chat`` with its text blocks replaced by ``text`` (kept where the first one was)."""
    blocks: list[Any] = []
    placed = False
    for block in chat.blocks:
        if isinstance(block, TextBlock):
            if not placed:
                blocks.append(TextBlock(text=text))
                placed = True
        else:
            blocks.append(block)
    if not placed:
        blocks.insert(0, TextBlock(text=text))
    return chat.model_copy(update={"blocks": blocks})


def _from_neutral(message: Message) -> ChatMessage:
    kwargs: dict[str, Any] = {}
    if message.tool_calls:
        kwargs["tool_calls"] = [
            {
                "id": call.id,
                "type": "function",
                "function": {"name": call.name, "arguments": call.arguments_text()},
            }
            for call in message.tool_calls
        ]
    if message.tool_call_id is not None:
        kwargs["tool_call_id"] = message.tool_call_id
    if message.name is not None:
        kwargs["name"] = message.name
    blocks = [TextBlock(text=message.content)] if message.content or not message.tool_calls else []
    return ChatMessage(role=message.role, blocks=blocks, additional_kwargs=kwargs)


def to_chat_message(message: Message) -> ChatMessage:
    """The ``ChatMessage`` for a stored message: exactly the original when LlamaIndex wrote
    it, else rebuilt from the neutral fields. Text the core changed (a cut-down newest
    message, memory merged into a user turn) replaces the original text blocks."""
    if message.source == SOURCE and isinstance(message.raw, Mapping):
        try:
            chat = ChatMessage.model_validate(message.raw)
        except ValidationError as e:  # e.g. an ImageBlock path that no longer exists
            logger.warning(
                "stored LlamaIndex message %s no longer validates (%d errors); "
                "rebuilt from its neutral fields",
                message.id,
                e.error_count(),
            )
        else:
            if (chat.content or "") != message.content:
                chat = _with_text(chat, message.content)
            return chat
    return _from_neutral(message)


def to_chat_messages(messages: Iterable[Message]) -> list[ChatMessage]:
    return [to_chat_message(m) for m in messages]
