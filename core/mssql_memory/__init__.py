"""mssql-agent-memory: durable, token-aware memory for AI agents on SQL Server and friends."""

from .agent_memory import AgentMemory, OverflowEvent
from .blocks import MEMORY_PREAMBLE, BaseMemoryBlock, MemoryBlock, render_memory
from .budget import CONTEXT_WINDOWS, context_window
from .defaults import ENV_URL, default_url
from .errors import (
    AgentMemoryError,
    BlockError,
    BudgetError,
    ConcurrencyError,
    InvalidMessageError,
    MissingDependencyError,
    ModelError,
    StoreError,
    StoreUnavailableError,
)
from .groups import Group, group_messages
from .ltm import (
    ExtractiveMemory,
    HashingEmbedder,
    LongTermStore,
    ReadOnlyBlockError,
    SentenceTransformerEmbedder,
    StaticMemory,
    VectorMemory,
)
from .messages import (
    Message,
    ToolCall,
    message_from_dict,
    message_from_json,
    message_to_dict,
    message_to_json,
)
from .models import CallableModel, ChatModel, Embedder, as_chat_model
from .overflow import SUMMARY_PREFIX, FlushToLongTerm, OverflowStrategy, Summarize, Trim
from .stores import (
    HistoryStore,
    InMemoryStore,
    OverflowCommit,
    SessionInfo,
    SessionSnapshot,
    SessionState,
    SessionStore,
    SQLStore,
    Summary,
    WindowCache,
    build_tables,
)
from .tokens import (
    ApproximateTokenCounter,
    TiktokenCounter,
    TokenCounter,
    default_token_counter,
    encoding_for_model,
)

__version__ = "0.1.0"

__all__ = [
    "CONTEXT_WINDOWS",
    "ENV_URL",
    "MEMORY_PREAMBLE",
    "SUMMARY_PREFIX",
    "AgentMemory",
    "AgentMemoryError",
    "ApproximateTokenCounter",
    "BaseMemoryBlock",
    "BlockError",
    "BudgetError",
    "CallableModel",
    "ChatModel",
    "ConcurrencyError",
    "Embedder",
    "ExtractiveMemory",
    "FlushToLongTerm",
    "Group",
    "HashingEmbedder",
    "HistoryStore",
    "InMemoryStore",
    "InvalidMessageError",
    "LongTermStore",
    "MemoryBlock",
    "Message",
    "MissingDependencyError",
    "ModelError",
    "OverflowCommit",
    "OverflowEvent",
    "OverflowStrategy",
    "ReadOnlyBlockError",
    "SQLStore",
    "SentenceTransformerEmbedder",
    "SessionInfo",
    "SessionSnapshot",
    "SessionState",
    "SessionStore",
    "StaticMemory",
    "StoreError",
    "StoreUnavailableError",
    "Summarize",
    "Summary",
    "TiktokenCounter",
    "TokenCounter",
    "ToolCall",
    "Trim",
    "VectorMemory",
    "WindowCache",
    "__version__",
    "as_chat_model",
    "build_tables",
    "context_window",
    "default_token_counter",
    "default_url",
    "encoding_for_model",
    "group_messages",
    "message_from_dict",
    "message_from_json",
    "message_to_dict",
    "message_to_json",
    "render_memory",
]
