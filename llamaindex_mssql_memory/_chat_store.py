"""MSSQLChatStore: LlamaIndex's ``AsyncDBChatStore`` on :class:`mssql_memory.SQLStore`.

``llama_index.core.memory.Memory.from_defaults(chat_store=MSSQLChatStore(...))`` then
keeps its FIFO queue and archive in SQL Server (or SQLite, PostgreSQL, MySQL/MariaDB)
with the library's schema: ``NVARCHAR(255)`` binary-collated keys, ``NVARCHAR(MAX)``
payloads that are never indexed, per-session sequence numbers for order (not clocks),
counts from the session record (not ``fetchall()``), and every edit in one transaction.
A key is a session id, so ``MSSQLMemory`` and this store can share one table.
"""

from __future__ import annotations

from typing import Any

from llama_index.core.base.llms.types import ChatMessage
from llama_index.core.bridge.pydantic import Field, PrivateAttr
from llama_index.core.storage.chat_store.base_db import AsyncDBChatStore, MessageStatus
from mssql_memory import HistoryStore
from mssql_memory.validation import validate_identifier

from ._connections import Target, connect, resolve
from ._convert import to_chat_message, to_chat_messages, to_messages

__all__ = ["MSSQLChatStore"]

_PAGE = 1000


def _active(status: MessageStatus | str | None) -> bool | None:
    """LlamaIndex status -> the store's ``active`` filter (archived includes summarized)."""
    if status is None:
        return None
    value = MessageStatus(status)
    return value == MessageStatus.ACTIVE


class MSSQLChatStore(AsyncDBChatStore):
    """LlamaIndex chat store (ACTIVE / ARCHIVED messages per key) on the library's SQL store.

    ``connection`` is a URL, ``Engine``, ``AsyncEngine``, store or registered name (None:
    ``$MSSQL_MEMORY_URL`` or the embedded SQLite file). Its dump holds only the
    credential-free reference.
    """

    table_name: str = Field(default="ChatMessages")
    connection: str | None = Field(default=None, description="Credential-free reference.")
    password_env: str | None = Field(default=None)

    _store: HistoryStore | None = PrivateAttr(default=None)

    def __init__(
        self,
        connection: Target | None = None,
        table_name: str = "ChatMessages",
        *,
        password_env: str | None = None,
        **data: Any,
    ) -> None:
        validate_identifier(table_name)
        opened = connect(connection, table_name) if connection is not None else None
        reference = opened.reference if opened is not None else connection
        table = opened.table if opened is not None else table_name
        super().__init__(table_name=table, connection=reference, password_env=password_env, **data)
        if opened is not None:
            self._store = opened.store

    @classmethod
    def class_name(cls) -> str:
        return "MSSQLChatStore"

    @property
    def store(self) -> HistoryStore:
        """The session store (opened lazily from the reference after deserialization)."""
        if self._store is None:
            opened = resolve(self.connection, self.table_name, password_env=self.password_env)
            self._store = opened.store
        return self._store

    def _batch(self, messages: list[ChatMessage]) -> list[Any]:
        return to_messages(messages, getattr(self.store, "token_counter", None))

    async def get_messages(
        self,
        key: str,
        status: MessageStatus | None = MessageStatus.ACTIVE,
        limit: int | None = None,
        offset: int | None = None,
    ) -> list[ChatMessage]:
        """Messages of ``key`` with ``status`` (None: all), oldest first, paged."""
        stored = await self.store.aread_messages(
            key, active=_active(status), limit=limit, offset=offset or 0
        )
        return to_chat_messages(stored)

    async def count_messages(
        self, key: str, status: MessageStatus | None = MessageStatus.ACTIVE
    ) -> int:
        """From the session record's counters: no rows are read."""
        state = await self.store.aget_session(key)
        active = _active(status)
        if active is None:
            return state.message_count
        return state.active_count if active else state.message_count - state.active_count

    async def add_message(
        self, key: str, message: ChatMessage, status: MessageStatus = MessageStatus.ACTIVE
    ) -> None:
        await self.add_messages(key, [message], status=status)

    async def add_messages(
        self,
        key: str,
        messages: list[ChatMessage],
        status: MessageStatus = MessageStatus.ACTIVE,
    ) -> None:
        """Append ``messages`` in one transaction, in order."""
        batch = self._batch(messages)
        if not batch:
            return
        if _active(status):
            await self.store.aappend(key, batch)
        else:
            await self.store.aappend_archived(key, batch)

    async def set_messages(
        self,
        key: str,
        messages: list[ChatMessage],
        status: MessageStatus = MessageStatus.ACTIVE,
    ) -> None:
        """Replace every message of ``key`` with ``messages``, in one transaction."""
        active = _active(status)
        await self.store.arewrite(
            key, self._batch(messages), status="active" if active else "archived"
        )

    async def delete_message(self, key: str, idx: int) -> ChatMessage | None:
        """Delete the message at position ``idx`` (0-based, all statuses, oldest first)."""
        if not isinstance(idx, int) or isinstance(idx, bool) or idx < 0:
            return None
        page = await self.store.aread_messages(key, limit=1, offset=idx)
        if not page or page[0].seq is None:
            return None
        deleted = await self.store.adelete_messages(key, [page[0].seq])
        return to_chat_message(page[0]) if deleted else None

    async def delete_messages(self, key: str, status: MessageStatus | None = None) -> None:
        """Delete ``key``'s messages with ``status``; with None, the whole session."""
        active = _active(status)
        if active is None:
            await self.store.adelete_session(key)
        else:
            await self.store.adelete_messages(key, active=active)

    async def delete_oldest_messages(self, key: str, n: int) -> list[ChatMessage]:
        """Delete the ``n`` oldest active messages atomically and return them."""
        return to_chat_messages(await self.store.atake_oldest(key, n, delete=True))

    async def archive_oldest_messages(self, key: str, n: int) -> list[ChatMessage]:
        """Archive the ``n`` oldest active messages atomically and return them."""
        return to_chat_messages(await self.store.atake_oldest(key, n))

    async def get_keys(self) -> list[str]:
        """Every key that holds messages, in order."""
        keys: list[str] = []
        after = None
        while True:
            page = await self.store.alist_sessions(limit=_PAGE, after=after)
            keys.extend(info.session_id for info in page if info.message_count > 0)
            if len(page) < _PAGE:
                return keys
            after = page[-1].session_id
