"""MSSQLMemory: a LlamaIndex ``BaseMemory`` on :class:`mssql_memory.AgentMemory`."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from llama_index.core.base.llms.types import ChatMessage
from llama_index.core.bridge.pydantic import BaseModel, Field, PrivateAttr, field_validator
from llama_index.core.memory.memory import BaseMemoryBlock as LlamaIndexBlock
from llama_index.core.memory.types import BaseMemory
from mssql_memory import AgentMemory, MemoryBlock, Message, OverflowStrategy, SessionStore
from mssql_memory.budget import DEFAULT_TOKEN_LIMIT
from mssql_memory.validation import validate_id, validate_identifier, validate_optional_id

from ._connections import Target, connect, is_url, redact_url, resolve
from ._convert import to_chat_messages, to_messages

__all__ = ["DEFAULT_TOKEN_LIMIT", "MSSQLMemory"]

logger = logging.getLogger("llamaindex_mssql_memory")

#: The budget when neither ``token_limit`` nor ``model`` is given (LlamaIndex ``Memory``'s).
_TRIM = "Trim(trim_count=None)"

# AgentMemory objects built by from_defaults, by configuration: a context restored in the
# same process gets the very strategy and blocks it was created with.
_agents: dict[tuple[Any, ...], AgentMemory] = {}


def _config_key(reference: str | None, table: str, fields: dict[str, Any]) -> tuple[Any, ...]:
    return (
        reference,
        table,
        fields["token_limit"],
        fields["model"],
        fields["overflow"],
        tuple(fields["blocks"]),
    )


class MSSQLMemory(BaseMemory):
    """Durable, token-budgeted chat memory for LlamaIndex agents (``memory=``).

    ``get`` returns the managed context: the session's system message, rendered
    long-term memory, the rolling summary and the newest whole turns that fit
    ``token_limit``; ``get_all`` returns the full history, archived turns included.
    Every ``a``-method is natively async. The serialized form (a workflow
    ``Context.to_dict()``) holds a credential-free connection reference; see
    :func:`register_connection`.
    """

    session_id: str = Field(description="The conversation's id.")
    connection: str | None = Field(
        default=None,
        description="Credential-free reference: a registered name, or a URL without password "
        "(None: $MSSQL_MEMORY_URL or the embedded SQLite file).",
    )
    table_name: str = Field(default="ChatMessages")
    user_id: str | None = Field(default=None)
    token_limit: int = Field(default=DEFAULT_TOKEN_LIMIT)
    model: str | None = Field(default=None, description="Model name for token counting.")
    password_env: str | None = Field(
        default=None, description="Environment variable holding the password, when reconnecting."
    )
    overflow: str = Field(default=_TRIM, description="The overflow strategy (informational).")
    blocks: list[str] = Field(default_factory=list, description="Long-term block names.")

    _agent: AgentMemory | None = PrivateAttr(default=None)
    _secret_target: str | None = PrivateAttr(default=None)

    @classmethod
    def class_name(cls) -> str:
        return "MSSQLMemory"

    @field_validator("session_id")
    @classmethod
    def _check_session(cls, value: str) -> str:
        return validate_id(value)

    @field_validator("user_id")
    @classmethod
    def _check_user(cls, value: str | None) -> str | None:
        return validate_optional_id(value)

    @field_validator("table_name")
    @classmethod
    def _check_table(cls, value: str) -> str:
        return validate_identifier(value)

    def model_post_init(self, context: Any, /) -> None:
        # A credentialed URL handed to the constructor is used, never kept in a field.
        if self.connection is not None and is_url(self.connection):
            redacted = redact_url(self.connection)
            if redacted != self.connection:
                self._secret_target = self.connection
                self.connection = redacted

    @classmethod
    def from_defaults(  # type: ignore[override]
        cls,
        session_id: str | None = None,
        connection: Target | None = None,
        token_limit: int | None = None,
        overflow: OverflowStrategy | None = None,
        blocks: Sequence[MemoryBlock] = (),
        user_id: str | None = None,
        table_name: str = "ChatMessages",
        memory: AgentMemory | None = None,
        *,
        model: str | None = None,
        password_env: str | None = None,
        **agent_kwargs: Any,
    ) -> MSSQLMemory:
        """Memory for ``session_id`` in ``connection`` (a URL, Engine, AsyncEngine, store,
        registered name, or None for the default database).

        ``memory`` is a ready :class:`~mssql_memory.AgentMemory` to use instead of building
        one from ``token_limit`` / ``model``, ``overflow``, ``blocks`` and ``agent_kwargs``.
        """
        if session_id is None:
            raise ValueError("session_id is required: each conversation needs its own id")
        validate_id(session_id)
        validate_identifier(table_name)
        for block in blocks:
            if isinstance(block, LlamaIndexBlock):
                raise TypeError(
                    f"{type(block).__name__} is a LlamaIndex memory block: use it with "
                    "llama_index.core.memory.Memory(chat_store=MSSQLChatStore(...)); "
                    "MSSQLMemory takes mssql_memory blocks"
                )
        if memory is not None:
            if overflow is not None or blocks or token_limit is not None or agent_kwargs:
                raise ValueError("give either memory= or the settings to build one, not both")
            opened = connect(memory if connection is None else connection, table_name)
            if opened.store is not memory.store:
                raise ValueError("memory= uses a different store than connection=")
            agent = memory
        else:
            opened = connect(connection, table_name)
            agent = opened.agent
            if agent is None:
                if token_limit is None and model is None:
                    token_limit = DEFAULT_TOKEN_LIMIT
                agent = AgentMemory(
                    opened.store,
                    token_limit=token_limit,
                    model=model,
                    overflow=overflow,
                    blocks=blocks,
                    **agent_kwargs,
                )
            elif overflow is not None or blocks or token_limit is not None or agent_kwargs:
                raise ValueError(f"connection {connection!r} names an AgentMemory: configure it")
        fields = {
            "token_limit": agent.token_limit,
            "model": agent.model,
            "overflow": repr(agent.overflow),
            "blocks": [b.name for b in agent.blocks],
        }
        with_agent = cls(
            session_id=session_id,
            connection=opened.reference,
            table_name=opened.table,
            user_id=user_id,
            password_env=password_env,
            **fields,
        )
        with_agent._agent = agent
        _agents[_config_key(opened.reference, opened.table, fields)] = agent
        return with_agent

    # -- the AgentMemory behind it -------------------------------------------------------

    @property
    def agent(self) -> AgentMemory:
        """The :class:`~mssql_memory.AgentMemory` (reconnected lazily after deserialization)."""
        if self._agent is None:
            self._agent = self._reconnect()
        return self._agent

    def _reconnect(self) -> AgentMemory:
        fields = {
            "token_limit": self.token_limit,
            "model": self.model,
            "overflow": self.overflow,
            "blocks": list(self.blocks),
        }
        if self._secret_target is not None:
            opened = connect(self._secret_target, self.table_name)
        else:
            opened = resolve(self.connection, self.table_name, password_env=self.password_env)
        if opened.agent is not None:
            return opened.agent
        known = _agents.get(_config_key(self.connection, opened.table, fields))
        if known is not None:
            return known
        if self.overflow != _TRIM or self.blocks:
            logger.warning(
                "MSSQLMemory %s restored with Trim and no long-term blocks: its %s and "
                "blocks %s live in another process; register_connection(name, AgentMemory(...)) "
                "and pass connection=name to restore them",
                self.session_id,
                self.overflow,
                self.blocks,
            )
        return AgentMemory(opened.store, token_limit=self.token_limit, model=self.model)

    @property
    def store(self) -> SessionStore:
        """The session store behind :attr:`agent`."""
        return self.agent.store

    def _counted(self, messages: Sequence[ChatMessage]) -> list[Message]:
        return to_messages(messages, self.agent.token_counter)

    @staticmethod
    def _query(input: str | ChatMessage | None) -> str | None:
        if isinstance(input, ChatMessage):
            return input.content
        return input

    # -- BaseMemory ----------------------------------------------------------------------

    def get(self, input: str | ChatMessage | None = None, **kwargs: Any) -> list[ChatMessage]:
        """The context to send: system message, long-term memory, summary, newest turns."""
        return to_chat_messages(self.agent.get(self.session_id, query=self._query(input)))

    async def aget(
        self, input: str | ChatMessage | None = None, **kwargs: Any
    ) -> list[ChatMessage]:
        messages = await self.agent.aget(self.session_id, query=self._query(input))
        return to_chat_messages(messages)

    def get_all(self) -> list[ChatMessage]:
        """Every message of the session in order, archived and summarized ones included."""
        return to_chat_messages(self.agent.history(self.session_id))

    async def aget_all(self) -> list[ChatMessage]:
        return to_chat_messages(await self.agent.ahistory(self.session_id))

    def put(self, message: ChatMessage) -> None:
        """Store one message (committed at once), then apply the overflow strategy."""
        self.put_messages([message])

    async def aput(self, message: ChatMessage) -> None:
        await self.aput_messages([message])

    def put_messages(self, messages: list[ChatMessage]) -> None:
        """Store messages in one transaction, then apply the overflow strategy."""
        batch = self._counted(messages)
        if batch:
            self.agent.add(self.session_id, batch, user_id=self.user_id)

    async def aput_messages(self, messages: list[ChatMessage]) -> None:
        batch = self._counted(messages)
        if batch:
            await self.agent.aadd(self.session_id, batch, user_id=self.user_id)

    def set(self, messages: list[ChatMessage]) -> None:
        """Replace the active window with ``messages`` in one transaction (the old one is
        archived, so ``get_all`` still has it), then apply the overflow strategy."""
        self.store.replace(self.session_id, self._counted(messages), user_id=self.user_id)
        self.agent.compact(self.session_id)

    async def aset(self, messages: list[ChatMessage]) -> None:
        batch = self._counted(messages)
        await self.store.areplace(self.session_id, batch, user_id=self.user_id)
        await self.agent.acompact(self.session_id)

    def reset(self) -> None:
        """Delete the session: its messages, summary and system message."""
        self.agent.delete(self.session_id)

    async def areset(self) -> None:
        await self.agent.adelete(self.session_id)

    # -- extras --------------------------------------------------------------------------

    def set_system_message(self, content: str | ChatMessage | None) -> None:
        """Set (or with None, clear) the session's system message; it is never evicted."""
        self.agent.set_system_message(self.session_id, self._system(content))

    async def aset_system_message(self, content: str | ChatMessage | None) -> None:
        await self.agent.aset_system_message(self.session_id, self._system(content))

    def _system(self, content: str | ChatMessage | None) -> str | Message | None:
        if content is None or isinstance(content, str):
            return content
        (message,) = self._counted([content])
        if message.role != "system":
            raise ValueError("the system message must have role system (or developer)")
        return message

    def __getstate__(self) -> dict[str, Any]:
        """Pickles carry the fields only: no live store, no credentialed URL."""
        state = BaseModel.__getstate__(self)
        state["__pydantic_private__"] = {"_agent": None, "_secret_target": None}
        return state

    def __repr__(self) -> str:
        url = self.connection if self.connection is not None else "default"
        return f"MSSQLMemory(session_id={self.session_id!r}, connection={url!r})"
