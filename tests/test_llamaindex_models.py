"""LlamaIndex LLMs and embedding models as the core's ChatModel / Embedder, the missing-
dependency error, and the adapter's pinned public API."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from llama_index.core.embeddings import MockEmbedding
from llama_index.core.llms import MockLLM
from mssql_memory import SUMMARY_PREFIX, ChatModel, Embedder, Message, ModelError, Summarize

import llamaindex_mssql_memory
from llamaindex_mssql_memory import (
    LlamaIndexChatModel,
    LlamaIndexEmbedder,
    MSSQLMemory,
    as_chat_model,
    as_embedder,
)

REPO = Path(__file__).resolve().parents[1]


class CountingEmbedding(MockEmbedding):
    """MockEmbedding that counts its calls (to prove the dimension probe is lazy)."""

    calls: int = 0

    def _get_text_embedding(self, text: str) -> list[float]:
        self.calls += 1
        return super()._get_text_embedding(text)

    def _get_text_embeddings(self, texts: list[str]) -> list[list[float]]:
        self.calls += 1
        return [MockEmbedding._get_text_embedding(self, t) for t in texts]


def test_public_api_is_pinned() -> None:
    """__all__ changes only on purpose."""
    assert sorted(llamaindex_mssql_memory.__all__) == [
        "DEFAULT_TOKEN_LIMIT",
        "LlamaIndexChatModel",
        "LlamaIndexEmbedder",
        "MSSQLChatStore",
        "MSSQLMemory",
        "SOURCE",
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
    for name in llamaindex_mssql_memory.__all__:
        assert hasattr(llamaindex_mssql_memory, name)


def test_chat_model_wraps_llm() -> None:
    """as_chat_model(llm) satisfies ChatModel and returns the LLM's reply text."""
    model = as_chat_model(MockLLM(max_tokens=3))
    assert isinstance(model, ChatModel) and isinstance(model, LlamaIndexChatModel)
    assert model.generate([Message("user", "hi")]) == "text text text"


async def test_chat_model_async() -> None:
    """agenerate goes through the LLM's achat."""
    model = as_chat_model(MockLLM())
    reply = await model.agenerate([Message("system", "sys"), Message("user", "echo me")])
    assert "echo me" in reply


def test_chat_model_passes_plain_callables_through() -> None:
    """Anything the core accepts (a function) still works; junk is a TypeError."""
    assert as_chat_model(lambda messages: "ok").generate([]) == "ok"
    with pytest.raises(TypeError):
        as_chat_model(42)
    with pytest.raises(TypeError):
        LlamaIndexChatModel("not an llm")  # type: ignore[arg-type]


async def test_summarize_with_a_llamaindex_llm(amake_store) -> None:
    """Summarize drives a LlamaIndex LLM through the wrapper, sync and async."""
    memory = MSSQLMemory.from_defaults(
        session_id="s",
        connection=amake_store("sqlite", flavor="url"),
        token_limit=300,
        overflow=Summarize(as_chat_model(MockLLM(max_tokens=4)), keep_recent=2),
    )
    from llama_index.core.base.llms.types import ChatMessage

    for i in range(8):
        await memory.aput(ChatMessage(role="user", content=f"turn {i} " + "word " * 30))
    summary = (await memory.aget())[0].content
    assert summary == SUMMARY_PREFIX + "text text text text"


def test_failing_llm_surfaces_as_model_error(make_store) -> None:
    """An LLM that raises leaves the window unchanged and surfaces as ModelError."""

    class Broken(MockLLM):
        def complete(self, prompt, formatted=False, **kwargs):  # type: ignore[override]
            raise RuntimeError("provider down")

    memory = MSSQLMemory.from_defaults(
        session_id="s",
        connection=make_store("sqlite"),
        token_limit=200,
        overflow=Summarize(as_chat_model(Broken()), keep_recent=1),
    )
    from llama_index.core.base.llms.types import ChatMessage

    turns = [ChatMessage(role="user", content=f"t{i} " + "word " * 30) for i in range(6)]
    with pytest.raises(ModelError):
        for turn in turns:
            memory.put(turn)
    assert len(memory.get_all()) >= 1


def test_embedder_probes_dimension_lazily() -> None:
    """The dimension is learned from the first batch, or probed once when asked first."""
    model = CountingEmbedding(embed_dim=6)
    embedder = as_embedder(model)
    assert isinstance(embedder, LlamaIndexEmbedder) and model.calls == 0
    assert embedder.embed(["a", "b"]) == [[0.5] * 6, [0.5] * 6]
    assert embedder.dimension == 6 and model.calls == 1
    probed = as_embedder(CountingEmbedding(embed_dim=3))
    assert probed.dimension == 3 and probed.dimension == 3
    assert probed.embed_model.calls == 1
    assert isinstance(probed, Embedder)
    assert as_embedder(model, dimension=6).embed([]) == []


async def test_embedder_async_and_checks() -> None:
    """aembed uses the async batch API; a wrong dimension or model type is an error."""
    embedder = as_embedder(MockEmbedding(embed_dim=4))
    assert await embedder.aembed(["x"]) == [[0.5] * 4]
    wrong = as_embedder(MockEmbedding(embed_dim=4), dimension=5)
    with pytest.raises(ValueError, match="dimensions"):
        wrong.embed(["x"])
    with pytest.raises(TypeError):
        as_embedder("not a model")
    with pytest.raises(ValueError):
        as_embedder(MockEmbedding(embed_dim=4), dimension=0)


def test_missing_llamaindex_names_the_extra() -> None:
    """Without llama-index-core the import fails with MissingDependencyError naming the extra."""
    code = (
        "import sys\n"
        "sys.modules['llama_index'] = None\n"
        "sys.modules['llama_index.core'] = None\n"
        "try:\n"
        "    import llamaindex_mssql_memory\n"
        "except Exception as e:\n"
        "    from mssql_memory import MissingDependencyError\n"
        "    print(type(e).__name__, isinstance(e, (MissingDependencyError, ImportError)), e)\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "core")])}
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("MissingDependencyError True")
    assert "mssql-agent-memory[llamaindex]" in done.stdout
