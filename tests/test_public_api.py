"""The public API is pinned: names only change on purpose, and the core stays framework-free."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import mssql_memory
from mssql_memory import stores

# Update deliberately (and mention it in the changelog) when the public API changes.
EXPECTED_ALL = [
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

EXPECTED_STORES_ALL = [
    "AppendResult",
    "HistoryStore",
    "InMemoryStore",
    "OverflowCommit",
    "SQLStore",
    "SessionInfo",
    "SessionSnapshot",
    "SessionState",
    "SessionStore",
    "StoreTables",
    "Summary",
    "WindowCache",
    "build_tables",
]


def _isort_key(name: str) -> tuple[int, str]:
    """ruff's __all__ order (RUF022): CONSTANTS, then Classes, then everything else."""
    if name.isupper() and len(name) > 1:
        return 0, name
    if name[:1].isupper():
        return 1, name
    return 2, name


def test_all_is_pinned() -> None:
    """mssql_memory.__all__ is exactly the reviewed list of public names."""
    assert mssql_memory.__all__ == EXPECTED_ALL


def test_all_is_sorted_and_unique() -> None:
    """__all__ has no duplicates and keeps ruff's sorted order."""
    assert len(set(EXPECTED_ALL)) == len(EXPECTED_ALL)
    assert sorted(EXPECTED_ALL, key=_isort_key) == EXPECTED_ALL


def test_every_public_name_resolves() -> None:
    """Each name in __all__ is importable from the package."""
    for name in mssql_memory.__all__:
        assert getattr(mssql_memory, name) is not None, name


def test_stores_subpackage_all_is_pinned() -> None:
    """mssql_memory.stores.__all__ is pinned too, and each name resolves."""
    assert stores.__all__ == EXPECTED_STORES_ALL
    for name in stores.__all__:
        assert getattr(stores, name) is not None


def test_version_and_typing_marker() -> None:
    """The package has a version string and ships py.typed for type checkers."""
    assert mssql_memory.__version__ == "0.1.0"
    assert (Path(mssql_memory.__file__).parent / "py.typed").is_file()


def test_core_imports_no_framework() -> None:
    """Importing mssql_memory loads neither LangChain nor LlamaIndex (nor torch)."""
    code = (
        "import sys, mssql_memory; "
        "print(sorted({m.split('.')[0] for m in sys.modules} & "
        "{'langchain', 'langchain_core', 'llama_index', 'torch', 'sentence_transformers'}))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert result.stdout.strip() == "[]"
