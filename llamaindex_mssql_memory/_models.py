"""Wrap LlamaIndex LLMs and embedding models as the core's ChatModel and Embedder."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from llama_index.core.base.embeddings.base import BaseEmbedding
from llama_index.core.llms.llm import LLM
from mssql_memory import ChatModel, Embedder, Message
from mssql_memory import as_chat_model as core_as_chat_model

from ._convert import to_chat_messages

__all__ = ["LlamaIndexChatModel", "LlamaIndexEmbedder", "as_chat_model", "as_embedder"]


class LlamaIndexChatModel:
    """A :class:`mssql_memory.ChatModel` that calls a LlamaIndex LLM's ``chat`` / ``achat``."""

    def __init__(self, llm: LLM) -> None:
        if not isinstance(llm, LLM):
            raise TypeError(f"expected a llama_index LLM, not {type(llm).__name__}")
        self.llm = llm

    def generate(self, messages: Sequence[Message]) -> str:
        response = self.llm.chat(to_chat_messages(messages))
        return response.message.content or ""

    async def agenerate(self, messages: Sequence[Message]) -> str:
        response = await self.llm.achat(to_chat_messages(messages))
        return response.message.content or ""

    def __repr__(self) -> str:
        return f"LlamaIndexChatModel({self.llm.class_name()})"


class LlamaIndexEmbedder:
    """A :class:`mssql_memory.Embedder` over a LlamaIndex embedding model.

    ``dimension`` is probed with one embedding on first use unless given, or taken
    from the first batch embedded.
    """

    def __init__(self, embed_model: BaseEmbedding, *, dimension: int | None = None) -> None:
        if not isinstance(embed_model, BaseEmbedding):
            raise TypeError(
                f"expected a llama_index BaseEmbedding, not {type(embed_model).__name__}"
            )
        if dimension is not None and (not isinstance(dimension, int) or dimension <= 0):
            raise ValueError("dimension must be a positive int")
        self.embed_model = embed_model
        self._dimension = dimension

    @property
    def dimension(self) -> int:
        if self._dimension is None:
            self._dimension = len(self.embed_model.get_text_embedding("dimension probe"))
        return self._dimension

    def _checked(self, vectors: list[list[float]]) -> list[list[float]]:
        for vector in vectors:
            if self._dimension is None:
                self._dimension = len(vector)
            elif len(vector) != self._dimension:
                raise ValueError(
                    f"embedding has {len(vector)} dimensions, expected {self._dimension}"
                )
        return [list(map(float, v)) for v in vectors]

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        if not texts:
            return []
        return self._checked(self.embed_model.get_text_embedding_batch(list(texts)))

    async def aembed(self, texts: Sequence[str]) -> list[list[float]]:
        if not texts:
            return []
        return self._checked(await self.embed_model.aget_text_embedding_batch(list(texts)))

    def __repr__(self) -> str:
        return f"LlamaIndexEmbedder({self.embed_model.class_name()})"


def as_chat_model(llm: Any) -> ChatModel:
    """A LlamaIndex LLM (or anything the core accepts) as a :class:`mssql_memory.ChatModel`."""
    if isinstance(llm, LLM):
        return LlamaIndexChatModel(llm)
    return core_as_chat_model(llm)


def as_embedder(embed_model: Any, *, dimension: int | None = None) -> Embedder:
    """A LlamaIndex embedding model as a :class:`mssql_memory.Embedder`."""
    if isinstance(embed_model, BaseEmbedding):
        return LlamaIndexEmbedder(embed_model, dimension=dimension)
    if isinstance(embed_model, LlamaIndexEmbedder):
        return embed_model
    raise TypeError(f"expected a llama_index BaseEmbedding, not {type(embed_model).__name__}")
