"""LangChain adapter for mssql-agent-memory: a drop-in ``chat_history`` and model wrappers.

``MSSQLChatMessageHistory`` implements LangChain's ``BaseChatMessageHistory``
on :class:`mssql_memory.AgentMemory`; ``as_chat_model`` / ``as_embedder`` wrap
LangChain models for the core's summaries, fact extraction and vector memory.
"""

from ._deps import require

require("langchain_core", "langchain-core", "langchain")

from ._convert import (  # noqa: E402
    SOURCE,
    from_langchain,
    from_langchain_messages,
    to_langchain,
    to_langchain_messages,
)
from ._history import DEFAULT_TOKEN_LIMIT, MSSQLChatMessageHistory, history_factory  # noqa: E402
from ._models import (  # noqa: E402
    DEFAULT_OPENAI_MODEL,
    LangChainChatModel,
    LangChainEmbedder,
    as_chat_model,
    as_embedder,
    default_chat_model,
)

__all__ = [
    "DEFAULT_OPENAI_MODEL",
    "DEFAULT_TOKEN_LIMIT",
    "SOURCE",
    "LangChainChatModel",
    "LangChainEmbedder",
    "MSSQLChatMessageHistory",
    "as_chat_model",
    "as_embedder",
    "default_chat_model",
    "from_langchain",
    "from_langchain_messages",
    "history_factory",
    "to_langchain",
    "to_langchain_messages",
]
