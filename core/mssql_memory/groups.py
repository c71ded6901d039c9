"""Message groups: the units that overflow strategies evict and the context keeps whole.

A group is one message, or an assistant message with tool calls together with
the tool results that answer them (parallel calls included). A tool result
with no call before it is an orphan; a call whose results are missing is
incomplete. Neither may reach a model, which rejects both.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from .messages import Message

__all__ = ["Group", "group_messages", "sanitize_window", "start_on_user"]


@dataclass(frozen=True, slots=True)
class Group:
    messages: tuple[Message, ...]
    complete: bool = True

    @property
    def tokens(self) -> int:
        messages = self.messages
        if len(messages) == 1:  # most groups: skip the generator
            return messages[0].token_count or 0
        return sum(m.token_count or 0 for m in messages)

    @property
    def first(self) -> Message:
        return self.messages[0]

    @property
    def last_seq(self) -> int:
        return max((m.seq or 0) for m in self.messages)

    @property
    def is_orphan(self) -> bool:
        return self.first.role == "tool"


def group_messages(messages: Sequence[Message]) -> list[Group]:
    """Split ``messages`` (in order) into groups."""
    groups: list[Group] = []
    i, n = 0, len(messages)
    while i < n:
        message = messages[i]
        if message.role == "assistant" and message.tool_calls:
            ids = {call.id for call in message.tool_calls}
            pending = set(ids)
            members = [message]
            j = i + 1
            while j < n and messages[j].role == "tool" and messages[j].tool_call_id in ids:
                members.append(messages[j])
                pending.discard(messages[j].tool_call_id or "")
                j += 1
            groups.append(Group(tuple(members), complete=not pending))
            i = j
        elif message.role == "tool":
            j = i + 1
            while j < n and messages[j].role == "tool":
                j += 1
            groups.append(Group(tuple(messages[i:j]), complete=False))
            i = j
        else:
            groups.append(Group((message,)))
            i += 1
    return groups


def sanitize_window(groups: Sequence[Group]) -> list[Group]:
    """Drop orphaned tool results and tool calls without their results.

    The result never starts with a tool result and holds no call without results.
    """
    return [g for g in groups if g.complete and g.messages[0].role != "tool"]


def start_on_user(groups: Sequence[Group]) -> list[Group]:
    """Drop leading assistant/tool groups when a user message follows, so the first
    non-system message is a user message; system messages before it are kept."""
    for index, group in enumerate(groups):
        if group.first.role == "user":
            head = [g for g in groups[:index] if g.first.role == "system"]
            return head + list(groups[index:])
    return list(groups)
