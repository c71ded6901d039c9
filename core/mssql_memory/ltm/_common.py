"""Helpers shared by the long-term memory blocks."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..errors import BlockError
from ..messages import Message
from ..tokens import TokenCounter
from ..validation import validate_identifier
from .store import LongTermStore

__all__ = ["ReadOnlyBlockError", "format_turn", "pack", "resolve_store", "split_turns"]


class ReadOnlyBlockError(BlockError):
    """The block is read-only during conversations (static memory)."""


def resolve_store(store: Any) -> LongTermStore:
    """A :class:`LongTermStore` from a store, a SQLStore, a URL, an engine or None (default)."""
    if isinstance(store, LongTermStore):
        return store
    return LongTermStore(store)


def check_block_args(name: str, max_tokens: int) -> None:
    validate_identifier(name, "block name")
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens <= 0:
        raise ValueError("max_tokens must be a positive int")


def pack(items: Sequence[tuple[str, int]], max_tokens: int) -> list[int]:
    """Indices of ``(text, tokens)`` items, in the given priority order, that fit ``max_tokens``."""
    chosen, used = [], 0
    for index, (_, tokens) in enumerate(items):
        if used + tokens + 2 <= max_tokens:
            chosen.append(index)
            used += tokens + 2  # the "- " bullet and line break
    return chosen


def split_turns(messages: Sequence[Message]) -> list[list[Message]]:
    """Group messages into turns, each starting at a user message (system messages skipped)."""
    turns: list[list[Message]] = []
    for m in messages:
        if m.role == "system":
            continue
        if m.role == "user" or not turns:
            turns.append([m])
        else:
            turns[-1].append(m)
    return turns


def format_turn(turn: Sequence[Message], session_id: str) -> str:
    """A turn verbatim, with its date and speakers, as the model will see it in memory."""
    date = turn[0].created_at.strftime("%Y-%m-%d %H:%M")
    lines = [f"[{date} UTC, session {session_id}]"]
    for m in turn:
        text = m.content
        if m.role == "assistant" and m.tool_calls:
            calls = ", ".join(f"{c.name}({c.arguments_text()})" for c in m.tool_calls)
            text = f"{text} [called {calls}]".strip()
        speaker = m.name or m.role
        lines.append(f"{speaker}: {text}")
    return "\n".join(lines)


def count(counter: TokenCounter, text: str) -> int:
    return counter.count_text(text)
