"""mssql-agent-memory: durable, token-aware memory for AI agents on SQL Server and friends."""

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
from .messages import (
    Message,
    ToolCall,
    message_from_dict,
    message_from_json,
    message_to_dict,
    message_to_json,
)
from .stores import (
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
    "AgentMemoryError",
    "ApproximateTokenCounter",
    "BlockError",
    "BudgetError",
    "ConcurrencyError",
    "InMemoryStore",
    "InvalidMessageError",
    "Message",
    "MissingDependencyError",
    "ModelError",
    "OverflowCommit",
    "SQLStore",
    "SessionInfo",
    "SessionSnapshot",
    "SessionState",
    "SessionStore",
    "StoreError",
    "StoreUnavailableError",
    "Summary",
    "TiktokenCounter",
    "TokenCounter",
    "ToolCall",
    "WindowCache",
    "__version__",
    "build_tables",
    "default_token_counter",
    "encoding_for_model",
    "message_from_dict",
    "message_from_json",
    "message_to_dict",
    "message_to_json",
]
