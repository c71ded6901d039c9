"""Model helpers (LangChain chat models and embeddings as the core's protocols), optional
dependencies, and the adapter's pinned public API."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from langchain_core.embeddings import DeterministicFakeEmbedding, Embeddings
from langchain_core.language_models.fake_chat_models import (
    FakeListChatModel,
    GenericFakeChatModel,
)
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage
from langchain_core.runnables import RunnableLambda
from mssql_memory import (
    CallableModel,
    ChatModel,
    Embedder,
    Message,
    MissingDependencyError,
    ModelError,
)

import langchain_mssql_memory
from langchain_mssql_memory import (
    LangChainChatModel,
    LangChainEmbedder,
    as_chat_model,
    as_embedder,
    default_chat_model,
)

ROOT = Path(__file__).resolve().parents[1]


def test_public_api_is_pinned() -> None:
    """The adapter's public names change only on purpose."""
    assert sorted(langchain_mssql_memory.__all__) == [
        "DEFAULT_OPENAI_MODEL",
        "DEFAULT_TOKEN_LIMIT",
        "LangChainChatModel",
        "LangChainEmbedder",
        "MSSQLChatMessageHistory",
        "SOURCE",
        "as_chat_model",
        "as_embedder",
        "default_chat_model",
        "from_langchain",
        "from_langchain_messages",
        "history_factory",
        "to_langchain",
        "to_langchain_messages",
    ]
    for name in langchain_mssql_memory.__all__:
        assert getattr(langchain_mssql_memory, name) is not None
    assert (Path(langchain_mssql_memory.__file__).parent / "py.typed").exists()


# -- chat models ---------------------------------------------------------------------------


def test_chat_model_generates_text_from_core_messages() -> None:
    """generate converts the core's messages to LangChain's and returns the reply's text."""
    seen: list[list[BaseMessage]] = []

    def record(messages: list[BaseMessage]) -> list[BaseMessage]:
        seen.append(messages)
        return messages

    model = as_chat_model(RunnableLambda(record) | FakeListChatModel(responses=["a summary"]))
    assert isinstance(model, LangChainChatModel) and isinstance(model, ChatModel)
    reply = model.generate([Message("system", "Summarize."), Message("user", "Ann likes tea")])
    assert reply == "a summary"
    assert seen == [
        [
            SystemMessage("Summarize.", id=seen[0][0].id),
            HumanMessage("Ann likes tea", id=seen[0][1].id),
        ]
    ]


async def test_chat_model_agenerate() -> None:
    """agenerate awaits the model and returns the text of content blocks too."""
    model = as_chat_model(
        GenericFakeChatModel(messages=iter([AIMessage([{"type": "text", "text": "block text"}])]))
    )
    assert await model.agenerate([Message("user", "hi")]) == "block text"


def test_chat_model_returning_a_string_is_accepted() -> None:
    """A runnable that returns a plain string (an LLM or a parser chain) works as a model."""
    model = as_chat_model(RunnableLambda(lambda messages: f"{len(messages)} messages"))
    assert model.generate([Message("user", "a"), Message("user", "b")]) == "2 messages"


def test_as_chat_model_checks_its_argument() -> None:
    """A core ChatModel passes through; anything else is a TypeError naming what is expected."""
    core_model = CallableModel(lambda messages: "x")
    assert as_chat_model(core_model) is core_model
    with pytest.raises(TypeError, match="LangChain chat model"):
        as_chat_model("gpt-4o")
    with pytest.raises(TypeError, match="LangChain chat model"):
        LangChainChatModel(object())  # type: ignore[arg-type]


def test_wrapping_matters_for_langchain_models() -> None:
    """A LangChain model passes the core's ChatModel check, so it must (and does) get wrapped."""
    raw = FakeListChatModel(responses=["x"])
    assert isinstance(raw, ChatModel)  # the pitfall the wrapper exists for
    assert isinstance(as_chat_model(raw), LangChainChatModel)


# -- embeddings ---------------------------------------------------------------------------


class CountingEmbeddings(Embeddings):
    def __init__(self, size: int = 8) -> None:
        self.size = size
        self.calls: list[list[str]] = []

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        self.calls.append(list(texts))
        return [[float(len(t))] * self.size for t in texts]

    def embed_query(self, text: str) -> list[float]:
        return self.embed_documents([text])[0]


def test_embedder_dimension_is_probed_lazily() -> None:
    """The dimension is found by one probe embedding, only when first asked for."""
    lc = CountingEmbeddings(size=16)
    embedder = as_embedder(lc)
    assert isinstance(embedder, LangChainEmbedder)
    assert lc.calls == []
    assert embedder.dimension == 16
    assert embedder.dimension == 16
    assert len(lc.calls) == 1
    assert isinstance(embedder, Embedder)


def test_embedder_learns_the_dimension_from_its_first_batch() -> None:
    """Embedding before asking for the dimension needs no extra probe."""
    lc = CountingEmbeddings(size=4)
    embedder = as_embedder(lc)
    assert embedder.embed(["ab", "abc"]) == [[2.0] * 4, [3.0] * 4]
    assert embedder.dimension == 4
    assert lc.calls == [["ab", "abc"]]
    assert embedder.embed([]) == []


async def test_embedder_async() -> None:
    """aembed uses the embeddings' async API and returns float vectors."""
    embedder = as_embedder(DeterministicFakeEmbedding(size=12))
    vectors = await embedder.aembed(["one", "two"])
    assert [len(v) for v in vectors] == [12, 12]
    assert vectors == embedder.embed(["one", "two"])
    assert embedder.dimension == 12


def test_embedder_rejects_bad_vectors() -> None:
    """Wrong counts or lengths of vectors are ModelErrors, not silent corruption."""

    class Broken(CountingEmbeddings):
        def embed_documents(self, texts: list[str]) -> list[list[float]]:
            return [[1.0] * (3 + i) for i, _ in enumerate(texts)][:1]

    embedder = as_embedder(Broken(), dimension=3)
    assert embedder.embed(["a"]) == [[1.0, 1.0, 1.0]]
    with pytest.raises(ModelError, match="1 vectors for 2 texts"):
        embedder.embed(["a", "b"])
    with pytest.raises(ModelError, match="length 3, expected 5"):
        as_embedder(Broken(), dimension=5).embed(["a"])
    with pytest.raises(ValueError, match="dimension"):
        as_embedder(Broken(), dimension=0)
    with pytest.raises(TypeError, match="Embeddings"):
        as_embedder("text-embedding-3-small")


def test_core_embedder_passes_through() -> None:
    """Something that already is a core Embedder is returned unchanged."""

    class Mine:
        dimension = 2

        def embed(self, texts: Sequence[str]) -> list[list[float]]:
            return [[0.0, 1.0] for _ in texts]

        async def aembed(self, texts: Sequence[str]) -> list[list[float]]:
            return self.embed(texts)

    mine = Mine()
    assert as_embedder(mine) is mine


# -- the default model and optional dependencies ---------------------------------------------


def test_default_chat_model_needs_a_key(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without OPENAI_API_KEY there is no default model: a clear ModelError."""
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(ModelError, match="OPENAI_API_KEY"):
        default_chat_model()


def test_default_chat_model_uses_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """With a key, ChatOpenAI is built for OPENAI_BASE_URL and OPENAI_MODEL (no network call)."""
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-not-real")
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/v1")
    monkeypatch.setenv("OPENAI_MODEL", "gpt-4.1-mini")
    model = default_chat_model(temperature=0)
    assert type(model).__name__ == "ChatOpenAI"
    assert model.openai_api_base == "http://127.0.0.1:9/v1"
    assert model.model_name == "gpt-4.1-mini"
    assert model.temperature == 0
    assert default_chat_model("gpt-4o").model_name == "gpt-4o"


def test_default_chat_model_without_langchain_openai(monkeypatch: pytest.MonkeyPatch) -> None:
    """A missing langchain-openai is a MissingDependencyError naming the extra to install."""
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-not-real")
    monkeypatch.setitem(sys.modules, "langchain_openai", None)
    with pytest.raises(MissingDependencyError, match=r"pip install 'mssql-agent-memory\[openai\]'"):
        default_chat_model()


def test_missing_langchain_core_names_the_extra() -> None:
    """Importing the adapter without langchain-core says which extra to install."""
    code = (
        "import sys\n"
        "sys.modules['langchain_core'] = None\n"
        "from mssql_memory import MissingDependencyError\n"
        "try:\n"
        "    import langchain_mssql_memory\n"
        "except MissingDependencyError as e:\n"
        "    print(e)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "pip install 'mssql-agent-memory[langchain]'" in proc.stdout


def test_chat_model_errors_surface_through_summarize() -> None:
    """A failing LangChain model makes Summarize raise ModelError and keeps the window intact."""
    from mssql_memory import AgentMemory, Summarize

    def boom(messages: Any) -> str:
        raise RuntimeError("provider down")

    summarize = Summarize(as_chat_model(RunnableLambda(boom)), keep_recent=1, max_summary_tokens=60)
    memory = AgentMemory(token_limit=1000, overflow=summarize)
    turn = [Message("user", "word " * 300), Message("assistant", "word " * 300)]
    memory.add("s", turn)
    with pytest.raises(ModelError, match="provider down"):
        memory.add("s", turn)
    assert len(memory.store.get_window("s")) == 4
