"""LangChain chat models and embeddings as the core's ChatModel and Embedder."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from langchain_core.embeddings import Embeddings
from langchain_core.messages import BaseMessage
from langchain_core.runnables import Runnable
from mssql_memory import ChatModel, Embedder, Message, ModelError

from ._convert import text_of, to_langchain_messages
from ._deps import require

__all__ = [
    "DEFAULT_OPENAI_MODEL",
    "LangChainChatModel",
    "LangChainEmbedder",
    "as_chat_model",
    "as_embedder",
    "default_chat_model",
]

#: The model :func:`default_chat_model` uses unless ``model=`` or ``$OPENAI_MODEL`` says otherwise.
DEFAULT_OPENAI_MODEL = "gpt-4o-mini"
_PROBE_TEXT = "dimension probe"


def _reply_text(reply: Any) -> str:
    if isinstance(reply, BaseMessage):
        return text_of(reply.content)
    if isinstance(reply, str):
        return reply
    raise TypeError(f"the model returned a {type(reply).__name__}, not a message or a string")


class LangChainChatModel:
    """A LangChain chat model (or any runnable taking messages) as the core's ChatModel.

    ``generate`` / ``agenerate`` convert the messages to LangChain's, call
    ``invoke`` / ``ainvoke`` and return the reply's text.
    """

    def __init__(self, model: Runnable[Any, Any]) -> None:
        if not isinstance(model, Runnable):
            raise TypeError(
                f"expected a LangChain chat model or runnable, not {type(model).__name__}"
            )
        self.model = model

    def generate(self, messages: Sequence[Message]) -> str:
        return _reply_text(self.model.invoke(to_langchain_messages(messages)))

    async def agenerate(self, messages: Sequence[Message]) -> str:
        return _reply_text(await self.model.ainvoke(to_langchain_messages(messages)))

    def __repr__(self) -> str:
        return f"LangChainChatModel({type(self.model).__name__})"


class LangChainEmbedder:
    """LangChain ``Embeddings`` as the core's Embedder.

    ``dimension`` is the given one, else learned from the first embedding made
    (``aembed`` included), else found by embedding a short probe text once.
    """

    def __init__(self, embeddings: Embeddings, *, dimension: int | None = None) -> None:
        if not isinstance(embeddings, Embeddings):
            raise TypeError(f"expected LangChain Embeddings, not {type(embeddings).__name__}")
        self.embeddings = embeddings
        self._dimension: int | None = None
        if dimension is not None:
            self.dimension = dimension

    @property
    def dimension(self) -> int:
        if self._dimension is None:
            self._checked(self.embeddings.embed_documents([_PROBE_TEXT]), 1)
        return self._dimension  # type: ignore[return-value]

    @dimension.setter
    def dimension(self, value: int) -> None:
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise ValueError("dimension must be a positive int")
        self._dimension = value

    def _checked(self, vectors: Any, expected: int) -> list[list[float]]:
        try:
            out = [[float(x) for x in vector] for vector in vectors]
        except (TypeError, ValueError) as e:
            raise ModelError(f"the embeddings returned something that is not vectors: {e}") from e
        if len(out) != expected:
            raise ModelError(f"the embeddings returned {len(out)} vectors for {expected} texts")
        for vector in out:
            if self._dimension is None and vector:
                self._dimension = len(vector)
            if len(vector) != self._dimension:
                raise ModelError(
                    f"the embeddings returned a vector of length {len(vector)}, "
                    f"expected {self._dimension}"
                )
        return out

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        texts = list(texts)
        if not texts:
            return []
        return self._checked(self.embeddings.embed_documents(texts), len(texts))

    async def aembed(self, texts: Sequence[str]) -> list[list[float]]:
        texts = list(texts)
        if not texts:
            return []
        return self._checked(await self.embeddings.aembed_documents(texts), len(texts))

    def __repr__(self) -> str:
        return f"LangChainEmbedder({type(self.embeddings).__name__}, dimension={self._dimension})"


def as_chat_model(model: Any) -> ChatModel:
    """Wrap a LangChain chat model for the core (e.g. ``Summarize(as_chat_model(llm))``).

    A LangChain model must be wrapped: its own ``generate`` takes batches of
    LangChain messages, so passing it to the core directly would fail at the
    first summary.
    """
    if isinstance(model, Runnable):
        return LangChainChatModel(model)
    if isinstance(model, ChatModel):
        return model
    raise TypeError(f"expected a LangChain chat model or runnable, not {type(model).__name__}")


def as_embedder(embeddings: Any, *, dimension: int | None = None) -> Embedder:
    """Wrap LangChain ``Embeddings`` for the core's vector memory."""
    if isinstance(embeddings, Embeddings):
        return LangChainEmbedder(embeddings, dimension=dimension)
    if isinstance(embeddings, (LangChainEmbedder, Embedder)):
        return embeddings
    raise TypeError(f"expected LangChain Embeddings, not {type(embeddings).__name__}")


def default_chat_model(model: str | None = None, **options: Any) -> Any:
    """``langchain_openai.ChatOpenAI`` configured from the environment.

    Needs ``OPENAI_API_KEY``; honours ``OPENAI_BASE_URL`` (an OpenAI-compatible
    server) and ``OPENAI_MODEL``. Without a key, raises :class:`ModelError`.
    """
    if not os.environ.get("OPENAI_API_KEY"):
        raise ModelError(
            "no default chat model: OPENAI_API_KEY is not set. Set it (and OPENAI_BASE_URL "
            "for an OpenAI-compatible server), or pass your own LangChain chat model"
        )
    openai = require("langchain_openai", "langchain-openai", "openai")
    settings: dict[str, Any] = {
        "model": model or os.environ.get("OPENAI_MODEL") or DEFAULT_OPENAI_MODEL
    }
    base_url = os.environ.get("OPENAI_BASE_URL")
    if base_url:
        settings["base_url"] = base_url
    settings.update(options)
    return openai.ChatOpenAI(**settings)
