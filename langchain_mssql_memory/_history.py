"""``MSSQLChatMessageHistory``: a LangChain chat history backed by :class:`AgentMemory`."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from langchain_core.chat_history import BaseChatMessageHistory
from langchain_core.messages import BaseMessage, SystemMessage
from mssql_memory import (
    AgentMemory,
    Message,
    OverflowStrategy,
    SQLStore,
    default_url,
    group_messages,
)
from mssql_memory.budget import DEFAULT_TOKEN_LIMIT
from mssql_memory.validation import validate_id, validate_optional_id
from sqlalchemy import Engine
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncEngine

from ._convert import (
    SOURCE,
    explain_rejection,
    from_langchain,
    from_langchain_messages,
    to_langchain_messages,
)

__all__ = ["DEFAULT_TOKEN_LIMIT", "MSSQLChatMessageHistory", "history_factory"]

_TAIL_PROBE = 8  # newest window messages searched for a tool call still waiting for its results


def _model_name(model: Any) -> str:
    if isinstance(model, str):
        return model
    for attr in ("model_name", "model", "model_id"):
        name = getattr(model, attr, None)
        if isinstance(name, str) and name:
            return name
    raise ValueError(
        f"cannot tell the model name of {type(model).__name__}; pass token_limit= instead"
    )


def _pending_tail(context: Sequence[Message], recent: Sequence[Message]) -> list[Message]:
    """The newest tool-call group if its results are still arriving, else ``[]``.

    The core leaves such a group out of the context (a model rejects a call
    without its results), but a caller in a tool loop is about to send those
    results: without the call before them they would be orphans.
    """
    groups = group_messages(recent)
    if not groups:
        return []
    last = groups[-1]
    if last.complete or last.first.role != "assistant":
        return []
    newest_in_context = max((m.seq for m in context if m.seq is not None), default=-1)
    if (last.first.seq or 0) <= newest_in_context:
        return []
    return list(last.messages)


def _with_raw(context: Sequence[Message], recent: Sequence[Message]) -> list[Message]:
    """Give back ``raw`` to messages the core edited (memory prefixed, text cut).

    The core drops ``raw`` from an edited copy so a framework does not restore
    the unedited text; the adapter instead puts the edited text into the full
    LangChain message (keeping ids, kwargs, images), using the stored original
    when the newest messages of the window have it.
    """
    stored = {m.seq: m for m in recent if m.raw is not None}
    out = []
    for message in context:
        original = stored.get(message.seq) if message.raw is None else None
        if original is not None and original.id == message.id and original.source == SOURCE:
            message = message.with_fields(raw=original.raw)
        out.append(message)
    return out


def _assemble(context: Sequence[Message], window: Sequence[Message]) -> list[BaseMessage]:
    """The LangChain context: the core's, edits kept whole, plus any pending tool call.

    ``window`` is the active window the context was built from (same snapshot); only its
    newest messages are searched, unless they start inside a tool call's results.
    """
    recent = window[-_TAIL_PROBE:]
    if _probe_too_short(recent):
        recent = window
    return to_langchain_messages([*_with_raw(context, recent), *_pending_tail(context, recent)])


def _probe_too_short(recent: Sequence[Message]) -> bool:
    """The probe's newest group is tool results whose call is older: read the whole window."""
    if len(recent) < _TAIL_PROBE:
        return False
    groups = group_messages(recent)
    return bool(groups) and groups[-1].is_orphan


def _resolve_memory(
    memory: AgentMemory | None,
    connection: str | URL | Engine | AsyncEngine | None,
    table_name: str,
    schema: str | None,
    token_limit: int | None,
    model: Any,
    overflow: OverflowStrategy | None,
) -> tuple[AgentMemory, SQLStore | None]:
    """The given memory (checked), or a new one over a new SQLStore, which is returned too.

    Nothing touches the database here: tables are created on first use.
    """
    if memory is not None:
        if not isinstance(memory, AgentMemory):
            raise TypeError(f"memory must be an AgentMemory, not {type(memory).__name__}")
        given = {
            "connection": connection is not None,
            "table_name": table_name != "ChatMessages",
            "schema": schema is not None,
            "token_limit": token_limit is not None,
            "model": model is not None,
            "overflow": overflow is not None,
        }
        clash = [name for name, is_given in given.items() if is_given]
        if clash:
            raise ValueError(
                f"give either memory= or {'=, '.join(clash)}=, not both: "
                "the AgentMemory already has its store, budget and overflow strategy"
            )
        return memory, None
    options: dict[str, Any] = {"overflow": overflow}
    if token_limit is not None:
        options["token_limit"] = token_limit
    elif model is not None:
        options["model"] = _model_name(model)
    else:
        options["token_limit"] = DEFAULT_TOKEN_LIMIT
    store = SQLStore(connection if connection is not None else default_url(), table_name, schema)
    try:
        return AgentMemory(store, **options), store
    except BaseException:
        store.close()
        raise


class MSSQLChatMessageHistory(BaseChatMessageHistory):
    """A session's chat history in SQL Server, SQLite, PostgreSQL or MySQL/MariaDB.

    ``messages`` is the managed context (system message, long-term memory,
    summary, newest window within the token budget), not the raw log; the same
    read with no write in between returns equal lists. Writes are one
    transaction per batch; overflow is handled by the memory's strategy.
    LangChain messages come back exactly as they were added. A tool call whose
    results are still being added is shown last, so a tool loop can send them.

    Give ``connection`` (a URL, ``Engine`` or ``AsyncEngine``; default
    :func:`mssql_memory.default_url`) or a ready ``memory`` (an
    :class:`~mssql_memory.AgentMemory`, to share one engine between sessions
    or to use summaries and long-term blocks) — not both.
    """

    # BaseChatMessageHistory is decorated with @deprecated (langchain-core >= 1.6.4). The
    # decorator wraps its __init__ and warns only when `type(self) is BaseChatMessageHistory`,
    # never for a subclass, and defining a subclass runs no warning code. Our __init__ does
    # not call that wrapped __init__ at all (it only forwards to object.__init__), so even a
    # release that warned on every call of it would stay silent; tests run both with -W error.
    def __init__(
        self,
        session_id: str,
        *,
        connection: str | URL | Engine | AsyncEngine | None = None,
        memory: AgentMemory | None = None,
        user_id: str | None = None,
        table_name: str = "ChatMessages",
        schema: str | None = None,
        token_limit: int | None = None,
        model: Any = None,
        overflow: OverflowStrategy | None = None,
    ) -> None:
        self.session_id = validate_id(session_id)
        self.user_id = validate_optional_id(user_id)
        memory, self._owned_store = _resolve_memory(
            memory, connection, table_name, schema, token_limit, model, overflow
        )
        self.memory: AgentMemory = memory

    def __repr__(self) -> str:
        user = f", user_id={self.user_id!r}" if self.user_id is not None else ""
        return (
            f"{type(self).__name__}(session_id={self.session_id!r}{user}, memory={self.memory!r})"
        )

    # -- reads -----------------------------------------------------------------------------

    @property
    def messages(self) -> list[BaseMessage]:  # type: ignore[override]
        """The managed context to send to the model, as LangChain messages."""
        return _assemble(*self.memory.get_with_window(self.session_id))

    async def aget_messages(self) -> list[BaseMessage]:
        """Async :attr:`messages` (native async with an async engine)."""
        return _assemble(*await self.memory.aget_with_window(self.session_id))

    def get_full_history(self) -> list[BaseMessage]:
        """Every message of the session in order, archived and summarized ones included."""
        return to_langchain_messages(self.memory.history(self.session_id))

    async def aget_full_history(self) -> list[BaseMessage]:
        return to_langchain_messages(await self.memory.ahistory(self.session_id))

    # -- writes ----------------------------------------------------------------------------

    def add_message(self, message: BaseMessage) -> None:
        """Append one message (prefer :meth:`add_messages` for several)."""
        self.add_messages([message])

    def add_messages(self, messages: Sequence[BaseMessage]) -> None:
        """Append ``messages`` in one transaction, then handle overflow.

        A bad item rejects the whole batch before anything is written. If the
        overflow fails (a summarizer error), the messages stay stored and the
        error is raised; the next write retries the overflow.
        """
        batch = from_langchain_messages(messages, self.memory.token_counter)
        if batch:
            with explain_rejection(batch):
                self.memory.add(self.session_id, batch, user_id=self.user_id)

    async def aadd_messages(self, messages: Sequence[BaseMessage]) -> None:
        """Async :meth:`add_messages`."""
        batch = from_langchain_messages(messages, self.memory.token_counter)
        if batch:
            with explain_rejection(batch):
                await self.memory.aadd(self.session_id, batch, user_id=self.user_id)

    def clear(self) -> None:
        """Delete the session: messages, summary and system message."""
        self.memory.delete(self.session_id)

    async def aclear(self) -> None:
        await self.memory.adelete(self.session_id)

    # -- system message --------------------------------------------------------------------

    def _system(self, content: str | SystemMessage | None) -> str | Message | None:
        if content is None or isinstance(content, str):
            return content
        if isinstance(content, SystemMessage):
            return from_langchain(content, self.memory.token_counter)
        raise TypeError(f"expected a str, a SystemMessage or None, not {type(content).__name__}")

    def set_system_message(self, content: str | SystemMessage | None) -> None:
        """Set the session's system message (first in the context, never evicted); None clears."""
        self.memory.set_system_message(self.session_id, self._system(content))

    async def aset_system_message(self, content: str | SystemMessage | None) -> None:
        await self.memory.aset_system_message(self.session_id, self._system(content))

    # -- lifecycle -------------------------------------------------------------------------

    def close(self) -> None:
        """Dispose of the engine this history created (a given engine or memory is left alone)."""
        if self._owned_store is not None:
            self._owned_store.close()

    async def aclose(self) -> None:
        if self._owned_store is not None:
            await self._owned_store.aclose()


def history_factory(
    connection: str | URL | Engine | AsyncEngine | None = None,
    *,
    memory: AgentMemory | None = None,
    table_name: str = "ChatMessages",
    schema: str | None = None,
    token_limit: int | None = None,
    model: Any = None,
    overflow: OverflowStrategy | None = None,
) -> Callable[..., MSSQLChatMessageHistory]:
    """A ``get_session_history(session_id, user_id=None)`` for ``RunnableWithMessageHistory``.

    The histories it returns share one :class:`AgentMemory` (one engine and
    connection pool); building each from a URL would create an engine per call.
    """
    memory, _ = _resolve_memory(
        memory, connection, table_name, schema, token_limit, model, overflow
    )
    return _HistoryFactory(memory)


class _HistoryFactory:
    """Histories sharing one memory; ``memory`` is public for set-up and cleanup."""

    def __init__(self, memory: AgentMemory) -> None:
        self.memory = memory

    def __call__(self, session_id: str, user_id: str | None = None) -> MSSQLChatMessageHistory:
        return MSSQLChatMessageHistory(session_id, memory=self.memory, user_id=user_id)

    def __repr__(self) -> str:
        return f"history_factory(memory={self.memory!r})"
