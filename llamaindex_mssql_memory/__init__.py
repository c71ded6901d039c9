"""LlamaIndex adapter for mssql-agent-memory: ``MSSQLMemory`` for agents' ``memory=``,
``MSSQLChatStore`` for LlamaIndex's own ``Memory``, and model/embedder wrappers."""

from __future__ import annotations

try:
    import llama_index.core  # noqa: F401
except ImportError as e:  # pragma: no cover - exercised in a subprocess test
    from mssql_memory.errors import missing_dependency

    raise missing_dependency("llama-index-core", "llamaindex") from e

from ._chat_store import MSSQLChatStore
from ._connections import (
    clear_connections,
    redact_url,
    register_connection,
    unregister_connection,
)
from ._convert import SOURCE, to_chat_message, to_chat_messages, to_message, to_messages
from ._memory import DEFAULT_TOKEN_LIMIT, MSSQLMemory
from ._models import LlamaIndexChatModel, LlamaIndexEmbedder, as_chat_model, as_embedder

# Serialized workflow contexts name classes by module path: keep it the public one.
MSSQLMemory.__module__ = __name__
MSSQLChatStore.__module__ = __name__

__all__ = [
    "DEFAULT_TOKEN_LIMIT",
    "SOURCE",
    "LlamaIndexChatModel",
    "LlamaIndexEmbedder",
    "MSSQLChatStore",
    "MSSQLMemory",
    "as_chat_model",
    "as_embedder",
    "clear_connections",
    "redact_url",
    "register_connection",
    "to_chat_message",
    "to_chat_messages",
    "to_message",
    "to_messages",
    "unregister_connection",
]
