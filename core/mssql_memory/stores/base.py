"""The session-store contract shared by every backend.

A store keeps each session's messages in order (a per-session sequence), an
*active window* (what the model may still see) and the archived rest, plus a
small per-session record: user, system message, current summary, token totals
and a version that changes on every write. All methods have an ``a``-prefixed
async twin. Every write is one transaction: it happens completely or not at all.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol, runtime_checkable

from ..messages import Message

__all__ = [
    "AppendResult",
    "HistoryStore",
    "OverflowCommit",
    "SessionInfo",
    "SessionSnapshot",
    "SessionState",
    "SessionStore",
    "Summary",
]


@dataclass(frozen=True, slots=True)
class Summary:
    """A rolling summary of a session's evicted messages (through ``through_seq``)."""

    id: int
    content: str
    token_count: int
    through_seq: int
    created_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class SessionInfo:
    """One row of :meth:`SessionStore.list_sessions`."""

    session_id: str
    user_id: str | None
    message_count: int
    active_count: int
    active_tokens: int
    updated_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class SessionState:
    """A session's record: counts, tokens, version, system message, summary, block marks.

    ``exists`` is False for a session that was never written (all counts zero).
    ``active_tokens`` counts the active window's messages only.
    """

    session_id: str
    exists: bool = False
    user_id: str | None = None
    version: int = 0
    message_count: int = 0
    active_count: int = 0
    active_tokens: int = 0
    system_message: Message | None = None
    summary: Summary | None = None
    block_marks: Mapping[str, int] = field(default_factory=dict)
    updated_at: datetime | None = None


class AppendResult(list[Message]):
    """The stored messages (with ``seq`` and ``token_count``), plus the session's
    counters right after the append, so a caller can check its token budget
    without another read."""

    def __init__(
        self,
        messages: Iterable[Message] = (),
        *,
        version: int = 0,
        active_count: int = 0,
        active_tokens: int = 0,
        system_tokens: int = 0,
        summary_tokens: int = 0,
    ) -> None:
        super().__init__(messages)
        self.version = version
        self.active_count = active_count
        self.active_tokens = active_tokens
        self.system_tokens = system_tokens
        self.summary_tokens = summary_tokens


@dataclass(frozen=True, slots=True)
class SessionSnapshot:
    """A session's state and its active window, read together."""

    state: SessionState
    window: list[Message]


@dataclass(frozen=True, slots=True)
class OverflowCommit:
    """One overflow's state change, applied atomically by :meth:`SessionStore.commit_overflow`.

    ``evict`` are the active messages leaving the window. The commit is refused
    (returns False, changes nothing) if any of them is no longer active — another
    instance already handled this overflow.
    """

    evict: Sequence[Message]
    summary: str | None = None
    summary_tokens: int = 0
    block_marks: Mapping[str, int] = field(default_factory=dict)

    @property
    def status(self) -> str:
        return "summarized" if self.summary is not None else "archived"


@runtime_checkable
class SessionStore(Protocol):
    """What :class:`~mssql_memory.AgentMemory` and the adapters need from a store."""

    def create_schema(self) -> None: ...
    def append(
        self, session_id: str, messages: Message | Iterable[Message], *, user_id: str | None = None
    ) -> AppendResult: ...
    def get_window(self, session_id: str, *, limit: int | None = None) -> list[Message]: ...
    def get_history(self, session_id: str) -> list[Message]: ...
    def read_session(self, session_id: str) -> SessionSnapshot: ...
    def get_session(self, session_id: str) -> SessionState: ...
    def archive(self, session_id: str, seqs: Sequence[int]) -> int: ...
    def replace(
        self, session_id: str, messages: Message | Iterable[Message], *, user_id: str | None = None
    ) -> list[Message]: ...
    def commit_overflow(self, session_id: str, commit: OverflowCommit) -> bool: ...
    def set_block_mark(self, session_id: str, block: str, seq: int) -> None: ...
    def set_system_message(self, session_id: str, message: Message | None) -> None: ...
    def delete_session(self, session_id: str) -> bool: ...
    def delete_user(self, user_id: str) -> int: ...
    def list_sessions(
        self, *, user_id: str | None = None, limit: int = 100, after: str | None = None
    ) -> list[SessionInfo]: ...

    async def acreate_schema(self) -> None: ...
    async def aappend(
        self, session_id: str, messages: Message | Iterable[Message], *, user_id: str | None = None
    ) -> AppendResult: ...
    async def aget_window(self, session_id: str, *, limit: int | None = None) -> list[Message]: ...
    async def aget_history(self, session_id: str) -> list[Message]: ...
    async def aread_session(self, session_id: str) -> SessionSnapshot: ...
    async def aget_session(self, session_id: str) -> SessionState: ...
    async def aarchive(self, session_id: str, seqs: Sequence[int]) -> int: ...
    async def areplace(
        self, session_id: str, messages: Message | Iterable[Message], *, user_id: str | None = None
    ) -> list[Message]: ...
    async def acommit_overflow(self, session_id: str, commit: OverflowCommit) -> bool: ...
    async def aset_block_mark(self, session_id: str, block: str, seq: int) -> None: ...
    async def aset_system_message(self, session_id: str, message: Message | None) -> None: ...
    async def adelete_session(self, session_id: str) -> bool: ...
    async def adelete_user(self, user_id: str) -> int: ...
    async def alist_sessions(
        self, *, user_id: str | None = None, limit: int = 100, after: str | None = None
    ) -> list[SessionInfo]: ...


@runtime_checkable
class HistoryStore(SessionStore, Protocol):
    """A store that can also edit history directly: the primitives LlamaIndex's
    ``AsyncDBChatStore`` needs. ``active``: None = every status, True = the active
    window, False = archived and summarized messages. Both built-in stores are one;
    a custom :class:`SessionStore` need not be.
    """

    def read_messages(
        self,
        session_id: str,
        *,
        active: bool | None = None,
        limit: int | None = None,
        offset: int = 0,
    ) -> list[Message]: ...
    def append_archived(
        self, session_id: str, messages: Message | Iterable[Message], *, user_id: str | None = None
    ) -> list[Message]: ...
    def delete_messages(
        self, session_id: str, seqs: Sequence[int] | None = None, *, active: bool | None = None
    ) -> int: ...
    def take_oldest(self, session_id: str, n: int, *, delete: bool = False) -> list[Message]: ...
    def rewrite(
        self,
        session_id: str,
        messages: Message | Iterable[Message],
        *,
        status: str = "active",
        user_id: str | None = None,
    ) -> list[Message]: ...

    async def aread_messages(
        self,
        session_id: str,
        *,
        active: bool | None = None,
        limit: int | None = None,
        offset: int = 0,
    ) -> list[Message]: ...
    async def aappend_archived(
        self, session_id: str, messages: Message | Iterable[Message], *, user_id: str | None = None
    ) -> list[Message]: ...
    async def adelete_messages(
        self, session_id: str, seqs: Sequence[int] | None = None, *, active: bool | None = None
    ) -> int: ...
    async def atake_oldest(
        self, session_id: str, n: int, *, delete: bool = False
    ) -> list[Message]: ...
    async def arewrite(
        self,
        session_id: str,
        messages: Message | Iterable[Message],
        *,
        status: str = "active",
        user_id: str | None = None,
    ) -> list[Message]: ...
